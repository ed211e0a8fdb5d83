"""Scale-out on dask distributed: same stores as a single-process run, on 2 local workers, with a GPU
placement rule, through the CLI, on an existing scheduler, and after a worker is killed mid-batch."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from senpath import synth
from senpath.cli import app
from senpath.config import AnalysisConfig, load_assays
from senpath.distributed import (
    GPU_RESOURCE,
    _tile_resources,
    cluster_client,
    gpu_workers,
    run_batch_distributed,
    slurm_cluster,
)
from senpath.labels import load_labels
from senpath.pipeline import run_batch
from senpath.results import CELLS, SUMMARY, is_complete
from senpath.samplesheet import SlideJob
from senpath.segment import resolve_method

#: 64 µm tiles: a 512 x 512 px slide at 0.5 µm/px is a 4 x 4 tile grid, so tile tasks are exercised.
CONFIG = AnalysisConfig(segmenter="classical", tile_size_um=64.0)
#: (seed, assay, tissue fraction); the last slide is part glass (14 of 16 tiles, glass intensity
#: estimated), so a wrong tissue mask or background on a worker shows in its table.
SLIDES = ((1, "ki67", 0.95), (2, "p16", 0.95), (3, "ki67", 0.95), (2, "p16", 0.6))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Four small synthetic slides and one unreadable file, as jobs and as a sample sheet."""
    root = tmp_path_factory.mktemp("slides")
    jobs = []
    for k, (seed, assay, tissue) in enumerate(SLIDES, start=1):
        s = synth.write_slide(
            root / f"{assay}-{k}.tif", assay=assay, shape=(512, 512), mpp=0.5, seed=seed,
            params=synth.SynthParams(tissue_fraction=tissue),
        )  # fmt: skip
        jobs.append(SlideJob(f"s{k}-{assay}", s.path, assay, f"P{k % 2}"))
    bad = root / "broken.tif"
    bad.write_bytes(b"not a TIFF at all" * 100)
    jobs.append(SlideJob("broken", bad, "ki67", "P9"))
    sheet = root / "samples.csv"
    sheet.write_text(
        "patient_id,slide_id,path,assay\n"
        + "".join(f"{j.patient_id},{j.slide_id},{j.path.name},{j.assay}\n" for j in jobs)
    )
    return jobs, sheet


@pytest.fixture(scope="module")
def reference(batch, tmp_path_factory):
    """The single-process run of the batch: the stores every distributed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    reports = run_batch(batch[0], out=out, config=CONFIG)
    assert [r.status for r in reports] == ["ok"] * 4 + ["failed"]
    summary = json.loads((out / jobs_glass(batch) / SUMMARY).read_text())
    assert summary["n_tiles"] == 14 and 0.5 < summary["tissue_fraction"] < 0.9  # glass is seen
    return out, reports


def jobs_glass(batch):
    return batch[0][3].slide_id


@pytest.fixture(scope="module")
def client():
    with cluster_client(workers=2, dashboard_address=":0") as c:
        yield c


def _good(jobs):
    return [j for j in jobs if j.slide_id != "broken"]


def _assert_same_stores(out, ref_out, slide_ids):
    for sid in slide_ids:
        a, b = ref_out / sid, out / sid
        assert is_complete(b), sid
        ref_cells = pd.read_parquet(a / CELLS)
        cells = pd.read_parquet(b / CELLS)
        assert len(ref_cells) > 20, sid
        pd.testing.assert_frame_equal(cells, ref_cells)
        assert cells["cell_id"].tolist() == list(range(1, len(cells) + 1))  # no id lost or doubled
        np.testing.assert_array_equal(load_labels(b).compute(), load_labels(a).compute())
        assert json.loads((b / SUMMARY).read_text()) == json.loads((a / SUMMARY).read_text())
        # nothing left behind by an interrupted attempt: same files as the reference store
        assert sorted(os.listdir(b)) == sorted(os.listdir(a)), sid


def _task_workers(stream, prefix):
    return {t["worker"] for t in stream if str(t["key"]).startswith(prefix)}


@pytest.mark.slow
def test_two_workers_reproduce_the_single_process_run(batch, reference, client, tmp_path):
    from distributed import get_task_stream

    jobs, _ = batch
    ref_out, ref_reports = reference
    with get_task_stream(client) as ts:
        reports = run_batch_distributed(
            jobs, client=client, out=tmp_path, config=CONFIG, assays=load_assays(),
            tiles_per_task=3,
        )  # fmt: skip
    assert [(r.slide_id, r.status, r.n_cells) for r in reports] == [
        (r.slide_id, r.status, r.n_cells) for r in ref_reports
    ]
    _assert_same_stores(tmp_path, ref_out, [j.slide_id for j in _good(jobs)])
    # the tile batches of the slides were spread over both workers (6 tile tasks per slide)
    assert len(_task_workers(ts.data, "senpath-tiles-")) == 2
    assert sum(str(t["key"]).startswith("senpath-tiles-") for t in ts.data) == 3 * 6 + 5
    # the unreadable slide is reported with the worker's traceback, as in a local run
    failed = reports[-1]
    assert failed.status == "failed" and "broken.tif" in failed.message
    log = (tmp_path / "failures.log").read_text()
    assert "broken" in log and "Traceback" in log and "plan_slide" in log


@pytest.mark.slow
def test_cli_workers_and_resume(batch, reference, tmp_path):
    jobs, sheet = batch
    toml = tmp_path / "lab.toml"
    toml.write_text('[analysis]\nsegmenter = "classical"\ntile_size_um = 64.0\n')
    out = tmp_path / "results"
    args = ["run", str(sheet), "--out", str(out), "--config", str(toml), "--workers", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output  # the broken slide fails the run, the others are committed
    assert "dashboard: http" in r.output and "4 ok" in r.output and "1 failed" in r.output
    _assert_same_stores(out, reference[0], [j.slide_id for j in _good(jobs)])
    r = CliRunner().invoke(app, args)
    assert "4 skipped" in r.output, r.output


def test_cli_rejects_workers_with_scheduler(batch, tmp_path):
    _, sheet = batch
    r = CliRunner().invoke(
        app,
        ["run", str(sheet), "--out", str(tmp_path), "--workers", "2", "--scheduler", "tcp://x:1"],
    )
    assert r.exit_code == 2 and "mutually exclusive" in r.output


def test_run_batch_checks_its_mode(batch, tmp_path):
    jobs, _ = batch
    with pytest.raises(ValueError, match="only one of"):
        run_batch(jobs, out=tmp_path, workers=2, scheduler="tcp://x:1")
    with pytest.raises(ValueError, match="0 or more"):
        run_batch(jobs, out=tmp_path, workers=-1)


@pytest.mark.slow
def test_existing_scheduler_address(batch, reference, client, tmp_path):
    """``run_batch(scheduler=...)`` connects its own client to a running cluster."""
    jobs = _good(batch[0])[:2]
    reports = run_batch(jobs, out=tmp_path, config=CONFIG, scheduler=client.scheduler.address)
    assert [r.status for r in reports] == ["ok", "ok"]
    _assert_same_stores(tmp_path, reference[0], [j.slide_id for j in jobs])


@pytest.mark.slow
def test_repeated_slide_id_fails_alone(batch, client, tmp_path):
    job = _good(batch[0])[0]
    for kw in ({}, {"client": client}):
        out = tmp_path / ("dist" if kw else "local")
        reports = run_batch([job, job], out=out, config=CONFIG, **kw)
        assert [r.status for r in reports] == ["ok", "failed"]
        assert "repeats" in reports[1].message


@pytest.mark.slow
def test_segmentation_goes_to_gpu_workers(batch, reference, tmp_path):
    """Segment tasks need the worker resource GPU; reading and measuring run on any worker."""
    from distributed import Client, Nanny, Scheduler, SpecCluster, get_task_stream

    workers = {
        "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU_RESOURCE: 1}}},
        "cpu": {"cls": Nanny, "options": {"nthreads": 1}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    jobs = _good(batch[0])[:2]
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as c:
        c.wait_for_workers(2)
        (gpu,) = gpu_workers(c)
        with get_task_stream(c) as ts:
            reports = run_batch_distributed(
                jobs, client=c, out=tmp_path, config=CONFIG, assays=load_assays(),
                tiles_per_task=4, tile_resources={GPU_RESOURCE: 1},
            )  # fmt: skip
    assert [r.status for r in reports] == ["ok", "ok"]
    assert _task_workers(ts.data, "senpath-segment-") == {gpu}
    assert sum(str(t["key"]).startswith("senpath-segment-") for t in ts.data) == 2 * 4
    _assert_same_stores(tmp_path, reference[0], [j.slide_id for j in jobs])


def test_auto_tile_resources_follow_the_segmenter_and_the_workers():
    class FakeClient:
        def __init__(self, resources):
            self._info = {
                "workers": {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}
            }

        def scheduler_info(self):
            return self._info

        # for the type checker's sake: the helper only calls scheduler_info

    with_gpu = FakeClient([{}, {GPU_RESOURCE: 1}])
    without = FakeClient([{}, {}])
    cnn, classical = AnalysisConfig(segmenter="cnn"), AnalysisConfig(segmenter="classical")
    resolve = lambda m, model=None: m  # noqa: E731 - no weights needed to decide placement
    assert _tile_resources(with_gpu, cnn, "auto", resolve) == {GPU_RESOURCE: 1}
    assert _tile_resources(with_gpu, classical, "auto", resolve) is None
    assert _tile_resources(without, cnn, "auto", resolve) is None
    assert _tile_resources(without, classical, {"GPU": 2}, resolve) == {"GPU": 2.0}
    assert gpu_workers(with_gpu) == ["tcp://w1"]


@pytest.mark.slow
def test_killed_worker_loses_and_duplicates_nothing(batch, reference, tmp_path):
    """SIGKILL a worker while it runs a slide's tasks: the batch completes, stores identical."""
    jobs = _good(batch[0])
    killed: dict = {}
    with cluster_client(workers=2, dashboard_address=":0") as c:
        pids = c.run(os.getpid)
        done = threading.Event()

        def kill_first_busy_worker():
            while not done.is_set():
                for address, keys in c.processing().items():
                    busy = [k for k in keys if str(k).startswith("senpath-commit-")]
                    if busy and address in pids:
                        os.kill(pids[address], signal.SIGKILL)
                        killed.update(address=address, keys=busy)
                        return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_first_busy_worker, daemon=True)
        killer.start()
        try:
            reports = run_batch_distributed(
                jobs, client=c, out=tmp_path, config=CONFIG, assays=load_assays(),
                tiles_per_task=4,
            )  # fmt: skip
        finally:
            done.set()
            killer.join(timeout=10)
        after = c.run(os.getpid)
    assert killed, "no worker was killed: the batch ended before a commit task was seen"
    assert pids[killed["address"]] not in after.values()  # that process is really gone
    assert [r.status for r in reports] == ["ok"] * len(jobs), [r.message for r in reports]
    assert [r.n_cells for r in reports] == [r.n_cells for r in reference[1][: len(jobs)]]
    assert not (tmp_path / "failures.log").exists()
    _assert_same_stores(tmp_path, reference[0], [j.slide_id for j in jobs])


@pytest.mark.slow
def test_cnn_model_loads_once_per_worker(batch, tmp_path):
    """Two slides, several tile tasks, one worker: the CNN weights are read from disk once."""
    if resolve_method("auto") != "cnn":
        pytest.skip("the shipped CNN weights are not installed")
    jobs = _good(batch[0])[:2]
    config = AnalysisConfig(segmenter="cnn", device="cpu", tile_size_um=128.0)  # 2 x 2 tiles

    def count_loads():  # runs on the worker: wrap the loader with a counter
        from senpath.segment import predict

        original = predict.NucleusSegmenter.from_pretrained.__func__
        predict.LOADS = 0

        def counting(cls, *args, **kwargs):
            predict.LOADS += 1
            return original(cls, *args, **kwargs)

        predict.NucleusSegmenter.from_pretrained = classmethod(counting)

    def loads():
        from senpath.segment import predict

        return predict.LOADS

    with cluster_client(workers=1, dashboard_address=":0") as c:
        c.run(count_loads)
        reports = run_batch_distributed(
            jobs, client=c, out=tmp_path, config=config, assays=load_assays(), tiles_per_task=2
        )
        n_loads = list(c.run(loads).values())
    assert [r.status for r in reports] == ["ok", "ok"], [r.message for r in reports]
    assert all(r.n_cells > 20 for r in reports)
    assert n_loads == [1]  # 4 tile tasks, one load


def test_slurm_cluster_job_scripts():
    """The SLURM layouts senpath documents, checked on their job scripts (no SLURM needed)."""
    with slurm_cluster(
        cores=8, memory="32GB", walltime="02:00:00", queue="gpu", account="lab", gpu=True,
        job_script_prologue=["source /opt/senpath/.venv/bin/activate"],
        scheduler_options={"dashboard_address": ":0"},
    ) as cluster:  # fmt: skip
        script = cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH -p gpu" in script and "#SBATCH -A lab" in script
    assert "#SBATCH -t 02:00:00" in script
    assert "--resources GPU=1" in script and "--nthreads 8" in script
    assert "source /opt/senpath/.venv/bin/activate" in script
    # the CPU layout, from dask-jobqueue's configuration (what a jobqueue.yaml holds)
    import dask.config
    import dask_jobqueue  # noqa: F401 - loads its defaults first, so the set below only adds to them

    settings = {"jobqueue.slurm.cores": 4, "jobqueue.slurm.memory": "16GB"}
    with dask.config.set(settings):
        with slurm_cluster(scheduler_options={"dashboard_address": ":0"}) as cluster:
            script = cluster.job_script()
    assert "--nworkers 4" in script and "--nthreads 1" in script and "gres" not in script
    assert "#SBATCH --mem=15G" in script  # 16 GB = 14.9 GiB
    with dask.config.set({"jobqueue.slurm.cores": None}), pytest.raises(ValueError, match="cores"):
        slurm_cluster(memory="16GB")
