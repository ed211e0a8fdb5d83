"""Counterstain normalisation before the nucleus CNN, per reference level: held-out or training sets.

Each image is treated as a slide of the assay its stains belong to (H&E sets: ``he``; DeepLIIF
Ki67 tiles: ``ki67``; re-rendered H-DAB ``p16``, dual ``p16+ki67``, X-gal + NFR ``sabgal``, X-gal
+ H + DAB ``sabgal+ki67``, X-gal + eosin ``sabgal-eosin``): glass intensity, stain vectors and
counterstain level estimated from its pixels and, per reference level ``R``, the counterstain
multiplied by ``R / level`` bounded to [1, 2] before the network
(:func:`senpath.segment.counterstain.assay_boost`, what ``senpath segment`` does); then the usual
post-processing and scoring (:func:`senpath.segment.export.evaluate_sets`)::

    python benchmarks/counterstain_gain.py --split train --references 0.3,0.4,0.5,0.6
    python benchmarks/counterstain_gain.py --split train --references 0.6,0.7,0.8,1.0 --sets ki67,...
    python benchmarks/counterstain_gain.py --references preset --consep-limit 40   # held out
    python benchmarks/counterstain_gain.py --model DIR --preset-overrides sabgal-eosin=0.7

``--split train`` scores training images (a subsample of each source, re-rendered with other
seeds than the held-out sets): that is where the reference is chosen. Prints pooled F1 / AJI
(per-image mean) / PQ, the stained-vs-unstained recall gaps at IoU 0.1 and the median gain per
set and reference. Needs ``../shared``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np


def training_sets(root: Path) -> dict[str, list[Any]]:
    """A subsample of every training source, and its H&E images re-rendered in every held-out
    recipe with seeds the held-out sets do not use."""
    from senpath.segment import data as D
    from senpath.segment.export import with_rerendered

    sets: dict[str, list[Any]] = {
        "monuseg": D.load_monuseg(root, split="train", native=True)[::2],
        "cpm15": D.load_cpm15(root, split="train", native=True),
        "dsb2018": D.load_dsb2018(root, split="train", native=True)[::4],
        "ki67": D.load_ki67(root, split="train", native=True),
    }
    return with_rerendered(sets, seed=2000)


def boosted_sets(
    sets: dict[str, list[Any]], reference: float | dict[str, float] | None
) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """The sets with every image's counterstain brought up to ``reference`` (``None``: each assay's
    preset ``counterstain_reference_od``, as ``senpath run`` does, none where it has none; a dict:
    those assays' references replaced), and the median gain per set
    (:func:`senpath.segment.export.normalised_images`)."""
    from senpath.segment.export import normalised_images

    out, gains = {}, {}
    for name, images in sets.items():
        out[name], g = normalised_images(name, images, reference=reference)
        gains[name] = float(np.median(g))
    return out, gains


def main(argv: list[str] | None = None) -> int:
    import torch

    from senpath.segment.counterstain import parse_references
    from senpath.segment.export import evaluate_sets, validation_sets, ways_table
    from senpath.segment.predict import NucleusSegmenter
    from senpath.segment.train import DEFAULT_DATA_ROOT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model folder or JSON (shipped)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--split", choices=("validation", "train"), default="validation")
    p.add_argument("--consep-limit", type=int, default=None, help="CoNSeP test patches (all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sets", default=None, help="comma-separated set names (all)")
    p.add_argument(
        "--references",
        default="preset",
        help="comma-separated reference levels (log10 OD), or preset: each assay's own",
    )
    p.add_argument(
        "--preset-overrides",
        default="",
        metavar="ASSAY=OD,...",
        help="with preset: these assays' references replaced or added (e.g. sabgal-eosin=0.7, "
        "for a network trained with train --counterstain-references preset,sabgal-eosin=0.7)",
    )
    args = p.parse_args(argv)
    try:
        overrides = parse_references(args.preset_overrides)
    except ValueError as exc:
        p.error(f"--preset-overrides: {exc}")
    references = [None if r == "preset" else float(r) for r in args.references.split(",")]
    torch.set_num_threads(args.threads)
    if args.split == "train":
        sets = training_sets(args.data_root)
    else:
        sets = validation_sets(args.data_root, consep_limit=args.consep_limit)
    if args.sets is not None:
        sets = {name: sets[name] for name in args.sets.split(",")}
    seg = NucleusSegmenter.from_pretrained(args.model, "cpu", precision="fp32")
    ways = ["plain"] + ["preset R" if r is None else f"R {r:g}" for r in references]
    reports, gains, seconds = {}, {}, {}
    for way, reference in zip(ways, [-1.0, *references], strict=True):
        t = time.perf_counter()
        if way == "plain":
            boosted, gains[way] = sets, {name: 1.0 for name in sets}
        else:
            # the presets (with --preset-overrides' assays replaced), or one level for every set
            levels = (overrides or None) if reference is None else reference
            boosted, gains[way] = boosted_sets(sets, levels)
        reports[way] = evaluate_sets(seg, boosted)
        seconds[way] = time.perf_counter() - t
    print(f"{args.split} images: " + ", ".join(f"{n} {len(v)}" for n, v in sets.items()) + "\n")
    medians = {n: ", ".join(f"{gains[w][n]:.2f}" for w in ways[1:]) for n in sets}
    print("\n".join(ways_table(reports, extra=("median gain per R", medians))))
    print("\nseconds (gain, network, post-processing, scoring): "
          + ", ".join(f"{w} {seconds[w]:.0f}" for w in ways))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
