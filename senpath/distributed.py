"""Scale-out on dask distributed: a batch's slides across workers, a large slide's tiles in batches.

The engine is dask distributed (no scheduler of our own). Three ways to run a batch:

- in this process (the default; :func:`senpath.pipeline.run_batch` without ``workers``);
- ``workers=N``: a :class:`distributed.LocalCluster` of N single-threaded worker processes;
- ``scheduler="tcp://host:8786"``, or ``client=``: an existing cluster, e.g. SLURM jobs started with
  dask-jobqueue (:func:`slurm_cluster`, ``docs/distributed.md``).

Work units, per slide (each a dask task, keys ``senpath-<stage>-<slide_id>-<run>[-<batch>]``)::

    plan (tissue mask, tile grid, stain vectors)
      └─ tiles × ⌈n_tiles / tiles_per_task⌉ (read, segment, measure; returns cells + nucleus masks)
           [with GPU workers: segment (resources={"GPU": 1}) → tiles (read, measure: any worker)]
    commit (paste the masks in tile order → cell ids, score, write the store; manifest last)

A slide of at most ``tiles_per_task`` tiles (and no GPU split) runs its tiles inside its commit task.
The stages are those of :func:`senpath.slide_analysis.analyze_slide`, so the per-cell tables are identical
to a single-process run. Cell ids are assigned by the commit task in tile order, never by the order in
which tile tasks finish.

Faults: when a worker dies, the scheduler runs its tasks again elsewhere (and recomputes results it
held), up to ``distributed.scheduler.allowed-failures`` times per task. A rerun is harmless: the store
is written by the one commit task of its slide, every file atomically, the manifest removed first and
written last, so a slide is either committed once, whole, or redone.

Models load once per worker process (the CNN is cached per process by
:mod:`senpath.segment.predict`), not per task.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

# this module is the dask layer and is only imported when a cluster is used, so dask is imported here
from distributed.diagnostics.plugin import WorkerPlugin

from senpath.batch_jobs import (
    BatchProgress,
    SlideReport,
    _count_cells,
    failed_report,
    ok_message,
    screen_job,
)
from senpath.config import AnalysisConfig, Assay
from senpath.controls import BatchControls, GroupKey, group_key
from senpath.samplesheet import SlideJob
from senpath.score import ControlCutoff
from senpath.slide_analysis import commit_slide
from senpath.slide_plan import SlidePlan, plan_slide
from senpath.tile_engine import TileResult, analyze_tiles, segment_tiles

if TYPE_CHECKING:
    from dask_jobqueue import SLURMCluster
    from distributed import Client, Future

#: Tiles per tile task: a slide with more tiles than this is split into tile tasks. 16 tiles of
#: 512 µm is about 4 mm² of tissue, tens of seconds of work: long enough that the ~ms dask overhead
#: per task is negligible, short enough to spread a large slide over many workers.
TILES_PER_TASK = 16
#: Worker resource name that marks a GPU (``dask worker --resources GPU=1``).
GPU_RESOURCE = "GPU"

TileResources = Mapping[str, float] | Literal["auto"] | None


# --------------------------------------------------------------------------- clusters


@contextlib.contextmanager
def cluster_client(
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    resources: Mapping[str, float] | None = None,
    dashboard_address: str | None = ":8787",
) -> Iterator[Client]:
    """A dask client on a new local cluster or on an existing scheduler; closed on exit.

    Parameters
    ----------
    workers : number of worker processes of a new :class:`distributed.LocalCluster` (one thread
        each: senpath's per-tile work is single-threaded numpy/OpenCV, so processes scale it).
    scheduler : address of a running scheduler (``tcp://host:8786``); mutually exclusive with
        ``workers``.
    resources : abstract resources every local worker declares, e.g. ``{"GPU": 1}`` on a machine with
        one GPU per worker.
    dashboard_address : where the local cluster serves its dashboard (``":0"``: a free port,
        ``None``: no dashboard).

    Yields
    ------
    distributed.Client

    Raises
    ------
    ValueError
        When both or neither of ``workers`` and ``scheduler`` are given, or ``workers`` < 1.
    OSError
        When the scheduler cannot be reached (dask's message names the address).
    """
    from distributed import Client, LocalCluster

    if (workers is None) == (scheduler is None):
        raise ValueError("give either workers (a local cluster) or scheduler (an address)")
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if workers is None or workers < 1:
        raise ValueError(f"a local cluster needs at least 1 worker, got {workers}")
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            resources=dict(resources) if resources else None,
            dashboard_address=dashboard_address,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(LibraryThreads(), name="senpath-library-threads")
        yield client


class LibraryThreads(WorkerPlugin):
    """Worker plugin: OpenCV uses as many threads as the worker has (one, in a local cluster).

    dask already sets ``OMP_NUM_THREADS=1`` (numpy, torch) in worker processes; without this,
    OpenCV would start a thread per core in every worker and N workers would fight over the cores.
    """

    def setup(self, worker: Any) -> None:
        """Called by dask on each worker as it starts."""
        import cv2

        cv2.setNumThreads(max(1, int(worker.state.nthreads)))


def dashboard_message(client: Client) -> str:
    """One line for the user: the dashboard link, or why there is none."""
    services = client.scheduler_info().get("services", {})
    address = client.scheduler.address if client.scheduler is not None else "?"
    if "dashboard" not in services:
        return f"dask scheduler {address} (started without a dashboard)"
    line = f"dask scheduler {address}, dashboard: {client.dashboard_link}"
    if not client.run_on_scheduler(_has_bokeh):
        line += " (its pages need bokeh>=3.1 installed where the scheduler runs)"
    return line


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def gpu_workers(client: Client) -> list[str]:
    """Addresses of the workers that declare a ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    return sorted(a for a, w in workers.items() if w.get("resources", {}).get(GPU_RESOURCE, 0) > 0)


def slurm_cluster(
    *,
    cores: int | None = None,
    memory: str | None = None,
    walltime: str | None = None,
    gpu: bool = False,
    queue: str | None = None,
    account: str | None = None,
    python: str | None = None,
    job_script_prologue: Sequence[str] | None = None,
    job_extra_directives: Sequence[str] | None = None,
    **kwargs: Any,
) -> SLURMCluster:
    """A :class:`dask_jobqueue.SLURMCluster` laid out for senpath (nothing is submitted until
    ``cluster.scale(jobs=...)`` or ``cluster.adapt(...)``).

    Every argument left ``None`` comes from dask-jobqueue's configuration (``jobqueue.slurm.*``, e.g.
    ``~/.config/dask/jobqueue.yaml``; see ``docs/distributed.md``).

    Parameters
    ----------
    cores, memory, walltime : per SLURM job (``--cpus-per-task``, ``--mem``, ``-t``), e.g. ``8``,
        ``"32GB"``, ``"04:00:00"``.
    gpu : each job asks for one GPU (``--gres=gpu:1``) and runs one worker with ``cores`` threads
        that declares the resource ``GPU=1``, so segmentation tasks go to it and its other threads
        read and measure. Without ``gpu``, each job runs ``cores`` single-threaded worker processes.
    queue, account : SLURM partition (``-p``) and account (``-A``).
    python : the Python of the environment where senpath is installed on the compute nodes.
    job_script_prologue : shell lines run before the workers start (``module load ...``,
        ``source /path/to/.venv/bin/activate``).
    job_extra_directives : more ``#SBATCH`` options (added to the configured ones).
    **kwargs : passed on to :class:`~dask_jobqueue.SLURMCluster` (``interface="ib0"``,
        ``local_directory="$TMPDIR"``, ``scheduler_options={"dashboard_address": ":8787"}``, ...).

    Returns
    -------
    dask_jobqueue.SLURMCluster
        ``cluster.job_script()`` shows the job script; ``cluster.scheduler_address`` is what
        ``senpath run --scheduler`` takes.

    Raises
    ------
    ValueError
        When the number of cores per job is neither given nor configured.
    """
    import dask.config
    from dask_jobqueue import SLURMCluster

    cores = cores or dask.config.get("jobqueue.slurm.cores", None)
    if not cores:
        raise ValueError(
            "give cores= (CPU cores per SLURM job) or set jobqueue.slurm.cores in jobqueue.yaml"
        )
    extra = list(dask.config.get("jobqueue.slurm.job-extra-directives", None) or [])
    extra += list(job_extra_directives or [])
    worker_args = list(dask.config.get("jobqueue.slurm.worker-extra-args", None) or [])
    worker_args += list(kwargs.pop("worker_extra_args", None) or [])
    if gpu:
        processes = 1
        extra.append("--gres=gpu:1")
        worker_args += ["--resources", f"{GPU_RESOURCE}=1"]
    else:
        processes = int(cores)
    if job_script_prologue is not None:
        kwargs["job_script_prologue"] = list(job_script_prologue)
    return SLURMCluster(
        cores=int(cores),
        processes=processes,
        memory=memory,
        walltime=walltime,
        queue=queue,
        account=account,
        python=python,
        job_extra_directives=extra,
        worker_extra_args=worker_args,
        **kwargs,
    )


# --------------------------------------------------------------------------- tasks (run on workers)


@contextlib.contextmanager
def _in_worker_dask() -> Iterator[None]:
    """Run the dask arrays a task computes (slide reads, the tissue mask) in the task's own thread.

    Inside a worker, dask's default scheduler is the cluster itself: each read would become tasks
    shipped around the cluster, and ``dask.array.store`` into a numpy array (the tissue mask)
    would fill a remote copy and leave the task's array unwritten. The work unit is the task.
    """
    import dask

    with dask.config.set(scheduler="sync"):
        yield


def _plan_task(job: SlideJob, assay: Assay, config: AnalysisConfig) -> SlidePlan:
    with _in_worker_dask():
        return plan_slide(
            job.path,
            assay=assay,
            config=config,
            mpp=job.mpp,
            slide_id=job.slide_id,
            patient_id=job.patient_id,
        )


def _segment_task(plan: SlidePlan, indices: Sequence[int]) -> tuple[list[Any], float]:
    t = time.perf_counter()
    with _in_worker_dask():
        labels = segment_tiles(plan, indices)
    return labels, time.perf_counter() - t


def _tiles_task(
    plan: SlidePlan, indices: Sequence[int], segmented: tuple[list[Any], float] | None = None
) -> tuple[list[TileResult], float]:
    t = time.perf_counter()
    labels = None if segmented is None else segmented[0]
    with _in_worker_dask():
        results = list(analyze_tiles(plan, indices, labels=labels))
    seconds = time.perf_counter() - t + (0.0 if segmented is None else segmented[1])
    return results, seconds


def _commit_task(
    plan: SlidePlan,
    parts: list[tuple[list[TileResult], float]] | None,
    out: str,
    cutoff: ControlCutoff | None = None,
) -> tuple[str, int, float]:
    t = time.perf_counter()
    if parts is None:  # a small slide: its tiles run here, streamed
        results: Iterable[TileResult] = analyze_tiles(plan, range(plan.n_tiles))
        tile_seconds = 0.0
    else:
        results = [r for batch, _ in parts for r in batch]
        tile_seconds = sum(s for _, s in parts)
    with _in_worker_dask():
        folder = commit_slide(
            plan, results, out=out, extra_timings={"tile_tasks_s": tile_seconds}, cutoff=cutoff
        )
    seconds = sum(plan.timings.values()) + tile_seconds + time.perf_counter() - t
    return str(folder), _count_cells(folder), seconds


# --------------------------------------------------------------------------- the batch (driver)


@dataclass
class _SlideRun:
    """The futures of one slide in flight (held so dask keeps their results until the commit)."""

    index: int
    job: SlideJob
    futures: list[Future] = field(default_factory=list)
    cutoff: ControlCutoff | None = None  # from the batch's negative control (sample sheet)


def run_batch_distributed(
    jobs: Iterable[SlideJob],
    *,
    client: Client,
    out: str | Path,
    config: AnalysisConfig,
    assays: Mapping[str, Assay],
    force: bool = False,
    progress: bool = False,
    tiles_per_task: int = TILES_PER_TASK,
    tile_resources: TileResources = "auto",
) -> list[SlideReport]:
    """Analyse a batch on a dask cluster; same reports, stores and failure log as a local run.

    Parameters
    ----------
    jobs : the slides.
    client : a client connected to the cluster (its workers must import the same senpath).
    out : results root folder, on a file system every worker and this process see.
    config, assays, force, progress : as for :func:`senpath.pipeline.run_batch`.
    tiles_per_task : tiles per tile task (a slide with at most this many runs as one task).
    tile_resources : worker resources the segmentation of a tile task needs. ``"auto"``:
        ``{"GPU": 1}`` when the CNN segments and some worker declares a ``GPU`` resource, else none;
        a mapping: those resources (the reading and measuring then run as separate tasks, anywhere);
        ``None``: none.

    Returns
    -------
    list of SlideReport
        One per job, in job order; ``seconds`` is the slide's compute time on the workers.

    Notes
    -----
    A batch with controls (sample sheet ``batch`` and ``control``) runs in two passes per group,
    as in one process (:class:`senpath.controls.BatchControls`): a group's negative control is
    submitted first, with the slides of groups without controls; the group's other slides are
    held back until it is committed, then scored at its cut-offs (or failed with a line naming
    it, when it failed).
    """
    from distributed import as_completed

    from senpath.segment import resolve_method

    if tiles_per_task < 1:
        raise ValueError(f"tiles_per_task must be at least 1, got {tiles_per_task}")
    jobs = list(jobs)
    controls = BatchControls(jobs, config)
    # a group's slides wait for its negative control: their cut-offs (and whether their stores
    # are current) are known only once it is committed
    waiting: dict[GroupKey, list[int]] = {}
    out_text = str(Path(out))
    resources = _tile_resources(client, config, tile_resources, resolve_method)
    reports: list[SlideReport | None] = [None] * len(jobs)
    bar = BatchProgress(len(jobs)) if progress else None
    run_token = uuid.uuid4().hex[:8]
    running: dict[int, _SlideRun] = {}
    stage_of: dict[Any, tuple[int, str, int]] = {}  # future key -> (job index, stage, tiles)
    pending = as_completed()

    def submit(run: _SlideRun, stage: str, fn: Any, *args: Any, n: int = 0, **kw: Any) -> Future:
        suffix = f"-{len(run.futures)}" if stage in ("segment", "tiles") else ""
        key = f"senpath-{stage}-{run.job.slide_id}-{run_token}{suffix}"
        fut = client.submit(fn, *args, key=key, pure=False, **kw)
        run.futures.append(fut)
        stage_of[fut.key] = (run.index, stage, n)
        if stage in ("plan", "commit", "tiles"):
            pending.add(fut)
        return fut

    seen: set[str] = set()

    def launch(i: int) -> None:
        job = jobs[i]
        try:
            cutoff = controls.cutoff_for(job)
            assay, skipped = screen_job(
                job, out=out, config=config, assays=assays, force=force, seen=seen, cutoff=cutoff
            )
        except Exception as exc:  # one bad slide must not stop the batch
            finish(i, failed_report(job, exc, out=out))
            return
        if skipped is not None:
            finish(i, skipped)
            return
        running[i] = run = _SlideRun(i, job, cutoff=cutoff)
        submit(run, "plan", _plan_task, job, assay, config)

    def finish(i: int, report: SlideReport) -> None:
        reports[i] = report
        run = running.pop(i, None)
        if run is not None:
            for f in run.futures:
                stage_of.pop(f.key, None)
            client.cancel([f for f in run.futures if not f.done()])
        if bar:
            bar.slide_done(report)
        job = jobs[i]
        if controls.is_negative_control(job):  # its group's slides may go now
            if report.folder is not None:
                controls.control_done(job, report.folder)
            else:
                controls.control_failed(job, report.message)
            for k in waiting.pop(group_key(job), []):
                launch(k)

    try:
        if bar:
            bar.print(dashboard_message(client))
        for i in controls.order(jobs):  # negative controls first
            job = jobs[i]
            if controls.waits_for_control(job):
                waiting.setdefault(group_key(job), []).append(i)
            else:
                launch(i)

        for fut in pending:
            where = stage_of.get(fut.key)
            if where is None:  # a future of a slide already reported (cancelled)
                continue
            i, stage, n_tiles = where
            run = running[i]
            if fut.status != "finished":
                error = fut.exception() if fut.status == "error" else RuntimeError(fut.status)
                tb = fut.traceback() if fut.status == "error" else None
                finish(i, failed_report(run.job, error, out=out, tb=tb))
                continue
            if stage == "tiles":
                if bar:
                    bar.tiles_done(n_tiles)
                continue
            if stage == "plan":
                n = int(fut.result().n_tiles)
                if bar:
                    bar.add_tiles(n)
                if resources is None and n <= tiles_per_task:
                    submit(run, "commit", _commit_task, fut, None, out_text, run.cutoff, n=n)
                    continue
                parts = []
                for start in range(0, n, tiles_per_task):
                    idx = list(range(start, min(n, start + tiles_per_task)))
                    seg = None
                    if resources is not None:
                        seg = submit(run, "segment", _segment_task, fut, idx, resources=resources)
                    parts.append(submit(run, "tiles", _tiles_task, fut, idx, seg, n=len(idx)))
                submit(run, "commit", _commit_task, fut, parts, out_text, run.cutoff, n=0)
                continue
            # commit: the store is written and its manifest committed
            folder, n_cells, seconds = fut.result()
            if bar and n_tiles:
                bar.tiles_done(n_tiles)
            message = ok_message(Path(folder))
            finish(i, SlideReport(run.job.slide_id, "ok", n_cells, seconds, message, Path(folder)))
    finally:
        if running:  # interrupted (Ctrl-C): do not leave this batch's tasks on the cluster
            client.cancel([f for run in running.values() for f in run.futures])
        if bar:
            bar.close()
    return [r for r in reports if r is not None]


def _tile_resources(
    client: Client, config: AnalysisConfig, wanted: TileResources, resolve: Any
) -> dict[str, float] | None:
    if wanted is None:
        return None
    if wanted == "auto":
        if resolve(config.segmenter, model=config.model) == "cnn" and gpu_workers(client):
            return {GPU_RESOURCE: 1}
        return None
    return {str(k): float(v) for k, v in dict(wanted).items()}
