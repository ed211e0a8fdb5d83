"""Which held-out MoNuSeg nuclei a network misses: by darkness and size, against another network.

``python benchmarks/missed_by_darkness.py [--model DIR ...]`` (default: the shipped model only;
``shipped`` names it in a list). A nucleus is *missed* when less than 20 % of its annotated pixels
fall in any predicted nucleus (so a nucleus merged with a neighbour is not missed), *merged* when
the predicted nucleus covering most of it (at least half) covers most of another annotated
nucleus too. Darkness is the annotated nucleus' mean optical density
(``senpath.stain.rgb_to_od``, summed over R, G, B); its thirds are those of all annotated nuclei,
the same for every model. Prints one table: per model, the share of nuclei missed per third of darkness and per size, and the merged share.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from senpath.segment import datasets as DS  # noqa: E402
from senpath.segment.evaluate import segment_image  # noqa: E402
from senpath.segment.predict import NucleusSegmenter  # noqa: E402
from senpath.stain import rgb_to_od  # noqa: E402

SIZES_UM2 = ((0.0, 20.0), (20.0, 40.0), (40.0, np.inf))


def nucleus_rows(seg: NucleusSegmenter, images: list) -> np.ndarray:
    """(N, 4): area µm², mean OD, share of the nucleus predicted, merged (0/1) per annotated
    nucleus."""
    from scipy import ndimage as ndi

    rows = []
    for im in images:
        pred = segment_image(im.rgb, mpp=im.mpp, device="cpu", model=seg)
        od = rgb_to_od(im.rgb).sum(-1)
        owners: dict[int, list[int]] = {}
        for g, box in enumerate(ndi.find_objects(im.labels), start=1):
            if box is None:
                continue
            m = im.labels[box] == g
            inside = pred[box][m]
            ids, counts = np.unique(inside, return_counts=True)
            counts = np.where(ids > 0, counts, 0)
            k = int(np.argmax(counts))
            share = counts[k] / m.sum()
            if share >= 0.5:
                owners.setdefault(int(ids[k]), []).append(len(rows))
            rows.append([m.sum() * im.mpp**2, od[box][m].mean(), (inside > 0).mean(), 0.0])
        for members in owners.values():
            if len(members) > 1:
                for i in members:
                    rows[i][3] = 1.0
    return np.array(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model folder or 'shipped' (repeatable)")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    args = p.parse_args(argv)
    if not (args.data_root / "monuseg_train").is_dir():
        print(f"error: {args.data_root}: no MoNuSeg data (../shared/data)", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    images = DS.load_monuseg(args.data_root, split="validation", native=True)
    table = {}
    for name in args.model or ["shipped"]:
        seg = NucleusSegmenter.from_pretrained(None if name == "shipped" else name)
        table[name] = nucleus_rows(seg, images)
    first = next(iter(table.values()))
    low, high = np.quantile(first[:, 1], [1 / 3, 2 / 3])
    thirds = {"faint": first[:, 1] < low, "middle": (first[:, 1] >= low) & (first[:, 1] < high)}
    thirds["dark"] = first[:, 1] >= high
    sizes = {f"{a:g}-{b:g} µm²": (first[:, 0] >= a) & (first[:, 0] < b) for a, b in SIZES_UM2}
    print(f"MoNuSeg held out: {len(first)} annotated nuclei in {len(images)} images; OD thirds "
          f"at {low:.2f} / {high:.2f}")  # fmt: skip
    head = ["missed", *(f"missed, {k} third" for k in thirds), *(f"missed, {k}" for k in sizes)]
    print("| model | " + " | ".join([*head, "merged"]) + " |")
    print("|---|" + "---|" * (len(head) + 1))
    for name, rows in table.items():
        missed = rows[:, 2] < 0.2
        cells = [missed.mean(), *(missed[s].mean() for s in thirds.values())]
        cells += [missed[s].mean() for s in sizes.values()]
        cells.append(rows[:, 3].mean())
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
