"""Synthetic brightfield slides with per-cell ground truth, rendered from physics.

A synthetic slide is a field of cells defined in slide coordinates (µm), stained by Beer-Lambert mixing of
reference stain vectors (:data:`senpath.stain.REFERENCE_STAINS`) in optical density (OD) and imaged with
blur, uneven illumination, sensor noise and JPEG artefacts. Every cell carries marker truth (Ki67, p16,
SA-beta-gal) with intensity levels 0/1+/2+/3+.

Design
------
*Resolution independence.* Nothing is stored at a pixel size. Cells live on a jittered lattice of
``SITE_UM``-µm sites; every random property of a site (presence, senescence, size, shape, marker levels)
is a counter-based hash of ``(seed, stream, site x, site y)``, so any region, at any mpp, in any tile
order, computes the same cells without generating their neighbours first. (Per-block seeded RNGs would
also work, but a hash per site needs no block bookkeeping and makes neighbour conflicts trivially
consistent.) Overlapping nuclei are resolved by a *local* rule: a candidate is dropped when a conflicting
candidate of higher priority exists nearby (senescent cells first), which depends only on a fixed
neighbourhood and therefore gives the same answer in every region. Low-frequency fields (tissue mask,
cellularity) are hashed value noise evaluated on a global 4 µm node grid and interpolated bilinearly;
textures (chromatin, X-gal granules, stroma fibres) are periodic 0.25 µm/px images sampled at global
positions (with mip-maps for coarse pixels). Sensor noise comes from RNG tiles keyed by global pixel
coordinates. Hence ``render_region`` of a sub-region equals the crop of a larger render, bit for bit
(without JPEG artefacts, which depend on the 8x8 block grid of the image they are encoded in).

*Rendering.* Cell bodies (big cells first, so small cells keep their cytoplasm) and nuclei are
rasterised as shape-noised ellipse polygons into local label maps (``cv2.fillPoly`` with 1/16 px
fixed-point vertices on a canvas that contains every drawn polygon whole, which keeps the raster
translation invariant). Per-pixel stain concentrations come from per-cell look-up tables times
textures; ``OD = C @ V`` with ``V`` the unit stain vectors; ``I = I0 * illumination * 10**-OD``; the
optical blur acts on intensity (not OD), then shot + read noise, then 8-bit quantisation.

*Marker levels.* A marker at level ``L`` is rendered with mean chromogen concentration
``MARKER_LEVEL_OD[L]`` (OD units along the unit stain vector) inside its compartment (Ki67: nucleus;
p16: nucleus and cytoplasm; SA-beta-gal: cytoplasm, granular), times a small per-cell jitter. The levels
sit inside the scoring bins with margin for blur and JPEG losses.

*Assays.* ``sabgal-eosin`` has no hematoxylin: its nuclei are made visible by denser eosin (acidophilic
nucleoplasm plus chromatin texture), so the image stays a clean two-stain (eosin, X-gal) mixture that
the X-gal+eosin preset deconvolves exactly. The same seed gives the same cells (positions, senescence,
marker truth) in every assay, like serial sections stained differently.

*Pyramids.* Levels with pixels no coarser than ``params.max_render_mpp`` (default 2 µm: levels 0-2 of
a 0.5 µm slide) are rendered directly at their own mpp, tile row by tile row (bit-identical to
``render_region`` at that mpp). Coarser levels are derived from the last direct level by a streamed 2x
area-mean cascade written to unnamed temporary files (rendering them directly would redraw every cell
once per level). Memory therefore does not grow with slide height, and only the last direct level's
tile row (width / 4 at 0.5 µm) is held across strips.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.special import lambertw, ndtri

from senpath.stain import REFERENCE_STAINS, unit

ASSAYS: tuple[str, ...] = ("ki67", "p16", "sabgal", "sabgal-eosin", "sabgal+ki67", "p16+ki67")

#: Mean chromogen concentration (OD along the unit stain vector, inside the marker's compartment) for
#: intensity levels 0, 1+, 2+, 3+; centred in the scoring bins [0.15, 0.375), [0.375, 0.70), >= 0.70.
MARKER_LEVEL_OD: dict[int, float] = {0: 0.0, 1: 0.25, 2: 0.52, 3: 0.95}

#: Stains present in each assay's image (counterstain first), i.e. the stain set that deconvolves it.
ASSAY_STAINS: dict[str, tuple[str, ...]] = {
    "ki67": ("hematoxylin", "dab"),
    "p16": ("hematoxylin", "dab"),
    "sabgal": ("nuclear_fast_red", "xgal"),
    "sabgal-eosin": ("eosin", "xgal"),
    "sabgal+ki67": ("hematoxylin", "xgal", "dab"),
    "p16+ki67": ("hematoxylin", "dab", "fast_red"),
}

#: Chromogen of each marker in each assay.
ASSAY_MARKERS: dict[str, dict[str, str]] = {
    "ki67": {"ki67": "dab"},
    "p16": {"p16": "dab"},
    "sabgal": {"sabgal": "xgal"},
    "sabgal-eosin": {"sabgal": "xgal"},
    "sabgal+ki67": {"sabgal": "xgal", "ki67": "dab"},
    "p16+ki67": {"p16": "dab", "ki67": "fast_red"},
}

#: Lattice spacing of candidate cell sites (µm); one cell at most per site.
SITE_UM = 8.0
#: Columns of the global site lattice used to make cell ids (ids = row * this + column + 1).
_ID_COLUMNS = 1 << 16
_ID_MARGIN_SITES = 8
#: Spacing of the global node grid on which the tissue field is evaluated before bilinear interpolation.
_FIELD_NODE_UM = 4.0
#: Texture pixel size (µm) and period (px) of the periodic textures.
_TEX_MPP = 0.25
_TEX_PX = 512
#: Size (px) of the global tiles of sensor noise.
_NOISE_TILE = 256
_NOISE_BANK = 1024
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
_SHIFT = 4  # fixed-point bits of polygon vertices
_N_VERTICES = 24


@dataclass(frozen=True)
class SynthParams:
    """Parameters of a synthetic slide; all sizes in µm, OD in optical-density units.

    Attributes
    ----------
    tissue_fraction : float
        Expected fraction of the slide area covered by tissue (1.0: no glass). The tissue field is
        irregular at scales up to ~2.4 mm, so small regions are mostly tissue or mostly glass.
    cell_density_per_mm2 : float
        Nucleus density in the most cellular tissue (about, for default nucleus sizes; at most ~2,900
        per mm² with this cell lattice).
    cellularity_min : float
        Relative cell density in the least cellular (stroma-rich) areas, 0-1.
    senescent_fraction : float
        Fraction of cells that are senescent.
    ki67_positive_fraction : float
        Fraction of non-senescent cells that are Ki67+ (senescent cells are always Ki67-).
    p16_positive_fraction_senescent, p16_positive_fraction_other : float
        Fraction p16+ among senescent and among other cells.
    sabgal_positive_fraction_senescent, sabgal_positive_fraction_other : float
        Fraction SA-beta-gal+ among senescent and among other cells.
    level_weights_senescent, level_weights_other : (3,) floats
        Relative frequency of 1+, 2+, 3+ among positive cells (p16, SA-beta-gal).
    ki67_level_weights : (3,) floats
        Relative frequency of 1+, 2+, 3+ among Ki67+ cells.
    level_jitter : float
        Relative per-cell variation of a marker's OD around its level (uniform, +/-).
    nucleus_diameter_um, nucleus_diameter_sd_um : float
        Equivalent diameter of normal nuclei.
    senescent_nucleus_diameter_um, senescent_nucleus_diameter_sd_um : float
        Equivalent diameter of senescent (enlarged) nuclei.
    nucleus_aspect_max : float
        Largest major/minor axis ratio of nuclei.
    nucleus_shape_noise : float
        Amplitude of the low-order harmonic wobble of nuclear outlines (relative radius).
    cell_diameter_ratio, senescent_cell_diameter_ratio : float
        Cell body diameter over nucleus diameter (normal, senescent: big flat cells).
    nucleus_counterstain_od, cytoplasm_counterstain_od, stroma_counterstain_od : float
        Counterstain (hematoxylin or nuclear fast red) concentration in nuclei, cytoplasm and stroma.
    eosin_nucleus_od, eosin_cytoplasm_od, eosin_stroma_od : float
        Eosin concentrations of the ``sabgal-eosin`` assay (nuclei denser than cytoplasm).
    chromatin_contrast : float
        Strength of the chromatin texture in nuclei (0: flat).
    blur_sigma_um : float
        Standard deviation of the Gaussian optical blur, applied to intensity.
    noise_sd : float
        Sensor noise (8-bit grey levels) at glass brightness; shot noise scales with sqrt(intensity).
    illumination_falloff : float
        Relative darkening at the corners of each camera field of view (vignetting).
    field_of_view_um : float
        Size of the camera field of view that the vignetting repeats with.
    background_rgb : (3,) floats
        Glass intensity I0 (R, G, B) at the centre of a field of view.
    jpeg_quality : int or None
        Quality of JPEG artefacts (``render_region``: round trip; ``write_slide``: the tile
        compression quality, or a per-tile round trip for lossless compression). None: no artefacts.
    max_render_mpp : float
        ``render_region`` renders grids coarser than this at this pixel size and area-averages them;
        ``write_slide`` renders the levels up to this pixel size directly and derives coarser ones by
        2x area-mean downsampling.
    """

    tissue_fraction: float = 0.6
    cell_density_per_mm2: float = 2500.0
    cellularity_min: float = 0.25
    senescent_fraction: float = 0.15
    ki67_positive_fraction: float = 0.25
    p16_positive_fraction_senescent: float = 0.85
    p16_positive_fraction_other: float = 0.05
    sabgal_positive_fraction_senescent: float = 0.9
    sabgal_positive_fraction_other: float = 0.03
    level_weights_senescent: tuple[float, float, float] = (0.2, 0.35, 0.45)
    level_weights_other: tuple[float, float, float] = (0.55, 0.3, 0.15)
    ki67_level_weights: tuple[float, float, float] = (0.3, 0.4, 0.3)
    level_jitter: float = 0.08
    nucleus_diameter_um: float = 7.0
    nucleus_diameter_sd_um: float = 0.8
    senescent_nucleus_diameter_um: float = 12.5
    senescent_nucleus_diameter_sd_um: float = 1.0
    nucleus_aspect_max: float = 1.6
    nucleus_shape_noise: float = 0.05
    cell_diameter_ratio: float = 1.8
    senescent_cell_diameter_ratio: float = 2.4
    nucleus_counterstain_od: float = 0.45
    cytoplasm_counterstain_od: float = 0.10
    stroma_counterstain_od: float = 0.09
    eosin_nucleus_od: float = 0.5
    eosin_cytoplasm_od: float = 0.14
    eosin_stroma_od: float = 0.16
    chromatin_contrast: float = 0.35
    blur_sigma_um: float = 0.25
    noise_sd: float = 2.0
    illumination_falloff: float = (
        0.02  # WSI scanners flat-field correct; microscope photos vignette more
    )
    field_of_view_um: float = 600.0
    background_rgb: tuple[float, float, float] = (243.0, 241.0, 245.0)
    jpeg_quality: int | None = 85
    max_render_mpp: float = 2.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_fraction") or f.name in {"cellularity_min"}:
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"SynthParams.{f.name}={value!r}: give a value in [0, 1]")
        for name in ("level_weights_senescent", "level_weights_other", "ki67_level_weights"):
            w = getattr(self, name)
            if len(w) != 3 or min(w) < 0 or sum(w) <= 0:
                raise ValueError(
                    f"SynthParams.{name}={w!r}: give three non-negative weights (1+, 2+, 3+)"
                )
        if self.nucleus_diameter_um <= 0 or self.senescent_nucleus_diameter_um <= 0:
            raise ValueError("SynthParams: nucleus diameters must be positive µm")
        max_nucleus = max(self.nucleus_diameter_um, self.senescent_nucleus_diameter_um)
        if max_nucleus > 18.0:
            raise ValueError(
                f"SynthParams: nucleus diameters up to 18 µm are supported, got {max_nucleus}"
            )
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"SynthParams.jpeg_quality={self.jpeg_quality}: give 1-100 or None")
        if self.blur_sigma_um < 0 or self.noise_sd < 0 or self.max_render_mpp <= 0:
            raise ValueError(
                "SynthParams: blur_sigma_um and noise_sd must be >= 0, max_render_mpp > 0"
            )


@dataclass(frozen=True)
class SynthRegion:
    """A rendered region.

    Attributes
    ----------
    rgb : (Y, X, 3) uint8
    labels : (Y, X) int32
        Nucleus instance labels; 0 = background, otherwise the global ``cell_id``.
    truth : pandas.DataFrame
        One row per cell whose nucleus has at least one pixel in ``labels`` (see :func:`truth_columns`).
    mpp : float
    origin_um : (2,) float
        Slide position (y, x) of the region's top-left pixel corner.
    assay : str
    """

    rgb: NDArray[np.uint8]
    labels: NDArray[np.int32]
    truth: pd.DataFrame
    mpp: float
    origin_um: tuple[float, float]
    assay: str


@dataclass(frozen=True)
class SynthSlide:
    """Files written by :func:`write_slide`.

    Attributes
    ----------
    path : Path
        Pyramidal tiled RGB TIFF (or OME-TIFF).
    labels_path : Path or None
        Pyramidal tiled uint32 TIFF of nucleus instance labels on the same grids, or None.
    truth_path : Path
        Parquet table, one row per cell with at least one nucleus pixel on level 0.
    shape : (2,) int
        Level-0 shape (Y, X) in pixels.
    mpp : float
        Level-0 pixel size (µm).
    assay : str
    level_shapes : list of (2,) int
        Shape of every pyramid level; level ``k`` has pixel size ``mpp * 2**k``.
    """

    path: Path
    labels_path: Path | None
    truth_path: Path
    shape: tuple[int, int]
    mpp: float
    assay: str
    level_shapes: list[tuple[int, int]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# counter-based random numbers
# ----------------------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser (wrapping uint64 arithmetic), elementwise."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _key(seed: int, stream: int) -> NDArray[np.uint64]:
    return _mix(_mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)) ^ np.uint64(stream))


def _uniform(
    seed: int, stream: int, ix: NDArray[np.int64], iy: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Uniform numbers in (0, 1) that depend only on (seed, stream, ix, iy)."""
    ux = np.asarray(ix, np.int64).view(np.uint64)
    uy = np.asarray(iy, np.int64).view(np.uint64)
    h = _mix(_mix(_key(seed, stream) ^ ux) ^ uy)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _normal(
    seed: int, stream: int, ix: NDArray[np.int64], iy: NDArray[np.int64]
) -> NDArray[np.float64]:
    return ndtri(_uniform(seed, stream, ix, iy))


# streams (one per independent property); _S_SHAPE and _S_BODY_SHAPE use 6 consecutive streams each,
# _S_JITTER 3
_S_PRESENT, _S_JX, _S_JY, _S_SENESCENT, _S_PRIORITY, _S_DIAMETER, _S_ASPECT, _S_ANGLE = range(8)
_S_SHAPE = 8
_S_BODY_ANGLE, _S_BODY_ASPECT, _S_BODY_OFFSET = 14, 15, 16
_S_BODY_SHAPE = 17
_S_COUNTERSTAIN, _S_KI67, _S_KI67_LEVEL, _S_P16, _S_P16_LEVEL, _S_SABGAL, _S_SABGAL_LEVEL = range(
    24, 31
)
_S_JITTER = 31
_S_TISSUE = 100
_S_CELLULARITY = 120
_S_TEXTURE = 140
_S_NOISE = 1 << 40


# ----------------------------------------------------------------------------------------------------
# low-frequency fields (value noise)
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


def _value_noise(
    seed: int, stream: int, x_um: NDArray[Any], y_um: NDArray[Any], cell_um: float
) -> NDArray[np.float64]:
    """Smooth value noise in [-1, 1] on a lattice of ``cell_um`` (quintic interpolation)."""
    gx, gy = x_um / cell_um, y_um / cell_um
    ix, iy = np.floor(gx), np.floor(gy)
    fx, fy = gx - ix, gy - iy
    wx = fx * fx * fx * (fx * (fx * 6.0 - 15.0) + 10.0)
    wy = fy * fy * fy * (fy * (fy * 6.0 - 15.0) + 10.0)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    v00 = _uniform(seed, stream, ix, iy)
    v10 = _uniform(seed, stream, ix + 1, iy)
    v01 = _uniform(seed, stream, ix, iy + 1)
    v11 = _uniform(seed, stream, ix + 1, iy + 1)
    top = v00 + (v10 - v00) * wx
    bottom = v01 + (v11 - v01) * wx
    return 2.0 * (top + (bottom - top) * wy) - 1.0


def _fbm(
    seed: int,
    stream: int,
    x_um: NDArray[Any],
    y_um: NDArray[Any],
    octaves: tuple[tuple[float, float], ...],
) -> NDArray[np.float64]:
    total = np.zeros(np.broadcast(x_um, y_um).shape)
    for k, (cell, amplitude) in enumerate(octaves):
        total += amplitude * _value_noise(seed, stream + k, x_um, y_um, cell)
    return total


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


def _pixel_centres_um(origin_px: int, n: int, mpp: float) -> NDArray[np.float64]:
    """Slide positions (µm) of the centres of global pixels ``origin_px .. origin_px + n - 1``."""
    return (np.arange(origin_px, origin_px + n, dtype=np.float64) + 0.5) * mpp


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
# textures
# ----------------------------------------------------------------------------------------------------
def _periodic_blur(image: NDArray[np.float32], sigma_px: float) -> NDArray[np.float32]:
    """Gaussian blur with periodic boundaries (in Fourier space)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fy * fy + fx * fx))
    return np.fft.irfft2(np.fft.rfft2(image) * transfer, s=image.shape).astype(np.float32)


@lru_cache(maxsize=8)
def _textures(seed: int) -> dict[str, list[NDArray[np.float32]]]:
    """Periodic textures (mean 1) at 0.25 µm/px and their 2x mip-maps.

    chromatin: blobby heterochromatin (~0.5-1 µm); granules: sparse X-gal crystals on a faint diffuse
    background; fibres: wavy collagen-like streaks whose orientation drifts slowly.
    """
    rng = np.random.default_rng([seed & 0xFFFFFFFF, _S_TEXTURE])
    n = _TEX_PX
    chromatin = _periodic_blur(rng.standard_normal((n, n)).astype(np.float32), 1.6)
    chromatin = np.exp(0.8 * chromatin / chromatin.std())
    granules = np.zeros((n, n), np.float32)
    m = int(0.02 * n * n)
    gy, gx = rng.integers(0, n, m), rng.integers(0, n, m)
    np.add.at(granules, (gy, gx), rng.uniform(0.5, 1.5, m).astype(np.float32))
    granules = _periodic_blur(granules, 1.5)
    granules = 0.35 + 0.65 * granules / granules.mean()
    fibres = np.zeros((3 * n, 3 * n), np.float32)
    angle_field = _periodic_blur(rng.standard_normal((n // 8, n // 8)).astype(np.float32), 3.0)
    angle_field = cv2.resize(angle_field / angle_field.std(), (n, n), interpolation=cv2.INTER_CUBIC)
    for _ in range(700):
        y, x = rng.uniform(0, n, 2)
        points = []
        step = 4.0
        for _ in range(int(rng.integers(20, 60))):
            theta = 0.6 * angle_field[int(y) % n, int(x) % n]
            points.append((x + n, y + n))
            x, y = x + step * math.cos(theta), y + step * math.sin(theta)
        pts = np.round(np.array(points) * 16).astype(np.int32).reshape(-1, 1, 2)
        value = float(rng.uniform(0.4, 1.0))
        for dy in (-n, 0, n):
            for dx in (-n, 0, n):
                cv2.polylines(
                    fibres,
                    [pts + np.array([dx * 16, dy * 16], np.int32)],
                    False,
                    value,
                    2,
                    cv2.LINE_AA,
                    4,
                )
    fibres = np.ascontiguousarray(
        fibres[n : 2 * n, n : 2 * n]
    )  # one period, wrapped copies drawn above
    fibres = _periodic_blur(fibres, 1.0)
    fibres = 1.0 + 0.45 * (fibres / fibres.mean() - 1.0)  # pale collagen between brighter fibres

    out: dict[str, list[NDArray[np.float32]]] = {}
    for name, tex in (("chromatin", chromatin), ("granules", granules), ("fibres", fibres)):
        tex = (tex / tex.mean()).astype(np.float32)
        mips = [tex]
        while mips[-1].shape[0] > 8:
            t = mips[-1]
            mips.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
        out[name] = mips
    return out


def _texture_indices(
    origin_px: int, n: int, mpp: float, offset_um: float
) -> tuple[int, NDArray[np.intp]]:
    """Mip level and wrapped texture indices for pixel centres ``origin_px ..`` at ``mpp``."""
    level = max(0, min(int(math.floor(math.log2(max(mpp, _TEX_MPP) / _TEX_MPP) + 1e-9)), 6))
    tex_mpp = _TEX_MPP * (1 << level)
    size = _TEX_PX >> level
    pos = _pixel_centres_um(origin_px, n, mpp) + offset_um
    return level, (np.floor(pos / tex_mpp).astype(np.int64) % size).astype(np.intp)


def _sample(
    mips: list[NDArray[np.float32]],
    oy: int,
    ox: int,
    shape: tuple[int, int],
    mpp: float,
    offset_um: float,
) -> NDArray[np.float32]:
    level, iy = _texture_indices(oy, shape[0], mpp, offset_um)
    _, ix = _texture_indices(ox, shape[1], mpp, offset_um * 0.618)
    return mips[level][iy[:, None], ix[None, :]]


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
    ki67_pos = other & (_uniform(seed, _S_KI67, ix, iy) < params.ki67_positive_fraction)
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
    table = np.array([MARKER_LEVEL_OD[k] for k in range(4)])
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


# ----------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------
def _stain_roles(
    assay: str, params: SynthParams
) -> tuple[list[str], NDArray[np.float64], NDArray[np.float64]]:
    """Stains of an assay and their OD in (nucleus, cytoplasm, stroma) from the counterstain.

    Returns names (S,), unit vectors (S, 3) and counterstain OD (S, 3) per compartment.
    """
    if assay not in ASSAY_STAINS:
        raise ValueError(f"unknown assay {assay!r}: use one of {', '.join(ASSAYS)}")
    names = list(ASSAY_STAINS[assay])
    vectors = np.vstack([unit(REFERENCE_STAINS[n]) for n in names])
    counter = np.zeros((len(names), 3))
    if assay == "sabgal-eosin":
        counter[0] = (params.eosin_nucleus_od, params.eosin_cytoplasm_od, params.eosin_stroma_od)
    else:
        counter[0] = (
            params.nucleus_counterstain_od,
            params.cytoplasm_counterstain_od,
            params.stroma_counterstain_od,
        )
    return names, vectors, counter


def _illumination(origin_px: int, n: int, mpp: float, params: SynthParams) -> NDArray[np.float32]:
    """1-D vignetting profile (separable), repeating with the camera field of view."""
    pos = _pixel_centres_um(origin_px, n, mpp)
    u = (np.mod(pos, params.field_of_view_um) / params.field_of_view_um) * 2.0 - 1.0
    # (1 - f u^2)(1 - f v^2) darkens the corners by ~ 2f: halve f so the corners lose ``falloff``
    return (1.0 - 0.5 * params.illumination_falloff * u * u).astype(np.float32)


@lru_cache(maxsize=4)
def _noise_bank(seed: int) -> NDArray[np.float32]:
    """Standard normal noise (B + T, B + T, 3) with the last T rows/columns wrapping the first ones."""
    n, t = _NOISE_BANK, _NOISE_TILE
    bank = np.random.default_rng([seed & 0xFFFFFFFF, 7919]).standard_normal((n, n, 3), np.float32)
    return np.pad(bank, ((0, t), (0, t), (0, 0)), mode="wrap")


def _noise(seed: int, mpp: float, oy: int, ox: int, shape: tuple[int, int]) -> NDArray[np.float32]:
    """Standard normal noise (Y, X, 3), a function of the global pixel position only.

    Each global noise tile (``_NOISE_TILE`` px) is a window of a per-seed noise bank at an offset hashed
    from (seed, grid, tile y, tile x): as random as fresh numbers to the eye, at memcpy speed.
    """
    h, w = shape
    t = _NOISE_TILE
    key = int(round(mpp * 1e6))
    bank = _noise_bank(seed)
    out = np.empty((h, w, 3), np.float32)
    tys = np.arange(oy // t, (oy + h - 1) // t + 1, dtype=np.int64)
    txs = np.arange(ox // t, (ox + w - 1) // t + 1, dtype=np.int64)
    gy, gx = np.meshgrid(tys, txs, indexing="ij")
    offy = (_uniform(seed, _S_NOISE + key, gx, gy) * _NOISE_BANK).astype(np.int64)
    offx = (_uniform(seed, _S_NOISE + key + 1, gx, gy) * _NOISE_BANK).astype(np.int64)
    for a, ty in enumerate(tys.tolist()):
        for b, tx in enumerate(txs.tolist()):
            y0, x0 = max(oy, ty * t), max(ox, tx * t)
            y1, x1 = min(oy + h, (ty + 1) * t), min(ox + w, (tx + 1) * t)
            by, bx = int(offy[a, b]) + y0 - ty * t, int(offx[a, b]) + x0 - tx * t
            out[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = bank[by : by + y1 - y0, bx : bx + x1 - x0]
    return out


def _rasterise(
    cells: _Cells, mpp: float, oy: int, ox: int, shape: tuple[int, int]
) -> tuple[NDArray[np.int32], NDArray[np.int32], _Cells]:
    """Local label maps (nucleus, body) of the region; index k means ``cells.take(drawn)[k - 1]``.

    Polygons are drawn on a canvas that contains each drawn polygon whole (clipping is not translation
    invariant in ``cv2.fillPoly``), then cropped.
    """
    h, w = shape
    scale = float(1 << _SHIFT)

    def fixed(poly: NDArray[np.float64]) -> NDArray[np.int64]:
        # cv2.fillPoly also fills pixels whose centres lie up to ~half a pixel outside the outline;
        # pulling the outline in by half a pixel makes the raster an unbiased pixel-centre sampling
        # (label areas within ~1% of the polygon areas, measured for radii of 5-25 px)
        centre = poly.mean(axis=1, keepdims=True)
        radial = poly - centre
        length = np.sqrt((radial**2).sum(axis=-1, keepdims=True))
        inner = centre + radial * np.clip(1.0 - 0.5 * mpp / np.maximum(length, 1e-9), 0.0, None)
        return np.rint((inner / mpp - 0.5) * scale).astype(np.int64)

    nuc_fx, body_fx = fixed(cells.nucleus), fixed(cells.body)
    lo = body_fx.min(axis=1) >> _SHIFT  # (N, 2) as (x, y)
    hi = (body_fx.max(axis=1) >> _SHIFT) + 1
    reach = (hi[:, 0] >= ox) & (lo[:, 0] < ox + w) & (hi[:, 1] >= oy) & (lo[:, 1] < oy + h)
    drawn = np.flatnonzero(reach)
    sub = cells.take(drawn)
    if drawn.size == 0:
        return np.zeros(shape, np.int32), np.zeros(shape, np.int32), sub
    lo, hi = lo[drawn], hi[drawn]
    cy0, cx0 = min(oy, int(lo[:, 1].min())) - 1, min(ox, int(lo[:, 0].min())) - 1
    cy1, cx1 = max(oy + h, int(hi[:, 1].max())) + 1, max(ox + w, int(hi[:, 0].max())) + 1
    origin = np.array([cx0, cy0], np.int64) << _SHIFT
    nuc_local = (nuc_fx[drawn] - origin).astype(np.int32)
    body_local = (body_fx[drawn] - origin).astype(np.int32)
    body_map = np.zeros((cy1 - cy0, cx1 - cx0), np.int32)
    nuc_map = np.zeros_like(body_map)
    # big cells first so small cells keep their own cytoplasm; ties by id (a global order)
    order = np.lexsort((sub.cell_id, -sub.body_radius_um))
    for k in order:
        cv2.fillPoly(body_map, [body_local[k].reshape(-1, 1, 2)], int(k) + 1, cv2.LINE_8, _SHIFT)
    for k in range(len(drawn)):
        cv2.fillPoly(nuc_map, [nuc_local[k].reshape(-1, 1, 2)], int(k) + 1, cv2.LINE_8, _SHIFT)
    crop = (slice(oy - cy0, oy - cy0 + h), slice(ox - cx0, ox - cx0 + w))
    return nuc_map[crop], body_map[crop], sub


def _render_intensity(
    assay: str, params: SynthParams, seed: int, mpp: float, oy: int, ox: int, shape: tuple[int, int]
) -> tuple[NDArray[np.float32], NDArray[np.int32], _Cells]:
    """Noise-free blurred intensity (Y, X, 3) float32, local nucleus map (Y, X) and the drawn cells."""
    halo = int(math.ceil(4.0 * params.blur_sigma_um / mpp)) + 1 if params.blur_sigma_um > 0 else 0
    hy, hx = oy - halo, ox - halo
    full = (shape[0] + 2 * halo, shape[1] + 2 * halo)
    cells = _cells_in(seed, params, hx * mpp, hy * mpp, (hx + full[1]) * mpp, (hy + full[0]) * mpp)
    nuc, body, cells = _rasterise(cells, mpp, hy, hx, full)
    names, vectors, counter = _stain_roles(assay, params)
    n = len(cells.cell_id)
    lut_nucleus = np.zeros((len(names), n + 1), np.float32)
    lut_cytoplasm = np.zeros((len(names), n + 1), np.float32)
    lut_nucleus[0, 1:] = counter[0, 0] * cells.counterstain
    lut_cytoplasm[0, 1:] = counter[0, 1] * cells.counterstain
    granular = np.zeros(len(names), bool)
    for marker, stain in ASSAY_MARKERS[assay].items():
        s = names.index(stain)
        od = cells.marker_od[marker]
        if marker in ("ki67", "p16"):
            lut_nucleus[s, 1:] += od
        if marker in ("p16", "sabgal"):
            lut_cytoplasm[s, 1:] += od
        granular[s] = marker == "sabgal"

    textures = _textures(seed)
    chromatin = _sample(textures["chromatin"], hy, hx, full, mpp, 0.0)
    chromatin = 1.0 + params.chromatin_contrast * (chromatin - 1.0)
    cyto_texture = 1.0 + 0.25 * (_sample(textures["chromatin"], hy, hx, full, mpp, 61.0) - 1.0)
    tissue = _tissue_pixels(seed, _tissue_threshold(params.tissue_fraction), hy, hx, full, mpp)
    stroma = (tissue & (body == 0)).astype(np.float32)
    if counter[0, 2] > 0:
        stroma *= _sample(textures["fibres"], hy, hx, full, mpp, 17.0)
    cyto = np.where(nuc == 0, body, 0)
    granules = _sample(textures["granules"], hy, hx, full, mpp, 33.0) if granular.any() else None

    planes = []
    for s in range(len(names)):
        conc = lut_nucleus[s][nuc] * chromatin
        if granular[s]:
            # X-gal: granules in the cytoplasm; a counterstain sharing the stain keeps the mild texture
            sabgal_od = np.concatenate([[0.0], cells.marker_od["sabgal"]]).astype(np.float32)
            conc += (lut_cytoplasm[s] - sabgal_od)[cyto] * cyto_texture
            conc += sabgal_od[cyto] * cast(NDArray[np.float32], granules)
        else:
            conc += lut_cytoplasm[s][cyto] * cyto_texture
        if s == 0:
            conc += np.float32(counter[0, 2]) * stroma
        planes.append(conc)
    # Beer-Lambert: OD = C @ V, then I = I0 * illumination * 10**-OD, with the (separable)
    # illumination folded into the exponent so there is a single exp pass
    od_rgb = cast(
        NDArray[np.float32], cv2.transform(cv2.merge(planes), vectors.T.astype(np.float32))
    )
    i0 = np.asarray(params.background_rgb, np.float64)
    log_y = np.log(_illumination(hy, full[0], mpp, params).astype(np.float64))[:, None] + np.log(i0)
    log_x = np.log(_illumination(hx, full[1], mpp, params).astype(np.float64))[:, None]
    od_rgb *= np.float32(-math.log(10.0))
    od_rgb += log_y.astype(np.float32)[:, None, :]
    od_rgb += log_x.astype(np.float32)[None, :, :]
    intensity = cv2.exp(od_rgb.reshape(full[0], -1)).reshape(od_rgb.shape)
    if halo:
        intensity = cv2.GaussianBlur(
            intensity, (0, 0), params.blur_sigma_um / mpp, borderType=cv2.BORDER_REFLECT
        )
        crop = (slice(halo, halo + shape[0]), slice(halo, halo + shape[1]))
        intensity, nuc = intensity[crop], nuc[crop]
    return np.ascontiguousarray(intensity), np.ascontiguousarray(nuc), cells


def _render(
    assay: str, params: SynthParams, seed: int, mpp: float, oy: int, ox: int, shape: tuple[int, int]
) -> tuple[NDArray[np.uint8], NDArray[np.int32], _Cells, NDArray[np.int64]]:
    """Render global pixels ``[oy, oy+Y) x [ox, ox+X)`` of the grid with pixel size ``mpp``.

    Grids coarser than ``params.max_render_mpp`` are rendered finer and area-averaged; labels are then
    point-sampled at the centres. Returns rgb, global labels, the drawn cells and each drawn cell's
    nucleus pixel count in this region.
    """
    ss = 1
    while mpp / ss > params.max_render_mpp and ss < 64:
        ss *= 2
    if ss == 1:
        intensity, nuc, cells = _render_intensity(assay, params, seed, mpp, oy, ox, shape)
    else:
        fine = (shape[0] * ss, shape[1] * ss)
        intensity, nuc, cells = _render_intensity(
            assay, params, seed, mpp / ss, oy * ss, ox * ss, fine
        )
        intensity = cast(
            NDArray[np.float32],
            cv2.resize(intensity, (shape[1], shape[0]), interpolation=cv2.INTER_AREA),
        )
        nuc = np.ascontiguousarray(nuc[ss // 2 :: ss, ss // 2 :: ss])
    if params.noise_sd > 0:
        mean_i0 = float(np.mean(params.background_rgb))
        sd = params.noise_sd * np.sqrt(np.maximum(intensity, 0.0) / mean_i0 + 0.01)
        intensity += sd * _noise(seed, mpp, oy, ox, shape)
    rgb = np.clip(np.rint(intensity), 0, 255).astype(np.uint8)
    ids = np.concatenate([[0], cells.cell_id]).astype(np.int32)
    counts = np.bincount(nuc.ravel(), minlength=len(ids))
    return rgb, ids[nuc], cells, counts[1:]


def truth_columns(assay: str) -> list[str]:
    """Columns of the truth table for ``assay``, in order."""
    if assay not in ASSAY_MARKERS:
        raise ValueError(f"unknown assay {assay!r}: use one of {', '.join(ASSAYS)}")
    cols = ["cell_id", "x_um", "y_um", "nucleus_area_um2", "senescent"]
    for marker in sorted(ASSAY_MARKERS[assay], key=["ki67", "p16", "sabgal"].index):
        cols += [f"{marker}_level", f"{marker}_positive"]
    return cols


def _truth_frame(assay: str, cells: _Cells) -> pd.DataFrame:
    data: dict[str, object] = {
        "cell_id": cells.cell_id.astype(np.int64),
        "x_um": cells.x_um,
        "y_um": cells.y_um,
        "nucleus_area_um2": cells.nucleus_area_um2,
        "senescent": cells.senescent.astype(bool),
    }
    for col in truth_columns(assay)[5::2]:
        marker = col.removesuffix("_level")
        data[col] = cells.levels[marker].astype(np.int8)
        data[f"{marker}_positive"] = cells.levels[marker] >= 1
    return pd.DataFrame(data, columns=truth_columns(assay))


def _jpeg_roundtrip(rgb: NDArray[np.uint8], quality: int) -> NDArray[np.uint8]:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("JPEG decoding failed")
    return np.ascontiguousarray(decoded[..., ::-1]).astype(np.uint8, copy=False)


def _check(assay: str, shape: tuple[int, int], mpp: float) -> tuple[int, int]:
    if assay not in ASSAYS:
        raise ValueError(f"unknown assay {assay!r}: use one of {', '.join(ASSAYS)}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape={shape!r}: give (Y, X) in pixels, both >= 1")
    if not 0.05 <= mpp <= 64.0:
        raise ValueError(
            f"mpp={mpp!r}: give the pixel size in µm per pixel (0.05-64, e.g. 0.5 for 20x)"
        )
    return int(shape[0]), int(shape[1])


def render_region(
    assay: str,
    *,
    shape: tuple[int, int],
    mpp: float = 0.5,
    origin_um: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
    params: SynthParams | None = None,
) -> SynthRegion:
    """Render a region of a synthetic slide.

    Parameters
    ----------
    assay : str
        One of :data:`ASSAYS`.
    shape : (2,) int
        Region size (Y, X) in pixels.
    mpp : float
        Pixel size (µm).
    origin_um : (2,) float
        Slide position (y, x) in µm of the region's top-left pixel corner; snapped to the pixel grid
        (a multiple of ``mpp``) so that regions of the same grid share pixels exactly.
    seed : int
        Slide seed: same seed, same slide.
    params : SynthParams, optional

    Returns
    -------
    SynthRegion
        ``rgb`` (Y, X, 3) uint8, ``labels`` (Y, X) int32 global cell ids, ``truth`` one row per cell
        with a nucleus pixel in the region. Without JPEG artefacts (``params.jpeg_quality=None``) a
        sub-region equals the corresponding crop of a larger region exactly.
    """
    params = params or SynthParams()
    h, w = _check(assay, shape, mpp)
    oy, ox = (int(round(float(v) / mpp)) for v in origin_um)
    rgb, labels, cells, counts = _render(assay, params, seed, mpp, oy, ox, (h, w))
    if params.jpeg_quality is not None:
        rgb = _jpeg_roundtrip(rgb, params.jpeg_quality)
    truth = _truth_frame(assay, cells.take(np.flatnonzero(counts > 0)))
    truth = truth.sort_values("cell_id", ignore_index=True)
    return SynthRegion(rgb, labels, truth, mpp, (oy * mpp, ox * mpp), assay)


# ----------------------------------------------------------------------------------------------------
# streamed pyramidal TIFF writing
# ----------------------------------------------------------------------------------------------------
_COMPRESSIONS: dict[str, str | None] = {
    "jpeg": "jpeg",
    "deflate": "zlib",
    "zlib": "zlib",
    "lzw": "lzw",
    "zstd": "zstd",
    "none": None,
}
#: Width (px) of the strips rendered at once: wide enough to amortise per-strip work, small enough
#: to keep memory flat (~60 MB of float buffers).
_STRIP_PX = 2048
_QUEUE_TILES = 32


class _Aborted(Exception):
    """Raised inside a writer thread when the producer gave up."""


class _TiffSink:
    """A thread that writes one pyramidal tiled TIFF from tiles put into a bounded queue, level by level.

    ``tifffile.TiffWriter.write`` pulls tiles from an iterator; running it in a thread lets one render
    loop feed two files (image and labels) without holding either in memory.
    """

    def __init__(
        self,
        path: Path,
        *,
        ome: bool,
        level_shapes: list[tuple[int, int]],
        mpp: float,
        tile: int,
        samples: int,
        dtype: type,
        compression: str | None,
        compressionargs: dict[str, Any] | None,
        metadata: dict[str, object] | None,
        description: str | None,
    ) -> None:
        self.path = path
        self.queue: queue.Queue[NDArray[np.generic] | None] = queue.Queue(maxsize=_QUEUE_TILES)
        self.error: BaseException | None = None
        self._args = (ome, level_shapes, mpp, tile, samples, dtype, compression, compressionargs)
        self._metadata, self._description = metadata, description
        self.thread = threading.Thread(
            target=self._run, name=f"senpath-synth-{path.name}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        import tifffile

        ome, level_shapes, mpp, tile, samples, dtype, compression, compressionargs = self._args
        try:
            with tifffile.TiffWriter(self.path, bigtiff=True, ome=ome) as tif:
                for k, (h, w) in enumerate(level_shapes):
                    n_tiles = math.ceil(h / tile) * math.ceil(w / tile)
                    level_mpp = mpp * (1 << k)
                    options: dict[str, Any] = {
                        "shape": (h, w, samples) if samples > 1 else (h, w),
                        "dtype": dtype,
                        "tile": (tile, tile),
                        "photometric": "rgb" if samples == 3 else "minisblack",
                        "compression": compression,
                        "compressionargs": compressionargs,
                        "resolution": (1e4 / level_mpp, 1e4 / level_mpp),
                        "resolutionunit": "CENTIMETER",
                        "software": "senpath.synth",
                    }
                    if k == 0:
                        options["subifds"] = len(level_shapes) - 1
                        options["metadata"] = self._metadata
                        if self._description is not None:
                            options["description"] = self._description
                    else:
                        options["subfiletype"] = 1
                        options["metadata"] = None
                    tif.write(data=self._tiles(n_tiles), **options)
        except BaseException as exc:  # handed to the producer, which re-raises
            self.error = exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break

    def _tiles(self, n: int) -> Iterator[NDArray[np.generic]]:
        for _ in range(n):
            item = self.queue.get()
            if item is None:
                raise _Aborted
            yield item

    def put(self, tile: NDArray[np.generic]) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if not self.thread.is_alive():
                raise RuntimeError(f"the writer of {self.path} stopped before taking all tiles")
            try:
                self.queue.put(tile, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self, *, abort: bool = False) -> None:
        if abort and self.thread.is_alive():
            try:
                self.queue.put(None, timeout=5)
            except queue.Full:
                pass
        self.thread.join()
        if not abort and self.error is not None:
            raise self.error


def _truth_schema(assay: str) -> object:
    import pyarrow as pa

    types = {
        "cell_id": pa.int64(),
        "x_um": pa.float64(),
        "y_um": pa.float64(),
        "nucleus_area_um2": pa.float64(),
        "senescent": pa.bool_(),
    }
    return pa.schema(
        [
            (c, types.get(c, pa.int8() if c.endswith("_level") else pa.bool_()))
            for c in truth_columns(assay)
        ]
    )


def default_n_levels(shape: tuple[int, int], tile_size: int) -> int:
    """Number of pyramid levels so that the smallest level fits in one tile."""
    return 1 + max(0, math.ceil(math.log2(max(shape) / tile_size)))


def slide_paths(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Image, labels and truth paths that :func:`write_slide` uses for ``path``.

    ``a/slide.ome.tif`` gives ``a/slide.ome.tif``, ``a/slide.labels.ome.tif``, ``a/slide.truth.parquet``.
    """
    path = Path(path)
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            stem, ext = name[: -len(suffix)], name[-len(suffix) :]
            break
    else:
        raise ValueError(f"{path}: give a .tif, .tiff, .ome.tif or .ome.tiff file name")
    return path, path.with_name(f"{stem}.labels{ext}"), path.with_name(f"{stem}.truth.parquet")


def write_slide(
    path: str | os.PathLike[str],
    *,
    assay: str,
    shape: tuple[int, int],
    mpp: float = 0.5,
    seed: int = 0,
    params: SynthParams | None = None,
    tile_size: int = 256,
    compression: str = "jpeg",
    ome: bool = False,
    n_levels: int | None = None,
    write_labels: bool = True,
) -> SynthSlide:
    """Write a synthetic whole-slide image, its nucleus labels and per-cell truth, streamed.

    Every pyramid level is rendered directly at its own pixel size, strip by strip, and handed to
    ``tifffile`` tile by tile, so memory stays flat however big the slide (level 0 of a
    100k x 100k slide is never held). Files are written under temporary names and renamed when complete.

    Parameters
    ----------
    path : path-like
        Image file (``.tif``/``.tiff``; ``.ome.tif`` or ``ome=True`` for OME-TIFF). The labels go to
        ``<stem>.labels<ext>`` and the truth to ``<stem>.truth.parquet`` (see :func:`slide_paths`).
    assay : str
        One of :data:`ASSAYS`.
    shape : (2,) int
        Level-0 size (Y, X) in pixels.
    mpp : float
        Level-0 pixel size (µm); level ``k`` has ``mpp * 2**k`` and shape ``ceil(shape / 2**k)``.
        Levels up to ``params.max_render_mpp`` equal ``render_region`` at their mpp exactly (without
        JPEG); coarser ones are 2x2 area means of the level above (labels: centre samples).
    seed : int
    params : SynthParams, optional
    tile_size : int
        TIFF tile size (px), a multiple of 16.
    compression : {"jpeg", "deflate", "zlib", "lzw", "zstd", "none"}
        Image tile compression (JPEG at ``params.jpeg_quality``, YCbCr 4:2:0 like scanners). Labels are
        always deflate-compressed.
    ome : bool
        Write OME-TIFF (PhysicalSizeX/Y in µm) with the pyramid in SubIFDs. Either way the TIFF
        resolution tags hold the pixel size (centimetre unit).
    n_levels : int, optional
        Pyramid levels; default until the smallest level fits in one tile.
    write_labels : bool
        Also write the uint32 label pyramid (nucleus instances, ids = ``cell_id``).

    Returns
    -------
    SynthSlide
    """
    params = params or SynthParams()
    h, w = _check(assay, shape, mpp)
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size={tile_size}: give a multiple of 16 (TIFF tiles, JPEG blocks)")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression={compression!r}: use one of {', '.join(_COMPRESSIONS)}")
    image_path, labels_path, truth_path = slide_paths(path)
    ome = ome or image_path.name.lower().endswith((".ome.tif", ".ome.tiff"))
    if n_levels is None:
        n_levels = default_n_levels((h, w), tile_size)
    if n_levels < 1:
        raise ValueError(f"n_levels={n_levels}: give at least 1")
    level_shapes = [(-(-h // (1 << k)), -(-w // (1 << k))) for k in range(n_levels)]
    tiff_compression = _COMPRESSIONS[compression]
    jpeg_args = None
    roundtrip = None
    if tiff_compression == "jpeg":
        jpeg_args = {"level": int(params.jpeg_quality or 95)}
    elif params.jpeg_quality is not None:
        roundtrip = params.jpeg_quality
    description = f"senpath synthetic slide; assay={assay}; seed={seed}; mpp={mpp}"

    def meta(axes: str, name: str) -> dict[str, object] | None:
        if not ome:
            return None
        return {
            "axes": axes,
            "Name": name,
            "PhysicalSizeX": mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": mpp,
            "PhysicalSizeYUnit": "µm",
        }

    partial = [p.with_name(p.name + ".partial") for p in (image_path, labels_path, truth_path)]
    sinks = [
        _TiffSink(
            partial[0],
            ome=ome,
            level_shapes=level_shapes,
            mpp=mpp,
            tile=tile_size,
            samples=3,
            dtype=np.uint8,
            compression=tiff_compression,
            compressionargs=jpeg_args,
            metadata=meta("YXS", f"senpath synthetic {assay}"),
            description=None if ome else description,
        )
    ]
    if write_labels:
        sinks.append(
            _TiffSink(
                partial[1],
                ome=ome,
                level_shapes=level_shapes,
                mpp=mpp,
                tile=tile_size,
                samples=1,
                dtype=np.uint32,
                compression="zlib",
                compressionargs=None,
                metadata=meta("YX", f"senpath synthetic {assay} nucleus labels"),
                description=None if ome else description + "; nucleus labels",
            )
        )
    try:
        _stream_levels(
            sinks, partial[2], assay, params, seed, mpp, level_shapes, tile_size, roundtrip
        )
    except BaseException:
        for sink in sinks:
            sink.close(abort=True)
        for p in partial:
            p.unlink(missing_ok=True)
        raise
    for sink in sinks:
        sink.close()
    os.replace(partial[0], image_path)
    if write_labels:
        os.replace(partial[1], labels_path)
    os.replace(partial[2], truth_path)
    return SynthSlide(
        image_path,
        labels_path if write_labels else None,
        truth_path,
        (h, w),
        mpp,
        assay,
        level_shapes,
    )


def _halve(
    rgb: NDArray[np.uint8], labels: NDArray[np.int32]
) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """2x downsampling of an even number of rows: 2x2 area mean of RGB, centre sample of labels.

    An odd width is padded by repeating the last column (level shapes are ``ceil(shape / 2)``).
    """
    if rgb.shape[1] % 2:
        rgb = np.concatenate([rgb, rgb[:, -1:]], axis=1)
        labels = np.concatenate([labels, labels[:, -1:]], axis=1)
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    out = cast(NDArray[np.uint8], cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
    return out, np.ascontiguousarray(labels[1::2, 1::2])


class _Cascade:
    """Levels below the last directly rendered one, by streamed 2x downsampling into temporary files.

    Every level draws every cell once, so rendering the coarse levels directly would cost a
    near-constant per-cell time per level; instead they are derived from the last direct level
    (``params.max_render_mpp``), whose rows are pushed here as they are rendered. The coarse levels
    are written to unnamed temporary files (not memory) and read back tile row by tile row.
    """

    def __init__(self, shapes: list[tuple[int, int]], directory: Path) -> None:
        import tempfile

        self.shapes = shapes
        self.files = [
            (tempfile.TemporaryFile(dir=directory), tempfile.TemporaryFile(dir=directory))
            for _ in shapes
        ]
        self.pending: list[tuple[NDArray[np.uint8], NDArray[np.int32]] | None] = [None] * len(
            shapes
        )

    def push(self, rgb: NDArray[np.uint8], labels: NDArray[np.int32], j: int = 0) -> None:
        """Add rows of the level above level ``j`` of the cascade."""
        if j >= len(self.shapes):
            return
        held = self.pending[j]
        if held is not None:
            rgb = np.concatenate([held[0], rgb])
            labels = np.concatenate([held[1], labels])
            self.pending[j] = None
        if rgb.shape[0] % 2:
            self.pending[j] = (rgb[-1:].copy(), labels[-1:].copy())
            rgb, labels = rgb[:-1], labels[:-1]
        if rgb.shape[0]:
            self._emit(*_halve(rgb, labels), j)

    def finish(self, j: int = 0) -> None:
        """Flush a last odd row (repeated, as ``ceil`` shapes need), level after level."""
        if j >= len(self.shapes):
            return
        held = self.pending[j]
        if held is not None:
            self.pending[j] = None
            self._emit(*_halve(np.concatenate([held[0]] * 2), np.concatenate([held[1]] * 2)), j)
        self.finish(j + 1)

    def _emit(self, rgb: NDArray[np.uint8], labels: NDArray[np.int32], j: int) -> None:
        self.files[j][0].write(np.ascontiguousarray(rgb).tobytes())
        self.files[j][1].write(np.ascontiguousarray(labels).tobytes())
        self.push(rgb, labels, j + 1)

    def rows(self, j: int, ts: int) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.int32]]]:
        """Tile rows (ts rows, last one shorter) of cascade level ``j``."""
        h, w = self.shapes[j]
        frgb, flab = self.files[j]
        frgb.seek(0)
        flab.seek(0)
        for y0 in range(0, h, ts):
            th = min(ts, h - y0)
            rgb = np.frombuffer(frgb.read(th * w * 3), np.uint8).reshape(th, w, 3)
            labels = np.frombuffer(flab.read(th * w * 4), np.int32).reshape(th, w)
            yield rgb, labels

    def close(self) -> None:
        for f in self.files:
            f[0].close()
            f[1].close()


def _stream_levels(
    sinks: list[_TiffSink],
    truth_path: Path,
    assay: str,
    params: SynthParams,
    seed: int,
    mpp: float,
    level_shapes: list[tuple[int, int]],
    ts: int,
    roundtrip: int | None,
) -> None:
    """Render or derive every level, feed its tiles to the sinks, write truth rows from level 0.

    Levels up to the last one with pixels no coarser than ``params.max_render_mpp`` are rendered
    directly, strip by strip; coarser ones come from the streamed 2x cascade (:class:`_Cascade`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _truth_schema(assay)
    strip_w = ts * max(1, _STRIP_PX // ts)
    direct = max(
        [k for k in range(len(level_shapes)) if mpp * (1 << k) <= params.max_render_mpp * 1.0001],
        default=0,
    )
    cascade = (
        _Cascade(level_shapes[direct + 1 :], truth_path.parent)
        if direct + 1 < len(level_shapes)
        else None
    )
    # a nucleus spans at most this many tile rows: remember the ids emitted in as many previous rows
    max_nucleus_px = 2 * 18.0 * max(1.0, math.sqrt(params.nucleus_aspect_max)) / mpp
    memory_rows = math.ceil(max_nucleus_px / ts) + 1

    def put_tiles(rgb: NDArray[np.uint8], labels: NDArray[np.int32]) -> None:
        for tx in range(0, rgb.shape[1], ts):
            tile = np.ascontiguousarray(rgb[:, tx : tx + ts])
            if roundtrip is not None:
                tile = _jpeg_roundtrip(tile, roundtrip)
            sinks[0].put(tile)
            if len(sinks) > 1:
                sinks[1].put(labels[:, tx : tx + ts].astype(np.uint32))

    try:
        with pq.ParquetWriter(truth_path, schema) as truth_writer:
            recent: deque[set[int]] = deque(maxlen=memory_rows)
            for k, (h, w) in enumerate(level_shapes):
                if k > direct:
                    assert cascade is not None
                    for rgb, labels in cascade.rows(k - direct - 1, ts):
                        put_tiles(rgb, labels)
                    continue
                level_mpp = mpp * (1 << k)
                for y0 in range(0, h, ts):
                    th = min(ts, h - y0)
                    row_frames = []
                    row_ids: set[int] = set()
                    row_parts = []
                    for x0 in range(0, w, strip_w):
                        sw = min(strip_w, w - x0)
                        rgb, labels, cells, counts = _render(
                            assay, params, seed, level_mpp, y0, x0, (th, sw)
                        )
                        put_tiles(rgb, labels)
                        if k == direct and cascade is not None:
                            row_parts.append((rgb, labels))
                        if k == 0:
                            seen = np.flatnonzero(counts > 0)
                            new = [
                                i
                                for i in seen
                                if int(cells.cell_id[i]) not in row_ids
                                and not any(int(cells.cell_id[i]) in r for r in recent)
                            ]
                            row_ids.update(int(c) for c in cells.cell_id[seen])
                            if new:
                                row_frames.append(_truth_frame(assay, cells.take(np.asarray(new))))
                    if row_parts:
                        assert cascade is not None
                        cascade.push(
                            np.concatenate([p[0] for p in row_parts], axis=1),
                            np.concatenate([p[1] for p in row_parts], axis=1),
                        )
                    if k == 0:
                        recent.append(row_ids)
                        if row_frames:
                            frame = pd.concat(row_frames, ignore_index=True)
                            truth_writer.write_table(
                                pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
                            )
                if k == direct and cascade is not None:
                    cascade.finish()
    finally:
        if cascade is not None:
            cascade.close()
