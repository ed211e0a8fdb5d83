"""The vectorised measurement (issue 18) gives the values of the straightforward implementation it
replaced: ``regionprops_table`` for the nucleus shape and a per-cell loop for the OD statistics."""

import math

import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops_table
from skimage.segmentation import watershed

from senpath.measure import STATISTICS, _group_stats, cell_compartments, measure_cells
from senpath.morphology import shape_table

SHAPE_PROPS = ("label", "centroid", "area", "perimeter", "eccentricity", "solidity")


def _reference_stats(labels, values, ids):
    """Nearest-rank statistics per cell, one cell at a time (the definition, no grouping tricks)."""
    out = {name: np.full(len(ids), np.nan) for name in STATISTICS}
    for i, cell_id in enumerate(ids):
        v = np.sort(values[labels == cell_id].astype(np.float64))
        if v.size == 0:
            continue
        out["mean"][i] = v.sum() / v.size if not np.isnan(v).any() else np.nan
        out["max"][i] = v[-1]
        for name, q in (("median", 50), ("p75", 75), ("p90", 90)):
            out[name][i] = v[min(max(math.ceil(q / 100 * v.size), 1), v.size) - 1]
    return out


def _reference_measure(nuclei, od, *, stain_names, mpp, cytoplasm_um=5.0):
    """measure_cells as it was before issue 18: regionprops_table and a loop over cells."""
    comps = cell_compartments(nuclei, mpp=mpp, cytoplasm_um=cytoplasm_um)
    props = regionprops_table(nuclei, properties=SHAPE_PROPS)
    ids = np.asarray(props["label"], dtype=np.int64)
    df = pd.DataFrame(
        {
            "cell_id": ids,
            "x_um": (np.asarray(props["centroid-1"]) + 0.5) * mpp,
            "y_um": (np.asarray(props["centroid-0"]) + 0.5) * mpp,
            "nucleus_area_um2": np.asarray(props["area"], float) * mpp**2,
            "nucleus_perimeter_um": np.asarray(props["perimeter"], float) * mpp,
            "nucleus_eccentricity": np.asarray(props["eccentricity"], float),
            "nucleus_solidity": np.asarray(props["solidity"], float),
        }
    )
    for s, name in enumerate(stain_names):
        for comp, lab in comps.items():
            for stat, values in _reference_stats(lab, od[..., s], ids).items():
                df[f"{name}_od_{stat}_{comp}"] = values
    return df


@pytest.fixture(scope="module")
def ki67_tile():
    """A 384² synthetic Ki67 tile (stains perturbed from the presets), classical nuclei."""
    from senpath.segment.classical import segment_classical
    from senpath.stain import REFERENCE_STAINS, StainSet, deconvolve
    from senpath.synth import SynthParams, render_region

    perturbed = (
        ("hematoxylin", tuple(np.add(REFERENCE_STAINS["hematoxylin"], (0.04, -0.03, 0.02)))),
        ("dab", tuple(np.add(REFERENCE_STAINS["dab"], (-0.03, 0.02, 0.04)))),
    )
    region = render_region(
        "ki67", shape=(384, 384), seed=18,
        params=SynthParams(tissue_fraction=0.95, stain_vectors=perturbed),
    )  # fmt: skip
    stains = StainSet.from_names(("hematoxylin", "dab"))
    od = deconvolve(region.rgb, stains)
    labels = segment_classical(
        region.rgb, mpp=0.5, stains=stains, nuclear_stains=("hematoxylin", "dab"), concentrations=od
    )
    assert labels.max() > 30  # a realistic number of nuclei to compare
    return labels, od


def test_measure_cells_equals_the_reference_on_a_synthetic_tile(ki67_tile):
    labels, od = ki67_tile
    new = measure_cells(labels, od, stain_names=("hematoxylin", "dab"), mpp=0.5)
    ref = _reference_measure(labels, od, stain_names=("hematoxylin", "dab"), mpp=0.5)
    for column in ref.columns:
        assert column in new.columns, column
        if "_od_" in column or column in ("cell_id", "nucleus_area_um2", "nucleus_solidity"):
            # sorted values and counts: the same numbers bit for bit (the mean sums in the same order)
            np.testing.assert_array_equal(new[column], ref[column], err_msg=column)
        else:
            np.testing.assert_allclose(
                new[column], ref[column], rtol=1e-12, atol=1e-9, err_msg=column
            )


def test_shape_table_equals_regionprops_on_awkward_shapes():
    """Non-convex, fragmented (one label in pieces), touching and image-edge objects."""
    rng = np.random.default_rng(5)
    labels = watershed(rng.random((160, 200)), markers=120, mask=rng.random((160, 200)) > 0.25)
    labels[:4, :] = 500  # a strip on the image edge, touching many others
    labels[80, 100] = 501  # one pixel
    labels[150:152, 10:60] = 502  # a thin bar
    ref = regionprops_table(labels, properties=SHAPE_PROPS)
    new = shape_table(labels)
    assert set(new) == set(ref)
    for key in ref:
        np.testing.assert_allclose(new[key], ref[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_shape_table_empty_and_bad_input():
    empty = shape_table(np.zeros((5, 5), np.int32))
    assert all(len(v) == 0 for v in empty.values())
    with pytest.raises(ValueError, match="2-D"):
        shape_table(np.zeros((2, 3, 4), np.int32))


def test_group_stats_keep_negative_zero_and_nan_values_in_order():
    """The float-bit sort key orders negatives, -0.0 and NaN as a float sort does."""
    labels = np.array([[1, 1, 1, 1, 2, 2, 3, 3, 3, 0]], np.int32)
    values = np.array([[-2.5, 0.5, -0.0, -1e-30, 7.0, np.nan, 3.0, -3.0, 1e30, 9.0]], np.float32)
    ids = np.array([1, 2, 3, 4], np.int64)
    (got,) = _group_stats(labels, [values], ids)
    want = _reference_stats(labels, values, ids)
    for name in STATISTICS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert got["max"][1] != got["max"][1]  # NaN sorts last, as in np.sort
