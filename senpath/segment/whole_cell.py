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
   texture (:func:`_nucleus_seeds`). A second, lower bar (0.7 x that threshold) seeds a blob at
   least 35 µm from every strong seed (a faint nucleus alone in its cell, most often an
   unstained one), and a foreground object left with no seed gets one at its widest point.
3. **Split.** A watershed from the seeds over the foreground by distance, raised along thin
   ridges of neutral OD, so touching cells part along the denser line where their membranes meet.

Evidence (``benchmarks/culture_segmentation.py``, synthetic fields of
:func:`senpath.synth.render_culture_field`, perturbed stain vectors): the X-gal colour threshold
finds 74 % of the blue cells and none of the unstained ones; seeds at distance-transform maxima
(the usual split of round nuclei) merge flat cells that touch along long edges (63 % / 72 %);
total OD with nucleus seeds finds stained and unstained cells alike (72 % / 74 %; 85 % / 92 %
with the second bar and the orphan seeds, which rescue fields where the seed threshold sat above
most nuclei: field 3, 19 % / 10 % -> 64 % / 80 %). The bar (0.7, 35 µm) was chosen on fields 1-4
and 9-16 (highest mean recall with stained and unstained within 5 points: 82 % / 86 %, against
69 % / 69 % without), then measured once on held-out fields 5-8: 81 % / 71 % -> 87 % / 88 %. Adding local
contrast to the OD did not help (69 % / 72 %): the halo around each cell has contrast too and
joins neighbours.

Limits: confluent monolayers (no glass between cells: the glass level comes from too far away and
every cell touches; the split then rests on the seeds alone), strong phase halos (a bright rim
reads as negative OD and is dropped, so cell edges run short), cells whose nucleus is not denser
than the cytoplasm (out of focus: no seed, the cell is merged into a neighbour or lost), debris
and floating dead cells (found as cells when larger than ``min_cell_area_um2``), long thin
processes (cut off by the opening, so areas run small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
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
    faint_seeds: bool = True,
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
    faint_seeds : also seed faint nucleus blobs far from every strong one (the second bar of
        :func:`_nucleus_seeds`), and give a foreground object in which no seed was found one of
        its own (at its distance-transform maximum), so a cell whose nucleus is too faint to seed
        (most often an unstained one) is still found rather than merged or dropped.

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
        markers, elevation = _nucleus_seeds(
            rgb, mask, mpp=mpp, seed_distance_um=seed_distance_um, faint=faint_seeds
        )
        if faint_seeds:
            markers = _seed_orphans(markers, mask, mpp=mpp)
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
    faint: bool = True,
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
    # nuclei against the texture of the cytoplasm: most blob peaks are texture, so the nuclei are
    # the outliers above the bulk (not an Otsu split, which parts blue cells from unstained ones)
    strength = blob[tuple(peaks.T)]
    if len(peaks) > 2:
        threshold = _seed_threshold(strength)
        strong = strength > threshold
        # a second, lower bar for peaks far from every strong seed: a faint nucleus (most often
        # an unstained cell's) alone in its cell, not texture beside a seeded nucleus
        weak = ~strong & (strength > WEAK_SEED_FRACTION * threshold)
        if faint and weak.any() and strong.any():
            gap = (
                np.min(
                    np.hypot(
                        *(peaks[weak][:, None, :] - peaks[strong][None, :, :]).transpose(2, 0, 1)
                    ),
                    axis=1,
                )
                * mpp
            )
            strong[np.flatnonzero(weak)[gap >= WEAK_SEED_DISTANCE_UM]] = True
        peaks = peaks[strong]
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # flood from the seeds by distance (µm), raised where the neutral OD forms a thin ridge (a
    # membrane line between two cells) so that touching cells part there, not halfway
    fine = ndi.gaussian_filter(neutral, 0.5 / mpp)
    ridge = np.maximum(fine - ndi.gaussian_filter(neutral, 3.0 / mpp), 0.0)
    distance = ndi.distance_transform_edt(markers == 0) * mpp
    elevation = (distance + _RIDGE_UM_PER_OD * ridge).astype(np.float32)
    return markers, elevation


def _seed_orphans(
    markers: NDArray[np.int32], mask: NDArray[np.bool_], *, mpp: float
) -> NDArray[np.int32]:
    """``markers`` plus one seed at the distance-transform maximum of every connected foreground
    object that holds none (the watershed would leave it unlabelled)."""
    objects, n = ndi.label(mask)
    if n == 0:
        return markers
    seeded = np.zeros(n + 1, bool)
    seeded[np.unique(objects[markers > 0])] = True
    orphans = np.flatnonzero(~seeded[1:]) + 1
    if len(orphans) == 0:
        return markers
    dist = ndi.distance_transform_edt(mask)
    at = ndi.maximum_position(dist, objects, orphans)
    out = markers.copy()
    start = int(markers.max()) + 1
    for k, (y, x) in enumerate(at):
        out[int(y), int(x)] = start + k
    return out


#: A peak under the seed threshold still seeds a cell when above this fraction of it and at least
#: this far (µm) from every seed above it (farther than a spread cell's radius, 20-32 µm, so not a
#: texture peak beside a seeded nucleus). Chosen on synthetic fields 1-4 and 9-16 among 0.5-0.8 and
#: 25-35 µm (module notes).
WEAK_SEED_FRACTION = 0.7
WEAK_SEED_DISTANCE_UM = 35.0


def _seed_threshold(strength: NDArray[np.floating]) -> float:
    """Blob strength above which a peak is a nucleus: 1.5x the median peak (a texture peak).

    Chosen on synthetic fields 1-4 among 1.5x, 1.7x, 2x the median, median + 2 or 3 robust SDs and
    Otsu (``benchmarks/culture_segmentation.py``), then checked on fields 5-8.
    """
    return 1.5 * float(np.median(strength))


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


#: Halo (µm) around each tile in whole-cell mode: the extent of a large spread cell, so a cell is
#: segmented whole by the tile that owns its centroid.
CELL_HALO_UM = 100.0
#: Whole-cell objects outside this area range (µm²) are dropped (debris; merged sheets of cells).
CELL_AREA_RANGE_UM2 = (150.0, 20_000.0)


def culture_field_plan(slide: Any, tissue: Any, *, halo_um: float) -> tuple[Any, Any, float]:
    """The per-slide choices of a culture photo: the whole field as sample, glass, halo.

    A culture photo has no tissue outline (pale unstained cells fall under the tissue mask's OD
    threshold), so every pixel is sample; the glass intensity is the 99th percentile of each
    channel of the overview (the glass between cells, the brightest pixels); the halo is at least
    :data:`CELL_HALO_UM`.

    Parameters
    ----------
    slide : the opened image (:func:`senpath.open_slide`).
    tissue : its :class:`senpath.tissue.TissueMask` (for the overview's pixel size).
    halo_um : the configured halo (µm).

    Returns
    -------
    (tissue, i0, halo_um)
        An all-true mask of the same grid, (3,) float64 glass intensity, the halo in µm.
    """
    import dataclasses

    from senpath.stain import estimate_background

    height_um = slide.shape[0] * slide.mpp[1]
    width_um = slide.shape[1] * slide.mpp[0]
    thumb = slide.read_region(0, 0, width_um, height_um, mpp=tissue.mpp)
    whole = dataclasses.replace(tissue, mask=np.ones_like(tissue.mask, dtype=bool))
    i0 = estimate_background(np.asarray(thumb), percentile=99.0)
    return whole, i0, max(float(halo_um), CELL_HALO_UM)


def whole_cell_compartments(cells: NDArray[np.integer]) -> dict[str, NDArray[np.int32]]:
    """Compartments for :func:`senpath.measure.measure_cells` when the objects are whole cells.

    No nucleus is seen: ``cell`` (and, for the measure's sake, ``nucleus`` and
    ``nucleus_perinuclear``) are the cell; ``cytoplasm`` and ``perinuclear`` are empty. The
    per-cell table's nucleus columns are then blanked by the tile engine.
    """
    cell = np.asarray(cells, np.int32)
    zero = np.zeros_like(cell)
    return {
        "nucleus": cell,
        "cytoplasm": zero,
        "cell": cell,
        "perinuclear": zero,
        "nucleus_perinuclear": cell,
    }


def measure_whole_cells(
    cells: NDArray[np.integer],
    concentrations: NDArray[np.floating],
    *,
    stain_names: Sequence[str],
    mpp: float,
    origin_um: tuple[float, float] = (0.0, 0.0),
) -> tuple[Any, Any]:
    """The per-cell table of whole-cell objects, and which of them are in the cell-area range.

    :func:`senpath.measure.measure_cells` with :func:`whole_cell_compartments`; the nucleus
    morphology and ``*_nucleus``/``*_nucleus_perinuclear`` stain columns are blanked (NaN: no
    nucleus is seen), ``x_um``/``y_um`` are the cell's centroid.

    Returns
    -------
    (DataFrame, Series of bool)
    """
    from senpath.measure import measure_cells

    table = measure_cells(
        cells, concentrations, stain_names=stain_names, mpp=mpp, origin_um=origin_um,
        compartments=whole_cell_compartments(cells),
    )  # fmt: skip
    lo, hi = CELL_AREA_RANGE_UM2
    in_range = (table["cell_area_um2"] >= lo) & (table["cell_area_um2"] <= hi)
    blank = [
        c
        for c in table.columns
        if c.startswith("nucleus_") or c.endswith(("_nucleus", "_nucleus_perinuclear"))
    ]
    table[blank] = np.nan
    return table, in_range


@dataclass(frozen=True)
class WholeCellSegmenter:
    """Whole cells of brightfield culture photos (a :class:`~senpath.segment.Segmenter` whose
    objects are cells; see :func:`segment_whole_cells`).

    Attributes
    ----------
    min_cell_area_um2 : smaller objects are dropped (µm²).
    """

    min_cell_area_um2: float = CELL_AREA_RANGE_UM2[0]
    method: str = field(default="whole_cell", init=False)
    objects: str = field(default="cells", init=False)

    def segment(
        self,
        rgb: NDArray[np.uint8],
        *,
        mpp: float,
        concentrations: NDArray[np.float32] | None = None,
    ) -> NDArray[np.int32]:
        """(Y, X) int32 cell labels of ``rgb`` at ``mpp`` µm/px (``concentrations`` unused)."""
        return segment_whole_cells(rgb, mpp=mpp, min_cell_area_um2=self.min_cell_area_um2)
