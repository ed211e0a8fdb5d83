"""Culture experiments: wells and conditions from the sample sheet, their statistics, plate maps.

The statistics are checked on a tiny table against values worked out by hand (formulas in the
comments); a small plate of synthetic SA-β-gal wells (stains turned away from the pipeline's
vectors) checks the figures against per-cell truth, the exports, the report, and that a well whose
stains do not match its assay stays out of the figures unless asked for.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import senpath
from senpath import synth
from senpath.cli import app
from senpath.conditions import (
    ConditionError,
    condition_table,
    default_reference,
    mean_ci,
    mean_difference,
    pooled_difference,
    well_table,
)
from senpath.config import AnalysisConfig
from senpath.export import load_all
from senpath.pipeline import run_batch
from senpath.plate import canonical_well, parse_well, plate_format, read_layout
from senpath.report import render_report
from senpath.samplesheet import SampleSheetError, read_sample_sheet
from senpath.stain import unit
from senpath.validation import match_cells

ASSAYS = senpath.config.load_assays()

# ------------------------------------------------------------------------------------ well names


@pytest.mark.parametrize(
    ("text", "expected"),
    [("A1", (0, 0)), ("a01", (0, 0)), ("H12", (7, 11)), ("B03", (1, 2)), ("P24", (15, 23))],
)
def test_well_names(text, expected):
    assert parse_well(text) == expected
    assert canonical_well(text) == f"{text[0].upper()}{expected[1] + 1:02d}"


@pytest.mark.parametrize("text", ["Q1", "A0", "A25", "1A", "AA1", "", "A-1"])
def test_bad_well_names(text):
    with pytest.raises(ValueError, match="is not a well name"):
        parse_well(text)


def test_plate_format_is_the_smallest_that_fits():
    assert plate_format(["A1", "B3"]) == (2, 3)
    assert plate_format(["A1", "C4"]) == (3, 4)
    assert plate_format(["H12"]) == (8, 12)
    assert plate_format(["A13"]) == (16, 24)


def test_sample_sheet_layout_columns(tmp_path: Path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.tif").write_bytes(b"x")
    sheet = tmp_path / "s.csv"
    head = "patient_id,slide_id,path,assay,condition,plate,well,replicate\n"
    sheet.write_text(head + "E1,a,a.tif,sabgal,treated,p1,b3,1\n", encoding="utf-8")
    (job,), _ = read_sample_sheet(sheet, known_assays=ASSAYS)
    assert (job.condition, job.plate, job.well, job.replicate) == ("treated", "p1", "B03", "1")
    # a bad well name: one line naming the sheet, the row and the fix
    sheet.write_text(head + "E1,a,a.tif,sabgal,treated,p1,Z9,1\n", encoding="utf-8")
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(sheet, known_assays=ASSAYS)
    assert err.value.problems == [
        f"{sheet}: row 2: well 'Z9' is not a well name: write a row letter A-P and a column 1-24 "
        "(A1, B03, H12, P24)"
    ]
    # one well given two conditions: the later row is reported, naming the first; the rest runs
    sheet.write_text(
        head + "E1,a,a.tif,sabgal,treated,p1,A1,1\nE1,b,b.tif,sabgal,untreated,p1,A01,1\n"
        "E1,c,c.tif,sabgal,untreated,p2,A01,1\n",
        encoding="utf-8",
    )
    jobs, problems = read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)
    assert [j.slide_id for j in jobs] == ["a", "c"]
    assert problems == [
        f"{sheet}: row 3: well A01 of plate 'p1' is condition 'untreated' here but 'treated' in "
        "row 2: one well holds one condition"
    ]


# ------------------------------------------------------------------------------------ statistics


def _wells(rows):
    """A well table as :func:`well_table` gives it, from (condition, well, replicate, k, n)."""
    return pd.DataFrame(
        [
            {
                "condition": c, "plate": "p", "well": w, "replicate": r, "unit": f"p:{w}",
                "n_slides": 1, "n_cells": n, "n_slides_unreliable": 0, "reliable": "yes",
                "sabgal_n_cells": n, "sabgal_n_positive": k, "sabgal_pct_positive": 100 * k / n,
            }
            for c, w, r, k, n in rows
        ]
    )  # fmt: skip


#: untreated wells 5, 10, 15 % of 100 cells; treated 30, 40, 50 %.
TINY = _wells(
    [("untreated", "A01", "", 5, 100), ("untreated", "A02", "", 10, 100),
     ("untreated", "A03", "", 15, 100), ("treated", "B01", "", 30, 100),
     ("treated", "B02", "", 40, 100), ("treated", "B03", "", 50, 100)]
)  # fmt: skip


def test_condition_statistics_match_hand_computed_values():
    table = condition_table(TINY).set_index("condition")
    assert list(table.index) == ["untreated", "treated"]  # the reference first
    assert (table["reference_condition"] == "untreated").all()
    assert (table["replicate_unit"] == "well").all()
    u, t = table.loc["untreated"], table.loc["treated"]
    # pooled: 30/300 and 120/300; Wilson p' = (p + z²/2n)/(1 + z²/n) ± z √(p(1-p)/n + z²/4n²)/(1 + z²/n)
    assert (u["sabgal_n_positive"], u["sabgal_n_cells"]) == (30, 300)
    assert u["sabgal_pct_positive"] == pytest.approx(10.0)
    assert u["sabgal_pct_positive_ci95_low"] == pytest.approx(7.0948, abs=1e-3)
    assert u["sabgal_pct_positive_ci95_high"] == pytest.approx(13.9166, abs=1e-3)
    assert t["sabgal_pct_positive_ci95_low"] == pytest.approx(34.6165, abs=1e-3)
    assert t["sabgal_pct_positive_ci95_high"] == pytest.approx(45.6363, abs=1e-3)
    # across wells: mean ± t(0.975, 2) s/√3 with t = 4.302653; untreated s = 5, treated s = 10;
    # 10 - 12.42 is clipped at 0 %
    assert u["sabgal_n_replicates"] == 3 and u["sabgal_replicate_mean_pct_positive"] == 10.0
    assert u["sabgal_replicate_sd_pct_positive"] == pytest.approx(5.0)
    assert u["sabgal_replicate_mean_pct_positive_ci95_low"] == 0.0
    assert u["sabgal_replicate_mean_pct_positive_ci95_high"] == pytest.approx(22.4207, abs=1e-3)
    assert t["sabgal_replicate_mean_pct_positive_ci95_low"] == pytest.approx(15.1586, abs=1e-3)
    assert t["sabgal_replicate_mean_pct_positive_ci95_high"] == pytest.approx(64.8414, abs=1e-3)
    # pooled difference 40 - 10 = 30 pp, Newcombe: d - √((p1-l1)² + (u0-p0)²), d + √((u1-p1)² + (p0-l0)²)
    assert t["sabgal_pooled_diff_pct_positive"] == pytest.approx(30.0)
    assert t["sabgal_pooled_diff_pct_positive_ci95_low"] == pytest.approx(23.3425, abs=1e-3)
    assert t["sabgal_pooled_diff_pct_positive_ci95_high"] == pytest.approx(36.3410, abs=1e-3)
    # Welch: se = √(25/3 + 100/3) = 6.455, df = 2.941 (Welch-Satterthwaite), t(0.975, df) = 3.2391
    assert t["sabgal_replicate_diff_pct_positive"] == pytest.approx(30.0)
    assert t["sabgal_replicate_diff_pct_positive_ci95_low"] == pytest.approx(9.2230, abs=1e-3)
    assert t["sabgal_replicate_diff_pct_positive_ci95_high"] == pytest.approx(50.7770, abs=1e-3)
    assert t["sabgal_replicate_diff_p_value"] == pytest.approx(0.019620, abs=1e-5)
    assert math.isnan(u["sabgal_replicate_diff_pct_positive"])  # the reference's own row


def test_replicates_pool_their_wells_and_are_the_unit():
    # two biological replicates per condition, two wells each: a replicate's % pools its wells
    wells = _wells(
        [("DMSO", "A01", "1", 4, 100), ("DMSO", "A02", "1", 6, 100),
         ("DMSO", "A03", "2", 12, 100), ("DMSO", "A04", "2", 18, 200),
         ("drug", "B01", "1", 30, 100), ("drug", "B02", "1", 50, 100),
         ("drug", "B03", "2", 60, 100), ("drug", "B04", "2", 20, 100)]
    )  # fmt: skip
    table = condition_table(wells).set_index("condition")
    assert table.loc["DMSO", "replicate_unit"] == "replicate"
    assert table.loc["drug", "reference_condition"] == "DMSO"
    # DMSO: replicate 1 = 10/200 = 5 %, replicate 2 = 30/300 = 10 % -> mean 7.5
    assert table.loc["DMSO", "sabgal_n_replicates"] == 2
    assert table.loc["DMSO", "sabgal_replicate_mean_pct_positive"] == pytest.approx(7.5)
    assert table.loc["drug", "sabgal_replicate_mean_pct_positive"] == pytest.approx(40.0)
    # with one value the spread is unknown: no CI rather than a made-up one
    one = condition_table(wells[wells["well"].isin(["A01", "B01"])]).set_index("condition")
    assert math.isnan(one.loc["drug", "sabgal_replicate_mean_pct_positive_ci95_low"])
    assert math.isnan(one.loc["drug", "sabgal_replicate_diff_p_value"])


def test_statistics_helpers_edge_cases():
    assert all(math.isnan(v) for v in mean_ci([]))
    assert mean_ci([12.0])[0] == 12.0 and math.isnan(mean_ci([12.0])[2])
    assert all(math.isnan(v) for v in pooled_difference(1, 0, 1, 10))
    assert mean_difference([1.0, 2.0], [1.0])[0] == pytest.approx(0.5)
    assert default_reference(["treated", "Untreated"]) == "Untreated"
    assert default_reference(["a", "b"]) is None
    assert default_reference(["control", "vehicle"]) is None  # two candidates: none is guessed
    with pytest.raises(ConditionError, match="reference condition 'none' .* treated, untreated"):
        condition_table(TINY, reference="none")
    no_ref = condition_table(
        TINY.assign(condition=TINY["condition"].map({"untreated": "a", "treated": "b"}))
    )
    assert "sabgal_pooled_diff_pct_positive" not in no_ref.columns


# ----------------------------------------------------------------------------- a synthetic plate


def _rotate(v, axis, degrees):
    k = unit(axis)
    t = np.radians(degrees)
    v = np.asarray(v, float)
    return v * np.cos(t) + np.cross(k, v) * np.sin(t) + k * (k @ v) * (1 - np.cos(t))


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Six wells of a 24-well plate (3 untreated, 3 treated, one field each, X-gal + nuclear fast
    red drawn with stain vectors turned 5-6° from the pipeline's), a second field of well B1, a
    well counterstained with eosin but run as SA-β-gal with nuclear fast red (stain mismatch), and a negative stain control (a
    batch of its own)."""
    from senpath.synth import _rendering

    tmp = tmp_path_factory.mktemp("plate")
    stains = dict(_rendering.REFERENCE_STAINS)
    turned = {
        name: tuple(_rotate(v, [1.0, -0.5, 0.2], 6.0 if name == "xgal" else 5.0))
        for name, v in stains.items()
    }
    mp = pytest.MonkeyPatch()
    mp.setattr(_rendering, "REFERENCE_STAINS", turned)
    rows = []
    truth: dict[str, pd.DataFrame] = {}
    wells = [("untreated", "A1", 0.05), ("untreated", "A2", 0.08), ("untreated", "A3", 0.04),
             ("treated", "B1", 0.45), ("treated", "B2", 0.5), ("treated", "B3", 0.4)]  # fmt: skip
    try:
        for k, (condition, well, senescent) in enumerate(wells):
            sid = f"w{well}"
            s = synth.write_slide(
                tmp / f"{sid}.tif", assay="sabgal", shape=(320, 320), seed=10 + k,
                params=synth.SynthParams(tissue_fraction=1.0, senescent_fraction=senescent),
            )  # fmt: skip
            truth[sid] = pd.read_parquet(s.truth_path)
            rows.append(f"E1,{sid},{sid}.tif,sabgal,{condition},p1,{well},,")
        s = synth.write_slide(
            tmp / "wB1-f2.tif", assay="sabgal", shape=(320, 320), seed=30,
            params=synth.SynthParams(tissue_fraction=1.0, senescent_fraction=0.45),
        )  # fmt: skip
        truth["wB1-f2"] = pd.read_parquet(s.truth_path)
        rows.append("E1,wB1-f2,wB1-f2.tif,sabgal,treated,p1,B01,,")
        synth.write_slide(
            tmp / "wA4.tif", assay="sabgal-eosin", shape=(320, 320), seed=40,
            params=synth.SynthParams(tissue_fraction=1.0),
        )  # fmt: skip
        rows.append("E1,wA4,wA4.tif,sabgal,untreated,p1,A4,,")
        synth.write_slide(
            tmp / "neg.tif", assay="sabgal", shape=(320, 320), seed=50,
            params=synth.SynthParams(tissue_fraction=1.0, senescent_fraction=0.0),
        )  # fmt: skip
        rows.append("E1,neg,neg.tif,sabgal,untreated,p1,D6,xgal-ctrl,negative")
    finally:
        mp.undo()
    sheet = tmp / "plate.csv"
    sheet.write_text(
        "patient_id,slide_id,path,assay,condition,plate,well,batch,control\n"
        + "\n".join(rows)
        + "\n",
        encoding="utf-8",
    )
    jobs, problems = read_sample_sheet(sheet, known_assays=ASSAYS)
    assert not problems
    out = tmp / "results"
    config = AnalysisConfig(segmenter="classical", control_min_cells=20)
    reports = run_batch(jobs, out=out, config=config)
    assert all(r.status == "ok" for r in reports), [r.message for r in reports]
    return {"out": out, "truth": truth}


@pytest.mark.slow
def test_plate_figures_follow_the_truth(plate):
    out = plate["out"]
    layout = read_layout(out)
    assert layout["wB1-f2"].well == "B01" and layout["neg"].control == "negative"
    stores = load_all(out)
    wells = well_table(stores, layout).set_index("unit")
    # the two fields of B01 are one well; the stain control is in no condition; the mismatched
    # well is kept as a row without figures
    assert wells.loc["p1:B01", "n_slides"] == 2
    assert wells.loc["p1:B01", "slide_ids"] == "wB1;wB1-f2"
    assert "p1:D06" not in wells.index
    assert wells.loc["p1:A04", "reliable"] == "no" and wells.loc["p1:A04", "n_cells"] == 0
    assert wells.loc["p1:A04", "unreliable_slide_ids"] == "wA4"
    table = condition_table(wells.reset_index()).set_index("condition")
    # per-cell truth: the calls of the cells found agree with the truth. (The classical nucleus
    # finder also takes blue blobs in big senescent cells for nuclei, so treated wells have more
    # detections than cells: the whole-cell mode is for that; here the calls are checked.)
    for condition, ids in (
        ("untreated", ["wA1", "wA2", "wA3"]),
        ("treated", ["wB1", "wB1-f2", "wB2", "wB3"]),
    ):
        called, true = [], []
        for sid in ids:
            cells, truth = next(r.cells for r in stores if r.slide_id == sid), plate["truth"][sid]
            pi, ti = match_cells(
                cells[["x_um", "y_um"]].to_numpy(), truth[["x_um", "y_um"]].to_numpy(),
                max_distance_um=4.0,
            )  # fmt: skip
            called.append(cells["sabgal_positive"].to_numpy()[pi])
            true.append(truth["sabgal_positive"].to_numpy()[ti])
        agree = np.mean(np.concatenate(called) == np.concatenate(true))
        assert agree >= 0.95 and sum(map(len, true)) > 100, condition
        true_pct = 100 * np.concatenate(true).mean()
        assert abs(100 * np.concatenate(called).mean() - true_pct) < 5, condition
    t = table.loc["treated"]
    assert t["n_wells"] == 3 and t["sabgal_n_replicates"] == 3
    assert table.loc["untreated", "sabgal_n_replicates"] == 3  # A04 has no cells in the figures
    assert t["sabgal_replicate_diff_pct_positive"] > 15
    assert t["sabgal_replicate_diff_pct_positive_ci95_low"] > 0  # treated clearly more
    assert t["sabgal_pooled_diff_pct_positive_ci95_low"] > 0
    # pooled counts are the stores' own counts
    n = sum(
        r.summary["markers"]["sabgal"]["n_positive"]
        for r in stores
        if r.slide_id in ("wB1", "wB1-f2", "wB2", "wB3")
    )
    assert t["sabgal_n_positive"] == n
    # opting in pools the mismatched well (its figures are not SA-β-gal, hence left out by default)
    opted = condition_table(well_table(stores, layout, include_unreliable=True))
    opted = opted.set_index("condition")
    assert opted.loc["untreated", "sabgal_n_replicates"] == 4
    assert opted.loc["untreated", "n_slides_unreliable"] == 1


@pytest.mark.slow
def test_export_and_report_by_condition(plate, tmp_path):
    out = plate["out"]
    runner = CliRunner()
    got = runner.invoke(
        app, ["export", str(out), "--by", "condition", "--format", "csv,xlsx",
              "--reference", "untreated"],
    )  # fmt: skip
    assert got.exit_code == 0, got.output
    table = pd.read_csv(out / "markers_by_condition.csv")
    assert list(table["condition"]) == ["untreated", "treated"]
    assert (out / "markers_by_condition.xlsx").is_file()
    png = (out / "plate_map_sabgal.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    got = runner.invoke(app, ["export", str(out), "--by", "well", "--format", "csv"])
    assert got.exit_code == 0, got.output
    assert len(pd.read_csv(out / "markers_by_well.csv")) == 7
    got = runner.invoke(app, ["export", str(out), "--by", "condition", "--reference", "x"])
    assert got.exit_code != 0 and "reference condition 'x'" in str(got.exception)
    text = render_report(out)
    assert "<h2>Conditions</h2>" in text and "plate map sabgal" in text
    assert "Newcombe" in text and "Welch" in text and "mean of wells" in text
