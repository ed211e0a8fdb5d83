"""The int8 network: batch norm folded exactly, fake quantisation that ONNX Runtime reproduces,
int8 weights on disk, sha256 and teacher checks, and when ``precision="auto"`` may choose it."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from senpath.segment import runtime  # noqa: E402
from senpath.segment.net import NetConfig, build_model  # noqa: E402
from senpath.segment.postprocess import PostprocessConfig  # noqa: E402
from senpath.segment.predict import NucleusSegmenter  # noqa: E402
from senpath.segment.quant import (  # noqa: E402
    QuantUNet,
    calibrate_ranges,
    export_int8,
    load_student,
)
from senpath.segment.weights import (  # noqa: E402
    INT8_FILE,
    WeightsIntegrityError,
    export_checkpoint,
    int8_network,
    load_pretrained,
    load_spec,
    record_int8,
    shipped_weights_info,
)

CONFIG = NetConfig(widths=(8, 16, 32), pool="maxblur")


def _trained_like(seed: int = 0):
    """A small U-Net whose batch norms hold non-trivial statistics (as after training)."""
    torch.manual_seed(seed)
    model = build_model(CONFIG)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _images(n: int = 4, side: int = 64, seed: int = 1) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.random((1, 3, side // 8, side // 8), dtype=np.float32)
        x = torch.nn.functional.interpolate(torch.from_numpy(base), size=(side, side),
                                            mode="bilinear", align_corners=False)  # fmt: skip
        out.append((x + 0.05 * torch.randn_like(x)).clamp(0, 1))
    return out


def test_folded_network_without_quantisation_is_the_original():
    model = _trained_like()
    q = QuantUNet(model).eval()
    q.set_mode("off")
    x = _images(1)[0]
    with torch.no_grad():
        assert torch.allclose(q(x), model(x), atol=1e-4)


def test_calibrated_int8_stays_close_to_fp32_and_relu_ranges_start_at_zero():
    model = _trained_like()
    q = QuantUNet(model)
    calibrate_ranges(q, _images(3))
    assert all(int(a.zero_point) == 0 for a in q.activations())  # all after a ReLU: >= 0
    x = _images(1, seed=9)[0]
    with torch.no_grad():
        ref = model(x)
        quant = q.eval()(x)
        q.set_mode("off")
        off = q(x)
    assert not torch.equal(quant, off)  # quantisation is on after calibration
    assert (quant - ref).abs().mean() < 0.05 * ref.abs().mean() + 0.02


def test_onnx_runtime_runs_the_int8_network_in_integers_as_trained():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = _trained_like()
    q = QuantUNet(model)
    calibrate_ranges(q, _images(3))
    data = export_int8(q)
    graph = onnx.load_from_string(data)
    kinds = {onnx.TensorProto.DataType.Name(t.data_type) for t in graph.graph.initializer}
    assert "INT8" in kinds  # weights stored as int8, not fp32 behind a quantiser
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = _images(1, side=96, seed=4)[0]
    (out,) = session.run(["logits"], {"rgb": x.numpy()})
    with torch.no_grad():
        sim = q.eval()(x).numpy()
    # integer arithmetic rounds once per layer where the simulation rounds the fp32 result: a
    # few levels apart at most
    assert np.abs(out - sim).mean() < 0.02 * np.abs(sim).mean() + 0.01
    assert np.corrcoef(out.ravel(), sim.ravel())[0, 1] > 0.995


def test_points_kept_in_fp32_are_not_quantised_and_onnx_runtime_runs_them_so():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = _trained_like()
    x = _images(1, side=96, seed=4)[0]
    every = QuantUNet(model).points()
    assert "encoders.0.q1" in every and "encoders.0.c2" in every
    assert "encoders.0.c1" not in every and "head" not in every  # fp32 in every variant
    # every point in fp32: "quant" computes the folded fp32 network
    whole = QuantUNet(model, fp32=every)
    calibrate_ranges(whole, _images(2))
    with torch.no_grad():
        assert torch.allclose(whole.eval()(x), model(x), atol=1e-4)
    # the full-resolution encoder in fp32 ("encoders.0" covers its points), the rest int8
    plain, part = QuantUNet(model), QuantUNet(model, fp32=("encoders.0", "pool_q.0"))
    for q in (plain, part):
        calibrate_ranges(q, _images(3))
    assert len(part.activations()) == len(plain.activations()) - 3
    assert not part.encoders[0].c2.quantize and part.encoders[1].c1.quantize
    counts = {}
    for name, q in (("plain", plain), ("part", part)):
        data = export_int8(q)
        graph = onnx.load_from_string(data).graph
        counts[name] = sum(n.op_type == "QuantizeLinear" for n in graph.node)
        if name == "part":
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            (out,) = session.run(["logits"], {"rgb": x.numpy()})
            with torch.no_grad():
                sim = part.eval()(x).numpy()
            assert np.corrcoef(out.ravel(), sim.ravel())[0, 1] > 0.995
    assert counts["part"] < counts["plain"]  # (ORT may also move Q/DQ pairs around pooling)


def test_sensitivity_measures_every_quantised_point_and_nothing_kept_in_fp32():
    from senpath.segment.quant import sensitivity

    model = _trained_like()
    q = QuantUNet(model, fp32=("encoders.0",))
    calibrate_ranges(q, _images(3))
    base, per_point = sensitivity(q, model, _images(2, seed=5))
    assert base["mse"] > 0 and base["flips"] >= 0
    assert set(per_point) == {p for p in q.points() if not p.startswith("encoders.0.")}
    assert all(np.isfinite(v["mse"]) for v in per_point.values())
    whole = QuantUNet(model, fp32=q.points())
    calibrate_ranges(whole, _images(3))
    base, per_point = sensitivity(whole, model, _images(2, seed=5))
    assert base["mse"] < 1e-6 and per_point == {}


def test_an_unknown_fp32_point_is_refused_with_the_names_there_are():
    with pytest.raises(ValueError, match="no quantisation point 'encoders.9'.*encoders.0.q1"):
        QuantUNet(_trained_like(), fp32=("encoders.9",))


@pytest.fixture()
def model_with_int8(tmp_path):
    model = _trained_like()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "net_config": CONFIG.to_dict(), "step": 3}, ckpt)
    js = export_checkpoint(ckpt, tmp_path / "models", postprocess=PostprocessConfig().to_dict())
    teacher, _ = load_pretrained(js)
    q = QuantUNet(teacher)
    calibrate_ranges(q, _images(2))
    student = tmp_path / "student.pt"
    torch.save({"student": q.state_dict(), "step": 0}, student)
    return js, student


def test_int8_network_is_recorded_verified_and_tied_to_its_fp32_weights(model_with_int8):
    pytest.importorskip("onnxruntime")
    js, student = model_with_int8
    with pytest.raises(FileNotFoundError, match="no int8 network"):
        int8_network(load_spec(js))
    data = export_int8(load_student(student, str(js)))
    path = record_int8(js.parent, data, source="test", parity={"min_f1": 0.995})
    assert path.name == INT8_FILE
    spec = load_spec(js)
    assert spec["int8"]["teacher_sha256"] == spec["sha256"]
    assert int8_network(spec) == data
    assert shipped_weights_info(js)["model_int8_sha256"] == spec["int8"]["sha256"]  # provenance
    # the same fp32 weights exported again keep their int8 network; other weights would not
    ckpt = js.parent.parent / "ckpt.pt"
    export_checkpoint(ckpt, js.parent, postprocess=PostprocessConfig().to_dict())
    assert load_spec(js)["int8"] == spec["int8"]
    # tampered file
    path.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        int8_network(load_spec(js))
    path.write_bytes(data)
    # fp32 weights re-exported from another checkpoint: the int8 network is not theirs
    other = dict(spec, sha256="0" * 64)
    with pytest.raises(WeightsIntegrityError, match="made from"):
        int8_network(other)


def test_segmenter_runs_the_int8_network_and_says_when_there_is_none(model_with_int8):
    pytest.importorskip("onnxruntime")
    js, student = model_with_int8
    model, spec = load_pretrained(js)
    with pytest.raises(FileNotFoundError, match="no int8 network"):
        NucleusSegmenter(model, spec=spec, device="cpu", precision="onnx-int8")
    record_int8(js.parent, export_int8(load_student(student, str(js))), source="test")
    model, spec = load_pretrained(js)
    seg = NucleusSegmenter(model, spec=spec, device="cpu", precision="onnx-int8")
    rgb = np.random.default_rng(2).integers(0, 256, (72, 88, 3), dtype=np.uint8)
    maps = seg.predict_image_maps(rgb)
    ref = NucleusSegmenter(model, spec=spec, device="cpu", precision="fp32").predict_image_maps(rgb)
    assert maps.shape == ref.shape == (2, 72, 88)
    assert np.abs(maps - ref).mean() < 0.05


def test_auto_offers_int8_only_with_a_passing_parity_record(monkeypatch):
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: True)
    assert "onnx-int8" not in runtime.cpu_candidates({"sha256": "a"})
    low = {"sha256": "a", "int8": {"sha256": "b", "parity": {"min_f1": 0.97}}}
    assert "onnx-int8" not in runtime.cpu_candidates(low)
    assert "0.97" in runtime.int8_offered(low)
    unmeasured = {"sha256": "a", "int8": {"sha256": "b", "parity": {}}}
    assert "onnx-int8" not in runtime.cpu_candidates(unmeasured)
    good = {"sha256": "a", "int8": {"sha256": "b", "parity": {"min_f1": 0.993}}}
    assert runtime.int8_offered(good) is None
    assert "onnx-int8" in runtime.cpu_candidates(good)
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    assert "onnx-int8" not in runtime.cpu_candidates(good)


def test_cached_choice_is_keyed_by_the_int8_network_too(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(runtime, "_CHOICES", {})
    monkeypatch.setattr(runtime, "other_cpu_load", lambda: 0.0)
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: True)
    seen = []

    def fake_calibrate(build, candidates=runtime.CPU_CANDIDATES):
        seen.append(candidates)
        return runtime.Calibration(candidates[-1], {c: 1.0 for c in candidates}, {})

    monkeypatch.setattr(runtime, "calibrate", fake_calibrate)
    plain = {"sha256": "a" * 64}
    assert runtime.choose_cpu_precision(lambda p: None, plain) == "onnx-fp32"
    with_int8 = {**plain, "int8": {"sha256": "b" * 64, "parity": {"min_f1": 0.995}}}
    # the same fp32 weights with an int8 network added: calibrated again, int8 a candidate
    assert runtime.choose_cpu_precision(lambda p: None, with_int8) == "onnx-int8"
    assert "onnx-int8" not in seen[0] and "onnx-int8" in seen[1]
    cached = json.loads((tmp_path / runtime.CACHE_FILE).read_text())
    assert len(cached) == 2


@pytest.mark.slow
@pytest.mark.shared_data
def test_distil_on_the_training_data_then_export_next_to_the_weights(shared_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from senpath.segment import quant

    torch.manual_seed(0)
    config = NetConfig(widths=(8, 8, 16, 16, 16), pool="maxblur")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": build_model(config).state_dict(), "net_config": config.to_dict(),
                "step": 1}, ckpt)  # fmt: skip
    js = export_checkpoint(ckpt, tmp_path / "models", postprocess=PostprocessConfig().to_dict())
    run = tmp_path / "run"
    quant.main(["train", "--out", str(run), "--model", str(js), "--data-root", str(shared_data),
                "--steps", "3", "--calib-batches", "1", "--batch-size", "2",
                "--crop-size", "32", "--fp32", "encoders.0,pool_q.0"])  # fmt: skip
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["teacher_sha256"] == load_spec(js)["sha256"]
    assert state["fp32"] == ["encoders.0", "pool_q.0"]
    events = [json.loads(line).get("event") for line in open(run / "log.jsonl")]
    assert events[0] == "start" and events[-1] == "stop"
    with pytest.raises(WeightsIntegrityError, match="made from the weights"):
        load_student(run / "last.pt")  # the shipped weights are not its teacher
    assert load_student(run / "last.pt", str(js)).fp32 == ("encoders.0", "pool_q.0")
    quant.main(["export", "--checkpoint", str(run / "last.pt"), "--model", str(js),
                "--out", str(js.parent)])  # fmt: skip
    model, spec = load_pretrained(js)
    assert (js.parent / INT8_FILE).is_file() and spec["int8"]["source"].endswith("last.pt")
    seg = NucleusSegmenter(model, spec=spec, device="cpu", precision="onnx-int8")
    assert seg.predict_image_maps(np.full((40, 40, 3), 200, np.uint8)).shape == (2, 40, 40)


@pytest.mark.shared_data
def test_parity_benchmark_refuses_to_record_for_a_model_without_int8(
    shared_data, tmp_path, capsys, benchmark_script
):
    bench = benchmark_script("int8_parity")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": _trained_like().state_dict(), "net_config": CONFIG.to_dict(), "step": 1},
               ckpt)  # fmt: skip
    js = export_checkpoint(ckpt, tmp_path / "models", postprocess=PostprocessConfig().to_dict())
    with pytest.raises(SystemExit) as stop:  # at once, not after measuring every held-out set
        bench.main(["--model", str(js), "--record", "--data-root", str(shared_data)])
    assert stop.value.code == 2
    assert "no int8 network to record" in capsys.readouterr().err
