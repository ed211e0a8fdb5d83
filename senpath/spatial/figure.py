"""The picture of a slide's density maps with its hot-spots (the report's spatial section).

One panel per map (cells/mm², each marker's % positive, the senescence index), in slide µm, over
the tissue outline (the edge of the bins that hold cells); each marker's and phenotype's hot-spot
field is drawn on its panel (circle or square of its area, centre marked) with its index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from senpath.qc_plots import figure, png_bytes
from senpath.spatial.density import DensityMaps
from senpath.spatial.hotspots import HotSpot

__all__ = ["density_figure", "density_png", "panel_channels"]


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


def density_figure(maps: DensityMaps, hotspots: Sequence[HotSpot] = (), *, title: str = "") -> Any:
    """A matplotlib Figure of the maps (see the module) with the hot-spots drawn on them."""
    from matplotlib.patches import Circle, Rectangle

    channels = panel_channels(maps)
    ncol = min(3, len(channels))
    nrow = math.ceil(len(channels) / ncol)
    ny, nx = maps.grid.shape
    aspect = ny / max(nx, 1)
    fig = figure(4.0 * ncol, max(2.5, 3.6 * aspect) * nrow + 0.4)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    extent = maps.grid.extent_um()
    occupied = maps.channels["n_cells"] > 0
    spots = {h.target: h for h in hotspots}
    xs, ys = maps.grid.bin_centres_um()
    for ax, channel in zip(axes.ravel(), channels, strict=False):
        data = np.ma.masked_invalid(maps.channels[channel])
        if channel == "cells_per_mm2":
            data = np.ma.masked_where(~occupied, data)
        cmap = "viridis" if channel == "cells_per_mm2" else "magma"
        vmax = 100.0 if maps.units[channel] == "%" else None
        im = ax.imshow(data, extent=extent, origin="upper", cmap=cmap, vmin=0, vmax=vmax,
                       interpolation="nearest")  # fmt: skip
        if occupied.any() and ny > 1 and nx > 1:
            ax.contour(xs, ys, occupied.astype(float), levels=[0.5], colors="0.4",
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
            cx, cy, r = spot.centre_x_um, spot.centre_y_um, spot.field_radius_um
            patch: Any
            if "square" in spot.rule:
                patch = Rectangle((cx - r, cy - r), 2 * r, 2 * r, fill=False, ec="cyan", lw=1.5)
            else:
                patch = Circle((cx, cy), r, fill=False, ec="cyan", lw=1.5)
            ax.add_patch(patch)
            ax.plot([cx], [cy], marker="+", color="cyan", ms=8)
            label += f"\nhot-spot {spot.index_pct:.1f} % (global {spot.global_index_pct:.1f} %)"
        elif spot is not None:
            label += "\nno hot-spot field"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("x (µm)", fontsize=8)
        ax.set_ylabel("y (µm)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    for ax in axes.ravel()[len(channels) :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def density_png(maps: DensityMaps, hotspots: Sequence[HotSpot] = (), *, title: str = "") -> bytes:
    """:func:`density_figure` as PNG bytes."""
    return png_bytes(density_figure(maps, hotspots, title=title))
