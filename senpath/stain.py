"""Stain vectors, optical density and colour deconvolution.

Optical density is the currency of stain measurement in senpath:
``OD = -log10(I / I0)`` per RGB channel, with ``I0`` the background (glass) intensity.
A stain is a unit vector in RGB OD space; a pixel's OD is (by Beer-Lambert) the sum of each
stain's concentration times its vector, so deconvolution is a linear least-squares problem.

The reference vectors below are the values commonly used in the field (Ruifrok & Johnston 2001 for
hematoxylin, eosin, DAB and Fast Red); nuclear fast red and X-gal are our own estimates from the
published absorption maxima (nuclear fast red ~540 nm, pink-red; the X-gal indigo precipitate
~615-650 nm, blue-green). Per-slide estimation refines them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Reference stain OD vectors (R, G, B), unnormalised; :func:`unit` normalises them.
REFERENCE_STAINS: dict[str, tuple[float, float, float]] = {
    "hematoxylin": (0.650, 0.704, 0.286),
    "eosin": (0.072, 0.990, 0.105),
    "dab": (0.268, 0.570, 0.776),
    "fast_red": (0.214, 0.851, 0.478),
    "nuclear_fast_red": (0.180, 0.780, 0.600),
    "xgal": (0.860, 0.470, 0.200),
}

#: Smallest intensity used before taking a log, so a black pixel gives a finite OD.
MIN_INTENSITY = 1.0
#: Default background intensity of brightfield glass (8-bit) when none is estimated.
DEFAULT_I0 = 240.0


def unit(vector: Sequence[float]) -> NDArray[np.float64]:
    """Return ``vector`` scaled to unit length."""
    v = np.asarray(vector, dtype=np.float64)
    n = np.linalg.norm(v)
    if n == 0:
        raise ValueError("a stain vector cannot be all zeros")
    return v / n


@dataclass(frozen=True)
class StainSet:
    """Named stains with their unit OD vectors, in a fixed order.

    Attributes
    ----------
    names : tuple of str
        Stain names, e.g. ``("hematoxylin", "dab")``.
    vectors : (S, 3) float64
        One unit OD vector (R, G, B) per stain, rows in the order of ``names``.
    """

    names: tuple[str, ...]
    vectors: NDArray[np.float64]

    @classmethod
    def from_names(
        cls, names: Sequence[str], overrides: Mapping[str, Sequence[float]] | None = None
    ) -> StainSet:
        """Build a stain set from reference names, optionally overriding some vectors."""
        overrides = dict(overrides or {})
        rows = []
        for name in names:
            if name in overrides:
                rows.append(unit(overrides[name]))
            elif name in REFERENCE_STAINS:
                rows.append(unit(REFERENCE_STAINS[name]))
            else:
                known = ", ".join(sorted(REFERENCE_STAINS))
                raise ValueError(f"unknown stain {name!r}: give its OD vector or use one of {known}")
        return cls(tuple(names), np.vstack(rows))

    def index(self, name: str) -> int:
        """Position of stain ``name`` in this set."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"stain {name!r} is not in this stain set {self.names}") from None


def rgb_to_od(rgb: NDArray[np.uint8], i0: float | Sequence[float] = DEFAULT_I0) -> NDArray[np.float32]:
    """Convert an RGB image to optical density.

    Parameters
    ----------
    rgb : (..., 3) uint8
        Brightfield image.
    i0 : float or (3,) floats
        Background (glass) intensity per channel.

    Returns
    -------
    (..., 3) float32
        ``-log10(I / I0)``, clipped at 0 (pixels brighter than the background have no stain).
    """
    i0_arr = np.asarray(i0, dtype=np.float32).reshape((1,) * (rgb.ndim - 1) + (-1,))
    intensity = np.maximum(rgb.astype(np.float32), MIN_INTENSITY)
    od = -np.log10(intensity / i0_arr)
    return np.maximum(od, 0.0, out=od)


def od_to_rgb(od: NDArray[np.floating], i0: float | Sequence[float] = DEFAULT_I0) -> NDArray[np.uint8]:
    """Inverse of :func:`rgb_to_od`: ``(..., 3)`` OD to uint8 RGB."""
    i0_arr = np.asarray(i0, dtype=np.float32).reshape((1,) * (od.ndim - 1) + (-1,))
    rgb = i0_arr * np.power(10.0, -od.astype(np.float32))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def deconvolve(
    rgb: NDArray[np.uint8], stains: StainSet, i0: float | Sequence[float] = DEFAULT_I0
) -> NDArray[np.float32]:
    """Colour deconvolution: per-stain concentrations (OD units) for every pixel.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    stains : StainSet
        Two or three stains. With two, the least-squares solution is used (no residual channel).
    i0 : background intensity.

    Returns
    -------
    (Y, X, S) float32
        Amount of each stain, in OD units along its unit vector; negative values clipped to 0.
    """
    od = rgb_to_od(rgb, i0)
    flat = od.reshape(-1, 3)
    # Least squares: od = c @ V  =>  c = od @ pinv(V)
    pinv = np.linalg.pinv(stains.vectors).astype(np.float32)
    conc = flat @ pinv
    np.maximum(conc, 0.0, out=conc)
    return conc.reshape(od.shape[:-1] + (len(stains.names),))


def residual_od(
    rgb: NDArray[np.uint8], stains: StainSet, i0: float | Sequence[float] = DEFAULT_I0
) -> NDArray[np.float32]:
    """Per-pixel OD that the stains fail to explain (norm of the least-squares residual)."""
    od = rgb_to_od(rgb, i0)
    flat = od.reshape(-1, 3)
    pinv = np.linalg.pinv(stains.vectors).astype(np.float32)
    recon = (flat @ pinv) @ stains.vectors.astype(np.float32)
    return np.linalg.norm(flat - recon, axis=1).reshape(od.shape[:-1])


def estimate_background(rgb: NDArray[np.uint8], *, percentile: float = 99.0) -> NDArray[np.float64]:
    """Estimate the glass intensity I0 per channel from the brightest pixels.

    Uses a high percentile of each channel among bright pixels, bounded to [200, 255] so a slide with
    no glass in view does not produce an absurd background.
    """
    flat = rgb.reshape(-1, 3).astype(np.float64)
    if flat.size == 0:
        return np.full(3, DEFAULT_I0)
    i0 = np.percentile(flat, percentile, axis=0)
    return np.clip(i0, 200.0, 255.0)
