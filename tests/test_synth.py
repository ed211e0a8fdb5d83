"""Tests of the synthetic slide generator (senpath.synth): small seeded renders, checked against truth."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import tifffile
import zarr

from senpath import synth
from senpath.stain import StainSet, deconvolve

#: Everything tissue, no JPEG: exact comparisons are possible.
EXACT = synth.SynthParams(tissue_fraction=1.0, jpeg_quality=None)
TISSUE = synth.SynthParams(tissue_fraction=1.0)
I0 = np.asarray(synth.SynthParams().background_rgb)


def interior_ids(labels: np.ndarray) -> np.ndarray:
    """Ids of nuclei that do not touch the region border."""
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    ids = np.unique(labels)
    return ids[(ids > 0) & ~np.isin(ids, border)]


def compartment_means(region: synth.SynthRegion, values: np.ndarray, marker: str) -> np.ndarray:
    """Mean of ``values`` per truth row in the marker's compartment, as a pipeline would measure it.

    Ki67: nucleus; SA-beta-gal: a 4-pixel (2 µm) ring around the nucleus; p16: nucleus plus ring.
    """
    labels = region.labels
    ring = ndi.grey_dilation(labels, size=(9, 9))
    ring[labels > 0] = 0
    compartment = {"ki67": labels, "sabgal": ring, "p16": np.where(labels > 0, labels, ring)}[
        marker
    ]
    return np.asarray(ndi.mean(values, compartment, region.truth.cell_id.to_numpy()))


@pytest.fixture(scope="module")
def regions() -> dict[str, synth.SynthRegion]:
    return {
        assay: synth.render_region(assay, shape=(600, 600), seed=3, params=TISSUE)
        for assay in synth.ASSAYS
    }


def test_public_constants() -> None:
    assert synth.ASSAYS == ("ki67", "p16", "sabgal", "sabgal-eosin", "sabgal+ki67", "p16+ki67")
    assert synth.MARKER_LEVEL_OD == {0: 0.0, 1: 0.25, 2: 0.52, 3: 0.95}
    assert set(synth.ASSAY_STAINS) == set(synth.ASSAYS)
    assert "hematoxylin" not in synth.ASSAY_STAINS["sabgal-eosin"]  # nuclei shown by dense eosin


def test_same_seed_identical_other_seed_differs() -> None:
    a = synth.render_region("ki67", shape=(200, 300), seed=5, origin_um=(40.0, 60.0), params=TISSUE)
    b = synth.render_region("ki67", shape=(200, 300), seed=5, origin_um=(40.0, 60.0), params=TISSUE)
    c = synth.render_region("ki67", shape=(200, 300), seed=6, origin_um=(40.0, 60.0), params=TISSUE)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert (a.rgb != c.rgb).mean() > 0.5
    assert not np.array_equal(a.labels, c.labels)
    assert len(a.truth) > 10


@pytest.mark.parametrize("mpp", [0.5, 4.0])
def test_subregion_is_crop_of_larger_render(mpp: float) -> None:
    big = synth.render_region("sabgal+ki67", shape=(300, 340), mpp=mpp, seed=1, params=EXACT)
    dy, dx = 37, 113  # not a multiple of any internal tile or block
    sub = synth.render_region(
        "sabgal+ki67",
        shape=(150, 170),
        mpp=mpp,
        origin_um=(dy * mpp, dx * mpp),
        seed=1,
        params=EXACT,
    )
    np.testing.assert_array_equal(sub.rgb, big.rgb[dy : dy + 150, dx : dx + 170])
    np.testing.assert_array_equal(sub.labels, big.labels[dy : dy + 150, dx : dx + 170])
    assert set(sub.truth.cell_id) <= set(big.truth.cell_id)
    both = big.truth.set_index("cell_id").loc[sub.truth.cell_id].reset_index()
    pd.testing.assert_frame_equal(both, sub.truth)


@pytest.mark.parametrize("assay", synth.ASSAYS)
def test_truth_columns_and_label_ids(assay: str, regions: dict[str, synth.SynthRegion]) -> None:
    region = regions[assay]
    markers = {
        "ki67": ["ki67"],
        "p16": ["p16"],
        "sabgal": ["sabgal"],
        "sabgal-eosin": ["sabgal"],
        "sabgal+ki67": ["ki67", "sabgal"],
        "p16+ki67": ["ki67", "p16"],
    }[assay]
    expected = ["cell_id", "x_um", "y_um", "nucleus_area_um2", "senescent"]
    for m in markers:
        expected += [f"{m}_level", f"{m}_positive"]
    truth = region.truth
    assert list(truth.columns) == expected
    assert region.rgb.shape == (600, 600, 3) and region.rgb.dtype == np.uint8
    assert region.labels.dtype == np.int32
    ids = np.unique(region.labels)
    assert set(ids[ids > 0]) == set(truth.cell_id)
    assert truth.cell_id.is_unique and len(truth) > 100
    for m in markers:
        assert truth[f"{m}_level"].between(0, 3).all()
        assert (truth[f"{m}_positive"] == (truth[f"{m}_level"] >= 1)).all()


def test_nucleus_areas_and_centroids_match_labels(regions: dict[str, synth.SynthRegion]) -> None:
    region = regions["ki67"]
    mpp = region.mpp
    truth = region.truth.set_index("cell_id")
    inside = interior_ids(region.labels)
    pixels = np.bincount(region.labels.ravel())[inside] * mpp * mpp
    expected = truth.loc[inside, "nucleus_area_um2"].to_numpy()
    ratio = pixels / expected
    assert abs(np.median(ratio) - 1.0) < 0.03
    assert np.all(np.abs(ratio - 1.0) < 0.2)
    com = np.array(ndi.center_of_mass(np.ones_like(region.labels), region.labels, inside))
    y_um, x_um = (com[:, 0] + 0.5) * mpp, (com[:, 1] + 0.5) * mpp
    assert np.abs(y_um - truth.loc[inside, "y_um"]).max() < 0.5
    assert np.abs(x_um - truth.loc[inside, "x_um"]).max() < 0.5


def test_population_biology() -> None:
    params = synth.SynthParams(
        tissue_fraction=1.0, senescent_fraction=0.2, ki67_positive_fraction=0.3
    )
    truth = synth.render_region("p16+ki67", shape=(1200, 1200), mpp=1.0, params=params).truth
    sen = truth.senescent
    assert abs(sen.mean() - 0.2) < 0.05
    assert not (sen & truth.ki67_positive).any()  # senescent cells do not proliferate
    assert abs(truth.ki67_positive[~sen].mean() - 0.3) < 0.06
    assert truth.p16_positive[sen].mean() > 0.75 and truth.p16_positive[~sen].mean() < 0.12
    area = truth.nucleus_area_um2
    assert area[sen].mean() > 2.0 * area[~sen].mean()  # ~12.5 µm vs ~7 µm nuclei
    assert 30 < area[~sen].median() < 50
    # density in cells/mm² (nuclei touching the region: ~ region area)
    density = len(truth) / 1.44
    assert 0.25 * params.cell_density_per_mm2 < density < 1.1 * params.cell_density_per_mm2


@pytest.mark.parametrize("assay", synth.ASSAYS)
def test_positive_cells_carry_more_chromogen(
    assay: str, regions: dict[str, synth.SynthRegion]
) -> None:
    region = regions[assay]
    stains = StainSet.from_names(synth.ASSAY_STAINS[assay])
    conc = deconvolve(region.rgb, stains, I0)
    inside = np.isin(region.truth.cell_id, interior_ids(region.labels))
    for marker, stain in synth.ASSAY_MARKERS[assay].items():
        means = compartment_means(region, conc[..., stains.index(stain)], marker)[inside]
        levels = region.truth[f"{marker}_level"].to_numpy()[inside]
        positive = levels >= 1
        assert positive.sum() >= 5 and (~positive).sum() >= 5, marker
        assert np.median(means[positive]) > np.median(means[~positive]) + 0.1, marker
        medians = [np.median(means[levels == k]) for k in range(4) if (levels == k).sum() >= 3]
        assert np.all(np.diff(medians) > 0.05), (marker, medians)
        # measured negatives stay below the positivity threshold
        assert np.quantile(means[~positive], 0.9) < 0.15, marker


def test_marker_levels_land_in_scoring_bins(regions: dict[str, synth.SynthRegion]) -> None:
    """DAB Ki67 measured in the nucleus falls in its level's bin for nearly every cell."""
    region = regions["ki67"]
    stains = StainSet.from_names(("hematoxylin", "dab"))
    dab = deconvolve(region.rgb, stains, I0)[..., 1]
    inside = np.isin(region.truth.cell_id, interior_ids(region.labels))
    means = compartment_means(region, dab, "ki67")[inside]
    measured = np.digitize(means, [0.15, 0.375, 0.70])
    assert (measured == region.truth.ki67_level.to_numpy()[inside]).mean() > 0.9


def _mean_rgb(region: synth.SynthRegion, mask_ids: np.ndarray, marker: str) -> np.ndarray:
    compartment = {"ki67": region.labels, "sabgal": None, "p16": None}[marker]
    if compartment is None:
        ring = ndi.grey_dilation(region.labels, size=(9, 9))
        ring[region.labels > 0] = 0
        compartment = ring
    return region.rgb[np.isin(compartment, mask_ids)].mean(axis=0)


@pytest.mark.parametrize(
    ("assay", "marker", "check"),
    [
        ("ki67", "ki67", lambda r, g, b: r > b + 15),  # DAB: brown
        ("p16", "p16", lambda r, g, b: r > b + 15),
        ("sabgal", "sabgal", lambda r, g, b: b > r + 30 and g > r),  # X-gal: blue-green
        ("sabgal-eosin", "sabgal", lambda r, g, b: b > r + 30 and g > r),
        ("sabgal+ki67", "sabgal", lambda r, g, b: b > r + 30 and g > r),
        ("sabgal+ki67", "ki67", lambda r, g, b: r > b + 10),
        ("p16+ki67", "ki67", lambda r, g, b: r > g + 10),  # Fast Red: red
    ],
)
def test_assay_colours(assay: str, marker: str, check, regions) -> None:
    region = regions[assay]
    truth = region.truth
    strong = truth.cell_id[truth[f"{marker}_level"] == 3].to_numpy()
    r, g, b = _mean_rgb(region, strong, marker)
    assert check(r, g, b), (r, g, b)


@pytest.mark.parametrize(
    ("assay", "check"),
    [
        ("ki67", lambda r, g, b: b > r + 10),  # hematoxylin: blue-purple
        ("sabgal", lambda r, g, b: r > g + 20),  # nuclear fast red: pink-red
        ("sabgal-eosin", lambda r, g, b: r > g + 30 and b > g + 30),  # dense eosin: magenta
    ],
)
def test_counterstained_nuclei_colours(assay: str, check, regions) -> None:
    region = regions[assay]
    negative = region.truth.cell_id[~region.truth.senescent].to_numpy()
    if assay == "ki67":
        negative = region.truth.cell_id[region.truth.ki67_level == 0].to_numpy()
    r, g, b = region.rgb[np.isin(region.labels, negative)].mean(axis=0)
    assert check(r, g, b), (r, g, b)
    glass = synth.render_region(
        assay, shape=(64, 64), params=synth.SynthParams(tissue_fraction=0.0)
    )
    assert glass.truth.empty and (glass.labels == 0).all()
    assert 225 < glass.rgb.mean() < 250


def test_tissue_fraction_controls_glass() -> None:
    # few cells: this is about the tissue field (12 mm square), and cells would dominate the cost
    params = synth.SynthParams(
        tissue_fraction=0.4, jpeg_quality=None, max_render_mpp=16.0, cell_density_per_mm2=1.0
    )
    region = synth.render_region("ki67", shape=(750, 750), mpp=16.0, params=params, seed=2)
    tissue = region.rgb.mean(axis=2) < 228
    assert 0.2 < tissue.mean() < 0.6


def _level_tags(page: tifffile.TiffPage) -> tuple[float, int]:
    num, den = page.tags["XResolution"].value
    return num / den, int(page.tags["ResolutionUnit"].value)


@pytest.mark.parametrize("ome", [False, True])
def test_write_slide_pyramid_metadata_and_content(tmp_path: Path, ome: bool) -> None:
    shape, mpp = (520, 700), 0.5
    name = "slide.ome.tif" if ome else "slide.tif"
    slide = synth.write_slide(
        tmp_path / name,
        assay="p16",
        shape=shape,
        mpp=mpp,
        seed=4,
        params=EXACT,
        tile_size=128,
        compression="deflate",
    )
    assert slide.labels_path is not None
    expected_shapes = [(520, 700), (260, 350), (130, 175), (65, 88)]
    assert slide.level_shapes == expected_shapes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [name, name.replace("slide", "slide.labels"), "slide.truth.parquet"]
    )
    with tifffile.TiffFile(slide.path) as tif:
        series = tif.series[0]
        assert [lvl.shape[:2] for lvl in series.levels] == expected_shapes
        for k, level in enumerate(series.levels):
            resolution, unit = _level_tags(level.pages[0])
            assert unit == 3  # centimetre
            assert resolution == pytest.approx(1e4 / (mpp * 2**k))
        if ome:
            pixels = tif.ome_metadata.split("<Pixels", 1)[1]
            assert 'PhysicalSizeX="0.5"' in pixels and 'PhysicalSizeY="0.5"' in pixels
    group = zarr.open(tifffile.imread(slide.path, aszarr=True), mode="r")
    labels_group = zarr.open(tifffile.imread(slide.labels_path, aszarr=True), mode="r")
    levels = [da.from_zarr(group[str(k)]) for k in range(len(expected_shapes))]
    for k, level in enumerate(levels):
        assert level.shape == (*expected_shapes[k], 3)
        labels = np.asarray(labels_group[str(k)])
        assert labels.dtype == np.uint32 and labels.shape == expected_shapes[k]
        if mpp * 2**k > EXACT.max_render_mpp:
            # derived level: 2x2 area mean of the level above (odd edge repeated)
            above = levels[k - 1].compute().astype(float)
            above = np.pad(
                above, ((0, above.shape[0] % 2), (0, above.shape[1] % 2), (0, 0)), "edge"
            )
            mean = above.reshape(above.shape[0] // 2, 2, above.shape[1] // 2, 2, 3).mean(
                axis=(1, 3)
            )
            assert np.abs(level.compute() - mean).max() <= 1.0
            continue
        direct = synth.render_region(
            "p16", shape=expected_shapes[k], mpp=mpp * 2**k, seed=4, params=EXACT
        )
        np.testing.assert_array_equal(level.compute(), direct.rgb)
        np.testing.assert_array_equal(labels, direct.labels.astype(np.uint32))
        if k == 0:
            truth = pd.read_parquet(slide.truth_path).sort_values("cell_id", ignore_index=True)
            pd.testing.assert_frame_equal(truth, direct.truth, check_dtype=False)


def test_write_slide_jpeg_defaults(tmp_path: Path) -> None:
    slide = synth.write_slide(tmp_path / "s.tiff", assay="sabgal", shape=(300, 300), seed=1)
    with tifffile.TiffFile(slide.path) as tif:
        page = tif.series[0].levels[0].pages[0]
        assert page.compression == tifffile.COMPRESSION.JPEG
        assert page.is_tiled and page.tilewidth == 256
        image = page.asarray()
    direct = synth.render_region(
        "sabgal",
        shape=(300, 300),
        seed=1,
        params=dataclasses.replace(synth.SynthParams(), jpeg_quality=None),
    )
    # the file holds the same image up to JPEG loss
    assert np.abs(image.astype(int) - direct.rgb).mean() < 3.0
    assert synth.default_n_levels((300, 300), 256) == len(slide.level_shapes) == 2


def test_write_slide_without_labels(tmp_path: Path) -> None:
    slide = synth.write_slide(
        tmp_path / "s.tif", assay="ki67", shape=(100, 120), write_labels=False, n_levels=1
    )
    assert slide.labels_path is None
    assert not (tmp_path / "s.labels.tif").exists()
    assert slide.level_shapes == [(100, 120)]


def test_invalid_input_messages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use one of ki67"):
        synth.render_region("he", shape=(10, 10))
    with pytest.raises(ValueError, match="multiple of 16"):
        synth.write_slide(tmp_path / "a.tif", assay="ki67", shape=(64, 64), tile_size=100)
    with pytest.raises(ValueError, match="compression"):
        synth.write_slide(tmp_path / "a.tif", assay="ki67", shape=(64, 64), compression="gif")
    with pytest.raises(ValueError, match=r"\.tif"):
        synth.write_slide(tmp_path / "a.png", assay="ki67", shape=(64, 64))
    with pytest.raises(ValueError, match="senescent_fraction"):
        synth.SynthParams(senescent_fraction=1.5)
    with pytest.raises(ValueError, match="mpp"):
        synth.render_region("ki67", shape=(10, 10), mpp=0.0)
    with pytest.raises(FileNotFoundError):
        synth.write_slide(tmp_path / "missing" / "a.tif", assay="ki67", shape=(64, 64))
    assert list(tmp_path.iterdir()) == []  # nothing left behind


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    import psutil
    from senpath import synth

    size, path = int(sys.argv[1]), sys.argv[2]
    synth.render_region("ki67", shape=(256, 256))  # warm caches (textures, thresholds)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    done = False

    def sample():
        global peak
        while not done:
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample)
    thread.start()
    t0 = time.perf_counter()
    synth.write_slide(path, assay="ki67", shape=(size, size), params=synth.SynthParams(tissue_fraction=0.5))
    seconds = time.perf_counter() - t0
    done = True
    thread.join()
    print(json.dumps({"size": size, "base_mb": base / 2**20, "increase_mb": (peak - base) / 2**20,
                      "seconds": seconds, "mp_per_s": size * size / 1e6 / seconds}))
    """
)


@pytest.mark.slow
def test_streamed_writing_keeps_memory_flat(tmp_path: Path) -> None:
    results = []
    for size in (8192, 16384):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(size), str(tmp_path / f"s{size}.tif")],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        (tmp_path / f"s{size}.tif").unlink()
    print(results)
    small, large = results
    # 4x the pixels must not need anything like 4x the memory
    assert large["increase_mb"] < 1.5 * small["increase_mb"] + 50
    assert large["increase_mb"] < 600
