"""Synthetic cultured-cell fields: flat spread cells in a well, X-gal in a known subset, no counterstain.

A photo of an SA-beta-gal stained culture, as labs take them: brightfield, 10x-20x, cells flat and
spread (30-80 µm across) on plastic, most of them unstained and nearly transparent, the senescent ones
holding blue X-gal granules around the nucleus. Nothing stains the nuclei. Optionally a DAPI/Hoechst
fluorescence image of the same field, offset by a known stage shift, as a second camera frame.

Unlike :func:`senpath.synth.render_region` (a whole slide, resolution independent), a field is drawn
once at its own pixel size with a seeded generator: it stands for one camera frame.

Rendering (Beer-Lambert, as the slide generator): unstained cells absorb and scatter a little light
evenly across the spectrum (a near-neutral OD of 0.02-0.08 with a granular texture, denser over the
nucleus and its nucleoli, thinning towards the cell's edge); a thin dark line marks the membrane and a
faint bright halo lies just outside it (the refraction edge of a thin cell in a condenser stopped down,
or a phase halo); X-gal adds granules along its own vector. The stain vectors are perturbed from the
pipeline's (``xgal`` and the neutral ``cell_body`` vector of the ``sabgal-culture`` preset) by
``stain_perturb_deg``. Illumination falls off from the centre (uncorrected microscope photos vignette
10-20 %) and tilts; then blur, shot + read noise, 8-bit quantisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage as ndi

from senpath.stain import REFERENCE_STAINS, unit

#: The neutral "stain" of an unstained cell body (scattering and weak absorption, grey), as the
#: ``sabgal-culture`` preset gives it.
CELL_BODY_VECTOR = (0.577, 0.577, 0.577)


@dataclass(frozen=True)
class CultureParams:
    """Parameters of a synthetic cultured-cell field; sizes in µm, OD in optical-density units.

    Attributes
    ----------
    cell_spacing_um : smallest distance between two nuclei (sets the density; ~40: sub-confluent).
    cell_radius_um : (low, high) equivalent radius of a cell body.
    nucleus_radius_um : (low, high) equivalent radius of a nucleus.
    fill_fraction : fraction of the field's candidate cell sites that hold a cell.
    positive_fraction : fraction of cells holding X-gal.
    xgal_od : (low, high) mean X-gal OD over a positive cell's cytoplasm (culture X-gal is faint:
        0.1-0.4).
    xgal_background_od : X-gal OD every cell takes up (non-specific), mean.
    body_od : (low, high) neutral OD of an unstained cell body at its thickest.
    nucleus_od : extra neutral OD of the nucleus.
    edge_od : extra neutral OD of the membrane line (1 µm wide).
    halo : relative brightening of the 2 µm just outside each cell (0: none).
    stain_perturb_deg : angle by which the drawn stain vectors turn from the pipeline's.
    illumination_falloff : relative darkening at the field's corners.
    background_rgb : glass intensity at the centre.
    blur_sigma_um, noise_sd : optics and sensor (8-bit grey levels).
    dapi_shift_um : (dy, dx) offset of the DAPI frame: its pixel (y, x) shows what the brightfield
        shows at (y - dy, x - dx).
    dapi_rotation_deg, dapi_scale : the DAPI frame's content turned by this angle (counter-clockwise
        as displayed, y down) and magnified by this factor about the frame's centre ``c`` (another
        camera or a turned camera adaptor). With the shift ``d``, a brightfield point ``p`` (y, x µm,
        pixel index times mpp) lies at ``c + dapi_scale * R(dapi_rotation_deg) (p - c) + d`` in the
        DAPI frame, ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` on (y, x) vectors
        (:func:`dapi_frame_points` computes it).
    """

    cell_spacing_um: float = 42.0
    cell_radius_um: tuple[float, float] = (20.0, 32.0)
    nucleus_radius_um: tuple[float, float] = (6.0, 8.5)
    fill_fraction: float = 0.9
    positive_fraction: float = 0.4
    xgal_od: tuple[float, float] = (0.12, 0.40)
    xgal_background_od: float = 0.01
    body_od: tuple[float, float] = (0.02, 0.05)
    nucleus_od: float = 0.04
    edge_od: float = 0.05
    halo: float = 0.04
    stain_perturb_deg: float = 6.0
    illumination_falloff: float = 0.15
    background_rgb: tuple[float, float, float] = (236.0, 238.0, 241.0)
    blur_sigma_um: float = 0.6
    noise_sd: float = 2.0
    dapi_shift_um: tuple[float, float] = (0.0, 0.0)
    dapi_rotation_deg: float = 0.0
    dapi_scale: float = 1.0


@dataclass(frozen=True)
class CultureField:
    """A synthetic field and its truth.

    Attributes
    ----------
    rgb : (Y, X, 3) uint8 brightfield image.
    cells : (Y, X) int32 cell labels (1..N, 0 = background), on the brightfield grid.
    nuclei : (Y, X) int32 nucleus labels (same ids as ``cells``), on the brightfield grid.
    dapi : (Y, X) uint16 DAPI image of the same field, offset by ``params.dapi_shift_um``.
    truth : one row per cell: ``cell_id``, ``x_um``, ``y_um`` (cell centroid), ``cell_area_um2``,
        ``nucleus_area_um2``, ``xgal_od_mean_cytoplasm`` (drawn), ``sabgal_positive``.
    mpp : pixel size (µm/px).
    stain_vectors : the unit vectors drawn, ``{"xgal": ..., "cell_body": ...}``.
    """

    rgb: NDArray[np.uint8]
    cells: NDArray[np.int32]
    nuclei: NDArray[np.int32]
    dapi: NDArray[np.uint16]
    truth: pd.DataFrame
    mpp: float
    stain_vectors: dict[str, NDArray[np.float64]]


def _turn(
    vector: NDArray[np.float64], degrees: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``vector`` turned by ``degrees`` in a random direction (kept non-negative)."""
    axis = rng.standard_normal(3)
    axis -= axis @ vector * vector
    axis /= np.linalg.norm(axis)
    theta = math.radians(degrees)
    turned = np.clip(math.cos(theta) * vector + math.sin(theta) * axis, 1e-3, None)
    return turned / np.linalg.norm(turned)


def _poisson_sites(
    shape_um: tuple[float, float], spacing: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Points (N, 2) as (y, x) µm, no two closer than ``spacing`` (dart throwing, bounded tries)."""
    pts: list[tuple[float, float]] = []
    tries = int(40 * shape_um[0] * shape_um[1] / spacing**2)
    margin = -0.3 * spacing  # cells may lie partly outside the frame, as in a photo
    for _ in range(tries):
        y = rng.uniform(margin, shape_um[0] - margin)
        x = rng.uniform(margin, shape_um[1] - margin)
        if all((y - py) ** 2 + (x - px) ** 2 >= spacing**2 for py, px in pts):
            pts.append((y, x))
    return np.array(pts, np.float64).reshape(-1, 2)


def _blob(
    shape: tuple[int, int],
    centre_px: tuple[float, float],
    radius_px: float,
    rng: np.random.Generator,
    *,
    aspect: float,
    wobble: float,
) -> NDArray[np.bool_]:
    """An irregular ellipse mask (harmonic wobble of the outline, as spread cells have)."""
    n = 48
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    angle = rng.uniform(0, np.pi)
    a, b = radius_px * math.sqrt(aspect), radius_px / math.sqrt(aspect)
    psi = phi - angle
    r = a * b / np.sqrt((b * np.cos(psi)) ** 2 + (a * np.sin(psi)) ** 2)
    for h in range(2, 6):
        r = r * (1 + wobble / h * rng.uniform(-1, 1) * np.cos(h * phi + rng.uniform(0, 2 * np.pi)))
    pts = np.stack([centre_px[1] + r * np.cos(phi), centre_px[0] + r * np.sin(phi)], -1)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)], 1, cv2.LINE_8, 4)
    return mask.astype(bool)


def render_culture_field(
    *,
    shape: tuple[int, int] = (512, 512),
    mpp: float = 1.0,
    seed: int = 0,
    params: CultureParams | None = None,
) -> CultureField:
    """Draw one brightfield field of cultured cells (X-gal, no counterstain) and its DAPI frame.

    Parameters
    ----------
    shape : (Y, X) px.
    mpp : pixel size (µm/px); 0.5-1.3 is a 10x-20x culture photo.
    seed : the field's seed (same seed, same field).
    params : the field's parameters (default :class:`CultureParams`).

    Returns
    -------
    CultureField
    """
    p = params or CultureParams()
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    sites = _poisson_sites((h * mpp, w * mpp), p.cell_spacing_um, rng)
    sites = sites[rng.uniform(size=len(sites)) < p.fill_fraction]
    # each pixel belongs to at most the cell whose nucleus is nearest (cells meet, never overlap)
    cells = np.zeros((h, w), np.int32)
    nuclei = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    nearest_d = np.full((h, w), np.inf)
    nearest_k = np.zeros((h, w), np.int32)
    for k, (y, x) in enumerate(sites, start=1):
        d = (yy - y / mpp) ** 2 + (xx - x / mpp) ** 2
        closer = d < nearest_d
        nearest_d[closer], nearest_k[closer] = d[closer], k
    body_od = np.zeros((h, w), np.float32)
    xgal = np.zeros((h, w), np.float32)
    rows = []
    granule_field = rng.uniform(size=(h, w)).astype(np.float32)
    texture = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.7 / mpp)
    texture = 1.0 + 0.35 * texture / max(float(texture.std()), 1e-6)
    for k, (y, x) in enumerate(sites, start=1):
        radius = rng.uniform(*p.cell_radius_um) / mpp
        body = _blob(
            (h, w), (y / mpp, x / mpp), radius, rng, aspect=rng.uniform(1.0, 3.0), wobble=0.3
        )
        body &= nearest_k == k
        nradius = rng.uniform(*p.nucleus_radius_um) / mpp
        nucleus = _blob(
            (h, w), (y / mpp, x / mpp), nradius, rng, aspect=rng.uniform(1.0, 1.5), wobble=0.05
        )
        nucleus &= body
        if body.sum() * mpp**2 < 100 or nucleus.sum() == 0:
            continue
        cells[body] = k
        nuclei[nucleus] = k
        # thinner towards the edge: OD grows with the distance inside the cell, saturating at 8 µm
        box = ndi.find_objects(body.astype(np.uint8))[0]
        inner = ndi.distance_transform_edt(np.pad(body[box], 1))[1:-1, 1:-1][body[box]] * mpp
        thick = rng.uniform(*p.body_od)
        body_od[body] = thick * (0.35 + 0.65 * np.minimum(inner / 8.0, 1.0))
        positive = bool(rng.uniform() < p.positive_fraction)
        cyto = body & ~nucleus
        level = rng.uniform(*p.xgal_od) if positive else 0.0
        if positive and cyto.any():
            # granules, densest around the nucleus (lysosomes), scaled to the drawn mean
            dn = ndi.distance_transform_edt(~nucleus[box])[cyto[box]] * mpp
            weight = np.exp(-dn / 12.0)
            grains = (granule_field[cyto] < 0.3 * weight / weight.mean()).astype(np.float32)
            raw = weight * (0.3 + grains)
            xgal[cyto] = level * raw / raw.mean()
        xgal[body] += p.xgal_background_od
        ys, xs = np.nonzero(body)
        rows.append(
            {
                "cell_id": k,
                "x_um": (xs.mean() + 0.5) * mpp,
                "y_um": (ys.mean() + 0.5) * mpp,
                "cell_area_um2": body.sum() * mpp**2,
                "nucleus_area_um2": nucleus.sum() * mpp**2,
                "xgal_od_mean_cytoplasm": float(xgal[cyto].mean()) if cyto.any() else 0.0,
                "sabgal_positive": positive,
            }
        )
    truth = pd.DataFrame(
        rows,
        columns=[
            "cell_id", "x_um", "y_um", "cell_area_um2", "nucleus_area_um2",
            "xgal_od_mean_cytoplasm", "sabgal_positive",
        ],
    )  # fmt: skip
    # nucleus, nucleoli, membrane line and halo on the neutral channel
    body_od += p.nucleus_od * (nuclei > 0)
    nucleoli = (granule_field > 0.985) & (nuclei > 0)
    body_od += 0.06 * ndi.gaussian_filter(nucleoli.astype(np.float32), 0.5 / mpp) * 4
    body_od *= texture
    fg = cells > 0
    edge = fg & ~ndi.binary_erosion(fg, iterations=max(1, round(1.0 / mpp)))
    between = (cells != ndi.grey_erosion(cells, size=3)) & fg
    body_od += p.edge_od * (edge | between)
    outside = ndi.binary_dilation(fg, iterations=max(1, round(2.0 / mpp))) & ~fg
    rng_v = np.random.default_rng(seed + 7919)
    xgal_v = _turn(unit(REFERENCE_STAINS["xgal"]), p.stain_perturb_deg, rng_v)
    body_v = _turn(unit(CELL_BODY_VECTOR), p.stain_perturb_deg / 2, rng_v)
    od = body_od[..., None] * body_v + xgal[..., None] * xgal_v
    intensity = np.asarray(p.background_rgb, np.float32) * np.power(10.0, -od).astype(np.float32)
    intensity *= (1.0 + p.halo * outside.astype(np.float32))[..., None]
    v = (yy / max(h - 1, 1) - 0.5) ** 2 + (xx / max(w - 1, 1) - 0.5) ** 2
    tilt = 1.0 + 0.04 * (xx / max(w - 1, 1) - 0.5)
    intensity *= ((1.0 - 2 * p.illumination_falloff * v) * tilt).astype(np.float32)[..., None]
    if p.blur_sigma_um > 0:
        intensity = np.asarray(
            cv2.GaussianBlur(intensity, (0, 0), p.blur_sigma_um / mpp), np.float32
        )
    if p.noise_sd > 0:
        noise = rng.standard_normal(intensity.shape).astype(np.float32)
        intensity += p.noise_sd * np.sqrt(np.maximum(intensity, 0) / 240.0 + 0.01) * noise
    rgb = np.clip(np.rint(intensity), 0, 255).astype(np.uint8)
    dapi = _dapi(
        nuclei, mpp=mpp, shift_um=p.dapi_shift_um, rng=rng,
        rotation_deg=p.dapi_rotation_deg, scale=p.dapi_scale,
    )  # fmt: skip
    return CultureField(
        rgb, cells, nuclei, dapi, truth, float(mpp), {"xgal": xgal_v, "cell_body": body_v}
    )


def _dapi(
    nuclei: NDArray[np.int32],
    *,
    mpp: float,
    shift_um: tuple[float, float],
    rng: np.random.Generator,
    rotation_deg: float = 0.0,
    scale: float = 1.0,
) -> NDArray[np.uint16]:
    """A 16-bit DAPI frame of the nuclei: per-nucleus brightness, chromatin, blur, offset (shift,
    and rotation and scale about the frame's centre), noise."""
    n = int(nuclei.max())
    bright = np.concatenate([[0.0], rng.uniform(0.5, 1.2, n)]).astype(np.float32)
    chromatin = ndi.gaussian_filter(rng.standard_normal(nuclei.shape).astype(np.float32), 0.6 / mpp)
    chromatin = 1.0 + 0.25 * chromatin / max(float(chromatin.std()), 1e-6)
    signal = bright[nuclei] * chromatin * 3000.0
    signal = ndi.gaussian_filter(signal, 1.0 / mpp)
    if rotation_deg == 0.0 and scale == 1.0:
        signal = ndi.shift(signal, (shift_um[0] / mpp, shift_um[1] / mpp), order=1, mode="constant")
    else:  # DAPI pixel q shows brightfield point c + R(-a) (q - c - d) / s (the inverse map)
        a = math.radians(rotation_deg)
        inverse = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) / scale
        centre = (np.asarray(signal.shape, float) - 1.0) / 2.0
        d = np.asarray(shift_um, float) / mpp
        signal = ndi.affine_transform(
            signal, inverse, offset=centre - inverse @ (centre + d), order=1, mode="constant"
        )
    signal += 300.0 + 40.0 * rng.standard_normal(signal.shape).astype(np.float32)
    return np.clip(np.rint(signal), 0, 65535).astype(np.uint16)


def dapi_frame_points(
    points_um: NDArray[np.floating], *, shape: tuple[int, int], mpp: float, params: CultureParams
) -> NDArray[np.float64]:
    """Where brightfield points lie in the field's DAPI frame (the truth a registration inverts).

    Parameters
    ----------
    points_um : (N, 2) (y, x) µm on the brightfield grid (pixel index times ``mpp``).
    shape : (Y, X) px of the field.
    mpp : pixel size (µm/px).
    params : the field's parameters (``dapi_shift_um``, ``dapi_rotation_deg``, ``dapi_scale``).

    Returns
    -------
    (N, 2) float64, (y, x) µm in the DAPI frame.
    """
    a = math.radians(params.dapi_rotation_deg)
    turn = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * params.dapi_scale
    centre = (np.asarray(shape, float) - 1.0) / 2.0 * mpp
    p = np.asarray(points_um, float).reshape(-1, 2)
    return centre + (p - centre) @ turn.T + np.asarray(params.dapi_shift_um, float)


def matched_cells(
    true: NDArray[np.integer], pred: NDArray[np.integer], *, iou: float = 0.5
) -> dict[int, int]:
    """Truth cell id -> predicted label for the pairs that overlap at IoU >= ``iou``.

    With ``iou`` >= 0.5 each truth cell matches at most one prediction and vice versa (two objects
    that do not overlap each other cannot both cover more than half of a third).
    """
    t = np.asarray(true, np.int64).ravel()
    q = np.asarray(pred, np.int64).ravel()
    both = (t > 0) & (q > 0)
    pairs, inter = np.unique(t[both] * (int(q.max()) + 1) + q[both], return_counts=True)
    ti, pi = pairs // (int(q.max()) + 1), pairs % (int(q.max()) + 1)
    area_t = np.bincount(t, minlength=int(t.max()) + 1)
    area_p = np.bincount(q, minlength=int(q.max()) + 1)
    union = area_t[ti] + area_p[pi] - inter
    ok = inter / union >= iou
    return {int(a): int(b) for a, b in zip(ti[ok], pi[ok], strict=True)}
