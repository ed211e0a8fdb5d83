"""Stain rendering of every assay: from the cells of a region to its 8-bit RGB image and labels.

Cells are rasterised into label maps, per-pixel stain concentrations come from per-cell look-up tables
times textures, ``OD = C @ V`` (Beer-Lambert) with the assay's unit stain vectors, then illumination,
optical blur on intensity, sensor noise, 8-bit quantisation and optional JPEG artefacts.
:func:`render_region` is the public entry point.
"""

from __future__ import annotations

import math
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from senpath.stain import REFERENCE_STAINS, unit
from senpath.synth._layout import _Cells, _cells_in, _tissue_pixels, _tissue_threshold
from senpath.synth._params import (
    ASSAY_MARKERS,
    ASSAY_STAINS,
    ASSAYS,
    SynthParams,
    SynthRegion,
    _check,
)
from senpath.synth._random import _noise, _pixel_centres_um, _sample, _textures
from senpath.synth._truth import _truth_frame

_SHIFT = 4  # fixed-point bits of polygon vertices


def _stain_roles(
    assay: str, params: SynthParams
) -> tuple[list[str], NDArray[np.float64], NDArray[np.float64]]:
    """Stains of an assay and their OD in (nucleus, cytoplasm, stroma) from the counterstain.

    Returns names (S,), unit vectors (S, 3) and counterstain OD (S, 3) per compartment.
    """
    if assay not in ASSAY_STAINS:
        raise ValueError(f"unknown assay {assay!r}: use one of {', '.join(ASSAYS)}")
    names = list(ASSAY_STAINS[assay])
    given = dict(params.stain_vectors)
    vectors = np.vstack([unit(tuple(given.get(n, REFERENCE_STAINS[n]))) for n in names])
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


def _jpeg_roundtrip(rgb: NDArray[np.uint8], quality: int) -> NDArray[np.uint8]:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("JPEG decoding failed")
    return np.ascontiguousarray(decoded[..., ::-1]).astype(np.uint8, copy=False)


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
