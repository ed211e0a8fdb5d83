"""Classical nucleus segmentation: colour deconvolution, Otsu threshold and distance watershed.

This is the baseline the CNN is measured against, and the fallback when no trained weights are
installed. It works at any resolution because every size is given in µm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from senpath.stain import DEFAULT_I0, StainSet, deconvolve

#: Nuclear OD below this is never called nucleus, whatever Otsu says (an empty field stays empty).
MIN_NUCLEAR_OD = 0.12


def nuclear_od(
    rgb: NDArray[np.uint8],
    *,
    stains: StainSet,
    nuclear_stains: Sequence[str],
    i0: float | Sequence[float] = DEFAULT_I0,
) -> NDArray[np.float32]:
    """Summed concentration (OD) of the stains that mark nuclei, ``(Y, X) float32``."""
    conc = deconvolve(rgb, stains, i0)
    idx = [stains.index(s) for s in nuclear_stains]
    return conc[..., idx].sum(axis=-1)


def _otsu_foreground(channel: NDArray[np.floating]) -> NDArray[np.bool_]:
    """Pixels above Otsu's threshold between stained background and nuclei (glass left out)."""
    if float(channel.max(initial=0.0)) < MIN_NUCLEAR_OD:
        return np.zeros(channel.shape, bool)
    # glass would pull the threshold down to "anything stained": leave near-glass pixels out
    stained = channel[channel > 0.5 * MIN_NUCLEAR_OD]
    if stained.size < 16 or float(stained.max() - stained.min()) < 1e-3:
        return np.zeros(channel.shape, bool)
    return channel > max(float(threshold_otsu(stained)), MIN_NUCLEAR_OD)


def segment_classical(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    stains: StainSet,
    nuclear_stains: Sequence[str],
    i0: float | Sequence[float] = DEFAULT_I0,
    smooth_um: float = 0.5,
    min_area_um2: float = 10.0,
    split_distance_um: float = 2.5,
    concentrations: NDArray[np.float32] | None = None,
) -> NDArray[np.int32]:
    """Segment nuclei in a brightfield image.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
        Image at ``mpp`` µm/px.
    mpp : float
        Pixel size in µm.
    stains, nuclear_stains
        The assay's stains and the names of those that stain nuclei (each is thresholded, the
        masks are united).
    i0 : background intensity.
    smooth_um : Gaussian smoothing sigma before thresholding.
    min_area_um2 : smaller objects are dropped.
    split_distance_um : minimum distance between two nucleus centres when splitting touching nuclei.
    concentrations : (Y, X, S) float32, optional
        ``deconvolve(rgb, stains, i0)`` when the caller has it already (the tile engine measures
        with the same array), so a tile is deconvolved once; computed here when ``None``.

    Returns
    -------
    (Y, X) int32
        Instance labels, 0 = background, 1..N nuclei.
    """
    conc = deconvolve(rgb, stains, i0) if concentrations is None else concentrations
    # Each nuclear stain is thresholded on its own and the masks are united: a summed channel would
    # let dark chromogen-positive nuclei (Ki67 DAB) pull Otsu above the pale counterstained ones.
    mask = np.zeros(rgb.shape[:2], bool)
    for name in nuclear_stains:
        channel = gaussian(
            conc[..., stains.index(name)], sigma=smooth_um / mpp, preserve_range=True
        )
        mask |= _otsu_foreground(channel)
    if not mask.any():
        return np.zeros(rgb.shape[:2], np.int32)
    mask = ndi.binary_fill_holes(mask)
    min_px = max(1, int(round(min_area_um2 / mpp**2)))
    mask = remove_small_objects(mask, max_size=min_px - 1) if min_px > 1 else mask
    dist = ndi.distance_transform_edt(mask)
    dist = gaussian(dist, sigma=0.5 / mpp, preserve_range=True)
    min_dist = max(1, int(round(split_distance_um / mpp)))
    coords = peak_local_max(
        dist, min_distance=min_dist, labels=ndi.label(mask)[0], exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1, dtype=np.int32)
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    # drop fragments the split produced below the size floor, then number 1..N
    counts = np.bincount(labels.ravel())
    small = np.flatnonzero(counts < min_px)
    small = small[small > 0]
    if small.size:
        labels[np.isin(labels, small)] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


@dataclass(frozen=True)
class ClassicalSegmenter:
    """The classical method with one slide's stains and glass intensity (a :class:`Segmenter`).

    Attributes
    ----------
    stains : the slide's stain vectors.
    nuclear_stains : names of the stains that mark nuclei.
    i0 : glass intensity (one value or one per RGB channel).
    min_area_um2 : smaller objects are dropped (µm²).
    """

    stains: StainSet
    nuclear_stains: tuple[str, ...]
    i0: float | Sequence[float] | NDArray[np.floating] = DEFAULT_I0
    min_area_um2: float = 10.0
    method: str = field(default="classical", init=False)

    def segment(
        self,
        rgb: NDArray[np.uint8],
        *,
        mpp: float,
        concentrations: NDArray[np.float32] | None = None,
    ) -> NDArray[np.int32]:
        """(Y, X) int32 nucleus labels of ``rgb`` at ``mpp`` µm/px; see :func:`segment_classical`."""
        return segment_classical(
            rgb,
            mpp=mpp,
            stains=self.stains,
            nuclear_stains=self.nuclear_stains,
            i0=self.i0,  # type: ignore[arg-type]
            min_area_um2=self.min_area_um2,
            concentrations=concentrations,
        )
