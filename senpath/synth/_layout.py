"""Layout of tissue and cells: where the tissue is and which cells lie in any rectangle of a slide.

The tissue mask (a thresholded multi-octave value-noise field) and the cell population on a jittered
lattice of :data:`SITE_UM`-µm sites: presence, senescence, nucleus and cell-body outlines, counterstain
strength and marker levels of every cell, with overlapping nuclei resolved by a local priority rule so
any region gives the same cells (see :mod:`senpath.synth`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import lambertw

from senpath.synth._params import MARKER_LEVEL_OD, SynthParams
from senpath.synth._random import (
    _S_ANGLE,
    _S_ASPECT,
    _S_BODY_ANGLE,
    _S_BODY_ASPECT,
    _S_BODY_OFFSET,
    _S_BODY_SHAPE,
    _S_CELLULARITY,
    _S_COUNTERSTAIN,
    _S_DIAMETER,
    _S_JITTER,
    _S_JX,
    _S_JY,
    _S_KI67,
    _S_KI67_LEVEL,
    _S_P16,
    _S_P16_LEVEL,
    _S_PRESENT,
    _S_PRIORITY,
    _S_SABGAL,
    _S_SABGAL_LEVEL,
    _S_SENESCENT,
    _S_SHAPE,
    _S_TISSUE,
    _fbm,
    _normal,
    _pixel_centres_um,
    _uniform,
)

#: Lattice spacing of candidate cell sites (µm); one cell at most per site.
SITE_UM = 8.0
#: Columns of the global site lattice used to make cell ids (ids = row * this + column + 1).
_ID_COLUMNS = 1 << 16
_ID_MARGIN_SITES = 8
#: Spacing of the global node grid on which the tissue field is evaluated before bilinear interpolation.
_FIELD_NODE_UM = 4.0
#: Bounds on cell geometry (µm) that fix the neighbourhoods searched.
_MAX_BODY_RADIUS_UM = 24.0
_MAX_TERRITORY_UM = 11.0
_NUCLEUS_GAP_UM = 0.8
_SENESCENT_CLAIM = 0.45
#: Candidates per mm² rho_c leave about rho_c * exp(-_DENSITY_K * rho_c) nuclei after the overlap rule.
_DENSITY_K = 1.23e-4
#: Priority bonus of senescent candidates in overlap conflicts: 0.3 keeps the senescent fraction of the
#: kept cells equal to that of the candidates (measured 0.98-1.08 odds ratio at 1500-4000 cells/mm²).
_SENESCENT_PRIORITY = 0.3
_N_VERTICES = 24


# ----------------------------------------------------------------------------------------------------
# tissue field
# ----------------------------------------------------------------------------------------------------
_TISSUE_OCTAVES = (
    (2400.0, 1.0),
    (1200.0, 0.55),
    (600.0, 0.3),
    (300.0, 0.16),
    (150.0, 0.08),
    (75.0, 0.04),
)
_CELLULARITY_OCTAVES = ((400.0, 1.0), (200.0, 0.6), (100.0, 0.35), (50.0, 0.2))


@lru_cache(maxsize=32)
def _tissue_threshold(fraction: float) -> float:
    """Field value above which a point is tissue, so that ``fraction`` of an infinite slide is tissue.

    Quantile of the field over a fixed large sample (independent of the seed: the field's marginal
    distribution does not depend on it), so the threshold is a deterministic constant.
    """
    if fraction >= 1.0:
        return -math.inf
    if fraction <= 0.0:
        return math.inf
    rng = np.random.default_rng(20240607)
    samples = []
    for s in range(8):
        x = rng.uniform(0, 60000.0, 25000)
        y = rng.uniform(0, 60000.0, 25000)
        samples.append(_fbm(1000 + s, _S_TISSUE, x, y, _TISSUE_OCTAVES))
    return float(np.quantile(np.concatenate(samples), 1.0 - fraction))


def _tissue_pixels(
    seed: int, threshold: float, oy: int, ox: int, shape: tuple[int, int], mpp: float
) -> NDArray[np.bool_]:
    """Tissue mask of pixels: the field on a global node grid, interpolated bilinearly.

    Nodes are 4 µm apart, or one pixel for coarser grids (a function of ``mpp`` only).
    Every arithmetic step is elementwise on global positions, so a pixel's value does not depend on the
    region it is rendered in.
    """
    h, w = shape
    node = max(_FIELD_NODE_UM, mpp)
    if threshold == -math.inf:
        return np.ones(shape, bool)
    if threshold == math.inf:
        return np.zeros(shape, bool)
    ys = _pixel_centres_um(oy, h, mpp) / node
    xs = _pixel_centres_um(ox, w, mpp) / node
    ky0, kx0 = int(np.floor(ys[0])), int(np.floor(xs[0]))
    ky1, kx1 = int(np.floor(ys[-1])) + 1, int(np.floor(xs[-1])) + 1
    ny, nx = np.arange(ky0, ky1 + 1), np.arange(kx0, kx1 + 1)
    nodes = _fbm(
        seed,
        _S_TISSUE,
        (nx * node)[None, :],
        (ny * node)[:, None],
        _TISSUE_OCTAVES,
    ).astype(np.float32)
    iy = np.floor(ys).astype(np.int64)
    fy = (ys - iy).astype(np.float32)[:, None]
    ix = np.floor(xs).astype(np.int64)
    fx = (xs - ix).astype(np.float32)[None, :]
    rows = nodes[iy - ky0] * (1.0 - fy) + nodes[iy - ky0 + 1] * fy  # (h, nodes x)
    values = rows[:, ix - kx0] * (1.0 - fx) + rows[:, ix - kx0 + 1] * fx
    return values > np.float32(threshold)


# ----------------------------------------------------------------------------------------------------
# cell population
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Cells:
    """Cells of a region (arrays of length N; polygons (N, V, 2) as (x, y) µm)."""

    cell_id: NDArray[np.int64]
    x_um: NDArray[np.float64]
    y_um: NDArray[np.float64]
    senescent: NDArray[np.bool_]
    nucleus: NDArray[np.float64]
    body: NDArray[np.float64]
    body_radius_um: NDArray[np.float64]
    nucleus_area_um2: NDArray[np.float64]
    counterstain: NDArray[np.float64]
    levels: dict[str, NDArray[np.int64]]
    marker_od: dict[str, NDArray[np.float64]]

    def take(self, index: NDArray[np.intp]) -> _Cells:
        return _Cells(
            self.cell_id[index],
            self.x_um[index],
            self.y_um[index],
            self.senescent[index],
            self.nucleus[index],
            self.body[index],
            self.body_radius_um[index],
            self.nucleus_area_um2[index],
            self.counterstain[index],
            {k: v[index] for k, v in self.levels.items()},
            {k: v[index] for k, v in self.marker_od.items()},
        )


def _choose_level(u: NDArray[np.float64], weights: tuple[float, float, float]) -> NDArray[np.int64]:
    cum = np.cumsum(np.asarray(weights, np.float64))
    return 1 + np.searchsorted(cum / cum[-1], u, side="right").clip(0, 2)


def _outline(
    seed: int,
    stream: int,
    ix: NDArray[np.int64],
    iy: NDArray[np.int64],
    cx: NDArray[np.float64],
    cy: NDArray[np.float64],
    radius: NDArray[np.float64],
    aspect: NDArray[np.float64],
    angle: NDArray[np.float64],
    wobble: float,
) -> NDArray[np.float64]:
    """Polygons (N, V, 2) of ellipses of equivalent radius ``radius`` with harmonic wobble."""
    phi = np.linspace(0.0, 2.0 * np.pi, _N_VERTICES, endpoint=False)[None, :]
    a = (radius * np.sqrt(aspect))[:, None]
    b = (radius / np.sqrt(aspect))[:, None]
    psi = phi - angle[:, None]
    r = a * b / np.sqrt((b * np.cos(psi)) ** 2 + (a * np.sin(psi)) ** 2)
    for h in range(3):
        amp = wobble * (2 * _uniform(seed, stream + 2 * h, ix, iy) - 1)[:, None]
        ph = 2 * np.pi * _uniform(seed, stream + 2 * h + 1, ix, iy)[:, None]
        r = r * (1.0 + amp * np.cos((h + 2) * phi + ph))
    return np.stack([cx[:, None] + r * np.cos(phi), cy[:, None] + r * np.sin(phi)], axis=-1)


def _polygon_area_centroid(poly: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    x, y = poly[..., 0], poly[..., 1]
    x1, y1 = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    cross = x * y1 - x1 * y
    area = 0.5 * cross.sum(axis=1)
    cx = ((x + x1) * cross).sum(axis=1) / (6 * area)
    cy = ((y + y1) * cross).sum(axis=1) / (6 * area)
    return np.abs(area), cx, cy


def _presence_probability(density_per_mm2: float | NDArray[np.float64]) -> NDArray[np.float64]:
    """Probability that a site holds a candidate, for a target nucleus density (cells/mm²).

    The overlap rule keeps about ``rho_c * exp(-k rho_c)`` of ``rho_c`` candidates per mm² (fitted for
    the default nucleus sizes), so invert that with Lambert's W.
    """
    target = np.minimum(density_per_mm2, 0.999 / (math.e * _DENSITY_K))
    candidates = -np.real(lambertw(-_DENSITY_K * np.asarray(target, np.float64))) / _DENSITY_K
    return np.clip(candidates * SITE_UM * SITE_UM / 1e6, 0.0, 1.0)


def _cells_in(
    seed: int, params: SynthParams, x0_um: float, y0_um: float, x1_um: float, y1_um: float
) -> _Cells:
    """Cells whose body or nucleus may reach into the rectangle ``[x0, x1) x [y0, y1)`` (µm)."""
    s = SITE_UM
    reach = _MAX_BODY_RADIUS_UM
    conflict = int(math.ceil(2 * _MAX_TERRITORY_UM / s))
    # sites whose cells can reach the rectangle, plus the neighbourhood their conflicts look at
    jx0 = int(math.floor((x0_um - reach) / s)) - conflict
    jx1 = int(math.floor((x1_um + reach) / s)) + conflict
    jy0 = int(math.floor((y0_um - reach) / s)) - conflict
    jy1 = int(math.floor((y1_um + reach) / s)) + conflict
    ix = np.arange(jx0, jx1 + 1, dtype=np.int64)[None, :]
    iy = np.arange(jy0, jy1 + 1, dtype=np.int64)[:, None]
    ix, iy = np.broadcast_arrays(ix, iy)
    ix, iy = ix.copy(), iy.copy()
    grid_shape = ix.shape
    ix, iy = ix.ravel(), iy.ravel()

    # presence first: the site's draw against the highest presence probability, then the fields only
    # where a cell may be (most sites are empty)
    u_present = _uniform(seed, _S_PRESENT, ix, iy)
    cand = np.flatnonzero(u_present < _presence_probability(params.cell_density_per_mm2))
    ix, iy, u_present = ix[cand], iy[cand], u_present[cand]
    cx = (ix + 0.1 + 0.8 * _uniform(seed, _S_JX, ix, iy)) * s
    cy = (iy + 0.1 + 0.8 * _uniform(seed, _S_JY, ix, iy)) * s
    threshold = _tissue_threshold(params.tissue_fraction)
    if threshold == -math.inf:
        in_tissue = np.ones(cx.shape, bool)
    else:
        in_tissue = _fbm(seed, _S_TISSUE, cx, cy, _TISSUE_OCTAVES) > threshold
    cell_field = 0.5 + 0.5 * np.tanh(1.5 * _fbm(seed, _S_CELLULARITY, cx, cy, _CELLULARITY_OCTAVES))
    cellularity = params.cellularity_min + (1 - params.cellularity_min) * cell_field
    ok = in_tissue & (u_present < _presence_probability(params.cell_density_per_mm2 * cellularity))
    cand, ix, iy, cx, cy = cand[ok], ix[ok], iy[ok], cx[ok], cy[ok]

    senescent = _uniform(seed, _S_SENESCENT, ix, iy) < params.senescent_fraction
    z = _normal(seed, _S_DIAMETER, ix, iy)
    diameter = np.where(
        senescent,
        params.senescent_nucleus_diameter_um + params.senescent_nucleus_diameter_sd_um * z,
        params.nucleus_diameter_um + params.nucleus_diameter_sd_um * z,
    )
    radius = 0.5 * np.clip(diameter, 0.5 * params.nucleus_diameter_um, 18.0)
    ratio = np.where(senescent, params.senescent_cell_diameter_ratio, params.cell_diameter_ratio)
    body_radius = np.minimum(radius * ratio, _MAX_BODY_RADIUS_UM * 0.8)
    # a candidate's territory is its nucleus's largest radius plus a gap (senescent cells also claim
    # part of their wide cytoplasm)
    aspect = 1.0 + (params.nucleus_aspect_max - 1.0) * _uniform(seed, _S_ASPECT, ix, iy)
    angle = np.pi * _uniform(seed, _S_ANGLE, ix, iy)
    outlines = _outline(
        seed, _S_SHAPE, ix, iy, cx, cy, radius, aspect, angle, params.nucleus_shape_noise
    )
    extent = np.sqrt(((outlines - np.stack([cx, cy], -1)[:, None]) ** 2).sum(-1)).max(axis=1)
    claim = np.where(
        senescent,
        np.maximum(extent + _NUCLEUS_GAP_UM / 2, _SENESCENT_CLAIM * body_radius),
        extent + _NUCLEUS_GAP_UM / 2,
    )

    def on_grid(values: NDArray[Any], fill: float) -> NDArray[Any]:
        grid = np.full(grid_shape, fill, dtype=values.dtype)
        grid.ravel()[cand] = values
        return grid

    present = on_grid(np.ones(cand.size, bool), False)
    gcx, gcy = on_grid(cx, 0.0), on_grid(cy, 0.0)
    territory = on_grid(np.minimum(claim, _MAX_TERRITORY_UM), 0.0)
    priority = on_grid(_SENESCENT_PRIORITY * senescent + _uniform(seed, _S_PRIORITY, ix, iy), -1.0)
    index = on_grid(np.arange(cand.size), -1)

    # local overlap rule: drop a candidate when a conflicting candidate of higher priority exists
    keep = present.copy()
    ny, nx = grid_shape
    inner = (slice(conflict, ny - conflict), slice(conflict, nx - conflict))
    for dy in range(-conflict, conflict + 1):
        for dx in range(-conflict, conflict + 1):
            if dy == 0 and dx == 0:
                continue
            other = (
                slice(conflict + dy, ny - conflict + dy),
                slice(conflict + dx, nx - conflict + dx),
            )
            d2 = (gcx[inner] - gcx[other]) ** 2 + (gcy[inner] - gcy[other]) ** 2
            clash = present[other] & (d2 < (territory[inner] + territory[other]) ** 2)
            clash &= priority[other] > priority[inner]
            keep[inner] &= ~clash
    keep[:conflict] = keep[ny - conflict :] = False
    keep[:, :conflict] = keep[:, nx - conflict :] = False
    kept = index[keep]
    # only cells that can reach the rectangle
    kept = kept[
        (cx[kept] + reach >= x0_um)
        & (cx[kept] - reach < x1_um)
        & (cy[kept] + reach >= y0_um)
        & (cy[kept] - reach < y1_um)
    ]

    ix, iy, cx, cy = ix[kept], iy[kept], cx[kept], cy[kept]
    senescent, radius, body_radius = senescent[kept], radius[kept], body_radius[kept]
    nucleus = outlines[kept]
    area, ncx, ncy = _polygon_area_centroid(nucleus)
    body_aspect = 1.0 + 0.5 * _uniform(seed, _S_BODY_ASPECT, ix, iy)
    body_angle = np.pi * _uniform(seed, _S_BODY_ANGLE, ix, iy)
    # cytoplasm off-centre, but the nucleus stays inside the body
    offset = (body_radius / np.sqrt(body_aspect) - radius * 1.3).clip(0) * 0.5
    offset = offset * _uniform(seed, _S_BODY_OFFSET, ix, iy)
    bx, by = cx + offset * np.cos(body_angle), cy + offset * np.sin(body_angle)
    body = _outline(seed, _S_BODY_SHAPE, ix, iy, bx, by, body_radius, body_aspect, body_angle, 0.08)

    counterstain = np.clip(1.0 + 0.15 * _normal(seed, _S_COUNTERSTAIN, ix, iy), 0.6, 1.4)
    counterstain = np.where(senescent, 0.8 * counterstain, counterstain)
    other = ~senescent
    ki67_fraction = np.full(cx.shape, params.ki67_positive_fraction)
    for px, py, pr, pf in params.ki67_patches:
        ki67_fraction[(cx - px) ** 2 + (cy - py) ** 2 <= pr * pr] = pf
    ki67_pos = other & (_uniform(seed, _S_KI67, ix, iy) < ki67_fraction)
    p16_pos = _uniform(seed, _S_P16, ix, iy) < np.where(
        senescent, params.p16_positive_fraction_senescent, params.p16_positive_fraction_other
    )
    sabgal_pos = _uniform(seed, _S_SABGAL, ix, iy) < np.where(
        senescent, params.sabgal_positive_fraction_senescent, params.sabgal_positive_fraction_other
    )
    u_ki67 = _uniform(seed, _S_KI67_LEVEL, ix, iy)
    u_p16 = _uniform(seed, _S_P16_LEVEL, ix, iy)
    u_sab = _uniform(seed, _S_SABGAL_LEVEL, ix, iy)
    levels = {
        "ki67": np.where(ki67_pos, _choose_level(u_ki67, params.ki67_level_weights), 0),
        "p16": np.where(
            p16_pos,
            np.where(
                senescent,
                _choose_level(u_p16, params.level_weights_senescent),
                _choose_level(u_p16, params.level_weights_other),
            ),
            0,
        ),
        "sabgal": np.where(
            sabgal_pos,
            np.where(
                senescent,
                _choose_level(u_sab, params.level_weights_senescent),
                _choose_level(u_sab, params.level_weights_other),
            ),
            0,
        ),
    }
    table = np.array([MARKER_LEVEL_OD[k] for k in range(4)]) * params.marker_od_scale
    table = table + params.marker_background_od
    marker_od = {
        name: table[lv]
        * (1 + params.level_jitter * (2 * _uniform(seed, _S_JITTER + k, ix, iy) - 1))
        for k, (name, lv) in enumerate(levels.items())
    }
    # ids from the global site lattice; sites down to -8 (cells just outside the slide reaching in)
    gx, gy = ix + _ID_MARGIN_SITES, iy + _ID_MARGIN_SITES
    cell_id = gy * _ID_COLUMNS + gx + 1
    if cell_id.size and (
        gx.min() < 0 or gy.min() < 0 or gx.max() >= _ID_COLUMNS or cell_id.max() >= 2**31
    ):
        raise ValueError(
            "synthetic slides must lie within 0 <= x < 524 mm and 0 <= y < 262 mm (cell ids are int32): "
            "move origin_um to non-negative coordinates or render a smaller slide"
        )
    return _Cells(
        cell_id,
        ncx,
        ncy,
        senescent,
        nucleus,
        body,
        body_radius,
        area,
        counterstain,
        levels,
        marker_od,
    )
