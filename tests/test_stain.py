import numpy as np
import pytest

from senpath.stain import (
    REFERENCE_STAINS,
    StainSet,
    deconvolve,
    estimate_background,
    od_to_rgb,
    residual_od,
    rgb_to_od,
)


def test_rgb_to_od_by_hand():
    rgb = np.array([[[240, 24, 2]]], np.uint8)
    od = rgb_to_od(rgb, 240.0)
    np.testing.assert_allclose(od[0, 0], [0.0, 1.0, np.log10(120)], rtol=1e-5)
    # brighter than glass means no stain, never a negative OD
    assert rgb_to_od(np.full((1, 1, 3), 255, np.uint8), 240.0).min() == 0.0


def test_od_round_trip():
    rng = np.random.default_rng(0)
    rgb = rng.integers(5, 240, size=(8, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(od_to_rgb(rgb_to_od(rgb, 240.0), 240.0), rgb)


@pytest.mark.parametrize(
    "names",
    [("hematoxylin", "dab"), ("nuclear_fast_red", "xgal"), ("hematoxylin", "dab", "fast_red"),
     ("hematoxylin", "eosin", "xgal"), ("hematoxylin", "dab", "xgal")],
)  # fmt: skip
def test_deconvolve_recovers_mixture(names):
    stains = StainSet.from_names(names)
    conc = np.array([0.3, 0.6, 0.2][: len(names)], np.float32)
    od = conc @ stains.vectors
    rgb = od_to_rgb(od[None, None, :].astype(np.float32), 240.0)
    got = deconvolve(rgb, stains, 240.0)[0, 0]
    np.testing.assert_allclose(got, conc, atol=0.02)
    assert residual_od(rgb, stains, 240.0)[0, 0] < 0.02


def test_unknown_stain_error_lists_known():
    with pytest.raises(ValueError, match="hematoxylin"):
        StainSet.from_names(["hematoxylin", "indigo_carmine"])


def test_stain_vectors_are_distinct():
    names = list(REFERENCE_STAINS)
    v = StainSet.from_names(names).vectors
    cos = v @ v.T
    off = cos[~np.eye(len(names), dtype=bool)]
    assert off.max() < 0.99  # no two stains are the same colour


def test_estimate_background_bounds():
    rgb = np.full((10, 10, 3), 236, np.uint8)
    np.testing.assert_allclose(estimate_background(rgb), 236)
    dark = np.full((10, 10, 3), 90, np.uint8)
    assert estimate_background(dark).min() == 200.0  # no glass in view: bounded, not absurd
