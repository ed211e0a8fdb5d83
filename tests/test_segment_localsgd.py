"""Local SGD: single-thread training runs averaged every few steps train one network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_segment_train import TINY, _tiny_images

from senpath.segment import localsgd as L
from senpath.segment.data import DEFAULT_DATA_ROOT


def _fake_ckpt(value: float, step: int = 4) -> dict:
    import torch

    return {
        "model": {"w": torch.full((2,), value), "n": torch.tensor(step)},
        "optimizer": {
            "state": {
                0: {"step": torch.tensor(float(step)), "exp_avg": torch.full((2,), value),
                    "exp_avg_sq": torch.full((2,), value * value)},
            },
            "param_groups": [{"lr": 1e-3, "params": [0]}],
        },
        "net_config": {"widths": [8]},
        "step": step,
    }  # fmt: skip


def test_weights_statistics_and_adam_moments_are_averaged_counters_kept():
    torch = pytest.importorskip("torch")
    model, opt = L.average_states([_fake_ckpt(1.0), _fake_ckpt(3.0)])
    assert torch.equal(model["w"], torch.full((2,), 2.0))
    assert int(model["n"]) == 4  # an integer buffer: the first worker's
    state = opt["state"][0]
    assert torch.equal(state["exp_avg"], torch.full((2,), 2.0))
    assert torch.equal(state["exp_avg_sq"], torch.full((2,), 5.0))  # mean of 1 and 9
    assert float(state["step"]) == 4.0 and opt["param_groups"][0]["lr"] == 1e-3
    with pytest.raises(ValueError, match=r"steps \[4, 6\]"):
        L.average_states([_fake_ckpt(1.0), _fake_ckpt(1.0, step=6)])


def _pack(tmp_path):
    from senpath.segment.datapack import write_pack

    pack = tmp_path / "p.npz"
    write_pack(pack, {"monuseg": _tiny_images(3, 0)}, {"monuseg": _tiny_images(1, 1)})
    return ["--data-pack", str(pack), *TINY, "--validate-minutes", "0"]


@pytest.mark.slow
def test_one_worker_synchronised_is_the_plain_run_and_two_end_averaged(tmp_path):
    """One worker stopped and resumed at every synchronisation trains the weights of one
    uninterrupted run (the averaging and rewriting lose nothing); two workers end on one
    network, the mean of their last steps, exported with the command that made it."""
    torch = pytest.importorskip("torch")
    from senpath.segment import train as T
    from senpath.segment.export import reproduce_command

    train_args = _pack(tmp_path)
    T.main(["--out", str(tmp_path / "plain"), *train_args, "--steps", "4", "--seed", "5"])
    one = tmp_path / "one"
    assert L.main(["--out", str(one), "--seeds", "5", "--steps", "4", "--sync-steps", "2", "--",
                   *train_args]) == 0  # fmt: skip
    plain = torch.load(tmp_path / "plain" / "step_000004.pt", weights_only=True)
    synced = torch.load(one / "step_000004.pt", weights_only=True)
    for key, value in plain["model"].items():
        torch.testing.assert_close(synced["model"][key], value, rtol=0, atol=1e-6)

    two = tmp_path / "two"
    argv = ["--out", str(two), "--seeds", "5,6", "--steps", "4", "--sync-steps", "2", "--"]
    assert L.main([*argv, *train_args]) == 0
    final = torch.load(two / "step_000004.pt", weights_only=True)
    assert (two / "step_000002.pt").is_file() and final["step"] == 4
    for seed in (5, 6):
        worker = torch.load(two / f"seed_{seed}" / "last.pt", weights_only=True)
        assert worker["seed"] == seed and worker["step"] == 4
        for key, value in final["model"].items():
            assert torch.equal(worker["model"][key], value), key
        assert not (two / f"seed_{seed}" / "step_000002.pt").exists()  # pre-average: dropped
    five = torch.load(one / "step_000004.pt", weights_only=True)["model"]
    assert any(not torch.equal(final["model"][k], five[k]) for k in five)  # seed 6 counted
    events = [json.loads(line) for line in open(two / "log.jsonl")]
    assert [e["step"] for e in events if e["event"] == "sync"] == [2, 4]
    assert reproduce_command(final).startswith("python -m senpath.segment.localsgd --out")
    # finished: the same command again changes nothing
    assert L.main([*argv, *train_args]) == 0
    again = torch.load(two / "step_000004.pt", weights_only=True)
    assert all(torch.equal(again["model"][k], v) for k, v in final["model"].items())


@pytest.mark.slow
def test_the_workers_of_a_new_network_start_from_one_network(tmp_path):
    """Without --init each worker would draw its own initial weights from its seed, and the mean
    of two unrelated networks is no network: all start from the first seed's (at learning rate
    0 the average is then the first seed's plain run)."""
    torch = pytest.importorskip("torch")
    from senpath.segment import train as T

    train_args = [*_pack(tmp_path), "--lr", "0"]
    T.main(["--out", str(tmp_path / "plain"), *train_args, "--steps", "1", "--seed", "5"])
    run = tmp_path / "run"
    assert L.main(["--out", str(run), "--seeds", "5,6", "--steps", "1", "--sync-steps", "1",
                   "--", *train_args]) == 0  # fmt: skip
    plain = torch.load(tmp_path / "plain" / "step_000001.pt", weights_only=True)["model"]
    averaged = torch.load(run / "step_000001.pt", weights_only=True)["model"]
    weights = [k for k in plain if not k.endswith(("running_mean", "running_var", "tracked"))]
    assert len(weights) > 10
    for key in weights:
        assert torch.equal(averaged[key], plain[key]), key
    recorded = json.loads((run / "run.json").read_text())["train_args"]
    assert recorded[recorded.index("--init-seed") + 1] == "5"


@pytest.mark.slow
def test_a_worker_cut_short_is_brought_to_the_others_step_first(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(L, "PROGRESS_S", 0.0)  # a progress line at every look
    from senpath.segment import train as T

    train_args = _pack(tmp_path)
    run = tmp_path / "run"
    # as if the run was killed during its first round: seed 5 at step 2, seed 6 at step 1
    for seed, stop in ((5, 2), (6, 1)):
        T.main(["--out", str(run / f"seed_{seed}"), *train_args, "--steps", "4",
                "--seed", str(seed), "--stop-at", str(stop)])  # fmt: skip
    argv = ["--out", str(run), "--seeds", "5,6", "--steps", "4", "--sync-steps", "2", "--"]
    assert L.main([*argv, *train_args]) == 0
    events = [json.loads(line) for line in open(run / "log.jsonl")]
    assert events[0] == {**events[0], "event": "round", "from": [2, 1], "to": 2}
    assert [e["step"] for e in events if e["event"] == "sync"] == [2, 4]
    assert torch.load(run / "step_000004.pt", weights_only=True)["step"] == 4
    printed = capsys.readouterr().out
    assert "/4 (workers at " in printed, printed


def test_the_workers_import_the_runs_own_copy_of_the_code(tmp_path, capsys):
    """Edits to the checkout during a run must not reach its later rounds: the first call copies
    the package into RUN/code, the workers import that copy, later calls keep it."""
    import senpath

    run = tmp_path / "run"
    code = L.pin_code(run)
    source = Path(senpath.__file__).resolve().parent
    copied = code / "senpath" / "segment" / "train.py"
    assert copied.read_text() == (source / "segment" / "train.py").read_text()
    assert not list(code.rglob("__pycache__"))
    # the copy is the code the workers run: a copy that refuses to train stops them
    copied.write_text('raise SystemExit("the pinned copy ran")\n')
    assert L.pin_code(run) == code and "pinned copy" in copied.read_text()  # kept as it is
    argv = ["--out", str(run), "--seeds", "1,2", "--steps", "4", "--sync-steps", "2"]
    assert L.main([*argv, "--", *TINY]) == 1
    err = capsys.readouterr().err
    assert "the pinned copy ran" in err, err
    recorded = json.loads((run / "run.json").read_text())["train_args"]
    assert recorded[recorded.index("--data-root") + 1] == str(DEFAULT_DATA_ROOT)


def test_progress_reads_the_workers_logs(tmp_path, monkeypatch):
    a, b = tmp_path / "seed_1", tmp_path / "seed_2"
    assert L._progress([a, b], 100, (0.0, 0)) == "workers starting"
    a.mkdir()
    (a / "log.jsonl").write_text(
        '{"event": "init"}\n{"step": 50, "loss": 1}\n{"step": 75, "loss": 1}\n{"step": 8'
    )  # the last line still being written
    monkeypatch.setattr(L.time, "monotonic", lambda: 150.0)
    line = L._progress([a, b], 100, (0.0, 0))
    assert line == "step 75/100 (workers at 75, None), 2.00 s/step, ~1 min left"
    b.mkdir()
    (b / "log.jsonl").write_text('{"step": 25}\n')
    assert L._progress([a, b], 100, (100.0, 25)).startswith("step 25/100 (workers at 75, 25)")


def test_a_failing_worker_is_named_with_its_log(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "run"), "--seeds", "1,2", "--steps", "4", "--sync-steps", "2"]
    assert L.main([*argv, "--", "--data-pack", str(tmp_path / "missing.npz"), *TINY]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: worker ")
    assert "train.out" in err[0] and "missing.npz" in err[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--", "--seed", "3"], "--seed: set by localsgd"),
        (["--", "--steps=9"], "--steps=9: set by localsgd"),
    ],
)
def test_options_localsgd_sets_are_refused_in_the_training_options(
    tmp_path, capsys, extra, message
):
    argv = ["--out", str(tmp_path), "--seeds", "1,2", "--steps", "4", "--sync-steps", "2"]
    assert L.main([*argv, *extra]) == 1
    assert message in capsys.readouterr().err


def test_seeds_and_sync_steps_are_checked(tmp_path, capsys):
    base = ["--out", str(tmp_path), "--steps", "4"]
    assert L.main([*base, "--seeds", "1,1", "--sync-steps", "2"]) == 1
    assert "one distinct seed per worker" in capsys.readouterr().err
    assert L.main([*base, "--seeds", "1,2", "--sync-steps", "5"]) == 1
    assert "--sync-steps 5: between 1 and --steps (4)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_stopped_run_says_so_and_the_same_command_finishes_it(tmp_path):
    """TERM reaches the workers, which checkpoint; the command exits 130 with one line, and run
    again it continues to the end instead of starting over."""
    import os
    import signal
    import subprocess
    import sys
    import time

    torch = pytest.importorskip("torch")
    run = tmp_path / "run"
    argv = ["--out", str(run), "--seeds", "5,6", "--steps", "600", "--sync-steps", "300", "--"]
    argv += _pack(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "senpath.segment.localsgd", *argv],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    log = run / "seed_6" / "log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and '"step": 25' not in (
        log.read_text() if log.is_file() else ""
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "stopped: the same command continues the run"
    steps = [torch.load(run / f"seed_{s}" / "last.pt", weights_only=True)["step"] for s in (5, 6)]
    assert 0 < min(steps) and max(steps) < 600, steps
    assert L.main(argv) == 0
    events = [json.loads(line) for line in open(run / "log.jsonl")]
    rounds = [e for e in events if e["event"] == "round"]
    assert rounds[1]["from"] == steps, "the second call continued from where the workers stopped"
    assert torch.load(run / "step_000600.pt", weights_only=True)["step"] == 600
