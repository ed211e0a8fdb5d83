"""Cultured cells without a nuclear counterstain: whole-cell mode and paired-DAPI mode vs synthetic truth.

Fields from :func:`senpath.synth.render_culture_field`: flat spread cells, X-gal granules in ~40 % of
them, no counterstain, stain vectors turned 6 degrees from the pipeline's, 15 % vignetting; the DAPI
frame offset by a known shift.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from senpath.measure import measure_cells
from senpath.segment.paired_nuclei import (
    Registration,
    RegistrationError,
    paired_compartments,
    register_nuclear,
    segment_paired,
)
from senpath.segment.whole_cell import segment_whole_cells
from senpath.stain import StainSet, deconvolve
from senpath.synth import CultureParams, dapi_frame_points, matched_cells, render_culture_field

STAINS = StainSet.from_names(["xgal", "cell_body"], overrides={"cell_body": (1.0, 1.0, 1.0)})
#: X-gal p75 over the whole cell that calls a cell SA-beta-gal+ (the culture preset's rule).
THRESHOLD_OD = 0.10


def _recalls_and_pct(field, cells, nuclei=None):
    """(recall of X-gal+ cells, recall of unstained cells, % positive called, % positive true)."""
    found = matched_cells(field.cells, cells)
    truth = field.truth.set_index("cell_id")
    pos = set(truth.index[truth.sabgal_positive])
    neg = set(truth.index[~truth.sabgal_positive])
    i0 = np.percentile(field.rgb.reshape(-1, 3), 99.0, axis=0)
    conc = deconvolve(field.rgb, STAINS, i0)
    if nuclei is None:
        zero = np.zeros_like(cells)
        comps = {"nucleus": cells, "cytoplasm": zero, "cell": cells, "perinuclear": zero,
                 "nucleus_perinuclear": cells}  # fmt: skip
    else:
        comps = paired_compartments(nuclei, cells, mpp=field.mpp)
    table = measure_cells(cells, conc, stain_names=STAINS.names, mpp=field.mpp, compartments=comps)
    called = table["xgal_od_p75_cell"] >= THRESHOLD_OD
    return (
        np.array([len(pos & found.keys()), len(pos), len(neg & found.keys()), len(neg)]),
        np.array([int(called.sum()), len(called)]),
    )


@pytest.mark.slow
def test_whole_cell_mode_finds_unstained_cells_as_well_as_blue_ones():
    counts, calls = np.zeros(4, int), np.zeros(2, int)
    for seed in (1, 2, 3, 4):
        field = render_culture_field(seed=seed)
        cells = segment_whole_cells(field.rgb, mpp=field.mpp)
        c, k = _recalls_and_pct(field, cells)
        # no field collapses: field 3 found 19 % / 10 % when only strong nucleus blobs seeded
        # (its seed threshold sat above most nuclei); with the second, lower bar 64 % / 80 %
        assert c[0] / c[1] >= 0.6 and c[2] / c[3] >= 0.6, (seed, c)
        counts, calls = counts + c, calls + k
    recall_pos, recall_neg = counts[0] / counts[1], counts[2] / counts[3]
    # measured (benchmarks/culture_segmentation.py): 0.85 stained / 0.92 unstained on fields 1-4
    # (0.72 / 0.74 before the second bar); held out, fields 5-8: 0.87 / 0.88 (0.81 / 0.71)
    assert recall_pos >= 0.8 and recall_neg >= 0.8, (recall_pos, recall_neg)
    assert abs(recall_pos - recall_neg) <= 0.1
    true_pct = 100 * counts[1] / (counts[1] + counts[3])
    assert abs(100 * calls[0] / calls[1] - true_pct) <= 4.0


@pytest.mark.slow
def test_colour_threshold_finds_no_unstained_cell():
    """The failure the whole-cell mode is for: a blue-colour foreground misses every unstained cell."""
    field = render_culture_field(seed=1)
    cells = segment_whole_cells(
        field.rgb, mpp=field.mpp, method="xgal_colour", min_foreground_od=0.04,
        xgal_vector=STAINS.vectors[0],
    )  # fmt: skip
    counts, _ = _recalls_and_pct(field, cells)
    assert counts[0] / counts[1] >= 0.6 and counts[2] / counts[3] <= 0.05


@pytest.mark.parametrize("seed,shift_um", [(1, (7.3, -12.6)), (2, (-20.0, 4.4))])
def test_registration_recovers_the_shift_within_one_pixel(seed, shift_um):
    field = render_culture_field(seed=seed, params=CultureParams(dapi_shift_um=shift_um))
    reg = register_nuclear(field.dapi, field.rgb, mpp=field.mpp)
    # the registration moves the DAPI frame back: minus the shift it was drawn with
    error_px = np.hypot(reg.shift_um[0] + shift_um[0], reg.shift_um[1] + shift_um[1]) / field.mpp
    assert error_px <= 1.0, reg
    assert reg.correlation >= 0.2 and 0.0 <= reg.residual <= 1.0


def _nucleus_error_um(field, params, reg):
    """Largest distance (µm) between the true nucleus centres and where the registration maps
    their DAPI-frame positions on the brightfield."""
    ids = field.truth["cell_id"].to_numpy()
    centres = np.array(ndi.center_of_mass(field.nuclei > 0, field.nuclei, ids)) * field.mpp
    in_dapi = dapi_frame_points(centres, shape=field.rgb.shape[:2], mpp=field.mpp, params=params)
    return float(np.hypot(*(reg.points_to_brightfield(in_dapi) - centres).T).max())


def _shown_in_dapi(field, params, *, margin_um):
    """Ids of the cells whose nucleus centre lies at least ``margin_um`` inside the DAPI frame."""
    ids = field.truth["cell_id"].to_numpy()
    centres = np.array(ndi.center_of_mass(field.nuclei > 0, field.nuclei, ids)) * field.mpp
    in_dapi = dapi_frame_points(centres, shape=field.rgb.shape[:2], mpp=field.mpp, params=params)
    size = np.asarray(field.rgb.shape[:2]) * field.mpp
    inside = ((in_dapi >= margin_um) & (in_dapi <= size - margin_um)).all(axis=1)
    return set(ids[inside].tolist())


@pytest.mark.parametrize(
    "seed,rotation_deg,scale,shift_um",
    [(2, 7.0, 1.04, (5.0, -8.0)), (4, -9.0, 0.96, (-6.0, 3.0)), (7, 3.5, 0.95, (0.0, 11.0))],
)
def test_registration_recovers_rotation_and_scale(seed, rotation_deg, scale, shift_um):
    params = CultureParams(dapi_shift_um=shift_um, dapi_rotation_deg=rotation_deg, dapi_scale=scale)
    field = render_culture_field(seed=seed, params=params)
    reg = register_nuclear(field.dapi, field.rgb, mpp=field.mpp)
    # the registration undoes the turn and the scale the frame was drawn with
    assert abs(reg.rotation_deg + rotation_deg) <= 0.3, reg
    assert abs(reg.scale * scale - 1.0) <= 0.005, reg
    # every nucleus lands within a pixel of where it is (measured: 0.12-0.38 µm at 1 µm/px)
    assert _nucleus_error_um(field, params, reg) <= 1.0 * field.mpp
    record = reg.to_dict()
    assert record["rotation_deg"] == pytest.approx(reg.rotation_deg, abs=1e-3)
    assert Registration.from_dict(record).scale == pytest.approx(reg.scale, abs=1e-5)


def test_frame_turned_beyond_the_fit_is_refused_in_one_line():
    params = CultureParams(dapi_rotation_deg=25.0)
    field = render_culture_field(seed=2, params=params)
    with pytest.raises(RegistrationError) as err:
        register_nuclear(field.dapi, field.rgb, mpp=field.mpp, name="C4_dapi.tif")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("C4_dapi.tif: does not register to the brightfield image")
    assert "rotation" in message and "same field" in message


@pytest.mark.slow
def test_paired_mode_on_a_turned_rescaled_frame_assigns_nuclei_to_their_cells():
    params = CultureParams(dapi_shift_um=(4.0, -7.0), dapi_rotation_deg=-6.0, dapi_scale=1.04)
    field = render_culture_field(seed=1, params=params)
    nuclei, cells, reg = segment_paired(field.rgb, field.dapi, mpp=field.mpp)
    assert abs(reg.rotation_deg - 6.0) <= 0.3
    # the nuclei the DAPI frame holds (centre 8 µm inside it: a frame magnified 4 % about its
    # centre misses the field's rim, and no method finds nuclei it does not show)
    shown = _shown_in_dapi(field, params, margin_um=8.0)
    found_nuclei = matched_cells(field.nuclei, nuclei)
    found_cells = matched_cells(field.cells, cells)
    found = shown & found_nuclei.keys()
    right = sum(found_cells.get(t) == found_nuclei[t] for t in found)
    # found: IoU >= 0.5 with the true nucleus; right: grown into its own true cell (IoU >= 0.5)
    # (measured on 4 fields turned -6° to 8°, scaled 0.96-1.04: 98-100 % found, all in the right
    # cell, except a field whose brightfield registration channel is weak: 74 %)
    assert len(found) >= 0.95 * len(shown), (len(found), len(shown))
    assert right >= 0.95 * len(found), (right, len(found))
    # and the cells the frame shows are found whole (IoU >= 0.5) as often as on an unturned frame
    assert len(shown & found_cells.keys()) >= 0.9 * len(shown)


def test_mismatched_pair_is_refused_with_one_clear_line():
    field = render_culture_field(seed=1)
    other = render_culture_field(seed=11, params=CultureParams(dapi_shift_um=(5.0, 5.0)))
    with pytest.raises(RegistrationError) as err:
        register_nuclear(other.dapi, field.rgb, mpp=field.mpp, name="well_B3_dapi.tif")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("well_B3_dapi.tif: does not register to the brightfield image")
    assert "same field" in message


def test_nuclear_image_of_another_size_is_refused():
    field = render_culture_field(shape=(128, 160), seed=3)
    with pytest.raises(RegistrationError, match=r"^d\.tif: is 159 x 128 px, the brightfield"):
        register_nuclear(field.dapi[:, :159], field.rgb, mpp=field.mpp, name="d.tif")


@pytest.mark.slow
def test_paired_mode_finds_stained_and_unstained_cells_alike():
    counts, calls = np.zeros(4, int), np.zeros(2, int)
    for seed, shift in ((1, (7.3, -12.6)), (2, (-1.7, 9.4))):
        field = render_culture_field(seed=seed, params=CultureParams(dapi_shift_um=shift))
        nuclei, cells, _ = segment_paired(field.rgb, field.dapi, mpp=field.mpp)
        assert set(np.unique(cells)) == set(np.unique(nuclei))  # one cell per nucleus, same ids
        c, k = _recalls_and_pct(field, cells, nuclei)
        counts, calls = counts + c, calls + k
    recall_pos, recall_neg = counts[0] / counts[1], counts[2] / counts[3]
    assert recall_pos >= 0.85 and recall_neg >= 0.85, (recall_pos, recall_neg)
    assert abs(recall_pos - recall_neg) <= 0.05
    true_pct = 100 * counts[1] / (counts[1] + counts[3])
    assert abs(100 * calls[0] / calls[1] - true_pct) <= 5.0


@pytest.mark.slow
def test_sabgal_culture_assay_runs_whole_cells_through_the_pipeline(tmp_path):
    """The preset ``sabgal-culture`` (objects = "cells") analyses a culture photo end to end."""
    import json

    import pandas as pd
    from PIL import Image

    import senpath

    field = render_culture_field(seed=1)
    Image.fromarray(field.rgb).save(tmp_path / "well.png")
    store = senpath.analyze_slide(
        tmp_path / "well.png", out=tmp_path / "results", assay="sabgal-culture", mpp=field.mpp,
        config={"analysis": {"analysis_mpp": 1.0, "segmenter": "classical"}},
    )  # fmt: skip
    cells = pd.read_parquet(store / "cells.parquet")
    summary = json.loads((store / "summary.json").read_text())
    provenance = json.loads((store / "provenance.json").read_text())
    assert abs(len(cells) - len(field.truth)) <= 0.15 * len(field.truth)
    true_pct = 100 * field.truth["sabgal_positive"].mean()
    assert abs(summary["markers"]["sabgal"]["pct_positive"] - true_pct) <= 8.0
    assert cells["nucleus_area_um2"].isna().all()  # no nucleus is seen: blank, not the cell's
    assert cells["cell_area_um2"].between(150, 20_000).all()
    assert provenance["segmenter"]["method"] == "whole_cell"


def test_objects_setting_is_checked():
    from senpath.config import load_settings

    bad = {"assay": {"x": {"stains": ["xgal", "eosin"], "objects": "cell"}}}
    with pytest.raises(
        Exception, match=r"`assay\.x\.objects` = \"cell\" is not one of the choices"
    ):
        load_settings(bad)
    good = {"assay": {"x": {"stains": ["xgal", "eosin"], "objects": "cells"}}}
    assert load_settings(good).assays["x"].objects == "cells"


@pytest.mark.slow
def test_sample_sheet_nuclear_image_runs_the_paired_mode(tmp_path):
    """A sheet row with ``nuclear_image`` grows cells from its registered DAPI nuclei; a row whose
    DAPI frame is of another field fails with one line and the batch goes on."""
    import json

    import pandas as pd
    import tifffile
    from PIL import Image

    from senpath.pipeline import plan_batch, run_batch

    shift = (6.4, -9.2)
    params = CultureParams(dapi_shift_um=shift, dapi_rotation_deg=5.0, dapi_scale=1.03)
    field = render_culture_field(seed=2, params=params)
    other = render_culture_field(seed=12)
    Image.fromarray(field.rgb).save(tmp_path / "A1.png")
    Image.fromarray(field.rgb).save(tmp_path / "A2.png")
    tifffile.imwrite(tmp_path / "A1_dapi.tif", field.dapi)
    tifffile.imwrite(tmp_path / "B7_dapi.tif", other.dapi)
    (tmp_path / "sheet.csv").write_text(
        "patient_id,slide_id,path,assay,mpp,nuclear_image\n"
        "w1,A1,A1.png,sabgal-culture,1.0,A1_dapi.tif\n"
        "w1,A2,A2.png,sabgal-culture,1.0,B7_dapi.tif\n",
        encoding="utf-8",
    )
    jobs, problems = plan_batch(tmp_path / "sheet.csv")
    assert problems == [] and jobs[0].nuclear_image == tmp_path / "A1_dapi.tif"
    reports = run_batch(
        jobs, out=tmp_path / "results",
        config={"analysis": {"analysis_mpp": 1.0, "segmenter": "classical"}},
    )  # fmt: skip
    by_id = {r.slide_id: r for r in reports}
    assert by_id["A1"].status == "ok"
    assert by_id["A2"].status == "failed"
    assert "B7_dapi.tif: does not register" in by_id["A2"].message
    assert "\n" not in by_id["A2"].message
    store = tmp_path / "results" / "A1"
    provenance = json.loads((store / "provenance.json").read_text())
    # the turned, rescaled frame is registered and the transform recorded
    reg = Registration.from_dict(provenance["nuclear_image"]["registration"])
    assert abs(reg.rotation_deg + 5.0) <= 0.3 and abs(reg.scale * 1.03 - 1.0) <= 0.005
    assert _nucleus_error_um(field, params, reg) <= 1.0
    assert provenance["segmenter"]["method"] == "paired_nuclei"
    cells = pd.read_parquet(store / "cells.parquet")
    shown = len(_shown_in_dapi(field, params, margin_um=0.0))  # the turned frame misses the rim
    assert abs(len(cells) - shown) <= 0.1 * shown
    assert cells["nucleus_area_um2"].notna().all()  # real nuclei, from DAPI
    summary = json.loads((store / "summary.json").read_text())
    true_pct = 100 * field.truth["sabgal_positive"].mean()
    assert abs(summary["markers"]["sabgal"]["pct_positive"] - true_pct) <= 6.0
