"""The distilled int8 network against fp32: the same nuclei on real held-out images? How fast?

``senpath.segment.runtime`` lets ``precision="auto"`` choose the int8 network (``onnx-int8``) only
when its parity with fp32 on real held-out images, measured here when it was made, reaches
``PARITY_F1`` (0.99): the runtime's own check uses one synthetic image, where every int8 variant
passed, including those that lost nuclei on real tissue (model card). This script

- segments every held-out set of ``python -m senpath.segment.export`` (MoNuSeg 6, CoNSeP test,
  CPM-15 3, DSB-2018 15, DeepLIIF Ki67 2, and the H&E ones re-rendered in the five stain
  combinations: real morphology under DAB, Fast Red, X-gal) with fp32 and with each other
  precision, through ``predict_instances`` as a user calls it, and prints the F1 of instances
  matched at IoU 0.5 against fp32, pooled per set; the lowest over the sets is ``min_f1``;
- times the network alone (``predict_maps``, CPU and wall s per MP, best of ``--repeats``, in
  turns) on one 1024² synthetic Ki67 image at 1 and 2 threads;
- with ``--record``, writes ``{"min_f1", "per_set", "measured", "command"}`` as the int8
  network's ``parity`` in the model JSON (``--model``, default the repo's ``models/``).

::

    python benchmarks/int8_parity.py                       # ~10 min on 2 cores
    python benchmarks/int8_parity.py --onnx RUN/student.onnx   # a candidate, not yet recorded
    python benchmarks/int8_parity.py --record              # after python -m senpath.segment.quant export

Needs ``../shared/data`` (the held-out images) and onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def pooled_matched_f1(refs: list[np.ndarray], preds: list[np.ndarray]) -> float:
    """F1 of instances matched at IoU 0.5 between two lists of label images, pooled."""
    from senpath.segment.runtime import matched_f1

    tp2 = n = 0.0
    for a, b in zip(refs, preds, strict=True):
        k = int(len(np.unique(a[a > 0])) + len(np.unique(b[b > 0])))
        tp2 += matched_f1(a, b) * k
        n += k
    return 1.0 if n == 0 else tp2 / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "models"), help="model JSON or folder")
    p.add_argument("--onnx", type=Path, default=None, help="an int8 ONNX to test (not recorded)")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--precisions", default="onnx-int8,bf16", help="compared with fp32")
    p.add_argument("--threads", type=int, default=1, help="threads for the held-out sets")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--record", action="store_true", help="write the parity into the model JSON")
    args = p.parse_args(argv)
    if args.record and args.onnx is not None:
        p.error("--record records the model's own int8 network: leave out --onnx")

    import torch

    from senpath.segment.export import validation_sets
    from senpath.segment.predict import NucleusSegmenter, predict_instances
    from senpath.segment.runtime import PARITY_F1, OnnxNetwork, cpu_name, time_in_turns
    from senpath.segment.weights import load_pretrained

    if not (args.data_root / "monuseg_train").is_dir():
        print(f"no held-out images under {args.data_root}: nothing to measure", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    model, spec = load_pretrained(args.model)
    if args.record and not spec.get("int8"):
        p.error(f"{args.model} has no int8 network to record: run python -m senpath.segment.quant "
                "export first")  # fmt: skip
    precisions = [q for q in args.precisions.split(",") if q]

    def build(precision: str) -> NucleusSegmenter:
        if precision == "onnx-int8" and args.onnx is not None:
            seg = NucleusSegmenter(model, spec=spec, device="cpu", precision="onnx-fp32")
            seg._onnx = OnnxNetwork(model, stride=seg.stride, network=args.onnx.read_bytes())
            return seg
        return NucleusSegmenter(model, spec=spec, device="cpu", precision=precision)

    segs = {q: build(q) for q in ["fp32", *precisions]}
    sets = validation_sets(args.data_root)
    per_set: dict[str, dict[str, float]] = {q: {} for q in precisions}
    counts: dict[str, int] = {}
    print(f"\n### Instances matched at IoU 0.5 against fp32, pooled per held-out set "
          f"({args.threads} thread(s); {cpu_name()})\n")  # fmt: skip
    print("| set | images | fp32 nuclei | " + " | ".join(precisions) + " |")
    print("|---|---:|---:|" + "---:|" * len(precisions))
    for name, images in sets.items():
        labels = {
            q: [predict_instances(im.rgb, mpp=im.mpp, model=s) for im in images]
            for q, s in segs.items()
        }
        counts[name] = int(sum(int(lab.max()) for lab in labels["fp32"]))
        row = f"| {name} | {len(images)} | {counts[name]} |"
        for q in precisions:
            per_set[q][name] = round(pooled_matched_f1(labels["fp32"], labels[q]), 4)
            row += f" {per_set[q][name]:.4f} |"
        print(row, flush=True)
    mins = {q: min(v.values()) for q, v in per_set.items()}
    print("| **lowest** | | | " + " | ".join(f"**{mins[q]:.4f}**" for q in precisions) + " |")
    print(f"\n(``precision='auto'`` may choose onnx-int8 when its lowest is >= {PARITY_F1})")

    if not args.skip_speed:
        from senpath.synth import SynthParams, render_region

        image = render_region(
            "ki67", shape=(1024, 1024), seed=18, params=SynthParams(tissue_fraction=0.95)
        ).rgb[None]
        mp = image.shape[1] * image.shape[2] / 1e6
        print(f"\n### Network alone on a 1024² synthetic Ki67 image, best of {args.repeats}\n")
        print("| threads | precision | wall s / MP | CPU s / MP | x fp32 (CPU) |")
        print("|---:|---|---:|---:|---:|")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            timed = {q: build(q) for q in ["fp32", "bf16", "onnx-fp32", "onnx-int8"]}
            for s in timed.values():
                s.predict_maps(image)
            wall, cpu = time_in_turns(
                {q: partial(s.predict_maps, image) for q, s in timed.items()},
                repeats=args.repeats,
            )
            for q in timed:
                print(f"| {threads} | {q} | {wall[q] / mp:.3f} | {cpu[q] / mp:.3f} | "
                      f"{cpu['fp32'] / cpu[q]:.2f} |", flush=True)  # fmt: skip

    if args.record:
        from senpath.segment.weights import record_int8_parity

        js = record_int8_parity(args.model, {
            "min_f1": mins["onnx-int8"],
            "per_set": per_set["onnx-int8"],
            "fp32_nuclei": counts,
            "measured": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/int8_parity.py --record",
        })  # fmt: skip
        print(f"\nrecorded in {js}: min_f1 {mins['onnx-int8']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
