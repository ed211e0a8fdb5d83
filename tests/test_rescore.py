"""Re-scoring stored slides: the calls a fresh run with the new rule gives, without segmenting.

Synthetic faint X-gal wells (stains turned a few degrees from the pipeline's vectors) are analysed
once at the fixed 0.15 OD rule; re-scoring them at 0.10 OD (or from their negative control at
another percentile) must give exactly the stores a fresh run with that rule writes, without loading
a segmenter or reading a tile, in a fraction of the time, and keep a reviewer's corrections.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import senpath
from senpath import synth
from senpath.cli import app
from senpath.config import AnalysisConfig, load_settings
from senpath.corrections import CorrectionSession, read_log
from senpath.pipeline import run_batch
from senpath.rescore import parse_thresholds, rescore_results
from senpath.results import CELLS, SUMMARY, is_complete, sha256_file
from senpath.samplesheet import read_sample_sheet
from senpath.stain import unit

ASSAYS = senpath.config.load_assays()
CONFIG = AnalysisConfig(segmenter="classical", control_min_cells=30)
#: Faint X-gal as in cultured cells: most positive cells 1+, near 0.12 OD, under the 0.15 OD rule.
FAINT = {
    "tissue_fraction": 1.0,
    "marker_od_scale": 0.35,
    "marker_background_od": 0.03,
    "level_weights_senescent": (0.6, 0.3, 0.1),
}


def _rotate(v, axis, degrees):
    k = unit(axis)
    t = np.radians(degrees)
    v = np.asarray(v, float)
    return v * np.cos(t) + np.cross(k, v) * np.sin(t) + k * (k @ v) * (1 - np.cos(t))


def _sabgal_settings(threshold_od: float, **analysis: object) -> dict[str, object]:
    """Settings whose ``sabgal`` assay is the preset with another threshold (a fresh run's)."""
    preset = ASSAYS["sabgal"]
    (rule,) = preset.markers
    return {
        "analysis": {"segmenter": "classical", **analysis},
        "assay": {
            "sabgal": {
                "description": preset.description,
                "stains": list(preset.stains),
                "nuclear_stains": list(preset.nuclear_stains),
                "phenotype": {k: list(v) for k, v in preset.phenotypes.items()},
                "marker": [
                    {
                        "name": rule.name, "stain": rule.stain, "compartment": rule.compartment,
                        "statistic": rule.statistic, "threshold_od": threshold_od,
                        "bins_od": list(rule.bins_od),
                    }
                ],
            }
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Three wells of faint X-gal and their negative control (batch ``b``), analysed once."""
    from senpath.synth import _rendering

    tmp = tmp_path_factory.mktemp("rescore")
    turned = {
        n: tuple(_rotate(v, [0.3, 1.0, -0.4], 5.0)) for n, v in _rendering.REFERENCE_STAINS.items()
    }
    mp = pytest.MonkeyPatch()
    mp.setattr(_rendering, "REFERENCE_STAINS", turned)
    try:
        for name, seed, senescent in (("w1", 1, 0.3), ("w2", 2, 0.5), ("neg", 3, 0.0)):
            params = synth.SynthParams(**FAINT, senescent_fraction=senescent)
            if name == "neg":
                params = synth.SynthParams(
                    **FAINT, sabgal_positive_fraction_senescent=0.0,
                    sabgal_positive_fraction_other=0.0,
                )  # fmt: skip
            synth.write_slide(tmp / f"{name}.tif", assay="sabgal", shape=(384, 384), seed=seed,
                              params=params)  # fmt: skip
    finally:
        mp.undo()
    plain = tmp / "plain.csv"  # the wells, scored at a rule
    plain.write_text(
        "patient_id,slide_id,path,assay\nE,w1,w1.tif,sabgal\nE,w2,w2.tif,sabgal\n",
        encoding="utf-8",
    )
    controlled = tmp / "controlled.csv"  # the wells and their negative control
    controlled.write_text(
        "patient_id,slide_id,path,assay,batch,control\nE,w1,w1.tif,sabgal,b,\n"
        "E,w2,w2.tif,sabgal,b,\nC,neg,neg.tif,sabgal,b,negative\n",
        encoding="utf-8",
    )
    jobs = read_sample_sheet(plain, known_assays=ASSAYS)[0]
    reports = run_batch(jobs, out=tmp / "rule", config=CONFIG)
    assert [r.status for r in reports] == ["ok", "ok"]
    reports = run_batch(
        read_sample_sheet(controlled, known_assays=ASSAYS)[0], out=tmp / "ctrl", config=CONFIG
    )
    assert [r.status for r in reports] == ["ok", "ok", "ok"]
    return {"tmp": tmp, "plain": plain, "controlled": controlled}


@pytest.fixture
def no_segmenter(monkeypatch):
    """Loading a segmenter or analysing a tile fails the test (nothing is downloaded or segmented)."""
    import senpath.segment
    import senpath.slide_analysis
    import senpath.tile_engine

    def refuse(*args, **kwargs):
        raise AssertionError("re-scoring must not segment")

    for module in (senpath.segment, senpath.tile_engine, senpath.slide_analysis):
        for name in ("load_segmenter", "plan_segmenter", "analyze_tiles", "segment_tiles"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _assert_same_store(a: Path, b: Path, slide_id: str) -> None:
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / slide_id / CELLS), pd.read_parquet(b / slide_id / CELLS)
    )
    sa = json.loads((a / slide_id / SUMMARY).read_text())
    sb = json.loads((b / slide_id / SUMMARY).read_text())
    assert sa == sb


@pytest.mark.slow
def test_rescore_gives_the_fresh_runs_calls_without_segmenting(batch, no_segmenter, tmp_path):
    tmp = batch["tmp"]
    out = _copy(tmp / "rule", tmp_path / "rescored")
    # no segmenting (the no_segmenter fixture); its speed is benchmarks/bench_rescore.py's business
    reports = rescore_results(out, thresholds=["sabgal=0.10"])
    assert [(r.slide_id, r.status) for r in reports] == [("w1", "ok"), ("w2", "ok")]
    assert all(r.before == {"sabgal": 0.15} and r.after == {"sabgal": 0.10} for r in reports)
    assert all(r.n_changed > 0 for r in reports)  # faint cells between 0.10 and 0.15 OD
    for sid in ("w1", "w2"):
        res = senpath.load_results(out / sid)
        record = res.provenance.threshold_records["sabgal"]
        assert record["threshold_od"] == 0.10 and record["source"] == "rule"
        (history,) = res.provenance.records["rescores"]
        assert history["thresholds_before"]["sabgal"]["threshold_od"] == 0.15
        assert history["thresholds_after"]["sabgal"]["threshold_od"] == 0.10
        assert is_complete(out / sid)
    # a store re-scored is current for a run with those settings: nothing is analysed again
    jobs = read_sample_sheet(batch["plain"], known_assays=ASSAYS)[0]
    again = run_batch(jobs, out=out, config=_sabgal_settings(0.10))
    assert [r.status for r in again] == ["skipped", "skipped"]


@pytest.mark.slow
def test_rescored_equals_a_fresh_run(batch, tmp_path):
    tmp = batch["tmp"]
    jobs = read_sample_sheet(batch["plain"], known_assays=ASSAYS)[0]
    run_batch(jobs, out=tmp_path / "fresh", config=_sabgal_settings(0.10))
    out = _copy(tmp / "rule", tmp_path / "rescored")
    rescore_results(out, thresholds={"sabgal": 0.10})
    for sid in ("w1", "w2"):
        _assert_same_store(out, tmp_path / "fresh", sid)
        fresh = json.loads((tmp_path / "fresh" / sid / "manifest.json").read_text())["identity"]
        mine = json.loads((out / sid / "manifest.json").read_text())["identity"]
        assert mine == fresh


@pytest.mark.slow
def test_rescore_from_the_control_at_another_percentile(batch, tmp_path):
    tmp = batch["tmp"]
    jobs = read_sample_sheet(batch["controlled"], known_assays=ASSAYS)[0]
    run_batch(jobs, out=tmp_path / "fresh", config=CONFIG.replace(control_percentile=90.0))
    out = _copy(tmp / "ctrl", tmp_path / "rescored")
    settings = {"analysis": {"control_percentile": 90.0, "control_min_cells": 30}}
    reports = rescore_results(out, settings=settings)
    assert [r.slide_id for r in reports][0] == "neg"  # the control first
    assert all(r.status == "ok" for r in reports), [r.message for r in reports]
    neg = pd.read_parquet(out / "neg" / CELLS)
    expected = float(np.percentile(neg["sabgal_od"], 90))
    for sid in ("neg", "w1", "w2"):
        _assert_same_store(out, tmp_path / "fresh", sid)
        res = senpath.load_results(out / sid)
        record = res.provenance.threshold_records["sabgal"]
        assert record["source"] == "control" and record["control_percentile"] == 90.0
        assert record["threshold_od"] == pytest.approx(expected)
    # and the batch run again with those settings finds every store current
    again = run_batch(jobs, out=out, config=CONFIG.replace(control_percentile=90.0))
    assert [r.status for r in again] == ["skipped"] * 3


@pytest.mark.slow
def test_review_corrections_stay_applied(batch, tmp_path):
    tmp = batch["tmp"]
    out = _copy(tmp / "rule", tmp_path / "reviewed")
    raw = senpath.load_results(out / "w1", corrections=False).cells
    negative = raw.loc[~raw["sabgal_positive"], "cell_id"].to_numpy()
    flipped, excluded = int(negative[0]), int(negative[1])
    with CorrectionSession(out / "w1", user="reviewer") as session:
        session.flip_call(flipped, "sabgal")
        session.exclude([excluded])
        session.set_thresholds({"sabgal": 0.30})  # the reviewer's threshold: superseded below
        session.save()
    (report,) = [r for r in rescore_results(out, thresholds=["0.12"]) if r.slide_id == "w1"]
    assert report.status == "ok" and report.after == {"sabgal": 0.12}
    res = senpath.load_results(out / "w1")
    assert res.provenance.thresholds["sabgal"] == 0.12  # the re-scoring's, not the review's 0.30
    cells = res.cells.set_index("cell_id")
    assert cells.loc[flipped, "sabgal_positive"] and cells.loc[flipped, "sabgal_manual"]
    assert cells.loc[excluded, "excluded"]
    # every other call is the 0.12 OD rule on the stored measurement
    others = cells.drop(index=[flipped])
    assert (others["sabgal_positive"] == (others["sabgal_od"] >= 0.12)).all()
    starts = [e for e in read_log(out / "w1") if e["action"] == "start"]
    assert len(starts) == 2 and starts[-1]["rescore"]["thresholds_after"] == {"sabgal": 0.12}
    history = res.provenance.records["rescores"][-1]
    assert history["thresholds_in_effect_before"] == {"sabgal": 0.30}


def test_bad_requests_are_one_line(batch, tmp_path):
    with pytest.raises(ValueError, match="give --threshold MARKER=OD or --settings FILE"):
        rescore_results(batch["tmp"] / "rule")
    with pytest.raises(ValueError, match=r"no marker 'ki67' in these results \(markers: sabgal\)"):
        parse_thresholds(["ki67=0.2"], ["sabgal"])
    with pytest.raises(ValueError, match="not an OD between 0 and 2.4"):
        parse_thresholds(["sabgal=high"], ["sabgal"])
    with pytest.raises(ValueError, match="write MARKER=OD"):
        parse_thresholds(["0.2"], ["ki67", "sabgal"])
    assert parse_thresholds(["0.2"], ["sabgal"]) == {"sabgal": 0.2}
    with pytest.raises(FileNotFoundError, match="no complete results store"):
        rescore_results(tmp_path, thresholds=["0.1"])
    # a settings file that changes the measurement is refused per store, naming the fix
    out = _copy(batch["tmp"] / "rule", tmp_path / "r")
    reports = rescore_results(out, settings={"analysis": {"cytoplasm_um": 3.0}})
    assert [r.status for r in reports] == ["failed", "failed"]
    assert "cytoplasm_um 5.0 -> 3.0" in reports[0].message
    assert "senpath run --force" in reports[0].message
    assert load_settings({"analysis": {"cytoplasm_um": 3.0}}).analysis.cytoplasm_um == 3.0
    got = CliRunner().invoke(app, ["rescore", str(out), "--threshold", "sabgal=0.11"])
    assert got.exit_code == 0, got.output
    assert senpath.load_results(out / "w2").provenance.thresholds == {"sabgal": 0.11}


def test_a_cnn_store_whose_counterstain_reference_changed_is_refused(batch, tmp_path):
    """A store whose CNN saw its counterstain normalised to one level cannot be re-scored into a
    fresh run that normalises to another (or not at all): its nuclei would differ."""
    out = _copy(batch["tmp"] / "rule", tmp_path / "cnn")
    manifest_path, provenance_path = out / "w1" / "manifest.json", out / "w1" / "provenance.json"
    manifest = json.loads(manifest_path.read_text())
    provenance = json.loads(provenance_path.read_text())
    # w1 as the CNN would have stored it, its input normalised at the sabgal preset's level
    manifest["identity"]["counterstain_reference_od"] = 0.8
    provenance["config"]["segmenter"] = "cnn"
    provenance["segmenter"] = {"method": "cnn", "model_sha256": "x", "counterstain": None}
    provenance_path.write_text(json.dumps(provenance))
    manifest["files"]["provenance.json"] = sha256_file(provenance_path)
    manifest_path.write_text(json.dumps(manifest))
    assert ASSAYS["sabgal"].counterstain_reference_od == 0.8

    same = rescore_results(out, thresholds=["sabgal=0.10"])  # the preset: the same level
    assert [(r.slide_id, r.status) for r in same] == [("w1", "ok"), ("w2", "ok")]
    assert json.loads(manifest_path.read_text())["identity"]["counterstain_reference_od"] == 0.8

    other = _sabgal_settings(0.10, segmenter="cnn")  # its sabgal has no level
    reports = rescore_results(out / "w1", settings=other)
    assert [r.status for r in reports] == ["failed"]
    assert "counterstain_reference_od 0.8 -> None" in reports[0].message
    assert "senpath run --force" in reports[0].message
