"""Stained-vs-unstained detection recall by counterstain level: where the faint-counterstain floors
come from (``senpath.segment.counterstain.FAINT_COUNTERSTAIN_OD``).

Every held-out MoNuSeg, CPM-15 and DSB-2018 image is re-rendered in every held-out stain
combination, ``--draws`` times (the validation rendering first, then the seeds of
``segment_diagnostics.py --draws``), normalised as ``senpath run`` normalises its assay, and
segmented by the model. Per image: the counterstain level the CNN sees (the plan's measure,
:func:`senpath.segment.counterstain.counterstain_level`, with the image's own estimated stain
vectors, of the image after its normalisation) and which stained and unstained nuclei were found
(IoU 0.1). Pooled per counterstain and level band, and below / above each shipped floor::

    python benchmarks/counterstain_level_gaps.py              # 4 renderings, the shipped model
    python benchmarks/counterstain_level_gaps.py --draws 1 --model DIR

Prints Markdown tables (images; recall of unstained / stained nuclei; gap = unstained minus
stained, in points: negative = unstained nuclei missed more, a marker's % positive reads high).
Needs ``../shared``. About 4 minutes on one core for 4 renderings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Level bands (log10 OD) of the first table.
BANDS = ((0.0, 0.3), (0.3, 0.4), (0.4, np.inf))


class ImageCounts(NamedTuple):
    """One image: its counterstain, the level the CNN saw, and its nuclei found / annotated."""

    counterstain: str
    level: float
    unstained_found: int
    unstained: int
    stained_found: int
    stained: int


def seen_level(rgb: np.ndarray, assay: Any) -> tuple[str, float]:
    """``assay``'s counterstain (its first nuclear stain) and its level in ``rgb``, from the
    image's own glass intensity and estimated stain vectors, as a slide's plan measures it."""
    from senpath.segment.counterstain import image_counterstain
    from senpath.stain import StainSet

    prior = StainSet.from_names(assay.stains, overrides=assay.stain_vectors)
    stain = assay.nuclear_stains[0]
    _, _, level = image_counterstain(rgb, prior, stain, max_angle_deg=assay.stain_tolerance_deg)
    return stain, level


def image_counts(name: str, images: Sequence[Any], model: Any) -> list[ImageCounts]:
    """Per image of validation set ``name``, normalised as its assay is in ``senpath run``."""
    from senpath.config import get_assay
    from senpath.segment.evaluate import found_true_ids
    from senpath.segment.export import SET_ASSAYS, normalised_images
    from senpath.segment.predict import predict_instances

    assay = get_assay(SET_ASSAYS[name])
    seen, _ = normalised_images(name, list(images))
    out = []
    for im in seen:
        pred = predict_instances(im.rgb, mpp=im.mpp, model=model)
        ids = np.unique(im.labels)
        ids = ids[ids > 0]
        found = np.isin(ids, found_true_ids(im.labels, pred, thresh=0.1))
        stained = np.zeros(len(ids), bool)
        for labels in (im.stained or {}).values():
            stained |= np.isin(ids, labels)
        stain, level = seen_level(im.rgb, assay)
        out.append(
            ImageCounts(
                stain, level, int((found & ~stained).sum()), int((~stained).sum()),
                int((found & stained).sum()), int(stained.sum()),
            )
        )  # fmt: skip
    return out


def pooled(rows: Sequence[ImageCounts]) -> str:
    """``images; recall unstained / stained; gap`` of ``rows`` pooled (``-`` when empty)."""
    nu, ns = sum(r.unstained for r in rows), sum(r.stained for r in rows)
    if not nu or not ns:
        return "-"
    ru = sum(r.unstained_found for r in rows) / nu
    rs = sum(r.stained_found for r in rows) / ns
    return f"{len(rows)}; {ru:.3f} / {rs:.3f}; {100 * (ru - rs):+.1f}"


def tables(rows: Sequence[ImageCounts]) -> list[str]:
    """The two Markdown tables: per counterstain and band, and below / above its floor."""
    from senpath.segment.counterstain import FAINT_COUNTERSTAIN_DEFAULT_OD, FAINT_COUNTERSTAIN_OD

    stains = sorted({r.counterstain for r in rows})
    bands = [f"{lo:g}-{hi:g} OD" if np.isfinite(hi) else f">= {lo:g} OD" for lo, hi in BANDS]
    lines = ["| counterstain | " + " | ".join(bands) + " |", "|---" * (1 + len(bands)) + "|"]
    for stain in stains:
        mine = [r for r in rows if r.counterstain == stain]
        cells = [pooled([r for r in mine if lo <= r.level < hi]) for lo, hi in BANDS]
        lines.append(f"| {stain} | " + " | ".join(cells) + " |")
    lines += ["", "| counterstain | floor (OD) | below | at or above |", "|---|---|---|---|"]
    for stain in stains:
        floor = FAINT_COUNTERSTAIN_OD.get(stain, FAINT_COUNTERSTAIN_DEFAULT_OD)
        mine = [r for r in rows if r.counterstain == stain]
        below = pooled([r for r in mine if r.level < floor])
        above = pooled([r for r in mine if r.level >= floor])
        lines.append(f"| {stain} | {floor:g} | {below} | {above} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import torch

    from senpath.segment import data as D
    from senpath.segment.export import VALIDATION_RECIPES
    from senpath.segment.predict import NucleusSegmenter
    from senpath.segment.train import DEFAULT_DATA_ROOT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="model folder or JSON (shipped)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--draws", type=int, default=4, help="renderings of the held-out images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--precision", default="bf16", choices=("auto", "fp32", "bf16", "onnx-fp32", "onnx-int8")
    )
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error("--draws must be at least 1")
    if not Path(args.data_root).is_dir():
        print(f"needs {args.data_root} (the project's real data); not found")
        return 1
    torch.set_num_threads(args.threads)
    model = NucleusSegmenter.from_pretrained(args.model, "cpu", precision=args.precision)
    root = args.data_root
    he = [
        *D.load_monuseg(root, split="validation", native=True),
        *D.load_cpm15(root, split="validation", native=True),
        *D.load_dsb2018(root, split="validation", native=True),
    ]
    rows: list[ImageCounts] = []
    for j in range(args.draws):
        for k, recipe in enumerate(VALIDATION_RECIPES):
            # j = 0 is export.validation_sets' rendering, as in segment_diagnostics.py --draws
            images = D.rerendered(he, recipe, np.random.default_rng(1000 + k + 100 * j))
            rows += image_counts(f"rerendered_{recipe}", images, model)
        print(f"rendering {j + 1} of {args.draws} done", file=sys.stderr)
    print(
        f"\n## Recall at IoU 0.1 by the counterstain level the CNN sees ({args.draws} renderings "
        f"of the held-out images, {len(rows)} images; cells: images; unstained / stained; gap)\n"
    )
    print("\n".join(tables(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
