"""``senpath spatial`` on committed stores: files per slide, the batch table, the report section."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from senpath.cli import app
from senpath.corrections import load_results
from senpath.results import CELLS, store_problems
from senpath.spatial import read_density_zarr
from senpath.spatial.slide import is_current, read_hotspots, stored_or_computed


@pytest.fixture(scope="module")
def spatial_results(batch_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the batch (a Ki67 and a p16 slide) after ``senpath spatial``.

    The slides are 256 µm square with about 60 cells: a field needs 20 of them here (the default
    100 is tested apart)."""
    root = tmp_path_factory.mktemp("spatial") / "results"
    shutil.copytree(batch_results, root)
    r = CliRunner().invoke(
        app, ["spatial", str(root), "--format", "csv,parquet", "--min-cells", "20"]
    )
    assert r.exit_code == 0, r.output
    assert "p1-ki67: wrote density.ome.zarr, hotspots.json" in r.output
    return root


def test_spatial_writes_maps_and_hotspots_that_agree_with_the_summary(spatial_results) -> None:
    for slide, target, summary_key in (
        ("p1-ki67", "ki67", None),
        ("p2-p16", "p16", None),
        ("p2-p16", "senescent", "senescent_index"),
    ):
        folder = spatial_results / slide
        res = load_results(folder)
        maps = read_density_zarr(folder)
        # every counted cell is in one bin; the maps' % is the summary's figure, per bin
        assert maps.channels["n_cells"].sum() == res.summary["n_cells"]
        assert maps.grid.spacing_um == 100.0
        stored = read_hotspots(folder)
        assert stored is not None and is_current(res, stored)
        spot = next(h for h in stored["hotspots"] if h["target"] == target)
        expected = (
            res.summary[summary_key]
            if summary_key
            else res.summary["markers"][target]["pct_positive"]
        )
        assert spot["global_index_pct"] == pytest.approx(expected)
        # derived files are beside the store, which stays complete
        assert store_problems(folder) == []


def test_the_batch_table_has_one_row_per_slide_and_target(spatial_results) -> None:
    table = pd.read_csv(spatial_results / "hotspots_by_slide.csv")
    assert (spatial_results / "hotspots_by_slide.parquet").is_file()
    assert list(zip(table["slide_id"], table["target"], strict=True)) == [
        ("p1-ki67", "ki67"),
        ("p2-p16", "p16"),
        ("p2-p16", "senescent"),
    ]
    for col in ("index_pct", "centre_x_um", "centre_y_um", "field_area_mm2", "n_cells",
                "global_index_pct", "rule", "found", "reason"):  # fmt: skip
        assert col in table.columns
    assert table["found"].all()
    assert (table["n_cells"] >= 20).all() and (table["field_area_mm2"] == 0.2).all()
    # the slides are 256 µm square
    assert ((table["centre_x_um"] >= 0) & (table["centre_x_um"] <= 256)).all()
    assert ((table["centre_y_um"] >= 0) & (table["centre_y_um"] <= 256)).all()


def test_slides_too_small_for_the_default_field_say_so(spatial_results, tmp_path) -> None:
    root = tmp_path / "results"
    shutil.copytree(spatial_results, root)
    r = CliRunner().invoke(app, ["spatial", str(root)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(root / "hotspots_by_slide.csv")
    assert not table["found"].any()
    n = load_results(root / "p1-ki67").summary["n_cells"]
    assert table["reason"].iloc[0] == (
        f"the slide has {n} counted cell(s), fewer than the 100 cells a field must hold"
    )


def test_other_settings_recompute_without_resegmenting(spatial_results, tmp_path) -> None:
    root = tmp_path / "results"
    shutil.copytree(spatial_results, root)
    before = (root / "p1-ki67" / CELLS).read_bytes()
    r = CliRunner().invoke(
        app,
        ["spatial", str(root), "--grid-um", "50", "--field", "cells", "--field-cells", "50",
         "--step-um", "20"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (root / "p1-ki67" / CELLS).read_bytes() == before
    maps = read_density_zarr(root / "p1-ki67")
    assert maps.grid.spacing_um == 50.0
    spot = read_hotspots(root / "p1-ki67")["hotspots"][0]  # type: ignore[index]
    assert spot["rule"] == "50 nearest cells" and spot["n_cells"] == 50
    assert read_hotspots(root / "p1-ki67")["settings"]["grid_um"] == 50.0  # type: ignore[index]


def test_a_broken_store_fails_alone(spatial_results, tmp_path) -> None:
    root = tmp_path / "results"
    shutil.copytree(spatial_results, root)
    (root / "p1-ki67" / CELLS).write_bytes(b"not parquet")
    r = CliRunner().invoke(app, ["spatial", str(root)])
    assert r.exit_code == 1
    assert "p2-p16: wrote" in r.output
    assert "p1-ki67" in r.output and "does not match manifest.json" in r.output
    table = pd.read_csv(root / "hotspots_by_slide.csv")
    assert set(table["slide_id"]) == {"p2-p16"}


def test_bad_settings_are_one_error_before_any_slide(spatial_results) -> None:
    r = CliRunner().invoke(app, ["spatial", str(spatial_results), "--grid-um", "0"])
    assert r.exit_code != 0 and "spacing_um=0" in str(r.exception)
    r = CliRunner().invoke(app, ["spatial", str(spatial_results), "--field", "hpf"])
    assert r.exit_code != 0 and "use 'area' or 'cells'" in str(r.exception)


def test_a_results_folder_without_stores_is_one_line(tmp_path) -> None:
    r = CliRunner().invoke(app, ["spatial", str(tmp_path)])
    assert r.exit_code != 0
    assert "no committed results store" in str(r.exception)


def test_stored_figures_are_used_only_while_current(spatial_results, tmp_path) -> None:
    root = tmp_path / "results"
    shutil.copytree(spatial_results, root)
    folder = root / "p1-ki67"
    res = load_results(folder)
    sp = stored_or_computed(res)
    assert sp.maps.grid.spacing_um == 100.0 and sp.hotspots[0].target == "ki67"
    # another rule written in the file but a different source: recomputed with the stored rule
    stored = json.loads((folder / "hotspots.json").read_text())
    stored["source"]["n_corrections"] = 99
    stored["hotspots"][0]["index_pct"] = -1.0  # a stale figure must not be shown
    (folder / "hotspots.json").write_text(json.dumps(stored))
    assert not is_current(res, stored)
    fresh = stored_or_computed(res)
    assert fresh.hotspots[0].index_pct >= 0
    assert math.isclose(fresh.hotspots[0].global_index_pct, sp.hotspots[0].global_index_pct)


def test_the_report_shows_maps_and_hotspots(spatial_results, tmp_path) -> None:
    from senpath.report import write_report

    path = write_report(spatial_results, out=tmp_path / "report.html")
    text = path.read_text()
    assert "Where: density maps and hot-spots" in text
    assert text.count("alt='density ") == 2
    ki67 = pd.read_csv(spatial_results / "hotspots_by_slide.csv").iloc[0]
    assert f"{ki67['index_pct']:.1f} (" in text
    assert f"({ki67['centre_x_um']:.0f}, {ki67['centre_y_um']:.0f})" in text


def test_an_empty_slide_gives_a_clear_result(spatial_results, tmp_path) -> None:
    from senpath.spatial import slide_spatial

    res = load_results(spatial_results / "p2-p16")
    res.cells = res.cells.iloc[:0]
    sp = slide_spatial(res)
    assert sp.maps.channels["n_cells"].sum() == 0
    assert all(not h.found and "0 counted cell(s)" in h.reason for h in sp.hotspots)
    assert np.isnan(sp.maps.channels["p16_pct_positive"]).all()


def _turned(vector: tuple[float, float, float], towards: tuple[float, float, float], deg: float):
    """``vector`` turned by ``deg`` degrees towards ``towards`` (unit length)."""
    a = np.asarray(vector, float) / np.linalg.norm(vector)
    b = np.asarray(towards, float)
    b = b - a * (a @ b)
    b /= np.linalg.norm(b)
    t = math.radians(deg)
    return tuple(float(v) for v in math.cos(t) * a + math.sin(t) * b)


@pytest.mark.slow
def test_a_drawn_proliferative_patch_is_found_end_to_end(tmp_path) -> None:
    """A synthetic Ki67 slide with a known proliferative patch, drawn with stain vectors turned
    6-7° from the pipeline's, segmented and scored by senpath: the hot-spot lies within one field
    of the patch's centre and its index is the patch's, well above the global index."""
    from senpath import synth
    from senpath.config import AnalysisConfig
    from senpath.pipeline import analyze_slide
    from senpath.spatial import HotspotRule, run_spatial
    from senpath.stain import REFERENCE_STAINS

    patch = (420.0, 190.0, 110.0)  # x, y, radius in µm: 90 % Ki67+ inside, 8 % outside
    params = synth.SynthParams(
        tissue_fraction=1.0,
        ki67_positive_fraction=0.08,
        senescent_fraction=0.05,
        ki67_patches=((*patch, 0.9),),
        stain_vectors=(
            ("hematoxylin", _turned(REFERENCE_STAINS["hematoxylin"], (0.0, 0.0, 1.0), 6.0)),
            ("dab", _turned(REFERENCE_STAINS["dab"], (1.0, 0.0, 0.0), 7.0)),
        ),
    )
    slide = synth.write_slide(
        tmp_path / "patch.tif", assay="ki67", shape=(1200, 1200), mpp=0.5, seed=11, params=params
    )
    store = analyze_slide(
        slide.path, out=tmp_path / "results", assay="ki67",
        config=AnalysisConfig(segmenter="classical"),
    )  # fmt: skip
    rule = HotspotRule(field_area_mm2=0.03, min_cells=30, step_um=20.0)  # radius 98 µm
    _, failures = run_spatial(tmp_path / "results", rule=rule, grid_um=50.0)
    assert failures == []
    spot = read_hotspots(store)["hotspots"][0]  # type: ignore[index]
    truth = pd.read_parquet(slide.truth_path)
    distance = math.hypot(spot["centre_x_um"] - patch[0], spot["centre_y_um"] - patch[1])
    print(
        f"hot-spot at ({spot['centre_x_um']:.0f}, {spot['centre_y_um']:.0f}) µm, "
        f"{distance:.0f} µm from the patch centre; index {spot['index_pct']:.1f} % "
        f"({spot['n_cells']} cells), global {spot['global_index_pct']:.1f} % "
        f"(truth {100 * truth['ki67_positive'].mean():.1f} %)"
    )
    assert distance <= rule.radius_um
    assert spot["index_pct"] >= 70 and spot["global_index_pct"] < 35
    maps = read_density_zarr(store)
    # the density map's Ki67 % is highest in the bins of the patch
    row, col = np.unravel_index(
        np.nanargmax(np.where(maps.channels["n_cells"] >= 5, maps.channels["ki67_pct_positive"],
                              np.nan)), maps.grid.shape,
    )  # fmt: skip
    xs, ys = maps.grid.bin_centres_um()
    assert math.hypot(xs[col] - patch[0], ys[row] - patch[1]) <= patch[2] + 50


def test_the_picture_has_the_slide_under_the_hotspots_when_the_slide_is_found(
    spatial_results,
) -> None:
    from dataclasses import replace

    from senpath.spatial.figure import density_figure, slide_thumbnail

    res = load_results(spatial_results / "p1-ki67")
    sp = stored_or_computed(res)
    thumb = slide_thumbnail(res, sp.maps.grid)
    assert thumb is not None
    rgb, (left, right, bottom, top) = thumb
    assert rgb.ndim == 3 and rgb.dtype == np.uint8 and max(rgb.shape[:2]) <= 601
    assert (left, top) == (0.0, 0.0) and right == pytest.approx(256, abs=1)
    fig = density_figure(sp.maps, sp.hotspots, thumbnail=thumb)
    assert fig.axes[0].get_title() == "slide and hot-spot fields"
    # a slide that moved: the picture goes on without it
    slide = {**res.provenance.slide, "path": "/nowhere/slide.tif"}
    moved = replace(res, provenance=replace(res.provenance, slide=slide))
    assert slide_thumbnail(moved, sp.maps.grid) is None
