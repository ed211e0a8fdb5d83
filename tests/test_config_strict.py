"""Strict settings: every bad setting is refused with one line naming the file, the key and the fix.

Each case here was accepted silently (or crashed with a traceback) before the strict loader: the
``[analysis]`` table and every ``[assay.NAME]`` / ``[[assay.NAME.marker]]`` key has a type and a range,
and unknown sections and keys are errors at every level.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from senpath.config import (
    AnalysisConfig,
    ConfigError,
    get_assay,
    load_assays,
    load_config,
    stain_profile_toml,
)

#: A valid user assay (the README's example); cases below change one line of it.
ASSAY = """
[assay.my-ki67]
stains = ["hematoxylin", "dab"]
[[assay.my-ki67.marker]]
name = "ki67"
stain = "dab"
compartment = "nucleus"
threshold_od = 0.20
bins_od = [0.20, 0.40, 0.70]
"""


def _toml(tmp_path: Path, text: str, name: str = "lab.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load_both(path: Path) -> None:
    """Load the file the way ``senpath run --config`` does (both halves of the settings)."""
    load_config(path)
    load_assays(path)


def _one_line(exc: pytest.ExceptionInfo[ConfigError], path: Path, key: str, fix: str) -> str:
    """The error is one line that names the file, the full dotted key and the fix."""
    message = str(exc.value)
    assert len(message.splitlines()) == 1, message
    assert str(path) in message, message
    assert f"`{key}`" in message, message
    assert fix in message, message
    return message


# --- wrong but accepted silently before, or crashed with a traceback -----------------------------

_SECOND_MARKER = ASSAY[ASSAY.index("[[") :]  # the [[marker]] table again
_QUOTED_ASSAY = (
    '[assay."p16+ki67-lab"]\nstains = ["hematoxylin", "dab", "fast_red"]\ncolour = "red"\n'
)

#: (case, settings text, full dotted key named, fix named). All were accepted silently before,
#: except the last three, which crashed with a traceback.
BAD_SETTINGS = [
    ("negative_marker_threshold", ASSAY.replace("threshold_od = 0.20", "threshold_od = -0.1"),
     "assay.my-ki67.marker[0].threshold_od", "> 0 and <= 3"),
    ("zero_tile_size", "[analysis]\ntile_size_um = 0\n", "analysis.tile_size_um", ">= 32 and <= 8192"),
    ("string_for_a_marker_bool", ASSAY + 'labelling_index = "yes"\n',
     "assay.my-ki67.marker[0].labelling_index", "write true or false"),
    # auto_threshold = "no" used to switch automatic thresholds on (a non-empty string)
    ("auto_threshold_no_is_not_true", '[analysis]\nauto_threshold = "no"\n',
     "analysis.auto_threshold", "write true or false, without quotes"),
    ("typo_in_a_section_name", "[analysys]\nanalysis_mpp = 0.4\n", "analysys",
     "did you mean `analysis`?"),
    # treshold_od = 0.20 used to leave the threshold at its default 0.15
    ("typo_in_a_marker_key", ASSAY.replace("threshold_od = 0.20", "treshold_od = 0.20"),
     "assay.my-ki67.marker[0].treshold_od", "did you mean `threshold_od`?"),
    ("stain_vector_for_stain_vectors",
     ASSAY.replace("[[", "stain_vector = { dab = [0.27, 0.57, 0.78] }\n[[", 1),
     "assay.my-ki67.stain_vector", "did you mean `stain_vectors`?"),
    ("typo_in_an_analysis_key", "[analysis]\ntile_size = 256\n", "analysis.tile_size",
     "did you mean `tile_size_um`?"),
    ("analysis_key_outside_its_section", "analysis_mpp = 0.4\n", "analysis_mpp",
     "move it under [analysis]"),
    # [assay.x.marker] (one bracket) is a table, not the list of markers [[...]] makes
    ("marker_as_a_single_table",
     ASSAY.replace("[[assay.my-ki67.marker]]", "[assay.my-ki67.marker]"),
     "assay.my-ki67.marker", "[[assay.my-ki67.marker]]"),
    ("nan_threshold", ASSAY.replace("threshold_od = 0.20", "threshold_od = nan"),
     "assay.my-ki67.marker[0].threshold_od", "> 0 and <= 3"),
    ("bool_for_a_number", "[analysis]\ntile_size_um = true\n", "analysis.tile_size_um",
     "is not a number"),
    ("decreasing_bins", ASSAY.replace("[0.20, 0.40, 0.70]", "[0.70, 0.40, 0.20]"),
     "assay.my-ki67.marker[0].bins_od", "increasing"),
    ("vector_for_a_stain_the_assay_lacks",
     ASSAY.replace("[[", "stain_vectors = { xgal = [0.3, 0.2, 0.1] }\n[[", 1),
     "assay.my-ki67.stain_vectors.xgal", "hematoxylin, dab"),
    ("duplicate_marker_names", ASSAY + _SECOND_MARKER, "assay.my-ki67.marker[1].name",
     "repeats marker[0]"),
    ("marker_name_with_a_suffix_that_phenotypes_cannot_read",
     ASSAY.replace('name = "ki67"', 'name = "ki67+"'), "assay.my-ki67.marker[0].name",
     "letters, digits"),
    ("quoted_assay_names_are_quoted_in_the_key", _QUOTED_ASSAY, 'assay."p16+ki67-lab".colour',
     "known keys"),
    ("string_for_a_number", '[analysis]\nanalysis_mpp = "fast"\n', "analysis.analysis_mpp",
     "is not a number: give µm/px"),
    ("marker_without_a_name", ASSAY.replace('name = "ki67"\n', ""),
     "assay.my-ki67.marker[0].name", 'e.g. name = "ki67"'),
    ("negative_cytoplasm_ring", "[analysis]\ncytoplasm_um = -2\n", "analysis.cytoplasm_um",
     ">= 0 and <= 50"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "key", "fix"), [case[1:] for case in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS]
)
def test_a_bad_setting_is_one_line_naming_file_key_and_fix(tmp_path, text, key, fix):
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        _load_both(path)
    _one_line(exc, path, key, fix)


def test_not_toml(tmp_path):
    path = _toml(tmp_path, "[analysis\nanalysis_mpp = 0.5\n")
    with pytest.raises(ConfigError) as exc:
        _load_both(path)
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and str(path) in message and "line 1" in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read settings file .*nope.toml"):
        _load_both(tmp_path / "nope.toml")


# --- several problems: all of them, one line each, in one exception ---------------------------


def test_all_problems_in_one_error_one_line_each(tmp_path):
    text = (
        '[analysis]\nanalysis_mpp = "fast"\ntile_size_um = 0\nauto_threshold = "no"\n'
        + ASSAY.replace("threshold_od = 0.20", "treshold_od = 0.20")
        + "\n[analysys]\n"
    )
    path = _toml(tmp_path, text)
    from senpath.config import load_settings

    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    lines = str(exc.value).splitlines()
    assert exc.value.problems == lines
    assert len(lines) == 5, lines
    assert all(line.startswith(f"{path}: `") for line in lines), lines
    keys = ("analysis_mpp", "tile_size_um", "auto_threshold", "treshold_od", "analysys")
    assert all(any(f"{k}`" in line for line in lines) for k in keys), lines


def test_cross_field_check_names_the_file(tmp_path):
    path = _toml(tmp_path, "[analysis]\nhalo_um = 5.0\n")
    with pytest.raises(ConfigError) as exc:
        _load_both(path)
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and str(path) in message and "halo_um" in message


# --- one loader for the CLI, the Python API and the napari plugin -----------------------------


def test_load_settings_reads_both_halves_once(tmp_path):
    from senpath.config import load_settings

    path = _toml(tmp_path, "[analysis]\nanalysis_mpp = 0.4\nauto_threshold = false\n" + ASSAY)
    settings = load_settings(path)
    assert settings.analysis == AnalysisConfig(analysis_mpp=0.4)
    assert settings.assays["my-ki67"].marker("ki67").threshold_od == 0.20
    assert settings.assays["ki67"] == get_assay("ki67")  # presets stay
    assert settings.source == str(path)


def test_a_mapping_is_checked_like_a_file():
    from senpath.config import load_settings

    good = load_settings({"analysis": {"segmenter": "classical", "tile_size_um": 64}})
    assert good.analysis == AnalysisConfig(segmenter="classical", tile_size_um=64)
    with pytest.raises(ConfigError) as exc:
        load_settings({"segmenter": "classical"})  # the [analysis] level left out
    message = str(exc.value)
    assert "<settings mapping>" in message and "`segmenter`" in message
    assert "move it under [analysis]" in message


def test_analyze_slide_and_run_batch_take_a_settings_file(tmp_path):
    """``config=`` of the Python API is a path or mapping too, read by the same loader."""
    import senpath
    from senpath import synth
    from senpath.samplesheet import SlideJob

    slide = synth.write_slide(
        tmp_path / "s.tif", assay="ki67", shape=(256, 256), mpp=0.5, seed=4,
        params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip
    path = _toml(tmp_path, '[analysis]\nsegmenter = "classical"\n' + ASSAY)
    store = senpath.analyze_slide(slide.path, out=tmp_path / "r", assay="my-ki67", config=path)
    res = senpath.load_results(store)
    assert res.provenance.assay.name == "my-ki67"
    assert res.provenance.thresholds == {"ki67": 0.20}
    assert res.provenance.segmenter_method == "classical"
    bad = {"analysis": {"segmenter": "classical", "tile_size_um": 0}}
    with pytest.raises(ConfigError, match="`analysis.tile_size_um`"):
        senpath.analyze_slide(slide.path, out=tmp_path / "r2", assay="ki67", config=bad)
    job = SlideJob("s2", slide.path, "my-ki67", "P1")
    with pytest.raises(ConfigError, match="did you mean `analysis`"):
        senpath.run_batch([job], out=tmp_path / "r3", config={"analysys": {}})
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="`tile_size_um` = 0 is out of range"):
        AnalysisConfig(tile_size_um=0)
    with pytest.raises(ConfigError, match='`auto_threshold` = "no" is not a boolean'):
        AnalysisConfig(auto_threshold="no")  # type: ignore[arg-type]
    assert AnalysisConfig().replace(cytoplasm_um=0).cytoplasm_um == 0


# --- the valid configurations of the project keep working -------------------------------------


def test_readme_example_loads(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("```toml\n[analysis]") + len("```toml\n")
    example = readme[start : readme.index("```", start)]
    path = _toml(tmp_path, example)
    assert load_config(path).cytoplasm_um == 5.0
    assert load_assays(path)["my-ki67"].marker("ki67").bins_od == (0.20, 0.40, 0.70)


@pytest.mark.parametrize("assay", ["ki67", "sabgal+ki67", "p16+ki67", "he"])
def test_profile_round_trip(tmp_path, assay):
    """What ``senpath profile`` writes, ``--config`` reads back unchanged."""
    from senpath.config import load_settings

    preset = get_assay(assay)
    vectors = {preset.stains[-1]: (0.3, 0.5, 0.6)}
    thresholds = {m.name: 0.25 for m in preset.markers}
    text = stain_profile_toml(preset, vectors=vectors, thresholds=thresholds, name="lab-x")
    settings = load_settings(_toml(tmp_path, text))
    back = settings.assays["lab-x"]
    assert settings.analysis.stain_vectors == "preset"
    assert back.stains == preset.stains and back.nuclear_stains == preset.nuclear_stains
    assert back.stain_vectors[preset.stains[-1]] == (0.3, 0.5, 0.6)
    assert back.markers == tuple(replace(m, threshold_od=0.25) for m in preset.markers)
    assert [m.labelling_index for m in back.markers] == [m.labelling_index for m in preset.markers]
    assert back.phenotypes == preset.phenotypes
    assert back.stain_tolerance_deg == preset.stain_tolerance_deg
    assert back.counterstain_reference_od == preset.counterstain_reference_od


def test_cli_profile_output_reads_back(tmp_path, batch_results):
    from typer.testing import CliRunner

    from senpath.cli import app
    from senpath.config import load_settings

    out = tmp_path / "labA.toml"
    r = CliRunner().invoke(
        app, ["profile", str(batch_results / "p1-ki67"), "--out", str(out), "--name", "ki67-labA"]
    )
    assert r.exit_code == 0, r.output
    settings = load_settings(out)
    assert settings.assays["ki67-labA"].marker("ki67").labelling_index
    assert settings.analysis.stain_vectors == "preset"


# --- the command line: one line per problem, non-zero exit, no traceback ----------------------


def test_cli_reports_each_problem_on_one_line(tmp_path):
    (tmp_path / "s.tif").write_bytes(b"x")
    sheet = tmp_path / "samples.csv"
    sheet.write_text("patient_id,slide_id,path,assay\nP1,s1,s.tif,ki67\n")
    # a long folder name: a line wider than the terminal must still be one line
    deep = tmp_path / ("lab-settings-" + "x" * 60)
    deep.mkdir()
    bad = _toml(
        deep,
        "[analysys]\nanalysis_mpp = 0.4\n"
        + ASSAY.replace("threshold_od = 0.20", "treshold_od = 0.20"),
        name="bad.toml",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "senpath.cli", "run", str(sheet), "--out", str(tmp_path / "out"),
         "--config", str(bad)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert all(line.startswith(f"error: {bad}: `") for line in lines), lines
    assert "`analysys` is not a known section: did you mean `analysis`?" in lines[0]
    assert "did you mean `threshold_od`?" in lines[1]
    assert not (tmp_path / "out").exists()


def test_every_analysis_setting_has_a_schema_row():
    """A new AnalysisConfig field must get a type and a range (or the loader would refuse it)."""
    from dataclasses import fields

    from senpath.config import ANALYSIS_SETTINGS

    assert [f.name for f in fields(AnalysisConfig)] == list(ANALYSIS_SETTINGS)
