"""Density maps and hot-spots in napari: layers in the slide's µm, opened with the results folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from senpath.spatial import HotspotRule, read_density_zarr, run_spatial
from senpath.spatial.slide import read_hotspots

from senpath_napari._reader import napari_get_reader


@pytest.fixture
def spatial_store(store: Path) -> Path:
    # the slide is 384 µm square: a 0.05 mm² field with at least 20 cells fits in it
    _, failures = run_spatial(store, rule=HotspotRule(field_area_mm2=0.05, min_cells=20),
                              grid_um=50.0)  # fmt: skip
    assert failures == []
    return store


def test_results_folder_opens_with_density_maps_and_hotspots(
    make_napari_viewer, spatial_store: Path, screenshot_dir: Path
) -> None:
    import senpath

    viewer = make_napari_viewer()
    layers = viewer.open(str(spatial_store), plugin="senpath-napari")
    by_name = {layer.name: layer for layer in layers}
    density = by_name["cells_per_mm2 (50 µm)"]
    assert "ki67_pct_positive (50 µm)" in by_name
    maps = read_density_zarr(spatial_store)
    # world µm -> bin: a cell's centroid lands in a bin that counts it
    res = senpath.load_results(spatial_store)
    cell = res.cells.iloc[len(res.cells) // 2]
    row, col = (int(v) for v in np.round(density.world_to_data((cell["y_um"], cell["x_um"]))))
    expected = maps.grid.bin_of(cell["x_um"], cell["y_um"])
    assert (row, col) == (int(expected[0]), int(expected[1]))
    assert density.data[row, col] > 0
    # the hot-spot field is drawn where hotspots.json puts it, with its radius
    spots = by_name["hot-spots"]
    stored = read_hotspots(spatial_store)["hotspots"][0]  # type: ignore[index]
    corners = np.asarray(spots.data[0])
    assert corners.mean(axis=0) == pytest.approx([stored["centre_y_um"], stored["centre_x_um"]])
    assert np.ptp(corners[:, 1]) == pytest.approx(2 * stored["field_radius_um"])
    assert spots.shape_type[0] == "ellipse"
    assert spots.features["label"][0].startswith("ki67 hot-spot")
    density.visible = True
    viewer.reset_view()
    viewer.screenshot(str(screenshot_dir / "spatial_napari.png"), canvas_only=False)


def test_density_image_opens_on_its_own(make_napari_viewer, spatial_store: Path) -> None:
    path = spatial_store / "density.ome.zarr"
    assert napari_get_reader(str(path)) is not None
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="senpath-napari")
    assert layers[0].visible and layers[0].scale[-1] == 50.0


def test_a_store_without_spatial_figures_opens_as_before(make_napari_viewer, store: Path) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(str(store), plugin="senpath-napari")
    assert {type(layer).__name__ for layer in layers} == {"Image", "Labels", "Points"}


def test_maps_of_cells_that_changed_since_are_named_stale(
    make_napari_viewer, spatial_store
) -> None:
    import json

    path = spatial_store / "hotspots.json"
    stored = json.loads(path.read_text())
    stored["source"]["cells_sha256"] = "0" * 64  # as after `senpath run --force`
    path.write_text(json.dumps(stored))
    viewer = make_napari_viewer()
    layers = viewer.open(str(spatial_store), plugin="senpath-napari")
    names = [layer.name for layer in layers]
    assert "hot-spots (stale)" in names and "cells_per_mm2 (50 µm) (stale)" in names


def test_cross_section_map_opens_with_its_reference_section(
    make_napari_viewer, store: Path
) -> None:
    """A patient's senescence map (``senpath register``) in its reference section's µm: each grid
    cell's centre in world µm falls on that cell of the layer, and the calls read back."""
    import json

    import pandas as pd
    from senpath.registration import parse_rule
    from senpath.registration._map_image import colocalisation_maps, write_map_image

    rule = parse_rule("sabgal>=0.3,ki67<=0.1")
    grid_um, shape = 100.0, (4, 4)
    rng = np.random.default_rng(5)
    rows, cols = np.divmod(np.arange(16), 4)
    table = pd.DataFrame(
        {
            "row": rows,
            "col": cols,
            "x_um": (cols + 0.5) * grid_um,
            "y_um": (rows + 0.5) * grid_um,
            "sabgal_cells": rng.integers(5, 30, 16),
            "sabgal_positive_fraction": rng.random(16),
            "ki67_cells": rng.integers(5, 30, 16),
            "ki67_positive_fraction": rng.random(16) * 0.2,
            "unsure": rows == 3,
        }
    )
    table["call"] = np.where(
        table["unsure"],
        "unsure",
        np.where(
            (table["sabgal_positive_fraction"] >= 0.3) & (table["ki67_positive_fraction"] <= 0.1),
            "positive",
            "negative",
        ),
    )
    folder = store.parent / "_sections" / "P1"
    folder.mkdir(parents=True)
    write_map_image(
        folder, colocalisation_maps(table, rule, grid_um=grid_um, shape=shape), name="P1"
    )
    (folder / "registration.json").write_text(
        json.dumps({"patient_id": "P1", "reference": store.name, "registrations": []})
    )
    viewer = make_napari_viewer()
    layers = viewer.open(str(store), plugin="senpath-napari")
    by_name = {layer.name: layer for layer in layers}
    layer = by_name["P1 sections: senescence_map (100 µm)"]
    assert not layer.visible and tuple(layer.scale) == (grid_um, grid_um)
    assert tuple(layer.translate) == (grid_um / 2, grid_um / 2)
    assert layer.metadata["senpath_role"] == "section_map"
    for _, cell in table.iterrows():
        r, c = (int(v) for v in np.round(layer.world_to_data((cell["y_um"], cell["x_um"]))))
        assert (r, c) == (cell["row"], cell["col"])
        expected = {"positive": 1.0, "negative": 0.0}.get(cell["call"])
        value = layer.data[r, c]
        assert np.isnan(value) if expected is None else value == expected
    ki67 = by_name["P1 sections: ki67_pct_positive (100 µm)"]
    assert ki67.data[1, 2] == pytest.approx(100 * table["ki67_positive_fraction"][6])
    # another patient's map (its reference is another slide) does not open with this store
    other = json.loads((folder / "registration.json").read_text())
    other["reference"] = "someone-else"
    (folder / "registration.json").write_text(json.dumps(other))
    again = viewer.open(str(store), plugin="senpath-napari")
    assert not any("sections:" in layer.name for layer in again)
