import pytest

from senpath.samplesheet import SampleSheetError, jobs_for_input, read_sample_sheet, scan_folder

ASSAYS = ("ki67", "p16", "sabgal")


def test_sheet_resolves_relative_paths_and_reports_bad_rows(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "b.svs").write_bytes(b"x")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "patient_id,slide_id,path,assay,mpp\n"
        "P1,s1,a.tif,ki67,\n"
        "P1,s2,b.svs,p16,0.25\n"
        "P2,s3,missing.tif,ki67,\n"
        "P2,s4,a.tif,kI67,\n"
        "P2,s1,a.tif,ki67,\n"
        "P3,s5,a.tif,ki67,abc\n"
    )
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(sheet, known_assays=ASSAYS)
    text = str(err.value)
    assert "row 3" in text and "does not exist" in text
    assert "row 4" in text and "unknown assay 'kI67'" in text
    assert "row 5" in text and "repeats row 1" in text
    assert "row 6" in text and "mpp" in text
    jobs, problems = read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)
    assert [j.slide_id for j in jobs] == ["s1", "s2"]
    assert jobs[0].path == tmp_path / "a.tif" and jobs[1].mpp == 0.25
    assert len(problems) == 4


def test_missing_column(tmp_path):
    sheet = tmp_path / "s.csv"
    sheet.write_text("patient,slide_id,path,assay\n")
    with pytest.raises(SampleSheetError, match="missing column"):
        read_sample_sheet(sheet, known_assays=ASSAYS)


def test_folder_needs_assay_and_scans_known_extensions(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("x.svs", "sub/y.ome.tiff", "notes.txt", "z.labels.tif"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in scan_folder(tmp_path)] == ["y.ome.tiff", "x.svs"]  # sorted by path
    with pytest.raises(ValueError, match="--assay"):
        jobs_for_input(tmp_path, known_assays=ASSAYS)
    jobs, _ = jobs_for_input(tmp_path, known_assays=ASSAYS, assay="p16", mpp=0.5)
    assert [(j.slide_id, j.assay, j.mpp) for j in jobs] == [("y", "p16", 0.5), ("x", "p16", 0.5)]
