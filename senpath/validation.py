"""Compare per-cell calls with ground truth (synthetic slides, annotated tiles).

Cells are paired one-to-one by nucleus centroid (optimal assignment within a distance in µm), then
detection (precision, recall, F1) and per-marker positivity agreement on the paired cells are
reported. A missed or spurious cell counts against detection, not against marker agreement; the
slide-level figures (% positive, H-score) are compared on all cells, as a user would read them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from senpath.score import h_score


def match_cells(
    pred_xy_um: np.ndarray, truth_xy_um: np.ndarray, *, max_distance_um: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pair predicted and true cells one-to-one by centroid distance.

    Parameters
    ----------
    pred_xy_um, truth_xy_um : (N, 2), (M, 2) float
        Centroids in µm.
    max_distance_um : pairs further apart than this are not made.

    Returns
    -------
    (pred_index, truth_index) : int arrays of equal length, the matched pairs.
    """
    pred = np.asarray(pred_xy_um, dtype=np.float64).reshape(-1, 2)
    truth = np.asarray(truth_xy_um, dtype=np.float64).reshape(-1, 2)
    if len(pred) == 0 or len(truth) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tree = cKDTree(truth)
    pairs = tree.query_ball_point(pred, r=max_distance_um)
    rows, cols, dists = [], [], []
    for i, js in enumerate(pairs):
        for j in js:
            rows.append(i)
            cols.append(j)
            dists.append(float(np.hypot(*(pred[i] - truth[j]))))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # optimal assignment on the sparse candidate pairs (components are small: a dense matrix over
    # the candidates' rows/cols is fine)
    r_idx, r_inv = np.unique(rows, return_inverse=True)
    c_idx, c_inv = np.unique(cols, return_inverse=True)
    cost = np.full((len(r_idx), len(c_idx)), 1e6)
    cost[r_inv, c_inv] = dists
    ri, ci = linear_sum_assignment(cost)
    ok = cost[ri, ci] < 1e6
    return r_idx[ri[ok]].astype(np.int64), c_idx[ci[ok]].astype(np.int64)


def _f1(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else math.nan


def compare_with_truth(
    cells: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    markers: list[str],
    max_distance_um: float = 4.0,
) -> dict[str, Any]:
    """Detection and marker agreement of a scored per-cell table with a truth table.

    Parameters
    ----------
    cells : scored per-cell table (``x_um``, ``y_um``, ``{m}_positive``, ``{m}_bin``).
    truth : truth table (``x_um``, ``y_um``, ``{m}_positive``, ``{m}_level``).
    markers : markers to compare.

    Returns
    -------
    dict with ``detection`` {tp, fp, fn, precision, recall, f1} and per marker {f1 (positivity on
    paired cells), pct_positive, pct_positive_truth, h_score, h_score_truth}.
    """
    pi, ti = match_cells(
        cells[["x_um", "y_um"]].to_numpy(), truth[["x_um", "y_um"]].to_numpy(),
        max_distance_um=max_distance_um,
    )  # fmt: skip
    tp = len(pi)
    fp, fn = len(cells) - tp, len(truth) - tp
    out: dict[str, Any] = {
        "detection": {
            "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / len(cells) if len(cells) else math.nan,
            "recall": tp / len(truth) if len(truth) else math.nan,
            "f1": _f1(tp, fp, fn),
        }
    }  # fmt: skip
    for m in markers:
        p = cells[f"{m}_positive"].to_numpy(dtype=bool)[pi]
        t = truth[f"{m}_positive"].to_numpy(dtype=bool)[ti]
        mtp = int((p & t).sum())
        mfp = int((p & ~t).sum())
        mfn = int((~p & t).sum())
        out[m] = {
            "f1": _f1(mtp, mfp, mfn),
            "pct_positive": 100.0 * float(cells[f"{m}_positive"].mean())
            if len(cells)
            else math.nan,
            "pct_positive_truth": 100.0 * float(truth[f"{m}_positive"].mean()),
            "h_score": h_score(cells[f"{m}_bin"].to_numpy()),
            "h_score_truth": h_score(truth[f"{m}_level"].to_numpy()),
            "bin_agreement": float(
                np.mean(cells[f"{m}_bin"].to_numpy()[pi] == truth[f"{m}_level"].to_numpy()[ti])
            )
            if tp
            else math.nan,
        }
    return out
