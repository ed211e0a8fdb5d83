import math

import numpy as np
import pandas as pd
import pytest

from senpath.config import get_assay
from senpath.score import allred_score, h_score, score_cells, summarize_markers, wilson_interval


def test_h_score_and_allred_by_hand():
    bins = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    assert h_score(bins) == pytest.approx(1 * 20 + 2 * 10 + 3 * 30)
    # 60% positive -> proportion 4; mean positive intensity (1+1+2+3+3+3)/6 = 2.17 -> 2
    assert allred_score(bins) == 6
    assert allred_score(np.zeros(5, int)) == 0
    assert allred_score(np.array([1] + [0] * 199)) == 1 + 1  # 0.5% positive, weak


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(23.66, abs=0.01) and hi == pytest.approx(76.34, abs=0.01)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_score_cells_dual_assay_phenotype():
    assay = get_assay("sabgal+ki67")
    cells = pd.DataFrame(
        {
            "cell_id": [1, 2, 3, 4],
            "nucleus_area_um2": [30.0, 30.0, 90.0, 30.0],
            "xgal_od_p75_perinuclear": [0.05, 0.30, 0.80, 0.40],
            "dab_od_mean_nucleus": [0.50, 0.02, 0.03, 0.20],
        }
    )
    s = score_cells(cells, assay)
    assert list(s["sabgal_positive"]) == [False, True, True, True]
    assert list(s["sabgal_bin"]) == [0, 1, 3, 2]
    assert list(s["ki67_positive"]) == [True, False, False, True]
    assert list(s["senescent"]) == [False, True, True, False]
    assert list(s["enlarged_nucleus"]) == [False, False, True, False]
    summary = summarize_markers(s, assay)
    assert summary["markers"]["sabgal"]["pct_positive"] == 75.0
    assert summary["markers"]["ki67"]["labelling_index"] == 50.0
    assert summary["senescent_index"] == 50.0


def test_threshold_override_and_exclusion():
    assay = get_assay("ki67")
    cells = pd.DataFrame({"cell_id": [1, 2], "nucleus_area_um2": [30.0, 30.0],
                          "dab_od_mean_nucleus": [0.2, 0.5]})  # fmt: skip
    s = score_cells(cells, assay, thresholds={"ki67": 0.4})
    assert list(s["ki67_positive"]) == [False, True]
    assert list(s["ki67_bin"]) == [0, 2]  # below the moved threshold a cell is binned 0
    s["excluded"] = [False, True]
    assert summarize_markers(s, assay)["n_cells"] == 1


def test_rule_statistic_and_compartment_choose_the_column():
    from senpath.config import MarkerRule
    from senpath.score import marker_value_column

    rule = MarkerRule(name="sabgal", stain="xgal", compartment="perinuclear", statistic="p75")
    assert marker_value_column(rule) == "xgal_od_p75_perinuclear"
    assert marker_value_column(get_assay("p16").marker("p16")) == "dab_od_mean_nucleus_perinuclear"


def test_auto_threshold_splits_two_populations_and_is_bounded():
    from senpath.score import auto_threshold

    rng = np.random.default_rng(0)
    neg = rng.normal(0.03, 0.015, 400)
    pos = rng.normal(0.45, 0.08, 100)
    thr, clipped = auto_threshold(np.concatenate([neg, pos, [np.nan]]), bounds_od=(0.08, 0.5))
    assert 0.1 < thr < 0.35 and not clipped
    # one population (no positive cell): Otsu lands in the noise; the lower bound holds
    thr, clipped = auto_threshold(neg, bounds_od=(0.08, 0.5))
    assert thr == 0.08 and clipped
    # everything strongly stained: the upper bound holds
    thr, clipped = auto_threshold(
        np.concatenate([rng.normal(0.9, 0.05, 200), rng.normal(1.6, 0.05, 200)])
    )
    assert thr == 0.5 and clipped


def test_slide_thresholds_auto_is_reported_and_used():
    from senpath.score import MIN_CELLS_AUTO_THRESHOLD, slide_thresholds

    assay = get_assay("ki67")
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.05, 0.01, 150), rng.normal(0.35, 0.03, 50)])
    cells = pd.DataFrame({"cell_id": np.arange(1, 201), "nucleus_area_um2": 30.0,
                          "dab_od_mean_nucleus": values})  # fmt: skip
    fixed = slide_thresholds(cells, assay)
    assert fixed["ki67"] == {"threshold_od": 0.15, "source": "rule"}
    info = slide_thresholds(cells, assay, auto=True, bounds_od=(0.08, 0.5))["ki67"]
    assert info["source"] == "auto" and 0.1 < info["threshold_od"] < 0.3
    thr = {"ki67": info["threshold_od"]}
    s = score_cells(cells, assay, thresholds=thr)
    assert s["ki67_positive"].sum() == 50
    assert (
        summarize_markers(s, assay, thresholds=thr)["markers"]["ki67"]["threshold_od"]
        == thr["ki67"]
    )
    few = slide_thresholds(cells.head(MIN_CELLS_AUTO_THRESHOLD - 1), assay, auto=True)["ki67"]
    assert few["source"] == "rule" and "kept the rule" in few["auto_skipped"]


def test_call_marker_by_hand() -> None:
    from senpath.score import call_marker

    od = np.array([np.nan, 0.0, 0.1, 0.15, 0.2, 0.4, 0.9])
    positive, bins = call_marker(od, 0.12, (0.15, 0.375, 0.70))
    assert positive.tolist() == [False, False, False, True, True, True, True]
    # a positive cell under the 1+ edge is 1+; a negative cell above it would be 0
    assert bins.tolist() == [0, 0, 0, 1, 1, 2, 3] and bins.dtype == np.int8
    positive, bins = call_marker(od, 0.5, (0.15, 0.375, 0.70))
    assert bins.tolist() == [0, 0, 0, 0, 0, 0, 3]


def test_manual_bin_and_phenotypes_by_hand() -> None:
    from senpath.config import MarkerRule
    from senpath.score import manual_bin, phenotype_flags

    rule = MarkerRule("m", "dab", "nucleus", bins_od=(0.15, 0.375, 0.70))
    assert [manual_bin(rule, od, True) for od in (0.0, 0.2, 0.5, 0.8)] == [1, 1, 2, 3]
    assert manual_bin(rule, 0.8, False) == 0
    calls = {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0, 1, 0], bool)}
    assert phenotype_flags(calls, ("a+", "b-"), 4).tolist() == [False, True, False, False]
    assert phenotype_flags(calls, (), 4).tolist() == [True] * 4


def test_marker_figures_by_hand() -> None:
    from senpath.score import marker_figures

    fig = marker_figures(np.array([1, 1, 0, 0], bool), np.array([1, 3, 0, 0]))
    assert fig["n_cells"] == 4 and fig["n_positive"] == 2 and fig["pct_positive"] == 50.0
    assert fig["h_score"] == 100.0  # 1 x 25% + 3 x 25%
    assert fig["allred"] == 4 + 2  # proportion: 1/3 < 50% <= 2/3 -> 4; intensity: mean(1, 3) = 2
    empty = marker_figures(np.zeros(0, bool), np.zeros(0))
    assert empty["n_cells"] == 0 and np.isnan(empty["pct_positive"]) and empty["allred"] is None
