"""Regions of a slide: QuPath GeoJSON annotations read, checked, and assigned to cells.

A region is an area of the slide with a name: QuPath's annotation class (``Tumor``, ``Stroma``,
``Invasive front``), drawn in QuPath and exported with *File > Export objects as GeoJSON*, or drawn
in napari (see :func:`regions_feature_collection`). What this module reads is QuPath's own export:

- a ``FeatureCollection``, a list of ``Feature`` objects, or one ``Feature``;
- per feature, ``geometry`` a ``Polygon`` or ``MultiPolygon`` in **level-0 pixels of the slide**
  (QuPath's convention: pixel ``(0, 0)`` covers ``[0, 1) x [0, 1)``);
- the region's name is ``properties.classification.name`` (or, for an annotation without a class,
  ``properties.name``); features of another ``objectType`` than ``annotation`` (QuPath's cells,
  detections, tiles) are not regions and are left out.

Several annotations of one class are one region (their union). A class named in the exclusion
classes (default :data:`EXCLUSION_CLASSES`: folds, necrosis, pen marks, QuPath's ``Ignore*``) is an
*exclusion region*: its cells are left out of every count.

Assignment rule (per cell, by its nucleus centroid; a centroid on an outline is inside):

- inside an exclusion region: excluded; ``region`` names the (smallest) exclusion region;
- else ``region`` is the **smallest** (by area) region holding the centroid, so a nested annotation
  (a tumour nest inside the stroma) wins over the one around it;
- else :data:`UNANNOTATED`.

``regions`` lists every region holding the cell (``;``-joined, sorted by name). A slide without
regions has one generated region, :data:`TISSUE` (the tissue the pipeline analysed; see
:func:`tissue_feature` for its outline from the tissue mask).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

#: Annotation classes whose cells are left out of every count (compared without case).
EXCLUSION_CLASSES = ("Exclude", "Ignore*", "Necrosis", "Fold", "Pen", "Artefact", "Artifact")
#: The generated region of a slide given no regions: all the tissue the pipeline analysed.
TISSUE = "Tissue"
#: The region of a cell that no annotation holds (a slide with regions).
UNANNOTATED = "Unannotated"
#: QuPath object types that are not regions (left out when read).
_NOT_REGIONS = ("cell", "detection", "tile", "tma_core", "tmacore")
#: Separator of the ``regions`` list column (a region name may not hold it).
LIST_SEPARATOR = ";"


class RegionFileError(ValueError):
    """A regions GeoJSON that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class Region:
    """One named region of a slide.

    Attributes
    ----------
    name : the annotation class (``Tumor``).
    geometry : shapely Polygon or MultiPolygon in level-0 slide px (the union of the class's
        annotations).
    excluded : whether it is an exclusion region (its cells are not counted).
    n_annotations : how many annotations of the file make it up.
    """

    name: str
    geometry: Any
    excluded: bool
    n_annotations: int

    @property
    def area_px2(self) -> float:
        """Area in level-0 px²."""
        return float(self.geometry.area)

    def area_mm2(self, slide_mpp: tuple[float, float]) -> float:
        """Area in mm² given the level-0 (x, y) µm/px."""
        return self.area_px2 * slide_mpp[0] * slide_mpp[1] / 1e6


@dataclass(frozen=True)
class RegionSet:
    """The regions of one GeoJSON file.

    Attributes
    ----------
    regions : one :class:`Region` per class, sorted by name.
    sha256 : hex sha256 of the file's bytes (the regions' identity).
    source : where they came from (the file's path, or ``napari``).
    exclusion_classes : the classes counted as exclusion regions.
    n_skipped : features left out (QuPath cells, detections, tiles).
    """

    regions: tuple[Region, ...]
    sha256: str
    source: str
    exclusion_classes: tuple[str, ...]
    n_skipped: int = 0

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.regions]

    def record(self, slide_mpp: tuple[float, float]) -> dict[str, Any]:
        """What identifies these regions in a store's manifest and summary (JSON-ready)."""
        return {
            "sha256": self.sha256,
            "source": self.source,
            "exclusion_classes": list(self.exclusion_classes),
            "regions": {
                r.name: {
                    "excluded": r.excluded,
                    "n_annotations": r.n_annotations,
                    "area_mm2": r.area_mm2(slide_mpp),
                }
                for r in self.regions
            },
        }


def _fail(source: str, problem: str) -> RegionFileError:
    return RegionFileError(f"regions file {source}: {problem}")


def _region_name(feature: Mapping[str, Any]) -> str | None:
    props = feature.get("properties") or {}
    if not isinstance(props, Mapping):
        return None
    cls = props.get("classification")
    if isinstance(cls, Mapping) and isinstance(cls.get("name"), str) and cls["name"].strip():
        return str(cls["name"]).strip()
    if isinstance(cls, str) and cls.strip():
        return cls.strip()
    name = props.get("name")
    return name.strip() if isinstance(name, str) and name.strip() else None


def _object_type(feature: Mapping[str, Any]) -> str:
    """QuPath's object type of a feature: ``objectType`` (QuPath 0.4+), ``object_type`` (0.3), or
    the ``id`` QuPath 0.2 wrote (``PathCellObject``, ``PathDetectionObject``); default annotation."""
    props = feature.get("properties") or {}
    if isinstance(props, Mapping):
        for key in ("objectType", "object_type"):
            if isinstance(props.get(key), str):
                return str(props[key]).lower()
    legacy = {
        "PathCellObject": "cell",
        "PathDetectionObject": "detection",
        "PathTileObject": "tile",
    }
    return legacy.get(str(feature.get("id")), "annotation")


def _features(obj: Any, source: str) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, Mapping) and obj.get("type") == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list):
            raise _fail(source, "a FeatureCollection without a 'features' list")
        return feats
    if isinstance(obj, Mapping) and obj.get("type") == "Feature":
        return [obj]
    raise _fail(
        source,
        "not QuPath GeoJSON: expected a FeatureCollection, a list of Features or one Feature "
        "(QuPath: File > Export objects as GeoJSON)",
    )


def parse_regions(
    data: bytes,
    *,
    source: str,
    exclusion_classes: Sequence[str] = EXCLUSION_CLASSES,
) -> RegionSet:
    """Regions from the bytes of a QuPath GeoJSON export.

    Parameters
    ----------
    data : the file's bytes (UTF-8 JSON).
    source : the file's name, for messages and the record.
    exclusion_classes : classes whose cells are left out of every count (compared without case).

    Raises
    ------
    RegionFileError
        One line naming ``source`` and the problem: not JSON, not GeoJSON, an annotation that is
        not an area or has no class, a coordinate that is not a finite number, no region at all.
    """
    import shapely
    from shapely.geometry import shape

    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise _fail(source, "is not UTF-8 text (is it a GeoJSON file?)") from None
    except json.JSONDecodeError as exc:
        raise _fail(
            source, f"is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    excluded_names = {c.lower() for c in exclusion_classes}
    parts: dict[str, list[Any]] = {}
    skipped = 0
    for i, feature in enumerate(_features(obj, source), start=1):
        if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
            raise _fail(source, f"item {i} is not a GeoJSON Feature")
        if _object_type(feature) in _NOT_REGIONS:
            skipped += 1
            continue
        name = _region_name(feature)
        geom = feature.get("geometry")
        gtype = geom.get("type") if isinstance(geom, Mapping) else None
        label = f"feature {i}" + (f" ({name})" if name else "")
        if gtype not in ("Polygon", "MultiPolygon"):
            raise _fail(
                source,
                f"{label} has geometry {gtype or 'none'}, not an area: regions must be Polygon or "
                "MultiPolygon annotations",
            )
        if name is None:
            raise _fail(
                source, f"{label} has no classification: give the annotation a class in QuPath"
            )
        if LIST_SEPARATOR in name:
            raise _fail(source, f"{label}: a region name may not hold {LIST_SEPARATOR!r}")
        try:
            polygon = shape(geom)
            coords = shapely.get_coordinates(polygon)
        except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
            raise _fail(source, f"{label} has unreadable coordinates ({exc})") from None
        if coords.size == 0 or not np.isfinite(coords).all():
            raise _fail(source, f"{label} has empty or non-finite coordinates")
        if not polygon.is_valid:  # a self-touching outline drawn by hand: keep its area
            polygon = shapely.make_valid(polygon)
        polygon = _polygonal(polygon)
        if polygon.is_empty or polygon.area <= 0:
            raise _fail(source, f"{label} encloses no area")
        parts.setdefault(name, []).append(polygon)
    if not parts:
        raise _fail(source, "holds no annotation polygons (nothing to use as regions)")
    regions = tuple(
        Region(
            name=name,
            geometry=shapely.union_all(polys),
            excluded=name.lower() in excluded_names,
            n_annotations=len(polys),
        )
        for name, polys in sorted(parts.items())
    )
    return RegionSet(
        regions=regions,
        sha256=hashlib.sha256(data).hexdigest(),
        source=source,
        exclusion_classes=tuple(exclusion_classes),
        n_skipped=skipped,
    )


def _polygonal(geometry: Any) -> Any:
    """The polygons of a geometry (``make_valid`` may add lines where an outline touched itself)."""
    import shapely
    from shapely.geometry import MultiPolygon

    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    polys = [g for g in shapely.get_parts(geometry) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polys) if polys else MultiPolygon()


def read_regions(
    path: str | Path, *, exclusion_classes: Sequence[str] = EXCLUSION_CLASSES
) -> tuple[RegionSet, bytes]:
    """Regions of a QuPath GeoJSON file, and the file's bytes (see :func:`parse_regions`).

    Raises
    ------
    RegionFileError
        One line naming the file: missing, unreadable or not usable as regions.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(str(path), f"cannot be read ({exc.strerror or exc})") from None
    return parse_regions(data, source=str(path), exclusion_classes=exclusion_classes), data


def check_extent(regions: RegionSet, slide_shape_yx: tuple[int, int]) -> None:
    """Raise when no region overlaps the slide (coordinates not in this slide's level-0 pixels).

    Raises
    ------
    RegionFileError
        Naming the file, the regions' bounds and the slide's size.
    """
    from shapely.geometry import box

    height, width = slide_shape_yx
    slide = box(0, 0, width, height)
    if not any(r.geometry.intersects(slide) for r in regions.regions):
        import shapely

        x0, y0, x1, y1 = shapely.union_all([r.geometry for r in regions.regions]).bounds
        raise _fail(
            regions.source,
            f"no region lies on the slide (regions span x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} px; "
            f"the slide is {width} x {height} px at level 0): export the annotations from this "
            "slide, in level-0 pixels",
        )


def assign_regions(
    x_px: NDArray[np.floating[Any]], y_px: NDArray[np.floating[Any]], regions: RegionSet
) -> pd.DataFrame:
    """The region of each cell, by its centroid (the rule in the module docstring).

    Parameters
    ----------
    x_px, y_px : (N,) float, cell centroids in level-0 slide px.
    regions : the slide's regions.

    Returns
    -------
    DataFrame of N rows: ``region`` (categorical text), ``regions`` (every region holding the
    cell, ``;``-joined, sorted by name; empty when none; categorical), ``region_excluded`` (bool).
    """
    import shapely

    x = np.asarray(x_px, dtype=np.float64)
    y = np.asarray(y_px, dtype=np.float64)
    n = len(x)
    by_name = sorted(regions.regions, key=lambda r: r.name)
    # which regions hold each cell, as one integer per cell (bit k: the k-th region by name);
    # the few distinct sets are then named once, not once per cell
    membership = np.zeros(n, dtype=object if len(by_name) > 62 else np.int64)
    for k, r in enumerate(by_name):
        shapely.prepare(r.geometry)
        hit = np.asarray(shapely.intersects_xy(r.geometry, x, y), dtype=bool)
        membership[hit] += 1 << k
    if len(by_name) <= 20:  # a look-up table of every possible set: no sort of N codes
        present = np.bincount(membership.astype(np.int64), minlength=1)
        sets = np.flatnonzero(present)
        lut = np.zeros(len(present), dtype=np.int64)
        lut[sets] = np.arange(len(sets))
        which = lut[membership.astype(np.int64)]
    else:
        sets, which = np.unique(membership, return_inverse=True)
        which = np.asarray(which).reshape(-1)
    # the first region of this order to hold a cell names it: exclusion first, then smallest
    order = sorted(
        range(len(by_name)),
        key=lambda k: (not by_name[k].excluded, by_name[k].area_px2, by_name[k].name),
    )
    names, lists, excluded = [], [], []
    for code in sets.tolist():
        held = [k for k in range(len(by_name)) if (int(code) >> k) & 1]
        first = next((k for k in order if k in held), None)
        names.append(UNANNOTATED if first is None else by_name[first].name)
        lists.append(LIST_SEPARATOR.join(by_name[k].name for k in held))
        excluded.append(any(by_name[k].excluded for k in held))
    return pd.DataFrame(
        {
            "region": _categorical(names, which),
            "regions": _categorical(lists, which),
            "region_excluded": np.asarray(excluded, dtype=bool)[which],
        }
    )


def _categorical(per_set: list[str], which: NDArray[np.int64]) -> pd.Categorical:
    """Per cell the text of its set (``per_set[which]``), as categories (one string per set)."""
    categories = sorted(set(per_set))
    codes = np.asarray([categories.index(t) for t in per_set], dtype=np.int64)
    return pd.Categorical.from_codes(codes[which], categories=categories)


def tissue_feature(
    mask: NDArray[np.bool_], *, mask_mpp: float, slide_mpp: tuple[float, float]
) -> dict[str, Any] | None:
    """The generated :data:`TISSUE` region as a QuPath annotation Feature, from a tissue mask.

    Parameters
    ----------
    mask : (Y, X) bool, the low-resolution tissue mask (:func:`senpath.tissue.tissue_mask`).
    mask_mpp : µm/px of ``mask``.
    slide_mpp : level-0 (x, y) µm/px: output coordinates are level-0 px.

    Returns
    -------
    The Feature (``MultiPolygon``, holes kept), or ``None`` for an empty mask.
    """
    import shapely
    from shapely.geometry import box, mapping

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    # one box per run of tissue pixels in a row, merged: exact pixel-edge outlines with holes
    boxes: list[Any] = []
    for row in np.flatnonzero(mask.any(axis=1)):
        line = np.concatenate([[False], mask[row], [False]]).astype(np.int8)
        starts = np.flatnonzero(np.diff(line) == 1)
        ends = np.flatnonzero(np.diff(line) == -1)
        boxes.extend(box(s, row, e, row + 1) for s, e in zip(starts, ends, strict=True))
    outline = shapely.union_all(boxes)
    sx, sy = mask_mpp / slide_mpp[0], mask_mpp / slide_mpp[1]
    outline = shapely.transform(outline, lambda xy: xy * np.array([sx, sy]))
    return _annotation(TISSUE, mapping(outline))


def _annotation(name: str, geometry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": json.loads(json.dumps(geometry)),  # tuples -> lists
        "properties": {"objectType": "annotation", "classification": {"name": name}},
    }


def regions_feature_collection(
    polygons: Iterable[tuple[str, NDArray[np.floating[Any]]]],
) -> dict[str, Any]:
    """A QuPath GeoJSON FeatureCollection of named polygons (drawn in napari, made by a script).

    Parameters
    ----------
    polygons : ``(name, vertices)`` pairs; ``vertices`` (K, 2) float (x, y) in level-0 slide px,
        K >= 3 (the ring is closed here).

    Raises
    ------
    ValueError
        For a polygon with fewer than 3 vertices, or an empty name.
    """
    features = []
    for name, vertices in polygons:
        xy = np.asarray(vertices, dtype=np.float64)
        if not str(name).strip():
            raise ValueError("a region needs a name (its class)")
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 3 or not np.isfinite(xy).all():
            raise ValueError(f"region {name!r}: a polygon needs at least 3 finite (x, y) vertices")
        ring = np.vstack([xy, xy[:1]]) if not np.array_equal(xy[0], xy[-1]) else xy
        geometry = {"type": "Polygon", "coordinates": [np.round(ring, 3).tolist()]}
        features.append(_annotation(str(name).strip(), geometry))
    return {"type": "FeatureCollection", "features": features}
