import numpy as np
import pytest

from senpath.measure import cell_compartments, measure_cells


def _two_cells():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 2:6] = 1  # 16 px
    labels[10:14, 20:26] = 2  # 24 px
    od = np.zeros((20, 30, 2), np.float32)
    od[2:6, 2:6, 1] = 0.5
    od[2:4, 2:6, 1] = 1.0  # top half of nucleus 1 darker: mean 0.75, max 1.0
    od[10:14, 20:26, 0] = 0.2
    return labels, od


def test_measure_values_by_hand():
    labels, od = _two_cells()
    df = measure_cells(labels, od, stain_names=("hematoxylin", "dab"), mpp=0.5, cytoplasm_um=1.0,
                       origin_um=(100.0, 200.0))  # fmt: skip
    assert list(df["cell_id"]) == [1, 2]
    np.testing.assert_allclose(df["nucleus_area_um2"], [16 * 0.25, 24 * 0.25])
    # centroid of rows 2..5 / cols 2..5 is pixel (3.5, 3.5); pixel centres are at +0.5
    np.testing.assert_allclose(
        df.loc[0, ["x_um", "y_um"]].astype(float), [100 + 4 * 0.5, 200 + 4 * 0.5]
    )
    np.testing.assert_allclose(df.loc[0, "dab_od_mean_nucleus"], 0.75)
    np.testing.assert_allclose(df.loc[0, "dab_od_max_nucleus"], 1.0)
    np.testing.assert_allclose(df.loc[0, "dab_od_p90_nucleus"], 1.0)
    np.testing.assert_allclose(df.loc[1, "hematoxylin_od_mean_nucleus"], 0.2)
    # the cytoplasm ring (2 px) has no stain here
    np.testing.assert_allclose(df["dab_od_mean_cytoplasm"], 0.0)
    assert (df["cell_area_um2"] > df["nucleus_area_um2"]).all()


def test_cytoplasm_ring_width_and_neighbours():
    labels = np.zeros((21, 40), np.int32)
    labels[8:13, 8:13] = 1
    labels[8:13, 15:20] = 2  # 2 px gap: rings meet in the middle, not overlap
    comps = cell_compartments(labels, mpp=0.5, cytoplasm_um=2.0)  # 4 px ring
    cyto = comps["cytoplasm"]
    assert cyto[10, 4] == 1 and cyto[10, 3] == 0  # ring 4 px wide to the left of cell 1
    assert set(np.unique(cyto[10, 13:15])) == {1, 2}
    assert not np.any((cyto > 0) & (labels > 0))
    np.testing.assert_array_equal(comps["cell"] > 0, (cyto > 0) | (labels > 0))


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="differs"):
        measure_cells(np.zeros((4, 4), np.int32), np.zeros((5, 4, 2), np.float32),
                      stain_names=("a", "b"), mpp=1.0)  # fmt: skip


def test_empty_labels_give_empty_table():
    df = measure_cells(np.zeros((8, 8), np.int32), np.zeros((8, 8, 2), np.float32),
                       stain_names=("hematoxylin", "dab"), mpp=0.5)  # fmt: skip
    assert len(df) == 0 and "dab_od_mean_cell" in df.columns


def test_perinuclear_ring_is_the_inner_part_of_the_cytoplasm():
    labels = np.zeros((30, 30), np.int32)
    labels[13:17, 13:17] = 1
    comps = cell_compartments(labels, mpp=0.5, cytoplasm_um=4.0)  # 8 px ring, 4 px perinuclear
    peri, cyto = comps["perinuclear"], comps["cytoplasm"]
    assert peri[15, 12 - 3] == 1 and peri[15, 12 - 4] == 0  # 4 px left of the nucleus edge
    assert cyto[15, 12 - 7] == 1 and cyto[15, 12 - 8] == 0
    assert not np.any((peri > 0) & (cyto == 0))  # a subset of the cytoplasm ring
    np.testing.assert_array_equal(comps["nucleus_perinuclear"] > 0, (peri > 0) | (labels > 0))
    with pytest.raises(ValueError, match="perinuclear_um"):
        cell_compartments(labels, mpp=0.5, cytoplasm_um=2.0, perinuclear_um=3.0)


def test_statistics_by_hand_nearest_rank():
    labels = np.zeros((3, 8), np.int32)
    labels[1, :] = 1  # 8 pixels, values 0.1 .. 0.8
    od = np.zeros((3, 8, 1), np.float32)
    od[1, :, 0] = np.arange(1, 9) / 10
    df = measure_cells(labels, od, stain_names=("xgal",), mpp=1.0, cytoplasm_um=2.0)
    row = df.iloc[0]
    assert row["xgal_od_mean_nucleus"] == pytest.approx(0.45)
    assert row["xgal_od_median_nucleus"] == pytest.approx(0.4)  # rank ceil(0.5 * 8) = 4
    assert row["xgal_od_p75_nucleus"] == pytest.approx(0.6)  # rank 6
    assert row["xgal_od_p90_nucleus"] == pytest.approx(0.8)  # rank ceil(7.2) = 8
    assert row["xgal_od_max_nucleus"] == pytest.approx(0.8)
    assert row["perinuclear_area_um2"] == pytest.approx(16.0)  # rows above and below: 1 µm ring
    assert row["xgal_od_mean_perinuclear"] == 0.0


def test_neighbour_stain_reaches_the_outer_ring_not_the_perinuclear_one():
    # a negative cell 2 µm from a dark region (a neighbour's stained cytoplasm) at 1 µm/px
    labels = np.zeros((21, 21), np.int32)
    labels[9:12, 9:12] = 1
    od = np.zeros((21, 21, 1), np.float32)
    od[:, 15:, 0] = 0.9  # stain begins 4 px right of the nucleus edge (col 11)
    df = measure_cells(labels, od, stain_names=("xgal",), mpp=1.0, cytoplasm_um=5.0)
    assert df.loc[0, "xgal_od_p75_perinuclear"] == 0.0  # 2.5 µm ring stays clear
    assert df.loc[0, "xgal_od_max_cytoplasm"] == pytest.approx(0.9)  # the 5 µm ring does not
