"""Whole cells in brightfield culture photos without a nuclear counterstain (SA-beta-gal, X-gal only).

In a cultured-cell X-gal photo nothing marks the nuclei: the blue cells are easy to see and the
unstained ones are nearly transparent. A nucleus detector (CNN or colour threshold) then finds blue
blobs, not cells. Here the objects are the cells, and the cell foreground comes from what every cell
has, stained or not (it absorbs and scatters a little light), never from the blue colour:

1. **Foreground.** The total optical density (summed over RGB against the image's own glass
   intensity, smoothed over ``smooth_um``) minus its glass level, a rolling-ball style grey
   opening over ``background_window_um`` (:func:`background_od`; it follows the 10-20 %
   vignetting of an uncorrected microscope photo, as much OD as a pale cell). A pixel is a cell
   where that exceeds ``min_foreground_od`` (0.035 OD: an unstained spread cell is 0.03-0.09 OD
   summed over RGB at its thickest). Closed, holes filled, specks under ``min_cell_area_um2``
   dropped.
2. **Seeds.** Without a counterstain a nucleus is still denser than its cytoplasm in the neutral
   (grey) component of the OD, X-gal deconvolved out: a Laplacian of Gaussian at nucleus scale
   finds one blob per cell, blue or not; Otsu on the blob strengths leaves out the cytoplasm's
   texture (:func:`_nucleus_seeds`).
3. **Split.** A watershed from the seeds over the foreground by distance, raised along thin
   ridges of neutral OD, so touching cells part along the denser line where their membranes meet.

Evidence (``benchmarks/culture_segmentation.py``, synthetic fields of
:func:`senpath.synth.render_culture_field`, perturbed stain vectors): the X-gal colour threshold
finds ~90 % of the blue cells and none of the unstained ones; seeds at distance-transform maxima
(the usual split of round nuclei) merge flat cells that touch along long edges; total OD with
nucleus seeds finds stained and unstained cells alike. Adding local contrast to the OD (texture)
did not help: the halo around each cell has contrast too and joins neighbours.

Limits: confluent monolayers (no glass between cells: the glass level comes from too far away and
every cell touches; the split then rests on the seeds alone), strong phase halos (a bright rim
reads as negative OD and is dropped, so cell edges run short), cells whose nucleus is not denser
than the cytoplasm (out of focus: no seed, the cell is merged into a neighbour or lost), debris
and floating dead cells (found as cells when larger than ``min_cell_area_um2``), long thin
processes (cut off by the opening, so areas run small).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima, remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from senpath.stain import REFERENCE_STAINS, unit

#: How far (µm) a ridge of 1 OD in the neutral component moves a boundary between two cells.
_RIDGE_UM_PER_OD = 300.0
#: Foreground methods compared in the benchmark; ``total_od`` is the default.
FOREGROUND_METHODS = ("total_od", "od_contrast", "xgal_colour")


def background_od(
    od: NDArray[np.floating], *, mpp: float, window_um: float = 80.0
) -> NDArray[np.float32]:
    """The glass level of an OD image, ``(Y, X) float32``: a rolling-ball style grey opening.

    On a 4 µm grid, a grey opening (erosion then dilation) with a square of ``window_um`` (wider
    than any cell's inscribed diameter, so each window reaches glass), smoothed and resized back:
    it follows vignetting and tilt (the OD of an uncorrected photo's corners, as much as a pale
    cell) and leaves the cells out (ImageJ's "Subtract Background" does the same with a ball).

    Parameters
    ----------
    od : (Y, X) float OD at ``mpp`` µm/px.
    mpp : pixel size in µm/px.
    window_um : side of the opening's square (µm).
    """
    h, w = od.shape
    step = max(1, round(4.0 / mpp))
    small = cv2.resize(
        np.asarray(od, np.float32), (max(1, w // step), max(1, h // step)),
        interpolation=cv2.INTER_AREA,
    )  # fmt: skip
    size = max(3, round(window_um / (step * mpp)) | 1)
    opened = ndi.grey_dilation(ndi.grey_erosion(small, size=size, mode="reflect"), size=size,
                               mode="reflect")  # fmt: skip
    smooth = ndi.gaussian_filter(opened, size / 4, mode="reflect")
    return cv2.resize(smooth, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w)


def foreground_feature(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    method: str = "od_contrast",
    xgal_vector: NDArray[np.floating] | None = None,
    smooth_um: float = 1.5,
    texture_um: float = 1.5,
    background_window_um: float = 80.0,
) -> NDArray[np.float32]:
    """The per-pixel evidence of a cell (OD units), ``(Y, X) float32``; see the module notes.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8 at ``mpp`` µm/px.
    mpp : pixel size in µm/px.
    method : ``od_contrast`` (total OD + local contrast, the default), ``total_od`` or
        ``xgal_colour`` (X-gal concentration alone: what a colour threshold sees, for comparison).
    xgal_vector : (3,) X-gal unit OD vector (``xgal_colour`` only).
    smooth_um, texture_um : Gaussian sigma of the smoothing and of the local-contrast window.
    background_window_um : see :func:`background_od`.
    """
    if method not in FOREGROUND_METHODS:
        raise ValueError(f"unknown foreground method {method!r}: use one of {FOREGROUND_METHODS}")
    i0 = np.maximum(np.percentile(rgb.reshape(-1, 3), 99.0, axis=0), 1.0).astype(np.float32)
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / i0)
    sigma = smooth_um / mpp
    if method == "xgal_colour":
        # deconvolved against the neutral cell body, as a colour threshold on X-gal sees it
        vectors = np.stack([np.asarray(xgal_vector, np.float64), np.full(3, 3**-0.5)])
        vectors[0] /= np.linalg.norm(vectors[0])
        xgal = np.maximum(od @ np.linalg.pinv(vectors).astype(np.float32)[:, 0], 0.0)
        return ndi.gaussian_filter(xgal, sigma).astype(np.float32)
    # a halo brighter than glass is negative OD: kept, it cancels in the smoothing instead of
    # adding a bright rim's worth of OD to the glass around every cell
    total = ndi.gaussian_filter(od.sum(-1), sigma)
    total = total - background_od(total, mpp=mpp, window_um=background_window_um)
    if method == "total_od":
        return total.astype(np.float32)
    grey = od.mean(-1)
    s = texture_um / mpp
    mean = ndi.gaussian_filter(grey, s)
    var = np.maximum(ndi.gaussian_filter(grey * grey, s) - mean * mean, 0.0)
    # contrast as OD: the local standard deviation of the grey OD, x3 (three channels, as total)
    contrast = ndi.gaussian_filter(3.0 * np.sqrt(var), sigma)
    return (np.maximum(total, 0.0) + contrast).astype(np.float32)


def segment_whole_cells(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    method: str = "total_od",
    xgal_vector: NDArray[np.floating] | None = None,
    min_foreground_od: float = 0.035,
    min_cell_area_um2: float = 150.0,
    seed_distance_um: float = 12.0,
    seed_h_um: float = 2.0,
    close_um: float = 2.0,
    background_window_um: float = 80.0,
    seeds: str = "nuclei",
) -> NDArray[np.int32]:
    """Whole-cell labels of a brightfield culture photo with no nuclear counterstain.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8 at ``mpp`` µm/px.
    mpp : pixel size in µm/px.
    method : foreground method (:data:`FOREGROUND_METHODS`); ``total_od`` by default.
    xgal_vector : X-gal unit OD vector (only for ``xgal_colour``).
    min_foreground_od : OD above the glass level (:func:`background_od`) that is a cell.
    min_cell_area_um2 : smaller objects are dropped (µm²).
    seed_distance_um : least distance between two cell seeds (µm).
    seed_h_um : depth (µm of the distance transform) a maximum needs to seed its own cell.
    close_um : radius of the closing that joins a cell's pale edge to its body (µm).
    background_window_um : see :func:`background_od`.
    seeds : ``nuclei`` (default): one seed per nucleus-sized blob of the neutral (grey) OD, cells
        grown over the foreground by a watershed of that OD, so touching cells part along the
        denser line of their membranes; ``distance``: seeds at the maxima of the foreground's
        distance transform, watershed of the distance (splits round cells at necks only).

    Returns
    -------
    (Y, X) int32 cell labels 1..N, 0 = background.
    """
    if mpp <= 0:
        raise ValueError(f"mpp={mpp}: give the pixel size in µm (> 0)")
    feature = foreground_feature(
        rgb, mpp=mpp, method=method, xgal_vector=xgal_vector,
        background_window_um=background_window_um,
    )  # fmt: skip
    mask = feature > min_foreground_od
    r = max(1, round(close_um / mpp))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk).astype(bool)
    mask = ndi.binary_fill_holes(mask)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk).astype(bool)
    min_px = max(1, round(min_cell_area_um2 / mpp**2))
    mask = remove_small_objects(mask, max_size=min_px - 1)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    if seeds == "nuclei":
        markers, elevation = _nucleus_seeds(rgb, mask, mpp=mpp, seed_distance_um=seed_distance_um)
    else:
        dist = ndi.distance_transform_edt(mask) * mpp  # µm
        dist = ndi.gaussian_filter(dist, 1.0 / mpp)
        markers, _ = ndi.label(h_maxima(dist, seed_h_um) & mask)
        markers = _thin_seeds(markers, dist, min_distance_px=seed_distance_um / mpp)
        elevation = -dist
    labels = watershed(elevation, markers, mask=mask).astype(np.int32)
    counts = np.bincount(labels.ravel())
    small = np.flatnonzero(counts < min_px)
    labels[np.isin(labels, small[small > 0])] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def neutral_od(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The neutral (grey) component of the OD, X-gal deconvolved out, ``(Y, X) float32``.

    Against the image's own glass (99th percentile per channel); the X-gal reference vector and a
    grey one (the unstained cell body) as the two stains.
    """
    i0 = np.maximum(np.percentile(rgb.reshape(-1, 3), 99.0, axis=0), 1.0).astype(np.float32)
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / i0)
    xgal = unit(REFERENCE_STAINS["xgal"])
    vectors = np.stack([xgal, np.full(3, 3**-0.5)])
    return (od @ np.linalg.pinv(vectors).astype(np.float32)[:, 1]).astype(np.float32)


def nucleus_blobs(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    nucleus_radius_um: float = 6.0,
    neutral: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Nucleus-scale blob strength of the neutral OD (scale-normalised negative LoG), ``(Y, X)``.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8 at ``mpp`` µm/px.
    mpp : pixel size in µm/px.
    nucleus_radius_um : the radius the Laplacian of Gaussian is tuned to.
    neutral : :func:`neutral_od` of ``rgb`` when the caller has it.
    """
    neutral = neutral_od(rgb) if neutral is None else neutral
    sigma = nucleus_radius_um / math.sqrt(2) / mpp
    return (-ndi.gaussian_laplace(neutral, sigma) * sigma**2).astype(np.float32)


def _nucleus_seeds(
    rgb: NDArray[np.uint8],
    mask: NDArray[np.bool_],
    *,
    mpp: float,
    seed_distance_um: float,
    nucleus_radius_um: float = 6.0,
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Seeds at nucleus-sized blobs of the neutral OD, and the watershed elevation.

    Without a counterstain a nucleus is still denser than its cytoplasm in the grey (neutral)
    component of the OD: X-gal is deconvolved out, so the pale nucleus inside a blue cell and the
    grey one of an unstained cell both show. A Laplacian of Gaussian at the nucleus scale finds
    them; the elevation is the finely smoothed neutral OD, on which touching cells part along the
    denser line where their membranes meet.
    """
    neutral = neutral_od(rgb)
    blob = nucleus_blobs(rgb, mpp=mpp, nucleus_radius_um=nucleus_radius_um, neutral=neutral)
    peaks = peak_local_max(
        blob, min_distance=max(1, round(seed_distance_um / mpp)), labels=mask.astype(np.int32),
        threshold_abs=0.0, exclude_border=False,
    )  # fmt: skip
    # nuclei against the texture of the cytoplasm: two populations of blob strength, split by Otsu
    strength = blob[tuple(peaks.T)]
    if len(peaks) > 2 and float(strength.max() - strength.min()) > 1e-6:
        peaks = peaks[strength > threshold_otsu(strength)]
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # flood from the seeds by distance (µm), raised where the neutral OD forms a thin ridge (a
    # membrane line between two cells) so that touching cells part there, not halfway
    fine = ndi.gaussian_filter(neutral, 0.5 / mpp)
    ridge = np.maximum(fine - ndi.gaussian_filter(neutral, 3.0 / mpp), 0.0)
    distance = ndi.distance_transform_edt(markers == 0) * mpp
    elevation = (distance + _RIDGE_UM_PER_OD * ridge).astype(np.float32)
    return markers, elevation


def _thin_seeds(
    markers: NDArray[np.int32], dist: NDArray[np.floating], *, min_distance_px: float
) -> NDArray[np.int32]:
    """Keep the deepest of seeds closer than ``min_distance_px`` (one seed per cell body)."""
    n = int(markers.max())
    if n < 2:
        return markers
    index = np.arange(1, n + 1)
    centres = np.array(ndi.center_of_mass(np.ones_like(dist), markers, index))
    depth = np.asarray(ndi.maximum(dist, markers, index))
    order = np.argsort(-depth)
    kept: list[int] = []
    for i in order:
        if all(np.hypot(*(centres[i] - centres[j])) >= min_distance_px for j in kept):
            kept.append(int(i))
    keep = np.zeros(n + 1, bool)
    keep[np.asarray(kept) + 1] = True
    lut = np.where(keep, np.arange(n + 1), 0).astype(np.int32)
    return lut[markers]
