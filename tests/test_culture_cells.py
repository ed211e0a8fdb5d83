"""Cultured cells without a nuclear counterstain: whole-cell mode and paired-DAPI mode vs synthetic truth.

Fields from :func:`senpath.synth.render_culture_field`: flat spread cells, X-gal granules in ~40 % of
them, no counterstain, stain vectors turned 6 degrees from the pipeline's, 15 % vignetting; the DAPI
frame offset by a known shift.
"""

from __future__ import annotations

import numpy as np
import pytest

from senpath.measure import measure_cells
from senpath.segment.paired_nuclei import (
    RegistrationError,
    paired_compartments,
    register_nuclear,
    segment_paired,
)
from senpath.segment.whole_cell import segment_whole_cells
from senpath.stain import StainSet, deconvolve
from senpath.synth import CultureParams, matched_cells, render_culture_field

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
    for seed in (1, 2):
        field = render_culture_field(seed=seed)
        cells = segment_whole_cells(field.rgb, mpp=field.mpp)
        c, k = _recalls_and_pct(field, cells)
        counts, calls = counts + c, calls + k
    recall_pos, recall_neg = counts[0] / counts[1], counts[2] / counts[3]
    # measured on seeds 1-4 (benchmarks/culture_segmentation.py): 0.75 stained, 0.56 unstained;
    # the colour threshold finds 0.80 and 0.00
    assert recall_pos >= 0.6 and recall_neg >= 0.5, (recall_pos, recall_neg)
    true_pct = 100 * counts[1] / (counts[1] + counts[3])
    assert abs(100 * calls[0] / calls[1] - true_pct) <= 10.0


@pytest.mark.slow
def test_colour_threshold_finds_no_unstained_cell():
    """The failure the whole-cell mode is for: a blue-colour foreground misses every unstained cell."""
    field = render_culture_field(seed=1)
    cells = segment_whole_cells(
        field.rgb, mpp=field.mpp, method="xgal_colour", min_foreground_od=0.04,
        xgal_vector=STAINS.vectors[0],
    )  # fmt: skip
    counts, _ = _recalls_and_pct(field, cells)
    assert counts[0] / counts[1] >= 0.7 and counts[2] / counts[3] <= 0.05


@pytest.mark.parametrize("seed,shift_um", [(1, (7.3, -12.6)), (2, (-20.0, 4.4))])
def test_registration_recovers_the_shift_within_one_pixel(seed, shift_um):
    field = render_culture_field(seed=seed, params=CultureParams(dapi_shift_um=shift_um))
    reg = register_nuclear(field.dapi, field.rgb, mpp=field.mpp)
    # the registration moves the DAPI frame back: minus the shift it was drawn with
    error_px = np.hypot(reg.shift_um[0] + shift_um[0], reg.shift_um[1] + shift_um[1]) / field.mpp
    assert error_px <= 1.0, reg
    assert reg.correlation >= 0.2 and 0.0 <= reg.residual <= 1.0


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
