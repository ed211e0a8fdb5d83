"""Orchestration of a batch: sample sheet or folder → one results store per slide, with resume.

A batch runs slide after slide in this process (or on a dask cluster, :mod:`senpath.distributed`); a
failed slide is reported and the batch goes on. A slide whose store is complete for the same input
file, settings, assay and model is skipped (resume) unless forced. One slide's analysis lives in
:mod:`senpath.slide_analysis`, its planning stage in :mod:`senpath.slide_plan` and its tile loop in
:mod:`senpath.tile_engine` (re-exported here: :func:`analyze_slide`, :func:`plan_slide`,
:func:`analyze_tiles`, ...).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from senpath.batch_jobs import (
    BatchProgress,
    SlideReport,
    _count_cells,
    failed_report,
    ok_message,
    screen_job,
    skipped_report,
)
from senpath.config import AnalysisConfig, Assay, load_assays, resolve_settings
from senpath.controls import BatchControls
from senpath.plate import record_layout
from senpath.results import prepare_results_root, store_folder
from senpath.samplesheet import SlideJob, jobs_for_input
from senpath.score import ControlCutoff
from senpath.slide_analysis import TileProgress, analyze_slide, commit_slide, run_identity
from senpath.slide_plan import SlidePlan, plan_slide, reference_warnings
from senpath.store_lock import hold_store
from senpath.tile_engine import TileResult, analyze_tiles, segment_tiles

__all__ = [
    "SlideReport",
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
    config: AnalysisConfig | str | Path | Mapping[str, Any] | None = None,
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
    config : analysis settings, or a settings TOML file or mapping (see
        :func:`senpath.config.load_settings`; its assays join ``assays``).
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
    config, given = resolve_settings(config, assays)
    assays = load_assays() if given is None else given
    prepare_results_root(
        out
    )  # a file, or a folder this user cannot write: one line, not a traceback
    jobs = list(jobs)
    record_layout(out, (j.placement for j in jobs))  # conditions and wells, for the exports
    # a network trained on normalised slides shown them otherwise: once per assay, up front
    uses = [(assays[j.assay], j.nuclear_image is not None) for j in jobs if j.assay in assays]
    for line in reference_warnings(config, uses):
        warnings.warn(line, stacklevel=2)
    if any(modes):  # controls too: the cluster holds a group's slides until its control is done
        from senpath.distributed import cluster_client, run_batch_distributed

        if client is not None:
            reports = run_batch_distributed(
                jobs,
                client=client,
                out=out,
                config=config,
                assays=assays,
                force=force,
                progress=progress,
            )
            return _apply_sheet_extras(jobs, reports, out=out)
        n_workers = workers if workers and workers > 1 else None
        with cluster_client(workers=n_workers, scheduler=scheduler) as own:
            reports = run_batch_distributed(
                jobs,
                client=own,
                out=out,
                config=config,
                assays=assays,
                force=force,
                progress=progress,
            )
        return _apply_sheet_extras(jobs, reports, out=out)
    controls = BatchControls(jobs, config)
    done: dict[int, SlideReport] = {}
    bar = BatchProgress(len(jobs)) if progress else None
    seen: set[str] = set()
    try:
        for i in controls.order(jobs):  # a batch's negative control before the slides it scores
            job = jobs[i]
            t = time.perf_counter()
            try:
                cutoff = controls.cutoff_for(job)
                report = _run_job(
                    job, out=out, config=config, assays=assays, force=force, seen=seen,
                    cutoff=cutoff, on_tile=bar.slide(job.slide_id) if bar else None, t=t,
                )  # fmt: skip
            except Exception as exc:  # one bad slide must not stop the batch
                report = failed_report(job, exc, out=out, seconds=time.perf_counter() - t)
            if controls.is_negative_control(job):
                if report.folder is not None:
                    controls.control_done(job, report.folder)
                else:
                    controls.control_failed(job, report.message)
            done[i] = report
            if bar:
                bar.slide_done(report)
    finally:
        if bar:
            bar.close()
    return _apply_sheet_extras(jobs, [done[i] for i in sorted(done)], out=out)


def _apply_sheet_extras(
    jobs: list[SlideJob], reports: list[SlideReport], *, out: str | Path
) -> list[SlideReport]:
    """After the slides: attach each row's ``regions`` GeoJSON to its store when it does not hold it
    yet (no re-segmentation); a bad regions file fails its slide with one line, the batch goes on.
    A re-analysed slide without a ``regions`` row gets the regions it had before again. The row's
    ``section`` is recorded in the store's manifest (:func:`senpath.results.record_section`)."""
    from senpath.region_store import import_regions, reattach_kept_regions, regions_sha256
    from senpath.results import record_section, sha256_file

    by_id = {job.slide_id: job for job in jobs}
    out_reports = []
    for report in reports:
        job = by_id[report.slide_id]
        if report.folder is not None and (job.regions is not None or report.status == "ok"):
            t = time.perf_counter()
            try:
                if job.regions is None:  # re-analysed: the regions it had before, if any
                    reattach_kept_regions(report.folder)
                elif regions_sha256(report.folder) != sha256_file(job.regions):
                    import_regions(report.folder, job.regions)
            except Exception as exc:  # one bad regions file must not stop the batch
                report = failed_report(job, exc, out=out, seconds=time.perf_counter() - t)
        if report.folder is not None and job.section:  # a skipped (current) store too
            t = time.perf_counter()
            try:
                with hold_store(report.folder, warn=False):
                    record_section(report.folder, job.section)
            except Exception as exc:  # a store busy with a review: that slide only
                report = failed_report(job, exc, out=out, seconds=time.perf_counter() - t)
        out_reports.append(report)
    return out_reports


def _run_job(
    job: SlideJob,
    *,
    out: str | Path,
    config: AnalysisConfig,
    assays: Mapping[str, Assay],
    force: bool,
    seen: set[str],
    cutoff: ControlCutoff | None,
    on_tile: TileProgress | None,
    t: float,
) -> SlideReport:
    """One slide of an in-process batch: skipped when current, else analysed under its lock."""
    assay, skipped = screen_job(
        job, out=out, config=config, assays=assays, force=force, seen=seen, cutoff=cutoff
    )
    if skipped is not None:
        return skipped
    # the store's lock for the whole slide: another run (or a review) writing it now makes this
    # slide fail with a line naming that writer
    with hold_store(store_folder(out, job.slide_id), warn=False) as lock:
        # done by another run while this one waited on earlier slides: skip it
        done = (
            None
            if force
            else skipped_report(job, out=out, config=config, assay=assay, cutoff=cutoff)
        )
        if done is not None:
            return done
        folder = analyze_slide(
            job.path,
            out=out,
            assay=assay,
            config=config,
            mpp=job.mpp,
            slide_id=job.slide_id,
            patient_id=job.patient_id,
            tile_progress=on_tile,
            cutoff=cutoff,
            nuclear_image=job.nuclear_image,
            nuclear_channel=job.nuclear_channel,
        )
    notes = [lock.takeover_message(), ok_message(folder)]
    return SlideReport(
        job.slide_id,
        "ok",
        _count_cells(folder),
        time.perf_counter() - t,
        "; ".join(m for m in notes if m),
        folder,
    )
