"""Corrections of a slide's results by a person: an append-only audit log replayed over the cells.

What a reviewer changes (a cell's marker call, excluded cells, marker thresholds, nucleus outlines) is
written to the slide's store as it happens::

    corrections.jsonl   the audit log: one JSON object per line, appended, flushed and fsynced per
                        edit (a crash loses at most the edit being written)
    corrections/        per nucleus edit, the level-0 label region before and after (``<id>.npz``)

``cells.parquet`` is never rewritten: it stays what the pipeline measured and called, so the
algorithm's and the reviewer's calls can always be compared, and the log identifies the analysis it
corrects by the sha256 of that file (its first line, ``action = "start"``). The corrected table is
``apply_corrections(raw cells, log)``; :func:`senpath.results.load_results` applies it by default, so
exports, the report and GeoJSON show the corrected cells (``load_results(folder, corrections=False)``
gives the raw table). The label image is the exception: nucleus edits are written into
``labels.ome.zarr`` (level 0, and the lower levels rebuilt for the region), with the region before the
edit kept in ``corrections/`` so the edit can be undone.

Log entries (every one has ``id``, ``time`` (UTC, ISO 8601), ``user``, ``action``)::

    start           cells_sha256, provenance_sha256 (the analysis corrected), slide_id, version
    set_call        marker, cell_ids, previous [{positive, bin}] per cell, new {positive, bin}
    exclude/include cell_ids, previous [excluded] per cell, new (bool)
    set_thresholds  new {marker: OD}, previous {marker: OD}, n_changed (calls that changed)
    edit_nuclei     region [y0, x0, y1, x1] (level-0 label px), cell_ids (all touched), removed, added,
                    modified, previous {rows}, new {rows} (the re-measured cells), labels (npz file)
    undo            undoes (the id of the entry reverted; undoing an undo redoes)

A cell's call set by a person wins over its threshold call, also after the thresholds change later
(``<marker>_manual`` says which calls are manual); phenotypes (``senescent``) follow the final calls.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.config import Assay, MarkerRule, get_assay, stain_profile_toml
from senpath.results import (
    CELLS,
    CORRECTIONS,
    LABELS,
    PROVENANCE,
    SUMMARY,
    SlideResults,
    atomic_write_bytes,
    atomic_write_json,
    write_manifest,
)
from senpath.score import intensity_bins, marker_value_column, score_cells, summarize_markers

#: Folder of the label regions of nucleus edits (before/after), next to the log.
CORRECTIONS_DIR = "corrections"
ACTIONS = ("start", "set_call", "exclude", "include", "set_thresholds", "edit_nuclei", "undo")


class CorrectionError(ValueError):
    """A correction that cannot be made; the message says why and what to do instead."""


class StaleCorrectionsWarning(UserWarning):
    """A corrections log made for an earlier analysis of the slide (not applied)."""


# ---------------------------------------------------------------------------------------- the log


def _now() -> str:
    return (
        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def _default_user() -> str:
    try:
        return os.environ.get("SENPATH_USER") or getpass.getuser()
    except Exception:  # no login name (containers): still log something
        return "unknown"


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


def entry_states(entries: Sequence[Mapping[str, Any]]) -> dict[int, bool]:
    """Whether each entry (by id) is in effect: undone entries are not; undoing an undo redoes."""
    by_id = {int(e["id"]): e for e in entries}
    active: dict[int, bool] = {}

    def set_state(eid: int, state: bool) -> None:
        active[eid] = state
        e = by_id.get(eid)
        if e is not None and e["action"] == "undo":
            set_state(int(e["undoes"]), not state)

    for e in entries:
        eid = int(e["id"])
        if e["action"] == "undo":
            set_state(eid, True)
        else:
            active[eid] = True
    return active


def active_entries(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The edits in effect, in log order (without ``start`` and ``undo`` entries)."""
    state = entry_states(entries)
    return [e for e in entries if e["action"] not in ("start", "undo") and state[int(e["id"])]]


def log_matches(entries: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any]) -> bool:
    """Whether a log was made for the analysis now in the store.

    The log's first entry records the sha256 of ``cells.parquet`` and ``provenance.json``, which
    corrections never rewrite and every run writes anew (provenance holds the run's timings), so a
    re-analysis of the slide, even one giving the same cells, is told apart.
    """
    if not entries:
        return True
    head, files = entries[0], manifest.get("files", {})
    return (
        head.get("action") == "start"
        and head.get("cells_sha256") == files.get(CELLS)
        and head.get("provenance_sha256") == files.get(PROVENANCE)
    )


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


# ------------------------------------------------------------------------- assay and thresholds


def assay_from_provenance(provenance: Mapping[str, Any]) -> Assay:
    """The assay a store was scored with, rebuilt from its ``provenance.json``.

    Marker rules keep their own (rule) thresholds; :func:`store_thresholds` gives the ones used.
    """
    info = provenance["assay"]
    markers = []
    for m in info.get("markers", []):
        markers.append(
            MarkerRule(
                name=str(m["name"]),
                stain=str(m["stain"]),
                compartment=str(m["compartment"]),
                threshold_od=float(m.get("rule_threshold_od", m["threshold_od"])),
                bins_od=tuple(float(b) for b in m["bins_od"]),  # type: ignore[arg-type]
                statistic=str(m.get("statistic", "mean")),
            )
        )
    stains = tuple(str(s) for s in info["stains"])
    try:  # a shipped preset knows its nuclear stains and description
        preset = get_assay(str(info["name"]))
        nuclear, description = preset.nuclear_stains, preset.description
    except ValueError:
        nuclear, description = stains[:1], ""
    return Assay(
        name=str(info["name"]),
        description=description,
        stains=stains,
        nuclear_stains=nuclear,
        markers=tuple(markers),
        phenotypes={k: tuple(v) for k, v in info.get("phenotypes", {}).items()},
        stain_vectors={
            s: tuple(float(x) for x in v)  # type: ignore[misc]
            for s, v in zip(stains, info.get("stain_vectors", []), strict=False)
        },
    )


def store_thresholds(provenance: Mapping[str, Any]) -> dict[str, float]:
    """``{marker: OD}`` thresholds the pipeline scored the slide with."""
    from senpath.export import marker_thresholds

    return marker_thresholds(provenance)


def profile_toml(
    provenance: Mapping[str, Any], thresholds: Mapping[str, float], *, name: str | None = None
) -> str:
    """A lab stain profile (TOML for ``senpath run --config``): the slide's assay with the stain
    vectors it was measured with and the given thresholds (see :func:`stain_profile_toml`)."""
    return stain_profile_toml(assay_from_provenance(provenance), thresholds=thresholds, name=name)


def corrected_thresholds(
    entries: Sequence[Mapping[str, Any]], base: Mapping[str, float]
) -> dict[str, float]:
    """The thresholds in effect after the log's ``set_thresholds`` entries."""
    out = {k: float(v) for k, v in base.items()}
    for e in active_entries(entries):
        if e["action"] == "set_thresholds":
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


def _phenotypes(cells: pd.DataFrame, assay: Assay) -> None:
    for pheno, terms in assay.phenotypes.items():
        flag = np.ones(len(cells), dtype=bool)
        for term in terms:
            pos = cells[f"{term[:-1]}_positive"].to_numpy(dtype=bool)
            flag &= pos if term[-1] == "+" else ~pos
        cells[pheno] = flag


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
    assay : the slide's assay (:func:`assay_from_provenance`).
    thresholds : ``{marker: OD}`` the raw table was scored with (:func:`store_thresholds`).

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
        gone = set(e["removed"]) | set(e["modified"])
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
        _phenotypes(out, assay)
    out["excluded"] = np.isin(ids, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
    return out


def manual_bin(rule: MarkerRule, od: float, positive: bool) -> int:
    """The intensity bin of a cell a person calls ``positive``: its OD bin, at least 1+ (0 if negative)."""
    if not positive:
        return 0
    return max(1, int(intensity_bins(np.array([od]), rule.bins_od)[0]))


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
        "by_action": {a: sum(e["action"] == a for e in active) for a in ACTIONS[1:-1]},
        "n_excluded": int(cells["excluded"].sum()) if "excluded" in cells.columns else 0,
        "last_time": entries[-1]["time"] if entries else None,
    }
    return out


def uncorrected_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's own summary from a summary rewritten by :func:`corrected_summary`."""
    out = {k: v for k, v in summary.items() if k not in ("uncorrected", "corrections")}
    out.update(summary.get("uncorrected") or {})
    return out


def corrected_provenance(
    provenance: Mapping[str, Any], thresholds: Mapping[str, float], n_entries: int
) -> dict[str, Any]:
    """Provenance as loaded with corrections: markers' ``threshold_od`` are the ones in effect (the
    pipeline's kept as ``pipeline_threshold_od``) and ``corrections`` names the log."""
    out = json.loads(json.dumps(provenance))
    for m in out["assay"].get("markers", []):
        if m["name"] in thresholds and float(thresholds[m["name"]]) != float(m["threshold_od"]):
            m["pipeline_threshold_od"] = m["threshold_od"]
            m["threshold_od"] = float(thresholds[m["name"]])
    out["corrections"] = {"log": CORRECTIONS, "n_entries": n_entries}
    return out


def apply_to_results(res: SlideResults) -> SlideResults:
    """A loaded raw store with its corrections applied (cells, summary, provenance).

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
    assay = assay_from_provenance(res.provenance)
    base = store_thresholds(res.provenance)
    cells = apply_corrections(res.cells, entries, assay=assay, thresholds=base)
    summary = corrected_summary(res.summary, cells, entries, assay=assay, thresholds=base)
    final = corrected_thresholds(entries, base)
    n = sum(e["action"] != "start" for e in entries)
    provenance = corrected_provenance(res.provenance, final, n)
    return SlideResults(
        res.folder, cells, summary, provenance, res.manifest, corrections=list(entries)
    )


# ------------------------------------------------------------------------------------ statistics


def marker_stats(
    cells: pd.DataFrame, assay: Assay, marker: str, *, threshold_od: float | None = None
) -> dict[str, Any]:
    """Live figures of one marker: n cells, n positive, % positive and H-score (excluded left out).

    With ``threshold_od``, the figures the slide would have at that threshold (manual calls kept);
    without, the current calls.
    """
    from senpath.score import h_score

    rule = assay.marker(marker)
    if "excluded" in cells.columns:
        cells = cells[~cells["excluded"].to_numpy(dtype=bool)]
    pos = cells[f"{marker}_positive"].to_numpy(dtype=bool)
    bins = cells[f"{marker}_bin"].to_numpy()
    if threshold_od is not None:
        od = np.nan_to_num(cells[f"{marker}_od"].to_numpy(dtype=np.float64), nan=0.0)
        auto_pos = od >= float(threshold_od)
        auto_bin = np.where(auto_pos, np.maximum(1, intensity_bins(od, rule.bins_od)), 0)
        manual = (
            cells[f"{marker}_manual"].to_numpy(dtype=bool)
            if f"{marker}_manual" in cells.columns
            else np.zeros(len(cells), dtype=bool)
        )
        pos = np.where(manual, pos, auto_pos)
        bins = np.where(manual, bins, auto_bin)
    n, k = len(pos), int(pos.sum())
    return {
        "marker": marker,
        "n_cells": n,
        "n_positive": k,
        "pct_positive": 100.0 * k / n if n else math.nan,
        "h_score": h_score(bins),
    }


def review_queue(
    cells: pd.DataFrame,
    marker: str,
    *,
    threshold_od: float,
    band_od: float | None = None,
    limit: int | None = None,
    include_manual: bool = False,
) -> NDArray[np.int64]:
    """Cell ids closest to a marker's threshold first: the calls most worth a second look.

    Parameters
    ----------
    cells : the corrected per-cell table.
    marker : marker name.
    threshold_od : the threshold in OD.
    band_od : only cells within this OD of the threshold (default: all).
    limit : at most this many cells.
    include_manual : also queue cells whose call a person already set (default: skip them).
    """
    sel = np.ones(len(cells), dtype=bool)
    if "excluded" in cells.columns:
        sel &= ~cells["excluded"].to_numpy(dtype=bool)
    if not include_manual and f"{marker}_manual" in cells.columns:
        sel &= ~cells[f"{marker}_manual"].to_numpy(dtype=bool)
    dist = np.abs(cells[f"{marker}_od"].to_numpy(dtype=np.float64) - float(threshold_od))
    sel &= np.isfinite(dist)
    if band_od is not None:
        sel &= dist <= float(band_od)
    ids = cells["cell_id"].to_numpy(dtype=np.int64)[sel]
    order = np.argsort(dist[sel], kind="stable")
    return ids[order][:limit] if limit is not None else ids[order]


# ------------------------------------------------------------------------- label image regions


def _labels_group(folder: Path, mode: Literal["r", "r+"] = "r") -> Any:
    import zarr

    return zarr.open_group(str(folder / LABELS), mode=mode)


def _n_levels(group: Any) -> int:
    return len(group.attrs["multiscales"][0]["datasets"])


def write_label_region(folder: str | Path, origin: tuple[int, int], block: NDArray[Any]) -> None:
    """Write a level-0 label region and rebuild the lower levels over it.

    Level ``k`` is level ``k - 1`` taken every 2nd pixel (see :mod:`senpath.labels`), so only the
    level-``k`` pixels that sample the region change; a level none of whose pixels sample it (and every
    level below) is left as it is.

    Parameters
    ----------
    folder : the slide's store.
    origin : (y0, x0) of the region in level-0 label pixels.
    block : (H, W) int label ids.
    """
    group = _labels_group(Path(folder), "r+")
    y0, x0 = int(origin[0]), int(origin[1])
    y1, x1 = y0 + block.shape[0], x0 + block.shape[1]
    prev = group["0"]
    prev[y0:y1, x0:x1] = np.asarray(block, dtype=np.int32)
    for k in range(1, _n_levels(group)):
        level = group[str(k)]
        ny0, nx0 = -(-y0 // 2), -(-x0 // 2)
        ny1, nx1 = min(-(-y1 // 2), level.shape[0]), min(-(-x1 // 2), level.shape[1])
        if ny1 <= ny0 or nx1 <= nx0:
            break
        level[ny0:ny1, nx0:nx1] = np.asarray(prev[2 * ny0 : 2 * ny1 : 2, 2 * nx0 : 2 * nx1 : 2])
        prev, (y0, x0, y1, x1) = level, (ny0, nx0, ny1, nx1)


def read_label_region(folder: str | Path, y0: int, x0: int, y1: int, x1: int) -> NDArray[np.int32]:
    """Level-0 labels ``[y0:y1, x0:x1]`` (clipped to the image) as an editable int32 array."""
    level0 = _labels_group(Path(folder))["0"]
    y0, x0 = max(0, int(y0)), max(0, int(x0))
    y1, x1 = min(level0.shape[0], int(y1)), min(level0.shape[1], int(x1))
    return np.array(level0[y0:y1, x0:x1], dtype=np.int32)


def _overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# --------------------------------------------------------------------------------- the session


class CorrectionSession:
    """Review and correct one slide's results store.

    Every edit is appended to ``corrections.jsonl`` (fsynced) before the method returns, so what a
    person did survives a crash; :meth:`save` rewrites the derived files (``summary.json``, the QC
    histograms, the manifest) so the store stays complete and consistent. ``cells`` is the corrected
    table, kept in memory and updated per edit.

    Parameters
    ----------
    folder : the slide's committed store (``results/<slide_id>``).
    user : name written into the log (default: ``$SENPATH_USER`` or the login name).
    slide_path : the slide file, when it is no longer where it was analysed (nucleus edits re-measure
        cells on its pixels).

    Notes
    -----
    A log made for an earlier analysis of the slide is moved aside (:func:`set_aside`) when the
    session opens; ``moved_aside`` then holds its new path.
    """

    def __init__(
        self, folder: str | Path, *, user: str | None = None, slide_path: str | Path | None = None
    ) -> None:
        from senpath.labels import label_mpp
        from senpath.results import load_results

        self.folder = Path(folder)
        self.user = user or _default_user()
        self.raw = load_results(self.folder, corrections=False)
        self.assay = assay_from_provenance(self.raw.provenance)
        self.base_thresholds = store_thresholds(self.raw.provenance)
        self.label_mpp = float(label_mpp(self.folder))
        self._slide_path = Path(slide_path) if slide_path else None
        self._slide: Any = None
        self.moved_aside: Path | None = None
        _repair_torn_tail(self.folder)
        self.entries = read_log(self.folder)
        if self.entries and not log_matches(self.entries, self.raw.manifest):
            self.moved_aside = set_aside(self.folder)
            warnings.warn(
                f"{self.folder / CORRECTIONS} was made for an earlier analysis of this slide; "
                f"moved aside to {self.moved_aside} (kept, not applied)",
                StaleCorrectionsWarning,
                stacklevel=2,
            )
            self.entries = []
        self._repair_labels()
        self._recompute()

    # ----------------------------------------------------------------------------- state

    @property
    def slide_id(self) -> str:
        return self.raw.slide_id

    @property
    def thresholds(self) -> dict[str, float]:
        """``{marker: OD}`` in effect."""
        return corrected_thresholds(self.entries, self.base_thresholds)

    @property
    def markers(self) -> list[str]:
        return [r.name for r in self.assay.markers]

    @property
    def label_shape(self) -> tuple[int, int]:
        """(Y, X) of the level-0 label image (px at :attr:`label_mpp` µm/px)."""
        shape = _labels_group(self.folder)["0"].shape
        return (int(shape[0]), int(shape[1]))

    def _recompute(self) -> None:
        self.cells = apply_corrections(
            self.raw.cells, self.entries, assay=self.assay, thresholds=self.base_thresholds
        )
        self._index = pd.Index(self.cells["cell_id"].to_numpy())

    def _rows(self, cell_ids: Sequence[int]) -> NDArray[np.intp]:
        rows = self._index.get_indexer(np.asarray(cell_ids, dtype=np.int64))
        if (rows < 0).any():
            missing = np.asarray(cell_ids)[rows < 0][:5].tolist()
            raise CorrectionError(f"no cell with cell_id {missing} in {self.slide_id}")
        return rows

    def cell(self, cell_id: int) -> pd.Series:
        """The corrected row of one cell."""
        return self.cells.iloc[int(self._rows([cell_id])[0])]

    def cell_at(self, x_um: float, y_um: float) -> int:
        """The ``cell_id`` of the nucleus at a slide position in µm (0: none there)."""
        i, j = int(y_um // self.label_mpp), int(x_um // self.label_mpp)
        h, w = self.label_shape
        if not (0 <= i < h and 0 <= j < w):
            return 0
        return int(_labels_group(self.folder)["0"][i, j])

    def _log(self, entry: dict[str, Any]) -> dict[str, Any]:
        if not self.entries:
            head = {
                "id": 0,
                "time": _now(),
                "user": self.user,
                "action": "start",
                "slide_id": self.slide_id,
                "cells_sha256": self.raw.manifest.get("files", {}).get(CELLS),
                "provenance_sha256": self.raw.manifest.get("files", {}).get(PROVENANCE),
                "senpath_version": self.raw.provenance.get("senpath_version"),
            }
            _append(self.folder, head)
            self.entries.append(head)
        full = {
            "id": int(self.entries[-1]["id"]) + 1,
            "time": _now(),
            "user": self.user,
            **entry,
        }
        full = _clean(full)
        _append(self.folder, full)
        self.entries.append(full)
        return full

    # ----------------------------------------------------------------------------- edits

    def set_call(
        self,
        cell_ids: Iterable[int],
        marker: str,
        *,
        positive: bool,
        bin: int | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Set the call of cells for one marker (a person's call: kept when thresholds change).

        ``bin`` is the intensity bin 0-3 (default: the cell's OD bin, at least 1+ when positive, 0
        when negative). Returns the log entry.
        """
        rule = self.assay.marker(marker)
        ids = [int(c) for c in cell_ids]
        rows = self._rows(ids)
        if bin is not None and not (0 <= int(bin) <= 3) or (bin == 0 and positive):
            raise CorrectionError(f"bin={bin}: give 1-3 for a positive cell, 0 for a negative one")
        pos_col, bin_col = f"{marker}_positive", f"{marker}_bin"
        previous = [
            {"positive": bool(self.cells[pos_col].iat[r]), "bin": int(self.cells[bin_col].iat[r])}
            for r in rows
        ]
        if bin is None and len(ids) == 1:
            bin = manual_bin(rule, float(self.cells[f"{marker}_od"].iat[rows[0]]), positive)
        elif bin is None:
            bin = 1 if positive else 0
        entry = self._log(
            {
                "action": "set_call",
                "marker": marker,
                "cell_ids": ids,
                "previous": previous,
                "new": {"positive": bool(positive), "bin": int(bin)},
                **({"note": note} if note else {}),
            }
        )
        positions = self.cells.columns.get_indexer([pos_col, bin_col, f"{marker}_manual"])
        self.cells.iloc[rows, positions[0]] = bool(positive)
        self.cells.iloc[rows, positions[1]] = np.int8(bin)
        self.cells.iloc[rows, positions[2]] = True
        if self.assay.phenotypes:
            _phenotypes(self.cells, self.assay)
        return entry

    def flip_call(self, cell_id: int, marker: str) -> dict[str, Any]:
        """Flip one cell's call for ``marker`` (positive ↔ negative)."""
        row = self._rows([cell_id])[0]
        return self.set_call(
            [cell_id], marker, positive=not bool(self.cells[f"{marker}_positive"].iat[row])
        )

    def _set_excluded(
        self, cell_ids: Iterable[int], value: bool, note: str | None
    ) -> dict[str, Any]:
        ids = [int(c) for c in cell_ids]
        rows = self._rows(ids)
        col = self.cells.columns.get_loc("excluded")
        previous = [bool(v) for v in self.cells["excluded"].to_numpy()[rows]]
        entry = self._log(
            {
                "action": "exclude" if value else "include",
                "cell_ids": ids,
                "previous": previous,
                "new": bool(value),
                **({"note": note} if note else {}),
            }
        )
        self.cells.iloc[rows, col] = bool(value)
        return entry

    def exclude(self, cell_ids: Iterable[int], *, note: str | None = None) -> dict[str, Any]:
        """Exclude cells from every figure (kept in the table with ``excluded = True``)."""
        return self._set_excluded(cell_ids, True, note)

    def include(self, cell_ids: Iterable[int], *, note: str | None = None) -> dict[str, Any]:
        """Include excluded cells again."""
        return self._set_excluded(cell_ids, False, note)

    def toggle_excluded(self, cell_id: int) -> dict[str, Any]:
        row = self._rows([cell_id])[0]
        value = not bool(self.cells["excluded"].iat[row])
        return self._set_excluded([cell_id], value, None)

    def set_thresholds(self, thresholds: Mapping[str, float]) -> dict[str, Any] | None:
        """Re-score the whole slide at new marker thresholds (OD); manual calls are kept.

        Returns the log entry (``None`` when nothing changed).
        """
        current = self.thresholds
        new = {}
        for m, v in thresholds.items():
            self.assay.marker(m)
            if not (math.isfinite(float(v)) and float(v) >= 0):
                raise CorrectionError(f"threshold for {m}: {v!r} is not an OD value >= 0")
            if float(v) != current[m]:
                new[m] = float(v)
        if not new:
            return None
        entry: dict[str, Any] = {
            "action": "set_thresholds",
            "marker": next(iter(new)) if len(new) == 1 else None,
            "cell_ids": [],
            "previous": {m: current[m] for m in new},
            "new": new,
        }
        trial = [*self.entries, {"id": -1, **entry}]
        cells = apply_corrections(
            self.raw.cells, trial, assay=self.assay, thresholds=self.base_thresholds
        )
        entry["n_changed"] = {
            m: int(
                (
                    self.cells[f"{m}_positive"].to_numpy(dtype=bool)
                    != cells[f"{m}_positive"].to_numpy(dtype=bool)
                ).sum()
            )
            for m in new
        }
        logged = self._log(entry)
        self.cells = cells
        self._index = pd.Index(self.cells["cell_id"].to_numpy())
        return logged

    def undo(self, entry_id: int | None = None) -> dict[str, Any] | None:
        """Revert an edit (default: the latest one in effect) by logging an ``undo`` entry.

        History is never deleted: the reverted entry stays in the log. Undoing an ``undo`` redoes
        it. A nucleus edit can only be undone while no later edit in effect overlaps its region.
        Returns the undo entry (``None`` when there is nothing to undo).
        """
        state = entry_states(self.entries)
        by_id = {int(e["id"]): e for e in self.entries}
        if entry_id is None:
            candidates = [
                e
                for e in reversed(self.entries)
                if e["action"] not in ("start", "undo") and state[int(e["id"])]
            ]
            if not candidates:
                return None
            target = candidates[0]
        else:
            if int(entry_id) not in by_id or by_id[int(entry_id)]["action"] == "start":
                raise CorrectionError(f"no correction with id {entry_id} to undo")
            target = by_id[int(entry_id)]
            if not state[int(entry_id)]:
                raise CorrectionError(f"correction {entry_id} is already undone")
        trial = [*self.entries, {"id": -1, "action": "undo", "undoes": int(target["id"])}]
        after = entry_states(trial)
        changed = [
            by_id[i]
            for i in sorted(by_id)
            if by_id[i]["action"] == "edit_nuclei" and state[i] != after[i]
        ]
        for e in changed:
            later = [
                f
                for f in self.entries
                if f["action"] == "edit_nuclei"
                and int(f["id"]) > int(e["id"])
                and after[int(f["id"])]
                and _overlap(e["region"], f["region"])
            ]
            if later:
                raise CorrectionError(
                    f"nucleus edit {e['id']} overlaps the later edit {later[0]['id']}: undo that "
                    "one first"
                )
        entry = self._log(
            {
                "action": "undo",
                "undoes": int(target["id"]),
                "marker": target.get("marker"),
                "cell_ids": target.get("cell_ids", []),
                "previous": target.get("new"),
                "new": target.get("previous"),
            }
        )
        state = entry_states(self.entries)
        for e in changed:
            self._sync_labels(e, state[int(e["id"])])
        self._recompute()
        return entry

    # --------------------------------------------------------------------- nucleus edits

    def read_labels(self, y0: int, x0: int, y1: int, x1: int) -> NDArray[np.int32]:
        """Level-0 labels of a region (px at :attr:`label_mpp`), to edit and pass to
        :meth:`edit_nuclei`."""
        return read_label_region(self.folder, y0, x0, y1, x1)

    def next_cell_id(self) -> int:
        """A ``cell_id`` never used on this slide, for a nucleus a person adds."""
        used = [int(self.raw.cells["cell_id"].max()) if len(self.raw.cells) else 0]
        used += [
            max(e["added"]) for e in self.entries if e.get("action") == "edit_nuclei" and e["added"]
        ]
        return max(used) + 1

    def _open_slide(self) -> Any:
        if self._slide is None:
            from senpath.io import open_slide

            path = self._slide_path or Path(self.raw.provenance["slide"]["path"])
            if not path.exists():
                raise CorrectionError(
                    f"the slide {path} is not where it was analysed; nucleus edits re-measure "
                    "cells on its pixels: open the review with slide_path=<where it is now>"
                )
            self._slide = open_slide(path, mpp=self.raw.manifest.get("identity", {}).get("mpp"))
        return self._slide

    def _measure(
        self, labels: NDArray[np.int32], origin: tuple[int, int], ids: Sequence[int]
    ) -> pd.DataFrame:
        from senpath.measure import measure_cells
        from senpath.stain import StainSet, deconvolve

        prov = self.raw.provenance
        amp = self.label_mpp
        y0, x0 = origin
        rgb = self._open_slide().read_region(
            x0 * amp, y0 * amp, labels.shape[1] * amp, labels.shape[0] * amp, mpp=amp
        )
        stains = StainSet(
            tuple(prov["assay"]["stains"]), np.asarray(prov["assay"]["stain_vectors"], dtype=float)
        )
        conc = deconvolve(rgb, stains, prov.get("background_i0", 255.0))
        measured = measure_cells(
            labels,
            conc,
            stain_names=stains.names,
            mpp=amp,
            cytoplasm_um=float(prov.get("config", {}).get("cytoplasm_um", 5.0)),
            origin_um=(x0 * amp, y0 * amp),
        )
        measured = measured[measured["cell_id"].isin(list(ids))].reset_index(drop=True)
        measured.insert(0, "slide_id", self.slide_id)
        if "tile_label" in self.raw.cells.columns:
            measured.insert(2, "tile_label", np.zeros(len(measured), dtype=np.int32))
        cols = [c for c in measurement_columns(self.raw.cells, self.assay) if c in measured]
        return measured[cols]

    def edit_nuclei(
        self, edited: NDArray[np.integer], *, origin: tuple[int, int], note: str | None = None
    ) -> dict[str, Any] | None:
        """Write back an edited region of the level-0 labels and re-measure the nuclei it changed.

        Deleting a nucleus (painting it 0), painting a missing one (a new id, see
        :meth:`next_cell_id`), splitting (painting part of a nucleus with a new id) and merging
        (painting a nucleus with its neighbour's id) are all edits of the label values.

        Parameters
        ----------
        edited : (H, W) int, the region's labels after the edit.
        origin : (y0, x0) of the region in level-0 label px.

        Returns
        -------
        The log entry (``removed``, ``added``, ``modified`` ids), or ``None`` when nothing changed.
        """
        edited = np.asarray(edited)
        if edited.ndim != 2 or not np.issubdtype(edited.dtype, np.integer):
            raise CorrectionError("edited labels must be a 2-D integer array (Y, X)")
        if edited.size and (edited.min() < 0 or edited.max() > np.iinfo(np.int32).max):
            raise CorrectionError("label ids must be in 0 .. 2**31 - 1")
        y0, x0 = int(origin[0]), int(origin[1])
        y1, x1 = y0 + edited.shape[0], x0 + edited.shape[1]
        h, w = self.label_shape
        if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
            raise CorrectionError(
                f"region [{y0}:{y1}, {x0}:{x1}] lies outside the label image (0:{h}, 0:{w})"
            )
        edited = edited.astype(np.int32)
        before = self.read_labels(y0, x0, y1, x1)
        diff = before != edited
        if not diff.any():
            return None
        touched = sorted((set(np.unique(before[diff])) | set(np.unique(edited[diff]))) - {0})
        cfg = self.raw.provenance.get("config", {})
        margin = math.ceil(
            (float(cfg.get("halo_um", 24.0)) + float(cfg.get("cytoplasm_um", 5.0))) / self.label_mpp
        )
        wy0, wx0 = max(0, y0 - margin), max(0, x0 - margin)
        wy1, wx1 = min(h, y1 + margin), min(w, x1 + margin)
        window = self.read_labels(wy0, wx0, wy1, wx1)
        window[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] = edited
        present = set(np.unique(window).tolist()) - {0}
        known = set(self.cells["cell_id"].tolist())
        removed = [c for c in touched if c not in present and c in known]
        added = [c for c in touched if c in present and c not in known]
        modified = [c for c in touched if c in present and c in known]
        new_rows = self._measure(window, (wy0, wx0), added + modified)
        prev_cols = measurement_columns(self.raw.cells, self.assay)
        gone = self.cells[self.cells["cell_id"].isin(removed + modified)]
        entry_id = int(self.entries[-1]["id"]) + 1 if self.entries else 1
        regions = self.folder / CORRECTIONS_DIR
        regions.mkdir(exist_ok=True)
        npz = f"{CORRECTIONS_DIR}/{entry_id:06d}.npz"
        buf = _npz_bytes(before=before, after=edited, origin=np.array([y0, x0]))
        atomic_write_bytes(self.folder / npz, buf)
        entry = self._log(
            {
                "action": "edit_nuclei",
                "region": [y0, x0, y1, x1],
                "cell_ids": touched,
                "removed": removed,
                "added": added,
                "modified": modified,
                "previous": {"rows": gone[prev_cols].to_dict("records")},
                "new": {"rows": new_rows.to_dict("records")},
                "labels": npz,
                **({"note": note} if note else {}),
            }
        )
        if entry["id"] != entry_id:  # another writer appended meanwhile: not supported
            raise CorrectionError("the corrections log changed under this session; reopen it")
        write_label_region(self.folder, (y0, x0), edited)
        self._recompute()
        return entry

    def _sync_labels(self, entry: Mapping[str, Any], in_effect: bool) -> None:
        """Make the label region of a nucleus edit match whether the edit is in effect."""
        with np.load(self.folder / entry["labels"]) as data:
            block = data["after"] if in_effect else data["before"]
        y0, x0 = entry["region"][:2]
        current = self.read_labels(y0, x0, y0 + block.shape[0], x0 + block.shape[1])
        if not np.array_equal(current, block):
            write_label_region(self.folder, (y0, x0), block)

    def _repair_labels(self) -> None:
        """After a crash between logging a nucleus edit (or its undo) and writing its labels."""
        if not self.entries:
            return
        last = self.entries[-1]
        by_id = {int(e["id"]): e for e in self.entries}
        target = last
        while target.get("action") == "undo":
            target = by_id[int(target["undoes"])]
        if target.get("action") == "edit_nuclei" and (self.folder / target["labels"]).is_file():
            self._sync_labels(target, entry_states(self.entries)[int(target["id"])])

    # ---------------------------------------------------------------------- figures, saving

    def stats(self, marker: str, *, threshold_od: float | None = None) -> dict[str, Any]:
        """n, n positive, % positive and H-score of a marker now (or at ``threshold_od``)."""
        return marker_stats(self.cells, self.assay, marker, threshold_od=threshold_od)

    def queue(
        self, marker: str, *, band_od: float | None = None, limit: int | None = 500
    ) -> NDArray[np.int64]:
        """Cells nearest the marker's threshold first (not excluded, not yet called by hand)."""
        return review_queue(
            self.cells, marker, threshold_od=self.thresholds[marker], band_od=band_od, limit=limit
        )

    def save(self) -> None:
        """Rewrite the derived files from the corrected cells, then the manifest (same identity).

        ``summary.json`` gets the corrected figures (the pipeline's kept under ``uncorrected``),
        ``qc_histograms.png`` the thresholds in effect; the manifest is rewritten last with the same
        run identity, so the store stays complete and a resumed batch does not redo the slide.
        """
        from senpath.results import QC_HISTOGRAMS

        summary = corrected_summary(
            self.raw.summary,
            self.cells,
            self.entries,
            assay=self.assay,
            thresholds=self.base_thresholds,
        )
        atomic_write_json(self.folder / SUMMARY, summary)
        if (self.folder / QC_HISTOGRAMS).is_file():
            from senpath.report import slide_histograms_png

            atomic_write_bytes(
                self.folder / QC_HISTOGRAMS, slide_histograms_png(self.cells, self.thresholds)
            )
        m = self.raw.manifest
        write_manifest(
            self.folder,
            slide_id=str(m["slide_id"]),
            identity=m["identity"],
            extra={
                k: v
                for k, v in m.items()
                if k not in ("store_version", "slide_id", "identity", "files")
            },
        )

    def profile_toml(self, *, name: str | None = None) -> str:
        """A stain profile (TOML) with this slide's stain vectors and the thresholds in effect."""
        return profile_toml(self.raw.provenance, self.thresholds, name=name)

    def save_profile(self, path: str | Path, *, name: str | None = None) -> Path:
        """Write :meth:`profile_toml` to ``path`` (atomic), for ``senpath run --config path``."""
        path = Path(path)
        atomic_write_bytes(path, self.profile_toml(name=name).encode("utf-8"))
        return path


def _npz_bytes(**arrays: NDArray[Any]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


__all__ = [
    "CORRECTIONS",
    "CORRECTIONS_DIR",
    "CorrectionError",
    "CorrectionSession",
    "StaleCorrectionsWarning",
    "active_entries",
    "apply_corrections",
    "apply_to_results",
    "assay_from_provenance",
    "corrected_summary",
    "log_matches",
    "marker_stats",
    "read_label_region",
    "read_log",
    "review_queue",
    "set_aside",
    "store_thresholds",
    "uncorrected_summary",
    "write_label_region",
]
