"""Flip test-time augmentation of the nucleus CNN on the held-out sets: measured, not adopted.

The network's maps are averaged over the image and its three flips (left-right, up-down, both;
each flipped back) and post-processed as usual, with the model's own thresholds; every held-out
set of ``python -m senpath.segment.export`` (real images at their native resolution, and the
held-out H&E images re-rendered in each stain combination) is scored both ways in one run::

    python benchmarks/segment_tta.py                  # the shipped model, fp32, one thread
    python benchmarks/segment_tta.py --model DIR --consep-limit 50

Prints pooled F1 / AJI (per-image mean) / PQ per set, the stained-vs-unstained recall gaps at IoU
0.1, and the seconds each way (model card, "flip test-time augmentation"). Needs ``../shared``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np


def flip_averaged(predict_maps: Any) -> Any:
    """``predict_maps`` of (B, H, W, 3) batches averaged over the 4 flips of each image."""

    def maps(batch: np.ndarray) -> np.ndarray:
        out = predict_maps(batch).astype(np.float64)
        out += predict_maps(np.ascontiguousarray(batch[:, :, ::-1]))[:, :, :, ::-1]
        out += predict_maps(np.ascontiguousarray(batch[:, ::-1]))[:, :, ::-1]
        out += predict_maps(np.ascontiguousarray(batch[:, ::-1, ::-1]))[:, :, ::-1, ::-1]
        return (out / 4).astype(np.float32)

    return maps


def gaps(report: dict[str, Any]) -> str:
    by = report.get("recall_by_stain", {}).get("iou_0.1", {})
    return ", ".join(f"{k[4:]} {v['points']:+.1f}" for k, v in by.items() if k.startswith("gap_"))


def main(argv: list[str] | None = None) -> int:
    import torch

    from senpath.segment.export import evaluate_sets, validation_sets
    from senpath.segment.predict import NucleusSegmenter
    from senpath.segment.train import DEFAULT_DATA_ROOT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model folder or JSON (shipped)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--consep-limit", type=int, default=None, help="CoNSeP test patches (all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = validation_sets(args.data_root, consep_limit=args.consep_limit)
    reports, seconds = {}, {}
    for way in ("plain", "4-flip TTA"):
        seg = NucleusSegmenter.from_pretrained(args.model, "cpu", precision="fp32")
        if way != "plain":
            seg.predict_maps = flip_averaged(seg.predict_maps)  # type: ignore[method-assign]
        t = time.perf_counter()
        reports[way] = evaluate_sets(seg, sets)
        seconds[way] = time.perf_counter() - t
    print(
        "| held out | plain F1 / AJI / PQ | 4-flip TTA F1 / AJI / PQ | gaps IoU 0.1, plain | TTA |"
    )
    print("|---|---|---|---|---|")
    for name in sets:
        cells = []
        for way in reports:
            r = reports[way][name]
            cells.append(
                f"{r['pooled']['f1']:.3f} / {r['mean']['aji']:.3f} / {r['pooled']['pq']:.3f}"
            )
        print(f"| {name} | {cells[0]} | {cells[1]} | {gaps(reports['plain'][name])} | "
              f"{gaps(reports['4-flip TTA'][name])} |")  # fmt: skip
    print(f"\nseconds (network, post-processing, scoring): plain {seconds['plain']:.0f}, "
          f"4-flip TTA {seconds['4-flip TTA']:.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
