"""Evaluate a training checkpoint on the held-out images and export it as the shipped model.

``python -m senpath.segment.export --checkpoint RUN/step_XXXXXX.pt [--out models] [--tune]``, or
``--model DIR`` to measure a shipped model the same way (compare two models under the same code).

- ``--tune`` picks the post-processing thresholds on *training* images (a few MoNuSeg, CoNSeP and
  Ki67 images the network saw), never on the validation images, so validation scores stay honest;
  ``--thresholds-from MODEL`` takes another model's instead (e.g. ``models``: the shipped model's),
  so that two weights are compared with the same post-processing.
- Validation (held-out MoNuSeg ×6 at 0.25 µm/px, CoNSeP test, CPM-15 ×3, DSB-2018 ×15, Ki67 ×2,
  and the held-out H&E images re-rendered in every stain combination with a chromogen in a known
  subset of nuclei) runs through :func:`~senpath.segment.predict.predict_instances` at the images'
  native resolution, exactly as a user would call it. Where the stained nuclei are known (the
  Ki67-positive nuclei of the DeepLIIF tiles, the re-rendered sets), detection recall is given for
  stained and unstained nuclei separately (:func:`~senpath.segment.evaluate.recall_by_stain`).
- With ``--out`` the weights (float16) and ``nucleus_unet.json`` (config, thresholds, metrics, sha256)
  are written there.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from senpath.segment import data as D
from senpath.segment.postprocess import PostprocessConfig

#: Stain recipes the held-out H&E images are re-rendered in for validation.
VALIDATION_RECIPES = ("h_dab", "h_dab_fast_red", "xgal_nfr", "xgal_h_dab", "xgal_eosin")
#: The assay preset each validation set is stained as (``rerendered_<recipe>``, real sets).
SET_ASSAYS = {
    "monuseg": "he",
    "consep_test": "he",
    "cpm15": "he",
    "dsb2018": "he",
    "ki67": "ki67",
    **{f"rerendered_{r}": D.RECIPE_ASSAYS[r] for r in VALIDATION_RECIPES},
}
#: IoU thresholds of the stained-vs-unstained detection recall (0.1: found at all).
RECALL_IOUS = (0.5, 0.1)


def validation_sets(
    root: Path, *, consep_limit: int | None = None
) -> dict[str, list[D.AnnotatedImage]]:
    """Held-out images at native resolution, plus the held-out MoNuSeg, CPM-15 and DSB-2018 images
    re-rendered in every :data:`VALIDATION_RECIPES` (seeded, fixed) as ``rerendered_<recipe>``."""
    sets = {
        "monuseg": D.load_monuseg(root, split="validation", native=True),
        "consep_test": D.load_consep(root, split="test", limit=consep_limit, native=True),
        "cpm15": D.load_cpm15(root, split="validation", native=True),
        "dsb2018": D.load_dsb2018(root, split="validation", native=True),
        "ki67": D.load_ki67(root, split="validation", native=True),
    }
    return with_rerendered(sets, seed=1000)


def normalised_images(
    name: str,
    images: list[D.AnnotatedImage],
    *,
    reference: float | Mapping[str, float] | None = None,
) -> tuple[list[D.AnnotatedImage], list[float]]:
    """``images`` of validation set ``name`` as the CNN sees them in ``senpath run``: each one's
    counterstain normalised to its set's assay (:data:`SET_ASSAYS`) reference, or to
    ``reference`` (a level, or levels per assay that replace the presets' for the assays they
    name: :func:`senpath.segment.counterstain.assay_boost`); and each one's gain."""
    import dataclasses

    from senpath.config import get_assay
    from senpath.segment.counterstain import assay_boost

    assay = get_assay(SET_ASSAYS[name])
    if isinstance(reference, Mapping):
        reference = reference.get(assay.name)
    out, gains = [], []
    for im in images:
        boost = assay_boost(im.rgb, assay, reference=reference)
        gains.append(1.0 if boost is None else boost.gain)
        out.append(im if boost is None else dataclasses.replace(im, rgb=boost(im.rgb)))
    return out, gains


def with_rerendered(
    sets: dict[str, list[D.AnnotatedImage]], *, seed: int
) -> dict[str, list[D.AnnotatedImage]]:
    """``sets`` and, as ``rerendered_<recipe>``, their MoNuSeg, CPM-15 and DSB-2018 images
    re-rendered in every :data:`VALIDATION_RECIPES` (recipe ``k`` drawn with seed ``seed + k``)."""
    he = sets.get("monuseg", []) + sets.get("cpm15", []) + sets.get("dsb2018", [])
    for k, recipe in enumerate(VALIDATION_RECIPES):
        sets[f"rerendered_{recipe}"] = D.rerendered(he, recipe, np.random.default_rng(seed + k))
    return sets


def ways_table(
    reports: dict[str, dict[str, dict[str, Any]]],
    *,
    extra: tuple[str, dict[str, str]] | None = None,
) -> list[str]:
    """Markdown rows comparing ways of running the same sets (way -> :func:`evaluate_sets`
    result): pooled F1 / AJI (per-image mean) / PQ per way, then each way's gaps at IoU 0.1
    (:func:`gap_summary`), then ``extra``'s column (header, set -> text) if given."""
    ways = list(reports)
    names = list(reports[ways[0]])
    header = [f"{w} F1 / AJI / PQ" for w in ways] + [f"gaps IoU 0.1, {w}" for w in ways]
    header += [extra[0]] if extra else []
    rows = ["| set | " + " | ".join(header) + " |", "|---" * (1 + len(header)) + "|"]
    for name in names:
        cells = []
        for way in ways:
            r = reports[way][name]
            cells.append(
                f"{r['pooled']['f1']:.3f} / {r['mean']['aji']:.3f} / {r['pooled']['pq']:.3f}"
            )
        cells += [gap_summary(reports[way][name]) for way in ways]
        cells += [extra[1][name]] if extra else []
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def gap_summary(report: dict[str, Any], iou: str = "0.1") -> str:
    """One set's stained-vs-unstained recall gaps at ``iou`` (an :func:`evaluate_sets` entry),
    e.g. ``"dab -8.6, xgal -7.2"``."""
    by = report.get("recall_by_stain", {}).get(f"iou_{iou}", {})
    return ", ".join(f"{k[4:]} {v['points']:+.1f}" for k, v in by.items() if k.startswith("gap_"))


def tuning_set(root: Path) -> list[D.AnnotatedImage]:
    """Training images used only to choose post-processing thresholds."""
    mon = D.load_monuseg(root, split="train", native=True)[:3]
    con = D.load_consep(root, split="train", limit=24, native=True)
    ki = D.load_ki67(root, split="train", native=True)[:2]
    return mon + con + ki


def _maps(seg, images: list[D.AnnotatedImage]) -> list[np.ndarray]:
    out = []
    for im in images:
        shape = D.shape_at_mpp(im.rgb.shape, im.mpp, seg.mpp)
        work = D.resample_rgb(im.rgb, shape) if shape != im.rgb.shape[:2] else im.rgb
        out.append(seg.predict_image_maps(work))
    return out


def postprocessed_labels(
    seg, images: list[D.AnnotatedImage], maps: list[np.ndarray], config: PostprocessConfig
) -> list[np.ndarray]:
    """Each image's instances from its network maps (:func:`_maps`) post-processed with
    ``config``, on the image's own grid: thresholds tried without running the network again."""
    from senpath.segment.postprocess import maps_to_instances

    return [
        D.resample_labels(
            maps_to_instances(m[0], m[1], mpp=seg.mpp, config=config), im.labels.shape
        )
        for im, m in zip(images, maps, strict=True)
    ]


def tune_postprocess(seg, images: list[D.AnnotatedImage]) -> tuple[PostprocessConfig, float]:
    """Grid-search foreground and marker thresholds for pooled F1 on ``images``."""
    from stardist.matching import matching_dataset

    maps = _maps(seg, images)
    best = (PostprocessConfig(), -1.0)
    for fg_t, mk_t in itertools.product((0.4, 0.5, 0.6), (0.3, 0.4, 0.5, 0.6)):
        cfg = PostprocessConfig(foreground_threshold=fg_t, marker_threshold=mk_t)
        preds = postprocessed_labels(seg, images, maps, cfg)
        f1 = float(
            matching_dataset(
                [im.labels for im in images], preds, thresh=0.5, show_progress=False
            ).f1
        )
        if f1 > best[1]:
            best = (cfg, f1)
    return best


def evaluate_sets(seg, sets: dict[str, list[D.AnnotatedImage]]) -> dict[str, dict[str, Any]]:
    """Pooled and per-image-mean scores per validation set (see :mod:`senpath.segment.evaluate`)."""
    from senpath.segment.evaluate import evaluate_labels, recall_by_stain
    from senpath.segment.predict import predict_instances

    def rounded(d: dict[str, Any]) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}

    results: dict[str, dict[str, Any]] = {}
    for name, images in sets.items():
        t = time.perf_counter()
        preds = [predict_instances(im.rgb, mpp=im.mpp, model=seg) for im in images]
        trues = [im.labels for im in images]
        ev = evaluate_labels(trues, preds, [im.name for im in images])
        results[name] = {"pooled": rounded(ev.pooled), "mean": rounded(ev.mean)}
        if any(im.stained for im in images):
            results[name]["recall_by_stain"] = {
                f"iou_{iou}": {
                    k: rounded(v)
                    for k, v in recall_by_stain(
                        trues, preds, [im.stained for im in images], thresh=iou
                    ).items()
                }
                for iou in RECALL_IOUS
            }
        results[name]["seconds"] = round(time.perf_counter() - t, 1)
    return results


def reproduce_command(ckpt: dict[str, Any]) -> str:
    """The ``senpath.segment.train`` command line that reproduces a checkpoint (for one made
    by :mod:`senpath.segment.average`, the averaging command; its sources' own are recorded
    beside it; for one trained by :mod:`senpath.segment.localsgd`, its command)."""
    if "averaged" in ckpt:
        return str(ckpt["averaged"]["command"])
    if "local_sgd" in ckpt:
        return str(ckpt["local_sgd"]["command"])
    args = ckpt.get("args", {})
    parts = ["python -m senpath.segment.train --out RUN"]
    parts.append(f"--seed {ckpt.get('seed', 0)} --steps {ckpt['total_steps']}")
    keys = (
        "init",
        "init_seed",
        "lr",
        "synthetic_share",
        "pale_share",
        "pale_floor",
        "pale_blur",
        "faint_share",
        "faint_range",
        "recipe_weights",
        "source_weights",
        "counterstain_references",
        "stained_weight",
        "contact_weight",
        "ignore_padding",
        "data_pack",
        "device",
        "widths",
        "stem",
        "pool",
        "batch_size",
        "crop_size",
    )
    # Defaults of options added after runs that did not have them: left out, as those runs were.
    defaults = {
        "pale_share": ("0", "0.0"),
        "pale_floor": ("0.25",),
        "pale_blur": ("0", "0.0"),
        "faint_share": ("0", "0.0"),
        "faint_range": (str(D.FAINT_RANGE),),
        "stained_weight": ("1", "1.0"),
        "contact_weight": ("1", "1.0"),
        "ignore_padding": ("False",),
        "device": ("cpu",),
        "stem": ("0",),
    }
    fine_tune = args.get("init") not in (None, "None", "")
    weight_dicts = ("recipe_weights", "source_weights", "counterstain_references")
    for key in (*keys, "threads"):
        value = args.get(key)
        if value in defaults.get(key, ()):
            continue
        if fine_tune and key == "widths":  # the network is the --init model's; not read
            continue
        if key in weight_dicts and value not in (None, "None", ""):
            # Stored as the dict's repr in the checkpoint; written back as NAME=W,... ("none": {})
            weights = ast.literal_eval(value)
            value = ",".join(f"{k}={v}" for k, v in weights.items()) or "none"
        if key == "faint_range" and value not in (None, "None", ""):
            value = ",".join(str(v) for v in ast.literal_eval(value))  # stored as the tuple's repr
        if key == "ignore_padding" and value == "True":  # a switch: no value
            parts.append("--ignore-padding")
        elif value not in (None, "None", ""):
            parts.append(f"--{key.replace('_', '-')} {value}")
    if int(ckpt["step"]) < int(ckpt["total_steps"]):
        parts.append(f"--stop-at {int(ckpt['step'])}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m senpath.segment.export``."""
    import torch

    from senpath.segment.net import build_model
    from senpath.segment.predict import NucleusSegmenter
    from senpath.segment.train import DEFAULT_DATA_ROOT
    from senpath.segment.weights import export_checkpoint, load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a training checkpoint (RUN/step_N.pt)")
    source.add_argument(
        "--model",
        type=Path,
        help="evaluate a shipped model folder or JSON (e.g. models/) with its own thresholds; "
        "compares models under the same code (no --out, no --tune)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the shipped model here (models/)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    thresholds = p.add_mutually_exclusive_group()
    thresholds.add_argument(
        "--tune", action="store_true", help="choose thresholds on training images"
    )
    thresholds.add_argument(
        "--thresholds-from",
        type=Path,
        default=None,
        metavar="MODEL",
        help="post-process with this model's thresholds (e.g. models: the shipped model's)",
    )
    p.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16", "onnx-fp32", "onnx-int8")
    )
    p.add_argument("--consep-limit", type=int, default=None, help="CoNSeP test patches (all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", type=Path, default=None, help="write the metrics JSON here")
    args = p.parse_args(argv)
    if args.report is not None:  # checked before the validation's minutes, not after
        try:
            args.report.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            p.error(f"--report {args.report}: cannot make its folder ({exc.strerror})")
    torch.set_num_threads(args.threads)
    ckpt: dict[str, Any] | None = None
    if args.model is not None:
        if args.out is not None or args.tune or args.thresholds_from is not None:
            p.error(
                "--model evaluates a shipped model: --out, --tune and --thresholds-from need a "
                "--checkpoint"
            )
        seg = NucleusSegmenter.from_pretrained(args.model, "cpu", precision=args.precision)
        report: dict[str, Any] = {"model": str(args.model)}
    else:
        ckpt = load_checkpoint(args.checkpoint)
        model = build_model(ckpt["net_config"])
        model.load_state_dict(ckpt["model"])
        seg = NucleusSegmenter(model, device="cpu", precision=args.precision)
        report = {"checkpoint": str(args.checkpoint), "step": int(ckpt["step"])}
    report["precision"] = seg.precision
    if args.tune:
        cfg, f1 = tune_postprocess(seg, tuning_set(args.data_root))
        seg.postprocess = cfg
        report["tuning_f1_pooled"] = round(f1, 4)
    elif args.thresholds_from is not None:
        from senpath.segment.postprocess import PostprocessConfig
        from senpath.segment.weights import load_pretrained

        _, spec = load_pretrained(args.thresholds_from)
        seg.postprocess = PostprocessConfig(**(spec.get("postprocess") or {}))
        report["thresholds_from"] = str(args.thresholds_from)
    report["postprocess"] = seg.postprocess.to_dict()
    report["validation"] = evaluate_sets(
        seg, validation_sets(args.data_root, consep_limit=args.consep_limit)
    )
    print(json.dumps(report, indent=2))
    if args.report:
        from senpath.results import atomic_write_bytes

        atomic_write_bytes(args.report, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    if args.out and ckpt is not None:  # --model refuses --out above
        js = export_checkpoint(
            args.checkpoint,
            args.out,
            postprocess=seg.postprocess.to_dict(),
            metrics={
                "note": "F1/PQ at IoU 0.5 pooled over all nuclei of a set, and per-image means; "
                "AJI per-image mean (cellseg_metrics); held-out images only",
                "precision": seg.precision,
                **report["validation"],
            },
            training={
                "reproduce": reproduce_command(ckpt),
                "checkpoint_step": int(ckpt["step"]),
                "total_steps": ckpt["total_steps"],
                "args": ckpt.get("args", {}),
                **({"averaged": ckpt["averaged"]["sources"]} if "averaged" in ckpt else {}),
                **({"local_sgd": ckpt["local_sgd"]} if "local_sgd" in ckpt else {}),
            },
        )
        print(f"exported {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
