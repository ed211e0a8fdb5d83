"""Shipped weights: locate, verify (sha256) and load; export a training checkpoint for shipping.

The weights travel as package data (``models/`` in the repo, installed as ``senpath.models``):
``nucleus_unet.pt`` (a float16 state dict) next to ``nucleus_unet.json`` (architecture, thresholds,
resolution, metrics and the sha256 of the ``.pt``). Loading refuses a file whose sha256 differs from
the JSON's.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Stem of the shipped files (``<stem>.pt`` and ``<stem>.json``).
MODEL_NAME = "nucleus_unet"
#: File name of the int8 network next to the fp32 weights (:mod:`senpath.segment.quant`).
INT8_FILE = "nucleus_unet_int8.onnx"
#: Format version of the JSON written by :func:`export_checkpoint`.
SPEC_VERSION = 1


class WeightsIntegrityError(RuntimeError):
    """The weights file does not match the sha256 recorded in its JSON."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_model_json() -> Path:
    """Path of the shipped model JSON inside the installed ``senpath.models`` package."""
    from importlib.resources import files

    return Path(str(files("senpath.models").joinpath(f"{MODEL_NAME}.json")))


def _spec_path(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        p = default_model_json()
    else:
        p = Path(path)
        if p.is_dir():
            p = p / f"{MODEL_NAME}.json"
        elif p.suffix != ".json":
            p = p.with_suffix(".json")
    if not p.is_file():
        raise FileNotFoundError(
            f"model description {p} not found: pass the path of a <name>.json written by "
            "senpath.segment.weights.export_checkpoint (or of its folder), or reinstall senpath"
        )
    return p


def load_spec(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read a model JSON (shipped one when ``path`` is None); adds ``"weights_path"``.

    Parameters
    ----------
    path : path-like, optional
        The ``.json``, the ``.pt`` next to it, or their folder.
    """
    p = _spec_path(path)
    spec = json.loads(p.read_text())
    spec["weights_path"] = str(p.with_name(spec["weights_file"]))
    return spec


def verify_weights(spec: Mapping[str, Any]) -> str:
    """Check the sha256 of ``spec["weights_path"]`` against ``spec["sha256"]``; return it.

    Raises
    ------
    WeightsIntegrityError
        On mismatch (a corrupted download, a truncated file, or weights edited without re-export).
    """
    path = Path(spec["weights_path"])
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} named in the model JSON is missing")
    digest = sha256_file(path)
    if digest != spec["sha256"]:
        raise WeightsIntegrityError(
            f"sha256 of {path} is {digest}, but its model JSON records {spec['sha256']}: the file is "
            "corrupted or was changed; reinstall senpath or re-export the weights with "
            "senpath.segment.weights.export_checkpoint"
        )
    return digest


def load_weights(
    path: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a verified state dict (float32) and its model spec.

    Parameters
    ----------
    path : path-like, optional
        Model JSON, weights file or folder; the shipped model when omitted.
    verify : bool
        Check the sha256 first (default). Turn off only for weights you just produced.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
    spec : dict
        The model JSON (``net_config``, ``postprocess``, ``mpp``, ``sha256``, ``metrics``, ...).
    """
    import torch

    spec = load_spec(path)
    if verify:
        verify_weights(spec)
    state = torch.load(spec["weights_path"], map_location="cpu", weights_only=True)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return state, spec


def load_pretrained(
    path: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the network from a model JSON and load its verified weights (eval mode, CPU, fp32)."""
    from senpath.segment.net import build_model

    state, spec = load_weights(path, verify=verify)
    model = build_model(spec["net_config"])
    model.load_state_dict(state)
    model.eval()
    return model, spec


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint (:mod:`senpath.segment.train`) as tensors and plain values only.

    ``torch.load`` with ``weights_only=True``: a crafted file cannot run code while it is read (a
    full unpickler would execute whatever the file asks). Anything else than tensors, numbers,
    strings, lists and dicts is refused with a ``ValueError`` naming the file.
    """
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise ValueError(
            f"{path}: not a senpath training checkpoint of tensors and plain values "
            f"(refused to unpickle anything else): {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(ckpt, dict) or not {"model", "net_config", "step"} <= set(ckpt):
        raise ValueError(f"{path}: not a senpath training checkpoint (no model/net_config/step)")
    return ckpt


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    postprocess: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    name: str = MODEL_NAME,
) -> Path:
    """Write ``<name>.pt`` (float16 state dict) and ``<name>.json`` from a training checkpoint.

    Parameters
    ----------
    checkpoint : path-like
        A ``.pt`` written by :mod:`senpath.segment.train`.
    out_dir : path-like
        Destination folder (the repo's ``models/`` for shipping).
    postprocess : mapping
        Post-processing thresholds (:class:`~senpath.segment.postprocess.PostprocessConfig` fields).
    metrics, training : mapping, optional
        Validation figures and training provenance recorded in the JSON. When ``out_dir`` already
        holds a JSON for byte-identical weights, its ``training`` record is kept instead.

    Returns
    -------
    Path of the JSON.
    """
    import torch

    from senpath.segment.net import OUTPUT_CHANNELS
    from senpath.segment.resample import NETWORK_MPP

    ckpt = load_checkpoint(checkpoint)
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ckpt["model"].items()
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pt = out / f"{name}.pt"
    tmp = pt.with_name(pt.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, pt)
    spec = {
        "spec_version": SPEC_VERSION,
        "name": name,
        "weights_file": pt.name,
        "sha256": sha256_file(pt),
        "dtype": "float16",
        "mpp": NETWORK_MPP,
        "input": "RGB float in [0, 1], (B, 3, H, W), H and W multiples of the stride",
        "output_channels": list(OUTPUT_CHANNELS),
        "net_config": ckpt["net_config"],
        "postprocess": dict(postprocess),
        # what the network was trained to see (train --counterstain-references): a run that shows
        # it those assays' slides otherwise is warned (senpath.slide_plan.reference_warnings)
        "counterstain_references": references_from_args(ckpt.get("args", {})),
        "checkpoint_step": int(ckpt["step"]),
        "metrics": dict(metrics or {}),
        "training": dict(training or {}),
    }
    js = out / f"{name}.json"
    try:
        previous = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    if previous.get("sha256") == spec["sha256"] and previous.get("training"):
        # The same weights byte for byte (e.g. metrics re-measured after an inference change): keep
        # their recorded provenance, which may hold what this checkpoint cannot know (earlier stages).
        spec["training"] = previous["training"]
    if previous.get("sha256") == spec["sha256"] and previous.get("int8"):
        spec["int8"] = previous["int8"]  # made from these very weights: still theirs
    _write_spec(js, spec)
    return js


def references_from_args(args: Mapping[str, Any]) -> dict[str, float]:
    """``--counterstain-references`` of a training checkpoint's arguments (``ckpt["args"]``,
    stored as the resolved dict's repr, or ``None``) as ``{assay: OD}``."""
    value = args.get("counterstain_references")
    if value in (None, "None", ""):
        return {}
    references = ast.literal_eval(value) if isinstance(value, str) else value
    return {str(k): float(v) for k, v in references.items()}


def trained_counterstain_references(spec: Mapping[str, Any]) -> dict[str, float]:
    """The counterstain level (log10 OD) per assay the network's training crops were brought up
    to (``train --counterstain-references``), ``{}`` for a network trained on crops as rendered
    (v1-v5). Read from the model JSON's ``counterstain_references``, or, for an export written
    before that field, from its training record's arguments. Only the last training stage's: a
    network fine-tuned from one trained so, without the option, records none."""
    if "counterstain_references" in spec:
        return {str(k): float(v) for k, v in spec["counterstain_references"].items()}
    return references_from_args((spec.get("training") or {}).get("args") or {})


def _write_spec(js: Path, spec: Mapping[str, Any]) -> None:
    """Write a model JSON atomically, its keys in the order given."""
    from senpath.results import atomic_write_bytes

    atomic_write_bytes(js, (json.dumps(spec, indent=2) + "\n").encode("utf-8"))


def record_int8(
    folder: str | os.PathLike[str],
    network: bytes,
    *,
    source: str,
    parity: Mapping[str, Any] | None = None,
) -> Path:
    """Write the int8 network (ONNX bytes) next to the fp32 weights of ``folder`` and record it
    (file, sha256, the sha256 of the fp32 weights it was made from, ``parity``) in their JSON.

    Returns the path of the ONNX file. ``parity`` is what decides whether ``precision="auto"`` may
    choose it (:func:`int8_network`); without one the file is recorded but never chosen.
    """
    js = _spec_path(folder)
    spec = json.loads(js.read_text(encoding="utf-8"))
    from senpath.results import atomic_write_bytes

    onnx_path = js.with_name(INT8_FILE)
    atomic_write_bytes(onnx_path, network)
    spec["int8"] = {
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "teacher_sha256": spec["sha256"],
        "source": source,
        "parity": dict(parity or {}),
    }
    _write_spec(js, spec)
    return onnx_path


def record_int8_parity(folder: str | os.PathLike[str], parity: Mapping[str, Any]) -> Path:
    """Set the measured ``parity`` of the int8 network recorded in the model JSON of ``folder``
    (``benchmarks/int8_parity.py --record``); returns the JSON's path.

    Raises
    ------
    FileNotFoundError
        When the model has no int8 network recorded.
    """
    js = _spec_path(folder)
    spec = json.loads(js.read_text(encoding="utf-8"))
    if not spec.get("int8"):
        raise FileNotFoundError(
            f"{js} records no int8 network: run python -m senpath.segment.quant export"
        )
    spec["int8"]["parity"] = dict(parity)
    _write_spec(js, spec)
    return js


def int8_network(spec: Mapping[str, Any]) -> bytes:
    """The verified int8 ONNX network recorded in ``spec`` (a :func:`load_spec` result).

    Raises
    ------
    FileNotFoundError
        When the model has no int8 network (or its file is missing).
    WeightsIntegrityError
        When its sha256 differs from the record, or it was made from other fp32 weights.
    """
    record = spec.get("int8")
    if not record:
        raise FileNotFoundError(
            f"the model {spec.get('name', MODEL_NAME)} ({str(spec.get('sha256'))[:12]}…) has no "
            "int8 network: make one with python -m senpath.segment.quant"
        )
    if record.get("teacher_sha256") != spec.get("sha256"):
        raise WeightsIntegrityError(
            f"the int8 network {record.get('file')} was made from weights "
            f"{str(record.get('teacher_sha256'))[:12]}…, not these ({str(spec.get('sha256'))[:12]}…): "
            "make it again (python -m senpath.segment.quant)"
        )
    path = Path(spec["weights_path"]).with_name(record["file"])
    if not path.is_file():
        raise FileNotFoundError(f"int8 network {path} named in the model JSON is missing")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        raise WeightsIntegrityError(
            f"sha256 of {path} is {digest}, but its model JSON records {record['sha256']}: the file "
            "is corrupted or was changed; reinstall senpath"
        )
    return data


def shipped_weights_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Provenance of the (shipped) model for result stores; the sha256 is verified first.

    Returns
    -------
    dict
        ``model_name``, ``model_sha256``, ``model_mpp`` (µm/px), ``model_file`` (file name only),
        ``model_checkpoint_step``, ``model_postprocess`` (thresholds) and ``model_spec_sha256``
        (of what besides the weights decides the nuclei: architecture, thresholds, resolution);
        ``model_int8_sha256`` when the model has an int8 network (:mod:`senpath.segment.quant`);
        ``model_counterstain_references`` when its network was trained on normalised crops
        (:func:`trained_counterstain_references`).
    """
    spec = load_spec(path)
    digest = verify_weights(spec)
    decisive = {k: spec.get(k) for k in ("net_config", "postprocess", "mpp")}
    return {
        "model_name": spec.get("name", MODEL_NAME),
        "model_sha256": digest,
        "model_spec_sha256": hashlib.sha256(
            json.dumps(decisive, sort_keys=True).encode()
        ).hexdigest(),
        "model_mpp": spec["mpp"],
        "model_file": spec["weights_file"],
        "model_checkpoint_step": spec.get("checkpoint_step"),
        "model_postprocess": spec.get("postprocess", {}),
        # a network trained on normalised crops: what it expects (omitted when none)
        **(
            {"model_counterstain_references": references}
            if (references := trained_counterstain_references(spec))
            else {}
        ),
        **(
            {"model_int8_sha256": spec["int8"].get("sha256")}  # what precision onnx-int8 runs
            if spec.get("int8")
            else {}
        ),
    }
