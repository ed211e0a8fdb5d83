"""Where the nucleus CNN loses F1 on the held-out real images: detection, boundaries or resolution.

Usage::

    python benchmarks/segment_diagnostics.py [--model models/] [--consep 60] [--threads 2]
    python benchmarks/segment_diagnostics.py --stained-only --draws 4 --counterstain
    python benchmarks/segment_diagnostics.py --stained-only --draws 4 --counterstain preset,sabgal-eosin=0.7

Prints three Markdown tables, all on held-out images only (MoNuSeg 3, CoNSeP test, Ki67 2):

1. The resolution ceiling: the annotations resampled to the network's 0.5 µm/px and back to their own
   grid (nearest neighbour), scored against themselves. This is the best any 0.5 µm/px segmenter
   could score once its instances are mapped back.
2. The model's pooled F1 at IoU 0.1, 0.3, 0.5 and 0.7. F1 at 0.1 is close to pure detection (a nucleus
   found at all); the drop from 0.1 to 0.5 is boundary disagreement.
3. Matched nuclei (IoU >= 0.1): median predicted / annotated area, per set, with its quartiles.
4. Stained vs unstained: detection recall (IoU 0.5 and 0.1) of the nuclei that carry a chromogen
   against those that carry none, on the DeepLIIF Ki67 tiles held out (real DAB: the annotated
   Ki67-positive nuclei) and on the held-out MoNuSeg, CPM-15 and DSB-2018 images re-rendered with
   DAB, Fast Red or X-gal in a known subset of nuclei. The gap is recall(unstained) minus
   recall(stained), in points. ``--stained-only`` prints this table alone.
   ``--counterstain``: each image first normalised as ``senpath run`` does for a slide of its
   set's assay (``senpath.segment.export.SET_ASSAYS``; :func:`senpath.segment.counterstain.
   assay_boost`, the assay's ``counterstain_reference_od``), tables 4 and 5 only;
   ``--counterstain preset,sabgal-eosin=0.7`` replaces or adds an assay's reference (a network
   trained with ``train --counterstain-references`` of its own).
5. With ``--draws N`` (N > 1): the re-rendered gaps at IoU 0.1 over N renderings of the same
   held-out images (the validation set's seed, then N - 1 others): mean and range. One rendering
   draws each image's counterstain strength and stained share once, so a gap measured on one
   moves by a few points from draw to draw (v5, X-gal + H + DAB: -6.2 to -9.0 for DAB over four).

Needs ``../shared/data`` (the project's real data); exits with a message when it is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IOUS = (0.1, 0.3, 0.5, 0.7)


def _held_out(consep: int) -> dict[str, list]:
    from senpath.segment import data as D

    return {
        "monuseg": D.load_monuseg(SHARED, split="validation", native=True),
        "consep_test": D.load_consep(SHARED, split="test", limit=consep, native=True),
        "ki67": D.load_ki67(SHARED, split="validation", native=True),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or JSON (default: the shipped one)")
    p.add_argument("--consep", type=int, default=60, help="CoNSeP test images (even subsample)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--stained-only", action="store_true", help="only the stained-vs-unstained table"
    )
    p.add_argument(
        "--draws", type=int, default=1, help="renderings of the re-rendered sets (table 5 if > 1)"
    )
    p.add_argument(
        "--counterstain",
        nargs="?",
        const="preset",
        default=None,
        metavar="preset[,ASSAY=OD]",
        help="tables 4-5 with each assay's counterstain normalisation, as senpath run (ASSAY=OD: "
        "that assay's reference replaced or added, e.g. sabgal-eosin=0.7)",
    )
    args = p.parse_args(argv)
    references = None
    if args.counterstain is not None:
        from senpath.segment.counterstain import parse_references

        try:
            references = parse_references(args.counterstain)
        except ValueError as exc:
            p.error(f"--counterstain: {exc}")
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: this diagnostic needs the project's real data", file=sys.stderr)
        return 2

    import torch
    from stardist.matching import matching_dataset

    from senpath.segment import data as D
    from senpath.segment.evaluate import evaluate_labels
    from senpath.segment.predict import NucleusSegmenter, predict_instances

    torch.set_num_threads(args.threads)
    model = NucleusSegmenter.from_pretrained(args.model, device="cpu")
    if args.draws < 1:
        p.error("--draws must be at least 1")
    if args.stained_only:
        _stained_table(model, references)
        _draws_table(model, args.draws, references)
        return 0
    sets = _held_out(args.consep)

    print("## Resolution ceiling (annotations at 0.5 µm/px and back)\n")
    print("| set | images | F1@0.5 | PQ | AJI (mean) |")
    print("|---|---|---|---|---|")
    for name, ims in sets.items():
        trues = [im.labels for im in ims]
        backs = [
            D.resample_labels(
                D.resample_labels(im.labels, D.shape_at_mpp(im.labels.shape, im.mpp, model.mpp)),
                im.labels.shape,
            )
            for im in ims
        ]
        ev = evaluate_labels(trues, backs)
        print(
            f"| {name} | {len(ims)} | {ev.pooled['f1']:.3f} | {ev.pooled['pq']:.3f} "
            f"| {ev.mean['aji']:.3f} |"
        )

    preds = {
        name: [predict_instances(im.rgb, mpp=im.mpp, model=model) for im in ims]
        for name, ims in sets.items()
    }
    print("\n## Model F1 by IoU threshold (pooled)\n")
    print("| set | " + " | ".join(f"F1@{t}" for t in IOUS) + " |")
    print("|---|" + "---|" * len(IOUS))
    for name, ims in sets.items():
        trues = [im.labels for im in ims]
        f1s = [matching_dataset(trues, preds[name], thresh=t, show_progress=False).f1 for t in IOUS]
        print(f"| {name} | " + " | ".join(f"{f:.3f}" for f in f1s) + " |")

    from stardist.matching import matching

    print("\n## Matched nuclei (IoU >= 0.1): predicted / annotated area\n")
    print("| set | matched | median | 25 % | 75 % |")
    print("|---|---|---|---|---|")
    for name, ims in sets.items():
        ratios = []
        for im, pred in zip(ims, preds[name], strict=True):
            m = matching(im.labels, pred, thresh=0.1, report_matches=True)
            true_area = np.bincount(im.labels.ravel())
            pred_area = np.bincount(pred.ravel())
            ratios += [pred_area[j] / true_area[i] for i, j in m.matched_pairs]
        r = np.asarray(ratios)
        q = np.percentile(r, [50, 25, 75]) if len(r) else [np.nan] * 3
        print(f"| {name} | {len(r)} | {q[0]:.2f} | {q[1]:.2f} | {q[2]:.2f} |")
    _stained_table(model, references)
    _draws_table(model, args.draws, references)
    return 0


def _normalised(name: str, images: list, references: dict[str, float] | None) -> list:
    """``images`` of set ``name`` as the CNN sees them in ``senpath run`` with these counterstain
    references per assay (``None``: as they are)."""
    from senpath.segment.export import normalised_images

    return (
        images if references is None else normalised_images(name, images, reference=references)[0]
    )


def _draws_table(model, draws: int, references: dict[str, float] | None = None) -> None:
    """Table 5: the re-rendered sets' gaps at IoU 0.1 over ``draws`` renderings."""
    if draws < 2:
        return
    from senpath.segment import data as D
    from senpath.segment.evaluate import recall_by_stain
    from senpath.segment.export import VALIDATION_RECIPES
    from senpath.segment.predict import predict_instances

    he = [
        *D.load_monuseg(SHARED, split="validation", native=True),
        *D.load_cpm15(SHARED, split="validation", native=True),
        *D.load_dsb2018(SHARED, split="validation", native=True),
    ]
    shown = "" if references is None else ", counterstain normalised as senpath run"
    print(f"\n## Re-rendered gaps at IoU 0.1 over {draws} renderings (held-out images{shown})\n")
    print("| set | chromogen | gap per rendering (points) | mean | unstained recall (mean) |")
    print("|---|---|---|---|---|")
    for k, recipe in enumerate(VALIDATION_RECIPES):
        gaps: dict[str, list[float]] = {}
        unstained = []
        for j in range(draws):
            # j = 0 is the rendering of export.validation_sets (seed 1000 + k)
            images = D.rerendered(he, recipe, np.random.default_rng(1000 + k + 100 * j))
            images = _normalised(f"rerendered_{recipe}", images, references)
            preds = [predict_instances(im.rgb, mpp=im.mpp, model=model) for im in images]
            r = recall_by_stain(
                [im.labels for im in images], preds, [im.stained for im in images], thresh=0.1
            )
            unstained.append(r["unstained"]["recall"])
            for key, value in r.items():
                if key.startswith("gap_"):
                    gaps.setdefault(key[4:], []).append(value["points"])
        for chromogen, values in gaps.items():
            print(
                f"| rerendered_{recipe} | {chromogen} | "
                + ", ".join(f"{v:+.1f}" for v in values)
                + f" | **{np.mean(values):+.1f}** | {np.mean(unstained):.3f} |"
            )


def _stained_table(model, references: dict[str, float] | None = None) -> None:
    from senpath.segment.export import evaluate_sets, validation_sets

    sets = {
        k: _normalised(k, v, references)
        for k, v in validation_sets(SHARED).items()
        if k == "ki67" or "rerendered" in k
    }
    results = evaluate_sets(model, sets)
    shown = "" if references is None else ", counterstain normalised as senpath run"
    print(f"\n## Detection recall, stained vs unstained nuclei (held-out images{shown})\n")
    print("| set | chromogen | stained n | recall@0.5 stained | unstained | gap (points) "
          "| recall@0.1 stained | unstained | gap (points) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        at5, at1 = r["recall_by_stain"]["iou_0.5"], r["recall_by_stain"]["iou_0.1"]
        for chromogen in (k for k in at5 if k != "unstained" and not k.startswith("gap_")):
            print(
                f"| {name} | {chromogen} | {at5[chromogen]['total']} "
                f"| {at5[chromogen]['recall']:.3f} | {at5['unstained']['recall']:.3f} "
                f"| {at5['gap_' + chromogen]['points']:+.1f} "
                f"| {at1[chromogen]['recall']:.3f} | {at1['unstained']['recall']:.3f} "
                f"| {at1['gap_' + chromogen]['points']:+.1f} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
