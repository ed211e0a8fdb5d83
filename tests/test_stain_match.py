"""Wrong-assay stain QC: an H-DAB slide run as X-gal is flagged, naming the assay its colours fit."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import senpath
from senpath import synth
from senpath.config import AnalysisConfig, get_assay, load_assays
from senpath.export import is_reliable, marker_table
from senpath.slide_plan import plan_slide
from senpath.stain import MAX_RESIDUAL_FRACTION, REFERENCE_STAINS, StainSet, stain_qc, unit
from senpath.stain_match import better_fitting_assays

CLASSICAL = AnalysisConfig(segmenter="classical")


def _toward(stain: str, other: str, degrees: float) -> tuple[float, float, float]:
    """``stain``'s reference vector turned ``degrees`` towards ``other``'s, in their plane."""
    a, b = unit(REFERENCE_STAINS[stain]), unit(REFERENCE_STAINS[other])
    axis = unit(np.cross(a, b))
    t = np.radians(degrees)
    v = a * np.cos(t) + np.cross(axis, a) * np.sin(t)
    return (float(v[0]), float(v[1]), float(v[2]))


#: An H-DAB lab whose hematoxylin is bluer than the reference (the real DeepLIIF Ki67 tiles' sits
#: 12° from it, 7° from X-gal) and whose DAB is a little browner.
BLUE_HEMATOXYLIN = (
    ("hematoxylin", _toward("hematoxylin", "xgal", 8.0)),
    ("dab", _toward("dab", "eosin", 3.0)),
)
#: An X-gal lab whose counterstain leans towards DAB, and whose X-gal towards hematoxylin: the hard
#: side for a false flag.
XGAL_TOWARDS_HDAB = (
    ("nuclear_fast_red", _toward("nuclear_fast_red", "dab", 5.0)),
    ("xgal", _toward("xgal", "hematoxylin", 4.0)),
)


def _slide(tmp_path, assay, stain_vectors, seed=3):
    return synth.write_slide(
        tmp_path / f"{assay}.tif", assay=assay, shape=(512, 512), mpp=0.5, seed=seed,
        params=synth.SynthParams(tissue_fraction=0.95, stain_vectors=stain_vectors),
    )  # fmt: skip


def _qc(path, assay, mpp=None):
    plan = plan_slide(path, assay=get_assay(assay), config=CLASSICAL, mpp=mpp)
    return stain_qc(plan.stain_estimate, assay=assay, assay_match=plan.stain_match)


def test_hdab_slide_run_as_sabgal_is_flagged_through_every_table(tmp_path):
    slide = _slide(tmp_path, "p16", BLUE_HEMATOXYLIN)
    store = senpath.analyze_slide(
        slide.path, out=tmp_path / "res", assay="sabgal", config=CLASSICAL
    )
    res = senpath.load_results(store)
    qc = res.summary["stain_qc"]
    # the residual rule alone passes it: the estimate bends the X-gal vectors onto H-DAB
    assert qc["residual_fraction"] < MAX_RESIDUAL_FRACTION
    assert qc["status"] == "warning", qc
    assert "looks like ki67/p16 (hematoxylin + dab), not 'sabgal'" in res.summary["warning"]
    assert qc["assay_match"]["better_assays"] == ["ki67", "p16"]
    # the same flag path as any mismatch: unreliable, and out of the per-patient figures
    assert not is_reliable(res)
    table = marker_table([res], by="patient")
    assert table.loc[0, "reliable"] == "no" and table.loc[0, "n_slides"] == 0
    assert table.loc[0, "unreliable_slide_ids"] == res.slide_id


def test_hdab_slide_run_as_its_own_assay_is_not_flagged(tmp_path):
    slide = _slide(tmp_path, "p16", BLUE_HEMATOXYLIN)
    for assay in ("ki67", "p16"):
        qc = _qc(slide.path, assay)
        assert qc["status"] == "ok", qc
        assert qc["assay_match"]["checked"] and qc["assay_match"]["better_fit"] == ""


@pytest.mark.parametrize("seed", [3, 4])
def test_xgal_slide_run_as_sabgal_is_not_flagged(tmp_path, seed):
    slide = _slide(tmp_path, "sabgal", XGAL_TOWARDS_HDAB, seed=seed)
    qc = _qc(slide.path, "sabgal")
    assert qc["status"] == "ok", qc
    assert qc["assay_match"]["checked"] and qc["assay_match"]["better_fit"] == ""
    # and run as ki67 it is a mismatch (the residual rule)
    assert _qc(slide.path, "ki67")["status"] == "warning"


def test_culture_field_run_as_sabgal_culture_is_not_flagged(tmp_path):
    field = synth.render_culture_field(shape=(384, 384), mpp=1.0, seed=2)
    path = tmp_path / "well.tif"
    tifffile.imwrite(path, field.rgb)
    qc = _qc(path, "sabgal-culture", mpp=1.0)
    assert qc["status"] == "ok", qc
    assert qc["assay_match"]["checked"] and qc["assay_match"]["better_fit"] == ""


def _mixture(vectors, n=20_000, seed=0):
    """OD pixels: random amounts of each stain, with pure pixels of each, plus noise."""
    rng = np.random.default_rng(seed)
    conc = rng.gamma(1.0, 0.25, (n, len(vectors)))
    conc[: n // 10, 1:] = 0.0
    conc[n // 10 : n // 5, 0] = 0.0
    return np.clip(conc @ np.asarray(vectors) + rng.normal(0, 0.004, (n, 3)), 0, None)


def test_rule_by_hand_and_what_it_does_not_check():
    assays = load_assays()
    od = _mixture([unit(v) for _, v in BLUE_HEMATOXYLIN])
    sabgal = get_assay("sabgal")
    from senpath.stain import estimate_stains

    est = estimate_stains(od, StainSet.from_names(sabgal.stains))
    match = better_fitting_assays(od, assay=sabgal, assays=assays, estimate=est)
    assert match["better_fit"] == "ki67/p16 (hematoxylin + dab)", match
    assert "from dab" in match["detail"]
    # stricter bounds than the evidence: nothing is named
    strict = better_fitting_assays(od, assay=sabgal, assays=assays, estimate=est, margin_deg=60)
    assert strict["checked"] and strict["better_fit"] == ""
    # not checked: an assay without a marker, a three-stain assay, a slide with no stain
    for name in ("he", "sabgal+ki67"):
        skipped = better_fitting_assays(od, assay=get_assay(name), assays=assays, estimate=est)
        assert not skipped["checked"] and skipped["reason"]
    glass = better_fitting_assays(
        np.full((5000, 3), 0.01), assay=sabgal, assays=assays, estimate=est
    )
    assert not glass["checked"] and "too few" in glass["reason"]
    # stain_qc only adds the hue warning where the residual rule passed (it says why either way)
    assert stain_qc(est, assay="sabgal", assay_match=match)["status"] == "warning"
    assert stain_qc(est, assay="sabgal", assay_match=strict)["status"] == "ok"


def test_real_ki67_tile_run_as_sabgal_is_flagged(shared_data):
    """A real Ki67 tile (DeepLIIF 22_2) that the residual rule passes under ``sabgal``."""
    path = shared_data / "ki67_ihc_tiles" / "22_2_ihc.png"
    qc = _qc(path, "sabgal", mpp=0.25)
    assert qc["residual_fraction"] < MAX_RESIDUAL_FRACTION
    assert qc["status"] == "warning" and "ki67/p16" in str(qc["warning"])
    assert _qc(path, "ki67", mpp=0.25)["status"] == "ok"
