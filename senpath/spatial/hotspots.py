"""Hot-spots: the field of a slide with the highest marker index, beside the slide's global index.

The International Ki67 Working Group (IKWG) scores Ki67 either globally or in the *hot-spot*:
the area of highest labelling, counted over one high-power field or about 500 cells. senpath finds
that field in the per-cell table by an exhaustive search, so the rule is exact and repeatable:

**Rule** (:class:`HotspotRule`).

1. Cells: the per-cell table's nucleus centroids (µm); cells a reviewer excluded are left out.
2. Candidate field centres: every point of a square lattice of ``step_um`` (default 50 µm)
   spanning the cells' bounding box (lattice points at multiples of ``step_um``), except those in
   an exclusion region (Necrosis, Fold, ...: :mod:`senpath.regions`). Its cells are not counted,
   so a field centred in it would count only the tissue at its edge and, next to a proliferative
   rim, read the highest index over a field that is half necrosis.
3. The field around a centre ``c``:

   * ``field="area"`` (default): the cells whose centroid lies within a circle of area
     ``field_area_mm2`` (default 0.2 mm², about one 40× high-power field; radius 252 µm) centred
     on ``c`` (``shape="square"``: the axis-aligned square of that area); boundary included. A
     field counts only when it holds at least ``min_cells`` cells (default 100), so a field of
     three cells at the tissue's edge cannot win.
   * ``field="cells"``: the ``field_cells`` cells (default 500) nearest ``c`` (Euclidean; ties
     by cell order), for centres that lie in tissue (a cell within ``step_um``); the field's area
     is that of the circle reaching its farthest cell. A slide with fewer cells has no hot-spot.

4. The field's index: ``100 × (cells positive for the target) / (cells in the field)``, the same
   proportion (and Wilson 95% interval) as :func:`senpath.score.proportion_figures`; the target is
   a marker's ``<marker>_positive`` call (Ki67: the labelling index; p16, SA-β-gal: % positive) or
   a phenotype (``senescent``: the senescence index).
5. The hot-spot is the field with the highest index; ties go to the field with more cells, then to
   the smallest y, then the smallest x of its centre.

Its centre is known to within ``step_um / 2`` of the best position on a continuous plane. The
global index is the same proportion over every counted cell of the slide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.score import proportion_figures
from senpath.spatial.density import counted_cells

__all__ = ["HotSpot", "HotspotRule", "find_hotspot", "find_hotspots", "slide_hotspots"]

#: Largest number of lattice centres queried at once for ``field="cells"`` (bounds memory:
#: centres × field_cells indices).
_CELLS_BATCH = 200_000


@dataclass(frozen=True)
class HotspotRule:
    """How a hot-spot is found (see the module's rule).

    Attributes
    ----------
    field : ``"area"`` (a field of ``field_area_mm2``) or ``"cells"`` (the ``field_cells`` nearest
        cells).
    field_area_mm2 : area of the field in mm² (``field="area"``).
    shape : ``"circle"`` or ``"square"`` (``field="area"``; ``"cells"`` is always a circle).
    field_cells : cells per field (``field="cells"``).
    min_cells : fewest cells a field of ``field="area"`` must hold to count.
    step_um : spacing of the lattice of candidate centres in µm.
    """

    field: Literal["area", "cells"] = "area"
    field_area_mm2: float = 0.2
    shape: Literal["circle", "square"] = "circle"
    field_cells: int = 500
    min_cells: int = 100
    step_um: float = 50.0

    def __post_init__(self) -> None:
        if self.field not in ("area", "cells"):
            raise ValueError(f"hot-spot field={self.field!r}: use 'area' or 'cells'")
        if self.shape not in ("circle", "square"):
            raise ValueError(f"hot-spot shape={self.shape!r}: use 'circle' or 'square'")
        if not (math.isfinite(self.field_area_mm2) and 0 < self.field_area_mm2 <= 100):
            raise ValueError(
                f"hot-spot field_area_mm2={self.field_area_mm2!r}: give an area in (0, 100] mm² "
                "(IKWG: about one high-power field, 0.2 mm²)"
            )
        if int(self.field_cells) < 1 or int(self.min_cells) < 1:
            raise ValueError("hot-spot field_cells and min_cells must be at least 1 cell")
        if not (math.isfinite(self.step_um) and self.step_um > 0):
            raise ValueError(f"hot-spot step_um={self.step_um!r}: give a spacing > 0 µm")

    @property
    def radius_um(self) -> float:
        """Circle radius, or half the square's side, of a ``field="area"`` field in µm."""
        area_um2 = self.field_area_mm2 * 1e6
        return math.sqrt(area_um2 / math.pi) if self.shape == "circle" else math.sqrt(area_um2) / 2

    def describe(self) -> str:
        """The rule in a few words (for tables and the report)."""
        if self.field == "cells":
            return f"{self.field_cells} nearest cells"
        return f"{self.shape} of {self.field_area_mm2:g} mm², ≥ {self.min_cells} cells"


@dataclass(frozen=True)
class HotSpot:
    """A slide's hot-spot for one target, beside its global index.

    Attributes
    ----------
    target : the marker (``ki67``) or phenotype (``senescent``).
    kind : ``"marker"`` or ``"phenotype"``.
    rule : :meth:`HotspotRule.describe` of the rule used.
    found : whether a field qualified; when not, ``reason`` says why and the field figures are NaN.
    centre_x_um, centre_y_um : centre of the hot-spot field in slide µm.
    field_area_mm2 : its area (``field="cells"``: of the circle reaching its farthest cell).
    field_radius_um : circle radius (square: half its side).
    n_cells, n_positive : cells in the field, and those positive for the target.
    index_pct, index_ci95_low, index_ci95_high : the field's index (%) and Wilson 95% interval.
    positive_per_mm2 : positive cells per mm² of the field.
    n_fields : fields that qualified (the candidates compared).
    global_n_cells, global_n_positive, global_index_pct, global_ci95_low, global_ci95_high :
        the same proportion over the whole slide.
    reason : why no field qualified (empty when ``found``).
    """

    target: str
    kind: str
    rule: str
    found: bool
    centre_x_um: float
    centre_y_um: float
    field_area_mm2: float
    field_radius_um: float
    n_cells: int
    n_positive: int
    index_pct: float
    index_ci95_low: float
    index_ci95_high: float
    positive_per_mm2: float
    n_fields: int
    global_n_cells: int
    global_n_positive: int
    global_index_pct: float
    global_ci95_low: float
    global_ci95_high: float
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The hot-spot as a flat JSON-ready dict (NaN stays NaN)."""
        return asdict(self)


def _lattice(x: NDArray[np.float64], y: NDArray[np.float64], step: float) -> NDArray[np.float64]:
    """(M, 2) lattice points (x, y) at multiples of ``step`` covering the points' bounding box."""
    xs = np.arange(math.floor(x.min() / step), math.ceil(x.max() / step) + 1) * step
    ys = np.arange(math.floor(y.min() / step), math.ceil(y.max() / step) + 1) * step
    gx, gy = np.meshgrid(xs, ys)
    return np.column_stack([gx.ravel(), gy.ravel()])


def find_hotspot(
    x_um: NDArray[np.float64] | Sequence[float],
    y_um: NDArray[np.float64] | Sequence[float],
    positive: NDArray[np.bool_] | Sequence[bool],
    *,
    rule: HotspotRule | None = None,
    target: str = "marker",
    kind: str = "marker",
    exclusion_um: Any = None,
) -> HotSpot:
    """The hot-spot of one target among cells (see the module's rule).

    Parameters
    ----------
    x_um, y_um : (N,) cell centroids in µm (cells with a non-finite position are left out).
    positive : (N,) bool, the cells positive for the target.
    rule : the field and search settings (default :class:`HotspotRule`).
    target, kind : names recorded in the result.
    exclusion_um : shapely geometry (x, y µm) of the exclusion regions: no field is centred in it.

    Returns
    -------
    HotSpot
        ``found=False`` with a ``reason`` when no field qualifies (an empty slide, too few cells).
    """
    return find_hotspots(
        x_um, y_um, {target: positive}, rule=rule, kinds={target: kind}, exclusion_um=exclusion_um
    )[0]


def find_hotspots(
    x_um: NDArray[np.float64] | Sequence[float],
    y_um: NDArray[np.float64] | Sequence[float],
    positives: Mapping[str, NDArray[np.bool_] | Sequence[bool]],
    *,
    rule: HotspotRule | None = None,
    kinds: Mapping[str, str] | None = None,
    exclusion_um: Any = None,
) -> list[HotSpot]:
    """The hot-spot of each of several targets among the same cells, in one search.

    The fields (and so the cells in each) are the same for every target: they are found once, and
    only the positive counts differ, so several markers cost little more than one.

    Parameters
    ----------
    x_um, y_um : (N,) cell centroids in µm (cells with a non-finite position are left out).
    positives : target name -> (N,) bool, the cells positive for it.
    rule : see :class:`HotspotRule`.
    kinds : target name -> ``"marker"`` or ``"phenotype"`` (default ``"marker"``).
    exclusion_um : shapely geometry (x, y µm) of the exclusion regions, or ``None``: lattice
        points in it are not field centres (rule step 2).

    Returns
    -------
    list of HotSpot, one per target in the order given.
    """
    from scipy.spatial import cKDTree

    rule = rule or HotspotRule()
    kinds = dict(kinds or {})
    x = np.asarray(x_um, dtype=np.float64).ravel()
    y = np.asarray(y_um, dtype=np.float64).ravel()
    flags = {t: np.asarray(v, dtype=bool).ravel() for t, v in positives.items()}
    for t, v in flags.items():
        if not x.size == y.size == v.size:
            raise ValueError(
                f"x_um, y_um and the {t!r} calls have {x.size}, {y.size}, {v.size} entries: "
                "give one per cell"
            )
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    flags = {t: v[ok] for t, v in flags.items()}
    bases: dict[str, dict[str, Any]] = {}
    for t, v in flags.items():
        glob = proportion_figures(v)
        bases[t] = {
            "target": t,
            "kind": kinds.get(t, "marker"),
            "rule": rule.describe(),
            "global_n_cells": glob["n"],
            "global_n_positive": glob["k"],
            "global_index_pct": glob["pct"],
            "global_ci95_low": glob["ci95"][0],
            "global_ci95_high": glob["ci95"][1],
        }
    need = rule.field_cells if rule.field == "cells" else rule.min_cells
    if x.size < need:
        what = "cells per field" if rule.field == "cells" else "cells a field must hold"
        why = f"the slide has {x.size} counted cell(s), fewer than the {need} {what}"
        return [_not_found(b, rule, why) for b in bases.values()]
    points = np.column_stack([x, y])
    centres = _lattice(x, y, rule.step_um)
    if exclusion_um is not None and not exclusion_um.is_empty:
        import shapely

        inside = shapely.intersects_xy(exclusion_um, centres[:, 0], centres[:, 1])
        centres = centres[~np.asarray(inside, dtype=bool)]
        if not len(centres):
            why = "every candidate field centre lies in an exclusion region"
            return [_not_found(b, rule, why) for b in bases.values()]
    p_norm = 2.0 if rule.shape == "circle" or rule.field == "cells" else np.inf
    tree = cKDTree(points)
    k: dict[str, NDArray[np.int64]] = {}
    if rule.field == "area":
        # float rounding: a cell exactly on the boundary counts (the rule includes it)
        r_query = rule.radius_um * (1 + 1e-12)
        n = np.asarray(tree.query_ball_point(centres, r_query, p=p_norm, return_length=True))
        eligible = n >= rule.min_cells
        if not eligible.any():
            why = f"no {rule.describe()} field: the densest holds {int(n.max())} cell(s)"
            return [_not_found(b, rule, why) for b in bases.values()]
        centres, n = centres[eligible], n[eligible]
        for t, v in flags.items():
            k[t] = (
                np.asarray(cKDTree(points[v]).query_ball_point(
                    centres, r_query, p=p_norm, return_length=True
                ))
                if v.any()
                else np.zeros_like(n)
            )  # fmt: skip
        radius = np.full(len(centres), rule.radius_um)
    else:
        # centres in tissue only: a lattice point in the glass would gather a ring of far cells
        near, _ = tree.query(centres, k=1)
        centres = centres[near <= rule.step_um]
        m = int(rule.field_cells)
        n = np.full(len(centres), m, dtype=np.int64)
        k = {t: np.zeros(len(centres), dtype=np.int64) for t in flags}
        radius = np.zeros(len(centres))
        batch = max(1, _CELLS_BATCH // m)
        for i in range(0, len(centres), batch):
            dist, idx = tree.query(centres[i : i + batch], k=m)
            dist, idx = dist.reshape(-1, m), idx.reshape(-1, m)
            for t, v in flags.items():
                k[t][i : i + batch] = v[idx].sum(axis=1)
            radius[i : i + batch] = dist[:, -1]
    return [_best_field(tree, centres, n, k[t], radius, flags[t], rule, bases[t]) for t in flags]


def _best_field(
    tree: Any,
    centres: NDArray[np.float64],
    n: NDArray[np.int64],
    k: NDArray[np.int64],
    radius: NDArray[np.float64],
    positive: NDArray[np.bool_],
    rule: HotspotRule,
    base: dict[str, Any],
) -> HotSpot:
    """The winning field of one target among the candidate fields (rule step 5)."""
    index = 100.0 * k / n
    # best index; ties: more cells, then smaller y, then smaller x (np.lexsort: last key first)
    order = np.lexsort((centres[:, 0], centres[:, 1], -n, -index))
    best = int(order[0])
    cx, cy = float(centres[best, 0]), float(centres[best, 1])
    if rule.field == "area":
        p_norm = 2.0 if rule.shape == "circle" else np.inf
        members = tree.query_ball_point([cx, cy], rule.radius_um * (1 + 1e-12), p=p_norm)
        field_area = rule.field_area_mm2
    else:
        _, members = tree.query([cx, cy], k=int(rule.field_cells))
        field_area = math.pi * float(radius[best]) ** 2 / 1e6
    share = proportion_figures(positive[np.atleast_1d(np.asarray(members, dtype=np.int64))])
    return HotSpot(
        **base,
        found=True,
        centre_x_um=cx,
        centre_y_um=cy,
        field_area_mm2=field_area,
        field_radius_um=float(radius[best]),
        n_cells=share["n"],
        n_positive=share["k"],
        index_pct=share["pct"],
        index_ci95_low=share["ci95"][0],
        index_ci95_high=share["ci95"][1],
        positive_per_mm2=share["k"] / field_area if field_area > 0 else math.nan,
        n_fields=len(centres),
    )


def _not_found(base: dict[str, Any], rule: HotspotRule, reason: str) -> HotSpot:
    nan = math.nan
    return HotSpot(
        **base,
        found=False,
        centre_x_um=nan,
        centre_y_um=nan,
        field_area_mm2=rule.field_area_mm2 if rule.field == "area" else nan,
        field_radius_um=rule.radius_um if rule.field == "area" else nan,
        n_cells=0,
        n_positive=0,
        index_pct=nan,
        index_ci95_low=nan,
        index_ci95_high=nan,
        positive_per_mm2=nan,
        n_fields=0,
        reason=reason,
    )


def slide_hotspots(
    cells: pd.DataFrame,
    *,
    markers: Sequence[str],
    phenotypes: Sequence[str] = (),
    rule: HotspotRule | None = None,
    exclusion_um: Any = None,
) -> list[HotSpot]:
    """The hot-spot of every marker and phenotype of a scored per-cell table.

    Parameters
    ----------
    cells : per-cell table with ``x_um``, ``y_um``, ``<marker>_positive`` and the phenotype columns;
        ``excluded`` cells are left out.
    markers, phenotypes : the targets, in this order.
    rule : see :class:`HotspotRule`.
    exclusion_um : shapely geometry (x, y µm) of the slide's exclusion regions
        (:func:`senpath.spatial.slide.exclusion_area_um`): no field is centred in it.
    """
    cells = counted_cells(cells)
    positives = {m: cells[f"{m}_positive"].to_numpy(dtype=bool) for m in markers}
    positives.update({p: cells[p].to_numpy(dtype=bool) for p in phenotypes})
    kinds = {m: "marker" for m in markers} | {p: "phenotype" for p in phenotypes}
    return find_hotspots(
        cells["x_um"].to_numpy(dtype=np.float64),
        cells["y_um"].to_numpy(dtype=np.float64),
        positives,
        rule=rule,
        kinds=kinds,
        exclusion_um=exclusion_um,
    )
