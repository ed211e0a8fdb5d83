"""Does the nucleus CNN find the same nuclei when the image moves by one pixel? (issue 13)

Usage::

    python benchmarks/shift_consistency.py [--model DIR ...] [--swap-pool maxblur] [--threads 1]

A slide's tile grid falls wherever its origin puts it, so a nucleus can sit at any of the 16
phases of the network's stride. This runs every held-out real image (MoNuSeg 6, DeepLIIF Ki67 2,
CPM-15 3, DSB-2018 15; at the network's 0.5 µm/px) at phases 0-3 (reflect-padded by 0-3 px on the
top and left, the maps cropped back) and at 16 px (a whole stride: the control), fp32, and prints
one Markdown row per model:

- **kept at 1-3 px**: nuclei matched at IoU 0.5 between phase 0 and each of phases 1-3 (F1 pooled
  over the images, mean of the three): 1.0 means the shift changes nothing;
- **kept at 16 px**: the same against the control shift (what padding alone changes);
- **F1 vs truth**: pooled F1 at IoU 0.5 against the annotations, mean and range over phases 0-3;
- **mean |Δp|**: the foreground probability's mean absolute change under 1-3 px shifts.

``--swap-pool maxblur`` also measures each model with its downsampling replaced (weights
unchanged), as the anti-aliased pooling was first tried on the v4 weights before any training.

Needs ``../shared/data`` (the project's real data); exits with a message when it is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHASES = (1, 2, 3)
CONTROL = 16


def held_out() -> list:
    """The held-out real images at 0.5 µm/px with their instance labels."""
    from senpath.segment import data as D

    return [
        *D.load_monuseg(SHARED, split="validation"),
        *D.load_ki67(SHARED, split="validation"),
        *D.load_cpm15(SHARED, split="validation"),
        *D.load_dsb2018(SHARED, split="validation"),
    ]


def shifted_instances(seg, rgb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground map and instances of ``rgb`` run ``k`` px down and right, moved back."""
    padded = np.pad(rgb, ((k, 0), (k, 0), (0, 0)), mode="reflect")
    maps = seg.predict_image_maps(padded)[:, k:, k:]
    return maps[0], seg.instances(maps)


def measure(seg, images: list) -> dict[str, float]:
    """The row of one model (see the module docstring)."""
    from stardist.matching import matching_dataset

    truths = [im.labels for im in images]
    runs = {k: [shifted_instances(seg, im.rgb, k) for im in images] for k in (0, *PHASES, CONTROL)}
    labels = {k: [lab for _, lab in v] for k, v in runs.items()}

    def f1(a: list, b: list) -> float:
        return float(matching_dataset(a, b, thresh=0.5, show_progress=False).f1)

    vs_truth = [f1(truths, labels[k]) for k in (0, *PHASES)]
    delta = [
        np.mean([np.abs(a[0] - b[0]).mean() for a, b in zip(runs[k], runs[0], strict=True)])
        for k in PHASES
    ]
    return {
        "kept_1_3": float(np.mean([f1(labels[0], labels[k]) for k in PHASES])),
        "kept_16": f1(labels[0], labels[CONTROL]),
        "truth_mean": float(np.mean(vs_truth)),
        "truth_min": min(vs_truth),
        "truth_max": max(vs_truth),
        "delta_p": float(np.mean(delta)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model", action="append", default=None, help="model folder or JSON (repeatable; "
        "default: the shipped one)",
    )  # fmt: skip
    p.add_argument("--swap-pool", choices=("maxblur",), default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: this benchmark needs the project's real data", file=sys.stderr)
        return 2

    import torch

    from senpath.segment.net import MaxBlurPool
    from senpath.segment.predict import NucleusSegmenter

    torch.set_num_threads(args.threads)
    images = held_out()
    n_nuclei = sum(len(np.unique(im.labels)) - 1 for im in images)
    print(f"{len(images)} held-out images, {n_nuclei} annotated nuclei, fp32\n")
    print("| model | pool | kept at 1-3 px | kept at 16 px | F1 vs truth (range over phases) "
          "| mean abs dp at 1-3 px |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for model in args.model or [None]:
        seg = NucleusSegmenter.from_pretrained(model, device="cpu", precision="fp32")
        variants = [(seg.model.config.pool, None)]
        if args.swap_pool and args.swap_pool != seg.model.config.pool:
            variants.append((f"{args.swap_pool} (swapped in, untrained)", MaxBlurPool()))
        for pool, module in variants:
            if module is not None:
                seg.model.pool = module
            r = measure(seg, images)
            print(
                f"| {model or 'shipped'} | {pool} | {r['kept_1_3']:.3f} | {r['kept_16']:.3f} "
                f"| {r['truth_mean']:.3f} ({r['truth_min']:.3f}-{r['truth_max']:.3f}) "
                f"| {r['delta_p']:.4f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
