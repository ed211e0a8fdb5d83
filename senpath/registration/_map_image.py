"""The cross-section senescence map as an OME-Zarr image in the reference section's µm frame.

The co-localisation table (:func:`~senpath.registration.colocalisation_map`, one row per grid cell
holding cells) becomes one (rows, cols) float32 map per channel on the map's grid (origin (0, 0)
µm of the reference section, side ``grid_um``), written by the density maps' writer
(:func:`senpath.spatial.density.write_density_zarr`: OME-NGFF 0.4, y/x in micrometer, scale = bin
side, translation = centre of grid cell (0, 0)), so napari, ome-zarr-py, QuPath and Fiji read it
over the reference slide:

===============================  =====  =========================================================
channel                          unit   value per grid cell
===============================  =====  =========================================================
``senescence_map``               call   1 where the rule holds (``positive``), 0 ``negative``,
                                        NaN where unsure, too few cells or no cells
``unsure``                       call   1 where a registration the cell needs is unsure, else 0
``<marker>_pct_positive``        %      100 × the marker's positive fraction (from its section)
``<marker>_cells``               cells  the marker's section's cells in the grid cell
===============================  =====  =========================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.registration._colocalisation import MarkerCondition
from senpath.spatial.density import DensityMaps, write_density_zarr
from senpath.spatial.grid import Grid

#: The image's folder name in ``RESULTS/_sections/<patient>/``.
MAP_IMAGE = "senescence_map.ome.zarr"


def colocalisation_maps(
    table: pd.DataFrame,
    rule: Sequence[MarkerCondition],
    *,
    grid_um: float,
    shape: tuple[int, int],
    attrs: dict[str, Any] | None = None,
) -> DensityMaps:
    """The co-localisation table as :class:`~senpath.spatial.density.DensityMaps` on its grid.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`~senpath.registration.colocalisation_map`'s table (``row``, ``col``, ``call``,
        ``unsure``, ``<marker>_cells``, ``<marker>_positive_fraction``).
    rule : sequence of MarkerCondition
        The rule the table was computed with (its markers name the channels).
    grid_um : float
        Grid cell side (µm).
    shape : (rows, cols)
        The grid over the reference section.
    attrs : dict, optional
        Provenance stored with the image (JSON-ready).

    Returns
    -------
    senpath.spatial.density.DensityMaps
        Channels as in the module's table, each (rows, cols) float32.
    """
    rows = table["row"].to_numpy(dtype=np.int64)
    cols = table["col"].to_numpy(dtype=np.int64)

    def channel(values: NDArray[Any], fill: float) -> NDArray[np.float32]:
        out = np.full(shape, fill, dtype=np.float32)
        out[rows, cols] = values
        return out

    call = table["call"].astype(str).to_numpy()
    state = np.where(call == "positive", 1.0, np.where(call == "negative", 0.0, np.nan))
    channels = {
        "senescence_map": channel(state, np.nan),
        "unsure": channel(table["unsure"].to_numpy(dtype=np.float64), 0.0),
    }
    units = {"senescence_map": "call", "unsure": "call"}
    for marker in dict.fromkeys(c.marker for c in rule):
        fraction = table[f"{marker}_positive_fraction"].to_numpy(dtype=np.float64)
        channels[f"{marker}_pct_positive"] = channel(100.0 * fraction, np.nan)
        channels[f"{marker}_cells"] = channel(table[f"{marker}_cells"].to_numpy(), 0.0)
        units[f"{marker}_pct_positive"], units[f"{marker}_cells"] = "%", "cells"
    return DensityMaps(Grid((0.0, 0.0), float(grid_um), shape), channels, units, dict(attrs or {}))


def write_map_image(folder: str | Path, maps: DensityMaps, *, name: str) -> Path:
    """Write the maps to ``folder/senescence_map.ome.zarr`` with the density maps' writer."""
    return write_density_zarr(Path(folder) / MAP_IMAGE, maps, name=name)
