"""Where in the tissue: density maps on a grid in µm and hot-spots, from a slide's per-cell table.

- :mod:`senpath.spatial.grid`: :func:`bin_cells`, the one binning rule (cells in µm + values →
  per-bin counts and sums, with the grid's origin and spacing), reusable for cells pooled from
  registered serial sections.
- :mod:`senpath.spatial.density`: :func:`density_maps` (cells/mm², % positive per marker,
  senescence index) and their OME-Zarr image (:func:`write_density_zarr`).
- :mod:`senpath.spatial.hotspots`: :func:`find_hotspot`, the IKWG-style hot-spot rule.
- :mod:`senpath.spatial.slide`: a store's figures and ``senpath spatial RESULTS``.
- :mod:`senpath.spatial.figure`: the picture of a slide's maps with its hot-spots.
"""

from __future__ import annotations

from senpath.spatial.density import (
    DENSITY,
    DensityMaps,
    density_maps,
    read_density_zarr,
    write_density_zarr,
)
from senpath.spatial.grid import Grid, GridSums, bin_cells, grid_for_points
from senpath.spatial.hotspots import (
    HotSpot,
    HotspotRule,
    find_hotspot,
    find_hotspots,
    slide_hotspots,
)
from senpath.spatial.slide import (
    HOTSPOTS,
    SlideSpatial,
    hotspot_table,
    run_spatial,
    slide_spatial,
    write_slide_spatial,
)

__all__ = [
    "DENSITY",
    "HOTSPOTS",
    "DensityMaps",
    "Grid",
    "GridSums",
    "HotSpot",
    "HotspotRule",
    "SlideSpatial",
    "bin_cells",
    "density_maps",
    "find_hotspot",
    "find_hotspots",
    "grid_for_points",
    "hotspot_table",
    "read_density_zarr",
    "run_spatial",
    "slide_hotspots",
    "slide_spatial",
    "write_density_zarr",
    "write_slide_spatial",
]
