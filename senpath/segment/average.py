"""Average the weights of nucleus networks into one checkpoint (a model soup).

``python -m senpath.segment.average --out RUN/average.pt SOURCE[=WEIGHT] SOURCE[=WEIGHT] ...``

Each ``SOURCE`` is a training checkpoint (``RUN/step_N.pt``) or a model (folder or JSON, e.g.
``models``: sha256-checked); all must be the same network (``net_config``). Every floating-point
tensor, batch-norm running statistics included, becomes the weighted mean of the sources'
(weights default to equal and are normalised to sum to 1); integer buffers are taken from the
first source. The result is a training checkpoint that ``python -m senpath.segment.export
--checkpoint`` measures and exports like any other; its training record lists the sources
(file, sha256, weight, and each one's own reproduce command) and the command that made it.

Two uses: runs fine-tuned side by side from one starting point, one CPU core each, averaged at the
end ("model soups", Wortsman et al., ICML 2022), so two single-thread jobs train one model; and a
fine-tuned network interpolated with the one it started from (WiSE-FT, Wortsman et al., CVPR
2022), to keep some of both.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from senpath.segment.weights import sha256_file


def _parse_source(text: str) -> tuple[Path, float]:
    """``PATH`` or ``PATH=WEIGHT`` (a weight > 0)."""
    path, sep, weight = text.rpartition("=")
    if not sep:
        return Path(text), 1.0
    try:
        value = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH or PATH=WEIGHT") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: the weight must be a number > 0")
    return Path(path), value


def _load_source(path: Path) -> dict[str, Any]:
    """A source as ``model`` (state dict), ``net_config``, ``file`` and its ``sha256``, the
    counterstain ``references`` its network was trained with and its ``reproduce`` command where
    known."""
    from senpath.segment.export import reproduce_command
    from senpath.segment.weights import (
        load_checkpoint,
        load_weights,
        references_from_args,
        trained_counterstain_references,
    )

    if path.suffix == ".pt" and path.is_file() and not path.with_suffix(".json").is_file():
        ckpt = load_checkpoint(path)
        return {
            "model": ckpt["model"],
            "net_config": ckpt["net_config"],
            "file": path,
            "sha256": sha256_file(path),
            "references": references_from_args(ckpt.get("args") or {}),
            "reproduce": reproduce_command(ckpt) if "total_steps" in ckpt else None,
            "step": int(ckpt["step"]),
            "total_steps": ckpt.get("total_steps"),
        }
    state, spec = load_weights(path)  # a model: folder, JSON or weights next to their JSON
    training = spec.get("training") or {}
    return {
        "model": state,
        "net_config": spec["net_config"],
        "file": Path(spec["weights_path"]),
        "sha256": spec["sha256"],  # load_weights verified the file against it
        "references": trained_counterstain_references(spec),
        "reproduce": training.get("reproduce"),
        "step": int(spec.get("checkpoint_step") or 0),
        "total_steps": training.get("total_steps"),
    }


def mean_state(
    states: Sequence[Mapping[str, Any]], weights: Sequence[float] | None = None
) -> dict[str, Any]:
    """Weighted mean of tensor dicts with the same keys and shapes (state dicts, AdamW's
    per-parameter state): floating-point tensors averaged in float64 and returned as float32;
    anything else (batch norm's ``num_batches_tracked``) copied from the first. ``weights``
    (default equal) are normalised to sum to 1."""
    weights = [1.0] * len(states) if weights is None else list(weights)
    total = sum(weights)
    out: dict[str, Any] = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean = sum(s[key].double() * (w / total) for s, w in zip(states, weights, strict=True))
            out[key] = mean.float()
        else:
            out[key] = value.clone()
    return out


def average_checkpoints(
    sources: Sequence[tuple[str | Path, float]], out: str | Path, *, command: str | None = None
) -> Path:
    """Write the weighted mean of ``sources`` (``(path, weight)``) as a training checkpoint.

    Parameters
    ----------
    sources : training checkpoints or models of one network, with weights > 0 (normalised).
    out : the checkpoint to write (atomically).
    command : the command line recorded as how it was made (default: built from the sources).

    Returns
    -------
    Path of the checkpoint. Raises ``ValueError`` naming the source that differs in network,
    tensors or shapes, or when the sources were trained with different counterstain references.
    """
    import torch

    if len(sources) < 2:
        raise ValueError("average needs two sources or more")
    loaded = [(_load_source(Path(p)), float(w)) for p, w in sources]
    if not all(math.isfinite(w) and w > 0 for _, w in loaded):
        raise ValueError("every source's weight must be a number > 0")
    total = sum(w for _, w in loaded)
    first = loaded[0][0]
    for src, _ in loaded[1:]:
        if src["net_config"] != first["net_config"]:
            raise ValueError(
                f"{src['file']}: another network than {first['file']} "
                f"({src['net_config']} vs {first['net_config']}): only one network can be averaged"
            )
        if set(src["model"]) != set(first["model"]):
            raise ValueError(f"{src['file']}: its tensors differ from those of {first['file']}")
    for key, tensor in first["model"].items():
        for src, _ in loaded[1:]:
            if src["model"][key].shape != tensor.shape:
                raise ValueError(
                    f"{src['file']}: {key} has shape {tuple(src['model'][key].shape)}, "
                    f"{first['file']} {tuple(tensor.shape)}"
                )
    model = mean_state([src["model"] for src, _ in loaded], [w for _, w in loaded])
    references = _common_references([src for src, _ in loaded])
    record = [
        {
            "source": str(src["file"]),
            "sha256": src["sha256"],
            "weight": round(w / total, 6),
            "step": src["step"],
            "reproduce": src["reproduce"],
        }
        for src, w in loaded
    ]
    made_by = command or " ".join(
        ["python -m senpath.segment.average --out", str(out)] + [f"{p}={w:g}" for p, w in sources]
    )
    ckpt = {
        "model": model,
        "net_config": first["net_config"],
        "step": first["step"],
        "total_steps": first["total_steps"] if first["total_steps"] is not None else first["step"],
        "args": {"counterstain_references": repr(references) if references else None},
        "averaged": {"command": made_by, "sources": record},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, out)
    return out


def _common_references(sources: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The counterstain references the averaged network was trained with: those of the sources
    trained with any (a source trained on crops as rendered adds none); sources that disagree
    on an assay are refused."""
    out: dict[str, float] = {}
    for src in sources:
        for assay, od in src["references"].items():
            if assay in out and abs(out[assay] - od) > 1e-9:
                raise ValueError(
                    f"{src['file']}: trained with {assay} at {od:g} OD, another source at "
                    f"{out[assay]:g}: a network averaged from them expects neither"
                )
            out[assay] = od
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m senpath.segment.average``."""
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    p.add_argument(
        "sources",
        nargs="+",
        type=_parse_source,
        metavar="SOURCE[=WEIGHT]",
        help="training checkpoints or models (folder/JSON) of one network; weights default to 1",
    )
    args = p.parse_args(argv)
    command = " ".join(["python -m senpath.segment.average", *(argv or sys.argv[1:])])
    try:
        out = average_checkpoints(args.sources, args.out, command=command)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(args.sources)} sources)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
