"""Cells edited in QuPath, read back into a slide's store as corrections (source ``"qupath"``).

The round trip: ``senpath export RESULTS --format geojson`` writes the slide's cells as QuPath cell
objects (:mod:`senpath.geojson`); a pathologist opens them in QuPath, re-classifies, deletes and
draws cells, and exports them again (*File > Export objects as GeoJSON*); then
``senpath review import-qupath RESULTS SLIDE file.geojson`` turns what changed into corrections, the
same log entries a review in napari makes (undoable, ``"source": "qupath"`` in each):

=============================================  ==============================================
in QuPath                                      in the store
=============================================  ==============================================
classification changed (``ki67: Positive``,    the marker's call set by hand (``set_call``);
``Negative``, ``1+``/``2+``/``3+``)            a bare ``Positive`` is the export's marker
classified ``Ignore*``                         excluded (``classified Ignore* in QuPath``)
an ``Ignore*`` cell given a class again        included again (and its call set, if it changed)
cell deleted                                   excluded (``deleted in QuPath``)
cell or detection drawn                        a nucleus added (``edit_nuclei``) where its
                                               outline covers no other nucleus; otherwise noted
=============================================  ==============================================

A feature is matched to a cell by the UUID the export gave it (QuPath keeps object ids since 0.4),
then by its ``cell_id`` measurement with its centroid within the tolerance of that cell, then by the
nearest cell centroid within the tolerance (:data:`DEFAULT_TOLERANCE_UM`, µm, nucleus centroids).
Nuclei a review added after the file was exported are not in it: while the file holds none of
the review's added cells they are kept (noted), not taken for deleted (so the only added cell
deleted in QuPath is kept too: exclude it in napari). The import ends with a ``note`` entry naming the file (its sha256) and what was done and left
aside. Annotations (``objectType`` ``annotation``) are not cells: they are counted and left alone
(regions have their own import). Importing the same file again changes nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.corrections import CorrectionError, CorrectionSession, active_entries
from senpath.geojson import IGNORE_CLASS, _classification, cell_uuid
from senpath.score import manual_bin

#: Largest distance (µm) between a feature's nucleus centroid and a cell's for a centroid match:
#: under a nucleus radius (3-5 µm), so a cell redrawn a little still matches, a neighbour never.
DEFAULT_TOLERANCE_UM = 3.0
#: A drawn nucleus smaller than this (µm², on free label pixels) is not added, only noted.
MIN_NUCLEUS_UM2 = 4.0
#: Below this share of the store's cells found in the file, deleted cells are not inferred (the
#: file is probably another slide's, or a part of the slide).
MIN_MATCHED_SHARE = 0.5
_CELL_TYPES = ("cell", "detection", "PathCellObject", "PathDetectionObject")
_BINS = {"1+": 1, "2+": 2, "3+": 3}


class QuPathImportError(CorrectionError):
    """A GeoJSON file that cannot be imported; the message names the file and the problem."""


@dataclass(frozen=True)
class QuPathObject:
    """One cell or detection of a QuPath GeoJSON file.

    ``nucleus`` is the GeoJSON geometry of the nucleus (a cell's ``nucleusGeometry``, else the
    object's ``geometry``); ``centroid_px`` its (x, y) centroid in level-0 slide px.
    """

    index: int
    uuid: str | None
    cell_id: int | None
    object_type: str
    class_name: str | None
    nucleus: Mapping[str, Any]
    centroid_px: tuple[float, float] | None


@dataclass
class QuPathImport:
    """What an import did (cell ids per kind of change) and what it left aside (``notes``)."""

    file: Path
    n_objects: int = 0
    n_annotations: int = 0
    matched: dict[str, int] = field(default_factory=lambda: {"id": 0, "cell_id": 0, "centroid": 0})
    calls: dict[int, str] = field(default_factory=dict)
    excluded_deleted: list[int] = field(default_factory=list)
    excluded_ignored: list[int] = field(default_factory=list)
    included: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    entry_ids: list[str] = field(default_factory=list)

    @property
    def n_changes(self) -> int:
        n = len(self.calls) + len(self.excluded_deleted) + len(self.excluded_ignored)
        return n + len(self.included) + len(self.added)

    def describe(self) -> str:
        """One line: ``12 call(s) changed, 3 cell(s) deleted -> excluded, ...``."""
        m = self.matched
        parts = [
            f"{self.n_objects} cell object(s) read ({m['id']} matched by id, {m['cell_id']} by "
            f"cell_id, {m['centroid']} by centroid)",
            f"{len(self.calls)} call(s) changed",
            f"{len(self.excluded_deleted)} deleted -> excluded",
            f"{len(self.excluded_ignored)} Ignore* -> excluded",
            f"{len(self.included)} included again",
            f"{len(self.added)} nucleus(es) added",
        ]
        if self.notes:
            parts.append(f"{len(self.notes)} left aside (see the log's note)")
        if self.n_annotations:
            parts.append(f"{self.n_annotations} annotation(s) ignored")
        return "; ".join(parts)


# ------------------------------------------------------------------------------------ reading


def _rings(geometry: Mapping[str, Any]) -> list[NDArray[np.float64]]:
    """The outer rings of a Polygon / MultiPolygon as (N, 2) x, y arrays (holes left out)."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
    rings = []
    for poly in polys or []:
        ring = np.asarray(poly[0], dtype=np.float64) if poly else np.zeros((0, 2))
        if ring.ndim == 2 and ring.shape[0] >= 3 and ring.shape[1] >= 2:
            rings.append(ring[:, :2])
    return rings


def _centroid(geometry: Mapping[str, Any]) -> tuple[float, float] | None:
    """Area-weighted centroid (x, y) of a polygon geometry; a Point's position; else ``None``."""
    if geometry.get("type") == "Point":
        x, y = geometry["coordinates"][:2]
        return float(x), float(y)
    total, cx, cy = 0.0, 0.0, 0.0
    for ring in _rings(geometry):
        x, y = ring[:, 0], ring[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        area = cross.sum() / 2
        if area == 0:
            continue
        total += area
        cx += ((x + xn) * cross).sum() / 6
        cy += ((y + yn) * cross).sum() / 6
    if total == 0:
        return None
    return cx / total, cy / total


def _class_name(properties: Mapping[str, Any]) -> str | None:
    """A QuPath classification as one name (a derived class ``["ki67", "Positive"]`` as
    ``ki67: Positive``, QuPath's own way of writing it)."""
    klass = properties.get("classification")
    if isinstance(klass, str):
        return klass or None
    if not isinstance(klass, Mapping):
        return None
    if isinstance(klass.get("names"), list) and klass["names"]:
        return ": ".join(str(n) for n in klass["names"])
    name = klass.get("name")
    return str(name) if name else None


def _measurement(properties: Mapping[str, Any], name: str) -> float | None:
    """A measurement by name, from QuPath's dict (0.4+) or list-of-``{name, value}`` form."""
    found = properties.get("measurements")
    if isinstance(found, Mapping):
        value = found.get(name)
    elif isinstance(found, list):
        value = next(
            (m.get("value") for m in found if isinstance(m, Mapping) and m.get("name") == name),
            None,
        )
    else:
        value = None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _iter_features(path: Path) -> Iterator[Any]:
    """The items of a GeoJSON file's features, one at a time (see :func:`read_qupath_cells`)."""
    import ijson

    not_features = QuPathImportError(
        f"{path}: not GeoJSON features (expected a FeatureCollection, as QuPath's "
        "'Export objects as GeoJSON' writes)"
    )
    bom = b"\xef\xbb\xbf"  # some editors write one; the JSON parser does not take it
    try:
        with open(path, "rb") as fh:
            skip = len(bom) if fh.read(len(bom)) == bom else 0
            fh.seek(skip)
            start = fh.read(1 << 16).lstrip(b" \t\r\n")[:1]
            fh.seek(skip)
            if start == b"[":
                yield from ijson.items(fh, "item", use_float=True)
                return
            found = False
            for feature in ijson.items(fh, "features.item", use_float=True):
                found = True
                yield feature
            if found:
                return
            fh.seek(skip)  # no features array: one Feature, an empty collection, or something else
            whole = next(ijson.items(fh, "", use_float=True), None)
    except OSError as exc:
        raise QuPathImportError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ijson.JSONError as exc:
        # the parser's message spans lines (it draws the place): its first line, on one line
        why = " ".join((str(exc).splitlines() or [type(exc).__name__])[0].split())
        raise QuPathImportError(f"{path}: not valid JSON ({why}); export GeoJSON again") from None
    if isinstance(whole, Mapping) and whole.get("type") == "Feature":
        yield whole
    elif not (isinstance(whole, Mapping) and isinstance(whole.get("features"), list)):
        raise not_features


def read_qupath_cells(path: str | Path) -> tuple[list[QuPathObject], int]:
    """The cells and detections of a QuPath GeoJSON file, and how many annotations it holds.

    Accepts a ``FeatureCollection``, a list of Features or one Feature (QuPath writes any of them).
    The file is streamed (:mod:`ijson`): memory holds the cells' nucleus outlines, not the whole
    JSON tree (a whole slide's export with measurements is gigabytes).

    Raises
    ------
    QuPathImportError
        One line naming the file: unreadable, not JSON, not GeoJSON features, or a cell without a
        usable geometry.
    """
    path = Path(path)
    features = _iter_features(path)
    objects, n_annotations = [], 0
    for k, feature in enumerate(features):
        if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
            raise QuPathImportError(f"{path}: item {k} of its features is not a GeoJSON Feature")
        properties = feature.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise QuPathImportError(f"{path}: feature {k}: properties is not an object")
        kind = str(properties.get("objectType") or properties.get("object_type") or "annotation")
        if kind not in _CELL_TYPES:
            n_annotations += 1
            continue
        nucleus = feature.get("nucleusGeometry") or properties.get("nucleusGeometry")
        nucleus = nucleus or feature.get("geometry")
        if not isinstance(nucleus, Mapping) or "coordinates" not in nucleus:
            raise QuPathImportError(f"{path}: feature {k} ({kind}) has no geometry")
        cell_id = _measurement(properties, "cell_id")
        uid = feature.get("id")
        objects.append(
            QuPathObject(
                index=k,
                uuid=str(uid) if uid is not None else None,
                cell_id=int(cell_id) if cell_id is not None and math.isfinite(cell_id) else None,
                object_type=kind,
                class_name=_class_name(properties),
                nucleus=nucleus,
                centroid_px=_centroid(nucleus),
            )
        )
    return objects, n_annotations


# ------------------------------------------------------------------------------------ matching


def match_cells(
    objects: Iterable[QuPathObject],
    cells: pd.DataFrame,
    *,
    slide_id: str,
    slide_mpp: tuple[float, float],
    tolerance_um: float = DEFAULT_TOLERANCE_UM,
) -> tuple[dict[int, QuPathObject], dict[str, int], list[QuPathObject]]:
    """Match QuPath objects to the cells of a table.

    Parameters
    ----------
    objects : from :func:`read_qupath_cells`.
    cells : the corrected per-cell table (``cell_id``, ``x_um``, ``y_um``).
    slide_id : the slide's id (the export's UUIDs are made from it).
    slide_mpp : level-0 (x, y) µm/px: QuPath coordinates are level-0 px.
    tolerance_um : largest centroid distance of a match by position (µm).

    Returns
    -------
    ``{cell_id: object}``, the number matched ``{"id", "cell_id", "centroid"}``, and the objects
    matched to no cell (drawn in QuPath). Each cell is matched at most once: by id first (over the
    whole file), then by ``cell_id`` measurement within the tolerance, then by nearest centroid.
    """
    objects = list(objects)
    ids = cells["cell_id"].to_numpy(dtype=np.int64)
    xy = np.stack([cells["x_um"].to_numpy(float), cells["y_um"].to_numpy(float)], axis=1)
    row_of = {int(c): i for i, c in enumerate(ids)}
    by_uuid = {cell_uuid(slide_id, int(c)): int(c) for c in ids}
    matched: dict[int, QuPathObject] = {}
    counts = {"id": 0, "cell_id": 0, "centroid": 0}
    rest = []
    for obj in objects:
        cid = by_uuid.get(obj.uuid or "")
        if cid is not None and cid not in matched:
            matched[cid] = obj
            counts["id"] += 1
        else:
            rest.append(obj)

    def position_um(obj: QuPathObject) -> NDArray[np.float64] | None:
        if obj.centroid_px is None:
            return None
        return np.array([obj.centroid_px[0] * slide_mpp[0], obj.centroid_px[1] * slide_mpp[1]])

    unmatched = []
    for obj in rest:
        at = position_um(obj)
        cid = obj.cell_id
        if (
            cid is not None
            and cid in row_of
            and cid not in matched
            and at is not None
            and float(np.hypot(*(xy[row_of[cid]] - at))) <= tolerance_um
        ):
            matched[cid] = obj
            counts["cell_id"] += 1
        else:
            unmatched.append(obj)
    tree = None
    if unmatched and len(xy):  # a file QuPath wrote back whole matches by id: no tree needed
        from scipy.spatial import cKDTree

        tree = cKDTree(xy)
    drawn = []
    for obj in unmatched:
        at = position_um(obj)
        if tree is None or at is None:
            drawn.append(obj)
            continue
        # the nearest free cell within the tolerance (a few candidates: the nearest may be taken)
        k = min(8, len(xy))
        dist, idx = tree.query(at, k=k, distance_upper_bound=tolerance_um)
        for d, i in zip(np.atleast_1d(dist), np.atleast_1d(idx), strict=True):
            if math.isfinite(float(d)) and int(ids[i]) not in matched:
                matched[int(ids[i])] = obj
                counts["centroid"] += 1
                break
        else:
            drawn.append(obj)
    return matched, counts, drawn


# ------------------------------------------------------------------------------ classifications


def _parse_call(
    name: str, markers: list[str], default_marker: str | None
) -> tuple[str, bool, int | None] | None:
    """``(marker, positive, bin or None)`` a class name says, or ``None`` when it names no call."""
    marker, _, value = name.rpartition(": ")
    marker = marker.strip() or (default_marker or "")
    value = value.strip()
    if marker not in markers:
        return None
    if value == "Positive":
        return marker, True, None
    if value == "Negative":
        return marker, False, 0
    if value in _BINS:
        return marker, True, _BINS[value]
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ the import


def import_qupath_cells(
    session: CorrectionSession,
    path: str | Path,
    *,
    tolerance_um: float = DEFAULT_TOLERANCE_UM,
    deletions: bool = True,
    add_nuclei: bool = True,
) -> QuPathImport:
    """Apply the changes a QuPath-edited GeoJSON file makes to a slide's cells, as corrections.

    Parameters
    ----------
    session : the slide's review session (writable); call its ``save()`` afterwards.
    path : the GeoJSON file QuPath exported (cells exported by ``senpath export --format geojson``
        and edited).
    tolerance_um : largest nucleus-centroid distance (µm) for matching a feature by position.
    deletions : exclude the cells the file no longer holds (``deleted in QuPath``).
    add_nuclei : add the cells and detections drawn in QuPath as nuclei (re-measured on the slide);
        without it, or when an outline covers only other nuclei, they are noted in the log.

    Returns
    -------
    What was changed and left aside; every change is a log entry with ``"source": "qupath"``,
    followed by one ``note`` entry naming the file.

    Raises
    ------
    QuPathImportError
        A file that is not QuPath GeoJSON, or one that holds under half of the slide's cells while
        ``deletions`` is on (probably another slide's file).
    CorrectionError
        When the session is read-only (another writer holds the store).
    """
    path = Path(path)
    session._check_writable()
    objects, n_annotations = read_qupath_cells(path)
    report = QuPathImport(file=path, n_objects=len(objects), n_annotations=n_annotations)
    cells = session.cells
    prov = session.raw.provenance
    matched, report.matched, drawn = match_cells(
        objects,
        cells,
        slide_id=session.slide_id,
        slide_mpp=prov.slide_mpp,
        tolerance_um=tolerance_um,
    )
    n_cells = len(cells)
    if deletions and n_cells and len(matched) < MIN_MATCHED_SHARE * n_cells:
        raise QuPathImportError(
            f"{path}: only {len(matched)} of the {n_cells} cells of {session.slide_id} are in "
            f"this file: is it this slide's export? (to take only its classifications, import "
            "with --keep-deleted)"
        )
    classes, default_marker = _classification(cells, prov)
    current = {
        int(c): (k or {}).get("name") for c, k in zip(cells["cell_id"], classes, strict=True)
    }
    excluded = dict(zip(cells["cell_id"].astype(int), cells["excluded"].astype(bool), strict=True))
    phenotypes = {p.lower() for p in session.assay.phenotypes}
    calls: dict[tuple[str, bool, int], list[int]] = {}
    ignore, include = [], []
    for cid in sorted(matched):
        obj = matched[cid]
        new, before = obj.class_name, current[cid]
        if new == before:
            continue
        if new == IGNORE_CLASS:
            if not excluded[cid]:
                ignore.append(cid)
            continue
        if excluded[cid]:
            include.append(cid)
        if new is None or new.lower() in phenotypes:
            if new is not None:
                report.notes.append(
                    f"cell {cid}: class {new!r} is a phenotype (it follows the markers' calls): "
                    "set the markers' classes instead"
                )
            continue
        change = _call_change(session, cid, new, default_marker, report)
        if change is not None:
            calls.setdefault(change, []).append(cid)
            report.calls[cid] = new
    deleted = []
    if deletions:
        deleted = [int(c) for c in cells["cell_id"] if int(c) not in matched and not excluded[c]]
        # nuclei a review added after the file was exported are missing from it, not deleted:
        # only when the file holds none of the review's added cells (exported before them)
        added_in_review = {
            int(c)
            for e in active_entries(session.entries)
            if e["action"] == "edit_nuclei"
            for c in e["added"]
        }
        if added_in_review and not added_in_review & set(matched):
            later = sorted(set(deleted) & added_in_review)
            deleted = [c for c in deleted if c not in added_in_review]
            if later:
                report.notes.append(
                    f"cells {later} were added in the review after this file was exported: kept"
                )
    with session.edits_from("qupath"):
        if include:
            e = session.include(include, note="given a class again in QuPath")
            report.included = include
            report.entry_ids.append(e["id"])
        for (marker, positive, bin_), ids in sorted(calls.items()):
            e = session.set_call(ids, marker, positive=positive, bin=bin_, note="class in QuPath")
            report.entry_ids.append(e["id"])
        if ignore:
            e = session.exclude(ignore, note="classified Ignore* in QuPath")
            report.excluded_ignored = ignore
            report.entry_ids.append(e["id"])
        if deleted:
            e = session.exclude(deleted, note="deleted in QuPath")
            report.excluded_deleted = deleted
            report.entry_ids.append(e["id"])
        for obj in drawn:
            added = _add_nucleus(session, obj, report) if add_nuclei else None
            if added is not None:
                report.added.append(added)
                # a cell drawn with a class: its call is the pathologist's, as for the others
                change = _call_change(session, added, obj.class_name, default_marker, report)
                if change is not None:
                    marker, positive, bin_ = change
                    e = session.set_call([added], marker, positive=positive, bin=bin_,
                                         note="class in QuPath")  # fmt: skip
                    report.calls[added] = str(obj.class_name)
                    report.entry_ids.append(e["id"])
            elif not add_nuclei:
                report.notes.append(f"feature {obj.index} ({obj.object_type}) drawn: not added")
        note = session.record_note(
            f"QuPath import of {path.name}: {report.describe()}",
            file=str(path.resolve()),
            sha256=_sha256(path),
            left_aside=report.notes,
        )
        report.entry_ids.append(note["id"])
    return report


def _call_change(
    session: CorrectionSession,
    cid: int,
    name: str | None,
    default_marker: str | None,
    report: QuPathImport,
) -> tuple[str, bool, int] | None:
    """``(marker, positive, bin)`` when the class ``name`` sets a call the cell does not have
    (``None``: no change, or no call named, noted)."""
    if not name:
        return None
    call = _parse_call(name, session.markers, default_marker)
    if call is None:
        report.notes.append(f"cell {cid}: class {name!r} names no call of {session.markers}: left")
        return None
    marker, positive, bin_ = call
    row = session.cell(cid)
    if bool(row[f"{marker}_positive"]) == positive and (
        bin_ is None or int(row[f"{marker}_bin"]) == bin_
    ):
        return None
    if bin_ is None:
        bin_ = manual_bin(session.assay.marker(marker), float(row[f"{marker}_od"]), positive)
    return marker, positive, int(bin_)


def _add_nucleus(session: CorrectionSession, obj: QuPathObject, report: QuPathImport) -> int | None:
    """Paint a drawn object's outline as a new nucleus on free label pixels; ``None`` (noted) when
    its geometry is not an outline, it covers too little free space, or the slide is missing."""
    from skimage.draw import polygon as fill_polygon

    what = f"feature {obj.index} ({obj.object_type}"
    what += f", class {obj.class_name})" if obj.class_name else ")"
    rings = _rings(obj.nucleus)
    if not rings:
        report.notes.append(
            f"{what}: drawn as {obj.nucleus.get('type')}, not an outline: not added"
        )
        return None
    sx, sy = session.raw.provenance.slide_mpp
    amp = session.label_mpp
    # level-0 px (pixel edges) -> label px; skimage fills the pixels whose centres are inside
    label_rings = [np.stack([r[:, 0] * sx / amp, r[:, 1] * sy / amp], axis=1) for r in rings]
    pts = np.concatenate(label_rings)
    h, w = session.label_shape
    y0, x0 = (
        max(0, int(math.floor(pts[:, 1].min())) - 1),
        max(0, int(math.floor(pts[:, 0].min())) - 1),
    )
    y1, x1 = (
        min(h, int(math.ceil(pts[:, 1].max())) + 1),
        min(w, int(math.ceil(pts[:, 0].max())) + 1),
    )
    if y1 <= y0 or x1 <= x0:
        report.notes.append(f"{what}: outside the slide: not added")
        return None
    region = session.read_labels(y0, x0, y1, x1)
    inside = np.zeros(region.shape, dtype=bool)
    for ring in label_rings:
        rr, cc = fill_polygon(ring[:, 1] - y0 - 0.5, ring[:, 0] - x0 - 0.5, shape=region.shape)
        inside[rr, cc] = True
    free = inside & (region == 0)
    if free.sum() * amp * amp < MIN_NUCLEUS_UM2:
        report.notes.append(
            f"{what}: its outline covers {free.sum() * amp * amp:.1f} µm² not already in a "
            f"nucleus (under {MIN_NUCLEUS_UM2:g}): not added"
        )
        return None
    new_id = session.next_cell_id()
    edited = region.copy()
    edited[free] = new_id
    try:
        entry = session.edit_nuclei(edited, origin=(y0, x0), note="drawn in QuPath")
    except CorrectionError as exc:
        report.notes.append(f"{what}: not added ({exc})")
        return None
    if entry is None or new_id not in entry["added"]:
        report.notes.append(f"{what}: not added (no new nucleus in the label image)")
        return None
    report.entry_ids.append(entry["id"])
    return new_id
