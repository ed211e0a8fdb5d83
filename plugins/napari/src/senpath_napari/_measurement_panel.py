"""The Review widget's measurement dock (under the canvas): the marker-OD histogram with the draggable
threshold beside the per-cell measurement table, both linked to the viewer through the Review widget.

- dragging the histogram's line moves the Review widget's threshold slider (the overlay follows);
- a click on a table row centres the viewer on that cell and selects it; a cell picked in the
  viewer (a click, the queue) selects its row;
- both are redrawn after each correction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QLabel, QSplitter, QVBoxLayout, QWidget

from senpath_napari._cell_table import CellTable
from senpath_napari._od_histogram import ODHistogram


class MeasurementPanel(QWidget):
    """Histogram and table of one Review widget's store.

    Parameters
    ----------
    review : the :class:`~senpath_napari._review_widget.ReviewWidget` it belongs to.
    """

    def __init__(self, review: Any) -> None:
        super().__init__()
        self.review = review
        self._docked = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        layout.addWidget(self.summary_label)
        self.histogram = ODHistogram(on_threshold=self._threshold_dragged)
        self.table = CellTable(on_cell=review.go_to_cell)
        # docked under the canvas: the histogram beside the table, both as tall as the dock
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.histogram)
        splitter.addWidget(self.table)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        layout.addWidget(splitter, 1)

    def _threshold_dragged(self, value: float) -> None:
        self.review.spin.setValue(value)  # the slider: preview counts, overlay recoloured

    def refresh(self) -> None:
        """Redraw from the Review widget's cells, marker and threshold."""
        review = self.review
        if review.session is None:
            return
        cells, marker = review.session.cells, review.marker
        self.table.set_cells(cells, marker)
        if marker is not None:
            kept = ~cells["excluded"].to_numpy(dtype=bool)
            od = cells[f"{marker}_od"].to_numpy(dtype=np.float64)[kept]
            self.histogram.set_values(od, marker, float(review.spin.value()))
        self.summary_label.setText(
            f"{review.session.slide_id}: {len(cells)} cells; click a row to go to the cell, "
            "drag the line to move the threshold (Apply to slide in the Review widget keeps it)"
        )
        if review.current_cell:
            self.table.select_cell(review.current_cell)

    def event(self, event: QEvent) -> bool:
        # the dock's close button takes the panel out of its dock: the Review widget stops feeding it
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                if self.review.measurements is self:
                    self.review.measurements = None
        return super().event(event)
