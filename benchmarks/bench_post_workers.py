"""Post-processing worker processes (issue 18): end to end with a network that costs nothing.

On a GPU the network outruns one core's watershed and measurement ~40-fold, so the slide's time
is the post-processing's. This benchmark stands in for such a network on any machine: it runs
the CNN once over a synthetic Ki67 slide (``senpath.synth.write_slide``, JPEG-tiled pyramidal
TIFF at 0.5 µm/px), keeps its maps, and then times ``senpath.analyze_slide`` with a segmenter that
hands back those maps at once, for 0, 1, ... worker processes (``SENPATH_POST_WORKERS``; 0 is
the analysing thread alone). Each setting runs ``--repeats`` times, in turns, after one run that
starts its pool (start-up shown apart). Prints a Markdown table: wall, MP/s of analysed pixels,
speed-up over 0 workers, cells (the same for every row, or the run fails)::

    python benchmarks/bench_post_workers.py                        # 6144² px, 0-2 workers
    python benchmarks/bench_post_workers.py --size 8192 --workers 0,2,4,8

A speed-up near the worker count means the post-processing scales with cores; the cores left
over are what the read, the pasting into the label store and the writing in this process need.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

MPP = 0.5


class CachedNetwork:
    """The slide's CNN segmenter with its network maps computed once and then handed back at once
    (keyed by the tile's pixels): what a network much faster than the post-processing looks like."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.method = inner.method
        self.network = inner.network
        self.maps: dict[bytes, Any] = {}
        self.missed = 0

    @staticmethod
    def _key(rgb: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).digest()

    def network_maps(self, images: Any, *, mpp: float, context: Any = None) -> list[Any]:
        out = []
        for k, rgb in enumerate(images):
            key = self._key(rgb)
            if key not in self.maps:
                self.missed += 1
                ctx = None if context is None else [context[k]]
                (self.maps[key],) = self.inner.network_maps([rgb], mpp=mpp, context=ctx)
            out.append(self.maps[key])
        return out

    def labels_from_maps(self, maps: Any, shape: Any, *, mpp: float) -> Any:
        return self.inner.labels_from_maps(maps, shape, mpp=mpp)

    @property
    def maps_to_labels(self) -> Any:
        return self.inner.maps_to_labels

    def tile_batch(self, side_px: int) -> int:
        return 1

    def segment(self, rgb: Any, *, mpp: float, concentrations: Any = None) -> Any:
        return self.inner.segment(rgb, mpp=mpp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=6144, help="slide side in px at 0.5 µm/px")
    p.add_argument("--workers", default="0,1,2", help="worker counts, comma-separated")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]

    import senpath
    import senpath.slide_analysis as slide_analysis
    from senpath.config import AnalysisConfig
    from senpath.post_workers import POST_WORKERS_ENV
    from senpath.results import read_results
    from senpath.synth import write_slide
    from senpath.tile_engine import plan_segmenter

    config = AnalysisConfig(segmenter="cnn", device="cpu")
    cached: dict[str, CachedNetwork] = {}

    def segmenter(plan: Any) -> CachedNetwork:
        if "seg" not in cached:
            cached["seg"] = CachedNetwork(plan_segmenter(plan))
        return cached["seg"]

    with tempfile.TemporaryDirectory(prefix="senpath-post-") as tmp:
        path = Path(tmp) / f"ki67_{args.size}.tif"
        write_slide(path, assay="ki67", shape=(args.size, args.size), mpp=MPP, seed=0,
                    tile_size=256, compression="jpeg", write_labels=False)  # fmt: skip
        runs = 0

        def run(workers: int) -> tuple[float, int, float]:
            nonlocal runs
            runs += 1
            with (
                mock.patch.object(slide_analysis, "plan_segmenter", segmenter),
                mock.patch.dict(os.environ, {POST_WORKERS_ENV: str(workers)}),
            ):
                t = time.perf_counter()
                store = senpath.analyze_slide(path, out=Path(tmp) / f"out{runs}", assay="ki67",
                                              config=config)  # fmt: skip
                wall = time.perf_counter() - t
            result = read_results(store)
            analysed_mp = result.summary["tissue_area_mm2"] / (MPP * 1e-3) ** 2 / 1e6
            return wall, len(result.cells), analysed_mp

        t = time.perf_counter()
        run(0)  # the network once, maps kept
        print(f"network pass (maps kept): {time.perf_counter() - t:.1f} s; "
              f"{len(cached['seg'].maps)} tiles", file=sys.stderr)  # fmt: skip
        start = {}
        for w in counts:
            if w:
                start[w] = run(w)[0]  # starts the pool (kept for the process's later slides)
        walls: dict[int, list[float]] = {w: [] for w in counts}
        cells: set[int] = set()
        mp = 0.0
        for _ in range(args.repeats):
            for w in counts:
                wall, n, mp = run(w)
                walls[w].append(wall)
                cells.add(n)
        if cached["seg"].missed != len(cached["seg"].maps):
            raise SystemExit("a tile's maps were computed twice: the cached network missed")
        if len(cells) != 1:
            raise SystemExit(f"the cell counts differ between settings: {sorted(cells)}")

    base = min(walls[counts[0]])
    print(f"\n### analyze_slide with the network's maps ready ({args.size}² px, {mp:.1f} MP "
          f"analysed, {cells.pop()} cells; best of {args.repeats})\n")  # fmt: skip
    print("| post workers | wall s | MP/s | speed-up vs "
          f"{counts[0]} | first run (pool start) s |\n|---:|---:|---:|---:|---:|")  # fmt: skip
    for w in counts:
        best = min(walls[w])
        first = f"{start[w]:.1f}" if w in start else "-"
        print(f"| {w} | {best:.2f} | {mp / best:.1f} | {base / best:.2f} | {first} |")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n({cores} cores; wall includes planning, pasting, writing and QC figures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
