"""Tests for senpath.tiling and the tile engine a run uses: grid, halo rule, ownership, pasting, and
the stardist-style round trip (a slide cut into tiles of any size, analysed and stitched by the
production engine, gives the labels and cells of the whole image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from senpath.config import AnalysisConfig, ConfigError, get_assay
from senpath.labels import load_labels
from senpath.results import CELLS
from senpath.slide_analysis import commit_slide
from senpath.slide_plan import plan_slide
from senpath.tile_engine import analyze_tile, analyze_tiles
from senpath.tiling import (
    Box,
    HaloTooSmallError,
    Instance,
    Tile,
    halo_px,
    keep_owned,
    min_halo_um,
    paste,
    tile_grid,
)

MPP = 0.5
#: Pink stroma (every pixel is tissue for the tissue mask) and dark purple nuclei.
STROMA, NUCLEUS = (215, 160, 200), (80, 60, 120)


def blobs(
    shape: tuple[int, int], *, seed: int, max_radius: int = 6, spacing: int = 16
) -> np.ndarray:
    """Dark discs on stroma (RGB uint8), on a jittered grid so discs may touch but stay small."""
    rng = np.random.default_rng(seed)
    img = np.empty((*shape, 3), dtype=np.uint8)
    img[:] = STROMA
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy in range(spacing // 2, shape[0], spacing):
        for cx in range(spacing // 2, shape[1], spacing):
            if rng.random() < 0.3:
                continue
            r = rng.integers(2, max_radius + 1)
            y, x = cy + rng.integers(-3, 4), cx + rng.integers(-3, 4)
            img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = NUCLEUS
    return img


def threshold_labels(rgb: np.ndarray) -> np.ndarray:
    """Dark pixels, 4-connected components: a segmentation that does not depend on the tiling."""
    labels, _ = ndimage.label(rgb.min(axis=-1) < 128)
    return labels.astype(np.int32)


class ThresholdSegmenter:
    """A :class:`senpath.segment.Segmenter` that thresholds dark pixels (deterministic, local)."""

    method = "threshold"

    def segment(
        self, rgb: np.ndarray, *, mpp: float, concentrations: np.ndarray | None = None
    ) -> np.ndarray:
        return threshold_labels(rgb)


def assert_same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """``a`` and ``b`` label the same objects, up to relabelling (a bijection of non-zero ids)."""
    np.testing.assert_array_equal(a == 0, b == 0)
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "one id of a maps to several ids of b"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "one id of b maps to several ids of a"


# --------------------------------------------------------------------------- halo rule


def test_one_halo_rule_in_um() -> None:
    assert min_halo_um(400.0) == pytest.approx(22.568, abs=1e-3)  # a 400 µm² disc's diameter
    assert halo_px(24.0, 0.5) == 48 and halo_px(24.1, 0.5) == 49 and halo_px(0.1, 0.5) == 1
    with pytest.raises(ValueError, match="mpp"):
        halo_px(24.0, 0)


def test_config_halo_is_checked_against_the_diameter_and_says_so() -> None:
    # 20 µm is more than the 11.3 µm radius of a 400 µm² nucleus (what the check once compared)
    # but less than its 22.6 µm diameter (what its message said): now refused
    with pytest.raises(ConfigError, match=r"halo_um \(20 µm\).*diameter, 22\.6 µm"):
        AnalysisConfig(halo_um=20.0)
    assert AnalysisConfig(halo_um=12.0, max_nucleus_area_um2=100.0).halo_um == 12.0  # 11.3 µm
    assert AnalysisConfig().halo_um >= min_halo_um(AnalysisConfig().max_nucleus_area_um2)


def test_the_network_context_is_the_same_rule_in_um() -> None:
    from senpath.segment.predict import NETWORK_HALO_UM
    from senpath.segment.resample import NETWORK_MPP

    assert halo_px(NETWORK_HALO_UM, NETWORK_MPP) == 32  # the px the shipped model was tuned with


# --------------------------------------------------------------------------- grid and ownership


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


def test_halo_smaller_than_an_object_says_what_to_change() -> None:
    labels = np.zeros((80, 80), np.int32)
    labels[20:60, 30:50] = 1  # a 40-px object crossing the core edge at 40
    tile = tile_grid(labels.shape, tile_size=40, halo=8)[0]
    crop = labels[tile.box.slices]
    with pytest.raises(HaloTooSmallError, match=r"raise halo \(now 8 px\).*at least 28 px"):
        keep_owned(crop, tile, image_shape=labels.shape)
    with pytest.warns(UserWarning, match="larger halo_um"):
        keep_owned(crop, tile, image_shape=labels.shape, on_truncated="warn")
    assert len(keep_owned(crop, tile, image_shape=labels.shape, on_truncated="keep")) == 1


# --------------------------------------------------------------------------- pasting


def test_first_writer_wins_on_overlap_and_ids_are_returned() -> None:
    out = np.zeros((10, 10), dtype=np.int32)
    a = Instance(Box(0, 0, 4, 4), np.ones((4, 4), bool), 1)
    b = Instance(Box(2, 2, 6, 6), np.ones((4, 4), bool), 1)  # overlaps a on [2:4, 2:4]
    c = Instance(Box(1, 1, 3, 3), np.ones((2, 2), bool), 2)  # entirely under a: no id
    assert paste(out, [a], next_id=1).tolist() == [1]
    assert paste(out, [c, b], next_id=2).tolist() == [0, 2]
    assert (out[0:4, 0:4] == 1).all()
    assert (out[4:6, 2:6] == 2).all() and (out[2:4, 4:6] == 2).all()
    assert set(np.unique(out)) == {0, 1, 2}
    assert paste(out, [], next_id=3).tolist() == []


def test_paste_into_a_window_of_the_image() -> None:
    window = np.zeros((4, 5), dtype=np.int32)  # image rows 10-14, columns 20-25
    inst = Instance(Box(11, 21, 13, 23), np.array([[1, 0], [1, 1]], bool), 7)
    assert paste(window, [inst], next_id=5, origin=(10, 20)).tolist() == [5]
    expected = np.zeros((4, 5), np.int32)
    expected[1:3, 1:3] = [[5, 0], [5, 5]]
    np.testing.assert_array_equal(window, expected)


# --------------------------------------------------------------------------- the engine


def _tile(rgb: np.ndarray) -> Tile:
    whole = Box(0, 0, *rgb.shape[:2])
    return Tile(0, 0, core=whole, box=whole)


def test_engine_explains_a_segmenter_with_the_wrong_output() -> None:
    rgb = blobs((40, 40), seed=9)
    stains = get_assay("he")
    from senpath.stain import StainSet

    kwargs = dict(
        stains=StainSet.from_names(stains.stains),
        i0=240.0,
        mpp=MPP,
        config=AnalysisConfig(),
        image_shape=(40, 40),
    )

    class WrongShape(ThresholdSegmenter):
        def segment(self, rgb, *, mpp, concentrations=None):  # type: ignore[no-untyped-def]
            return np.zeros((3, 3), np.int32)

    class Floats(ThresholdSegmenter):
        def segment(self, rgb, *, mpp, concentrations=None):  # type: ignore[no-untyped-def]
            return np.zeros(rgb.shape[:2], np.float32)

    with pytest.raises(ValueError, match="one label per input pixel"):
        analyze_tile(rgb, _tile(rgb), segmenter=WrongShape(), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer"):
        analyze_tile(rgb, _tile(rgb), segmenter=Floats(), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="segmenter, or the tile's labels"):
        analyze_tile(rgb, _tile(rgb), segmenter=None, **kwargs)  # type: ignore[arg-type]


def _stored_run(path: Path, out: Path, *, tile_size_um: float) -> tuple[np.ndarray, pd.DataFrame]:
    """Plan, tile engine and commit, as ``analyze_slide`` runs them, with the threshold segmenter."""
    config = AnalysisConfig(
        segmenter="classical", stain_vectors="preset", tile_size_um=tile_size_um
    )
    plan = plan_slide(path, assay=get_assay("he"), config=config, mpp=MPP)
    results = analyze_tiles(plan, range(plan.n_tiles), segmenter=ThresholdSegmenter())
    folder = commit_slide(plan, results, out=out)
    return np.asarray(load_labels(folder).compute()), pd.read_parquet(folder / CELLS)


def test_round_trip_labels_and_cells_identical_across_tile_sizes(tmp_path: Path) -> None:
    """stardist's tiling test on the production engine: tiles of 64, 90, 150 px and one tile for
    the whole image (all with the default 24 µm halo) give the labels of the whole image and the
    same cells, measured the same (to float rounding)."""
    import tifffile

    image = blobs((300, 340), seed=5)
    path = tmp_path / "blobs.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    whole = threshold_labels(image)
    area_um2 = np.bincount(whole.ravel()) * MPP**2
    config = AnalysisConfig()
    kept = (area_um2 >= config.min_nucleus_area_um2) & (area_um2 <= config.max_nucleus_area_um2)
    kept[0] = False
    expected = np.where(kept[whole], whole, 0)
    assert kept.sum() > 150  # hundreds of nuclei, many on tile edges

    tables = {}
    for tile_size_um in (32.0, 45.0, 75.0, 512.0):
        labels, cells = _stored_run(path, tmp_path / str(tile_size_um), tile_size_um=tile_size_um)
        assert_same_partition(labels, expected)
        assert labels.max() == kept.sum() == len(cells)  # ids 1..N, one row each
        np.testing.assert_array_equal(np.unique(labels[labels > 0]), np.sort(cells["cell_id"]))
        tables[tile_size_um] = (
            cells.drop(columns=["cell_id", "tile_label"])
            .sort_values(["y_um", "x_um"])
            .reset_index(drop=True)
        )
    reference = tables.pop(512.0)  # one tile: the whole image in one piece
    for table in tables.values():
        pd.testing.assert_frame_equal(table, reference, check_exact=False, rtol=1e-6)
        # the same pixels whatever the tile: areas exact, centroids to float rounding (each tile
        # measures in its own frame, then adds its origin)
        np.testing.assert_array_equal(table["nucleus_area_um2"], reference["nucleus_area_um2"])
        np.testing.assert_allclose(table[["x_um", "y_um"]], reference[["x_um", "y_um"]], atol=1e-9)
