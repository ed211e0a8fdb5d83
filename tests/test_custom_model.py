"""A nucleus model of the user's own (``[analysis] model`` / ``--model``) runs instead of the shipped one."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import senpath
from senpath import synth
from senpath.cli import app
from senpath.config import AnalysisConfig, ConfigError, get_assay
from senpath.segment.net import NetConfig, build_model
from senpath.segment.postprocess import PostprocessConfig
from senpath.segment.weights import export_checkpoint, shipped_weights_info
from senpath.slide_analysis import run_identity


@pytest.fixture()
def own_model(tmp_path):
    torch.manual_seed(1)
    cfg = NetConfig(widths=(4, 8))
    ckpt = tmp_path / "ckpt.pt"
    torch.save(
        {"model": build_model(cfg).state_dict(), "net_config": cfg.to_dict(), "step": 3}, ckpt
    )
    return export_checkpoint(ckpt, tmp_path / "mine", postprocess=PostprocessConfig().to_dict())


def test_own_model_is_used_recorded_and_part_of_the_identity(tmp_path, own_model):
    s = synth.write_slide(tmp_path / "k.tif", assay="ki67", shape=(256, 256), mpp=0.5, seed=1,
                          params=synth.SynthParams(tissue_fraction=0.95))  # fmt: skip
    config = AnalysisConfig(model=str(own_model.parent))  # segmenter "auto" becomes the CNN
    store = senpath.analyze_slide(s.path, out=tmp_path / "res", assay="ki67", config=config)
    seg = senpath.load_results(store).provenance.segmenter
    own = shipped_weights_info(own_model)
    assert seg["method"] == "cnn" and seg["model_sha256"] == own["model_sha256"]
    assert seg["model_path"] == str(own_model.parent)
    assert own["model_sha256"] != shipped_weights_info()["model_sha256"]
    assay = get_assay("ki67")
    mine = run_identity(s.path, config=config, assay=assay, mpp=None)
    shipped = run_identity(s.path, config=AnalysisConfig(segmenter="cnn"), assay=assay, mpp=None)
    assert mine["model_sha256"] == own["model_sha256"] != shipped["model_sha256"]


def test_model_flag_on_the_command_line(tmp_path, own_model):
    s = synth.write_slide(tmp_path / "k.tif", assay="ki67", shape=(256, 256), mpp=0.5, seed=1,
                          params=synth.SynthParams(tissue_fraction=0.95))  # fmt: skip
    out = tmp_path / "res"
    args = ["run", str(s.path), "--assay", "ki67", "--out", str(out), "--model", str(own_model)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    seg = senpath.load_results(out / "k").provenance.segmenter
    assert seg["model_sha256"] == shipped_weights_info(own_model)["model_sha256"]
    labels = tmp_path / "labels.tif"
    r = CliRunner().invoke(
        app, ["segment", str(s.path), "--out", str(labels), "--model", str(own_model)]
    )
    assert r.exit_code == 0 and labels.is_file(), r.output


def test_model_with_the_classical_segmenter_is_refused():
    with pytest.raises(ConfigError, match="model is for the CNN"):
        AnalysisConfig(segmenter="classical", model="models/")


def test_model_in_a_config_file_is_relative_to_it(tmp_path):
    from senpath.config import load_config

    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "lab.toml").write_text('[analysis]\nmodel = "models/mine"\n')
    cfg = load_config(tmp_path / "lab" / "lab.toml")
    assert cfg.model == str((tmp_path / "lab" / "models" / "mine").resolve())


def test_same_weights_with_other_thresholds_or_pooling_are_another_model(tmp_path):
    """The weights' sha256 alone did not tell two exports of one checkpoint apart: re-exported
    into the model folder with other thresholds (``--tune``), or with another pooling, a lab's
    slides were skipped as current and kept the cells of the first model."""
    import json

    torch.manual_seed(1)
    cfg = NetConfig(widths=(4, 8))
    ckpt = tmp_path / "ckpt.pt"
    torch.save(
        {"model": build_model(cfg).state_dict(), "net_config": cfg.to_dict(), "step": 3}, ckpt
    )
    s = synth.write_slide(tmp_path / "k.tif", assay="ki67", shape=(64, 64), mpp=0.5, seed=1)
    config, assay = AnalysisConfig(model=str(tmp_path / "mine")), get_assay("ki67")

    def identity(postprocess: PostprocessConfig, pool: str | None = None) -> dict:
        js = export_checkpoint(ckpt, tmp_path / "mine", postprocess=postprocess.to_dict())
        if pool is not None:
            spec = json.loads(js.read_text())
            js.write_text(json.dumps({**spec, "net_config": {**spec["net_config"], "pool": pool}}))
        return run_identity(s.path, config=config, assay=assay, mpp=None)

    first = identity(PostprocessConfig())
    tuned = identity(PostprocessConfig(foreground_threshold=0.4))
    blur = identity(PostprocessConfig(), pool="maxblur")
    assert first["model_sha256"] == tuned["model_sha256"] == blur["model_sha256"]
    assert first != tuned and first != blur and tuned != blur
    assert identity(PostprocessConfig()) == first
