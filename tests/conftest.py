"""Shared pytest fixtures for senpath."""

from __future__ import annotations

import os
from pathlib import Path

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
