"""The corrections audit log (``corrections.jsonl``): reading, durable appends, undo state.

One JSON object per line, appended, flushed and fsynced per edit; entries are never rewritten or
deleted (an undo is an entry of its own). The entry kinds are listed in :mod:`senpath.corrections`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from senpath.results import CELLS, CORRECTIONS, PROVENANCE, atomic_write_bytes

#: Folder of the label regions of nucleus edits (before/after), next to the log.
CORRECTIONS_DIR = "corrections"
ACTIONS = (
    "start",
    "set_call",
    "exclude",
    "include",
    "set_thresholds",
    "edit_nuclei",
    "relink_slide",
    "review_status",
    "note",
    "undo",
)
#: The actions that change the cells or their calls (what makes a slide "corrected").
CELL_ACTIONS = ("set_call", "exclude", "include", "set_thresholds", "edit_nuclei")
#: Entries that record something about the review, not an edit: never undone.
RECORD_ACTIONS = ("start", "relink_slide", "review_status", "note")


class CorrectionError(ValueError):
    """A correction that cannot be made; the message says why and what to do instead."""


class StaleCorrectionsWarning(UserWarning):
    """A corrections log made for an earlier analysis of the slide (not applied)."""


# ---------------------------------------------------------------------------------------- the log


def _now() -> str:
    return (
        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return None if math.isnan(float(obj)) else float(obj)
    return obj


def read_log(folder: str | Path) -> list[dict[str, Any]]:
    """The entries of a store's corrections log, in order (``[]`` when there is none).

    A last line cut short by a crash (not valid JSON) is left out with a warning: that edit was never
    committed. A damaged line elsewhere raises :class:`CorrectionError`.
    """
    path = Path(folder) / CORRECTIONS
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            if n == len(lines):
                warnings.warn(
                    f"{path}: its last line is incomplete (interrupted while saving); that edit "
                    "is lost, the others are kept",
                    stacklevel=2,
                )
                continue
            raise CorrectionError(
                f"{path}, line {n}: not valid JSON; the audit log is damaged (restore it from a "
                "backup, or move it aside to drop the corrections)"
            ) from None
    return entries


def _append(folder: Path, entry: Mapping[str, Any]) -> None:
    """Append one entry to the log and force it to disk before returning."""
    path = folder / CORRECTIONS
    new = not path.exists()
    line = json.dumps(_clean(dict(entry)), sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    if new and hasattr(os, "O_DIRECTORY"):  # make the new file's name durable too
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _repair_torn_tail(folder: Path) -> None:
    """Drop a last line cut short by a crash, so later appends start on a line of their own."""
    path = folder / CORRECTIONS
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    head, _, tail = data.rpartition(b"\n")
    try:
        json.loads(tail)
        atomic_write_bytes(path, data + b"\n")
    except ValueError:
        atomic_write_bytes(path, head + b"\n" if head else b"")


def entry_key(entry: Mapping[str, Any]) -> str:
    """An entry's id as a key: new entries get a unique string (:func:`new_entry_id`); older logs
    numbered their entries 0, 1, 2, ... (read as ``"0"``, ``"1"``, ...)."""
    return str(entry["id"])


def new_entry_id() -> str:
    """A fresh entry id, unique whoever writes (two sessions never make the same one)."""
    return uuid.uuid4().hex


def entry_states(entries: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Whether each entry (by :func:`entry_key`) is in effect: undone entries are not; undoing an
    undo redoes."""
    by_id = {entry_key(e): e for e in entries}
    active: dict[str, bool] = {}

    def set_state(eid: str, state: bool) -> None:
        active[eid] = state
        e = by_id.get(eid)
        if e is not None and e["action"] == "undo":
            set_state(str(e["undoes"]), not state)

    for e in entries:
        eid = entry_key(e)
        if e["action"] == "undo":
            set_state(eid, True)
        else:
            active[eid] = True
    return active


def active_entries(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The edits in effect, in log order (without ``start`` and ``undo`` entries)."""
    state = entry_states(entries)
    return [e for e in entries if e["action"] not in ("start", "undo") and state[entry_key(e)]]


def n_corrections(entries: Sequence[Mapping[str, Any]]) -> int:
    """How many edits of the cells or their calls are in effect (0: the pipeline's results)."""
    return sum(e["action"] in CELL_ACTIONS for e in active_entries(entries))


def relinked_slide_path(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """Where the slide is now, when it was moved since the analysis (the latest ``relink_slide``)."""
    paths = [str(e["slide_path"]) for e in entries if e["action"] == "relink_slide"]
    return paths[-1] if paths else None


def log_matches(entries: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any]) -> bool:
    """Whether a log was made for the analysis now in the store.

    The log's first entry records the sha256 of ``cells.parquet`` and ``provenance.json``, which
    corrections never rewrite and every run writes anew (provenance holds the run's timings), so a
    re-analysis of the slide, even one giving the same cells, is told apart. A re-scoring of the
    same cells (``senpath rescore``) appends a new ``start`` entry naming the files it wrote
    (:func:`reanchor`): the latest ``start`` is the one compared.
    """
    if not entries:
        return True
    starts = [e for e in entries if e.get("action") == "start"]
    head, files = (starts[-1] if starts else entries[0]), manifest.get("files", {})
    return (
        head.get("action") == "start"
        and head.get("cells_sha256") == files.get(CELLS)
        and head.get("provenance_sha256") == files.get(PROVENANCE)
    )


def reanchor(
    folder: str | Path,
    *,
    slide_id: str,
    cells_sha256: str,
    provenance_sha256: str,
    user: str,
    note: Mapping[str, Any],
) -> dict[str, Any]:
    """Append a ``start`` entry naming a re-scored store's new ``cells.parquet`` and
    ``provenance.json`` (same cells, same ids: the log's calls and exclusions still apply; its
    earlier threshold changes are superseded by the re-scoring, see
    :func:`senpath.corrections.replay.corrected_thresholds`). ``note`` says what changed."""
    folder = Path(folder)
    _repair_torn_tail(folder)
    entry = _clean(
        {
            "id": new_entry_id(), "time": _now(), "user": user, "action": "start",
            "slide_id": slide_id, "cells_sha256": cells_sha256,
            "provenance_sha256": provenance_sha256, "rescore": dict(note),
        }
    )  # fmt: skip
    _append(folder, entry)
    return dict(entry)


def set_aside(folder: str | Path) -> Path | None:
    """Rename a store's corrections (log and label regions) with a UTC timestamp; returns the new
    log path, or ``None`` when there was none.

    Call it before re-analysing a slide (``senpath run --force``): the new cells have new ids, so the
    old corrections cannot be replayed on them, but a person's work is never deleted.
    """
    folder = Path(folder)
    log = folder / CORRECTIONS
    if not log.exists():
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    kept = folder / f"corrections.{stamp}.jsonl"
    os.replace(log, kept)
    regions = folder / CORRECTIONS_DIR
    if regions.is_dir():
        os.replace(regions, folder / f"{CORRECTIONS_DIR}.{stamp}")
    return kept
