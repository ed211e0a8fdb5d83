"""Ki67 scoring on the real DeepLIIF IHC tiles, through the whole pipeline (our own segmentation).

Each tile (``../shared/data/ki67_ihc_tiles``, ~0.25 µm/px) is analysed as a user would analyse a photo:
``senpath.analyze_slide(tile, assay="ki67", mpp=0.25)`` (tissue mask, CNN nuclei at 0.5 µm/px, stain
estimation, measurement, calls). Predicted cells are paired with the annotated nuclei by centroid
(``senpath.validation.match_cells``, 4 µm), then per tile and pooled it prints: detection F1,
Ki67 positivity F1 on the paired cells, the share of annotated Ki67-positive and Ki67-negative nuclei
that got a cell (detection recall per class: a detector that misses stained nuclei biases the LI), and
the Ki67 labelling index (LI) of all predicted cells against the annotated LI, and the tile's
hematoxylin level as the CNN saw it with its faint-counterstain flag (``summary.json``). Tiles
the shipped CNN was trained on are marked; only the held-out ones
(``senpath.segment.datasets.KI67_VALIDATION``) judge it. A second block scores the annotated nuclei themselves (scoring without segmentation
error) for comparison. Prints a Markdown table::

    python benchmarks/ki67_real_tiles.py [--segmenter cnn|classical] [--device cpu] [--model DIR]
    python benchmarks/ki67_real_tiles.py --shifts 8     # + the LI over 8 phases of the grid
    python benchmarks/ki67_real_tiles.py --shifts 8 --no-counterstain   # the CNN input as it is

A 512² tile holds 40-190 annotated nuclei, so one nucleus moves its LI by 0.5-2.5 points, and the
network (a max-pool U-Net, stride 16 px at 0.5 µm/px) is not shift-invariant: the same tile moved
by one pixel can find or lose a marginal nucleus. ``--shifts N`` runs each tile N times, reflect-
padded by 0..N-1 px of the network's grid on the top and left (cells moved back, those in the
padding dropped), and prints the LI's mean and range over the phases: compare models on the mean.

The annotations do not label every nucleus (pale hematoxylin nuclei are often missing), so detection
precision is understated; the LI compares like with like only as far as the annotators labelled.
"LI (paired cells)" is the LI of the predicted cells that were paired with an annotated nucleus:
its error is the calls' and the per-class detection's, without the unannotated cells. Two tiles'
label panels are off their images (Lung1 by 7 px, Bladder1 by 6 px at 0.25 µm/px): they are moved
back first (``senpath.segment.datasets.annotation_offset``, model-blind; the offset is printed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ki67_ihc_tiles"
MPP = 0.25


def _truth(stem: Path) -> tuple[pd.DataFrame, tuple[int, int]]:
    from skimage.measure import regionprops_table

    from senpath.segment.datasets import ki67_tile

    # the label panel moved onto the image where DeepLIIF's is off (Lung1, Bladder1)
    _, labels, offset = ki67_tile(stem.parent.parent, stem.name)
    positive = json.loads(Path(f"{stem}_positive.json").read_text())
    props = regionprops_table(labels, properties=("label", "centroid"))
    truth = pd.DataFrame(
        {
            "x_um": (props["centroid-1"] + 0.5) * MPP,
            "y_um": (props["centroid-0"] + 0.5) * MPP,
            "ki67_positive": [positive.get(str(i), 0) == 1 for i in props["label"]],
        }
    )
    return truth, offset


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else float("nan")


def _cells(stem: Path, shift: int, tmp: Path, config: Any) -> tuple[pd.DataFrame, dict]:
    """The pipeline's cells of one tile, in the tile's own µm, and the tile's faint-counterstain
    record (``summary.json`` ``counterstain_qc``, ``{}`` without one). With ``shift`` > 0 the tile is
    reflect-padded by ``shift`` px on the top and left first, so the same nuclei sit at another
    phase of the network's pooling grid (its stride is 16 px at 0.5 µm/px: a max-pool U-Net is not
    shift-invariant, and a marginal nucleus can be found at one phase and not at the next); cells
    are moved back and those outside the tile (in the padding) dropped."""
    import imageio.v3 as iio

    import senpath

    image = f"{stem}_ihc.png"
    if shift:
        rgb = iio.imread(image)[..., :3]
        image = str(tmp / f"{stem.name}_shift{shift}.png")
        iio.imwrite(image, np.pad(rgb, ((shift, 0), (shift, 0), (0, 0)), mode="reflect"))
    store = senpath.analyze_slide(
        image, out=tmp / f"shift{shift}", assay="ki67", config=config, mpp=MPP, slide_id=stem.name
    )
    res = senpath.load_results(store)
    cells = res.cells
    if shift:
        cells = cells.assign(x_um=cells["x_um"] - shift * MPP, y_um=cells["y_um"] - shift * MPP)
        cells = cells[(cells["x_um"] >= 0) & (cells["y_um"] >= 0)].reset_index(drop=True)
    return cells, res.summary.get("counterstain_qc") or {}


def _counterstain_text(qc: dict) -> str:
    """``0.36 (ok)``: the slide's counterstain level as the CNN saw it and its flag."""
    seen = qc.get("seen_od")
    return "-" if seen is None else f"{seen:.2f} ({qc.get('status', '')})"


def _score(
    cells: pd.DataFrame, truth: pd.DataFrame
) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    """One tile's figures: ``(row, found, pi, ti)`` (``found``: per annotated nucleus whether a
    cell was paired with it; ``pi``, ``ti``: the pairs)."""
    from senpath.validation import match_cells

    pi, ti = match_cells(cells[["x_um", "y_um"]].to_numpy(), truth[["x_um", "y_um"]].to_numpy())
    pred_pos = cells["ki67_positive"].to_numpy(dtype=bool)
    true_pos = truth["ki67_positive"].to_numpy(dtype=bool)
    found = np.zeros(len(truth), bool)
    found[ti] = True
    n = len(cells) + len(truth)
    row = {
        "detection F1": 2 * len(pi) / n if n else 0.0,
        "Ki67 F1 (paired)": _f1(pred_pos[pi], true_pos[ti]),
        "found Ki67+": found[true_pos].mean() if true_pos.any() else float("nan"),
        "found Ki67-": found[~true_pos].mean(),
        "LI": 100 * pred_pos.mean() if len(cells) else float("nan"),
        "LI truth": 100 * true_pos.mean(),
        "LI (paired cells)": 100 * pred_pos[pi].mean() if len(pi) else float("nan"),
    }
    return row, found, pi, ti


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segmenter", default="cnn", choices=("cnn", "classical"))
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None, help="model folder or JSON (default: the shipped one)")
    p.add_argument(
        "--shifts",
        type=int,
        default=1,
        help="also run each tile shifted by 1..N-1 px of the network's grid and print the LI's "
        "mean and range over the N phases (small tiles: one phase is a noisy figure)",
    )
    p.add_argument(
        "--no-counterstain",
        action="store_true",
        help="normalise_counterstain = false: the CNN sees the tiles as they are",
    )
    p.add_argument(
        "--test-time-flips",
        action="store_true",
        help="test_time_flips = true: the CNN's maps averaged over each tile's four flips",
    )
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs {SHARED} (the project's real data); not found")
        return 1

    from senpath.config import AnalysisConfig
    from senpath.segment.datasets import KI67_VALIDATION

    config = AnalysisConfig(
        segmenter=args.segmenter,
        device=args.device,
        model=args.model,
        normalise_counterstain=not args.no_counterstain,
        test_time_flips=args.test_time_flips,
    )
    stems = sorted(Path(str(q)[: -len("_ihc.png")]) for q in SHARED.glob("*_ihc.png"))
    rows = []
    pooled: dict = {"pred": [], "truth": [], "all_pred": [], "all_truth": [], "found": [],
                    "held_out": [], "tp": 0, "np": 0, "nt": 0}  # fmt: skip
    shifts = [2 * k for k in range(args.shifts)]  # 2 px at 0.25 µm/px: 1 px of the network's grid
    phase: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem in stems:
            truth, offset = _truth(stem)
            true_pos = truth["ki67_positive"].to_numpy(dtype=bool)
            n_pos = int(true_pos.sum())
            for shift in shifts:
                cells, counterstain = _cells(stem, shift, Path(tmp), config)
                row, found, pi, ti = _score(cells, truth)
                phase.append({"tile": stem.name, "shift": shift // 2, "cells": len(cells),
                              "n_pos": n_pos, "n_neg": len(truth) - n_pos, **row})  # fmt: skip
                if shift:
                    continue
                row = {
                    "tile": stem.name + ("" if stem.name in KI67_VALIDATION else " (trained)"),
                    "cells": len(cells),
                    "annotated": len(truth),
                    "label offset px": f"{offset[0]},{offset[1]}",
                    # the faint-counterstain flag: hematoxylin as the CNN sees it
                    "counterstain OD": _counterstain_text(counterstain),
                    **row,
                }
                rows.append(row)
                pred_pos = cells["ki67_positive"].to_numpy(dtype=bool)
                pooled["pred"].append(pred_pos[pi])
                pooled["truth"].append(true_pos[ti])
                pooled["all_pred"].append(pred_pos)
                pooled["all_truth"].append(true_pos)
                pooled["found"].append(found)
                pooled["held_out"].append(np.full(len(truth), stem.name in KI67_VALIDATION))
                pooled["tp"] += len(pi)
                pooled["np"] += len(cells)
                pooled["nt"] += len(truth)
    all_pred = np.concatenate(pooled["all_pred"])
    all_truth = np.concatenate(pooled["all_truth"])
    found = np.concatenate(pooled["found"])
    held = np.concatenate(pooled["held_out"])
    rows.append(
        {
            "tile": "pooled",
            "cells": pooled["np"],
            "annotated": pooled["nt"],
            "detection F1": 2 * pooled["tp"] / (pooled["np"] + pooled["nt"]),
            "Ki67 F1 (paired)": _f1(
                np.concatenate(pooled["pred"]), np.concatenate(pooled["truth"])
            ),
            "found Ki67+": found[all_truth].mean(),
            "found Ki67-": found[~all_truth].mean(),
            "LI": 100 * all_pred.mean(),
            "LI truth": 100 * all_truth.mean(),
            "LI (paired cells)": 100 * np.concatenate(pooled["pred"]).mean(),
        }
    )
    table = pd.DataFrame(rows)
    pos, neg = all_truth & held, ~all_truth & held
    print(
        f"held-out tiles ({', '.join(KI67_VALIDATION)}): found {found[pos].sum()}/{pos.sum()} "
        f"Ki67+ ({100 * found[pos].mean():.1f} %) and {found[neg].sum()}/{neg.sum()} Ki67- "
        f"({100 * found[neg].mean():.1f} %) annotated nuclei"
    )
    table["LI error"] = table["LI"] - table["LI truth"]
    table["paired LI error"] = table["LI (paired cells)"] - table["LI truth"]
    print(f"segmenter: {args.segmenter}; assay ki67 preset; tiles at {MPP} µm/px")
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for _, row in table.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        print("| " + " | ".join(cells) + " |")
    if len(shifts) > 1:
        print_phases(pd.DataFrame(phase), KI67_VALIDATION)
    return 0


def print_phases(phase: pd.DataFrame, held_out: tuple[str, ...] | list[str]) -> None:
    """Per tile over the grid phases: the LI's mean, range and error of the mean, and the share of
    annotated nuclei found per class (mean over the phases)."""
    n = phase["shift"].nunique()
    print(f"\nover {n} phases of the network's grid (the tile shifted 0-{n - 1} px at 0.5 µm/px):")
    cols = ["tile", "cells (mean)", "LI mean", "LI min", "LI max", "LI truth", "LI error of the mean",
            "found Ki67+ (mean)", "found Ki67- (mean)"]  # fmt: skip
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for tile, g in phase.groupby("tile", sort=True):
        name = tile + ("" if tile in held_out else " (trained)")
        li = g["LI"]
        print(
            f"| {name} | {g['cells'].mean():.1f} | {li.mean():.2f} | {li.min():.2f} | "
            f"{li.max():.2f} | {g['LI truth'].iloc[0]:.2f} | {li.mean() - g['LI truth'].iloc[0]:+.2f}"
            f" | {g['found Ki67+'].mean():.3f} | {g['found Ki67-'].mean():.3f} |"
        )
    held = phase[phase["tile"].isin(held_out)]
    if len(held):
        shares = []
        for cls, count in (("Ki67+", "n_pos"), ("Ki67-", "n_neg")):
            found = (held[f"found {cls}"] * held[count]).sum() / held[count].sum()
            shares.append(f"{100 * found:.1f} % of the {cls}")
        print(
            f"\nheld-out tiles, mean over the phases: found {' and '.join(shares)} annotated nuclei"
        )


if __name__ == "__main__":
    raise SystemExit(main())
