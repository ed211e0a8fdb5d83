"""Nucleus instance segmentation: tile batches → network maps → instances.

Two levels:

- :class:`NucleusSegmenter` loads the weights once and exposes the two halves the whole-slide engine
  needs: :meth:`~NucleusSegmenter.predict_maps` (a batch of RGB tiles at 0.5 µm/px → foreground and
  distance maps) and :meth:`~NucleusSegmenter.instances` (maps → labels).
- :func:`predict_instances` segments one in-memory image of any size and resolution: resample to
  0.5 µm/px, run the network once over it (an analysis tile) or, for a larger image, cut overlapping
  pieces, batch them, stitch the maps (each output pixel comes from exactly one piece, the one whose
  core holds it, so the result does not depend on batch order), and
  post-process once: on the input grid for an image finer than 0.5 µm/px (maps upsampled bilinearly,
  so outlines are drawn at its own resolution), else at 0.5 µm/px with the labels mapped back by
  nearest-neighbour resampling.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from senpath.segment.postprocess import PostprocessConfig, maps_to_instances
from senpath.segment.resample import NETWORK_MPP, resample_labels, resample_rgb, shape_at_mpp
from senpath.tiling import halo_px

if TYPE_CHECKING:
    import torch

#: Precision choices of :class:`NucleusSegmenter`.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "onnx-fp32", "onnx-int8")
#: Relative mpp difference below which an image is used as is (no resampling).
MPP_TOLERANCE = 0.02
#: Context (µm) around the core of each network tile: every map pixel is computed with at least this
#: much image on each side (32 px at 0.5 µm/px). It serves the network's receptive field, not the
#: ownership of nuclei: the maps are stitched pixel by pixel and post-processed once, so a nucleus
#: need not fit in it (the analysis tiles' halo, ``AnalysisConfig.halo_um``, holds whole nuclei).
NETWORK_HALO_UM = 16.0
#: Largest image side (px at the network's grid, context margin included) run as one network pass.
#: An analysis tile (512 µm + 2 x 24 µm halo at 0.5 µm/px, 1120 px, + 2 x 32 px context) fits; the
#: activations of a 2048² pass take ~2 GB in fp32, so larger images go in pieces of this side.
MAX_PASS_SIDE = 2048


def precision_from_env() -> str:
    """The CPU precision ``$SENPATH_PRECISION`` sets (lower case), ``"auto"`` when unset.

    Raises
    ------
    ValueError
        When it is not one of :data:`PRECISIONS`.
    """
    from senpath.segment.runtime import PRECISION_ENV

    precision = os.environ.get(PRECISION_ENV, "").strip().lower() or "auto"
    if precision not in PRECISIONS:
        raise ValueError(
            f"{PRECISION_ENV}={precision!r} is not a precision: use one of {', '.join(PRECISIONS)}"
        )
    return precision


class NucleusSegmenter:
    """A loaded nucleus network plus its post-processing, ready for tile batches.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`~senpath.segment.net.NucleusUNet` (any module with a ``config.stride``).
    spec : dict, optional
        Model description (``postprocess`` thresholds, ``mpp``, ``sha256``); defaults otherwise.
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    precision : {"auto", "fp32", "bf16", "fp16", "onnx-fp32", "onnx-int8"}
        ``"auto"``: fp16 autocast on CUDA, fp32 on MPS; on CPU ``$SENPATH_PRECISION`` when set,
        else the fastest of fp32 eager, bf16 autocast + channels_last, ONNX Runtime fp32 and (when
        the model has one that passed its parity record) the int8 network in ONNX Runtime that
        keeps the nuclei of fp32, measured once per machine and cached
        (:func:`senpath.segment.runtime.choose_cpu_precision`). ``"onnx-int8"``: the model's
        int8 network (:mod:`senpath.segment.quant`), in ONNX Runtime.
    flips : test-time flips: every batch is run as it is and flipped left-right, up-down and both,
        and the four maps (each flipped back) averaged: better outlines for 4x the network's work
        (model card, "Test-time flips"); the precision ``auto`` chooses is measured without them.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        spec: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        flips: bool = False,
    ) -> None:
        import torch

        from senpath.segment.device import resolve_device

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.spec: dict[str, Any] = dict(spec or {})
        self.device = resolve_device(device)
        model = model.eval().to(self.device)
        if precision == "auto" and self.device.type == "cpu":
            from senpath.segment.runtime import choose_cpu_precision

            precision = precision_from_env()
            if precision == "auto":
                spec_ = self.spec
                precision = choose_cpu_precision(
                    lambda p: NucleusSegmenter(model, spec=spec_, device="cpu", precision=p), spec_
                )
        if precision == "auto":
            precision = {"cuda": "fp16"}.get(self.device.type, "fp32")
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("fp16 is for CUDA; on CPU use precision='bf16' or 'fp32'")
        if precision.startswith("onnx-") and self.device.type != "cpu":
            raise ValueError(f"{precision} runs on the CPU, not {self.device.type}: use 'auto'")
        self.precision = precision
        self.flips = bool(flips)
        self.mpp = float(self.spec.get("mpp", NETWORK_MPP))
        post = self.spec.get("postprocess") or {}
        self.postprocess = PostprocessConfig(**post)
        self.stride = int(model.config.stride)  # type: ignore[union-attr,arg-type]
        if self.device.type == "cpu" and precision == "bf16":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self._onnx: Any = None
        if precision.startswith("onnx-"):
            from senpath.segment.runtime import OnnxNetwork

            network = None
            if precision == "onnx-int8":
                from senpath.segment.weights import int8_network

                network = int8_network(self.spec)
            self._onnx = OnnxNetwork(model, stride=self.stride, network=network)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        device: str | torch.device = "auto",
        *,
        precision: str = "auto",
        flips: bool = False,
        verify: bool = True,
    ) -> NucleusSegmenter:
        """Load the shipped weights (or the model JSON/weights at ``path``), sha256-verified."""
        from senpath.segment.weights import load_pretrained

        model, spec = load_pretrained(path, verify=verify)
        return cls(model, spec=spec, device=device, precision=precision, flips=flips)

    # ------------------------------------------------------------------ network

    def predict_maps(self, batch: NDArray[Any] | torch.Tensor) -> NDArray[np.float32]:
        """Foreground and distance maps for a batch of RGB tiles at ``self.mpp`` (0.5 µm/px).

        Parameters
        ----------
        batch : (B, H, W, 3) uint8 array, or (B, 3, H, W) float tensor in [0, 1]
            Tiles of any size; they are reflect-padded to a multiple of the network stride and the
            maps cropped back.

        Returns
        -------
        (B, 2, H, W) float32
            Channel 0: foreground probability; channel 1: normalised distance to the nucleus edge.
            With :attr:`flips`, the mean of the maps of the (padded) batch and its three flips.
        """
        import torch
        import torch.nn.functional as F

        if isinstance(batch, np.ndarray):
            if batch.ndim != 4 or batch.shape[-1] != 3:
                raise ValueError(
                    f"expected (B, H, W, 3) RGB tiles, got an array of shape {batch.shape}"
                )
            scale = 255.0 if batch.dtype == np.uint8 else 1.0
            pixels = torch.from_numpy(np.ascontiguousarray(batch))
            if self.device.type == "cuda":
                # uint8 over the bus (a quarter of float32), from pinned memory so the copy is
                # asynchronous; converted on the card
                pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            x = pixels.permute(0, 3, 1, 2).float() / scale
        else:
            x = batch.float()
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        x = x.to(self.device)
        with torch.inference_mode():
            if not self.flips:
                maps = self._network(x)
            else:
                # one flip at a time: the memory of a plain batch; each flipped back, then averaged
                maps = self._network(x)
                for dims in ((-1,), (-2,), (-2, -1)):
                    maps += torch.flip(self._network(torch.flip(x, dims)), dims)
                maps /= 4
        return maps[:, :, :h, :w].cpu().numpy().astype(np.float32, copy=False)

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid maps ``(B, 2, H, W)`` float32 of a padded ``(B, 3, H, W)`` batch on the device."""
        import torch

        if self.device.type == "cpu" and self.precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
        if self._onnx is not None:
            logits = self._onnx(x)
        elif self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                logits = self.model(x)
        else:
            logits = self.model(x)
        return torch.sigmoid(logits.float())

    @property
    def maps_to_labels(self) -> MapsToLabels:
        """This network's post-processing alone (small and picklable: worker processes run it)."""
        return MapsToLabels(self.mpp, self.postprocess)

    def instances(self, maps: NDArray[np.floating]) -> NDArray[np.int32]:
        """Nucleus labels from maps (see :meth:`MapsToLabels.instances`).

        Parameters
        ----------
        maps : (2, H, W) or (B, 2, H, W) float
            Output of :meth:`predict_maps`.

        Returns
        -------
        (H, W) or (B, H, W) int32
        """
        return self.maps_to_labels.instances(maps)

    # ------------------------------------------------------------------ images

    def predict_image_maps(
        self,
        rgb: NDArray[np.uint8],
        *,
        batch_size: int = 8,
        tile_size: int | None = None,
        halo: int | None = None,
    ) -> NDArray[np.float32]:
        """Maps ``(2, Y, X)`` for an image already at ``self.mpp``.

        Parameters
        ----------
        rgb : (Y, X, 3) uint8 at ``self.mpp`` µm/px.
        batch_size : pieces per network call (tiled path only).
        tile_size : side of the overlapping pieces in px, halo included, a multiple of the stride.
            ``None`` (the default): one network pass over the whole image when its side plus the
            context margin is at most :data:`MAX_PASS_SIDE`, else pieces of that side.
        halo : context margin per side in px; default :data:`NETWORK_HALO_UM` at 0.5 µm/px (32 px).

        Returns
        -------
        (2, Y, X) float32

        Notes
        -----
        One pass: the image is reflect-padded by ``halo`` on every side (the context a piece's
        border gets in the tiled path) and run once; an analysis tile already carries its own
        halo, so cutting it into 256² pieces fed the network 2.25x the pixels for the same maps
        (issue 18). Tiled: each piece keeps only its core (``tile_size - 2 * halo``), so every
        output pixel comes from exactly one piece.
        """
        if halo is None:
            # in px of the network grid as trained (0.5 µm/px), whatever the model's own mpp
            halo = halo_px(NETWORK_HALO_UM, NETWORK_MPP)
        if tile_size is None:
            if max(rgb.shape[:2]) + 2 * halo <= MAX_PASS_SIDE:
                return self._one_pass_maps(rgb, halo)
            tile_size = MAX_PASS_SIDE
        if tile_size % self.stride:
            raise ValueError(f"tile_size must be a multiple of {self.stride}, got {tile_size}")
        core = tile_size - 2 * halo
        if halo < 0 or core <= 0:
            raise ValueError(
                f"halo={halo} leaves no core in tile_size={tile_size}: use 0 <= halo < tile_size / 2"
            )
        y, x = rgb.shape[:2]
        ny, nx = -(-y // core), -(-x // core)
        pad_y, pad_x = ny * core - y + halo, nx * core - x + halo
        padded = np.pad(rgb, ((halo, pad_y), (halo, pad_x), (0, 0)), mode="reflect")
        out = np.zeros((2, ny * core, nx * core), np.float32)
        origins = [(i * core, j * core) for i in range(ny) for j in range(nx)]
        for chunk in _chunks(origins, batch_size):
            tiles = np.stack([padded[oy : oy + tile_size, ox : ox + tile_size] for oy, ox in chunk])
            maps = self.predict_maps(tiles)
            for (oy, ox), m in zip(chunk, maps, strict=True):
                out[:, oy : oy + core, ox : ox + core] = m[
                    :, halo : halo + core, halo : halo + core
                ]
        return out[:, :y, :x]

    def _one_pass_maps(self, rgb: NDArray[np.uint8], halo: int) -> NDArray[np.float32]:
        return self.predict_batch_maps([rgb], halo=halo)[0]

    def predict_batch_maps(
        self, images: Sequence[NDArray[np.uint8]], *, halo: int | Sequence[int] | None = None
    ) -> list[NDArray[np.float32]]:
        """Maps ``(2, Y, X)`` of several images at ``self.mpp``, as :meth:`predict_image_maps` gives.

        Images of one shape (and margin) that fit one pass (analysis tiles: all but those on the
        slide's edge) go through the network together, one batch (what a GPU needs to be kept
        busy); the others one by one.

        Parameters
        ----------
        images : sequence of (Y, X, 3) uint8 at ``self.mpp`` µm/px.
        halo : context margin per side in px, one for all images or one per image; default
            :data:`NETWORK_HALO_UM` at 0.5 µm/px.

        Returns
        -------
        list of (2, Y, X) float32, in the order of ``images``.
        """
        default = halo_px(NETWORK_HALO_UM, NETWORK_MPP)
        if halo is None or isinstance(halo, int | np.integer):
            halos = [default if halo is None else int(halo)] * len(images)
        else:
            halos = [int(h) for h in halo]
            if len(halos) != len(images):
                raise ValueError(f"{len(halos)} halos for {len(images)} images")
        out: list[NDArray[np.float32] | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, (rgb, h) in enumerate(zip(images, halos, strict=True)):
            if max(rgb.shape[:2]) + 2 * h <= MAX_PASS_SIDE:
                groups.setdefault((*rgb.shape, h), []).append(k)
            else:
                out[k] = self.predict_image_maps(rgb, halo=h)
        for key, members in groups.items():
            y, x, margin = key[0], key[1], key[-1]
            pad = ((margin, margin), (margin, margin), (0, 0))
            batch = np.stack([np.pad(images[k], pad, mode="reflect") for k in members])
            maps = self.predict_maps(batch)
            for k, m in zip(members, maps, strict=True):
                out[k] = np.ascontiguousarray(m[:, margin : margin + y, margin : margin + x])
        return [m for m in out if m is not None]


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), max(1, n)):
        yield items[i : i + n]


_CACHE: dict[tuple[str, str, str, bool], NucleusSegmenter] = {}


def cached_segmenter(
    path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    flips: bool = False,
) -> NucleusSegmenter:
    """A segmenter loaded once per process (and per device, precision and test-time flips): the
    shipped model, or the model JSON (or folder) at ``path``. Tasks on a dask worker share it, so
    weights load once per worker."""
    key = ("shipped" if path is None else str(Path(path).resolve()), str(device), precision, flips)
    if key not in _CACHE:
        _CACHE[key] = NucleusSegmenter.from_pretrained(
            path, device=device, precision=precision, flips=flips
        )
    return _CACHE[key]


def predict_instances(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    model: NucleusSegmenter | None = None,
    device: str = "auto",
    batch_size: int = 8,
    tile_size: int | None = None,
    halo: int | None = None,
) -> NDArray[np.int32]:
    """Segment nuclei in an RGB image of any size.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
        Brightfield image (any stain combination the model was trained for).
    mpp : float
        Resolution of ``rgb`` in µm/px; the image is resampled to the model's 0.5 µm/px.
    model : NucleusSegmenter, optional
        A loaded segmenter; the shipped model (loaded once, cached) when omitted.
    device : str
        Used only when ``model`` is omitted.
    batch_size : int
        Tiles per network call.
    tile_size : int, optional
        Side of overlapping pieces in px at 0.5 µm/px, halo included, a multiple of 16; ``None``:
        one network pass when the image fits :data:`MAX_PASS_SIDE` (see
        :meth:`NucleusSegmenter.predict_image_maps`).
    halo : int, optional
        Context margin per side in px at 0.5 µm/px; default :data:`NETWORK_HALO_UM` (16 µm = 32 px).

    Returns
    -------
    (Y, X) int32
        Nucleus instances on the input grid, numbered 1..N; 0 = background.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"expected a (Y, X, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}; drop an alpha "
            "channel with rgb[..., :3] and convert with skimage.util.img_as_ubyte"
        )
    if not mpp or mpp <= 0:
        raise ValueError(f"mpp must be a positive resolution in µm/px, got {mpp!r}")
    seg = model if model is not None else cached_segmenter(None, device)
    work = at_network_mpp(seg, rgb, mpp=mpp)
    maps = seg.predict_image_maps(work, batch_size=batch_size, tile_size=tile_size, halo=halo)
    return instances_on_grid(seg, maps, rgb.shape[:2], mpp=mpp)


def at_network_mpp(
    seg: NucleusSegmenter, rgb: NDArray[np.uint8], *, mpp: float
) -> NDArray[np.uint8]:
    """``rgb`` (Y, X, 3) uint8 at ``mpp`` µm/px resampled to the network's grid (as is when the
    resolutions differ by less than :data:`MPP_TOLERANCE`)."""
    if abs(mpp / seg.mpp - 1.0) > MPP_TOLERANCE:
        return resample_rgb(rgb, shape_at_mpp(rgb.shape, mpp, seg.mpp))
    return rgb


def instances_on_grid(
    seg: NucleusSegmenter, maps: NDArray[np.floating], shape: tuple[int, int], *, mpp: float
) -> NDArray[np.int32]:
    """Nucleus labels on an image grid of ``shape`` at ``mpp`` from maps at the network's
    resolution (:meth:`MapsToLabels.on_grid` of ``seg``'s post-processing)."""
    return seg.maps_to_labels.on_grid(maps, shape, mpp=mpp)


@dataclass(frozen=True)
class MapsToLabels:
    """Network maps to nucleus labels, without the network: the watershed half of a segmenter.

    Small and picklable, so the post-processing of tiles can run in worker processes while the
    network runs elsewhere (:func:`senpath.tile_engine.analyze_tiles`, ``post_workers``).

    Attributes
    ----------
    mpp : the network's resolution (µm/px) the maps are at.
    postprocess : the model's post-processing thresholds.
    """

    mpp: float
    postprocess: PostprocessConfig

    def instances(self, maps: NDArray[np.floating]) -> NDArray[np.int32]:
        """Labels of ``(2, H, W)`` maps, ``(H, W)`` int32 (or of ``(B, 2, H, W)``, ``(B, H, W)``)."""
        if maps.ndim == 3:
            return maps_to_instances(maps[0], maps[1], mpp=self.mpp, config=self.postprocess)
        if maps.ndim == 4:
            return np.stack([self.instances(m) for m in maps])
        raise ValueError(f"expected maps of shape (2, H, W) or (B, 2, H, W), got {maps.shape}")

    def on_grid(
        self, maps: NDArray[np.floating], shape: tuple[int, int], *, mpp: float
    ) -> NDArray[np.int32]:
        """Nucleus labels on an image grid of ``shape`` at ``mpp`` µm/px.

        A finer grid (e.g. 0.25 µm/px, a 40x scan) gets the maps upsampled bilinearly and the
        instances drawn there: outlines at the image's own resolution instead of 2x2 blocks. On the
        held-out real sets at 0.25-0.38 µm/px this raised pooled F1 at IoU 0.5 by 0.008-0.014 and
        PQ by 0.009-0.011 with the same weights (``python -m senpath.segment.export``, see the
        model card). The grid of the maps, or a coarser one, gets the labels drawn at the
        network's resolution and mapped back by nearest-neighbour resampling.
        """
        import cv2

        if tuple(maps.shape[-2:]) == tuple(shape):
            return self.instances(maps)
        if mpp < self.mpp:
            fg, dist = (
                np.asarray(
                    cv2.resize(
                        np.ascontiguousarray(c), shape[::-1], interpolation=cv2.INTER_LINEAR
                    ),
                    np.float32,
                )
                for c in maps
            )
            return maps_to_instances(fg, dist, mpp=mpp, config=self.postprocess)
        return resample_labels(self.instances(maps), shape)
