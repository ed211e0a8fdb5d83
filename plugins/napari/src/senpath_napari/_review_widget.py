"""Review widget: look at a slide's cells by call and correct them, saved into the results store.

- marker and colour mode (call: positive red / negative blue; bin: 1+ yellow, 2+ orange, 3+ red;
  excluded grey);
- a click on a nucleus shows its id and measurements ("inspect", the default: a click edits nothing);
  pick "flip call" or "exclude / include" in "click does" (or cycle with Shift-M) to edit by clicking
  (a click that drags pans);
- threshold slider per marker with live counts, % positive and H-score; apply to the slide or save
  a stain profile for the batch (``senpath run --config profile.toml``);
- a queue of near-threshold cells, stepped through with Shift-N / Shift-B (next / back), Shift-F
  (flip), Shift-X (exclude or include), Shift-U (undo);
- nucleus editing in the view or a drawn ROI on an editable Labels layer (multiscale labels are not
  editable in napari): paint, erase, fill, split (paint a new id over part of a nucleus), merge (paint
  a neighbour's id); each stroke is written back and only the changed nuclei are re-measured.

Every correction goes through :class:`senpath.corrections.CorrectionSession`: appended to the
store's ``corrections.jsonl`` (fsynced) before the widget shows it, so a crash loses at most the edit
being made; the derived files (summary, manifest) are rewritten shortly after each edit (autosave)
and on "Save". One window corrects a store at a time (the store's ``store.lock``): a second one
opens it read-only and says who is correcting it. Closing the widget saves, releases the lock and
removes its mouse and key bindings from the viewer.

A store whose slide has moved opens without the slide, with a warning; "Locate slide…" records where
it is now (``senpath relink`` does the same from the command line).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from senpath_napari import _layers

#: Largest side (label px) of a region loaded for nucleus editing.
MAX_EDIT_PX = 2048
#: Keyboard shortcuts (viewer-wide).
SHORTCUTS = {
    "Shift-N": "next_cell",
    "Shift-B": "previous_cell",
    "Shift-F": "flip_current",
    "Shift-X": "exclude_current",
    "Shift-U": "undo",
    "Shift-M": "cycle_click_mode",
}
#: What a click on a nucleus does; the first, the default, edits nothing.
CLICK_MODES = ("inspect", "flip call", "exclude / include", "off")
_SLIDER_STEPS = 1000
_SLIDER_MAX_OD = 1.0


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _canvas_size(viewer: Any) -> tuple[int, int]:
    """(height, width) of the viewer's canvas in screen px.

    ``viewer.canvas.size`` is public since napari 0.9 (the canvas model, napari#8633); before it only
    the private, deprecated ``window._qt_viewer.canvas.size`` had it.
    """
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is None:
        try:
            size = viewer.window._qt_viewer.canvas.size
        except AttributeError:  # neither: a typical canvas
            return 800, 1000
    h, w = size
    return int(h), int(w)


class ReviewWidget(QWidget):
    """Dock widget reviewing one results store (the one open in the viewer, or chosen).

    Parameters
    ----------
    napari_viewer : the viewer (napari passes it).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Any = None
        self.marker: str | None = None
        self.queue: list[int] = []
        self.queue_pos = -1
        self.current_cell: int | None = None
        self.editor: Any = None
        self.editor_origin: tuple[int, int] = (0, 0)
        self.pending_ids: set[int] = set()
        self._key_handlers: dict[str, Any] = {}
        self._connected = False
        self._docked = False
        self._build()
        self._autosave = QTimer(self)
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(1500)
        self._autosave.timeout.connect(self.save)
        self._connect()
        for layer in list(self.viewer.layers):
            if self._store_of(layer) and self.session is None:
                self.open_store(self._store_of(layer), add_layers=False)

    # ------------------------------------------------------------------ viewer hooks, closing

    def _connect(self) -> None:
        """Register the click action, the shortcuts and the layer watch with the viewer."""
        if self._connected:
            return
        for key, method in SHORTCUTS.items():
            handler = self._key_handler(method)
            self._key_handlers[key] = handler
            self.viewer.bind_key(key, handler, overwrite=True)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._connected = True

    def teardown(self) -> None:
        """Stop reviewing: write pending edits, release the store and unhook from the viewer.

        Called when the widget is closed (its dock's close button): a closed widget must not go
        on editing on clicks and shortcuts, nor keep other windows from correcting the store.
        """
        if self._connected:
            from napari.utils.key_bindings import KeyBinding

            for key, handler in self._key_handlers.items():
                # only our own binding: another widget may have bound the key since
                if self.viewer.keymap.get(KeyBinding.from_str(key)) is handler:
                    self.viewer.bind_key(key, None)
            self._key_handlers.clear()
            if self._on_mouse in self.viewer.mouse_drag_callbacks:
                self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
            self.viewer.layers.events.inserted.disconnect(self._on_layer_inserted)
            self._connected = False
        if self.session is not None:
            if not self.session.read_only:
                self.close_editor()
                self.save()
            self.session.close()

    def event(self, event: QEvent) -> bool:
        # napari's dock close button takes the widget out of its dock (parent None), it does not
        # close it: that is when it stops reviewing
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self.teardown()
        return super().event(event)

    def closeEvent(self, event: Any) -> None:
        self.teardown()
        super().closeEvent(event)

    # ------------------------------------------------------------------------------ layout

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.store_label = QLabel("no results open")
        self.store_label.setWordWrap(True)
        open_button = QPushButton("Open results…")
        open_button.clicked.connect(self._choose_store)
        top.addWidget(self.store_label, 1)
        top.addWidget(open_button)
        layout.addLayout(top)
        self.locate_button = QPushButton("Locate slide…")
        self.locate_button.setToolTip("The slide was moved since the analysis: point to its file")
        self.locate_button.clicked.connect(self._choose_slide)
        self.locate_button.setVisible(False)
        layout.addWidget(self.locate_button)

        form = QFormLayout()
        self.marker_combo = QComboBox()
        self.marker_combo.currentTextChanged.connect(self.set_marker)
        self.colour_combo = QComboBox()
        self.colour_combo.addItems(["call", "bin"])
        self.colour_combo.currentTextChanged.connect(lambda _: self.refresh_overlay())
        self.click_combo = QComboBox()
        self.click_combo.addItems(list(CLICK_MODES))
        self.click_combo.setToolTip(
            "inspect: a click shows the cell and edits nothing; flip call / exclude: a click edits "
            "(Shift-M cycles)"
        )
        form.addRow("marker", self.marker_combo)
        form.addRow("colour by", self.colour_combo)
        form.addRow("click does (Shift-M)", self.click_combo)
        layout.addLayout(form)
        self.cell_label = QLabel("click a nucleus to see its id and measurements")
        self.cell_label.setWordWrap(True)
        layout.addWidget(self.cell_label)
        self.stats_label = QLabel("")
        self.stats_label.setTextFormat(Qt.RichText)
        layout.addWidget(self.stats_label)

        box = QGroupBox("Threshold (mean OD in the marker's compartment)")
        tl = QVBoxLayout(box)
        row = QHBoxLayout()
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, _SLIDER_STEPS)
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(3)
        self.spin.setRange(0.0, 3.0)
        self.spin.setSingleStep(0.005)
        self.slider.valueChanged.connect(
            lambda v: self.spin.setValue(v * _SLIDER_MAX_OD / _SLIDER_STEPS)
        )
        self.spin.valueChanged.connect(self._threshold_moved)
        row.addWidget(self.slider, 1)
        row.addWidget(self.spin)
        tl.addLayout(row)
        self.preview_label = QLabel("")
        tl.addWidget(self.preview_label)
        row = QHBoxLayout()
        apply_button = QPushButton("Apply to slide")
        apply_button.clicked.connect(self.apply_threshold)
        profile_button = QPushButton("Save as profile…")
        profile_button.clicked.connect(self._choose_profile)
        row.addWidget(apply_button)
        row.addWidget(profile_button)
        tl.addLayout(row)
        layout.addWidget(box)

        box = QGroupBox("Near-threshold queue")
        ql = QVBoxLayout(box)
        ql.addWidget(
            QLabel("Shift-N next, Shift-B back, Shift-F flip, Shift-X exclude, Shift-U undo")
        )
        row = QHBoxLayout()
        self.band_spin = QDoubleSpinBox()
        self.band_spin.setDecimals(3)
        self.band_spin.setRange(0.0, 3.0)
        self.band_spin.setValue(0.05)
        self.band_spin.setPrefix("± ")
        self.band_spin.setSuffix(" OD")
        build = QPushButton("Build queue")
        build.clicked.connect(self.build_queue)
        row.addWidget(self.band_spin)
        row.addWidget(build)
        ql.addLayout(row)
        row = QHBoxLayout()
        for text, method in (
            ("◀ back", self.previous_cell),
            ("next ▶", self.next_cell),
            ("flip", self.flip_current),
            ("exclude", self.exclude_current),
        ):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, m=method: m())
            row.addWidget(b)
        ql.addLayout(row)
        self.queue_label = QLabel("")
        self.queue_label.setWordWrap(True)
        ql.addWidget(self.queue_label)
        layout.addWidget(box)

        box = QGroupBox("Nuclei")
        nl = QVBoxLayout(box)
        row = QHBoxLayout()
        edit_button = QPushButton("Edit nuclei in view / ROI")
        edit_button.clicked.connect(lambda: self.open_editor())
        new_button = QPushButton("New nucleus id")
        new_button.clicked.connect(self.new_nucleus_id)
        row.addWidget(edit_button)
        row.addWidget(new_button)
        nl.addLayout(row)
        row = QHBoxLayout()
        self.auto_apply = QCheckBox("write back each stroke")
        self.auto_apply.setChecked(True)
        apply_edits = QPushButton("Apply edits")
        apply_edits.clicked.connect(self.apply_nucleus_edits)
        close_editor = QPushButton("Close editor")
        close_editor.clicked.connect(self.close_editor)
        row.addWidget(self.auto_apply)
        row.addWidget(apply_edits)
        row.addWidget(close_editor)
        nl.addLayout(row)
        self.editor_label = QLabel("")
        self.editor_label.setWordWrap(True)
        nl.addWidget(self.editor_label)
        layout.addWidget(box)

        row = QHBoxLayout()
        undo = QPushButton("Undo (Shift-U)")
        undo.clicked.connect(self.undo)
        save = QPushButton("Save")
        save.clicked.connect(self.save)
        row.addWidget(undo)
        row.addWidget(save)
        layout.addLayout(row)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    # ----------------------------------------------------------------------------- store

    @staticmethod
    def _store_of(layer: Any) -> str | None:
        return (getattr(layer, "metadata", None) or {}).get("senpath_store")

    def _on_layer_inserted(self, event: Any) -> None:
        store = self._store_of(event.value)
        if store and self.session is None:
            self.open_store(store, add_layers=False)

    def _choose_store(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "senpath results folder (results/<slide>)")
        if folder:
            self.open_store(folder)

    def open_store(self, folder: str | Path, *, add_layers: bool = True) -> None:
        """Start reviewing a results store (adds its layers unless they are open already).

        When another window or person corrects the store now, it opens read-only and says so.
        """
        import warnings

        from napari.utils.notifications import show_info
        from senpath.corrections import CorrectionSession, StaleLockWarning, StoreLockedError

        folder = Path(folder)
        if self.session is not None:
            if not self.session.read_only:
                self.save()
            self.session.close()
        locked: str | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StaleLockWarning)
            try:
                self.session = CorrectionSession(folder)
            except StoreLockedError as exc:
                locked = str(exc)
                self.session = CorrectionSession(folder, read_only=True)
        if add_layers and not self._layers("calls"):
            for data, kwargs, kind in _layers.results_layers(folder):
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        mode = " <b>read-only</b>" if locked else ""
        self.store_label.setText(f"<b>{self.session.slide_id}</b> ({folder}){mode}")
        if self.session.moved_aside:
            self.status_label.setText(
                f"an old corrections log (earlier analysis) was kept as {self.session.moved_aside.name}"
            )
        for w in caught:
            if issubclass(w.category, StaleLockWarning):
                show_info(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.marker_combo.blockSignals(True)
        self.marker_combo.clear()
        self.marker_combo.addItems(self.session.markers)
        self.marker_combo.blockSignals(False)
        if self.session.markers:
            self.set_marker(self.session.markers[0])
        self._update_status()
        self.locate_button.setVisible(not self.session.slide_found)
        if not self.session.slide_found:  # the reader (results_layers) has warned already
            self.status_label.setText(
                _layers.slide_missing_message(
                    self.session.slide_id, self.session.slide_path, folder
                )
            )
        if locked:
            self._tell(locked)

    def _choose_slide(self) -> None:
        if self.session is None:
            return
        path, _ = QFileDialog.getOpenFileName(
            self, f"Where is the slide of {self.session.slide_id} now?", str(Path.home())
        )
        if path:
            self.relink_slide(path)

    def relink_slide(self, path: str | Path, *, force: bool = False) -> bool:
        """Point the store to its slide file after it was moved (logged), and show the slide."""
        from senpath.corrections import CorrectionError
        from senpath.io import open_slide

        if self.session is None:
            return False
        try:
            entry = self.session.relink_slide(path, force=force)
        except CorrectionError as exc:
            self._tell(str(exc))
            return False
        mpp = self.session.raw.manifest.get("identity", {}).get("mpp")
        data, kwargs, _ = _layers.slide_layer(
            open_slide(entry["slide_path"], mpp=mpp), name=self.session.slide_id
        )
        kwargs["metadata"]["senpath_store"] = str(self.session.folder)
        for layer in self._layers("slide"):
            self.viewer.layers.remove(layer)
        layer = self.viewer.add_image(data, **kwargs)
        self.viewer.layers.move(self.viewer.layers.index(layer), 0)  # under the overlays
        self.locate_button.setVisible(False)
        self._update_status(f"slide found at {entry['slide_path']} (recorded in the log)")
        return True

    def _layers(self, role: str) -> list[Any]:
        store = str(self.session.folder) if self.session else None
        return [
            layer
            for layer in self.viewer.layers
            if (layer.metadata or {}).get("senpath_role") == role
            and (store is None or self._store_of(layer) == store)
        ]

    # --------------------------------------------------------------------------- display

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
        self.slider.setValue(round(min(thr, _SLIDER_MAX_OD) / _SLIDER_MAX_OD * _SLIDER_STEPS))
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
        self.slider.setValue(round(min(value, _SLIDER_MAX_OD) / _SLIDER_MAX_OD * _SLIDER_STEPS))
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

    def _try(self, edit: Any, *args: Any) -> Any:
        """Make one correction; tell why when it cannot be made (read-only, invalid)."""
        from senpath.corrections import CorrectionError

        try:
            return edit(*args)
        except CorrectionError as exc:
            self._tell(str(exc))
            return None

    def _edited(self, *, overlay: bool = True) -> None:
        """After any correction: redraw, and schedule the autosave of the derived files."""
        if overlay:
            self.refresh_overlay()
        else:
            self._update_stats()
        self._update_status()
        self._autosave.start()

    # ------------------------------------------------------------------------ cell edits

    def cell_at(self, y_um: float, x_um: float) -> int:
        """``cell_id`` of the nucleus at a world position in µm (0: none)."""
        return self.session.cell_at(x_um, y_um) if self.session else 0

    def cycle_click_mode(self) -> str:
        """Switch what a click does to the next of :data:`CLICK_MODES` (Shift-M); returns it."""
        i = self.click_combo.currentIndex()
        self.click_combo.setCurrentIndex((i + 1) % self.click_combo.count())
        mode = self.click_combo.currentText()
        self._update_status(f"a click now does: {mode}")
        return mode

    def click_at(self, y_um: float, x_um: float, *, action: str | None = None) -> int:
        """Apply the click action at a world position (µm); returns the cell id (0: none).

        "inspect" (the default) selects the cell and shows it; only "flip call" and
        "exclude / include" edit.
        """
        if self.session is None or self.marker is None:
            return 0
        cid = self.cell_at(y_um, x_um)
        action = action or self.click_combo.currentText()
        if cid == 0 or action == "off":
            return cid
        self.current_cell = cid
        entry = None
        if action == "flip call":
            entry = self._try(self.session.flip_call, cid, self.marker)
        elif action.startswith("exclude"):
            entry = self._try(self.session.toggle_excluded, cid)
        if entry is not None:
            self._edited()
        self._show_cell(cid)
        return cid

    def _on_mouse(self, viewer: Any, event: Any) -> Any:
        if self.session is None or event.button != 1 or self.click_combo.currentText() == "off":
            return
        active = viewer.layers.selection.active
        if active is not None and active is self.editor:
            return  # painting nuclei
        if active is not None and getattr(active, "mode", "pan_zoom") not in ("pan_zoom", None):
            return
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            y, x = event.position[-2], event.position[-1]
            self.click_at(float(y), float(x))

    # -------------------------------------------------------------------------- thresholds

    def apply_threshold(self, value: float | None = None) -> None:
        """Re-score the slide at the slider's threshold (or ``value``, OD) for the current marker."""
        if self.session is None or self.marker is None:
            return
        value = float(self.spin.value() if value is None else value)
        if value != self.spin.value():
            self.spin.setValue(value)
        entry = self._try(self.session.set_thresholds, {self.marker: value})
        if entry is not None:
            self._edited()

    def _choose_profile(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save stain profile (senpath run --config)", "profile.toml", "TOML (*.toml)"
        )
        if path:
            self.save_profile(path)

    def save_profile(self, path: str | Path, *, name: str | None = None) -> Path:
        """Write the slide's stain vectors and the thresholds in effect as a profile for the batch."""
        out = self.session.save_profile(path, name=name)
        self._update_status(f"profile saved to {out}: use it with senpath run --config {out.name}")
        return out

    # ------------------------------------------------------------------------------ queue

    def build_queue(self) -> list[int]:
        """Queue the cells nearest the threshold (within the band), nearest first."""
        if self.session is None or self.marker is None:
            return []
        band = float(self.band_spin.value()) or None
        self.queue = [int(c) for c in self.session.queue(self.marker, band_od=band, limit=None)]
        self.queue_pos = -1
        self.queue_label.setText(f"{len(self.queue)} cells within the band; Shift-N for the first")
        return self.queue

    def _go(self, pos: int) -> int | None:
        if not self.queue:
            self.build_queue()
        if not self.queue:
            return None
        self.queue_pos = max(0, min(pos, len(self.queue) - 1))
        cid = self.queue[self.queue_pos]
        self.current_cell = cid
        self._show_cell(cid, centre=True)
        return cid

    def next_cell(self) -> int | None:
        """Go to the next queued cell (centre the view on it)."""
        return self._go(self.queue_pos + 1)

    def previous_cell(self) -> int | None:
        return self._go(self.queue_pos - 1)

    def flip_current(self) -> None:
        """Flip the call of the current cell."""
        if self.session is not None and self.current_cell and self.marker:
            if self._try(self.session.flip_call, self.current_cell, self.marker) is not None:
                self._edited()
            self._show_cell(self.current_cell)

    def exclude_current(self) -> None:
        """Exclude (or include again) the current cell."""
        if self.session is not None and self.current_cell:
            if self._try(self.session.toggle_excluded, self.current_cell) is not None:
                self._edited()
            self._show_cell(self.current_cell)

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

    # ---------------------------------------------------------------------------- undo, save

    def undo(self) -> None:
        """Undo the latest correction in effect (logged as an undo entry)."""
        if self.session is None:
            return
        from senpath.corrections import CorrectionError

        try:
            entry = self.session.undo()
        except CorrectionError as exc:
            self._tell(str(exc))
            return
        if entry is None:
            self._update_status("nothing to undo")
            return
        if self.editor is not None:
            self._reload_editor()
        if self.marker:
            self.set_marker(self.marker)
        self._edited()

    def save(self) -> None:
        """Rewrite the store's derived files (summary, manifest) from the corrections."""
        if self.session is None or self.session.read_only:
            return
        from senpath.corrections import CorrectionError

        self._autosave.stop()
        try:
            self.session.save()
        except CorrectionError as exc:  # the lock was taken over (removed by hand)
            self._tell(str(exc))
            return
        self._update_status()

    # --------------------------------------------------------------------------- nuclei

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

    # ---------------------------------------------------------------------------- keys

    def _key_handler(self, method: str) -> Any:
        def handler(viewer: Any) -> None:
            getattr(self, method)()

        handler.__name__ = f"senpath_{method}"
        handler.__doc__ = f"senpath review: {method.replace('_', ' ')}"
        return handler
