"""Binning of cells onto a square grid in µm: the one binning rule of the spatial maps.

A grid is a lattice of square bins of side ``spacing_um`` whose corner bin (row 0, column 0)
starts at ``origin_um`` = (x, y) µm in slide coordinates (x to the right, y down, as the per-cell
table's ``x_um``, ``y_um``). A cell falls in bin ``(row, col) = (floor((y - y0) / s),
floor((x - x0) / s))``: a bin holds its lower edges, not its upper ones, so every point belongs to
exactly one bin. The default origin is the cells' bounding box rounded down to a multiple of the
spacing, so the grids of two slides (or of registered serial sections, given in one coordinate
system) with the same spacing share bin edges; pass ``origin_um`` and ``shape`` to put several sets
of cells on one given grid (:func:`bin_cells`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Grid", "GridSums", "bin_cells", "grid_for_points"]


@dataclass(frozen=True)
class Grid:
    """A square grid in slide µm.

    Attributes
    ----------
    origin_um : (x, y) µm of the top-left corner of bin (0, 0).
    spacing_um : side of a bin in µm.
    shape : (rows, columns) = (ny, nx).
    """

    origin_um: tuple[float, float]
    spacing_um: float
    shape: tuple[int, int]

    @property
    def bin_area_mm2(self) -> float:
        """Area of one bin in mm²."""
        return (self.spacing_um / 1000.0) ** 2

    def bin_centres_um(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(x of each column, y of each row): bin centres in µm, shapes (nx,) and (ny,)."""
        s = self.spacing_um
        xs = self.origin_um[0] + (np.arange(self.shape[1], dtype=np.float64) + 0.5) * s
        ys = self.origin_um[1] + (np.arange(self.shape[0], dtype=np.float64) + 0.5) * s
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    def extent_um(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in µm for ``matplotlib.imshow(..., origin="upper")``."""
        x0, y0 = self.origin_um
        return (
            x0,
            x0 + self.shape[1] * self.spacing_um,
            y0 + self.shape[0] * self.spacing_um,
            y0,
        )

    def bin_of(
        self, x_um: ArrayLike, y_um: ArrayLike
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(row, column) of points (may lie outside ``[0, shape)``: the caller checks)."""
        s = self.spacing_um
        col = np.floor((np.asarray(x_um, dtype=np.float64) - self.origin_um[0]) / s)
        row = np.floor((np.asarray(y_um, dtype=np.float64) - self.origin_um[1]) / s)
        return row.astype(np.int64), col.astype(np.int64)


@dataclass(frozen=True)
class GridSums:
    """Per-bin sums of cells on a :class:`Grid`.

    Attributes
    ----------
    grid : the grid.
    n_cells : (ny, nx) int64, cells per bin.
    sums : value name -> (ny, nx) float64, the sum of that value over each bin's cells (a bool
        value sums to the number of cells where it holds).
    n_outside : cells that fell outside the grid (only with a given ``origin_um`` and ``shape``)
        or had a non-finite position; they are in no bin.
    """

    grid: Grid
    n_cells: NDArray[np.int64]
    sums: dict[str, NDArray[np.float64]]
    n_outside: int = 0

    def per_mm2(self, name: str | None = None) -> NDArray[np.float64]:
        """Cells (``name`` None) or the sum of ``name`` per mm² of each bin, shape (ny, nx)."""
        data = self.n_cells if name is None else self.sums[name]
        return np.asarray(data, dtype=np.float64) / self.grid.bin_area_mm2

    def percent(self, name: str) -> NDArray[np.float64]:
        """``100 * sum(name) / n_cells`` per bin (% of cells, for a bool value); NaN where a bin
        holds no cell. The same proportion as :func:`senpath.score.proportion_figures` gives for
        the bin's cells."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = 100.0 * self.sums[name] / self.n_cells
        return np.where(self.n_cells > 0, out, np.nan)


def grid_for_points(
    x_um: ArrayLike,
    y_um: ArrayLike,
    *,
    spacing_um: float,
) -> Grid:
    """The smallest grid of ``spacing_um`` bins, with edges on multiples of the spacing, that
    holds every finite point (one bin at the origin for no points).

    Parameters
    ----------
    x_um, y_um : (N,) positions in µm.
    spacing_um : bin side in µm (> 0).
    """
    if not (isinstance(spacing_um, int | float) and math.isfinite(spacing_um) and spacing_um > 0):
        raise ValueError(f"spacing_um={spacing_um!r}: give a bin side > 0 µm (e.g. 100)")
    x = np.asarray(x_um, dtype=np.float64)
    y = np.asarray(y_um, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return Grid((0.0, 0.0), float(spacing_um), (1, 1))
    s = float(spacing_um)
    x0 = math.floor(float(x[ok].min()) / s) * s
    y0 = math.floor(float(y[ok].min()) / s) * s
    nx = int(math.floor((float(x[ok].max()) - x0) / s)) + 1
    ny = int(math.floor((float(y[ok].max()) - y0) / s)) + 1
    return Grid((x0, y0), s, (ny, nx))


def bin_cells(
    x_um: ArrayLike,
    y_um: ArrayLike,
    values: Mapping[str, ArrayLike] | None = None,
    *,
    spacing_um: float = 100.0,
    origin_um: tuple[float, float] | None = None,
    shape: tuple[int, int] | None = None,
) -> GridSums:
    """Count cells and sum per-cell values in square bins of ``spacing_um``.

    Parameters
    ----------
    x_um, y_um : (N,) cell positions in µm (e.g. the per-cell table's nucleus centroids, or the
        centroids of a registered section mapped into a reference section's µm).
    values : name -> (N,) per-cell values to sum per bin (bool calls count the cells where true;
        NaN values add nothing).
    spacing_um : bin side in µm (default 100).
    origin_um : (x, y) µm of the corner of bin (0, 0); default from the points
        (:func:`grid_for_points`). Give it with ``shape`` to bin several sets of cells on one grid.
    shape : (ny, nx) bins; default: enough to hold every point from ``origin_um``.

    Returns
    -------
    GridSums
        Counts (ny, nx) and per-value sums (ny, nx); points outside the grid are counted in
        ``n_outside``.
    """
    x = np.asarray(x_um, dtype=np.float64).ravel()
    y = np.asarray(y_um, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(
            f"x_um has {x.size} points but y_um has {y.size}: give one (x, y) per cell"
        )
    values = dict(values or {})
    for name, v in values.items():
        if np.asarray(v).size != x.size:
            raise ValueError(
                f"value {name!r} has {np.asarray(v).size} entries for {x.size} cells: give one per cell"
            )
    if origin_um is None:
        grid = grid_for_points(x, y, spacing_um=spacing_um)
        if shape is not None:
            grid = Grid(grid.origin_um, grid.spacing_um, (int(shape[0]), int(shape[1])))
    else:
        s = grid_for_points([], [], spacing_um=spacing_um).spacing_um  # validates the spacing
        x0, y0 = float(origin_um[0]), float(origin_um[1])
        if shape is None:
            ok = np.isfinite(x) & np.isfinite(y)
            ny_auto = int(math.floor((float(y[ok].max()) - y0) / s)) + 1 if ok.any() else 1
            nx_auto = int(math.floor((float(x[ok].max()) - x0) / s)) + 1 if ok.any() else 1
            shape = (max(1, ny_auto), max(1, nx_auto))
        grid = Grid((x0, y0), s, (int(shape[0]), int(shape[1])))
    ny, nx = grid.shape
    if ny < 1 or nx < 1:
        raise ValueError(f"shape={grid.shape}: a grid needs at least one row and one column")
    finite = np.isfinite(x) & np.isfinite(y)
    # a cell without a position is put one bin before the origin: outside, like a far one
    row, col = grid.bin_of(
        np.where(finite, x, grid.origin_um[0] - grid.spacing_um),
        np.where(finite, y, grid.origin_um[1] - grid.spacing_um),
    )
    inside = finite & (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
    flat = row[inside] * nx + col[inside]
    counts = np.bincount(flat, minlength=ny * nx).reshape(ny, nx).astype(np.int64)
    sums: dict[str, NDArray[np.float64]] = {}
    for name, v in values.items():
        w = np.nan_to_num(np.asarray(v, dtype=np.float64).ravel()[inside], nan=0.0)
        sums[name] = (
            np.bincount(flat, weights=w, minlength=ny * nx).reshape(ny, nx).astype(np.float64)
        )
    return GridSums(grid, counts, sums, int(x.size - inside.sum()))
