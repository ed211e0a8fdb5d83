"""Scoring: metrics by hand on tiny label images, and evaluate_folder on files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("stardist")
pytest.importorskip("cellseg_metrics")

from senpath.segment.evaluate import evaluate_folder, evaluate_labels, score_image  # noqa: E402


def _two_squares():
    true = np.zeros((20, 20), np.int32)
    true[2:8, 2:8] = 1
    true[10:18, 10:18] = 2
    return true


def test_perfect_prediction_scores_one():
    true = _two_squares()
    s = score_image(true, true * 5)  # ids need not agree
    assert s["tp"] == 2 and s["fp"] == 0 and s["fn"] == 0
    assert s["f1"] == pytest.approx(1.0) and s["pq"] == pytest.approx(1.0)
    assert s["aji"] == pytest.approx(1.0)


def test_missed_and_spurious_nuclei_by_hand():
    true = _two_squares()
    pred = np.zeros_like(true)
    pred[2:8, 2:8] = 1  # found
    pred[0:2, 15:19] = 2  # spurious, nucleus 2 missed
    s = score_image(true, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    assert s["f1"] == pytest.approx(0.5)
    # AJI: intersection 36 / (36 + 64 missed + 8 spurious)
    assert s["aji"] == pytest.approx(36 / 108, abs=1e-6)


def test_pooled_differs_from_mean():
    true = _two_squares()
    empty_miss = np.zeros_like(true)
    ev = evaluate_labels([true, true], [true, empty_miss], ["good", "bad"])
    assert ev.pooled["f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))  # tp 2, fn 2
    assert ev.mean["f1"] == pytest.approx(0.5)
    assert list(ev.per_image["image"]) == ["good", "bad"]


def test_evaluate_folder_reads_pairs(tmp_path):
    import cv2
    import tifffile

    true = _two_squares()
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    rgb = np.full(true.shape + (3,), 230, np.uint8)
    rgb[true > 0] = 50
    cv2.imwrite(str(tmp_path / "img" / "a.png"), rgb)
    tifffile.imwrite(tmp_path / "lab" / "a_labels.tif", true)

    def threshold(image):
        from skimage.measure import label

        return label(image.mean(axis=2) < 128)

    ev = evaluate_folder(tmp_path / "img", tmp_path / "lab", mpp=0.5, predict=threshold)
    assert ev.pooled["f1"] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="no images"):
        evaluate_folder(tmp_path / "img", tmp_path / "lab", mpp=0.5, pattern="*.jpg")


def test_images_and_labels_in_one_folder_are_not_their_own_labels(tmp_path):
    """The DeepLIIF layout (``6_2_ihc.png`` beside ``6_2_labels.tif``), as ``senpath evaluate``'s
    own example runs it: the image matched itself as its label image first and the run stopped
    with "label images differ in shape"."""
    import cv2
    import tifffile

    true = _two_squares()
    rgb = np.full(true.shape + (3,), 230, np.uint8)
    rgb[true > 0] = 50
    cv2.imwrite(str(tmp_path / "a_ihc.png"), rgb)
    tifffile.imwrite(tmp_path / "a_labels.tif", true)

    def threshold(image):
        from skimage.measure import label

        return label(image.mean(axis=2) < 128)

    ev = evaluate_folder(tmp_path, tmp_path, mpp=0.5, pattern="*_ihc.png", predict=threshold)
    assert ev.pooled["f1"] == pytest.approx(1.0)


def test_recall_by_stain_counts_found_nuclei_per_class_by_hand():
    from senpath.segment.evaluate import recall_by_stain

    true = np.zeros((20, 20), np.int32)
    true[2:6, 2:6] = 1  # stained, found exactly
    true[10:15, 10:15] = 2  # stained, prediction too small (IoU 9/25 = 0.36)
    true[15:19, 1:5] = 3  # unstained, missed
    true[1:4, 14:19] = 4  # unstained, found exactly
    pred = np.zeros_like(true)
    pred[2:6, 2:6] = 5
    pred[10:13, 10:13] = 7
    pred[1:4, 14:19] = 9
    out = recall_by_stain([true], [pred], [{"dab": np.array([1, 2])}], thresh=0.5)
    assert out["dab"] == {"found": 1, "total": 2, "recall": 0.5}
    assert out["unstained"] == {"found": 1, "total": 2, "recall": 0.5}
    assert out["gap_dab"]["points"] == 0.0
    loose = recall_by_stain([true], [pred], [{"dab": np.array([1, 2])}], thresh=0.3)
    assert loose["dab"]["recall"] == 1.0 and loose["gap_dab"]["points"] == -50.0


def test_ways_table_compares_scores_and_gaps_per_set() -> None:
    from senpath.segment.export import gap_summary, ways_table

    def report(f1: float, gap: float | None) -> dict:
        r: dict = {"pooled": {"f1": f1, "pq": 0.5}, "mean": {"aji": 0.6}}
        if gap is not None:
            r["recall_by_stain"] = {"iou_0.1": {"dab": {"recall": 0.9}, "gap_dab": {"points": gap}}}
        return r

    reports = {
        "plain": {"he": report(0.7, None), "h_dab": report(0.8, -8.64)},
        "R 0.6": {"he": report(0.7, None), "h_dab": report(0.79, -4.2)},
    }
    rows = ways_table(reports, extra=("gain", {"he": "1.00", "h_dab": "2.00"}))

    assert gap_summary(reports["plain"]["h_dab"]) == "dab -8.6"
    assert gap_summary(reports["plain"]["he"]) == ""
    assert rows[0] == (
        "| set | plain F1 / AJI / PQ | R 0.6 F1 / AJI / PQ | gaps IoU 0.1, plain "
        "| gaps IoU 0.1, R 0.6 | gain |"
    )
    assert rows[1] == "|---|---|---|---|---|---|"
    assert rows[3] == (
        "| h_dab | 0.800 / 0.600 / 0.500 | 0.790 / 0.600 / 0.500 | dab -8.6 | dab -4.2 | 2.00 |"
    )
