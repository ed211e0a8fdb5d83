"""How long re-scoring takes next to the analysis it spares: ``python benchmarks/bench_rescore.py``.

Writes a few synthetic SA-β-gal wells, analyses them once (classical segmenter, CPU), then re-scores
the stores at another threshold with ``senpath rescore``'s function, and prints both times. Options:
``--slides N`` (default 3), ``--size PX`` (default 768).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from senpath import synth
from senpath.config import AnalysisConfig
from senpath.pipeline import run_batch
from senpath.rescore import rescore_results
from senpath.samplesheet import SlideJob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slides", type=int, default=3)
    parser.add_argument("--size", type=int, default=768)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = []
        for k in range(args.slides):
            s = synth.write_slide(
                root / f"w{k}.tif", assay="sabgal", shape=(args.size, args.size), seed=k,
                params=synth.SynthParams(tissue_fraction=1.0, marker_od_scale=0.35),
            )  # fmt: skip
            jobs.append(SlideJob(f"w{k}", s.path, "sabgal", "E"))
        t = time.perf_counter()
        reports = run_batch(jobs, out=root / "res", config=AnalysisConfig(segmenter="classical"))
        analysed = time.perf_counter() - t
        cells = sum(r.n_cells for r in reports)
        t = time.perf_counter()
        rescored = rescore_results(root / "res", thresholds={"sabgal": 0.10})
        rescoring = time.perf_counter() - t
        changed = sum(r.n_changed for r in rescored)
    print(f"{args.slides} slides of {args.size}² px, {cells} cells")
    print(f"analysis (senpath run, classical):  {analysed:7.1f} s")
    print(f"re-scoring at 0.10 OD (rescore):     {rescoring:7.1f} s  ({changed} calls changed)")
    print(f"re-scoring / analysis:               {rescoring / analysed:7.1%}")


if __name__ == "__main__":
    main()
