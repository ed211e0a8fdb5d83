"""Figures and a review order for a reviewer: a marker's live figures and the cells nearest its
threshold first."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.config import Assay
from senpath.score import call_marker, marker_figures

# ------------------------------------------------------------------------------------ statistics


def marker_stats(
    cells: pd.DataFrame, assay: Assay, marker: str, *, threshold_od: float | None = None
) -> dict[str, Any]:
    """Live figures of one marker: n cells, n positive, % positive and H-score (excluded left out).

    With ``threshold_od``, the figures the slide would have at that threshold (manual calls kept);
    without, the current calls.
    """
    rule = assay.marker(marker)
    if "excluded" in cells.columns:
        cells = cells[~cells["excluded"].to_numpy(dtype=bool)]
    pos = cells[f"{marker}_positive"].to_numpy(dtype=bool)
    bins = cells[f"{marker}_bin"].to_numpy()
    if threshold_od is not None:
        auto_pos, auto_bin = call_marker(
            cells[f"{marker}_od"].to_numpy(dtype=np.float64), float(threshold_od), rule.bins_od
        )
        manual = (
            cells[f"{marker}_manual"].to_numpy(dtype=bool)
            if f"{marker}_manual" in cells.columns
            else np.zeros(len(cells), dtype=bool)
        )
        pos = np.where(manual, pos, auto_pos)
        bins = np.where(manual, bins, auto_bin)
    figures = marker_figures(pos, bins)
    return {
        "marker": marker,
        **{k: figures[k] for k in ("n_cells", "n_positive", "pct_positive", "h_score")},
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
