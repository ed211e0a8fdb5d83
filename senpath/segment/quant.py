"""int8 nucleus network for the CPU: calibration, quantisation-aware distillation, ONNX export
(issue 18).

Static int8 after training with ONNX Runtime's ``quantize_static`` took 2-3x less CPU than fp32
but did not keep the network's nuclei on real tissue (instances matched at IoU 0.5 against fp32:
F1 0.66-0.97 on the real Ki67 tiles, model card). Here:

- :class:`QuantUNet` is the shipped U-Net with each batch norm folded into its convolution and
  fake quantisation where ONNX Runtime will compute in integers: activations unsigned 8-bit per
  tensor (after every ReLU, pooling and concatenation), weights signed 8-bit per output channel
  (symmetric, scale max|w| / 127). The first convolution (RGB in) and the 1×1 head stay fp32, the
  layers static int8 hurt most, and so do the points named in :data:`FP32_POINTS` (the
  full-resolution level and the first half-resolution convolutions): :func:`sensitivity`
  measures what each point's rounding costs;
- :func:`calibrate_ranges` sets each activation's range from training crops (a high percentile of
  its values: :data:`RANGE_PERCENTILE`). That alone made the shipped int8 network;
- :func:`distill` can then fine-tune the weights through the fake quantisation (straight-through
  gradients) towards the fp32 network's foreground and distance maps (knowledge distillation),
  optionally with a share of the usual loss against the annotations. Measured (model card): it
  did not raise the parity with fp32, and the annotations' loss pulled it away;
- :func:`export_int8` writes ONNX with QuantizeLinear / DequantizeLinear pairs where the fake
  quantisation was and int8 weights (about 1.4 MB). ONNX Runtime fuses them into integer
  convolutions (``QLinearConv``), so it computes what :class:`QuantUNet` simulates.

``python -m senpath.segment.quant train --out RUN --steps 0`` calibrates (``--fp32`` names the points
kept in fp32, :data:`FP32_POINTS` by default; ``--minutes M`` also
distils for M minutes, on the training data of :mod:`senpath.segment.data`, as
``senpath.segment.train`` samples it); ``python -m senpath.segment.quant export --checkpoint
RUN/last.pt --out models`` writes ``nucleus_unet_int8.onnx`` next to the fp32 weights and records
it in their JSON; ``python benchmarks/int8_parity.py --record`` measures and records its parity;
``python -m senpath.segment.quant sensitivity --checkpoint RUN/last.pt`` prints what each point
still quantised costs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from senpath.segment.net import MaxBlurPool, NucleusUNet

#: Percentile of an activation's values that sets the top of its 8-bit range.
RANGE_PERCENTILE = 99.999
#: Values sampled per activation and calibration batch (the percentile is taken over them).
_SAMPLES_PER_BATCH = 200_000
#: Quantisation points kept in fp32 by default (``--fp32``): the full-resolution level (encoder,
#: the pooling after it, the last concatenation and decoder) and the first half-resolution
#: convolution, whose 8-bit rounding moved the network's maps most (:func:`sensitivity` on
#: training crops; model card).
FP32_POINTS = (
    "encoders.0", "pool_q.0", "encoders.1.c1", "encoders.1.q1", "cat_q.3", "decoders.3",
)  # fmt: skip


def fold_batch_norm(conv: Any, bn: Any) -> nn.Conv2d:
    """A convolution (with bias) equal to ``bn(conv(x))`` in eval mode."""
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True
    )
    with torch.no_grad():
        folded.weight.copy_(conv.weight.detach().float() * scale[:, None, None, None])
        bias = conv.bias.detach().float() if conv.bias is not None else 0.0
        folded.bias = nn.Parameter(
            bn.bias.detach().float() + (bias - bn.running_mean.float()) * scale
        )
    return folded


class ActivationQuant(nn.Module):
    """Unsigned 8-bit fake quantisation of one activation, per tensor.

    ``mode``: ``"off"`` passes values through, ``"observe"`` also samples them for
    :meth:`set_range`, ``"quant"`` rounds them to the 256 levels of ``scale`` / ``zero_point``
    (exported to ONNX as a QuantizeLinear / DequantizeLinear pair).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.mode = "off"
        self.keep_fp32 = False  # QuantUNet(fp32=...): always "off"
        self._samples: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            flat = x.detach().float().flatten()
            pick = torch.randint(0, flat.numel(), (min(flat.numel(), _SAMPLES_PER_BATCH),))
            self._samples.append(flat[pick])
            return x
        if self.mode == "quant":
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 255)
        return x

    def set_range(self, percentile: float = RANGE_PERCENTILE) -> None:
        """Scale and zero point from the sampled values: [low, high] percentiles, 0 included."""
        if not self._samples:
            raise RuntimeError("no values observed: run calibration batches in 'observe' mode")
        values = torch.cat(self._samples)
        low = min(0.0, float(torch.quantile(values, 1.0 - percentile / 100.0)))
        high = max(float(torch.quantile(values, percentile / 100.0)), low + 1e-6)
        scale = (high - low) / 255.0
        self.scale.fill_(scale)
        self.zero_point.fill_(int(round(-low / scale)))
        self._samples = []


class QuantConv(nn.Module):
    """A convolution whose weights are fake-quantised to int8 per output channel (when enabled)."""

    def __init__(self, conv: nn.Conv2d, *, quantize: bool = True) -> None:
        super().__init__()
        self.conv = conv
        self.quantize = quantize
        self.enabled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        if self.quantize and self.enabled:
            scale = (w.detach().abs().amax(dim=(1, 2, 3)) / 127.0).clamp_min(1e-8)
            zero = torch.zeros_like(scale, dtype=torch.int32)
            w = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)
        return F.conv2d(x, w, self.conv.bias, padding=self.conv.padding)


class _Block(nn.Module):
    def __init__(self, block: Any, *, first_fp32: bool = False) -> None:
        super().__init__()
        self.c1 = QuantConv(fold_batch_norm(block[0], block[1]), quantize=not first_fp32)
        self.q1 = ActivationQuant()
        self.c2 = QuantConv(fold_batch_norm(block[3], block[4]))
        self.q2 = ActivationQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.q1(F.relu(self.c1(x)))
        return self.q2(F.relu(self.c2(x)))


class QuantUNet(nn.Module):
    """:class:`~senpath.segment.net.NucleusUNet` with batch norm folded and fake quantisation.

    Built from a trained ``NucleusUNet`` (its weights are copied); with quantisation off
    (:meth:`set_mode` ``"off"``) it computes the same logits as the original in eval mode.

    ``fp32`` names quantisation points (:meth:`points`: activations and convolution weights, by
    module name; a name also covers the points inside it, e.g. ``"encoders.0"``) that stay in
    fp32: no QuantizeLinear / DequantizeLinear there in the export, so ONNX Runtime runs the
    convolutions on either side in floating point.
    """

    def __init__(self, unet: NucleusUNet | Any, *, fp32: Iterable[str] = ()) -> None:
        super().__init__()
        unet = unet.float().eval()
        self.config = unet.config
        self.encoders = nn.ModuleList(
            [_Block(b, first_fp32=i == 0) for i, b in enumerate(unet.encoders)]
        )
        self.decoders = nn.ModuleList([_Block(b) for b in unet.decoders])
        self.pool_q = nn.ModuleList([ActivationQuant() for _ in unet.encoders[1:]])
        self.cat_q = nn.ModuleList([ActivationQuant() for _ in unet.decoders])
        head = nn.Conv2d(unet.head.in_channels, unet.head.out_channels, 1)
        head.load_state_dict(unet.head.state_dict())
        self.head = QuantConv(head, quantize=False)
        self.pool = MaxBlurPool() if self.config.pool == "maxblur" else nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.fp32 = tuple(fp32)
        self._points = [
            name
            for name, m in self.named_modules()
            if isinstance(m, ActivationQuant) or (isinstance(m, QuantConv) and m.quantize)
        ]
        points = self._points
        for name in self.fp32:
            inside = [p for p in points if p == name or p.startswith(name + ".")]
            if not inside:
                raise ValueError(
                    f"no quantisation point {name!r}: use module names of {', '.join(points)}"
                )
            for p in inside:
                module = self.get_submodule(p)
                if isinstance(module, QuantConv):
                    module.quantize = False
                elif isinstance(module, ActivationQuant):
                    module.keep_fp32 = True

    def points(self) -> list[str]:
        """Names of the quantisation points: every activation quantiser and every convolution
        whose weights are quantised (the first and the head never are), including those
        ``fp32`` keeps in floating point."""
        return list(self._points)

    def activations(self) -> list[ActivationQuant]:
        """Every fake-quantised activation (not those kept in fp32)."""
        return [m for m in self.modules() if isinstance(m, ActivationQuant) and not m.keep_fp32]

    def set_mode(self, mode: str) -> None:
        """``"off"`` (fp32), ``"observe"`` (fp32, activations sampled) or ``"quant"`` (int8)."""
        if mode not in ("off", "observe", "quant"):
            raise ValueError(f"unknown mode {mode!r}: use 'off', 'observe' or 'quant'")
        for act in self.activations():
            act.mode = mode
        for conv in self.modules():
            if isinstance(conv, QuantConv):
                conv.enabled = mode == "quant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2, H, W)`` for RGB ``(B, 3, H, W)`` in [0, 1], as ``NucleusUNet``."""
        x = x * 2.0 - 1.0
        skips: list[torch.Tensor] = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = self.pool_q[i - 1](self.pool(x))
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        for dec, cat_q in zip(self.decoders, self.cat_q, strict=True):
            x = dec(cat_q(torch.cat([self.up(x), skips.pop()], dim=1)))
        return self.head(x)


@torch.no_grad()
def calibrate_ranges(
    qnet: QuantUNet, batches: Iterable[torch.Tensor], *, percentile: float = RANGE_PERCENTILE
) -> None:
    """Set every activation's 8-bit range from ``batches`` (``(B, 3, H, W)`` in [0, 1]) and
    switch ``qnet`` to ``"quant"``."""
    was_training = qnet.training
    qnet.eval()
    qnet.set_mode("observe")
    for batch in batches:
        qnet(batch.float())
    for act in qnet.activations():
        act.set_range(percentile)
    qnet.set_mode("quant")
    qnet.train(was_training)


def export_int8(qnet: QuantUNet) -> bytes:
    """ONNX of ``qnet`` in ``"quant"`` mode: QuantizeLinear / DequantizeLinear pairs, int8 weights.

    The TorchScript exporter writes the weights in fp32 behind their fake quantisation; ONNX
    Runtime's basic (portable) graph optimisation then folds those into int8 initializers.
    """
    import onnxruntime as ort

    from senpath.segment.runtime import export_onnx

    qnet = qnet.eval()
    qnet.set_mode("quant")
    network = export_onnx(qnet, stride=qnet.config.stride)
    with tempfile.TemporaryDirectory(prefix="senpath-int8-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "int8.onnx")
        ort.InferenceSession(network, options, providers=["CPUExecutionProvider"])
        return (Path(tmp) / "int8.onnx").read_bytes()


@torch.no_grad()
def sensitivity(
    qnet: QuantUNet, teacher: nn.Module, images: Iterable[torch.Tensor]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """How much each quantisation point of a calibrated ``qnet`` moves its output from
    ``teacher``'s (fp32) on ``images`` (``(B, 3, H, W)`` in [0, 1]).

    Returns ``(all_points, per_point)``: ``mse`` (of the sigmoid maps, x 1e4) and ``flips`` (share
    of pixels, x 1e3, on the other side of 0.5 in the foreground or the distance map) with every
    point quantised, and per point the same two figures' *reduction* when that point alone stays
    in fp32 (the others quantised). Larger: the point's rounding costs more.
    """
    qnet = qnet.eval()
    batches = [(x.float(), torch.sigmoid(teacher(x.float()))) for x in images]

    def error() -> dict[str, float]:
        mse = flips = 0.0
        for x, ref in batches:
            out = torch.sigmoid(qnet(x))
            mse += float(((out - ref) ** 2).mean())
            flips += float(((out > 0.5) != (ref > 0.5)).float().mean(dim=(0, 2, 3)).sum())
        return {"mse": 1e4 * mse / len(batches), "flips": 1e3 * flips / len(batches)}

    base = error()
    per_point: dict[str, dict[str, float]] = {}
    for name in qnet.points():
        module = qnet.get_submodule(name)
        if isinstance(module, ActivationQuant):
            if module.keep_fp32:
                continue
            module.mode = "off"
            e = error()
            module.mode = "quant"
        elif isinstance(module, QuantConv):
            if not module.quantize:
                continue
            module.quantize = False
            e = error()
            module.quantize = True
        else:
            continue
        per_point[name] = {k: base[k] - e[k] for k in base}
    return base, per_point


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE of the student's foreground logits against the teacher's probabilities, plus 2 × MSE
    of the sigmoid distance maps (the weights of ``segmentation_loss``)."""
    bce = F.binary_cross_entropy_with_logits(student[:, 0], torch.sigmoid(teacher[:, 0]))
    mse = F.mse_loss(torch.sigmoid(student[:, 1]), torch.sigmoid(teacher[:, 1]))
    return bce + 2.0 * mse, {"kd_bce": float(bce.detach()), "kd_mse": float(mse.detach())}


def distill(args: argparse.Namespace) -> Path:
    """Calibration, then quantisation-aware distillation, of the shipped (or ``--model``) weights;
    returns the last checkpoint (the student's state dict and the run's step). ``--resume``
    continues a run for ``--minutes`` more (or up to ``--steps``) with a fresh optimiser."""
    from senpath.segment import data as D
    from senpath.segment.train import (
        _atomic_save,
        _Batches,
        _log,
        learning_rate,
        segmentation_loss,
    )
    from senpath.segment.weights import load_pretrained

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    teacher, spec = load_pretrained(args.model)
    teacher = teacher.float().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    state = None
    if args.resume is not None:
        state = torch.load(args.resume, map_location="cpu", weights_only=True)
    # a resumed run keeps the fp32 points it was started with
    fp32 = list(state.get("fp32", [])) if state else [n for n in args.fp32.split(",") if n]
    student = QuantUNet(teacher, fp32=fp32)
    sources = D.training_sources(args.data_root, synthetic=args.synthetic_share > 0)
    sampler = D.CropSampler(
        sources, D.source_weights(args.synthetic_share), crop_size=args.crop_size,
        seed=args.seed, pale_share=args.pale_share, pale_floor=args.pale_floor,
        pale_blur=args.pale_blur,
    )  # fmt: skip
    batches = _Batches(sampler, args.batch_size, workers=0)
    step, elapsed = 0, 0.0
    if state is not None:
        student.load_state_dict(state["student"])
        student.set_mode("quant")
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        _log(log, {"event": "resume", "from": str(args.resume), "step": step})
    else:
        calibrate_ranges(
            student,
            (torch.from_numpy(batches.get(i, None)[0]) for i in range(args.calib_batches)),
            percentile=args.percentile,
        )
        _log(log, {"event": "start", "teacher_sha256": spec["sha256"], "fp32": fp32,
                   "argv": sys.argv})  # fmt: skip
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    total = args.steps
    t_start = time.perf_counter() - elapsed
    running: dict[str, float] = {}

    def checkpoint() -> Path:
        path = out / "last.pt"
        _atomic_save({"student": student.state_dict(), "step": step, "total_steps": total,
                      "elapsed_s": time.perf_counter() - t_start,
                      "teacher_sha256": spec["sha256"], "fp32": fp32}, path)  # fmt: skip
        return path

    first = step
    while total is None or step < total:
        if stop["now"]:
            break
        lr = learning_rate(step, total or 10**9, peak=args.lr, warmup=50)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batches.get(args.calib_batches + step, total)
        xb, yb = torch.from_numpy(x), torch.from_numpy(y)
        with torch.no_grad():
            target = teacher(xb)
        logits = student(xb)
        kd, parts = distillation_loss(logits, target)
        gt, _ = segmentation_loss(logits, yb)
        loss = kd + args.gt_weight * gt
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        for k, v in {"loss": float(loss.detach()), "gt": float(gt.detach()), **parts}.items():
            running[k] = running.get(k, 0.0) + v
        if total is None and step - first >= 15:
            per_step = (time.perf_counter() - t_start - elapsed) / (step - first)
            total = step + int(args.minutes * 60 * 0.97 / per_step)
        if step % 50 == 0:
            _log(log, {"step": step, "lr": lr, "elapsed_s": round(time.perf_counter() - t_start, 1),
                       **{k: round(v / 50, 5) for k, v in running.items()}})  # fmt: skip
            running = {}
        if step % 250 == 0:
            checkpoint()
    path = checkpoint()
    _log(log, {"event": "stop", "step": step, "elapsed_s": round(time.perf_counter() - t_start, 1)})
    return path


def load_student(checkpoint: str | os.PathLike[str], model: str | None = None) -> QuantUNet:
    """The :class:`QuantUNet` of a :func:`distill` checkpoint (built on the ``model`` weights).

    Raises
    ------
    senpath.segment.weights.WeightsIntegrityError
        When the checkpoint was made from other fp32 weights than ``model``'s.
    """
    from senpath.segment.weights import WeightsIntegrityError, load_pretrained

    teacher, spec = load_pretrained(model)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    made_from = state.get("teacher_sha256", spec["sha256"])
    if made_from != spec["sha256"]:
        raise WeightsIntegrityError(
            f"{checkpoint} was made from the weights {str(made_from)[:12]}…, not "
            f"{spec['sha256'][:12]}… ({spec['weights_path']}): pass their model with --model"
        )
    student = QuantUNet(teacher, fp32=state.get("fp32", ()))
    student.load_state_dict(state.get("student", state))
    student.set_mode("quant")
    return student.eval()


def _print_sensitivity(args: argparse.Namespace) -> int:
    from senpath.segment import data as D
    from senpath.segment.train import _Batches
    from senpath.segment.weights import load_pretrained

    torch.set_num_threads(1)
    teacher, _ = load_pretrained(args.model)
    student = load_student(args.checkpoint, args.model)
    sampler = D.CropSampler(
        D.training_sources(args.data_root, synthetic=True), D.source_weights(0.1),
        crop_size=256, seed=args.seed, pale_share=0.3, pale_floor=0.12, pale_blur=0.5,
    )  # fmt: skip
    batches = _Batches(sampler, 8, workers=0)
    images = [torch.from_numpy(batches.get(i, None)[0]) for i in range(args.batches)]
    base, per_point = sensitivity(student, teacher.float().eval(), images)
    print(f"every point quantised: mse x 1e4 {base['mse']:.3f}, flips x 1e3 {base['flips']:.3f}"
          f" (kept in fp32: {', '.join(student.fp32) or 'none'})\n")  # fmt: skip
    print("| point | mse reduction in fp32 | flips reduction |")
    print("|---|---:|---:|")
    for name, r in sorted(per_point.items(), key=lambda kv: -kv[1]["mse"]):
        print(f"| {name} | {r['mse']:.3f} | {r['flips']:.3f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``train`` (calibrate, distil), ``sensitivity`` (what each quantisation point costs) or
    ``export`` (write the int8 ONNX next to the weights)."""
    from senpath.segment.data import DEFAULT_DATA_ROOT

    p = argparse.ArgumentParser(prog="python -m senpath.segment.quant", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="calibrate (--steps 0), then distil the fp32 network")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--model", default=None, help="fp32 model JSON or folder (default: shipped)")
    t.add_argument("--minutes", type=float, default=60.0)
    t.add_argument("--steps", type=int, default=None,
                   help="fixed step count (over --minutes); 0: calibrate only")  # fmt: skip
    t.add_argument("--resume", type=Path, default=None)
    t.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--gt-weight", type=float, default=0.0,
                   help="weight of the loss against the annotations (the distillation loss weighs 1)")  # fmt: skip
    t.add_argument("--seed", type=int, default=40)
    t.add_argument("--calib-batches", type=int, default=24)
    t.add_argument("--percentile", type=float, default=RANGE_PERCENTILE,
                   help="of an activation's values: the top of its 8-bit range")  # fmt: skip
    t.add_argument("--fp32", default=",".join(FP32_POINTS),
                   help="quantisation points kept in fp32, comma-separated module names "
                        "(QuantUNet.points(); 'encoders.0' covers the points inside it; "
                        "'' for none)")  # fmt: skip
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--crop-size", type=int, default=128)
    t.add_argument("--synthetic-share", type=float, default=0.1)
    t.add_argument("--pale-share", type=float, default=0.3)
    t.add_argument("--pale-floor", type=float, default=0.12)
    t.add_argument("--pale-blur", type=float, default=0.5)
    t.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("sensitivity", help="what each quantisation point's rounding costs")
    s.add_argument("--checkpoint", type=Path, required=True, help="a train run's last.pt")
    s.add_argument("--model", default=None, help="fp32 model JSON or folder (default: shipped)")
    s.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    s.add_argument("--seed", type=int, default=41, help="of the training crops (not calibration's)")
    s.add_argument("--batches", type=int, default=6, help="batches of 8 training crops of 256²")
    e = sub.add_parser("export", help="write nucleus_unet_int8.onnx and record it in the JSON")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--model", default=None, help="fp32 model JSON or folder (default: shipped)")
    e.add_argument("--out", type=Path, required=True, help="folder of the fp32 model JSON")
    args = p.parse_args(argv)
    if args.command == "train":
        print(distill(args))
        return 0
    if args.command == "sensitivity":
        return _print_sensitivity(args)
    from senpath.segment.weights import record_int8

    student = load_student(args.checkpoint, args.model)
    path = record_int8(args.out, export_int8(student), source=str(args.checkpoint))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
