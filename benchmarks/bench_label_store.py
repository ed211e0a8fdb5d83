"""Pasting a slide's nuclei into its label store: written through vs through the chunk cache.

``senpath.labels.LabelStore.add_instances`` pastes each tile's owned nuclei into the slide's
zarr label image (1024² int32 chunks, Blosc zstd 5). A tile's core lies on one chunk, and its
nuclei that cross the core's edge reach into the eight around it; written through, each of those
chunks is read, decoded, merged and compressed again for every tile. Since 2026-12-04 the store
pastes through :class:`senpath.labels.ChunkCache` (12 chunks held decoded, each compressed when
it leaves). With the network on a GPU and the post-processing in worker processes, the paste is
what stays in the analysing thread per tile.

The tiles' nuclei come from one ``senpath.analyze_slide`` run on a synthetic Ki67 slide
(``senpath.synth.write_slide``); then both ways paste them, in turns, ``--repeats`` times, with
nothing else running, and must give the same label image. Prints ms per tile, the ratio, and
the commit (pyramid + rename)::

    python benchmarks/bench_label_store.py              # 6144² px (33 tiles), about a minute
    python benchmarks/bench_label_store.py --size 4096
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=6144, help="slide side in px at 0.5 µm/px")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import senpath
    from senpath.config import AnalysisConfig
    from senpath.labels import LabelStore
    from senpath.synth import write_slide
    from senpath.tiling import paste

    tiles: list[list[Any]] = []
    original = LabelStore.add_instances

    def record(self: LabelStore, instances: Any) -> Any:
        tiles.append(list(instances))
        return original(self, instances)

    with tempfile.TemporaryDirectory(prefix="senpath-labels-") as tmp:
        path = Path(tmp) / "ki67.tif"
        write_slide(path, assay="ki67", shape=(args.size, args.size), mpp=0.5, seed=0,
                    tile_size=256, compression="jpeg", write_labels=False)  # fmt: skip
        with mock.patch.object(LabelStore, "add_instances", record):
            senpath.analyze_slide(path, out=Path(tmp) / "run", assay="ki67",
                                  config=AnalysisConfig(segmenter="cnn", device="cpu"))  # fmt: skip
        shape = (args.size, args.size)

        def through(store: LabelStore) -> None:  # the store before the cache
            for instances in tiles:
                ids = paste(store.level0, instances, next_id=store.next_id)
                store.next_id += int(np.count_nonzero(ids))

        def cached(store: LabelStore) -> None:
            for instances in tiles:
                store.add_instances(instances)

        ways = {"written through (before)": through, "through the chunk cache": cached}
        paste_s: dict[str, list[float]] = {name: [] for name in ways}
        commit_s: dict[str, list[float]] = {name: [] for name in ways}
        images: dict[str, Any] = {}
        for r in range(args.repeats):
            for name, way in ways.items():
                store = LabelStore(Path(tmp) / f"s{r}{len(images)}", shape, mpp=0.5)
                t = time.perf_counter()
                way(store)
                paste_s[name].append(time.perf_counter() - t)
                t = time.perf_counter()
                final = store.commit()
                commit_s[name].append(time.perf_counter() - t)
                images[name] = senpath.labels.load_labels(final.parent).compute()
        a, b = images.values()
        if not np.array_equal(a, b):
            raise SystemExit("the two ways gave different label images")

    n = len(tiles)
    print(f"\n### Label store paste, {args.size}² px slide: {n} tiles, "
          f"{sum(len(t) for t in tiles)} nuclei (best of {args.repeats})\n")  # fmt: skip
    print("| paste | ms per tile | commit s | speed-up |\n|---|---:|---:|---:|")
    base = min(paste_s["written through (before)"]) / n
    for name in ways:
        per = min(paste_s[name]) / n
        print(f"| {name} | {per * 1e3:.1f} | {min(commit_s[name]):.2f} | {base / per:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
