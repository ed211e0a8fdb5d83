"""QuPath GeoJSON export: outlines on pixel edges, cell objects as QuPath imports them, level-0 px."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

import senpath
from senpath import synth
from senpath.config import AnalysisConfig
from senpath.geojson import cell_uuid, mask_outlines, ring_area, write_slide_geojson

SLIDE_MPP = 0.25  # level 0 finer than the 0.5 µm/px analysis grid: exercises the µm -> px scaling


def test_outline_of_a_rectangle_is_its_pixel_edges():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True  # rows 1-2, columns 1-3
    (ring,) = mask_outlines(mask)
    assert ring[0].tolist() == ring[-1].tolist()  # closed
    assert {tuple(p) for p in ring} == {(1.0, 1.0), (4.0, 1.0), (4.0, 3.0), (1.0, 3.0)}
    assert abs(ring_area(ring)) == 6.0


def test_outline_area_gains_an_eighth_pixel_per_concave_corner():
    mask = np.array([[1, 0], [1, 1]], bool)  # an L: 3 px, one concave corner
    (ring,) = mask_outlines(mask)
    assert abs(ring_area(ring)) == pytest.approx(3 + 0.125)
    two = np.zeros((5, 9), bool)
    two[1:3, 1:3] = True
    two[1:4, 5:8] = True
    rings = mask_outlines(two)
    assert [abs(ring_area(r)) for r in rings] == [9.0, 4.0]  # largest first


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("geojson")
    s = synth.write_slide(
        tmp / "sk.tif", assay="sabgal+ki67", shape=(1024, 1024), mpp=SLIDE_MPP, seed=2,
        params=synth.SynthParams(tissue_fraction=0.95, senescent_fraction=0.3),
    )  # fmt: skip
    config = AnalysisConfig(segmenter="classical")
    return senpath.analyze_slide(s.path, out=tmp / "res", assay="sabgal+ki67", config=config)


def _rings(geometry):
    assert geometry["type"] in ("Polygon", "MultiPolygon")
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [np.asarray(ring) for poly in polys for ring in poly]


def _centroid(ring):
    x, y = ring[:, 0], ring[:, 1]
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]
    a = cross.sum() / 2
    return ((x[:-1] + x[1:]) * cross).sum() / (6 * a), ((y[:-1] + y[1:]) * cross).sum() / (6 * a)


def test_qupath_cell_features(store, tmp_path):
    res = senpath.load_results(store)
    path = write_slide_geojson(res, tmp_path / f"{res.slide_id}.geojson")
    fc = json.loads(path.read_text())
    assert fc["type"] == "FeatureCollection"
    cells = res.cells.set_index("cell_id")
    features = fc["features"]
    assert len(features) == len(cells) > 20
    assert len({f["id"] for f in features}) == len(features)
    by_uuid = {cell_uuid(res.slide_id, cid): cid for cid in cells.index}
    size_px = 1024
    area_ratio = []
    names = set()
    for f in features:
        assert f["type"] == "Feature" and uuid.UUID(f["id"]).version == 5
        cid = by_uuid[f["id"]]  # the id is the cell's deterministic UUID
        props = f["properties"]
        assert props["objectType"] == "cell"
        row = cells.loc[cid]
        klass = props["classification"]
        names.add(klass["name"])
        if row["senescent"]:
            assert klass["name"] == "Senescent"
        else:
            expected = "Positive" if row["sabgal_positive"] else "Negative"
            assert klass["name"] == f"sabgal: {expected}"
        assert len(klass["color"]) == 3 and all(0 <= c <= 255 for c in klass["color"])
        meas = props["measurements"]
        assert meas["nucleus_area_um2"] == pytest.approx(row["nucleus_area_um2"])
        assert meas["cell_id"] == cid and "tile_label" not in meas
        assert all(isinstance(v, float) for v in meas.values())
        # beside the geometry, where QuPath reads a cell's nucleus (not in the properties)
        assert "nucleusGeometry" not in props
        nucleus = _rings(f["nucleusGeometry"])
        cell = _rings(f["geometry"])
        for ring in nucleus + cell:
            assert len(ring) >= 4 and ring[0].tolist() == ring[-1].tolist()  # closed rings
            assert ring.min() >= 0 and ring.max() <= size_px  # level-0 px of the slide
        nucleus_px2 = sum(abs(ring_area(r)) for r in nucleus)
        area_ratio.append(nucleus_px2 / (row["nucleus_area_um2"] / SLIDE_MPP**2))
        assert sum(abs(ring_area(r)) for r in cell) > nucleus_px2  # the cell is the grown nucleus
        # the nucleus outline sits on the table's centroid (µm -> level-0 px)
        cx, cy = _centroid(max(nucleus, key=lambda r: abs(ring_area(r))))
        assert cx == pytest.approx(row["x_um"] / SLIDE_MPP, abs=1.0)
        assert cy == pytest.approx(row["y_um"] / SLIDE_MPP, abs=1.0)
    area_ratio = np.asarray(area_ratio)
    # pixel-edge outlines: only 1/8 px² gained per concave corner
    assert np.all((area_ratio >= 1.0) & (area_ratio < 1.05)), (area_ratio.min(), area_ratio.max())
    assert {"Senescent", "sabgal: Negative"} <= names
    # a second export gives the same file (deterministic ids and order)
    again = write_slide_geojson(res, tmp_path / "again.geojson")
    assert again.read_bytes() == path.read_bytes()


def test_excluded_and_manual_cells_are_flagged_and_ignored_by_qupath(store, tmp_path):
    from senpath.corrections import CorrectionSession
    from senpath.testing import copy_store

    plain = json.loads(write_slide_geojson(senpath.load_results(store), tmp_path / "a.geojson")
                       .read_text())["features"]  # fmt: skip
    assert not {"excluded", "manual"} & set(plain[0]["properties"])  # uncorrected: as before
    copy = copy_store(store, tmp_path)
    s = CorrectionSession(copy, user="t")
    ids = s.cells["cell_id"].to_numpy()
    excluded, flipped = int(ids[3]), int(ids[4])
    s.exclude([excluded])
    s.flip_call(flipped, "ki67")
    res = senpath.load_results(copy)
    features = json.loads(write_slide_geojson(res, tmp_path / "b.geojson").read_text())["features"]
    props = {f["id"]: f["properties"] for f in features}
    ex = props[cell_uuid(res.slide_id, excluded)]
    assert ex["excluded"] is True and ex["classification"]["name"] == "Ignore*"
    fl = props[cell_uuid(res.slide_id, flipped)]
    assert fl["manual"] is True and fl["manualMarkers"] == ["ki67"] and fl["excluded"] is False
    assert fl["classification"]["name"] != "Ignore*"
    others = [
        p for k, p in props.items() if k not in (cell_uuid(res.slide_id, c) for c in ids[3:5])
    ]
    assert not any(p["excluded"] or p["manual"] for p in others)
    assert sum(p["classification"]["name"] == "Ignore*" for p in props.values()) == 1
