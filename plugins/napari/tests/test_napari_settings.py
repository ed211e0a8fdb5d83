"""The analysis widget reads a settings file with senpath's strict loader (as ``--config`` does)."""

from __future__ import annotations

from pathlib import Path

ASSAY = """
[analysis]
segmenter = "classical"
cytoplasm_um = 4.0

[assay.my-ki67]
stains = ["hematoxylin", "dab"]
[[assay.my-ki67.marker]]
name = "ki67"
stain = "dab"
threshold_od = 0.20
"""


def test_settings_file_sets_assays_and_analysis(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("senpath-napari", "Analyse")
    good = tmp_path / "lab.toml"
    good.write_text(ASSAY, encoding="utf-8")
    assert widget.load_settings(str(good))
    names = [widget.assay_combo.itemText(i) for i in range(widget.assay_combo.count())]
    assert "my-ki67" in names and "ki67" in names
    assert widget.segmenter_combo.currentText() == "classical"
    assert widget._analysis.cytoplasm_um == 4.0
    assert widget._assays["my-ki67"].marker("ki67").threshold_od == 0.20


def test_bad_settings_file_is_refused_with_one_line_per_problem(
    make_napari_viewer, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("senpath-napari", "Analyse")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        ASSAY.replace("threshold_od", "treshold_od").replace("[analysis]", "[analysys]"),
        encoding="utf-8",
    )
    assert not widget.load_settings(str(bad))
    lines = widget.result_label.text().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{bad}: `") for line in lines), lines
    assert "did you mean `analysis`?" in lines[0] and "did you mean `threshold_od`?" in lines[1]
    assert "my-ki67" not in widget._assays  # nothing of a refused file is used


def test_test_time_flips_follow_the_settings_file_and_the_checkbox(
    make_napari_viewer, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("senpath-napari", "Analyse")
    assert not widget.flips_check.isChecked()  # off by default, as in senpath run
    flips = tmp_path / "flips.toml"
    flips.write_text('[analysis]\nsegmenter = "cnn"\ntest_time_flips = true\n', encoding="utf-8")
    assert widget.load_settings(str(flips))
    assert widget.flips_check.isChecked() and widget.flips_check.isEnabled()
    assert widget.analysis_config().test_time_flips
    widget.flips_check.setChecked(False)  # the box overrides the file for the next run
    assert not widget.analysis_config().test_time_flips
    widget.flips_check.setChecked(True)
    widget.segmenter_combo.setCurrentText("classical")  # flips are for the CNN: none, no error
    assert not widget.flips_check.isEnabled()
    config = widget.analysis_config()
    assert (config.segmenter, config.test_time_flips) == ("classical", False)
    widget.segmenter_combo.setCurrentText("auto")
    assert widget.flips_check.isEnabled() and widget.analysis_config().test_time_flips
