"""Training entry point: a stopped-and-resumed run equals an uninterrupted one (reproducible weights)."""

from __future__ import annotations

import json

import pytest

from senpath.segment import train as T

TINY = ["--widths", "8,8,16,16,16", "--batch-size", "2", "--crop-size", "32", "--lr", "1e-3"]
TINY += ["--consep-validation", "1", "--validate-minutes", "1000", "--threads", "1"]


@pytest.mark.slow
@pytest.mark.shared_data
def test_stop_at_then_resume_reproduces_the_uninterrupted_run(shared_data, tmp_path):
    torch = pytest.importorskip("torch")
    common = ["--data-root", str(shared_data), "--steps", "4", "--seed", "3", *TINY]
    T.main(["--out", str(tmp_path / "a"), *common])
    T.main(["--out", str(tmp_path / "b"), *common, "--stop-at", "2"])
    assert (tmp_path / "b" / "step_000002.pt").is_file()
    T.main(["--out", str(tmp_path / "b"), *common, "--resume", str(tmp_path / "b" / "last.pt")])
    a = torch.load(tmp_path / "a" / "step_000004.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "step_000004.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    events = [json.loads(line).get("event") for line in open(tmp_path / "b" / "log.jsonl")]
    assert events.count("stopped") == 1 and events[-1] == "finished"


def test_a_weight_channel_weighs_the_loss_and_uniform_weights_change_nothing():
    import torch

    torch.manual_seed(0)
    logits = torch.randn(2, 2, 16, 16)
    target = torch.zeros(2, 2, 16, 16)
    target[:, 0, 4:8, 4:8] = 1
    target[:, 1, 4:8, 4:8] = 0.5
    plain, _ = T.segmentation_loss(logits, target)
    uniform, _ = T.segmentation_loss(
        logits, torch.cat([target, torch.full((2, 1, 16, 16), 3.0)], 1)
    )
    assert float(uniform) == pytest.approx(float(plain), rel=1e-5)
    # Weighing up the nucleus pixels: the loss follows their error, not the background's.
    weight = torch.ones(2, 1, 16, 16)
    weight[:, 0, 4:8, 4:8] = 10.0
    worse = logits.clone()
    worse[:, 0, 4:8, 4:8] = -5.0  # the nucleus called background
    base, _ = T.segmentation_loss(worse, target)
    weighted, _ = T.segmentation_loss(worse, torch.cat([target, weight], 1))
    assert float(weighted) > float(base)


def test_pixels_of_weight_zero_count_in_no_term_of_the_loss():
    """A crop's ignored padding (weight 0): whatever the network says there, the loss is the same."""
    import torch

    torch.manual_seed(1)
    logits = torch.randn(2, 2, 16, 16)
    target = torch.zeros(2, 3, 16, 16)
    target[:, 0, 4:8, 4:8] = 1
    target[:, 1, 4:8, 4:8] = 0.5
    target[:, 2] = 1.0
    target[:, 2, :, 10:] = 0.0  # the padding
    loss, parts = T.segmentation_loss(logits, target)
    other = logits.clone()
    other[:, :, :, 10:] = 8.0  # a confident nucleus called in the padding
    moved, moved_parts = T.segmentation_loss(other, target)
    assert float(moved) == pytest.approx(float(loss), rel=1e-6)
    assert moved_parts["dice"] == pytest.approx(parts["dice"], rel=1e-6)
    # ...and the same change where pixels count does move it
    other[:, :, :, :10] = 8.0
    assert float(T.segmentation_loss(other, target)[0]) > float(loss) + 0.1
