"""Counterstain normalisation before the nucleus CNN (senpath.segment.counterstain)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from senpath.segment.counterstain import (
    assay_boost,
    boost_counterstain,
    counterstain_gain,
    counterstain_level,
    image_boost,
)
from senpath.stain import StainSet, deconvolve, od_to_rgb

I0 = np.array([240.0, 245.0, 250.0])


def _image(hematoxylin: np.ndarray, dab: np.ndarray, stains: StainSet) -> np.ndarray:
    od = hematoxylin[..., None] * stains.vectors[0] + dab[..., None] * stains.vectors[1]
    return od_to_rgb(od, I0)


def test_boost_multiplies_the_counterstain_and_leaves_the_chromogen() -> None:
    stains = StainSet.from_names(["hematoxylin", "dab"])
    hematoxylin = np.array([[0.0, 0.2, 0.4], [0.3, 0.1, 0.0]], np.float32)
    dab = np.array([[0.5, 0.0, 0.3], [0.2, 0.0, 0.6]], np.float32)
    rgb = _image(hematoxylin, dab, stains)

    boosted = boost_counterstain(rgb, stains, I0, 1.5)

    before = deconvolve(rgb, stains, I0)
    after = deconvolve(boosted, stains, I0)
    # uint8 rounding: a level of a bright channel is ~0.002 OD
    np.testing.assert_allclose(after[..., 0], 1.5 * before[..., 0], atol=0.02)
    np.testing.assert_allclose(after[..., 1], before[..., 1], atol=0.02)
    assert boosted.dtype == np.uint8 and boosted.shape == rgb.shape


def test_boost_leaves_glass_white_and_a_gain_of_one_returns_the_image() -> None:
    stains = StainSet.from_names(["hematoxylin", "eosin"])
    rgb = _image(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), stains)
    np.testing.assert_array_equal(boost_counterstain(rgb, stains, I0, 2.0), rgb)
    assert boost_counterstain(rgb, stains, I0, 1.0) is rgb
    with pytest.raises(ValueError, match="only ever strengthened"):
        boost_counterstain(rgb, stains, I0, 0.8)


def test_boost_takes_the_named_counterstain() -> None:
    stains = StainSet.from_names(["xgal", "eosin"])
    xgal = np.full((1, 4), 0.3, np.float32)
    eosin = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    rgb = _image(xgal, eosin, stains)

    after = deconvolve(boost_counterstain(rgb, stains, I0, 2.0, counterstain=1), stains, I0)

    np.testing.assert_allclose(after[..., 1], 2 * eosin, atol=0.02)
    np.testing.assert_allclose(after[..., 0], xgal, atol=0.02)


def test_level_is_the_90th_percentile_over_tissue_only() -> None:
    stains = StainSet.from_names(["hematoxylin", "dab"])
    # 1000 tissue pixels with hematoxylin 0.01 ... 1.00, and as many glass pixels (OD 0)
    amounts = np.arange(1, 1001, dtype=np.float64) / 1000
    tissue = np.outer(np.maximum(amounts, 0.2), stains.vectors[0])
    od = np.concatenate([tissue, np.zeros((1000, 3))])

    level = counterstain_level(od, stains)

    assert level == pytest.approx(np.percentile(np.maximum(amounts, 0.2), 90), abs=1e-4)
    assert np.isnan(counterstain_level(np.zeros((500, 3)), stains))


@pytest.mark.parametrize(
    ("level", "gain"),
    [(0.9, 1.0), (0.45, 1.0), (0.3, 1.5), (0.2, 2.0), (0.05, 2.0), (float("nan"), 1.0), (0.0, 1.0)],
)
def test_gain_brings_the_level_to_the_reference_within_bounds(level: float, gain: float) -> None:
    assert counterstain_gain(level, reference=0.45) == pytest.approx(gain)


def test_an_image_is_measured_as_a_slide() -> None:  # senpath segment: one image, no plan
    stains = StainSet.from_names(["hematoxylin", "dab"])
    rng = np.random.default_rng(0)
    nuclei = rng.random((64, 64)) < 0.3  # a third of the pixels nuclear, the rest stroma
    dab = np.where(rng.random((64, 64)) < 0.2, 0.4, 0.05).astype(np.float32)
    for nuclear_od, needed in ((0.2, True), (0.9, False)):
        hematoxylin = np.where(nuclei, nuclear_od, 0.12).astype(np.float32)
        rgb = _image(hematoxylin, dab, stains)
        rgb[:4] = I0.astype(np.uint8)  # some glass
        boost = image_boost(rgb, stains, "hematoxylin", reference=0.45)
        if needed:
            assert boost is not None and boost.counterstain == 0
            assert boost.gain == pytest.approx(2.0)  # 0.45 / 0.2, at most 2
        else:
            assert boost is None


def test_an_image_of_an_assay_gets_that_assays_reference_or_none() -> None:
    from senpath.config import get_assay

    stains = StainSet.from_names(["hematoxylin", "dab"])
    hematoxylin = np.where(np.random.default_rng(1).random((64, 64)) < 0.3, 0.2, 0.12)
    rgb = _image(hematoxylin.astype(np.float32), np.full((64, 64), 0.05, np.float32), stains)
    rgb[:4] = I0.astype(np.uint8)

    p16 = get_assay("p16")
    assert p16.counterstain_reference_od is not None
    boost = assay_boost(rgb, p16)
    assert boost is not None and boost.gain == pytest.approx(2.0)
    assert assay_boost(rgb, get_assay("ki67")) is None  # the preset has no reference
    assert assay_boost(rgb, get_assay("ki67"), reference=0.3) is not None


def test_the_benchmark_normalises_each_set_as_its_assay_or_as_overridden(benchmark_script) -> None:
    from senpath.segment.data import AnnotatedImage

    stains = StainSet.from_names(["hematoxylin", "dab"])
    nuclei = np.random.default_rng(1).random((64, 64)) < 0.3
    hematoxylin = np.where(nuclei, 0.2, 0.12).astype(np.float32)
    rgb = _image(hematoxylin, np.full((64, 64), 0.05, np.float32), stains)
    rgb[:4] = I0.astype(np.uint8)
    image = AnnotatedImage("faint", "he", rgb, nuclei.astype(np.int32), 0.5)
    sets = {"rerendered_h_dab": [image], "ki67": [image]}
    boosted_sets = benchmark_script("counterstain_gain").boosted_sets

    _, gains = boosted_sets(sets, None)  # the presets: p16 has a reference, ki67 none
    assert gains["rerendered_h_dab"] > 1.0 and gains["ki67"] == 1.0
    _, gains = boosted_sets(sets, {"ki67": 0.3})  # p16 keeps its preset
    assert gains["ki67"] > 1.0 and gains["rerendered_h_dab"] > 1.0


def test_the_hide_chromogen_benchmark_takes_the_xgal_out(benchmark_script) -> None:
    stains = StainSet.from_names(["nuclear_fast_red", "xgal"])
    rng = np.random.default_rng(3)
    nfr = np.where(rng.random((64, 64)) < 0.3, 1.2, 0.2).astype(np.float32)  # no gain needed
    xgal = np.where(rng.random((64, 64)) < 0.3, 0.5, 0.0).astype(np.float32)
    rgb = _image(nfr, xgal, stains)
    rgb[:4] = I0.astype(np.uint8)
    hidden = benchmark_script("hide_chromogen").hidden

    np.testing.assert_array_equal(hidden(rgb, "sabgal", 1.0), rgb)  # level above the reference
    after = deconvolve(hidden(rgb, "sabgal", 0.0), stains, I0)
    assert np.abs(after[4:, :, 1]).max() < 0.03
    np.testing.assert_allclose(after[4:, :, 0], nfr[4:], atol=0.03)


# --------------------------------------------------------------------------- in the pipeline


def _ki67_slide(tmp_path: Path, counterstain_od: float) -> Path:
    from senpath import synth

    return synth.write_slide(
        tmp_path / f"k{counterstain_od}.tif", assay="ki67", shape=(384, 384), mpp=0.5, seed=3,
        params=synth.SynthParams(tissue_fraction=0.95, nucleus_counterstain_od=counterstain_od),
    ).path  # fmt: skip


def test_a_faintly_counterstained_slide_is_planned_with_a_gain_a_well_stained_one_without(
    tmp_path: Path,
) -> None:
    from senpath.config import AnalysisConfig, get_assay
    from senpath.slide_plan import plan_slide

    cnn = AnalysisConfig(segmenter="cnn", tile_size_um=64)
    assay = dataclasses.replace(get_assay("ki67"), counterstain_reference_od=0.45)
    faint = plan_slide(_ki67_slide(tmp_path, 0.15), assay=assay, config=cnn)
    strong = plan_slide(_ki67_slide(tmp_path, 0.8), assay=assay, config=cnn)

    assert faint.counterstain is not None and strong.counterstain is not None
    assert faint.counterstain["stain"] == "hematoxylin"
    assert faint.counterstain["level"] < strong.counterstain["level"]
    assert faint.counterstain_gain > 1.3
    assert strong.counterstain_gain == 1.0
    assert faint.counterstain["reference"] == 0.45
    # off, not the CNN, or an assay without a reference: nothing planned, nothing applied
    off = cnn.replace(normalise_counterstain=False)
    classical = cnn.replace(segmenter="classical")
    for config, with_assay in ((off, assay), (classical, assay), (cnn, get_assay("ki67"))):
        plan = plan_slide(_ki67_slide(tmp_path, 0.15), assay=with_assay, config=config)
        assert plan.counterstain is None and plan.counterstain_gain == 1.0
        assert plan.counterstain_boost is None


def test_the_cnn_sees_the_boosted_tile_and_the_stains_are_measured_on_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from senpath.config import AnalysisConfig, get_assay
    from senpath.io import open_slide
    from senpath.segment import predict
    from senpath.slide_plan import plan_slide, read_grid_box
    from senpath.tile_engine import analyze_tile, plan_segmenter

    config = AnalysisConfig(segmenter="cnn", device="cpu", tile_size_um=64)
    assay = dataclasses.replace(get_assay("ki67"), counterstain_reference_od=0.45)
    plan = plan_slide(_ki67_slide(tmp_path, 0.15), assay=assay, config=config)
    assert plan.counterstain_gain > 1.0
    tile = plan.tiles[4]  # the middle one of 3 x 3
    rgb = read_grid_box(open_slide(plan.path), tile.box, 0.5)
    labels = np.zeros(rgb.shape[:2], np.int32)
    labels[60:80, 60:80], labels[100:115, 90:110] = 1, 2  # in the tile's core, 100 and 75 µm²
    seen = []

    def network(image: np.ndarray, *, mpp: float, model: object) -> np.ndarray:
        seen.append(image.copy())
        return labels

    monkeypatch.setattr(predict, "predict_instances", network)
    kwargs = {"stains": plan.stain_estimate.stains, "i0": plan.i0, "mpp": 0.5, "config": config,
              "image_shape": plan.shape_px}  # fmt: skip
    boosted, _ = analyze_tile(rgb, tile, segmenter=plan_segmenter(plan), **kwargs)
    unboosted = dataclasses.replace(plan, counterstain=None)
    plain, _ = analyze_tile(rgb, tile, segmenter=plan_segmenter(unboosted), **kwargs)

    expected = boost_counterstain(rgb, plan.stain_estimate.stains, plan.i0, plan.counterstain_gain)
    np.testing.assert_array_equal(seen[0], expected)
    np.testing.assert_array_equal(seen[1], rgb)
    assert (seen[0].astype(int) - rgb).min() < -5  # darker nuclei: it did change
    assert len(boosted.cells) == 2
    pd.testing.assert_frame_equal(boosted.cells, plain.cells)


@pytest.mark.parametrize(
    ("stain", "level", "gain", "status"),
    [
        ("hematoxylin", 0.25, 1.0, "faint"),
        ("hematoxylin", 0.35, 1.0, "ok"),
        ("eosin", 0.35, 1.0, "faint"),  # eosin, a weak nuclear stain, has a higher floor
        ("eosin", 0.35, 1.2, "ok"),  # judged as the CNN sees it, after normalisation
        ("nuclear_fast_red", float("nan"), 1.0, "unknown"),
    ],
)
def test_the_faint_counterstain_flag_judges_the_level_the_cnn_sees(
    stain: str, level: float, gain: float, status: str
) -> None:
    from senpath.segment.counterstain import faint_counterstain_qc, faint_counterstain_warning

    qc = faint_counterstain_qc(stain, level, gain)
    assert qc["status"] == status and qc["stain"] == stain
    line = faint_counterstain_warning(qc)
    assert (status == "faint") == bool(line)
    if line:
        assert f"{stain} at {level * gain:.2f} OD" in line and "% positive may read high" in line


def test_a_faintly_counterstained_slide_is_flagged_in_its_summary_and_batch_line(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    import senpath
    from senpath.batch_jobs import ok_message
    from senpath.config import AnalysisConfig, get_assay
    from senpath.export import is_reliable

    cnn = AnalysisConfig(segmenter="cnn")
    for od, status in ((0.15, "faint"), (0.8, "ok")):
        store = senpath.analyze_slide(
            _ki67_slide(tmp_path, od), out=tmp_path / "res", assay="ki67", config=cnn
        )
        res = senpath.load_results(store)
        qc = res.summary["counterstain_qc"]
        assert qc["status"] == status and qc["stain"] == "hematoxylin" and qc["gain"] == 1.0
        assert bool(qc["warning"]) == (status == "faint")
        faint = "faint counterstain: hematoxylin" in res.summary.get("warning", "")
        assert faint == (status == "faint") == ("faint counterstain" in ok_message(store))
        assert is_reliable(res)  # a caution: the figures are still pooled
    # no marker whose % positive it could bias (as H&E): measured, not said
    unmarked = dataclasses.replace(get_assay("ki67"), name="nuclei-only", markers=())
    store = senpath.analyze_slide(
        _ki67_slide(tmp_path, 0.15), out=tmp_path / "he", assay=unmarked, config=cnn
    )
    summary = senpath.load_results(store).summary
    assert summary["counterstain_qc"]["status"] == "faint"
    assert not summary["counterstain_qc"]["warning"]
    assert "faint counterstain" not in summary.get("warning", "")
    # the classical method, no CNN: no flag
    store = senpath.analyze_slide(
        _ki67_slide(tmp_path, 0.15), out=tmp_path / "cl", assay="ki67",
        config=AnalysisConfig(segmenter="classical"),
    )  # fmt: skip
    assert "counterstain_qc" not in senpath.load_results(store).summary


def test_the_level_gap_benchmark_pools_per_band_and_floor(benchmark_script) -> None:
    gaps = benchmark_script("counterstain_level_gaps")
    row = gaps.ImageCounts
    rows = [
        # eosin: faint images miss unstained nuclei, the others do not
        row("eosin", 0.35, 6, 10, 9, 10), row("eosin", 0.25, 5, 10, 9, 10),
        row("eosin", 0.6, 9, 10, 9, 10),
        row("hematoxylin", 0.35, 8, 10, 9, 10),
    ]  # fmt: skip
    lines = gaps.tables(rows)
    eosin = next(line for line in lines if line.startswith("| eosin |"))
    # bands < 0.3, 0.3-0.4, >= 0.4: one image each; recall unstained / stained; gap in points
    assert eosin == (
        "| eosin | 1; 0.500 / 0.900; -40.0 | 1; 0.600 / 0.900; -30.0 | 1; 0.900 / 0.900; +0.0 |"
    )
    # eosin's floor is 0.4: both faint images below it, pooled; hematoxylin's 0.3: none below
    assert "| eosin | 0.4 | 2; 0.550 / 0.900; -35.0 | 1; 0.900 / 0.900; +0.0 |" in lines
    assert "| hematoxylin | 0.3 | - | 1; 0.800 / 0.900; -10.0 |" in lines


def test_the_threshold_benchmark_chooses_the_narrowest_gap_within_the_f1_tolerance(
    benchmark_script,
) -> None:
    bench = benchmark_script("threshold_gaps")
    sweep = {
        "monuseg": {"0.5/0.5": {"f1": 0.70}, "0.4/0.5": {"f1": 0.698}, "0.3/0.5": {"f1": 0.68}},
        "rerendered_h_dab": {
            "0.5/0.5": {"f1": 0.80, "gap_dab": -6.0},
            "0.4/0.5": {"f1": 0.797, "gap_dab": -4.0},
            "0.3/0.5": {"f1": 0.80, "gap_dab": -1.0},
        },
        "rerendered_xgal_h_dab": {
            "0.5/0.5": {"f1": 0.80, "gap_dab": -8.0, "gap_xgal": -4.0},
            "0.4/0.5": {"f1": 0.80, "gap_dab": -6.0, "gap_xgal": +2.0},
            "0.3/0.5": {"f1": 0.80, "gap_dab": -1.0, "gap_xgal": -1.0},
        },
    }
    assert bench.mean_abs_gap(sweep, "0.5/0.5") == pytest.approx(6.0)  # (6 + 8 + 4) / 3
    assert bench.mean_abs_gap(sweep, "0.4/0.5") == pytest.approx(4.0)  # |+2| counts as 2
    # 0.3/0.5 has the narrowest gaps but loses 0.02 on MoNuSeg: out at a 0.005 tolerance
    assert bench.choose(sweep, shipped="0.5/0.5", f1_tolerance=0.005) == "0.4/0.5"
    assert bench.choose(sweep, shipped="0.5/0.5", f1_tolerance=0.03) == "0.3/0.5"
    assert bench.choose(sweep, shipped="0.5/0.5", f1_tolerance=0.0) == "0.5/0.5"
    assert "| 0.4/0.5 | 0.698 | 0.797 | 0.800 | 4.00 |" in bench.table(sweep, title="t")
