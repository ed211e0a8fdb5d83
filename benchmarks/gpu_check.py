"""The GPU rows of issue 18, in one run (< 8 min on one modern GPU): ``benchmarks/gpu_check.sh``.

1. the card, torch/CUDA versions, and the batch of analysis tiles the engine would use
   (:func:`senpath.segment.device.tiles_per_batch`);
2. the network alone on batches of analysis tiles (1120² px + 2 x 32 px context at 0.5 µm/px):
   fp32, fp16 autocast and bf16 autocast on the GPU, MP/s of analysed pixels (CUDA-synchronised);
3. GPU-vs-CPU parity: nuclei of each GPU precision vs CPU fp32 on a synthetic Ki67 tile
   (instances matched at IoU 0.5; target F1 >= 0.99);
4. ``senpath.analyze_slide`` end to end on a synthetic Ki67 slide on the GPU and, for the cells,
   on the CPU (a smaller slide, fp32): wall, MP/s, cells, and the time a 1 Gpx slide would take
   at that rate; the GPU slide twice: post-processed in the analysing thread alone
   (``SENPATH_POST_WORKERS=0``) and in the worker processes chosen for a GPU
   (:func:`senpath.post_workers.post_workers_for`).

Prints Markdown (paste into models/MODEL_CARD.md, "Speed and precision"); exits 2 without CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MPP = 0.5
#: An analysis tile at the defaults: 512 µm + 2 x 24 µm halo at 0.5 µm/px.
TILE = 1120


def main(argv: list[str] | None = None) -> int:
    """Run the checks and print the tables; 2 when no CUDA device is visible."""
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slide", type=int, default=8192, help="GPU slide side in px at 0.5 µm/px")
    p.add_argument("--cpu-slide", type=int, default=2048, help="CPU parity slide side in px")
    p.add_argument("--repeats", type=int, default=3, help="timed network passes (best counts)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device visible (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}): nothing measured. Run it on a machine with an NVIDIA GPU and "
            "a CUDA build of torch.",
            file=sys.stderr,
        )
        return 2
    torch.backends.cudnn.benchmark = True  # fixed tile shapes: pick the fastest kernels once
    from senpath.segment.device import tiles_per_batch
    from senpath.segment.predict import NucleusSegmenter, predict_instances
    from senpath.segment.runtime import matched_f1
    from senpath.synth import SynthParams, render_region

    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    side = TILE + 64
    print(f"## GPU check: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch "
          f"{torch.__version__}, CUDA {torch.version.cuda}\n")  # fmt: skip
    region = render_region(
        "ki67", shape=(TILE, TILE), seed=18, params=SynthParams(tissue_fraction=0.95)
    )
    tile = np.pad(region.rgb, ((32, 32), (32, 32), (0, 0)), mode="reflect")

    print("| precision | tiles per batch | s per batch | analysed MP/s (network alone) |")
    print("|---|---:|---:|---:|")
    for precision in ("fp32", "fp16", "bf16"):
        seg = NucleusSegmenter.from_pretrained(device="cuda", precision=precision)
        batch_n = tiles_per_batch(device, side, precision=precision)
        batch = np.repeat(tile[None], batch_n, axis=0)
        seg.predict_maps(batch)  # warm-up: cuDNN autotuning, allocator
        best = np.inf
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            seg.predict_maps(batch)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        print(
            f"| {precision} | {batch_n} | {best:.3f} | {batch_n * TILE * TILE / 1e6 / best:.1f} |"
        )
        del seg
        torch.cuda.empty_cache()

    cpu = NucleusSegmenter.from_pretrained(device="cpu", precision="fp32")
    reference = predict_instances(region.rgb, mpp=MPP, model=cpu)
    print(f"\nGPU vs CPU fp32 on a {TILE}² synthetic Ki67 tile ({int(reference.max())} nuclei):\n")
    print("| GPU precision | nuclei | F1 vs CPU fp32 at IoU 0.5 |\n|---|---:|---:|")
    for precision in ("fp32", "fp16", "bf16"):
        gpu = NucleusSegmenter.from_pretrained(device="cuda", precision=precision)
        labels = predict_instances(region.rgb, mpp=MPP, model=gpu)
        print(f"| {precision} | {int(labels.max())} | {matched_f1(reference, labels):.4f} |")

    slide_rows(args.slide, args.cpu_slide)
    return 0


def slide_rows(gpu_side: int, cpu_side: int) -> None:
    """``analyze_slide`` on the GPU (``gpu_side``², post-processed in the analysing thread alone
    and in the worker processes ``auto`` gives) and on GPU and CPU (``cpu_side``²)."""
    import os
    from unittest import mock

    import senpath
    from senpath.config import AnalysisConfig
    from senpath.post_workers import POST_WORKERS_ENV, post_workers_on
    from senpath.results import read_results
    from senpath.synth import write_slide

    auto_workers = post_workers_on("cuda")
    print("\n| slide | device, precision | post workers | tiles | wall s | tissue MP/s | cells | "
          "1 Gpx at this rate |\n|---|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="senpath-gpu-") as tmp:
        for side, runs in (
            (cpu_side, [("cuda", "auto", None), ("cpu", "fp32", None)]),
            (gpu_side, [("cuda", "auto", "0"), ("cuda", "auto", None)]),
        ):
            path = Path(tmp) / f"ki67_{side}.tif"
            write_slide(path, assay="ki67", shape=(side, side), mpp=MPP, seed=0, tile_size=256,
                        compression="jpeg", write_labels=False)  # fmt: skip
            for device, precision, workers in runs:
                config = AnalysisConfig(segmenter="cnn", device=device, precision=precision)
                env = {POST_WORKERS_ENV: workers} if workers is not None else {}
                shown = workers if workers is not None else (
                    f"auto ({auto_workers})" if device == "cuda" else "auto (0)"
                )  # fmt: skip
                with mock.patch.dict(os.environ, env):
                    t = time.perf_counter()
                    store = senpath.analyze_slide(
                        path, out=Path(tmp) / f"out_{device}_{side}_{workers}", assay="ki67",
                        config=config,
                    )  # fmt: skip
                    wall = time.perf_counter() - t
                result = read_results(store)
                n_tiles = int(result.summary["n_tiles"])
                analysed_mp = result.summary["tissue_area_mm2"] / (MPP * 1e-3) ** 2 / 1e6
                used = precision if precision != "auto" else "auto (fp16)"
                print(f"| {side}² | {device}, {used} | {shown} | {n_tiles} | {wall:.1f} | "
                      f"{analysed_mp / wall:.1f} | {len(result.cells)} | "
                      f"{1000 / (analysed_mp / wall) / 60:.1f} min |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
