"""The sample sheet's ``section`` in the store, and how ``senpath register`` picks sections by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from senpath.registration import patients_with_sections
from senpath.registration._store import one_store_per_section
from senpath.results import is_complete, read_manifest, record_section, store_problems


def test_a_sheet_section_is_recorded_without_changing_the_store_identity(
    batch_results: Path,
) -> None:
    """A batch re-run with a `section` column: the current store is skipped (not re-analysed),
    gains its section, keeps its identity and files, and still reads back complete."""
    from senpath import load_results
    from senpath.config import AnalysisConfig
    from senpath.pipeline import run_batch
    from senpath.samplesheet import SlideJob

    store = batch_results / "p1-ki67"
    before = read_manifest(store)
    assert before is not None and "section" not in before
    job = SlideJob("p1-ki67", batch_results.parent / "ki67.tif", "ki67", "P1", section="S3")
    (report,) = run_batch([job], out=batch_results, config=AnalysisConfig(segmenter="classical"))
    assert report.status == "skipped", report.message
    after = read_manifest(store)
    assert after is not None and after["section"] == "S3"
    assert after["identity"] == before["identity"] and after["files"] == before["files"]
    assert is_complete(store, before["identity"]) and store_problems(store) == []
    assert load_results(store).section == "S3"
    # a row without a section keeps the recorded one; the same section writes nothing
    assert not record_section(store, None) and not record_section(store, "S3")
    assert read_manifest(store)["section"] == "S3"  # type: ignore[index]
    # a store written before the column (no section) reads as None
    assert load_results(batch_results / "p2-p16").section is None


def _fake_store(root: Path, slide_id: str, patient: str, section: str | None) -> None:
    # patients_with_sections reads manifests only
    folder = root / slide_id
    folder.mkdir(parents=True)
    manifest = {"slide_id": slide_id, "patient_id": patient, "identity": {}, "files": {}}
    if section:
        manifest["section"] = section
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_sections_of_a_patient_are_its_distinct_sheet_sections(tmp_path: Path) -> None:
    for slide_id, patient, section in (
        ("a-he", "A", "S1"),  # A: one section scanned twice: nothing to register
        ("a-he-rescan", "A", "S1"),
        ("b-sabgal", "B", "S1"),  # B: two sections, one of them twice
        ("b-ki67", "B", "S2"),
        ("b-ki67-rescan", "B", "S2"),
        ("c-sabgal", "C", None),  # C: no sections named: each store is one (as before)
        ("c-ki67", "C", None),
        ("d-ki67", "D", "S1"),  # D: one store
    ):
        _fake_store(tmp_path, slide_id, patient, section)
    assert patients_with_sections(tmp_path) == {
        "B": ["b-ki67", "b-ki67-rescan", "b-sabgal"],
        "C": ["c-ki67", "c-sabgal"],
    }


@pytest.mark.parametrize(
    ("reference", "kept", "duplicates"),
    [
        (None, [0, 1], {"S2": ["b-ki67", "b-ki67-rescan"]}),
        ("b-ki67-rescan", [0, 2], {"S2": ["b-ki67-rescan", "b-ki67"]}),
    ],
)
def test_one_store_per_section_keeps_the_reference(
    reference: str | None, kept: list[int], duplicates: dict[str, list[str]]
) -> None:
    slides = ["b-sabgal", "b-ki67", "b-ki67-rescan"]
    assert one_store_per_section(slides, ["S1", "S2", "S2"], reference=reference) == (
        kept,
        duplicates,
    )
