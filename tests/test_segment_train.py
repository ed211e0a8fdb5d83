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
