"""Benchmark (not a test): a batch of generated slides in-process vs on 1- and 2-worker dask clusters.

Prints one table: slides, cells, wall seconds of the in-process run and of each cluster (the cluster's
start-up is shown apart, since a batch pays it once), the speedup of 2 workers over 1, and the
per-slide overhead of the distributed path over the in-process one. It also checks that every mode
wrote identical per-cell tables.

    .venv/bin/python benchmarks/bench_distributed.py                 # 8 slides of 1024 x 1024 px
    .venv/bin/python benchmarks/bench_distributed.py --slides 4 --size 768 --segmenter cnn
    .venv/bin/python benchmarks/bench_distributed.py --repeat 2 --tiles-per-task 1   # split slides

Target on a 2-core machine: speedup >= 1.7 with both cores free. Takes 1-3 minutes by default.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def _make_slides(folder: Path, n: int, size: int) -> list:
    from senpath import synth
    from senpath.samplesheet import SlideJob

    jobs = []
    for seed in range(n):
        assay = ("ki67", "p16")[seed % 2]
        path = folder / f"{assay}-{seed}-{size}.tif"
        if not path.exists():
            synth.write_slide(
                path, assay=assay, shape=(size, size), mpp=0.5, seed=seed,
                params=synth.SynthParams(tissue_fraction=0.95),
            )  # fmt: skip
        jobs.append(SlideJob(f"slide{seed:03d}", path, assay, f"P{seed}"))
    return jobs


def _warm_worker() -> int:
    """Import the analysis stack on a worker, as the first task of a batch would."""
    import senpath.pipeline  # noqa: F401
    import senpath.segment.classical  # noqa: F401

    return os.getpid()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=8, help="number of generated slides")
    parser.add_argument("--size", type=int, default=1024, help="slide side in px at 0.5 µm/px")
    parser.add_argument("--segmenter", default="classical", choices=("classical", "cnn"))
    parser.add_argument("--tile-um", type=float, default=256.0, help="analysis tile side in µm")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per mode; the fastest is kept (noisy machines)"
    )
    parser.add_argument("--tiles-per-task", type=int, default=None, help="tiles per tile task")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for slides and results (kept; default: temp)",
    )
    args = parser.parse_args(argv)

    from senpath.config import AnalysisConfig, load_assays
    from senpath.distributed import TILES_PER_TASK, cluster_client, run_batch_distributed
    from senpath.pipeline import run_batch

    config = AnalysisConfig(segmenter=args.segmenter, device="cpu", tile_size_um=args.tile_um)
    assays = load_assays()
    tiles_per_task = args.tiles_per_task or TILES_PER_TASK
    with tempfile.TemporaryDirectory(prefix="senpath-bench-") as tmp_dir:
        tmp = args.work or Path(tmp_dir)
        data = tmp / "slides"
        data.mkdir(parents=True, exist_ok=True)
        jobs = _make_slides(data, args.slides, args.size)

        rows = []
        _warm_worker()  # the same imports in this process, so no mode pays them in its timing
        local_s = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            reports = run_batch(jobs, out=tmp / "local", config=config, force=True)
            local_s = min(local_s, time.perf_counter() - t)
        assert all(r.status == "ok" for r in reports), [r.message for r in reports]
        n_cells = sum(r.n_cells for r in reports)
        rows.append(("in-process", local_s, 0.0))

        for n_workers in (1, 2):
            t = time.perf_counter()
            with cluster_client(workers=n_workers, dashboard_address=":0") as client:
                client.run(_warm_worker)
                startup_s = time.perf_counter() - t
                wall_s = float("inf")
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    reports = run_batch_distributed(
                        jobs, client=client, out=tmp / f"w{n_workers}", config=config,
                        assays=assays, force=True, tiles_per_task=tiles_per_task,
                    )  # fmt: skip
                    wall_s = min(wall_s, time.perf_counter() - t)
            assert all(r.status == "ok" for r in reports), [r.message for r in reports]
            rows.append((f"{n_workers} worker(s)", wall_s, startup_s))

        different = [
            f"{j.slide_id} ({mode})"
            for j in jobs
            for mode in ("w1", "w2")
            if not pd.read_parquet(tmp / "local" / j.slide_id / "cells.parquet").equals(
                pd.read_parquet(tmp / mode / j.slide_id / "cells.parquet")
            )
        ]

    one, two = rows[1][1], rows[2][1]
    print(
        f"senpath distributed benchmark: {args.slides} slides of {args.size} x {args.size} px "
        f"(0.5 µm/px), {n_cells} cells, segmenter {args.segmenter}, tiles {args.tile_um:g} µm, "
        f"{tiles_per_task} tiles/task, best of {args.repeat}, {os.cpu_count()} CPU(s), load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(f"{'mode':<14}{'wall s':>9}{'s/slide':>9}{'cluster start s':>17}")
    for name, wall, start in rows:
        start_text = f"{start:.1f}" if start else "-"
        print(f"{name:<14}{wall:>9.2f}{wall / args.slides:>9.2f}{start_text:>17}")
    print(f"speedup 2 workers / 1 worker: {one / two:.2f}x (target >= 1.7x on 2 free cores)")
    # like for like: the in-process run uses every core through threads, a 1-worker cluster one
    print(
        f"per-slide overhead, 2-worker cluster vs in-process (same cores): "
        f"{(two - local_s) / args.slides * 1000:+.0f} ms/slide "
        f"({(two / local_s - 1) * 100:+.1f}%)"
    )
    print(
        f"1-worker cluster (1 thread) vs in-process (all threads): "
        f"{(one - local_s) / args.slides * 1000:+.0f} ms/slide "
        f"({(one / local_s - 1) * 100:+.1f}%)"
    )
    print(
        "per-cell tables identical in all modes: "
        + ("yes" if not different else f"NO, different: {', '.join(different)}")
    )
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
