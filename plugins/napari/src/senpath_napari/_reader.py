"""napari reader: slides (through senpath's readers) and senpath results folders.

A slide opens as one multiscale RGB image layer in µm (its levels stay lazy dask arrays: nothing is
decoded until napari draws a tile). A results folder (``results/<slide_id>`` with ``manifest.json``)
opens as its slide plus the cells coloured by call. Paths senpath cannot read give ``None``, so
napari tries its other readers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from senpath_napari._layers import LayerData, results_layers, slide_layer

ReaderFunction = Callable[[Any], list[LayerData]]


def is_results_store(path: str | Path) -> bool:
    """Whether ``path`` is one slide's senpath results folder."""
    p = Path(path)
    return p.is_dir() and (p / "manifest.json").is_file() and (p / "cells.parquet").is_file()


def _single(path: Any) -> str | None:
    if isinstance(path, list | tuple):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def napari_get_reader(path: Any) -> ReaderFunction | None:
    """The reader for ``path``, or ``None`` when senpath cannot read it."""
    p = _single(path)
    if p is None:
        return None
    if is_results_store(p):
        return read_results
    if Path(p).name == "density.ome.zarr" and (Path(p) / ".zattrs").is_file():
        from senpath_napari._spatial_layers import read_density

        return read_density
    if Path(p).is_dir() and not p.lower().endswith(".mrxs"):
        return None
    from senpath.io import open_slide, supported_extensions

    if not any(p.lower().endswith(ext) for ext in supported_extensions()):
        return None
    try:
        open_slide(p)  # metadata only: a file without a pixel size (a photo) is left to napari
    except Exception:
        return None
    return read_slide


def read_slide(path: Any) -> list[LayerData]:
    """A slide file as one multiscale image layer with a µm scale."""
    from senpath.io import open_slide

    return [slide_layer(open_slide(_single(path) or str(path)))]


def read_results(path: Any) -> list[LayerData]:
    """A results folder as the slide, the call overlay of its first marker and the cell points,
    and its density maps and hot-spots when ``senpath spatial`` wrote them, and the cross-section
    senescence map of a patient whose reference section it is (``senpath register``)."""
    from senpath_napari._spatial_layers import section_map_layers, spatial_layers

    folder = _single(path) or str(path)
    return results_layers(folder) + spatial_layers(folder) + section_map_layers(folder)
