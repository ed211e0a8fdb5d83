"""Regions: QuPath GeoJSON read and checked, cells assigned, exclusions, per-region figures.

Truth: a synthetic Ki67 slide drawn with stain vectors rotated a few degrees from the pipeline's
presets, analysed once (classical segmenter); regions are rectangles in level-0 px, so which cell
lies in which region is plain arithmetic on the stored centroids.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from senpath.regions import (
    UNANNOTATED,
    RegionFileError,
    assign_regions,
    parse_regions,
    regions_feature_collection,
    tissue_feature,
)

MPP = 0.5
SHAPE = (640, 640)  # (Y, X) level-0 px


def _rotated(vector: tuple[float, float, float], degrees: float) -> tuple[float, float, float]:
    """``vector`` turned by ``degrees`` towards an axis orthogonal to it (a perturbed stain)."""
    v = np.asarray(vector, dtype=np.float64)
    v /= np.linalg.norm(v)
    axis = np.cross(v, [0.0, 0.0, 1.0])
    axis /= np.linalg.norm(axis)
    other = np.cross(axis, v)
    t = math.radians(degrees)
    out = math.cos(t) * v + math.sin(t) * other
    return (float(out[0]), float(out[1]), float(out[2]))


def _box(x0: float, y0: float, x1: float, y1: float) -> list[list[list[float]]]:
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _annotation(name: str, geometry: dict) -> dict:
    return {
        "type": "Feature",
        "id": f"id-{name}",
        "geometry": geometry,
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": [200, 0, 0]},
            "isLocked": False,
        },
    }


#: The regions (level-0 px): Stroma over the whole slide, Tumor its left half, a Necrosis square
#: inside the Tumor, an Invasive front of two small boxes on the Tumor/Stroma border.
BOXES = {
    "Stroma": [(0, 0, 640, 640)],
    "Tumor": [(0, 0, 320, 640)],
    "Necrosis": [(80, 200, 240, 360)],
    "Invasive front": [(280, 0, 360, 160), (280, 480, 360, 640)],
}


def qupath_export() -> dict:
    """The regions as QuPath exports them, with a detected cell (not a region) among them."""
    feats = []
    for name, boxes in BOXES.items():
        if len(boxes) == 1:
            geometry = {"type": "Polygon", "coordinates": _box(*boxes[0])}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": [_box(*b) for b in boxes]}
        feats.append(_annotation(name, geometry))
    cell = _annotation("Tumor", {"type": "Polygon", "coordinates": _box(5, 5, 9, 9)})
    cell["properties"]["objectType"] = "cell"
    legacy = _annotation("Stroma", {"type": "Polygon", "coordinates": _box(9, 9, 19, 19)})
    del legacy["properties"]["objectType"]
    legacy["id"] = "PathDetectionObject"  # QuPath 0.2 said what an object is in its id
    feats += [cell, legacy]
    return {"type": "FeatureCollection", "features": feats}


def _inside(x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    hit = np.zeros(len(x), dtype=bool)
    for x0, y0, x1, y1 in BOXES[name]:
        hit |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return hit


def truth_regions(cells: pd.DataFrame) -> np.ndarray:
    """Each cell's region by the documented rule, by hand: exclusion first, then smallest."""
    x, y = cells["x_um"].to_numpy() / MPP, cells["y_um"].to_numpy() / MPP
    region = np.full(len(cells), UNANNOTATED, dtype=object)
    # smallest first: Invasive front (2 x 80 x 160) < Tumor < Stroma; Necrosis before all
    for name in ("Stroma", "Tumor", "Invasive front", "Necrosis"):
        region[_inside(x, y, name)] = name
    return region


@pytest.fixture(scope="module")
def region_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample sheet (with a ``regions`` column) of one synthetic Ki67 slide, run once."""
    from senpath import synth
    from senpath.config import AnalysisConfig
    from senpath.pipeline import run_batch
    from senpath.samplesheet import read_sample_sheet
    from senpath.stain import REFERENCE_STAINS

    tmp = tmp_path_factory.mktemp("regions")
    params = synth.SynthParams(
        tissue_fraction=0.95,
        stain_vectors=(
            ("hematoxylin", _rotated(REFERENCE_STAINS["hematoxylin"], 4.0)),
            ("dab", _rotated(REFERENCE_STAINS["dab"], -3.0)),
        ),
    )
    synth.write_slide(tmp / "s1.tif", assay="ki67", shape=SHAPE, mpp=MPP, seed=7, params=params)
    (tmp / "s1.geojson").write_text(json.dumps(qupath_export()), encoding="utf-8")
    (tmp / "sheet.csv").write_text(
        "patient_id,slide_id,path,assay,regions\nP1,s1,s1.tif,ki67,s1.geojson\n", encoding="utf-8"
    )
    jobs, _ = read_sample_sheet(tmp / "sheet.csv", known_assays=("ki67",))
    reports = run_batch(jobs, out=tmp / "results", config=AnalysisConfig(segmenter="classical"))
    assert [r.status for r in reports] == ["ok"], [r.message for r in reports]
    return tmp


def test_every_cell_gets_its_region_exactly(region_batch):
    from senpath import load_results

    res = load_results(region_batch / "results" / "s1")
    cells = res.cells
    assert len(cells) > 100  # enough cells in every region for the counts to mean something
    truth = truth_regions(cells)
    np.testing.assert_array_equal(cells["region"].astype(str).to_numpy(), truth)
    by_region = res.summary["regions"]["by_region"]
    for name in ("Tumor", "Stroma", "Invasive front"):
        assert (truth == name).sum() > 5, name
        assert by_region[name]["n_cells"] == int((truth == name).sum())
    assert "Necrosis" not in by_region  # an exclusion region has no figures, only a count
    # a cell in the Necrosis lies in three regions: all listed, sorted
    necrotic = cells[truth == "Necrosis"]
    assert set(necrotic["regions"]) == {"Necrosis;Stroma;Tumor"}


def test_exclusion_removes_exactly_the_cells_inside(region_batch):
    from senpath import load_results
    from senpath.results import read_results

    res = load_results(region_batch / "results" / "s1")
    truth = truth_regions(res.cells)
    inside = truth == "Necrosis"
    assert inside.sum() > 5
    np.testing.assert_array_equal(res.cells["excluded"].to_numpy(), inside)
    assert res.summary["n_cells"] == int((~inside).sum())
    assert res.summary["regions"]["n_excluded"] == int(inside.sum())
    assert res.summary["regions"]["excluded_by_region"] == {"Necrosis": int(inside.sum())}
    kept = res.cells[~inside]
    k = int(kept["ki67_positive"].sum())
    assert res.summary["markers"]["ki67"]["n_positive"] == k
    assert res.summary["markers"]["ki67"]["pct_positive"] == pytest.approx(100 * k / len(kept))
    # the raw reader sees the same: exclusion lives in the store, not in the corrections
    assert read_results(region_batch / "results" / "s1").summary["n_cells"] == len(kept)


def test_per_region_figures_come_from_the_scoring_rules(region_batch):
    from senpath import load_results
    from senpath.score import h_score, wilson_interval

    res = load_results(region_batch / "results" / "s1")
    tumor = res.cells[(res.cells["region"] == "Tumor") & ~res.cells["excluded"]]
    entry = res.summary["regions"]["by_region"]["Tumor"]
    k, n = int(tumor["ki67_positive"].sum()), len(tumor)
    ki67 = entry["markers"]["ki67"]
    assert (ki67["n_cells"], ki67["n_positive"]) == (n, k)
    assert ki67["labelling_index"] == pytest.approx(100 * k / n)
    assert ki67["pct_positive_ci95"] == pytest.approx(list(wilson_interval(k, n)))
    assert ki67["h_score"] == pytest.approx(h_score(tumor["ki67_bin"].to_numpy()))
    assert entry["median_nucleus_area_um2"] == pytest.approx(tumor["nucleus_area_um2"].median())
    # usable area: the Tumor less the Necrosis inside it, in mm²
    area = (320 * 640 - 160 * 160) * MPP * MPP / 1e6
    assert entry["area_mm2"] == pytest.approx(area)
    assert entry["cells_per_mm2"] == pytest.approx(n / area)
    assert UNANNOTATED not in res.summary["regions"]["by_region"]  # Stroma covers the slide


def test_regions_are_part_of_the_store_identity(region_batch):
    from senpath.config import AnalysisConfig
    from senpath.pipeline import run_batch
    from senpath.results import (
        CELL_REGIONS,
        CELLS,
        REGIONS,
        read_manifest,
        sha256_file,
        store_problems,
    )
    from senpath.samplesheet import read_sample_sheet

    store = region_batch / "results" / "s1"
    manifest = read_manifest(store)
    assert manifest["regions"]["sha256"] == sha256_file(region_batch / "s1.geojson")
    assert manifest["regions"]["source"].endswith("s1.geojson")
    assert manifest["files"][REGIONS] == sha256_file(region_batch / "s1.geojson")
    assert CELL_REGIONS in manifest["files"]
    assert store_problems(store) == []
    cells_sha = manifest["files"][CELLS]
    # a resumed batch skips the slide and leaves the regions be
    jobs, _ = read_sample_sheet(region_batch / "sheet.csv", known_assays=("ki67",))
    config = AnalysisConfig(segmenter="classical")
    reports = run_batch(jobs, out=region_batch / "results", config=config)
    assert [r.status for r in reports] == ["skipped"]
    assert read_manifest(store) == manifest
    # a changed regions file is attached without segmenting again: cells.parquet unchanged
    changed = qupath_export()
    changed["features"] = [
        f for f in changed["features"] if f["properties"]["classification"]["name"] != "Necrosis"
    ]
    other = region_batch / "s1-no-necrosis.geojson"
    other.write_text(json.dumps(changed), encoding="utf-8")
    (region_batch / "sheet2.csv").write_text(
        "patient_id,slide_id,path,assay,regions\nP1,s1,s1.tif,ki67,s1-no-necrosis.geojson\n",
        encoding="utf-8",
    )
    jobs, _ = read_sample_sheet(region_batch / "sheet2.csv", known_assays=("ki67",))
    try:
        reports = run_batch(jobs, out=region_batch / "results", config=config)
        assert [r.status for r in reports] == ["skipped"]
        after = read_manifest(store)
        assert after["files"][CELLS] == cells_sha
        assert after["regions"]["sha256"] == sha256_file(other)
        assert "Necrosis" not in after["regions"]["regions"]
    finally:  # the other tests of this module expect the first regions
        reports = run_batch(
            read_sample_sheet(region_batch / "sheet.csv", known_assays=("ki67",))[0],
            out=region_batch / "results",
            config=config,
        )
        assert read_manifest(store)["regions"]["sha256"] == manifest["regions"]["sha256"]


def test_a_bad_regions_file_fails_its_slide_with_one_line_and_the_batch_goes_on(region_batch):
    from senpath.config import AnalysisConfig
    from senpath.pipeline import run_batch
    from senpath.samplesheet import SlideJob

    bad = region_batch / "broken.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [', encoding="utf-8")
    job = SlideJob("s1", region_batch / "s1.tif", "ki67", "P1", regions=bad)
    reports = run_batch(
        [job], out=region_batch / "results", config=AnalysisConfig(segmenter="classical")
    )
    assert reports[0].status == "failed"
    assert "\n" not in reports[0].message
    assert str(bad) in reports[0].message and "not JSON" in reports[0].message


def _write(tmp_path: Path, obj: object, name: str = "r.geojson") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is not JSON (line 1, column 2"),
        ({"type": "Point", "coordinates": [1, 2]}, "not QuPath GeoJSON"),
        ({"type": "FeatureCollection", "features": []}, "holds no annotation polygons"),
        (
            [_annotation("Tumor", {"type": "LineString", "coordinates": [[0, 0], [5, 5]]})],
            "feature 1 (Tumor) has geometry LineString, not an area",
        ),
        (
            [
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": _box(0, 0, 5, 5)},
                    "properties": {"objectType": "annotation"},
                }
            ],
            "feature 1 has no classification",
        ),
        (
            [
                _annotation(
                    "Tumor", {"type": "Polygon", "coordinates": [[["x", 0], [5, 0], [5, 5]]]}
                )
            ],
            "feature 1 (Tumor) has unreadable coordinates (could not convert string to float",
        ),
        (
            [
                _annotation(
                    "Tumor", {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 0], [0, 0]]]}
                )
            ],
            "encloses no area",
        ),
        (
            [_annotation("a;b", {"type": "Polygon", "coordinates": _box(0, 0, 5, 5)})],
            "may not hold ';'",
        ),
    ],
)
def test_bad_geojson_is_one_clear_line_naming_the_file(tmp_path, content, says):
    from senpath.regions import read_regions

    path = _write(tmp_path, content)
    with pytest.raises(RegionFileError) as info:
        read_regions(path)
    message = str(info.value)
    assert message.startswith(f"regions file {path}: ") and "\n" not in message
    assert says in message


def test_cli_import_of_a_bad_file_prints_one_error_line(region_batch, tmp_path, capfd):
    import subprocess
    import sys

    path = _write(tmp_path, {"type": "FeatureCollection", "features": []})
    r = subprocess.run(
        [sys.executable, "-c", "from senpath.cli import main; main()", "regions", "import",
         str(region_batch / "results"), "s1", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: regions file {path}: holds no annotation polygons (nothing to use as regions)"
    ]


def test_regions_off_the_slide_are_refused(region_batch, tmp_path):
    from senpath.region_store import import_regions

    far = {"type": "FeatureCollection",
           "features": [_annotation("Tumor", {"type": "Polygon", "coordinates": _box(5e5, 5e5, 6e5, 6e5)})]}  # fmt: skip
    with pytest.raises(RegionFileError, match="no region lies on the slide"):
        import_regions(region_batch / "results" / "s1", _write(tmp_path, far))


def test_assignment_rule_by_hand():
    """Smallest region wins, exclusion first, boundary inside, no region: Unannotated."""
    data = json.dumps(
        [
            _annotation("Big", {"type": "Polygon", "coordinates": _box(0, 0, 10, 10)}),
            _annotation("Small", {"type": "Polygon", "coordinates": _box(2, 2, 4, 4)}),
            _annotation("Pen", {"type": "Polygon", "coordinates": _box(8, 8, 12, 12)}),
        ]
    ).encode()
    regions = parse_regions(data, source="t.geojson")
    x = np.array([1.0, 3.0, 4.0, 9.0, 11.0, 20.0])
    y = np.array([1.0, 3.0, 4.0, 9.0, 11.0, 20.0])
    got = assign_regions(x, y, regions)
    assert got["region"].tolist() == ["Big", "Small", "Small", "Pen", "Pen", UNANNOTATED]
    assert got["regions"].tolist() == ["Big", "Big;Small", "Big;Small", "Big;Pen", "Pen", ""]
    assert got["region_excluded"].tolist() == [False, False, False, True, True, False]


def test_tissue_outline_keeps_holes_and_scales_to_level0_px():
    mask = np.ones((10, 10), dtype=bool)
    mask[4:6, 4:6] = False  # a hole
    feature = tissue_feature(mask, mask_mpp=8.0, slide_mpp=(0.5, 0.5))
    regions = parse_regions(json.dumps([feature]).encode(), source="t", exclusion_classes=())
    (tissue,) = regions.regions
    assert tissue.name == "Tissue"
    assert tissue.area_px2 == pytest.approx(96 * 16 * 16)
    assert tissue_feature(np.zeros((3, 3), bool), mask_mpp=8.0, slide_mpp=(0.5, 0.5)) is None


def test_cells_and_detections_in_the_export_are_not_regions():
    regions = parse_regions(json.dumps(qupath_export()).encode(), source="q.geojson")
    assert regions.n_skipped == 2
    assert regions.names == ["Invasive front", "Necrosis", "Stroma", "Tumor"]
    assert [r.excluded for r in regions.regions] == [False, True, False, False]
    assert {r.name: r.n_annotations for r in regions.regions}["Tumor"] == 1


def test_drawn_polygons_round_trip_as_qupath_geojson():
    fc = regions_feature_collection([("Tumor", np.array([[0, 0], [10, 0], [10, 10], [0, 10]]))])
    (region,) = parse_regions(json.dumps(fc).encode(), source="napari").regions
    assert (region.name, region.area_px2) == ("Tumor", 100.0)
    with pytest.raises(ValueError, match="at least 3"):
        regions_feature_collection([("Tumor", np.array([[0, 0], [1, 1]]))])


def _tiny(res, slide_id, patient, rows, areas=None):
    """A store view with a hand-made cell table (region, ki67 call, bin, nucleus area, excluded)."""
    import dataclasses

    cells = pd.DataFrame(
        rows, columns=["region", "ki67_positive", "ki67_bin", "nucleus_area_um2", "excluded"]
    )
    if cells["region"].isna().all():
        cells = cells.drop(columns=["region"])
    summary = {"assay": "ki67"}
    if areas is not None:
        summary["regions"] = {"by_region": {k: {"area_mm2": v} for k, v in areas.items()}}
    manifest = {"slide_id": slide_id, "patient_id": patient}
    return dataclasses.replace(res, cells=cells, summary=summary, manifest=manifest)


def test_export_by_patient_and_region_golden(region_batch):
    """Figures per patient and region of a tiny table, worked out by hand."""
    from senpath.export import marker_table
    from senpath.results import read_results
    from senpath.score import wilson_interval

    res = read_results(region_batch / "results" / "s1")
    a = _tiny(res, "A", "P1", [
        ("Tumor", True, 1, 30.0, False), ("Tumor", True, 3, 40.0, False),
        ("Tumor", False, 0, 20.0, False), ("Tumor", False, 0, 50.0, False),
        ("Stroma", True, 2, 10.0, False), ("Stroma", False, 0, 20.0, False),
        ("Stroma", False, 0, 30.0, False), ("Necrosis", True, 3, 99.0, True),
    ], areas={"Tumor": 0.1, "Stroma": 0.05})  # fmt: skip
    b = _tiny(res, "B", "P1", [
        ("Tumor", True, 2, 60.0, False), ("Tumor", False, 0, 10.0, False),
        ("Stroma", False, 0, 40.0, False),
    ], areas={"Tumor": 0.2})  # fmt: skip
    c = _tiny(res, "C", "P2", [(None, True, 1, 25.0, False), (None, False, 0, 35.0, False)])
    table = marker_table([a, b, c], by="patient,region")
    assert list(table.columns[:4]) == ["patient_id", "region", "area_mm2", "cells_per_mm2"]
    got = table.set_index(["patient_id", "region"])
    assert list(got.index) == [("P1", "Stroma"), ("P1", "Tumor"), ("P2", "Tissue")]
    tumor, stroma, tissue = (
        got.loc[("P1", "Tumor")],
        got.loc[("P1", "Stroma")],
        got.loc[("P2", "Tissue")],
    )
    # P1 Tumor: 6 cells (4 of A, 2 of B), 3 positive with bins 1, 3, 2
    assert (tumor["n_cells"], tumor["ki67_n_positive"], tumor["n_slides"]) == (6, 3, 2)
    assert tumor["ki67_pct_positive"] == pytest.approx(50.0)
    assert tumor["ki67_labelling_index"] == pytest.approx(50.0)
    assert tumor["ki67_h_score"] == pytest.approx(100 * (1 + 3 + 2) / 6)
    lo, hi = wilson_interval(3, 6)
    assert (
        tumor["ki67_pct_positive_ci95_low"],
        tumor["ki67_pct_positive_ci95_high"],
    ) == pytest.approx((lo, hi))
    assert tumor["median_nucleus_area_um2"] == pytest.approx(35.0)
    assert tumor["area_mm2"] == pytest.approx(0.3) and tumor["cells_per_mm2"] == pytest.approx(20.0)
    # P1 Stroma: 4 cells, 1 positive (2+); B's Stroma has no drawn area: no density
    assert (stroma["n_cells"], stroma["ki67_n_positive"]) == (4, 1)
    assert stroma["ki67_h_score"] == pytest.approx(50.0)
    assert stroma["median_nucleus_area_um2"] == pytest.approx(25.0)
    assert math.isnan(stroma["area_mm2"])
    # P2 has no regions: its cells are the generated Tissue region
    assert (tissue["n_cells"], tissue["ki67_n_positive"]) == (2, 1)
    assert tissue["ki67_h_score"] == pytest.approx(50.0)
    # the excluded Necrosis cell is in no row
    assert "Necrosis" not in set(table["region"])
    assert table["n_cells"].sum() == 12


def test_cli_export_by_patient_region_and_geojson_carry_the_region(region_batch, tmp_path):
    from typer.testing import CliRunner

    from senpath import load_results
    from senpath.cli import app

    root = region_batch / "results"
    out = tmp_path / "qupath"
    r = CliRunner().invoke(
        app,
        [
            "export",
            str(root),
            "--by",
            "patient,region",
            "--format",
            "csv,geojson",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    table = pd.read_csv(root / "markers_by_patient_region.csv")
    cells = load_results(root / "s1").cells
    counted = cells[~cells["excluded"]]
    expected = counted["region"].value_counts().sort_index()
    assert table["region"].tolist() == expected.index.tolist()
    assert table["n_cells"].tolist() == expected.tolist()
    features = json.loads((out / "s1.geojson").read_text())["features"]
    region_of = dict(zip(cells["cell_id"], cells["region"], strict=True))
    from senpath.geojson import cell_uuid

    by_uuid = {cell_uuid("s1", cid): name for cid, name in region_of.items()}
    assert len(features) == len(cells)
    assert all(f["properties"]["region"] == by_uuid[f["id"]] for f in features)


def test_a_reviewers_exclusion_updates_the_region_figures(region_batch, tmp_path):
    from senpath import load_results
    from senpath.corrections import CorrectionSession
    from senpath.results import read_results, store_problems
    from senpath.testing import copy_store

    store = copy_store(region_batch / "results" / "s1", tmp_path)
    before = load_results(store).summary["regions"]["by_region"]["Tumor"]["n_cells"]
    session = CorrectionSession(store, user="tester")
    tumor = session.cells[(session.cells["region"] == "Tumor") & ~session.cells["excluded"]]
    necrotic = session.cells[session.cells["region"] == "Necrosis"]
    # including a cell of the Necrosis does not count it: the region keeps it out
    session.include([int(necrotic["cell_id"].iloc[0])])
    session.exclude([int(tumor["cell_id"].iloc[0])])
    session.save()
    session.close()
    assert store_problems(store) == []
    res = load_results(store)
    assert res.summary["regions"]["by_region"]["Tumor"]["n_cells"] == before - 1
    assert res.summary["regions"]["n_excluded"] == len(necrotic)
    assert res.cells.set_index("cell_id").loc[int(necrotic["cell_id"].iloc[0]), "excluded"]
    # the pipeline's own view is unchanged
    raw = read_results(store).summary["regions"]["by_region"]["Tumor"]["n_cells"]
    assert raw == before


def test_report_shows_the_region_table(region_batch, tmp_path):
    from senpath import load_results
    from senpath.report import write_report

    path = write_report(region_batch / "results", out=tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert "<h2>Markers by patient and region</h2>" in text
    by_region = load_results(region_batch / "results" / "s1").summary["regions"]["by_region"]
    section = text.split("Markers by patient and region")[1]
    for name, entry in by_region.items():
        assert f"<td>{name}</td>" in section
        assert f"<td>{entry['n_cells']}</td>" in section


def test_generated_tissue_region_follows_the_tissue_mask(region_batch, tmp_path):
    from senpath import load_results
    from senpath.io import open_slide
    from senpath.region_store import tissue_regions
    from senpath.testing import copy_store
    from senpath.tissue import tissue_mask

    store = copy_store(region_batch / "results" / "s1", tmp_path)
    data = tissue_regions(store)
    assert json.loads(data)["features"][0]["properties"]["classification"]["name"] == "Tissue"
    res = load_results(store)
    mask = tissue_mask(open_slide(region_batch / "s1.tif"), target_mpp=8.0)
    step = mask.mpp / MPP  # level-0 px per mask px
    x, y = res.cells["x_um"].to_numpy() / MPP / step, res.cells["y_um"].to_numpy() / MPP / step
    on_edge = np.isclose(x, np.round(x)) | np.isclose(y, np.round(y))
    rows = np.clip(y.astype(int), 0, mask.mask.shape[0] - 1)
    cols = np.clip(x.astype(int), 0, mask.mask.shape[1] - 1)
    on_tissue = mask.mask[rows, cols]
    region = res.cells["region"].to_numpy()
    np.testing.assert_array_equal(
        region[~on_edge], np.where(on_tissue, "Tissue", UNANNOTATED)[~on_edge]
    )
    assert (~on_tissue).sum() > 0 or mask.mask.all()  # the slide has glass, or the test says so
    area = res.summary["regions"]["by_region"]["Tissue"]["area_mm2"]
    assert area == pytest.approx(mask.area_um2 / 1e6)


def test_cli_import_prints_the_region_figures(region_batch, tmp_path):
    from typer.testing import CliRunner

    from senpath.cli import app
    from senpath.testing import copy_store

    store = copy_store(region_batch / "results" / "s1", tmp_path)
    r = CliRunner().invoke(
        app,
        ["regions", "import", str(store.parent), "s1", str(region_batch / "s1.geojson"),
         "--exclude", "Necrosis"],
        terminal_width=200,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "s1: 4 region(s) (Invasive front, Necrosis, Stroma, Tumor);" in r.output
    assert "cells in exclusion regions left out" in r.output
    # with no exclusion class, the Necrosis is a region like the others
    r = CliRunner().invoke(
        app,
        ["regions", "import", str(store.parent), "s1", str(region_batch / "s1.geojson"),
         "--exclude", ""],
        terminal_width=200,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "left out" not in r.output


def test_anndata_obs_carries_the_region(region_batch, tmp_path):
    pytest.importorskip("anndata")
    from senpath import load_results
    from senpath.export import cells_anndata

    res = load_results(region_batch / "results" / "s1")
    adata = cells_anndata([res], images=False)
    assert str(adata.obs["region"].dtype) == "category"
    cells = res.cells.sort_values("cell_id")
    assert adata.obs["region"].astype(str).tolist() == cells["region"].astype(str).tolist()
    assert adata.obs["excluded"].tolist() == cells["excluded"].tolist()


def test_sheet_regions_column_names_a_missing_file_in_one_line(tmp_path):
    from senpath.samplesheet import read_sample_sheet

    (tmp_path / "s.tif").write_bytes(b"x")
    (tmp_path / "a.geojson").write_text("{}", encoding="utf-8")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "patient_id,slide_id,path,assay,regions\n"
        "P1,a,s.tif,ki67,a.geojson\nP2,b,s.tif,ki67,missing.geojson\nP3,c,s.tif,ki67,\n",
        encoding="utf-8",
    )
    jobs, problems = read_sample_sheet(sheet, known_assays=("ki67",), skip_bad_rows=True)
    assert [j.slide_id for j in jobs] == ["a", "c"]
    assert jobs[0].regions == tmp_path / "a.geojson" and jobs[1].regions is None
    assert problems == [
        f"{sheet}: row 3: regions file {tmp_path / 'missing.geojson'} does not exist (a QuPath "
        "GeoJSON export)"
    ]


def test_a_reanalysed_slide_keeps_its_regions(region_batch, tmp_path):
    from senpath import load_results
    from senpath.config import AnalysisConfig
    from senpath.pipeline import run_batch
    from senpath.region_store import import_regions
    from senpath.results import read_manifest
    from senpath.samplesheet import SlideJob
    from senpath.testing import copy_store

    store = copy_store(region_batch / "results" / "s1", tmp_path)
    import_regions(store, region_batch / "s1.geojson", exclusion_classes=("Necrosis", "Fold"))
    before = read_manifest(store)["regions"]
    job = SlideJob("s1", region_batch / "s1.tif", "ki67", "P1")  # no regions in the sheet
    reports = run_batch(
        [job], out=store.parent, config=AnalysisConfig(segmenter="classical"), force=True
    )
    assert [r.status for r in reports] == ["ok"]
    after = read_manifest(store)["regions"]
    assert after == before  # same file, source and exclusion classes
    cells = load_results(store).cells
    np.testing.assert_array_equal(cells["region"].astype(str).to_numpy(), truth_regions(cells))
