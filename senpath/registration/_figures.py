"""The alignment picture of a patient's sections (``_sections/<patient>/alignment.png``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.registration._image import SectionImage
from senpath.registration._quality import SectionRegistration

#: Map colours per call (RGBA 0-1).
CALL_COLOURS = {
    "positive": (0.85, 0.15, 0.15, 1.0),
    "negative": (0.55, 0.75, 0.95, 1.0),
    "too few cells": (0.85, 0.85, 0.85, 1.0),
    "unsure": (1.0, 0.8, 0.0, 1.0),
}


def call_image(table: pd.DataFrame, shape: tuple[int, int]) -> NDArray[np.float64]:
    """``(rows, cols, 4)`` RGBA picture of the map's calls (transparent: no cells)."""
    rgba = np.zeros((*shape, 4))
    for call, colour in CALL_COLOURS.items():
        hit = table[table["call"] == call]
        rgba[hit["row"].to_numpy(), hit["col"].to_numpy()] = colour
    return rgba


def alignment_png(
    reference: SectionImage,
    warped: Sequence[NDArray[np.float32]],
    registrations: Sequence[SectionRegistration],
    table: pd.DataFrame,
    *,
    shape: tuple[int, int],
    grid_um: float,
    rule: str,
) -> bytes:
    """Per moving section: the reference (magenta) over the aligned section (green) with its unsure
    grid cells hatched; last, the co-localisation map. Extents in mm of the reference's frame."""
    from matplotlib.patches import Patch

    from senpath.qc_plots import figure, png_bytes

    panels = len(warped) + 1
    fig = figure(4.2 * panels, 4.4)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    h_mm, w_mm = reference.extent_um[0] / 1000, reference.extent_um[1] / 1000
    extent = (0.0, w_mm, h_mm, 0.0)
    grid_extent = (0.0, shape[1] * grid_um / 1000, shape[0] * grid_um / 1000, 0.0)
    ref = np.clip(reference.od / 1.5, 0, 1)
    for ax, moved, reg in zip(axes, warped, registrations, strict=False):
        mov = np.clip(moved / 1.5, 0, 1)
        # magenta = reference only, green = moving only, grey = both
        ax.imshow(np.dstack([1 - mov, 1 - ref, 1 - mov]), extent=extent)
        unsure = np.zeros((*shape, 4))
        unsure[reg.quality.unsure] = (1.0, 0.8, 0.0, 0.45)
        ax.imshow(unsure, extent=grid_extent, interpolation="nearest")
        residual = reg.residual_um.get("p95", float("nan"))
        state = "ok" if reg.ok else "FAILED"
        ax.set_title(
            f"{reg.moving} → {reg.reference}\n{state}, residual p95 ≈ {residual:.0f} µm, "
            f"NCC {reg.ncc:.2f}",
            fontsize=8,
        )
        ax.set_xlabel("mm")
    ax = axes[-1]
    ax.imshow(1 - ref, cmap="gray", vmin=0, vmax=1, extent=extent)
    ax.imshow(call_image(table, shape), extent=grid_extent, interpolation="nearest", alpha=0.75)
    ax.set_title(f"co-localisation map ({rule}), {grid_um:g} µm grid", fontsize=8)
    ax.legend(
        handles=[Patch(color=c, label=k) for k, c in CALL_COLOURS.items()],
        fontsize=6,
        loc="lower right",
    )
    ax.set_xlabel("mm")
    return png_bytes(fig)
