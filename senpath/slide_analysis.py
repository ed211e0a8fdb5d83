"""Analyse one slide, in stages: plan → tiles → commit (the unit the batch and dask distribute).

::

    plan_slide     open_slide → tissue mask (low resolution) → glass intensity → tile grid at the
                   analysis mpp over tissue, with halo → stain vectors (per-slide estimate or preset)
                   (in :mod:`senpath.slide_plan`; imported here)
    analyze_tiles  the tile engine (in :mod:`senpath.tile_engine`; imported here): per tile, read,
                   deconvolve once, segment nuclei with the slide's segmenter, measure, keep the
                   nuclei whose centroid lies in the tile's core (halo rule: each nucleus counted
                   once, whole); segment_tiles does the inference half alone, for GPU workers
    commit_slide   paste the nuclei in tile order (global cell ids) → score (marker rules,
                   phenotypes) → per-slide summary → results store, manifest last

:func:`analyze_slide` runs the three in this process; :mod:`senpath.distributed` runs them as tasks on
a dask cluster with identical results.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import senpath
from senpath.config import AnalysisConfig, Assay, get_assay, resolve_settings
from senpath.labels import LabelStore
from senpath.provenance import marker_record
from senpath.qc_overlay import qc_overlay_png
from senpath.qc_plots import slide_histograms_png
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
    with_stable_cell_types,
    write_manifest,
)
from senpath.score import score_cells, slide_thresholds, summarize_markers
from senpath.segment import resolve_method
from senpath.slide_plan import SlidePlan, plan_slide
from senpath.stain import stain_qc
from senpath.tile_engine import (
    TileResult,
    analyze_tiles,
    empty_cells,
    plan_segmenter,
    segment_tiles,
)

__all__ = [
    "TileProgress",
    "TileResult",
    "analyze_slide",
    "analyze_tiles",
    "commit_slide",
    "plan_slide",
    "run_identity",
    "segment_tiles",
]

#: Tile progress callback: (tiles done, tiles total).
TileProgress = Callable[[int, int], None]


def _model_identity(method: str, model: str | None = None) -> dict[str, Any]:
    if method == "cnn":
        from senpath.segment.weights import shipped_weights_info

        return {"method": "cnn", "model_path": model, **shipped_weights_info(model)}
    return {"method": "classical", "model_sha256": None}


def analyze_slide(
    path: str | Path,
    *,
    out: str | Path,
    assay: str | Assay,
    config: AnalysisConfig | str | Path | Mapping[str, Any] | None = None,
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
    config : analysis settings (defaults: 0.5 µm/px, 5 µm cytoplasm ring, CNN when installed), or
        a settings TOML file or mapping, checked by :func:`senpath.config.load_settings` (its
        assays can then be named in ``assay``).
    mpp : pixel size in µm for files without calibration.
    slide_id, patient_id : names used in the store (default: the file stem).
    tile_progress : called with (tiles done, total) as tiles finish.

    Returns
    -------
    Path of the committed store.
    """
    from senpath.io import open_slide

    t_start = time.perf_counter()
    config, assays = resolve_settings(config, assays)
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
    results = analyze_tiles(plan, range(plan.n_tiles), slide=slide, segmenter=plan_segmenter(plan))
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
        if len(result.cells):
            # cell_id = the id pasted into the label image; a nucleus left with no pixels is dropped
            parts.append(result.with_ids(label_store.add_instances(result.instances)))
        if tile_progress:
            tile_progress(done, len(tiles))
    if expected != len(tiles):
        label_store.abort()
        raise ValueError(f"{plan.slide_id}: {expected} tile results for {len(tiles)} tiles")
    timings["cells_s"] = timings.get("cells_s", 0.0) + time.perf_counter() - t

    cells = pd.concat(parts, ignore_index=True) if parts else empty_cells(stains)
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
            "markers": [marker_record(r, thresholds[r.name]) for r in assay_obj.markers],
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
    atomic_write_parquet(
        folder / CELLS,
        with_stable_cell_types(
            scored,
            slide_id=plan.slide_id,
            patient_id=plan.patient_id or plan.slide_id,
            assay=assay_obj.name,
        ),
    )
    atomic_write_json(folder / SUMMARY, summary)
    atomic_write_json(folder / PROVENANCE, provenance)
    overlay = qc_overlay_png(
        slide, scored, store=folder, marker=assay_obj.markers[0].name if assay_obj.markers else None,
        analysis_mpp=amp, shape_px=shape_px,
    )  # fmt: skip
    atomic_write_bytes(folder / QC_OVERLAY, overlay)
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
