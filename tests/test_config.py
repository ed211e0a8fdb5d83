import pytest

from senpath.config import AnalysisConfig, ConfigError, get_assay, load_assays, load_config

#: ``AnalysisConfig().digest()`` before ``normalise_counterstain`` existed (commit 24a12db)
DIGEST_BEFORE_COUNTERSTAIN = "9939c83b52d53186"

ASSAYS = ("ki67", "p16", "sabgal", "sabgal-eosin", "sabgal+ki67", "p16+ki67")


def test_all_preset_assays_load():
    assays = load_assays()
    assert set(ASSAYS) <= set(assays)
    assert get_assay("sabgal").marker("sabgal").compartment == "perinuclear"
    assert get_assay("p16+ki67").marker("ki67").stain == "fast_red"
    assert get_assay("sabgal+ki67").phenotypes["senescent"] == ("sabgal+", "ki67-")


def test_user_assay_from_toml(tmp_path):
    f = tmp_path / "lab.toml"
    f.write_text(
        "[analysis]\nanalysis_mpp = 0.4\n\n"
        '[assay.my-ki67]\nstains = ["hematoxylin", "dab"]\n'
        '[[assay.my-ki67.marker]]\nname = "ki67"\nstain = "dab"\nthreshold_od = 0.3\n'
    )
    assays = load_assays(f)
    assert assays["my-ki67"].marker("ki67").threshold_od == 0.3
    assert "ki67" in assays  # presets stay
    assert load_config(f).analysis_mpp == 0.4


def test_bad_assay_errors_say_what_to_fix(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[assay.x]\nstains = ["hematoxylin", "indigo"]\n')
    with pytest.raises(ConfigError, match='`assay.x.stains` names unknown stain "indigo"'):
        load_assays(f)
    with pytest.raises(ConfigError, match="known assays"):
        get_assay("kI67")
    t = tmp_path / "bad_tolerance.toml"
    t.write_text(
        '[assay.y]\nstains = ["hematoxylin", "dab"]\nstain_tolerance_deg = { eosin = 30 }\n'
    )
    with pytest.raises(
        ConfigError, match="`assay.y.stain_tolerance_deg.eosin` must name one of the assay's stains"
    ):
        load_assays(t)
    g = tmp_path / "bad2.toml"
    g.write_text("[analysis]\nanalysis_mpp_typo = 1\n")
    with pytest.raises(
        ConfigError,
        match="`analysis.analysis_mpp_typo` is not a known key: did you mean `analysis_mpp`",
    ):
        load_config(g)


def test_config_digest_changes_with_settings():
    a = AnalysisConfig()
    assert a.digest() == AnalysisConfig().digest()
    assert a.digest() != a.replace(cytoplasm_um=3.0).digest()


def test_counterstain_reference_is_per_assay_and_checked(tmp_path):
    f = tmp_path / "lab.toml"
    f.write_text(
        '[assay.faint]\nstains = ["hematoxylin", "dab"]\ncounterstain_reference_od = 0.5\n'
    )
    assert load_assays(f)["faint"].counterstain_reference_od == 0.5
    assert get_assay("ki67").counterstain_reference_od is None  # an assay without one: never
    f.write_text('[assay.bad]\nstains = ["hematoxylin", "dab"]\ncounterstain_reference_od = -1\n')
    with pytest.raises(ConfigError, match="`assay.bad.counterstain_reference_od` = -1"):
        load_assays(f)


def test_normalise_counterstain_on_leaves_the_digest_of_earlier_stores():
    # the defaults' digest before the setting existed (AnalysisConfig().digest() at 24a12db)
    assert AnalysisConfig().digest() == DIGEST_BEFORE_COUNTERSTAIN
    assert AnalysisConfig(normalise_counterstain=False).digest() != DIGEST_BEFORE_COUNTERSTAIN


def test_test_time_flips_are_for_the_cnn_and_change_the_digest_only_when_on():
    assert AnalysisConfig(test_time_flips=False).digest() == DIGEST_BEFORE_COUNTERSTAIN
    on = AnalysisConfig(test_time_flips=True)
    assert on.digest() != DIGEST_BEFORE_COUNTERSTAIN
    with pytest.raises(ConfigError, match="test_time_flips is for the CNN"):
        AnalysisConfig(segmenter="classical", test_time_flips=True)
    with pytest.raises(ConfigError, match='`test_time_flips` = "yes" is not a boolean'):
        AnalysisConfig(test_time_flips="yes")  # type: ignore[arg-type]
    # "auto" resolved to the classical method (no CNN here) drops them; to the CNN keeps them
    assert on.with_segmenter("classical").test_time_flips is False
    assert on.with_segmenter("cnn").test_time_flips is True
