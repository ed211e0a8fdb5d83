"""Re-scoring stored slides: new marker thresholds or rules over the stored measurements.

Segmenting and measuring is the expensive part of an analysis; the marker calls are a threshold on
a measured per-cell OD. ``senpath rescore RESULTS --threshold sabgal=0.10`` (or ``--settings
lab.toml``) re-applies the positivity rules to every store's ``cells.parquet`` without reading a
tile or loading a segmenter, and rewrites the store as a fresh run with those rules would have
written it: the calls, bins and phenotypes, ``summary.json``, ``provenance.json`` (each marker's
threshold and its source), the QC pictures, and the manifest with the identity of such a run, so a
later ``senpath run`` with the same settings finds the store current.

Where thresholds come from, in order: ``--threshold`` (a fixed OD per marker, source ``rule``);
else a slide scored from its batch's negative control is scored from that control's stored cells
at the settings' ``control_percentile`` (the control's store must be in RESULTS); else
``auto_threshold`` (Otsu per slide) or the rule's threshold of the settings' assay.

Only scoring may change. A settings file that changes what was measured (the pixel size, the
cytoplasm ring, the stain vectors, the segmenter...) is refused for that slide with a line saying
to run ``senpath run --force``.

A reviewer's corrections stay applied on top: the cells keep their ids, so the log's call flips,
exclusions and nucleus edits still hold; the log gets a ``start`` entry naming the re-scored files
(:func:`senpath.corrections.reanchor`), and threshold changes the reviewer made before are
superseded by the re-scoring. ``provenance.json`` keeps a ``rescores`` history: when, the
thresholds before (the pipeline's and, for a reviewed slide, the ones in effect) and after, and
how many calls changed.

Each store is written under its lock, file by file atomically with the manifest removed first and
written last: an interrupted re-scoring leaves the store incomplete (redone by the next run), never
half old and half new.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import senpath
from senpath.config import (
    CONTROL_SETTINGS,
    AnalysisConfig,
    Assay,
    get_assay,
    load_assays,
    load_settings,
)
from senpath.corrections import (
    corrected_thresholds,
    log_matches,
    read_log,
    reanchor,
    relinked_slide_path,
)
from senpath.provenance import AssayRecord, marker_record
from senpath.qc_plots import slide_histograms_png
from senpath.results import (
    CELL_ID_COLUMNS,
    CELLS,
    MANIFEST,
    PROVENANCE,
    QC_HISTOGRAMS,
    QC_OVERLAY,
    SUMMARY,
    SlideResults,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    find_stores,
    read_results,
    sha256_file,
    with_stable_cell_types,
    write_manifest,
)
from senpath.score import (
    ControlCutoff,
    ControlError,
    control_thresholds,
    score_cells,
    slide_thresholds,
    summarize_markers,
)
from senpath.slide_plan import counterstain_reference
from senpath.stain import StainSet
from senpath.store_lock import default_user, hold_store

#: Settings that only change how cells are scored (a re-scoring may change them).
SCORING_SETTINGS = ("auto_threshold", "auto_threshold_bounds_od", *CONTROL_SETTINGS, "device")


@dataclass
class RescoreReport:
    """Outcome of re-scoring one store."""

    slide_id: str
    status: str  # "ok" | "failed"
    message: str = ""
    before: dict[str, float] = dataclasses.field(default_factory=dict)  # marker -> OD
    after: dict[str, float] = dataclasses.field(default_factory=dict)
    n_changed: int = 0  # cells whose call of some marker changed
    seconds: float = 0.0


def parse_thresholds(texts: Sequence[str], markers: Sequence[str]) -> dict[str, float]:
    """``["sabgal=0.1", "ki67=0.2"]`` -> ``{"sabgal": 0.1, "ki67": 0.2}``; a bare ``0.1`` is the
    threshold of the one marker of ``markers``.

    Raises
    ------
    ValueError
        For a text that is not ``MARKER=OD`` with OD in 0-2.4, an unknown marker (naming the
        known ones), or a bare OD when the results have several markers.
    """
    out: dict[str, float] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep:
            if len(markers) != 1:
                raise ValueError(
                    f"--threshold {text!r}: these results have the markers "
                    f"{', '.join(markers) or 'none'}: write MARKER=OD (e.g. sabgal=0.10)"
                )
            name, value = markers[0], text
        name = name.strip()
        try:
            od = float(value)
            if not 0.0 <= od <= 2.4:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"--threshold {text!r}: the threshold is not an OD between 0 and 2.4"
            ) from None
        if name not in markers:
            raise ValueError(
                f"--threshold {text!r}: no marker {name!r} in these results (markers: "
                f"{', '.join(markers) or 'none'})"
            )
        out[name] = od
    return out


def _config_of(res: SlideResults) -> AnalysisConfig:
    """The settings a store was analysed with, as an :class:`AnalysisConfig`."""
    names = {f.name for f in dataclasses.fields(AnalysisConfig)}
    raw: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in res.provenance.config.items()
    }
    return AnalysisConfig(**{k: v for k, v in raw.items() if k in names})


def _measured_changes(stored: AnalysisConfig, given: AnalysisConfig) -> list[str]:
    """Measurement settings ``given`` sets (away from the default) to other than ``stored``."""
    default = AnalysisConfig()
    out = []
    for f in dataclasses.fields(AnalysisConfig):
        if f.name in SCORING_SETTINGS:
            continue
        new, old = getattr(given, f.name), getattr(stored, f.name)
        if new != old and new != getattr(default, f.name):
            out.append(f"{f.name} {old!r} -> {new!r}")
    return out


def _assay_problems(record: AssayRecord, new: Assay) -> list[str]:
    """What of an assay's definition would change the measurement of a store (not only its
    scoring): its stains, nuclear stains, prior stain vectors or their tolerance."""
    problems = []
    if tuple(new.stains) != tuple(record.stains):
        problems.append(f"stains {list(record.stains)} -> {list(new.stains)}")
        return problems
    if record.preset_stain_vectors is not None:
        prior = StainSet.from_names(new.stains, new.stain_vectors).vectors
        if not np.allclose(prior, np.asarray(record.preset_stain_vectors), atol=1e-5):
            problems.append("stain_vectors")
    if dict(new.stain_tolerance_deg) != dict(record.stain_tolerance_deg):
        problems.append("stain_tolerance_deg")
    return problems


def _recorded_assay(record: AssayRecord) -> Assay:
    """A store's assay as a run would define it: its rules and its prior stain vectors."""
    assay = record.assay()
    prior = record.preset_stain_vectors or record.stain_vectors
    vectors = {s: (v[0], v[1], v[2]) for s, v in zip(record.stains, prior, strict=False)}
    return dataclasses.replace(assay, stain_vectors=vectors)


@dataclass(frozen=True)
class _Plan:
    """How one store is re-scored."""

    res: SlideResults
    config: AnalysisConfig
    assay: Assay
    #: the counterstain level a fresh run normalises the CNN's input to (the store's: checked)
    counterstain_reference: float | None = None


def _plan(res: SlideResults, settings: Any | None) -> _Plan:
    record = res.provenance.assay
    stored_cfg = _config_of(res)
    known = settings.assays if settings is not None else load_assays()
    try:  # the assay as a run names it (a preset, or the settings file's)
        assay = get_assay(record.name, known)
    except ValueError:  # a user assay of an earlier settings file: as recorded
        assay = _recorded_assay(record)
    changed = _assay_problems(record, assay)
    config = stored_cfg
    if settings is not None:
        changed = _measured_changes(stored_cfg, settings.analysis) + changed
        config = stored_cfg.replace(**{k: getattr(settings.analysis, k) for k in SCORING_SETTINGS})
    # the CNN's input: a fresh run normalises the counterstain to the assay's reference now
    identity = res.manifest.get("identity") or {}
    before = identity.get("counterstain_reference_od")
    method = res.provenance.segmenter_method or config.segmenter
    after = counterstain_reference(assay, config, method=method, paired="nuclear_image" in identity)
    if before != after:
        changed.append(f"counterstain_reference_od {before} -> {after}")
    if changed:
        what = "the settings change" if settings is not None else "the assay now defines"
        raise ValueError(
            f"{what} what was measured ({'; '.join(changed)}), not only the scoring: run "
            "`senpath run --force` instead"
        )
    return _Plan(res, config, assay, after)


def _measurements(cells: pd.DataFrame, assay: Assay, stored: Assay) -> pd.DataFrame:
    """The measured columns of a stored per-cell table, in the order the pipeline made them."""
    derived = {
        f"{r.name}_{s}"
        for a in (assay, stored)
        for r in a.markers
        for s in ("od", "positive", "bin")
    }
    derived |= set(assay.phenotypes) | set(stored.phenotypes) | {"enlarged_nucleus"}
    derived |= set(CELL_ID_COLUMNS)
    return cells[[c for c in cells.columns if c not in derived]]


def _threshold_records(
    plan: _Plan,
    cells: pd.DataFrame,
    overrides: Mapping[str, float],
    controls: Mapping[str, SlideResults],
) -> tuple[dict[str, dict[str, Any]], ControlCutoff | None]:
    """Each marker's new threshold record, and the control cut-off the slide is scored from."""
    records = plan.res.provenance.threshold_records
    control_id = next(
        (str(r["control_slide_id"]) for r in records.values() if r.get("source") == "control"),
        None,
    )
    cutoff = None
    if control_id is not None and not set(overrides) >= {r.name for r in plan.assay.markers}:
        batch = next(r.get("batch") for r in records.values() if r.get("source") == "control")
        control = controls.get(control_id)
        if control is None:
            raise ControlError(
                f"scored from the negative control {control_id!r}, whose store is not in these "
                "results: re-score them together, or give --threshold"
            )
        pct, min_cells = plan.config.control_percentile, plan.config.control_min_cells
        control_cells = _measurements(control.cells, plan.assay, control.provenance.assay.assay())
        found = control_thresholds(
            control_cells, plan.assay, percentile=pct, min_cells=min_cells,
            control_slide_id=control_id, batch=batch,
        )  # fmt: skip
        is_control = control_id == plan.res.slide_id
        cutoff = ControlCutoff(
            control_id, batch, pct, min_cells, thresholds=None if is_control else dict(found)
        )
    else:
        found = slide_thresholds(
            cells, plan.assay, auto=plan.config.auto_threshold,
            bounds_od=plan.config.auto_threshold_bounds_od,
        )  # fmt: skip
    for marker in overrides:  # a fixed threshold is the (re-written) rule's, as a fresh run's
        if marker in found:
            found[marker] = {"threshold_od": float(plan.assay.marker(marker).threshold_od),
                             "source": "rule"}  # fmt: skip
    if overrides and cutoff is not None and set(overrides) >= set(found):
        cutoff = None
    return found, cutoff


def rescore_store(
    plan: _Plan,
    *,
    overrides: Mapping[str, float],
    controls: Mapping[str, SlideResults],
    settings_source: str | None,
    user: str | None = None,
) -> RescoreReport:
    """Re-score one store (see the module text); returns its report."""
    t0 = time.perf_counter()
    if overrides:  # the assay's rules at the fixed thresholds: what a run with them would use
        rules = tuple(
            dataclasses.replace(r, threshold_od=float(overrides[r.name]))
            if r.name in overrides
            else r
            for r in plan.assay.markers
        )
        plan = dataclasses.replace(plan, assay=dataclasses.replace(plan.assay, markers=rules))
    res, assay = plan.res, plan.assay
    folder = res.folder
    stored_assay = res.provenance.assay.assay()
    cells = _measurements(res.cells, assay, stored_assay)
    records, cutoff = _threshold_records(plan, cells, overrides, controls)
    thresholds = {m: float(v["threshold_od"]) for m, v in records.items()}
    scored = score_cells(cells, assay, thresholds=thresholds)
    n_changed = 0
    if len(scored):
        changed = np.zeros(len(scored), dtype=bool)
        for r in assay.markers:
            old = res.cells.get(f"{r.name}_positive")
            if old is not None:
                changed |= old.to_numpy(dtype=bool) != scored[f"{r.name}_positive"].to_numpy()
        n_changed = int(changed.sum())
    before = dict(res.provenance.thresholds)
    with hold_store(folder):  # refused while a review (or a run) writes the store
        entries = read_log(folder)  # under the lock: no edit lands between this and the anchor
        live_log = bool(entries) and log_matches(entries, res.manifest)
        in_effect = corrected_thresholds(entries, before) if live_log else before
        (folder / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest is written
        atomic_write_parquet(
            folder / CELLS,
            with_stable_cell_types(
                scored, slide_id=res.slide_id, patient_id=res.patient_id, assay=assay.name
            ),
        )
        summary = _summary(res, scored, assay, records)
        atomic_write_json(folder / SUMMARY, summary)
        raw = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
        note = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "senpath_version": senpath.__version__,
            "settings": settings_source,
            "threshold_overrides": dict(overrides),
            "thresholds_before": raw.get("thresholds", {}),
            "thresholds_in_effect_before": in_effect,
            "thresholds_after": records,
            "n_calls_changed": n_changed,
        }
        raw["assay"]["markers"] = [marker_record(r, thresholds[r.name]) for r in assay.markers]
        raw["assay"]["phenotypes"] = {k: list(v) for k, v in assay.phenotypes.items()}
        raw["thresholds"] = records
        raw["config"] = plan.config.to_dict()
        raw["rescores"] = [*raw.get("rescores", []), note]
        atomic_write_json(folder / PROVENANCE, raw)
        atomic_write_bytes(folder / QC_HISTOGRAMS, slide_histograms_png(scored, thresholds))
        overlay = _redraw_overlay(res, scored, assay, plan.config, entries)
        if live_log:  # the review's calls and exclusions hold for the re-scored cells
            reanchor(
                folder, slide_id=res.slide_id, cells_sha256=sha256_file(folder / CELLS),
                provenance_sha256=sha256_file(folder / PROVENANCE),
                user=user or default_user(), note={"thresholds_after": thresholds},
            )  # fmt: skip
        write_manifest(
            folder,
            slide_id=res.slide_id,
            identity=_identity(res, plan, assay, cutoff),
            extra={
                k: v
                for k, v in res.manifest.items()
                if k not in ("store_version", "slide_id", "identity", "files")
            },
        )
    message = "; ".join(
        m
        for m in (
            overlay,
            "" if not entries or live_log else "its corrections log is for an earlier analysis",
        )
        if m
    )
    return RescoreReport(
        res.slide_id, "ok", message, before, thresholds, n_changed, time.perf_counter() - t0
    )


def _summary(
    res: SlideResults, scored: pd.DataFrame, assay: Assay, records: Mapping[str, Any]
) -> dict[str, Any]:
    thresholds = {m: float(v["threshold_od"]) for m, v in records.items()}
    summary = summarize_markers(scored, assay, thresholds=thresholds)
    for m, info in records.items():
        summary["markers"][m]["threshold"] = dict(info)
    kept = ("slide_id", "patient_id", "tissue_fraction", "tissue_area_mm2", "n_tiles")
    summary.update({k: res.summary[k] for k in kept if k in res.summary})
    for k in ("warning", "stain_qc", "counterstain_qc"):
        if k in res.summary:
            summary[k] = res.summary[k]
    return summary


def _redraw_overlay(
    res: SlideResults,
    scored: pd.DataFrame,
    assay: Assay,
    config: AnalysisConfig,
    entries: Sequence[Mapping[str, Any]],
) -> str:
    """Redraw ``qc_overlay.png`` with the new calls; a note when the slide cannot be read (the
    old picture is then left as it was)."""
    from senpath.io import open_slide
    from senpath.labels import load_labels
    from senpath.qc_overlay import qc_overlay_png

    path = relinked_slide_path(entries) or res.provenance.slide_path
    slide_record = res.provenance.slide
    mpp = res.provenance.slide_mpp if slide_record.get("mpp_source") == "mpp=" else None
    try:
        slide = open_slide(path, mpp=mpp)
        shape = tuple(int(v) for v in load_labels(res.folder).shape)
        png = qc_overlay_png(
            slide, scored, store=res.folder,
            marker=assay.markers[0].name if assay.markers else None,
            analysis_mpp=config.analysis_mpp, shape_px=(shape[0], shape[1]),
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        return f"qc_overlay.png not redrawn (the slide cannot be read: {exc})"
    atomic_write_bytes(res.folder / QC_OVERLAY, png)
    return ""


def _identity(
    res: SlideResults, plan: _Plan, assay: Assay, cutoff: ControlCutoff | None
) -> dict[str, Any]:
    """The store's run identity after re-scoring: that of a run with the new scoring settings."""
    identity = dict(res.manifest.get("identity") or {})
    method = res.provenance.segmenter_method or plan.config.segmenter
    identity["config_sha"] = plan.config.with_segmenter(method).digest()
    identity["assay"] = repr(assay)
    if cutoff is not None:
        identity["cutoff"] = cutoff.identity()
    else:
        identity.pop("cutoff", None)
    if plan.counterstain_reference is not None:
        identity["counterstain_reference_od"] = plan.counterstain_reference
    else:
        identity.pop("counterstain_reference_od", None)
    return identity


def rescore_results(
    results_root: str | Path,
    *,
    thresholds: Sequence[str] | Mapping[str, float] = (),
    settings: str | Path | Mapping[str, Any] | None = None,
    user: str | None = None,
) -> list[RescoreReport]:
    """Re-score every complete store under ``results_root`` (one failing store does not stop
    the others).

    Parameters
    ----------
    results_root : a results folder of ``senpath run`` (or one slide's store).
    thresholds : fixed OD thresholds, ``{"sabgal": 0.10}`` or CLI texts (``"sabgal=0.10"``).
    settings : a settings TOML (or mapping) whose scoring settings and assay marker rules apply.
    user : who re-scored (for a reviewed slide's log; default: this user).

    Returns
    -------
    One report per store, negative controls first.

    Raises
    ------
    ValueError
        When neither ``thresholds`` nor ``settings`` is given, or a threshold text is bad.
    FileNotFoundError
        When ``results_root`` holds no complete store.
    """
    if not thresholds and settings is None:
        raise ValueError("give --threshold MARKER=OD or --settings FILE: what to re-score with")
    root = Path(results_root)
    folders = find_stores(root) if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no complete results store under {root}: run `senpath run` first")
    stores = [read_results(f) for f in folders]
    markers = sorted({m.name for r in stores for m in r.provenance.markers})
    if isinstance(thresholds, Mapping):
        overrides = parse_thresholds([f"{k}={v}" for k, v in thresholds.items()], markers)
    else:
        overrides = parse_thresholds(list(thresholds), markers)
    loaded = load_settings(settings) if settings is not None else None
    source = str(settings) if isinstance(settings, str | Path) else None
    controls = {r.slide_id: r for r in stores}  # the stored (pipeline's) cells of every slide
    # a negative control first: its own record names itself
    order = sorted(stores, key=lambda r: not _is_control(r))
    reports = []
    for res in order:
        t0 = time.perf_counter()
        try:
            plan = _plan(res, loaded)
            reports.append(
                rescore_store(
                    plan, overrides=overrides, controls=controls, settings_source=source, user=user
                )
            )
        except Exception as exc:  # one store's problem: reported, the others go on
            text = " ".join(str(exc).split()) or type(exc).__name__
            if not isinstance(exc, ValueError | OSError | RuntimeError):
                text = f"{type(exc).__name__}: {text}"
            reports.append(
                RescoreReport(
                    res.slide_id,
                    "failed",
                    f"{res.folder}: {text}",
                    seconds=time.perf_counter() - t0,
                )  # fmt: skip
            )
    return reports


def _is_control(res: SlideResults) -> bool:
    return any(
        r.get("source") == "control" and r.get("control_slide_id") == res.slide_id
        for r in res.provenance.threshold_records.values()
    )
