"""Per-slide stain vectors (Macenko with the assay's prior), guard rails, residual QC and profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import senpath
from senpath import synth
from senpath.config import AnalysisConfig, get_assay, load_assays, stain_profile_toml
from senpath.stain import (
    REFERENCE_STAINS,
    StainSet,
    angle_deg,
    estimate_stains,
    stain_qc,
    unexplained_od,
    unit,
)


def _rotate(v, axis, degrees):
    """Rodrigues rotation of ``v`` about ``axis``."""
    k = unit(axis)
    t = np.radians(degrees)
    v = np.asarray(v, float)
    return v * np.cos(t) + np.cross(k, v) * np.sin(t) + k * (k @ v) * (1 - np.cos(t))


def _mixture(vectors, n=20_000, seed=0):
    """OD pixels: random non-negative amounts of each stain, incl. pure pixels of each, plus noise."""
    rng = np.random.default_rng(seed)
    conc = rng.gamma(1.0, 0.25, (n, len(vectors)))
    conc[: n // 10, 1:] = 0.0  # pure first stain
    conc[n // 10 : n // 5, 0] = 0.0  # pure second stain
    od = conc @ np.asarray(vectors) + rng.normal(0, 0.004, (n, 3))
    return np.clip(od, 0, None)


def test_unexplained_od_by_hand():
    stains = StainSet.from_names(["hematoxylin", "dab"])
    h, d = stains.vectors
    od = np.array([0.3 * h + 0.2 * d, -0.1 * h + 0.5 * d])  # second needs negative hematoxylin
    res = unexplained_od(od, stains)
    assert res[0] == pytest.approx(0.0, abs=1e-6)
    assert res[1] > 0.05
    normal = unit(np.cross(h, d))
    assert unexplained_od((0.2 * h + 0.3 * normal)[None], stains)[0] == pytest.approx(0.3, abs=1e-5)


def test_estimate_recovers_slide_vectors_within_the_plane():
    prior = StainSet.from_names(["hematoxylin", "dab"])
    h, d = prior.vectors
    # this lab's DAB is browner by 8°, its hematoxylin 6° off: the preset leaves OD unexplained
    true_h = unit(_rotate(h, np.cross(h, d) + [0, 0, 0.5], 6))
    true_d = unit(_rotate(d, [1.0, -0.5, 0.2], 8))
    est = estimate_stains(_mixture([true_h, true_d]), prior)
    assert est.source == "estimated", est.reason
    assert angle_deg(est.stains.vectors[0], true_h) < 2.0
    assert angle_deg(est.stains.vectors[1], true_d) < 2.0
    assert est.residual_fraction < est.preset_residual_fraction / 2
    assert est.stains.names == ("hematoxylin", "dab")


def test_estimate_keeps_preset_when_it_already_explains_the_slide():
    prior = StainSet.from_names(["hematoxylin", "dab"])
    est = estimate_stains(_mixture(prior.vectors), prior)
    assert est.source == "preset" and "about as well" in est.reason
    np.testing.assert_array_equal(est.stains.vectors, prior.vectors)


def test_guard_rails_fall_back_to_preset_and_say_why():
    prior = StainSet.from_names(["hematoxylin", "dab"])
    # too few stained pixels (glass)
    glass = np.full((5000, 3), 0.01)
    est = estimate_stains(glass, prior)
    assert est.source == "preset" and "too few stained pixels" in est.reason
    # wrong hue: an X-gal + nuclear fast red slide under the H-DAB prior
    xgal = StainSet.from_names(["nuclear_fast_red", "xgal"])
    est = estimate_stains(_mixture(xgal.vectors), prior)
    assert est.source == "preset" and "hue" in est.reason
    # vectors too close: two stains 5° apart
    a = unit(REFERENCE_STAINS["hematoxylin"])
    near = StainSet(("hematoxylin", "dab"), np.vstack([a, unit(_rotate(a, [0, 0, 1], 5))]))
    est = estimate_stains(_mixture(near.vectors), near)
    assert est.source == "preset" and "too close" in est.reason
    # three stains: not separable by Macenko, prior kept, residual still measured
    three = StainSet.from_names(["hematoxylin", "dab", "fast_red"])
    est = estimate_stains(_mixture(three.vectors), three)
    assert est.source == "preset" and "two-stain" in est.reason
    assert np.isfinite(est.residual_od)
    # estimation switched off
    est = estimate_stains(_mixture(prior.vectors), prior, estimate=False)
    assert est.source == "preset" and "off" in est.reason


def test_stain_qc_warns_on_mismatch_only():
    hdab = StainSet.from_names(["hematoxylin", "dab"])
    xgal = StainSet.from_names(["nuclear_fast_red", "xgal"])
    ok = stain_qc(estimate_stains(_mixture(hdab.vectors), hdab), assay="ki67")
    assert ok["status"] == "ok" and ok["warning"] == ""
    bad = stain_qc(estimate_stains(_mixture(xgal.vectors), hdab), assay="ki67")
    assert bad["status"] == "warning"
    assert (
        "not explained by the 'ki67' stains" in bad["warning"] and "sample sheet" in bad["warning"]
    )
    assert set(bad["vectors"]) == {"hematoxylin", "dab"}


#: Stain vectors Macenko finds on the real CMU-1 H&E slide: hematoxylin 16.2° and eosin 22.5° from the
#: references, the hematoxylin 5° from the X-gal reference.
CMU1_HE = ([0.829, 0.485, 0.280], [0.0, 0.884, 0.468])


def test_assay_stain_tolerance_widens_only_where_no_marker_depends_on_it():
    he = get_assay("he")
    assert he.stain_tolerance_deg == {"hematoxylin": 17.5, "eosin": 35.0}
    od = _mixture([unit(v) for v in CMU1_HE])
    prior = StainSet.from_names(he.stains)
    # the default 15° refuses real H&E hues, and the preset then leaves a quarter of the OD unexplained
    strict = stain_qc(estimate_stains(od, prior), assay="he")
    assert strict["source"] == "preset" and "eosin 2" in strict["reason"]
    assert strict["status"] == "warning"
    qc = stain_qc(estimate_stains(od, prior, max_angle_deg=he.stain_tolerance_deg), assay="he")
    assert qc["source"] == "estimated" and qc["status"] == "ok", qc
    # an assay with a marker keeps 15°: the same H&E run as X-gal + eosin is still a mismatch
    sabgal = get_assay("sabgal-eosin")
    assert sabgal.stain_tolerance_deg == {}
    bad = stain_qc(
        estimate_stains(od, StainSet.from_names(sabgal.stains), max_angle_deg=None),
        assay="sabgal-eosin",
    )
    assert bad["source"] == "preset" and bad["status"] == "warning"


@pytest.mark.filterwarnings("ignore:object .* reaches the edge of the halo")
@pytest.mark.parametrize(("run_assay", "status"), [("he", "ok"), ("sabgal-eosin", "warning")])
def test_real_he_slide_stain_qc(shared_data, tmp_path, run_assay, status):
    """The real CMU-1 H&E slide is not flagged as H&E, and is flagged when run as X-gal + eosin."""
    store = senpath.analyze_slide(
        shared_data / "slides" / "CMU-1-Small-Region.svs",
        out=tmp_path / "res",
        assay=run_assay,
        config=AnalysisConfig(segmenter="classical"),
    )
    res = senpath.load_results(store)
    qc = res.summary["stain_qc"]
    assert qc["status"] == status, qc
    if run_assay == "he":
        assert qc["source"] == "estimated" and qc["residual_fraction"] < 0.07
        # a lab profile saved from this slide keeps the assay's tolerances
        from senpath.provenance import profile_toml

        path = tmp_path / "lab.toml"
        path.write_text(profile_toml(res.provenance, {}, name="he-lab"))
        assert (
            load_assays(path)["he-lab"].stain_tolerance_deg == get_assay("he").stain_tolerance_deg
        )


def _slide(tmp_path, assay, seed=3):
    return synth.write_slide(
        tmp_path / f"{assay}.tif", assay=assay, shape=(512, 512), mpp=0.5, seed=seed,
        params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("slide_assay", "run_assay", "status"),
    [
        ("sabgal", "sabgal", "ok"),
        ("sabgal", "ki67", "warning"),
        ("ki67", "sabgal-eosin", "warning"),
    ],
)
def test_pipeline_reports_stain_qc_per_slide(tmp_path, slide_assay, run_assay, status):
    s = _slide(tmp_path, slide_assay)
    store = senpath.analyze_slide(
        s.path, out=tmp_path / "res", assay=run_assay, config=AnalysisConfig(segmenter="classical")
    )
    res = senpath.load_results(store)
    qc = res.summary["stain_qc"]
    assert qc["status"] == status, qc
    assert qc["stains"] == list(get_assay(run_assay).stains)
    assert qc["source"] in ("estimated", "preset") and qc["n_pixels"] > 1000
    if status == "warning":
        assert "stain mismatch" in res.summary["warning"]
        assert qc["residual_fraction"] > qc["max_residual_fraction"]
    else:
        assert "warning" not in res.summary
    # provenance holds the vectors used and where they came from
    prov = res.provenance
    assert prov.assay.stain_vectors_source == qc["source"]
    np.testing.assert_allclose(
        prov.assay.stain_vectors, [qc["vectors"][n] for n in qc["stains"]], atol=1e-5
    )
    assert prov.records["stain_estimate"]["residual_od"] == qc["residual_od"]


def test_profile_round_trip_fixes_vectors_and_thresholds(tmp_path):
    """A lab profile (vectors + thresholds) written once, passed with --config, reused by a batch."""
    assay = get_assay("ki67")
    h = unit(_rotate(REFERENCE_STAINS["hematoxylin"], [0, 0, 1], 4))
    text = stain_profile_toml(
        assay, vectors={"hematoxylin": h, "dab": REFERENCE_STAINS["dab"]}, thresholds={"ki67": 0.2},
        name="ki67-labA", stain_vectors="preset",
    )  # fmt: skip
    path = tmp_path / "labA.toml"
    path.write_text(text)
    prof = load_assays(path)["ki67-labA"]
    assert prof.marker("ki67").threshold_od == 0.2
    assert prof.marker("ki67").compartment == "nucleus" and prof.markers == tuple(
        type(m)(**{**vars(m), "threshold_od": 0.2}) for m in assay.markers
    )
    np.testing.assert_allclose(unit(prof.stain_vectors["hematoxylin"]), h, atol=1e-6)
    cfg = senpath.config.load_config(path)
    assert cfg.stain_vectors == "preset"
    s = _slide(tmp_path, "ki67")
    store = senpath.analyze_slide(
        s.path, out=tmp_path / "res", assay=prof, config=cfg.replace(segmenter="classical")
    )
    res = senpath.load_results(store)
    assert res.summary["stain_qc"]["source"] == "preset"
    np.testing.assert_allclose(res.provenance.assay.stain_vectors[0], h, atol=1e-5)
    assert res.summary["markers"]["ki67"]["threshold_od"] == 0.2
    truth = pd.read_parquet(s.truth_path)
    assert (
        abs(res.summary["markers"]["ki67"]["pct_positive"] - 100 * truth["ki67_positive"].mean())
        < 5
    )
