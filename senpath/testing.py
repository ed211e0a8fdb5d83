"""Helpers for tests of code built on senpath: its own tests, the napari plugin's, a lab's scripts.

Like :mod:`numpy.testing` or scikit-image's and napari's test helpers, they ship with the library so
that every test suite can import them (the plugin's tests cannot import ``tests/``). They make small
synthetic inputs on the spot: no files from outside, no model weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path


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
