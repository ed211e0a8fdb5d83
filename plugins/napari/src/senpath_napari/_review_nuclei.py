"""Nucleus editing in the Review widget: a region of the level-0 labels as an editable Labels layer
(multiscale labels are not editable in napari); each stroke is written back and only the changed
nuclei (and the neighbours whose cytoplasm rings change) are re-measured."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from senpath_napari import _layers
from senpath_napari._view import _camera, _canvas_size

#: Largest side (label px) of a region loaded for nucleus editing.
MAX_EDIT_PX = 2048


class NucleusEditor:
    """Mixin of :class:`~senpath_napari._review_widget.ReviewWidget`: nucleus editing."""

    viewer: Any
    session: Any
    editor: Any
    editor_origin: tuple[int, int]
    pending_ids: set[int]

    def _view_region(self) -> tuple[int, int, int, int]:
        """Level-0 label px [y0, x0, y1, x1] of the drawn ROI, else of the visible view."""
        amp = self.session.label_mpp
        h, w = self.session.label_shape
        rois = [lay for lay in self.viewer.layers if lay.name == "senpath ROI" and len(lay.data)]
        if rois:
            pts = np.concatenate([np.asarray(d)[:, -2:] for d in rois[0].data])
            pts = np.asarray([rois[0].data_to_world(p) for p in pts])[:, -2:]
            (ys, xs), (ye, xe) = pts.min(axis=0) / amp, pts.max(axis=0) / amp
        else:
            cy, cx = _camera(self.viewer).center[-2:]
            size = _canvas_size(self.viewer)
            half_h = size[0] / _camera(self.viewer).zoom / 2 if _camera(self.viewer).zoom else 256
            half_w = size[1] / _camera(self.viewer).zoom / 2 if _camera(self.viewer).zoom else 256
            ys, ye = (cy - half_h) / amp, (cy + half_h) / amp
            xs, xe = (cx - half_w) / amp, (cx + half_w) / amp
        y0, y1 = int(max(0, math.floor(ys))), int(min(h, math.ceil(ye)))
        x0, x1 = int(max(0, math.floor(xs))), int(min(w, math.ceil(xe)))
        if y1 - y0 > MAX_EDIT_PX:
            mid = (y0 + y1) // 2
            y0, y1 = mid - MAX_EDIT_PX // 2, mid + MAX_EDIT_PX // 2
        if x1 - x0 > MAX_EDIT_PX:
            mid = (x0 + x1) // 2
            x0, x1 = mid - MAX_EDIT_PX // 2, mid + MAX_EDIT_PX // 2
        return y0, x0, max(y1, y0 + 1), max(x1, x0 + 1)

    def open_editor(self, region: tuple[int, int, int, int] | None = None) -> Any:
        """Load a region of the level-0 labels as an editable Labels layer.

        ``region`` is ``(y0, x0, y1, x1)`` in label px (default: the ROI or the view, at most
        :data:`MAX_EDIT_PX` a side).
        """
        if self.session is None:
            return None
        if self.session.read_only:
            self._tell(f"{self.session.slide_id} is open read-only: nuclei cannot be edited here")
            return None
        self.close_editor()
        y0, x0, y1, x1 = region or self._view_region()
        amp = self.session.label_mpp
        data = self.session.read_labels(y0, x0, y1, x1)
        self.editor_origin = (y0, x0)
        self.editor = self.viewer.add_labels(
            data,
            name="nuclei (editing)",
            scale=(amp, amp),
            translate=(y0 * amp, x0 * amp),
            units=_layers.UNITS,
            opacity=0.6,
            metadata={"senpath_role": "editor", "senpath_store": str(self.session.folder)},
        )
        self.editor.selected_label = self.session.next_cell_id()
        self.editor.brush_size = 8
        self.editor.events.paint.connect(self._on_paint)
        self.pending_ids.clear()
        self.editor_label.setText(
            f"editing {x1 - x0} x {y1 - y0} px ({(x1 - x0) * amp:.0f} x {(y1 - y0) * amp:.0f} µm): "
            "paint with a new id to add or split, a neighbour's id to merge, 0 to delete"
        )
        return self.editor

    def _on_paint(self, event: Any) -> None:
        for atom in event.value or []:
            try:
                _, old, new = atom
            except (TypeError, ValueError):
                continue
            self.pending_ids.update(int(v) for v in np.unique(np.asarray(old)) if v)
            if np.ndim(new) == 0 and int(new):
                self.pending_ids.add(int(new))
        if self.auto_apply.isChecked():
            QTimer.singleShot(0, self.apply_nucleus_edits)

    def new_nucleus_id(self) -> int | None:
        """Select an id no cell has, to paint a missing nucleus (or split one)."""
        if self.editor is None or self.session is None:
            return None
        used = int(np.asarray(self.editor.data).max(initial=0))
        self.editor.selected_label = max(self.session.next_cell_id(), used + 1)
        self.editor.mode = "paint"
        return int(self.editor.selected_label)

    def apply_nucleus_edits(self) -> dict[str, Any] | None:
        """Write the editor's region back to the store and re-measure the changed nuclei."""
        if self.editor is None or self.session is None:
            return None
        from senpath.corrections import CorrectionError

        try:
            entry = self.session.edit_nuclei(
                np.asarray(self.editor.data), origin=self.editor_origin
            )
        except CorrectionError as exc:
            self._tell(str(exc))
            return None
        self.pending_ids.clear()
        if entry is None:
            return None
        self.editor_label.setText(
            f"saved: {len(entry['removed'])} removed, {len(entry['added'])} added, "
            f"{len(entry['modified'])} re-measured (entry {entry['id']})"
        )
        if int(self.editor.selected_label) in entry["added"]:
            self.editor.selected_label = self.session.next_cell_id()
        self._edited()
        return entry

    def _reload_editor(self) -> None:
        y0, x0 = self.editor_origin
        h, w = np.asarray(self.editor.data).shape
        self.editor.data = self.session.read_labels(y0, x0, y0 + h, x0 + w)

    def close_editor(self) -> None:
        """Write back pending edits and remove the editing layer."""
        if self.editor is None:
            return
        if self.session is not None:
            self.apply_nucleus_edits()
        if self.editor in self.viewer.layers:
            self.viewer.layers.remove(self.editor)
        self.editor = None
        self.editor_label.setText("")
