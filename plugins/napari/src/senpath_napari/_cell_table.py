"""The measurement table of the Review widget: one row per cell, sortable by any column; a click on a
row centres the viewer on the cell and selects it (and a cell picked in the viewer selects its row).

A Qt item model over the pandas table (:class:`CellTableModel`): the view asks only for the rows it
draws, so a slide of 100 000s of cells opens at once; sorting reorders an index, not the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt
from qtpy.QtWidgets import QAbstractItemView, QTableView

#: Columns shown (``{m}``: the marker), in this order, when the table has them.
COLUMNS = (
    "cell_id",
    "{m}_od",
    "{m}_positive",
    "{m}_bin",
    "{m}_manual",
    "excluded",
    "nucleus_area_um2",
    "cell_area_um2",
    "hematoxylin_od",
    "x_um",
    "y_um",
)


def table_columns(cells: pd.DataFrame, marker: str | None) -> list[str]:
    """The columns of :data:`COLUMNS` that ``cells`` has, for ``marker``."""
    names = [c.format(m=marker) for c in COLUMNS if marker or "{m}" not in c]
    return [c for c in names if c in cells.columns]


class CellTableModel(QAbstractTableModel):
    """A read-only Qt table model of a per-cell table (pandas), sortable by column.

    Parameters
    ----------
    cells : the per-cell table (one row per cell, a ``cell_id`` column).
    columns : the columns to show.
    """

    def __init__(self, cells: pd.DataFrame, columns: list[str]) -> None:
        super().__init__()
        self._cells = cells  # read by position (iat): no copy of a large table
        self._columns = list(columns)
        self._order = np.arange(len(self._cells))
        self._sort: tuple[int, Any] | None = None
        self._row_of: dict[int, int] = {}
        self._index_rows()

    def set_cells(self, cells: pd.DataFrame, columns: list[str]) -> None:
        """Show a new table (after a correction), keeping the sort in effect."""
        self.beginResetModel()
        self._cells = cells  # read by position (iat): no copy of a large table
        self._columns = list(columns)
        self._order = np.arange(len(self._cells))
        if self._sort is not None and self._sort[0] < len(self._columns):
            self._apply_sort(*self._sort)
        self._index_rows()
        self.endResetModel()

    def _index_rows(self) -> None:
        ids = self._cells["cell_id"].to_numpy()[self._order]
        self._row_of = {int(c): i for i, c in enumerate(ids)}

    # the Qt model interface
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._cells)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._columns)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or role != Qt.ItemDataRole.DisplayRole:
            return None
        value = self._cells[self._columns[index.column()]].iat[self._order[index.row()]]
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else ""
        if isinstance(value, (float, np.floating)):
            return "–" if np.isnan(value) else f"{value:.3f}"
        return str(value)

    def headerData(  # noqa: N802
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self._columns[section]
        return str(section + 1)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.layoutAboutToBeChanged.emit()
        self._sort = (column, order)
        self._apply_sort(column, order)
        self._index_rows()
        self.layoutChanged.emit()

    def _apply_sort(self, column: int, order: Qt.SortOrder) -> None:
        values = self._cells[self._columns[column]]
        # stable, NaN last either way: equal values keep cell order
        ranked = values.rank(method="first", na_option="bottom").to_numpy()
        if order == Qt.SortOrder.DescendingOrder:
            ranked = np.where(values.isna().to_numpy(), np.inf, -ranked)
        self._order = np.argsort(ranked, kind="stable")

    # lookups
    def cell_id(self, row: int) -> int:
        """The ``cell_id`` shown in view row ``row``."""
        return int(self._cells["cell_id"].iat[self._order[row]])

    def row_of(self, cell_id: int) -> int | None:
        """The view row showing ``cell_id`` (``None``: not in the table)."""
        return self._row_of.get(int(cell_id))

    def column_values(self, name: str) -> np.ndarray:
        """A column's values in view order."""
        return self._cells[name].to_numpy()[self._order]


class CellTable(QTableView):
    """The measurement table: sortable, one row selected at a time; ``on_cell(cell_id)`` on a click.

    Parameters
    ----------
    on_cell : called with the ``cell_id`` of a row the user clicks (or picks with the keyboard).
    """

    def __init__(self, on_cell: Callable[[int], None]) -> None:
        super().__init__()
        self._on_cell = on_cell
        self.cell_model = CellTableModel(pd.DataFrame({"cell_id": []}), ["cell_id"])
        self.setModel(self.cell_model)
        # Qt's sort indicator starts descending: start in cell order instead
        self.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.setSortingEnabled(True)
        self.horizontalHeader().setSortIndicatorShown(True)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setDefaultSectionSize(20)
        self.clicked.connect(lambda index: self.activate_row(index.row()))
        self.activated.connect(lambda index: self.activate_row(index.row()))
        self._quiet = False

    def set_cells(self, cells: pd.DataFrame, marker: str | None) -> None:
        """Show ``cells`` (the corrected per-cell table) for ``marker``."""
        self.cell_model.set_cells(cells, table_columns(cells, marker))

    def activate_row(self, row: int) -> int:
        """What a click on view row ``row`` does: select it and go to its cell; returns the id."""
        cid = self.cell_model.cell_id(row)
        self.selectRow(row)
        if not self._quiet:
            self._on_cell(cid)
        return cid

    def select_cell(self, cell_id: int) -> None:
        """Select (and scroll to) the row of ``cell_id`` without going to the cell again."""
        row = self.cell_model.row_of(cell_id)
        if row is None:
            self.clearSelection()
            return
        self._quiet = True
        try:
            self.selectRow(row)
            self.scrollTo(self.cell_model.index(row, 0))
        finally:
            self._quiet = False
