"""Review widget: look at a slide's cells by call and correct them, saved into the results store.

- marker and colour mode (call: positive red / negative blue; bin: 1+ yellow, 2+ orange, 3+ red;
  set by hand magenta / cyan; excluded grey), with a legend; cells drawn as outlines (default) or
  filled; Shift-O hides the overlays to show the raw stain; the cell under the cursor is shown;
- the measurement dock ("Table and histogram"): a sortable per-cell table whose rows go to their
  cell, and the OD histogram whose threshold line drags the threshold slider;
- a click on a nucleus shows its id and measurements ("inspect", the default: a click edits nothing);
  pick "flip call" or "exclude / include" in "click does" (or cycle with Shift-M) to edit by clicking
  (a click that drags pans);
- threshold slider per marker with live counts, % positive and H-score, the overlay recoloured
  with the calls it would give (debounced); apply to the slide or save
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

This module is the widget's shell (layout, opening a store, closing); its jobs live in mixins:
:mod:`._review_display` (overlay, counts, the selected cell), :mod:`._review_edits` (cell
corrections, queue, undo, save), :mod:`._review_nuclei` (nucleus editing) and
:mod:`._review_bindings` (shortcuts, the click and the hover, removed on close); the overlay's
drawing is :mod:`._overlay`, the measurement dock :mod:`._measurement_panel`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from senpath_napari._measurement_panel import MeasurementPanel
from senpath_napari._overlay import DISPLAY_MODES, legend_html
from senpath_napari._review_bindings import CLICK_MODES, SHORTCUTS, ViewerBindings
from senpath_napari._review_display import SLIDER_MAX_OD, SLIDER_STEPS, ReviewDisplay
from senpath_napari._review_edits import CellEdits
from senpath_napari._review_nuclei import MAX_EDIT_PX, NucleusEditor
from senpath_napari._view import _camera, _canvas_size

#: The overlay is recoloured this long after the threshold slider last moved (ms).
PREVIEW_DEBOUNCE_MS = 150
#: The cell under the cursor is looked up this long after the cursor last moved (ms).
HOVER_DELAY_MS = 60

__all__ = ["CLICK_MODES", "MAX_EDIT_PX", "SHORTCUTS", "ReviewWidget", "_camera", "_canvas_size"]


class ReviewWidget(ReviewDisplay, CellEdits, NucleusEditor, ViewerBindings, QWidget):
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
        self.measurements: Any = None
        self._overlay_hidden: dict[int, bool] | None = None
        self._drawn_threshold: float | None = None
        self._hover_at: tuple[float, float] | None = None
        self._build()
        self._autosave = self._timer(1500, self.save)
        # the overlay follows the threshold slider once it rests (a redraw per step would lag)
        self._preview_timer = self._timer(PREVIEW_DEBOUNCE_MS, self._recolour)
        self._hover_timer = self._timer(HOVER_DELAY_MS, self._show_hover)
        self._connect()
        for layer in list(self.viewer.layers):
            if self._store_of(layer) and self.session is None:
                self.open_store(self._store_of(layer), add_layers=False)

    def _timer(self, ms: int, slot: Any) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    # --------------------------------------------------------------- closing

    def teardown(self) -> None:
        """Stop reviewing: write pending edits, release the store and unhook from the viewer.

        Called when the widget is closed (its dock's close button): a closed widget must not go
        on editing on clicks and shortcuts, nor keep other windows from correcting the store.
        """
        self._unhook()
        self._preview_timer.stop()
        self._hover_timer.stop()
        if self.measurements is not None:
            panel, self.measurements = self.measurements, None
            try:
                self.viewer.window.remove_dock_widget(panel)
            except (LookupError, RuntimeError, AttributeError):  # closed with the window already
                pass
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
        self.display_combo = QComboBox()
        self.display_combo.addItems(list(DISPLAY_MODES))
        self.display_combo.setToolTip("outlines leave the stain inside each nucleus visible")
        self.display_combo.currentTextChanged.connect(self.set_display)
        form.addRow("marker", self.marker_combo)
        form.addRow("colour by", self.colour_combo)
        form.addRow("draw cells as", self.display_combo)
        form.addRow("click does (Shift-M)", self.click_combo)
        layout.addLayout(form)
        self.legend_label = QLabel(legend_html("call"))
        self.legend_label.setTextFormat(Qt.RichText)
        self.legend_label.setWordWrap(True)
        layout.addWidget(self.legend_label)
        row = QHBoxLayout()
        self.overlay_button = QPushButton("Raw stain (Shift-O)")
        self.overlay_button.setCheckable(True)
        self.overlay_button.setToolTip("hide the calls to see the stain; press again to show them")
        self.overlay_button.clicked.connect(lambda _=False: self.toggle_overlay())
        measurements = QPushButton("Table and histogram")
        measurements.setToolTip("dock the measurement table and the OD histogram")
        measurements.clicked.connect(lambda _=False: self.show_measurements())
        row.addWidget(self.overlay_button)
        row.addWidget(measurements)
        layout.addLayout(row)
        self.hover_label = QLabel("hover a nucleus to see its measurements")
        self.hover_label.setWordWrap(True)
        self.hover_label.setToolTip("the cell under the cursor")
        layout.addWidget(self.hover_label)
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
        self.slider.setRange(0, SLIDER_STEPS)
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(3)
        self.spin.setRange(0.0, 3.0)
        self.spin.setSingleStep(0.005)
        self.slider.valueChanged.connect(
            lambda v: self.spin.setValue(v * SLIDER_MAX_OD / SLIDER_STEPS)
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

    def show_measurements(self) -> MeasurementPanel:
        """Dock the measurement table and the OD histogram (once; shown again if docked)."""
        if self.measurements is None:
            self.measurements = MeasurementPanel(self)
            self.viewer.window.add_dock_widget(
                self.measurements, name="senpath measurements", area="bottom"
            )
        self.measurements.refresh()
        return self.measurements

    # ----------------------------------------------------------------------------- store

    _store_of = staticmethod(_layers.store_of)

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
