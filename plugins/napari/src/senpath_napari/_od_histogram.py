"""The marker-OD histogram of the Review widget, with the threshold drawn as a line a reviewer drags.

Dragging the line (or clicking the plot) moves the widget's threshold slider: the overlay is
recoloured as it moves (the preview); "Apply to slide" makes it the slide's threshold. Bars above the
threshold are drawn in the positive colour, below it in the negative one. matplotlib (a senpath
dependency) draws it in a Qt canvas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

from senpath_napari import _layers

#: Number of histogram bins over the OD range shown.
N_BINS = 60
#: A press this close to the line (screen px) grabs it; elsewhere in the plot, the line jumps there.
GRAB_PX = 8


def _rgb(cls: int) -> tuple[float, float, float]:
    r, g, b, _ = _layers.CALL_COLOURS[cls]
    return (r, g, b)


class ODHistogram(FigureCanvasQTAgg):
    """Histogram of one marker's per-cell OD with a draggable threshold line.

    Parameters
    ----------
    on_threshold : called with the new threshold (OD) while the line is dragged.
    """

    def __init__(self, on_threshold: Callable[[float], None]) -> None:
        self.figure = Figure(figsize=(4.0, 2.2), dpi=90, layout="constrained")
        super().__init__(self.figure)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self._on_threshold = on_threshold
        self.threshold = 0.0
        self.marker: str | None = None
        self._line: Any = None
        self._bars: Any = None
        self._centres = np.zeros(0)
        self._dragging = False
        self.mpl_connect("button_press_event", self._press)
        self.mpl_connect("motion_notify_event", self._move)
        self.mpl_connect("button_release_event", self._release)
        self.setMinimumHeight(160)

    def set_values(self, od: np.ndarray, marker: str, threshold: float) -> None:
        """Draw the histogram of ``od`` ((N,) float, NaN ignored) with the line at ``threshold``."""
        od = np.asarray(od, dtype=np.float64)
        od = od[np.isfinite(od)]
        self.marker = marker
        ax = self.axes
        ax.clear()
        top = max(1.0, float(np.quantile(od, 0.995)) if len(od) else 1.0, threshold * 1.1)
        counts, edges = np.histogram(np.clip(od, 0.0, top), bins=N_BINS, range=(0.0, top))
        self._centres = (edges[:-1] + edges[1:]) / 2
        self._bars = ax.bar(
            edges[:-1], counts, width=np.diff(edges), align="edge", linewidth=0
        ).patches
        self._line = ax.axvline(threshold, color="black", linewidth=1.5)
        ax.set_xlim(0.0, top)
        ax.set_xlabel(f"{marker} OD (excluded cells left out)", fontsize=8)
        ax.set_ylabel("cells", fontsize=8)
        ax.tick_params(labelsize=7)
        self.set_threshold(threshold)

    def set_threshold(self, value: float) -> None:
        """Move the line to ``value`` (OD) and recolour the bars (does not call ``on_threshold``)."""
        self.threshold = float(value)
        if self._line is None:
            return
        self._line.set_xdata([self.threshold, self.threshold])
        pos, neg = _rgb(_layers.BIN1), _rgb(_layers.NEGATIVE)
        for bar, centre in zip(self._bars, self._centres, strict=True):
            bar.set_facecolor(pos if centre >= self.threshold else neg)
        self.axes.set_title(f"threshold {self.threshold:.3f} OD (drag the line)", fontsize=8)
        self.draw_idle()

    def line_position_px(self) -> tuple[float, float]:
        """(x, y) display px of the line's middle (where a drag grabs it)."""
        y_mid = float(np.mean(self.axes.get_ylim()))
        x, y = self.axes.transData.transform((self.threshold, y_mid))
        return float(x), float(y)

    def _press(self, event: Any) -> None:
        if event.inaxes is not self.axes or event.button != 1 or event.xdata is None:
            return
        self._dragging = True
        line_x, _ = self.line_position_px()
        if abs(event.x - line_x) > GRAB_PX:  # a click beside the line moves it there
            self._moved(float(event.xdata))

    def _move(self, event: Any) -> None:
        if self._dragging and event.inaxes is self.axes and event.xdata is not None:
            self._moved(float(event.xdata))

    def _release(self, event: Any) -> None:
        if self._dragging and event.inaxes is self.axes and event.xdata is not None:
            self._moved(float(event.xdata))
        self._dragging = False

    def _moved(self, value: float) -> None:
        value = max(0.0, value)
        self.set_threshold(value)
        self._on_threshold(value)
