"""ONNX Runtime static int8 for the nucleus network: speed and parity (issue 18; measured, not used).

Dynamic quantisation covers only Linear layers and the network is convolutions (it gained nothing:
5.05 vs 5.34 s/MP). Static quantisation (``onnxruntime.quantization.quantize_static``) quantises
the convolutions, with activation ranges set on calibration images: here 8 synthetic 256² crops of
four chromogen layouts (``senpath.synth``, seeds 1000-1007; never an evaluation image). This
script exports the shipped network like ``precision="onnx-fp32"`` does, quantises it in several
ways and prints, at ``--threads`` (default 1):

- speed: wall and CPU seconds per MP of ``predict_maps`` on one 1024² synthetic Ki67 image for torch fp32,
  bf16 autocast + channels_last, ONNX Runtime fp32 and each int8 variant, timed in turns (best of
  ``--repeats``) so a burst of other work on a shared machine slows all alike;
- parity: F1 of nuclei matched at IoU 0.5 against torch fp32 on that image, and on each real
  DeepLIIF Ki67 tile (``../shared/data/ki67_ihc_tiles``, resampled to 0.5 µm/px; the held-out
  tiles pooled), when that folder is there;
- ONNX Runtime graph optimisation levels (basic / extended / all): session creation and run time;
- with ``--ki67-index``: ``benchmarks/ki67_real_tiles.py`` (the whole pipeline on the real tiles)
  with ONNX Runtime fp32 and then with the int8 model of ``--variant`` in its place (minutes).

::

    python benchmarks/bench_int8.py                       # ~2 min at 1 thread
    python benchmarks/bench_int8.py --ki67-index          # + the Ki67 index, a few minutes more

Outcome on this project's CPU (issue 18; figures in models/MODEL_CARD.md): int8 takes 2-3x less
CPU than ONNX Runtime fp32 and keeps the nuclei of the synthetic images (F1 >= 0.997), but on the
real tiles the plain QDQ u8/s8 model loses nuclei (Bladder1 F1 0.66, held-out Lung1 0.92) and moves
their Ki67 index. Keeping the first conv and the head in fp32 with percentile calibration keeps the
Ki67 index within 1.2 points per tile at the same speed, but no variant reaches F1 0.99 against
fp32 on the held-out tiles (bf16: 0.994). So int8 is not a precision of ``senpath.segment.runtime``
(whose parity check uses a synthetic image and would have let every variant through).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ki67_ihc_tiles"
#: The first conv and the head: the most sensitive layers (kept fp32 by the ``keep-ends`` variants).
ENDS = ["/encoders.0/encoders.0.0/Conv", "/head/Conv"]
#: The first two and the last two convs (the full-resolution ones).
ENDS2 = [*ENDS, "/encoders.0/encoders.0.3/Conv", "/decoders.3/decoders.3.3/Conv"]


def variants() -> dict[str, dict[str, Any]]:
    """Name -> ``quantize_static`` keywords of each int8 variant measured."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    u8, s8 = QuantType.QUInt8, QuantType.QInt8
    qdq, qop = QuantFormat.QDQ, QuantFormat.QOperator
    return {
        "QDQ u8/s8 per channel": dict(
            quant_format=qdq, activation_type=u8, weight_type=s8, per_channel=True
        ),
        "QDQ s8/s8 per channel": dict(
            quant_format=qdq, activation_type=s8, weight_type=s8, per_channel=True
        ),
        "QOperator u8/s8 per channel": dict(
            quant_format=qop, activation_type=u8, weight_type=s8, per_channel=True
        ),
        "QOperator u8/u8 per tensor": dict(quant_format=qop, activation_type=u8, weight_type=u8),
        "QDQ u8/s8 per channel, 7-bit weights": dict(
            quant_format=qdq,
            activation_type=u8,
            weight_type=s8,
            per_channel=True,
            reduce_range=True,
        ),  # fmt: skip
        "QDQ u8/s8 per channel, keep-ends fp32": dict(
            quant_format=qdq,
            activation_type=u8,
            weight_type=s8,
            per_channel=True,
            nodes_to_exclude=ENDS,
        ),  # fmt: skip
        "QDQ u8/s8 per channel, keep-ends fp32, percentile": dict(
            quant_format=qdq,
            activation_type=u8,
            weight_type=s8,
            per_channel=True,
            nodes_to_exclude=ENDS,
            calibrate_method=CalibrationMethod.Percentile,
        ),  # fmt: skip
        "QDQ u8/s8 per channel, 2+2 ends fp32, percentile": dict(
            quant_format=qdq,
            activation_type=u8,
            weight_type=s8,
            per_channel=True,
            nodes_to_exclude=ENDS2,
            calibrate_method=CalibrationMethod.Percentile,
        ),  # fmt: skip
    }


def export_fp32(model: Any, stride: int) -> bytes:
    """The network as ONNX, exported as ``senpath.segment.runtime.OnnxNetwork`` does."""
    from senpath.segment.runtime import export_onnx

    return export_onnx(model, stride=stride)


def calibration_batches(n: int = 8, side: int = 256) -> list[np.ndarray]:
    """Synthetic ``(1, 3, side, side)`` float32 crops in [0, 1] that set the activation ranges."""
    from senpath.synth import SynthParams, render_region

    assays = ("ki67", "p16", "sabgal", "sabgal-eosin")
    out = []
    for i in range(n):
        region = render_region(
            assays[i % 4], shape=(side, side), seed=1000 + i,
            params=SynthParams(tissue_fraction=0.9),
        )  # fmt: skip
        out.append(np.ascontiguousarray(region.rgb.transpose(2, 0, 1)[None] / np.float32(255)))
    return out


def quantize(fp32: bytes, options: dict[str, Any]) -> bytes:
    """``fp32`` quantised statically with ``options`` (after ONNX Runtime's pre-processing)."""
    from onnxruntime.quantization import CalibrationDataReader, quant_pre_process, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.inputs = iter([{"rgb": x} for x in calibration_batches()])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.inputs, None)

    with tempfile.TemporaryDirectory(prefix="senpath-int8-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        # the symbolic shape pass cannot follow the dynamic height/width through the resizes
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), **options)
        return out.read_bytes()


def session(network: bytes, *, threads: int, level: Any = None) -> Any:
    """An ONNX Runtime CPU session as ``OnnxNetwork`` makes it (optimisation level: the default,
    ``ORT_ENABLE_ALL``, unless given)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if level is not None:
        options.graph_optimization_level = level
    return ort.InferenceSession(network, options, providers=["CPUExecutionProvider"])


def onnx_segmenter(model: Any, spec: dict[str, Any], network: bytes, *, threads: int) -> Any:
    """A ``NucleusSegmenter(precision="onnx-fp32")`` whose session runs ``network`` instead."""
    from senpath.segment.predict import NucleusSegmenter

    seg = NucleusSegmenter(model, spec=spec, device="cpu", precision="onnx-fp32")
    seg._onnx.session = session(network, threads=threads)
    return seg


def real_tiles() -> dict[str, np.ndarray]:
    """The DeepLIIF Ki67 tiles at 0.5 µm/px (``{}`` when the real data is absent)."""
    import cv2
    from PIL import Image

    tiles = {}
    for path in sorted(SHARED.glob("*_ihc.png")):
        rgb = np.asarray(Image.open(path).convert("RGB"))  # 0.25 µm/px
        half = (rgb.shape[1] // 2, rgb.shape[0] // 2)
        tiles[path.name[: -len("_ihc.png")]] = cv2.resize(rgb, half, interpolation=cv2.INTER_AREA)
    return tiles


def _pooled(labels: list[np.ndarray]) -> np.ndarray:
    out, offset = [], 0
    for lab in labels:
        out.append(np.where(lab > 0, lab + offset, 0))
        offset += int(lab.max())
    return np.hstack(out)


def ki67_index(model: Any, stride: int, int8: bytes, threads: int) -> None:
    """``ki67_real_tiles.py`` with ONNX Runtime fp32, then with the int8 model in its place."""
    sys.path.insert(0, str(Path(__file__).parent))
    import ki67_real_tiles

    from senpath.segment import predict, runtime

    os.environ["SENPATH_PRECISION"] = "onnx-fp32"
    print("\n### Ki67 real tiles, ONNX Runtime fp32\n", flush=True)
    predict._CACHE.clear()
    ki67_real_tiles.main(["--device", "cpu"])
    made = runtime.OnnxNetwork.__init__

    def int8_network(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        self.session = session(int8, threads=threads)

    print("\n### Ki67 real tiles, ONNX Runtime static int8 in its place\n", flush=True)
    predict._CACHE.clear()
    with mock.patch.object(runtime.OnnxNetwork, "__init__", int8_network):
        ki67_real_tiles.main(["--device", "cpu"])


def main(argv: list[str] | None = None) -> int:
    """Quantise, time and compare; print Markdown tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    p.add_argument("--side", type=int, default=1024, help="side of the timed image (px)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (best counts)")
    p.add_argument("--variant", default="QDQ u8/s8 per channel", help="int8 model of --ki67-index")
    p.add_argument("--ki67-index", action="store_true", help="also the real-tile Ki67 benchmark")
    args = p.parse_args(argv)

    import onnxruntime as ort
    import torch
    from stardist.matching import matching

    from senpath.segment.predict import NucleusSegmenter
    from senpath.segment.runtime import cpu_name, time_in_turns
    from senpath.segment.weights import load_pretrained
    from senpath.synth import SynthParams, render_region

    torch.set_num_threads(args.threads)
    model, spec = load_pretrained(None)
    fp32 = NucleusSegmenter(model, spec=spec, device="cpu", precision="fp32")
    fp32_onnx = export_fp32(model, fp32.stride)
    segs = {
        "torch fp32": fp32,
        "bf16 autocast + channels_last": NucleusSegmenter(
            model, spec=spec, device="cpu", precision="bf16"
        ),
        "ONNX Runtime fp32": onnx_segmenter(model, spec, fp32_onnx, threads=args.threads),
    }
    int8: dict[str, bytes] = {}
    for name, options in variants().items():
        t = time.perf_counter()
        int8[name] = quantize(fp32_onnx, options)
        print(f"quantised {name} in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        segs[f"int8 {name}"] = onnx_segmenter(model, spec, int8[name], threads=args.threads)

    image = render_region(
        "ki67", shape=(args.side, args.side), seed=18, params=SynthParams(tissue_fraction=0.95)
    ).rgb
    batch, mp = image[None], args.side**2 / 1e6
    labels = {}
    for name, seg in segs.items():  # also the warm-up
        labels[name] = seg.instances(seg.predict_maps(batch)[0])
    best, cpu = time_in_turns(
        {name: partial(seg.predict_maps, batch) for name, seg in segs.items()},
        repeats=args.repeats,
    )
    tiles = real_tiles()
    held_out = [t for t in tiles if t in ("Lung1", "6_2")]  # segment.datasets.KI67_VALIDATION
    tile_labels = {n: {t: s.instances(s.predict_image_maps(rgb)) for t, rgb in tiles.items()}
                   for n, s in segs.items()}  # fmt: skip

    print(
        f"\n### Network alone, {args.threads} thread(s), {args.side}² synthetic Ki67 image, best "
        f"of {args.repeats}; {cpu_name()}, torch {torch.__version__}, onnxruntime "
        f"{ort.__version__}\n"
    )
    head = "| network | wall s / MP | CPU s / MP | F1 vs fp32, synthetic | nuclei |"
    if tiles:
        head += " " + " | ".join(f"F1 {t}{'' if t in held_out else ' (trained)'}" for t in tiles)
        head += " | F1 held-out pooled |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    ref = labels["torch fp32"]
    for name in segs:
        row = f"| {name} | {best[name] / mp:.2f} | {cpu[name] / mp:.2f} "
        row += f"| {matching(ref, labels[name], thresh=0.5).f1:.4f} "
        row += f"| {int(labels[name].max())} |"
        if tiles:
            ref_t, lab_t = tile_labels["torch fp32"], tile_labels[name]
            row += "".join(
                f" {matching(ref_t[t], lab_t[t], thresh=0.5).f1:.3f} ({int(lab_t[t].max())}) |"
                for t in tiles
            )
            pooled = matching(
                _pooled([ref_t[t] for t in held_out]), _pooled([lab_t[t] for t in held_out]),
                thresh=0.5,
            ).f1  # fmt: skip
            row += f" {pooled:.3f} |"
        print(row, flush=True)
    if tiles:
        print(f"\n(real tiles: F1 vs torch fp32 (nuclei); torch fp32 nuclei: "
              f"{ {t: int(v.max()) for t, v in tile_labels['torch fp32'].items()} })")  # fmt: skip

    print("\n### ONNX Runtime graph optimisation level (1024² random input)\n")
    print("| model | level | session creation s | s / MP |\n|---|---|---:|---:|")
    x = np.random.default_rng(0).random((1, 3, args.side, args.side), dtype=np.float32)
    levels = ort.GraphOptimizationLevel
    for label, network in (("fp32", fp32_onnx), (f"int8 {args.variant}", int8[args.variant])):
        for level in (levels.ORT_ENABLE_BASIC, levels.ORT_ENABLE_EXTENDED, levels.ORT_ENABLE_ALL):
            t = time.perf_counter()
            sess = session(network, threads=args.threads, level=level)
            made = time.perf_counter() - t
            sess.run(None, {"rgb": x[:, :, :256, :256]})
            run = math.inf
            for _ in range(args.repeats):
                t = time.perf_counter()
                sess.run(None, {"rgb": x})
                run = min(run, time.perf_counter() - t)
            print(f"| {label} | {level.name} | {made:.2f} | {run / mp:.2f} |", flush=True)

    if args.ki67_index:
        ki67_index(model, fp32.stride, int8[args.variant], args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
