"""Weights export, sha256 verification (good and tampered) and the shipped model files."""

from __future__ import annotations

import json

import pytest
import torch

from senpath.segment import data as D
from senpath.segment.net import NetConfig, build_model
from senpath.segment.postprocess import PostprocessConfig
from senpath.segment.weights import (
    WeightsIntegrityError,
    default_model_json,
    export_checkpoint,
    load_pretrained,
    load_spec,
    load_weights,
    sha256_file,
    shipped_weights_info,
)


@pytest.fixture()
def exported(tmp_path):
    torch.manual_seed(0)
    cfg = NetConfig(widths=(4, 8))
    model = build_model(cfg)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "net_config": cfg.to_dict(), "step": 7}, ckpt)
    js = export_checkpoint(ckpt, tmp_path / "models", postprocess=PostprocessConfig().to_dict())
    return js, model


def test_export_then_load_round_trip(exported):
    js, model = exported
    loaded, spec = load_pretrained(js)
    assert spec["checkpoint_step"] == 7
    assert spec["mpp"] == 0.5
    assert spec["sha256"] == sha256_file(js.with_suffix(".pt"))
    x = torch.rand(1, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        # float16 storage: outputs agree to fp16 precision, not bit for bit
        assert torch.allclose(model(x), loaded(x), atol=5e-2)


def test_re_export_of_the_same_weights_keeps_their_training_record(tmp_path):
    cfg = NetConfig(widths=(4, 8))
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(
        {"model": build_model(cfg).state_dict(), "net_config": cfg.to_dict(), "step": 7}, ckpt
    )
    post = PostprocessConfig().to_dict()
    first = {"reproduce": "stage 1 && stage 2", "stage1": {"sha256": "abc"}}
    js = export_checkpoint(
        ckpt, tmp_path / "m", postprocess=post, metrics={"f1": 1}, training=first
    )
    js = export_checkpoint(
        ckpt, tmp_path / "m", postprocess=post, metrics={"f1": 2}, training={"reproduce": "local"}
    )
    spec = json.loads(js.read_text())
    assert spec["training"] == first and spec["metrics"] == {"f1": 2}  # new metrics, same record
    torch.manual_seed(1)  # other weights: their own record
    torch.save(
        {"model": build_model(cfg).state_dict(), "net_config": cfg.to_dict(), "step": 7}, ckpt
    )
    js = export_checkpoint(ckpt, tmp_path / "m", postprocess=post, training={"reproduce": "new"})
    assert json.loads(js.read_text())["training"] == {"reproduce": "new"}


def test_load_accepts_json_pt_or_folder(exported):
    js, _ = exported
    for p in (js, js.with_suffix(".pt"), js.parent):
        assert load_spec(p)["sha256"] == load_spec(js)["sha256"]


def test_tampered_weights_are_refused(exported):
    js, _ = exported
    pt = js.with_suffix(".pt")
    data = bytearray(pt.read_bytes())
    data[-10] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        load_weights(js)
    with pytest.raises(WeightsIntegrityError):
        shipped_weights_info(js)
    # opting out of verification is explicit
    load_spec(js)


def test_wrong_recorded_hash_is_refused(exported):
    js, _ = exported
    spec = json.loads(js.read_text())
    spec["sha256"] = "0" * 64
    js.write_text(json.dumps(spec))
    with pytest.raises(WeightsIntegrityError):
        load_weights(js)


def test_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="model description"):
        load_spec(tmp_path / "nothing.json")


def test_shipped_weights_verify_and_are_small():
    js = default_model_json()
    assert js.is_file(), "models/nucleus_unet.json must ship with the package"
    spec = load_spec(js)
    size = js.with_name(spec["weights_file"]).stat().st_size
    assert size <= 20 * 2**20
    model, spec = load_pretrained()
    assert spec["mpp"] == 0.5
    assert set(spec["postprocess"]) == set(PostprocessConfig().to_dict())
    assert sum(p.numel() for p in model.parameters()) > 0
    info = shipped_weights_info()
    assert info["model_sha256"] == spec["sha256"] == sha256_file(spec["weights_path"])


class _RunsCode:
    """Pickles to a call of ``os.mkdir``: what a crafted checkpoint could run on load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_a_crafted_checkpoint_cannot_run_code(tmp_path):
    from senpath.segment.weights import load_checkpoint

    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "crafted.pt"
    cfg = NetConfig(widths=(4, 8))
    payload = {"model": build_model(cfg).state_dict(), "net_config": cfg.to_dict(), "step": 1}
    torch.save(payload | {"extra": _RunsCode(marker)}, ckpt)
    with pytest.raises(ValueError, match="crafted.pt: not a senpath training checkpoint"):
        export_checkpoint(ckpt, tmp_path / "models", postprocess=PostprocessConfig().to_dict())
    with pytest.raises(ValueError, match="refused to unpickle"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    torch.save(payload, ckpt)  # tensors and plain values load
    assert load_checkpoint(ckpt)["step"] == 1


def test_export_measures_a_shipped_model_only_without_out_or_tune(tmp_path, capsys):
    from senpath.segment import export

    for extra in (["--out", str(tmp_path)], ["--tune"], ["--thresholds-from", "models"]):
        with pytest.raises(SystemExit):
            export.main(["--model", "models", *extra])
        assert "--model evaluates a shipped model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source, not both
        export.main(["--model", "models", "--checkpoint", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit):  # tuned or taken, not both
        export.main(["--checkpoint", str(tmp_path / "x.pt"), "--tune", "--thresholds-from", "m"])
    assert "not allowed with argument" in capsys.readouterr().err


def _tiny_checkpoint(tmp_path):
    """A one-step training checkpoint of a tiny network, as ``senpath.segment.train`` saves it."""
    config = NetConfig(widths=(8, 8, 16, 16, 16))
    ckpt = tmp_path / "step_000001.pt"
    torch.save(
        {"model": build_model(config).state_dict(), "step": 1, "total_steps": 1,
         "net_config": config.to_dict(), "seed": 0, "args": {}},
        ckpt,
    )  # fmt: skip
    return ckpt


def test_thresholds_from_another_model_are_the_ones_exported(tmp_path, monkeypatch):
    import json

    from senpath.segment import export

    ckpt = _tiny_checkpoint(tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    spec = json.loads(open("models/nucleus_unet.json").read())
    spec["postprocess"] = {**spec["postprocess"], "foreground_threshold": 0.37}
    (source / "nucleus_unet.json").write_text(json.dumps(spec))
    (source / "nucleus_unet.pt").write_bytes(open("models/nucleus_unet.pt", "rb").read())
    # validation itself is measured elsewhere: one tiny set keeps this test short
    monkeypatch.setattr(export, "validation_sets", lambda root, consep_limit: {})
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--data-root", str(tmp_path)]
    assert export.main([*args, "--thresholds-from", str(source)]) == 0
    written = json.loads((out / "nucleus_unet.json").read_text())
    assert written["postprocess"]["foreground_threshold"] == 0.37
    assert export.main(args) == 0  # without it: the defaults
    assert json.loads((out / "nucleus_unet.json").read_text())["postprocess"][
        "foreground_threshold"
    ] == pytest.approx(0.5)


def test_the_export_report_goes_into_the_new_out_folder_and_a_bad_path_fails_first(
    tmp_path, monkeypatch
):
    """``--report OUT/report.json`` with ``OUT`` not yet made is written (it once failed after the
    whole validation, losing it); a report path that cannot be written fails before validating."""
    import json

    from senpath.segment import export

    ckpt = _tiny_checkpoint(tmp_path)
    validated = []
    monkeypatch.setattr(
        export, "validation_sets", lambda root, consep_limit: validated.append(1) or {}
    )
    out = tmp_path / "new" / "model"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--data-root", str(tmp_path)]
    assert export.main([*args, "--report", str(out / "report.json")]) == 0
    assert json.loads((out / "report.json").read_text())["step"] == 1
    assert (out / "nucleus_unet.json").exists()
    (tmp_path / "a_file").write_text("")
    validated.clear()
    with pytest.raises(SystemExit):
        export.main([*args, "--report", str(tmp_path / "a_file" / "report.json")])
    assert not validated


def test_the_reproduce_command_carries_every_data_option():
    from senpath.segment.export import reproduce_command

    ckpt = {"seed": 12, "step": 4532, "total_steps": 4532}
    args = {"init": "models", "lr": "0.001", "synthetic_share": "0.1", "pale_share": "0.3"}
    command = reproduce_command({**ckpt, "args": args})
    assert "--seed 12 --steps 4532" in command and "--init models" in command
    assert "--synthetic-share 0.1" in command and "--pale-share 0.3" in command
    # a run without the option (the default, 0) does not name it: older commands stay as they were
    command = reproduce_command({**ckpt, "args": {**args, "pale_share": "0.0"}})
    assert "--pale-share" not in command and "--stop-at" not in command
    # a stem network names its stem (v1-v5, stem 0, do not)
    assert "--stem 8" in reproduce_command({**ckpt, "args": {**args, "stem": "8"}})
    assert "--stem" not in reproduce_command({**ckpt, "args": {**args, "stem": "0"}})


def test_the_reproduce_command_carries_recipe_and_stained_weights():
    from senpath.segment.export import reproduce_command
    from senpath.segment.train import parse_args

    ckpt = {"seed": 1, "step": 10, "total_steps": 10}
    args = {
        "recipe_weights": str({"xgal_eosin": 0.2, "xgal_h_dab": 0.3}),
        "source_weights": str({"consep": 0.3, "cpm15": 0.16}),
        "stained_weight": "2.0",
        "contact_weight": "3.0",
        "pale_share": "0.3",
        "pale_floor": "0.1",
        "pale_blur": "0.5",
        "faint_share": "0.3",
        "faint_range": str((0.2, 0.5)),
        "ignore_padding": "True",
    }
    command = reproduce_command({**ckpt, "args": args})
    assert command.endswith(" --ignore-padding")
    assert "--recipe-weights xgal_eosin=0.2,xgal_h_dab=0.3" in command
    assert "--source-weights consep=0.3,cpm15=0.16" in command
    assert "--stained-weight 2.0 --contact-weight 3.0" in command
    assert "--pale-floor 0.1 --pale-blur 0.5 --faint-share 0.3 --faint-range 0.2,0.5" in command
    # the command parses back to the same options
    parsed = parse_args(command.split()[3:])
    assert parsed.recipe_weights == {"xgal_eosin": 0.2, "xgal_h_dab": 0.3}
    assert parsed.source_weights == {"consep": 0.3, "cpm15": 0.16}
    assert (parsed.stained_weight, parsed.contact_weight) == (2.0, 3.0)
    assert (parsed.pale_share, parsed.pale_floor, parsed.pale_blur) == (0.3, 0.1, 0.5)
    assert (parsed.faint_share, parsed.faint_range) == (0.3, (0.2, 0.5))
    assert parsed.ignore_padding
    defaults = {"recipe_weights": "None", "stained_weight": "1.0", "contact_weight": "1.0"}
    defaults["pale_floor"] = "0.25"
    defaults |= {"faint_share": "0.0", "faint_range": str(D.FAINT_RANGE)}
    plain = reproduce_command(
        {**ckpt, "args": {**defaults, "pale_blur": "0.0", "ignore_padding": "False"}}
    )
    assert "--ignore-padding" not in plain
    assert "--recipe-weights" not in plain and "--stained-weight" not in plain
    assert "--source-weights" not in plain
    assert "--contact-weight" not in plain
    assert "--pale-floor" not in plain and "--pale-blur" not in plain
    assert "--faint-share" not in plain and "--faint-range" not in plain
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--recipe-weights", "xgal_blue=1"])
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--source-weights", "monusegg=1"])
    for bad in ("0.5", "0,0.5", "0.6,0.3", "a,b"):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", "--faint-range", bad])


def test_the_reproduce_command_carries_the_pooling_and_init_switches_it(tmp_path):
    """``--pool maxblur`` is recorded in the reproduce command; a resumed run keeps its pooling."""
    torch = pytest.importorskip("torch")
    from senpath.segment.export import reproduce_command
    from senpath.segment.net import NetConfig, build_model
    from senpath.segment.train import parse_args

    ckpt = {"seed": 1, "step": 10, "total_steps": 10}
    command = reproduce_command({**ckpt, "args": {"init": "models", "pool": "maxblur"}})
    assert "--pool maxblur" in command and parse_args(command.split()[3:]).pool == "maxblur"
    assert "--pool" not in reproduce_command({**ckpt, "args": {"init": "models", "pool": "None"}})

    # a resumed run cannot switch: its optimiser state belongs to the network it trained
    model = build_model(NetConfig(widths=(8, 16)))
    checkpoint = tmp_path / "last.pt"
    torch.save(
        {"model": model.state_dict(), "optimizer": {}, "step": 1, "total_steps": 2,
         "elapsed_s": 0.0, "net_config": model.config.to_dict(), "seed": 0, "args": {}},
        checkpoint,
    )  # fmt: skip
    from senpath.segment import train as T

    with pytest.raises(SystemExit, match="trained with pool 'max'"):
        T.main(["--out", str(tmp_path / "r"), "--resume", str(checkpoint), "--pool", "maxblur"])


def test_the_reproduce_command_carries_the_counterstain_references():
    from senpath.segment.export import reproduce_command
    from senpath.segment.train import parse_args

    ckpt = {"seed": 1, "step": 10, "total_steps": 10}
    references = {"p16": 0.6, "sabgal-eosin": 0.7}
    command = reproduce_command({**ckpt, "args": {"counterstain_references": str(references)}})
    assert "--counterstain-references p16=0.6,sabgal-eosin=0.7" in command
    assert parse_args(command.split()[3:]).counterstain_references == references
    # asked for with no assay: "none", which parses back to no assay (not to the default, None)
    command = reproduce_command({**ckpt, "args": {"counterstain_references": "{}"}})
    assert "--counterstain-references none" in command
    assert parse_args(command.split()[3:]).counterstain_references == {}
    plain = reproduce_command({**ckpt, "args": {"counterstain_references": "None"}})
    assert "--counterstain-references" not in plain


def test_counterstain_references_take_the_presets_and_named_assays():
    from senpath.config import get_assay
    from senpath.segment.train import parse_args

    def parsed(text):
        return parse_args(["--out", "x", "--counterstain-references", text])

    presets = parsed("preset").counterstain_references
    assert presets["p16"] == get_assay("p16").counterstain_reference_od
    assert "he" not in presets and "ki67" not in presets  # assays without a reference
    both = parsed("preset,sabgal-eosin=0.7,p16=0.5").counterstain_references
    assert both == {**presets, "sabgal-eosin": 0.7, "p16": 0.5}
    assert parse_args(["--out", "x"]).counterstain_references is None
    for bad in ("sabgal-blue=0.7", "p16=-1", "p16=dark"):
        with pytest.raises(SystemExit):
            parsed(bad)


def test_a_fine_tune_reproduce_command_gives_no_widths_its_network_does_not_have():
    """With ``--init`` the network is the init model's and ``--widths`` is not read; the
    continued stem run's export said ``--widths 16,32,64,128,160`` (the option's default) for a
    24-48-96-192-256 network."""
    from senpath.segment.export import reproduce_command

    ckpt = {"seed": 1, "step": 10, "total_steps": 10}
    args = {"init": "models/candidates/stem8_b", "widths": "16,32,64,128,160", "stem": "None"}
    command = reproduce_command({**ckpt, "args": args})
    assert "--init models/candidates/stem8_b" in command and "--widths" not in command
    fresh = reproduce_command({**ckpt, "args": {**args, "init": "None", "stem": "8"}})
    assert "--widths 16,32,64,128,160" in fresh and "--stem 8" in fresh
