"""Tissue detection on a low-resolution view of a brightfield slide.

Brightfield glass is bright and unstained; tissue absorbs light. We threshold the per-pixel
optical density (``OD = -log10((I + 1) / 256)``, max over RGB) with Otsu's method, capped a
small margin above the glass background (so pale stroma counts) and never below a floor (so a
blank slide's noise is not called tissue), then close small gaps, fill small holes and drop
specks. All sizes are in µm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["TissueMask", "downsample_level", "tissue_mask", "tissue_mask_from_rgb"]

#: OD below which a pixel is never tissue (clean glass is ~0.01-0.04).
MIN_TISSUE_OD = 0.035
#: The automatic threshold is at most this far above the glass OD.
TISSUE_MARGIN_OD = 0.02
#: Dust and hole sizes are capped at this share of the image area (small fields, crops).
FIELD_SHARE = 0.02
#: Percentile of OD taken as the glass level.
GLASS_PERCENTILE = 2.0
#: Clean glass is never darker than this OD (intensity ~ 228/255); a darker 2nd percentile means there
#: is no glass in view (a crop inside tissue), and this value stands in for the glass level.
MAX_GLASS_OD = 0.04
#: Pixels darker than this in every channel are scanner padding / pen / black borders.
BLACK_LEVEL = 25


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask at low resolution.

    Attributes
    ----------
    mask : (Y, X) bool ndarray
        True on tissue.
    mpp : float
        Pixel size of ``mask`` in µm/px.
    threshold_od : float
        The optical-density threshold used.
    """

    mask: NDArray[np.bool_]
    mpp: float
    threshold_od: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide area that is tissue (0 for an empty slide)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_um2(self) -> float:
        """Tissue area in µm²."""
        return float(self.mask.sum()) * self.mpp**2

    @property
    def is_empty(self) -> bool:
        """True when no tissue was found (the caller should report and skip the slide)."""
        return not bool(self.mask.any())


def downsample_level(array: Any, factor: int) -> NDArray[np.uint8]:
    """Area-average a ``(Y, X, 3) uint8`` dask/numpy image by an integer ``factor``, chunk-wise.

    Streaming over chunks keeps memory to one chunk per thread, so a slide without a coarse
    pyramid level can still be reduced. Output shape is ``ceil(Y / factor), ceil(X / factor)``
    when chunk sizes are multiples of ``factor`` (they are for power-of-two tiles).
    """
    import dask.array as da

    if factor <= 1:
        whole: NDArray[np.uint8] = np.asarray(
            array.compute() if hasattr(array, "compute") else array
        )
        return whole

    arr = da.asarray(array)
    chunks = tuple(tuple(max(1, math.ceil(c / factor)) for c in axis) for axis in arr.chunks[:2])
    small = arr.map_blocks(_shrink, factor, chunks=(*chunks, (3,)), dtype=np.uint8)
    result: NDArray[np.uint8] = np.asarray(small.compute())
    return result


def _darkest_level(array: Any, factor: int) -> NDArray[np.uint8]:
    """Area-average by ``factor`` chunk-wise and keep only the darkest channel ``(Y, X) uint8``.

    One byte per mask pixel instead of three; black padding (every channel below
    :data:`BLACK_LEVEL`) becomes 255, i.e. glass. Each reduced chunk is written straight into
    the preallocated result (``dask.array.store``), so the mask is never held twice.
    """
    import dask.array as da

    def reduce(block: NDArray[np.uint8]) -> NDArray[np.uint8]:
        small = _shrink(block, factor) if factor > 1 else block
        return _darkest(small)

    arr = da.asarray(array)
    chunks = tuple(tuple(max(1, math.ceil(c / factor)) for c in axis) for axis in arr.chunks[:2])
    darkest = arr.map_blocks(reduce, chunks=chunks, drop_axis=2, dtype=np.uint8)
    result = np.empty(darkest.shape, dtype=np.uint8)
    # the target is this process's memory: never let a distributed client (inside a dask worker,
    # or a user's default client) run the store elsewhere and leave ``result`` uninitialised
    da.store(darkest, result, lock=False, scheduler="threads")
    return result


def _shrink(block: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    import cv2

    h = max(1, math.ceil(block.shape[0] / factor))
    w = max(1, math.ceil(block.shape[1] / factor))
    reduced = cv2.resize(block, (w, h), interpolation=cv2.INTER_AREA)
    return np.asarray(reduced, dtype=np.uint8).reshape(h, w, 3)


def _darkest(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Darkest channel (its OD is the max OD over RGB); black padding set to 255 (glass)."""
    darkest = rgb.min(axis=-1)
    darkest[rgb.max(axis=-1) < BLACK_LEVEL] = 255
    return darkest


#: OD of each 8-bit intensity, ``-log10((I + 1) / 256)``.
_OD_OF = -np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)


def _auto_threshold(hist: NDArray[np.int64], *, min_od: float, margin_od: float) -> float:
    """Otsu's OD threshold, capped at ``margin_od`` above the glass OD, floored at ``min_od``.

    Otsu alone splits stained tissue into dark (nuclei, epithelium) and pale (stroma, IHC
    counterstain) wherever tissue dominates; pale tissue is only ~0.02-0.08 OD above glass, so the
    threshold is capped relative to the glass OD, estimated at the 2nd percentile of OD (the
    brightest pixels: slides nearly always keep some glass at the scan margins).

    Parameters
    ----------
    hist : (256,) int ndarray
        Histogram of the darkest-channel intensity (glass-only pixels included).
    """
    from skimage import filters

    present = np.flatnonzero(hist)
    if present.size < 2:
        only = float(_OD_OF[present[0]]) if present.size else min_od
        return max(min_od, only)
    # OD decreases with intensity: order bins by OD so Otsu and percentiles see an OD axis
    od_axis, counts = _OD_OF[::-1], hist[::-1]
    otsu = float(filters.threshold_otsu(hist=(counts, od_axis)))
    cumulative = np.cumsum(counts)
    glass_bin = int(np.searchsorted(cumulative, cumulative[-1] * GLASS_PERCENTILE / 100.0))
    glass = min(float(od_axis[min(glass_bin, od_axis.size - 1)]), MAX_GLASS_OD)
    return max(min_od, min(otsu, glass + margin_od))


#: Rows per strip when filtering the mask in place: work arrays stay a few MB whatever its size.
STRIP_ROWS = 256


def _filter_in_strips(
    image: NDArray[np.uint8],
    fn: Callable[[NDArray[np.uint8]], NDArray[np.uint8]],
    *,
    margin: int,
    rows: int | None = None,
) -> None:
    """Replace ``image`` (Y, X) by ``fn(image)`` in place, strip by strip of ``rows`` rows
    (default :data:`STRIP_ROWS`).

    ``fn`` sees each strip with ``margin`` original rows of context above and below (fewer at
    the image edges, which are then the block's edges, as for the whole image), so the result
    equals ``fn`` on the whole image when no output row depends on input rows more than
    ``margin`` away. Rows above the strip were already overwritten; their original values are
    carried over from the previous strip.
    """
    rows = rows or STRIP_ROWS
    height = image.shape[0]
    if height <= rows + 2 * margin:
        image[...] = fn(image)
        return
    carry = image[:0].copy()  # original rows [max(0, y0 - margin), y0)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        block = np.concatenate([carry, image[y0 : min(height, y1 + margin)]])
        start = y0 - carry.shape[0]  # image row of block[0]
        result = fn(block)
        carry = block[max(0, y1 - margin) - start : y1 - start].copy()
        image[y0:y1] = result[y0 - start : y1 - start]


def _clean(
    mask: NDArray[np.uint8],
    *,
    mpp: float,
    closing_um: float,
    min_hole_um2: float,
    min_area_um2: float,
) -> NDArray[np.bool_]:
    """Close gaps, fill small holes, drop small pieces of ``mask`` (Y, X) uint8 0/1, in place.

    Works in strips (:func:`_filter_in_strips`) so a 10-MP mask needs a few MB of labels, not
    40 MB of int32 for the whole image. The strips give the whole-image result exactly: a
    component of at most ``max_px`` pixels spans at most ``max_px`` rows, so with that margin a
    component with pixels in the strip is either wholly inside the block (its area is exact) or
    reaches the block's edge, and is then larger than ``max_px`` anyway.
    """
    import cv2

    if closing_um > 0 and mask.any():
        size = 2 * max(1, round(closing_um / mpp / 2)) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))

        def close(block: NDArray[np.uint8]) -> NDArray[np.uint8]:
            return np.asarray(cv2.morphologyEx(block, cv2.MORPH_CLOSE, kernel), dtype=np.uint8)

        # dilation then erosion: each reaches size // 2 rows
        _filter_in_strips(mask, close, margin=2 * (size // 2))
    px_area = mpp * mpp
    if min_hole_um2 > 0 and mask.any():
        max_hole = int(min_hole_um2 / px_area)

        def fill(block: NDArray[np.uint8]) -> NDArray[np.uint8]:
            holes = _small_components(1 - block, max_px=max_hole, connectivity=4)
            block[holes] = 1
            return block

        _filter_in_strips(mask, fill, margin=max_hole)
    if min_area_um2 > 0 and mask.any():
        max_speck = int(min_area_um2 / px_area)

        def drop(block: NDArray[np.uint8]) -> NDArray[np.uint8]:
            block[_small_components(block, max_px=max_speck, connectivity=8)] = 0
            return block

        _filter_in_strips(mask, drop, margin=max_speck)
    return mask.view(bool)  # 0/1 bytes: no copy


def _small_components(
    binary: NDArray[np.uint8], *, max_px: int, connectivity: int
) -> NDArray[np.bool_]:
    """Pixels of connected components with at most ``max_px`` pixels (int32 labels, 4 B/px)."""
    import cv2

    if max_px < 1 or not binary.any():
        return np.zeros(binary.shape, dtype=bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(binary), connectivity=connectivity, ltype=cv2.CV_32S
    )
    small = stats[:, cv2.CC_STAT_AREA] <= max_px
    small[0] = False  # background label
    return small[labels]


def _histogram(image: NDArray[np.uint8], *, chunk: int = 1 << 18) -> NDArray[np.int64]:
    """Counts of each value 0-255 in ``image``; ``np.bincount`` casts its input to int64, so it
    is fed ``chunk`` pixels at a time (2 MB) rather than 8 bytes per pixel of the whole mask."""
    flat = image.reshape(-1)
    hist = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, chunk):
        hist += np.bincount(flat[start : start + chunk], minlength=256)
    return hist


def _mask_from_darkest(
    darkest: NDArray[np.uint8],
    *,
    mpp: float,
    min_area_um2: float,
    min_hole_um2: float,
    closing_um: float,
    min_od: float,
    margin_od: float,
    threshold_od: float | None,
) -> TissueMask:
    """Threshold and clean ``darkest`` (Y, X) uint8; it is overwritten and becomes the mask."""
    import cv2

    # In a small image (a microscope field, a crop of a slide) dust is relative: a piece covering a
    # fair share of the field is tissue whatever its area in µm² (a 128 µm field is < 20,000 µm²).
    field_um2 = float(darkest.size) * mpp * mpp
    min_area_um2 = min(min_area_um2, FIELD_SHARE * field_um2)
    min_hole_um2 = min(min_hole_um2, FIELD_SHARE * field_um2)

    def median(block: NDArray[np.uint8]) -> NDArray[np.uint8]:
        return np.asarray(cv2.medianBlur(np.ascontiguousarray(block), 3), dtype=np.uint8)

    _filter_in_strips(darkest, median, margin=1)  # scanner noise
    if threshold_od is None:
        # saturated glass (255) counts as glass; so does black padding, mapped to 255
        hist = _histogram(darkest)
        threshold_od = _auto_threshold(hist, min_od=min_od, margin_od=margin_od)
    lut = (_OD_OF > threshold_od).astype(np.uint8)
    cv2.LUT(darkest, lut, dst=darkest)
    mask = _clean(
        darkest,
        mpp=mpp,
        closing_um=closing_um,
        min_hole_um2=min_hole_um2,
        min_area_um2=min_area_um2,
    )
    return TissueMask(mask=mask, mpp=float(mpp), threshold_od=float(threshold_od))


def tissue_mask_from_rgb(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    min_area_um2: float = 20_000.0,
    min_hole_um2: float = 5_000.0,
    closing_um: float = 20.0,
    min_od: float = MIN_TISSUE_OD,
    margin_od: float = TISSUE_MARGIN_OD,
    threshold_od: float | None = None,
) -> TissueMask:
    """Tissue mask of a low-resolution RGB image; see :func:`tissue_mask` for the parameters.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8 ndarray
        Low-resolution brightfield image.
    mpp : float
        Its pixel size in µm/px.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (Y, X, 3), got shape {rgb.shape}")
    return _mask_from_darkest(
        _darkest(np.asarray(rgb, dtype=np.uint8)),
        mpp=mpp,
        min_area_um2=min_area_um2,
        min_hole_um2=min_hole_um2,
        closing_um=closing_um,
        min_od=min_od,
        margin_od=margin_od,
        threshold_od=threshold_od,
    )


def tissue_mask(
    slide: Any,
    *,
    target_mpp: float = 8.0,
    max_pixels: int = 16_000_000,
    min_area_um2: float = 20_000.0,
    min_hole_um2: float = 5_000.0,
    closing_um: float = 20.0,
    min_od: float = MIN_TISSUE_OD,
    margin_od: float = TISSUE_MARGIN_OD,
    threshold_od: float | None = None,
) -> TissueMask:
    """Detect tissue on a brightfield slide at about ``target_mpp`` µm/px.

    Reads the coarsest pyramid level at or below the mask's pixel size and area-averages it by
    an integer factor toward it, chunk by chunk, keeping one byte per mask pixel.

    Parameters
    ----------
    slide : senpath.io.Slide
        The slide.
    target_mpp : float
        Approximate pixel size of the mask in µm/px (8-16 works well).
    max_pixels : int
        Upper bound on the mask's pixel count: a larger slide gets a coarser mask (at least
        ``sqrt(area / max_pixels)`` µm/px) so memory does not grow with slide size. The
        default keeps 8 µm/px up to 32 x 32 mm of scan; a 50 x 50 mm scan gets 16 µm/px.
    min_area_um2 : float
        Tissue pieces smaller than this (µm²) are dropped as dust or debris.
    min_hole_um2 : float
        Holes smaller than this (µm²) inside tissue are filled.
    closing_um : float
        Diameter (µm) of the closing that bridges small gaps; 0 disables it.
    min_od : float
        Optical-density floor for the threshold (blank slides stay empty).
    margin_od : float
        The automatic threshold is at most this OD above the glass background.
    threshold_od : float, optional
        Fixed OD threshold instead of the automatic one.

    Returns
    -------
    TissueMask
        ``mask`` is ``(Y, X) bool`` at ``mpp`` µm/px; ``fraction`` is 0 for an empty slide.
    """
    if not target_mpp > 0:
        raise ValueError(f"target_mpp must be a positive pixel size in µm/px, got {target_mpp!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    height_um = slide.shape[0] * slide.mpp[1]
    width_um = slide.shape[1] * slide.mpp[0]
    mask_mpp = max(target_mpp, math.sqrt(height_um * width_um / max_pixels))
    level = slide.best_level(mask_mpp)
    level_mpp = slide.level_mpp(level)
    # integer factor, rounded up past 5 % so the mask never exceeds ~max_pixels
    factor = max(1, math.ceil(mask_mpp / level_mpp - 0.05))
    darkest = _darkest_level(slide.levels[level], factor)
    return _mask_from_darkest(
        darkest,
        mpp=level_mpp * slide.levels[level].shape[0] / darkest.shape[0],
        min_area_um2=min_area_um2,
        min_hole_um2=min_hole_um2,
        closing_um=closing_um,
        min_od=min_od,
        margin_od=margin_od,
        threshold_od=threshold_od,
    )
