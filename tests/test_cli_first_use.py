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
