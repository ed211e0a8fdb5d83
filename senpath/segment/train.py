"""Train the nucleus U-Net on CPU: ``python -m senpath.segment.train --out DIR --minutes M --seed 0``.

Time-budgeted but reproducible: the run measures its speed over the first steps, fixes the total number
of steps (saved in every checkpoint and in ``DIR/run.json``), and the learning-rate schedule and every
batch depend only on ``(seed, step)``. ``--steps N`` fixes the step count directly, which is how the
shipped weights are reproduced. Checkpoints (``last.pt``) are written atomically every few minutes and on
SIGTERM/SIGINT, and ``--resume DIR/last.pt`` continues where a run stopped. Loss goes to
``DIR/log.jsonl`` every 25 steps, periodic validation (F1 at IoU 0.5 on held-out images) to the same
file, with a copy of the checkpoint as ``DIR/step_XXXXXX.pt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from senpath.segment import data as D

#: Default location of the real data (beside the repo in the project's dev setup).
DEFAULT_DATA_ROOT = D.DEFAULT_DATA_ROOT


def _log(path: Path, record: dict[str, Any], *, echo: bool = True) -> None:
    """Append ``record`` (with the time) to a JSON-lines log, and print it when ``echo``."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if echo:
        print(json.dumps(record), flush=True)


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def learning_rate(step: int, total_steps: int, *, peak: float, warmup: int = 150) -> float:
    """Linear warm-up then cosine decay to 1 % of ``peak`` at ``total_steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def segmentation_loss(logits, target):
    """Foreground BCE + soft Dice, plus 2 × MSE of the sigmoid distance map.

    Parameters
    ----------
    logits : (B, 2, H, W) tensor
    target : (B, 2, H, W) or (B, 3, H, W) tensor
        Foreground (0/1) and normalised distance in [0, 1]; an optional third channel weighs each
        pixel's BCE and distance error (stained nuclei weighed up, ``--stained-weight``; where
        nuclei touch, ``--contact-weight``). The
        weighted terms are divided by the mean weight, so the loss scale stays that of weight 1.
        A pixel of weight 0 (a crop's padding, ``--ignore-padding``) counts in no term, Dice
        included.
    """
    import torch
    import torch.nn.functional as F

    fg_logit, dist_logit = logits[:, 0], logits[:, 1]
    fg, dist = target[:, 0], target[:, 1]
    p = torch.sigmoid(fg_logit)
    if target.shape[1] > 2:
        counted = (target[:, 2] > 0).to(p.dtype)
        p, fg = p * counted, fg * counted
    dice = 1 - (2 * (p * fg).sum() + 1) / (p.sum() + fg.sum() + 1)
    if target.shape[1] > 2:
        w = target[:, 2]
        w = w / w.mean()
        bce = (F.binary_cross_entropy_with_logits(fg_logit, fg, reduction="none") * w).mean()
        mse = ((torch.sigmoid(dist_logit) - dist) ** 2 * w).mean()
    else:
        bce = F.binary_cross_entropy_with_logits(fg_logit, fg)
        mse = F.mse_loss(torch.sigmoid(dist_logit), dist)
    return bce + dice + 2.0 * mse, {
        "bce": float(bce.detach()),
        "dice": float(dice.detach()),
        "mse": float(mse.detach()),
    }


def _validation_sets(
    images: dict[str, list[D.AnnotatedImage]],
) -> dict[str, list[D.AnnotatedImage]]:
    """:func:`senpath.segment.data.training_validation_images` plus MoNuSeg held-out re-rendered in three IHC/senescence stains."""
    sets = dict(images)
    for recipe in ("h_dab", "xgal_nfr", "xgal_h_dab"):
        rng = np.random.default_rng(1234)
        sets[f"monuseg_{recipe}"] = D.rerendered(sets["monuseg"], recipe, rng)
    return sets


def _predict_at_network_mpp(model, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    stride = model.config.stride
    y, x = rgb.shape[:2]
    py, px = (-y) % stride, (-x) % stride
    t = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    t = F.pad(t, (0, px, 0, py), mode="reflect").to(next(model.parameters()).device)
    with torch.inference_mode():
        out = torch.sigmoid(model(t).float())[0, :, :y, :x].cpu().numpy()
    return out[0], out[1]


def validate(model, sets: dict[str, list[D.AnnotatedImage]], post=None) -> dict[str, float]:
    """F1 at IoU 0.5 (pooled over the images of each set) with the current model."""
    from stardist.matching import matching_dataset

    from senpath.segment.postprocess import maps_to_instances

    model.eval()
    scores = {}
    for name, images in sets.items():
        preds = []
        for im in images:
            fg, dist = _predict_at_network_mpp(model, im.rgb)
            preds.append(maps_to_instances(fg, dist, mpp=im.mpp, config=post))
        m = matching_dataset([im.labels for im in images], preds, thresh=0.5, show_progress=False)
        scores[f"f1_{name}"] = round(float(m.f1), 4)
    model.train()
    return scores


#: The sampler and batch size a batch process of :class:`_Batches` draws from.
_WORKER_SAMPLER: tuple[D.CropSampler, int] | None = None


def _init_worker(sampler: D.CropSampler, batch_size: int) -> None:
    global _WORKER_SAMPLER
    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops the run
    _WORKER_SAMPLER = (sampler, batch_size)


def _worker_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_SAMPLER is not None
    sampler, batch_size = _WORKER_SAMPLER
    return sampler.batch(step, batch_size)


#: Longest wait for one batch from the loader processes (a batch takes well under a second).
BATCH_TIMEOUT_S = 600.0
#: Longest wait for the loader processes to stop when a run ends (they finish at most two batches
#: each), then again for them to be terminated.
CLOSE_TIMEOUT_S = 60.0


class _Batches:
    """The batches of steps ``step, step + 1, ...``; with ``workers`` > 0 drawn ahead, at most
    ``2 * workers`` steps, in worker processes. A batch depends only on ``(seed, step)``, so the
    batches are the same with or without them (the weights then agree to float rounding: where
    a batch's buffer lies in memory can change the CPU kernels' order of summation). The workers
    are spawned, not forked: a process forked from one whose torch (OpenMP) threads have run can
    hang on a lock they held."""

    def __init__(
        self,
        sampler: D.CropSampler,
        batch_size: int,
        *,
        workers: int,
        timeout_s: float = BATCH_TIMEOUT_S,
    ) -> None:
        if workers < 0:
            raise ValueError(f"loader workers must be >= 0, got {workers}")
        self.sampler, self.batch_size = sampler, batch_size
        self.timeout_s = timeout_s
        self.pending: dict[int, Any] = {}
        self.pool = None
        self.ahead = 2 * workers
        if workers:
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(workers, _init_worker, (sampler, batch_size))

    def get(self, step: int, total_steps: int | None) -> tuple[np.ndarray, np.ndarray]:
        if self.pool is None:
            return self.sampler.batch(step, self.batch_size)
        end = step + self.ahead if total_steps is None else min(total_steps, step + self.ahead)
        for s in range(step, max(end, step + 1)):
            if s not in self.pending:
                self.pending[s] = self.pool.apply_async(_worker_batch, (s,))
        try:
            return self.pending.pop(step).get(self.timeout_s)
        except multiprocessing.TimeoutError:
            # a pool replaces a worker that died, but the batch it was drawing never comes
            raise RuntimeError(
                f"no batch for step {step} from the loader processes in {self.timeout_s:g} s (one "
                "was killed or hangs): resume from last.pt, with --loader-workers 0 if it recurs"
            ) from None

    def close(self) -> None:
        """Stop the loader processes: they finish the few batches drawn ahead and exit. Not
        ``Pool.terminate`` first: terminating while the pool's task thread still hands steps to
        the workers can deadlock that thread (CPython's ``multiprocessing.Pool``; it hung the test
        suite about once in 30 closes). A pool that has not stopped in
        :data:`CLOSE_TIMEOUT_S` (a worker that hangs, or died with a batch) is terminated, and
        given up on if that does not return either."""
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        self.pending.clear()
        pool.close()
        for stop in (pool.join, pool.terminate):
            waiter = threading.Thread(target=stop, daemon=True)
            waiter.start()
            waiter.join(CLOSE_TIMEOUT_S)
            if not waiter.is_alive():
                return
        print(
            f"the loader processes did not stop in {2 * CLOSE_TIMEOUT_S:g} s: left behind",
            file=sys.stderr,
        )


def _name_weights(text: str, check: Callable[[dict[str, float]], object]) -> dict[str, float]:
    """``"a=0.2,b=0.3"`` → ``{"a": 0.2, "b": 0.3}``, then ``check``-ed (a ``ValueError`` from it
    becomes the option's error)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: expected NAME=WEIGHT (a number)") from None
    try:
        check(out)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return out


def _recipe_weights(text: str) -> dict[str, float]:
    """``"xgal_eosin=0.2,xgal_h_dab=0.3"`` → ``{"xgal_eosin": 0.2, "xgal_h_dab": 0.3}``; names are
    recipes, weights not negative."""
    return _name_weights(text, D.recipe_probabilities)


def _source_weights(text: str) -> dict[str, float]:
    """``"consep=0.3,cpm15=0.16"`` → ``{"consep": 0.3, "cpm15": 0.16}``, names and values checked
    by :func:`senpath.segment.data.source_weights`."""
    return _name_weights(text, lambda weights: D.source_weights(0.0, weights))


def _faint_range(text: str) -> tuple[float, float]:
    """``--faint-range "0.25,0.6"`` → ``(0.25, 0.6)``: two factors, 0 < low <= high <= 1."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    if not 0.0 < low <= high <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH <= 1, got {text!r}")
    return low, high


def _counterstain_references(text: str) -> dict[str, float]:
    """``--counterstain-references``: :func:`senpath.segment.counterstain.parse_references`."""
    from senpath.segment.counterstain import parse_references

    try:
        return parse_references(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the training entry point."""
    p = argparse.ArgumentParser(prog="senpath-train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs)")
    p.add_argument("--minutes", type=float, default=90.0, help="training time budget")
    p.add_argument("--steps", type=int, default=None, help="fix the step count (reproduction)")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop after this step (the schedule still spans --steps) and keep RUN/step_N.pt: "
        "reproduces a checkpoint taken part-way through a run",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-seed",
        type=int,
        default=None,
        help="seed of a new network's initial weights (default: --seed); runs that are averaged "
        "(python -m senpath.segment.localsgd) start from one. Not with --init",
    )
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (model JSON, weights file or folder, e.g. models/): "
        "fine-tuning with a fresh optimiser and schedule",
    )
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument(
        "--data-pack",
        type=Path,
        default=None,
        help="train from a data pack (python -m senpath.segment.datapack) instead of --data-root",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the network trains; cuda: bf16 autocast (the batches are drawn on the CPU)",
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        default=0,
        help="processes drawing the next batches ahead (0: drawn in this process); the batches "
        "are the same either way (they depend on seed and step only)",
    )
    p.add_argument(
        "--synthetic-share",
        type=float,
        default=0.0,
        help="share of crops from generated slides of every assay (a supplement to the real data)",
    )
    p.add_argument(
        "--pale-share",
        type=float,
        default=0.0,
        help="share of crops with faded unstained nuclei (a pale counterstain)",
    )
    p.add_argument(
        "--pale-floor",
        type=float,
        default=D.PALE_FLOOR,
        help="lowest share of optical density a faded nucleus keeps (with --pale-share)",
    )
    p.add_argument(
        "--pale-blur",
        type=float,
        default=0.0,
        help="share of pale crops whose faded nuclei are also out of focus (with --pale-share)",
    )
    p.add_argument(
        "--faint-share",
        type=float,
        default=0.0,
        help="share of real crops whose whole counterstain is weakened (a faintly counterstained "
        "section), by a factor drawn from --faint-range",
    )
    p.add_argument(
        "--faint-range",
        type=_faint_range,
        default=D.FAINT_RANGE,
        metavar="LOW,HIGH",
        help="lowest and highest factor of --faint-share (default %(default)s)",
    )
    p.add_argument(
        "--recipe-weights",
        type=_recipe_weights,
        default=None,
        metavar="NAME=W,...",
        help="re-weigh the stain recipes of re-rendered crops, e.g. xgal_eosin=0.2,xgal_h_dab=0.3 "
        "(the others keep their weights, see senpath.segment.rerender.RECIPES)",
    )
    p.add_argument(
        "--source-weights",
        type=_source_weights,
        default=None,
        metavar="NAME=W,...",
        help="re-weigh the real training sources crops are drawn from, e.g. consep=0.3,cpm15=0.16 "
        "(the others keep their weights, all then scaled to sum 1; see "
        "senpath.segment.data.SOURCE_WEIGHTS)",
    )
    p.add_argument(
        "--stained-weight",
        type=float,
        default=1.0,
        help="loss weight of the pixels of nuclei that carry a chromogen (1: as any nucleus)",
    )
    p.add_argument(
        "--contact-weight",
        type=float,
        default=1.0,
        help="loss weight of the pixels where two nuclei touch or nearly do (within 1 µm), so "
        "that touching nuclei come out parted (1: as any pixel)",
    )
    p.add_argument(
        "--ignore-padding",
        action="store_true",
        help="leave out of the loss the reflected padding of images smaller than the crop (their "
        "mirrored nuclei are unannotated; v1-v5 taught them as background)",
    )
    p.add_argument(
        "--counterstain-references",
        type=_counterstain_references,
        default=None,
        metavar="preset[,ASSAY=OD,...]",
        help="show every crop to the network as senpath run shows its assay's slides: the "
        "counterstain brought up to the assay's reference (preset: the assays' own; ASSAY=OD adds "
        "or replaces one). Default: no crop normalised (v1-v5)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop-size", type=int, default=128, help="crop side in px at 0.5 µm/px")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--widths", type=str, default="16,32,64,128,160", help="U-Net widths")
    p.add_argument(
        "--stem",
        type=int,
        default=None,
        help="channels of a thin full-resolution stem, the U-Net then at half resolution (default "
        "0, none, as v1-v5); for a new network only",
    )
    p.add_argument(
        "--pool",
        choices=("max", "maxblur"),  # senpath.segment.net.POOLS (torch not imported here)
        default=None,
        help="downsampling between levels (default: the --init model's, else max); maxblur is "
        "anti-aliased (max at stride 1, then a binomial low-pass at stride 2)",
    )
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--validate-minutes", type=float, default=10.0)
    p.add_argument("--consep-validation", type=int, default=24, help="CoNSeP test patches used")
    return p.parse_args(argv)


def _same_stem(asked: int | None, trained: int, source: Path) -> None:
    """A stem changes the weights' shapes: only a new network takes ``--stem``."""
    if asked is not None and asked != trained:
        raise SystemExit(
            f"--stem {asked}: {source} has stem {trained}; a stem is chosen for a new network "
            "(leave out --init and --resume)"
        )


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training; returns the path of the last checkpoint."""
    import cv2
    import torch

    from senpath.segment.net import NetConfig, build_model, count_parameters

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"

    state = None
    if args.resume is not None:
        from senpath.segment.weights import load_checkpoint

        state = load_checkpoint(args.resume)
        config = NetConfig.from_dict(state["net_config"])
        if args.pool is not None and args.pool != config.pool:
            raise SystemExit(
                f"--pool {args.pool}: {args.resume} was trained with pool {config.pool!r}"
            )
        _same_stem(args.stem, config.stem, args.resume)
    elif args.init is not None:
        from senpath.segment.weights import load_weights

        init_state, init_spec = load_weights(args.init)
        config = NetConfig.from_dict(init_spec["net_config"])
        if args.pool is not None:  # same weights: pooling has none
            config = dataclasses.replace(config, pool=args.pool)
        _same_stem(args.stem, config.stem, args.init)
        if args.init_seed is not None:
            raise SystemExit(f"--init-seed {args.init_seed}: the weights come from --init")
    else:
        config = NetConfig(
            widths=tuple(int(w) for w in args.widths.split(",")),
            pool=args.pool or "max",
            stem=args.stem or 0,
        )
    if state is None and args.init_seed is not None:  # (refused with --init above)
        torch.manual_seed(args.init_seed)  # the initial weights; the run's own seed after
        model = build_model(config)
        torch.manual_seed(args.seed)
    else:
        model = build_model(config)
    if state is None and args.init is not None:
        model.load_state_dict(init_state)
        _log(log, {"event": "init", "from": str(args.init), "sha256": init_spec["sha256"]})
    step, total_steps, elapsed = 0, args.steps, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        total_steps = args.steps or state["total_steps"]
        _log(log, {"event": "resume", "from": str(args.resume), "step": step})

    pack_sha256 = None
    if args.data_pack is not None:
        from senpath.segment.datapack import read_pack
        from senpath.segment.weights import sha256_file

        sources, held_out = read_pack(args.data_pack)
        pack_sha256 = sha256_file(args.data_pack)
        if args.synthetic_share == 0:
            sources.pop("synth", None)
    else:
        sources = D.training_sources(args.data_root, synthetic=args.synthetic_share > 0)
        held_out = None
    weights = D.source_weights(args.synthetic_share, args.source_weights)
    sampler = D.CropSampler(
        sources,
        weights,
        crop_size=args.crop_size,
        seed=args.seed,
        pale_share=args.pale_share,
        pale_floor=args.pale_floor,
        pale_blur=args.pale_blur,
        recipe_weights=args.recipe_weights,
        stained_weight=args.stained_weight,
        ignore_padding=args.ignore_padding,
        counterstain_references=args.counterstain_references,
        contact_weight=args.contact_weight,
        faint_share=args.faint_share,
        faint_range=args.faint_range,
    )
    val_sets: dict[str, list[D.AnnotatedImage]] = {}
    if args.validate_minutes > 0:
        if held_out is None:
            held_out = D.training_validation_images(args.data_root, args.consep_validation)
        val_sets = _validation_sets(held_out)
    batches = _Batches(sampler, args.batch_size, workers=args.loader_workers)
    device = torch.device(args.device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if state is not None:
        opt.load_state_dict(state["optimizer"])  # its state follows the parameters' device
    run_info = {
        "argv": sys.argv,
        "net_config": config.to_dict(),
        "parameters": count_parameters(model),
        "seed": args.seed,
        "init_seed": args.init_seed,
        "batch_size": args.batch_size,
        "crop_size": args.crop_size,
        "lr": args.lr,
        "synthetic_share": args.synthetic_share,
        "pale_share": args.pale_share,
        "pale_floor": args.pale_floor,
        "pale_blur": args.pale_blur,
        "faint_share": args.faint_share,
        "faint_range": list(args.faint_range),
        "recipe_weights": args.recipe_weights,
        "source_weights": weights,
        "stained_weight": args.stained_weight,
        "ignore_padding": args.ignore_padding,
        "contact_weight": args.contact_weight,
        "counterstain_references": args.counterstain_references,
        "threads": args.threads,
        "device": args.device,
        "loader_workers": args.loader_workers,
        "data_pack": None if args.data_pack is None else str(args.data_pack),
        "data_pack_sha256": pack_sha256,
        "init": str(args.init) if args.init is not None else None,
        "validation": {k: [im.name for im in v] for k, v in val_sets.items()},
        "torch": torch.__version__,
    }

    recorded_args = {k: str(v) for k, v in vars(args).items()}
    if state is not None and state.get("args"):
        # a resumed run is the run it continues: its recipe (--init, network, data) is the one
        # it was started with; the resuming call may only change the step count (total_steps)
        recorded_args = {**state["args"], "resume": str(args.resume)}

    def checkpoint(path: Path) -> None:
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "total_steps": total_steps,
                "elapsed_s": elapsed,
                "net_config": config.to_dict(),
                "seed": args.seed,
                "args": recorded_args,
            },
            path,
        )

    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    # a run stops cleanly on TERM / INT; the caller's handlers come back when it ends (train() is
    # called in-process by tests and notebooks, which must stay stoppable)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        model.train()
        t_start = time.perf_counter() - elapsed
        last_ckpt = last_val = time.perf_counter()
        calibrate_until = step + 20
        running: dict[str, float] = {}
        while total_steps is None or step < total_steps:
            if stop["now"] or (args.stop_at is not None and step >= args.stop_at):
                break
            lr = learning_rate(step, total_steps or 10**9, peak=args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batches.get(step, total_steps)
            xb = torch.from_numpy(x).to(device, non_blocking=True)
            yb = torch.from_numpy(y).to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(xb)
            loss, parts = segmentation_loss(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed = time.perf_counter() - t_start
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                running[k] = running.get(k, 0.0) + v
            if total_steps is None and step >= calibrate_until:
                # Leave ~8 % of the budget for validation passes and checkpoints.
                per_step = elapsed / step
                total_steps = max(step + 1, int(args.minutes * 60 * 0.92 / per_step))
                run_info["total_steps"] = total_steps
                (out / "run.json").write_text(json.dumps(run_info, indent=2))
                _log(
                    log,
                    {
                        "event": "calibrated",
                        "s_per_step": round(per_step, 3),
                        "total_steps": total_steps,
                    },
                )
            if step % 25 == 0:
                n = 25
                _log(
                    log,
                    {"step": step, "lr": round(lr, 6), "elapsed_s": round(elapsed, 1)}
                    | {k: round(v / n, 4) for k, v in running.items()},
                )
                running = {}
            now = time.perf_counter()
            if now - last_ckpt > args.checkpoint_minutes * 60:
                checkpoint(out / "last.pt")
                last_ckpt = now
            if val_sets and now - last_val > args.validate_minutes * 60:
                scores = validate(model, val_sets)
                _log(log, {"event": "validation", "step": step} | scores)
                checkpoint(out / f"step_{step:06d}.pt")
                last_val = time.perf_counter()
        batches.close()
        checkpoint(out / "last.pt")
        finished = total_steps is not None and step >= total_steps
        if finished or (args.stop_at is not None and step == args.stop_at):
            if val_sets:
                scores = validate(model, val_sets)
                _log(log, {"event": "validation", "step": step, "final": finished} | scores)
            checkpoint(out / f"step_{step:06d}.pt")
    finally:
        batches.close()  # also when the run fails: no loader processes left behind
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _log(log, {"event": "finished" if finished else "stopped", "step": step})
    return out / "last.pt"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m senpath.segment.train``."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
