"""Regions widget driven as a person would: open a store, draw a Tumor and a Necrosis rectangle
over the slide, save; the store then holds the regions and every cell's region matches the drawn
rectangles (arithmetic on the centroids). Writes ``regions_viewer.png`` to the screenshot folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import senpath
from senpath.results import read_manifest, store_problems


def test_drawn_regions_are_saved_into_the_store(make_napari_viewer, store: Path, screenshot_dir):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(store), plugin="senpath-napari")
    _, widget = viewer.window.add_plugin_dock_widget("senpath-napari", "Regions")
    assert widget.folder == store
    layer = widget.regions_layer()
    # world coordinates are µm (y, x): a Tumor over the left half, a Necrosis square inside it
    tumor = np.array([[0, 0], [0, 190], [384, 190], [384, 0]], dtype=float)
    necrosis = np.array([[100, 50], [100, 150], [200, 150], [200, 50]], dtype=float)
    widget.name_edit.setText("Tumor")
    widget._name_changed()
    layer.add_rectangles([tumor])
    widget.name_edit.setText("Necrosis")
    widget._name_changed()
    layer.add_rectangles([necrosis])
    assert layer.features["region"].tolist() == ["Tumor", "Necrosis"]
    record = widget.save()
    assert record is not None, widget.status_label.text()
    assert "Saved." in widget.status_label.text()
    assert store_problems(store) == []
    assert read_manifest(store)["regions"]["source"] == "napari"

    cells = senpath.load_results(store).cells
    x, y = cells["x_um"].to_numpy(), cells["y_um"].to_numpy()
    in_necrosis = (x >= 50) & (x <= 150) & (y >= 100) & (y <= 200)
    in_tumor = (x <= 190) & (y <= 384) & ~in_necrosis
    assert in_necrosis.sum() > 3 and in_tumor.sum() > 10
    np.testing.assert_array_equal(cells["excluded"].to_numpy(), in_necrosis)
    np.testing.assert_array_equal((cells["region"] == "Tumor").to_numpy(), in_tumor)
    assert (cells["region"][~in_tumor & ~in_necrosis] == "Unannotated").all()

    # reopening the store draws its saved regions again
    viewer.layers.remove(layer)
    widget.open_store(store)
    assert widget.viewer.layers["regions"].features["region"].tolist() == ["Necrosis", "Tumor"]
    viewer.screenshot(str(screenshot_dir / "regions_viewer.png"), canvas_only=False)


def test_a_line_is_not_a_region(make_napari_viewer, store: Path):
    viewer = make_napari_viewer()
    viewer.open(str(store), plugin="senpath-napari")
    _, widget = viewer.window.add_plugin_dock_widget("senpath-napari", "Regions")
    layer = widget.regions_layer()
    layer.add_lines([np.array([[0, 0], [50, 50]], dtype=float)])
    assert widget.save() is None
    assert "shape 1 is a line: draw regions as polygons or rectangles" in widget.status_label.text()
    assert "regions" not in (read_manifest(store) or {})
