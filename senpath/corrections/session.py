"""The review session: one slide's results store opened for a person to correct.

:class:`CorrectionSession` logs each edit (calls, exclusions, thresholds, nucleus outlines, undo) to
the audit log before it returns and keeps the corrected cells in memory; :meth:`~CorrectionSession.save`
rewrites the store's derived files from them. Its nucleus edits are in
:mod:`senpath.corrections.nucleus_edits`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.corrections.label_regions import _labels_group
from senpath.corrections.log import (
    CorrectionError,
    StaleCorrectionsWarning,
    _append,
    _clean,
    _default_user,
    _now,
    _repair_torn_tail,
    entry_states,
    log_matches,
    read_log,
    set_aside,
)
from senpath.corrections.nucleus_edits import NucleusEdits, _overlap
from senpath.corrections.replay import (
    _phenotypes,
    apply_corrections,
    assay_from_provenance,
    corrected_summary,
    corrected_thresholds,
    manual_bin,
    profile_toml,
    store_thresholds,
)
from senpath.corrections.review import marker_stats, review_queue
from senpath.results import (
    CELLS,
    CORRECTIONS,
    PROVENANCE,
    SUMMARY,
    atomic_write_bytes,
    atomic_write_json,
    write_manifest,
)


class CorrectionSession(NucleusEdits):
    """Review and correct one slide's results store.

    Every edit is appended to ``corrections.jsonl`` (fsynced) before the method returns, so what a
    person did survives a crash; :meth:`save` rewrites the derived files (``summary.json``, the QC
    histograms, the manifest) so the store stays complete and consistent. ``cells`` is the corrected
    table, kept in memory and updated per edit.

    Parameters
    ----------
    folder : the slide's committed store (``results/<slide_id>``).
    user : name written into the log (default: ``$SENPATH_USER`` or the login name).
    slide_path : the slide file, when it is no longer where it was analysed (nucleus edits re-measure
        cells on its pixels).

    Notes
    -----
    A log made for an earlier analysis of the slide is moved aside (:func:`set_aside`) when the
    session opens; ``moved_aside`` then holds its new path.
    """

    def __init__(
        self, folder: str | Path, *, user: str | None = None, slide_path: str | Path | None = None
    ) -> None:
        from senpath.labels import label_mpp
        from senpath.results import load_results

        self.folder = Path(folder)
        self.user = user or _default_user()
        self.raw = load_results(self.folder, corrections=False)
        self.assay = assay_from_provenance(self.raw.provenance)
        self.base_thresholds = store_thresholds(self.raw.provenance)
        self.label_mpp = float(label_mpp(self.folder))
        self._slide_path = Path(slide_path) if slide_path else None
        self._slide: Any = None
        self.moved_aside: Path | None = None
        _repair_torn_tail(self.folder)
        self.entries = read_log(self.folder)
        if self.entries and not log_matches(self.entries, self.raw.manifest):
            self.moved_aside = set_aside(self.folder)
            warnings.warn(
                f"{self.folder / CORRECTIONS} was made for an earlier analysis of this slide; "
                f"moved aside to {self.moved_aside} (kept, not applied)",
                StaleCorrectionsWarning,
                stacklevel=2,
            )
            self.entries = []
        self._repair_labels()
        self._recompute()

    # ----------------------------------------------------------------------------- state

    @property
    def slide_id(self) -> str:
        return self.raw.slide_id

    @property
    def thresholds(self) -> dict[str, float]:
        """``{marker: OD}`` in effect."""
        return corrected_thresholds(self.entries, self.base_thresholds)

    @property
    def markers(self) -> list[str]:
        return [r.name for r in self.assay.markers]

    @property
    def label_shape(self) -> tuple[int, int]:
        """(Y, X) of the level-0 label image (px at :attr:`label_mpp` µm/px)."""
        shape = _labels_group(self.folder)["0"].shape
        return (int(shape[0]), int(shape[1]))

    def _recompute(self) -> None:
        self.cells = apply_corrections(
            self.raw.cells, self.entries, assay=self.assay, thresholds=self.base_thresholds
        )
        self._index = pd.Index(self.cells["cell_id"].to_numpy())

    def _rows(self, cell_ids: Sequence[int]) -> NDArray[np.intp]:
        rows = self._index.get_indexer(np.asarray(cell_ids, dtype=np.int64))
        if (rows < 0).any():
            missing = np.asarray(cell_ids)[rows < 0][:5].tolist()
            raise CorrectionError(f"no cell with cell_id {missing} in {self.slide_id}")
        return rows

    def cell(self, cell_id: int) -> pd.Series:
        """The corrected row of one cell."""
        return self.cells.iloc[int(self._rows([cell_id])[0])]

    def cell_at(self, x_um: float, y_um: float) -> int:
        """The ``cell_id`` of the nucleus at a slide position in µm (0: none there)."""
        i, j = int(y_um // self.label_mpp), int(x_um // self.label_mpp)
        h, w = self.label_shape
        if not (0 <= i < h and 0 <= j < w):
            return 0
        return int(_labels_group(self.folder)["0"][i, j])

    def _log(self, entry: dict[str, Any]) -> dict[str, Any]:
        if not self.entries:
            head = {
                "id": 0,
                "time": _now(),
                "user": self.user,
                "action": "start",
                "slide_id": self.slide_id,
                "cells_sha256": self.raw.manifest.get("files", {}).get(CELLS),
                "provenance_sha256": self.raw.manifest.get("files", {}).get(PROVENANCE),
                "senpath_version": self.raw.provenance.get("senpath_version"),
            }
            _append(self.folder, head)
            self.entries.append(head)
        full = {
            "id": int(self.entries[-1]["id"]) + 1,
            "time": _now(),
            "user": self.user,
            **entry,
        }
        full = _clean(full)
        _append(self.folder, full)
        self.entries.append(full)
        return full

    # ----------------------------------------------------------------------------- edits

    def set_call(
        self,
        cell_ids: Iterable[int],
        marker: str,
        *,
        positive: bool,
        bin: int | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Set the call of cells for one marker (a person's call: kept when thresholds change).

        ``bin`` is the intensity bin 0-3 (default: the cell's OD bin, at least 1+ when positive, 0
        when negative). Returns the log entry.
        """
        rule = self.assay.marker(marker)
        ids = [int(c) for c in cell_ids]
        rows = self._rows(ids)
        if bin is not None and not (0 <= int(bin) <= 3) or (bin == 0 and positive):
            raise CorrectionError(f"bin={bin}: give 1-3 for a positive cell, 0 for a negative one")
        pos_col, bin_col = f"{marker}_positive", f"{marker}_bin"
        previous = [
            {"positive": bool(self.cells[pos_col].iat[r]), "bin": int(self.cells[bin_col].iat[r])}
            for r in rows
        ]
        if bin is None and len(ids) == 1:
            bin = manual_bin(rule, float(self.cells[f"{marker}_od"].iat[rows[0]]), positive)
        elif bin is None:
            bin = 1 if positive else 0
        entry = self._log(
            {
                "action": "set_call",
                "marker": marker,
                "cell_ids": ids,
                "previous": previous,
                "new": {"positive": bool(positive), "bin": int(bin)},
                **({"note": note} if note else {}),
            }
        )
        positions = self.cells.columns.get_indexer([pos_col, bin_col, f"{marker}_manual"])
        self.cells.iloc[rows, positions[0]] = bool(positive)
        self.cells.iloc[rows, positions[1]] = np.int8(bin)
        self.cells.iloc[rows, positions[2]] = True
        if self.assay.phenotypes:
            _phenotypes(self.cells, self.assay)
        return entry

    def flip_call(self, cell_id: int, marker: str) -> dict[str, Any]:
        """Flip one cell's call for ``marker`` (positive ↔ negative)."""
        row = self._rows([cell_id])[0]
        return self.set_call(
            [cell_id], marker, positive=not bool(self.cells[f"{marker}_positive"].iat[row])
        )

    def _set_excluded(
        self, cell_ids: Iterable[int], value: bool, note: str | None
    ) -> dict[str, Any]:
        ids = [int(c) for c in cell_ids]
        rows = self._rows(ids)
        col = self.cells.columns.get_loc("excluded")
        previous = [bool(v) for v in self.cells["excluded"].to_numpy()[rows]]
        entry = self._log(
            {
                "action": "exclude" if value else "include",
                "cell_ids": ids,
                "previous": previous,
                "new": bool(value),
                **({"note": note} if note else {}),
            }
        )
        self.cells.iloc[rows, col] = bool(value)
        return entry

    def exclude(self, cell_ids: Iterable[int], *, note: str | None = None) -> dict[str, Any]:
        """Exclude cells from every figure (kept in the table with ``excluded = True``)."""
        return self._set_excluded(cell_ids, True, note)

    def include(self, cell_ids: Iterable[int], *, note: str | None = None) -> dict[str, Any]:
        """Include excluded cells again."""
        return self._set_excluded(cell_ids, False, note)

    def toggle_excluded(self, cell_id: int) -> dict[str, Any]:
        row = self._rows([cell_id])[0]
        value = not bool(self.cells["excluded"].iat[row])
        return self._set_excluded([cell_id], value, None)

    def set_thresholds(self, thresholds: Mapping[str, float]) -> dict[str, Any] | None:
        """Re-score the whole slide at new marker thresholds (OD); manual calls are kept.

        Returns the log entry (``None`` when nothing changed).
        """
        current = self.thresholds
        new = {}
        for m, v in thresholds.items():
            self.assay.marker(m)
            if not (math.isfinite(float(v)) and float(v) >= 0):
                raise CorrectionError(f"threshold for {m}: {v!r} is not an OD value >= 0")
            if float(v) != current[m]:
                new[m] = float(v)
        if not new:
            return None
        entry: dict[str, Any] = {
            "action": "set_thresholds",
            "marker": next(iter(new)) if len(new) == 1 else None,
            "cell_ids": [],
            "previous": {m: current[m] for m in new},
            "new": new,
        }
        trial = [*self.entries, {"id": -1, **entry}]
        cells = apply_corrections(
            self.raw.cells, trial, assay=self.assay, thresholds=self.base_thresholds
        )
        entry["n_changed"] = {
            m: int(
                (
                    self.cells[f"{m}_positive"].to_numpy(dtype=bool)
                    != cells[f"{m}_positive"].to_numpy(dtype=bool)
                ).sum()
            )
            for m in new
        }
        logged = self._log(entry)
        self.cells = cells
        self._index = pd.Index(self.cells["cell_id"].to_numpy())
        return logged

    def undo(self, entry_id: int | None = None) -> dict[str, Any] | None:
        """Revert an edit (default: the latest one in effect) by logging an ``undo`` entry.

        History is never deleted: the reverted entry stays in the log. Undoing an ``undo`` redoes
        it. A nucleus edit can only be undone while no later edit in effect overlaps its region.
        Returns the undo entry (``None`` when there is nothing to undo).
        """
        state = entry_states(self.entries)
        by_id = {int(e["id"]): e for e in self.entries}
        if entry_id is None:
            candidates = [
                e
                for e in reversed(self.entries)
                if e["action"] not in ("start", "undo") and state[int(e["id"])]
            ]
            if not candidates:
                return None
            target = candidates[0]
        else:
            if int(entry_id) not in by_id or by_id[int(entry_id)]["action"] == "start":
                raise CorrectionError(f"no correction with id {entry_id} to undo")
            target = by_id[int(entry_id)]
            if not state[int(entry_id)]:
                raise CorrectionError(f"correction {entry_id} is already undone")
        trial = [*self.entries, {"id": -1, "action": "undo", "undoes": int(target["id"])}]
        after = entry_states(trial)
        changed = [
            by_id[i]
            for i in sorted(by_id)
            if by_id[i]["action"] == "edit_nuclei" and state[i] != after[i]
        ]
        for e in changed:
            later = [
                f
                for f in self.entries
                if f["action"] == "edit_nuclei"
                and int(f["id"]) > int(e["id"])
                and after[int(f["id"])]
                and _overlap(e["region"], f["region"])
            ]
            if later:
                raise CorrectionError(
                    f"nucleus edit {e['id']} overlaps the later edit {later[0]['id']}: undo that "
                    "one first"
                )
        entry = self._log(
            {
                "action": "undo",
                "undoes": int(target["id"]),
                "marker": target.get("marker"),
                "cell_ids": target.get("cell_ids", []),
                "previous": target.get("new"),
                "new": target.get("previous"),
            }
        )
        state = entry_states(self.entries)
        for e in changed:
            self._sync_labels(e, state[int(e["id"])])
        self._recompute()
        return entry

    # ---------------------------------------------------------------------- figures, saving

    def stats(self, marker: str, *, threshold_od: float | None = None) -> dict[str, Any]:
        """n, n positive, % positive and H-score of a marker now (or at ``threshold_od``)."""
        return marker_stats(self.cells, self.assay, marker, threshold_od=threshold_od)

    def queue(
        self, marker: str, *, band_od: float | None = None, limit: int | None = 500
    ) -> NDArray[np.int64]:
        """Cells nearest the marker's threshold first (not excluded, not yet called by hand)."""
        return review_queue(
            self.cells, marker, threshold_od=self.thresholds[marker], band_od=band_od, limit=limit
        )

    def save(self) -> None:
        """Rewrite the derived files from the corrected cells, then the manifest (same identity).

        ``summary.json`` gets the corrected figures (the pipeline's kept under ``uncorrected``),
        ``qc_histograms.png`` the thresholds in effect; the manifest is rewritten last with the same
        run identity, so the store stays complete and a resumed batch does not redo the slide.
        """
        from senpath.results import QC_HISTOGRAMS

        summary = corrected_summary(
            self.raw.summary,
            self.cells,
            self.entries,
            assay=self.assay,
            thresholds=self.base_thresholds,
        )
        atomic_write_json(self.folder / SUMMARY, summary)
        if (self.folder / QC_HISTOGRAMS).is_file():
            from senpath.report import slide_histograms_png

            atomic_write_bytes(
                self.folder / QC_HISTOGRAMS, slide_histograms_png(self.cells, self.thresholds)
            )
        m = self.raw.manifest
        write_manifest(
            self.folder,
            slide_id=str(m["slide_id"]),
            identity=m["identity"],
            extra={
                k: v
                for k, v in m.items()
                if k not in ("store_version", "slide_id", "identity", "files")
            },
        )

    def profile_toml(self, *, name: str | None = None) -> str:
        """A stain profile (TOML) with this slide's stain vectors and the thresholds in effect."""
        return profile_toml(self.raw.provenance, self.thresholds, name=name)

    def save_profile(self, path: str | Path, *, name: str | None = None) -> Path:
        """Write :meth:`profile_toml` to ``path`` (atomic), for ``senpath run --config path``."""
        path = Path(path)
        atomic_write_bytes(path, self.profile_toml(name=name).encode("utf-8"))
        return path
