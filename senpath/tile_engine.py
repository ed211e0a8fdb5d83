"""The tile engine: the one loop from a slide's tiles to owned, measured nuclei.

::

    per tile   read the tile's box (core + halo) at the analysis mpp
               → deconvolve once (stain concentrations, shared by segmenting and measuring)
               → segment (the slide's segmenter, loaded once per slide)
               → measure (per-cell table) → keep nuclei in the size range whose centroid lies
                 in the tile's core (ownership, decided once) → TileResult (cells + masks)

Every caller runs it: a slide in this process (:func:`senpath.slide_analysis.analyze_slide`), dask
tile tasks (:mod:`senpath.distributed`; with GPU workers :func:`segment_tiles` does the inference
half and :func:`analyze_tiles` the rest with the labels it returns), the napari quick look of a box
(:func:`analyze_box`) and the benchmarks. The pasting of owned nuclei into global ids is
:func:`senpath.tiling.paste`, in tile order.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.config import AnalysisConfig
from senpath.measure import measure_cells
from senpath.segment import Segmenter, load_segmenter
from senpath.slide_plan import SlidePlan, read_grid_box
from senpath.stain import StainSet, deconvolve
from senpath.tiling import Box, Instance, Tile, keep_owned, paste

_Item = TypeVar("_Item")
_Out = TypeVar("_Out")
#: End of an iterator (``next(it, _END)``).
_END: Any = object()

__all__ = [
    "TileResult",
    "analyze_box",
    "analyze_tile",
    "analyze_tiles",
    "empty_cells",
    "grid_box",
    "plan_segmenter",
    "segment_tiles",
]


@dataclass
class TileResult:
    """One tile's analysis, ready to paste: its kept cells and their masks.

    Attributes
    ----------
    index : position of the tile in :attr:`senpath.slide_plan.SlidePlan.tiles`.
    cells : per-cell table; ``cell_id`` is still the nucleus label in the tile's segmentation.
    instances : the owned nucleus masks, one per row of ``cells`` and in the same order (what
        :func:`senpath.tiling.paste` pastes; the tile's halo is not kept).
    """

    index: int
    cells: pd.DataFrame
    instances: list[Instance]

    def with_ids(self, ids: NDArray[np.integer]) -> pd.DataFrame:
        """The cells with their pasted global ids; those that got none (0) are dropped.

        Parameters
        ----------
        ids : (N,) int, the id :func:`senpath.tiling.paste` gave each of :attr:`instances`.

        Returns
        -------
        DataFrame
            ``cells`` with ``tile_label`` (the nucleus label in the tile) after ``cell_id``, and
            ``cell_id`` the global id.
        """
        cells = self.cells.copy()
        cells.insert(1, "tile_label", cells["cell_id"].astype(np.int32))
        cells["cell_id"] = ids
        return cells[cells["cell_id"] > 0].reset_index(drop=True)


def plan_segmenter(plan: SlidePlan) -> Segmenter:
    """The slide's segmenter, loaded once: the plan's method with its stains and glass intensity
    (whole cells for an assay whose objects are cells)."""
    config = plan.config
    if plan.nuclear is not None:  # cells grown from the nuclei of a paired nuclear image
        from senpath.segment.paired_nuclei import PairedNucleusSegmenter

        return PairedNucleusSegmenter(
            plan.nuclear["path"],
            channel=plan.nuclear["channel"],
            registration=plan.nuclear["registration"],
            shape_px=plan.shape_px,
            mpp=config.analysis_mpp,
        )
    if plan.assay.objects == "cells":
        from senpath.segment.whole_cell import WholeCellSegmenter

        return WholeCellSegmenter()
    return load_segmenter(
        config.segmenter,
        stains=plan.stain_estimate.stains,
        nuclear_stains=plan.assay.nuclear_stains,
        model=config.model,
        device=config.device,
        i0=plan.i0,
        min_area_um2=config.min_nucleus_area_um2,
        precision=config.precision,
        boost=plan.counterstain_boost,
        flips=config.test_time_flips,
    )


def analyze_tile(
    rgb: NDArray[np.uint8],
    tile: Tile,
    *,
    segmenter: Segmenter | None,
    stains: StainSet,
    i0: float | Sequence[float] | NDArray[np.floating],
    mpp: float,
    config: AnalysisConfig,
    image_shape: tuple[int, int],
    index: int = 0,
    labels: NDArray[np.integer] | None = None,
    objects: str = "nuclei",
) -> tuple[TileResult, NDArray[np.integer]]:
    """Segment (unless ``labels`` are given), measure and keep the owned nuclei of one tile.

    Parameters
    ----------
    rgb : (H, W, 3) uint8, the pixels of ``tile.box`` at ``mpp`` µm/px.
    tile : the tile (its ``box`` is what ``rgb`` covers, its ``core`` what it owns).
    segmenter : the slide's segmenter (may be ``None`` when ``labels`` are given).
    stains, i0 : the slide's stain vectors and glass intensity (per RGB channel).
    mpp : analysis pixel size in µm/px.
    config : settings (cytoplasm ring, nucleus size range in µm²).
    image_shape : (Y, X) px of the whole image at ``mpp`` (box edges on its border are not halo).
    index : position of the tile in its grid (carried into the result).
    labels : (H, W) int, the tile's segmentation when it ran elsewhere; ``None`` segments here.
    objects : ``nuclei``, or ``cells`` when the labels are whole cells (an assay with
        ``objects = "cells"``: measured per whole cell, kept by cell area, nucleus columns blank).

    Returns
    -------
    (TileResult, labels)
        The owned cells in the size range with their masks, and the tile's (H, W) labels.
    """
    concentrations = deconvolve(rgb, stains, i0)  # type: ignore[arg-type]
    paired = getattr(segmenter, "compartments", None)
    if paired is not None:  # nuclei from a paired image: the cells and their compartments, here
        comps = paired(rgb, mpp=mpp, box=tile.box)
        labels = comps["cell"]
    if labels is None:
        if segmenter is None:
            raise ValueError("analyze_tile needs a segmenter, or the tile's labels")
        labels = segmenter.segment(rgb, mpp=mpp, concentrations=concentrations)
    # ownership, once per tile: exact integer centroid arithmetic, so neighbouring tiles never both
    # keep, or both drop, a nucleus on their shared edge (it also checks the labels' shape and type)
    owned = {
        inst.local_label: inst
        for inst in keep_owned(labels, tile, image_shape=image_shape, on_truncated="warn")
    }
    if paired is not None:
        from senpath.segment.paired_nuclei import measure_paired_cells

        cells, in_range = measure_paired_cells(
            comps, concentrations, stain_names=stains.names, mpp=mpp,
            origin_um=(tile.box.x0 * mpp, tile.box.y0 * mpp),
        )  # fmt: skip
    elif objects == "cells":
        from senpath.segment.whole_cell import measure_whole_cells

        cells, in_range = measure_whole_cells(
            labels, concentrations, stain_names=stains.names, mpp=mpp,
            origin_um=(tile.box.x0 * mpp, tile.box.y0 * mpp),
        )  # fmt: skip
    else:
        # measure only the owned nuclei in the size range: the halo's are measured by the tile
        # that owns them (areas as measure_cells computes them, so the same nuclei pass)
        area_um2 = np.bincount(np.asarray(labels).ravel()).astype(np.float64) * mpp**2
        wanted = [
            i
            for i in owned
            if i < area_um2.size
            and config.min_nucleus_area_um2 <= area_um2[i] <= config.max_nucleus_area_um2
        ]
        cells = measure_cells(
            labels,
            concentrations,
            stain_names=stains.names,
            mpp=mpp,
            cytoplasm_um=config.cytoplasm_um,
            origin_um=(tile.box.x0 * mpp, tile.box.y0 * mpp),
            cell_ids=np.asarray(wanted, dtype=np.int64),
        )
        in_range = (cells["nucleus_area_um2"] >= config.min_nucleus_area_um2) & (
            cells["nucleus_area_um2"] <= config.max_nucleus_area_um2
        )
    keep = in_range & cells["cell_id"].isin(list(owned))
    cells = cells[keep].reset_index(drop=True)
    instances = [owned[int(i)] for i in cells["cell_id"]]
    return TileResult(int(index), cells, instances), labels


def segment_tiles(
    plan: SlidePlan,
    indices: Sequence[int],
    *,
    slide: Any = None,
    segmenter: Segmenter | None = None,
) -> list[NDArray[np.int32]]:
    """Nucleus labels of the tiles ``plan.tiles[i]`` for ``i`` in ``indices`` (the inference half).

    Parameters
    ----------
    plan : the slide's plan.
    indices : positions in ``plan.tiles``.
    slide : the opened slide (opened here when ``None``).
    segmenter : the slide's segmenter (:func:`plan_segmenter` when ``None``).

    Returns
    -------
    list of (H, W) int32
        One label image per tile, over the tile's box (core and halo), in ``indices`` order.
    """
    from senpath.io import open_slide

    slide = slide if slide is not None else open_slide(plan.path, mpp=plan.mpp)
    segmenter = segmenter if segmenter is not None else plan_segmenter(plan)
    amp = plan.config.analysis_mpp
    if hasattr(segmenter, "compartments"):  # paired nuclei: a tile's cells depend on its place
        return [
            segmenter.compartments(
                read_grid_box(slide, plan.tiles[i].box, amp), mpp=amp, box=plan.tiles[i].box
            )["cell"]
            for i in indices
        ]
    if not (hasattr(segmenter, "network_maps") and indices):
        return [
            segmenter.segment(read_grid_box(slide, plan.tiles[i].box, amp), mpp=amp)
            for i in indices
        ]
    # the CNN: tiles batched per network call as the device holds them (1 on a CPU)
    cnn: Any = segmenter
    batch = max(1, int(cnn.tile_batch(max(plan.tiles[indices[0]].box.shape))))
    out: list[NDArray[np.int32]] = []
    for g in range(0, len(indices), batch):
        images = [read_grid_box(slide, plan.tiles[i].box, amp) for i in indices[g : g + batch]]
        context = [plan.tiles[i].context for i in indices[g : g + batch]]
        for rgb, maps in zip(
            images, cnn.network_maps(images, mpp=amp, context=context), strict=True
        ):
            out.append(cnn.labels_from_maps(maps, rgb.shape[:2], mpp=amp))
    return out


def analyze_tiles(
    plan: SlidePlan,
    indices: Sequence[int],
    *,
    labels: Sequence[NDArray[np.integer]] | None = None,
    slide: Any = None,
    segmenter: Segmenter | None = None,
    prefetch: int = 2,
    post_workers: int | None = None,
) -> Iterator[TileResult]:
    """Read, segment (unless ``labels`` are given), measure and keep the owned nuclei of tiles.

    Parameters
    ----------
    plan : the slide's plan.
    indices : positions in ``plan.tiles``, in the order the results are yielded.
    labels : the tiles' label images from :func:`segment_tiles` (same order), when the inference
        ran elsewhere; ``None`` segments here.
    slide : the opened slide (opened here when ``None``).
    segmenter : the slide's segmenter (:func:`plan_segmenter` when ``None``; a benchmark may pass
        its own).
    prefetch : batches of tiles read (and, with the CNN, run through the network) ahead in a worker
        thread while this one post-processes and measures the tiles before them; 0 does it all
        here, tile by tile. The results are the same either way, in ``indices`` order.
    post_workers : worker processes that post-process the network's maps (watershed,
        deconvolution, ownership, measurement) while this thread hands them tiles in order; 0:
        this thread does; ``None``: :func:`senpath.post_workers.post_workers_for` (a network on a
        GPU outruns one core's post-processing many times over). The results are the same
        either way.

    Yields
    ------
    TileResult
        One per tile, lazily (a whole slide's results need not be held at once: at most
        ``prefetch`` batches wait, read and inferred, besides the tile being measured).

    Notes
    -----
    The network (torch releases the GIL) thus runs on tile k+1 while the watershed and the
    measurement run on tile k. Closing the generator (a cancelled slide) drops the batches not
    started and waits for the one running. With ``post_workers``, up to twice as many tiles as
    workers are post-processed at once; should the workers fail to start or die, the tiles left
    are post-processed here (one warning), with the same results.
    """
    from senpath.io import open_slide

    slide = slide if slide is not None else open_slide(plan.path, mpp=plan.mpp)
    if segmenter is None and (labels is None or plan.nuclear is not None):
        segmenter = plan_segmenter(plan)  # paired nuclei: the compartments come from it
    amp = plan.config.analysis_mpp
    # a CNN splits into network maps (worker thread) and their watershed (here); other segmenters
    # run whole here, the worker reads ahead
    split = labels is None and hasattr(segmenter, "network_maps")
    batch = 1
    if split and plan.tiles:
        batch = max(1, int(segmenter.tile_batch(max(plan.tiles[0].box.shape))))  # type: ignore[union-attr]
    positions = list(enumerate(indices))
    groups = [positions[g : g + batch] for g in range(0, len(positions), batch)]

    def read_and_infer(
        group: list[tuple[int, int]],
    ) -> list[tuple[NDArray[np.uint8], NDArray[np.float32] | None]]:
        images = [read_grid_box(slide, plan.tiles[i].box, amp) for _, i in group]
        if not split:
            return [(rgb, None) for rgb in images]
        context = [plan.tiles[i].context for _, i in group]
        maps = segmenter.network_maps(images, mpp=amp, context=context)  # type: ignore[union-attr]
        return list(zip(images, maps, strict=True))

    from senpath.post_workers import in_order, post_workers_for

    workers = post_workers_for(segmenter) if post_workers is None else int(post_workers)
    post = getattr(segmenter, "maps_to_labels", None) if split else None
    if workers > 0 and post is not None:

        def jobs() -> Iterator[_PostJob]:
            for group, done in _ahead(read_and_infer, groups, depth=prefetch):
                for (_, i), (rgb, maps) in zip(group, done, strict=True):
                    yield _PostJob(
                        rgb=rgb, maps=cast("NDArray[np.float32]", maps),  # split: never None
                        tile=plan.tiles[i], index=i, post=post, stains=plan.stain_estimate.stains,
                        i0=plan.i0, config=plan.config, image_shape=plan.shape_px,
                        objects=plan.assay.objects,
                    )  # fmt: skip

        yield from in_order(_post_tile, jobs(), workers)
        return
    for group, done in _ahead(read_and_infer, groups, depth=prefetch):
        for (k, i), (rgb, maps) in zip(group, done, strict=True):
            if labels is not None:
                tile_labels: NDArray[np.integer] | None = labels[k]
            elif maps is not None:
                tile_labels = segmenter.labels_from_maps(maps, rgb.shape[:2], mpp=amp)  # type: ignore[union-attr]
            else:
                tile_labels = None
            result, _ = analyze_tile(
                rgb,
                plan.tiles[i],
                segmenter=segmenter,
                stains=plan.stain_estimate.stains,
                i0=plan.i0,
                mpp=amp,
                config=plan.config,
                image_shape=plan.shape_px,
                index=i,
                labels=tile_labels,
                objects=plan.assay.objects,
            )
            yield result


@dataclass
class _PostJob:
    """One tile's post-processing: its image and network maps, and what the slide's plan gives."""

    rgb: NDArray[np.uint8]
    maps: NDArray[np.float32]
    tile: Tile
    index: int
    post: Any  # senpath.segment.predict.MapsToLabels
    stains: StainSet
    i0: Any
    config: AnalysisConfig
    image_shape: tuple[int, int]
    objects: str


def _post_tile(job: _PostJob) -> TileResult:
    """Labels from the maps, then :func:`analyze_tile` (in a worker process, or here)."""
    mpp = job.config.analysis_mpp
    labels = job.post.on_grid(job.maps, job.rgb.shape[:2], mpp=mpp)
    result, _ = analyze_tile(
        job.rgb, job.tile, segmenter=None, stains=job.stains, i0=job.i0, mpp=mpp,
        config=job.config, image_shape=job.image_shape, index=job.index, labels=labels,
        objects=job.objects,
    )  # fmt: skip
    return result


def _ahead(
    work: Callable[[_Item], _Out], items: Sequence[_Item], *, depth: int
) -> Iterator[tuple[_Item, _Out]]:
    """``(item, work(item))`` in order, with ``work`` run up to ``depth`` items ahead in one worker
    thread (``depth`` 0: here, item by item). Memory holds at most ``depth`` finished outputs."""
    if depth <= 0:
        for item in items:
            yield item, work(item)
        return
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    # one worker: the network has the cores' threads already; order is kept by the queue
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="senpath-tiles") as pool:
        queue: deque[tuple[_Item, Future[_Out]]] = deque()
        upcoming = iter(items)
        try:
            for item in upcoming:
                queue.append((item, pool.submit(work, item)))
                if len(queue) >= depth:
                    break
            while queue:
                item, future = queue.popleft()
                out = future.result()  # an error in the worker is raised here, for this tile
                following = next(upcoming, _END)
                if following is not _END:
                    queue.append((following, pool.submit(work, following)))  # type: ignore[arg-type]
                yield item, out
        finally:
            # a closed generator (a cancel) or an error: drop what has not started; leaving the
            # with-block waits for the one running
            for _, future in queue:
                future.cancel()


def analyze_box(
    plan: SlidePlan,
    box: Box,
    *,
    slide: Any = None,
    segmenter: Segmenter | None = None,
) -> Generator[tuple[int, int], None, tuple[pd.DataFrame, NDArray[np.int32]]]:
    """The cells of a box of the slide, as a stored run of ``plan`` finds them (the quick look).

    The tiles of the slide's grid whose box (core + halo) meets ``box`` are analysed and pasted in
    grid order, as :func:`senpath.slide_analysis.commit_slide` does for all tiles; the cells whose
    centroid lies in ``box`` are kept. Yields ``(tiles done, tiles total)`` after each tile.

    Parameters
    ----------
    plan : the slide's plan (tissue tiles, stain vectors, glass intensity of the whole slide).
    box : a box of the analysis grid (px at ``plan.config.analysis_mpp``).
    slide : the opened slide (opened here when ``None``).
    segmenter : the slide's segmenter (:func:`plan_segmenter` when ``None``).

    Returns
    -------
    (cells, labels)
        The cells whose centroid lies in ``box`` (``cell_id`` numbered here, in paste order; every
        other column as in the slide's stored table before scoring), and ``box.shape`` int32
        labels holding those cells' pixels (values = ``cell_id``).

    Notes
    -----
    A stored run pastes every tile of the slide; here only those near the box. A nucleus in the box
    whose pixels were all taken by nuclei of earlier tiles, some of them far from the box, is
    dropped by a stored run and may be kept here: an overlap the halo rule makes rare.
    """
    amp = plan.config.analysis_mpp
    indices = [i for i, t in enumerate(plan.tiles) if _meets(t.box, box)]
    window = box
    for i in indices:
        window = _union(window, plan.tiles[i].box)
    pasted = np.zeros(window.shape, dtype=np.int32)
    parts, next_id = [], 1
    for done, result in enumerate(
        analyze_tiles(plan, indices, slide=slide, segmenter=segmenter, post_workers=0), start=1
    ):
        ids = paste(pasted, result.instances, next_id=next_id, origin=(window.y0, window.x0))
        next_id += int(np.count_nonzero(ids))
        parts.append(result.with_ids(ids))
        yield done, len(indices)
    cells = (
        pd.concat(parts, ignore_index=True) if parts else empty_cells(plan.stain_estimate.stains)
    )
    # the measured centroid in grid px (x_um is the pixel centre's position)
    y_px = cells["y_um"].to_numpy() / amp - 0.5
    x_px = cells["x_um"].to_numpy() / amp - 0.5
    inside = (box.y0 <= y_px) & (y_px < box.y1) & (box.x0 <= x_px) & (x_px < box.x1)
    cells = cells[inside].reset_index(drop=True)
    labels = pasted[
        box.y0 - window.y0 : box.y1 - window.y0, box.x0 - window.x0 : box.x1 - window.x0
    ].copy()
    labels[~np.isin(labels, cells["cell_id"].to_numpy())] = 0
    return cells, labels


def grid_box(plan: SlidePlan, box_um: tuple[float, float, float, float]) -> Box:
    """The box of the analysis grid that covers ``(y0, x0, y1, x1)`` level-0 µm, clipped to the slide.

    Parameters
    ----------
    plan : the slide's plan (grid pixel size ``plan.config.analysis_mpp`` µm/px).
    box_um : (y0, x0, y1, x1) in µm from the slide's origin.

    Returns
    -------
    Box
        In grid px: the pixels the µm box touches (may be empty where it misses the slide).
    """
    import math

    amp = plan.config.analysis_mpp
    height, width = plan.shape_px
    y0, x0, y1, x1 = box_um
    return Box(
        min(height, max(0, math.floor(y0 / amp))),
        min(width, max(0, math.floor(x0 / amp))),
        min(height, max(0, math.ceil(y1 / amp))),
        min(width, max(0, math.ceil(x1 / amp))),
    )


def _meets(a: Box, b: Box) -> bool:
    return a.y0 < b.y1 and b.y0 < a.y1 and a.x0 < b.x1 and b.x0 < a.x1


def _union(a: Box, b: Box) -> Box:
    return Box(min(a.y0, b.y0), min(a.x0, b.x0), max(a.y1, b.y1), max(a.x1, b.x1))


def empty_cells(stains: StainSet) -> pd.DataFrame:
    """A per-cell table with no rows and the columns of a pasted one (``tile_label`` included)."""
    empty = measure_cells(
        np.zeros((1, 1), np.int32),
        np.zeros((1, 1, len(stains.names)), np.float32),
        stain_names=stains.names,
        mpp=1.0,
    )
    empty.insert(1, "tile_label", pd.Series(dtype=np.int32))
    return empty
