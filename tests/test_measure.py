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
    np.testing.assert_allclose(df.loc[0, ["x_um", "y_um"]].astype(float), [100 + 4 * 0.5, 200 + 4 * 0.5])
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
