"""Typed provenance: read in one place, tolerant of older stores, round trip to JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from senpath.config import MarkerRule, get_assay, load_assays
from senpath.provenance import MarkerRecord, Provenance, marker_record, profile_toml
from senpath.stain import DEFAULT_I0
from senpath.testing import analysed_synthetic_slide


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("prov")
    _, store = analysed_synthetic_slide(root, name="s", assay="p16+ki67", shape=(256, 256), seed=2)
    return json.loads((Path(store) / "provenance.json").read_text())


def test_a_stored_provenance_round_trips(stored: dict) -> None:
    prov = Provenance.from_dict(stored)
    assert json.loads(json.dumps(prov.to_dict())) == stored
    assert prov.thresholds == {"p16": 0.15, "ki67": 0.15}
    assert prov.background_i0 == tuple(stored["background_i0"])
    assert prov.segmenter_method == "classical" and prov.model_sha256 is None
    assert prov.assay.assay().markers == get_assay("p16+ki67").markers
    assert prov.assay.assay().phenotypes == get_assay("p16+ki67").phenotypes


def test_keys_an_older_store_lacks_take_the_pipeline_defaults(stored: dict) -> None:
    old = json.loads(json.dumps(stored))
    for key in ("background_i0", "config", "segmenter", "senpath_version"):
        old.pop(key)
    for m in old["assay"]["markers"]:
        m.pop("rule_threshold_od")
        m.pop("statistic")
    old["future_key"] = {"kept": True}
    prov = Provenance.from_dict(old)
    assert prov.background_i0 == (DEFAULT_I0,) == (240.0,)
    assert prov.cytoplasm_um == 5.0 and prov.halo_um == 24.0
    assert prov.segmenter_method is None
    assert [m.rule.statistic for m in prov.markers] == ["mean", "mean"]
    assert prov.to_dict()["future_key"] == {"kept": True}
    # a run on the file's own calibration records no file_mpp (as every store before it)
    assert set(stored["slide"]) == {"path", "backend", "vendor", "mpp", "mpp_source", "shape"}
    assert prov.file_mpp is None and prov.mpp_warning is None


def test_an_overridden_file_calibration_is_read_and_kept(stored: dict) -> None:
    raw = json.loads(json.dumps(stored))
    raw["slide"].update(
        mpp=[1.0, 1.0], mpp_source="mpp=", file_mpp=[0.5, 0.5],
        file_mpp_source="TIFF X/YResolution (cm)", mpp_warning="s.tif: ... differs by 100% ...",
    )  # fmt: skip
    prov = Provenance.from_dict(raw)
    assert prov.slide_mpp == (1.0, 1.0) and prov.file_mpp == (0.5, 0.5)
    assert prov.mpp_warning == "s.tif: ... differs by 100% ..."
    assert prov.to_dict() == raw


def test_labelling_index_is_the_markers_not_its_name() -> None:
    ki67 = get_assay("ki67").marker("ki67")
    assert ki67.labelling_index and not get_assay("p16").marker("p16").labelling_index
    # the record the pipeline writes keeps its layout; a reader gets the flag from the presets
    record = marker_record(ki67, 0.2)
    assert "labelling_index" not in record
    assert MarkerRecord.from_dict(record).rule.labelling_index
    custom = MarkerRule("prolif", "dab", "nucleus", labelling_index=True)
    assert MarkerRecord.from_dict({**marker_record(custom, 0.1), "labelling_index": True}).rule == (
        custom
    )
    assert not MarkerRecord.from_dict(marker_record(custom, 0.1)).rule.labelling_index


def test_thresholds_in_effect_keep_the_pipelines(stored: dict) -> None:
    prov = Provenance.from_dict(stored)
    corrected = prov.with_thresholds({"ki67": 0.3}, corrections={"log": "c.jsonl", "n_entries": 1})
    assert corrected.thresholds == {"p16": 0.15, "ki67": 0.3}
    ki67 = corrected.to_dict()["assay"]["markers"][1]
    assert ki67["threshold_od"] == 0.3 and ki67["pipeline_threshold_od"] == 0.15
    assert corrected.to_dict()["corrections"] == {"log": "c.jsonl", "n_entries": 1}
    assert prov.thresholds["ki67"] == 0.15  # frozen: the original is unchanged


def test_profile_from_provenance_reads_back(stored: dict, tmp_path: Path) -> None:
    prov = Provenance.from_dict(stored)
    path = tmp_path / "lab.toml"
    path.write_text(profile_toml(prov, {"ki67": 0.25}, name="lab"))
    assay = load_assays(path)["lab"]
    assert assay.marker("ki67").threshold_od == 0.25 and assay.marker("ki67").labelling_index
    assert assay.marker("p16").threshold_od == 0.15
