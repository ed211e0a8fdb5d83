"""Nucleus edits of a review session: a label region painted by a person written back to the label
image, its nuclei re-measured on the slide's pixels, and the region kept before and after
(``corrections/<id>.npz``) so the edit can be undone.

:class:`NucleusEdits` holds these methods of :class:`senpath.corrections.CorrectionSession`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.config import Assay
from senpath.corrections.label_regions import read_label_region, write_label_region
from senpath.corrections.log import (
    CORRECTIONS_DIR,
    CorrectionError,
    entry_key,
    entry_states,
    new_entry_id,
)
from senpath.corrections.replay import measurement_columns
from senpath.results import SlideResults, atomic_write_bytes


class NucleusEdits:
    """The nucleus-editing methods of :class:`~senpath.corrections.CorrectionSession` (a mixin: the
    session's state is declared here, set by the session)."""

    folder: Path
    raw: SlideResults
    assay: Assay
    label_mpp: float
    entries: list[dict[str, Any]]
    cells: pd.DataFrame
    _slide_path: Path | None
    _slide: Any

    if TYPE_CHECKING:

        @property
        def slide_id(self) -> str: ...

        @property
        def label_shape(self) -> tuple[int, int]: ...

        def _log(self, entry: dict[str, Any]) -> dict[str, Any]: ...

        def _recompute(self) -> None: ...

        def _check_writable(self) -> None: ...

    def read_labels(self, y0: int, x0: int, y1: int, x1: int) -> NDArray[np.int32]:
        """Level-0 labels of a region (px at :attr:`label_mpp`), to edit and pass to
        :meth:`edit_nuclei`."""
        return read_label_region(self.folder, y0, x0, y1, x1)

    def next_cell_id(self) -> int:
        """A ``cell_id`` never used on this slide, for a nucleus a person adds."""
        used = [int(self.raw.cells["cell_id"].max()) if len(self.raw.cells) else 0]
        used += [
            max(e["added"]) for e in self.entries if e.get("action") == "edit_nuclei" and e["added"]
        ]
        return max(used) + 1

    def _open_slide(self) -> Any:
        if self._slide is None:
            from senpath.io import open_slide

            path = self._slide_path or Path(self.raw.provenance.slide_path)
            if not path.exists():
                raise CorrectionError(
                    f"the slide {path} is not where it was analysed; nucleus edits re-measure "
                    "cells on its pixels: open the review with slide_path=<where it is now>"
                )
            self._slide = open_slide(path, mpp=self.raw.manifest.get("identity", {}).get("mpp"))
        return self._slide

    def _measure(
        self, labels: NDArray[np.int32], origin: tuple[int, int], ids: Sequence[int]
    ) -> pd.DataFrame:
        from senpath.measure import measure_cells
        from senpath.stain import StainSet, deconvolve

        prov = self.raw.provenance
        amp = self.label_mpp
        y0, x0 = origin
        rgb = self._open_slide().read_region(
            x0 * amp, y0 * amp, labels.shape[1] * amp, labels.shape[0] * amp, mpp=amp
        )
        stains = StainSet(prov.assay.stains, np.asarray(prov.assay.stain_vectors, dtype=float))
        # the glass intensity the slide's cells were measured with (per RGB channel)
        conc = deconvolve(rgb, stains, prov.background_i0)
        measured = measure_cells(
            labels,
            conc,
            stain_names=stains.names,
            mpp=amp,
            cytoplasm_um=prov.cytoplasm_um,
            origin_um=(x0 * amp, y0 * amp),
        )
        measured = measured[measured["cell_id"].isin(list(ids))].reset_index(drop=True)
        measured.insert(0, "slide_id", self.slide_id)
        if "patient_id" in self.raw.cells.columns:  # stores written since the columns were added
            measured.insert(1, "patient_id", self.raw.patient_id)
            measured.insert(2, "assay", str(self.raw.manifest.get("assay", "")))
        if "tile_label" in self.raw.cells.columns:
            at = list(measured.columns).index("cell_id") + 1
            measured.insert(at, "tile_label", np.zeros(len(measured), dtype=np.int32))
        cols = [c for c in measurement_columns(self.raw.cells, self.assay) if c in measured]
        return measured[cols]

    def edit_nuclei(
        self, edited: NDArray[np.integer], *, origin: tuple[int, int], note: str | None = None
    ) -> dict[str, Any] | None:
        """Write back an edited region of the level-0 labels and re-measure the nuclei it changed.

        Deleting a nucleus (painting it 0), painting a missing one (a new id, see
        :meth:`next_cell_id`), splitting (painting part of a nucleus with a new id) and merging
        (painting a nucleus with its neighbour's id) are all edits of the label values.

        Parameters
        ----------
        edited : (H, W) int, the region's labels after the edit.
        origin : (y0, x0) of the region in level-0 label px.

        Cells whose nucleus is unchanged but whose cytoplasm ring changes (a neighbour of a nucleus
        added, deleted or redrawn) are re-measured too (``remeasured``).

        Returns
        -------
        The log entry (``removed``, ``added``, ``modified``, ``remeasured`` ids), or ``None`` when
        nothing changed.
        """
        edited = np.asarray(edited)
        if edited.ndim != 2 or not np.issubdtype(edited.dtype, np.integer):
            raise CorrectionError("edited labels must be a 2-D integer array (Y, X)")
        if edited.size and (edited.min() < 0 or edited.max() > np.iinfo(np.int32).max):
            raise CorrectionError("label ids must be in 0 .. 2**31 - 1")
        y0, x0 = int(origin[0]), int(origin[1])
        y1, x1 = y0 + edited.shape[0], x0 + edited.shape[1]
        h, w = self.label_shape
        if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
            raise CorrectionError(
                f"region [{y0}:{y1}, {x0}:{x1}] lies outside the label image (0:{h}, 0:{w})"
            )
        edited = edited.astype(np.int32)
        before = self.read_labels(y0, x0, y1, x1)
        diff = before != edited
        if not diff.any():
            return None
        touched = sorted((set(np.unique(before[diff])) | set(np.unique(edited[diff]))) - {0})
        prov = self.raw.provenance
        # A neighbour whose cytoplasm ring reaches the edit has its nucleus within two rings of
        # it; the window holds that whole cell (a nucleus is at most the halo across, plus a ring).
        margin = math.ceil((prov.halo_um + 3 * prov.cytoplasm_um) / self.label_mpp)
        wy0, wx0 = max(0, y0 - margin), max(0, x0 - margin)
        wy1, wx1 = min(h, y1 + margin), min(w, x1 + margin)
        window_before = self.read_labels(wy0, wx0, wy1, wx1)
        window = window_before.copy()
        window[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] = edited
        present = set(np.unique(window).tolist()) - {0}
        known = set(self.cells["cell_id"].tolist())
        removed = [c for c in touched if c not in present and c in known]
        added = [c for c in touched if c in present and c not in known]
        modified = [c for c in touched if c in present and c in known]
        remeasured = [
            c for c in self._ring_changed(window_before, window) if c in known and c not in touched
        ]
        new_rows = self._measure(window, (wy0, wx0), added + modified + remeasured)
        prev_cols = measurement_columns(self.raw.cells, self.assay)
        gone = self.cells[self.cells["cell_id"].isin(removed + modified + remeasured)]
        self._check_writable()
        entry_id = new_entry_id()
        regions = self.folder / CORRECTIONS_DIR
        regions.mkdir(exist_ok=True)
        npz = f"{CORRECTIONS_DIR}/{entry_id}.npz"
        buf = _npz_bytes(before=before, after=edited, origin=np.array([y0, x0]))
        atomic_write_bytes(self.folder / npz, buf)
        entry = self._log(
            {
                "id": entry_id,
                "action": "edit_nuclei",
                "region": [y0, x0, y1, x1],
                "cell_ids": touched,
                "removed": removed,
                "added": added,
                "modified": modified,
                "remeasured": remeasured,
                "previous": {"rows": gone[prev_cols].to_dict("records")},
                "new": {"rows": new_rows.to_dict("records")},
                "labels": npz,
                **({"note": note} if note else {}),
            }
        )
        write_label_region(self.folder, (y0, x0), edited)
        self._recompute()
        return entry

    def _ring_changed(self, before: NDArray[np.int32], after: NDArray[np.int32]) -> list[int]:
        """Ids whose cell (nucleus + cytoplasm ring) differs between two label windows.

        A nucleus added, grown or deleted next to a cell moves the border between their rings (a
        ring stops halfway to a neighbour), so that cell's cytoplasm measurements change too.
        """
        from senpath.measure import cell_compartments

        kwargs = {"mpp": self.label_mpp, "cytoplasm_um": self.raw.provenance.cytoplasm_um}
        cell_before = cell_compartments(before, **kwargs)["cell"]
        cell_after = cell_compartments(after, **kwargs)["cell"]
        diff = cell_before != cell_after
        ids = set(np.unique(cell_before[diff]).tolist()) | set(np.unique(cell_after[diff]).tolist())
        return sorted(int(c) for c in ids - {0})

    def _sync_labels(self, entry: Mapping[str, Any], in_effect: bool) -> None:
        """Make the label region of a nucleus edit match whether the edit is in effect."""
        with np.load(self.folder / entry["labels"]) as data:
            block = data["after"] if in_effect else data["before"]
        y0, x0 = entry["region"][:2]
        current = self.read_labels(y0, x0, y0 + block.shape[0], x0 + block.shape[1])
        if not np.array_equal(current, block):
            write_label_region(self.folder, (y0, x0), block)

    def _repair_labels(self) -> None:
        """After a crash between logging a nucleus edit (or its undo) and writing its labels."""
        if not self.entries:
            return
        last = self.entries[-1]
        by_id = {entry_key(e): e for e in self.entries}
        target = last
        while target.get("action") == "undo":
            target = by_id[str(target["undoes"])]
        if target.get("action") == "edit_nuclei" and (self.folder / target["labels"]).is_file():
            self._sync_labels(target, entry_states(self.entries)[entry_key(target)])


def _overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _shared_cells(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two nucleus edits measured a cell in common (its nucleus or its ring changed)."""
    cells_a = set(a["cell_ids"]) | set(a.get("remeasured", []))
    return bool(cells_a & (set(b["cell_ids"]) | set(b.get("remeasured", []))))


def _npz_bytes(**arrays: NDArray[Any]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()
