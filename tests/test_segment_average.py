"""Averaging networks into one checkpoint (``python -m senpath.segment.average``)."""

from __future__ import annotations

import json

import pytest
import torch

from senpath.segment.average import average_checkpoints, main
from senpath.segment.export import reproduce_command
from senpath.segment.net import NetConfig, build_model
from senpath.segment.postprocess import PostprocessConfig
from senpath.segment.weights import export_checkpoint, load_checkpoint, load_spec, sha256_file


def _checkpoint(tmp_path, name: str, seed: int, references: str | None = None, widths=(4, 8)):
    torch.manual_seed(seed)
    cfg = NetConfig(widths=widths)
    path = tmp_path / f"{name}.pt"
    torch.save(
        {
            "model": build_model(cfg).state_dict(),
            "net_config": cfg.to_dict(),
            "step": 10 + seed,
            "total_steps": 10 + seed,
            "seed": seed,
            "args": {"lr": "0.001", "counterstain_references": references},
        },
        path,
    )
    return path


def test_the_average_is_the_weighted_mean_of_every_float_tensor(tmp_path):
    a, b = _checkpoint(tmp_path, "a", 1), _checkpoint(tmp_path, "b", 2)
    out = average_checkpoints([(a, 1.0), (b, 3.0)], tmp_path / "avg.pt")
    avg, ta, tb = (load_checkpoint(p)["model"] for p in (out, a, b))
    for key, tensor in avg.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, 0.25 * ta[key] + 0.75 * tb[key])
        else:  # a counter, not a quantity: the first source's
            assert torch.equal(tensor, ta[key])
    # the network of either source, loadable as it is
    build_model(load_checkpoint(out)["net_config"]).load_state_dict(avg)


def test_an_exported_average_records_its_sources_and_the_command(tmp_path):
    a, b = _checkpoint(tmp_path, "a", 1), _checkpoint(tmp_path, "b", 2)
    out = tmp_path / "avg.pt"
    assert main(["--out", str(out), str(a), f"{b}=1"]) == 0
    ckpt = load_checkpoint(out)
    command = reproduce_command(ckpt)
    assert command == f"python -m senpath.segment.average --out {out} {a} {b}=1"
    sources = ckpt["averaged"]["sources"]
    assert [s["sha256"] for s in sources] == [sha256_file(a), sha256_file(b)]
    assert [s["weight"] for s in sources] == [0.5, 0.5]
    assert sources[0]["reproduce"] == reproduce_command(load_checkpoint(a))
    js = export_checkpoint(out, tmp_path / "m", postprocess=PostprocessConfig().to_dict())
    assert json.loads(js.read_text())["counterstain_references"] == {}


def test_a_model_folder_is_a_source_too(tmp_path):
    """A shipped-style model (float16 weights, sha256-checked) averaged with a fine-tune of it."""
    a, b = _checkpoint(tmp_path, "a", 1), _checkpoint(tmp_path, "b", 2)
    folder = export_checkpoint(a, tmp_path / "m", postprocess=PostprocessConfig().to_dict()).parent
    out = average_checkpoints([(folder, 1.0), (b, 1.0)], tmp_path / "avg.pt")
    avg, ta, tb = (load_checkpoint(p)["model"] for p in (out, a, b))
    key = next(k for k, v in avg.items() if v.is_floating_point() and v.numel() > 10)
    torch.testing.assert_close(avg[key], 0.5 * ta[key].half().float() + 0.5 * tb[key])
    assert load_checkpoint(out)["averaged"]["sources"][0]["sha256"] == load_spec(folder)["sha256"]


def test_counterstain_references_follow_the_sources_trained_with_them(tmp_path):
    a = _checkpoint(tmp_path, "a", 1)
    b = _checkpoint(tmp_path, "b", 2, references="{'sabgal-eosin': 0.7}")
    out = average_checkpoints([(a, 1.0), (b, 1.0)], tmp_path / "avg.pt")
    js = export_checkpoint(out, tmp_path / "m", postprocess=PostprocessConfig().to_dict())
    assert json.loads(js.read_text())["counterstain_references"] == {"sabgal-eosin": 0.7}
    c = _checkpoint(tmp_path, "c", 3, references="{'sabgal-eosin': 0.5}")
    with pytest.raises(ValueError, match=r"c\.pt: trained with sabgal-eosin at 0\.5 OD"):
        average_checkpoints([(b, 1.0), (c, 1.0)], tmp_path / "bad.pt")


def test_bad_sources_are_refused_with_one_line(tmp_path, capsys):
    a, b = _checkpoint(tmp_path, "a", 1), _checkpoint(tmp_path, "w", 2, widths=(4, 8, 16))
    with pytest.raises(ValueError, match=r"w\.pt: another network"):
        average_checkpoints([(a, 1.0), (b, 1.0)], tmp_path / "avg.pt")
    assert main(["--out", str(tmp_path / "x.pt"), str(a), str(b)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {b}: another network")
    with pytest.raises(ValueError, match="two sources"):
        average_checkpoints([(a, 1.0)], tmp_path / "avg.pt")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x.pt"), str(a), f"{a}=-1"])
    assert not (tmp_path / "avg.pt").exists() and not (tmp_path / "x.pt").exists()


def test_a_model_source_gives_the_references_its_json_records(tmp_path):
    a = _checkpoint(tmp_path, "a", 1)
    b = _checkpoint(tmp_path, "b", 2, references="{'p16': 0.6}")
    folder = export_checkpoint(b, tmp_path / "m", postprocess=PostprocessConfig().to_dict()).parent
    spec = json.loads((folder / "nucleus_unet.json").read_text())
    spec["training"] = {}  # only the model's own field says it
    (folder / "nucleus_unet.json").write_text(json.dumps(spec))
    out = average_checkpoints([(a, 1.0), (folder, 1.0)], tmp_path / "avg.pt")
    js = export_checkpoint(out, tmp_path / "m2", postprocess=PostprocessConfig().to_dict())
    assert json.loads(js.read_text())["counterstain_references"] == {"p16": 0.6}
