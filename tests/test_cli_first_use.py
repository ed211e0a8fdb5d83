"""What a new user meets first on the command line: a version, help that keeps TOML table names,
and exports that put each file where the help says."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import senpath
from senpath.cli import app


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"senpath {senpath.__version__}"


def test_help_and_usage_errors_keep_bracketed_toml_names():
    r = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert "[analysis]" in r.output and "[assay.*]" in r.output  # rich markup used to eat them
    r = CliRunner().invoke(app, ["export", ".", "--format", "xlsx,[assay.x]"], terminal_width=200)
    assert r.exit_code == 2 and "[assay.x]" in r.output


def test_geojson_export_keeps_the_tables_out_of_the_geojson_folder(batch_results, tmp_path):
    import shutil

    root = tmp_path / "results"
    shutil.copytree(batch_results, root)
    r = CliRunner().invoke(app, ["export", str(root), "--format", "geojson,csv,anndata"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (root / "geojson").iterdir()) == [
        "p1-ki67.geojson",
        "p2-p16.geojson",
    ]
    assert (root / "markers_by_patient.csv").is_file() and (root / "cells.h5ad").is_file()


def test_without_a_terminal_each_slide_done_is_one_plain_line(tmp_path):
    import re

    from senpath import synth

    params = synth.SynthParams(tissue_fraction=0.95)
    (tmp_path / "in").mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        synth.write_slide(
            tmp_path / "in" / f"{name}.tif", assay="ki67", shape=(256, 256), mpp=0.5, seed=seed,
            params=params,
        )  # fmt: skip
    r = CliRunner().invoke(
        app,
        ["run", str(tmp_path / "in"), "--out", str(tmp_path / "r"), "--assay", "ki67",
         "--segmenter", "classical"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = re.findall(r"^senpath: (\d)/2 (\S+) ok, (\d+) cells, [\d.]+ s$", r.output, re.M)
    assert [(k, s) for k, s, _ in lines] == [("1", "a"), ("2", "b")]
    assert not re.search(r"^\s*slides\s", r.output, re.M)  # no progress bar drawn into a log


def _contradicting_sheet(tmp_path):
    """A sheet whose mpp is 2x off the slide file's calibration, and a fast (classical) config."""
    from senpath import synth

    synth.write_slide(
        tmp_path / "a.tif", assay="ki67", shape=(256, 256), mpp=0.5, seed=6,
        params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip
    (tmp_path / "s.csv").write_text("patient_id,slide_id,path,assay,mpp\nP1,off,a.tif,ki67,0.25\n")
    (tmp_path / "c.toml").write_text('[analysis]\nsegmenter = "classical"\n')


def _senpath(*args, cwd):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", "from senpath.cli import main; main()", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_warning_is_one_line_and_debug_is_a_global_option(tmp_path):
    _contradicting_sheet(tmp_path)
    r = _senpath("run", "s.csv", "--out", "out", "--config", "c.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "explicit pixel size" in ln]
    # Python's default printed "path:line: SlideWarning: ..." and then the source line
    assert len(warned) == 1 and warned[0].startswith("warning: a.tif: the explicit pixel size")
    assert "open_slide(" not in r.stderr and "SlideWarning" not in r.stderr
    # `senpath --debug CMD` (a second callback once hid the option) keeps Python's full form
    r = _senpath("--debug", "run", "s.csv", "--out", "out2", "--config", "c.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "SlideWarning: a.tif: the explicit pixel size" in r.stderr


@pytest.mark.parametrize(
    ("variable", "value"), [("SENPATH_POST_WORKERS", "two"), ("SENPATH_PRECISION", "fp64")]
)
def test_a_bad_environment_setting_stops_the_batch_before_any_slide(
    tmp_path, monkeypatch, variable, value
):
    """One line naming the variable and exit code 2, before any slide is read: not the same
    failure once per slide of the batch."""
    from senpath import synth

    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        synth.write_slide(tmp_path / "in" / f"{name}.tif", assay="ki67", shape=(128, 128), mpp=0.5,
                          seed=1)  # fmt: skip
    monkeypatch.setenv(variable, value)
    r = CliRunner().invoke(
        app, ["run", str(tmp_path / "in"), "--out", str(tmp_path / "r"), "--assay", "ki67"],
        terminal_width=200,
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    problems = [line for line in r.output.splitlines() if f"{variable}={value!r}" in line]
    assert len(problems) == 1 and problems[0].startswith("environment:"), r.output
    assert not (tmp_path / "r").exists()  # no slide started
