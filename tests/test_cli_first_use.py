"""What a new user meets first on the command line: a version, help that keeps TOML table names,
and exports that put each file where the help says."""

from __future__ import annotations

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
