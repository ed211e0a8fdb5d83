"""Static int8 quantisation of the nucleus network for ONNX Runtime (precision ``onnx-int8``).

Dynamic quantisation covers only Linear layers, and the network is convolutions: on this project's
CPU it gained nothing (5.05 vs 5.34 s/MP). Static quantisation quantises the convolutions too, with
activation ranges measured beforehand on calibration images. The recipe was chosen by measurement
(issue 18; AMD EPYC with AVX-512 VNNI, ONNX Runtime 1.31, one thread, a 1024² synthetic Ki67 image):

=====================================  ===========  =================================
variant                                 s / MP       nuclei F1 vs fp32 (IoU 0.5)
=====================================  ===========  =================================
ONNX Runtime fp32                       1.00         1.000
QDQ, u8 activations, s8 per-channel     0.38         0.998
QDQ, s8 activations, s8 per-channel     0.88         0.998
QOperator, u8 / s8 per-channel          0.47         0.998
QOperator, u8 / u8 per-tensor           1.19         0.996
=====================================  ===========  =================================

So: QDQ, unsigned 8-bit activations, signed 8-bit weights per output channel, min/max calibration
on :data:`CALIBRATION_IMAGES` synthetic 256² crops of the four chromogen layouts (seeds apart from
every evaluation image). On x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels use an
instruction whose 16-bit sums can saturate, so there the weights are quantised to 7 bits
(``reduce_range``). Whether int8 is faster and keeps the nuclei on a given machine is not assumed:
:func:`senpath.segment.runtime.calibrate` times it and checks its nuclei like every candidate.

The quantised model is built from the shipped (or the user's) weights at run time, a few seconds,
and kept in the calibration cache folder under the digest of the fp32 export, the ONNX Runtime
version and the recipe; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

#: Names the quantisation recipe; part of the cache file name, so a change rebuilds the model.
RECIPE = "qdq-u8s8-perchannel-minmax-v1"
#: Synthetic calibration crops (their assays cycle through :data:`CALIBRATION_ASSAYS`).
CALIBRATION_IMAGES = 8
#: Side (px at 0.5 µm/px) of a calibration crop.
CALIBRATION_SIDE = 256
#: Chromogen layouts the calibration crops are drawn from.
CALIBRATION_ASSAYS = ("ki67", "p16", "sabgal", "sabgal-eosin")
#: First seed of the calibration crops (the runtime's parity image uses seed 18, the tests < 100).
CALIBRATION_SEED = 1000


def calibration_batches(
    *, n: int = CALIBRATION_IMAGES, side: int = CALIBRATION_SIDE
) -> list[NDArray[np.float32]]:
    """The network inputs that set the activation ranges.

    Parameters
    ----------
    n : number of crops.
    side : crop side in px at 0.5 µm/px.

    Returns
    -------
    list of (1, 3, side, side) float32 arrays in [0, 1]
        Synthetic tissue, deterministic (fixed seeds), never an evaluation image.
    """
    from senpath.synth import SynthParams, render_region

    batches = []
    for i in range(n):
        region = render_region(
            CALIBRATION_ASSAYS[i % len(CALIBRATION_ASSAYS)], shape=(side, side),
            seed=CALIBRATION_SEED + i, params=SynthParams(tissue_fraction=0.9),
        )  # fmt: skip
        rgb = region.rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        batches.append(np.ascontiguousarray(rgb))
    return batches


def has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX-512 or AVX), read from ``/proc/cpuinfo``; ``True`` off
    x86 or when the flags cannot be read (no ``reduce_range`` then)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return True


def quantize_network(fp32_onnx: bytes, *, reduce_range: bool = False) -> bytes:
    """Quantise an exported network (input ``rgb``, output ``logits``) to int8 by :data:`RECIPE`.

    Parameters
    ----------
    fp32_onnx : the serialised fp32 ONNX model.
    reduce_range : quantise weights to 7 bits (for x86 CPUs without VNNI).

    Returns
    -------
    bytes
        The serialised QDQ int8 model (float32 in and out).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._inputs = iter([{"rgb": x} for x in calibration_batches()])

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            return next(self._inputs, None)

    with tempfile.TemporaryDirectory(prefix="senpath-int8-") as tmp:
        source, prepared, output = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(fp32_onnx)
        # the symbolic shape pass cannot follow the dynamic height/width through the decoder's
        # resizes; ONNX shape inference and the graph optimiser (the part that matters) still run
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(output), _Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        return output.read_bytes()


def cached_int8_network(fp32_onnx: bytes, *, cache_dir: Path | None) -> bytes:
    """The int8 model of an fp32 export: read from ``cache_dir`` or quantised and written there.

    Parameters
    ----------
    fp32_onnx : the serialised fp32 ONNX model.
    cache_dir : folder of the cached models (``None``: no cache, quantise every time).

    Returns
    -------
    bytes
        The serialised int8 model.
    """
    import onnxruntime

    reduce_range = not has_vnni()
    digest = hashlib.sha256(fp32_onnx).hexdigest()[:16]
    name = f"int8-{digest}-ort{onnxruntime.__version__}-{RECIPE}{'-rr' if reduce_range else ''}"
    path = None if cache_dir is None else Path(cache_dir) / f"{name}.onnx"
    if path is not None:
        import onnx

        try:
            cached = path.read_bytes()
            onnx.load_model_from_string(cached)  # a damaged file is rebuilt, not run
            return cached
        except Exception:  # noqa: BLE001 - none yet, unreadable or not a model (protobuf's own error)
            pass
    model = quantize_network(fp32_onnx, reduce_range=reduce_range)
    if path is not None:
        # a read-only or full cache folder costs a quantisation per process, never the analysis
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(model)
            os.replace(tmp, path)
    return model
