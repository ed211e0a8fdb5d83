"""Ki67 scoring on real IHC tiles with the ground-truth nuclei (isolates scoring from segmentation).

DeepLIIF sample tiles (``ki67_ihc_tiles/``, ~0.25 µm/px): the annotated instance labels are the nuclei;
senpath measures them (:func:`measure_cells`), estimates the stain vectors per tile and scores them with
the ``ki67`` preset. Measured (estimate_background I0, per-tile stain estimate, preset 0.15 OD threshold):

    tile       n    F1     LI    LI truth
    22_2      140  1.000   7.1    7.1
    34_3      101  0.978  22.8   21.8
    6_2        46  0.913  52.2   47.8
    799_2      64  0.667   3.1    1.6   (one positive cell: one false positive halves F1)
    Bladder1  188  0.611  11.2    8.0   (4 "negatives" at DAB 0.6-0.9 OD, 4 "positives" at <= 0.07 OD:
                                         label/registration discordance, not a threshold problem)
    Lung1      60  0.957  20.0   18.3
    pooled    599  0.879  15.4   13.5

With the label panels moved onto their nuclei (``senpath.segment.datasets.ki67_tile``: Lung1 by 7 px,
Bladder1 by 6 px); before, Lung1 had 61 nuclei (one now leaves the frame), F1 0.957, LI 19.7 / 18.0,
and Bladder1 was the same: its discordant calls are not the offset's.

The issue's target (F1 >= 0.90 pooled) is not met on this set; the floors below sit a little under what
is measured so a regression fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from senpath.config import get_assay
from senpath.measure import measure_cells
from senpath.score import score_cells
from senpath.segment.datasets import ki67_tile
from senpath.stain import StainSet, deconvolve, estimate_background, estimate_stains, rgb_to_od

MPP = 0.25


def _score_tile(stem):
    # Lung1's and Bladder1's label panels moved onto their nuclei
    rgb, labels, _ = ki67_tile(Path(stem).parent.parent, Path(stem).name)
    positive = json.loads(open(f"{stem}_positive.json").read())
    assay = get_assay("ki67")
    i0 = estimate_background(rgb)  # these crops hold no glass: the brightest pixels stand for it
    est = estimate_stains(rgb_to_od(rgb, i0).reshape(-1, 3), StainSet.from_names(assay.stains))
    cells = measure_cells(
        labels, deconvolve(rgb, est.stains, i0), stain_names=est.stains.names, mpp=MPP
    )
    scored = score_cells(cells, assay)
    truth = np.array([positive.get(str(i), 0) == 1 for i in scored["cell_id"]])
    return scored["ki67_positive"].to_numpy(dtype=bool), truth


def _f1(pred, truth):
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.slow
@pytest.mark.shared_data
def test_ki67_calls_on_real_tiles_with_true_nuclei(shared_data):
    folder = shared_data / "ki67_ihc_tiles"
    stems = sorted(str(p)[: -len("_ihc.png")] for p in folder.glob("*_ihc.png"))
    assert len(stems) == 6, stems
    preds, truths = [], []
    for stem in stems:
        pred, truth = _score_tile(stem)
        assert len(pred) > 40
        # per tile: labelling index within 5 points (measured at most 4.4)
        assert abs(100 * pred.mean() - 100 * truth.mean()) <= 5.0, (stem, pred.mean(), truth.mean())
        preds.append(pred)
        truths.append(truth)
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    # the README's counts (600 nuclei, 81 positive), less one of Lung1's moved out of the frame
    assert len(pred) == 599 and truth.sum() == 81
    assert _f1(pred, truth) >= 0.86  # measured 0.879
    assert abs(100 * pred.mean() - 100 * truth.mean()) <= 2.5  # measured +1.8 points
    # the well-annotated tiles (F1 >= 0.9 measured) stay there
    good = [
        _f1(p, t)
        for s, p, t in zip(stems, preds, truths, strict=True)
        if s.endswith(("22_2", "34_3", "Lung1"))
    ]
    assert min(good) >= 0.93
