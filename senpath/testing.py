"""Helpers for tests of code built on senpath: its own tests, the napari plugin's, a lab's scripts.

Like :mod:`numpy.testing` or scikit-image's and napari's test helpers, they ship with the library so
that every test suite can import them (the plugin's tests cannot import ``tests/``). They make small
synthetic inputs on the spot: no files from outside, no model weights.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def analysed_synthetic_slide(
    folder: str | Path,
    *,
    name: str,
    assay: str = "ki67",
    shape: tuple[int, int] = (512, 512),
    seed: int = 0,
    tissue_fraction: float = 0.95,
) -> tuple[Path, Path]:
    """Write a synthetic slide at 0.5 µm/px and analyse it with the classical segmenter (seconds).

    Parameters
    ----------
    folder : where the slide ``<name>.tif`` and the results root ``results/`` are written.
    name : file stem of the slide, which is also its slide id.
    assay : assay of the slide and of its analysis.
    shape : (Y, X) of the slide in px.
    seed : seed of the synthetic slide.
    tissue_fraction : share of the slide covered by tissue.

    Returns
    -------
    (slide, store)
        The slide file and its results store ``<folder>/results/<name>/``.
    """
    from senpath import synth
    from senpath.config import AnalysisConfig
    from senpath.pipeline import analyze_slide

    folder = Path(folder)
    slide = folder / f"{name}.tif"
    synth.write_slide(
        slide,
        assay=assay,
        shape=shape,
        mpp=0.5,
        seed=seed,
        params=synth.SynthParams(tissue_fraction=tissue_fraction),
    )
    store = analyze_slide(
        slide, out=folder / "results", assay=assay, config=AnalysisConfig(segmenter="classical")
    )
    return slide, store


def copy_store(store: str | Path, folder: str | Path) -> Path:
    """Copy the results store ``store`` to ``<folder>/results/<its name>/``, a copy a test may change.

    Returns
    -------
    Path of the copy.
    """
    store = Path(store)
    copy = Path(folder) / "results" / store.name
    shutil.copytree(store, copy)
    return copy


def assert_same_tile_results(expected: Sequence[Any], actual: Sequence[Any]) -> None:
    """Assert two runs of the tile engine gave the same :class:`~senpath.tile_engine.TileResult`
    list: the same tiles in the same order, equal cell tables and the same nucleus masks.

    Raises
    ------
    AssertionError
        Naming the first tile, table or mask that differs.
    """
    import numpy as np
    import pandas as pd

    assert [r.index for r in expected] == [r.index for r in actual], "tiles differ"
    for a, b in zip(expected, actual, strict=True):
        pd.testing.assert_frame_equal(a.cells, b.cells)
        assert len(a.instances) == len(b.instances), f"tile {a.index}: masks differ in number"
        for ia, ib in zip(a.instances, b.instances, strict=True):
            assert (ia.local_label, ia.bbox) == (ib.local_label, ib.bbox), f"tile {a.index}"
            np.testing.assert_array_equal(ia.mask, ib.mask, err_msg=f"tile {a.index}")
