"""Tile grid with halo, the halo rule, ownership of nuclei, and pasting them into global ids.

The halo rule (as in stardist's tiled prediction): each tile is segmented with a halo of context on
every side, at least as wide as the largest nucleus (:func:`min_halo_um`, in µm; :func:`halo_px`
turns µm into px). A nucleus belongs to the tile whose *core* holds its centroid; it is kept whole
from that tile's segmentation (which sees it entirely, as the halo is larger than a nucleus) and
relabelled with a global id. Nuclei whose centroid lies in another tile's core are dropped, because
that tile keeps them.

Ownership is decided with integer arithmetic (``core_y0 * n <= sum(y) < core_y1 * n``), so two
tiles that see the same object always agree on its owner, whatever the float rounding.

Conflict rule: two owned nuclei from neighbouring tiles may claim the same pixels (a network
does not segment the same pixels identically with different context). **The first writer
wins**: tiles are pasted in row-major order (then by local label), and a pixel that already
holds a nucleus is never overwritten; the later nucleus keeps its remaining pixels (and is
dropped if none remain).

Global ids are assigned 1, 2, ... in paste order; :func:`paste` returns the id each nucleus got.
The loop that reads, segments and measures tiles is :mod:`senpath.tile_engine` (numpy/dask only
here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Box",
    "HaloTooSmallError",
    "Instance",
    "Tile",
    "halo_px",
    "keep_owned",
    "min_halo_um",
    "paste",
    "tile_grid",
]


class HaloTooSmallError(ValueError):
    """An owned object reaches the edge of its tile's halo: it may be cut; raise ``halo``."""


@dataclass(frozen=True, slots=True)  # no per-object dict: a slide has 10k+ tiles
class Box:
    """A half-open pixel rectangle ``[y0, y1) x [x0, x1)`` in image coordinates."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(slice(y0, y1), slice(x0, x1))`` for indexing an image."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in px."""
        return (self.y1 - self.y0, self.x1 - self.x0)


@dataclass(frozen=True, slots=True)  # no per-object dict: a slide has 10k+ tiles
class Tile:
    """One tile of the grid.

    Attributes
    ----------
    row, col : int
        Position in the grid.
    core : Box
        The pixels this tile owns (the grid partitions the image into cores).
    box : Box
        ``core`` grown by the halo on every side, clipped at the image edges: what is read and
        segmented.
    """

    row: int
    col: int
    core: Box
    box: Box

    @property
    def context(self) -> int:
        """Pixels of real image the box carries around the core on its narrowest side: the halo,
        0 where the tile meets the image's edge."""
        c, b = self.core, self.box
        return min(c.y0 - b.y0, c.x0 - b.x0, b.y1 - c.y1, b.x1 - c.x1)

    @property
    def core_in_box(self) -> tuple[slice, slice]:
        """Slices of ``core`` inside an array covering ``box``."""
        return (
            slice(self.core.y0 - self.box.y0, self.core.y1 - self.box.y0),
            slice(self.core.x0 - self.box.x0, self.core.x1 - self.box.x0),
        )


@dataclass(frozen=True)
class Instance:
    """One owned object, as a crop that a writer pastes.

    Attributes
    ----------
    bbox : Box
        Bounding box in image coordinates.
    mask : (H, W) bool ndarray
        The object's pixels inside ``bbox``.
    local_label : int
        Its label in the tile's segmentation.
    """

    bbox: Box
    mask: NDArray[np.bool_]
    local_label: int


def min_halo_um(max_nucleus_area_um2: float) -> float:
    """The smallest halo (µm) that holds a whole nucleus: the diameter of the largest nucleus.

    Parameters
    ----------
    max_nucleus_area_um2 : float
        Area of the largest nucleus kept, in µm² (a disc of that area has this diameter).

    Returns
    -------
    float
        Diameter in µm, ``2 * sqrt(area / pi)`` (22.6 µm for 400 µm²).
    """
    return 2.0 * math.sqrt(max_nucleus_area_um2 / math.pi)


def halo_px(halo_um: float, mpp: float) -> int:
    """A halo of ``halo_um`` µm in px at ``mpp`` µm/px, rounded up (at least 1 px).

    Parameters
    ----------
    halo_um : float
        Halo width in µm.
    mpp : float
        Pixel size in µm/px.
    """
    if not mpp > 0:
        raise ValueError(f"mpp must be a positive pixel size in µm/px, got {mpp!r}")
    return max(1, math.ceil(halo_um / mpp))


def tile_grid(
    shape: tuple[int, ...],
    *,
    tile_size: int | tuple[int, int],
    halo: int,
    mask: NDArray[np.bool_] | None = None,
    mask_scale: float | tuple[float, float] | None = None,
) -> list[Tile]:
    """Tiles covering an image of ``shape``, keeping only those whose core overlaps tissue.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(Y, X, ...)`` in px at the analysis resolution.
    tile_size : int or (int, int)
        Core size in px (the last row/column of cores is smaller when ``shape`` is not a
        multiple).
    halo : int
        Context in px added on each side of the core (clipped at the image edge).
    mask : (My, Mx) bool ndarray, optional
        Tissue mask, usually at a lower resolution; tiles whose core has no tissue under it are
        skipped.
    mask_scale : float or (float, float), optional
        Image px per mask px (``mask_mpp / analysis_mpp``), per axis (y, x). Default: the
        ratio of ``shape`` to ``mask.shape``.

    Returns
    -------
    list of Tile
        In row-major order.
    """
    th, tw = _pair(tile_size)
    th, tw, halo = int(th), int(tw), int(halo)
    if th <= 0 or tw <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size!r}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0 px, got {halo}")
    height, width = int(shape[0]), int(shape[1])
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask_scale is None:
            mask_scale = (height / mask.shape[0], width / mask.shape[1])
        sy, sx = _pair(mask_scale)
    tiles = []
    for row, y0 in enumerate(range(0, height, th)):
        for col, x0 in enumerate(range(0, width, tw)):
            core = Box(y0, x0, min(y0 + th, height), min(x0 + tw, width))
            if mask is not None:
                # one mask pixel of slack each side: the mask is coarse and its edge approximate
                my0, my1 = max(0, int(core.y0 / sy) - 1), math.ceil(core.y1 / sy) + 1
                mx0, mx1 = max(0, int(core.x0 / sx) - 1), math.ceil(core.x1 / sx) + 1
                if not mask[my0:my1, mx0:mx1].any():
                    continue
            box = Box(
                max(0, core.y0 - halo),
                max(0, core.x0 - halo),
                min(height, core.y1 + halo),
                min(width, core.x1 + halo),
            )
            tiles.append(Tile(row=row, col=col, core=core, box=box))
    return tiles


def _pair(value: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (float(value), float(value))
    first, second = value
    return (float(first), float(second))


def keep_owned(
    labels: NDArray[np.integer],
    tile: Tile,
    *,
    image_shape: tuple[int, ...] | None = None,
    on_truncated: Literal["raise", "warn", "keep"] = "raise",
) -> list[Instance]:
    """The objects of one tile's segmentation whose centroid lies in the tile's core.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels of the tile's ``box`` (0 = background).
    tile : Tile
        The tile that was segmented.
    image_shape : tuple of int, optional
        Full image shape; box edges at the image border are not halo edges. Default: the
        box edges are taken as image borders only at 0.
    on_truncated : {"raise", "warn", "keep"}
        What to do with an owned object that touches a halo edge (it may be cut short because
        the halo is smaller than the object): raise :class:`HaloTooSmallError`, warn, or keep
        it silently.

    Returns
    -------
    list of Instance
        Sorted by local label.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.shape != tile.box.shape:
        raise ValueError(
            f"the segmenter returned labels of shape {labels.shape} for a tile of shape "
            f"{tile.box.shape}; it must return one label per input pixel."
        )
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    inner = _inner_edges(tile, image_shape)
    objects = ndimage.find_objects(labels)
    owned = []
    for index, sl in enumerate(objects):
        if sl is None:
            continue
        label = index + 1
        crop = labels[sl] == label
        ys, xs = np.nonzero(crop)
        n = ys.size
        # integer centroid test in image coordinates: core.y0 <= mean(y) < core.y1
        sum_y = int(ys.sum()) + n * (sl[0].start + tile.box.y0)
        sum_x = int(xs.sum()) + n * (sl[1].start + tile.box.x0)
        if not (tile.core.y0 * n <= sum_y < tile.core.y1 * n):
            continue
        if not (tile.core.x0 * n <= sum_x < tile.core.x1 * n):
            continue
        bbox = Box(
            sl[0].start + tile.box.y0,
            sl[1].start + tile.box.x0,
            sl[0].stop + tile.box.y0,
            sl[1].stop + tile.box.x0,
        )
        if on_truncated != "keep" and _touches(bbox, tile.box, inner):
            message = (
                f"object {label} of tile (row {tile.row}, col {tile.col}) at image px "
                f"y={bbox.y0}-{bbox.y1}, x={bbox.x0}-{bbox.x1} reaches the edge of the halo, so "
                f"it may be cut: raise halo (now {_halo_of(tile)} px) above the "
                f"largest object size (this one spans at least {max(bbox.shape)} px): a larger "
                "halo_um in the analysis settings."
            )
            if on_truncated == "raise":
                raise HaloTooSmallError(message)
            import warnings

            warnings.warn(message, stacklevel=2)
        owned.append(Instance(bbox=bbox, mask=crop, local_label=label))
    return owned


def _halo_of(tile: Tile) -> int:
    return max(
        tile.core.y0 - tile.box.y0,
        tile.core.x0 - tile.box.x0,
        tile.box.y1 - tile.core.y1,
        tile.box.x1 - tile.core.x1,
    )


def _inner_edges(tile: Tile, image_shape: tuple[int, ...] | None) -> tuple[bool, bool, bool, bool]:
    """Which box edges (top, left, bottom, right) are halo edges inside the image."""
    height = image_shape[0] if image_shape is not None else None
    width = image_shape[1] if image_shape is not None else None
    return (
        tile.box.y0 > 0,
        tile.box.x0 > 0,
        height is None or tile.box.y1 < height,
        width is None or tile.box.x1 < width,
    )


def _touches(bbox: Box, box: Box, inner: tuple[bool, bool, bool, bool]) -> bool:
    return (
        (inner[0] and bbox.y0 <= box.y0)
        or (inner[1] and bbox.x0 <= box.x0)
        or (inner[2] and bbox.y1 >= box.y1)
        or (inner[3] and bbox.x1 >= box.x1)
    )


def paste(
    out: Any,
    instances: Sequence[Instance],
    *,
    next_id: int,
    origin: tuple[int, int] = (0, 0),
) -> NDArray[np.int64]:
    """Write instances into ``out`` with new ids from ``next_id``, in order; first writer wins.

    Parameters
    ----------
    out : (Y, X) int ndarray or array-like supporting slice get/set (e.g. zarr)
        Global label image (or a window of it); 0 = unlabelled. Pixels already labelled are
        never overwritten.
    instances : sequence of Instance
        Owned objects (from :func:`keep_owned`), pasted in order; each must lie inside ``out``.
    next_id : int
        First id to assign.
    origin : (int, int)
        Image px ``(y, x)`` of ``out[0, 0]`` (a window of the image).

    Returns
    -------
    (N,) int64 ndarray
        The id each instance got, in order: ``next_id``, ``next_id + 1``, ...; 0 for an instance
        whose pixels were all taken (it gets no id). The next free id is ``next_id`` plus the
        number of non-zero entries.
    """
    ids = np.zeros(len(instances), dtype=np.int64)
    if not instances:
        return ids
    # one read-modify-write of the union box: cheap for numpy, one round trip for zarr
    oy, ox = origin
    region = Box(
        min(i.bbox.y0 for i in instances) - oy,
        min(i.bbox.x0 for i in instances) - ox,
        max(i.bbox.y1 for i in instances) - oy,
        max(i.bbox.x1 for i in instances) - ox,
    )
    block = np.array(out[region.slices])
    for k, inst in enumerate(instances):
        sl = (
            slice(inst.bbox.y0 - oy - region.y0, inst.bbox.y1 - oy - region.y0),
            slice(inst.bbox.x0 - ox - region.x0, inst.bbox.x1 - ox - region.x0),
        )
        target = block[sl]
        free = inst.mask & (target == 0)
        if free.any():
            target[free] = next_id
            ids[k] = next_id
            next_id += 1
    out[region.slices] = block
    return ids
