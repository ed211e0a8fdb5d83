"""The faster colour deconvolution (issue 18) gives the bits of the code it replaced: optical
density by a per-level table instead of a log per pixel, and the stain projection with numpy's
BLAS on one thread (``senpath._blas.serial_blas``)."""

import threading

import numpy as np
import pytest

from senpath._blas import serial_blas
from senpath.stain import (
    MIN_INTENSITY,
    REFERENCE_STAINS,
    StainSet,
    deconvolve,
    residual_od,
    rgb_to_od,
    unexplained_od,
)


def _old_rgb_to_od(rgb, i0):
    """rgb_to_od before issue 18's table: a float32 log per pixel."""
    i0_arr = np.asarray(i0, dtype=np.float32).reshape((1,) * (rgb.ndim - 1) + (-1,))
    od = -np.log10(np.maximum(rgb.astype(np.float32), MIN_INTENSITY) / i0_arr)
    return np.maximum(od, 0.0, out=od)


def _old_deconvolve(rgb, stains, i0):
    od = _old_rgb_to_od(rgb, i0)
    conc = od.reshape(-1, 3) @ np.linalg.pinv(stains.vectors).astype(np.float32)
    np.maximum(conc, 0.0, out=conc)
    return conc.reshape(od.shape[:-1] + (len(stains.names),))


@pytest.fixture(scope="module")
def tile():
    """A 256² synthetic Ki67 tile (stain vectors perturbed from the presets) with every uint8
    level in every channel in its first rows."""
    from senpath.synth import SynthParams, render_region

    perturbed = (
        ("hematoxylin", tuple(np.add(REFERENCE_STAINS["hematoxylin"], (0.04, -0.03, 0.02)))),
        ("dab", tuple(np.add(REFERENCE_STAINS["dab"], (-0.03, 0.02, 0.04)))),
    )
    region = render_region(
        "ki67", shape=(256, 256), seed=7,
        params=SynthParams(tissue_fraction=0.9, stain_vectors=perturbed),
    )  # fmt: skip
    rgb = region.rgb.copy()
    rgb[0, :, 0] = np.arange(256)
    rgb[1, :, 1] = np.arange(256)[::-1]
    rgb[2, :, 2] = np.roll(np.arange(256), 77)
    return rgb


@pytest.mark.parametrize(
    "i0", [240.0, 255, (236.5, 244.0, 251.25), np.array([250.0, 230.0, 241.0])]
)
def test_rgb_to_od_table_equals_the_log_per_pixel(tile, i0):
    np.testing.assert_array_equal(rgb_to_od(tile, i0), _old_rgb_to_od(tile, i0))
    # other shapes: a batch of tiles, a pixel list, an empty image
    batch = np.stack([tile, tile[::-1]])
    np.testing.assert_array_equal(rgb_to_od(batch, i0), _old_rgb_to_od(batch, i0))
    pixels = tile.reshape(-1, 3)[::7]
    np.testing.assert_array_equal(rgb_to_od(pixels, i0), _old_rgb_to_od(pixels, i0))
    assert rgb_to_od(tile[:0], i0).shape == (0, 256, 3)
    # non-contiguous input and non-uint8 input (the per-pixel path)
    view = tile[:, ::2]
    np.testing.assert_array_equal(rgb_to_od(view, i0), _old_rgb_to_od(view, i0))
    as_float = tile.astype(np.float32) + 0.25
    np.testing.assert_array_equal(rgb_to_od(as_float, i0), _old_rgb_to_od(as_float, i0))


@pytest.mark.parametrize("names", [("hematoxylin", "dab"), ("hematoxylin", "eosin", "dab")])
def test_deconvolve_equals_the_old_code_bit_for_bit(tile, names):
    stains = StainSet.from_names(names)
    i0 = (238.0, 243.0, 249.0)
    new = deconvolve(tile, stains, i0)
    assert new.dtype == np.float32 and new.shape == (256, 256, len(names))
    np.testing.assert_array_equal(new, _old_deconvolve(tile, stains, i0))
    # the residual helpers keep working on the same pixels
    assert residual_od(tile, stains, i0).shape == (256, 256)
    assert np.isfinite(unexplained_od(rgb_to_od(tile, i0), stains)).all()


def _blas_threads():
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_serial_blas_limits_and_restores_only_when_the_last_caller_leaves():
    before = _blas_threads()
    if not before:
        pytest.skip("numpy's BLAS is not one threadpoolctl can see")
    one = [1] * len(before)
    seen: list[list[int]] = []
    inside, leave = threading.Event(), threading.Event()

    def worker():
        with serial_blas():
            inside.set()
            leave.wait(timeout=10)

    with serial_blas():
        assert _blas_threads() == one
        t = threading.Thread(target=worker)
        t.start()
        assert inside.wait(timeout=10)
        leave.set()
        t.join(timeout=10)
        seen.append(_blas_threads())  # the worker left first: still limited for this caller
        with serial_blas():  # nested
            assert _blas_threads() == one
        assert _blas_threads() == one
    assert seen == [one]
    assert _blas_threads() == before
    with pytest.raises(RuntimeError), serial_blas():
        raise RuntimeError("a failing block")
    assert _blas_threads() == before
