"""One slide's job in a batch, before and after it runs: screening (resume), reports, the failures
log and the progress display. Shared by the in-process batch (:mod:`senpath.pipeline`) and the dask
one (:mod:`senpath.distributed`), so neither imports the other's module for them."""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senpath.config import AnalysisConfig, Assay, get_assay
from senpath.provenance import Provenance
from senpath.results import CELLS, PROVENANCE, SUMMARY, is_complete, store_folder
from senpath.samplesheet import SlideJob
from senpath.score import ControlCutoff
from senpath.slide_analysis import TileProgress, run_identity


@dataclass
class SlideReport:
    """Outcome of one slide in a batch."""

    slide_id: str
    status: str  # "ok" | "skipped" | "failed"
    n_cells: int = 0
    seconds: float = 0.0
    message: str = ""
    folder: Path | None = None
    traceback: str = ""  # of a failed slide (also in failures.log)


def screen_job(
    job: SlideJob,
    *,
    out: str | Path,
    config: AnalysisConfig,
    assays: Mapping[str, Assay],
    force: bool,
    seen: set[str],
    cutoff: ControlCutoff | None = None,
) -> tuple[Assay, SlideReport | None]:
    """Before a slide runs: its assay, and a ``skipped`` report when its store is already current.

    ``seen`` collects the slide ids of the batch so far; a repeated id raises (two slides would write,
    and on a cluster race for, one store). ``cutoff``: the slide is scored from its batch's negative
    control (part of what makes its store current).

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
    assay = get_assay(job.assay, assays)
    return assay, (
        None if force else skipped_report(job, out=out, config=config, assay=assay, cutoff=cutoff)
    )


def skipped_report(
    job: SlideJob,
    *,
    out: str | Path,
    config: AnalysisConfig,
    assay: Assay,
    cutoff: ControlCutoff | None = None,
) -> SlideReport | None:
    """A ``skipped`` report when the slide's store is complete for this input, settings, assay and
    model (its files matching its manifest); ``None`` when the slide must be analysed.

    The slide's file is probed first (:func:`senpath.io.probe_file`), so a file that cannot be read
    (a symbolic link loop, a folder, a pipe) gets the reader's one line, not a raw ``OSError``.
    """
    from senpath.io import probe_file

    probe_file(job.path)
    folder = store_folder(out, job.slide_id)
    identity = run_identity(
        job.path, config=config, assay=assay, mpp=job.mpp, cutoff=cutoff,
        nuclear_image=job.nuclear_image, nuclear_channel=job.nuclear_channel,
    )  # fmt: skip
    if is_complete(folder, identity):
        n = _count_cells(folder)
        return SlideReport(job.slide_id, "skipped", n, 0.0, "complete", folder)
    return None


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
    text = _log_failure(Path(out), job, exc, tb=tb)
    return SlideReport(job.slide_id, "failed", 0, seconds, failure_line(job, exc), None, text)


#: Errors whose message is written for the user (it names the problem and the fix): shown as they
#: are. Any other exception is unexpected, and its type is shown too (its traceback is in the log).
_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)


def failure_line(job: SlideJob, exc: BaseException) -> str:
    """One line for a failed slide: the file once, then the problem.

    ``path: problem`` for senpath's own errors (whose message may already start with the file:
    it is not repeated); ``path: KeyError: 'x'`` for an unexpected one.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, _EXPECTED_ERRORS):
        text = f"{type(exc).__name__}: {text}"
    path = str(job.path)
    return text if text.startswith(path) else f"{path}: {text}"


def ok_message(folder: Path) -> str:
    """What a user must know about a slide that was analysed well: an explicit mpp that
    contradicts the file's calibration, corrections set aside, a faint counterstain
    (``summary.json`` ``counterstain_qc``; ``; `` between them)."""
    try:
        provenance = Provenance.from_dict(
            json.loads((Path(folder) / PROVENANCE).read_text(encoding="utf-8"))
        )
    except (OSError, ValueError):
        return ""
    notes = [provenance.mpp_warning or ""]
    if kept := provenance.corrections_set_aside:
        notes.append(f"re-analysed: earlier corrections kept in {kept}, not applied")
    try:
        summary = json.loads((Path(folder) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    qc = summary.get("counterstain_qc") if isinstance(summary, dict) else None
    if isinstance(qc, dict):
        notes.append(str(qc.get("warning") or ""))
    return "; ".join(n for n in notes if n)


def _count_cells(folder: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(folder / CELLS).metadata.num_rows)


def _log_failure(out: Path, job: SlideJob, exc: BaseException, *, tb: Any = None) -> str:
    """Append the traceback to ``<out>/failures.log``; returns it."""
    tb = exc.__traceback__ if tb is None else tb
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "failures.log", "a", encoding="utf-8") as fh:
            fh.write(
                f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.slide_id} ({job.path})\n{text}\n"
            )
    except OSError:  # the results folder went away: the report line still says what failed
        pass
    return text


class BatchProgress:
    """Progress of a batch: on a terminal, a rich display (one bar for the batch, one for the
    current slide's tiles, or for a batch on a cluster one for all the batch's tiles); without
    one (a log file, ``nohup``, a SLURM job), one plain line per slide done on stderr, e.g.
    ``senpath: 3/7 P01-sabgal ok, 975 cells, 14.4 s`` (rich would print its bars only at the end).

    ``plain`` forces one mode (default: plain unless stderr is a terminal).
    """

    def __init__(self, n_slides: int, *, plain: bool | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.plain = not Console(stderr=True).is_terminal if plain is None else plain
        self._n, self._done = n_slides, 0
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
            disable=self.plain,
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

    def slide_done(self, report: SlideReport | None = None) -> None:
        """One slide finished (``report``: its outcome, for the plain line)."""
        self._done += 1
        self._progress.advance(self._batch)
        if self.plain:
            what = ""
            if report is not None:
                what = f" {report.slide_id} {report.status}"
                if report.status == "ok":
                    what += f", {report.n_cells} cells"
                what += f", {report.seconds:.1f} s"
            print(f"senpath: {self._done}/{self._n}{what}", file=sys.stderr, flush=True)

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
        if self.plain:
            print(text, file=sys.stderr, flush=True)
        else:
            self._progress.console.print(text)

    def close(self) -> None:
        self._progress.stop()
