"""Test-time changes to the nucleus CNN's input on the held-out sets.

``flip4``: the network's maps averaged over the image and its three flips (left-right, up-down,
both; each flipped back), as ``[analysis] test_time_flips = true`` runs it
(``NucleusSegmenter(flips=True)``; an option, off by default). Measured, not adopted: ``odG``
(e.g. ``od1.4``): every image's optical density multiplied by ``G`` before the network (stains
darkened, faint counterstain made stronger; glass stays white).
``hautoR`` (e.g. ``hauto1.0``): the same per image, with ``G = R / q`` bounded to [1, 2], ``q``
the 90th percentile of the OD projected on the reference hematoxylin vector over the tissue
(OD sum > 0.15): only faintly counterstained images are darkened.
Each way is post-processed as usual, with the model's own thresholds, on every held-out set of
``python -m senpath.segment.export`` (real images at their native resolution, and the held-out
H&E images re-rendered in each stain combination), all in one run::

    python benchmarks/segment_tta.py                  # plain and flip4, shipped model, fp32
    python benchmarks/segment_tta.py --ways plain,od1.2,od1.4,od1.7 --consep-limit 40
    python benchmarks/segment_tta.py --ways plain,hauto1.0,hauto1.3 --consep-limit 40

Prints pooled F1 / AJI (per-image mean) / PQ per set and way, the stained-vs-unstained recall
gaps at IoU 0.1, and the seconds each way (model card, "flip test-time augmentation" and
"darker input"). Needs ``../shared``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np


def od_scaled(predict_maps: Any, gain: float, *, reference: float | None = None) -> Any:
    """``predict_maps`` of (B, H, W, 3) uint8 batches with each image's optical density (against
    its own glass intensity) multiplied by ``gain``; with ``reference``, by ``reference / q``
    bounded to [1, 2] instead (``q``: 90th percentile of the hematoxylin-projected OD over the
    tissue)."""
    from senpath.stain import REFERENCE_STAINS, estimate_background, unit

    hematoxylin = unit(np.asarray(REFERENCE_STAINS["hematoxylin"], np.float32)).astype(np.float32)

    def maps(batch: np.ndarray) -> np.ndarray:
        out = np.empty_like(batch)
        for i, rgb in enumerate(batch):
            i0 = estimate_background(rgb).astype(np.float32) + 1.0
            od = np.clip(-np.log((rgb.astype(np.float32) + 1.0) / i0), 0.0, None)
            g = gain
            if reference is not None:
                tissue = od.sum(-1) > 0.15
                q = float(np.percentile((od @ hematoxylin)[tissue], 90)) if tissue.any() else 1.0
                g = float(np.clip(reference / max(q, 1e-6), 1.0, 2.0))
            out[i] = np.clip(np.rint(i0 * np.exp(-g * od) - 1.0), 0, 255)
        return predict_maps(out)

    return maps


def main(argv: list[str] | None = None) -> int:
    import torch

    from senpath.segment.export import evaluate_sets, validation_sets, ways_table
    from senpath.segment.predict import NucleusSegmenter
    from senpath.segment.train import DEFAULT_DATA_ROOT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model folder or JSON (shipped)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--consep-limit", type=int, default=None, help="CoNSeP test patches (all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--ways",
        default="plain,flip4",
        help="comma-separated: plain, flip4, odG (e.g. od1.4), hautoR (e.g. hauto1.0)",
    )
    args = p.parse_args(argv)
    ways = args.ways.split(",")
    for way in ways:
        numbered = (way.startswith("od") and _is_float(way[2:])) or (
            way.startswith("hauto") and _is_float(way[5:])
        )
        if way not in ("plain", "flip4") and not numbered:
            p.error(f"unknown way {way!r}: use plain, flip4, odG or hautoR, e.g. od1.4, hauto1.0")
    torch.set_num_threads(args.threads)
    sets = validation_sets(args.data_root, consep_limit=args.consep_limit)
    reports, seconds = {}, {}
    for way in ways:
        seg = NucleusSegmenter.from_pretrained(
            args.model, "cpu", precision="fp32", flips=way == "flip4"
        )
        if way.startswith("od"):
            seg.predict_maps = od_scaled(seg.predict_maps, float(way[2:]))  # type: ignore[method-assign]
        elif way.startswith("hauto"):
            scaled = od_scaled(seg.predict_maps, 1.0, reference=float(way[5:]))
            seg.predict_maps = scaled  # type: ignore[method-assign]
        t = time.perf_counter()
        reports[way] = evaluate_sets(seg, sets)
        seconds[way] = time.perf_counter() - t
    print("\n".join(ways_table(reports)))
    print("\nseconds (network, post-processing, scoring): "
          + ", ".join(f"{w} {seconds[w]:.0f}" for w in ways))  # fmt: skip
    return 0


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
