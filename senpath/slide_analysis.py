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
    remove_stale_temps,
    slide_id_problem,
    store_folder,
    with_stable_cell_types,
    write_manifest,
)
from senpath.score import ControlCutoff, score_cells, slide_thresholds, summarize_markers
from senpath.segment import resolve_method
from senpath.segment.counterstain import faint_counterstain_warning
from senpath.slide_plan import SlidePlan, counterstain_reference, plan_slide
from senpath.stain import stain_qc
from senpath.store_lock import hold_store
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


def segmenter_precision(segmenter: object) -> str | None:
    """The precision/runtime a segmenter's nucleus network runs at (``auto`` resolved: ``fp32``,
    ``bf16``, ``fp16``, ``onnx-fp32`` or ``onnx-int8``), or ``None`` for a segmenter without a
    network."""
    precision = getattr(getattr(segmenter, "network", None), "precision", None)
    return precision if isinstance(precision, str) else None


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
    cutoff: ControlCutoff | None = None,
    nuclear_image: str | Path | None = None,
    nuclear_channel: int | None = None,
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
    slide_id, patient_id : names used in the store (default: the file stem). ``slide_id`` names
        the store's folder: letters, digits, ``.``, ``_``, ``+``, ``-`` (as in a sample sheet).
    tile_progress : called with (tiles done, total) as tiles finish.
    cutoff : the marker cut-offs from the slide's batch's negative control (default: the rule's,
        or automatic ones with ``auto_threshold``).
    nuclear_image, nuclear_channel : a DAPI/Hoechst image of the same field (a culture assay
        with ``objects = "cells"``): registered, its nuclei grow the cells
        (:mod:`senpath.segment.paired_nuclei`).

    Returns
    -------
    Path of the committed store.

    Raises
    ------
    senpath.score.ControlError
        When the slide is a batch's negative control with too few cells for its cut-offs.
    ValueError
        When ``slide_id`` is not a plain folder name (``../x``): it would write outside ``out``.
    senpath.store_lock.StoreBusyError
        When another run, or a review in napari, writes the slide's store now.
    """
    from senpath.io import open_slide

    t_start = time.perf_counter()
    if slide_id is not None and (problem := slide_id_problem(slide_id)):
        raise ValueError(problem)
    config, assays = resolve_settings(config, assays)
    assay_obj = assay if isinstance(assay, Assay) else get_assay(assay, assays)
    slide = open_slide(path, mpp=mpp)
    folder = store_folder(out, slide_id or slide.slide_id)
    with hold_store(folder):  # one writer per store: refused while another run or a review writes
        plan = plan_slide(
            path,
            assay=assay_obj,
            config=config,
            mpp=mpp,
            slide_id=slide_id,
            patient_id=patient_id,
            slide=slide,
            nuclear_image=nuclear_image,
            nuclear_channel=nuclear_channel,
        )
        segmenter = plan_segmenter(plan)
        results = analyze_tiles(plan, range(plan.n_tiles), slide=slide, segmenter=segmenter)
        return commit_slide(
            plan, results, out=out, slide=slide, tile_progress=tile_progress, t_start=t_start,
            cutoff=cutoff, network_precision=segmenter_precision(segmenter),
        )  # fmt: skip


def commit_slide(
    plan: SlidePlan,
    results: Iterable[TileResult],
    *,
    out: str | Path,
    slide: Any = None,
    tile_progress: TileProgress | None = None,
    t_start: float | None = None,
    extra_timings: Mapping[str, float] | None = None,
    cutoff: ControlCutoff | None = None,
    network_precision: str | None = None,
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
    cutoff : marker cut-offs from the batch's negative control (see :func:`analyze_slide`).
    network_precision : the precision/runtime the nucleus network ran at (what ``auto`` chose),
        stored as ``network_precision`` in the provenance; ``None`` when no network ran in this
        process (classical segmenter, or tiles segmented by other workers).

    Returns
    -------
    Path of the committed store.

    Notes
    -----
    Idempotent: committing the same plan and results again (a retried task) rewrites the same
    store; the manifest is removed first and written last, and only once every file reads back,
    so a store is never half new. The store's lock is held meanwhile
    (:func:`senpath.store_lock.hold_store`).
    """
    folder = store_folder(out, plan.slide_id)
    with hold_store(folder):
        return _commit_slide(
            plan, results, folder=folder, slide=slide, tile_progress=tile_progress,
            t_start=t_start, extra_timings=extra_timings, cutoff=cutoff,
            network_precision=network_precision,
        )  # fmt: skip


def _commit_slide(
    plan: SlidePlan,
    results: Iterable[TileResult],
    *,
    folder: Path,
    slide: Any,
    tile_progress: TileProgress | None,
    t_start: float | None,
    extra_timings: Mapping[str, float] | None,
    cutoff: ControlCutoff | None = None,
    network_precision: str | None = None,
) -> Path:
    from senpath.io import open_slide

    t_start = time.perf_counter() if t_start is None else t_start
    slide = slide if slide is not None else open_slide(plan.path, mpp=plan.mpp)
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
    try:
        for done, result in enumerate(results, start=1):
            if result.index != expected:
                raise ValueError(
                    f"tile results out of order for {plan.slide_id}: got tile {result.index}, "
                    f"expected {expected} (cell ids are assigned in tile order)"
                )
            expected += 1
            if len(result.cells):
                # cell_id = the id pasted into the label image; a nucleus left with no pixels is
                # dropped
                parts.append(result.with_ids(label_store.add_instances(result.instances)))
            if tile_progress:
                tile_progress(done, len(tiles))  # may raise to stop the slide (a cancel)
    except BaseException:
        # the temporary label array goes now, not when the traceback lets the store be collected
        label_store.abort()
        raise
    if expected != len(tiles):
        label_store.abort()
        raise ValueError(f"{plan.slide_id}: {expected} tile results for {len(tiles)} tiles")
    timings["cells_s"] = timings.get("cells_s", 0.0) + time.perf_counter() - t

    cells = pd.concat(parts, ignore_index=True) if parts else empty_cells(stains)
    cells.insert(0, "slide_id", plan.slide_id)
    if cutoff is None:
        threshold_info = slide_thresholds(
            cells, assay_obj, auto=config.auto_threshold, bounds_od=config.auto_threshold_bounds_od
        )
    else:
        try:
            threshold_info = cutoff.for_cells(cells, assay_obj)
        except ValueError:  # a control with too few cells: nothing of this analysis is kept
            label_store.abort()
            raise
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
    qc = stain_qc(stain_estimate, assay=assay_obj.name, assay_match=plan.stain_match)
    summary["stain_qc"] = qc
    if qc["status"] == "warning":
        summary["warning"] = str(qc["warning"])
    if plan.counterstain_qc is not None:
        # as stain_qc: the record and its warning, said only where a marker's % positive can be
        # biased by it; a caution, not a mismatch: the slide stays reliable
        counter_qc = dict(plan.counterstain_qc)
        counter_qc["warning"] = faint_counterstain_warning(counter_qc) if assay_obj.markers else ""
        summary["counterstain_qc"] = counter_qc
        if counter_qc["warning"]:
            summary["warning"] = "; ".join(
                filter(None, (summary.get("warning"), counter_qc["warning"]))
            )
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
            **_file_calibration(slide),
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
        "segmenter": (
            {
                "method": "paired_nuclei" if plan.nuclear else "whole_cell",
                "objects": "cells",
                "model_sha256": None,
            }
            if assay_obj.objects == "cells"
            else {
                **_model_identity(config.segmenter, config.model),
                # what the CNN saw: the slide's counterstain strengthened (or not) before it
                "counterstain": plan.counterstain,
                # its maps averaged over each tile's flips, or not (config is resolved: False
                # when the classical method ran)
                "test_time_flips": config.test_time_flips,
            }
        ),
        "device": config.device,
        # config.precision may say "auto": what it resolved to on this machine (issue 18)
        "network_precision": network_precision,
        "timings": timings,
    }
    if plan.nuclear is not None:
        provenance["nuclear_image"] = plan.nuclear

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
    # before the QC overlay, which draws from the stored labels: a store that does not read back
    # fails here with its reason, not inside the drawing
    check_reads_back(folder, cells=scored, summary=summary, label_shape=shape_px)
    overlay = qc_overlay_png(
        slide, scored, store=folder, marker=assay_obj.markers[0].name if assay_obj.markers else None,
        analysis_mpp=amp, shape_px=shape_px,
    )  # fmt: skip
    atomic_write_bytes(folder / QC_OVERLAY, overlay)
    atomic_write_bytes(folder / QC_HISTOGRAMS, slide_histograms_png(scored, thresholds))
    write_manifest(
        folder,
        slide_id=plan.slide_id,
        identity=run_identity(
            plan.path,
            config=config,
            assay=assay_obj,
            mpp=plan.mpp,
            cutoff=cutoff,
            nuclear_image=plan.nuclear["path"] if plan.nuclear else None,
            nuclear_channel=plan.nuclear["channel"] if plan.nuclear else None,
        ),
        extra={"patient_id": plan.patient_id, "assay": assay_obj.name},
    )
    return folder


def _file_calibration(slide: Any) -> dict[str, Any]:
    """The slide record's keys for a file calibration that an explicit mpp overrode.

    ``file_mpp`` [x, y] µm/px and ``file_mpp_source`` when the file states a pixel size and
    ``mpp=`` (``--mpp``, the sheet's ``mpp``) replaced it, and ``mpp_warning`` when the two
    disagree (:meth:`senpath.io.Slide.mpp_disagreement`); nothing otherwise, so a run on the
    file's own calibration writes the record it always has.
    """
    file_mpp = getattr(slide, "file_mpp", None)
    if slide.mpp_source != "mpp=" or file_mpp is None:
        return {}
    record: dict[str, Any] = {
        "file_mpp": list(file_mpp),
        "file_mpp_source": slide.file_mpp_source,
    }
    warning = slide.mpp_disagreement()
    if warning is not None:
        record["mpp_warning"] = warning
    return record


def _remove_stale_tmp_files(folder: Path) -> None:
    """Temporary files of atomic writes left by an interrupted run (a killed worker) of this slide:
    those whose writer is gone (see :func:`senpath.results.remove_stale_temps`)."""
    for name in (CELLS, SUMMARY, PROVENANCE, QC_OVERLAY, QC_HISTOGRAMS, MANIFEST):
        remove_stale_temps(folder, name)


def check_reads_back(
    folder: Path,
    *,
    cells: pd.DataFrame,
    summary: Mapping[str, Any],
    label_shape: tuple[int, int],
) -> None:
    """Read a store's files back before it is committed: the cells, summary, provenance and every
    level of the label image, as written.

    Parameters
    ----------
    folder : the slide's store, every file written but the manifest.
    cells : the per-cell table that was written.
    summary : the summary that was written.
    label_shape : (Y, X) px of level 0 of the label image.

    Raises
    ------
    RuntimeError
        When a part does not read back (the store is then left without a manifest: incomplete,
        redone on resume); the message names the part.
    """
    import json

    from senpath.labels import load_labels

    problem = ""
    try:
        back = pd.read_parquet(folder / CELLS, columns=["cell_id"])
        if not np.array_equal(back["cell_id"].to_numpy(), cells["cell_id"].to_numpy()):
            problem = f"{CELLS} holds other cells than were written"
        elif json.loads((folder / SUMMARY).read_text(encoding="utf-8")).get(
            "slide_id"
        ) != summary.get("slide_id"):
            problem = f"{SUMMARY} holds another slide's summary"
        else:
            json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
            level = 0
            while True:
                try:
                    labels = load_labels(folder, level)
                except ValueError:  # past the last level
                    break
                if level == 0 and tuple(labels.shape) != tuple(label_shape):
                    problem = f"level 0 of the label image is {labels.shape}, not {label_shape}"
                    break
                if max(labels.shape) <= 2048:  # the small levels whole: their chunks decode
                    np.asarray(labels)
                level += 1
    except Exception as exc:  # any failure to read back: the store must not be committed
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise RuntimeError(
            f"{folder}: the store did not read back after writing ({problem}); it is left "
            "incomplete (no manifest) and is redone by the next run"
        )


def run_identity(
    path: str | Path,
    *,
    config: AnalysisConfig,
    assay: Assay,
    mpp: float | None,
    cutoff: ControlCutoff | None = None,
    nuclear_image: str | Path | None = None,
    nuclear_channel: int | None = None,
) -> dict[str, Any]:
    """What makes a store current: the input file, settings, assay definition and model, for a
    slide scored from its batch's negative control, that control and its cut-offs, and a paired
    nuclear image (file and channel)."""
    method = resolve_method(config.segmenter, model=config.model)
    model = _model_identity(method, config.model)
    identity = {
        "input": input_identity(path),
        "config_sha": config.with_segmenter(method).digest(),
        "assay": repr(assay),
        "mpp": mpp,
        "model_sha256": model.get("model_sha256"),
        "senpath_version": senpath.__version__,
    }
    if method == "cnn":  # the same weights with other thresholds or pooling are another model
        identity["model_spec_sha256"] = model.get("model_spec_sha256")
    if cutoff is not None:
        identity["cutoff"] = cutoff.identity()
    if assay.objects != "nuclei":  # out of the assay's repr, so earlier stores keep their identity
        identity["objects"] = assay.objects
    # what the CNN's input was normalised to (out of the assay's repr, as objects: an assay
    # without one, or a run that does not normalise, keeps the identity it had before)
    reference = counterstain_reference(
        assay, config, method=method, paired=nuclear_image is not None
    )
    if reference is not None:
        identity["counterstain_reference_od"] = reference
    if nuclear_image is not None:
        identity["nuclear_image"] = {
            "input": input_identity(Path(nuclear_image).resolve()),
            "channel": nuclear_channel,
        }
    return identity
