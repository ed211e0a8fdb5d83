"""The review session: one slide's results store opened for a person to correct.

:class:`CorrectionSession` logs each edit (calls, exclusions, thresholds, nucleus outlines, undo) to
the audit log before it returns and keeps the corrected cells in memory; :meth:`~CorrectionSession.save`
rewrites the store's derived files from them. Its nucleus edits are in
:mod:`senpath.corrections.nucleus_edits`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.corrections.label_regions import _labels_group
from senpath.corrections.lock import CorrectionLock, LockOwner, StoreLockedError, lock_owner
from senpath.corrections.log import (
    CELL_ACTIONS,
    RECORD_ACTIONS,
    CorrectionError,
    StaleCorrectionsWarning,
    _append,
    _clean,
    _now,
    _repair_torn_tail,
    entry_key,
    entry_states,
    log_matches,
    new_entry_id,
    read_log,
    relinked_slide_path,
    set_aside,
)
from senpath.corrections.nucleus_edits import NucleusEdits, _overlap, _shared_cells
from senpath.corrections.replay import apply_corrections, corrected_summary, corrected_thresholds
from senpath.corrections.review import marker_stats, review_queue
from senpath.corrections.status import ReviewSignOff
from senpath.labels import label_mpp
from senpath.provenance import profile_toml
from senpath.qc_plots import slide_histograms_png
from senpath.results import (
    CELLS,
    CORRECTIONS,
    PROVENANCE,
    QC_HISTOGRAMS,
    SUMMARY,
    atomic_write_bytes,
    atomic_write_json,
    read_results,
    write_manifest,
)
from senpath.score import add_phenotypes, manual_bin
from senpath.store_lock import default_user


class CorrectionSession(NucleusEdits, ReviewSignOff):
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
    read_only : open to look, not to correct: no lock is taken and every edit raises
        :class:`CorrectionError`.

    Raises
    ------
    StoreLockedError
        When another review session (another window, another person) writes this store's
        corrections now; open it with ``read_only=True`` to look meanwhile.

    Notes
    -----
    A session writes only while it holds the store's lock (``store.lock``, shared with runs, see
    :mod:`senpath.corrections.lock`); :meth:`close` releases it. A lock left by a review that is no
    longer running is taken over with a :class:`~senpath.corrections.lock.StaleLockWarning`
    (``lock_taken_over`` then says whose it was).

    A log made for an earlier analysis of the slide is moved aside (:func:`set_aside`) when the
    session opens; ``moved_aside`` then holds its new path.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        user: str | None = None,
        slide_path: str | Path | None = None,
        read_only: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.user = user or default_user()
        self.raw = read_results(self.folder)
        self._lock: CorrectionLock | None = None
        self.lock_taken_over: LockOwner | None = None
        if not read_only:
            self._lock = CorrectionLock(self.folder, user=self.user)
            self.lock_taken_over = self._lock.taken_over
        self.assay = self.raw.provenance.assay.assay()
        self.base_thresholds = self.raw.provenance.thresholds
        self.label_mpp = float(label_mpp(self.folder))
        self._slide_path = Path(slide_path) if slide_path else None
        self._slide: Any = None
        self.moved_aside: Path | None = None
        #: Where the edits come from (``"qupath"`` for an import), recorded in each entry.
        self.source: str | None = None
        #: The reason an exclusion without a note of its own is logged with.
        self.exclusion_reason: str | None = None
        #: Refuse exclusions without a reason (a reviewer's widget sets it).
        self.require_exclusion_reason = False
        if not read_only:
            _repair_torn_tail(self.folder)
        self.entries = read_log(self.folder)
        if self.entries and not log_matches(self.entries, self.raw.manifest) and not read_only:
            self.moved_aside = set_aside(self.folder)
            warnings.warn(
                f"{self.folder / CORRECTIONS} was made for an earlier analysis of this slide; "
                f"moved aside to {self.moved_aside} (kept, not applied)",
                StaleCorrectionsWarning,
                stacklevel=2,
            )
            self.entries = []
        if self._slide_path is None and relinked_slide_path(self.entries):
            self._slide_path = Path(str(relinked_slide_path(self.entries)))
        if not read_only:
            self._repair_labels()
        self._recompute()

    # ------------------------------------------------------------------------------ lock

    @property
    def read_only(self) -> bool:
        """Whether this session cannot correct (opened read-only, or closed)."""
        return self._lock is None

    @property
    def locked_by(self) -> LockOwner | None:
        """The other session that writes this store now (``None``: none)."""
        owner = lock_owner(self.folder)
        if owner is not None and self._lock is not None and owner == self._lock.owner:
            return None
        return owner

    def close(self) -> None:
        """Stop correcting: release the store's lock (the session stays readable)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> CorrectionSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _check_writable(self) -> None:
        if self._lock is None:
            raise CorrectionError(
                f"{self.slide_id} is open read-only: no correction can be made in this session"
            )
        if not self._lock.held:
            owner = lock_owner(self.folder)
            who = f" by {owner.describe()}" if owner else ""
            raise StoreLockedError(
                f"{self.slide_id}: this session no longer holds the corrections lock (taken "
                f"over{who}); reopen the review to go on"
            )

    # ----------------------------------------------------------------------------- the slide

    @property
    def slide_path(self) -> Path:
        """Where the slide file is now (where it was analysed, unless it was relinked)."""
        return self._slide_path or Path(self.raw.provenance.slide_path)

    @property
    def slide_found(self) -> bool:
        """Whether the slide file is where :attr:`slide_path` says."""
        return self.slide_path.is_file() or self.slide_path.is_dir()

    def relink_slide(self, path: str | Path, *, force: bool = False) -> dict[str, Any]:
        """Record where the slide is now, after it was moved or copied since the analysis.

        The store's ``provenance.json`` is never rewritten (the log identifies the analysis by its
        sha256): the new path is a ``relink_slide`` entry of the log, which
        :func:`senpath.load_results` and the napari plugin follow. It is not an edit of the cells
        (undo leaves it alone; relink again to change it).

        Parameters
        ----------
        path : the slide file now.
        force : accept a file whose size or level-0 size differ from the analysed slide's.

        Raises
        ------
        CorrectionError
            When the file is missing, or does not look like the analysed slide (without ``force``).
        """
        from senpath.io import open_slide

        new = Path(path).expanduser().resolve()
        if not new.exists():
            raise CorrectionError(f"{new}: no such file")
        if not force:
            problems = []
            size = self.raw.manifest.get("identity", {}).get("input", {}).get("size")
            if size is not None and new.is_file() and new.stat().st_size != int(size):
                problems.append(f"{new.stat().st_size} bytes, the analysed slide had {size}")
            shape = self.raw.provenance.slide.get("shape")
            mpp = self.raw.manifest.get("identity", {}).get("mpp")
            try:
                opened = open_slide(new, mpp=mpp)
            except Exception as exc:
                raise CorrectionError(f"{new} cannot be read as a slide: {exc}") from None
            found = list(opened.shape)
            if shape is not None and found != [int(v) for v in shape[:2]]:
                problems.append(
                    f"{found[0]} x {found[1]} px, the analysed one {shape[0]} x {shape[1]}"
                )
            if problems:
                raise CorrectionError(
                    f"{new} does not look like the slide {self.slide_id} was analysed from ("
                    + "; ".join(problems)
                    + "): give the right file, or force=True (--force) if it is"
                )
        entry = self._log(
            {
                "action": "relink_slide",
                "slide_path": str(new),
                "previous": str(self.slide_path),
                "cell_ids": [],
            }
        )
        self._slide_path, self._slide = new, None
        return entry

    def _log(self, entry: dict[str, Any]) -> dict[str, Any]:
        self._check_writable()
        if not self.entries:
            head = {
                "id": new_entry_id(),
                "time": _now(),
                "user": self.user,
                "action": "start",
                "slide_id": self.slide_id,
                "cells_sha256": self.raw.manifest.get("files", {}).get(CELLS),
                "provenance_sha256": self.raw.manifest.get("files", {}).get(PROVENANCE),
                "senpath_version": self.raw.provenance.senpath_version,
            }
            _append(self.folder, head)
            self.entries.append(head)
        self._reopen_before(str(entry["action"]))
        if self.source and "source" not in entry:
            entry = {**entry, "source": self.source}
        full = {"id": new_entry_id(), "time": _now(), "user": self.user, **entry}
        full = _clean(full)
        _append(self.folder, full)
        self.entries.append(full)
        return full

    @contextmanager
    def edits_from(self, source: str) -> Iterator[None]:
        """Log the edits made inside the block with ``"source": source`` (e.g. ``"qupath"``)."""
        before, self.source = self.source, source
        try:
            yield
        finally:
            self.source = before

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
            add_phenotypes(self.cells, self.assay)
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
        if value:
            note = note or self.exclusion_reason
            if self.require_exclusion_reason and not (note and note.strip()):
                raise CorrectionError("give a reason for excluding cells (the reason field)")
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
        trial = [*self.entries, {"id": "", **entry}]
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

    def undo(self, entry_id: int | str | None = None) -> dict[str, Any] | None:
        """Revert an edit (default: the latest one in effect) by logging an ``undo`` entry.

        History is never deleted: the reverted entry stays in the log. Undoing an ``undo`` redoes
        it. A nucleus edit can only be undone while no later edit in effect overlaps its region.
        Returns the undo entry (``None`` when there is nothing to undo).
        """
        self._check_writable()
        state = entry_states(self.entries)
        by_id = {entry_key(e): e for e in self.entries}
        position = {entry_key(e): k for k, e in enumerate(self.entries)}
        if entry_id is None:
            candidates = [
                e
                for e in reversed(self.entries)
                if e["action"] in CELL_ACTIONS and state[entry_key(e)]
            ]
            if not candidates:
                return None
            target = candidates[0]
        else:
            key = str(entry_id)
            if key not in by_id or by_id[key]["action"] in RECORD_ACTIONS:
                raise CorrectionError(f"no correction with id {entry_id} to undo")
            target = by_id[key]
            if not state[key]:
                raise CorrectionError(f"correction {entry_id} is already undone")
        trial = [*self.entries, {"id": "", "action": "undo", "undoes": entry_key(target)}]
        after = entry_states(trial)
        changed = [
            e
            for e in self.entries
            if e["action"] == "edit_nuclei" and state[entry_key(e)] != after[entry_key(e)]
        ]
        for e in changed:
            later = [
                f
                for f in self.entries
                if f["action"] == "edit_nuclei"
                and position[entry_key(f)] > position[entry_key(e)]
                and after[entry_key(f)]
                and (_overlap(e["region"], f["region"]) or _shared_cells(e, f))
            ]
            if later:
                raise CorrectionError(
                    f"nucleus edit {e['id']} overlaps the later edit {later[0]['id']}: undo that "
                    "one first"
                )
        entry = self._log(
            {
                "action": "undo",
                "undoes": target["id"],
                "marker": target.get("marker"),
                "cell_ids": target.get("cell_ids", []),
                "previous": target.get("new"),
                "new": target.get("previous"),
            }
        )
        state = entry_states(self.entries)
        for e in changed:
            self._sync_labels(e, state[entry_key(e)])
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
        self._check_writable()
        summary = corrected_summary(
            self.raw.summary,
            self.cells,
            self.entries,
            assay=self.assay,
            thresholds=self.base_thresholds,
        )
        atomic_write_json(self.folder / SUMMARY, summary)
        if (self.folder / QC_HISTOGRAMS).is_file():
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
