"""Nucleus segmentation: the shipped CNN (default when its weights are installed) or the classical baseline.

Only this subpackage imports torch, and only when the CNN is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np
from numpy.typing import NDArray

from senpath.segment.classical import segment_classical
from senpath.stain import DEFAULT_I0, StainSet

__all__ = ["cnn_available", "resolve_method", "segment_classical", "segment_nuclei"]

#: Name of the shipped weights' metadata file inside ``senpath.models`` (config, thresholds, sha256).
WEIGHTS_META = "nucleus_unet.json"


def cnn_available() -> bool:
    """Whether the shipped CNN weights and their metadata are installed."""
    try:
        return resources.files("senpath.models").joinpath(WEIGHTS_META).is_file()
    except ModuleNotFoundError:
        return False


def resolve_method(method: str, *, model: str | None = None) -> str:
    """Turn ``auto`` into ``cnn`` or ``classical``; check an explicit ``cnn`` is possible.

    With ``model`` (a model of the user's own), ``auto`` is the CNN and no shipped weights are needed.
    """
    if model is not None and method in ("auto", "cnn"):
        return "cnn"
    if method == "auto":
        return "cnn" if cnn_available() else "classical"
    if method == "cnn" and not cnn_available():
        raise RuntimeError(
            f"segmenter 'cnn' requested but no shipped weights ({WEIGHTS_META}) are installed in "
            "senpath.models; reinstall senpath or use --segmenter classical"
        )
    if method not in ("cnn", "classical"):
        raise ValueError(f"unknown segmenter {method!r}: use 'auto', 'cnn' or 'classical'")
    return method


def segment_nuclei(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    stains: StainSet,
    nuclear_stains: Sequence[str],
    method: str = "auto",
    device: str = "auto",
    i0: float | Sequence[float] = DEFAULT_I0,
    min_area_um2: float = 10.0,
    model: str | None = None,
) -> NDArray[np.int32]:
    """Segment nuclei in an in-memory brightfield image.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    mpp : pixel size of ``rgb`` in µm.
    stains, nuclear_stains : the assay's stains (used by the classical method).
    method : ``auto``, ``cnn`` or ``classical``.
    device : torch device for the CNN (``auto`` picks CUDA, then MPS, then CPU).
    model : model JSON (or folder) of a CNN of your own; the shipped one when ``None``.

    Returns
    -------
    (Y, X) int32 instance labels on the input pixel grid.
    """
    method = resolve_method(method, model=model)
    if method == "cnn":
        from senpath.segment.predict import cached_segmenter, predict_instances

        return predict_instances(rgb, mpp=mpp, model=cached_segmenter(model, device))
    return segment_classical(
        rgb, mpp=mpp, stains=stains, nuclear_stains=nuclear_stains, i0=i0, min_area_um2=min_area_um2
    )
