"""Per-patient tables (integer counts, provenance columns) and the export command (tables, GeoJSON)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import senpath
from senpath.cli import app
from senpath.export import export_geojson, load_all, marker_table


def test_counts_stay_integer_and_provenance_columns(batch_results):
    table = marker_table(load_all(batch_results), by="patient").set_index("patient_id")
    assert list(table.index) == ["P1", "P2"]
    for col in (
        "n_slides",
        "n_cells",
        "ki67_n_cells",
        "ki67_n_positive",
        "p16_n_cells",
        "p16_allred",
    ):
        assert str(table[col].dtype) == "Int64", col
    # P1 has no p16 slide: its p16 counts are missing, not 0 and not a float NaN
    assert pd.isna(table.loc["P1", "p16_n_cells"]) and table.loc["P2", "p16_n_cells"] > 0
    cells = senpath.load_results(batch_results / "p1-ki67").cells
    assert table.loc["P1", "ki67_n_cells"] == len(cells)
    assert table.loc["P1", "ki67_n_positive"] == int(cells["ki67_positive"].sum())
    assert table.loc["P1", "segmenter"] == "classical"
    assert table.loc["P1", "analysis_mpp"] == "0.5"
    assert table.loc["P1", "ki67_threshold_od"] == "0.15"
    assert pd.isna(table.loc["P1", "p16_threshold_od"])  # no p16 slide


def test_excluded_cells_are_left_out(batch_results):
    res = senpath.load_results(batch_results / "p1-ki67")
    res.cells["excluded"] = False
    res.cells.loc[res.cells.index[:5], "excluded"] = True
    row = marker_table([res], by="slide").iloc[0]
    assert row["ki67_n_cells"] == len(res.cells) - 5


def test_export_command_tables_and_geojson(batch_results, tmp_path):
    runner = CliRunner()
    stem = tmp_path / "t" / "markers"
    r = runner.invoke(
        app, ["export", str(batch_results), "--format", "csv,parquet,xlsx", "--out", str(stem)]
    )
    assert r.exit_code == 0, r.output
    parquet = pd.read_parquet(f"{stem}.parquet")
    assert str(parquet["p16_n_cells"].dtype) == "Int64"
    csv = pd.read_csv(f"{stem}.csv")
    assert csv["patient_id"].tolist() == ["P1", "P2"]
    assert pd.read_excel(f"{stem}.xlsx")["ki67_n_cells"].tolist()[0] == parquet["ki67_n_cells"][0]

    out = tmp_path / "qupath"
    r = runner.invoke(app, ["export", str(batch_results), "--format", "geojson", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.geojson")) == ["p1-ki67.geojson", "p2-p16.geojson"]
    for slide_id in ("p1-ki67", "p2-p16"):
        fc = json.loads((out / f"{slide_id}.geojson").read_text())
        assert len(fc["features"]) == len(senpath.load_results(batch_results / slide_id).cells)
    r = runner.invoke(app, ["export", str(batch_results), "--format", "shp"])
    assert r.exit_code != 0 and "unknown format" in r.output


def test_export_geojson_api_names_files_by_slide(batch_results, tmp_path):
    paths = export_geojson(load_all(batch_results), tmp_path)
    assert [p.name for p in paths] == ["p1-ki67.geojson", "p2-p16.geojson"]


def test_profile_command_saves_the_slide_vectors_and_thresholds(batch_results, tmp_path):
    from senpath.config import load_assays, load_config

    path = tmp_path / "labA.toml"
    r = CliRunner().invoke(
        app, ["profile", str(batch_results / "p1-ki67"), "--out", str(path), "--name", "ki67-labA"]
    )
    assert r.exit_code == 0, r.output
    prof = load_assays(path)["ki67-labA"]
    prov = senpath.load_results(batch_results / "p1-ki67").provenance
    assert prof.marker("ki67").threshold_od == prov.markers[0].threshold_od
    assert prof.marker("ki67").labelling_index  # the profile keeps what the marker reports
    used = dict(zip(prov.assay.stains, prov.assay.stain_vectors, strict=True))
    for stain in prof.stains:
        vec = np.asarray(prof.stain_vectors[stain], float)
        np.testing.assert_allclose(vec / np.linalg.norm(vec), used[stain], atol=1e-5)
    assert load_config(path).stain_vectors == "preset"  # the batch uses these vectors as given


def _review(store):
    """A person corrects a slide: one exclusion, one flipped call."""
    from senpath.corrections import CorrectionSession

    s = CorrectionSession(store, user="reviewer")
    ids = s.cells["cell_id"].to_numpy()
    s.exclude([int(ids[0])])
    s.flip_call(int(ids[1]), "ki67")
    s.save()


def test_a_review_reaches_every_table_format_with_a_corrected_column(batch_results, tmp_path):
    import shutil

    root = tmp_path / "batch"
    shutil.copytree(batch_results, root)
    runner = CliRunner()
    # the demo's export (CSV and XLSX), then a review, then an export with the default format
    r = runner.invoke(app, ["export", str(root), "--by", "patient", "--format", "csv,xlsx"])
    assert r.exit_code == 0, r.output
    before = pd.read_excel(root / "markers_by_patient.xlsx").set_index("patient_id")
    assert "corrected" not in before.columns  # an unreviewed batch: the table as it was
    _review(root / "p1-ki67")
    r = runner.invoke(app, ["export", str(root), "--by", "patient"])
    assert r.exit_code == 0, r.output
    for table in (
        pd.read_csv(root / "markers_by_patient.csv"),
        pd.read_excel(root / "markers_by_patient.xlsx"),
    ):
        row = table.set_index("patient_id")
        assert row.loc["P1", "corrected"] == "yes" and row.loc["P1", "n_corrections"] == 2
        assert row.loc["P2", "corrected"] == "no" and row.loc["P2", "n_corrections"] == 0
        assert row.loc["P1", "ki67_n_cells"] == before.loc["P1", "ki67_n_cells"] - 1  # excluded
    slides = marker_table(load_all(root), by="slide").set_index("slide_id")
    assert slides.loc["p1-ki67", "corrected"] == "yes"
    assert str(slides["n_corrections"].dtype) == "Int64"


def test_formula_like_text_is_neutralised_in_csv_and_xlsx_only(batch_results, tmp_path):
    import openpyxl

    from senpath.export import write_table

    stores = load_all(batch_results)
    for res, patient in zip(stores, ('=HYPERLINK("http://x","y")', "@SUM(A1)"), strict=True):
        res.manifest["patient_id"] = patient  # as a sample sheet gives it
    table = marker_table(stores, by="slide")
    table["note"] = ["-2+3", "\tplain"]
    table["delta"] = [-3, 2]  # a negative number stays a number
    table["text_number"] = ["-0.5", "+1"]  # text that is just a number: left as it is
    stem = tmp_path / "t"
    write_table(table, stem, ["csv", "xlsx", "parquet"])

    csv = pd.read_csv(f"{stem}.csv", keep_default_na=False)
    assert csv["patient_id"].tolist() == ['\'=HYPERLINK("http://x","y")', "'@SUM(A1)"]
    assert csv["note"].tolist() == ["'-2+3", "'\tplain"]
    assert csv["delta"].tolist() == [-3, 2] and csv["text_number"].tolist() == [-0.5, 1.0]
    assert str(csv["ki67_n_cells"].tolist()[0]) == str(table["ki67_n_cells"].tolist()[0])

    sheet = openpyxl.load_workbook(f"{stem}.xlsx").active
    header = [c.value for c in sheet[1]]
    row = {h: c for h, c in zip(header, sheet[2], strict=True)}
    assert row["patient_id"].data_type == "s"  # text, never a formula ('f')
    assert row["patient_id"].value == '\'=HYPERLINK("http://x","y")'
    assert row["delta"].value == -3 and row["delta"].data_type == "n"
    assert not any(c.data_type == "f" for r in sheet.iter_rows() for c in r)

    parquet = pd.read_parquet(f"{stem}.parquet")  # the data, unchanged
    assert parquet["patient_id"].tolist()[0] == '=HYPERLINK("http://x","y")'
    assert parquet["note"].tolist() == ["-2+3", "\tplain"]
    assert table["patient_id"].tolist()[0] == '=HYPERLINK("http://x","y")'  # not changed in place


def test_xlsx_has_a_frozen_header_units_and_number_formats(batch_results, tmp_path):
    import openpyxl

    from senpath.export import load_all, marker_table, write_table

    table = marker_table(load_all(batch_results), by="patient")
    (path,) = write_table(table, tmp_path / "markers", ["xlsx"])
    sheet = openpyxl.load_workbook(path).active
    assert sheet.freeze_panes == "B2"
    heads = {c.value: c for c in sheet[1]}
    assert "ki67_pct_positive (%)" in heads and "median_nucleus_area_um2 (µm²)" in heads
    assert "ki67_threshold_od (OD)" in heads and "analysis_mpp (µm/px)" in heads
    assert "ki67_n_cells" in heads and "patient_id" in heads  # counts and ids carry no unit
    assert heads["patient_id"].font.bold
    first = {name: sheet.cell(row=2, column=c.column) for name, c in heads.items()}
    assert first["ki67_pct_positive (%)"].number_format == "0.0"
    assert first["ki67_n_cells"].number_format == "0"
    assert first["ki67_threshold_od (OD)"].number_format == "0.000"
    # the values keep their precision (only the display is rounded)
    assert first["ki67_pct_positive (%)"].value == pytest.approx(table["ki67_pct_positive"][0])
