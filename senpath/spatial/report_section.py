"""The report's spatial section: each slide's density maps with its hot-spots, and a hot-spot table.

:func:`spatial_section` is called by :func:`senpath.report.render_report`. A slide's figures are
those ``senpath spatial`` stored when they are current, else computed from its cells with the
settings it used (defaults: 100 µm bins, a 0.2 mm² circle with at least 100 cells), so the report
never shows maps of cells that a later review changed.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence

from senpath.results import SlideResults
from senpath.spatial.figure import density_png, slide_thumbnail
from senpath.spatial.slide import SlideSpatial, stored_or_computed

__all__ = ["spatial_section"]


def _fmt(value: float, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def _hotspot_rows(sp: SlideSpatial) -> list[str]:
    rows = []
    for h in sp.hotspots:
        if h.found:
            where = f"({h.centre_x_um:.0f}, {h.centre_y_um:.0f})"
            field = f"{h.field_area_mm2:.3f} mm², {h.n_cells} cells"
            spot = f"{_fmt(h.index_pct)} ({_fmt(h.index_ci95_low)}–{_fmt(h.index_ci95_high)})"
        else:
            where, field, spot = "–", html.escape(h.reason), "–"
        glob = f"{_fmt(h.global_index_pct)} ({_fmt(h.global_ci95_low)}–{_fmt(h.global_ci95_high)})"
        rows.append(
            f"<tr><td class='l'>{html.escape(sp.slide_id)}</td><td class='l'>"
            f"{html.escape(h.target)}</td><td>{spot}</td><td>{glob}</td><td>{where}</td>"
            f"<td class='l'>{field}</td><td class='l'>{html.escape(h.rule)}</td></tr>"
        )
    return rows


def spatial_section(stores: Sequence[SlideResults]) -> str:
    """HTML of the spatial section for the loaded (corrected) stores; empty without stores.

    A slide whose figures cannot be computed is named with the reason; the others are shown.
    """
    if not stores:
        return ""
    parts = [
        "<h2>Where: density maps and hot-spots</h2>",
        "<p>Per slide, maps on a grid in µm (grey line: the edge of the bins that hold cells) and "
        "the hot-spot of each marker and phenotype (cyan: the field with the highest index, see "
        "<code>senpath spatial --help</code> and the README for the rule), beside the slide's "
        "global index. Hot-spot index and global index in % with Wilson 95% CI; centre in slide "
        "µm (x, y). Maps are stored as <code>&lt;slide&gt;/density.ome.zarr</code> by "
        "<code>senpath spatial</code>.</p><div class='grid'>",
    ]
    rows: list[str] = []
    problems: list[str] = []
    for res in stores:
        try:
            sp = stored_or_computed(res)
        except Exception as exc:  # one slide's problem never hides the others
            problems.append(
                f"{html.escape(res.slide_id)}: {html.escape(' '.join(str(exc).split()))}"
            )
            continue
        png = density_png(
            sp.maps, sp.hotspots, title=f"{sp.slide_id} ({sp.assay})",
            thumbnail=slide_thumbnail(res, sp.maps.grid),
        )  # fmt: skip
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<figure><img src='data:image/png;base64,{data}' alt='density {html.escape(sp.slide_id)}'"
            f" width='720'><figcaption>{html.escape(sp.slide_id)}: "
            f"{sp.maps.grid.spacing_um:g} µm bins</figcaption></figure>"
        )
        rows.extend(_hotspot_rows(sp))
    parts.append("</div>")
    if rows:
        heads = (
            "slide_id",
            "target",
            "hot-spot %",
            "global %",
            "centre (x, y) µm",
            "field",
            "rule",
        )
        parts.append(
            "<table><tr>" + "".join(f"<th class='l'>{h}</th>" for h in heads) + "</tr>"
            + "".join(rows) + "</table>"
        )  # fmt: skip
    if problems:
        parts.append("<p class='warn'>No spatial figures for: " + "; ".join(problems) + "</p>")
    return "\n".join(parts)
