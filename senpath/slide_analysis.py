"""Analyse one slide, in stages: plan → tiles → commit (the unit the batch and dask distribute).

::

    plan_slide     open_slide → tissue mask (low resolution) → glass intensity → tile grid at the
                   analysis mpp over tissue, with halo → stain vectors (per-slide estimate or preset)
                   (in :mod:`senpath.slide_plan`; imported here)
    analyze_tiles  per tile: read, deconvolve, segment nuclei, measure, keep the nuclei whose centroid
                   lies in the tile's core (halo rule: each nucleus counted once, whole)
                   (segment_tiles does the inference half alone, for GPU workers)
    commit_slide   paste the nuclei in tile order (global cell ids) → score (marker rules,
                   phenotypes) → per-slide summary → results store, manifest last

:func:`analyze_slide` runs the three in this process; :mod:`senpath.distributed` runs them as tasks on
a dask cluster with identical results.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

import senpath
from senpath.config import AnalysisConfig, Assay, get_assay
from senpath.labels import LabelStore
from senpath.measure import measure_cells
from senpath.report import slide_histograms_png
from senpath.results import (
    CELLS,
    MANIFEST,
    PROVENANCE,
    QC_HISTOGRAMS,
    QC_OVERLAY,
    SUMMARY,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    input_identity,
    write_manifest,
)
from senpath.score import score_cells, slide_thresholds, summarize_markers
from senpath.segment import resolve_method, segment_nuclei
from senpath.slide_plan import SlidePlan, plan_slide, read_grid_box
from senpath.stain import DEFAULT_I0, StainSet, deconvolve, stain_qc
from senpath.tiling import Instance, Tile, keep_owned

#: Tile progress callback: (tiles done, tiles total).
TileProgress = Callable[[int, int], None]


def _segment_region(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    assay: Assay,
    stains: StainSet,
    config: AnalysisConfig,
    i0: float | Sequence[float] = DEFAULT_I0,
) -> NDArray[np.int32]:
    """Nucleus labels of one region: the inference half of :func:`analyze_region` (GPU work)."""
    return segment_nuclei(
        rgb,
        mpp=mpp,
        stains=stains,
        nuclear_stains=assay.nuclear_stains,
        method=config.segmenter,
        device=config.device,
        i0=i0,
        min_area_um2=config.min_nucleus_area_um2,
        model=config.model,
    )


def _measure_region(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.int32],
    *,
    mpp: float,
    stains: StainSet,
    config: AnalysisConfig,
    i0: float | Sequence[float] = DEFAULT_I0,
    origin_um: tuple[float, float] = (0.0, 0.0),
    tile: Tile | None = None,
    image_shape: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Per-cell table of one segmented region: the measuring half of :func:`analyze_region`."""
    conc = deconvolve(rgb, stains, i0)
    cells = measure_cells(
        labels,
        conc,
        stain_names=stains.names,
        mpp=mpp,
        cytoplasm_um=config.cytoplasm_um,
        origin_um=origin_um,
    )
    keep = (cells["nucleus_area_um2"] >= config.min_nucleus_area_um2) & (
        cells["nucleus_area_um2"] <= config.max_nucleus_area_um2
    )
    if tile is not None:
        # one ownership rule for the whole package (exact integer centroid arithmetic), so
        # neighbouring tiles never both keep, or both drop, a nucleus on their shared edge
        owned = keep_owned(labels, tile, image_shape=image_shape, on_truncated="warn")
        keep &= cells["cell_id"].isin([inst.local_label for inst in owned])
    return cells[keep].reset_index(drop=True)


def analyze_region(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    assay: Assay,
    stains: StainSet,
    config: AnalysisConfig,
    i0: float | Sequence[float] = DEFAULT_I0,
    origin_um: tuple[float, float] = (0.0, 0.0),
    tile: Tile | None = None,
    image_shape: tuple[int, int] | None = None,
) -> tuple[pd.DataFrame, NDArray[np.int32]]:
    """Segment and measure the nuclei of one in-memory region (a tile with its halo, or an image).

    Parameters
    ----------
    rgb : (Y, X, 3) uint8 at ``mpp`` µm/px.
    tile : the tile ``rgb`` covers (its ``box``); only nuclei whose centroid lies in the tile's core
        are returned (the halo rule, :func:`senpath.tiling.keep_owned`). ``None`` keeps all.
    image_shape : (Y, X) of the whole image at ``mpp`` (tile edges on the image border are not halo).
    origin_um : slide position in µm of pixel (0, 0).

    Returns
    -------
    (cells, labels)
        Per-cell table (``cell_id`` = label in ``labels``) and the (Y, X) int32 nucleus labels.
    """
    labels = _segment_region(rgb, mpp=mpp, assay=assay, stains=stains, config=config, i0=i0)
    cells = _measure_region(
        rgb,
        labels,
        mpp=mpp,
        stains=stains,
        config=config,
        i0=i0,
        origin_um=origin_um,
        tile=tile,
        image_shape=image_shape,
    )
    return cells, labels


def _model_identity(method: str, model: str | None = None) -> dict[str, Any]:
    if method == "cnn":
        from senpath.segment.weights import shipped_weights_info

        return {"method": "cnn", "model_path": model, **shipped_weights_info(model)}
    return {"method": "classical", "model_sha256": None}


@dataclass
class TileResult:
    """One tile's analysis, ready to paste: its kept cells and their masks.

    Attributes
    ----------
    index : position of the tile in :attr:`senpath.slide_plan.SlidePlan.tiles`.
    cells : per-cell table; ``cell_id`` is still the nucleus label in the tile's segmentation.
    instances : the owned nucleus masks, one per row of ``cells`` and in the same order (what
        :meth:`senpath.labels.LabelStore.add_instances` pastes; the tile's halo is not kept).
    """

    index: int
    cells: pd.DataFrame
    instances: list[Instance]


def segment_tiles(
    plan: SlidePlan, indices: Sequence[int], *, slide: Any = None
) -> list[NDArray[np.int32]]:
    """Nucleus labels of the tiles ``plan.tiles[i]`` for ``i`` in ``indices`` (the inference stage).

    Returns
    -------
    list of (H, W) int32
        One label image per tile, over the tile's box (core and halo), in ``indices`` order.
    """
    from senpath.io import open_slide

    slide = slide if slide is not None else open_slide(plan.path, mpp=plan.mpp)
    amp = plan.config.analysis_mpp
    stains = plan.stain_estimate.stains
    return [
        _segment_region(
            read_grid_box(slide, plan.tiles[i].box, amp),
            mpp=amp,
            assay=plan.assay,
            stains=stains,
            config=plan.config,
            i0=plan.i0,
        )
        for i in indices
    ]


def analyze_tiles(
    plan: SlidePlan,
    indices: Sequence[int],
    *,
    labels: Sequence[NDArray[np.int32]] | None = None,
    slide: Any = None,
) -> Iterator[TileResult]:
    """Read, segment (unless ``labels`` are given), measure and keep the owned nuclei of tiles.

    Parameters
    ----------
    plan : the slide's plan.
    indices : positions in ``plan.tiles``, in the order the results are yielded.
    labels : the tiles' label images from :func:`segment_tiles` (same order), when the inference
        ran elsewhere; ``None`` segments here.
    slide : the opened slide (opened here when ``None``).

    Yields
    ------
    TileResult
        One per tile, lazily (a whole slide's results need not be held at once).
    """
    from senpath.io import open_slide

    slide = slide if slide is not None else open_slide(plan.path, mpp=plan.mpp)
    amp = plan.config.analysis_mpp
    stains = plan.stain_estimate.stains
    for k, i in enumerate(indices):
        tile = plan.tiles[i]
        rgb = read_grid_box(slide, tile.box, amp)
        if labels is None:
            tile_labels = _segment_region(
                rgb, mpp=amp, assay=plan.assay, stains=stains, config=plan.config, i0=plan.i0
            )
        else:
            tile_labels = labels[k]
        cells = _measure_region(
            rgb,
            tile_labels,
            mpp=amp,
            stains=stains,
            config=plan.config,
            i0=plan.i0,
            origin_um=(tile.box.x0 * amp, tile.box.y0 * amp),
            tile=tile,
            image_shape=plan.shape_px,
        )
        instances = _owned_instances(tile_labels, tile, cells["cell_id"], plan.shape_px)
        yield TileResult(int(i), cells, instances)


def _owned_instances(
    labels: NDArray[np.integer],
    tile: Tile,
    local_ids: Iterable[int],
    image_shape: tuple[int, int],
) -> list[Instance]:
    """The masks of the nuclei ``local_ids`` that ``tile`` owns, in ``local_ids`` order."""
    owned = {
        inst.local_label: inst
        for inst in keep_owned(labels, tile, image_shape=image_shape, on_truncated="keep")
    }
    ids = [int(i) for i in local_ids]
    missing = [i for i in ids if i not in owned]
    if missing:
        raise ValueError(
            f"labels {missing[:5]} of tile (row {tile.row}, col {tile.col}) are not owned by it "
            "(centroid outside its core) or absent"
        )
    return [owned[i] for i in ids]


def analyze_slide(
    path: str | Path,
    *,
    out: str | Path,
    assay: str | Assay,
    config: AnalysisConfig | None = None,
    mpp: float | None = None,
    slide_id: str | None = None,
    patient_id: str | None = None,
    assays: Mapping[str, Assay] | None = None,
    tile_progress: TileProgress | None = None,
) -> Path:
    """Analyse one slide and write its results store ``<out>/<slide_id>/``.

    Parameters
    ----------
    path : slide file (any format :func:`senpath.open_slide` reads).
    out : results root folder.
    assay : assay name (``ki67``, ``p16``, ``sabgal``, ``sabgal-eosin``, ``sabgal+ki67``,
        ``p16+ki67`` or a user assay) or an :class:`~senpath.config.Assay`.
    config : analysis settings (defaults: 0.5 µm/px, 5 µm cytoplasm ring, CNN when installed).
    mpp : pixel size in µm for files without calibration.
    slide_id, patient_id : names used in the store (default: the file stem).
    tile_progress : called with (tiles done, total) as tiles finish.

    Returns
    -------
    Path of the committed store.
    """
    from senpath.io import open_slide

    t_start = time.perf_counter()
    config = config or AnalysisConfig()
    assay_obj = assay if isinstance(assay, Assay) else get_assay(assay, assays)
    slide = open_slide(path, mpp=mpp)
    plan = plan_slide(
        path,
        assay=assay_obj,
        config=config,
        mpp=mpp,
        slide_id=slide_id,
        patient_id=patient_id,
        slide=slide,
    )
    results = analyze_tiles(plan, range(plan.n_tiles), slide=slide)
    return commit_slide(
        plan, results, out=out, slide=slide, tile_progress=tile_progress, t_start=t_start
    )


def commit_slide(
    plan: SlidePlan,
    results: Iterable[TileResult],
    *,
    out: str | Path,
    slide: Any = None,
    tile_progress: TileProgress | None = None,
    t_start: float | None = None,
    extra_timings: Mapping[str, float] | None = None,
) -> Path:
    """Last stage of :func:`analyze_slide`: paste labels, score, write the store, manifest last.

    Parameters
    ----------
    plan : the slide's plan.
    results : one :class:`TileResult` per tile of ``plan.tiles``, in tile order (cell ids are
        assigned in this order, so it must be the grid order for results to match a local run).
    out : results root folder; the store is ``<out>/<plan.slide_id>/``.
    slide : the opened slide (opened here when ``None``), for the QC overlay and provenance.
    tile_progress : called with (tiles done, total) as tiles are pasted.
    t_start : ``time.perf_counter()`` when the slide started (for ``timings.total_s``).
    extra_timings : more stage timings (s) for the provenance.

    Returns
    -------
    Path of the committed store.

    Notes
    -----
    Idempotent: committing the same plan and results again (a retried task) rewrites the same
    store; the manifest is removed first and written last, so a store is never half new.
    """
    from senpath.io import open_slide

    t_start = time.perf_counter() if t_start is None else t_start
    slide = slide if slide is not None else open_slide(plan.path, mpp=plan.mpp)
    folder = Path(out) / plan.slide_id
    config, assay_obj, stain_estimate = plan.config, plan.assay, plan.stain_estimate
    stains = stain_estimate.stains
    tiles, shape_px, amp = plan.tiles, plan.shape_px, config.analysis_mpp
    timings = {**plan.timings, **dict(extra_timings or {})}

    t = time.perf_counter()
    parts: list[pd.DataFrame] = []
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_files(folder)
    label_store = LabelStore(folder, shape_px, mpp=amp)  # pasted tile by tile, never whole in RAM
    expected = 0
    for done, result in enumerate(results, start=1):
        if result.index != expected:
            label_store.abort()
            raise ValueError(
                f"tile results out of order for {plan.slide_id}: got tile {result.index}, "
                f"expected {expected} (cell ids are assigned in tile order)"
            )
        expected += 1
        cells = result.cells
        if len(cells):
            cells = cells.copy()
            cells.insert(1, "tile_label", cells["cell_id"].astype(np.int32))
            # cell_id = the id pasted into the label image; a nucleus left with no pixels is dropped
            cells["cell_id"] = label_store.add_instances(result.instances)
            parts.append(cells[cells["cell_id"] > 0].reset_index(drop=True))
        if tile_progress:
            tile_progress(done, len(tiles))
    if expected != len(tiles):
        label_store.abort()
        raise ValueError(f"{plan.slide_id}: {expected} tile results for {len(tiles)} tiles")
    timings["cells_s"] = timings.get("cells_s", 0.0) + time.perf_counter() - t

    cells = pd.concat(parts, ignore_index=True) if parts else _empty_cells(stains)
    cells.insert(0, "slide_id", plan.slide_id)
    threshold_info = slide_thresholds(
        cells, assay_obj, auto=config.auto_threshold, bounds_od=config.auto_threshold_bounds_od
    )
    thresholds = {m: float(v["threshold_od"]) for m, v in threshold_info.items()}
    scored = score_cells(cells, assay_obj, thresholds=thresholds)
    summary = summarize_markers(scored, assay_obj, thresholds=thresholds)
    for m, info in threshold_info.items():
        summary["markers"][m]["threshold"] = info
    summary.update(
        slide_id=plan.slide_id,
        patient_id=plan.patient_id,
        tissue_fraction=plan.tissue_fraction,
        tissue_area_mm2=plan.tissue_area_mm2,
        n_tiles=len(tiles),
    )
    if len(tiles) == 0:
        summary["warning"] = (
            "no tissue detected: the slide looks empty at the tissue-mask resolution"
        )
    qc = stain_qc(stain_estimate, assay=assay_obj.name)
    summary["stain_qc"] = qc
    if qc["status"] == "warning":
        summary["warning"] = str(qc["warning"])
    timings["total_s"] = time.perf_counter() - t_start
    provenance = {
        "senpath_version": senpath.__version__,
        "slide": {
            "path": str(plan.path.resolve()),
            "backend": slide.backend,
            "vendor": slide.vendor,
            "mpp": list(slide.mpp),
            "mpp_source": slide.mpp_source,
            "shape": list(slide.shape),
        },
        "assay": {
            "name": assay_obj.name,
            "stains": list(stains.names),
            "stain_vectors": stains.vectors.tolist(),
            "stain_vectors_source": stain_estimate.source,
            "preset_stain_vectors": plan.prior.vectors.tolist(),
            "stain_tolerance_deg": dict(assay_obj.stain_tolerance_deg),
            # threshold_od: the one each marker was scored with (automatic or the rule's)
            "markers": [
                {**vars(r), "threshold_od": thresholds[r.name], "rule_threshold_od": r.threshold_od}
                for r in assay_obj.markers
            ],
            "phenotypes": {k: list(v) for k, v in assay_obj.phenotypes.items()},
        },
        "background_i0": [float(v) for v in np.atleast_1d(plan.i0)],
        "stain_estimate": qc,
        "thresholds": threshold_info,
        "config": config.to_dict(),
        "segmenter": _model_identity(config.segmenter, config.model),
        "device": config.device,
        "timings": timings,
    }

    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # the store is incomplete until re-committed
    # a person's corrections of the previous analysis cannot be replayed on new cell ids: keep
    # them aside (renamed with a timestamp), never delete them, and say so in the provenance
    from senpath.corrections import set_aside

    kept = set_aside(folder)
    if kept is not None:
        provenance["corrections_set_aside"] = kept.name
        warnings.warn(
            f"{plan.slide_id}: re-analysed; the corrections of the previous analysis are kept "
            f"in {kept} (not applied to the new cells)",
            stacklevel=2,
        )
    label_store.commit()
    atomic_write_parquet(folder / CELLS, scored)
    atomic_write_json(folder / SUMMARY, summary)
    atomic_write_json(folder / PROVENANCE, provenance)
    atomic_write_bytes(folder / QC_OVERLAY, _qc_overlay_png(slide, scored, assay_obj))
    atomic_write_bytes(folder / QC_HISTOGRAMS, slide_histograms_png(scored, thresholds))
    write_manifest(
        folder,
        slide_id=plan.slide_id,
        identity=run_identity(plan.path, config=config, assay=assay_obj, mpp=plan.mpp),
        extra={"patient_id": plan.patient_id, "assay": assay_obj.name},
    )
    return folder


def _remove_stale_tmp_files(folder: Path) -> None:
    """Temporary files of atomic writes left by an interrupted run (a killed worker) of this slide.

    Only one run writes a slide's folder at a time (a batch gives each slide one folder and one
    committing task), so any temporary file found here belongs to a run that is gone.
    """
    for name in (CELLS, SUMMARY, PROVENANCE, QC_OVERLAY, QC_HISTOGRAMS, MANIFEST):
        for tmp in folder.glob(f".{name}.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


def run_identity(
    path: str | Path, *, config: AnalysisConfig, assay: Assay, mpp: float | None
) -> dict[str, Any]:
    """What makes a store current: the input file, settings, assay definition and model."""
    method = resolve_method(config.segmenter, model=config.model)
    return {
        "input": input_identity(path),
        "config_sha": config.replace(segmenter=method).digest(),
        "assay": repr(assay),
        "mpp": mpp,
        "model_sha256": _model_identity(method, config.model).get("model_sha256"),
        "senpath_version": senpath.__version__,
    }


def _empty_cells(stains: StainSet) -> pd.DataFrame:
    empty = measure_cells(
        np.zeros((1, 1), np.int32), np.zeros((1, 1, len(stains.names)), np.float32),
        stain_names=stains.names, mpp=1.0,
    )  # fmt: skip
    empty.insert(1, "tile_label", pd.Series(dtype=np.int32))
    return empty


def _qc_overlay_png(
    slide: Any, scored: pd.DataFrame, assay: Assay, *, max_side: int = 1600
) -> bytes:
    """Thumbnail with one dot per cell: red = positive for the first marker, blue = negative."""
    import cv2

    height_um = slide.shape[0] * slide.mpp[1]
    width_um = slide.shape[1] * slide.mpp[0]
    mpp = max(height_um, width_um) / max_side
    mpp = max(mpp, slide.level_mpp(0))
    thumb = slide.read_region(0, 0, width_um, height_um, mpp=mpp).copy()
    if len(scored) and assay.markers:
        marker = assay.markers[0].name
        xs = np.clip((scored["x_um"].to_numpy() / mpp).astype(int), 0, thumb.shape[1] - 1)
        ys = np.clip((scored["y_um"].to_numpy() / mpp).astype(int), 0, thumb.shape[0] - 1)
        pos = scored[f"{marker}_positive"].to_numpy(dtype=bool)
        radius = max(1, round(2.0 / mpp)) if mpp < 2 else 1
        for sel, colour in ((~pos, (40, 80, 255)), (pos, (255, 30, 30))):
            layer = np.zeros(thumb.shape[:2], np.uint8)
            layer[ys[sel], xs[sel]] = 1
            if radius > 1:
                kernel = cv2.getStructuringElement(
                    cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)
                )
                layer = cv2.dilate(layer, kernel)
            thumb[layer > 0] = colour
    ok, buf = cv2.imencode(".png", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("could not encode the QC overlay PNG")
    return buf.tobytes()
