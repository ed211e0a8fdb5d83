"""The users' daily job end to end: a sample sheet of generated slides (2 patients, several assays, plus a
corrupt slide, a missing file and a malformed row) → ``senpath run`` → ``senpath export``; and a batch
killed with SIGKILL mid-way, then re-run.

The per-patient figures are checked against values derived from the generator's ground truth, with the
marker issue's tolerances (H-score ±10, % positive ±5 points); the kill test checks that the re-run
finishes the batch, recomputes no completed slide and gives the same tables as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from senpath import synth
from senpath.cli import app
from senpath.corrections import load_results
from senpath.results import CELLS, MANIFEST, SUMMARY, is_complete
from senpath.score import h_score

# patient, slide id, assay, seed: Ki67 and p16 on adjacent sections for P1, dual stains for P2
SLIDES = [
    ("P1", "p1-ki67", "ki67", 11),
    ("P1", "p1-p16", "p16", 12),
    ("P2", "p2-sabgal_ki67", "sabgal+ki67", 13),
    ("P2", "p2-p16_ki67", "p16+ki67", 14),
]


def _write(folder: Path, assay: str, seed: int, shape=(768, 768)) -> synth.SynthSlide:
    return synth.write_slide(
        folder / f"{assay.replace('+', '_')}-{seed}.tif", assay=assay, shape=shape, mpp=0.5,
        seed=seed, params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip


@pytest.fixture(scope="module")
def mini_batch(tmp_path_factory):
    """A sample sheet with four good slides and three kinds of bad input, and the slides' truth."""
    tmp = tmp_path_factory.mktemp("minibatch")
    truth: dict[str, tuple[str, pd.DataFrame]] = {}
    rows = ["patient_id,slide_id,path,assay"]
    for patient, slide_id, assay, seed in SLIDES:
        s = _write(tmp, assay, seed)
        truth[slide_id] = (patient, pd.read_parquet(s.truth_path))
        rows.append(f"{patient},{slide_id},{s.path.name},{assay}")
    first = next(tmp.glob("ki67-*.tif"))  # a good slide's first bytes make a truncated TIFF
    (tmp / "truncated.tif").write_bytes(first.read_bytes()[:4000])
    rows.append("P3,p3-truncated,truncated.tif,ki67")
    rows.append("P3,p3-missing,no_such_slide.svs,ki67")
    rows.append("P3,p3-bad-assay,truncated.tif,ki-67")  # malformed row: unknown assay
    sheet = tmp / "samples.csv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet, truth


def _truth_by_patient(truth: dict[str, tuple[str, pd.DataFrame]]) -> dict[tuple[str, str], dict]:
    """(patient, marker) -> % positive and H-score pooled over the patient's slides with the marker."""
    pooled: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for patient, table in truth.values():
        for col in table.columns:
            if col.endswith("_level"):
                marker = col[: -len("_level")]
                pooled.setdefault((patient, marker), []).append(table)
    out = {}
    for (patient, marker), tables in pooled.items():
        t = pd.concat(tables, ignore_index=True)
        out[(patient, marker)] = {
            "pct_positive": 100.0 * float(t[f"{marker}_positive"].mean()),
            "h_score": h_score(t[f"{marker}_level"].to_numpy()),
            "n": len(t),
        }
    return out


@pytest.mark.slow
def test_mini_batch_tables_match_truth_and_bad_inputs_fail_alone(mini_batch, tmp_path):
    sheet, truth = mini_batch
    out = tmp_path / "results"
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(sheet), "--out", str(out), "--segmenter", "classical"])
    # three bad inputs: non-zero exit, each named with its reason, every good slide complete
    assert r.exit_code == 1, r.output
    assert "ki-67" in r.output and "row" in r.output  # the malformed row, by row number
    assert "no_such_slide.svs" in r.output
    assert "p3-truncated" in r.output and "past the end of the file" in r.output
    for _, slide_id, _, _ in SLIDES:
        assert is_complete(out / slide_id), slide_id
    assert not (out / "p3-truncated" / MANIFEST).exists()
    failures = (out / "failures.log").read_text()
    assert "p3-truncated (" in failures and "truncated.tif" in failures

    r = runner.invoke(
        app, ["export", str(out), "--by", "patient", "--format", "csv,parquet,xlsx,anndata"]
    )
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out / "markers_by_patient.parquet").set_index("patient_id")
    assert list(table.index) == ["P1", "P2"]  # P3 has no complete slide
    xlsx = pd.read_excel(out / "markers_by_patient.xlsx").set_index("patient_id")
    assert xlsx.loc["P2", "ki67_n_cells"] == table.loc["P2", "ki67_n_cells"]

    expected = _truth_by_patient(truth)
    assert set(expected) == {
        ("P1", "ki67"), ("P1", "p16"), ("P2", "ki67"), ("P2", "sabgal"), ("P2", "p16"),
    }  # fmt: skip
    for (patient, marker), want in expected.items():
        row = table.loc[patient]
        assert abs(row[f"{marker}_pct_positive"] - want["pct_positive"]) <= 5.0, (patient, marker)
        assert abs(row[f"{marker}_h_score"] - want["h_score"]) <= 10.0, (patient, marker)
        # cells found vs cells made: within 10 %
        assert abs(row[f"{marker}_n_cells"] - want["n"]) <= 0.1 * want["n"], (patient, marker)
    # P2's Ki67 pools both dual-stained slides; P1's comes from its one Ki67 section
    assert table.loc["P2", "ki67_n_slides"] == 2 and table.loc["P1", "ki67_n_slides"] == 1
    assert table.loc["P1", "ki67_labelling_index"] == pytest.approx(
        table.loc["P1", "ki67_pct_positive"]
    )

    anndata = pytest.importorskip("anndata")
    adata = anndata.read_h5ad(out / "cells.h5ad")
    assert adata.n_obs == sum(len(load_results(out / s[1]).cells) for s in SLIDES)
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    p1 = adata.obs["slide_id"] == "p1-ki67"
    cells = load_results(out / "p1-ki67").cells.sort_values("cell_id")
    # a call some slides lack is a category (negative / positive), missing for the others
    np.testing.assert_array_equal(
        adata.obs.loc[p1, "ki67_positive"].to_numpy() == "positive",
        cells["ki67_positive"].to_numpy(),
    )
    # a call the slide's assay does not make is missing, not negative
    assert adata.obs.loc[p1, "sabgal_positive"].isna().all()
    np.testing.assert_allclose(
        adata[p1.to_numpy()].X[:, list(adata.var_names).index("nucleus_area_um2")],
        cells["nucleus_area_um2"].to_numpy(),
        rtol=1e-6,
    )


def _run_cli(sheet: Path, out: Path) -> subprocess.Popen:
    code = "from senpath.cli import main; main()"
    args = [sys.executable, "-c", code, "run", str(sheet), "--out", str(out)]
    args += ["--segmenter", "classical"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_gives_the_uninterrupted_result(tmp_path):
    slides = [("P1", f"s{i}", "ki67", 20 + i) for i in range(4)]
    rows = ["patient_id,slide_id,path,assay"]
    for patient, slide_id, assay, seed in slides:
        s = _write(tmp_path, assay, seed, shape=(640, 640))
        rows.append(f"{patient},{slide_id},{s.path.name},{assay}")
    sheet = tmp_path / "samples.csv"
    sheet.write_text("\n".join(rows) + "\n")

    reference = tmp_path / "reference"
    proc = _run_cli(sheet, reference)
    assert proc.wait(timeout=600) == 0, proc.stdout.read().decode() if proc.stdout else ""

    out = tmp_path / "killed"
    proc = _run_cli(sheet, out)
    deadline = time.monotonic() + 300
    while not (out / "s0" / MANIFEST).exists():  # the first slide is committed ...
        assert proc.poll() is None, "the batch ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # ... and the second one is under way
    proc.wait(timeout=60)
    complete = [sid for _, sid, _, _ in slides if is_complete(out / sid)]
    assert "s0" in complete and len(complete) < len(slides), complete
    # whatever the kill left behind is not complete and has no file under a final name half-written
    for _, sid, _, _ in slides:
        if sid not in complete and (out / sid).exists():
            assert not (out / sid / MANIFEST).exists()
    committed = {sid: (out / sid / CELLS).stat().st_mtime_ns for sid in complete}

    proc = _run_cli(sheet, out)
    stdout = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, stdout
    assert f"{len(complete)} skipped" in stdout, stdout
    for sid, mtime in committed.items():  # complete slides were not recomputed
        assert (out / sid / CELLS).stat().st_mtime_ns == mtime
    for _, sid, _, _ in slides:
        got, want = load_results(out / sid), load_results(reference / sid)
        pd.testing.assert_frame_equal(got.cells, want.cells)
        for key in ("n_cells", "markers", "median_nucleus_area_um2"):
            assert got.summary[key] == want.summary[key], (sid, key)
        assert (out / sid / SUMMARY).read_bytes() == (reference / sid / SUMMARY).read_bytes()
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
