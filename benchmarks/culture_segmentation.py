"""Cultured-cell SA-beta-gal without a counterstain: whole-cell methods compared on synthetic fields.

Prints, per method, the detection recall (IoU >= 0.5) of X-gal-positive and unstained cells, the
precision, and the % SA-beta-gal+ among the cells found against the truth; then the paired-DAPI mode
(registration shift error, recall). Fields: :func:`senpath.synth.render_culture_field` (flat spread
cells, X-gal in ~40 %, stain vectors turned 6 degrees from the pipeline's, 15 % vignetting).

    python benchmarks/culture_segmentation.py [--fields 4] [--first-field 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from senpath.measure import measure_cells
from senpath.segment.paired_nuclei import paired_compartments, segment_paired
from senpath.segment.whole_cell import segment_whole_cells
from senpath.stain import REFERENCE_STAINS, StainSet, deconvolve, unit
from senpath.synth import CultureParams, matched_cells, render_culture_field

#: The stains the pipeline deconvolves a culture photo with, and the per-cell call.
STAINS = StainSet.from_names(["xgal", "cell_body"], overrides={"cell_body": (1.0, 1.0, 1.0)})
THRESHOLD_OD = 0.10  # X-gal p75 over the whole cell


def xgal_positive(rgb, cells, nuclei=None, *, mpp):
    """Per-cell call (dict id -> bool): p75 X-gal OD over the whole cell >= THRESHOLD_OD."""
    i0 = np.percentile(rgb.reshape(-1, 3), 99.0, axis=0)
    conc = deconvolve(rgb, STAINS, i0)
    comps = None
    if nuclei is not None:
        comps = paired_compartments(nuclei, cells, mpp=mpp)
    else:
        zero = np.zeros_like(cells)
        comps = {"nucleus": cells, "cytoplasm": zero, "cell": cells, "perinuclear": zero,
                 "nucleus_perinuclear": cells}  # fmt: skip
    table = measure_cells(cells, conc, stain_names=STAINS.names, mpp=mpp, compartments=comps)
    return dict(zip(table["cell_id"], table["xgal_od_p75_cell"] >= THRESHOLD_OD, strict=True))


def score(field, labels, nuclei=None):
    found = matched_cells(field.cells, labels)
    truth = field.truth.set_index("cell_id")
    pos = set(truth.index[truth.sabgal_positive])
    neg = set(truth.index[~truth.sabgal_positive])
    calls = xgal_positive(field.rgb, labels, nuclei, mpp=field.mpp)
    called = [calls.get(i, False) for i in calls]
    return {
        "tp_pos": len(pos & found.keys()), "n_pos": len(pos),
        "tp_neg": len(neg & found.keys()), "n_neg": len(neg),
        "n_pred": int(labels.max()), "matched": len(found),
        "called_pos": int(np.sum(called)), "called": len(called),
    }  # fmt: skip


def report(name, rows, seconds):
    s = {k: sum(r[k] for r in rows) for k in rows[0]}
    true_pct = 100 * s["n_pos"] / (s["n_pos"] + s["n_neg"])
    print(
        f"{name:34s} recall+ {s['tp_pos'] / s['n_pos']:.3f}  recall- {s['tp_neg'] / s['n_neg']:.3f}"
        f"  precision {s['matched'] / max(1, s['n_pred']):.3f}  %pos {100 * s['called_pos'] / max(1, s['called']):5.1f}"
        f" (truth {true_pct:.1f})  {seconds:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--first-field", type=int, default=1, help="5: the held-out fields 5-8")
    args = parser.parse_args()
    seeds = range(args.first_field, args.first_field + args.fields)
    fields = [render_culture_field(seed=s) for s in seeds]
    xgal = unit(REFERENCE_STAINS["xgal"])
    for name, kwargs in (
        ("X-gal colour threshold", {"method": "xgal_colour", "min_foreground_od": 0.04}),
        ("total OD, distance seeds", {"method": "total_od", "seeds": "distance"}),
        (
            "total OD + contrast, nucleus seeds",
            {"method": "od_contrast", "min_foreground_od": 0.06},
        ),
        ("total OD, strong nucleus seeds only", {"faint_seeds": False}),
        ("total OD, nucleus seeds (default)", {}),
    ):
        t = time.perf_counter()
        rows = [
            score(f, segment_whole_cells(f.rgb, mpp=f.mpp, xgal_vector=xgal, **kwargs))
            for f in fields
        ]
        report(name, rows, time.perf_counter() - t)
    rows, errors = [], []
    t = time.perf_counter()
    for k in range(len(fields)):
        shift = (7.3 - 9 * k, -12.6 + 5 * k)
        g = render_culture_field(seed=k + 1, params=CultureParams(dapi_shift_um=shift))
        nuclei, cells, reg = segment_paired(g.rgb, g.dapi, mpp=g.mpp)
        errors.append(np.hypot(reg.shift_um[0] + shift[0], reg.shift_um[1] + shift[1]) / g.mpp)
        rows.append(score(g, cells, nuclei))
    report("paired DAPI, cells grown from nuclei", rows, time.perf_counter() - t)
    print(f"registration: largest shift error {max(errors):.2f} px over {len(errors)} fields")
    turned_frames(len(fields))


def turned_frames(n: int) -> None:
    """Registration of DAPI frames turned 3-10 degrees and scaled 0.95-1.05 (seeded): the largest
    error of a nucleus position (µm) after registration, per field, or why it was refused."""
    from scipy import ndimage as ndi

    from senpath.segment.paired_nuclei import RegistrationError, register_nuclear
    from senpath.synth import dapi_frame_points

    rng = np.random.default_rng(0)
    for k in range(n):
        turn = float(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 10.0))
        scale = float(rng.uniform(0.95, 1.05))
        shift = tuple(float(v) for v in rng.uniform(-15.0, 15.0, 2))
        params = CultureParams(dapi_shift_um=shift, dapi_rotation_deg=turn, dapi_scale=scale)
        g = render_culture_field(seed=k + 1, params=params)
        ids = g.truth["cell_id"].to_numpy()
        centres = np.array(ndi.center_of_mass(g.nuclei > 0, g.nuclei, ids)) * g.mpp
        in_dapi = dapi_frame_points(centres, shape=g.rgb.shape[:2], mpp=g.mpp, params=params)
        t = time.perf_counter()
        try:
            reg = register_nuclear(g.dapi, g.rgb, mpp=g.mpp)
        except RegistrationError as exc:
            print(f"turned frame {k + 1}: {turn:+.1f} deg x{scale:.3f}: {exc}")
            continue
        error = np.hypot(*(reg.points_to_brightfield(in_dapi) - centres).T)
        print(
            f"turned frame {k + 1}: {turn:+.1f} deg x{scale:.3f} -> {-reg.rotation_deg:+.2f} deg "
            f"x{1 / reg.scale:.4f}, r {reg.correlation:.2f}, nucleus error max "
            f"{error.max():.2f} µm ({time.perf_counter() - t:.1f} s)"
        )


if __name__ == "__main__":
    main()
