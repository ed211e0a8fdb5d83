"""How the Review widget draws the calls it judges: outlines or fills, the calls a threshold would give
(the live preview of the slider), the legend, and the text of the cell under the cursor.

Outlines are the default: a filled overlay hides the stain the call is judged on. The preview calls
are those :func:`senpath.corrections.review.marker_stats` counts at a threshold: automatic calls
re-made at that OD, calls set by hand kept.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from senpath_napari import _layers

#: How the call overlay is drawn, the first the default.
DISPLAY_MODES = ("outlines", "filled")
#: Outline width in label pixels of the level shown (0.5 µm at level 0 of a 0.5 µm store).
OUTLINE_PX = 2
#: Overlay opacity per display mode: outlines fully drawn, fills see-through.
OPACITY = {"outlines": 1.0, "filled": 0.45}
#: Columns of a preview table (``{m}``: the marker): what the overlay, centroids and hover use.
PREVIEW_COLUMNS = (
    "cell_id",
    "y_um",
    "x_um",
    "nucleus_area_um2",
    "excluded",
    "{m}_od",
    "{m}_positive",
    "{m}_bin",
    "{m}_manual",
)


def style_calls_layer(layer: Any, display: str) -> None:
    """Draw a call-overlay Labels layer as ``display`` (one of :data:`DISPLAY_MODES`)."""
    if display not in DISPLAY_MODES:
        raise ValueError(f"display must be one of {DISPLAY_MODES}, not {display!r}")
    layer.contour = OUTLINE_PX if display == "outlines" else 0
    layer.opacity = OPACITY[display]


def preview_cells(
    cells: pd.DataFrame, assay: Any, marker: str, threshold_od: float
) -> pd.DataFrame:
    """The per-cell table with ``marker``'s automatic calls re-made at ``threshold_od`` (OD).

    Parameters
    ----------
    cells : the corrected per-cell table (``<marker>_od``, ``_positive``, ``_bin``, ``_manual``).
    assay : the slide's :class:`senpath.config.Assay` (the marker's intensity bins).
    marker : the marker whose calls are previewed.
    threshold_od : the threshold to preview (mean OD in the marker's compartment).

    Returns
    -------
    The columns the overlay draws (:data:`PREVIEW_COLUMNS`, those ``cells`` has), copied, with
    ``<marker>_positive`` and ``<marker>_bin`` as they are at ``threshold_od``; calls set by hand
    (``<marker>_manual``) are kept. Only these columns: copying a whole table of 100 000s of cells
    at each slider rest would take seconds.
    """
    from senpath.score import call_marker

    rule = assay.marker(marker)
    auto_pos, auto_bin = call_marker(
        cells[f"{marker}_od"].to_numpy(dtype=np.float64), float(threshold_od), rule.bins_od
    )
    manual_col = f"{marker}_manual"
    manual = (
        cells[manual_col].to_numpy(dtype=bool)
        if manual_col in cells.columns
        else np.zeros(len(cells), dtype=bool)
    )
    wanted = [c.format(m=marker) for c in PREVIEW_COLUMNS]
    out = cells[[c for c in wanted if c in cells.columns]].copy()
    out[f"{marker}_positive"] = np.where(manual, out[f"{marker}_positive"], auto_pos)
    out[f"{marker}_bin"] = np.where(manual, out[f"{marker}_bin"], auto_bin).astype(
        cells[f"{marker}_bin"].dtype
    )
    return out


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


def legend_entries(mode: str) -> list[tuple[str, str]]:
    """(name, ``#rrggbb``) of each overlay class in colour ``mode`` (``call`` or ``bin``)."""
    L = _layers
    if mode == "bin":
        colours, order = L.BIN_COLOURS, (L.BIN3, L.BIN2, L.BIN1, L.NEGATIVE)
        names = {L.BIN3: "3+", L.BIN2: "2+", L.BIN1: "1+", L.NEGATIVE: "negative"}
    else:
        colours, order = L.CALL_COLOURS, (L.BIN1, L.NEGATIVE)
        names = {L.BIN1: "positive", L.NEGATIVE: "negative"}
    entries = [(names[k], _hex(colours[k])) for k in order]
    for k in (L.MANUAL_POSITIVE, L.MANUAL_NEGATIVE, L.EXCLUDED):
        entries.append((L.CLASS_NAMES[k], _hex(colours[k])))
    return entries


def legend_html(mode: str) -> str:
    """The legend as Qt rich text: a coloured square and a name per overlay class."""
    return " &nbsp;".join(
        f'<span style="color:{colour}">&#9632;</span>&nbsp;{name}'
        for name, colour in legend_entries(mode)
    )


def cell_text(row: pd.Series, marker: str) -> str:
    """One line about a cell: id, the marker's OD and call, by hand or excluded, nucleus area."""
    if row[f"{marker}_positive"]:
        call = f"positive {int(row[f'{marker}_bin'])}+"
    else:
        call = "negative"
    manual = " (set by hand)" if row.get(f"{marker}_manual", False) else ""
    excluded = ", EXCLUDED" if row.get("excluded", False) else ""
    od = float(row[f"{marker}_od"])
    od_text = "–" if math.isnan(od) else f"{od:.3f}"
    return (
        f"cell {int(row['cell_id'])}: {marker} OD {od_text}, {call}{manual}{excluded}; "
        f"nucleus {row['nucleus_area_um2']:.0f} µm²"
    )
