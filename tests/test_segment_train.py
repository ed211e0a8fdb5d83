"""Training entry point: a stopped-and-resumed run equals an uninterrupted one (reproducible weights)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from senpath.segment import train as T

TINY = ["--widths", "8,8,16,16,16", "--batch-size", "2", "--crop-size", "32", "--lr", "1e-3"]
TINY += ["--consep-validation", "1", "--validate-minutes", "1000", "--threads", "1"]
SHIPPED = Path(__file__).resolve().parents[1] / "models"  # the shipped weights' folder


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


def _tiny_images(n: int, seed: int) -> list:
    import numpy as np

    from senpath.segment.datasets import AnnotatedImage

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[:72, :80]
        labels = np.zeros((72, 80), np.int32)
        for k, (cy, cx) in enumerate(rng.integers(6, 66, size=(12, 2)), start=1):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = k
        rgb = np.full((72, 80, 3), (225, 190, 215), np.uint8)
        rgb[labels > 0] = (80, 50, 140)
        rgb = np.clip(rgb + rng.normal(0, 2, rgb.shape), 0, 255).astype(np.uint8)
        out.append(
            AnnotatedImage(f"t/{seed}-{i}", "he", rgb, labels, 0.5, {"dab": np.array([2, 5])})
        )
    return out


def test_a_data_pack_holds_the_images_and_their_annotations(tmp_path):
    import numpy as np

    from senpath.segment.datapack import read_pack, write_pack
    from senpath.segment.weights import sha256_file

    train, held_out = {"monuseg": _tiny_images(2, 0)}, {"monuseg": _tiny_images(1, 1)}
    sha = write_pack(tmp_path / "p.npz", train, held_out)
    assert sha == sha256_file(tmp_path / "p.npz")
    got_train, got_held_out = read_pack(tmp_path / "p.npz")
    for want, got in ((train, got_train), (held_out, got_held_out)):
        assert list(got) == ["monuseg"] and len(got["monuseg"]) == len(want["monuseg"])
        for a, b in zip(want["monuseg"], got["monuseg"], strict=True):
            assert (a.name, a.kind, a.mpp) == (b.name, b.kind, b.mpp)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.stained["dab"], b.stained["dab"])
            assert b.rgb.shape == a.rgb.shape and b.rgb.dtype == np.uint8
    # training RGB as JPEG (close), held-out RGB lossless (exact)
    diff = np.abs(got_train["monuseg"][0].rgb.astype(int) - train["monuseg"][0].rgb.astype(int))
    assert 0 < diff.mean() < 3
    np.testing.assert_array_equal(got_held_out["monuseg"][0].rgb, held_out["monuseg"][0].rgb)
    (tmp_path / "bad.npz").write_bytes(b"not a pack")
    with pytest.raises(ValueError):
        read_pack(tmp_path / "bad.npz")


def _loader(workers: int = 2):
    from senpath.segment import data as D

    sampler = D.CropSampler({"monuseg": _tiny_images(3, 0)}, D.source_weights(0.0), crop_size=32)
    return T._Batches(sampler, 2, workers=workers)


@pytest.mark.slow
def test_closing_the_loader_lets_its_workers_finish_and_terminates_only_a_stuck_pool(monkeypatch):
    """``Pool.terminate`` while the pool's task thread still hands out steps can deadlock it
    (it hung CI's suite): a run's end closes the pool and lets the workers finish the batches
    drawn ahead; only a pool that does not stop is terminated."""
    import multiprocessing.pool

    calls = []
    terminate = multiprocessing.pool.Pool.terminate

    def recorded(pool):
        calls.append("terminate")
        terminate(pool)

    monkeypatch.setattr(multiprocessing.pool.Pool, "terminate", recorded)
    ahead = _loader()
    ahead.get(0, 8)  # steps 1-3 still drawn ahead
    ahead.close()
    assert calls == [] and ahead.pool is None and not ahead.pending
    ahead.close()  # twice: nothing

    monkeypatch.setattr(T, "CLOSE_TIMEOUT_S", 0.5)
    stuck = _loader()
    stuck.get(0, 8)
    monkeypatch.setattr(multiprocessing.pool.Pool, "join", lambda pool: time.sleep(5))
    stuck.close()
    assert calls == ["terminate"]


@pytest.mark.slow
def test_a_loader_closed_thirty_times_never_hangs():
    """The deadlock of ``terminate`` showed about once in 30 closes (12th, here, before the fix)."""
    import threading

    def cycles():
        for _ in range(30):
            ahead = _loader()
            for step in (0, 1, 2, 5):
                ahead.get(step, 8)
            ahead.close()

    worker = threading.Thread(target=cycles, daemon=True)
    worker.start()
    worker.join(240)
    assert not worker.is_alive(), "closing the loader hung"


@pytest.mark.slow
def test_batches_drawn_by_worker_processes_are_the_same_and_train(tmp_path):
    """``--loader-workers`` draws the batches ahead in other processes: the same batches, and a
    run with them trains to the same weights (to float rounding)."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from senpath.segment import data as D
    from senpath.segment.datapack import write_pack

    sources = {"monuseg": _tiny_images(3, 0)}

    def sampler():
        return D.CropSampler(sources, D.source_weights(0.0), crop_size=32, seed=2)

    ahead = T._Batches(sampler(), 2, workers=2)
    try:
        for step in (0, 1, 2, 5):  # in order, then a jump
            x, y = ahead.get(step, 8)
            want_x, want_y = sampler().batch(step, 2)
            np.testing.assert_array_equal(x, want_x)
            np.testing.assert_array_equal(y, want_y)
        assert max(ahead.pending) <= 8 - 1 and len(ahead.pending) <= 4  # bounded, not past the end
    finally:
        ahead.close()
    pack = tmp_path / "p.npz"
    write_pack(pack, sources, {"monuseg": _tiny_images(1, 1)})
    common = ["--data-pack", str(pack), "--steps", "3", "--seed", "2", *TINY]
    common += ["--validate-minutes", "0"]  # none: the last of repeated options counts
    T.main(["--out", str(tmp_path / "a"), *common])
    T.main(["--out", str(tmp_path / "b"), *common, "--loader-workers", "2"])
    a = torch.load(tmp_path / "a" / "step_000003.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "step_000003.pt", weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=1e-5)
    events = [json.loads(line).get("event") for line in open(tmp_path / "b" / "log.jsonl")]
    assert "validation" not in events and events[-1] == "finished"
    assert b["args"]["data_pack"] == str(pack)


def test_a_stem_network_trains_records_its_stem_and_is_not_resumed_as_another(tmp_path):
    torch = pytest.importorskip("torch")
    from senpath.segment.datapack import write_pack
    from senpath.segment.net import NetConfig

    pack = tmp_path / "p.npz"
    write_pack(pack, {"monuseg": _tiny_images(2, 0)}, {"monuseg": _tiny_images(1, 1)})
    common = ["--data-pack", str(pack), "--steps", "2", "--seed", "2", *TINY]
    common += ["--validate-minutes", "0", "--widths", "8,8,16,16", "--stem", "4"]
    T.main(["--out", str(tmp_path / "a"), *common])
    ckpt = torch.load(tmp_path / "a" / "step_000002.pt", weights_only=True)
    assert NetConfig.from_dict(ckpt["net_config"]) == NetConfig(widths=(8, 8, 16, 16), stem=4)
    assert ckpt["model"]["stem_in.0.weight"].shape[:2] == (4, 3)
    resume = ["--resume", str(tmp_path / "a" / "last.pt")]
    with pytest.raises(SystemExit, match="--stem 6: .* has stem 4"):
        T.main(["--out", str(tmp_path / "a"), *common[:-2], "--stem", "6", *resume])
    # resumed without naming the network, and longer: the checkpoint still says how the run began
    from senpath.segment.export import reproduce_command

    longer = ["--data-pack", str(pack), "--steps", "3", "--seed", "2", *TINY]
    T.main(["--out", str(tmp_path / "a"), *longer, "--validate-minutes", "0", *resume])
    resumed = torch.load(tmp_path / "a" / "step_000003.pt", weights_only=True)
    command = reproduce_command(resumed)
    assert "--steps 3" in command and "--widths 8,8,16,16 --stem 4" in command


def test_init_seed_draws_a_new_networks_weights_and_is_reproduced(tmp_path):
    """``--init-seed`` (local SGD's workers start from one network) sets the initial weights
    apart from the run's seed, is in the reproduce command, and is refused with ``--init``."""
    torch = pytest.importorskip("torch")
    from senpath.segment.datapack import write_pack
    from senpath.segment.export import reproduce_command

    pack = tmp_path / "p.npz"
    write_pack(pack, {"monuseg": _tiny_images(2, 0)}, {"monuseg": _tiny_images(1, 1)})
    common = ["--data-pack", str(pack), "--steps", "2", "--stop-at", "0", *TINY]
    common += ["--validate-minutes", "0"]
    for name, seeds in (
        ("a", ["--seed", "1", "--init-seed", "9"]),
        ("b", ["--seed", "2", "--init-seed", "9"]),
        ("c", ["--seed", "2"]),
    ):
        T.main(["--out", str(tmp_path / name), *common, *seeds])  # fmt: skip
    a, b, c = (torch.load(tmp_path / n / "step_000000.pt", weights_only=True) for n in ("abc"))
    assert all(torch.equal(a["model"][k], v) for k, v in b["model"].items())
    assert not all(torch.equal(c["model"][k], v) for k, v in b["model"].items())
    assert "--seed 2 --steps 2 --init-seed 9 " in reproduce_command(b)
    assert "--init-seed" not in reproduce_command(c)
    with pytest.raises(SystemExit, match="--init-seed 9: the weights come from --init"):
        T.main(["--out", str(tmp_path / "d"), *common, "--init", str(SHIPPED), "--init-seed", "9"])


def test_a_run_gives_back_the_callers_signal_handlers(tmp_path):
    """``train`` stops cleanly on TERM / INT while it runs; afterwards the process must answer
    them as before (it swallowed TERM for good: a test run under ``timeout`` never ended)."""
    pytest.importorskip("torch")
    import signal

    from senpath.segment.datapack import write_pack

    pack = tmp_path / "p.npz"
    write_pack(pack, {"monuseg": _tiny_images(2, 0)}, {"monuseg": _tiny_images(1, 1)})
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    T.main(["--out", str(tmp_path / "a"), "--data-pack", str(pack), "--steps", "1", *TINY,
            "--validate-minutes", "0"])  # fmt: skip
    assert {s: signal.getsignal(s) for s in before} == before


class _StuckAfterFirstBatch:
    """A crop sampler whose loader process hangs on every step after the first (as one that was
    killed mid-batch leaves its batch: never delivered)."""

    def batch(self, step: int, batch_size: int):
        import time

        import numpy as np

        if step > 0:
            time.sleep(3600)
        return np.zeros((batch_size, 3, 8, 8), np.float32), np.zeros((batch_size, 2, 8, 8))


@pytest.mark.slow
def test_a_batch_the_loader_processes_never_deliver_is_an_error_not_a_hang():
    ahead = T._Batches(_StuckAfterFirstBatch(), 2, workers=1, timeout_s=3)
    try:
        x, _ = ahead.get(0, 4)
        assert x.shape == (2, 3, 8, 8)
        with pytest.raises(RuntimeError, match="no batch for step 1 .* in 3 s"):
            ahead.get(1, 4)
    finally:
        ahead.close()
