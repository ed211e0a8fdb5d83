"""Resampling images and label images to the network's resolution (inference and training share it).

The network works at :data:`NETWORK_MPP` µm/px; :func:`shape_at_mpp` gives the pixel shape of an image
at another resolution, :func:`resample_rgb` and :func:`resample_labels` resize to it. This module is on
the inference path, so it imports no training code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

#: Physical resolution the network works at (µm/px).
NETWORK_MPP = 0.5


def resample_rgb(rgb: NDArray[np.uint8], shape: tuple[int, int]) -> NDArray[np.uint8]:
    """Resize an RGB image to ``shape`` (area averaging when shrinking, bilinear otherwise).

    Parameters
    ----------
    rgb : (H, W, 3) uint8.
    shape : (Y, X) px of the result.
    """
    import cv2

    if rgb.shape[:2] == tuple(shape):
        return rgb
    shrink = shape[0] < rgb.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(rgb, (shape[1], shape[0]), interpolation=interp), np.uint8)


def resample_labels(labels: NDArray[np.integer], shape: tuple[int, int]) -> NDArray[np.int32]:
    """Nearest-neighbour resize of a (H, W) label image to ``shape`` (pixel centres aligned)."""
    if labels.shape == tuple(shape):
        return labels.astype(np.int32, copy=False)
    ys = ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64)
    xs = ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64)
    ys = np.clip(ys, 0, labels.shape[0] - 1)
    xs = np.clip(xs, 0, labels.shape[1] - 1)
    return labels[ys[:, None], xs[None, :]].astype(np.int32)


def shape_at_mpp(shape: Sequence[int], mpp: float, target_mpp: float) -> tuple[int, int]:
    """Pixel shape ``(Y, X)`` of an image of ``shape`` at ``mpp`` once resampled to ``target_mpp``."""
    f = mpp / target_mpp
    return max(1, round(shape[0] * f)), max(1, round(shape[1] * f))
