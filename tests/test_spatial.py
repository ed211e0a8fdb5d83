"""Density maps, hot-spots and their OME-Zarr store (senpath.spatial), against truth made here."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from senpath.spatial import (
    Grid,
    HotspotRule,
    bin_cells,
    density_maps,
    find_hotspot,
    read_density_zarr,
    slide_hotspots,
    write_density_zarr,
)

# ----------------------------------------------------------------------------------------- grid


def test_bin_cells_counts_and_sums_by_hand() -> None:
    # bins of 100 µm from (0, 0): a point on a bin's lower edge belongs to that bin
    x = [10.0, 90.0, 100.0, 150.0, 199.9]
    y = [10.0, 10.0, 10.0, 150.0, 199.9]
    pos = [True, False, True, True, False]
    od = [0.5, np.nan, 0.25, 1.0, 2.0]
    sums = bin_cells(x, y, {"pos": pos, "od": od}, spacing_um=100.0)
    assert sums.grid == Grid((0.0, 0.0), 100.0, (2, 2))
    np.testing.assert_array_equal(sums.n_cells, [[2, 1], [0, 2]])
    np.testing.assert_array_equal(sums.sums["pos"], [[1, 1], [0, 1]])
    np.testing.assert_allclose(sums.sums["od"], [[0.5, 0.25], [0, 3.0]])  # NaN adds nothing
    np.testing.assert_allclose(sums.per_mm2(), [[200, 100], [0, 200]])  # 0.01 mm² bins
    pct = sums.percent("pos")
    np.testing.assert_allclose(pct[0], [50.0, 100.0])
    assert math.isnan(pct[1, 0]) and pct[1, 1] == 50.0


def test_bin_cells_default_origin_snaps_to_the_spacing() -> None:
    sums = bin_cells([260.0, 510.0], [-40.0, 30.0], spacing_um=50.0)
    assert sums.grid.origin_um == (250.0, -50.0)
    assert sums.grid.shape == (2, 6)  # y -50..50, x 250..550
    assert sums.n_cells[0, 0] == 1 and sums.n_cells[1, 5] == 1


def test_bin_cells_on_a_given_grid_counts_the_points_outside() -> None:
    # several sections on one grid: a fixed origin and shape; points outside are counted apart
    sums = bin_cells(
        [5.0, 25.0, -1.0, 45.0, np.nan], [5.0, 5.0, 5.0, 5.0, 5.0],
        spacing_um=20.0, origin_um=(0.0, 0.0), shape=(1, 2),
    )  # fmt: skip
    np.testing.assert_array_equal(sums.n_cells, [[1, 1]])
    assert sums.n_outside == 3


def test_bin_cells_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="spacing_um=0"):
        bin_cells([1.0], [1.0], spacing_um=0)
    with pytest.raises(ValueError, match="one \\(x, y\\) per cell"):
        bin_cells([1.0, 2.0], [1.0], spacing_um=10)
    with pytest.raises(ValueError, match="'pos' has 1 entries for 2 cells"):
        bin_cells([1.0, 2.0], [1.0, 2.0], {"pos": [True]}, spacing_um=10)


# -------------------------------------------------------------------------------------- density


def _tiny_cells() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x_um": [10.0, 20.0, 30.0, 150.0, 160.0],
            "y_um": [10.0, 20.0, 30.0, 50.0, 60.0],
            "p16_positive": [True, True, False, False, True],
            "senescent": [True, True, False, False, True],
            "excluded": [False, False, False, False, True],
        }
    )


def test_density_maps_by_hand() -> None:
    maps = density_maps(_tiny_cells(), phenotypes=["senescent"], spacing_um=100.0)
    assert maps.grid.shape == (1, 2)
    # the excluded cell (160, 60) is not counted
    np.testing.assert_array_equal(maps.channels["n_cells"], [[3, 1]])
    np.testing.assert_allclose(maps.channels["cells_per_mm2"], [[300, 100]])
    np.testing.assert_allclose(maps.channels["p16_pct_positive"], [[200 / 3, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(maps.channels["p16_positive_per_mm2"], [[200, 0]])
    np.testing.assert_allclose(maps.channels["senescent_index"], [[200 / 3, 0.0]], rtol=1e-6)
    assert maps.units["cells_per_mm2"] == "/mm²" and maps.units["senescent_index"] == "%"


def test_density_maps_of_an_empty_and_a_one_cell_slide() -> None:
    empty = _tiny_cells().iloc[:0]
    maps = density_maps(empty, phenotypes=["senescent"])
    assert maps.grid.shape == (1, 1) and maps.channels["n_cells"][0, 0] == 0
    assert np.isnan(maps.channels["p16_pct_positive"][0, 0])
    one = density_maps(_tiny_cells().iloc[:1], spacing_um=50.0)
    assert one.channels["n_cells"].sum() == 1 and one.channels["p16_pct_positive"][0, 0] == 100


def test_density_maps_need_a_scored_table() -> None:
    with pytest.raises(KeyError, match="lacks 'senescent'"):
        density_maps(_tiny_cells().drop(columns="senescent"), phenotypes=["senescent"])


# ------------------------------------------------------------------------------------- OME-Zarr


def test_density_ome_zarr_round_trip_with_its_physical_scale(tmp_path) -> None:
    import zarr

    maps = density_maps(_tiny_cells(), phenotypes=["senescent"], spacing_um=100.0)
    maps.attrs["slide_id"] = "s1"
    path = write_density_zarr(tmp_path / "s1" / "density.ome.zarr", maps, name="s1")
    back = read_density_zarr(tmp_path / "s1")
    assert back.grid == maps.grid and list(back.channels) == list(maps.channels)
    for name, data in maps.channels.items():
        np.testing.assert_array_equal(back.channels[name], data)  # NaN where no cells, too
    assert back.units == maps.units and back.attrs["slide_id"] == "s1"

    # what another OME-Zarr reader sees: NGFF 0.4 multiscales, axes c/y/x in micrometer, the
    # bin side as scale and bin (0, 0)'s centre as translation
    attrs = json.loads((path / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [(a["name"], a.get("unit")) for a in ms["axes"]] == [
        ("c", None), ("y", "micrometer"), ("x", "micrometer"),
    ]  # fmt: skip
    transforms = ms["datasets"][0]["coordinateTransformations"]
    assert transforms[0] == {"type": "scale", "scale": [1.0, 100.0, 100.0]}
    assert transforms[1] == {"type": "translation", "translation": [0.0, 50.0, 50.0]}
    assert [c["label"] for c in attrs["omero"]["channels"]] == list(maps.channels)
    arr = zarr.open_group(str(path), mode="r")["0"]
    assert arr.shape == (len(maps.channels), 1, 2) and arr.dtype == np.float32

    # rewriting replaces the image whole and leaves no temporary folder behind
    other = density_maps(_tiny_cells(), spacing_um=50.0)
    write_density_zarr(path, other)
    assert read_density_zarr(path).grid.spacing_um == 50.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["density.ome.zarr"]


def test_reading_a_store_without_density_maps_says_how_to_make_them(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="senpath spatial"):
        read_density_zarr(tmp_path)


# ------------------------------------------------------------------------------------- hot-spots


def _tissue_with_patch(
    seed: int,
    *,
    patch: tuple[float, float, float],
    inside: float = 0.7,
    outside: float = 0.1,
    size_um: tuple[float, float] = (2000.0, 1500.0),
    density_per_mm2: float = 2500.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells spread at random over a rectangle, Ki67+ with ``inside`` odds in a circular patch
    (x, y, radius) and ``outside`` elsewhere."""
    rng = np.random.default_rng(seed)
    n = int(size_um[0] * size_um[1] / 1e6 * density_per_mm2)
    x = rng.uniform(0, size_um[0], n)
    y = rng.uniform(0, size_um[1], n)
    in_patch = np.hypot(x - patch[0], y - patch[1]) <= patch[2]
    positive = rng.random(n) < np.where(in_patch, inside, outside)
    return x, y, positive


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "rule",
    [HotspotRule(), HotspotRule(shape="square"), HotspotRule(field="cells", field_cells=500)],
    ids=["circle-0.2mm2", "square-0.2mm2", "500-cells"],
)
def test_hotspot_finds_a_proliferative_patch_within_one_field(seed: int, rule: HotspotRule) -> None:
    truth = (1400.0 - 300 * seed, 500.0 + 250 * seed, 250.0)
    x, y, positive = _tissue_with_patch(seed, patch=truth)
    spot = find_hotspot(x, y, positive, rule=rule, target="ki67")
    assert spot.found
    # within one field: the field's radius (0.2 mm² circle: 252 µm)
    assert math.hypot(spot.centre_x_um - truth[0], spot.centre_y_um - truth[1]) <= 252.0
    assert 60 <= spot.index_pct <= 85  # the patch's 70 %, counted over one field
    assert spot.index_ci95_low < spot.index_pct < spot.index_ci95_high
    # the global index is the whole slide's: near 10 % plus the patch's share
    assert spot.global_n_cells == len(x) and spot.global_n_positive == int(positive.sum())
    assert spot.global_index_pct == pytest.approx(100 * positive.mean())
    if rule.field == "cells":
        assert spot.n_cells == 500
        assert spot.field_area_mm2 == pytest.approx(math.pi * spot.field_radius_um**2 / 1e6)
    else:
        assert spot.n_cells >= rule.min_cells and spot.field_area_mm2 == 0.2
        assert spot.positive_per_mm2 == pytest.approx(spot.n_positive / 0.2)


def test_hotspot_field_figures_by_hand() -> None:
    # two clusters far apart: 120 cells with 60 positive (50 %), 150 cells with 120 positive (80 %)
    rng = np.random.default_rng(5)
    xa, ya = rng.uniform(0, 100, 120), rng.uniform(0, 100, 120)
    xb, yb = rng.uniform(2000, 2100, 150), rng.uniform(0, 100, 150)
    pa = np.arange(120) < 60
    pb = np.arange(150) < 120
    x, y, pos = np.r_[xa, xb], np.r_[ya, yb], np.r_[pa, pb]
    spot = find_hotspot(x, y, pos, rule=HotspotRule(field_area_mm2=0.2, min_cells=100))
    assert (spot.n_cells, spot.n_positive, spot.index_pct) == (150, 120, 80.0)
    assert 2000 - 252 <= spot.centre_x_um <= 2100 + 252
    assert spot.global_index_pct == pytest.approx(100 * 180 / 270)
    # a field must hold min_cells: with 130 the 120-cell cluster cannot count, and with 200 no
    # field qualifies at all
    assert find_hotspot(x, y, pos, rule=HotspotRule(min_cells=130)).n_cells == 150
    none = find_hotspot(x, y, pos, rule=HotspotRule(min_cells=200))
    assert not none.found and "densest holds 150 cell(s)" in none.reason


def test_a_field_of_three_cells_cannot_win() -> None:
    x, y, positive = _tissue_with_patch(3, patch=(1000.0, 700.0, 250.0), inside=0.4)
    # three Ki67+ cells alone on the glass, far from the tissue: 100 % in a field of 3 cells
    x, y = np.r_[x, 5000, 5010, 5020], np.r_[y, 5000, 5010, 5000]
    positive = np.r_[positive, True, True, True]
    spot = find_hotspot(x, y, positive)
    assert spot.centre_x_um < 2500 and spot.n_cells >= 100
    # the minimum is what keeps them out: with min_cells=1 they win
    lax = find_hotspot(x, y, positive, rule=HotspotRule(min_cells=1))
    assert lax.index_pct == 100.0 and lax.centre_x_um > 4500


def test_hotspots_of_an_empty_and_a_one_cell_slide_say_why() -> None:
    for n in (0, 1):
        spot = find_hotspot(np.full(n, 5.0), np.full(n, 5.0), np.ones(n, bool), target="ki67")
        assert not spot.found and math.isnan(spot.index_pct)
        assert f"{n} counted cell(s), fewer than the 100" in spot.reason
    cells_rule = HotspotRule(field="cells", field_cells=500)
    spot = find_hotspot([1.0], [1.0], [True], rule=cells_rule)
    assert "fewer than the 500 cells per field" in spot.reason
    assert spot.global_index_pct == 100.0


def test_slide_hotspots_per_marker_and_phenotype_leave_excluded_cells_out() -> None:
    x, y, positive = _tissue_with_patch(4, patch=(600.0, 600.0, 250.0))
    excluded = np.zeros(len(x), bool)
    # a reviewer excluded a fully positive block: it must not become the hot-spot
    block = (x > 1500) & (y > 1000)
    positive[block] = True
    excluded[block] = True
    cells = pd.DataFrame(
        {"x_um": x, "y_um": y, "ki67_positive": positive, "senescent": ~positive,
         "excluded": excluded}
    )  # fmt: skip
    spots = slide_hotspots(cells, markers=["ki67"], phenotypes=["senescent"])
    assert [(s.target, s.kind) for s in spots] == [("ki67", "marker"), ("senescent", "phenotype")]
    assert math.hypot(spots[0].centre_x_um - 600, spots[0].centre_y_um - 600) <= 252
    assert spots[0].global_n_cells == int((~excluded).sum())


def test_hotspot_rule_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="field_area_mm2=0"):
        HotspotRule(field_area_mm2=0)
    with pytest.raises(ValueError, match="use 'area' or 'cells'"):
        HotspotRule(field="hpf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step_um"):
        HotspotRule(step_um=-1)


@pytest.mark.parametrize("rule", [HotspotRule(), HotspotRule(field="cells", field_cells=200)])
def test_one_search_for_several_targets_equals_one_search_each(rule: HotspotRule) -> None:
    from senpath.spatial import find_hotspots

    x, y, ki67 = _tissue_with_patch(6, patch=(500.0, 400.0, 250.0))
    in_patch = np.hypot(x - 1500.0, y - 1000.0) <= 250.0
    p16 = np.random.default_rng(7).random(len(x)) < np.where(in_patch, 0.7, 0.1)
    together = find_hotspots(x, y, {"ki67": ki67, "p16": p16}, rule=rule)
    apart = [find_hotspot(x, y, v, rule=rule, target=t) for t, v in (("ki67", ki67), ("p16", p16))]
    assert together == apart
    assert together[0].centre_x_um < 1000 < together[1].centre_x_um
