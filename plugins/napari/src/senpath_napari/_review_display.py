"""What the Review widget shows: the call overlay (outlines by default) and centroids, recoloured
live as the threshold slider moves; the raw stain on one key; the cell under the cursor; counts, the
selected cell, the measurement table and histogram, and the status line."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from senpath_napari import _layers, _overlay
from senpath_napari._view import _camera

#: The threshold slider: steps over 0 .. ``SLIDER_MAX_OD`` (the spin box goes beyond).
SLIDER_STEPS = 1000
SLIDER_MAX_OD = 1.0
#: Roles of the layers the raw-stain toggle hides (all of senpath's drawing over the slide).
OVERLAY_ROLES = ("calls", "cells", "current", "nuclei")


class ReviewDisplay:
    """Mixin of :class:`~senpath_napari._review_widget.ReviewWidget`: the display."""

    viewer: Any
    session: Any
    marker: str | None
    queue: list[int]
    queue_pos: int
    current_cell: int | None
    measurements: Any
    _overlay_hidden: dict[int, bool] | None
    _drawn_threshold: float | None

    def _layers(self, role: str) -> list[Any]:
        store = str(self.session.folder) if self.session else None
        return [
            layer
            for layer in self.viewer.layers
            if (layer.metadata or {}).get("senpath_role") == role
            and (store is None or self._store_of(layer) == store)
        ]

    def set_marker(self, marker: str) -> None:
        """Show and edit calls of ``marker``."""
        if not marker or self.session is None:
            return
        self.marker = marker
        thr = self.session.thresholds[marker]
        self.spin.blockSignals(True)
        self.spin.setValue(thr)
        self.spin.blockSignals(False)
        self.slider.blockSignals(True)
        self.slider.setValue(round(min(thr, SLIDER_MAX_OD) / SLIDER_MAX_OD * SLIDER_STEPS))
        self.slider.blockSignals(False)
        self.queue, self.queue_pos = [], -1
        self.refresh_overlay()

    def refresh_overlay(self) -> None:
        """Recolour the call overlay and points from the session's corrected cells (at the slider's
        threshold when it differs from the slide's: the preview), then the counts and the table."""
        if self.session is None:
            return
        if self.marker is None:  # no marker (H&E): the nuclei layer shows edits
            for layer in self._layers("nuclei"):
                levels = _layers.label_levels(self.session.folder)
                layer.data = levels if len(levels) > 1 else levels[0]
                layer.contour = _overlay.OUTLINE_PX
            return
        self._recolour()
        self._update_stats()
        if self.measurements is not None:
            self.measurements.refresh()

    def shown_cells(self) -> Any:
        """The per-cell table the overlay shows: the corrected cells, with the marker's automatic
        calls re-made at the slider's threshold while it differs from the slide's (the preview)."""
        cells = self.session.cells
        value = float(self.spin.value())
        if self.marker is None or abs(value - self.session.thresholds[self.marker]) < 1e-9:
            return cells
        return _overlay.preview_cells(cells, self.session.assay, self.marker, value)

    def _recolour(self) -> None:
        """Redraw the call overlay and the centroids from :meth:`shown_cells` (no counts)."""
        self._preview_timer.stop()
        if self.session is None or self.marker is None:
            return
        cells, mode = self.shown_cells(), self.colour_combo.currentText()
        self._drawn_threshold = float(self.spin.value())
        calls = self._layers("calls")
        if calls:
            layer = calls[0]
            levels = _layers.class_levels(
                self.session.folder, _layers.class_lut(cells, self.marker)
            )
            layer.data = levels if len(levels) > 1 else levels[0]
            layer.colormap = _layers.class_colormap(mode)
            _overlay.style_calls_layer(layer, self.display_combo.currentText())
            layer.name = f"{self.marker} calls"
            layer.metadata["marker"] = self.marker
        coords = cells[["y_um", "x_um"]].to_numpy(dtype=np.float64)
        for layer in self._layers("cells"):
            # a nucleus edit can keep the number of cells and still move, add or remove some
            if not np.array_equal(np.asarray(layer.data), coords):
                layer.data = coords
            layer.features = _layers.point_features(cells, self.marker)
            layer.face_color = _layers.point_colours(cells, self.marker, mode)
        self.legend_label.setText(_overlay.legend_html(mode))

    def set_display(self, display: str) -> None:
        """Draw the call overlay as ``outlines`` (the default) or ``filled``."""
        self.display_combo.setCurrentText(display)
        for layer in self._layers("calls"):
            _overlay.style_calls_layer(layer, display)

    def toggle_overlay(self) -> bool:
        """Hide senpath's overlays to see the raw stain, or show them again (Shift-O).

        Returns ``True`` when the overlays are shown after the call. Showing them again restores
        each layer's visibility as it was (the centroids stay hidden if they were).
        """
        layers = [
            lay
            for lay in self.viewer.layers
            if (lay.metadata or {}).get("senpath_role") in OVERLAY_ROLES
            and self._store_of(lay) in (None, str(self.session.folder) if self.session else None)
        ]
        if self._overlay_hidden is None:
            self._overlay_hidden = {id(lay): bool(lay.visible) for lay in layers}
            for lay in layers:
                lay.visible = False
            self._update_status("overlay hidden: the raw stain (Shift-O shows the calls again)")
            self.overlay_button.setChecked(True)
            return False
        was, self._overlay_hidden = self._overlay_hidden, None
        for lay in layers:
            lay.visible = was.get(id(lay), True)
        self._update_status("overlay shown (Shift-O hides it)")
        self.overlay_button.setChecked(False)
        return True

    def hover_text(self, y_um: float, x_um: float) -> str:
        """What hovering a world position (µm) shows: the cell there and its measurements."""
        if self.session is None or self.marker is None:
            return ""
        cid = self.session.cell_at(x_um, y_um)
        if not cid:
            return ""
        cells = self.session.cells
        one = cells[cells["cell_id"].to_numpy() == cid]
        if one.empty:
            return ""
        value = float(self.spin.value())
        if abs(value - self.session.thresholds[self.marker]) >= 1e-9:  # the preview's call
            one = _overlay.preview_cells(one, self.session.assay, self.marker, value)
        return _overlay.cell_text(one.iloc[0], self.marker)

    def _on_hover(self, viewer: Any, event: Any) -> None:
        # the lookup reads a label chunk: wait until the cursor rests a moment
        self._hover_at = (float(event.position[-2]), float(event.position[-1]))
        self._hover_timer.start()

    def _show_hover(self) -> None:
        if self._hover_at is None:
            return
        text = self.hover_text(*self._hover_at)
        self.hover_label.setText(text or "(no cell under the cursor)")
        if text:
            self.viewer.status = text

    def _fmt(self, s: dict[str, Any]) -> str:
        pct = s["pct_positive"]
        pct_text = "–" if pct is None or math.isnan(pct) else f"{pct:.1f}%"
        h = s["h_score"]
        h_text = "–" if h is None or math.isnan(h) else f"{h:.0f}"
        return f"{s['n_positive']}/{s['n_cells']} positive ({pct_text}), H-score {h_text}"

    def _update_stats(self) -> None:
        if self.session is None:
            return
        lines = []
        for m in self.session.markers:
            s = self.session.stats(m)
            raw = self.session.raw.summary.get("markers", {}).get(m, {})
            raw_pct = raw.get("pct_positive")
            was = f" (pipeline: {raw_pct:.1f}%)" if isinstance(raw_pct, float) else ""
            lines.append(f"<b>{m}</b> @ {self.session.thresholds[m]:.3f} OD: {self._fmt(s)}{was}")
        n_excl = int(self.session.cells["excluded"].sum())
        lines.append(f"{len(self.session.cells)} cells, {n_excl} excluded")
        self.stats_label.setText("<br>".join(lines))
        self._threshold_moved(self.spin.value())

    def _threshold_moved(self, value: float) -> None:
        if self.session is None or self.marker is None:
            return
        self.slider.blockSignals(True)
        self.slider.setValue(round(min(value, SLIDER_MAX_OD) / SLIDER_MAX_OD * SLIDER_STEPS))
        self.slider.blockSignals(False)
        s = self.session.stats(self.marker, threshold_od=float(value))
        self.preview_label.setText(f"at {value:.3f} OD: {self._fmt(s)}")
        if self.measurements is not None:
            self.measurements.histogram.set_threshold(float(value))
        if self._drawn_threshold is None or abs(float(value) - self._drawn_threshold) > 1e-9:
            self._preview_timer.start()  # recolour once the slider rests (debounced)

    def _update_status(self, text: str | None = None) -> None:
        if self.session is None:
            return
        n = sum(e["action"] != "start" for e in self.session.entries)
        last = self.session.entries[-1] if n else None
        msg = f"{n} corrections in {self.session.folder.name}/corrections.jsonl"
        if last:
            msg += f"; last: {last['action']} at {last['time'][11:19]} UTC"
        self.status_label.setText(text or msg)

    def _tell(self, message: str) -> None:
        """Show why a correction could not be made (status line and a napari notification)."""
        from napari.utils.notifications import show_warning

        self.status_label.setText(message)
        show_warning(message)

    def go_to_cell(self, cid: int) -> None:
        """Centre the viewer on a cell and select it (what a click on its table row does)."""
        if self.session is None:
            return
        self.current_cell = int(cid)
        self._show_cell(int(cid), centre=True)

    def _show_cell(self, cid: int, *, centre: bool = False) -> None:
        try:
            row = self.session.cell(cid)
        except ValueError:
            return
        y, x = float(row["y_um"]), float(row["x_um"])
        if centre:
            _camera(self.viewer).center = (y, x)
            _camera(self.viewer).zoom = max(_camera(self.viewer).zoom, 4.0)
        marked = [lay for lay in self.viewer.layers if lay.name == "current cell"]
        if marked:
            marked[0].data = np.array([[y, x]])
        else:
            self.viewer.add_points(
                np.array([[y, x]]),
                name="current cell",
                size=14.0,
                units=_layers.UNITS,
                face_color="transparent",
                border_color="yellow",
                border_width=0.15,
                metadata={"senpath_role": "current"},
            )
            self.viewer.layers.selection.active = (
                self._layers("calls")[0] if self._layers("calls") else None
            )
        where = ""
        if cid in self.queue:
            where = f"{self.queue.index(cid) + 1}/{len(self.queue)}: "
        text = _overlay.cell_text(row, self.marker)
        self.queue_label.setText(f"{where}{text}")
        self.cell_label.setText(text)
        self.viewer.status = text
        if self.measurements is not None:
            self.measurements.table.select_cell(cid)
