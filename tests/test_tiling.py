"""Tests for senpath.tiling: grid, halo rule, conflicts and the stardist-style round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from senpath.tiling import (
    Box,
    HaloTooSmallError,
    Instance,
    LabelWriter,
    Tile,
    default_halo,
    keep_owned,
    paste,
    segment_tiled,
    tile_grid,
)


def blobs(
    shape: tuple[int, int], *, seed: int, max_radius: int = 6, spacing: int = 16
) -> np.ndarray:
    """Dark discs on white (RGB uint8), on a jittered grid so discs may touch but stay small."""
    rng = np.random.default_rng(seed)
    img = np.full((*shape, 3), 240, dtype=np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy in range(spacing // 2, shape[0], spacing):
        for cx in range(spacing // 2, shape[1], spacing):
            if rng.random() < 0.3:
                continue
            r = rng.integers(2, max_radius + 1)
            y, x = cy + rng.integers(-3, 4), cx + rng.integers(-3, 4)
            img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = (80, 60, 120)
    return img


def threshold_segment(rgb: np.ndarray) -> np.ndarray:
    """Deterministic segmenter: dark pixels, 4-connected components."""
    labels, _ = ndimage.label(rgb.min(axis=-1) < 128)
    return labels.astype(np.int32)


def assert_same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """``a`` and ``b`` label the same objects, up to relabelling (a bijection of non-zero ids)."""
    np.testing.assert_array_equal(a == 0, b == 0)
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "one id of a maps to several ids of b"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "one id of b maps to several ids of a"


def test_default_halo_from_nucleus_size_in_um() -> None:
    assert default_halo(0.5) == 60  # 2 x 15 µm at 0.5 µm/px
    assert default_halo(0.25, max_nucleus_um=10) == 80
    with pytest.raises(ValueError, match="mpp"):
        default_halo(0)


def test_grid_cores_partition_the_image_and_boxes_clip() -> None:
    tiles = tile_grid((100, 130, 3), tile_size=40, halo=10)
    assert [(t.row, t.col) for t in tiles][:5] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert len(tiles) == 3 * 4
    cover = np.zeros((100, 130), dtype=int)
    for t in tiles:
        cover[t.core.slices] += 1
    assert (cover == 1).all()
    first, last = tiles[0], tiles[-1]
    assert first.core == Box(0, 0, 40, 40) and first.box == Box(0, 0, 50, 50)
    assert last.core == Box(80, 120, 100, 130) and last.box == Box(70, 110, 100, 130)
    assert tiles[5].box == Box(30, 30, 90, 90)
    assert tiles[5].core_in_box == (slice(10, 50), slice(10, 50))
    assert tile_grid((10, 10), tile_size=(4, 5), halo=0)[1].core == Box(0, 5, 4, 10)


def test_grid_skips_tiles_without_tissue() -> None:
    mask = np.zeros((10, 13), dtype=bool)  # 10 image px per mask px
    mask[0:2, 0:2] = True  # tissue in the top-left 20 x 20 px
    tiles = tile_grid((100, 130), tile_size=40, halo=10, mask=mask)
    assert [(t.row, t.col) for t in tiles] == [(0, 0)]
    # one mask pixel of slack: tissue just past a core's edge keeps the neighbour
    mask[:] = False
    mask[4, 0] = True  # image rows 40-50
    rows = {t.row for t in tile_grid((100, 130), tile_size=40, halo=10, mask=mask, mask_scale=10)}
    assert rows == {0, 1}
    assert tile_grid((100, 130), tile_size=40, halo=10, mask=np.zeros((10, 13), bool)) == []


@pytest.mark.parametrize(("tile_size", "halo"), [(0, 5), (10, -1)])
def test_grid_rejects_bad_parameters(tile_size: int, halo: int) -> None:
    with pytest.raises(ValueError, match="tile_size|halo"):
        tile_grid((50, 50), tile_size=tile_size, halo=halo)


def test_keep_owned_uses_the_centroid() -> None:
    tile = Tile(0, 0, core=Box(10, 10, 20, 20), box=Box(0, 0, 30, 30))
    labels = np.zeros((30, 30), dtype=np.int32)
    labels[12:15, 12:15] = 1  # centroid (13, 13): owned
    labels[18:23, 8:11] = 2  # centroid (20, 9): in the neighbour's core
    labels[17:20, 17:22] = 3  # centroid (18, 19): owned, extends into the halo
    owned = keep_owned(labels, tile, image_shape=(30, 30))
    assert [i.local_label for i in owned] == [1, 3]
    assert owned[1].bbox == Box(17, 17, 20, 22)
    assert owned[1].mask.all() and owned[1].mask.shape == (3, 5)


def test_object_on_a_core_boundary_has_exactly_one_owner() -> None:
    image = np.zeros((40, 40), dtype=np.int32)
    image[18:22, 10:14] = 1  # centroid y = 19.5: core rows 0-20 own it (19.5 < 20)
    image[20:24, 30:34] = 2  # centroid y = 21.5: core rows 20-40 own it
    image[19:21, 20:22] = 3  # centroid y = 19.5, x = 20.5
    tiles = tile_grid(image.shape, tile_size=20, halo=8)
    owners: dict[int, list[tuple[int, int]]] = {}
    for tile in tiles:
        for inst in keep_owned(image[tile.box.slices], tile, image_shape=image.shape):
            owners.setdefault(inst.local_label, []).append((tile.row, tile.col))
    assert owners == {1: [(0, 0)], 2: [(1, 1)], 3: [(0, 1)]}


@pytest.mark.parametrize("tile_size", [24, 37, 64, 100])
@pytest.mark.parametrize("halo", [14, 20])
def test_round_trip_equals_whole_image(tile_size: int, halo: int) -> None:
    image = blobs((150, 170), seed=tile_size + halo)
    whole = threshold_segment(image)
    tiled = segment_tiled(image, threshold_segment, tile_size=tile_size, halo=halo)
    assert tiled.dtype == np.int32
    assert tiled.max() == whole.max()  # same number of objects, ids 1..N
    assert_same_partition(tiled, whole)


def test_threads_do_not_change_the_result() -> None:
    image = blobs((160, 160), seed=11)
    serial = segment_tiled(image, threshold_segment, tile_size=40, halo=16)
    threaded = segment_tiled(image, threshold_segment, tile_size=40, halo=16, workers=3)
    np.testing.assert_array_equal(serial, threaded)  # same ids, not only the same partition


def test_round_trip_with_dask_input_and_zarr_output() -> None:
    import dask.array as da
    import zarr

    image = blobs((120, 140), seed=7)
    whole = threshold_segment(image)
    out = zarr.create_array(
        store={}, shape=(120, 140), chunks=(32, 32), dtype="int32", fill_value=0
    )
    result = segment_tiled(
        da.from_array(image, chunks=(50, 50, 3)), threshold_segment, tile_size=48, halo=16, out=out
    )
    assert result is out
    assert_same_partition(np.asarray(out[:]), whole)


def test_mask_limits_segmentation_to_tissue_tiles() -> None:
    image = blobs((128, 128), seed=8)
    mask = np.zeros((4, 4), dtype=bool)  # 32 px per mask pixel
    mask[0, 0] = True
    labels = segment_tiled(image, threshold_segment, tile_size=64, halo=16, mask=mask)
    assert labels[:64, :64].max() > 0
    assert labels[80:, 80:].max() == 0  # only tile (0, 0) and its one-pixel slack was run


def test_halo_smaller_than_an_object_says_what_to_change() -> None:
    image = np.full((80, 80, 3), 240, dtype=np.uint8)
    image[20:60, 30:50] = 0  # a 40-px object crossing the core edge at 40
    with pytest.raises(HaloTooSmallError, match=r"raise halo \(now 8 px\).*at least 28 px"):
        segment_tiled(image, threshold_segment, tile_size=40, halo=8)
    with pytest.warns(UserWarning, match="raise halo"):
        segment_tiled(image, threshold_segment, tile_size=40, halo=8, on_truncated="warn")
    ok = segment_tiled(image, threshold_segment, tile_size=40, halo=45)
    assert_same_partition(ok, threshold_segment(image))


def test_first_writer_wins_on_overlap() -> None:
    out = np.zeros((10, 10), dtype=np.int32)
    a = Instance(Box(0, 0, 4, 4), np.ones((4, 4), bool), 1)
    b = Instance(Box(2, 2, 6, 6), np.ones((4, 4), bool), 1)  # overlaps a on [2:4, 2:4]
    c = Instance(Box(1, 1, 3, 3), np.ones((2, 2), bool), 2)  # entirely under a: no id
    next_id = paste(out, [a], next_id=1)
    next_id = paste(out, [b, c], next_id=next_id)
    assert next_id == 3
    assert (out[0:4, 0:4] == 1).all()
    assert (out[4:6, 2:6] == 2).all() and (out[2:4, 4:6] == 2).all()
    assert set(np.unique(out)) == {0, 1, 2}


def test_label_writer_counts_ids() -> None:
    out = np.zeros((6, 6), dtype=np.int32)
    writer = LabelWriter(out)
    assert writer.add([Instance(Box(0, 0, 2, 2), np.ones((2, 2), bool), 5)]) == 1
    assert writer.add([]) == 0
    assert writer.add([Instance(Box(3, 3, 5, 5), np.array([[1, 0], [1, 1]], bool), 1)]) == 1
    assert writer.count == 2
    assert out[4, 3] == 2 and out[3, 4] == 0


def test_segment_fn_with_wrong_output_shape_is_explained() -> None:
    image = blobs((40, 40), seed=9)
    with pytest.raises(ValueError, match="one label per input pixel"):
        segment_tiled(image, lambda rgb: np.zeros((3, 3), np.int32), tile_size=20, halo=5)
    with pytest.raises(ValueError, match="integer"):
        segment_tiled(image, lambda rgb: np.zeros(rgb.shape[:2], np.float32), tile_size=20, halo=5)
