"""Corrections of a slide's results by a person: an append-only audit log replayed over the cells.

What a reviewer changes (a cell's marker call, excluded cells, marker thresholds, nucleus outlines) is
written to the slide's store as it happens::

    corrections.jsonl   the audit log: one JSON object per line, appended, flushed and fsynced per
                        edit (a crash loses at most the edit being written)
    corrections/        per nucleus edit, the level-0 label region before and after (``<id>.npz``)

``cells.parquet`` is never rewritten: it stays what the pipeline measured and called, so the
algorithm's and the reviewer's calls can always be compared, and the log identifies the analysis it
corrects by the sha256 of that file (its first line, ``action = "start"``). The corrected table is
``apply_corrections(raw cells, log)``; :func:`senpath.load_results` applies it by default, so
exports, the report and GeoJSON show the corrected cells (``load_results(folder, corrections=False)``
gives the raw table). The label image is the exception: nucleus edits are written into
``labels.ome.zarr`` (level 0, and the lower levels rebuilt for the region), with the region before the
edit kept in ``corrections/`` so the edit can be undone.

Log entries (every one has ``id``, ``time`` (UTC, ISO 8601), ``user``, ``action``; ``id`` is a
unique string, a number in logs of earlier versions, which are read as they are)::

    start           cells_sha256, provenance_sha256 (the analysis corrected), slide_id, version;
                    a re-scoring (senpath rescore) appends another, with ``rescore``: the latest
                    names the files now corrected, and supersedes earlier set_thresholds
    set_call        marker, cell_ids, previous [{positive, bin}] per cell, new {positive, bin}
    exclude/include cell_ids, previous [excluded] per cell, new (bool)
    set_thresholds  new {marker: OD}, previous {marker: OD}, n_changed (calls that changed)
    edit_nuclei     region [y0, x0, y1, x1] (level-0 label px), cell_ids (all touched), removed, added,
                    modified, remeasured (neighbours whose cytoplasm ring changed), previous {rows},
                    new {rows} (the re-measured cells), labels (npz file)
    review_status   status ("in review" / "signed off"), previous, note (see
                    :mod:`senpath.corrections.status`; an edit of a signed-off slide re-opens it)
    note            text: something a reviewer (or an import) records that changes no cell
    undo            undoes (the id of the entry reverted; undoing an undo redoes)

Entries made by an import (QuPath) carry ``source`` (``"qupath"``) and, with it, the file they came
from.

One session writes a store's corrections at a time: it holds the store's ``store.lock`` (host, pid, user,
time), as a run does; a second writer opens read-only (see :mod:`senpath.corrections.lock`).

A cell's call set by a person wins over its threshold call, also after the thresholds change later
(``<marker>_manual`` says which calls are manual); phenotypes (``senescent``) follow the final calls.

The package, one job a module::

    log             the audit log: reading it, durable appends, which entries are in effect
    replay          the log replayed over the cells: thresholds, calls, summary, provenance;
                    load_results (a store with its corrections)
    review          a marker's live figures and the cells nearest its threshold first
    label_regions   reading and writing a region of the label image
    lock            the writer's lock of a store's corrections
    session         CorrectionSession, the review of one slide (its nucleus edits in nucleus_edits)
    status          the review status and sign-off (not started / in review / signed off)
"""

from __future__ import annotations

from senpath.corrections.label_regions import read_label_region, write_label_region
from senpath.corrections.lock import LOCK, StaleLockWarning, StoreLockedError, lock_owner
from senpath.corrections.log import (
    ACTIONS,
    CORRECTIONS,
    CORRECTIONS_DIR,
    CorrectionError,
    StaleCorrectionsWarning,
    active_entries,
    entry_key,
    entry_states,
    log_matches,
    n_corrections,
    read_log,
    reanchor,
    relinked_slide_path,
    set_aside,
)
from senpath.corrections.replay import (
    apply_corrections,
    apply_to_results,
    corrected_summary,
    corrected_thresholds,
    load_results,
    measurement_columns,
    scored_columns,
)
from senpath.corrections.review import marker_stats, review_queue
from senpath.corrections.session import CorrectionSession
from senpath.corrections.status import REVIEW_STATUSES, ReviewStatus, review_status

__all__ = [
    "ACTIONS",
    "CORRECTIONS",
    "CORRECTIONS_DIR",
    "CorrectionError",
    "CorrectionSession",
    "REVIEW_STATUSES",
    "ReviewStatus",
    "LOCK",
    "StaleLockWarning",
    "StoreLockedError",
    "StaleCorrectionsWarning",
    "active_entries",
    "apply_corrections",
    "apply_to_results",
    "corrected_summary",
    "corrected_thresholds",
    "entry_key",
    "entry_states",
    "lock_owner",
    "load_results",
    "log_matches",
    "marker_stats",
    "n_corrections",
    "measurement_columns",
    "read_label_region",
    "read_log",
    "relinked_slide_path",
    "review_queue",
    "review_status",
    "scored_columns",
    "reanchor",
    "set_aside",
    "write_label_region",
]
