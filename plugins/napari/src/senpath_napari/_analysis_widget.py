"""Analysis widget: run senpath on the current view, a drawn ROI or the whole slide.

The work runs in a napari ``thread_worker`` generator that yields once per tile, so the progress bar
moves, "Cancel" stops it at the next tile and the viewer never freezes. A view or ROI is analysed in
memory (a quick look: its cells appear as an overlay with their figures); the whole slide is analysed
into a results store (``<output>/<slide_id>``) that opens for review when it is done.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from senpath_napari import _layers
from senpath_napari._review_widget import _camera, _canvas_size

#: Largest region (µm a side) analysed in memory from the view or an ROI.
MAX_VIEW_UM = 2048.0


class Cancelled(Exception):
    """Raised inside the analysis when the user cancels."""


def analyze_view(
    slide: Any,
    box_um: tuple[float, float, float, float],
    *,
    assay: Any,
    config: Any,
) -> Generator[tuple[int, int], None, tuple[pd.DataFrame, np.ndarray, tuple[float, float]]]:
    """Analyse a region of a slide in memory, tile by tile (yields ``(done, total)``).

    The region gets the cells a stored run of the slide finds there: the slide is planned as a run
    plans it (tissue tiles, stain vectors and glass intensity of the whole slide, planned once per
    slide, assay and settings) and the tiles near the region go through the same tile engine
    (:func:`senpath.tile_engine.analyze_box`).

    Parameters
    ----------
    slide : a :class:`senpath.io.Slide`.
    box_um : (y0, x0, y1, x1) in level-0 µm.
    assay, config : the :class:`~senpath.config.Assay` and :class:`~senpath.config.AnalysisConfig`.

    Returns
    -------
    (cells, labels, origin_um) : scored per-cell table of the cells whose centroid lies in the
    region, (Y, X) int32 labels at the analysis mpp and the (y, x) µm position of labels pixel
    (0, 0).
    """
    from senpath.score import score_cells
    from senpath.tile_engine import analyze_box, grid_box

    plan = _plan(slide, assay, config)
    box = grid_box(plan, box_um)
    cells, labels = yield from analyze_box(plan, box, slide=slide)
    if len(cells):
        cells = score_cells(cells, assay)
    amp = plan.config.analysis_mpp
    return cells, labels, (box.y0 * amp, box.x0 * amp)


_PLANS: dict[tuple[str, str, Any], Any] = {}


def _plan(slide: Any, assay: Any, config: Any) -> Any:
    """The slide's plan for ``assay`` and ``config``, made once (the last one is kept)."""
    from senpath.slide_plan import plan_slide

    key = (str(slide.path), repr(assay), config)
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = plan_slide(slide.path, assay=assay, config=config, slide=slide)
    return _PLANS[key]


class AnalysisWidget(QWidget):
    """Dock widget: choose a slide layer, an assay and what to analyse; run with progress/cancel."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from senpath.config import load_settings

        self.viewer = napari_viewer
        self.worker: Any = None
        #: whether the running analysis watches ``_stop`` (whole slide): Cancel lets it wind down
        self._stoppable = False
        self.last_result: Any = None
        self._stop = threading.Event()
        defaults = load_settings()
        self._assays = dict(defaults.assays)
        self._analysis = defaults.analysis
        self._settings_source: str | None = None
        self._run_config = self._analysis
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.assay_combo = QComboBox()
        self.assay_combo.addItems(sorted(self._assays))
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(
            ["current view", "ROI (shapes layer 'senpath ROI')", "whole slide"]
        )
        self.segmenter_combo = QComboBox()
        self.segmenter_combo.addItems(["auto", "classical", "cnn"])
        # [analysis] test_time_flips: the CNN's maps averaged over each tile and its three flips
        self.flips_check = QCheckBox("test-time flips (CNN only, 4x its work)")
        self.flips_check.setChecked(self._analysis.test_time_flips)
        self.segmenter_combo.currentTextChanged.connect(
            lambda method: self.flips_check.setEnabled(method != "classical")
        )
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("results folder (whole slide); default: next to the slide")
        self.settings_edit = QLineEdit()
        self.settings_edit.setPlaceholderText("settings TOML (optional), as senpath run --config")
        self.settings_edit.editingFinished.connect(
            lambda: self.load_settings(self.settings_edit.text())
        )
        form.addRow("slide", self.layer_combo)
        form.addRow("assay", self.assay_combo)
        form.addRow("analyse", self.scope_combo)
        form.addRow("segmenter", self.segmenter_combo)
        form.addRow("", self.flips_check)
        form.addRow("output", self.out_edit)
        form.addRow("settings", self.settings_edit)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress = QProgressBar()
        layout.addWidget(self.progress)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        layout.addWidget(self.result_label)
        layout.addStretch(1)
        self.viewer.layers.events.inserted.connect(lambda _: self._refresh_layers())
        self.viewer.layers.events.removed.connect(lambda _: self._refresh_layers())
        self._refresh_layers()

    def load_settings(self, path: str | Path | None) -> bool:
        """Read a settings file with senpath's strict loader, as ``senpath run --config`` does.

        Its assays join the assay list and its ``[analysis]`` settings are used by the next run; a
        newly loaded file also sets the segmenter choice and the test-time flips box. A bad file is
        refused with its problems, one line each naming the file and the key, in the result line.

        Parameters
        ----------
        path : the TOML file; empty or ``None``: the defaults and the shipped assays.

        Returns
        -------
        bool
            Whether the settings were loaded (``False``: the problems are shown).
        """
        from senpath.config import ConfigError, load_settings

        try:
            settings = load_settings(Path(path) if path else None)
        except ConfigError as exc:
            self.result_label.setText(str(exc))
            return False
        current = self.assay_combo.currentText()
        self._assays = dict(settings.assays)
        self._analysis = settings.analysis
        self.assay_combo.clear()
        self.assay_combo.addItems(sorted(self._assays))
        if current in self._assays:
            self.assay_combo.setCurrentText(current)
        if settings.source != self._settings_source:
            self.segmenter_combo.setCurrentText(settings.analysis.segmenter)
            self.flips_check.setChecked(settings.analysis.test_time_flips)
            self._settings_source = settings.source
            self.result_label.setText(f"settings: {settings.source}" if settings.source else "")
        return True

    def analysis_config(self) -> Any:
        """The ``[analysis]`` settings the next run uses: the settings file's (or the defaults),
        with the segmenter and test-time flips chosen here (no flips with ``classical``)."""
        method = self.segmenter_combo.currentText()
        flips = self.flips_check.isChecked() and method != "classical"
        return self._analysis.replace(segmenter=method, test_time_flips=flips)

    def _slide_layers(self) -> list[Any]:
        return [lay for lay in self.viewer.layers if (lay.metadata or {}).get("senpath_slide")]

    def _refresh_layers(self) -> None:
        current = self.layer_combo.currentText()
        self.layer_combo.clear()
        names = [lay.name for lay in self._slide_layers()]
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)

    def _region_um(self, layer: Any, scope: str, slide: Any) -> tuple[float, float, float, float]:
        height_um, width_um = slide.shape[0] * slide.mpp[1], slide.shape[1] * slide.mpp[0]
        if scope.startswith("ROI"):
            rois = [
                lay for lay in self.viewer.layers if lay.name == "senpath ROI" and len(lay.data)
            ]
            if not rois:
                raise ValueError("draw a rectangle in a Shapes layer named 'senpath ROI' first")
            pts = np.concatenate([np.asarray(d)[:, -2:] for d in rois[0].data])
            pts = np.asarray([rois[0].data_to_world(p) for p in pts])[:, -2:]
            y0, x0 = pts.min(axis=0)
            y1, x1 = pts.max(axis=0)
        else:
            cy, cx = _camera(self.viewer).center[-2:]
            size = _canvas_size(self.viewer)
            zoom = _camera(self.viewer).zoom or 1.0
            y0, y1 = cy - size[0] / zoom / 2, cy + size[0] / zoom / 2
            x0, x1 = cx - size[1] / zoom / 2, cx + size[1] / zoom / 2
        y0, x0 = max(0.0, y0), max(0.0, x0)
        y1, x1 = min(height_um, y1), min(width_um, x1)
        if y1 - y0 > MAX_VIEW_UM or x1 - x0 > MAX_VIEW_UM:
            cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
            h, w = min(y1 - y0, MAX_VIEW_UM), min(x1 - x0, MAX_VIEW_UM)
            y0, y1, x0, x1 = cy - h / 2, cy + h / 2, cx - w / 2, cx + w / 2
        if y1 <= y0 or x1 <= x0:
            raise ValueError("the view shows none of the slide: pan to the tissue")
        return (float(y0), float(x0), float(y1), float(x1))

    def run(
        self,
        *,
        scope: str | None = None,
        box_um: tuple[float, float, float, float] | None = None,
        out: str | Path | None = None,
    ) -> Any:
        """Start the analysis in a worker thread; returns the worker."""
        from napari.qt.threading import create_worker
        from senpath.io import open_slide

        layers = [lay for lay in self._slide_layers() if lay.name == self.layer_combo.currentText()]
        if not layers:
            self.result_label.setText("open a slide first (File > Open, or a sample)")
            return None
        if not self.load_settings(self.settings_edit.text()):  # re-read: the file may have changed
            return None
        layer = layers[0]
        slide_path = Path(layer.metadata["senpath_slide"])
        slide = open_slide(slide_path)
        assay = self._assays[self.assay_combo.currentText()]
        config = self.analysis_config()
        self._run_config = config  # the region's labels are at this config's analysis_mpp
        self._warn_references(assay, config)
        scope = scope or self.scope_combo.currentText()
        self._stop = threading.Event()
        self._stoppable = scope == "whole slide"
        if scope == "whole slide":
            out_dir = Path(out or self.out_edit.text() or slide_path.parent / "senpath-results")
            gen = _whole_slide(slide_path, out_dir, assay, config, self._stop)
        else:
            try:
                box = box_um or self._region_um(layer, scope, slide)
            except ValueError as exc:
                self.result_label.setText(str(exc))
                return None
            gen = analyze_view(slide, box, assay=assay, config=config)

        def job() -> Generator[tuple[int, int], None, Any]:
            return (yield from gen)

        worker = create_worker(job, _start_thread=False)
        worker.yielded.connect(self._while_shown(self._on_progress))
        worker.returned.connect(self._while_shown(lambda result: self._on_done(result, assay)))
        worker.errored.connect(self._while_shown(self._on_error))
        worker.aborted.connect(self._while_shown(lambda: self._finish("cancelled")))
        worker.finished.connect(self._while_shown(self._on_finished))
        self.worker = worker
        self._buttons(running=True)
        # busy until the first tile is done: planning the slide and a region's only tile give no
        # tile count to show, and a bar at 0 % all through them looks stuck
        self.progress.setRange(0, 0)
        self.result_label.setText(f"analysing {scope} of {slide.slide_id} ({assay.name})…")
        worker.start()
        return worker

    def _while_shown(self, handler: Callable[..., None]) -> Callable[..., None]:
        """``handler``, called only while this widget's Qt objects exist: closing the viewer or
        the dock deletes them while a run may still be going, and its end must not reach them."""

        def call(*args: Any) -> None:
            try:
                self.result_label.objectName()
            except RuntimeError:  # deleted: the run's result has nowhere to go
                return
            handler(*args)

        return call

    @staticmethod
    def _warn_references(assay: Any, config: Any) -> None:
        """As ``senpath run`` does at its start: a nucleus model trained with the counterstain
        brought up to a level this run does not use for the assay is named, with the setting."""
        from napari.utils.notifications import show_warning
        from senpath.slide_plan import reference_warnings

        settings = "the settings file (the widget's settings field)"
        for line in reference_warnings(config, [(assay, False)], settings=settings):
            show_warning(line)

    def cancel(self) -> None:
        """Stop the running analysis at its next tile; says "cancelling…" until it has stopped.

        A whole-slide run is not cut off: it stops at its next tile and removes its temporaries,
        and only then is the worker done (Run enabled again, "cancelled"). An in-memory region
        run writes nothing and is quit at its next tile.
        """
        if self.worker is None or not self.cancel_button.isEnabled():
            return
        self._stop.set()
        self.cancel_button.setEnabled(False)
        self.result_label.setText("cancelling…")
        if not self._stoppable:
            self.worker.quit()

    def _on_finished(self) -> None:
        # a worker stopped by Cancel emits neither "returned" nor always "aborted"
        if self._stop.is_set() and self.result_label.text().startswith(("analysing", "cancelling")):
            self.result_label.setText("cancelled")
        self._buttons(running=False)

    def _buttons(self, *, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not running and self.progress.maximum() == 0:
            # stopped before its first tile (cancelled, failed): no busy bar left behind
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _on_progress(self, value: tuple[int, int]) -> None:
        done, total = value
        self.progress.setMaximum(max(1, total))
        self.progress.setValue(done)

    def _finish(self, text: str) -> None:
        self.result_label.setText(text)
        self._buttons(running=False)

    def _on_error(self, exc: Exception) -> None:
        self._finish(f"failed: {type(exc).__name__}: {exc}")

    def _on_done(self, result: Any, assay: Any) -> None:
        if result is None:
            self._finish("cancelled")
            return
        self.last_result = result
        if isinstance(result, Path):
            for data, kwargs, kind in _layers.results_layers(result):
                if kind == "image" and any(
                    (lay.metadata or {}).get("senpath_slide") == kwargs["metadata"]["senpath_slide"]
                    for lay in self.viewer.layers
                ):
                    continue  # the slide is open already
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
            self._finish(f"results written to {result}; open the Review widget to correct them")
            return
        cells, labels, (y0, x0) = result
        amp = labels_mpp = self._run_config.analysis_mpp
        text = [f"{len(cells)} cells in the region"]
        if len(cells) and assay.markers:
            from senpath.score import summarize_markers

            marker = assay.markers[0].name
            lut = _layers.class_lut(cells, marker)
            classes = lut[np.minimum(labels, len(lut) - 1)]
            self.viewer.add_labels(
                classes,
                name=f"{marker} calls (region)",
                scale=(labels_mpp, labels_mpp),
                translate=(y0, x0),
                colormap=_layers.class_colormap("call"),
                metadata={"senpath_role": "region-calls"},
            )
            summary = summarize_markers(cells, assay)
            for m, s in summary["markers"].items():
                text.append(
                    f"{m}: {s['n_positive']}/{s['n_cells']} positive ({s['pct_positive']:.1f}%), "
                    f"H-score {s['h_score']:.0f}"
                )
        else:
            self.viewer.add_labels(
                labels, name="nuclei (region)", scale=(amp, amp), translate=(y0, x0)
            )
        self._finish("; ".join(text))


def _whole_slide(
    slide_path: Path, out_dir: Path, assay: Any, config: Any, stop: threading.Event
) -> Generator[tuple[int, int], None, Path | None]:
    """``analyze_slide`` in a helper thread, yielding its tile progress; ``stop`` ends it at the
    next tile (returns ``None``; the store is left as it was: the pipeline commits only a finished
    slide)."""
    from senpath.pipeline import analyze_slide

    updates: queue.Queue[Any] = queue.Queue()

    def progress(done: int, total: int) -> None:
        if stop.is_set():
            raise Cancelled("cancelled by the user")
        updates.put(("progress", (done, total)))

    def target() -> None:
        try:
            folder = analyze_slide(
                slide_path, out=out_dir, assay=assay, config=config, tile_progress=progress
            )
            updates.put(("done", folder))
        except BaseException as exc:  # handed to the worker, which reports it
            updates.put(("error", exc))

    thread = threading.Thread(target=target, name="senpath-analyze", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = updates.get()
            if kind == "progress":
                yield value
            elif kind == "done":
                return Path(value)
            elif isinstance(value, Cancelled):
                return None
            else:
                raise value
    finally:
        stop.set()
