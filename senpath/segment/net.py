"""Compact U-Net for nucleus instance segmentation at a fixed 0.5 µm/px.

The network predicts two maps per pixel, the targets that a marker-controlled watershed needs
(see :mod:`senpath.segment.postprocess`):

- channel 0: nucleus foreground logit (sigmoid → probability that the pixel belongs to a nucleus);
- channel 1: normalised distance-to-boundary logit (sigmoid → distance from the pixel to the edge of
  its nucleus divided by the largest such distance in that nucleus, 0 outside nuclei, 1 at the centre).

The distance map peaks once per nucleus, also where nuclei touch, so thresholding it gives one seed
per nucleus and the watershed grows the seeds back to the foreground mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Output channels, in order.
OUTPUT_CHANNELS: tuple[str, ...] = ("foreground", "distance")


@dataclass(frozen=True)
class NetConfig:
    """Architecture of :class:`NucleusUNet` (saved in the model JSON next to the weights).

    Attributes
    ----------
    widths : tuple of int
        Feature channels per resolution level, from full resolution to the bottleneck; each level
        after the first halves the resolution, so the input side must be a multiple of
        ``2 ** (len(widths) - 1)``.
    in_channels : int
        Input channels (RGB: 3).
    out_channels : int
        Output maps (foreground, distance: 2).
    pool : {"max", "maxblur"}
        Downsampling between levels. ``"max"``: 2×2 max pooling at stride 2 (v1-v4). ``"maxblur"``:
        2×2 max pooling at stride 1, then a [1, 2, 1] binomial low-pass at stride 2 (the
        anti-aliased "MaxBlurPool" of Zhang, *Making convolutional networks shift-invariant
        again*, ICML 2019): a nucleus's maps then depend far less on where the tile grid falls.
    stem : int
        0 (v1-v5): the U-Net's first level works at full resolution. ``k > 0``: a thin stem of
        ``k`` channels works at full resolution (one block in, one block out before the head) and
        the whole U-Net, ``widths[0]`` included, at half resolution. The full-resolution layers
        cost most of a thin network's time, so a stem buys wider, deeper levels and twice the
        context for the same work per pixel.
    """

    widths: tuple[int, ...] = (16, 32, 64, 128, 160)
    in_channels: int = 3
    out_channels: int = 2
    pool: str = "max"
    stem: int = 0

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}: use one of {', '.join(POOLS)}")
        if self.stem < 0:
            raise ValueError(f"stem must be 0 (none) or a channel count, got {self.stem}")

    @property
    def stride(self) -> int:
        """Factor the input height and width must be divisible by."""
        return 2 ** (len(self.widths) - 1 + (1 if self.stem else 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (``pool`` and ``stem`` left out at their defaults, ``"max"``
        and 0, so the descriptions of earlier models read the same)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        if d["pool"] == "max":
            del d["pool"]
        if d["stem"] == 0:
            del d["stem"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``TypeError``."""
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
        return cls(**d)


class MaxBlurPool(nn.Module):
    """2×2 max at stride 1, then the [1, 2, 1] binomial low-pass at stride 2 (halves H and W).

    The low-pass is two 2×2 box filters (average pooling at stride 1, then at stride 2); at the
    edges it averages the taps inside the map. Made cheap for the CPU, measured on one core over
    the four pooling layers of a 1024² image in a bf16 autocast pass (fp32 channels-last input):
    torch's stride-1 ``max_pool2d`` and edge padding took 233 ms against 39 ms for plain max
    pooling; the maximum of shifted views, no padding, and the autocast dtype (bf16) from the
    start take 107 ms. The ONNX graph keeps ``MaxPool``, which ONNX Runtime runs well.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H / 2, W / 2)`` for even ``H`` and ``W``."""
        if torch.onnx.is_in_onnx_export():
            x = F.max_pool2d(x, 2, stride=1)
        else:
            device = x.device.type
            if torch.is_autocast_enabled(device):  # the next convolution casts to it anyway
                x = x.to(torch.get_autocast_dtype(device))
            x = torch.maximum(x[..., :-1], x[..., 1:])
            x = torch.maximum(x[..., :-1, :], x[..., 1:, :])
        x = F.avg_pool2d(x, 2, stride=1, padding=1, count_include_pad=False)
        return F.avg_pool2d(x, 2, stride=2)


#: Values of :attr:`NetConfig.pool`.
POOLS: tuple[str, ...] = ("max", "maxblur")


def _pool(name: str) -> nn.Module:
    return nn.MaxPool2d(2) if name == "max" else MaxBlurPool()


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class NucleusUNet(nn.Module):
    """U-Net with bilinear upsampling and batch-normalised 3×3 convolutions.

    Parameters
    ----------
    config : NetConfig, optional
        Architecture; the default has about 0.9 M parameters.

    Notes
    -----
    ``forward`` takes ``(B, 3, H, W)`` float RGB scaled to [0, 1] (``H`` and ``W`` multiples of
    ``config.stride``) and returns ``(B, 2, H, W)`` logits in the order of :data:`OUTPUT_CHANNELS`.
    """

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetConfig()
        w = self.config.widths
        stem = self.config.stem
        self.encoders = nn.ModuleList()
        cin = self.config.in_channels
        if stem:
            self.stem_in = _block(cin, stem)
            self.stem_out = _block(w[0] + stem, stem)
            cin = stem
        for cout in w:
            self.encoders.append(_block(cin, cout))
            cin = cout
        self.decoders = nn.ModuleList()
        for level in range(len(w) - 2, -1, -1):
            self.decoders.append(_block(w[level + 1] + w[level], w[level]))
        self.head = nn.Conv2d(stem or w[0], self.config.out_channels, 1)
        self.pool = _pool(self.config.pool)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for RGB input ``(B, 3, H, W)`` in [0, 1]."""
        x = x * 2.0 - 1.0
        stem = None
        if self.config.stem:
            stem = self.stem_in(x)
            x = self.pool(stem)
        skips: list[torch.Tensor] = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x)
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        for dec in self.decoders:
            x = dec(torch.cat([self.up(x), skips.pop()], dim=1))
        if stem is not None:
            x = self.stem_out(torch.cat([self.up(x), stem], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(config: NetConfig | Mapping[str, Any] | None = None) -> NucleusUNet:
    """Create a :class:`NucleusUNet` from a config or its dictionary form."""
    if config is None or isinstance(config, NetConfig):
        return NucleusUNet(config)
    return NucleusUNet(NetConfig.from_dict(config))


__all__ = [
    "OUTPUT_CHANNELS",
    "MaxBlurPool",
    "NetConfig",
    "NucleusUNet",
    "build_model",
    "count_parameters",
]
