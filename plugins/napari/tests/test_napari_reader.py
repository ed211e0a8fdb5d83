"""Reader and sample data: slides as lazy multiscale layers in µm, stores as slide + calls."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from senpath_napari import _layers
from senpath_napari._reader import napari_get_reader
from senpath_napari._sample_data import REPO_SAMPLES, sample_p01_ki67


def test_reader_declines_what_senpath_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path)) is None  # a folder that is no results store
    import cv2

    cv2.imwrite(str(tmp_path / "photo.png"), np.zeros((8, 8, 3), np.uint8))
    assert napari_get_reader(str(tmp_path / "photo.png")) is None  # no pixel size: napari's own
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None


def test_slide_opens_as_lazy_multiscale_layer_in_microns(analysed: tuple[Path, Path]) -> None:
    slide, _ = analysed
    reader = napari_get_reader(str(slide))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(slide))
    assert kind == "image" and kwargs["rgb"] and kwargs["scale"] == (0.5, 0.5)
    levels = data if isinstance(data, list) else [data]
    assert all(isinstance(level, da.Array) for level in levels)
    assert levels[0].shape == (768, 768, 3)


def test_results_folder_opens_as_slide_and_calls(make_napari_viewer, store: Path) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(str(store), plugin="senpath-napari")
    kinds = {type(layer).__name__: layer for layer in layers}
    assert set(kinds) == {"Image", "Labels", "Points"}
    calls = kinds["Labels"]
    assert calls.name == "ki67 calls" and calls.scale[-1] == pytest.approx(0.5)
    import senpath

    res = senpath.load_results(store)
    # the overlay's class at a positive cell's centroid is a positive class
    row = res.cells[res.cells["ki67_positive"]].iloc[0]
    level0 = calls.data[0] if calls.multiscale else calls.data
    value = int(np.asarray(level0[int(row["y_um"] / 0.5), int(row["x_um"] / 0.5)]))
    assert _layers.overlay_class(value) in (2, 3, 4)  # the value also carries cell_id % 31
    assert value // 8 == int(row["cell_id"]) % 31
    assert len(kinds["Points"].data) == len(res.cells)


@pytest.mark.skipif(not (REPO_SAMPLES / "P01-ki67.tif").is_file(), reason="no sample_images/")
def test_sample_data(make_napari_viewer) -> None:
    [(data, kwargs, kind)] = sample_p01_ki67()
    assert kind == "image" and kwargs["metadata"]["senpath_slide"].endswith("P01-ki67.tif")
    viewer = make_napari_viewer()
    layers = viewer.open_sample("senpath-napari", "p01-ki67")
    assert layers[0].multiscale and layers[0].rgb


@pytest.mark.slow
@pytest.mark.skipif(not (REPO_SAMPLES / "P01-ki67.tif").is_file(), reason="no sample_images/")
def test_sample_with_results_analyses_once(make_napari_viewer, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SENPATH_NAPARI_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    layers = viewer.open_sample("senpath-napari", "p01-ki67-results")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels", "Points"]
    assert (tmp_path / "results" / "P01-ki67" / "manifest.json").is_file()
    _, widget = viewer.window.add_plugin_dock_widget("senpath-napari", "Review and correct")
    assert widget.session is not None and widget.session.slide_id == "P01-ki67"
