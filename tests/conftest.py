"""Shared pytest fixtures for senpath."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# the CNN's "auto" precision on a CPU is measured once per machine (senpath.segment.runtime): the
# tests pin it, so they neither calibrate nor write to the user's cache (test_segment_runtime
# checks the calibration itself)
os.environ.setdefault("SENPATH_PRECISION", "bf16")

#: Real data for development and validation sits beside the repo (absent in a user's fresh clone).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test when the folder is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data folder {SHARED_DATA} is absent (only in the project's dev/CI setup)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def benchmark_script() -> Any:
    """``load(name)``: the module of ``benchmarks/<name>.py`` (scripts, not a package), imported
    without running its ``main``."""
    import importlib.util

    def load(name: str) -> Any:
        script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def cnn_tile_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(plan, CNN segmenter on the CPU) of a 384² px synthetic Ki67 slide cut into 9 tiles of
    64 µm (128 px at 0.5 µm/px): the CNN runs on each in well under a second. Its settings are
    ``plan.config``."""
    pytest.importorskip("torch")
    from senpath import synth
    from senpath.config import AnalysisConfig, get_assay
    from senpath.slide_plan import plan_slide
    from senpath.tile_engine import plan_segmenter

    config = AnalysisConfig(segmenter="cnn", device="cpu", tile_size_um=64)
    s = synth.write_slide(
        tmp_path_factory.mktemp("cnn_tiles") / "k.tif", assay="ki67", shape=(384, 384), mpp=0.5,
        seed=7, params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip
    plan = plan_slide(s.path, assay=get_assay("ki67"), config=config)
    assert plan.n_tiles == 9
    return plan, plan_segmenter(plan)


@pytest.fixture(scope="module")
def batch_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results root of a small batch (classical segmenter) of three patients, one slide failing.

    P1: a Ki67 slide (``p1-ki67``); P2: a p16 slide (``p2-p16``); P3: a corrupt file (``p3-broken``,
    failed and logged in ``failures.log``). Module-scoped: each test module gets its own batch, so what one module writes there (an export,
    a report) is not seen by another.
    """
    from senpath import synth
    from senpath.config import AnalysisConfig
    from senpath.pipeline import run_batch
    from senpath.samplesheet import SlideJob

    tmp = tmp_path_factory.mktemp("batch")
    params = synth.SynthParams(tissue_fraction=0.95)
    jobs = []
    for patient, assay, seed in (("P1", "ki67", 1), ("P2", "p16", 2)):
        s = synth.write_slide(
            tmp / f"{assay}.tif", assay=assay, shape=(512, 512), mpp=0.5, seed=seed, params=params
        )
        jobs.append(SlideJob(f"{patient.lower()}-{assay}", s.path, assay, patient))
    corrupt = tmp / "corrupt.tif"
    corrupt.write_bytes(jobs[0].path.read_bytes()[:3000])
    jobs.append(SlideJob("p3-broken", corrupt, "ki67", "P3"))
    reports = run_batch(jobs, out=tmp / "results", config=AnalysisConfig(segmenter="classical"))
    assert [r.status for r in reports] == ["ok", "ok", "failed"]
    return tmp / "results"


@pytest.fixture(scope="module")
def mixed_assays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results of a Ki67 (hematoxylin + DAB, ``p1-ki67``) and an SA-β-gal (nuclear fast red +
    X-gal, ``p2-sabgal``) slide: stores whose stain and marker columns differ."""
    from senpath import synth
    from senpath.config import AnalysisConfig
    from senpath.pipeline import run_batch
    from senpath.samplesheet import SlideJob

    tmp = tmp_path_factory.mktemp("mixed")
    params = synth.SynthParams(tissue_fraction=0.95)
    jobs = []
    for patient, assay, seed in (("P1", "ki67", 1), ("P2", "sabgal", 2)):
        s = synth.write_slide(
            tmp / f"{assay}.tif", assay=assay, shape=(384, 384), mpp=0.5, seed=seed, params=params
        )
        jobs.append(SlideJob(f"{patient.lower()}-{assay}", s.path, assay, patient))
    reports = run_batch(jobs, out=tmp / "results", config=AnalysisConfig(segmenter="classical"))
    assert [r.status for r in reports] == ["ok", "ok"]
    return tmp / "results"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests when no CUDA device is present."""
    import torch  # a hard dependency: a broken install fails here, it is not skipped

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)
