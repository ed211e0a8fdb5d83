"""Analysis widget: run senpath on the current view, a drawn ROI or the whole slide.

The work runs in a napari ``thread_worker`` generator that yields once per tile, so the progress bar
moves, "Cancel" stops it at the next tile and the viewer never freezes. A view or ROI is analysed in
memory (a quick look: its cells appear as an overlay with their figures); the whole slide is analysed
into a results store (``<output>/<slide_id>``) that opens for review when it is done.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtWidgets import (
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

    Parameters
    ----------
    slide : a :class:`senpath.io.Slide`.
    box_um : (y0, x0, y1, x1) in level-0 µm.
    assay, config : the :class:`~senpath.config.Assay` and :class:`~senpath.config.AnalysisConfig`.

    Returns
    -------
    (cells, labels, origin_um) : scored per-cell table, (Y, X) int32 labels at the analysis mpp and
    the (y, x) µm position of labels pixel (0, 0).
    """
    from senpath.pipeline import analyze_region
    from senpath.score import score_cells
    from senpath.stain import StainSet, estimate_background
    from senpath.tiling import Instance, keep_owned, paste, tile_grid

    amp = config.analysis_mpp
    y0, x0, y1, x1 = box_um
    rgb = slide.read_region(x0, y0, x1 - x0, y1 - y0, mpp=amp)
    shape = rgb.shape[:2]
    stains = StainSet.from_names(assay.stains, overrides=assay.stain_vectors)
    bright = rgb.reshape(-1, 3)
    i0 = estimate_background(bright[:: max(1, len(bright) // 200_000)])
    tiles = tile_grid(
        shape,
        tile_size=max(64, round(config.tile_size_um / amp)),
        halo=max(1, math.ceil(config.halo_um / amp)),
    )
    labels = np.zeros(shape, dtype=np.int32)
    parts, next_id = [], 1
    for done, tile in enumerate(tiles, start=1):
        b = tile.box
        cells, tile_labels = analyze_region(
            rgb[b.y0 : b.y1, b.x0 : b.x1],
            mpp=amp,
            assay=assay,
            stains=stains,
            config=config,
            i0=i0,
            origin_um=(x0 + b.x0 * amp, y0 + b.y0 * amp),
            tile=tile,
            image_shape=shape,
        )
        owned = {
            i.local_label: i
            for i in keep_owned(tile_labels, tile, image_shape=shape, on_truncated="keep")
        }
        ids = []
        for local in cells["cell_id"].to_numpy():
            inst = owned[int(local)]
            after = paste(
                labels, [Instance(inst.bbox, inst.mask, inst.local_label)], next_id=next_id
            )
            ids.append(next_id if after > next_id else 0)
            next_id = after
        cells["cell_id"] = ids
        parts.append(cells[cells["cell_id"] > 0])
        yield done, len(tiles)
    cells = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(cells):
        cells = score_cells(cells, assay)
    return cells, labels, (y0, x0)


class AnalysisWidget(QWidget):
    """Dock widget: choose a slide layer, an assay and what to analyse; run with progress/cancel."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from senpath.config import load_assays

        self.viewer = napari_viewer
        self.worker: Any = None
        self.last_result: Any = None
        self._stop = threading.Event()
        self._assays = load_assays()
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
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("results folder (whole slide); default: next to the slide")
        form.addRow("slide", self.layer_combo)
        form.addRow("assay", self.assay_combo)
        form.addRow("analyse", self.scope_combo)
        form.addRow("segmenter", self.segmenter_combo)
        form.addRow("output", self.out_edit)
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
        from senpath.config import AnalysisConfig
        from senpath.io import open_slide

        layers = [lay for lay in self._slide_layers() if lay.name == self.layer_combo.currentText()]
        if not layers:
            self.result_label.setText("open a slide first (File > Open, or a sample)")
            return None
        layer = layers[0]
        slide_path = Path(layer.metadata["senpath_slide"])
        slide = open_slide(slide_path)
        assay = self._assays[self.assay_combo.currentText()]
        config = AnalysisConfig(segmenter=self.segmenter_combo.currentText())
        scope = scope or self.scope_combo.currentText()
        self._stop = threading.Event()
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
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_done(result, assay))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self._finish("cancelled"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._buttons(running=True)
        self.progress.setValue(0)
        self.result_label.setText(f"analysing {scope} of {slide.slide_id} ({assay.name})…")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running analysis at its next tile."""
        self._stop.set()
        if self.worker is not None:
            self.worker.quit()

    def _on_finished(self) -> None:
        # a worker stopped by Cancel emits neither "returned" nor always "aborted"
        if self._stop.is_set() and self.result_label.text().startswith("analysing"):
            self.result_label.setText("cancelled")
        self._buttons(running=False)

    def _buttons(self, *, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

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
        from senpath.config import AnalysisConfig

        amp = labels_mpp = AnalysisConfig().analysis_mpp
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
