"""Tests for senpath.tissue on small seeded synthetic brightfield images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import senpath.tissue
from senpath.io import open_slide
from senpath.synth import SynthParams, write_slide
from senpath.tissue import downsample_level, tissue_mask, tissue_mask_from_rgb

GLASS = (246, 244, 247)  # typical scanner glass (CMU-1: ~247)
DARK_TISSUE = (150, 90, 170)  # hematoxylin-rich (OD ~0.2-0.4)
PALE_TISSUE = (230, 212, 224)  # pale stroma, only ~0.06 OD above glass


def _slide_rgb(
    shape: tuple[int, int], *, seed: int, tissue: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Glass with noise; a dark disc and a pale rectangle of tissue. Returns (rgb, truth mask)."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((*shape, 3), dtype=np.float32)
    rgb[:] = GLASS
    truth = np.zeros(shape, dtype=bool)
    if tissue:
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        disc = (yy - shape[0] * 0.4) ** 2 + (xx - shape[1] * 0.3) ** 2 < (shape[0] * 0.2) ** 2
        pale = (
            (yy > shape[0] * 0.55)
            & (yy < shape[0] * 0.85)
            & (xx > shape[1] * 0.5)
            & (xx < shape[1] * 0.9)
        )
        rgb[disc] = DARK_TISSUE
        rgb[pale] = PALE_TISSUE
        truth = disc | pale
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


def test_detects_dark_and_pale_tissue() -> None:
    rgb, truth = _slide_rgb((200, 300), seed=0)
    tm = tissue_mask_from_rgb(rgb, mpp=8.0)
    assert tm.mask.shape == truth.shape and tm.mask.dtype == bool
    agreement = (tm.mask == truth).mean()
    assert agreement > 0.98
    assert tm.fraction == pytest.approx(truth.mean(), abs=0.02)
    assert tm.area_um2 == pytest.approx(tm.mask.sum() * 64.0)
    assert not tm.is_empty


def test_blank_slide_is_empty() -> None:
    rgb, _ = _slide_rgb((120, 160), seed=1, tissue=False)
    tm = tissue_mask_from_rgb(rgb, mpp=8.0)
    assert tm.is_empty and tm.fraction == 0.0 and tm.area_um2 == 0.0
    white = np.full((50, 50, 3), 255, dtype=np.uint8)
    assert tissue_mask_from_rgb(white, mpp=8.0).fraction == 0.0


def test_small_specks_are_dropped_by_area_in_um2() -> None:
    rgb, _ = _slide_rgb((100, 100), seed=2, tissue=False)
    rgb[10:13, 10:13] = DARK_TISSUE  # 3x3 px at 8 µm/px = 576 µm², dust
    rgb[50:80, 50:80] = DARK_TISSUE  # 900 px = 57,600 µm²
    tm = tissue_mask_from_rgb(rgb, mpp=8.0, min_area_um2=20_000)
    assert not tm.mask[10:13, 10:13].any()
    assert tm.mask[51:79, 51:79].all() and tm.mask.sum() >= 900 - 4  # median filter rounds corners
    kept = tissue_mask_from_rgb(rgb, mpp=8.0, min_area_um2=100)
    assert kept.mask[11, 11]


def test_a_small_field_full_of_tissue_is_not_dust(tmp_path: Path) -> None:
    # a 512² px photo at 0.25 µm/px is a 128 µm field (16,384 µm²): below the 20,000 µm² dust size
    rng = np.random.default_rng(7)
    rgb = np.clip(rng.normal(DARK_TISSUE, 12, (512, 512, 3)), 0, 255).astype(np.uint8)
    rgb[:40, :40] = GLASS  # a little glass in a corner
    tifffile.imwrite(tmp_path / "field.tif", rgb)
    tm = tissue_mask(open_slide(tmp_path / "field.tif", mpp=0.25))
    assert tm.fraction > 0.9
    # specks of a few µm² in such a field are still dust (the cap is a share of the field)
    rgb, _ = _slide_rgb((64, 64), seed=8, tissue=False)
    rgb[5:7, 5:7] = DARK_TISSUE  # 4 px at 2 µm/px = 16 µm² in a 16,384 µm² field
    assert tissue_mask_from_rgb(rgb, mpp=2.0).is_empty


def test_black_padding_is_not_tissue() -> None:
    rgb, _ = _slide_rgb((100, 100), seed=3, tissue=False)
    rgb[:, :20] = 0  # scanner padding outside the scanned area
    assert tissue_mask_from_rgb(rgb, mpp=8.0).is_empty


def test_fixed_threshold_is_used() -> None:
    rgb, _ = _slide_rgb((100, 100), seed=4)
    tm = tissue_mask_from_rgb(rgb, mpp=8.0, threshold_od=0.2)
    assert tm.threshold_od == 0.2
    # pale tissue (OD < 0.2) is excluded with that threshold
    assert tm.fraction < tissue_mask_from_rgb(rgb, mpp=8.0).fraction


def test_downsample_level_matches_whole_image_resize() -> None:
    import cv2
    import dask.array as da

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (256, 384, 3), dtype=np.uint8)
    lazy = da.from_array(img, chunks=(128, 128, 3))
    small = downsample_level(lazy, 8)
    expected = cv2.resize(img, (48, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small, expected)
    np.testing.assert_array_equal(downsample_level(lazy, 1), img)


def test_tissue_mask_on_a_slide_reads_a_coarse_level(tmp_path: Path) -> None:
    rgb, truth = _slide_rgb((512, 768), seed=6)
    path = tmp_path / "tissue.tif"
    with tifffile.TiffWriter(path) as tw:
        res = {"resolution": (1e4 / 1.0, 1e4 / 1.0), "resolutionunit": "CENTIMETER"}
        tw.write(rgb, tile=(128, 128), photometric="rgb", subifds=1, **res)
        tw.write(rgb[::4, ::4].copy(), tile=(128, 128), photometric="rgb", subfiletype=1)
    slide = open_slide(path)  # level 0 at 1 µm/px, level 1 at 4 µm/px
    tm = tissue_mask(slide, target_mpp=8.0, min_area_um2=1000)
    assert tm.mpp == pytest.approx(8.0)
    assert tm.mask.shape == (64, 96)
    coarse_truth = truth[4::8, 4::8]
    assert (tm.mask == coarse_truth).mean() > 0.95
    with pytest.raises(ValueError, match="target_mpp"):
        tissue_mask(slide, target_mpp=0)
    # a pixel budget makes the mask coarser (memory independent of slide size)
    coarse = tissue_mask(slide, target_mpp=8.0, max_pixels=1000, min_area_um2=1000)
    # sqrt(512 * 768 / 1000) = 19.8 µm/px: level 1 (4 µm/px) averaged by 5
    assert coarse.mpp == pytest.approx(20.0, rel=0.05)
    assert coarse.mask.size <= 1000 * 1.1
    assert coarse.fraction == pytest.approx(tm.fraction, abs=0.05)


@pytest.mark.parametrize("tissue_fraction", [0.95, 0.0])
def test_crop_without_glass_keeps_pale_tissue(tmp_path: Path, tissue_fraction: float) -> None:
    # A crop inside tissue has no glass: its 2nd OD percentile is pale tissue, and a glass level
    # taken from it put the threshold mid-tissue (0.30 of this slide); MAX_GLASS_OD caps it.
    path = tmp_path / "crop.tif"
    write_slide(
        path,
        assay="ki67",
        shape=(1024, 1024),
        params=SynthParams(tissue_fraction=tissue_fraction),
        seed=3,
        write_labels=False,
    )
    tm = tissue_mask(open_slide(path))
    if tissue_fraction:
        assert tm.fraction > 0.9
    else:
        assert tm.is_empty and tm.fraction == 0.0


def test_strips_give_the_whole_image_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # gaps, holes and specks of every size around strip boundaries (8-row strips below)
    rng = np.random.default_rng(7)
    rgb, _ = _slide_rgb((300, 200), seed=7)
    for _ in range(60):
        y, x = rng.integers(0, 290), rng.integers(0, 190)
        h, w = rng.integers(1, 10, 2)
        rgb[y : y + h, x : x + w] = GLASS if rng.random() < 0.5 else DARK_TISSUE
    options = {"mpp": 8.0, "min_area_um2": 3_000.0, "min_hole_um2": 2_000.0, "closing_um": 40.0}
    whole = tissue_mask_from_rgb(rgb, **options)
    monkeypatch.setattr(senpath.tissue, "STRIP_ROWS", 8)
    strips = tissue_mask_from_rgb(rgb, **options)
    assert strips.threshold_od == whole.threshold_od
    np.testing.assert_array_equal(strips.mask, whole.mask)


def test_filter_in_strips_sees_original_neighbours() -> None:
    image = np.arange(40, dtype=np.uint8).reshape(20, 2)

    def shift_up(block: np.ndarray) -> np.ndarray:  # each row takes the next row's values
        return np.concatenate([block[1:], block[-1:]])

    expected = shift_up(image.copy())
    senpath.tissue._filter_in_strips(image, shift_up, margin=1, rows=3)
    np.testing.assert_array_equal(image, expected)


def test_histogram_counts_in_chunks() -> None:
    image = np.random.default_rng(8).integers(0, 256, (37, 29), dtype=np.uint8)
    hist = senpath.tissue._histogram(image, chunk=100)
    np.testing.assert_array_equal(hist, np.bincount(image.ravel(), minlength=256))


@pytest.mark.shared_data
def test_real_svs_has_tissue(shared_data: Path) -> None:
    slide = open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    tm = tissue_mask(slide)
    assert 7.5 <= tm.mpp < 16.0  # 16x area-average of 0.499 µm/px (edge chunks round up)
    # the H&E section covers roughly a third of this crop (visually checked); glass corner is empty
    assert 0.2 < tm.fraction < 0.6
    assert not tm.mask[:10, :10].any()
