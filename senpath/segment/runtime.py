"""How the nucleus network runs on this CPU: the fastest precision/runtime that keeps its nuclei.

No one choice is best everywhere (issue 18): on a Xeon with AMX, bf16 autocast + channels_last ran
the shipped network at 1.8 CPU-s/MP and fp32 eager at 5.3; on an AMD EPYC without native bf16, bf16
took 21.5 s for one 1024² image, fp32 3.9 s and ONNX Runtime fp32 2.0 s. So ``precision="auto"`` on
a CPU is decided by measurement, once per machine:

- :func:`calibrate` times each candidate of :data:`CPU_CANDIDATES` on a small synthetic Ki67 image
  and checks its nuclei against fp32 (instances matched at IoU 0.5, F1 >= :data:`PARITY_F1`);
  the fastest that passes is chosen;
- :func:`choose_cpu_precision` keeps that choice in a JSON file in the user cache folder, keyed
  by CPU model, core count, torch and ONNX Runtime versions, torch threads and the weights'
  sha256; a new machine, library or model calibrates again;
- and by whether other processes hold the cores the network's threads need when the choice is
  made (:func:`other_cpu_load`, :func:`load_class`): "quiet" and "contended" are measured and
  cached apart. The ranking flips with load: on a 2-core AMD EPYC at 2 threads, quiet, bf16 ran
  at 0.51 s/MP and ONNX Runtime at 0.61; with a training job on one core, bf16 took 3.10 s/MP
  (torch's threads wait on each other) and ONNX Runtime 1.49. One cache entry for both made the
  choice of whichever state the first run happened to meet. A process keeps its first choice
  for all its slides (one batch, one precision).

Override it with the ``precision`` setting (``senpath run --precision``) or the environment
variable ``SENPATH_PRECISION``; ``SENPATH_CACHE_DIR`` moves the cache file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import torch

#: What ``precision="auto"`` may pick on a CPU (``onnx-fp32`` only when onnxruntime is installed;
#: ``onnx-int8`` only for a model with an int8 network whose recorded parity passes, see
#: :func:`cpu_candidates`).
CPU_CANDIDATES = ("fp32", "bf16", "onnx-fp32", "onnx-int8")
#: Lowest F1 of instances matched at IoU 0.5 against fp32 that a candidate may have.
PARITY_F1 = 0.99
#: Environment variable that overrides ``precision="auto"`` (any value of ``PRECISIONS``).
PRECISION_ENV = "SENPATH_PRECISION"
#: Environment variable naming the folder of the calibration cache.
CACHE_ENV = "SENPATH_CACHE_DIR"
#: Cache file name (JSON: one entry per machine/library/model key).
CACHE_FILE = "cpu_precision.json"
#: Side (px at 0.5 µm/px) of the calibration image; one pass adds 2 x 32 px of context, so the
#: network is timed on 1120², what a default analysis tile (512 µm + 2 x 24 µm halo) feeds it.
#: The runtimes' ranking depends on the size: on this project's VM int8 ran slower than bf16 at
#: 512² and 1.3x faster at 1120² (model card, "int8 network").
CALIBRATION_SIDE = 1056
#: Seconds over which :func:`other_cpu_load` samples the machine's CPU use.
LOAD_SAMPLE_S = 0.25


@dataclass
class Calibration:
    """The outcome of :func:`calibrate`.

    Attributes
    ----------
    choice : the chosen precision.
    seconds_per_mp : wall seconds per megapixel fed to the network, per candidate (best of repeats).
    parity_f1 : F1 of instances matched at IoU 0.5 against fp32, per candidate.
    skipped : candidates not measured, with the reason.
    """

    choice: str
    seconds_per_mp: dict[str, float] = field(default_factory=dict)
    parity_f1: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return {
            "choice": self.choice,
            "seconds_per_mp": self.seconds_per_mp,
            "parity_f1": self.parity_f1,
            "skipped": self.skipped,
        }


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime (and the ``onnx`` package the exporter needs) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(model: torch.nn.Module, *, stride: int) -> bytes:
    """``model`` as ONNX (opset 17; input ``rgb``, output ``logits``, batch, height and width
    dynamic), exported from an example of side ``8 * stride``."""
    import io

    import torch

    buffer = io.BytesIO()
    example = torch.zeros(1, 3, 8 * stride, 8 * stride)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # the TorchScript exporter: it needs neither onnxscript nor a traced shape per size
        warnings.simplefilter("ignore")
        # a BytesIO is a file the exporter accepts (its hints say a path)
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, input_names=["rgb"],  # type: ignore[arg-type]
            output_names=["logits"], dynamic_axes={"rgb": axes, "logits": axes},
            opset_version=17,
        )  # fmt: skip
    return buffer.getvalue()


class OnnxNetwork:
    """The network run by ONNX Runtime (CPU), called like the module.

    Parameters
    ----------
    model : the torch network (eval mode, on the CPU), exported to ONNX fp32 here.
    stride : the network's stride (export example side).
    threads : ONNX Runtime intra-op threads (default: torch's thread count).
    network : an ONNX model to run instead of ``model``'s export (the int8 network,
        :func:`senpath.segment.weights.int8_network`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        stride: int,
        threads: int | None = None,
        network: bytes | None = None,
    ) -> None:
        import torch

        if not onnxruntime_available():
            raise RuntimeError(
                "precisions 'onnx-fp32' and 'onnx-int8' need onnxruntime and onnx: pip install "
                "'senpath[onnx]', or use precision 'fp32' or 'bf16'"
            )
        import onnxruntime as ort

        if network is None:
            network = export_onnx(model, stride=stride)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(network, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2, H, W)`` float32 of a ``(B, 3, H, W)`` float32 CPU tensor."""
        import torch

        x = x.float().contiguous()
        (logits,) = self.session.run(["logits"], {"rgb": x.numpy()})
        return torch.from_numpy(logits)


def matched_f1(a: NDArray[np.integer], b: NDArray[np.integer], *, iou: float = 0.5) -> float:
    """F1 of instances matched at IoU > ``iou`` (>= 0.5, where a match is unique) between two label
    images of the same shape; 1.0 when both are empty."""
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} vs {b.shape}")
    if iou < 0.5:
        raise ValueError("matched_f1 needs iou >= 0.5 (unique matches)")
    a, b = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    n_a, n_b = len(np.unique(a[a > 0])), len(np.unique(b[b > 0]))
    if n_a + n_b == 0:
        return 1.0
    both = (a > 0) & (b > 0)
    pairs, overlap = np.unique(a[both] * (int(b.max()) + 1) + b[both], return_counts=True)
    pa, pb = np.divmod(pairs, int(b.max()) + 1)
    area_a = np.bincount(a, minlength=int(a.max()) + 1)
    area_b = np.bincount(b, minlength=int(b.max()) + 1)
    union = area_a[pa] + area_b[pb] - overlap
    tp = int(np.count_nonzero(overlap / union > iou))
    return 2.0 * tp / (n_a + n_b)


#: Builds a segmenter (:class:`~senpath.segment.predict.NucleusSegmenter` on the CPU) at a precision.
SegmenterAt = Callable[[str], Any]


def int8_offered(spec: dict[str, Any] | None) -> str | None:
    """Why ``precision="auto"`` may not choose the int8 network of ``spec`` (``None``: it may).

    The int8 network (:mod:`senpath.segment.quant`) is made to give the fp32 network's nuclei,
    and the calibration checks that on one synthetic image, where every int8 variant measured so
    far passed, including those that lost nuclei on real tissue (model card). So it is offered
    only when the parity measured on the real held-out images when it was made
    (``benchmarks/int8_parity.py --record``: the JSON's ``int8.parity.min_f1``, the lowest over the
    held-out sets of the F1 of instances matched against fp32) reaches :data:`PARITY_F1`.
    """
    record = (spec or {}).get("int8")
    if not record:
        return "the model has no int8 network"
    if not onnxruntime_available():
        return "onnxruntime is not installed (pip install 'senpath[onnx]')"
    min_f1 = (record.get("parity") or {}).get("min_f1")
    if min_f1 is None or float(min_f1) < PARITY_F1:
        return (
            f"its parity with fp32 on real held-out images (F1 {min_f1}) is below {PARITY_F1}: "
            "choose it explicitly with precision 'onnx-int8'"
        )
    return None


def cpu_candidates(spec: dict[str, Any] | None) -> tuple[str, ...]:
    """:data:`CPU_CANDIDATES` less ``onnx-int8`` where :func:`int8_offered` says why not."""
    if int8_offered(spec) is None:
        return CPU_CANDIDATES
    return tuple(c for c in CPU_CANDIDATES if c != "onnx-int8")


def time_in_turns(
    calls: Mapping[str, Callable[[], object]], *, repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall and best CPU seconds of each call over ``repeats`` rounds (at least one).

    The calls are timed in turns, not one after the other: on a shared machine a burst of other
    work then slows every call alike instead of deciding which is the fastest.
    """
    wall = dict.fromkeys(calls, math.inf)
    cpu = dict.fromkeys(calls, math.inf)
    for _ in range(max(1, repeats)):
        for name, call in calls.items():
            t, c = time.perf_counter(), time.process_time()
            call()
            wall[name] = min(wall[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)
    return wall, cpu


def calibrate(
    build: SegmenterAt,
    *,
    candidates: tuple[str, ...] = CPU_CANDIDATES,
    side: int = CALIBRATION_SIDE,
    repeats: int = 3,
) -> Calibration:
    """Time each candidate precision on a synthetic Ki67 image and check its nuclei against fp32.

    Parameters
    ----------
    build : ``build(precision)`` gives the network on the CPU at that precision (an object with
        ``predict_image_maps`` and ``instances``, a :class:`~senpath.segment.predict.NucleusSegmenter`).
    candidates : precisions to try (fp32 is always measured: it is the reference).
    side : image side in px at 0.5 µm/px.
    repeats : timed passes per candidate, in turns, after the parity pass (the best counts).

    Returns
    -------
    Calibration
        The fastest candidate with F1 >= :data:`PARITY_F1` against fp32 (fp32 when none is).
    """
    from senpath.synth import SynthParams, render_region

    region = render_region(
        "ki67", shape=(side, side), seed=18, params=SynthParams(tissue_fraction=0.95)
    )
    result = Calibration(choice="fp32")
    segmenters: dict[str, Any] = {}
    reference: NDArray[np.int32] | None = None
    for precision in ("fp32", *[c for c in candidates if c != "fp32"]):
        if precision.startswith("onnx-") and not onnxruntime_available():
            result.skipped[precision] = "onnxruntime is not installed (pip install 'senpath[onnx]')"
            continue
        try:
            seg = build(precision)
            labels = seg.instances(seg.predict_image_maps(region.rgb))  # also the warm-up
        except Exception as error:  # a runtime that cannot run here is not a candidate
            result.skipped[precision] = f"{type(error).__name__}: {error}"
            continue
        reference = labels if reference is None else reference
        result.parity_f1[precision] = matched_f1(reference, labels)
        segmenters[precision] = seg
    best, _ = time_in_turns(
        {p: partial(seg.predict_image_maps, region.rgb) for p, seg in segmenters.items()},
        repeats=repeats,
    )
    fed_mp = (side + 64) ** 2 / 1e6  # predict's context margin, 2 x 32 px
    result.seconds_per_mp = {p: t / fed_mp for p, t in best.items()}
    passing = [p for p, f1 in result.parity_f1.items() if f1 >= PARITY_F1]
    result.choice = min(passing, key=result.seconds_per_mp.__getitem__, default="fp32")
    return result


def machine_key(spec: dict[str, Any] | None = None) -> str:
    """What a cached choice holds for: CPU model and cores, torch, ONNX Runtime, threads, weights,
    and the calibration image's side (the runtimes' ranking depends on the image size)."""
    import torch

    ort_version = "none"
    if onnxruntime_available():
        import onnxruntime

        ort_version = onnxruntime.__version__
    weights = str((spec or {}).get("sha256", "unknown"))[:16]
    int8 = ((spec or {}).get("int8") or {}).get("sha256")
    if int8:
        weights += f" + int8 {str(int8)[:16]}"
    return (
        f"{cpu_name()} | {os.cpu_count()} cores | torch {torch.__version__} | "
        f"onnxruntime {ort_version} | {torch.get_num_threads()} threads | weights {weights} | "
        f"timed at {CALIBRATION_SIDE}²"
    )


def cache_path() -> Path:
    """The calibration cache file: ``$SENPATH_CACHE_DIR`` or the user cache folder of senpath."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        import platformdirs

        folder = platformdirs.user_cache_dir("senpath", appauthor=False)
    return Path(folder) / CACHE_FILE


def other_cpu_load(interval: float = LOAD_SAMPLE_S) -> float:
    """Cores' worth of CPU that processes other than this one used over ``interval`` seconds.

    The machine's busy share (psutil, all cores) minus this process's own CPU time, so a
    training job or another analysis counts and this process's threads do not.
    """
    import psutil

    me = psutil.Process()
    psutil.cpu_percent(None)
    me.cpu_percent(None)
    time.sleep(interval)
    machine = psutil.cpu_percent(None) / 100.0 * (psutil.cpu_count() or 1)
    return max(0.0, machine - me.cpu_percent(None) / 100.0)


def load_class(threads: int, other_cores: float, cores: int | None = None) -> str:
    """``"contended"`` when fewer cores are left free by other processes than the network's
    ``threads`` (to within half a core), else ``"quiet"``."""
    free = float(cores or os.cpu_count() or 1) - other_cores
    return "contended" if free < threads - 0.5 else "quiet"


_CHOICES: dict[str, str] = {}
_ENTRIES: dict[str, dict[str, Any]] = {}


def chosen_calibration(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cache entry this process's choice for ``spec`` came from (with its ``key``), or ``{}``
    before :func:`choose_cpu_precision` ran."""
    return dict(_ENTRIES.get(machine_key(spec), {}))


def choose_cpu_precision(
    build: SegmenterAt, spec: dict[str, Any] | None = None, *, refresh: bool = False
) -> str:
    """The precision ``auto`` means on this CPU: cached, else calibrated (about 25 s on 2 cores) and cached.

    Parameters
    ----------
    build : ``build(precision)`` gives the network on the CPU at that precision (see
        :func:`calibrate`).
    spec : the model description (its ``sha256`` is part of the cache key).
    refresh : calibrate again even when a choice is cached.

    Returns
    -------
    str
        One of :func:`cpu_candidates`: the choice cached (or measured now) for this machine in
        its present load class (:func:`load_class`); a process keeps its first choice.
    """
    import torch

    base = machine_key(spec)
    if not refresh and base in _CHOICES:
        return _CHOICES[base]
    other = other_cpu_load()
    key = f"{base} | {load_class(torch.get_num_threads(), other)}"
    path = cache_path()
    cached = _read_cache(path)
    entry = cached.get(key)
    why_not_int8 = int8_offered(spec)
    candidates = cpu_candidates(spec)
    if refresh or not isinstance(entry, dict) or entry.get("choice") not in candidates:
        calibration = calibrate(build, candidates=candidates)
        if why_not_int8 is not None:
            calibration.skipped["onnx-int8"] = why_not_int8
        entry = {
            **calibration.to_dict(),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "other_cores_busy": round(other, 2),
        }
        cached[key] = entry
        _write_cache(path, cached)
    _CHOICES[base] = str(entry["choice"])
    _ENTRIES[base] = {**entry, "key": key}
    return _CHOICES[base]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: calibrate again and rewrite it
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    # a read-only home or a full disk costs a calibration per process, never the analysis
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"
