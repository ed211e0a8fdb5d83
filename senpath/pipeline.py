"""Orchestration: analyse one slide (tiles → nuclei → measurements → calls → store), or a batch.

One slide::

    open_slide → tissue mask (low resolution) → tile grid at the analysis mpp over tissue, with halo
    → per tile: read, deconvolve, segment nuclei, measure, keep the nuclei whose centroid lies in the
      tile's core (halo rule: each nucleus counted once, whole) → global cell ids in tile order
    → score (marker rules, phenotypes) → per-slide summary → results store (manifest last)

A batch runs slide after slide; a failed slide is reported and the batch goes on. A slide whose store
is complete for the same input file, settings, assay and model is skipped (resume) unless forced.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

import senpath
from senpath.config import AnalysisConfig, Assay, get_assay, load_assays
from senpath.labels import LabelStore
from senpath.measure import measure_cells
from senpath.results import (
    CELLS,
    PROVENANCE,
    QC_OVERLAY,
    SUMMARY,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    input_identity,
    is_complete,
    write_manifest,
)
from senpath.samplesheet import SlideJob, jobs_for_input
from senpath.score import score_cells, slide_thresholds, summarize_markers
from senpath.segment import resolve_method, segment_nuclei
from senpath.stain import (
    DEFAULT_I0,
    StainEstimate,
    StainSet,
    deconvolve,
    estimate_background,
    estimate_stains,
    rgb_to_od,
    stain_qc,
)
from senpath.tiling import Tile, keep_owned, tile_grid

#: Tile progress callback: (tiles done, tiles total).
TileProgress = Callable[[int, int], None]


@dataclass
class SlideReport:
    """Outcome of one slide in a batch."""

    slide_id: str
    status: str  # "ok" | "skipped" | "failed"
    n_cells: int = 0
    seconds: float = 0.0
    message: str = ""
    folder: Path | None = None


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
    conc = deconvolve(rgb, stains, i0)
    labels = segment_nuclei(
        rgb,
        mpp=mpp,
        stains=stains,
        nuclear_stains=assay.nuclear_stains,
        method=config.segmenter,
        device=config.device,
        i0=i0,
        min_area_um2=config.min_nucleus_area_um2,
    )
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
    return cells[keep].reset_index(drop=True), labels


def _model_identity(method: str) -> dict[str, Any]:
    if method == "cnn":
        from senpath.segment.weights import shipped_weights_info

        return {"method": "cnn", **shipped_weights_info()}
    return {"method": "classical", "model_sha256": None}


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
    from senpath.tissue import tissue_mask

    t_start = time.perf_counter()
    config = config or AnalysisConfig()
    assay_obj = assay if isinstance(assay, Assay) else get_assay(assay, assays)
    slide = open_slide(path, mpp=mpp)
    slide_id = slide_id or slide.slide_id
    folder = Path(out) / slide_id
    method = resolve_method(config.segmenter)
    config = config.replace(segmenter=method)
    prior = StainSet.from_names(assay_obj.stains, overrides=assay_obj.stain_vectors)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    tissue = tissue_mask(slide, target_mpp=config.tissue_mpp)
    i0 = _estimate_i0(slide, tissue)
    timings["tissue_s"] = time.perf_counter() - t

    amp = config.analysis_mpp
    height_um = slide.shape[0] * slide.mpp[1]
    width_um = slide.shape[1] * slide.mpp[0]
    shape_px = (max(1, round(height_um / amp)), max(1, round(width_um / amp)))
    tile_px = max(64, round(config.tile_size_um / amp))
    halo_px = max(1, math.ceil(config.halo_um / amp))
    tiles = tile_grid(
        shape_px, tile_size=tile_px, halo=halo_px, mask=tissue.mask, mask_scale=tissue.mpp / amp
    )

    t = time.perf_counter()
    stain_estimate = _slide_stains(
        slide, tiles, prior=prior, i0=i0, mpp=amp, mode=config.stain_vectors
    )
    stains = stain_estimate.stains
    timings["stains_s"] = time.perf_counter() - t

    t = time.perf_counter()
    parts: list[pd.DataFrame] = []
    label_store = LabelStore(folder, shape_px, mpp=amp)  # pasted tile by tile, never whole in RAM
    for done, tile in enumerate(tiles, start=1):
        hy0, hy1, hx0, hx1 = tile.box.y0, tile.box.y1, tile.box.x0, tile.box.x1
        rgb = slide.read_region(hx0 * amp, hy0 * amp, (hx1 - hx0) * amp, (hy1 - hy0) * amp, mpp=amp)
        cells, tile_labels = analyze_region(
            rgb,
            mpp=amp,
            assay=assay_obj,
            stains=stains,
            config=config,
            i0=i0,
            origin_um=(hx0 * amp, hy0 * amp),
            tile=tile,
            image_shape=shape_px,
        )
        if len(cells):
            cells.insert(1, "tile_label", cells["cell_id"].astype(np.int32))
            # cell_id = the id pasted into the label image; a nucleus left with no pixels is dropped
            cells["cell_id"] = label_store.add_tile(
                tile_labels, tile, cells["tile_label"].to_numpy(), image_shape=shape_px
            )
            parts.append(cells[cells["cell_id"] > 0].reset_index(drop=True))
        if tile_progress:
            tile_progress(done, len(tiles))
    timings["cells_s"] = time.perf_counter() - t

    cells = pd.concat(parts, ignore_index=True) if parts else _empty_cells(stains)
    cells.insert(0, "slide_id", slide_id)
    threshold_info = slide_thresholds(
        cells, assay_obj, auto=config.auto_threshold, bounds_od=config.auto_threshold_bounds_od
    )
    thresholds = {m: float(v["threshold_od"]) for m, v in threshold_info.items()}
    scored = score_cells(cells, assay_obj, thresholds=thresholds)
    summary = summarize_markers(scored, assay_obj, thresholds=thresholds)
    for m, info in threshold_info.items():
        summary["markers"][m]["threshold"] = info
    summary.update(
        slide_id=slide_id,
        patient_id=patient_id or slide_id,
        tissue_fraction=float(tissue.fraction),
        tissue_area_mm2=float(tissue.mask.sum()) * (tissue.mpp / 1000.0) ** 2,
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
            "path": str(Path(path).resolve()),
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
            "preset_stain_vectors": prior.vectors.tolist(),
            # threshold_od: the one each marker was scored with (automatic or the rule's)
            "markers": [
                {**vars(r), "threshold_od": thresholds[r.name], "rule_threshold_od": r.threshold_od}
                for r in assay_obj.markers
            ],
            "phenotypes": {k: list(v) for k, v in assay_obj.phenotypes.items()},
        },
        "background_i0": [float(v) for v in np.atleast_1d(i0)],
        "stain_estimate": qc,
        "thresholds": threshold_info,
        "config": config.to_dict(),
        "segmenter": _model_identity(method),
        "device": config.device,
        "timings": timings,
    }

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # the store is incomplete until re-committed
    label_store.commit()
    atomic_write_parquet(folder / CELLS, scored)
    atomic_write_json(folder / SUMMARY, summary)
    atomic_write_json(folder / PROVENANCE, provenance)
    atomic_write_bytes(folder / QC_OVERLAY, _qc_overlay_png(slide, scored, assay_obj))
    write_manifest(
        folder,
        slide_id=slide_id,
        identity=run_identity(path, config=config, assay=assay_obj, mpp=mpp),
        extra={"patient_id": patient_id or slide_id, "assay": assay_obj.name},
    )
    return folder


def run_identity(
    path: str | Path, *, config: AnalysisConfig, assay: Assay, mpp: float | None
) -> dict[str, Any]:
    """What makes a store current: the input file, settings, assay definition and model."""
    method = resolve_method(config.segmenter)
    return {
        "input": input_identity(path),
        "config_sha": config.replace(segmenter=method).digest(),
        "assay": repr(assay),
        "mpp": mpp,
        "model_sha256": _model_identity(method).get("model_sha256"),
        "senpath_version": senpath.__version__,
    }


def _empty_cells(stains: StainSet) -> pd.DataFrame:
    empty = measure_cells(
        np.zeros((1, 1), np.int32), np.zeros((1, 1, len(stains.names)), np.float32),
        stain_names=stains.names, mpp=1.0,
    )  # fmt: skip
    empty.insert(1, "tile_label", pd.Series(dtype=np.int32))
    return empty


#: Tiles sampled (evenly over the tissue tile grid) for the per-slide stain estimate, and pixels kept.
_STAIN_SAMPLE_TILES = 8
_STAIN_SAMPLE_PIXELS = 400_000


def _slide_stains(
    slide: Any, tiles: Sequence[Any], *, prior: StainSet, i0: Any, mpp: float, mode: str
) -> StainEstimate:
    """The slide's stain vectors: estimated from a sample of its tissue tiles, or the prior.

    Pixels are sampled at the analysis resolution (at a coarse resolution, nuclei and cytoplasm mix and
    the extreme stain directions that Macenko's method looks for are lost).
    """
    picks = np.unique(
        np.linspace(0, len(tiles) - 1, min(len(tiles), _STAIN_SAMPLE_TILES)).astype(int)
    )
    samples = []
    for k in picks.tolist() if len(tiles) else []:
        box = tiles[k].core
        rgb = slide.read_region(
            box.x0 * mpp, box.y0 * mpp, (box.x1 - box.x0) * mpp, (box.y1 - box.y0) * mpp, mpp=mpp
        )
        samples.append(rgb_to_od(rgb, i0).reshape(-1, 3))
    od = np.concatenate(samples) if samples else np.zeros((0, 3), np.float32)
    if len(od) > _STAIN_SAMPLE_PIXELS:
        od = od[:: -(-len(od) // _STAIN_SAMPLE_PIXELS)]
    return estimate_stains(od, prior, estimate=mode == "estimate")


def _estimate_i0(slide: Any, tissue: Any) -> NDArray[np.float64]:
    """Glass intensity from the low-resolution image outside the tissue (default when no glass)."""
    import cv2

    height_um = slide.shape[0] * slide.mpp[1]
    width_um = slide.shape[1] * slide.mpp[0]
    thumb = slide.read_region(0, 0, width_um, height_um, mpp=tissue.mpp)
    mask = cv2.resize(
        tissue.mask.astype(np.uint8),
        (thumb.shape[1], thumb.shape[0]),
        interpolation=cv2.INTER_NEAREST,
    ).astype(bool)
    glass = thumb[~mask]
    if glass.shape[0] < 100:
        return np.full(3, DEFAULT_I0)
    return estimate_background(glass, percentile=50.0)


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


def plan_batch(
    source: str | Path,
    *,
    assays: Mapping[str, Assay] | None = None,
    assay: str | None = None,
    mpp: float | None = None,
) -> tuple[list[SlideJob], list[str]]:
    """The jobs of a batch input (sample sheet, folder or slide) and any bad sample-sheet rows."""
    assays = load_assays() if assays is None else assays
    return jobs_for_input(source, known_assays=assays, assay=assay, mpp=mpp)


def run_batch(
    jobs: Iterable[SlideJob],
    *,
    out: str | Path,
    config: AnalysisConfig | None = None,
    assays: Mapping[str, Assay] | None = None,
    force: bool = False,
    progress: bool = False,
) -> list[SlideReport]:
    """Analyse every job; a failing slide is reported and the others still run.

    Slides whose store is complete and current are skipped unless ``force``.
    """
    config = config or AnalysisConfig()
    assays = load_assays() if assays is None else assays
    jobs = list(jobs)
    reports: list[SlideReport] = []
    bar = _BatchProgress(len(jobs)) if progress else None
    try:
        for job in jobs:
            t = time.perf_counter()
            folder = Path(out) / job.slide_id
            try:
                assay = get_assay(job.assay, assays)
                identity = run_identity(job.path, config=config, assay=assay, mpp=job.mpp)
                if not force and is_complete(folder, identity):
                    n = _count_cells(folder)
                    reports.append(SlideReport(job.slide_id, "skipped", n, 0.0, "complete", folder))
                    continue
                on_tile = bar.slide(job.slide_id) if bar else None
                folder = analyze_slide(
                    job.path,
                    out=out,
                    assay=assay,
                    config=config,
                    mpp=job.mpp,
                    slide_id=job.slide_id,
                    patient_id=job.patient_id,
                    tile_progress=on_tile,
                )
                n = _count_cells(folder)
                reports.append(
                    SlideReport(job.slide_id, "ok", n, time.perf_counter() - t, "", folder)
                )
            except Exception as exc:  # one bad slide must not stop the batch
                message = f"{job.path}: {type(exc).__name__}: {exc}"
                reports.append(
                    SlideReport(job.slide_id, "failed", 0, time.perf_counter() - t, message)
                )
                _log_failure(Path(out), job, exc)
            finally:
                if bar:
                    bar.slide_done()
    finally:
        if bar:
            bar.close()
    return reports


def _count_cells(folder: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(folder / CELLS).metadata.num_rows)


def _log_failure(out: Path, job: SlideJob, exc: BaseException) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with open(out / "failures.log", "a", encoding="utf-8") as fh:
        fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.slide_id} ({job.path})\n{text}\n")


class _BatchProgress:
    """A rich progress display: one bar for the batch, one for the current slide's tiles."""

    def __init__(self, n_slides: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._progress.start()
        self._batch = self._progress.add_task("slides", total=n_slides)
        self._tiles: Any = None

    def slide(self, slide_id: str) -> TileProgress:
        if self._tiles is not None:
            self._progress.remove_task(self._tiles)
        self._tiles = self._progress.add_task(f"  {slide_id} tiles", total=None)

        def update(done: int, total: int) -> None:
            self._progress.update(self._tiles, completed=done, total=total)

        return update

    def slide_done(self) -> None:
        self._progress.advance(self._batch)

    def close(self) -> None:
        self._progress.stop()
