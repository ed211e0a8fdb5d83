"""QC pictures of one slide's store (``qc_histograms.png``; the overlay is :mod:`senpath.qc_overlay`), drawn with matplotlib's object API.

Written by the pipeline when it commits a slide and rewritten by a review when thresholds change; the
batch report (:mod:`senpath.report`) draws with the same helpers.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure of ``width`` x ``height`` inches at 100 dpi (no pyplot state)."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, Agg canvas

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def slide_histograms_png(cells: pd.DataFrame, thresholds: dict[str, float]) -> bytes:
    """:func:`slide_histograms_figure` as PNG bytes (the store's ``qc_histograms.png``)."""
    return png_bytes(slide_histograms_figure(cells, thresholds))


def slide_histograms_figure(cells: pd.DataFrame, thresholds: dict[str, float]) -> Any:
    """One slide's QC picture: a histogram per marker of the per-cell OD it is called on.

    For an assay without a marker (H&E) it is the distribution of nucleus areas instead, with the
    median marked: the figure to check segmentation by (too small = fragments, too large = merges).

    Parameters
    ----------
    cells : the slide's scored per-cell table (``<marker>_od`` columns).
    thresholds : marker name -> threshold in OD the slide was scored with (drawn as a line).
    """
    markers = [m for m in thresholds if f"{m}_od" in cells.columns]
    fig = figure(4.5 * max(1, len(markers)), 3.2)
    if "excluded" in cells.columns:
        cells = cells[~cells["excluded"].astype(bool)]
    if not markers:
        _nucleus_area_histogram(fig.add_subplot(1, 1, 1), cells)
        return fig
    for i, marker in enumerate(markers, start=1):
        ax = fig.add_subplot(1, len(markers), i)
        od = cells[f"{marker}_od"].to_numpy(dtype=float)
        od = od[np.isfinite(od)]
        t = float(thresholds[marker])
        hi = max(float(np.percentile(od, 99.5)) if od.size else 0.0, t) * 1.1 or 1.0
        if od.size:
            ax.hist(od, bins=60, range=(min(0.0, float(od.min())), hi), color="0.45")
        ax.axvline(t, color="crimson", linestyle="--", label=f"threshold {t:g} OD")
        n_pos = int((od >= t).sum())
        ax.set_title(f"{marker}: {n_pos}/{od.size} positive", fontsize="medium")
        ax.set_xlabel(f"{marker} OD")
        ax.set_ylabel("cells")
        ax.legend(fontsize="small")
    return fig


def _nucleus_area_histogram(ax: Any, cells: pd.DataFrame) -> None:
    """Nucleus areas (µm²) of a marker-free slide on ``ax``, with the median as a line."""
    area = cells["nucleus_area_um2"].to_numpy(dtype=float) if len(cells) else np.zeros(0)
    area = area[np.isfinite(area)]
    if area.size:
        hi = float(np.percentile(area, 99.5)) * 1.1 or 1.0
        ax.hist(area, bins=60, range=(0.0, hi), color="0.45")
        median = float(np.median(area))
        ax.axvline(median, color="crimson", linestyle="--", label=f"median {median:.0f} µm²")
        ax.legend(fontsize="small")
    ax.set_title(f"nucleus area, {area.size} nuclei (no marker in this assay)", fontsize="medium")
    ax.set_xlabel("nucleus area (µm²)")
    ax.set_ylabel("nuclei")
