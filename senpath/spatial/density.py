"""Density maps of a slide on a grid in µm, stored as an OME-Zarr image with its physical scale.

From a scored per-cell table (nucleus centroids ``x_um``, ``y_um`` and the ``<marker>_positive``
calls and phenotype columns that :mod:`senpath.score` wrote; excluded cells are left out, as in
every summary figure), per bin of a :class:`~senpath.spatial.grid.Grid`:

==============================  ======  ==========================================================
channel                         unit    value per bin
==============================  ======  ==========================================================
``n_cells``                     cells   cells whose centroid lies in the bin
``cells_per_mm2``               /mm²    ``n_cells`` / bin area
``<marker>_pct_positive``       %       100 × positive / cells (Ki67: the labelling index); NaN
                                        where the bin holds no cell
``<marker>_positive_per_mm2``   /mm²    positive cells / bin area
``<phenotype>_index``           %       100 × cells with the phenotype / cells (``senescent``:
                                        the senescence index of the assay, e.g. p16+ or
                                        SA-β-gal+ Ki67−); NaN where the bin holds no cell
==============================  ======  ==========================================================

A bin at the tissue's edge is partly glass, so its density per mm² is lower than the tissue's; the
percentages are not affected.

Store layout (``<slide>/density.ome.zarr``, OME-NGFF 0.4, Zarr format 2, as ``labels.ome.zarr``)::

    .zattrs   multiscales (axes c, y, x; y/x in micrometer; scale [1, s, s]; translation
              [0, y0 + s/2, x0 + s/2]: the centre of bin (0, 0)), omero channel labels, and
              "senpath": grid origin (corner) and spacing in µm, channel names and units, source
    0/        (C, ny, nx) float32, NaN where a percentage has no cells

napari (``senpath-napari``), ome-zarr-py / napari-ome-zarr, QuPath and Fiji (OME-Zarr readers)
read it with its µm scale.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.results import give_default_mode, register_temp, remove_stale_temps, temp_tag
from senpath.spatial.grid import Grid, bin_cells

__all__ = [
    "DENSITY",
    "DensityMaps",
    "counted_cells",
    "density_maps",
    "marker_names",
    "read_density_zarr",
    "write_density_zarr",
]

#: The density image in a slide's store.
DENSITY = "density.ome.zarr"
#: Default bin side in µm.
DEFAULT_GRID_UM = 100.0


def counted_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells every figure counts: those not ``excluded`` by a reviewer (all when the table has
    no ``excluded`` column), as :func:`senpath.score.summarize_markers` counts them."""
    if "excluded" in cells.columns:
        return cells[~cells["excluded"].to_numpy(dtype=bool)]
    return cells


def marker_names(cells: pd.DataFrame) -> list[str]:
    """Markers with calls in a scored per-cell table (``<marker>_positive`` columns), sorted."""
    return sorted(c[: -len("_positive")] for c in cells.columns if c.endswith("_positive"))


@dataclass
class DensityMaps:
    """Per-bin maps of one slide (or of cells pooled from registered sections).

    Attributes
    ----------
    grid : the bins (origin and spacing in µm).
    channels : name -> (ny, nx) float32 map (see the module's table of channels).
    units : name -> unit text (``cells``, ``/mm²``, ``%``).
    attrs : provenance of the maps (slide id, settings, the cells they come from), JSON-ready.
    """

    grid: Grid
    channels: dict[str, NDArray[np.float32]]
    units: dict[str, str]
    attrs: dict[str, Any] = field(default_factory=dict)


def density_maps(
    cells: pd.DataFrame,
    *,
    markers: Sequence[str] | None = None,
    phenotypes: Sequence[str] = (),
    spacing_um: float = DEFAULT_GRID_UM,
    origin_um: tuple[float, float] | None = None,
    shape: tuple[int, int] | None = None,
) -> DensityMaps:
    """Density maps of a scored per-cell table on a grid of ``spacing_um`` bins.

    Parameters
    ----------
    cells : per-cell table with ``x_um``, ``y_um`` (µm) and ``<marker>_positive`` bool calls, and a
        bool column per phenotype named in ``phenotypes``; ``excluded`` cells are left out.
    markers : markers to map (default: every ``<marker>_positive`` column).
    phenotypes : phenotype columns to map as ``<phenotype>_index`` (``["senescent"]``).
    spacing_um : bin side in µm.
    origin_um, shape : a given grid (see :func:`senpath.spatial.grid.bin_cells`).

    Returns
    -------
    DensityMaps
        One (ny, nx) float32 map per channel.
    """
    cells = counted_cells(cells)
    markers = marker_names(cells) if markers is None else list(markers)
    for name in [f"{m}_positive" for m in markers] + list(phenotypes) + ["x_um", "y_um"]:
        if name not in cells.columns:
            raise KeyError(f"per-cell table lacks {name!r}: is it a scored senpath cells table?")
    values = {f"{m}_positive": cells[f"{m}_positive"].to_numpy(dtype=bool) for m in markers}
    values.update({p: cells[p].to_numpy(dtype=bool) for p in phenotypes})
    sums = bin_cells(
        cells["x_um"].to_numpy(dtype=np.float64),
        cells["y_um"].to_numpy(dtype=np.float64),
        values,
        spacing_um=spacing_um,
        origin_um=origin_um,
        shape=shape,
    )
    channels: dict[str, NDArray[np.float64]] = {
        "n_cells": sums.n_cells.astype(np.float64),
        "cells_per_mm2": sums.per_mm2(),
    }
    units = {"n_cells": "cells", "cells_per_mm2": "/mm²"}
    for m in markers:
        channels[f"{m}_pct_positive"] = sums.percent(f"{m}_positive")
        channels[f"{m}_positive_per_mm2"] = sums.per_mm2(f"{m}_positive")
        units[f"{m}_pct_positive"], units[f"{m}_positive_per_mm2"] = "%", "/mm²"
    for p in phenotypes:
        channels[f"{p}_index"] = sums.percent(p)
        units[f"{p}_index"] = "%"
    attrs = {
        "n_cells": int(len(cells)),
        "n_cells_outside_grid": sums.n_outside,
        "markers": list(markers),
        "phenotypes": list(phenotypes),
    }
    return DensityMaps(
        sums.grid, {k: v.astype(np.float32) for k, v in channels.items()}, units, attrs
    )


def _ngff_attrs(maps: DensityMaps, name: str) -> dict[str, Any]:
    s = maps.grid.spacing_um
    x0, y0 = maps.grid.origin_um
    names = list(maps.channels)
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0, s, s]},
                            # NGFF places pixel centres: bin (0, 0)'s centre
                            {"type": "translation", "translation": [0.0, y0 + s / 2, x0 + s / 2]},
                        ],
                    }
                ],
                "metadata": {"method": "senpath.spatial.density_maps", "bin_um": s},
            }
        ],
        "omero": {
            "name": name,
            "version": "0.4",
            "channels": [
                {
                    "label": c,
                    "active": i == 1,
                    "color": "FFFFFF",
                    "window": _window(maps.channels[c]),
                }
                for i, c in enumerate(names)
            ],
        },
        "senpath": {
            "grid_origin_um": [x0, y0],
            "grid_spacing_um": s,
            "channels": names,
            "units": [maps.units[c] for c in names],
            **maps.attrs,
        },
    }


def _window(data: NDArray[np.float32]) -> dict[str, float]:
    finite = data[np.isfinite(data)]
    hi = float(finite.max()) if finite.size else 1.0
    return {"min": 0.0, "max": max(hi, 1e-6), "start": 0.0, "end": max(hi, 1e-6)}


def write_density_zarr(path: str | Path, maps: DensityMaps, *, name: str = "density") -> Path:
    """Write density maps as an OME-Zarr image (see the module's layout), atomically.

    The image is written under a temporary name beside ``path`` and renamed into place, so a
    reader never sees half an image; an existing image at ``path`` is replaced.

    Parameters
    ----------
    path : the ``.ome.zarr`` folder to write (``<slide>/density.ome.zarr``).
    maps : the maps.
    name : the image's name in its metadata (the slide id).
    """
    import numcodecs
    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".{temp_tag()}.tmp", dir=path.parent)
    )
    register_temp(tmp, True)
    give_default_mode(tmp, directory=True)
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        names = list(maps.channels)
        ny, nx = maps.grid.shape
        data = np.stack([maps.channels[c] for c in names]) if names else np.zeros((0, ny, nx))
        arr = group.create_array(
            "0",
            shape=data.shape,
            chunks=(1, min(ny, 1024), min(nx, 1024)),
            dtype="float32",
            fill_value=float("nan"),
            compressors=numcodecs.Blosc(cname="zstd", clevel=5),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        arr[...] = data.astype(np.float32)
        group.attrs.update(_nan_safe(_ngff_attrs(maps, name)))
        if path.exists():
            old = path.parent / f".{path.name}.old.{temp_tag()}.tmp"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        register_temp(tmp, False)
    return path


def read_density_zarr(path: str | Path) -> DensityMaps:
    """Density maps written by :func:`write_density_zarr` (a slide store or the image folder).

    Raises
    ------
    FileNotFoundError
        When there is no density image: run ``senpath spatial RESULTS`` first.
    """
    import zarr

    path = Path(path)
    if path.name != DENSITY and not path.name.endswith(".zarr"):
        path = path / DENSITY
    if not (path / ".zattrs").is_file():
        raise FileNotFoundError(
            f"{path} holds no density image: run `senpath spatial {path.parent.parent}` first"
        )
    group = zarr.open_group(str(path), mode="r")
    attrs: Mapping[str, Any] = group.attrs.asdict()
    meta = dict(attrs["senpath"])
    image: Any = group["0"]
    data = np.asarray(image[...], dtype=np.float32)
    names = list(meta.pop("channels"))
    units = dict(zip(names, meta.pop("units"), strict=True))
    grid = Grid(
        tuple(float(v) for v in meta.pop("grid_origin_um")),  # type: ignore[arg-type]
        float(meta.pop("grid_spacing_um")),
        (int(data.shape[1]), int(data.shape[2])),
    )
    return DensityMaps(grid, {c: data[i] for i, c in enumerate(names)}, units, meta)


def _nan_safe(obj: Any) -> Any:
    """JSON-ready copy with NaN as None (zarr attributes are strict JSON)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_safe(v) for v in obj]
    return obj
