"""A slide's regions in its results store: attached, summarised, and split out for the tables.

Attaching regions (``senpath regions import``, the sample sheet's ``regions`` column, napari's
*Save regions*) never re-segments the slide and never rewrites ``cells.parquet`` (a reviewer's
corrections identify the analysis by its sha256). It writes, atomically, under the store's lock::

    regions.geojson       the regions as given (the user's file byte for byte; its sha256 is the
                          regions' identity)
    cell_regions.parquet  per cell_id: region, regions (every region holding it), region_excluded
    summary.json          re-summarised: cells in exclusion regions left out of every figure, and
                          per region the same figures as per slide (``summary["regions"]``)
    manifest.json         last: the new files' sha256 and the regions' record (sha256, source,
                          exclusion classes, areas)

:func:`senpath.results.read_results` joins ``cell_regions.parquet`` onto the cells (``excluded`` is
then set for cells in exclusion regions), and :func:`senpath.load_results` re-derives the per-region
figures from the corrected cells. The rule that gives a cell its region is in
:mod:`senpath.regions`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senpath.regions import (
    EXCLUSION_CLASSES,
    TISSUE,
    RegionSet,
    assign_regions,
    check_extent,
    parse_regions,
    read_regions,
)
from senpath.results import (
    CELL_REGIONS,
    REGIONS,
    SUMMARY,
    SlideResults,
    atomic_write_bytes,
    atomic_write_json,
    read_results,
    uncorrected_summary,
    write_manifest,
)
from senpath.score import summarize_markers

#: Columns a store's regions add to its cells.
REGION_COLUMNS = ("region", "regions", "region_excluded")


def cell_positions_px(cells: pd.DataFrame, slide_mpp: tuple[float, float]) -> tuple[Any, Any]:
    """Cell centroids in level-0 slide px (QuPath's coordinates) from ``x_um``, ``y_um``.

    ``x_um`` is the position of a pixel centre in µm from the slide's origin, so ``x_um / mpp``
    is the centroid in the continuous pixel frame where pixel ``(0, 0)`` covers ``[0, 1)``.
    """
    return (
        cells["x_um"].to_numpy(dtype=np.float64) / slide_mpp[0],
        cells["y_um"].to_numpy(dtype=np.float64) / slide_mpp[1],
    )


def _usable_areas(regions: RegionSet, slide_mpp: tuple[float, float]) -> dict[str, float]:
    """Each counted region's area in mm², exclusion regions inside it taken out."""
    import shapely

    cut = [r.geometry for r in regions.regions if r.excluded]
    hole = shapely.union_all(cut) if cut else None
    out = {}
    for r in regions.regions:
        if not r.excluded:
            geom = r.geometry if hole is None else r.geometry.difference(hole)
            out[r.name] = float(geom.area) * slide_mpp[0] * slide_mpp[1] / 1e6
    return out


def region_summaries(
    cells: pd.DataFrame,
    assay: Any,
    *,
    thresholds: Mapping[str, float],
    areas_mm2: Mapping[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """The slide's figures per region, from the same function as the slide's own.

    Parameters
    ----------
    cells : scored per-cell table with ``region`` (and ``excluded``: those cells left out).
    assay : the slide's :class:`senpath.config.Assay`.
    thresholds : ``{marker: OD}`` the cells are called at.
    areas_mm2 : usable area per region (mm²), for ``area_mm2`` and ``cells_per_mm2``.

    Returns
    -------
    ``{region: summary}`` with :func:`senpath.score.summarize_markers`'s keys (``n_cells``,
    ``markers`` with % positive, CI, H-score, labelling index; ``senescent_index``;
    ``median_nucleus_area_um2``) plus ``area_mm2`` and ``cells_per_mm2`` (``None`` without an
    area), for every named counted region and :data:`~senpath.regions.UNANNOTATED` when it holds
    cells.
    """
    areas = dict(areas_mm2 or {})
    counted = cells
    if "excluded" in cells.columns:
        counted = cells[~cells["excluded"].astype(bool)]
    names = set(areas) | set(counted["region"].dropna().astype(str))
    out = {}
    for name in sorted(names):
        part = counted[counted["region"].astype(str) == name]
        entry = summarize_markers(part, assay, thresholds=dict(thresholds))
        area = areas.get(name)
        entry["area_mm2"] = area
        entry["cells_per_mm2"] = len(part) / area if area else None
        out[name] = entry
    return out


def _excluded_by_region(cells: pd.DataFrame) -> dict[str, int]:
    hit = cells[cells["region_excluded"].astype(bool)]
    counts = hit["region"].astype(str).value_counts().sort_index()
    return {str(k): int(v) for k, v in counts.items() if v}


def summary_with_regions(
    summary: Mapping[str, Any],
    cells: pd.DataFrame,
    assay: Any,
    *,
    thresholds: Mapping[str, float],
    record: Mapping[str, Any],
    areas_mm2: Mapping[str, float],
) -> dict[str, Any]:
    """A slide summary re-derived with the regions' exclusions, and the per-region figures.

    The marker entries keep the threshold records the pipeline wrote (``markers.<m>.threshold``).
    """
    out = dict(summary)
    out.update(summarize_markers(cells, assay, thresholds=dict(thresholds)))
    for m, entry in out["markers"].items():
        before = (summary.get("markers") or {}).get(m, {})
        if "threshold" in before:
            entry["threshold"] = before["threshold"]
    out["regions"] = {
        **dict(record),
        "file": REGIONS,
        "rule": "smallest region holding the centroid; exclusion regions first",
        "n_excluded": int(cells["region_excluded"].astype(bool).sum()),
        "excluded_by_region": _excluded_by_region(cells),
        "by_region": region_summaries(cells, assay, thresholds=thresholds, areas_mm2=areas_mm2),
    }
    return out


def attach_regions(folder: str | Path, regions: RegionSet, data: bytes) -> dict[str, Any]:
    """Give a committed store these regions: cells assigned, summary redone, manifest last.

    Parameters
    ----------
    folder : the slide's store.
    regions : parsed from ``data`` (:func:`senpath.regions.parse_regions`).
    data : the GeoJSON's bytes, stored as they are.

    Returns
    -------
    The regions' record as the manifest holds it.

    Raises
    ------
    RegionFileError
        When no region lies on the slide.
    senpath.results.IncompleteStoreError
        When ``folder`` is not a complete store.
    senpath.store_lock.StoreBusyError
        When a run or a review writes the store now.
    """
    from senpath.store_lock import hold_store

    folder = Path(folder)
    with hold_store(folder):
        res = read_results(folder)
        prov = res.provenance
        shape = prov.slide.get("shape")
        if shape:
            check_extent(regions, (int(shape[0]), int(shape[1])))
        cells = res.cells.drop(columns=[*REGION_COLUMNS, "excluded"], errors="ignore")
        x, y = cell_positions_px(cells, prov.slide_mpp)
        assigned = assign_regions(x, y, regions)
        table = pd.DataFrame({"cell_id": cells["cell_id"].to_numpy(dtype=np.int64)})
        table = pd.concat([table, assigned], axis=1)
        table["region"] = table["region"].astype("string[pyarrow]")
        table["regions"] = table["regions"].astype("string[pyarrow]")
        cells = pd.concat([cells.reset_index(drop=True), assigned], axis=1)
        cells["excluded"] = cells["region_excluded"].to_numpy(dtype=bool)
        record = regions.record(prov.slide_mpp)
        summary = summary_with_regions(
            uncorrected_summary(res.summary),
            cells,
            prov.assay.assay(),
            thresholds=prov.thresholds,
            record=record,
            areas_mm2=_usable_areas(regions, prov.slide_mpp),
        )
        atomic_write_bytes(folder / REGIONS, data)
        _write_cell_regions(folder / CELL_REGIONS, table, record)
        atomic_write_json(folder / SUMMARY, summary)
        extra = {
            k: v
            for k, v in res.manifest.items()
            if k not in ("store_version", "slide_id", "identity", "files")
        }
        write_manifest(
            folder,
            slide_id=res.slide_id,
            identity=res.manifest["identity"],
            extra={**extra, "regions": record},
        )
    return record


#: Key of the regions' record in ``cell_regions.parquet``'s schema metadata.
_RECORD_KEY = b"senpath.regions"


def _write_cell_regions(path: Path, table: pd.DataFrame, record: Mapping[str, Any]) -> None:
    """``cell_regions.parquet`` with the regions' record (source, exclusion classes) in its
    metadata, so a re-analysis of the slide can attach the same regions again."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = {**(arrow.schema.metadata or {}), _RECORD_KEY: json.dumps(dict(record)).encode()}
    buf = io.BytesIO()
    pq.write_table(arrow.replace_schema_metadata(meta), buf)
    atomic_write_bytes(path, buf.getvalue())


def reattach_kept_regions(folder: str | Path) -> dict[str, Any] | None:
    """After a re-analysis (``senpath run --force``), attach the regions the store held before.

    The new analysis' manifest lists no regions, but ``regions.geojson`` and the record of how it
    was imported (in ``cell_regions.parquet``) are still in the folder: the same file is attached
    again with the same exclusion classes. Returns the record, or ``None`` when there is nothing
    to attach (no kept regions, or the store has regions already).
    """
    import pyarrow.parquet as pq

    folder = Path(folder)
    if regions_sha256(folder) is not None or not (folder / REGIONS).is_file():
        return None
    try:
        meta = pq.read_schema(folder / CELL_REGIONS).metadata or {}
        record = json.loads(meta[_RECORD_KEY])
    except (OSError, KeyError, ValueError):
        return None
    data = (folder / REGIONS).read_bytes()
    regions = parse_regions(
        data, source=str(record["source"]), exclusion_classes=record["exclusion_classes"]
    )
    return attach_regions(folder, regions, data)


def import_regions(
    folder: str | Path,
    geojson: str | Path,
    *,
    exclusion_classes: Sequence[str] = EXCLUSION_CLASSES,
) -> dict[str, Any]:
    """Read a QuPath GeoJSON file and attach its regions to the store (see :func:`attach_regions`)."""
    regions, data = read_regions(geojson, exclusion_classes=exclusion_classes)
    return attach_regions(folder, regions, data)


def regions_sha256(folder: str | Path) -> str | None:
    """The sha256 of the regions a store holds (``None``: it has none)."""
    from senpath.results import read_manifest

    manifest = read_manifest(folder) or {}
    record = manifest.get("regions")
    return str(record["sha256"]) if isinstance(record, Mapping) else None


def stored_regions(res: SlideResults) -> RegionSet | None:
    """The regions a store holds, parsed again from its ``regions.geojson`` (``None``: none)."""
    record = res.manifest.get("regions")
    if not isinstance(record, Mapping):
        return None
    data = (res.folder / REGIONS).read_bytes()
    return parse_regions(
        data,
        source=str(record.get("source", REGIONS)),
        exclusion_classes=record.get("exclusion_classes", EXCLUSION_CLASSES),
    )


def with_corrected_regions(res: SlideResults) -> SlideResults:
    """A corrected store's per-region figures from its corrected cells.

    Cells a nucleus edit added have no stored region: they get theirs by the same rule from the
    stored regions. Called by :func:`senpath.corrections.apply_to_results`.
    """
    if "regions" not in res.summary or "region" not in res.cells.columns:
        return res
    cells = res.cells
    missing = cells["region"].isna().to_numpy()
    if missing.any():
        regions = stored_regions(res)
        if regions is not None:
            cells = cells.copy()
            x, y = cell_positions_px(cells[missing], res.provenance.slide_mpp)
            assigned = assign_regions(x, y, regions)
            for col in REGION_COLUMNS:
                values = cells[col].astype(object).to_numpy()
                values[missing] = assigned[col].to_numpy()
                cells[col] = values
            cells["region_excluded"] = cells["region_excluded"].astype(bool)
            cells["excluded"] = cells["excluded"].astype(bool) | cells["region_excluded"]
    block = dict(res.summary["regions"])
    areas = {k: v.get("area_mm2") for k, v in (block.get("by_region") or {}).items()}
    block["by_region"] = region_summaries(
        cells,
        res.provenance.assay.assay(),
        thresholds=res.provenance.thresholds,
        areas_mm2={k: v for k, v in areas.items() if v is not None},
    )
    block["n_excluded"] = int(cells["region_excluded"].astype(bool).sum())
    block["excluded_by_region"] = _excluded_by_region(cells)
    return dataclasses.replace(res, cells=cells, summary={**res.summary, "regions": block})


def split_by_region(res: SlideResults) -> dict[str, SlideResults]:
    """One view of the slide per region (its counted cells only), for the ``--by ...,region``
    tables. A store without regions is one region, :data:`~senpath.regions.TISSUE`."""
    cells = res.cells
    if "excluded" in cells.columns:
        cells = cells[~cells["excluded"].astype(bool)]
    if "region" not in cells.columns:
        return {TISSUE: dataclasses.replace(res, cells=cells)}
    names = cells["region"].astype(str)
    return {
        str(name): dataclasses.replace(res, cells=cells[names.to_numpy() == name])
        for name in sorted(set(names))
    }


def region_text(summary: Mapping[str, Any]) -> str:
    """A short description of a store's regions for messages (``3 regions (Tumor, Stroma, ...)``)."""
    block = summary.get("regions") or {}
    names = sorted((block.get("regions") or {}).keys())
    n = int(block.get("n_excluded") or 0)
    text = f"{len(names)} region(s) ({', '.join(names)})" if names else "no regions"
    return text + (f"; {n} cells in exclusion regions left out" if n else "")


def region_table(
    results: Sequence[SlideResults],
    *,
    by: str,
    table: Callable[..., pd.DataFrame],
    include_unreliable: bool = False,
) -> pd.DataFrame:
    """The marker table with one row per patient (``by="patient"``) or slide and region.

    Each region's rows are ``table`` (:func:`senpath.export.marker_table`) of the slides' cells in
    that region, so every figure is computed as for a whole patient; ``region`` follows the id
    column, ``n_slides`` counts the slides with cells in the region, and ``area_mm2`` /
    ``cells_per_mm2`` give the region's usable area summed over those slides (exclusion regions
    taken out; empty where a slide's region has no drawn area, as :data:`UNANNOTATED` and the
    generated :data:`TISSUE`).
    """
    parts: dict[str, list[SlideResults]] = {}
    areas: dict[tuple[str, str], float | None] = {}
    for res in results:
        by_region = (res.summary.get("regions") or {}).get("by_region") or {}
        for name, view in split_by_region(res).items():
            parts.setdefault(name, []).append(view)
            areas[(res.slide_id, name)] = (by_region.get(name) or {}).get("area_mm2")
    frames = []
    for name in sorted(parts):
        part = table(parts[name], by=by, include_unreliable=include_unreliable)
        part.insert(1, "region", name)
        area = []
        for ids in part.get("slide_ids", pd.Series([""] * len(part))).fillna(""):
            values = [areas.get((sid, name)) for sid in str(ids).split(";") if sid]
            area.append(sum(values) if values and None not in values else np.nan)  # type: ignore[arg-type]
        part.insert(2, "area_mm2", np.asarray(area, dtype=np.float64))
        if "n_cells" in part.columns:
            per_mm2 = part["n_cells"].astype("Float64") / part["area_mm2"]
            part.insert(3, "cells_per_mm2", per_mm2.astype("float64"))
        frames.append(part)
    if not frames:
        return pd.DataFrame()
    key = "patient_id" if by == "patient" else "slide_id"
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values([key, "region"], kind="stable").reset_index(drop=True)


def tissue_regions(folder: str | Path) -> bytes:
    """Give a store the generated :data:`TISSUE` region, the outline of its slide's tissue mask
    (computed as the analysis did, at its ``tissue_mpp``); returns the GeoJSON bytes attached.

    Raises
    ------
    RegionFileError
        When the slide shows no tissue.
    """
    from senpath.io import open_slide
    from senpath.regions import RegionFileError, tissue_feature
    from senpath.tissue import tissue_mask

    res = read_results(folder)
    prov = res.provenance
    slide = open_slide(prov.slide_path, mpp=res.manifest.get("identity", {}).get("mpp"))
    mask = tissue_mask(slide, target_mpp=float(prov.config.get("tissue_mpp", 8.0)))
    feature = tissue_feature(mask.mask, mask_mpp=mask.mpp, slide_mpp=prov.slide_mpp)
    if feature is None:
        raise RegionFileError(f"slide {prov.slide_path}: no tissue found for a Tissue region")
    data = (json.dumps({"type": "FeatureCollection", "features": [feature]}) + "\n").encode()
    regions = parse_regions(data, source="tissue mask", exclusion_classes=())
    attach_regions(folder, regions, data)
    return data


def save_drawn_regions(
    folder: str | Path,
    polygons_um: Sequence[tuple[str, Any]],
    *,
    exclusion_classes: Sequence[str] = EXCLUSION_CLASSES,
) -> dict[str, Any]:
    """Attach regions drawn in slide µm (napari's world coordinates) to a store.

    Parameters
    ----------
    folder : the slide's store.
    polygons_um : ``(name, vertices)`` pairs; ``vertices`` (K, 2) float ``(y, x)`` in µm from
        the slide's origin, K >= 3. They are stored as QuPath GeoJSON in level-0 px.
    exclusion_classes : names whose cells are not counted.

    Returns
    -------
    The regions' record (see :func:`attach_regions`).
    """
    from senpath.regions import regions_feature_collection

    res = read_results(folder)
    mpp_x, mpp_y = res.provenance.slide_mpp
    px = []
    for name, vertices in polygons_um:
        yx = np.asarray(vertices, dtype=np.float64)
        if yx.ndim != 2 or yx.shape[1] != 2:
            raise ValueError(f"region {name!r}: give (K, 2) (y, x) vertices in µm")
        px.append((name, np.column_stack([yx[:, 1] / mpp_x, yx[:, 0] / mpp_y])))
    data = (json.dumps(regions_feature_collection(px)) + "\n").encode("utf-8")
    regions = parse_regions(data, source="napari", exclusion_classes=exclusion_classes)
    return attach_regions(folder, regions, data)


def stored_outlines_um(res: SlideResults) -> list[tuple[str, Any]]:
    """The outer outlines of a store's regions as ``(name, (K, 2) (y, x) µm)`` pairs, one per
    polygon (for drawing them in napari; holes are not drawn)."""
    import shapely

    regions = stored_regions(res)
    if regions is None:
        return []
    mpp_x, mpp_y = res.provenance.slide_mpp
    out = []
    for region in regions.regions:
        for polygon in shapely.get_parts(region.geometry):
            xy = np.asarray(polygon.exterior.coords)[:-1]
            out.append((region.name, np.column_stack([xy[:, 1] * mpp_y, xy[:, 0] * mpp_x])))
    return out
