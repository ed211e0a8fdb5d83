"""Per-cell marker accuracy of the whole pipeline on synthetic slides of every assay, with the default
CNN segmenter and with the classical one.

The bars are the issue's acceptance criteria: positivity F1 >= 0.95 on matched cells and H-score within
±10 of the truth, per marker, with the pipeline's own segmentation. Measured (seed 3, 1024² px at
0.5 µm/px): classical Ki67 F1 0.96-1.0, p16 1.0, SA-beta-gal 0.975-0.992, H-score errors <= 6.6 (Fast
Red Ki67); shipped CNN detection F1 0.971-0.985, Ki67 0.963-1.0, p16 1.0, SA-beta-gal 0.976-1.0,
H-score errors <= 6.5 (Fast Red Ki67).
"""

from __future__ import annotations

import pandas as pd
import pytest

import senpath
from senpath import synth
from senpath.config import AnalysisConfig, get_assay
from senpath.validation import compare_with_truth


@pytest.mark.slow
@pytest.mark.parametrize("segmenter", ["cnn", "classical"])
@pytest.mark.parametrize("assay", synth.ASSAYS)
def test_marker_calls_match_truth_every_assay(tmp_path, assay, segmenter):
    s = synth.write_slide(
        tmp_path / f"{assay}.tif", assay=assay, shape=(1024, 1024), mpp=0.5, seed=3,
        params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip
    store = senpath.analyze_slide(
        s.path, out=tmp_path / "res", assay=assay, config=AnalysisConfig(segmenter=segmenter)
    )
    res = senpath.load_results(store)
    truth = pd.read_parquet(s.truth_path)
    markers = [m.name for m in get_assay(assay).markers]
    assert sorted(markers) == sorted(synth.ASSAY_MARKERS[assay])
    cmp = compare_with_truth(res.cells, truth, markers=markers)
    assert cmp["detection"]["f1"] >= (0.95 if segmenter == "cnn" else 0.90), cmp["detection"]
    assert res.provenance.segmenter_method == segmenter
    for m in markers:
        assert cmp[m]["f1"] >= 0.95, (m, cmp[m])
        assert abs(cmp[m]["h_score"] - cmp[m]["h_score_truth"]) <= 10.0, (m, cmp[m])
        assert abs(cmp[m]["pct_positive"] - cmp[m]["pct_positive_truth"]) <= 3.0, (m, cmp[m])
