"""Network maps → nucleus instances (marker-controlled watershed). numpy/scikit-image only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of :func:`maps_to_instances` (saved in the model JSON next to the weights).

    Attributes
    ----------
    foreground_threshold : float
        Foreground probability above which a pixel belongs to a nucleus.
    marker_threshold : float
        Normalised distance above which a foreground pixel is part of a nucleus seed.
    min_marker_area_um2 : float
        Seeds smaller than this are dropped (noise peaks would split a nucleus).
    min_area_um2 : float
        Instances smaller than this are removed (a 2 µm diameter disc is about 3 µm²).
    """

    foreground_threshold: float = 0.5
    marker_threshold: float = 0.45
    min_marker_area_um2: float = 0.75
    min_area_um2: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return asdict(self)


def maps_to_instances(
    foreground: NDArray[np.floating],
    distance: NDArray[np.floating],
    *,
    mpp: float,
    config: PostprocessConfig | None = None,
) -> NDArray[np.int32]:
    """Label nuclei from foreground-probability and normalised-distance maps.

    Seeds are the connected regions where the distance map exceeds ``marker_threshold``; a watershed
    on the inverted distance grows them back to the foreground mask. Foreground components that hold
    no seed (small or flat nuclei) become instances of their own.

    Parameters
    ----------
    foreground : (Y, X) float
        Foreground probability in [0, 1].
    distance : (Y, X) float
        Normalised distance to the nucleus boundary in [0, 1].
    mpp : float
        Resolution of the maps (µm/px), used to turn the µm² areas of ``config`` into pixels.
    config : PostprocessConfig, optional

    Returns
    -------
    (Y, X) int32
        Instances numbered 1..N in raster order of their first pixel; 0 = background.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    cfg = config or PostprocessConfig()
    if foreground.shape != distance.shape or foreground.ndim != 2:
        raise ValueError(
            f"foreground {foreground.shape} and distance {distance.shape} must be equal 2-D shapes"
        )
    px_area = mpp * mpp
    mask = foreground > cfg.foreground_threshold
    seeds, n = ndi.label(mask & (distance > cfg.marker_threshold))
    if n:
        sizes = np.bincount(seeds.ravel(), minlength=n + 1)
        small = sizes < cfg.min_marker_area_um2 / px_area
        small[0] = False
        seeds[small[seeds]] = 0
    labels = watershed(-distance.astype(np.float32), seeds, mask=mask)
    orphans, n_orphans = ndi.label(mask & (labels == 0))
    if n_orphans:
        offset = int(labels.max())
        labels = np.where(orphans > 0, orphans + offset, labels)
    return _clean(labels, min_area_px=cfg.min_area_um2 / px_area)


def _clean(labels: NDArray[np.integer], *, min_area_px: float) -> NDArray[np.int32]:
    """Drop small instances and renumber 1..N in raster order (deterministic)."""
    flat = labels.ravel()
    sizes = np.bincount(flat)
    keep = sizes >= min_area_px
    keep[0] = False
    ids, first = np.unique(flat, return_index=True)
    ids_kept = ids[keep[ids]]
    order = ids_kept[np.argsort(first[keep[ids]], kind="stable")]
    lut = np.zeros(len(sizes), np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]
