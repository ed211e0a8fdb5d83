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


def _export_trained_with(tmp_path, references: str | None):
    """A tiny model exported from a checkpoint whose training args carry
    ``--counterstain-references`` as train.py stores them (the resolved dict's repr)."""
    torch.manual_seed(1)
    cfg = NetConfig(widths=(4, 8))
    ckpt = tmp_path / "ckpt.pt"
    torch.save(
        {
            "model": build_model(cfg).state_dict(),
            "net_config": cfg.to_dict(),
            "step": 3,
            "args": {"counterstain_references": references},
        },
        ckpt,
    )
    return export_checkpoint(ckpt, tmp_path / "mine", postprocess=PostprocessConfig().to_dict())


def test_export_records_the_counterstain_references_the_network_was_trained_with(tmp_path):
    import json

    from senpath.segment.weights import load_spec, trained_counterstain_references

    js = _export_trained_with(tmp_path, "{'sabgal-eosin': 0.7, 'p16': 0.6}")
    spec = load_spec(js)
    assert spec["counterstain_references"] == {"sabgal-eosin": 0.7, "p16": 0.6}
    assert trained_counterstain_references(spec) == {"sabgal-eosin": 0.7, "p16": 0.6}
    assert shipped_weights_info(js)["model_counterstain_references"] == {
        "sabgal-eosin": 0.7,
        "p16": 0.6,
    }
    # an export written before the field (v6c/v6d): read from the training record's arguments
    older = {k: v for k, v in spec.items() if k != "counterstain_references"}
    older["training"] = {"args": {"counterstain_references": "{'sabgal-eosin': 0.7}"}}
    assert trained_counterstain_references(older) == {"sabgal-eosin": 0.7}
    # trained on crops as rendered (v1-v5, or no args at all): none
    js = _export_trained_with(tmp_path, None)
    assert json.loads(js.read_text())["counterstain_references"] == {}
    assert trained_counterstain_references({"training": {}}) == {}
    assert "model_counterstain_references" not in shipped_weights_info()


def _missing_slide_job(tmp_path, assay: str):
    from senpath.samplesheet import SlideJob

    return SlideJob(slide_id="s1", path=tmp_path / "missing.tif", assay=assay, patient_id="p1")


def test_a_run_that_shows_the_model_another_counterstain_than_it_was_trained_on_says_so(tmp_path):
    """A network trained with ``--counterstain-references`` expects its assays' slides brought
    up to those levels; run without (the sabgal-eosin preset has no reference) it finds fewer
    nuclei, and nothing said so: one warning line per assay, at the start of the batch."""
    import dataclasses
    import warnings

    from senpath.pipeline import run_batch

    model = _export_trained_with(tmp_path, "{'sabgal-eosin': 0.7, 'p16': 0.6}")
    config = AnalysisConfig(segmenter="cnn", model=str(model.parent))
    jobs = [_missing_slide_job(tmp_path, name) for name in ("sabgal-eosin", "p16", "ki67", "p16")]
    with pytest.warns(UserWarning) as caught:
        reports = run_batch(jobs, out=tmp_path / "res", config=config)
    assert [r.status for r in reports] == ["failed"] * 4  # the batch went on as before
    lines = [str(w.message) for w in caught if "trained" in str(w.message)]
    # p16 is run at its preset reference, 0.6, as trained; ki67 was not trained normalised
    assert len(lines) == 1, lines
    assert "sabgal-eosin" in lines[0] and "0.7" in lines[0]
    assert "counterstain_reference_od = 0.7" in lines[0]

    # the normalisation turned off: p16 is shown its slides as rendered too
    off = AnalysisConfig(segmenter="cnn", model=str(model.parent), normalise_counterstain=False)
    with pytest.warns(UserWarning) as caught:
        run_batch(jobs, out=tmp_path / "res", config=off)
    lines = [str(w.message) for w in caught if "trained" in str(w.message)]
    assert len(lines) == 2, lines  # once per assay, not per slide
    assert all("normalise_counterstain = true" in line for line in lines), lines

    # the assay's table gives the model's reference: nothing to say
    eosin = dataclasses.replace(get_assay("sabgal-eosin"), counterstain_reference_od=0.7)
    with warnings.catch_warnings(record=True) as caught_all:
        warnings.simplefilter("always")
        run_batch(
            jobs, out=tmp_path / "res", config=config,
            assays={"sabgal-eosin": eosin, "p16": get_assay("p16"), "ki67": get_assay("ki67")},
        )  # fmt: skip
    assert not [w for w in caught_all if "trained" in str(w.message)]


def test_a_model_trained_on_slides_as_rendered_or_the_classical_path_says_nothing(tmp_path):
    import warnings

    from senpath.pipeline import run_batch

    model = _export_trained_with(tmp_path, None)
    jobs = [_missing_slide_job(tmp_path, "sabgal-eosin")]
    for config in (
        AnalysisConfig(segmenter="cnn", model=str(model.parent)),
        AnalysisConfig(segmenter="classical"),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_batch(jobs, out=tmp_path / "res", config=config)
        assert not [w for w in caught if "trained" in str(w.message)]


@pytest.mark.slow  # a fresh interpreter: the line as the console script prints it
def test_segment_on_the_command_line_says_so_in_one_line(tmp_path):
    import subprocess
    import sys

    model = _export_trained_with(tmp_path, "{'sabgal-eosin': 0.7}")
    s = synth.write_slide(tmp_path / "e.tif", assay="sabgal-eosin", shape=(64, 64), mpp=0.5, seed=1)

    args = ["segment", str(s.path), "--out", str(tmp_path / "l.tif"), "--model", str(model)]
    r = subprocess.run(
        [sys.executable, "-c", "from senpath.cli import main; main()", *args,
         "--assay", "sabgal-eosin"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "was trained on" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: the nucleus model"), r.stderr
    assert "counterstain_reference_od = 0.7 in [assay.sabgal-eosin] of the --config" in lines[0]
    # as it says: a settings file whose sabgal-eosin table has the model's reference
    toml = tmp_path / "lab.toml"
    toml.write_text(
        '[assay.sabgal-eosin]\nstains = ["eosin", "xgal"]\nnuclear_stains = ["eosin"]\n'
        "counterstain_reference_od = 0.7\n[assay.sabgal-eosin.phenotype]\n"
        'senescent = ["sabgal+"]\n[[assay.sabgal-eosin.marker]]\nname = "sabgal"\n'
        'stain = "xgal"\ncompartment = "perinuclear"\nstatistic = "p75"\nthreshold_od = 0.15\n'
    )
    r = subprocess.run(
        [sys.executable, "-c", "from senpath.cli import main; main()", *args,
         "--assay", "sabgal-eosin", "--config", str(toml)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0 and "was trained on" not in r.stderr, r.stderr


def test_test_time_flips_run_the_network_on_four_flips_and_are_recorded(tmp_path, own_model):
    from senpath.segment import predict

    s = synth.write_slide(tmp_path / "k.tif", assay="ki67", shape=(256, 256), mpp=0.5, seed=1,
                          params=synth.SynthParams(tissue_fraction=0.95))  # fmt: skip
    calls = {}
    for flips in (False, True):
        config = AnalysisConfig(model=str(own_model.parent), precision="fp32",
                                test_time_flips=flips)  # fmt: skip
        network = predict.cached_segmenter(str(own_model.parent), "auto", "fp32", flips)
        assert network.flips is flips
        forward = network.model.forward
        seen = []

        def counted(x, forward=forward, seen=seen):
            seen.append(x.shape[0])
            return forward(x)

        network.model.forward = counted
        try:
            store = senpath.analyze_slide(
                s.path, out=tmp_path / f"res{flips}", assay="ki67", config=config
            )
        finally:
            del network.model.forward
        calls[flips] = sum(seen)
        seg = senpath.load_results(store).provenance.segmenter
        assert seg["test_time_flips"] is flips
    assert calls[True] == 4 * calls[False] > 0
