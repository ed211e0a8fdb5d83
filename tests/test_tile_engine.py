"""The tile engine every caller runs: one segmenter per slide, one deconvolution per tile, and the
quick look of a box (napari) giving the cells a stored run holds there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import senpath
from senpath import synth
from senpath.config import AnalysisConfig, get_assay
from senpath.labels import load_labels
from senpath.slide_plan import plan_slide
from senpath.tile_engine import analyze_box, grid_box
from senpath.tiling import Box

#: 64 µm tiles = 128 px at 0.5 µm/px: a 512-px slide has 16 tiles, so a box spans several.
CONFIG = AnalysisConfig(segmenter="classical", tile_size_um=64)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(slide, store) of a 512 x 512 px synthetic Ki67 slide analysed by a run."""
    root = tmp_path_factory.mktemp("engine")
    s = synth.write_slide(
        root / "k.tif", assay="ki67", shape=(512, 512), mpp=0.5, seed=4,
        params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip
    return s.path, senpath.analyze_slide(s.path, out=root / "res", assay="ki67", config=CONFIG)


def _in_box(cells: pd.DataFrame, box: Box, mpp: float) -> pd.Series:
    y, x = cells["y_um"] / mpp - 0.5, cells["x_um"] / mpp - 0.5
    return (box.y0 <= y) & (y < box.y1) & (box.x0 <= x) & (x < box.x1)


def test_quick_look_of_a_box_has_the_cells_of_the_stored_run(stored: tuple[Path, Path]) -> None:
    path, store = stored
    plan = plan_slide(path, assay=get_assay("ki67"), config=CONFIG)
    box = grid_box(plan, (40.0, 50.3, 165.0, 164.9))  # µm: crosses tile edges at 64 and 128 µm
    assert box == Box(80, 100, 330, 330)
    progress = []
    run = analyze_box(plan, box)
    try:
        while True:
            progress.append(next(run))
    except StopIteration as done:
        cells, labels = done.value
    assert progress[-1] == (9, 9)  # the 3 x 3 tiles whose box meets the region

    saved = pd.read_parquet(store / "cells.parquet")
    saved = saved[_in_box(saved, box, 0.5)].reset_index(drop=True)
    assert len(cells) == len(saved) > 10
    columns = list(cells.columns.drop("cell_id"))
    by_place = ["y_um", "x_um"]
    pd.testing.assert_frame_equal(  # every measurement identical, to the bit
        cells[columns].sort_values(by_place).reset_index(drop=True),
        saved[columns].sort_values(by_place).reset_index(drop=True),
        check_exact=True,
    )
    # the labels too: the stored label image in the box, its ids renamed to the quick look's
    ids = cells.sort_values(by_place)["cell_id"].to_numpy()
    saved_ids = saved.sort_values(by_place)["cell_id"].to_numpy()
    whole = np.asarray(load_labels(store).compute())[box.slices]
    lut = np.zeros(int(whole.max()) + 1, np.int64)
    lut[saved_ids] = ids
    assert labels.shape == box.shape and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, lut[whole])


def test_quick_look_of_glass_or_outside_the_slide_is_empty(stored: tuple[Path, Path]) -> None:
    path, _ = stored
    plan = plan_slide(path, assay=get_assay("ki67"), config=CONFIG)
    outside = grid_box(plan, (300.0, 300.0, 400.0, 400.0))  # past the 256 µm slide
    assert outside.shape == (0, 0)
    run = analyze_box(plan, outside)
    with pytest.raises(StopIteration) as done:
        next(run)
    cells, labels = done.value.value
    assert len(cells) == 0 and "tile_label" in cells and labels.shape == (0, 0)


def test_a_slide_loads_one_segmenter_and_deconvolves_each_tile_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import senpath.segment.classical as classical
    import senpath.tile_engine as engine

    loaded: list[str] = []
    deconvolved: list[tuple[int, ...]] = []
    real_load, real_deconvolve = engine.load_segmenter, engine.deconvolve

    def load(method: str, **kwargs: Any) -> Any:
        loaded.append(method)
        return real_load(method, **kwargs)

    def deconvolve(rgb: np.ndarray, *args: Any) -> np.ndarray:
        deconvolved.append(rgb.shape)
        return real_deconvolve(rgb, *args)

    monkeypatch.setattr(engine, "load_segmenter", load)
    monkeypatch.setattr(engine, "deconvolve", deconvolve)
    monkeypatch.setattr(classical, "deconvolve", deconvolve)
    s = synth.write_slide(tmp_path / "k.tif", assay="ki67", shape=(384, 384), mpp=0.5, seed=2)
    store = senpath.analyze_slide(s.path, out=tmp_path / "res", assay="ki67", config=CONFIG)
    n_tiles = senpath.load_results(store).summary["n_tiles"]
    assert n_tiles == 9
    assert loaded == ["classical"]  # once per slide, not per tile
    assert len(deconvolved) == n_tiles  # once per tile: segmenting and measuring share it
