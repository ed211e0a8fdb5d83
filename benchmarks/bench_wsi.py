"""Whole-slide engine benchmark: read throughput vs raw JPEG decode, peak RSS, tile pipeline rate.

Writes synthetic pyramidal JPEG-tiled TIFFs into a temporary folder, then measures each slide in
its own subprocess (so peak RSS is per slide) and prints one table::

    python benchmarks/bench_wsi.py --quick          # 4k² and 8k² px (about a minute)
    python benchmarks/bench_wsi.py                  # 20k² and 100k² px (10 GP: several minutes)

Measured per slide:

- read MP/s: every level-0 pixel through ``open_slide(path).levels[0]`` computed with dask's
  threaded scheduler, in bands of at most 512 chunks (blocks reduced to one byte so nothing
  accumulates; one graph per band, so its size does not grow with the slide);
- raw decode MP/s: ``imagecodecs.jpeg8_decode`` of the same tiles' bytes (read from
  ``page.dataoffsets`` beforehand, not timed), on 1 thread and on as many threads as dask uses;
  the ratio read / raw compares like with like (same thread count; target >= 0.8);
- peak RSS (VmHWM) of the subprocess that ran the read stage and the pipeline
  (targets: <= 4 GB, and the larger slide <= 1.2x the smaller);
- pipeline tiles/s: the production tile engine end to end, in one process: ``plan_slide``
  (tissue mask, tile grid at 0.5 µm/px, stain vectors) + ``analyze_tiles`` (tile reads,
  deconvolution, a no-op segmenter, measuring) + pasting into the on-disk zarr label array
  (``LabelStore``). Scale-out across cores is dask's (``benchmarks/bench_distributed.py``).

Slides come from ``senpath.synth.write_slide`` (realistic tissue, slow to render: ~2.5 MP/s)
when the largest slide has at most ``--synth-max-px`` pixels, else from a fast writer that
replicates a few pre-encoded textured JPEG tiles inside an elliptical "tissue" region on white
glass (about 60 % tissue), with a 2x pyramid down to ~1k px.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MPP = 0.5
TILE = 256


# ----------------------------------------------------------------------------- slide writers
def _textured_tiles(n: int, *, seed: int) -> list[np.ndarray]:
    """H&E-ish textured 256² tiles: pink stroma with purple nuclei-like blobs."""
    import cv2

    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(n):
        base = np.empty((TILE, TILE, 3), np.float32)
        base[:] = (225, 170, 200)
        noise = cv2.GaussianBlur(rng.normal(0, 25, (TILE, TILE, 3)).astype(np.float32), (0, 0), 2)
        base += noise
        for _ in range(40):
            y, x = rng.integers(0, TILE, 2)
            r = int(rng.integers(3, 8))
            cv2.circle(base, (int(x), int(y)), r, (110, 60, 150), -1)
        tiles.append(np.clip(base, 0, 255).astype(np.uint8))
    return tiles


def write_replicated(path: Path, size: int, *, seed: int = 0, quality: int = 85) -> None:
    """Stream a JPEG-tiled pyramidal TIFF of ``size``² px from a few pre-encoded tiles."""
    import imagecodecs
    import tifffile

    textured = [imagecodecs.jpeg8_encode(t, level=quality) for t in _textured_tiles(8, seed=seed)]
    white = imagecodecs.jpeg8_encode(np.full((TILE, TILE, 3), 242, np.uint8), level=quality)
    n_levels = max(1, int(math.log2(max(1, size // 1024))) + 1)

    def level_tiles(shape: int):
        n = math.ceil(shape / TILE)
        for ty in range(n):
            for tx in range(n):
                # ellipse of tissue covering ~60 % of the slide
                u = ((ty + 0.5) / n - 0.5) / 0.45
                v = ((tx + 0.5) / n - 0.5) / 0.42
                yield textured[(ty * 7 + tx * 3) % 8] if u * u + v * v < 1 else white

    res = {"resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"}
    common = {"dtype": np.uint8, "tile": (TILE, TILE), "compression": "jpeg", "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(level_tiles(size), shape=(size, size, 3), subifds=n_levels - 1, **common, **res)
        for k in range(1, n_levels):
            shape = math.ceil(size / 2**k)
            tw.write(level_tiles(shape), shape=(shape, shape, 3), subfiletype=1, **common)


def write_slide(path: Path, size: int, *, writer: str) -> str:
    if writer == "synth":
        from senpath.synth import write_slide as synth_write

        synth_write(
            path,
            assay="ki67",
            shape=(size, size),
            mpp=MPP,
            seed=0,
            tile_size=TILE,
            compression="jpeg",
            write_labels=False,
        )
        return "senpath.synth.write_slide"
    write_replicated(path, size)
    return "replicated textured JPEG tiles"


# ----------------------------------------------------------------------------- measurements
def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Reads VmHWM: ``ru_maxrss`` survives ``execve`` on Linux, so a subprocess would report its
    parent's peak (the slide writer's) whenever that is higher.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def read_level_in_bands(level: Any, *, threads: int, max_tasks: int = 512) -> None:
    """Decode every pixel of a dask level, a band of whole chunk rows at a time.

    One graph for the whole level (10k chunks at 100k² px) costs tens of MB of task objects, a
    cost that grows with the slide; bands of at most ``max_tasks`` chunks keep it bounded
    (one band for a 20k² slide). Each block is reduced to one byte, so nothing accumulates.
    """
    import dask

    row_heights = level.chunks[0]
    rows_per_band = max(1, max_tasks // len(level.chunks[1]))
    y0 = 0
    for first in range(0, len(row_heights), rows_per_band):
        y1 = y0 + sum(row_heights[first : first + rows_per_band])
        # copy: a view would keep each decoded chunk alive until the end of the band
        band = level[y0:y1].map_blocks(
            lambda b: b[:1, :1, :1].copy(), chunks=(1, 1, 1), dtype=np.uint8
        )
        with dask.config.set(scheduler="threads", num_workers=threads):
            band.compute()
        y0 = y1


def measure_read_and_pipeline(
    path: Path, workdir: Path, *, pipeline_tile: int, repeat: int
) -> dict:
    from senpath.config import AnalysisConfig, get_assay
    from senpath.io import open_slide
    from senpath.labels import LabelStore
    from senpath.slide_plan import plan_slide
    from senpath.tile_engine import analyze_tiles

    threads = os.cpu_count() or 1
    slide = open_slide(path)
    level0 = slide.levels[0]
    slide.levels[-1].compute()  # warm-up: codec import, decoder set-up, thread pool
    read_s = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        read_level_in_bands(level0, threads=threads)
        read_s = min(read_s, time.perf_counter() - start)
    mp = level0.shape[0] * level0.shape[1] / 1e6
    rss_read = _peak_rss_mb()

    # whole tile pipeline: the engine a run uses, with a segmenter that finds no nuclei
    start = time.perf_counter()
    config = AnalysisConfig(segmenter="classical", tile_size_um=pipeline_tile * MPP)
    plan = plan_slide(path, assay=get_assay("he"), config=config, slide=slide)
    store = LabelStore(workdir / f"{path.stem}.labels", plan.shape_px, mpp=MPP)
    for result in analyze_tiles(plan, range(plan.n_tiles), slide=slide, segmenter=NoNuclei()):
        store.add_instances(result.instances)
    store.abort()  # the array was written; the benchmark keeps no store
    pipe_s = time.perf_counter() - start
    return {
        "mp": mp,
        "read_mps": mp / read_s,
        "read_s": read_s,
        "threads": threads,
        "tiles": plan.n_tiles,
        "tissue_fraction": plan.tissue_fraction,
        "pipeline_s": pipe_s,
        "tiles_per_s": plan.n_tiles / pipe_s,
        "pipeline_mps": plan.n_tiles * pipeline_tile**2 / 1e6 / pipe_s,
        "rss_read_mb": rss_read,
        "rss_peak_mb": _peak_rss_mb(),
    }


class NoNuclei:
    """A :class:`senpath.segment.Segmenter` that finds no nuclei (reads and stitching alone)."""

    method = "none"

    def segment(
        self, rgb: np.ndarray, *, mpp: float, concentrations: np.ndarray | None = None
    ) -> np.ndarray:
        return np.zeros(rgb.shape[:2], np.int32)


def measure_raw_decode(path: Path, *, repeat: int, batch: int = 2048) -> dict:
    """Decode level-0 tile bytes with imagecodecs on 1 and on N threads (bytes read untimed).

    Each batch is decoded ``repeat`` times and the fastest pass counts, as for the read stage.
    """
    from concurrent.futures import ThreadPoolExecutor

    import imagecodecs
    import tifffile

    threads = os.cpu_count() or 1
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].keyframe
        offsets, counts, tables = page.dataoffsets, page.databytecounts, page.jpegtables
        fh = tif.filehandle
        times = {1: 0.0, threads: 0.0}
        pixels = 0
        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(offsets), batch):
                raw = []
                for off, cnt in zip(
                    offsets[start : start + batch], counts[start : start + batch], strict=True
                ):
                    fh.seek(off)
                    raw.append(fh.read(cnt))
                pixels += len(raw) * page.tilelength * page.tilewidth
                if start == 0:
                    imagecodecs.jpeg8_decode(raw[0], tables=tables)  # warm-up
                best = {1: math.inf, threads: math.inf}
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    for data in raw:
                        imagecodecs.jpeg8_decode(data, tables=tables)
                    best[1] = min(best[1], time.perf_counter() - t0)
                    if threads > 1:
                        t0 = time.perf_counter()
                        for _ in pool.map(
                            lambda d: imagecodecs.jpeg8_decode(d, tables=tables), raw
                        ):
                            pass  # drop each decoded tile at once, as the read stage does
                        best[threads] = min(best[threads], time.perf_counter() - t0)
                times[1] += best[1]
                times[threads] += best[threads]
    mp = pixels / 1e6
    return {
        "raw_mps_1": mp / times[1],
        "raw_mps_n": mp / times[threads] if threads > 1 else mp / times[1],
        "threads": threads,
    }


def _subprocess(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4k² and 8k² px slides")
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated sides in px")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="folder for slides (default: temp)"
    )
    parser.add_argument("--writer", choices=["auto", "synth", "replicate"], default="auto")
    parser.add_argument(
        "--synth-max-px", type=int, default=8192, help="auto: synth up to this side"
    )
    parser.add_argument("--pipeline-tile", type=int, default=1024, help="analysis tile core (px)")
    parser.add_argument("--repeat", type=int, default=2, help="timed passes; the fastest counts")
    parser.add_argument("--_read", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_raw", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._read:
        result = measure_read_and_pipeline(
            args._read, args._read.parent, pipeline_tile=args.pipeline_tile, repeat=args.repeat
        )
        print(json.dumps(result))
        return
    if args._raw:
        print(json.dumps(measure_raw_decode(args._raw, repeat=args.repeat)))
        return

    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([4096, 8192] if args.quick else [20000, 100000])
    )
    writer = args.writer
    if writer == "auto":
        writer = "synth" if max(sizes) <= args.synth_max_px and _has_synth() else "replicate"
    tmp = tempfile.TemporaryDirectory(prefix="senpath-bench-", dir=args.workdir)
    workdir = Path(tmp.name)
    rows = []
    try:
        for size in sizes:
            path = workdir / f"bench_{size}.tif"
            t0 = time.perf_counter()
            source = write_slide(path, size, writer=writer)
            write_s = time.perf_counter() - t0
            print(
                f"wrote {size}² px ({path.stat().st_size / 1e6:.0f} MB, {source}) in {write_s:.1f} s",
                file=sys.stderr,
            )
            common = ["--pipeline-tile", str(args.pipeline_tile), "--repeat", str(args.repeat)]
            read = _subprocess(["--_read", str(path), *common])
            raw = _subprocess(["--_raw", str(path), *common])
            rows.append(
                {
                    "size": size,
                    "write_s": write_s,
                    "source": source,
                    "repeat": args.repeat,
                    **read,
                    **raw,
                }
            )
            path.unlink()
    finally:
        tmp.cleanup()
    print_table(rows, pipeline_tile=args.pipeline_tile)


def _has_synth() -> bool:
    try:
        from senpath.synth import write_slide  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(rows: list[dict], *, pipeline_tile: int) -> None:
    threads = rows[0]["threads"]
    header = (
        f"{'slide':>10} {'MP':>7} {'write s':>8} {'read MP/s':>10} {'raw 1t':>8} "
        f"{f'raw {threads}t':>8} {'read/raw':>9} {'RSS read':>9} {'RSS peak':>9} "
        f"{'tiles':>6} {'tissue':>7} {'tiles/s':>8} {'pipe MP/s':>9}"
    )
    print(
        f"senpath whole-slide benchmark: JPEG tiles {TILE}², {MPP} µm/px, {threads} threads, "
        f"pipeline tile {pipeline_tile}² + halo (one process), best of {rows[0]['repeat']}; "
        f"source: {rows[0]['source']}"
    )
    print(header)
    for r in rows:
        print(
            f"{str(r['size']) + '²':>10} {r['mp']:>7.0f} {r['write_s']:>8.1f} {r['read_mps']:>10.1f} "
            f"{r['raw_mps_1']:>8.1f} {r['raw_mps_n']:>8.1f} {r['read_mps'] / r['raw_mps_n']:>9.2f} "
            f"{r['rss_read_mb']:>8.0f}M {r['rss_peak_mb']:>8.0f}M {r['tiles']:>6d} "
            f"{r['tissue_fraction']:>7.2f} {r['tiles_per_s']:>8.2f} {r['pipeline_mps']:>9.1f}"
        )
    if len(rows) >= 2:
        ratio = rows[-1]["rss_peak_mb"] / rows[0]["rss_peak_mb"]
        read_ratio = rows[-1]["rss_read_mb"] / rows[0]["rss_read_mb"]
        area_ratio = rows[-1]["mp"] / rows[0]["mp"]
        print(
            f"peak RSS largest / smallest: {ratio:.2f} (target <= 1.2) for {area_ratio:.0f}x the "
            f"pixels; read-stage RSS largest / smallest: {read_ratio:.2f}"
        )
        print(f"max peak RSS {max(r['rss_peak_mb'] for r in rows) / 1024:.2f} GB (target <= 4)")


if __name__ == "__main__":
    main()
