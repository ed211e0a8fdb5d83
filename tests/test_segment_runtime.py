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


def _fake_calibration(monkeypatch, cache_dir) -> list[int]:
    """A quiet machine whose calibration (counted in the list returned) always picks bf16."""
    monkeypatch.setenv(runtime.CACHE_ENV, str(cache_dir))
    monkeypatch.setattr(runtime, "_CHOICES", {})
    calls: list[int] = []

    def fake_calibrate(build, candidates=runtime.CPU_CANDIDATES):
        calls.append(1)
        return runtime.Calibration("bf16", {"bf16": 1.0, "fp32": 2.0}, {"bf16": 1.0, "fp32": 1.0})

    monkeypatch.setattr(runtime, "calibrate", fake_calibrate)
    monkeypatch.setattr(runtime, "other_cpu_load", lambda: 0.0)
    return calls


def test_choice_is_cached_per_machine_key(shipped_model, monkeypatch, tmp_path):
    model, spec = shipped_model
    calls = _fake_calibration(monkeypatch, tmp_path)
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


def test_a_choice_timed_on_another_calibration_image_is_measured_again(
    shipped_model, monkeypatch, tmp_path
):
    # the ranking depends on the image size: a choice cached from the 448² calibration image
    # (before 2026-12-03) kept bf16 where the 1120² one picks int8, so it must not be reused
    model, spec = shipped_model
    calls = _fake_calibration(monkeypatch, tmp_path)
    runtime.choose_cpu_precision(_builder(model, spec), spec)
    (key,) = json.loads((tmp_path / runtime.CACHE_FILE).read_text())
    assert f"{runtime.CALIBRATION_SIDE}" in key
    monkeypatch.setattr(runtime, "CALIBRATION_SIDE", 448)
    monkeypatch.setattr(runtime, "_CHOICES", {})
    runtime.choose_cpu_precision(_builder(model, spec), spec)
    assert len(calls) == 2


def test_load_class_counts_the_cores_other_processes_leave():
    assert runtime.load_class(2, 0.0, cores=2) == "quiet"
    assert runtime.load_class(2, 0.4, cores=2) == "quiet"  # within half a core
    assert runtime.load_class(2, 1.0, cores=2) == "contended"  # a training job on one core
    assert runtime.load_class(1, 1.0, cores=2) == "quiet"  # one thread: the other core is free
    assert runtime.load_class(8, 6.0, cores=16) == "quiet"
    assert runtime.load_class(16, 6.0, cores=16) == "contended"


def test_other_cpu_load_counts_other_processes_not_this_one(monkeypatch):
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        runtime.other_cpu_load(0.2)  # let it start
        assert runtime.other_cpu_load(0.5) > 0.3  # most of a core, shared with whatever runs
    finally:
        spinner.kill()
        spinner.wait()
    # this process's own threads are taken off the machine's busy share (psutil's figures,
    # faked: 2 cores 75 % busy = 1.5 cores, of which this process used 1.2)
    import psutil

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 2)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 75.0)
    monkeypatch.setattr(psutil.Process, "cpu_percent", lambda self, interval=None: 120.0)
    assert runtime.other_cpu_load(0.0) == pytest.approx(0.3)
    monkeypatch.setattr(psutil.Process, "cpu_percent", lambda self, interval=None: 190.0)
    assert runtime.other_cpu_load(0.0) == 0.0  # never below zero (sampling skew)


def test_choice_is_measured_and_cached_apart_when_the_cores_are_taken(
    shipped_model, monkeypatch, tmp_path
):
    model, spec = shipped_model
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(runtime, "_CHOICES", {})
    monkeypatch.setattr(runtime, "_ENTRIES", {})
    load = {"other": 0.0}
    monkeypatch.setattr(runtime, "other_cpu_load", lambda: load["other"])
    answers = iter(["bf16", "onnx-fp32"])
    monkeypatch.setattr(
        runtime, "calibrate", lambda build, **kw: runtime.Calibration(next(answers), {}, {})
    )
    threads = torch.get_num_threads()
    build = _builder(model, spec)
    assert runtime.choose_cpu_precision(build, spec) == "bf16"  # quiet
    load["other"] = float(threads + 4)  # every core taken by others
    assert runtime.choose_cpu_precision(build, spec) == "bf16"  # one process, one choice
    monkeypatch.setattr(runtime, "_CHOICES", {})  # a new process on the busy machine
    assert runtime.choose_cpu_precision(build, spec) == "onnx-fp32"
    assert runtime.chosen_calibration(spec)["key"].endswith(" | contended")
    cached = json.loads((tmp_path / runtime.CACHE_FILE).read_text())
    assert sorted(key.rsplit(" | ", 1)[1] for key in cached) == ["contended", "quiet"]
    busy = next(v for k, v in cached.items() if k.endswith("contended"))
    assert busy["choice"] == "onnx-fp32" and busy["other_cores_busy"] == threads + 4
    load["other"] = 0.0  # quiet again: the quiet entry is read back, no new calibration
    monkeypatch.setattr(runtime, "_CHOICES", {})
    assert runtime.choose_cpu_precision(build, spec) == "bf16"


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


@pytest.mark.parametrize("stem", [0, 4])
def test_onnx_runtime_runs_the_anti_aliased_pooling_like_torch(stem):
    """ONNX Runtime may be the precision ``auto`` picks: a ``pool = "maxblur"`` network (edge
    padding, stride-1 max and average pooling), with or without a full-resolution stem, must
    export and give torch's maps."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from senpath.segment.net import NetConfig, build_model

    torch.manual_seed(0)
    model = build_model(NetConfig(widths=(8, 16, 32), pool="maxblur", stem=stem)).eval()
    rgb = np.random.default_rng(1).integers(0, 256, (72, 88, 3), dtype=np.uint8)
    fp32 = NucleusSegmenter(model, device="cpu", precision="fp32").predict_image_maps(rgb)
    onnx = NucleusSegmenter(model, device="cpu", precision="onnx-fp32").predict_image_maps(rgb)
    assert onnx.shape == fp32.shape == (2, 72, 88)
    assert np.abs(onnx - fp32).max() < 1e-4


def test_calibration_times_the_network_at_the_size_an_analysis_tile_feeds_it():
    # the runtimes' ranking changes with the image size (model card: int8 slower than bf16 at
    # 512² fed, faster at 1120²), so auto must time what the pipeline runs: a default analysis
    # tile with its halo, which already carries the network's context margin
    from senpath.config import AnalysisConfig
    from senpath.segment.predict import NETWORK_HALO_UM

    config = AnalysisConfig()
    tile_px = round((config.tile_size_um + 2 * config.halo_um) / config.analysis_mpp)
    margin_px = round(NETWORK_HALO_UM / config.analysis_mpp)
    assert runtime.CALIBRATION_SIDE + 2 * margin_px == tile_px
