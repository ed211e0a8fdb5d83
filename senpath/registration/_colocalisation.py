"""Cross-section co-localisation: markers from different sections combined per grid cell.

Cells of a moving section are mapped into the reference section's µm coordinates
(:func:`cells_to_reference`), binned on a grid in µm (:func:`bin_cells`), and a rule over the
markers' per-grid-cell positive fractions, e.g. ``sabgal>=0.3,ki67<=0.1`` (SA-β-gal-high and
Ki67-low: a senescence map no single section gives), is evaluated per grid cell. Grid cells where
the registration of a section the rule needs is unsure are ``unsure``, never called.

The binning is the density maps' rule (:mod:`senpath.spatial.grid`), so a senescence map and a
density map of the reference section share their grid cells.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.registration._methods import apply_affine

#: The default rule: SA-β-gal-high (at least 30 % of cells positive) and Ki67-low (at most 10 %).
DEFAULT_RULE = "sabgal>=0.3,ki67<=0.1"
#: A grid cell needs at least this many cells of a marker's section to be called.
MIN_CELLS = 5
_CONDITION = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(>=|<=)\s*([0-9]*\.?[0-9]+)\s*$")


@dataclass(frozen=True)
class MarkerCondition:
    """``marker``'s positive fraction in a grid cell ``op`` (``>=`` or ``<=``) ``fraction``."""

    marker: str
    op: str
    fraction: float

    def holds(self, values: NDArray[np.float64]) -> NDArray[np.bool_]:
        return values >= self.fraction if self.op == ">=" else values <= self.fraction

    def __str__(self) -> str:
        return f"{self.marker}{self.op}{self.fraction:g}"


def parse_rule(text: str) -> list[MarkerCondition]:
    """Parse ``"sabgal>=0.3,ki67<=0.1"`` (fractions 0-1 of positive cells per grid cell)."""
    conditions = []
    for part in text.split(","):
        match = _CONDITION.match(part)
        if not match:
            raise ValueError(
                f"rule part {part.strip()!r}: write MARKER>=FRACTION or MARKER<=FRACTION, "
                f"e.g. {DEFAULT_RULE!r}"
            )
        fraction = float(match.group(3))
        if not 0 <= fraction <= 1:
            raise ValueError(f"rule part {part.strip()!r}: the fraction must be in [0, 1]")
        conditions.append(MarkerCondition(match.group(1), match.group(2), fraction))
    if len({c.marker for c in conditions}) != len(conditions):
        raise ValueError(f"rule {text!r}: name each marker once")
    return conditions


def cells_to_reference(cells: pd.DataFrame, matrix: NDArray[np.float64]) -> pd.DataFrame:
    """A copy of ``cells`` with ``x_um``, ``y_um`` mapped into the reference section's frame.

    The section's own coordinates are kept in ``section_x_um``, ``section_y_um``.
    """
    out = cells.copy()
    out["section_x_um"] = cells["x_um"].to_numpy(dtype=np.float64)
    out["section_y_um"] = cells["y_um"].to_numpy(dtype=np.float64)
    out["x_um"], out["y_um"] = apply_affine(matrix, out["section_x_um"], out["section_y_um"])
    return out


def bin_cells(
    x_um: NDArray[np.float64], y_um: NDArray[np.float64], *, grid_um: float, shape: tuple[int, int]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]:
    """Grid cell of each cell: ``row = floor(y / grid_um)``, ``col = floor(x / grid_um)``, by the
    density maps' rule (:meth:`senpath.spatial.grid.Grid.bin_of`, origin at 0 µm).

    Returns
    -------
    rows, cols : (N,) intp ndarray
    inside : (N,) bool ndarray
        The cell lies on the ``shape`` (rows, cols) grid.
    """
    from senpath.spatial.grid import Grid

    rows, cols = Grid((0.0, 0.0), float(grid_um), shape).bin_of(x_um, y_um)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return rows.astype(np.intp), cols.astype(np.intp), inside


def marker_sources(
    sections: Sequence[tuple[str, pd.DataFrame]], markers: Sequence[str]
) -> dict[str, str]:
    """The section (first in ``sections``, the reference first) that scored each marker."""
    sources: dict[str, str] = {}
    for marker in markers:
        for name, cells in sections:
            if f"{marker}_positive" in cells.columns:
                sources[marker] = name
                break
        else:
            have = sorted(
                {
                    c.removesuffix("_positive")
                    for _, c_ in sections
                    for c in c_.columns
                    if c.endswith("_positive")
                }
            )
            raise ValueError(
                f"no section scored marker {marker!r} (the sections have {', '.join(have) or 'no markers'})"
            )
    return sources


def colocalisation_map(
    sections: Sequence[tuple[str, pd.DataFrame]],
    rule: Sequence[MarkerCondition],
    *,
    grid_um: float,
    shape: tuple[int, int],
    unsure: Mapping[str, NDArray[np.bool_]] | None = None,
    min_cells: int = MIN_CELLS,
) -> pd.DataFrame:
    """Evaluate a marker rule per grid cell over sections registered to one frame.

    Parameters
    ----------
    sections : sequence of (name, cells)
        Each section's per-cell table with ``x_um``, ``y_um`` already in the reference frame
        (:func:`cells_to_reference`) and ``<marker>_positive`` columns; the reference first.
    rule : sequence of MarkerCondition
    grid_um : float
        Grid cell size (µm).
    shape : (rows, cols)
        Grid over the reference section.
    unsure : mapping name -> (rows, cols) bool, optional
        Where each moving section's registration is unsure (the reference needs none).
    min_cells : int
        Fewer cells of a marker's section in a grid cell: ``too few cells``.

    Returns
    -------
    pandas.DataFrame
        One row per grid cell holding cells of any section: ``row``, ``col``, ``x_um``, ``y_um``
        (grid cell centre), per marker ``<marker>_cells``, ``<marker>_positive_fraction``,
        ``<marker>_section``; ``unsure`` (bool); ``call``: ``positive`` (the rule holds),
        ``negative``, ``unsure`` or ``too few cells``.
    """
    unsure = dict(unsure or {})
    sources = marker_sources(sections, [c.marker for c in rule])
    by_name = dict(sections)
    n = shape[0] * shape[1]
    counts: dict[str, NDArray[np.float64]] = {}
    positives: dict[str, NDArray[np.float64]] = {}
    for condition in rule:
        cells = by_name[sources[condition.marker]]
        rows, cols, inside = bin_cells(
            cells["x_um"].to_numpy(), cells["y_um"].to_numpy(), grid_um=grid_um, shape=shape
        )
        flat = rows[inside] * shape[1] + cols[inside]
        positive = cells[f"{condition.marker}_positive"].to_numpy(dtype=bool)[inside]
        counts[condition.marker] = np.bincount(flat, minlength=n).astype(np.float64)
        positives[condition.marker] = np.bincount(flat, weights=positive, minlength=n).astype(
            np.float64
        )
    holds = np.ones(n, dtype=bool)
    enough = np.ones(n, dtype=bool)
    doubtful = np.zeros(n, dtype=bool)
    any_cells = np.zeros(n, dtype=bool)
    table: dict[str, object] = {}
    for condition in rule:
        m = condition.marker
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(counts[m] > 0, positives[m] / counts[m], np.nan)
        table[f"{m}_cells"] = counts[m].astype(np.int64)
        table[f"{m}_positive_fraction"] = fraction
        table[f"{m}_section"] = sources[m]
        holds &= condition.holds(np.nan_to_num(fraction, nan=-1.0 if condition.op == ">=" else 2.0))
        enough &= counts[m] >= min_cells
        any_cells |= counts[m] > 0
        grid_unsure = unsure.get(sources[m])
        if grid_unsure is not None:
            doubtful |= np.asarray(grid_unsure, dtype=bool).ravel()
    call = np.where(holds, "positive", "negative").astype(object)
    call[~enough] = "too few cells"
    call[doubtful] = "unsure"
    rows, cols = np.divmod(np.arange(n), shape[1])
    frame = pd.DataFrame(
        {
            "row": rows,
            "col": cols,
            "x_um": (cols + 0.5) * grid_um,
            "y_um": (rows + 0.5) * grid_um,
            **table,
            "unsure": doubtful,
            "call": call,
        }
    )
    keep = any_cells | doubtful
    return frame[keep].reset_index(drop=True)
