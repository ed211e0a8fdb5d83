"""Thresholds from a batch's negative control, and slides whose stains do not match their assay.

One batch from a sample sheet: batch ``b1`` (faint X-gal, as in cultured cells) with a negative
control; batch ``b2`` whose negative control has too few cells; a slide stained for SA-β-gal but run
as Ki67 (its stains do not match the assay: stain QC warning).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import senpath
from senpath import synth
from senpath.config import AnalysisConfig, ConfigError, load_settings
from senpath.export import marker_table
from senpath.pipeline import run_batch
from senpath.report import render_report
from senpath.samplesheet import SampleSheetError, read_sample_sheet
from senpath.score import call_marker
from senpath.validation import match_cells

#: Faint X-gal over a light non-specific background, sparse cells: 1+ cells near 0.12 OD, under
#: the fixed 0.15 OD rule; the negative control shows the background only.
FAINT = {
    "tissue_fraction": 0.95,
    "marker_od_scale": 0.35,
    "marker_background_od": 0.03,
    "cell_density_per_mm2": 1200.0,
}
ASSAYS = senpath.config.load_assays()


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("controls")
    none_positive = {
        "sabgal_positive_fraction_senescent": 0.0,
        "sabgal_positive_fraction_other": 0.0,
    }
    slides = {
        "neg": synth.write_slide(
            tmp / "neg.tif", assay="sabgal", shape=(1280, 1280), seed=5,
            params=synth.SynthParams(**FAINT, **none_positive),
        ),
        "s1": synth.write_slide(
            tmp / "s1.tif", assay="sabgal", shape=(1024, 1024), seed=3,
            params=synth.SynthParams(**FAINT, senescent_fraction=0.4),
        ),
        "neg2": synth.write_slide(
            tmp / "neg2.tif", assay="sabgal", shape=(256, 256), seed=5,
            params=synth.SynthParams(**FAINT, **none_positive),
        ),
        "s2": synth.write_slide(
            tmp / "s2.tif", assay="sabgal", shape=(256, 256), seed=3,
            params=synth.SynthParams(**FAINT),
        ),
        "mismatch": synth.write_slide(
            tmp / "mismatch.tif", assay="sabgal", shape=(384, 384), seed=2,
            params=synth.SynthParams(tissue_fraction=0.95),
        ),
    }  # fmt: skip
    # the samples first: the run must still analyse each batch's negative control before them
    sheet = tmp / "sheet.csv"
    sheet.write_text(
        "patient_id,slide_id,path,assay,batch,control\n"
        "P1,s1,s1.tif,sabgal,b1,\n"
        "P2,s2,s2.tif,sabgal,b2,\n"
        "P1,mismatch,mismatch.tif,ki67,,\n"
        "CTRL,neg,neg.tif,sabgal,b1,negative\n"
        "CTRL,neg2,neg2.tif,sabgal,b2,Negative\n",
        encoding="utf-8",
    )
    jobs, problems = read_sample_sheet(sheet, known_assays=ASSAYS)
    assert not problems
    reports = run_batch(jobs, out=tmp / "results", config=AnalysisConfig(segmenter="classical"))
    return {
        "slides": slides, "reports": {r.slide_id: r for r in reports}, "out": tmp / "results",
        "sheet": sheet,
    }  # fmt: skip


def _f1(called: np.ndarray, truth: np.ndarray) -> float:
    tp = int((called & truth).sum())
    return 2 * tp / (int(called.sum()) + int(truth.sum()))


def test_negative_control_cutoff_gets_faint_calls_right(controlled):
    reports = controlled["reports"]
    assert reports["neg"].status == "ok" and reports["s1"].status == "ok"
    neg = senpath.load_results(controlled["out"] / "neg")
    res = senpath.load_results(controlled["out"] / "s1")
    # the cut-off: the 99th percentile of the control's per-cell X-gal OD, recorded as such
    expected = float(np.percentile(neg.cells["sabgal_od"], 99))
    record = res.provenance.threshold_records["sabgal"]
    assert record["source"] == "control" and record["control_slide_id"] == "neg"
    assert record["batch"] == "b1" and record["control_percentile"] == 99.0
    assert res.provenance.thresholds["sabgal"] == pytest.approx(expected)
    assert res.summary["markers"]["sabgal"]["threshold_od"] == pytest.approx(expected)
    assert neg.provenance.thresholds["sabgal"] == pytest.approx(expected)
    # per-cell truth: the control's cut-off calls the faint cells right, the fixed 0.15 OD misses
    truth = pd.read_parquet(controlled["slides"]["s1"].truth_path)
    pi, ti = match_cells(
        res.cells[["x_um", "y_um"]].to_numpy(), truth[["x_um", "y_um"]].to_numpy(),
        max_distance_um=4.0,
    )  # fmt: skip
    assert len(pi) > 100
    true_pos = truth["sabgal_positive"].to_numpy()[ti]
    od = res.cells["sabgal_od"].to_numpy()[pi]
    by_control = res.cells["sabgal_positive"].to_numpy()[pi]
    by_rule = call_marker(od, 0.15, (0.15, 0.375, 0.7))[0]
    assert _f1(by_control, true_pos) >= 0.95
    assert _f1(by_rule, true_pos) <= 0.90
    assert (by_control != true_pos).sum() * 2 < (by_rule != true_pos).sum()


def test_control_with_too_few_cells_leaves_its_batch_unscored(controlled):
    reports = controlled["reports"]
    assert reports["neg2"].status == "failed"
    assert "negative control 'neg2' of batch 'b2'" in reports["neg2"].message
    assert "control_min_cells" in reports["neg2"].message
    s2 = reports["s2"]
    assert s2.status == "failed" and s2.folder is None
    assert "not scored" in s2.message and "'neg2'" in s2.message and "\n" not in s2.message
    assert not (controlled["out"] / "s2" / "summary.json").exists()


def test_tables_show_threshold_source_and_reliability(controlled):
    stores = senpath.export.load_all(controlled["out"])
    by_slide = marker_table(stores, by="slide").set_index("slide_id")
    assert by_slide.loc["s1", "sabgal_threshold_source"] == "control:neg p99"
    assert by_slide.loc["s1", "reliable"] == "yes"
    assert by_slide.loc["mismatch", "stain_qc"] == "warning"
    assert by_slide.loc["mismatch", "reliable"] == "no"
    assert by_slide.loc["mismatch", "ki67_threshold_source"] == "rule"
    by_patient = marker_table(stores, by="patient").set_index("patient_id")
    p1 = by_patient.loc["P1"]
    assert p1["reliable"] == "yes" and p1["n_slides"] == 1 and p1["n_slides_unreliable"] == 1
    assert p1["unreliable_slide_ids"] == "mismatch"
    assert pd.isna(p1.get("ki67_pct_positive", np.nan))  # the mismatched slide is left out
    assert p1["n_cells"] == by_slide.loc["s1", "n_cells"]
    opted = marker_table(stores, by="patient", include_unreliable=True).set_index("patient_id")
    assert opted.loc["P1", "reliable"] == "no" and opted.loc["P1", "n_slides"] == 2
    assert not pd.isna(opted.loc["P1", "ki67_pct_positive"])


def test_report_shows_sources_and_unreliable_slides(controlled):
    text = render_report(controlled["out"])
    assert "control neg p99" in text
    assert "<b>Unreliable:</b> 1 slide(s)" in text and "mismatch" in text
    assert "no (stain QC)" in text


def test_sample_sheet_control_column(tmp_path: Path):
    (tmp_path / "a.tif").write_bytes(b"x")
    sheet = tmp_path / "s.csv"
    sheet.write_text(
        "patient_id,slide_id,path,assay,batch,control\nP,a,a.tif,ki67,run 1,negativ\n",
        encoding="utf-8",
    )
    with pytest.raises(SampleSheetError, match="control 'negativ' .*did you mean 'negative'"):
        read_sample_sheet(sheet, known_assays=ASSAYS)
    sheet.write_text(
        "patient_id,slide_id,path,assay,batch,control\nP,a,a.tif,ki67,run 1,\n", encoding="utf-8"
    )
    (job,), _ = read_sample_sheet(sheet, known_assays=ASSAYS)
    assert job.batch == "run 1" and job.control is None


def test_control_settings_are_checked_and_do_not_redo_other_slides():
    with pytest.raises(ConfigError, match="control_percentile"):
        load_settings({"analysis": {"control_percentile": 100}})
    with pytest.raises(ConfigError, match="control_min_cells"):
        AnalysisConfig(control_min_cells=50.5)
    assert load_settings({"analysis": {"control_percentile": 95}}).analysis.control_percentile == 95
    # a store scored without a control stays current when only the control settings change
    assert AnalysisConfig().digest() == AnalysisConfig(control_percentile=95).digest()


@pytest.mark.slow
def test_controls_on_a_dask_cluster(controlled, tmp_path: Path):
    """Two passes on a cluster too: a group's slides wait for its negative control's commit and get
    the stores an in-process run gives; a failed control fails its group with the same lines."""
    from distributed import Client, LocalCluster

    from senpath.distributed import run_batch_distributed

    jobs, _ = read_sample_sheet(controlled["sheet"], known_assays=ASSAYS)
    config = AnalysisConfig(segmenter="classical")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        # 2 tiles a task: the control's slides are released while tile tasks are in flight
        first = run_batch_distributed(
            jobs, client=client, out=tmp_path, config=config, assays=ASSAYS, tiles_per_task=2
        )
        reports = {r.slide_id: r for r in first}
        again = run_batch(jobs, out=tmp_path, config=config, client=client)
    local = controlled["reports"]
    assert {k: r.status for k, r in reports.items()} == {k: r.status for k, r in local.items()}
    assert reports["s2"].message == local["s2"].message  # names the failed control 'neg2'
    for sid in ("neg", "s1", "mismatch"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / sid / "cells.parquet"),
            pd.read_parquet(controlled["out"] / sid / "cells.parquet"),
        )
    s1 = senpath.load_results(tmp_path / "s1")
    assert s1.provenance.threshold_records["sabgal"]["control_slide_id"] == "neg"
    assert (
        s1.provenance.thresholds
        == senpath.load_results(controlled["out"] / "s1").provenance.thresholds
    )
    # the order on the cluster: s1's first task is submitted after its control's commit has
    # finished. Read on the scheduler's clock (its transition log): the task stream's start/stop
    # are each worker's clock shifted by that worker's own estimate of its delay to the scheduler,
    # so times from two workers can be out of order by tens of milliseconds.
    first_seen: dict[tuple[str, str], float] = {}
    in_memory: dict[tuple[str, str], float] = {}
    for key, _start, finish, _recs, _stimulus, when in cluster.scheduler.transition_log:
        for kind in ("plan", "commit"):
            for sid in ("neg", "s1", "mismatch"):
                if str(key).startswith(f"senpath-{kind}-{sid}-"):
                    first_seen.setdefault((kind, sid), when)
                    if finish == "memory":
                        in_memory.setdefault((kind, sid), when)
    assert first_seen[("plan", "s1")] >= in_memory[("commit", "neg")]
    assert first_seen[("plan", "mismatch")] < in_memory[("commit", "neg")]  # no control: not held
    # resume on the cluster: every committed store is current (s1 with its control's cut-offs)
    assert {r.slide_id: r.status for r in again} == {
        "s1": "skipped", "s2": "failed", "mismatch": "skipped", "neg": "skipped", "neg2": "failed"
    }  # fmt: skip
