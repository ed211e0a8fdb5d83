"""A self-contained HTML report of a batch (``senpath report RESULTS`` -> ``RESULTS/report.html``).

Sections: per-patient marker bars (% positive with Wilson 95% CI error bars, phenotype indices),
per-marker histograms of the thresholded optical density with the threshold line(s), the slides
(with QC thumbnails), the per-patient table, and the failed slides from ``failures.log``. Slides
a person reviewed (a corrections log) are named as corrected at the top, in the slides table and in
the per-patient table; their figures are the corrected ones, while the QC overlay stays the picture
of the pipeline's calls and is labelled so. Each slide's review status (not started, in review,
signed off by whom and when) is in a line at the top, the slides table and the per-patient table.
Plots are small PNG images embedded as base64; the QC
pictures are small JPEG thumbnails linked (by relative path) to the full pictures in the stores, so
the report stays a few hundred kB for a batch and opens with the results folder beside it. The
per-patient table shows the headline figures; every column is in ``senpath export``'s CSV/XLSX.
Everything is derived from the per-cell tables and provenance of the committed stores.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import senpath
from senpath.corrections import n_corrections, review_status
from senpath.export import is_reliable, load_all, marker_names, marker_table
from senpath.qc_plots import figure, png_bytes, slide_histograms_png
from senpath.results import QC_HISTOGRAMS, QC_OVERLAY, SlideResults, atomic_write_bytes
from senpath.score import marker_value_column
from senpath.spatial.report_section import spatial_section

__all__ = [
    "failed_slides",
    "marker_bars_figure",
    "marker_bars_png",
    "od_histogram_png",
    "readable_table",
    "render_report",
    "slide_histograms_png",
    "thumbnail_jpeg",
    "write_report",
]

REPORT = "report.html"
FAILURES = "failures.log"
_FAILURE_HEADER = re.compile(r"^=== \S+ \S+ (?P<slide>\S+) \((?P<path>.*)\)$", re.MULTILINE)


#: Width in px of the QC thumbnails embedded in the report.
THUMBNAIL_PX = 480
#: How the report's tables show a value that is missing (a patient without the marker).
MISSING = "–"


def _img(data: bytes, alt: str, *, width: int | None = None, mime: str = "image/png") -> str:
    text = base64.b64encode(data).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{size} src="data:{mime};base64,{text}">'


def thumbnail_jpeg(path: str | Path, *, width: int = THUMBNAIL_PX, quality: int = 85) -> bytes:
    """A picture shrunk to ``width`` px (never enlarged), as JPEG bytes for embedding.

    Raises
    ------
    ValueError
        When ``path`` is not an image OpenCV can read.
    """
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} is not a readable image")
    if image.shape[1] > width:
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"could not encode a thumbnail of {path}")
    return bytes(buf.tobytes())


def _linked_thumbnail(path: Path, alt: str, *, link_from: Path) -> str:
    """An embedded thumbnail of ``path`` that opens the full picture (relative link)."""
    href = Path(os.path.relpath(path, link_from)).as_posix()
    img = _img(thumbnail_jpeg(path), alt, mime="image/jpeg")
    return f'<a href="{html.escape(href)}">{img}</a>'


def marker_bars_png(table: pd.DataFrame) -> bytes | None:
    """:func:`marker_bars_figure` as PNG bytes (``None`` when there is nothing to plot)."""
    fig = marker_bars_figure(table)
    return None if fig is None else png_bytes(fig)


def marker_bars_figure(table: pd.DataFrame) -> Any:
    """Grouped bars: per patient, % positive per marker and phenotype indices, Wilson 95% CI bars.

    Patients without any of these figures (no marker in their assays) are left off the axis.
    Returns a matplotlib Figure, or ``None`` when no patient has a figure.
    """
    # marker % positive and phenotype indices: the columns that come with a Wilson interval
    series = [
        (c[: -len("_pct_positive")] if c.endswith("_pct_positive") else c[: -len("_index")], c)
        for c in table.columns
        if c.endswith(("_pct_positive", "_index")) and f"{c}_ci95_low" in table.columns
    ]
    # a patient with none of the figures (an H&E-only patient) gets no empty slot on the axis
    values = table[[col for _, col in series]].apply(pd.to_numeric, errors="coerce")
    table = table[values.notna().any(axis=1).to_numpy()]
    if not series or table.empty:
        return None
    patients = table["patient_id"].astype(str).tolist()
    x = np.arange(len(patients))
    width = 0.8 / len(series)
    fig = figure(max(6.0, 0.9 * len(patients) * len(series) ** 0.5 + 2), 4.0)
    ax = fig.add_subplot()
    for k, (name, col) in enumerate(series):
        value = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
        lo = pd.to_numeric(table[f"{col}_ci95_low"], errors="coerce").to_numpy(dtype=float)
        hi = pd.to_numeric(table[f"{col}_ci95_high"], errors="coerce").to_numpy(dtype=float)
        yerr = np.vstack([np.clip(value - lo, 0, None), np.clip(hi - value, 0, None)])
        label = name if col.endswith("_pct_positive") else f"{name} index"
        ax.bar(
            x + (k - (len(series) - 1) / 2) * width, value, width, yerr=yerr, capsize=3, label=label
        )
    ax.set_xticks(
        x,
        patients,
        rotation=45 if len(patients) > 6 else 0,
        ha="right" if len(patients) > 6 else "center",
    )
    ax.set_ylabel("% of cells (Wilson 95% CI)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    ax.set_title("Markers by patient")
    return fig


def od_histogram_png(
    od: np.ndarray, thresholds: Sequence[float], *, marker: str, column: str
) -> bytes:
    """Histogram of a marker's per-cell OD value with its threshold line(s)."""
    fig = figure(5.0, 3.2)
    ax = fig.add_subplot()
    od = od[np.isfinite(od)]
    if od.size:
        hi = max(float(np.percentile(od, 99.5)), max(thresholds, default=0.0)) * 1.1 or 1.0
        ax.hist(od, bins=60, range=(min(0.0, float(od.min())), hi), color="0.45")
    for t in sorted(set(thresholds)):
        ax.axvline(t, color="crimson", linestyle="--", label=f"threshold {t:g} OD")
    ax.set_xlabel(f"{column} (OD)")
    ax.set_ylabel("cells")
    ax.set_title(f"{marker}: {od.size} cells")
    if thresholds:
        ax.legend(fontsize="small")
    return png_bytes(fig)


def _marker_od(stores: Sequence[SlideResults], marker: str) -> tuple[np.ndarray, list[float], str]:
    values, thresholds, columns = [], [], set()
    for res in stores:
        cells = res.cells
        if f"{marker}_od" not in cells.columns:
            continue
        if "excluded" in cells.columns:
            cells = cells[~cells["excluded"].astype(bool)]
        values.append(cells[f"{marker}_od"].to_numpy(dtype=float))
        for record in res.provenance.markers:
            if record.name == marker:
                thresholds.append(record.threshold_od)
                columns.add(marker_value_column(record.rule))
    od = np.concatenate(values) if values else np.zeros(0)
    return od, thresholds, " / ".join(sorted(columns)) or f"{marker}_od"


def failed_slides(results_root: str | Path) -> list[tuple[str, str, str]]:
    """``(slide_id, path, error line)`` per failure recorded in ``failures.log`` (latest last)."""
    log = Path(results_root) / FAILURES
    if not log.is_file():
        return []
    text = log.read_text(encoding="utf-8", errors="replace")
    heads = list(_FAILURE_HEADER.finditer(text))
    out = []
    for k, m in enumerate(heads):
        body = text[m.end() : heads[k + 1].start() if k + 1 < len(heads) else len(text)]
        lines = [ln for ln in body.strip().splitlines() if ln.strip()]
        out.append((m["slide"], m["path"], lines[-1] if lines else ""))
    return out


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; }
td.l, th.l { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.85em; }
.warn { color: #a60; } .fail { color: #b00; }
.scroll { overflow-x: auto; }
"""


def render_report(
    results_root: str | Path,
    *,
    link_from: str | Path | None = None,
    include_unreliable: bool = False,
) -> str:
    """The report's HTML text for the committed stores (and failures) under ``results_root``.

    Slides whose stains do not match their assay (stain QC warning) are marked unreliable in the
    slides table and left out of the per-patient figures unless ``include_unreliable``.

    ``link_from`` is the folder the report will be written to (default ``results_root``): the QC
    thumbnails link to the stores' full pictures by paths relative to it.
    """
    root = Path(results_root)
    link_from = Path(link_from) if link_from is not None else root
    stores = load_all(root) if root.is_dir() else []
    failures = failed_slides(root)
    if not stores and not failures:
        raise FileNotFoundError(
            f"no complete results stores and no failures.log under {root}: run `senpath run` first"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>senpath report: {html.escape(root.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>senpath report: {html.escape(str(root))}</h1>",
        f"<p>{len(stores)} slide(s) complete, {len(failures)} failure(s) logged; "
        f"senpath {html.escape(senpath.__version__)}, written {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>",
    ]
    if stores:
        corrected = [res for res in stores if n_corrections(res.corrections)]
        if corrected:
            names = ", ".join(html.escape(res.slide_id) for res in corrected)
            parts.append(
                f"<p class='warn'><b>Corrected:</b> {len(corrected)} slide(s) were reviewed and "
                f"corrected by a person ({names}): their figures, tables and histograms are the "
                "corrected ones; their QC overlays show the pipeline's calls before the review.</p>"
            )
        parts.append(_review_line(stores))
        table = marker_table(stores, by="patient", include_unreliable=include_unreliable)
        unreliable = [res for res in stores if not is_reliable(res)]
        if unreliable:
            names = ", ".join(html.escape(res.slide_id) for res in unreliable)
            how = (
                "pooled into the per-patient figures anyway (--include-unreliable)"
                if include_unreliable
                else "left out of the per-patient figures"
            )
            parts.append(
                f"<p class='warn'><b>Unreliable:</b> {len(unreliable)} slide(s) do not match "
                f"their assay's stains (stain QC warning: wrong stain, phase contrast or no "
                f"chromogen), so their marker figures are not measurements of the marker: {names}; "
                f"{how}.</p>"
            )
        parts.append("<h2>Markers by patient</h2>")
        bars = marker_bars_png(table)
        parts.append(_img(bars, "markers by patient") if bars else "<p>No marker scored.</p>")
        unscored = [str(p) for p in table["patient_id"] if str(p) not in _plotted(table)]
        if bars and unscored:
            names = ", ".join(html.escape(p) for p in unscored)
            parts.append(f"<p>Not plotted (no marker in their assays): {names}.</p>")
        markers = sorted({m for res in stores for m in marker_names(res.cells)})
        if markers:
            parts.append("<h2>Marker optical density</h2><div class='grid'>")
            for m in markers:
                od, thresholds, column = _marker_od(stores, m)
                png = od_histogram_png(od, thresholds, marker=m, column=column)
                parts.append(f"<figure>{_img(png, f'{m} OD histogram')}</figure>")
            parts.append("</div>")
        parts.extend(_conditions_section(stores, root, include_unreliable=include_unreliable))
        parts.append("<h2>Slides</h2>" + _slides_table(stores))
        parts.append(spatial_section(stores))  # density maps and hot-spots (senpath.spatial)
        parts.append(
            "<h2>QC overlays</h2><p>Nucleus outlines: red = positive for the assay's first "
            "marker, cyan = negative, green = nucleus of an assay without a marker; right: crops "
            "of the densest tissue at full resolution. Click a picture to open it full size "
            "(the results folder must be beside this report).</p>"
        )
        parts.append("<div class='grid'>")
        for res in stores:
            qc = res.folder / QC_OVERLAY
            if qc.is_file():
                caption = html.escape(res.slide_id)
                if n_corrections(res.corrections):
                    caption += " <span class='warn'>(pipeline's calls, before the review)</span>"
                hist = res.folder / QC_HISTOGRAMS
                if hist.is_file():
                    href = Path(os.path.relpath(hist, link_from)).as_posix()
                    caption += f" · <a href='{html.escape(href)}'>histograms</a>"
                thumb = _linked_thumbnail(qc, f"QC {res.slide_id}", link_from=link_from)
                parts.append(f"<figure>{thumb}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
        parts.append(
            "<h2>Per-patient table</h2><p>Headline figures; every column (counts, Allred, "
            "thresholds, provenance) is in <code>senpath export</code>'s CSV/XLSX. "
            f"{MISSING} = not measured for that patient.</p><div class='scroll'>"
        )
        parts.append(readable_table(table).to_html(index=False, na_rep=MISSING))
        parts.append("</div>")
        parts.append(_regions_section(stores, include_unreliable=include_unreliable))
    from senpath.registration._report import sections_html

    parts.append(sections_html(root, link_from=link_from))
    if failures:
        # the log accumulates over runs: each slide's latest failure, and whether it completed since
        latest = {slide_id: (path, error) for slide_id, path, error in failures}
        done = {res.slide_id for res in stores}
        parts.append("<h2 class='fail'>Failed slides</h2><table><tr>")
        heads = ("slide_id", "path", "latest error", "now")
        parts.append("".join(f"<th class='l'>{h}</th>" for h in heads) + "</tr>")
        for slide_id, (path, error) in latest.items():
            now = "completed in a later run" if slide_id in done else "failed"
            parts.append(
                f"<tr><td class='l'>{html.escape(slide_id)}</td><td class='l'>{html.escape(path)}</td>"
                f"<td class='l fail'>{html.escape(error)}</td><td class='l'>{now}</td></tr>"
            )
        parts.append(f"</table><p>Full tracebacks: {html.escape(str(root / FAILURES))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _conditions_section(
    stores: Sequence[SlideResults], root: Path, *, include_unreliable: bool
) -> list[str]:
    """The culture experiment's condition table and plate maps (none without a layout)."""
    from senpath.conditions import report_section

    section = report_section(stores, root, include_unreliable=include_unreliable)
    if section is None:
        return []
    table, pictures, note = section
    parts = ["<h2>Conditions</h2>", f"<p>{html.escape(note)}</p><div class='scroll'>"]
    parts.append(table.to_html(index=False, na_rep=MISSING) + "</div>")
    parts += [f"<figure>{_img(png, f'plate map {m}')}</figure>" for m, png in pictures]
    return parts


def _regions_section(stores: Sequence[SlideResults], *, include_unreliable: bool) -> str:
    """The per-patient-and-region table (``senpath export --by patient,region``), when a slide
    has regions (see :mod:`senpath.regions`); empty otherwise."""
    with_regions = [res for res in stores if "regions" in res.summary]
    if not with_regions:
        return ""
    table = marker_table(stores, by="patient,region", include_unreliable=include_unreliable)
    shown = readable_table(table)
    shown.insert(1, "region", table["region"].astype(str))
    if "cells_per_mm2" in table.columns:
        shown.insert(
            3,
            "cells/mm²",
            [None if pd.isna(v) else f"{float(v):.0f}" for v in table["cells_per_mm2"]],
        )
    excluded = sum(int(res.summary["regions"].get("n_excluded") or 0) for res in with_regions)
    return (
        "<h2>Markers by patient and region</h2><p>Regions from QuPath annotations or drawn in "
        "napari; a cell belongs to the smallest region holding its centroid. "
        f"{excluded} cell(s) in exclusion regions are not counted. Slides without regions are "
        f"one region, Tissue. {MISSING} = not measured.</p><div class='scroll'>"
        + shown.to_html(index=False, na_rep=MISSING)
        + "</div>"
    )


def _slides_table(stores: Sequence[SlideResults]) -> str:
    rows = ["<table><tr>"]
    heads: tuple[str, ...] = (
        "slide_id", "patient_id", "assay", "cells", "tissue mm²", "segmenter", "threshold",
        "reliable", "warning", "review",
    )  # fmt: skip
    reviewed = any(res.corrections for res in stores)
    if reviewed:
        heads += ("corrected",)
    rows.append("".join(f"<th class='l'>{h}</th>" for h in heads) + "</tr>")
    for res in stores:
        s = res.summary
        area = s.get("tissue_area_mm2")
        cells = (
            (~res.cells["excluded"].astype(bool)).sum()
            if "excluded" in res.cells.columns
            else len(res.cells)
        )
        values: tuple[str, ...] = (
            res.slide_id,
            res.patient_id,
            str(s.get("assay", "")),
            str(int(cells)),
            f"{area:.2f}" if isinstance(area, float) and math.isfinite(area) else "",
            res.provenance.segmenter_method or "",
            _threshold_text(res),
            "yes" if is_reliable(res) else "no (stain QC)",
            str(s.get("warning", "")),
            review_status(res.corrections).describe(),
        )
        cls = ["l", "l", "l", "", "", "l", "l", "l" if is_reliable(res) else "l warn", "l warn"]
        cls.append("l")
        if reviewed:
            values += (_corrected_text(res),)
            cls.append("l warn")
        rows.append(
            "<tr>"
            + "".join(
                f"<td class='{c}'>{html.escape(v)}</td>" for c, v in zip(cls, values, strict=True)
            )
            + "</tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _review_line(stores: Sequence[SlideResults]) -> str:
    """``Review: 1 of 3 slide(s) signed off (P1-ki67 by anna), 1 in review, 1 not started.``"""
    statuses = {res.slide_id: review_status(res.corrections) for res in stores}
    signed = [f"{sid} by {st.signed_off_by}" for sid, st in statuses.items() if st.signed_off]
    n_review = sum(st.status == "in review" for st in statuses.values())
    n_none = sum(st.status == "not started" for st in statuses.values())
    names = f" ({html.escape(', '.join(signed))})" if signed else ""
    return (
        f"<p><b>Review:</b> {len(signed)} of {len(stores)} slide(s) signed off{names}, "
        f"{n_review} in review, {n_none} not started.</p>"
    )


def _threshold_text(res: SlideResults) -> str:
    """Each marker's cut-off and where it came from: ``sabgal 0.043 OD (control neg p99)``."""
    prov = res.provenance
    texts = []
    for m, od in prov.thresholds.items():
        source = prov.threshold_source(m)
        record = prov.threshold_records.get(m, {})
        if source == "control":
            source = (
                f"control {record.get('control_slide_id')} "
                f"p{float(record.get('control_percentile', 0)):g}"
            )
        texts.append(f"{m} {od:.3f} OD ({source})")
    return "; ".join(texts)


def _corrected_text(res: SlideResults) -> str:
    """``yes: N corrections, last <time> by <user>`` for a reviewed slide, ``no`` otherwise."""
    n = n_corrections(res.corrections)
    if not n:
        return "no"
    last = res.corrections[-1]
    return (
        f"yes: {n} correction(s), last {str(last.get('time', ''))[:16]} by {last.get('user', '?')}"
    )


def _plotted(table: pd.DataFrame) -> set[str]:
    """Patients with at least one marker or phenotype figure (the bar chart's groups)."""
    cols = [c for c in table.columns if c.endswith(("_pct_positive", "_index"))]
    values = table[cols].apply(pd.to_numeric, errors="coerce")
    return set(table.loc[values.notna().any(axis=1).to_numpy(), "patient_id"].astype(str))


def _with_ci(value: object, low: object, high: object) -> str | None:
    if pd.isna(value):  # type: ignore[call-overload]
        return None
    text = f"{float(value):.1f}"  # type: ignore[arg-type]
    if not (pd.isna(low) or pd.isna(high)):  # type: ignore[call-overload]
        text += f" ({float(low):.1f}–{float(high):.1f})"  # type: ignore[arg-type]
    return text


def _ci_texts(table: pd.DataFrame, col: str) -> list[str | None]:
    """``col`` with its Wilson interval as text per row (``None`` where the figure is missing)."""
    low, high = table[f"{col}_ci95_low"], table[f"{col}_ci95_high"]
    return [_with_ci(v, lo, hi) for v, lo, hi in zip(table[col], low, high, strict=True)]


def readable_table(table: pd.DataFrame) -> pd.DataFrame:
    """The per-patient table's headline columns, formatted as text for the report.

    Keeps the patient, slide and cell counts, assays, each marker's % positive with its Wilson
    95% CI (``"24.8 (22.2–27.6)"``) and H-score, each phenotype index with its CI, the median
    nucleus area, for a reviewed batch ``corrected``, and the review status (``review``); columns no patient has a value in are
    left out. Missing figures are ``None`` (shown one way, as :data:`MISSING`, whatever the
    column's dtype).
    """
    out = pd.DataFrame({"patient": table["patient_id"].astype(str)})
    for col, head in (("n_slides", "slides"), ("assays", "assays"), ("n_cells", "cells")):
        if col in table.columns:
            out[head] = table[col].astype(object).where(table[col].notna(), None)
    for m in [c[: -len("_pct_positive")] for c in table.columns if c.endswith("_pct_positive")]:
        out[f"{m} % positive (95% CI)"] = _ci_texts(table, f"{m}_pct_positive")
        if f"{m}_h_score" in table.columns:
            out[f"{m} H-score"] = [
                None if pd.isna(v) else f"{float(v):.0f}" for v in table[f"{m}_h_score"]
            ]
    for p in [c[: -len("_index")] for c in table.columns if c.endswith("_index")]:
        col = f"{p}_index"
        if f"{col}_ci95_low" in table.columns:
            out[f"{p} index % (95% CI)"] = _ci_texts(table, col)
    if "median_nucleus_area_um2" in table.columns:
        out["median nucleus area (µm²)"] = [
            None if pd.isna(v) else f"{float(v):.1f}" for v in table["median_nucleus_area_um2"]
        ]
    if "corrected" in table.columns:
        out["corrected"] = table["corrected"].astype(str)
    if "review_status" in table.columns:
        out["review"] = table["review_status"].astype(str)
    # a figure no patient has (a phenotype none of the assays can call) is not a column here
    return out.loc[:, out.notna().any(axis=0)]


def write_report(
    results_root: str | Path, *, out: str | Path | None = None, include_unreliable: bool = False
) -> Path:
    """Write the HTML report atomically (default ``RESULTS/report.html``); returns its path.

    ``include_unreliable``: see :func:`render_report`.
    """
    path = Path(out) if out else Path(results_root) / REPORT
    html_text = render_report(
        results_root, link_from=path.parent, include_unreliable=include_unreliable
    )
    atomic_write_bytes(path, html_text.encode("utf-8"))
    return path
