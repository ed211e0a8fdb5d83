"""Serial sections of a patient in a results folder: register, map, write ``_sections/<patient>/``.

A patient's sections are its complete slide stores with distinct ``section`` (the sample sheet's
column, recorded in each store's manifest; a store without one is a section of its own); of several
stores of one section the first by slide id is used and the others named. One is the reference, the others are registered onto it from their slides' pyramids
(:func:`section_image`, :func:`register_sections`), their cells are mapped into its frame and the
co-localisation map is computed. What is written (each file atomically, ``registration.json``
last, so its presence means the folder is complete)::

    RESULTS/_sections/<patient_id>/
        colocalisation.parquet   one row per grid cell (see colocalisation_map)
        senescence_map.ome.zarr  the same as an OME-Zarr image in the reference section's µm
                                 frame (senpath.registration._map_image)
        alignment.png            reference, aligned moving sections, unsure grid cells, the map
        registration.json        provenance: inputs (store manifests' sha256), settings, per
                                 moving section its affine (moving µm -> reference µm), method,
                                 check, NCC, residual estimate (µm), ok/problems; map counts

``_sections`` cannot be a slide id (those start with a letter or digit), so it never collides with
a store.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senpath.registration._colocalisation import (
    DEFAULT_RULE,
    MIN_CELLS,
    cells_to_reference,
    colocalisation_map,
    parse_rule,
)
from senpath.registration._image import SectionImage, section_image
from senpath.registration._quality import (
    SectionRegistration,
    grid_shape,
    register_sections,
    warp_to_reference,
)

SECTIONS_FOLDER = "_sections"
REGISTRATION = "registration.json"
COLOCALISATION = "colocalisation.parquet"
ALIGNMENT = "alignment.png"


class SectionsError(ValueError):
    """A patient's sections cannot be registered (too few, missing slide file, unknown reference)."""


@dataclass(frozen=True)
class PatientSections:
    """What :func:`register_patient` wrote."""

    folder: Path
    reference: str
    registrations: list[SectionRegistration]
    colocalisation: pd.DataFrame
    #: section -> its slide ids, the registered one first (sections with several stores)
    duplicates: dict[str, list[str]] = field(default_factory=dict)


def sections_folder(results: str | Path, patient_id: str) -> Path:
    """``RESULTS/_sections/<patient_id>`` (the patient id checked like a slide id)."""
    from senpath.results import slide_id_problem

    problem = slide_id_problem(patient_id)
    if problem:
        raise SectionsError(f"patient {patient_id!r}: {problem.replace('slide_id', 'patient id')}")
    return Path(results) / SECTIONS_FOLDER / patient_id


def section_key(manifest: dict[str, Any], slide_id: str) -> str:
    """The section a store is of: the sample sheet's ``section``, else its own slide id (a store
    without one is taken for a section of its own, as before the column was recorded)."""
    return str(manifest.get("section") or slide_id)


def patients_with_sections(results: str | Path) -> dict[str, list[str]]:
    """Patient id -> slide ids of its complete stores, for patients with two or more sections
    (distinct ``section`` values; two stores of one section are one section)."""
    from senpath.results import find_stores, read_manifest

    by_patient: dict[str, list[str]] = {}
    sections: dict[str, set[str]] = {}
    for folder in find_stores(results):
        manifest = read_manifest(folder) or {}
        slide_id = str(manifest.get("slide_id", folder.name))
        patient = str(manifest.get("patient_id") or slide_id)
        by_patient.setdefault(patient, []).append(slide_id)
        sections.setdefault(patient, set()).add(section_key(manifest, slide_id))
    return {p: sorted(s) for p, s in sorted(by_patient.items()) if len(sections[p]) >= 2}


def one_store_per_section(
    slide_ids: Sequence[str], sections: Sequence[str], *, reference: str | None = None
) -> tuple[list[int], dict[str, list[str]]]:
    """Pick one store per section: the reference when it is among them, else the first slide id.

    Parameters
    ----------
    slide_ids, sections : sequences of str
        Each store's slide id and section (:func:`section_key`), in the same order.
    reference : str, optional
        A slide id that must be kept.

    Returns
    -------
    kept : list of int
        Positions of the kept stores, in the order given.
    duplicates : dict
        Section -> its slide ids, the used one first (only sections with more than one store).
    """
    groups: dict[str, list[int]] = {}
    for i, section in enumerate(sections):
        groups.setdefault(section, []).append(i)
    kept, duplicates = [], {}
    for section, members in groups.items():
        members = sorted(members, key=lambda i: (slide_ids[i] != reference, slide_ids[i]))
        kept.append(members[0])
        if len(members) > 1:
            duplicates[section] = [slide_ids[i] for i in members]
    return sorted(kept), duplicates


def register_patient(
    results: str | Path,
    patient_id: str,
    *,
    reference: str | None = None,
    rule: str = DEFAULT_RULE,
    grid_um: float = 100.0,
    target_mpp: float | None = None,
    model: str = "affine",
    min_cells: int = MIN_CELLS,
) -> PatientSections:
    """Register a patient's sections onto one and write the co-localisation map.

    Parameters
    ----------
    results : path
        The results folder (``senpath run --out``).
    patient_id : str
    reference : str, optional
        Slide id of the reference section; default the first (by slide id) that scored the rule's
        first marker.
    rule : str
        Co-localisation rule (:func:`parse_rule`), default SA-β-gal-high and Ki67-low.
    grid_um : float
        Grid cell size (µm) of the map and the quality grid.
    target_mpp : float, optional
        Pixel size (µm/px) of the registration pictures; default 8 (finer for sections under 2 mm).
    model : {"rigid", "affine"}
    min_cells : int
        Fewest cells of a marker's section for a grid cell to be called.

    Returns
    -------
    PatientSections

    Raises
    ------
    SectionsError
        Fewer than two complete stores, an unknown reference, a slide file that is gone.
    """
    import senpath
    from senpath.corrections import load_results
    from senpath.io import open_slide
    from senpath.results import (
        IncompleteStoreError,
        atomic_write_bytes,
        atomic_write_json,
        atomic_write_parquet,
        find_stores,
    )

    conditions = parse_rule(rule)
    started = time.perf_counter()
    stores = []
    for folder in find_stores(results):
        try:
            # a reviewer's corrections count (and a relinked slide path)
            res = load_results(folder)
        except IncompleteStoreError:
            continue
        if res.patient_id == patient_id:
            if "excluded" in res.cells.columns:
                res.cells = res.cells[~res.cells["excluded"].astype(bool)]
            stores.append(res)
    stores.sort(key=lambda r: r.slide_id)
    if reference is not None and reference not in {r.slide_id for r in stores}:
        raise SectionsError(
            f"reference {reference!r} is not a slide of patient {patient_id!r} "
            f"({', '.join(r.slide_id for r in stores)})"
        )
    kept, duplicates = one_store_per_section(
        [r.slide_id for r in stores],
        [section_key(r.manifest, r.slide_id) for r in stores],
        reference=reference,
    )
    stores = [stores[i] for i in kept]
    if len(stores) < 2:
        raise SectionsError(
            f"patient {patient_id!r} has {len(stores)} section(s) with a complete slide store in "
            f"{results}: registering sections needs two or more (the sample sheet's `section` "
            "column names them)"
        )
    names = [r.slide_id for r in stores]
    if reference is None:
        first = conditions[0].marker
        reference = next(
            (r.slide_id for r in stores if f"{first}_positive" in r.cells.columns), names[0]
        )
    if reference not in names:
        raise SectionsError(
            f"reference {reference!r} is not a slide of patient {patient_id!r} ({', '.join(names)})"
        )
    stores.sort(key=lambda r: (r.slide_id != reference, r.slide_id))

    pictures: list[SectionImage] = []
    for res in stores:
        path = Path(res.provenance.slide_path)
        if not path.is_file():
            raise SectionsError(
                f"{res.slide_id}: slide file {path} is gone; register needs the slides "
                "(`senpath relink` points a store at a moved slide)"
            )
        slide = open_slide(path, mpp=res.provenance.slide_mpp)
        pictures.append(section_image(slide, target_mpp=target_mpp, name=res.slide_id))
    ref_picture = pictures[0]
    shape = grid_shape(ref_picture.extent_um, grid_um)

    registrations = [
        register_sections(ref_picture, pic, model=model, grid_um=grid_um) for pic in pictures[1:]
    ]
    sections: list[tuple[str, pd.DataFrame]] = [(reference, stores[0].cells)]
    unsure: dict[str, np.ndarray] = {}
    for res, reg in zip(stores[1:], registrations, strict=True):
        sections.append((res.slide_id, cells_to_reference(res.cells, reg.matrix)))
        # a failed registration: every grid cell that needs this section is unsure
        unsure[res.slide_id] = reg.quality.unsure if reg.ok else np.ones(shape, dtype=bool)
    table = colocalisation_map(
        sections, conditions, grid_um=grid_um, shape=shape, unsure=unsure, min_cells=min_cells
    )

    folder = sections_folder(results, patient_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REGISTRATION).unlink(missing_ok=True)  # incomplete until rewritten last
    atomic_write_parquet(folder / COLOCALISATION, table)
    from senpath.registration._map_image import colocalisation_maps, write_map_image

    settings = {
        "rule": ", ".join(str(c) for c in conditions),
        "grid_um": grid_um,
        "picture_mpp": ref_picture.mpp,
        "model": model,
        "min_cells": min_cells,
    }
    image_attrs = {"patient_id": patient_id, "reference": reference, **settings}
    write_map_image(
        folder,
        colocalisation_maps(table, conditions, grid_um=grid_um, shape=shape, attrs=image_attrs),
        name=f"{patient_id} on {reference}",
    )
    from senpath.registration._figures import alignment_png

    warped = [
        warp_to_reference(
            pic.od,
            reg.matrix,
            moving_mpp=pic.mpp,
            reference_mpp=ref_picture.mpp,
            shape=ref_picture.od.shape,
        )
        for pic, reg in zip(pictures[1:], registrations, strict=True)
    ]
    atomic_write_bytes(
        folder / ALIGNMENT,
        alignment_png(
            ref_picture, warped, registrations, table, shape=shape, grid_um=grid_um, rule=rule
        ),
    )
    calls = table["call"].value_counts().to_dict()
    record: dict[str, Any] = {
        "senpath_version": senpath.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "patient_id": patient_id,
        "reference": reference,
        "sections": {
            res.slide_id: {
                "assay": res.manifest.get("assay"),
                "section": res.section,
                "slide_path": res.provenance.slide_path,
                "manifest_sha256": _manifest_digest(res.folder),
            }
            for res in stores
        },
        "settings": settings,
        "duplicate_sections": duplicates,
        "registrations": [reg.to_dict() for reg in registrations],
        "map": {
            "grid_cells": int(len(table)),
            **{str(k): int(v) for k, v in calls.items()},
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(folder / REGISTRATION, record)
    return PatientSections(folder, reference, registrations, table, duplicates)


def _manifest_digest(folder: Path) -> str:
    from senpath.results import MANIFEST

    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()


def read_patient_sections(results: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every complete ``_sections/<patient>/`` folder under ``results`` with its record."""
    import json

    root = Path(results) / SECTIONS_FOLDER
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if (p / REGISTRATION).is_file()):
        found.append((folder, json.loads((folder / REGISTRATION).read_text(encoding="utf-8"))))
    return found


def summary_lines(record: dict[str, Any]) -> Sequence[str]:
    """One line per registration: moving -> reference, residual, NCC, ok or why not."""
    lines = []
    for reg in record.get("registrations", []):
        residual = reg.get("residual_um", {})
        state = "ok" if reg.get("ok") else "FAILED: " + "; ".join(reg.get("problems", []))
        lines.append(
            f"{reg['moving']} -> {reg['reference']}: residual estimate mean "
            f"{_num(residual.get('mean'))} µm, p95 {_num(residual.get('p95'))} µm, NCC "
            f"{_num(reg.get('ncc'), 2)}, {reg.get('unsure_grid_cells')} of "
            f"{reg.get('tissue_grid_cells')} tissue grid cells unsure; {state}"
        )
    return lines


def _num(value: Any, digits: int = 1) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(number) else f"{number:.{digits}f}"
