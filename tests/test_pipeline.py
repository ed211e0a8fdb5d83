"""End-to-end: synthetic slides with ground truth → senpath run → per-cell calls and per-patient table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import senpath
from senpath import synth
from senpath.cli import app
from senpath.config import AnalysisConfig, get_assay
from senpath.pipeline import run_batch
from senpath.results import is_complete, read_manifest
from senpath.samplesheet import SlideJob
from senpath.validation import compare_with_truth

CLASSICAL = AnalysisConfig(segmenter="classical")


def _slide(tmp_path, assay, *, seed=3, shape=(1024, 1024)):
    return synth.write_slide(
        tmp_path / f"{assay}-{seed}.tif", assay=assay, shape=shape, mpp=0.5, seed=seed,
        params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip


@pytest.mark.parametrize("assay", ["ki67", "p16", "sabgal+ki67"])
def test_calls_match_synthetic_truth(tmp_path, assay):
    s = _slide(tmp_path, assay)
    store = senpath.analyze_slide(s.path, out=tmp_path / "res", assay=assay, config=CLASSICAL)
    res = senpath.load_results(store)
    truth = pd.read_parquet(s.truth_path)
    markers = [m.name for m in get_assay(assay).markers]
    cmp = compare_with_truth(res.cells, truth, markers=markers)
    assert cmp["detection"]["f1"] >= 0.90, cmp["detection"]
    # Classical segmenter; markers called on their preset compartment/statistic (p16: nucleus +
    # perinuclear mean; SA-beta-gal: perinuclear p75). Measured F1: Ki67 1.0, p16 1.0, SA-beta-gal 0.975.
    floor = {"ki67": 0.95, "p16": 0.95, "sabgal": 0.95}
    for m in markers:
        assert cmp[m]["f1"] >= floor[m], (m, cmp[m])
        assert abs(cmp[m]["pct_positive"] - cmp[m]["pct_positive_truth"]) <= 5.0, (m, cmp[m])
    # provenance says what produced the numbers
    assert res.provenance.segmenter_method == "classical"
    assert res.provenance.assay.stains == get_assay(assay).stains
    assert res.summary["n_cells"] == len(res.cells)


def _sheet(tmp_path, rows):
    sheet = tmp_path / "samples.csv"
    lines = ["patient_id,slide_id,path,assay"] + [",".join(r) for r in rows]
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def test_cli_batch_resume_and_patient_export(tmp_path):
    a = _slide(tmp_path, "ki67", seed=1, shape=(768, 768))
    b = _slide(tmp_path, "p16", seed=1, shape=(768, 768))
    c = _slide(tmp_path, "ki67", seed=2, shape=(768, 768))
    sheet = _sheet(tmp_path, [
        ("P1", "p1-ki67", a.path.name, "ki67"),
        ("P1", "p1-p16", b.path.name, "p16"),
        ("P2", "p2-ki67", c.path.name, "ki67"),
    ])  # fmt: skip
    out = tmp_path / "results"
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(sheet), "--out", str(out), "--segmenter", "classical"])
    assert r.exit_code == 0, r.output
    assert all(is_complete(out / sid) for sid in ("p1-ki67", "p1-p16", "p2-ki67"))
    mtime = (out / "p1-ki67" / "cells.parquet").stat().st_mtime_ns
    r = runner.invoke(app, ["run", str(sheet), "--out", str(out), "--segmenter", "classical"])
    assert r.exit_code == 0 and "3 skipped" in r.output, r.output
    assert (out / "p1-ki67" / "cells.parquet").stat().st_mtime_ns == mtime

    r = runner.invoke(app, ["export", str(out), "--by", "patient", "--format", "csv,xlsx"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "markers_by_patient.csv")
    assert list(table["patient_id"]) == ["P1", "P2"]
    assert pd.read_excel(out / "markers_by_patient.xlsx")["patient_id"].tolist() == ["P1", "P2"]
    p1 = table.set_index("patient_id").loc["P1"]
    assert p1["n_slides"] == 2 and p1["ki67_n_slides"] == 1 and p1["p16_n_slides"] == 1
    # the patient's Ki67 figures are the slide's own cells, recomputed from the per-cell table
    cells = senpath.load_results(out / "p1-ki67").cells
    assert p1["ki67_n_cells"] == len(cells)
    assert p1["ki67_pct_positive"] == pytest.approx(100 * cells["ki67_positive"].mean())
    lo, hi = p1["ki67_pct_positive_ci95_low"], p1["ki67_pct_positive_ci95_high"]
    assert lo < p1["ki67_pct_positive"] < hi
    assert p1["senescent_n_slides"] == 1  # from the p16 slide only
    assert read_manifest(out / "p2-ki67")["patient_id"] == "P2"


def test_bad_slide_fails_alone(tmp_path):
    good = _slide(tmp_path, "ki67", seed=4, shape=(512, 512))
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(good.path.read_bytes()[:3000])  # truncated TIFF
    jobs = [
        SlideJob("corrupt", corrupt, "ki67", "P1"),
        SlideJob("good", good.path, "ki67", "P1"),
    ]
    reports = run_batch(jobs, out=tmp_path / "res", config=CLASSICAL)
    status = {r.slide_id: r for r in reports}
    assert status["good"].status == "ok" and status["good"].n_cells > 0
    assert status["corrupt"].status == "failed"
    assert "corrupt.tif" in status["corrupt"].message
    assert not (tmp_path / "res" / "corrupt" / "manifest.json").exists()
    assert "corrupt" in (tmp_path / "res" / "failures.log").read_text()


def test_interrupted_store_is_not_complete_and_is_redone(tmp_path, monkeypatch):
    s = _slide(tmp_path, "ki67", seed=5, shape=(512, 512))
    jobs = [SlideJob("s", s.path, "ki67", "P1")]
    import senpath.slide_analysis as pl

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(pl, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        run_batch(jobs, out=tmp_path / "res", config=CLASSICAL)
    folder = tmp_path / "res" / "s"
    assert (folder / "cells.parquet").exists() and not is_complete(folder)
    assert not list(folder.glob(".*.tmp"))  # no temporary file left behind
    monkeypatch.undo()
    (report,) = run_batch(jobs, out=tmp_path / "res", config=CLASSICAL)
    assert report.status == "ok" and is_complete(folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_cells"] == report.n_cells


def test_empty_slide_reported_not_crashed(tmp_path):
    s = synth.write_slide(tmp_path / "glass.tif", assay="ki67", shape=(512, 512), mpp=0.5, seed=0,
                          params=synth.SynthParams(tissue_fraction=0.0))  # fmt: skip
    (report,) = run_batch(
        [SlideJob("glass", s.path, "ki67", "P")], out=tmp_path / "r", config=CLASSICAL
    )
    assert report.status == "ok" and report.n_cells == 0
    summary = senpath.load_results(tmp_path / "r" / "glass").summary
    assert "no tissue" in summary["warning"]
    assert summary["n_cells"] == 0 and summary["markers"]["ki67"]["n_positive"] == 0
    assert summary["markers"]["ki67"]["pct_positive"] is None  # NaN (no cells) is stored as null


def test_tiling_does_not_change_the_cells(tmp_path):
    """Halo rule: every nucleus is counted once and measured whole, whatever the tile size."""
    s = _slide(tmp_path, "ki67", seed=6, shape=(768, 768))
    tables = []
    for tile_um in (96.0, 160.0, 1000.0):  # 1000 µm: the whole slide in one tile
        cfg = CLASSICAL.replace(tile_size_um=tile_um)
        store = senpath.analyze_slide(
            s.path, out=tmp_path / f"r{tile_um}", assay="ki67", config=cfg
        )
        cells = senpath.load_results(store).cells
        tables.append(cells.sort_values(["y_um", "x_um"]).reset_index(drop=True))
    whole = tables[-1]
    for tiled in tables[:-1]:
        assert len(tiled) == len(whole)
        np.testing.assert_allclose(tiled[["x_um", "y_um"]], whole[["x_um", "y_um"]], atol=1e-6)
        np.testing.assert_allclose(tiled["nucleus_area_um2"], whole["nucleus_area_um2"])
        np.testing.assert_array_equal(tiled["ki67_positive"], whole["ki67_positive"])


def test_force_rerun_keeps_a_reviewers_corrections_aside(tmp_path):
    from senpath.corrections import CorrectionSession

    s = _slide(tmp_path, "ki67", seed=5, shape=(512, 512))
    jobs = [SlideJob("s", s.path, "ki67", "P1")]
    out = tmp_path / "res"
    run_batch(jobs, out=out, config=CLASSICAL)
    session = CorrectionSession(out / "s", user="reviewer")
    first = int(session.cells["cell_id"].iloc[0])
    session.exclude([first])
    session.save()
    assert senpath.load_results(out / "s").cells.set_index("cell_id").loc[first, "excluded"]
    log = (out / "s" / "corrections.jsonl").read_text()
    # while the review is open, a run does not re-analyse the store under it
    (busy,) = run_batch(jobs, out=out, config=CLASSICAL, force=True)
    assert busy.status == "failed" and "being reviewed" in busy.message, busy.message
    assert "reviewer on" in busy.message and (out / "s" / "corrections.jsonl").read_text() == log
    session.close()

    with pytest.warns(UserWarning, match="corrections of the previous analysis are kept"):
        (report,) = run_batch(jobs, out=out, config=CLASSICAL, force=True)
    assert report.status == "ok" and "earlier corrections kept in corrections." in report.message
    kept = list((out / "s").glob("corrections.*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == log  # nothing of the reviewer's work is lost
    assert not (out / "s" / "corrections.jsonl").exists()
    res = senpath.load_results(out / "s")
    assert not res.corrections and not res.cells.get("excluded", pd.Series(False)).any()
    assert res.provenance.corrections_set_aside == kept[0].name


def test_sheet_mpp_that_contradicts_the_file_is_used_reported_and_recorded(tmp_path):
    """A sheet mpp 2x off the file's calibration was applied without a word."""
    from senpath.io import SlideWarning
    from senpath.samplesheet import read_sample_sheet

    a = _slide(tmp_path, "ki67", seed=6, shape=(384, 384))  # the file says 0.5 µm/px
    b = _slide(tmp_path, "ki67", seed=7, shape=(384, 384))
    sheet = tmp_path / "samples.csv"
    sheet.write_text(
        "patient_id,slide_id,path,assay,mpp\n"
        f"P1,off,{a.path.name},ki67,0.25\n"  # 2x off
        f"P1,close,{b.path.name},ki67,0.51\n"  # 2 %: no warning
    )
    jobs, _ = read_sample_sheet(sheet, known_assays=["ki67"])
    out = tmp_path / "res"
    with pytest.warns(SlideWarning) as caught:
        reports = run_batch(jobs, out=out, config=CLASSICAL)
    line = (
        f"{a.path}: the explicit pixel size 0.25 µm/px (--mpp or the sample sheet's mpp) differs "
        "by 50% from the file's 0.5 µm/px (TIFF X/YResolution (cm)); analysing at 0.25 µm/px: "
        "check which one is right"
    )
    assert [str(w.message) for w in caught if w.category is SlideWarning] == [line]
    off, close = reports
    assert off.status == "ok" and off.message == line  # in the batch summary, the batch goes on
    assert close.status == "ok" and close.message == ""
    prov = senpath.load_results(out / "off").provenance
    assert prov.slide_mpp == (0.25, 0.25) and prov.slide["mpp_source"] == "mpp="
    assert prov.file_mpp == pytest.approx((0.5, 0.5)) and prov.mpp_warning == line
    prov = senpath.load_results(out / "close").provenance
    assert prov.file_mpp == pytest.approx((0.5, 0.5)) and prov.mpp_warning is None
