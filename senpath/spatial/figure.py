"""The picture of a slide's density maps with its hot-spots (the report's spatial section).

A first panel with the slide's thumbnail (when its file is found) and every hot-spot field, then
one panel per map (cells/mm², each marker's % positive, the senescence index), in slide µm, with
the tissue outline (the edge of the bins that hold cells); each marker's and phenotype's hot-spot
field is drawn on its panel (circle or square of its area, centre marked) with its index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from senpath.qc_plots import figure, png_bytes
from senpath.results import SlideResults
from senpath.spatial.density import DensityMaps
from senpath.spatial.grid import Grid
from senpath.spatial.hotspots import HotSpot

__all__ = ["density_figure", "density_png", "panel_channels", "slide_thumbnail"]


def panel_channels(maps: DensityMaps) -> list[str]:
    """The channels drawn: cells/mm², then each ``<marker>_pct_positive``, then each ``_index``."""
    names = list(maps.channels)
    return (
        ["cells_per_mm2"]
        + [c for c in names if c.endswith("_pct_positive")]
        + [c for c in names if c.endswith("_index")]
    )


def _target_of(channel: str) -> str | None:
    for suffix in ("_pct_positive", "_index"):
        if channel.endswith(suffix):
            return channel[: -len(suffix)]
    return None


#: A thumbnail of the slide: (Y, X, 3) uint8 RGB and its (left, right, bottom, top) extent in µm.
Thumbnail = tuple[NDArray[np.uint8], tuple[float, float, float, float]]


def slide_thumbnail(res: SlideResults, grid: Grid, *, max_side: int = 600) -> Thumbnail | None:
    """The slide under the grid's extent at about ``max_side`` px, or ``None`` when the slide
    file is not found or cannot be read (the picture then shows the maps alone)."""
    from senpath.io import open_slide

    try:
        path = Path(res.provenance.slide_path)
        if not path.is_file():
            return None
        slide = open_slide(path, mpp=(res.manifest.get("identity") or {}).get("mpp"))
        width_um = slide.shape[1] * float(slide.mpp[0])
        height_um = slide.shape[0] * float(slide.mpp[1])
        left, right, bottom, top = grid.extent_um()
        x0, y0 = max(0.0, left), max(0.0, top)
        x1, y1 = min(width_um, right), min(height_um, bottom)
        if x1 <= x0 or y1 <= y0:
            return None
        mpp = max(max(x1 - x0, y1 - y0) / max_side, slide.level_mpp(0))
        rgb = np.asarray(slide.read_region(x0, y0, x1 - x0, y1 - y0, mpp=mpp), dtype=np.uint8)
    except Exception:  # a missing or unreadable slide only costs the picture its thumbnail
        return None
    return rgb, (x0, x1, y1, y0)


def _draw_field(ax: Any, spot: HotSpot, colour: str = "cyan") -> None:
    from matplotlib.patches import Circle, Rectangle

    cx, cy, r = spot.centre_x_um, spot.centre_y_um, spot.field_radius_um
    patch: Any
    if "square" in spot.rule:
        patch = Rectangle((cx - r, cy - r), 2 * r, 2 * r, fill=False, ec=colour, lw=1.5)
    else:
        patch = Circle((cx, cy), r, fill=False, ec=colour, lw=1.5)
    ax.add_patch(patch)
    ax.plot([cx], [cy], marker="+", color=colour, ms=8)


def density_figure(
    maps: DensityMaps,
    hotspots: Sequence[HotSpot] = (),
    *,
    title: str = "",
    thumbnail: Thumbnail | None = None,
) -> Any:
    """A matplotlib Figure of the maps (see the module) with the hot-spots drawn on them; with a
    ``thumbnail`` (:func:`slide_thumbnail`), a first panel shows the slide with every hot-spot."""
    channels = panel_channels(maps)
    n_panels = len(channels) + (thumbnail is not None)
    ncol = min(3, n_panels)
    nrow = math.ceil(n_panels / ncol)
    ny, nx = maps.grid.shape
    aspect = ny / max(nx, 1)
    fig = figure(4.0 * ncol, max(2.5, 3.6 * aspect) * nrow + 0.4)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    extent = maps.grid.extent_um()
    occupied = maps.channels["n_cells"] > 0
    # the tissue outline: the edge of the bins with cells, holes of empty bins inside filled
    from scipy.ndimage import binary_fill_holes

    outline = binary_fill_holes(occupied)
    spots = {h.target: h for h in hotspots}
    xs, ys = maps.grid.bin_centres_um()
    panels = list(axes.ravel())
    if thumbnail is not None:
        ax = panels.pop(0)
        ax.imshow(thumbnail[0], extent=thumbnail[1], origin="upper")
        colours = ("cyan", "yellow", "magenta", "lime", "orange")
        for i, found in enumerate(h for h in hotspots if h.found):
            colour = colours[i % len(colours)]
            _draw_field(ax, found, colour)
            ax.annotate(found.target, (found.centre_x_um, found.centre_y_um), color=colour,
                        fontsize=8, xytext=(4, 4), textcoords="offset points")  # fmt: skip
        ax.set_title("slide and hot-spot fields", fontsize=9)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.tick_params(labelsize=7)
    for ax, channel in zip(panels, channels, strict=False):
        data = np.ma.masked_invalid(maps.channels[channel])
        if channel == "cells_per_mm2":
            data = np.ma.masked_where(~occupied, data)
        cmap = "viridis" if channel == "cells_per_mm2" else "magma"
        vmax = 100.0 if maps.units[channel] == "%" else None
        im = ax.imshow(data, extent=extent, origin="upper", cmap=cmap, vmin=0, vmax=vmax,
                       interpolation="nearest")  # fmt: skip
        if occupied.any() and ny > 1 and nx > 1:
            ax.contour(xs, ys, outline.astype(float), levels=[0.5], colors="0.4",
                       linewidths=0.8)  # fmt: skip
        fig.colorbar(im, ax=ax, shrink=0.8, label=maps.units[channel])
        label = (
            "cells / mm²"
            if channel == "cells_per_mm2"
            else channel.replace("_pct_positive", " % positive").replace("_", " ")
        )
        target = _target_of(channel)
        spot = spots.get(target) if target else None
        if spot is not None and spot.found:
            _draw_field(ax, spot)
            label += f"\nhot-spot {spot.index_pct:.1f} % (global {spot.global_index_pct:.1f} %)"
        elif spot is not None:
            label += "\nno hot-spot field"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("x (µm)", fontsize=8)
        ax.set_ylabel("y (µm)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    for ax in panels[len(channels) :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def density_png(
    maps: DensityMaps,
    hotspots: Sequence[HotSpot] = (),
    *,
    title: str = "",
    thumbnail: Thumbnail | None = None,
) -> bytes:
    """:func:`density_figure` as PNG bytes."""
    return png_bytes(density_figure(maps, hotspots, title=title, thumbnail=thumbnail))
