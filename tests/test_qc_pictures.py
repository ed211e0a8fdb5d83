"""QC pictures of a store: nucleus outlines for every assay (H&E included), at a zoom a pathologist can
judge, and a histogram to check a marker-free slide by."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from senpath import synth
from senpath.config import AnalysisConfig
from senpath.qc_overlay import (
    NEGATIVE_RGB,
    NUCLEUS_RGB,
    POSITIVE_RGB,
    dense_crops,
    draw_outlines,
    outline_colours,
)
from senpath.qc_plots import slide_histograms_figure
from senpath.results import QC_OVERLAY
from senpath.slide_analysis import analyze_slide


def test_outlines_are_one_pixel_and_leave_the_stain_inside_visible():
    labels = np.zeros((7, 7), np.int32)
    labels[1:6, 1:6] = 1  # a 5x5 nucleus
    rgb = np.full((7, 7, 3), 100, np.uint8)
    cells = pd.DataFrame({"cell_id": [1], "ki67_positive": [True]})
    out = draw_outlines(rgb, labels, outline_colours(cells, "ki67"))
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False  # the 16 boundary pixels of the square
    assert (out[ring] == POSITIVE_RGB).all()
    assert (out[~ring] == 100).all()  # interior and background untouched


def test_outline_colours_follow_the_call_or_one_colour_without_marker():
    cells = pd.DataFrame({"cell_id": [1, 3], "ki67_positive": pd.array([False, None], "boolean")})
    lut = outline_colours(cells, "ki67")
    assert lut[1].tolist() == list(NEGATIVE_RGB) and lut[3].tolist() == list(NEGATIVE_RGB)
    assert outline_colours(cells, None)[3].tolist() == list(NUCLEUS_RGB)


def test_dense_crops_pick_the_busiest_grid_cells_first():
    # 5 cells in the grid cell (row 1, col 0), 2 in (0, 1), none elsewhere; 10 px crops at 1 µm/px
    xs = [1, 2, 3, 4, 5, 15, 16]
    ys = [11, 12, 13, 14, 15, 2, 3]
    cells = pd.DataFrame({"x_um": xs, "y_um": ys})
    crops = dense_crops(cells, mpp=1.0, shape_px=(30, 30), side=10, n=3)
    assert [(c.y0, c.x0, c.side) for c in crops] == [(10, 0, 10), (0, 10, 10)]


def test_marker_free_histogram_shows_the_nucleus_areas():
    cells = pd.DataFrame({"nucleus_area_um2": [20.0, 30.0, 30.0, 40.0, np.nan]})
    fig = slide_histograms_figure(cells, {})
    (ax,) = fig.axes
    assert "nucleus area" in ax.get_xlabel()
    assert sum(p.get_height() for p in ax.patches) == 4  # every measured nucleus is counted


@pytest.mark.parametrize("assay", ["he", "ki67"])
def test_store_overlay_outlines_nuclei_and_adds_full_resolution_crops(tmp_path, assay):
    params = synth.SynthParams(tissue_fraction=0.95)
    s = synth.write_slide(
        tmp_path / "s.tif", assay="ki67", shape=(600, 600), mpp=0.5, seed=5, params=params
    )
    store = analyze_slide(
        s.path, out=tmp_path / "r", assay=assay, config=AnalysisConfig(segmenter="classical")
    )
    image = cv2.cvtColor(cv2.imread(str(store / QC_OVERLAY)), cv2.COLOR_BGR2RGB)
    # the overview (600 px) plus a column of 256 px crops at 0.5 µm/px beside it
    assert image.shape[1] > 600 + 256
    colours = [NUCLEUS_RGB] if assay == "he" else [POSITIVE_RGB, NEGATIVE_RGB]
    drawn = sum(int((image == c).all(axis=-1).sum()) for c in colours)
    n_cells = len(pd.read_parquet(store / "cells.parquet"))
    assert n_cells > 20 and drawn > 10 * n_cells  # outlines (many px per nucleus), not bare tissue
