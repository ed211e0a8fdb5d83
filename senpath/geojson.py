"""QuPath GeoJSON export of a slide's cells (nucleus and cell outlines, calls, measurements).

One ``FeatureCollection`` per slide, one ``Feature`` per cell, as QuPath (0.4+) imports cell objects::

    {"type": "Feature", "id": "<uuid5(slide_id, cell_id)>",
     "geometry": <cell outline: the nucleus grown by the cytoplasm ring, Polygon or MultiPolygon>,
     "nucleusGeometry": <nucleus outline>,
     "properties": {"objectType": "cell",
                    "classification": {"name": "ki67: Positive", "color": [r, g, b]},
                    "measurements": {"nucleus_area_um2": 31.5, "cell_id": 17.0, ...}}}

``nucleusGeometry`` sits beside ``geometry`` (a member of the Feature, not of its properties): that
is where QuPath's reader (``PathObjectTypeAdapters``, 0.4+) looks for a cell's nucleus, and where
its own export puts it. QuPath keeps the Feature ``id`` (a UUID) and the measurements of what it
imports and writes them back, so a file edited in QuPath can be matched to the cells again
(:mod:`senpath.qupath_import`); properties it does not know (the flags below) are dropped by it.

A slide with corrections (``senpath.load_results`` applied its log) adds two flags to every
feature's ``properties``: ``excluded`` (a reviewer excluded the cell) and ``manual`` (a reviewer set a
call by hand; ``manualMarkers`` names the markers). An excluded cell is classified ``Ignore*``,
QuPath's class for objects it leaves out of its counts, so QuPath never counts it again.

Coordinates are level-0 pixels of the original slide (QuPath's convention; pixel ``(0, 0)`` covers
``[0, 1) x [0, 1)``), converted from the label image's µm grid with the slide's level-0 µm/px.
Outlines are traced on pixel edges (not pixel centres), so a polygon's area matches the pixel count
(plus 0.125 px² per concave corner of the outline), and rings are closed (last point = first).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.labels import label_mpp, load_labels
from senpath.provenance import Provenance
from senpath.results import SlideResults, atomic_path

#: Namespace of cell UUIDs: ``uuid5(CELL_NAMESPACE, f"{slide_id}/{cell_id}")``.
CELL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "cells.senpath")
#: QuPath's default colours for its Positive / Negative classes, and one for the phenotype.
POSITIVE_RGB = (200, 50, 50)
NEGATIVE_RGB = (112, 112, 225)
PHENOTYPE_RGB = (230, 150, 0)
#: QuPath's built-in class of ignored objects (left out of its counts), for excluded cells.
IGNORE_CLASS = "Ignore*"
IGNORE_RGB = (180, 180, 180)
#: Label-image block read at once (px, plus a margin for cells that cross its edge).
BLOCK = 2048


def cell_uuid(slide_id: str, cell_id: int) -> str:
    """Deterministic UUID of a cell (same slide and cell id -> same UUID on every export)."""
    return str(uuid.uuid5(CELL_NAMESPACE, f"{slide_id}/{int(cell_id)}"))


def mask_outlines(mask: NDArray[np.bool_]) -> list[NDArray[np.float64]]:
    """Outer outlines of a binary mask along pixel edges, as closed (x, y) rings.

    Parameters
    ----------
    mask : (H, W) bool
        Pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)`` in the returned coordinates.

    Returns
    -------
    list of (N, 2) float arrays, one per 8-connected component, largest first; each ring is closed.
    Holes are not traced (nuclei and cells have none worth drawing).
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    # Trace the corners of a 2x upsampled mask: a corner is inside when any pixel touching it is.
    # cv2 traces corner points, i.e. pixel edges; the diagonal it takes across a concave step
    # adds 0.125 px² (0.5 px² without the upsampling); convex corners are exact.
    h, w = mask.shape
    up = np.zeros((2 * h + 2, 2 * w + 2), dtype=bool)  # 2x upsampled, one px of padding
    up[1:-1, 1:-1] = mask.repeat(2, axis=0).repeat(2, axis=1)
    corners = np.zeros((2 * h + 3, 2 * w + 3), dtype=np.uint8)  # corner grid, padded for cv2
    corners[1:-1, 1:-1] = up[:-1, :-1] | up[:-1, 1:] | up[1:, :-1] | up[1:, 1:]
    contours, _ = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in contours:
        pts = (contour[:, 0, :].astype(np.float64) - 1.0) / 2.0
        if len(pts) < 3:
            continue
        rings.append(np.vstack([pts, pts[:1]]))
    rings.sort(key=lambda r: -abs(ring_area(r)))
    return rings


def ring_area(ring: NDArray[np.float64]) -> float:
    """Signed shoelace area of a closed (x, y) ring."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _geometry(
    rings: list[NDArray[np.float64]], scale: tuple[float, float], offset: tuple[int, int]
) -> dict[str, Any] | None:
    """GeoJSON geometry from rings in label px (crop coordinates) -> level-0 slide px."""
    if not rings:
        return None
    sx, sy = scale
    polys = []
    for ring in rings:
        xy = np.empty_like(ring)
        xy[:, 0] = (ring[:, 0] + offset[1]) * sx
        xy[:, 1] = (ring[:, 1] + offset[0]) * sy
        polys.append([np.round(xy, 2).tolist()])
    if len(polys) == 1:
        return {"type": "Polygon", "coordinates": polys[0]}
    return {"type": "MultiPolygon", "coordinates": polys}


def cell_outlines(
    labels: Any,
    cells: pd.DataFrame,
    *,
    label_mpp: float,
    cytoplasm_um: float,
    margin_um: float = 40.0,
    slide_mpp: tuple[float, float],
    block: int = BLOCK,
) -> Iterator[tuple[int, dict[str, Any] | None, dict[str, Any] | None]]:
    """``(cell_id, cell geometry, nucleus geometry)`` for every cell of ``cells``, block by block.

    Parameters
    ----------
    labels : (Y, X) int array-like (dask, zarr, numpy), nucleus labels at ``label_mpp`` µm/px with
        values ``cell_id``.
    cells : per-cell table with ``cell_id``, ``x_um``, ``y_um``.
    cytoplasm_um : width the nucleus is grown by for the cell outline (stops at neighbours, as in
        :func:`senpath.measure.cell_compartments`).
    margin_um : context read around each block; must exceed a nucleus radius plus twice
        ``cytoplasm_um`` (cells crossing the block edge are traced whole).
    slide_mpp : level-0 (x, y) µm/px of the slide: output coordinates are level-0 px.
    block : block side in label px.

    Geometries are ``None`` for a cell with no pixels in ``labels``. Only blocks holding cell
    centroids are read, so memory stays at one block whatever the slide size.
    """
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    height, width = (int(s) for s in labels.shape[:2])
    scale = (label_mpp / slide_mpp[0], label_mpp / slide_mpp[1])
    margin = int(math.ceil(margin_um / label_mpp))
    grow = cytoplasm_um / label_mpp
    ids = cells["cell_id"].to_numpy(dtype=np.int64)
    row = np.clip((cells["y_um"].to_numpy() / label_mpp).astype(np.int64), 0, height - 1) // block
    col = np.clip((cells["x_um"].to_numpy() / label_mpp).astype(np.int64), 0, width - 1) // block
    order = np.lexsort((ids, col, row))
    keys = np.stack([row[order], col[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
    bounds = starts[: len(order)].tolist() + [len(order)]  # no cells: no blocks
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        by, bx = int(keys[a, 0]), int(keys[a, 1])
        y0, x0 = max(0, by * block - margin), max(0, bx * block - margin)
        y1, x1 = min(height, (by + 1) * block + margin), min(width, (bx + 1) * block + margin)
        nuclei = np.asarray(labels[y0:y1, x0:x1], dtype=np.int32)  # computes a dask block
        grown = expand_labels(nuclei, distance=grow) if grow > 0 else nuclei
        boxes_n = ndimage.find_objects(nuclei)
        boxes_c = ndimage.find_objects(grown)
        for cid in ids[order[a:b]]:
            geoms: list[dict[str, Any] | None] = []
            for image, boxes in ((grown, boxes_c), (nuclei, boxes_n)):
                sl = boxes[cid - 1] if 0 < cid <= len(boxes) else None
                if sl is None:
                    geoms.append(None)
                    continue
                rings = mask_outlines(image[sl] == cid)
                geoms.append(_geometry(rings, scale, (y0 + sl[0].start, x0 + sl[1].start)))
            yield int(cid), geoms[0], geoms[1]


def _classification(
    cells: pd.DataFrame, provenance: Provenance
) -> tuple[list[dict[str, Any] | None], str | None]:
    markers = [m.name for m in provenance.markers]
    marker = markers[0] if markers and f"{markers[0]}_positive" in cells.columns else None
    phenotypes = [p for p in provenance.assay.phenotypes if p in cells.columns]
    n = len(cells)
    out: list[dict[str, Any] | None] = [None] * n
    if marker is not None:
        pos = cells[f"{marker}_positive"].to_numpy(dtype=bool)
        for i in range(n):
            out[i] = (
                {"name": f"{marker}: Positive", "color": list(POSITIVE_RGB)}
                if pos[i]
                else {"name": f"{marker}: Negative", "color": list(NEGATIVE_RGB)}
            )
    if phenotypes:
        name = phenotypes[0]
        flag = cells[name].to_numpy(dtype=bool)
        for i in np.flatnonzero(flag).tolist():
            out[i] = {"name": name.capitalize(), "color": list(PHENOTYPE_RGB)}
    if "excluded" in cells.columns:
        for i in np.flatnonzero(cells["excluded"].to_numpy(dtype=bool)).tolist():
            out[i] = {"name": IGNORE_CLASS, "color": list(IGNORE_RGB)}
    return out, marker


def _review_flags(cells: pd.DataFrame, provenance: Provenance) -> list[dict[str, Any]] | None:
    """Per cell ``excluded``, ``manual`` and ``manualMarkers``; ``None`` for an uncorrected table."""
    if "excluded" not in cells.columns:
        return None
    excluded = cells["excluded"].to_numpy(dtype=bool)
    manual = {
        m.name: cells[f"{m.name}_manual"].to_numpy(dtype=bool)
        for m in provenance.markers
        if f"{m.name}_manual" in cells.columns
    }
    flags = []
    for i in range(len(cells)):
        markers = [name for name, values in manual.items() if values[i]]
        flag: dict[str, Any] = {"excluded": bool(excluded[i]), "manual": bool(markers)}
        if markers:
            flag["manualMarkers"] = markers
        flags.append(flag)
    return flags


def _measurement_columns(cells: pd.DataFrame) -> list[str]:
    return [
        c
        for c in cells.columns
        if pd.api.types.is_numeric_dtype(cells[c])
        and not pd.api.types.is_bool_dtype(cells[c])
        and c != "tile_label"
    ]


def slide_features(res: SlideResults) -> Iterator[dict[str, Any]]:
    """The GeoJSON Features (QuPath cells) of one committed slide store (label-block order)."""
    cells = res.cells.sort_values("cell_id").reset_index(drop=True)
    cytoplasm_um = res.provenance.cytoplasm_um
    margin_um = res.provenance.halo_um + 2 * cytoplasm_um
    labels = load_labels(res.folder)
    classes, _ = _classification(cells, res.provenance)
    flags = _review_flags(cells, res.provenance)
    columns = _measurement_columns(cells)
    values = cells[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    row_of = {int(c): i for i, c in enumerate(cells["cell_id"])}
    outlines = cell_outlines(
        labels,
        cells,
        label_mpp=label_mpp(res.folder),
        cytoplasm_um=cytoplasm_um,
        margin_um=margin_um,
        slide_mpp=res.provenance.slide_mpp,
    )
    for cid, cell_geom, nucleus_geom in outlines:
        if cell_geom is None or nucleus_geom is None:
            raise ValueError(
                f"cell {cid} of {res.slide_id} has no pixels in its label image: the store is "
                "inconsistent; run `senpath run --force` on the slide"
            )
        i = row_of[cid]
        measurements = {
            name: float(v) for name, v in zip(columns, values[i], strict=True) if math.isfinite(v)
        }
        properties: dict[str, Any] = {"objectType": "cell", "measurements": measurements}
        if classes[i] is not None:
            properties["classification"] = classes[i]
        if flags is not None:
            properties.update(flags[i])
        yield {
            "type": "Feature",
            "id": cell_uuid(res.slide_id, cid),
            "geometry": cell_geom,
            "nucleusGeometry": nucleus_geom,
            "properties": properties,
        }


def write_slide_geojson(res: SlideResults, path: str | Path) -> Path:
    """Write one slide's cells as a QuPath GeoJSON FeatureCollection, atomically (streamed)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "features": [')
        for k, feature in enumerate(slide_features(res)):
            fh.write(",\n" if k else "\n")
            fh.write(json.dumps(feature, separators=(",", ":"), allow_nan=False))
        fh.write("\n]}\n")
    return path
