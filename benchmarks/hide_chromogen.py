"""X-gal taken out of the image the nucleus CNN sees: measured, not adopted (issue 13).

X-gal's blue-green granules lie over some nuclei; on the re-rendered sets a nucleus under them is
found more often than one without (the uncovered ones, seen only through a faint counterstain, are
missed more). A stain-invariant input would show both alike. This takes the X-gal out before the
network: per image, glass intensity and stain vectors are estimated as a slide's plan does
(:func:`senpath.stain.estimate_background`, :func:`senpath.stain.estimate_stains` with the assay's
prior), the X-gal amount (least squares on those vectors) is multiplied by ``f`` (0: removed), and
the assay's preset counterstain normalisation (:mod:`senpath.segment.counterstain`) is applied as
``senpath run`` does; then the shipped network, post-processing and scoring as
:func:`senpath.segment.export.evaluate_sets`::

    python benchmarks/hide_chromogen.py --split train --factors 1,0.5,0.25,0
    python benchmarks/hide_chromogen.py --factors 1,0                 # held out, one rendering
    python benchmarks/hide_chromogen.py --factors 1,0 --draws 4 --recipes xgal_nfr,xgal_h_dab
    python benchmarks/hide_chromogen.py --factors 1,0 --synthetic     # + a generated sabgal slide

``--split train`` scores training images re-rendered with other seeds (where ``f`` is chosen);
held out, rendering ``j`` of recipe ``k`` uses seed ``1000 + k + 100 j`` (``j = 0`` is the
validation set's, as ``segment_diagnostics.py --draws``). ``--synthetic``: the 1024² sabgal slide of
``tests/test_scoring_accuracy.py`` (seed 3), scored against its label image. Prints F1 / AJI / PQ,
each class's recall at IoU 0.1 (unstained, each chromogen) and the gaps (points, unstained minus
stained recall, as ``segment_diagnostics.py``) per set and factor. Needs ``../shared`` (not
``--synthetic``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPES = ("xgal_nfr", "xgal_h_dab", "xgal_eosin")


def hidden(rgb: np.ndarray, assay_name: str, factor: float) -> np.ndarray:
    """``rgb`` as the CNN would see it in ``senpath run`` (the preset's counterstain gain) with the
    X-gal amount multiplied by ``factor``."""
    from senpath.config import get_assay
    from senpath.segment.counterstain import counterstain_gain, counterstain_level
    from senpath.stain import StainSet, estimate_background, estimate_stains, rgb_to_od

    assay = get_assay(assay_name)
    prior = StainSet.from_names(assay.stains, overrides=assay.stain_vectors)
    i0 = estimate_background(rgb)
    flat = rgb_to_od(rgb, i0.tolist()).reshape(-1, 3)
    stains = estimate_stains(flat, prior, max_angle_deg=assay.stain_tolerance_deg).stains
    amounts = np.maximum(flat @ np.linalg.pinv(stains.vectors).astype(np.float32), 0.0)
    # boost_counterstain's arithmetic, done here once for both stains: it only strengthens (gain
    # >= 1), and both changes come from the same original amounts
    changes = []  # (stain index, factor - 1)
    if assay.counterstain_reference_od is not None:
        c = stains.index(assay.nuclear_stains[0])
        level = counterstain_level(flat, stains, counterstain=c)
        changes.append((c, counterstain_gain(level, reference=assay.counterstain_reference_od) - 1))
    if factor != 1.0:
        changes.append((stains.index("xgal"), factor - 1.0))
    log_factor = np.zeros_like(flat)
    for index, change in changes:
        per_amount = -np.log(10.0) * change * stains.vectors[index]
        log_factor += amounts[:, index : index + 1] * per_amount.astype(np.float32)
    seen = rgb * np.exp(log_factor).reshape(rgb.shape)
    return np.clip(np.rint(seen), 0, 255).astype(np.uint8)


def _sets(split: str, recipes: list[str], draws: int) -> dict[str, list[Any]]:
    from senpath.segment import data as D
    from senpath.segment.export import VALIDATION_RECIPES

    if split == "train":
        sys.path.insert(0, str(Path(__file__).parent))
        from counterstain_gain import training_sets

        sets = training_sets(SHARED)
        return {k: v for k, v in sets.items() if k.removeprefix("rerendered_") in recipes}
    he = [
        *D.load_monuseg(SHARED, split="validation", native=True),
        *D.load_cpm15(SHARED, split="validation", native=True),
        *D.load_dsb2018(SHARED, split="validation", native=True),
    ]
    sets = {}
    for recipe in recipes:
        k = VALIDATION_RECIPES.index(recipe)
        for j in range(draws):
            rng = np.random.default_rng(1000 + k + 100 * j)
            sets[f"rerendered_{recipe}#{j}"] = D.rerendered(he, recipe, rng)
    return sets


def _synthetic() -> list[Any]:
    """The sabgal slide of test_scoring_accuracy.py as one annotated image (in memory)."""
    import tifffile

    from senpath import synth
    from senpath.segment.data import AnnotatedImage

    with tempfile.TemporaryDirectory() as folder:
        s = synth.write_slide(
            Path(folder) / "sabgal.tif", assay="sabgal", shape=(1024, 1024), mpp=0.5, seed=3,
            params=synth.SynthParams(tissue_fraction=0.95),
        )  # fmt: skip
        rgb = tifffile.imread(s.path)[..., :3]
        assert s.labels_path is not None
        labels = tifffile.imread(s.labels_path).astype(np.int32)
    return [AnnotatedImage("synthetic/sabgal", "synth", rgb, labels, 0.5)]


def main(argv: list[str] | None = None) -> int:
    import torch

    from senpath.segment.export import SET_ASSAYS, evaluate_sets
    from senpath.segment.predict import NucleusSegmenter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or JSON (default: the shipped one)")
    p.add_argument("--split", choices=("validation", "train"), default="validation")
    p.add_argument("--factors", default="1,0", help="factors on the X-gal amount (1: as it is)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="re-rendered X-gal recipes")
    p.add_argument("--draws", type=int, default=1, help="held-out renderings per recipe")
    p.add_argument("--synthetic", action="store_true", help="also the generated sabgal slide")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    factors = [float(f) for f in args.factors.split(",")]
    recipes = [r for r in args.recipes.split(",") if r]
    if unknown := sorted(set(recipes) - set(RECIPES)):
        p.error(f"--recipes: {unknown} are not X-gal recipes ({', '.join(RECIPES)})")
    torch.set_num_threads(args.threads)
    sets = _sets(args.split, recipes, args.draws)
    if args.synthetic:
        sets["synthetic_sabgal"] = _synthetic()
    seg = NucleusSegmenter.from_pretrained(args.model, "cpu", precision="fp32")
    print(f"{args.split} images: " + ", ".join(f"{n} {len(v)}" for n, v in sets.items()))
    print(
        "\n| set | X-gal x | F1 / AJI / PQ | precision / recall | recall at IoU 0.1 per class "
        "| gaps at IoU 0.1 (points: unstained minus stained; negative, the unstained missed "
        "more) |"
    )
    print("|---|---|---|---|---|---|")
    for name, images in sets.items():
        assay = "sabgal" if name == "synthetic_sabgal" else SET_ASSAYS[name.split("#")[0]]
        for f in factors:
            t = time.perf_counter()
            seen = [dataclasses.replace(im, rgb=hidden(im.rgb, assay, f)) for im in images]
            r = evaluate_sets(seg, {name: seen})[name]
            pooled, mean = r["pooled"], r["mean"]
            at1 = r.get("recall_by_stain", {}).get("iou_0.1", {})
            gaps = ", ".join(f"{k[4:]} {v['points']:+.1f}" for k, v in at1.items() if "gap_" in k)
            recalls = ", ".join(f"{k} {v['recall']:.3f}" for k, v in at1.items() if "gap_" not in k)
            print(
                f"| {name} | {f:g} | {pooled['f1']:.3f} / {mean['aji']:.3f} / {pooled['pq']:.3f} "
                f"| {pooled['precision']:.3f} / {pooled['recall']:.3f} | {recalls or '—'} "
                f"| {gaps or '—'} |",
                flush=True,
            )
            print(f"  ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
