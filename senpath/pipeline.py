"""Orchestration of a batch: sample sheet or folder → one results store per slide, with resume.

A batch runs slide after slide in this process (or on a dask cluster, :mod:`senpath.distributed`); a
failed slide is reported and the batch goes on. A slide whose store is complete for the same input
file, settings, assay and model is skipped (resume) unless forced. One slide's analysis lives in
:mod:`senpath.slide_analysis`, its planning stage in :mod:`senpath.slide_plan` (re-exported here:
:func:`analyze_slide`, :func:`analyze_region`, :func:`plan_slide`, ...).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senpath.config import AnalysisConfig, Assay, get_assay, load_assays
from senpath.results import CELLS, PROVENANCE, is_complete
from senpath.samplesheet import SlideJob, jobs_for_input
from senpath.slide_analysis import (
    TileProgress,
    TileResult,
    analyze_region,
    analyze_slide,
    analyze_tiles,
    commit_slide,
    run_identity,
    segment_tiles,
)
from senpath.slide_plan import SlidePlan, plan_slide

__all__ = [
    "SlideReport",
    "analyze_region",
    "analyze_slide",
    "plan_batch",
    "run_batch",
    "SlidePlan",
    "TileResult",
    "plan_slide",
    "segment_tiles",
    "analyze_tiles",
    "commit_slide",
    "run_identity",
]


@dataclass
class SlideReport:
    """Outcome of one slide in a batch."""

    slide_id: str
    status: str  # "ok" | "skipped" | "failed"
    n_cells: int = 0
    seconds: float = 0.0
    message: str = ""
    folder: Path | None = None


def plan_batch(
    source: str | Path,
    *,
    assays: Mapping[str, Assay] | None = None,
    assay: str | None = None,
    mpp: float | None = None,
) -> tuple[list[SlideJob], list[str]]:
    """The jobs of a batch input (sample sheet, folder or slide) and any bad sample-sheet rows."""
    assays = load_assays() if assays is None else assays
    return jobs_for_input(source, known_assays=assays, assay=assay, mpp=mpp)


def run_batch(
    jobs: Iterable[SlideJob],
    *,
    out: str | Path,
    config: AnalysisConfig | None = None,
    assays: Mapping[str, Assay] | None = None,
    force: bool = False,
    progress: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
) -> list[SlideReport]:
    """Analyse every job; a failing slide is reported and the others still run.

    Slides whose store is complete and current are skipped unless ``force``. The reports, stores,
    ``<out>/failures.log`` and per-cell tables are the same whichever way the batch runs.

    Parameters
    ----------
    jobs : the slides (see :func:`plan_batch`).
    out : results root folder (one store per slide).
    config : analysis settings.
    assays : known assays (default: the presets plus none).
    force : redo slides whose store is already complete.
    progress : show progress bars (and the dask dashboard link when a cluster is used).
    workers : ``N >= 2`` runs the batch on a local dask cluster of N single-threaded worker
        processes; ``None``, 0 or 1 run it in this process (the default).
    scheduler : address of a running dask scheduler (``tcp://host:8786``) to run the batch on.
    client : a connected :class:`distributed.Client` to run on (e.g. of a ``SLURMCluster``).
        ``workers``, ``scheduler`` and ``client`` are mutually exclusive.

    Returns
    -------
    list of SlideReport
        One per job, in job order.
    """
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    modes = [bool(workers and workers > 1), scheduler is not None, client is not None]
    if sum(modes) > 1:
        raise ValueError("give only one of workers (N >= 2), scheduler and client")
    config = config or AnalysisConfig()
    assays = load_assays() if assays is None else assays
    if any(modes):
        from senpath.distributed import cluster_client, run_batch_distributed

        if client is not None:
            return run_batch_distributed(
                jobs,
                client=client,
                out=out,
                config=config,
                assays=assays,
                force=force,
                progress=progress,
            )
        n_workers = workers if workers and workers > 1 else None
        with cluster_client(workers=n_workers, scheduler=scheduler) as own:
            return run_batch_distributed(
                jobs,
                client=own,
                out=out,
                config=config,
                assays=assays,
                force=force,
                progress=progress,
            )
    jobs = list(jobs)
    reports: list[SlideReport] = []
    bar = BatchProgress(len(jobs)) if progress else None
    seen: set[str] = set()
    try:
        for job in jobs:
            t = time.perf_counter()
            try:
                assay, skipped = screen_job(
                    job, out=out, config=config, assays=assays, force=force, seen=seen
                )
                if skipped is not None:
                    reports.append(skipped)
                    continue
                on_tile = bar.slide(job.slide_id) if bar else None
                folder = analyze_slide(
                    job.path,
                    out=out,
                    assay=assay,
                    config=config,
                    mpp=job.mpp,
                    slide_id=job.slide_id,
                    patient_id=job.patient_id,
                    tile_progress=on_tile,
                )
                n = _count_cells(folder)
                reports.append(
                    SlideReport(
                        job.slide_id, "ok", n, time.perf_counter() - t, ok_message(folder), folder
                    )
                )
            except Exception as exc:  # one bad slide must not stop the batch
                reports.append(failed_report(job, exc, out=out, seconds=time.perf_counter() - t))
            finally:
                if bar:
                    bar.slide_done()
    finally:
        if bar:
            bar.close()
    return reports


def screen_job(
    job: SlideJob,
    *,
    out: str | Path,
    config: AnalysisConfig,
    assays: Mapping[str, Assay],
    force: bool,
    seen: set[str],
) -> tuple[Assay, SlideReport | None]:
    """Before a slide runs: its assay, and a ``skipped`` report when its store is already current.

    ``seen`` collects the slide ids of the batch so far; a repeated id raises (two slides would write,
    and on a cluster race for, one store).

    Raises
    ------
    ValueError
        When ``job.slide_id`` repeats an earlier job's.
    ConfigError
        When the job's assay is unknown.
    """
    if job.slide_id in seen:
        raise ValueError(
            f"slide_id {job.slide_id!r} repeats an earlier slide of the batch; each slide needs its "
            "own slide_id (its results folder): give them distinct names in a sample sheet"
        )
    seen.add(job.slide_id)
    folder = Path(out) / job.slide_id
    assay = get_assay(job.assay, assays)
    identity = run_identity(job.path, config=config, assay=assay, mpp=job.mpp)
    if not force and is_complete(folder, identity):
        n = _count_cells(folder)
        return assay, SlideReport(job.slide_id, "skipped", n, 0.0, "complete", folder)
    return assay, None


def failed_report(
    job: SlideJob,
    exc: BaseException,
    *,
    out: str | Path,
    seconds: float = 0.0,
    tb: Any = None,
) -> SlideReport:
    """A ``failed`` report for ``job``, its full traceback appended to ``<out>/failures.log``.

    ``tb`` is the traceback when ``exc`` was raised elsewhere (a dask worker's); default: its own.
    """
    message = f"{job.path}: {type(exc).__name__}: {exc}"
    _log_failure(Path(out), job, exc, tb=tb)
    return SlideReport(job.slide_id, "failed", 0, seconds, message)


def ok_message(folder: Path) -> str:
    """What a user must know about a slide that was analysed well (corrections set aside)."""
    import json

    try:
        provenance = json.loads((Path(folder) / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    kept = provenance.get("corrections_set_aside")
    return f"re-analysed: earlier corrections kept in {kept}, not applied" if kept else ""


def _count_cells(folder: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(folder / CELLS).metadata.num_rows)


def _log_failure(out: Path, job: SlideJob, exc: BaseException, *, tb: Any = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tb = exc.__traceback__ if tb is None else tb
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    with open(out / "failures.log", "a", encoding="utf-8") as fh:
        fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.slide_id} ({job.path})\n{text}\n")


class BatchProgress:
    """A rich progress display: one bar for the batch, one for the current slide's tiles (or, for a
    batch on a cluster, where slides run side by side, one for all the batch's tiles)."""

    def __init__(self, n_slides: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._progress.start()
        self._batch = self._progress.add_task("slides", total=n_slides)
        self._tiles: Any = None

    def slide(self, slide_id: str) -> TileProgress:
        if self._tiles is not None:
            self._progress.remove_task(self._tiles)
        self._tiles = self._progress.add_task(f"  {slide_id} tiles", total=None)

        def update(done: int, total: int) -> None:
            self._progress.update(self._tiles, completed=done, total=total)

        return update

    def slide_done(self) -> None:
        self._progress.advance(self._batch)

    def add_tiles(self, n: int) -> None:
        """Grow the batch-wide tile bar by ``n`` tiles (a slide's tile grid became known)."""
        if self._tiles is None:
            self._tiles = self._progress.add_task("  tiles", total=0)
        task = self._progress.tasks[self._progress.task_ids.index(self._tiles)]
        self._progress.update(self._tiles, total=(task.total or 0) + n)

    def tiles_done(self, n: int) -> None:
        """Advance the batch-wide tile bar by ``n`` tiles."""
        if self._tiles is not None:
            self._progress.advance(self._tiles, n)

    def print(self, text: str) -> None:
        """A line above the bars (the dashboard link)."""
        self._progress.console.print(text)

    def close(self) -> None:
        self._progress.stop()
