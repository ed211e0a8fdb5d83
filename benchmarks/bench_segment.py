"""Nucleus segmentation throughput: network MP/s per precision and with test-time flips,
post-processing MP/s, GPU parity.

Usage::

    python benchmarks/bench_segment.py [--threads 2] [--batch-size 8] [--tile-size 256] [--repeats 5]

MP/s counts input megapixels at the network's 0.5 µm/px (a 256² tile is 0.066 MP). CPU rows always;
CUDA rows and a GPU-vs-CPU parity check (instances matched at IoU 0.5 on a real image, or on a
synthetic one when ../shared/data is absent) when a CUDA device is present. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _test_image() -> tuple[np.ndarray, float, str]:
    if (SHARED / "monuseg_train").is_dir():
        from senpath.segment.data import load_monuseg

        im = load_monuseg(SHARED, split="validation", native=True)[0]
        return im.rgb, im.mpp, im.name
    rng = np.random.default_rng(0)
    rgb = np.full((1000, 1000, 3), 225, np.uint8)
    yy, xx = np.mgrid[:1000, :1000]
    for cy, cx in rng.integers(10, 990, size=(400, 2)):
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 <= 144] = (80, 60, 140)
    return rgb, 0.25, "synthetic discs"


def _time_network(seg, tiles: np.ndarray, repeats: int) -> float:
    import torch

    seg.predict_maps(tiles)  # warm-up
    if seg.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        seg.predict_maps(tiles)
    if seg.device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / repeats
    return tiles.shape[0] * tiles.shape[1] * tiles.shape[2] / dt / 1e6


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    import torch
    from stardist.matching import matching

    from senpath.segment.data import NETWORK_MPP, resample_rgb, shape_at_mpp
    from senpath.segment.predict import NucleusSegmenter, predict_instances
    from senpath.segment.weights import load_pretrained

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, spec = load_pretrained()
    rgb, mpp, image_name = _test_image()
    work = resample_rgb(rgb, shape_at_mpp(rgb.shape, mpp, NETWORK_MPP))
    s = args.tile_size
    tiles = np.stack(
        [work[(i * s) % (work.shape[0] - s) :][:s, :s] for i in range(args.batch_size)]
    ).astype(np.uint8)
    n_params = sum(p.numel() for p in model.parameters())

    rows = []
    cpu_segs = {}
    for precision in ("fp32", "bf16"):
        seg = NucleusSegmenter(load_pretrained()[0], spec=spec, device="cpu", precision=precision)
        cpu_segs[precision] = seg
        label = {"fp32": "eager fp32", "bf16": "bf16 autocast + channels_last"}[precision]
        rows.append(("cpu", f"network, {label}", _time_network(seg, tiles, args.repeats)))

    flips = NucleusSegmenter(
        load_pretrained()[0], spec=spec, device="cpu", precision="bf16", flips=True
    )
    rows.append(
        ("cpu", "network, bf16, test-time flips", _time_network(flips, tiles, args.repeats))
    )

    seg = cpu_segs["bf16"]
    maps = seg.predict_image_maps(work, tile_size=s, halo=32)
    t = time.perf_counter()
    for _ in range(3):
        seg.instances(maps)
    post_mps = work.shape[0] * work.shape[1] / ((time.perf_counter() - t) / 3) / 1e6
    rows.append(("cpu", "post-processing (watershed)", post_mps))
    t = time.perf_counter()
    cpu_labels = predict_instances(rgb, mpp=mpp, model=seg, batch_size=args.batch_size, tile_size=s)
    e2e = work.shape[0] * work.shape[1] / (time.perf_counter() - t) / 1e6
    rows.append(("cpu", "end to end, predict_instances (bf16)", e2e))
    t = time.perf_counter()
    predict_instances(rgb, mpp=mpp, model=flips, batch_size=args.batch_size, tile_size=s)
    e2e_flips = work.shape[0] * work.shape[1] / (time.perf_counter() - t) / 1e6
    rows.append(("cpu", "end to end, predict_instances (bf16, test-time flips)", e2e_flips))
    ref = predict_instances(rgb, mpp=mpp, model=cpu_segs["fp32"], tile_size=s)
    parity = [("cpu bf16 vs cpu fp32", matching(ref, cpu_labels, thresh=0.5).f1)]

    if torch.cuda.is_available():
        for precision in ("fp32", "fp16", "bf16"):
            gseg = NucleusSegmenter(
                load_pretrained()[0], spec=spec, device="cuda", precision=precision
            )
            gtiles = np.concatenate([tiles] * 4)
            rows.append(
                ("cuda", f"network, {precision}", _time_network(gseg, gtiles, args.repeats))
            )
            if precision == "fp16":
                gseg.flips = True
                rows.append(("cuda", "network, fp16, test-time flips",
                             _time_network(gseg, gtiles, args.repeats)))  # fmt: skip
                gseg.flips = False
            gpu_labels = predict_instances(rgb, mpp=mpp, model=gseg, tile_size=s)
            parity.append(
                (f"cuda {precision} vs cpu fp32", matching(ref, gpu_labels, thresh=0.5).f1)
            )

    print(
        f"\nnucleus U-Net ({n_params / 1e6:.2f} M parameters, sha256 {spec['sha256'][:12]}), "
        f"{s}² tiles at {NETWORK_MPP} µm/px, batch {args.batch_size}, CPU threads {args.threads}, "
        f"torch {torch.__version__}\n"
    )
    print("| device | stage | MP/s |\n|---|---|---|")
    for dev, stage, mps in rows:
        print(f"| {dev} | {stage} | {mps:.2f} |")
    mps = {(dev, stage): v for dev, stage, v in rows}
    network_ratio = (
        mps["cpu", "network, bf16 autocast + channels_last"]
        / mps["cpu", "network, bf16, test-time flips"]
    )
    print("\n| test-time flips (cpu) | time per MP, flips / without |\n|---|---|")
    print(f"| network, bf16 | {network_ratio:.2f} |")
    print(f"| end to end, predict_instances | {e2e / e2e_flips:.2f} |")
    print(f"\nparity on {image_name} ({rgb.shape[1]}x{rgb.shape[0]} at {mpp} µm/px): ")
    print("| comparison | F1 of matched instances at IoU 0.5 |\n|---|---|")
    for name, f1 in parity:
        print(f"| {name} | {f1:.4f} |")
    if not torch.cuda.is_available():
        print("\n(no CUDA device: GPU rows and GPU-vs-CPU parity skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
