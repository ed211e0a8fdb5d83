"""Per-patient and per-slide marker tables and QuPath GeoJSON, derived from committed stores.

Markers scored on adjacent sections are pooled per patient by marker (each marker's cells come from the
slides that carry it); a phenotype index (senescence index) is only computed from slides whose assay
scores its markers on the same cells, and the table says from how many slides each figure comes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senpath.anndata_export import cells_anndata as cells_anndata  # the public names stay here
from senpath.anndata_export import write_anndata as write_anndata
from senpath.corrections import load_results, n_corrections, review_status
from senpath.corrections.status import IN_REVIEW, NOT_STARTED, SIGNED_OFF
from senpath.provenance import profile_toml
from senpath.results import SlideResults, atomic_write_bytes, find_stores
from senpath.score import marker_figures, proportion_figures

EXPORT_FORMATS = ("csv", "parquet", "xlsx")
#: Formats written one file per slide (into a folder) rather than one table.
SLIDE_FORMATS = ("geojson",)
#: Formats that hold every cell of the batch in one file.
CELL_FORMATS = ("anndata",)
#: Count columns (nullable Int64: empty where a patient has no slide with that marker).
_COUNT_SUFFIXES = ("_n_cells", "_n_positive", "_n_slides", "_allred")


def marker_names(cells: pd.DataFrame) -> list[str]:
    """The markers a scored per-cell table has calls for (``<marker>_positive`` columns), sorted."""
    return sorted(c[: -len("_positive")] for c in cells.columns if c.endswith("_positive"))


def stain_qc_status(res: SlideResults) -> str:
    """The slide's stain QC status (``ok``, ``warning``; ``""`` for a store without one)."""
    qc = res.summary.get("stain_qc")
    return str(qc.get("status", "")) if isinstance(qc, dict) else ""


def is_reliable(res: SlideResults) -> bool:
    """Whether a slide's figures may be reported as measured: not when stain QC found that the image
    does not match its assay (a wrong stain, phase contrast, no chromogen; :func:`senpath.stain.stain_qc`),
    since its marker OD then measures something else."""
    return stain_qc_status(res) != "warning"


def _phenotype_names(summary: dict[str, Any]) -> list[str]:
    return sorted(k[: -len("_index")] for k in summary if k.endswith("_index"))


def _marker_stats(cells: pd.DataFrame, marker: str) -> dict[str, Any]:
    figures = marker_figures(
        cells[f"{marker}_positive"].to_numpy(dtype=bool), cells[f"{marker}_bin"].to_numpy()
    )
    lo, hi = figures.pop("pct_positive_ci95")
    return {
        f"{marker}_n_cells": figures["n_cells"],
        f"{marker}_n_positive": figures["n_positive"],
        f"{marker}_pct_positive": figures["pct_positive"],
        f"{marker}_pct_positive_ci95_low": lo,
        f"{marker}_pct_positive_ci95_high": hi,
        f"{marker}_h_score": figures["h_score"],
        f"{marker}_allred": figures["allred"],
    }


def _group_row(group: Sequence[SlideResults]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    per_marker: dict[str, list[pd.DataFrame]] = {}
    per_pheno: dict[str, list[pd.Series]] = {}
    all_cells = []
    for res in group:
        cells = res.cells
        if "excluded" in cells.columns:
            cells = cells[~cells["excluded"].astype(bool)]
        all_cells.append(cells[["nucleus_area_um2"]])
        for m in marker_names(cells):
            per_marker.setdefault(m, []).append(cells[[f"{m}_positive", f"{m}_bin"]])
        for p in _phenotype_names(res.summary):
            if p in cells.columns:
                per_pheno.setdefault(p, []).append(cells[p])
    row["n_slides"] = len(group)
    row["slide_ids"] = ";".join(r.slide_id for r in group)
    row["stain_qc"] = _joined(stain_qc_status(r) for r in group)
    row["reliable"] = "yes" if all(is_reliable(r) for r in group) else "no"
    row["assays"] = ";".join(sorted({str(r.summary.get("assay")) for r in group}))
    row["n_cells"] = int(sum(len(c) for c in all_cells))
    for m in sorted(per_marker):
        cells = pd.concat(per_marker[m], ignore_index=True)
        row.update(_marker_stats(cells, m))
        row[f"{m}_n_slides"] = len(per_marker[m])
    labelling = {m.name for r in group for m in r.provenance.markers if m.rule.labelling_index}
    for m in sorted(labelling & set(per_marker)):
        row[f"{m}_labelling_index"] = row[f"{m}_pct_positive"]
    for p in sorted(per_pheno):
        share = proportion_figures(pd.concat(per_pheno[p], ignore_index=True).to_numpy(dtype=bool))
        row[f"{p}_index"] = share["pct"]
        row[f"{p}_index_ci95_low"], row[f"{p}_index_ci95_high"] = share["ci95"]
        row[f"{p}_n_slides"] = len(per_pheno[p])
    areas = pd.concat(all_cells, ignore_index=True)["nucleus_area_um2"]
    row["median_nucleus_area_um2"] = float(np.median(areas)) if len(areas) else math.nan
    row.update(_provenance_columns(group, sorted(per_marker)))
    return row


def review_columns(group: Sequence[SlideResults], *, count: bool = False) -> dict[str, Any]:
    """The review status of a row's slides (:mod:`senpath.corrections.status`).

    ``review_status`` is ``signed off`` when every slide is, ``not started`` when none is
    reviewed, ``in review`` otherwise; ``reviewed_by`` names who signed off or last edited
    (``;``-joined), ``review_time`` the latest of their times (UTC). With ``count``,
    ``n_slides_signed_off`` too (the per-patient table).
    """
    statuses = [review_status(res.corrections) for res in group]
    kinds = {s.status for s in statuses}
    status = kinds.pop() if len(kinds) == 1 else IN_REVIEW
    started = [s for s in statuses if s.status != NOT_STARTED]
    cols: dict[str, Any] = {
        "review_status": status if group else NOT_STARTED,
        "reviewed_by": _joined(s.reviewer for s in started if s.reviewer),
        "review_time": max((s.time for s in started), default=""),
    }
    if count:
        cols["n_slides_signed_off"] = sum(s.status == SIGNED_OFF for s in statuses)
    return cols


def _joined(values: Iterable[Any]) -> str:
    return ";".join(sorted({str(v) for v in values}))


def _provenance_columns(group: Sequence[SlideResults], markers: Sequence[str]) -> dict[str, Any]:
    """What produced the figures; text, ``;``-joined when the group's slides differ."""
    prov = [r.provenance for r in group]
    cols = {
        "senpath_version": _joined(p.senpath_version for p in prov),
        "segmenter": _joined(p.segmenter_method for p in prov),
        "model_sha256": _joined(p.model_sha256 for p in prov),
        "analysis_mpp": _joined(p.config.get("analysis_mpp") for p in prov),
        "cytoplasm_um": _joined(p.config.get("cytoplasm_um") for p in prov),
        "stain_vectors_source": _joined(p.assay.stain_vectors_source for p in prov),
    }
    for m in markers:
        values = [p.thresholds[m] for p in prov if m in p.thresholds]
        cols[f"{m}_threshold_od"] = _joined(values)
        cols[f"{m}_threshold_source"] = _joined(
            _source_text(p.threshold_source(m), p.threshold_records.get(m, {}))
            for p in prov
            if m in p.thresholds
        )
    return cols


def _source_text(source: str, record: dict[str, Any]) -> str:
    """``rule``, ``auto``, ``corrected`` or ``control:<slide_id> p99`` (the control that set it)."""
    if source != "control":
        return source
    return f"control:{record.get('control_slide_id')} p{record.get('control_percentile', 0):g}"


def marker_table(
    results: Iterable[SlideResults], *, by: str = "patient", include_unreliable: bool = False
) -> pd.DataFrame:
    """One row per patient (``by="patient"``) or per slide (``by="slide"``) with marker figures.

    Columns per marker ``m``: ``m_n_cells``, ``m_n_positive``, ``m_pct_positive`` with
    ``m_pct_positive_ci95_low/high`` (Wilson), ``m_h_score``, ``m_allred``, ``m_n_slides``; plus
    ``ki67_labelling_index``, phenotype indices (``senescent_index``), ``median_nucleus_area_um2``,
    slide counts and provenance columns (``senpath_version``, ``segmenter``, ``model_sha256``,
    ``analysis_mpp``, ``cytoplasm_um``, ``stain_vectors_source``, ``m_threshold_od``: text,
    ``;``-joined when a patient's slides differ). Cells flagged ``excluded`` are left out.
    Counts are nullable integers (``Int64``), empty where a patient has no slide with the marker.

    When a slide of the table was reviewed (a corrections log), two columns say which figures
    are corrected: ``n_corrections`` (edits in effect, over the row's slides) and ``corrected``
    (``yes`` / ``no``). A table of uncorrected slides has neither. Every table says where the
    review stands (:func:`review_columns`): ``review_status`` (``not started``, ``in review``,
    ``signed off``), ``reviewed_by``, ``review_time`` and, per patient, ``n_slides_signed_off``.

    Every row says whether its figures can be trusted: ``stain_qc`` (the slides' stain QC status)
    and ``reliable`` (``no`` when a slide of the row does not match its assay, see
    :func:`is_reliable`). Per patient, such slides are left out of the figures unless
    ``include_unreliable`` (the row then says ``reliable`` = ``no``); ``n_slides_unreliable`` and
    ``unreliable_slide_ids`` name them either way. ``m_threshold_source`` says where each marker's
    cut-off came from (``rule``, ``auto``, ``corrected``, ``control:<slide_id> p99``).
    """
    if by not in ("patient", "slide"):
        raise ValueError("by must be 'patient' or 'slide'")
    results = list(results)
    reviewed = any(res.corrections for res in results)
    groups: dict[str, list[SlideResults]] = {}
    for res in results:
        key = res.patient_id if by == "patient" else res.slide_id
        groups.setdefault(key, []).append(res)
    rows = []
    for key in sorted(groups):
        row: dict[str, Any] = {"patient_id" if by == "patient" else "slide_id": key}
        if by == "slide":
            row["patient_id"] = groups[key][0].patient_id
        unreliable = [r for r in groups[key] if not is_reliable(r)]
        kept = groups[key]
        if by == "patient" and not include_unreliable:
            kept = [r for r in groups[key] if is_reliable(r)]
        if kept:
            row.update(_group_row(kept))
        else:  # every slide of the patient is unreliable: no figures, only why
            row.update(n_slides=0, slide_ids="", stain_qc=_joined(map(stain_qc_status, unreliable)))
            row["reliable"] = "no"
        if by == "patient":
            row["n_slides_unreliable"] = len(unreliable)
            row["unreliable_slide_ids"] = ";".join(r.slide_id for r in unreliable)
        if reviewed:
            n = sum(n_corrections(res.corrections) for res in groups[key])
            row["n_corrections"] = n
            row["corrected"] = "yes" if n else "no"
        row.update(review_columns(groups[key], count=by == "patient"))
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in table.columns:
        counts = (
            "n_slides", "n_cells", "n_corrections", "n_slides_unreliable", "n_slides_signed_off",
        )  # fmt: skip
        if col in counts or col.endswith(_COUNT_SUFFIXES):
            table[col] = table[col].astype("Int64")
    return table


def export_geojson(results: Iterable[SlideResults], out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/<slide_id>.geojson`` (QuPath cells, see :mod:`senpath.geojson`) per slide."""
    from senpath.geojson import write_slide_geojson

    out_dir = Path(out_dir)
    return [write_slide_geojson(res, out_dir / f"{res.slide_id}.geojson") for res in results]


def profile_from_store(res: SlideResults, *, name: str | None = None) -> str:
    """A lab stain profile (TOML for ``senpath run --config``) from one analysed slide.

    The profile fixes the stain vectors the slide was measured with (per-slide estimate or preset) and
    the thresholds it was scored with (corrected ones included), so a batch is scored with one lab's
    vectors and thresholds instead of re-estimating them per slide. See
    :func:`senpath.config.stain_profile_toml`.
    """
    # load_results already put corrected thresholds into the provenance
    text = profile_toml(res.provenance, res.provenance.thresholds, name=name)
    return f"# from slide {res.slide_id!r} ({res.folder})\n{text}"


def load_all(results_root: str | Path) -> list[SlideResults]:
    """Every committed slide store under ``results_root``."""
    return [load_results(p) for p in find_stores(results_root)]


def stale_formats(path_stem: str | Path, formats: Sequence[str]) -> list[str]:
    """The table formats already at ``path_stem`` that ``formats`` leaves out.

    Rewriting only some of them after a review would leave the others with the figures from
    before (a corrected CSV next to an uncorrected XLSX); the export command rewrites them too.
    """
    return [f for f in EXPORT_FORMATS if f not in formats and Path(f"{path_stem}.{f}").is_file()]


#: A text cell starting with one of these is read as a formula by spreadsheet programs (OWASP,
#: "CSV Injection"): ``=HYPERLINK(...)`` in a patient id would run when the table is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def neutralise_formula(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is text a spreadsheet would run as a formula.

    Numbers, and text that is a plain number (``-0.5``), are returned as they are.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.match(value):
        return "'" + value
    return value


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` for CSV and XLSX: formula-like text cells (and column names) prefixed
    with ``'`` (see :func:`neutralise_formula`); numeric columns are not touched. Parquet and the
    stores keep the values as they are."""
    out = table.rename(columns=lambda c: neutralise_formula(c) if isinstance(c, str) else c)
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            out[col] = out[col].map(neutralise_formula)
    return out


def write_table(table: pd.DataFrame, path_stem: str | Path, formats: Sequence[str]) -> list[Path]:
    """Write ``table`` as ``<stem>.csv/.parquet/.xlsx`` atomically; returns the paths written."""
    import io

    written = []
    for fmt in formats:
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; use {', '.join(EXPORT_FORMATS)}")
        path = Path(f"{path_stem}.{fmt}")
        buf = io.BytesIO()
        if fmt == "csv":
            buf.write(spreadsheet_safe(table).to_csv(index=False).encode("utf-8"))
        elif fmt == "parquet":
            table.to_parquet(buf, index=False)
        else:
            try:
                import openpyxl  # noqa: F401
            except ImportError:
                raise RuntimeError(
                    "XLSX export needs openpyxl: pip install 'senpath[xlsx]'"
                ) from None
            spreadsheet_safe(table).to_excel(buf, index=False, engine="openpyxl")
            buf = io.BytesIO(xlsx_for_people(buf.getvalue()))
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


#: Unit and Excel number format by column-name ending (first match wins); counts and text have none.
_XLSX_UNITS: tuple[tuple[str, str, str], ...] = (
    ("_ci95_low", "%", "0.0"),
    ("_ci95_high", "%", "0.0"),
    ("_pct_positive", "%", "0.0"),
    ("_index", "%", "0.0"),
    ("_h_score", "0-300", "0"),
    ("_area_um2", "µm²", "0.0"),
    ("_mm2", "mm²", "0.00"),
    ("_threshold_od", "OD", "0.000"),
    ("_od", "OD", "0.000"),
    ("analysis_mpp", "µm/px", "0.00"),
    ("_um", "µm", "0.0"),
)


def _unit(column: str) -> tuple[str, str] | None:
    for ending, unit, number_format in _XLSX_UNITS:
        if column.endswith(ending):
            return unit, number_format
    return None


def xlsx_for_people(data: bytes) -> bytes:
    """An XLSX table (bytes) laid out for reading: header row frozen and bold, the unit in each
    measured column's header (``ki67_pct_positive (%)``, ``median_nucleus_area_um2 (µm²)``), number
    formats by kind (``0.0`` for %, ``0`` for counts and H-scores, ``0.000`` for OD), widths to fit
    the headers. The cells keep their full-precision values."""
    import io

    import openpyxl
    from openpyxl.styles import Font

    book = openpyxl.load_workbook(io.BytesIO(data))
    for sheet in book.worksheets:
        sheet.freeze_panes = "B2"  # the header row and the id column stay in view
        for column in sheet.iter_cols(min_row=1, max_row=sheet.max_row):
            head = column[0]
            name = str(head.value)
            found = _unit(name)
            count = name.startswith("n_") or name.endswith(_COUNT_SUFFIXES)
            number_format = "0" if count else found[1] if found else None
            if found:
                head.value = f"{name} ({found[0]})"
            head.font = Font(bold=True)
            if number_format:
                for cell in column[1:]:
                    cell.number_format = number_format
            letter = head.column_letter
            sheet.column_dimensions[letter].width = max(10, min(48, len(str(head.value)) + 2))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
