"""Marker calls per cell and marker summaries per slide.

Per cell: the marker's stain OD in its compartment, positive/negative at the rule's threshold, an
intensity bin 0/1+/2+/3+, phenotypes that combine markers on the same cells (``senescent`` =
``sabgal+ ki67-``), and an enlarged-nucleus flag relative to the slide's own nucleus sizes.

Per slide: n cells, n positive, % positive with a Wilson 95% interval, H-score (0-300), Allred score
(0, 2-8), labelling index (of a marker whose rule says so: Ki67), senescence index (fraction of cells
with the senescent phenotype).

This module is the one place these rules live: the pipeline's summary, the per-patient export, the
reviewer's live figures and the replay of corrections all call :func:`call_marker`,
:func:`phenotype_flags` / :func:`add_phenotypes` and :func:`marker_figures`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.config import Assay, MarkerRule

#: A nucleus is "enlarged" when its area is at least this many times the slide's median nucleus area.
ENLARGED_NUCLEUS_FACTOR = 2.0


def marker_value_column(rule: MarkerRule) -> str:
    """Per-cell table column holding the value a rule thresholds (``dab_od_mean_nucleus``)."""
    return f"{rule.stain}_od_{rule.statistic}_{rule.compartment}"


def intensity_bins(values: np.ndarray, bins_od: tuple[float, float, float]) -> np.ndarray:
    """0/1/2/3 intensity bins for OD values (edges are the lower bounds of 1+, 2+, 3+)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    return np.searchsorted(np.asarray(bins_od), v, side="right").astype(np.int8)


def call_marker(
    values: np.ndarray, threshold_od: float, bins_od: tuple[float, float, float]
) -> tuple[NDArray[np.bool_], NDArray[np.int8]]:
    """The marker call of cells: positive at ``threshold_od`` and the intensity bin that agrees.

    Parameters
    ----------
    values : (N,) float, the marker's per-cell OD (NaN: no value, called negative).
    threshold_od : positive when the value is at least this (OD).
    bins_od : lower OD edges of the bins 1+, 2+, 3+.

    Returns
    -------
    (positive, bins) : (N,) bool and (N,) int8 0-3; a negative cell is 0, a positive one at least 1+.
    """
    v = np.asarray(values, dtype=np.float64)
    positive = np.nan_to_num(v, nan=0.0) >= float(threshold_od)
    bins = intensity_bins(v, bins_od)
    bins = np.where(positive, np.maximum(bins, 1), 0).astype(np.int8)
    return positive, bins


def manual_bin(rule: MarkerRule, od: float, positive: bool) -> int:
    """The intensity bin of a cell a person calls ``positive``: its OD bin, at least 1+ (0 if negative)."""
    return int(call_marker(np.array([od]), -math.inf if positive else math.inf, rule.bins_od)[1][0])


def phenotype_flags(
    calls: Mapping[str, np.ndarray], terms: tuple[str, ...] | list[str], n: int
) -> NDArray[np.bool_]:
    """Cells with a phenotype: every term (``"sabgal+"``, ``"ki67-"``) holds for the cell's calls.

    Parameters
    ----------
    calls : marker -> (N,) bool positive calls.
    terms : the phenotype's required calls.
    n : number of cells.
    """
    flag = np.ones(n, dtype=bool)
    for term in terms:
        pos = np.asarray(calls[term[:-1]], dtype=bool)
        flag &= pos if term[-1] == "+" else ~pos
    return flag


def add_phenotypes(cells: pd.DataFrame, assay: Assay) -> None:
    """Set one bool column per phenotype of ``assay`` from the table's ``<marker>_positive`` calls
    (in place)."""
    calls = {r.name: cells[f"{r.name}_positive"].to_numpy(dtype=bool) for r in assay.markers}
    for pheno, terms in assay.phenotypes.items():
        cells[pheno] = phenotype_flags(calls, terms, len(cells))


#: Fewer cells with a finite value than this → no automatic threshold (the rule's is kept).
MIN_CELLS_AUTO_THRESHOLD = 50


def auto_threshold(
    values: np.ndarray, *, bounds_od: tuple[float, float] = (0.08, 0.5)
) -> tuple[float, bool]:
    """Otsu threshold of per-cell marker OD values, bounded to ``bounds_od``.

    Otsu's split maximises the between-class variance of negative and positive cells; the bounds stop
    a slide with no positive cells (one mode: the split lands in the noise) or almost all positive
    from getting an absurd threshold. Values are clipped to twice the upper bound first so a few very
    dark cells do not pull the split upwards.

    Parameters
    ----------
    values : (N,) float OD values (NaN ignored).
    bounds_od : (low, high) OD.

    Returns
    -------
    (threshold_od, clipped) : the threshold and whether a bound was applied.
    """
    lo, hi = float(bounds_od[0]), float(bounds_od[1])
    v = np.asarray(values, dtype=np.float64)
    v = np.clip(v[np.isfinite(v)], 0.0, 2.0 * hi)
    if v.size < 2 or np.ptp(v) == 0:
        return lo, True
    counts, edges = np.histogram(v, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = v.size - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] + counts[-1] * centres[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    # split after bin k; with an empty gap between the classes every split in the gap is optimal:
    # take the middle of the gap, not its lower edge (skimage's threshold_otsu takes the first)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    raw = float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)
    thr = float(np.clip(raw, lo, hi))
    return thr, thr != raw


def slide_thresholds(
    cells: pd.DataFrame,
    assay: Assay,
    *,
    auto: bool = False,
    bounds_od: tuple[float, float] = (0.08, 0.5),
) -> dict[str, dict[str, Any]]:
    """The OD threshold of every marker on one slide, with where it came from.

    Returns ``{marker: {"threshold_od", "source", ...}}``: ``source`` is ``rule`` (the assay or profile's
    ``threshold_od``) or ``auto`` (:func:`auto_threshold` of this slide's cells, with ``auto_clipped``).
    With ``auto`` and fewer than :data:`MIN_CELLS_AUTO_THRESHOLD` cells, the rule's threshold is kept and
    ``auto_skipped`` says why.
    """
    out: dict[str, dict[str, Any]] = {}
    for rule in assay.markers:
        entry: dict[str, Any] = {"threshold_od": float(rule.threshold_od), "source": "rule"}
        if auto:
            col = marker_value_column(rule)
            values = cells[col].to_numpy(dtype=np.float64) if col in cells.columns else np.zeros(0)
            n = int(np.isfinite(values).sum())
            if n >= MIN_CELLS_AUTO_THRESHOLD:
                thr, clipped = auto_threshold(values, bounds_od=bounds_od)
                entry = {
                    "threshold_od": thr,
                    "source": "auto",
                    "auto_clipped": clipped,
                    "auto_bounds_od": [float(bounds_od[0]), float(bounds_od[1])],
                    "rule_threshold_od": float(rule.threshold_od),
                }
            else:
                entry["auto_skipped"] = (
                    f"{n} cells < {MIN_CELLS_AUTO_THRESHOLD}: kept the rule's threshold"
                )
        out[rule.name] = entry
    return out


class ControlError(ValueError):
    """A negative control that cannot give a batch its cut-offs (too few cells, no marker values)."""


def control_thresholds(
    cells: pd.DataFrame,
    assay: Assay,
    *,
    percentile: float,
    min_cells: int,
    control_slide_id: str,
    batch: str | None,
) -> dict[str, dict[str, Any]]:
    """Each marker's cut-off from a negative control: a percentile of its per-cell marker OD.

    Parameters
    ----------
    cells : the negative control's per-cell table (measured; excluded cells left out by the caller).
    assay : the batch's assay (its marker rules name the OD columns).
    percentile : e.g. 99: the OD that 99 % of the control's cells stay under.
    min_cells : fewest cells with a marker value the percentile may rest on.
    control_slide_id, batch : recorded with each cut-off.

    Returns
    -------
    ``{marker: {"threshold_od", "source": "control", "control_slide_id", "batch",
    "control_percentile", "control_n_cells", "rule_threshold_od"}}`` (as :func:`slide_thresholds`).

    Raises
    ------
    ControlError
        When the control has fewer than ``min_cells`` cells with a marker value.
    """
    out: dict[str, dict[str, Any]] = {}
    for rule in assay.markers:
        col = marker_value_column(rule)
        values = cells[col].to_numpy(dtype=np.float64) if col in cells.columns else np.zeros(0)
        values = values[np.isfinite(values)]
        if values.size < min_cells:
            raise ControlError(
                f"negative control {control_slide_id!r}"
                + (f" of batch {batch!r}" if batch else "")
                + f" has {values.size} cells with a {rule.name} value, fewer than the "
                f"{min_cells} its cut-off needs (control_min_cells): image more of the control"
            )
        out[rule.name] = {
            "threshold_od": float(np.percentile(values, percentile)),
            "source": "control",
            "control_slide_id": control_slide_id,
            "batch": batch,
            "control_percentile": float(percentile),
            "control_n_cells": int(values.size),
            "rule_threshold_od": float(rule.threshold_od),
        }
    return out


@dataclass(frozen=True)
class ControlCutoff:
    """Where a slide's marker cut-offs come from when its batch has a negative control.

    Attributes
    ----------
    control_slide_id, batch : the batch's negative control and the batch's name.
    percentile, min_cells : see :func:`control_thresholds` (``control_percentile`` and
        ``control_min_cells`` of the settings).
    thresholds : the control's cut-offs (``{marker: record}``, as :func:`control_thresholds`
        gives them) for the batch's other slides; ``None`` for the control itself, whose cut-offs
        come from its own cells.
    """

    control_slide_id: str
    batch: str | None
    percentile: float
    min_cells: int
    thresholds: Mapping[str, Mapping[str, Any]] | None = None

    def for_cells(self, cells: pd.DataFrame, assay: Assay) -> dict[str, dict[str, Any]]:
        """The threshold records of a slide with these ``cells`` (see :func:`slide_thresholds`)."""
        if self.thresholds is None:
            return control_thresholds(
                cells, assay, percentile=self.percentile, min_cells=self.min_cells,
                control_slide_id=self.control_slide_id, batch=self.batch,
            )  # fmt: skip
        return {m: dict(v) for m, v in self.thresholds.items()}

    def identity(self) -> dict[str, Any]:
        """What makes a store scored this way current (JSON-ready, for the resume identity)."""
        return {
            "control_slide_id": self.control_slide_id,
            "batch": self.batch,
            "percentile": self.percentile,
            "min_cells": self.min_cells,
            "thresholds": None
            if self.thresholds is None
            else {m: float(v["threshold_od"]) for m, v in sorted(self.thresholds.items())},
        }


def score_cells(
    cells: pd.DataFrame,
    assay: Assay,
    *,
    thresholds: dict[str, float] | None = None,
    enlarged_factor: float = ENLARGED_NUCLEUS_FACTOR,
) -> pd.DataFrame:
    """Add marker calls to a per-cell table (returns a new table).

    Parameters
    ----------
    cells : per-cell table from :func:`senpath.measure.measure_cells`.
    assay : the slide's assay (its marker rules and phenotypes).
    thresholds : optional per-marker OD thresholds overriding the assay's (e.g. a saved profile).
    enlarged_factor : enlarged-nucleus flag at this multiple of the slide's median nucleus area.

    Adds, per marker ``m``: ``m_od`` (the thresholded value), ``m_positive`` (bool), ``m_bin`` (0-3);
    then one bool column per phenotype and ``enlarged_nucleus``.
    """
    out = cells.copy()
    thresholds = thresholds or {}
    for rule in assay.markers:
        col = marker_value_column(rule)
        if col not in out.columns:
            raise KeyError(f"per-cell table lacks {col!r} needed by marker {rule.name!r}")
        thr = float(thresholds.get(rule.name, rule.threshold_od))
        values = out[col].to_numpy(dtype=np.float64)
        positive, bins = call_marker(values, thr, rule.bins_od)
        out[f"{rule.name}_od"] = values
        out[f"{rule.name}_positive"] = positive
        out[f"{rule.name}_bin"] = bins
    add_phenotypes(out, assay)
    if "nucleus_area_um2" in out.columns and len(out):
        median = float(np.median(out["nucleus_area_um2"]))
        out["enlarged_nucleus"] = out["nucleus_area_um2"] >= enlarged_factor * median
    else:
        out["enlarged_nucleus"] = np.zeros(len(out), dtype=bool)
    return out


def wilson_interval(k: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for a proportion k/n, as percentages (NaN when n = 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def h_score(bins: np.ndarray) -> float:
    """H-score = 1 × %1+ + 2 × %2+ + 3 × %3+ (0-300; NaN for no cells)."""
    bins = np.asarray(bins)
    if bins.size == 0:
        return math.nan
    return float(sum(level * 100.0 * np.mean(bins == level) for level in (1, 2, 3)))


def allred_score(bins: np.ndarray) -> int | None:
    """Allred score: proportion score (0-5) + intensity score of positive cells (1-3); 0 when none positive."""
    bins = np.asarray(bins)
    if bins.size == 0:
        return None
    frac = float(np.mean(bins > 0))
    if frac == 0:
        return 0
    proportion = (
        1
        if frac < 0.01
        else 2
        if frac <= 0.10
        else 3
        if frac <= 1 / 3
        else 4
        if frac <= 2 / 3
        else 5
    )
    intensity = int(np.clip(np.rint(bins[bins > 0].mean()), 1, 3))
    return proportion + intensity


def proportion_figures(flags: np.ndarray) -> dict[str, Any]:
    """``n``, ``k`` (cells flagged), ``pct`` and its Wilson 95% interval ``ci95`` (NaN for no cells)."""
    flags = np.asarray(flags, dtype=bool)
    n, k = len(flags), int(flags.sum())
    return {"n": n, "k": k, "pct": 100.0 * k / n if n else math.nan, "ci95": wilson_interval(k, n)}


def marker_figures(positive: np.ndarray, bins: np.ndarray) -> dict[str, Any]:
    """A marker's figures over a set of cells (the caller leaves excluded cells out).

    Returns ``n_cells``, ``n_positive``, ``pct_positive``, ``pct_positive_ci95`` (Wilson, %),
    ``h_score`` (0-300) and ``allred`` (0, 2-8; ``None`` for no cells).
    """
    share = proportion_figures(positive)
    return {
        "n_cells": share["n"],
        "n_positive": share["k"],
        "pct_positive": share["pct"],
        "pct_positive_ci95": share["ci95"],
        "h_score": h_score(bins),
        "allred": allred_score(bins),
    }


def summarize_markers(
    scored: pd.DataFrame, assay: Assay, *, thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    """Per-slide summary of a scored per-cell table (excluded cells are left out).

    Returns a JSON-ready dict: ``n_cells``, ``markers`` {name: {n_cells, n_positive, pct_positive,
    pct_positive_ci95, h_score, allred, threshold_od, ...}}, phenotype fractions (``senescence_index``),
    ``median_nucleus_area_um2``.
    """
    if "excluded" in scored.columns:
        scored = scored[~scored["excluded"].astype(bool)]
    n = len(scored)
    summary: dict[str, Any] = {"assay": assay.name, "n_cells": n, "markers": {}}
    for rule in assay.markers:
        figures = marker_figures(
            scored[f"{rule.name}_positive"].to_numpy(dtype=bool),
            scored[f"{rule.name}_bin"].to_numpy(),
        )
        entry: dict[str, Any] = {
            "stain": rule.stain,
            "compartment": rule.compartment,
            **figures,
            "pct_positive_ci95": list(figures["pct_positive_ci95"]),
            "value_column": marker_value_column(rule),
            "threshold_od": float((thresholds or {}).get(rule.name, rule.threshold_od)),
            "bins_od": list(rule.bins_od),
        }
        if rule.labelling_index:
            entry["labelling_index"] = entry["pct_positive"]
        summary["markers"][rule.name] = entry
    for pheno in assay.phenotypes:
        share = proportion_figures(scored[pheno].to_numpy(dtype=bool))
        summary[f"{pheno}_index"] = share["pct"]
        summary[f"{pheno}_index_ci95"] = list(share["ci95"])
        summary[f"n_{pheno}"] = share["k"]
    summary["median_nucleus_area_um2"] = (
        float(np.median(scored["nucleus_area_um2"])) if n else math.nan
    )
    summary["n_enlarged_nucleus"] = int(scored["enlarged_nucleus"].sum()) if n else 0
    return summary
