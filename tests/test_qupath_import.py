"""QuPath round trip: export the cells, edit the file as QuPath would, import the edits back.

A small synthetic Ki67 slide is analysed once per module (classical segmenter); each test works on
its own copy of the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from senpath.cli import app
from senpath.corrections import CorrectionSession, load_results, read_log
from senpath.geojson import cell_uuid, write_slide_geojson
from senpath.labels import load_labels
from senpath.qupath_import import (
    QuPathImportError,
    import_qupath_cells,
    match_cells,
    read_qupath_cells,
)
from senpath.testing import analysed_synthetic_slide, copy_store


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qupath")
    return analysed_synthetic_slide(root, name="q1", shape=(512, 512), seed=5)


@pytest.fixture
def store(analysed: tuple[Path, Path], tmp_path: Path) -> Path:
    return copy_store(analysed[1], tmp_path)


def as_qupath_writes(feature: dict) -> dict:
    """A feature as QuPath 0.4+ exports it again: id, geometry, nucleusGeometry, and only the
    properties it knows (objectType, classification, measurements); senpath's flags are dropped."""
    props = feature["properties"]
    out = {
        "type": "Feature",
        "id": feature["id"],
        "geometry": feature["geometry"],
        "nucleusGeometry": feature["nucleusGeometry"],
        "properties": {"objectType": props["objectType"], "measurements": props["measurements"]},
    }
    if "classification" in props:
        out["properties"]["classification"] = props["classification"]
    return out


def _square(x0: float, y0: float, side: float) -> dict:
    ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def _empty_spot(store: Path, side_px: int) -> tuple[int, int]:
    """(y, x) label px of the free square farthest from any nucleus (for a drawn cell)."""
    labels = np.asarray(load_labels(store))
    far = ndimage.distance_transform_edt(labels == 0)
    m = side_px
    far[:m, :] = far[-m:, :] = 0
    far[:, :m] = far[:, -m:] = 0
    y, x = np.unravel_index(np.argmax(far), far.shape)
    assert far[y, x] > side_px + 6, "no free space for a drawn nucleus"
    return int(y), int(x)


def _features(path: Path) -> dict[str, dict]:
    return {f["id"]: f for f in json.loads(path.read_text())["features"]}


def test_round_trip_changes_exactly_what_was_edited_in_qupath(store: Path, tmp_path: Path) -> None:
    res = load_results(store)
    exported = write_slide_geojson(res, tmp_path / "q1.geojson")
    features = json.loads(exported.read_text())["features"]
    cells = res.cells.set_index("cell_id")
    negative = [int(c) for c in cells.index if not cells.loc[c, "ki67_positive"]]
    positive = [int(c) for c in cells.index if cells.loc[c, "ki67_positive"]]
    flip_up, flip_down, deleted, ignored = negative[0], positive[0], negative[1], negative[2]
    mpp = res.provenance.slide_mpp[0]  # level-0 px of the export (0.5 µm/px here)

    edited = []
    for f in features:
        cid = int(f["properties"]["measurements"]["cell_id"])
        g = as_qupath_writes(f)
        if cid == deleted:
            continue  # deleted in QuPath
        if cid == flip_up:
            g["properties"]["classification"] = {"name": "ki67: Positive", "color": [200, 50, 50]}
        if cid == flip_down:
            g["properties"]["classification"] = {"name": "ki67: Negative", "color": [112, 112, 225]}
        if cid == ignored:
            g["properties"]["classification"] = {"name": "Ignore*", "color": [180, 180, 180]}
        edited.append(g)
    # a cell drawn in QuPath (its own new UUID, no measurements), a point detection, an annotation
    side = 8.0 / mpp  # an 8 µm square nucleus
    y, x = _empty_spot(store, int(side))
    drawn = _square(x - side / 2, y - side / 2, side)
    edited.append({"type": "Feature", "id": "0b6f3c1e-2f55-4e8a-9c1e-5a3b1f0c9d21",
                   "geometry": drawn, "nucleusGeometry": drawn,
                   "properties": {"objectType": "cell",
                                  "classification": {"name": "ki67: Positive"}}})  # fmt: skip
    edited.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [5.0, 5.0]},
                   "properties": {"objectType": "detection"}})  # fmt: skip
    edited.append({"type": "Feature", "geometry": _square(0, 0, 100),
                   "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}})  # fmt: skip
    qupath_file = tmp_path / "q1.qupath.geojson"
    qupath_file.write_text(json.dumps({"type": "FeatureCollection", "features": edited}))

    assert read_log(store) == []
    with CorrectionSession(store, user="anna") as s:
        done = import_qupath_cells(s, qupath_file)
        s.save()
    assert done.matched == {"id": len(features) - 1, "cell_id": 0, "centroid": 0}
    new_id = done.added[0]
    assert done.calls == {
        flip_up: "ki67: Positive", flip_down: "ki67: Negative", new_id: "ki67: Positive",
    }  # fmt: skip
    assert done.excluded_deleted == [deleted] and done.excluded_ignored == [ignored]
    assert done.included == [] and len(done.added) == 1 and done.n_annotations == 1
    assert len(done.notes) == 1 and "Point, not an outline" in done.notes[0]

    head, *log = read_log(store)
    assert head["action"] == "start"
    assert all(e["source"] == "qupath" and e["user"] == "anna" for e in log)
    kinds = [(e["action"], e.get("note")) for e in log]
    assert kinds == [
        ("set_call", "class in QuPath"),
        ("set_call", "class in QuPath"),
        ("exclude", "classified Ignore* in QuPath"),
        ("exclude", "deleted in QuPath"),
        ("edit_nuclei", "drawn in QuPath"),
        ("set_call", "class in QuPath"),  # the drawn cell's class
        ("note", None),
    ]
    calls = {tuple(e["cell_ids"]): e["new"]["positive"] for e in log if e["action"] == "set_call"}
    assert calls == {(flip_up,): True, (flip_down,): False, (new_id,): True}
    nucleus = log[4]
    assert nucleus["added"] == done.added and nucleus["removed"] == [] and nucleus["modified"] == []
    assert log[6]["file"] == str(qupath_file.resolve()) and len(log[6]["sha256"]) == 64
    assert "Point" in log[6]["left_aside"][0]

    # the corrected export shows exactly those changes
    after = load_results(store)
    row = after.cells.set_index("cell_id").loc[new_id]
    assert row["ki67_positive"] and row["ki67_manual"]
    assert row["nucleus_area_um2"] == pytest.approx(64.0, rel=0.15)
    assert row["x_um"] == pytest.approx(x * mpp, abs=1.0) and row["y_um"] == pytest.approx(
        y * mpp, abs=1.0
    )
    again = _features(write_slide_geojson(after, tmp_path / "after.geojson"))
    before = _features(exported)
    assert set(again) == set(before) | {cell_uuid(res.slide_id, new_id)}
    changed = {
        int(f["properties"]["measurements"]["cell_id"])
        for k, f in again.items()
        if k not in before
        or f["properties"].get("classification") != before[k]["properties"].get("classification")
    }
    assert changed == {flip_up, flip_down, deleted, ignored, new_id}
    assert again[cell_uuid(res.slide_id, deleted)]["properties"]["excluded"] is True
    assert (
        again[cell_uuid(res.slide_id, ignored)]["properties"]["classification"]["name"] == "Ignore*"
    )
    assert again[cell_uuid(res.slide_id, flip_up)]["properties"]["manual"] is True

    # importing the same file again changes nothing; each change is undone like any edit
    with CorrectionSession(store, user="anna") as s:
        assert import_qupath_cells(s, qupath_file).n_changes == 0
        deletion = next(e for e in s.entries if e.get("note") == "deleted in QuPath")
        s.undo(deletion["id"])
        assert not s.cell(deleted)["excluded"]


def test_cells_without_ids_are_matched_by_centroid_within_the_tolerance() -> None:
    cells = pd.DataFrame({"cell_id": [1, 2, 3], "x_um": [10.0, 20.0, 30.0], "y_um": [10.0] * 3})

    def obj(index: int, x_um: float, cell_id: int | None = None):
        from senpath.qupath_import import QuPathObject

        return QuPathObject(index, None, cell_id, "cell", None, {}, (x_um / 0.5, 20.0))

    objects = [obj(0, 11.0), obj(1, 25.5), obj(2, 29.0, cell_id=3), obj(3, 10.5)]
    matched, counts, drawn = match_cells(
        objects, cells, slide_id="s", slide_mpp=(0.5, 0.5), tolerance_um=2.0
    )
    # 25.5 µm is 5.5 from cell 2: too far; the second object near cell 1 finds it taken
    assert {c: o.index for c, o in matched.items()} == {1: 0, 3: 2}
    assert counts == {"id": 0, "cell_id": 1, "centroid": 1}
    assert [o.index for o in drawn] == [1, 3]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "Topology"}', "not GeoJSON features"),
        ('[1, 2]', "item 0 of its features is not a GeoJSON Feature"),
        ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
         '{"objectType": "cell"}}]}', "feature 0 (cell) has no geometry"),
        ('{"type": "FeatureCollection", "features": [{"type": "Fea', "not valid JSON"),  # cut
        ("", "not valid JSON"),
    ],
)  # fmt: skip
def test_bad_geojson_is_one_line_naming_the_file(
    store: Path, tmp_path: Path, text: str, problem: str
) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text(text)
    with pytest.raises(QuPathImportError, match="bad.geojson") as err:
        read_qupath_cells(bad)
    assert problem in str(err.value) and "\n" not in str(err.value)
    r = CliRunner().invoke(
        app, ["review", "import-qupath", str(store.parent), store.name, str(bad)]
    )
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and str(bad) in r.output and problem in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (store / "corrections.jsonl").exists()  # nothing logged


def test_older_qupath_forms_are_read(tmp_path: Path) -> None:
    """A byte-order mark, a bare list of features, measurements as a list of {name, value}
    (QuPath before 0.4) and a derived class as ``names`` are read."""
    path = tmp_path / "old.geojson"
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 2], [0, 2], [0, 0]]]},
        "properties": {
            "objectType": "detection",
            "classification": {"names": ["ki67", "Positive"], "color": [1, 2, 3]},
            "measurements": [{"name": "cell_id", "value": 7}, {"name": "x", "value": 1.5}],
        },
    }
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([feature]).encode())
    (obj,), n_annotations = read_qupath_cells(path)
    assert (obj.cell_id, obj.class_name, obj.object_type, n_annotations) == (
        7, "ki67: Positive", "detection", 0,
    )  # fmt: skip
    assert obj.centroid_px == pytest.approx((2.0, 1.0))


def test_another_slides_file_is_refused(store: Path, tmp_path: Path) -> None:
    res = load_results(store)
    features = json.loads(write_slide_geojson(res, tmp_path / "a.geojson").read_text())["features"]
    part = tmp_path / "part.geojson"
    part.write_text(json.dumps({"type": "FeatureCollection", "features": features[:3]}))
    r = CliRunner().invoke(
        app, ["review", "import-qupath", str(store.parent), store.name, str(part)]
    )
    assert r.exit_code == 2 and "only 3 of the" in r.output and "--keep-deleted" in r.output
    r = CliRunner().invoke(
        app, ["review", "import-qupath", str(store.parent), store.name, str(part), "--keep-deleted"]
    )
    assert r.exit_code == 0 and "0 call(s) changed" in r.output
    assert [e["action"] for e in read_log(store)] == ["start", "note"]


def test_a_nucleus_added_after_the_export_is_not_taken_for_deleted(
    store: Path, tmp_path: Path
) -> None:
    res = load_results(store)
    exported = write_slide_geojson(res, tmp_path / "old.geojson")  # before the nucleus is added
    y, x = _empty_spot(store, 10)
    with CorrectionSession(store, user="anna") as s:
        region = s.read_labels(y - 8, x - 8, y + 8, x + 8)
        new_id = s.next_cell_id()
        region[3:13, 3:13] = new_id
        assert s.edit_nuclei(region, origin=(y - 8, x - 8))["added"] == [new_id]
        done = import_qupath_cells(s, exported)
        assert done.excluded_deleted == [] and not s.cell(new_id)["excluded"]
        assert done.n_changes == 0 and f"cells [{new_id}] were added in the review" in done.notes[0]
        # a later export still holding the added cell: it is matched, nothing changes
        later = write_slide_geojson(load_results(store), tmp_path / "new.geojson")
        assert cell_uuid(res.slide_id, new_id) in _features(later)
        assert import_qupath_cells(s, later).n_changes == 0
        # limitation, stated: the only added cell deleted in QuPath reads as an older export
        fc = json.loads(later.read_text())
        fc["features"] = [f for f in fc["features"] if f["id"] != cell_uuid(res.slide_id, new_id)]
        edited = tmp_path / "edited.geojson"
        edited.write_text(json.dumps(fc))
        assert import_qupath_cells(s, edited).excluded_deleted == []
