"""Spatial figures of committed slide stores: density maps and hot-spots, per slide and per batch.

``senpath spatial RESULTS`` (:func:`run_spatial`) reads each store's scored per-cell table (with a
reviewer's corrections applied, as every export does), so changing the grid or the hot-spot rule
never needs re-segmentation, and writes beside the store's files::

    <slide>/density.ome.zarr   the density maps (senpath.spatial.density), OME-Zarr with µm scale
    <slide>/hotspots.json      the hot-spots and the settings they were found with
    RESULTS/hotspots_by_slide.csv (parquet, xlsx)   one row per slide and target

These files are derived: they are not in the store's manifest, and each records the sha256 of the
``cells.parquet`` and the number of corrections it was computed from (``source``), so a reader can
tell when a later run or review has made it stale (:func:`is_current`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from senpath.regions import RegionSet
from senpath.results import SlideResults, atomic_write_json
from senpath.spatial.density import (
    DEFAULT_GRID_UM,
    DENSITY,
    DensityMaps,
    density_maps,
    marker_names,
    write_density_zarr,
)
from senpath.spatial.hotspots import HotSpot, HotspotRule, slide_hotspots

__all__ = [
    "HOTSPOTS",
    "HOTSPOT_TABLE",
    "SlideSpatial",
    "exclusion_area_um",
    "hotspot_table",
    "is_current",
    "phenotype_names",
    "read_hotspots",
    "rule_from_settings",
    "stored_or_computed",
    "run_spatial",
    "slide_spatial",
    "source_of",
    "write_slide_spatial",
]

HOTSPOTS = "hotspots.json"
#: The batch table's file stem under the results root.
HOTSPOT_TABLE = "hotspots_by_slide"


@dataclass
class SlideSpatial:
    """The spatial figures of one slide.

    Attributes
    ----------
    slide_id, patient_id, assay : the slide.
    maps : its density maps.
    hotspots : one :class:`HotSpot` per marker and phenotype.
    settings : grid spacing and hot-spot rule (JSON-ready).
    source : what the figures were computed from (see :func:`source_of`).
    """

    slide_id: str
    patient_id: str
    assay: str
    maps: DensityMaps
    hotspots: list[HotSpot]
    settings: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def phenotype_names(res: SlideResults) -> list[str]:
    """Phenotypes the slide's assay calls (a ``<p>_index`` in its summary and a ``<p>`` column)."""
    keys = [k[: -len("_index")] for k in res.summary if k.endswith("_index")]
    return sorted(p for p in keys if p in res.cells.columns)


def source_of(res: SlideResults) -> dict[str, Any]:
    """The cells a slide's spatial figures come from: the sha256 of ``cells.parquet`` in its
    manifest, the number of corrections applied on top, and the regions' sha256 when the store
    has regions (their exclusion regions place the hot-spots; left out otherwise, so figures of a
    store without regions stay current)."""
    source = {
        "cells_sha256": (res.manifest.get("files") or {}).get("cells.parquet"),
        "n_corrections": len(res.corrections),
    }
    regions = res.manifest.get("regions")
    if isinstance(regions, dict) and regions.get("sha256"):
        source["regions_sha256"] = regions["sha256"]
    return source


def exclusion_area_um(regions: RegionSet | None, slide_mpp: tuple[float, float]) -> Any:
    """The union of a slide's exclusion regions (Necrosis, Fold, ...) as a shapely geometry in
    slide µm (x, y), or ``None`` when it has none.

    Parameters
    ----------
    regions : the slide's regions (level-0 px; :func:`senpath.region_store.stored_regions`).
    slide_mpp : (x, y) µm per level-0 px.
    """
    import shapely
    from shapely import affinity

    parts = [r.geometry for r in regions.regions if r.excluded] if regions is not None else []
    if not parts:
        return None
    mpp_x, mpp_y = slide_mpp
    return affinity.scale(shapely.union_all(parts), mpp_x, mpp_y, origin=(0.0, 0.0))


def slide_spatial(
    res: SlideResults, *, grid_um: float = DEFAULT_GRID_UM, rule: HotspotRule | None = None
) -> SlideSpatial:
    """Density maps and hot-spots of one loaded store (:func:`senpath.load_results`).

    Parameters
    ----------
    res : the slide's store (corrected cells, as exports use them).
    grid_um : bin side of the density maps in µm.
    rule : the hot-spot rule (default :class:`HotspotRule`: a 0.2 mm² circle, ≥ 100 cells).
    """
    from senpath.region_store import stored_regions

    rule = rule or HotspotRule()
    markers = marker_names(res.cells)
    phenotypes = phenotype_names(res)
    maps = density_maps(res.cells, markers=markers, phenotypes=phenotypes, spacing_um=grid_um)
    source = source_of(res)
    settings = {"grid_um": float(grid_um), "hotspot_rule": rule.__dict__.copy()}
    maps.attrs.update({"slide_id": res.slide_id, "source": source, "settings": settings})
    spots = slide_hotspots(
        res.cells,
        markers=markers,
        phenotypes=phenotypes,
        rule=rule,
        exclusion_um=exclusion_area_um(stored_regions(res), res.provenance.slide_mpp),
    )
    return SlideSpatial(
        res.slide_id,
        res.patient_id,
        str(res.manifest.get("assay") or res.summary.get("assay") or ""),
        maps,
        spots,
        settings,
        source,
    )


def write_slide_spatial(sp: SlideSpatial, folder: str | Path) -> list[Path]:
    """Write ``density.ome.zarr`` and ``hotspots.json`` into the slide's store ``folder``."""
    folder = Path(folder)
    paths = [write_density_zarr(folder / DENSITY, sp.maps, name=sp.slide_id)]
    atomic_write_json(
        folder / HOTSPOTS,
        {
            "slide_id": sp.slide_id,
            "patient_id": sp.patient_id,
            "assay": sp.assay,
            "settings": sp.settings,
            "source": sp.source,
            "n_cells": int(sp.maps.attrs["n_cells"]),
            "hotspots": [h.as_dict() for h in sp.hotspots],
        },
    )
    paths.append(folder / HOTSPOTS)
    return paths


def read_hotspots(folder: str | Path) -> dict[str, Any] | None:
    """A store's ``hotspots.json`` (``None`` when ``senpath spatial`` has not written one)."""
    try:
        return json.loads((Path(folder) / HOTSPOTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_current(res: SlideResults, stored: dict[str, Any] | None) -> bool:
    """Whether stored spatial figures (``hotspots.json``'s content) come from the store's cells as
    they are now (same ``cells.parquet``, same number of corrections)."""
    return stored is not None and stored.get("source") == source_of(res)


def rule_from_settings(settings: dict[str, Any] | None) -> tuple[float, HotspotRule]:
    """(grid_um, rule) from the ``settings`` of a ``hotspots.json`` (defaults where absent)."""
    settings = settings or {}
    rule = settings.get("hotspot_rule") or {}
    known = {k: v for k, v in rule.items() if k in HotspotRule.__dataclass_fields__}
    return float(settings.get("grid_um", DEFAULT_GRID_UM)), HotspotRule(**known)


def _hotspot_from_dict(d: dict[str, Any]) -> HotSpot:
    fields_ = HotSpot.__dataclass_fields__
    # JSON stores NaN as null
    kwargs: dict[str, Any] = {
        k: (math.nan if v is None else v) for k, v in d.items() if k in fields_
    }
    return HotSpot(**kwargs)


def stored_or_computed(res: SlideResults) -> SlideSpatial:
    """A store's spatial figures: those ``senpath spatial`` wrote when they are current
    (:func:`is_current`), else computed now from its cells with the settings it used (defaults
    when it was never run); nothing is written."""
    from senpath.spatial.density import read_density_zarr

    stored = read_hotspots(res.folder)
    grid_um, rule = rule_from_settings((stored or {}).get("settings"))
    if stored is not None and is_current(res, stored) and (res.folder / DENSITY).is_dir():
        try:
            maps = read_density_zarr(res.folder / DENSITY)
            spots = [_hotspot_from_dict(d) for d in stored.get("hotspots", [])]
            return SlideSpatial(
                res.slide_id, res.patient_id, str(stored.get("assay", "")), maps, spots,
                dict(stored.get("settings") or {}), dict(stored.get("source") or {}),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: computed again below
    return slide_spatial(res, grid_um=grid_um, rule=rule)


def hotspot_table(spatials: Sequence[SlideSpatial]) -> pd.DataFrame:
    """One row per slide and target: the hot-spot (index, centre in µm, field area, cells in the
    field) beside the global index; the columns of :class:`HotSpot` after the slide's ids."""
    rows = [
        {"slide_id": sp.slide_id, "patient_id": sp.patient_id, "assay": sp.assay, **h.as_dict()}
        for sp in spatials
        for h in sp.hotspots
    ]
    columns = ["slide_id", "patient_id", "assay", *HotSpot.__dataclass_fields__]
    return pd.DataFrame(rows, columns=columns)


def run_spatial(
    results_root: str | Path,
    *,
    grid_um: float = DEFAULT_GRID_UM,
    rule: HotspotRule | None = None,
    formats: Sequence[str] = ("csv",),
    on_slide: Any = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Compute and write every committed store's density maps and hot-spots, and the batch table.

    A slide that fails (an unreadable store, a store another run or a review is writing now) is
    reported and the others go on.

    Parameters
    ----------
    results_root : the results folder of ``senpath run`` (or one slide's store).
    grid_um, rule : see :func:`slide_spatial`.
    formats : table formats of ``RESULTS/hotspots_by_slide`` (csv, parquet, xlsx).
    on_slide : optional callback ``on_slide(slide_id, paths)`` after each slide is written.

    Returns
    -------
    (paths, failures) : the files written; ``(slide folder, one-line reason)`` per failed slide.
    """
    from senpath.corrections import load_results
    from senpath.export import write_table
    from senpath.results import find_stores
    from senpath.spatial.grid import grid_for_points
    from senpath.store_lock import hold_store

    root = Path(results_root)
    rule = rule or HotspotRule()
    grid_for_points([], [], spacing_um=grid_um)  # a bad spacing is one error, not one per slide
    written: list[Path] = []
    failures: list[tuple[str, str]] = []
    spatials = []
    stores = find_stores(root) if root.is_dir() else []
    if not stores:
        raise FileNotFoundError(f"no committed results store under {root}: run `senpath run` first")
    for folder in stores:
        try:
            with hold_store(folder, warn=False):
                res = load_results(folder)
                sp = slide_spatial(res, grid_um=grid_um, rule=rule)
                paths = write_slide_spatial(sp, folder)
        except Exception as exc:  # one slide's problem never stops the batch
            failures.append((str(folder), " ".join(str(exc).split()) or type(exc).__name__))
            continue
        spatials.append(sp)
        written.extend(paths)
        if on_slide is not None:
            on_slide(sp.slide_id, paths)
    if spatials and formats:
        written.extend(write_table(hotspot_table(spatials), root / HOTSPOT_TABLE, formats))
    return written, failures
