"""Batches with controls: which slide sets a batch's marker cut-offs, and the order slides run in.

Labs calibrate a staining run with controls stained in the same batch: a negative control (cells or
tissue known not to express the marker, or the sample stained without the primary antibody or
substrate) shows how dark unstained cells look in this run; a positive control shows the stain
worked. In a sample sheet, rows of one ``batch`` and ``assay`` form a group; its row with
``control = negative`` sets the group's cut-offs: each marker at the ``control_percentile`` of the
control's per-cell marker OD (:func:`senpath.score.control_thresholds`). Every slide of the group,
the positive control included, is scored at those cut-offs.

So the negative control runs first (:meth:`BatchControls.order`). When it fails, or has fewer than
``control_min_cells`` cells, the group's other slides are not scored: each gets a failure line that
names the control, instead of figures at the default cut-off that would look like calibrated ones.
Groups without a negative control (no ``control`` rows) are scored as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from senpath.config import AnalysisConfig
from senpath.provenance import Provenance
from senpath.results import PROVENANCE
from senpath.samplesheet import SlideJob
from senpath.score import ControlCutoff, ControlError

#: A group of a batch: (batch name or None, assay name).
GroupKey = tuple[str | None, str]


def group_key(job: SlideJob) -> GroupKey:
    """The group a job is scored with: its batch and assay."""
    return (job.batch, job.assay)


def _group_name(key: GroupKey) -> str:
    batch, assay = key
    return f"batch {batch!r} ({assay})" if batch else f"the rows without a batch ({assay})"


class BatchControls:
    """The controls of a batch's jobs, and the cut-offs each job is scored with.

    Parameters
    ----------
    jobs : the batch's jobs.
    config : the analysis settings (``control_percentile``, ``control_min_cells``).

    Use: run the jobs in :meth:`order`; before each, :meth:`cutoff_for` (raises
    :class:`~senpath.score.ControlError` when the job's group cannot be scored); after a negative
    control, :meth:`control_done` with its store or :meth:`control_failed` with its failure line.
    """

    def __init__(self, jobs: Iterable[SlideJob], config: AnalysisConfig) -> None:
        self.config = config
        self._negative: dict[GroupKey, SlideJob] = {}
        self._problem: dict[GroupKey, str] = {}
        self._cutoff: dict[GroupKey, ControlCutoff] = {}
        jobs = list(jobs)
        controlled = {group_key(j) for j in jobs if j.control is not None}
        for key in sorted(controlled, key=lambda k: (k[0] or "", k[1])):
            negatives = [j for j in jobs if group_key(j) == key and j.control == "negative"]
            if len(negatives) > 1:
                ids = ", ".join(repr(j.slide_id) for j in negatives)
                self._problem[key] = (
                    f"{_group_name(key)} has {len(negatives)} negative controls ({ids}): mark one "
                    "of them, or give them different batches"
                )
            elif not negatives:
                self._problem[key] = (
                    f"{_group_name(key)} has a positive control but no negative control: add the "
                    "negative control's row (the cut-offs come from it)"
                )
            else:
                self._negative[key] = negatives[0]

    @property
    def any(self) -> bool:
        """Whether some group of the batch is scored from controls."""
        return bool(self._negative or self._problem)

    def order(self, jobs: Sequence[SlideJob]) -> list[int]:
        """Indices of ``jobs`` in the order to run them: negative controls first, else as given."""
        negatives = set(map(id, self._negative.values()))
        return sorted(range(len(jobs)), key=lambda i: id(jobs[i]) not in negatives)

    def is_negative_control(self, job: SlideJob) -> bool:
        """Whether ``job`` sets its group's cut-offs."""
        return self._negative.get(group_key(job)) is job

    def waits_for_control(self, job: SlideJob) -> bool:
        """Whether ``job`` must wait for its group's negative control (not run, not failed yet)."""
        key = group_key(job)
        negative = self._negative.get(key)
        return (
            negative is not None
            and negative is not job
            and key not in self._cutoff
            and key not in self._problem
        )

    def cutoff_for(self, job: SlideJob) -> ControlCutoff | None:
        """The cut-offs ``job`` is scored with (``None``: the rule's, its group has no controls).

        Raises
        ------
        ControlError
            When the job's group has a control problem, or its negative control failed (or has not
            run yet: the jobs were not run in :meth:`order`).
        """
        key = group_key(job)
        if key in self._problem:
            raise ControlError(f"not scored: {self._problem[key]}")
        negative = self._negative.get(key)
        if negative is None:
            return None
        if negative is job:
            return ControlCutoff(
                negative.slide_id,
                job.batch,
                self.config.control_percentile,
                self.config.control_min_cells,
            )
        if key not in self._cutoff:
            raise ControlError(
                f"not scored: the negative control {negative.slide_id!r} of {_group_name(key)} "
                "has not run before it"
            )
        return self._cutoff[key]

    def control_done(self, job: SlideJob, folder: Path) -> None:
        """A negative control's store is committed: its cut-offs score the rest of its group."""
        key = group_key(job)
        self._cutoff[key] = ControlCutoff(
            job.slide_id,
            job.batch,
            self.config.control_percentile,
            self.config.control_min_cells,
            thresholds=stored_thresholds(folder),
        )

    def control_failed(self, job: SlideJob, line: str) -> None:
        """A negative control failed (``line``: its failure line): its group is not scored."""
        key = group_key(job)
        self._problem[key] = (
            f"the negative control {job.slide_id!r} of {_group_name(key)} failed, so its cut-offs "
            f"are unknown ({line})"
        )


def stored_thresholds(folder: Path) -> dict[str, dict[str, Any]]:
    """The threshold records a store was scored with (``provenance.json`` ``thresholds``)."""
    raw = json.loads((Path(folder) / PROVENANCE).read_text(encoding="utf-8"))
    return Provenance.from_dict(raw).threshold_records
