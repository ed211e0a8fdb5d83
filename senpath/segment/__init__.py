"""Nucleus segmentation: the shipped CNN (default when its weights are installed) or the classical baseline.

A :class:`Segmenter` is chosen and loaded once per slide (:func:`load_segmenter`) and handed to the
tile engine (:mod:`senpath.tile_engine`), which calls :meth:`Segmenter.segment` per tile.
Only this subpackage imports torch, and only when the CNN is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from senpath.segment.classical import ClassicalSegmenter, segment_classical
from senpath.segment.counterstain import CounterstainBoost, image_boost
from senpath.stain import DEFAULT_I0, StainSet

__all__ = [
    "ClassicalSegmenter",
    "CnnSegmenter",
    "Segmenter",
    "cnn_available",
    "load_segmenter",
    "resolve_method",
    "segment_classical",
    "segment_nuclei",
]

#: Name of the shipped weights' metadata file inside ``senpath.models`` (config, thresholds, sha256).
WEIGHTS_META = "nucleus_unet.json"


class Segmenter(Protocol):
    """Nucleus segmentation of one image, resolved and loaded once per slide.

    Implementations: :class:`CnnSegmenter`, :class:`~senpath.segment.classical.ClassicalSegmenter`.
    """

    @property
    def method(self) -> str:
        """``cnn`` or ``classical`` (recorded in the provenance)."""
        ...

    def segment(
        self,
        rgb: NDArray[np.uint8],
        *,
        mpp: float,
        concentrations: NDArray[np.float32] | None = None,
    ) -> NDArray[np.int32]:
        """Nucleus labels of one image.

        Parameters
        ----------
        rgb : (Y, X, 3) uint8 at ``mpp`` µm/px.
        mpp : pixel size in µm/px.
        concentrations : (Y, X, S) float32 stain concentrations of ``rgb`` with the slide's stains
            and glass intensity, when the caller has them (a method that needs them then does not
            deconvolve again); ``None``: the method computes what it needs.

        Returns
        -------
        (Y, X) int32 instance labels on the input grid, 0 = background.
        """
        ...


class CnnSegmenter:
    """The nucleus CNN (a :class:`Segmenter`): weights loaded once per process and device.

    Parameters
    ----------
    model : model JSON (or folder) of a CNN of your own; ``None``: the shipped one.
    device : torch device (``auto`` picks CUDA, then MPS, then CPU).
    precision : ``auto`` (measured per machine on a CPU, see :mod:`senpath.segment.runtime`),
        ``fp32``, ``bf16``, ``fp16`` (CUDA), ``onnx-fp32`` or ``onnx-int8`` (CPU).
    boost : the slide's counterstain normalisation
        (:class:`~senpath.segment.counterstain.CounterstainBoost`), applied to every image before
        the network; ``None``: the images as they are.
    flips : test-time flips (``[analysis] test_time_flips``): the network's maps averaged over each
        tile and its three flips, 4x the network's work.
    """

    method = "cnn"

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        *,
        boost: CounterstainBoost | None = None,
        flips: bool = False,
    ) -> None:
        from senpath.segment.predict import cached_segmenter

        self.model = model
        self.device = device
        self.boost = boost
        self.network: Any = cached_segmenter(model, device, precision, flips)

    def _seen(self, rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        return rgb if self.boost is None else self.boost(rgb)

    def segment(
        self,
        rgb: NDArray[np.uint8],
        *,
        mpp: float,
        concentrations: NDArray[np.float32] | None = None,
    ) -> NDArray[np.int32]:
        """(Y, X) int32 nucleus labels of ``rgb`` at ``mpp`` µm/px (``concentrations`` unused)."""
        from senpath.segment.predict import predict_instances

        return predict_instances(self._seen(rgb), mpp=mpp, model=self.network)

    # the two halves of :meth:`segment`, for the tile engine's pipeline: the network on a batch of
    # tiles in one thread, the watershed of the previous tiles in another

    def network_maps(
        self,
        images: Sequence[NDArray[np.uint8]],
        *,
        mpp: float,
        context: Sequence[int] | None = None,
    ) -> list[NDArray[np.float32]]:
        """Network maps ``(2, y, x)`` at the network's 0.5 µm/px of images at ``mpp`` µm/px
        (tiles of one shape share network calls); :meth:`labels_from_maps` finishes them.

        ``context``: per image, the real image (px at ``mpp``) it already carries around the
        pixels whose nuclei are kept, on its narrowest side (an analysis tile's halo; 0 where the
        tile meets the slide's edge). The network's reflected context margin
        (:data:`~senpath.segment.predict.NETWORK_HALO_UM`) is cut by as much, so a tile's own halo
        is not padded again: 10 % fewer pixels through the network for a 512 µm tile with a
        24 µm halo (1120² px instead of 1184²).
        """
        from senpath.segment.predict import NETWORK_HALO_UM, NETWORK_MPP, at_network_mpp
        from senpath.tiling import halo_px

        work = [at_network_mpp(self.network, self._seen(rgb), mpp=mpp) for rgb in images]
        if context is None:
            return list(self.network.predict_batch_maps(work))
        margin = halo_px(NETWORK_HALO_UM, NETWORK_MPP)
        scale = mpp / self.network.mpp  # px at mpp -> px on the network's grid
        halos = [max(0, margin - int(c * scale)) for c in context]
        return list(self.network.predict_batch_maps(work, halo=halos))

    def labels_from_maps(
        self, maps: NDArray[np.float32], shape: tuple[int, int], *, mpp: float
    ) -> NDArray[np.int32]:
        """(Y, X) int32 nucleus labels on the grid of an image of ``shape`` at ``mpp`` µm/px."""
        from senpath.segment.predict import instances_on_grid

        return instances_on_grid(self.network, maps, shape, mpp=mpp)

    @property
    def maps_to_labels(self) -> Any:
        """:meth:`labels_from_maps` without the network
        (:class:`~senpath.segment.predict.MapsToLabels`, picklable: for worker processes)."""
        return self.network.maps_to_labels

    def tile_batch(self, side_px: int) -> int:
        """Analysis tiles of ``side_px`` (halo included) per network call: 1 on a CPU (a bigger
        batch is no faster there and holds more memory), as many as fit the card on a GPU."""
        from senpath.segment.device import tiles_per_batch

        return tiles_per_batch(self.network.device, side_px, precision=self.network.precision)


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


def load_segmenter(
    method: str = "auto",
    *,
    stains: StainSet,
    nuclear_stains: Sequence[str],
    model: str | None = None,
    device: str = "auto",
    i0: float | Sequence[float] | NDArray[np.floating] = DEFAULT_I0,
    min_area_um2: float = 10.0,
    precision: str = "auto",
    boost: CounterstainBoost | None = None,
    flips: bool = False,
) -> Segmenter:
    """Resolve ``method`` and load it: the one segmenter of a slide.

    Parameters
    ----------
    method : ``auto``, ``cnn`` or ``classical``.
    stains, nuclear_stains : the slide's stains and those that mark nuclei (classical method).
    model : model JSON (or folder) of a CNN of your own; the shipped one when ``None``.
    device : torch device for the CNN.
    i0 : glass intensity (classical method).
    min_area_um2 : smallest nucleus kept by the classical method (µm²).
    precision : CNN precision/runtime (see :class:`CnnSegmenter`).
    boost : the slide's counterstain normalisation, applied before the CNN
        (:mod:`senpath.segment.counterstain`); ``None``: none.
    flips : test-time flips for the CNN (see :class:`CnnSegmenter`); the classical method has none.

    Returns
    -------
    Segmenter
    """
    if resolve_method(method, model=model) == "cnn":
        return CnnSegmenter(model, device, precision, boost=boost, flips=flips)
    return ClassicalSegmenter(
        stains=stains, nuclear_stains=tuple(nuclear_stains), i0=i0, min_area_um2=min_area_um2
    )


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
    counterstain_reference_od: float | None = None,
) -> NDArray[np.int32]:
    """Segment nuclei in one in-memory brightfield image (``senpath segment``).

    For many tiles of a slide, load the segmenter once with :func:`load_segmenter` instead.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    mpp : pixel size of ``rgb`` in µm.
    stains, nuclear_stains : the assay's stains (used by the classical method).
    method : ``auto``, ``cnn`` or ``classical``.
    device : torch device for the CNN (``auto`` picks CUDA, then MPS, then CPU).
    model : model JSON (or folder) of a CNN of your own; the shipped one when ``None``.
    counterstain_reference_od : the assay's counterstain reference level: for the CNN, a fainter
        counterstain (the first of ``nuclear_stains``) strengthened first, measured on this image
        as on a slide (:func:`senpath.segment.counterstain.image_boost`); ``None``: never.

    Returns
    -------
    (Y, X) int32 instance labels on the input pixel grid.
    """
    boost = None
    if counterstain_reference_od is not None and resolve_method(method, model=model) == "cnn":
        boost = image_boost(rgb, stains, nuclear_stains[0], reference=counterstain_reference_od)
    segmenter = load_segmenter(
        method,
        stains=stains,
        nuclear_stains=nuclear_stains,
        model=model,
        device=device,
        i0=i0,
        min_area_um2=min_area_um2,
        boost=boost,
    )
    return segmenter.segment(rgb, mpp=mpp)
