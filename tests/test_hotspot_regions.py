"""Hot-spots respect regions: no hot-spot field is centred in an exclusion region (Necrosis).

The cells are a seeded synthetic table in µm, the regions a QuPath-style GeoJSON in slide px at
0.5 µm/px; cells are assigned by :func:`senpath.regions.assign_regions` and marked as the store
marks them (``excluded`` = ``region_excluded``), and the exclusion area reaches the search as
:func:`senpath.spatial.slide.slide_spatial` passes it (:func:`exclusion_area_um`). The truth is
where the synthetic Ki67+ cells were drawn.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from senpath.regions import assign_regions, parse_regions
from senpath.spatial import HotspotRule
from senpath.spatial.hotspots import slide_hotspots
from senpath.spatial.slide import exclusion_area_um

MPP = (0.5, 0.5)  # µm per slide px (x, y)
SIDE_UM = 1500.0
SPACING_UM = 20.0
#: A 0.05 mm² circle (radius 126 µm) holding at least 60 cells.
RULE = HotspotRule(field_area_mm2=0.05, min_cells=60, step_um=25.0)


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[list[float]]]:
    """A rectangle given in µm, as slide px."""
    x0, x1 = x0 / MPP[0], x1 / MPP[0]
    y0, y1 = y0 / MPP[1], y1 / MPP[1]
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _regions(necrosis: tuple[float, float, float, float]) -> bytes:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }
        for name, coords in (
            ("Tumor", _square(0, 0, SIDE_UM, SIDE_UM)),
            ("Necrosis", _square(*necrosis)),
        )
    ]
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


def _cells(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.arange(SPACING_UM / 2, SIDE_UM, SPACING_UM)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    x = x + rng.uniform(-6, 6, x.size)
    y = y + rng.uniform(-6, 6, y.size)
    return pd.DataFrame({"x_um": x, "y_um": y, "ki67_positive": rng.random(x.size) < 0.05})


def _with_regions(
    cells: pd.DataFrame, necrosis: tuple[float, float, float, float]
) -> tuple[pd.DataFrame, object]:
    """The cells with their regions, and the exclusion area in µm."""
    regions = parse_regions(_regions(necrosis), source="regions.geojson")
    assigned = assign_regions(
        cells["x_um"].to_numpy() / MPP[0], cells["y_um"].to_numpy() / MPP[1], regions
    )
    out = pd.concat([cells, assigned], axis=1)
    out["excluded"] = out["region_excluded"].to_numpy(dtype=bool)
    return out, exclusion_area_um(regions, MPP)


def _inside(x: float, y: float, box: tuple[float, float, float, float]) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


RIM_NECROSIS = (400.0, 400.0, 1000.0, 1000.0)


def _rim_cells() -> pd.DataFrame:
    """Ki67+ (60 %) cells in an 80 µm rim just outside ``RIM_NECROSIS``, 5 % elsewhere."""
    cells = _cells(seed=3)
    rng = np.random.default_rng(4)
    x, y = cells["x_um"].to_numpy(), cells["y_um"].to_numpy()
    x0, y0, x1, y1 = RIM_NECROSIS
    outside = np.hypot(
        np.maximum.reduce([x0 - x, x - x1, np.zeros_like(x)]),
        np.maximum.reduce([y0 - y, y - y1, np.zeros_like(y)]),
    )
    rim = (outside > 0) & (outside <= 80.0)
    cells.loc[rim, "ki67_positive"] = rng.random(int(rim.sum())) < 0.6
    return cells


def test_a_dense_ki67_patch_in_necrosis_is_not_the_hotspot() -> None:
    """Ki67+ cells fill a Necrosis region; the viable patch elsewhere (half Ki67+) is the hot-spot,
    found within one field radius of its drawn centre."""
    necrosis = (200.0, 200.0, 600.0, 600.0)
    cells = _cells(seed=1)
    rng = np.random.default_rng(2)
    x, y = cells["x_um"].to_numpy(), cells["y_um"].to_numpy()
    in_necrosis = (x >= 200) & (x <= 600) & (y >= 200) & (y <= 600)
    cells.loc[in_necrosis, "ki67_positive"] = rng.random(int(in_necrosis.sum())) < 0.95
    patch = np.hypot(x - 1100.0, y - 1000.0) <= 150.0
    cells.loc[patch, "ki67_positive"] = rng.random(int(patch.sum())) < 0.5
    cells, exclusion = _with_regions(cells, necrosis)
    assert cells["region_excluded"].sum() == in_necrosis.sum()  # the truth the regions give

    (spot,) = slide_hotspots(cells, markers=["ki67"], rule=RULE, exclusion_um=exclusion)
    assert spot.found
    assert not _inside(spot.centre_x_um, spot.centre_y_um, necrosis)
    assert np.hypot(spot.centre_x_um - 1100.0, spot.centre_y_um - 1000.0) <= RULE.radius_um
    assert spot.index_pct == pytest.approx(50.0, abs=15.0)
    # counted over the viable cells only: the global index leaves the necrosis out
    assert spot.global_n_cells == int((~in_necrosis).sum())


def test_a_proliferative_rim_around_necrosis_does_not_pull_the_field_into_it() -> None:
    """Ki67+ cells in a rim just outside a Necrosis region: a field centred inside the necrosis
    would count only rim cells (its necrotic half holds no counted cell) and so read the highest
    index; the hot-spot's centre must still lie outside the exclusion region."""
    cells, exclusion = _with_regions(_rim_cells(), RIM_NECROSIS)

    (spot,) = slide_hotspots(cells, markers=["ki67"], rule=RULE, exclusion_um=exclusion)
    assert spot.found
    assert not _inside(spot.centre_x_um, spot.centre_y_um, RIM_NECROSIS), (
        spot.centre_x_um,
        spot.centre_y_um,
    )
    # the field is on the rim: it holds the rim's Ki67+ cells
    assert spot.index_pct > 25.0
    assert np.hypot(*np.subtract(exclusion.centroid.coords[0], (700.0, 700.0))) < 1e-6


def test_without_the_exclusion_area_the_field_would_sit_in_the_necrosis() -> None:
    """The failure the rule guards against (what the search did before it knew the regions)."""
    cells, _ = _with_regions(_rim_cells(), RIM_NECROSIS)
    (spot,) = slide_hotspots(cells, markers=["ki67"], rule=RULE)
    assert _inside(spot.centre_x_um, spot.centre_y_um, RIM_NECROSIS)
