"""Sample data: the bundled sample slides (``sample_images/`` of the senpath repository).

Outside a source checkout (a wheel install), the same slides are generated once with
``senpath.synth`` into a cache folder (``$SENPATH_NAPARI_CACHE``, default ``~/.cache/senpath-napari``).
The "with results" sample analyses its slide on first use (classical segmenter, a few seconds) into
that cache and opens the store for review.
"""

from __future__ import annotations

import os
from pathlib import Path

from senpath_napari._layers import LayerData, results_layers, slide_layer

#: The repository's sample_images/ (present in a source checkout / editable install).
REPO_SAMPLES = Path(__file__).resolve().parents[4] / "sample_images"
_SYNTH = {  # slide -> (assay, seed) used when the bundled file is absent
    "P01-ki67": ("ki67", 1),
    "P02-p16_ki67": ("p16+ki67", 2),
}


def cache_dir() -> Path:
    """Where generated samples and their results are kept."""
    root = os.environ.get("SENPATH_NAPARI_CACHE") or Path.home() / ".cache" / "senpath-napari"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sample_path(slide_id: str) -> Path:
    """The sample slide file: the bundled one, else a generated copy in :func:`cache_dir`."""
    bundled = REPO_SAMPLES / f"{slide_id}.tif"
    if bundled.is_file():
        return bundled
    path = cache_dir() / f"{slide_id}.tif"
    if not path.is_file():
        from senpath import synth

        assay, seed = _SYNTH[slide_id]
        synth.write_slide(path, assay=assay, shape=(1536, 1536), mpp=0.5, seed=seed)
    return path


def _slide(slide_id: str) -> list[LayerData]:
    from senpath.io import open_slide

    return [slide_layer(open_slide(sample_path(slide_id)))]


def sample_p01_ki67() -> list[LayerData]:
    """P01 Ki67 IHC (synthetic, 768 x 768 µm)."""
    return _slide("P01-ki67")


def sample_p02_p16_ki67() -> list[LayerData]:
    """P02 p16 DAB + Ki67 Fast Red dual stain (synthetic)."""
    return _slide("P02-p16_ki67")


def sample_results_store(slide_id: str = "P01-ki67") -> Path:
    """The sample slide's results store, analysed on first use into ``<cache>/results``."""
    from senpath.config import AnalysisConfig
    from senpath.pipeline import analyze_slide
    from senpath.results import read_manifest

    folder = cache_dir() / "results" / slide_id
    if read_manifest(folder) is None:
        assay = _SYNTH[slide_id][0]
        analyze_slide(
            sample_path(slide_id),
            out=folder.parent,
            assay=assay,
            config=AnalysisConfig(segmenter="classical"),
        )
    return folder


def sample_p01_ki67_results() -> list[LayerData]:
    """P01 Ki67 with its senpath results (cells coloured by call), ready to review."""
    return results_layers(sample_results_store("P01-ki67"))
