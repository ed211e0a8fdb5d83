"""What the Review widget shows: the call overlay and centroids, counts, the threshold preview,
the selected cell and the status line."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from senpath_napari import _layers
from senpath_napari._view import _camera

#: The threshold slider: steps over 0 .. ``SLIDER_MAX_OD`` (the spin box goes beyond).
SLIDER_STEPS = 1000
SLIDER_MAX_OD = 1.0


class ReviewDisplay:
    """Mixin of :class:`~senpath_napari._review_widget.ReviewWidget`: the display."""

    viewer: Any
    session: Any
    marker: str | None
    queue: list[int]
    queue_pos: int

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
        """Recolour the call overlay and points from the session's corrected cells."""
        if self.session is None:
            return
        if self.marker is None:  # no marker (H&E): the nuclei layer shows edits
            for layer in self._layers("nuclei"):
                levels = _layers.label_levels(self.session.folder)
                layer.data = levels if len(levels) > 1 else levels[0]
            return
        cells, mode = self.session.cells, self.colour_combo.currentText()
        calls = self._layers("calls")
        if calls:
            layer = calls[0]
            levels = _layers.class_levels(
                self.session.folder, _layers.class_lut(cells, self.marker)
            )
            layer.data = levels if len(levels) > 1 else levels[0]
            layer.colormap = _layers.class_colormap(mode)
            layer.name = f"{self.marker} calls"
            layer.metadata["marker"] = self.marker
        coords = cells[["y_um", "x_um"]].to_numpy(dtype=np.float64)
        for layer in self._layers("cells"):
            # a nucleus edit can keep the number of cells and still move, add or remove some
            if not np.array_equal(np.asarray(layer.data), coords):
                layer.data = coords
            layer.features = _layers.point_features(cells, self.marker)
            layer.face_color = _layers.point_colours(cells, self.marker, mode)
        self._update_stats()

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
        m = self.marker
        if row[f"{m}_positive"]:
            call = f"positive {int(row[f'{m}_bin'])}+"
        else:
            call = "negative"
        manual = " (set by hand)" if row.get(f"{m}_manual", False) else ""
        excl = ", EXCLUDED" if row["excluded"] else ""
        where = ""
        if cid in self.queue:
            where = f"{self.queue.index(cid) + 1}/{len(self.queue)}: "
        text = (
            f"cell {cid}: {m} OD {row[f'{m}_od']:.3f}, {call}{manual}{excl}; "
            f"nucleus {row['nucleus_area_um2']:.0f} µm²"
        )
        self.queue_label.setText(f"{where}{text}")
        self.cell_label.setText(text)
        self.viewer.status = text
