"""The QC overlay of one slide (``qc_overlay.png``): nucleus outlines a pathologist can judge.

The picture has two parts, side by side:

- the **overview**: the whole slide at a small size, nucleus outlines drawn from the label pyramid
  level nearest the overview's pixel size, with numbered boxes where the crops come from;
- the **crops**: a few regions of the densest tissue at the analysis resolution (0.5 µm/px by
  default), full size, with each nucleus outlined one pixel wide so the stain inside stays visible.

Outlines are coloured by the call of the assay's first marker (positive / negative), or in one colour
for an assay without a marker (H&E). Reads are bounded: one low-resolution read of the slide, one
small label level, and ``n_crops`` crops of ``crop_px`` squared pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

#: Outline colours (RGB): a marker's positive and negative nuclei, and nuclei of a marker-free assay.
POSITIVE_RGB = (255, 0, 0)
NEGATIVE_RGB = (0, 200, 255)
NUCLEUS_RGB = (0, 230, 0)
BOX_RGB = (255, 200, 0)
_CAPTION_PX = 22


@dataclass(frozen=True)
class Crop:
    """A crop's top-left corner and side, in analysis pixels (the label image's level 0)."""

    y0: int
    x0: int
    side: int


def dense_crops(
    cells: pd.DataFrame, *, mpp: float, shape_px: tuple[int, int], side: int, n: int
) -> list[Crop]:
    """Up to ``n`` non-overlapping ``side`` x ``side`` px crops where nuclei are densest.

    Parameters
    ----------
    cells : per-cell table with ``x_um``, ``y_um`` (µm from the slide's origin).
    mpp : analysis pixel size in µm/px.
    shape_px : (Y, X) of the label image at ``mpp``.
    side : crop side in px.
    n : most crops returned.

    Returns
    -------
    Crops in decreasing nucleus count, on a grid of ``side`` px cells (so they never overlap),
    each holding at least one nucleus.
    """
    if cells.empty or n <= 0:
        return []
    side = min(side, *shape_px)
    ny, nx = max(1, shape_px[0] // side), max(1, shape_px[1] // side)
    gy = np.clip((cells["y_um"].to_numpy(float) / mpp // side).astype(int), 0, ny - 1)
    gx = np.clip((cells["x_um"].to_numpy(float) / mpp // side).astype(int), 0, nx - 1)
    counts = np.bincount(gy * nx + gx, minlength=ny * nx)
    order = np.argsort(-counts, kind="stable")[:n]
    return [Crop(int(k // nx) * side, int(k % nx) * side, side) for k in order if counts[k] > 0]


def outline_colours(cells: pd.DataFrame, marker: str | None) -> NDArray[np.uint8]:
    """A lookup table ``cell_id -> RGB`` of outline colours (row 0, the background, unused).

    Positive nuclei of ``marker`` get :data:`POSITIVE_RGB`, negative ones :data:`NEGATIVE_RGB`;
    with ``marker=None`` all nuclei get :data:`NUCLEUS_RGB`.
    """
    ids = cells["cell_id"].to_numpy(dtype=np.int64) if len(cells) else np.zeros(0, np.int64)
    lut = np.zeros((int(ids.max(initial=0)) + 1, 3), np.uint8)
    if marker is None:
        lut[ids] = NUCLEUS_RGB
        return lut
    positive = cells[f"{marker}_positive"].to_numpy(dtype=bool, na_value=False)
    lut[ids[~positive]] = NEGATIVE_RGB
    lut[ids[positive]] = POSITIVE_RGB
    return lut


def draw_outlines(
    rgb: NDArray[np.uint8], labels: NDArray[np.integer[Any]], lut: NDArray[np.uint8]
) -> NDArray[np.uint8]:
    """``rgb`` with each labelled nucleus's inner boundary (1 px) painted in its ``lut`` colour.

    ``rgb`` is (Y, X, 3) uint8 and ``labels`` (Y, X) of the same size; ids beyond ``lut`` (cells
    not in the table) are left undrawn. Returns a new array.
    """
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    edge = find_boundaries(labels, mode="inner") & (labels > 0) & (labels < len(lut))
    out[edge] = lut[labels[edge]]
    return out


def _label_level_for(store: Path, mpp: float) -> int:
    """The coarsest label level whose pixel is at most ``mpp`` (level 0 when none is)."""
    import json

    from senpath.labels import LABELS

    attrs = json.loads((store / LABELS / ".zattrs").read_text(encoding="utf-8"))
    scales = [
        float(d["coordinateTransformations"][0]["scale"][-1])
        for d in attrs["multiscales"][0]["datasets"]
    ]
    return max((k for k, s in enumerate(scales) if s <= mpp * 1.001), default=0)


def _resize_nearest(image: NDArray[Any], shape: tuple[int, int]) -> NDArray[Any]:
    import cv2

    if image.shape[:2] == shape:
        return image
    return np.asarray(cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST))


def _caption(image: NDArray[np.uint8], text: str) -> NDArray[np.uint8]:
    """``image`` with a white strip above it holding ``text``."""
    import cv2

    strip = np.full((_CAPTION_PX, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def qc_overlay_png(
    slide: Any,
    cells: pd.DataFrame,
    *,
    store: str | Path,
    marker: str | None,
    analysis_mpp: float,
    shape_px: tuple[int, int],
    max_side: int = 1200,
    crop_px: int = 256,
    n_crops: int = 3,
) -> bytes:
    """The slide's QC overlay as PNG bytes: outlined overview beside full-resolution crops.

    Parameters
    ----------
    slide : the opened slide (:class:`senpath.io.Slide`).
    cells : the slide's scored per-cell table (``cell_id``, ``x_um``, ``y_um``,
        ``<marker>_positive``).
    store : the slide's results folder, whose ``labels.ome.zarr`` is already committed.
    marker : the marker whose call colours the outlines; ``None`` for an assay without one.
    analysis_mpp : µm/px of the label image's level 0 (the crops' pixel size).
    shape_px : (Y, X) of the label image's level 0.
    max_side : longest side of the overview in px.
    crop_px : side of each crop in analysis px (256 px = 128 µm at 0.5 µm/px).
    n_crops : how many crops of the densest tissue to show.
    """
    import cv2

    from senpath.labels import load_labels

    store = Path(store)
    lut = outline_colours(cells, marker)
    height_um = shape_px[0] * analysis_mpp
    width_um = shape_px[1] * analysis_mpp
    mpp = max(max(height_um, width_um) / max_side, slide.level_mpp(0), analysis_mpp)
    overview = np.array(slide.read_region(0, 0, width_um, height_um, mpp=mpp), np.uint8)
    level = _label_level_for(store, mpp)
    labels = np.asarray(load_labels(store, level=level))
    # the level is at most as coarse as the overview (or the coarsest level, one chunk): nearest
    # resampling keeps the ids, and the read is bounded by the overview's size or one chunk
    labels = _resize_nearest(labels, overview.shape[:2])
    overview = draw_outlines(overview, labels, lut)

    crops = dense_crops(cells, mpp=analysis_mpp, shape_px=shape_px, side=crop_px, n=n_crops)
    tiles: list[NDArray[np.uint8]] = []
    full = load_labels(store, level=0)
    scale = analysis_mpp / mpp
    for i, c in enumerate(crops, start=1):
        rgb = slide.read_region(
            c.x0 * analysis_mpp, c.y0 * analysis_mpp, c.side * analysis_mpp,
            c.side * analysis_mpp, mpp=analysis_mpp,
        )  # fmt: skip
        lab = np.asarray(full[c.y0 : c.y0 + c.side, c.x0 : c.x0 + c.side])
        rgb = _resize_nearest(np.array(rgb, np.uint8), lab.shape)
        n_cells = len(np.unique(lab[lab > 0]))
        tiles.append(
            _caption(
                draw_outlines(rgb, lab, lut),
                f"{i}: {c.side * analysis_mpp:g} um, {analysis_mpp:g} um/px, {n_cells} nuclei",
            )
        )
        p0 = (int(c.x0 * scale), int(c.y0 * scale))
        p1 = (int((c.x0 + c.side) * scale), int((c.y0 + c.side) * scale))
        cv2.rectangle(overview, p0, p1, BOX_RGB, 2)
        cv2.putText(overview, str(i), (p0[0] + 3, p0[1] + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    BOX_RGB, 2, cv2.LINE_AA)  # fmt: skip

    legend = (
        f"outlines: red = {marker}+, cyan = {marker}-"
        if marker
        else "outlines: green = nucleus (no marker in this assay)"
    )
    panel = _caption(overview, f"overview {mpp:.2g} um/px; {len(cells)} nuclei; {legend}")
    if tiles:
        column = np.concatenate(tiles, axis=0)
        height = max(panel.shape[0], column.shape[0])
        panel = np.concatenate(
            [_pad(panel, height), np.full((height, 8, 3), 255, np.uint8), _pad(column, height)],
            axis=1,
        )
    ok, buf = cv2.imencode(".png", cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("could not encode the QC overlay PNG")
    return bytes(buf.tobytes())


def _pad(image: NDArray[np.uint8], height: int) -> NDArray[np.uint8]:
    """``image`` padded with white at the bottom to ``height`` rows."""
    if image.shape[0] >= height:
        return image
    pad = np.full((height - image.shape[0], image.shape[1], 3), 255, np.uint8)
    return np.concatenate([image, pad], axis=0)
