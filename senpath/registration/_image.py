"""Low-resolution, stain-independent pictures of a section to register: total optical density.

Adjacent sections carry different stains (X-gal blue-green, DAB brown, hematoxylin or nuclear fast
red), so their colours cannot be compared. What they share is where the tissue is and how dense it
is: the total optical density (OD summed over R, G and B) at 8-16 µm/px, where single cells blur
into tissue texture. It is normalised per section (its 95th percentile in tissue = 1), so a pale
and a dark stain look alike; the registration metrics (mutual information, correlation) then take
care of what monotone difference is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

#: Default pixel size (µm/px) of the registration pictures: single cells (7-12 µm) blur into tissue
#: texture, a 20 x 20 mm section is 2,500 px square.
REGISTRATION_MPP = 8.0
#: A section smaller than this many pixels across at ``REGISTRATION_MPP`` is read finer.
MIN_PIXELS = 256
#: Total OD above which a pixel counts as tissue (glass is about 0-0.05 summed over R, G, B).
TISSUE_OD = 0.12


@dataclass(frozen=True)
class SectionImage:
    """A section at low resolution, as registration sees it.

    Attributes
    ----------
    od : (Y, X) float32 ndarray
        Total optical density, smoothed and normalised (tissue 95th percentile = 1, clipped to 0-2).
    tissue : (Y, X) bool ndarray
        Tissue pixels (total OD above :data:`TISSUE_OD` before normalising).
    mpp : float
        Pixel size in µm/px; pixel ``(i, j)`` has its centre at ``((j + 0.5) mpp, (i + 0.5) mpp)``
        µm (x, y) in the slide's coordinates, the frame of the per-cell ``x_um``, ``y_um``.
    name : str
        What the picture shows (a slide id), for messages.
    """

    od: NDArray[np.float32]
    tissue: NDArray[np.bool_]
    mpp: float
    name: str = ""

    @property
    def extent_um(self) -> tuple[float, float]:
        """(height, width) in µm."""
        return (self.od.shape[0] * self.mpp, self.od.shape[1] * self.mpp)


def glass_intensity(rgb: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Glass intensity per channel: the 99th percentile of each channel (at least 200)."""
    flat = rgb.reshape(-1, 3)
    return np.maximum(np.percentile(flat, 99, axis=0), 200.0)


def section_image_from_rgb(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    target_mpp: float | None = None,
    name: str = "",
    i0: NDArray[np.float64] | None = None,
) -> SectionImage:
    """The registration picture of an RGB image.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8 ndarray
        Brightfield image at ``mpp`` µm/px.
    mpp : float
        Its pixel size (µm/px).
    target_mpp : float, optional
        Pixel size of the picture; default :func:`registration_mpp` of the image's extent.
        It is reached by an integer area-average, so the result's ``mpp`` may be a little finer.
    name : str
        A label for messages.
    i0 : (3,) float, optional
        Glass intensity per channel; default :func:`glass_intensity`.

    Returns
    -------
    SectionImage
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"{name or 'image'}: rgb must be (Y, X, 3), got shape {rgb.shape}")
    if not mpp > 0:
        raise ValueError(f"{name or 'image'}: mpp must be a positive µm/px, got {mpp!r}")
    if target_mpp is None:
        target_mpp = registration_mpp((rgb.shape[0] * mpp, rgb.shape[1] * mpp))
    factor = max(1, int(math.floor(target_mpp / mpp + 0.05)))
    if factor > 1:
        h = max(1, rgb.shape[0] // factor)
        w = max(1, rgb.shape[1] // factor)
        # crop to whole blocks so pixel (i, j) covers exactly level-0 pixels [i f, (i + 1) f)
        block = np.ascontiguousarray(rgb[: h * factor, : w * factor])
        rgb = np.asarray(cv2.resize(block, (w, h), interpolation=cv2.INTER_AREA), np.uint8)
    glass = glass_intensity(rgb) if i0 is None else np.asarray(i0, dtype=np.float64)
    return _from_small_rgb(np.asarray(rgb), mpp=mpp * factor, i0=glass, name=name)


def section_image(slide: Any, *, target_mpp: float | None = None, name: str = "") -> SectionImage:
    """The registration picture of a whole slide, read from its pyramid level nearest ``target_mpp``.

    Parameters
    ----------
    slide : senpath.io.Slide
        An opened slide.
    target_mpp : float, optional
        Pixel size (µm/px); default :func:`registration_mpp` of the slide's extent (8 µm/px for
        a slide wider than 2 mm).
    name : str
        A label for messages (the slide id).
    """
    from senpath.tissue import downsample_level

    height_um = slide.shape[0] * slide.mpp[1]
    width_um = slide.shape[1] * slide.mpp[0]
    if target_mpp is None:
        target_mpp = registration_mpp((height_um, width_um))
    level = slide.best_level(target_mpp)
    level_mpp = float(slide.level_mpp(level))
    factor = max(1, int(math.floor(target_mpp / level_mpp + 0.05)))
    rgb = downsample_level(slide.levels[level], factor)
    # the picture's pixel size from its real shape (a partial last chunk rounds up)
    mpp = height_um / rgb.shape[0] if factor > 1 else level_mpp
    return _from_small_rgb(rgb, mpp=mpp, i0=glass_intensity(rgb), name=name)


def registration_mpp(
    extent_um: tuple[float, float], *, target_mpp: float = REGISTRATION_MPP
) -> float:
    """Pixel size (µm/px) for registering a section of ``extent_um`` (height, width) µm.

    ``target_mpp``, or finer for a small section so that it is at least :data:`MIN_PIXELS` across
    (a 1 mm field is read at 4 µm/px).
    """
    return float(min(target_mpp, max(0.5, min(extent_um) / MIN_PIXELS)))


def _from_small_rgb(
    rgb: NDArray[np.uint8], *, mpp: float, i0: NDArray[np.float64], name: str
) -> SectionImage:
    intensity = np.maximum(rgb.astype(np.float32), 1.0) / i0.astype(np.float32)
    od = np.clip(-np.log10(intensity), 0.0, None).sum(axis=-1)
    # black padding outside the scanned area is not tissue
    od[rgb.max(axis=-1) < 10] = 0.0
    od = cv2.GaussianBlur(od, (0, 0), 1.0)
    tissue = od > TISSUE_OD
    scale = float(np.percentile(od[tissue], 95)) if tissue.sum() > 10 else 1.0
    od = np.clip(od / max(scale, 1e-3), 0.0, 2.0).astype(np.float32)
    return SectionImage(od=od, tissue=tissue, mpp=float(mpp), name=name)
