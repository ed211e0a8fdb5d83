"""Replaying the corrections log over the pipeline's cells: thresholds, re-scoring, summary.

The corrected table is ``apply_corrections(raw cells, log)``; :func:`load_results` gives a store with
its corrected cells, summary and provenance (``senpath.load_results``). The calls, phenotypes and
figures are those of :mod:`senpath.score`, the one place the scoring rules live.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senpath.config import Assay
from senpath.corrections.log import (
    CELL_ACTIONS,
    StaleCorrectionsWarning,
    active_entries,
    log_matches,
    n_corrections,
    read_log,
    relinked_slide_path,
)
from senpath.corrections.status import review_status
from senpath.results import CORRECTIONS, SlideResults, read_results
from senpath.score import add_phenotypes, marker_value_column, score_cells, summarize_markers

# ------------------------------------------------------------------------------------ thresholds


def corrected_thresholds(
    entries: Sequence[Mapping[str, Any]], base: Mapping[str, float]
) -> dict[str, float]:
    """The thresholds in effect after the log's ``set_thresholds`` entries.

    Those logged before the latest ``start`` entry of a re-scoring (:func:`senpath.corrections.
    log.reanchor`) are superseded: the re-scoring set every threshold anew (``base``)."""
    out = {k: float(v) for k, v in base.items()}
    starts = [i for i, e in enumerate(entries) if e["action"] == "start"]
    superseded = {id(e) for e in entries[: starts[-1]]} if starts else set()
    for e in active_entries(entries):
        if e["action"] == "set_thresholds" and id(e) not in superseded:
            out.update({str(k): float(v) for k, v in e["new"].items()})
    return out


# ------------------------------------------------------------------------------ replaying the log

_CORRECTION_COLUMNS = ("excluded",)


def scored_columns(assay: Assay) -> list[str]:
    """Columns :func:`senpath.score.score_cells` and the corrections derive (not measurements)."""
    cols = [f"{r.name}_{s}" for r in assay.markers for s in ("od", "positive", "bin", "manual")]
    return cols + list(assay.phenotypes) + ["enlarged_nucleus", *_CORRECTION_COLUMNS]


def measurement_columns(cells: pd.DataFrame, assay: Assay) -> list[str]:
    """The measured (not derived) columns of a per-cell table."""
    derived = set(scored_columns(assay))
    return [c for c in cells.columns if c not in derived]


def _rescore(cells: pd.DataFrame, assay: Assay, thresholds: Mapping[str, float]) -> None:
    """Recompute calls, bins, phenotypes and the enlarged-nucleus flag in place."""
    needed = sorted({marker_value_column(r) for r in assay.markers} | {"nucleus_area_um2"})
    scored = score_cells(cells[needed], assay, thresholds=dict(thresholds))
    for col in scored.columns:
        if col not in needed:
            cells[col] = scored[col].to_numpy()


def _rows_frame(rows: Sequence[Mapping[str, Any]], like: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    for col in frame.columns:
        if col in like.columns:
            try:
                frame[col] = frame[col].astype(like[col].dtype)
            except (TypeError, ValueError):
                frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def apply_corrections(
    cells: pd.DataFrame,
    entries: Sequence[Mapping[str, Any]],
    *,
    assay: Assay,
    thresholds: Mapping[str, float],
) -> pd.DataFrame:
    """The corrected per-cell table: the raw table with the log's edits in effect applied.

    Parameters
    ----------
    cells : the raw per-cell table (``cells.parquet``).
    entries : the log (:func:`read_log`); undone entries are skipped.
    assay : the slide's assay (``res.provenance.assay.assay()``).
    thresholds : ``{marker: OD}`` the raw table was scored with (``res.provenance.thresholds``).

    Returns
    -------
    A new table, sorted by ``cell_id``: nucleus edits replace, add and remove rows; calls are
    re-scored at the thresholds in effect; manual calls override them (``<marker>_manual``);
    phenotypes follow the final calls; ``excluded`` (bool) flags excluded cells.
    """
    active = active_entries(entries)
    final = corrected_thresholds(entries, thresholds)
    out = cells.copy()
    edits = [e for e in active if e["action"] == "edit_nuclei"]
    for e in edits:
        gone = set(e["removed"]) | set(e["modified"]) | set(e.get("remeasured", []))
        out = out[~out["cell_id"].isin(gone)]
        if e["new"]["rows"]:
            out = pd.concat([out, _rows_frame(e["new"]["rows"], out)], ignore_index=True)
    if edits:
        out = out.sort_values("cell_id", kind="stable").reset_index(drop=True)
    if edits or any(abs(final[m] - float(thresholds.get(m, math.nan))) > 0 for m in final):
        _rescore(out, assay, final)
    ids = out["cell_id"].to_numpy()
    calls: dict[str, dict[int, tuple[bool, int]]] = {r.name: {} for r in assay.markers}
    excluded: set[int] = set()
    for e in active:
        if e["action"] == "set_call":
            new = (bool(e["new"]["positive"]), int(e["new"]["bin"]))
            calls[e["marker"]].update({int(c): new for c in e["cell_ids"]})
        elif e["action"] == "exclude":
            excluded.update(int(c) for c in e["cell_ids"])
        elif e["action"] == "include":
            excluded.difference_update(int(c) for c in e["cell_ids"])
    for rule in assay.markers:
        manual = np.zeros(len(out), dtype=bool)
        chosen = calls[rule.name]
        if chosen:
            keys = np.fromiter(chosen, dtype=np.int64, count=len(chosen))
            pos = np.array([chosen[k][0] for k in keys], dtype=bool)
            bins = np.array([chosen[k][1] for k in keys], dtype=np.int8)
            order = np.argsort(keys)
            keys, pos, bins = keys[order], pos[order], bins[order]
            where = np.searchsorted(keys, ids)
            hit = (where < len(keys)) & (keys[np.minimum(where, len(keys) - 1)] == ids)
            manual = hit
            p = out[f"{rule.name}_positive"].to_numpy(dtype=bool).copy()
            b = out[f"{rule.name}_bin"].to_numpy().copy()
            p[hit], b[hit] = pos[where[hit]], bins[where[hit]]
            out[f"{rule.name}_positive"], out[f"{rule.name}_bin"] = p, b.astype(np.int8)
        out[f"{rule.name}_manual"] = manual
    if any(calls.values()):
        add_phenotypes(out, assay)
    out["excluded"] = np.isin(ids, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
    return out


# --------------------------------------------------------------------------- summary, provenance


def _derived_keys(assay: Assay) -> list[str]:
    keys = ["n_cells", "markers", "median_nucleus_area_um2", "n_enlarged_nucleus"]
    for p in assay.phenotypes:
        keys += [f"{p}_index", f"{p}_index_ci95", f"n_{p}"]
    return keys


def corrected_summary(
    summary: Mapping[str, Any],
    cells: pd.DataFrame,
    entries: Sequence[Mapping[str, Any]],
    *,
    assay: Assay,
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """The slide summary recomputed from the corrected cells.

    The pipeline's figures are kept under ``uncorrected`` and the log is described under
    ``corrections`` (entries, edits in effect, last change).
    """
    base = {k: v for k, v in summary.items() if k not in ("uncorrected", "corrections")}
    uncorrected = dict(
        summary.get("uncorrected") or {k: base[k] for k in _derived_keys(assay) if k in base}
    )
    final = corrected_thresholds(entries, thresholds)
    out = dict(base)
    out.update(summarize_markers(cells, assay, thresholds=final))
    out["assay"] = base.get("assay", assay.name)
    for m, entry in out["markers"].items():
        before = uncorrected.get("markers", {}).get(m, {}).get("threshold")
        if before is None:
            before = {"threshold_od": float(thresholds[m]), "source": "rule"}
        if abs(final[m] - float(thresholds[m])) > 0:
            entry["threshold"] = {
                "threshold_od": final[m],
                "source": "corrected",
                "previous": before,
            }
        else:
            entry["threshold"] = before
    active = active_entries(entries)
    out["uncorrected"] = uncorrected
    out["corrections"] = {
        "log": CORRECTIONS,
        "n_entries": sum(e["action"] != "start" for e in entries),
        "n_in_effect": len(active),
        "by_action": {a: sum(e["action"] == a for e in active) for a in CELL_ACTIONS},
        "n_corrections": n_corrections(entries),
        "n_excluded": int(cells["excluded"].sum()) if "excluded" in cells.columns else 0,
        "last_time": entries[-1]["time"] if entries else None,
    }
    out["review"] = review_status(entries).to_dict()
    return out


def apply_to_results(res: SlideResults) -> SlideResults:
    """A store read as written (:func:`senpath.results.read_results`) with its corrections applied
    (cells, summary, provenance).

    A log made for an earlier analysis of the slide (``senpath run --force`` since) is not applied:
    a :class:`StaleCorrectionsWarning` says so and where it is.
    """
    entries = read_log(res.folder)
    if not entries:
        return res
    if not log_matches(entries, res.manifest):
        warnings.warn(
            f"{res.folder / CORRECTIONS} was made for an earlier analysis of {res.slide_id} "
            "(cells.parquet changed since): not applied. Review the slide again; opening it for "
            "review moves the old log aside.",
            StaleCorrectionsWarning,
            stacklevel=3,
        )
        return res
    assay = res.provenance.assay.assay()
    base = res.provenance.thresholds
    cells = apply_corrections(res.cells, entries, assay=assay, thresholds=base)
    summary = corrected_summary(res.summary, cells, entries, assay=assay, thresholds=base)
    final = corrected_thresholds(entries, base)
    n = sum(e["action"] != "start" for e in entries)
    provenance = res.provenance.with_thresholds(
        final,
        corrections={"log": CORRECTIONS, "n_entries": n, "n_corrections": n_corrections(entries)},
    )
    moved = relinked_slide_path(entries)
    if moved is not None:  # the slide was moved since the analysis: where it is now
        slide = {**provenance.slide, "path": moved, "analysed_path": provenance.slide_path}
        provenance = dataclasses.replace(provenance, slide=slide)
    return SlideResults(
        res.folder, cells, summary, provenance, res.manifest, corrections=list(entries)
    )


def load_results(folder: str | Path, *, corrections: bool = True) -> SlideResults:
    """Load one slide's committed results store (``senpath.load_results``).

    Parameters
    ----------
    folder : the slide's store (``results/<slide_id>``).
    corrections : apply the reviewer's corrections (``corrections.jsonl``, see
        :mod:`senpath.corrections`): corrected calls, thresholds and nuclei, and an ``excluded``
        column. ``False`` gives the table and summary as the pipeline wrote them.

    Raises
    ------
    FileNotFoundError
        When ``folder`` has no manifest (never run, or interrupted before it was committed).
    """
    res = read_results(folder)
    return apply_to_results(res) if corrections else res
