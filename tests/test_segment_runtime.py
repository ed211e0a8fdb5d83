"""The CNN's precision/runtime on a CPU: measured per machine, cached, overridable, same nuclei."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from senpath.config import AnalysisConfig, ConfigError  # noqa: E402
from senpath.segment import runtime  # noqa: E402
from senpath.segment.predict import NucleusSegmenter, predict_instances  # noqa: E402
from senpath.segment.weights import load_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def shipped_model():
    return load_pretrained(None)


@pytest.fixture(scope="module")
def _module_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("senpath-cache")


@pytest.fixture(autouse=True)
def _cache_dir(_module_cache, monkeypatch):
    # the int8 model and calibrations go to a folder of this module (built once, never the user's)
    monkeypatch.setenv(runtime.CACHE_ENV, str(_module_cache))


def _builder(model, spec):
    return lambda precision: NucleusSegmenter(model, spec=spec, device="cpu", precision=precision)


def test_matched_f1_by_hand():
    a = np.zeros((6, 8), np.int32)
    a[0:2, 0:2] = 1  # 4 px
    a[3:6, 3:6] = 2  # 9 px
    a[0:2, 6:8] = 3  # 4 px, missing in b
    b = np.zeros_like(a)
    b[0:2, 0:3] = 7  # IoU 4/6 with 1: a match
    b[3:6, 4:8] = 5  # IoU 6/12 = 0.5 with 2: not a match (IoU must exceed 0.5)
    # 1 match, 3 + 2 instances: F1 = 2 * 1 / 5
    assert runtime.matched_f1(a, b) == pytest.approx(0.4)
    assert runtime.matched_f1(a, a) == 1.0
    assert runtime.matched_f1(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        runtime.matched_f1(a, a[:3])


@pytest.mark.slow  # builds the int8 model once (a few seconds)
def test_calibration_picks_a_fast_candidate_that_keeps_the_nuclei(shipped_model):
    model, spec = shipped_model
    result = runtime.calibrate(_builder(model, spec), side=96, repeats=1)
    measured = set(result.seconds_per_mp)
    assert "fp32" in measured and result.parity_f1["fp32"] == 1.0
    assert measured | set(result.skipped) == set(runtime.CPU_CANDIDATES)
    assert result.choice in measured
    assert result.parity_f1[result.choice] >= runtime.PARITY_F1
    passing = [p for p in measured if result.parity_f1[p] >= runtime.PARITY_F1]
    assert result.seconds_per_mp[result.choice] == min(result.seconds_per_mp[p] for p in passing)


def test_calibration_never_picks_a_candidate_that_loses_nuclei(shipped_model, monkeypatch):
    model, spec = shipped_model
    # every candidate but the fp32 reference "loses" its nuclei: fp32 must be chosen
    monkeypatch.setattr(runtime, "matched_f1", lambda ref, labels: 1.0 if ref is labels else 0.5)
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    result = runtime.calibrate(_builder(model, spec), side=64, repeats=1)
    assert result.choice == "fp32"
    assert result.parity_f1["bf16"] == 0.5
    assert "onnxruntime" in result.skipped["onnx-fp32"]


def test_choice_is_cached_per_machine_key(shipped_model, monkeypatch, tmp_path):
    model, spec = shipped_model
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(runtime, "_CHOICES", {})
    calls = []

    def fake_calibrate(build):
        calls.append(1)
        return runtime.Calibration("bf16", {"bf16": 1.0, "fp32": 2.0}, {"bf16": 1.0, "fp32": 1.0})

    monkeypatch.setattr(runtime, "calibrate", fake_calibrate)
    assert runtime.choose_cpu_precision(_builder(model, spec), spec) == "bf16"
    monkeypatch.setattr(runtime, "_CHOICES", {})  # a new process: read back from the file
    assert runtime.choose_cpu_precision(_builder(model, spec), spec) == "bf16"
    assert len(calls) == 1
    cached = json.loads((tmp_path / runtime.CACHE_FILE).read_text())
    (key,) = cached
    assert runtime.cpu_name() in key and torch.__version__ in key and spec["sha256"][:16] in key
    # another machine (or torch, or model) calibrates again; a broken file too
    monkeypatch.setattr(runtime, "machine_key", lambda spec: "another machine")
    runtime.choose_cpu_precision(_builder(model, spec), spec)
    (tmp_path / runtime.CACHE_FILE).write_text("{not json")
    monkeypatch.setattr(runtime, "_CHOICES", {})
    runtime.choose_cpu_precision(_builder(model, spec), spec)
    assert len(calls) == 3


def test_auto_on_cpu_follows_the_environment_then_the_cache(shipped_model, monkeypatch):
    model, spec = shipped_model
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp32")
    assert NucleusSegmenter(model, spec=spec, device="cpu").precision == "fp32"
    monkeypatch.setenv(runtime.PRECISION_ENV, "int4")
    with pytest.raises(ValueError, match="SENPATH_PRECISION='int4'"):
        NucleusSegmenter(model, spec=spec, device="cpu")
    monkeypatch.delenv(runtime.PRECISION_ENV)
    monkeypatch.setattr(runtime, "choose_cpu_precision", lambda build, spec: "onnx-fp32")
    if runtime.onnxruntime_available():
        assert NucleusSegmenter(model, spec=spec, device="cpu").precision == "onnx-fp32"
    # an explicit precision is taken as given
    assert NucleusSegmenter(model, spec=spec, device="cpu", precision="bf16").precision == "bf16"


def test_precision_setting_is_checked_and_keeps_earlier_digests():
    with pytest.raises(ConfigError, match="precision"):
        AnalysisConfig(precision="int4")
    # the default leaves the identity of stores written before the setting existed unchanged
    assert AnalysisConfig().digest() == "9939c83b52d53186"
    assert AnalysisConfig(precision="fp32").digest() != AnalysisConfig().digest()


def test_onnx_runtime_gives_the_maps_and_nuclei_of_fp32(shipped_model):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from senpath.synth import SynthParams, render_region

    model, spec = shipped_model
    region = render_region(
        "ki67", shape=(192, 224), seed=5, params=SynthParams(tissue_fraction=0.9)
    )
    fp32 = NucleusSegmenter(model, spec=spec, device="cpu", precision="fp32")
    onnx = NucleusSegmenter(model, spec=spec, device="cpu", precision="onnx-fp32")
    maps32, maps_onnx = fp32.predict_image_maps(region.rgb), onnx.predict_image_maps(region.rgb)
    assert maps_onnx.shape == maps32.shape == (2, 192, 224)
    assert np.abs(maps_onnx - maps32).max() < 1e-3
    labels32 = predict_instances(region.rgb, mpp=0.5, model=fp32)
    assert labels32.max() > 10
    assert runtime.matched_f1(labels32, predict_instances(region.rgb, mpp=0.5, model=onnx)) >= 0.99


class _FakeSegmenter:
    """A precision that takes ``seconds`` per image and finds ``labels``."""

    def __init__(self, seconds, labels):
        self.seconds, self.labels = seconds, labels

    def predict_image_maps(self, rgb):
        import time

        time.sleep(self.seconds)
        return rgb

    def instances(self, maps):
        return self.labels


def _fake_builder(labels_of, seconds_of):
    return lambda precision: _FakeSegmenter(seconds_of[precision], labels_of[precision])


@pytest.mark.parametrize("int8_keeps_nuclei", [True, False])
def test_calibration_picks_int8_only_when_it_keeps_the_nuclei(monkeypatch, int8_keeps_nuclei):
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: True)
    nuclei = np.zeros((32, 32), np.int32)
    nuclei[2:8, 2:8], nuclei[12:20, 12:20], nuclei[24:30, 3:9] = 1, 2, 3
    lost = nuclei.copy()
    lost[lost >= 2] = 0  # two of three nuclei gone: F1 0.5
    labels = {"fp32": nuclei, "bf16": nuclei, "onnx-fp32": nuclei}
    labels["onnx-int8"] = nuclei.copy() if int8_keeps_nuclei else lost
    # int8 fastest by far, then onnx-fp32: the timings cannot swap the order on a busy machine
    seconds = {"fp32": 0.06, "bf16": 0.06, "onnx-fp32": 0.03, "onnx-int8": 0.0}
    result = runtime.calibrate(_fake_builder(labels, seconds), side=32, repeats=1)
    assert result.parity_f1["onnx-int8"] == (1.0 if int8_keeps_nuclei else 0.5)
    assert result.choice == ("onnx-int8" if int8_keeps_nuclei else "onnx-fp32")


def test_a_cached_choice_among_fewer_candidates_calibrates_again(monkeypatch, shipped_model):
    _, spec = shipped_model
    key = runtime.machine_key(spec)
    assert "onnx-int8" in key  # a choice cached before int8 was a candidate is not reused
    monkeypatch.setattr(runtime, "CPU_CANDIDATES", ("fp32", "bf16", "onnx-fp32"))
    assert runtime.machine_key(spec) != key


def _tiny_onnx(value: float) -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    const = helper.make_tensor("c", TensorProto.FLOAT, [1], [value])
    graph = helper.make_graph(
        [helper.make_node("Add", ["rgb", "c"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])], [const],
    )  # fmt: skip
    return onnx.helper.make_model(graph).SerializeToString()


def test_int8_model_is_cached_per_export_and_rebuilt_when_damaged(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    from senpath.segment import int8

    calls = []

    def fake_quantize(fp32, *, reduce_range):
        calls.append(reduce_range)
        return _tiny_onnx(float(len(fp32)))

    monkeypatch.setattr(int8, "quantize_network", fake_quantize)
    monkeypatch.setattr(int8, "has_vnni", lambda: True)
    first = int8.cached_int8_network(b"network a", cache_dir=tmp_path)
    assert int8.cached_int8_network(b"network a", cache_dir=tmp_path) == first
    assert calls == [False]
    (cached,) = tmp_path.glob("int8-*.onnx")
    assert int8.RECIPE in cached.name
    int8.cached_int8_network(b"network bb", cache_dir=tmp_path)  # other weights: another model
    assert len(calls) == 2 and len(list(tmp_path.glob("int8-*.onnx"))) == 2
    cached.write_bytes(b"\x00 not a model")
    assert int8.cached_int8_network(b"network a", cache_dir=tmp_path) == first
    assert len(calls) == 3 and cached.read_bytes() == first
    # a CPU without VNNI: 7-bit weights (u8 x s8 sums could saturate there), kept apart
    monkeypatch.setattr(int8, "has_vnni", lambda: False)
    int8.cached_int8_network(b"network a", cache_dir=tmp_path)
    assert calls[-1] is True and len(list(tmp_path.glob("int8-*-rr.onnx"))) == 1


@pytest.mark.slow  # quantises the network (a few seconds)
def test_onnx_int8_keeps_the_nuclei_of_fp32(shipped_model):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from senpath.synth import SynthParams, render_region

    model, spec = shipped_model
    fp32 = NucleusSegmenter(model, spec=spec, device="cpu", precision="fp32")
    int8 = NucleusSegmenter(model, spec=spec, device="cpu", precision="onnx-int8")
    pooled: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
    for assay, seed in (("ki67", 5), ("sabgal", 6), ("p16", 7)):
        region = render_region(
            assay, shape=(320, 288), seed=seed, params=SynthParams(tissue_fraction=0.9)
        )
        maps32, maps8 = fp32.predict_image_maps(region.rgb), int8.predict_image_maps(region.rgb)
        assert maps8.shape == maps32.shape == (2, 320, 288)
        # quantised, not equal: close on average, and the nuclei the same
        assert np.abs(maps8 - maps32).mean() < 0.02
        for name, seg in (("fp32", fp32), ("int8", int8)):
            labels = predict_instances(region.rgb, mpp=0.5, model=seg)
            offset = sum(int(x.max()) for x in pooled[name])
            pooled[name].append(np.where(labels > 0, labels + offset, 0))
    # pooled over the three images (~100 nuclei): one nucleus split or lost in a small image
    # alone would be 2 % of its F1
    labels32, labels8 = np.hstack(pooled["fp32"]), np.hstack(pooled["int8"])
    assert labels32.max() > 80
    f1 = runtime.matched_f1(labels32, labels8)
    print(f"int8 vs fp32: F1 {f1:.4f}, {labels32.max()} vs {labels8.max()} nuclei")
    assert f1 >= runtime.PARITY_F1
