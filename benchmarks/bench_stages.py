"""Where a slide's time goes: seconds and shares per stage of ``senpath.analyze_slide`` (issue 18).

Writes a synthetic Ki67 slide (``senpath.synth.write_slide``, JPEG-tiled pyramidal TIFF at
0.5 µm/px) into a temporary folder, runs :func:`senpath.analyze_slide` on it once with the
real functions the engine calls wrapped by timers (``unittest.mock.patch``; the library is not
changed), and prints two Markdown tables::

    python benchmarks/bench_stages.py                     # 4096² px, 2 threads (a few minutes)
    python benchmarks/bench_stages.py --size 2048 --threads 1
    python benchmarks/bench_stages.py --size 2048 --steps --skip-network   # before/after issue 18

``--steps`` analyses the slide once per step of :data:`VARIANTS`, in one process: the engine as
it was before issue 18 (bf16, each analysis tile cut into 256² network pieces, tiles one after
another), then one network pass per tile, then the precision chosen per machine
(:mod:`senpath.segment.runtime`), then the tile pipeline (network in a worker thread, two tiles
ahead of the watershed and measurement), and prints one row per step.

Table 1, stage breakdown of one ``analyze_slide`` call (the wrapped names; none is nested in
another, so the rows add up, and what no wrapper covers is the "other" row):

- read: ``tile_engine.read_grid_box`` (analysis tiles, core + halo, at 0.5 µm/px);
- tissue mask: ``tissue.tissue_mask`` and ``slide_plan._estimate_i0`` (glass intensity);
- stain estimation: ``slide_plan._slide_stains`` (its own tile reads included);
- deconvolution: ``tile_engine.deconvolve``;
- counterstain normalisation: ``CounterstainBoost.__call__`` (the CNN's input of a faintly
  counterstained slide, :mod:`senpath.segment.counterstain`; none for the Ki67 preset,
  ``--counterstain-od 0.2 --counterstain-reference 0.6`` makes a slide that gets it);
- network: ``NucleusSegmenter.predict_maps`` (the CNN forward passes alone);
- post-processing: ``segment.predict.maps_to_instances`` (watershed);
- segmenter overhead: the rest of ``CnnSegmenter.segment`` or of its halves
  ``network_maps`` / ``labels_from_maps`` (padding, cutting 256² pieces with ``--pieces``,
  stitching their maps, resampling);
- measurement: ``tile_engine.measure_cells``;
- ownership / stitching: ``tile_engine.keep_owned`` and ``LabelStore.add_instances``;
- writing: ``LabelStore.commit`` and the store's ``atomic_write_parquet`` / ``atomic_write_json``;
- QC figures and read-back: ``qc_overlay_png``, ``slide_histograms_png``, ``check_reads_back``;
- model load: ``slide_analysis.plan_segmenter`` (weights, once per process).

With the pipeline (``--prefetch`` > 0, the default) the read and network rows run in a worker
thread alongside the others: the rows then overlap and no longer add up to the wall time.

End to end MP/s counts the analysed pixels (the tissue tiles' cores at 0.5 µm/px) over the wall
time of ``analyze_slide``; network MP/s counts the pixels the network was fed (with the 256²
pieces' overlap) over the network's seconds, as ``benchmarks/bench_segment.py`` does. Issue 18's
target is end to end >= 0.7 x network. In a pipelined run the network shares the cores with the
post-processing beside it, so its seconds there are more than it needs alone; a second ratio
divides by the network alone: the precision calibration's seconds per MP (its own image, the
machine to itself when the cached entry is "quiet").

Table 2: the network alone (``predict_maps``) on one 1024² image cut from the same slide, fp32
vs bf16 vs ONNX Runtime fp32 when installed (``NucleusSegmenter(precision=...)``), the shipped
distilled int8 network (``onnx-int8``, :mod:`senpath.segment.quant`) when the model has one and,
for comparison only, ONNX Runtime static int8 after training (``bench_int8.py``; not a precision
of the library), with
``torch.set_num_threads`` 1 and 2: wall and CPU seconds per megapixel (best of ``--repeats``), and
the F1 of instances matched at IoU 0.5 of each against fp32 (post-processed maps of that image).
Before the tables: what ``precision="auto"`` chose on this CPU and the calibration it measured
(run first, so no slide run pays for it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

MPP = 0.5

#: (row label, the dotted names whose calls it sums): a module-level name, or a class's method
#: (``module.Class.method``), each replaced by a timing wrapper around the original.
STAGES: list[tuple[str, list[str]]] = [
    ("read (analysis tiles)", ["senpath.tile_engine.read_grid_box"]),
    ("tissue mask (+ glass intensity)", ["senpath.tissue.tissue_mask", "senpath.slide_plan._estimate_i0"]),
    ("stain estimation", ["senpath.slide_plan._slide_stains"]),
    ("deconvolution", ["senpath.tile_engine.deconvolve"]),
    ("counterstain normalisation", ["senpath.segment.counterstain.CounterstainBoost.__call__"]),
    ("network (CNN forward)", ["senpath.segment.predict.NucleusSegmenter.predict_maps"]),
    ("post-processing (watershed)", ["senpath.segment.predict.maps_to_instances"]),
    ("measurement", ["senpath.tile_engine.measure_cells"]),
    ("ownership / stitching", ["senpath.tile_engine.keep_owned", "senpath.labels.LabelStore.add_instances"]),
    (
        "writing (labels commit, tables)",
        [
            "senpath.labels.LabelStore.commit",
            "senpath.slide_analysis.atomic_write_parquet",
            "senpath.slide_analysis.atomic_write_json",
        ],
    ),
    (
        "QC figures + read-back check",
        [
            "senpath.slide_analysis.qc_overlay_png",
            "senpath.slide_analysis.slide_histograms_png",
            "senpath.slide_analysis.check_reads_back",
        ],
    ),
    ("model load", ["senpath.slide_analysis.plan_segmenter"]),
]  # fmt: skip
#: The whole segment call (or its two halves, as the tile pipeline calls them); its time less
#: network and post-processing is the segmenter overhead.
SEGMENT = [
    "senpath.segment.CnnSegmenter.segment",
    "senpath.segment.CnnSegmenter.network_maps",
    "senpath.segment.CnnSegmenter.labels_from_maps",
]


class StageTimer:
    """Accumulated ``perf_counter`` seconds and call counts per stage, with patch wrappers."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.network_pixels = 0
        self.lock = threading.Lock()

    def wrap(self, stage: str, func: Callable[..., Any], *, method: bool) -> Callable[..., Any]:
        timer = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                # the tile pipeline calls some stages from its worker thread
                with timer.lock:
                    timer.seconds[stage] += time.perf_counter() - t
                    timer.calls[stage] += 1

        if method:
            # a plain function stored on the class binds like the original method
            def timed_method(self_: Any, *args: Any, **kwargs: Any) -> Any:
                return timed(self_, *args, **kwargs)

            return timed_method
        return timed

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for stage, targets in [*STAGES, ("segment (whole)", SEGMENT)]:
                for target in targets:
                    stack.enter_context(self._patch(stage, target))
            yield

    def _patch(self, stage: str, target: str) -> Any:
        import importlib

        module_name, _, name = target.rpartition(".")
        try:
            owner: Any = importlib.import_module(module_name)
            method = False
        except ModuleNotFoundError:  # Module.Class.method
            module_name, _, cls = module_name.rpartition(".")
            owner = getattr(importlib.import_module(module_name), cls)
            method = True
        original = getattr(owner, name)
        wrapper = self.wrap(stage, original, method=method)
        if target.endswith("predict_maps"):
            wrapper = self._counting(wrapper)
        return mock.patch.object(owner, name, wrapper)

    def _counting(self, wrapper: Callable[..., Any]) -> Callable[..., Any]:
        def counted(self_: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
            shape = batch.shape
            # (B, H, W, 3) array or (B, 3, H, W) tensor
            self.network_pixels += int(
                shape[0] * math.prod(shape[1:3] if shape[-1] == 3 else shape[2:4])
            )
            return wrapper(self_, batch, *args, **kwargs)

        return counted


# ----------------------------------------------------------------------------- table 1
def write_synthetic_slide(path: Path, size: int, counterstain_od: float | None = None) -> float:
    from senpath.synth import SynthParams, write_slide

    params = SynthParams() if counterstain_od is None else SynthParams(
        nucleus_counterstain_od=counterstain_od
    )  # fmt: skip
    t = time.perf_counter()
    write_slide(path, assay="ki67", shape=(size, size), mpp=MPP, seed=0, tile_size=256,
                compression="jpeg", write_labels=False, params=params)  # fmt: skip
    return time.perf_counter() - t


#: (name, CNN precision, 256² network pieces as before issue 18, tiles ahead in the pipeline):
#: cumulative steps from the engine before issue 18 to now (``--steps``).
VARIANTS: list[tuple[str, str, bool, int]] = [
    ("before: bf16, 256² pieces, serial", "bf16", True, 0),
    ("+ one network pass per tile", "bf16", False, 0),
    ("+ precision chosen per machine", "auto", False, 0),
    ("+ pipeline (network ahead, 2 tiles)", "auto", False, 2),
]


def plain_segmenter_factory(precision: str) -> Callable[..., Any]:
    """A ``plan_segmenter`` whose CNN runs at ``precision`` (the library's own for ``auto``)."""
    from senpath import tile_engine
    from senpath.segment.predict import NucleusSegmenter

    def plan_segmenter(plan: Any) -> Any:
        segmenter = tile_engine.plan_segmenter(plan)
        if precision != "auto" and hasattr(segmenter, "network"):
            # a fresh copy: the cached one stays as the library made it
            segmenter.network = NucleusSegmenter.from_pretrained(
                plan.config.model, device=plan.config.device, precision=precision
            )
        USED_PRECISION[:] = [getattr(getattr(segmenter, "network", None), "precision", "?")]
        return segmenter

    return plan_segmenter


def stage_breakdown(
    path: Path,
    out: Path,
    *,
    precision: str,
    pieces: bool = False,
    prefetch: int = 2,
    counterstain_reference: float | None = None,
) -> dict[str, Any]:
    """One timed ``analyze_slide``; ``pieces``: the network on 256² pieces (the path before issue
    18, by lowering ``MAX_PASS_SIDE``); ``prefetch``: tiles the pipeline runs ahead (0: serial);
    ``counterstain_reference``: the Ki67 assay given that counterstain reference level (the preset
    has none)."""
    import dataclasses
    import functools

    import senpath
    from senpath import tile_engine
    from senpath.config import AnalysisConfig, get_assay
    from senpath.results import read_results
    from senpath.segment import predict

    timer = StageTimer()
    tiles: list[Any] = []
    from senpath import slide_plan

    original_plan = slide_plan.plan_slide

    def plan_and_keep(*args: Any, **kwargs: Any) -> Any:
        plan = original_plan(*args, **kwargs)
        tiles.extend(plan.tiles)
        return plan

    config = AnalysisConfig(segmenter="cnn", device="cpu")
    assay = dataclasses.replace(get_assay("ki67"), counterstain_reference_od=counterstain_reference)
    pass_side = 256 if pieces else predict.MAX_PASS_SIDE
    with (
        mock.patch("senpath.slide_analysis.plan_slide", plan_and_keep),
        mock.patch("senpath.slide_analysis.plan_segmenter", plain_segmenter_factory(precision)),
        mock.patch.object(predict, "MAX_PASS_SIDE", pass_side),
        mock.patch(
            "senpath.slide_analysis.analyze_tiles",
            functools.partial(tile_engine.analyze_tiles, prefetch=prefetch),
        ),
        timer.patched(),
    ):
        t = time.perf_counter()
        store = senpath.analyze_slide(path, out=out, assay=assay, config=config)
        wall = time.perf_counter() - t
    cores = sum((tl.core.y1 - tl.core.y0) * (tl.core.x1 - tl.core.x0) for tl in tiles)
    n_cells = len(read_results(store).cells)
    return {"timer": timer, "wall": wall, "analysed_px": cores, "tiles": len(tiles),
            "cells": n_cells, "precision": _used_precision()}  # fmt: skip


#: The precision the last slide's CNN ran at (``auto`` resolved).
USED_PRECISION: list[str] = ["?"]


def _used_precision() -> str:
    return USED_PRECISION[0]


def summary_row(name: str, result: dict[str, Any]) -> str:
    """One Markdown row of the ``--steps`` table."""
    timer: StageTimer = result["timer"]
    analysed_mp = result["analysed_px"] / 1e6
    net_s = timer.seconds["network (CNN forward)"]
    e2e = analysed_mp / result["wall"]
    net = timer.network_pixels / 1e6 / net_s
    return (
        f"| {name} | {result['precision']} | {result['wall']:.1f} | {e2e:.2f} | "
        f"{timer.network_pixels / result['analysed_px']:.2f} | {net_s / analysed_mp:.2f} | "
        f"{net:.2f} | **{e2e / net:.2f}** | {result['cells']} |"
    )


def print_breakdown(result: dict[str, Any], *, size: int, threads: int, precision: str) -> None:
    timer: StageTimer = result["timer"]
    wall = result["wall"]
    s = timer.seconds
    rows = [(label, s[label]) for label, _ in STAGES]
    overhead = (
        s["segment (whole)"]
        - s["network (CNN forward)"]
        - s["post-processing (watershed)"]
        - s["counterstain normalisation"]
    )
    rows.insert(7, ("segmenter overhead (cut / stitch maps)", overhead))
    rows.append(("other (scoring, provenance, loop)", wall - sum(v for _, v in rows)))
    overlapped = result.get("prefetch", 0) > 0
    analysed_mp = result["analysed_px"] / 1e6
    network_mp = timer.network_pixels / 1e6
    e2e_mps = analysed_mp / wall
    net_mps = network_mp / s["network (CNN forward)"]
    print(
        f"\n### Stage breakdown: senpath.analyze_slide on a synthetic Ki67 slide {size}² px at "
        f"{MPP} µm/px, CNN precision {precision}, torch threads {threads}\n"
    )
    print(f"{result['tiles']} tissue tiles, {analysed_mp:.1f} MP analysed, {result['cells']} cells; "
          f"the network was fed {network_mp:.1f} MP ({network_mp / analysed_mp:.2f}x)\n")  # fmt: skip
    print("| stage | s | share |\n|---|---:|---:|")
    for label, sec in rows:
        print(f"| {label} | {sec:.2f} | {sec / wall:.1%} |")
    print(f"| **end to end (`analyze_slide` wall)** | **{wall:.2f}** | 100% |")
    if overlapped:
        print(
            "\n(pipelined: read and network run in a worker thread alongside the rest, so the "
            "rows overlap and 'other' is what is left after subtracting them all)"
        )
    print(
        f"\nend to end {e2e_mps:.2f} MP/s (analysed px) / network in this run {net_mps:.2f} MP/s "
        f"(fed px) = **{e2e_mps / net_mps:.2f}** (issue 18 target >= 0.7); network seconds per "
        f"analysed MP: {s['network (CNN forward)'] / analysed_mp:.2f}"
    )
    alone = result.get("alone_s_per_mp")
    if alone:
        # The network's seconds in the run include the cores it shares with the post-processing
        # running beside it; the calibration timed it with the machine to itself.
        print(
            f"\nend to end / the network alone ({1 / alone:.2f} MP/s, {precision} on the "
            f"calibration image, nothing beside it): **{e2e_mps * alone:.2f}**"
        )


# ----------------------------------------------------------------------------- table 2
def network_precisions(image: np.ndarray, *, thread_counts: list[int], repeats: int) -> None:
    import torch
    from stardist.matching import matching

    from senpath.segment.predict import NucleusSegmenter

    mp = image.shape[0] * image.shape[1] / 1e6
    batch = image[None]
    from senpath.segment.runtime import onnxruntime_available
    from senpath.segment.weights import load_spec

    rows, labels = [], {}
    onnx = ["onnx-fp32"] if onnxruntime_available() else []
    if onnx and load_spec(None).get("int8"):
        onnx.append("onnx-int8")  # the shipped distilled int8 network
    if onnx:
        onnx.append("ptq-int8")
    precisions = ["fp32", "bf16", *onnx]
    for precision in precisions:
        seg = NucleusSegmenter.from_pretrained(
            device="cpu", precision=precision.replace("ptq-int8", "onnx-fp32")
        )
        for threads in thread_counts:
            torch.set_num_threads(threads)
            if precision in onnx:  # its session's threads are set when it is made
                seg = NucleusSegmenter.from_pretrained(
                    device="cpu", precision=precision.replace("ptq-int8", "onnx-fp32")
                )
            if precision == "ptq-int8":  # not a precision of the library (bench_int8.py)
                seg = int8_segmenter(seg, threads)
            seg.predict_maps(batch[:, :256, :256])  # warm-up (oneDNN kernels, allocator)
            wall = cpu = math.inf
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                maps = seg.predict_maps(batch)
                wall = min(wall, time.perf_counter() - t)
                cpu = min(cpu, time.process_time() - c)
            rows.append((precision, threads, wall / mp, cpu / mp))
        labels[precision] = seg.instances(maps[0])
    print(
        f"\n### Network alone (`predict_maps`, one {image.shape[1]}x{image.shape[0]} image from "
        f"the slide, batch 1), best of {repeats}; torch {torch.__version__}\n"
    )
    print("| precision | threads | wall s / MP | CPU s / MP | MP/s |\n|---|---:|---:|---:|---:|")
    for precision, threads, wall_mp, cpu_mp in rows:
        name = {"fp32": "fp32 eager", "bf16": "bf16 autocast + channels_last",
                "onnx-fp32": "ONNX Runtime fp32",
                "onnx-int8": "ONNX Runtime int8, distilled (senpath.segment.quant)",
                "ptq-int8": "ONNX Runtime static int8 after training, QDQ u8/s8 (not offered: "
                "off parity on the real Ki67 tiles, see bench_int8.py)"}[precision]  # fmt: skip
        print(f"| {name} | {threads} | {wall_mp:.2f} | {cpu_mp:.2f} | {1 / wall_mp:.2f} |")
    for precision in precisions[1:]:
        f1 = matching(labels["fp32"], labels[precision], thresh=0.5).f1
        print(
            f"\nparity: F1 of instances matched at IoU 0.5, {precision} vs fp32: **{f1:.4f}** "
            f"({int(labels['fp32'].max())} vs {int(labels[precision].max())} nuclei; "
            "target >= 0.99)"
        )


def int8_segmenter(seg: Any, threads: int) -> Any:
    """``seg`` (ONNX Runtime fp32) running the static int8 model of ``bench_int8.py`` instead."""
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_int8

    name = "QDQ u8/s8 per channel"
    network = bench_int8.quantize(
        bench_int8.export_fp32(seg.model, seg.stride), bench_int8.variants()[name]
    )
    return bench_int8.onnx_segmenter(seg.model, seg.spec, network, threads=threads)


def print_calibration() -> dict[str, float]:
    """Resolve ``precision="auto"`` on this CPU now (calibrating if no choice is cached), so no
    slide run below pays for it, print what the calibration measured and return its seconds per
    MP by precision (the network alone, with the machine to itself when the entry is "quiet")."""
    from senpath.segment import runtime
    from senpath.segment.predict import cached_segmenter

    seg = cached_segmenter(None, "cpu", "auto")
    entry = runtime.chosen_calibration(seg.spec)
    print(f"\n### precision auto on this CPU: **{seg.precision}** (cached in "
          f"{runtime.cache_path()}; other processes busy on {entry.get('other_cores_busy', '?')} "
          f"cores when measured: {entry.get('key', '?').rsplit(' | ', 1)[-1]})\n")  # fmt: skip
    print("| candidate | s / MP (calibration image) | F1 vs fp32 at IoU 0.5 |\n|---|---:|---:|")
    for name, spm in entry.get("seconds_per_mp", {}).items():
        print(f"| {name} | {spm:.2f} | {entry['parity_f1'][name]:.4f} |")
    for name, why in entry.get("skipped", {}).items():
        print(f"| {name} | skipped: {why} | |")
    return dict(entry.get("seconds_per_mp", {}))


def tissue_crop(path: Path, side: int) -> np.ndarray:
    """A ``side``² px crop at 0.5 µm/px from the middle of the slide (tissue there)."""
    from senpath.io import open_slide

    slide = open_slide(path)
    height_um, width_um = slide.shape[0] * slide.mpp[1], slide.shape[1] * slide.mpp[0]
    extent = side * MPP
    x0, y0 = max(0.0, (width_um - extent) / 2), max(0.0, (height_um - extent) / 2)
    return np.ascontiguousarray(slide.read_region(x0, y0, extent, extent, mpp=MPP))


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096, help="slide side in px at 0.5 µm/px")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the slide run")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "onnx-fp32", "onnx-int8"],
                   default="auto",
                   help="CNN precision for the slide run (auto: the library's default)")  # fmt: skip
    p.add_argument("--network-side", type=int, default=1024, help="image side for table 2")
    p.add_argument("--network-threads", type=str, default="1,2", help="table 2 thread counts")
    p.add_argument("--repeats", type=int, default=2, help="table 2 timed passes (best counts)")
    p.add_argument(
        "--workdir", type=Path, default=None, help="folder for the slide (default: temp)"
    )
    p.add_argument("--skip-network", action="store_true", help="table 1 only")
    p.add_argument("--counterstain-od", type=float, default=None,
                   help="the synthetic nuclei's hematoxylin OD (default the generator's, 0.45; "
                   "0.2: a faint slide)")  # fmt: skip
    p.add_argument("--counterstain-reference", type=float, default=None,
                   help="analyse as Ki67 with this counterstain_reference_od (the preset has "
                   "none), so a faint slide's CNN input is normalised")  # fmt: skip
    p.add_argument(
        "--prefetch", type=int, default=2, help="tiles the pipeline runs ahead (0: serial)"
    )
    p.add_argument("--pieces", action="store_true", help="the network on 256² pieces (as before)")
    p.add_argument("--steps", action="store_true",
                   help="run the slide once per step of VARIANTS (before issue 18 to now) and print "
                   "their comparison, then the breakdown of the first and last")  # fmt: skip
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="senpath-stages-", dir=args.workdir) as tmp:
        path = Path(tmp) / f"synth_ki67_{args.size}.tif"
        write_s = write_synthetic_slide(path, args.size, args.counterstain_od)
        print(f"wrote {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {write_s:.1f} s",
              file=sys.stderr)  # fmt: skip
        alone = print_calibration()
        if args.steps:
            results = []
            for k, (name, precision, pieces, prefetch) in enumerate(VARIANTS):
                result = stage_breakdown(path, Path(tmp) / f"out{k}", precision=precision,
                                         pieces=pieces, prefetch=prefetch)  # fmt: skip
                result["prefetch"] = prefetch
                result["alone_s_per_mp"] = alone.get(result["precision"])
                results.append((name, result))
                print(f"{name}: {result['wall']:.1f} s", file=sys.stderr)
            print(
                f"\n### Steps: senpath.analyze_slide on a synthetic Ki67 slide {args.size}² px at "
                f"{MPP} µm/px, torch threads {args.threads}, one run each, same process\n"
            )
            print("| step | precision | wall s | end to end MP/s | fed / analysed px | "
                  "network s per analysed MP | network MP/s (fed) | end to end / network | "
                  "cells |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
            for name, result in results:
                print(summary_row(name, result))
            for name, result in (results[0], results[-1]):
                print(f"\n#### {name}")
                print_breakdown(result, size=args.size, threads=args.threads,
                                precision=result["precision"])  # fmt: skip
        else:
            result = stage_breakdown(path, Path(tmp) / "out", precision=args.precision,
                                     pieces=args.pieces, prefetch=args.prefetch,
                                     counterstain_reference=args.counterstain_reference)  # fmt: skip
            result["prefetch"] = args.prefetch
            result["alone_s_per_mp"] = alone.get(result["precision"])
            print_breakdown(result, size=args.size, threads=args.threads,
                            precision=result["precision"])  # fmt: skip
        if not args.skip_network:
            image = tissue_crop(path, min(args.network_side, args.size))
            threads = [int(t) for t in args.network_threads.split(",")]
            network_precisions(image, thread_counts=threads, repeats=args.repeats)
    print(f"\n(CPU: {_cpu_name()}, {os.cpu_count()} logical cores)")
    return 0


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
