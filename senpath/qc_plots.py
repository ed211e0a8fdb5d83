"""QC pictures of one slide's store (``qc_histograms.png``), drawn with matplotlib's object API.

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
    """One slide's QC picture: a histogram per marker of the per-cell OD it is called on.

    Parameters
    ----------
    cells : the slide's scored per-cell table (``<marker>_od`` columns).
    thresholds : marker name -> threshold in OD the slide was scored with (drawn as a line).
    """
    markers = [m for m in thresholds if f"{m}_od" in cells.columns]
    fig = figure(4.5 * max(1, len(markers)), 3.2)
    if not markers:
        fig.text(0.5, 0.5, "no marker in this assay", ha="center", va="center")
        return png_bytes(fig)
    if "excluded" in cells.columns:
        cells = cells[~cells["excluded"].astype(bool)]
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
    return png_bytes(fig)
