"""Network cost per architecture on this CPU: seconds per megapixel, and the ratio to the shipped net.

Times the forward pass of candidate nucleus U-Nets (random weights: the cost does not depend on
them) on one analysis-tile-sized input, for each CPU runtime the library can choose (fp32 eager,
bf16 autocast + channels_last, ONNX Runtime fp32), at 1 and 2 threads, and one training step
(batch 16 of 128² crops, one thread), all in one run, the networks timed in turns
(:func:`senpath.segment.runtime.time_in_turns`)::

    python benchmarks/bench_architectures.py              # the shipped net and the stem nets
    python benchmarks/bench_architectures.py --side 512 --repeats 2

Prints a Markdown table; the ratio column divides by the shipped network's time in the same
runtime and thread count (model card, "stem networks"; issue 13: CPU inference per MP must not
get slower).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import numpy as np

#: name -> NetConfig keyword arguments; "shipped" is read from the model description.
CANDIDATES: dict[str, dict] = {
    "stem 8, 32-64-128-256-320": {"widths": (32, 64, 128, 256, 320), "stem": 8},
    "stem 8, 24-48-96-192-256": {"widths": (24, 48, 96, 192, 256), "stem": 8},
    # a wider full-resolution path: the stem networks miss faint nuclei (missed_by_darkness.py)
    "stem 16, 24-48-96-192-256": {"widths": (24, 48, 96, 192, 256), "stem": 16},
}


def _train_step(model) -> Callable[[], None]:
    """One training step of ``model`` (batch 16 of 128² crops) as a call to time."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(16, 3, 128, 128)

    def step() -> None:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def _best_seconds(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall seconds of each call, timed in turns after one warm-up pass each (ONNX
    session, oneDNN kernels)."""
    from senpath.segment.runtime import time_in_turns

    for call in calls.values():
        call()
    return time_in_turns(calls, repeats=repeats)[0]


def main(argv: list[str] | None = None) -> int:
    import torch

    from senpath.segment.net import NetConfig, build_model, count_parameters
    from senpath.segment.predict import NucleusSegmenter
    from senpath.segment.runtime import onnxruntime_available
    from senpath.segment.weights import load_pretrained

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--side", type=int, default=1120, help="input side in px (an analysis tile)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (best counts)")
    p.add_argument("--threads", default="1,2", help="thread counts")
    args = p.parse_args(argv)

    shipped = load_pretrained()[1]["net_config"]
    configs = {"shipped": NetConfig.from_dict(shipped)}
    pool = configs["shipped"].pool
    configs |= {k: NetConfig(pool=pool, **v) for k, v in CANDIDATES.items()}
    runtimes = ["fp32", "bf16"] + (["onnx-fp32"] if onnxruntime_available() else [])
    threads = [int(t) for t in args.threads.split(",")]
    rgb = np.random.default_rng(0).integers(0, 256, (1, args.side, args.side, 3), np.uint8)
    mp = args.side**2 / 1e6

    models = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        models[name] = build_model(cfg).eval()
    params = {name: count_parameters(model) for name, model in models.items()}
    seconds: dict[tuple[str, str, int], float] = {}
    for runtime in runtimes:
        for n in threads:
            torch.set_num_threads(n)  # before the segmenters: ONNX Runtime takes it then
            calls = {
                name: partial(
                    NucleusSegmenter(m, device="cpu", precision=runtime).predict_maps, rgb
                )
                for name, m in models.items()
            }
            for name, s in _best_seconds(calls, args.repeats).items():
                seconds[name, runtime, n] = s
    torch.set_num_threads(1)
    train = _best_seconds(
        {k: _train_step(build_model(c)) for k, c in configs.items()}, args.repeats
    )

    print(f"\n{args.side}² input ({mp:.2f} MP), best of {args.repeats}; seconds per MP "
          "(ratio to the shipped net in the same runtime and threads)\n")  # fmt: skip
    head = [f"{r}, {n} thr" for r in runtimes for n in threads]
    print("| network | parameters | " + " | ".join(head) + " | train step, 1 thr |")
    print("|---" * (3 + len(head)) + "|")
    for name in configs:
        cells = []
        for runtime in runtimes:
            for n in threads:
                s = seconds[name, runtime, n] / mp
                ratio = seconds[name, runtime, n] / seconds["shipped", runtime, n]
                cells.append(f"{s:.2f} ({ratio:.2f}x)")
        step = f"{train[name]:.2f} s ({train[name] / train['shipped']:.2f}x)"
        print(f"| {name} | {params[name] / 1e6:.2f} M | " + " | ".join(cells) + f" | {step} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
