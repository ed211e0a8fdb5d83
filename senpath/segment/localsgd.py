"""Train one nucleus network on several CPU cores: single-thread runs, averaged every few steps.

``python -m senpath.segment.localsgd --out RUN --seeds 46,47 --steps 7600 --sync-steps 800 --
--init models/candidates/stem16 --data-pack PACK --lr 1e-3 --threads 1``

On this project's machines two single-thread training runs use two cores better than one run at
two threads (torch's intra-op parallelism gains little on the U-Net's small convolutions), but two
runs averaged once at the end train no better than one (measured: the average lands between the
two). Local SGD (Stich, *Local SGD converges fast and communicates little*, ICLR 2019; Lin et
al., *Don't use large mini-batches, use local SGD*, ICLR 2020) averages them often instead:

* every worker is a ``senpath.segment.train`` process (``RUN/seed_S``) with its own seed, so its
  own batches, on one learning-rate schedule spanning ``--steps``; all start from one network
  (``--init``, or for a new network ``--init-seed``, the first seed unless given);
* every ``--sync-steps`` steps all workers stop (``--stop-at``), their weights, batch-norm
  statistics and AdamW moments are averaged, written back into each worker's ``last.pt``, and
  the workers resume from there; the average is also kept as ``RUN/step_N.pt``, a training
  checkpoint ``python -m senpath.segment.export --checkpoint`` measures and exports.

It is resumable as a training run is: stopped (TERM/INT, passed on to the workers, which
checkpoint) or killed, the same command continues from the workers' checkpoints, first bringing
a worker that lags to the others' step. Each worker's output goes to ``RUN/seed_S/train.out``; a
worker that fails stops the others and is named with its log. Every minute a line shows the
workers' steps (from their ``log.jsonl``), the pace and the time left.

The workers start afresh every round, so they would import whatever senpath is at that moment:
edits to the checkout during a run of hours would reach its later rounds. The run pins its code
instead: the first call copies the ``senpath`` package it runs from into ``RUN/code`` and every
worker of every round imports that copy (first on its ``sys.path``); the real data's default
folder is passed on as ``--data-root``. To continue a run with other code, delete ``RUN/code``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# train options this command sets for each worker
_OWNED = ("--out", "--seed", "--steps", "--stop-at", "--resume", "--minutes")
#: seconds between progress lines while the workers train
PROGRESS_S = 60.0


def average_states(ckpts: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mean model state dict and AdamW state of training checkpoints at one step.

    Floating-point tensors (weights, batch-norm statistics, AdamW's first and second moments)
    are averaged; integer ones (``num_batches_tracked``) and AdamW's step counts, equal across
    workers at one step, are the first checkpoint's. Raises ``ValueError`` when the checkpoints
    are not of one network at one step.
    """
    first = ckpts[0]
    for ck in ckpts[1:]:
        if ck["net_config"] != first["net_config"]:
            raise ValueError("the workers' checkpoints are of different networks")
        if int(ck["step"]) != int(first["step"]):
            raise ValueError(f"the workers are at steps {[int(c['step']) for c in ckpts]}")
    from senpath.segment.average import mean_state

    model = mean_state([ck["model"] for ck in ckpts])
    opt = first["optimizer"]
    state = {}
    for idx, entry in opt["state"].items():
        moments = mean_state(
            [
                {k: ck["optimizer"]["state"][idx][k] for k in ("exp_avg", "exp_avg_sq")}
                for ck in ckpts
            ]
        )
        state[idx] = {**entry, **moments}  # the step count: equal at one step, the first's
    return model, {"state": state, "param_groups": opt["param_groups"]}


def synchronise(workers: Sequence[Path], out: Path, *, command: str, seeds: Sequence[int]) -> int:
    """Average the workers' ``last.pt`` (all at one step N) into ``out/step_N.pt``, then write
    it into each worker's ``last.pt``; returns N. Where ``out/step_N.pt`` exists (a
    synchronisation cut short after it was written) it is written into the workers as it is."""
    from senpath.segment.train import _atomic_save
    from senpath.segment.weights import load_checkpoint

    ckpts = [load_checkpoint(w / "last.pt") for w in workers]
    step = int(ckpts[0]["step"])
    averaged = out / f"step_{step:06d}.pt"
    if averaged.is_file():
        done = load_checkpoint(averaged)
        model, optimizer = done["model"], done["optimizer"]
    else:
        model, optimizer = average_states(ckpts)
        first = ckpts[0]
        _atomic_save(
            {
                "model": model,
                "optimizer": optimizer,
                "net_config": first["net_config"],
                "step": step,
                "total_steps": first["total_steps"],
                "elapsed_s": max(float(ck["elapsed_s"]) for ck in ckpts),
                "seed": first["seed"],
                "args": first["args"],  # the recipe: the same for every worker but the seed
                "local_sgd": {"command": command, "seeds": list(seeds), "workers": len(workers)},
            },
            averaged,
        )
    for worker, ck in zip(workers, ckpts, strict=True):
        _atomic_save({**ck, "model": model, "optimizer": optimizer}, worker / "last.pt")
        # the worker's own checkpoint at the stop, before the averaging: not part of the run
        (worker / f"step_{step:06d}.pt").unlink(missing_ok=True)
    return step


def _logged_step(worker: Path) -> int | None:
    """The last step a worker's ``log.jsonl`` reports (read from its end), or None."""
    try:
        with open(worker / "log.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the first, cut line, or one being written
        if "step" in record:
            return int(record["step"])
    return None


def _progress(workers: Sequence[Path], total: int, start: tuple[float, int]) -> str:
    """One progress line: the slowest worker's step, its pace since ``start`` (time, step),
    and the time left at that pace."""
    steps = [_logged_step(w) for w in workers]
    known = [s for s in steps if s is not None]
    if not known:
        return "workers starting"
    low = min(known)
    line = f"step {low}/{total} (workers at {', '.join(str(s) for s in steps)})"
    t0, s0 = start
    if low > s0:
        pace = (time.monotonic() - t0) / (low - s0)
        line += f", {pace:.2f} s/step, ~{pace * (total - low) / 60:.0f} min left"
    return line


def _worker_step(worker: Path) -> int:
    if not (worker / "last.pt").is_file():
        return 0
    from senpath.segment.weights import load_checkpoint

    return int(load_checkpoint(worker / "last.pt")["step"])


def pin_code(out: Path) -> Path:
    """``out/code``, holding a copy of the ``senpath`` package this process runs (made on the
    first call, atomically; kept as it is after that), for the workers to import."""
    import senpath

    code = out / "code"
    if not (code / "senpath").is_dir():
        partial = out / "code.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(
            Path(senpath.__file__).resolve().parent,
            partial / "senpath",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        shutil.rmtree(code, ignore_errors=True)
        partial.rename(code)
    return code


def _run_round(
    workers: Sequence[Path],
    seeds: Sequence[int],
    at: Sequence[int],
    target: int,
    total: int,
    train_args: list[str],
    code: Path,
) -> None:
    """Bring every worker from its step (``at``) to step ``target`` (in parallel), importing
    senpath from ``code``; raises ``RuntimeError`` naming a worker that fails (the others are
    stopped)."""
    # python -m would put the working directory (perhaps the checkout) first on sys.path
    boot = (
        f"import runpy, sys; sys.path[0] = {str(code.resolve())!r}; "
        "runpy.run_module('senpath.segment.train', run_name='__main__', alter_sys=True)"
    )
    procs: list[tuple[Path, subprocess.Popen[bytes]]] = []
    for worker, seed, step in zip(workers, seeds, at, strict=True):
        if step >= target:
            continue
        argv = [sys.executable, "-c", boot, *train_args]
        argv += ["--out", str(worker), "--seed", str(seed), "--steps", str(total)]
        argv += ["--stop-at", str(target)]
        if step > 0:
            argv += ["--resume", str(worker / "last.pt")]
        worker.mkdir(parents=True, exist_ok=True)
        with open(worker / "train.out", "ab") as log:
            procs.append((worker, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)))

    stopping = {"signal": None}

    def on_signal(signum, frame):  # noqa: ARG001
        stopping["signal"] = signum
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # a worker checkpoints and stops

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    start, shown = (time.monotonic(), min(at)), time.monotonic()
    try:
        failed = None
        while any(p.poll() is None for _, p in procs):
            if time.monotonic() - shown >= PROGRESS_S:
                print(_progress(workers, total, start), flush=True)
                shown = time.monotonic()
            for worker, p in procs:
                if p.poll() not in (None, 0) and failed is None:
                    failed = worker
                    on_signal(signal.SIGTERM, None)
            time.sleep(0.5)
        failed = failed or next((w for w, p in procs if p.returncode != 0), None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopping["signal"] is not None and failed is None:
        raise KeyboardInterrupt
    if failed is not None:
        tail = (failed / "train.out").read_text(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(
            f"worker {failed} failed ({failed / 'train.out'}): {tail[0] if tail else 'no output'}"
        )


def run(
    out: Path,
    seeds: Sequence[int],
    steps: int,
    sync_steps: int,
    train_args: list[str],
    *,
    command: str,
) -> Path:
    """Train to ``steps`` with a synchronisation every ``sync_steps``; returns the final
    averaged checkpoint (``out/step_N.pt``)."""
    owned = [a for a in train_args if a.split("=")[0] in _OWNED]
    if owned:
        raise ValueError(f"{owned[0]}: set by localsgd for each worker, not a training option here")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"--seeds {','.join(map(str, seeds))}: one distinct seed per worker")
    if not 0 < sync_steps <= steps:
        raise ValueError(f"--sync-steps {sync_steps}: between 1 and --steps ({steps})")
    if not any(a.split("=")[0] in ("--init", "--init-seed") for a in train_args):
        # a new network: each worker's seed would draw its own initial weights, and the mean of
        # two unrelated networks is no network; they all start from the first seed's
        train_args = [*train_args, "--init-seed", str(seeds[0])]
    from senpath.segment.train import DEFAULT_DATA_ROOT, _log

    if not any(a.split("=")[0] == "--data-root" for a in train_args):
        # the default is found beside the package, which the workers import from RUN/code
        train_args = [*train_args, "--data-root", str(DEFAULT_DATA_ROOT)]
    out.mkdir(parents=True, exist_ok=True)
    code = pin_code(out)
    log = out / "log.jsonl"
    workers = [out / f"seed_{s}" for s in seeds]
    (out / "run.json").write_text(
        json.dumps({"command": command, "seeds": list(seeds), "steps": steps,
                    "sync_steps": sync_steps, "train_args": train_args}, indent=2) + "\n"
    )  # fmt: skip
    while True:
        at = [_worker_step(w) for w in workers]
        low, high = min(at), max(at)
        if low == high and low > 0 and (low % sync_steps == 0 or low == steps):
            t = time.perf_counter()
            synchronise(workers, out, command=command, seeds=seeds)
            _log(
                log,
                {"event": "sync", "step": low, "s": round(time.perf_counter() - t, 1)},
                echo=False,
            )
            print(f"step {low}/{steps}: {len(workers)} workers averaged", flush=True)
            if low == steps:
                _log(log, {"event": "finished", "step": steps}, echo=False)
                return out / f"step_{steps:06d}.pt"
            target = min(steps, low + sync_steps)
        else:  # a round cut short: every worker to its end first
            target = min(steps, (low // sync_steps + 1) * sync_steps)
            if high > target:
                raise ValueError(
                    f"workers at steps {at}, past a synchronisation at {target}: "
                    "not a run of these --sync-steps"
                )
        _log(log, {"event": "round", "from": at, "to": target}, echo=False)
        _run_round(workers, seeds, at, target, steps, train_args, code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m senpath.segment.localsgd``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, train_args = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="everything after -- goes to every worker's python -m senpath.segment.train",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (RUN/seed_S per worker)")
    p.add_argument("--seeds", required=True, help="one seed per worker, e.g. 46,47")
    p.add_argument("--steps", type=int, required=True, help="steps of every worker's schedule")
    p.add_argument("--sync-steps", type=int, required=True, help="steps between averagings")
    args = p.parse_args(own)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds}: comma-separated integers")
    command = " ".join(["python -m senpath.segment.localsgd", *argv])
    try:
        final = run(args.out, seeds, args.steps, args.sync_steps, train_args, command=command)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped: the same command continues the run", file=sys.stderr)
        return 130
    print(f"finished: {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
