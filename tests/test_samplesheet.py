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
    assert "row 4" in text and "does not exist" in text
    assert "row 5" in text and "unknown assay 'kI67'" in text
    assert "row 6" in text and "repeats row 2" in text
    assert "row 7" in text and "mpp" in text
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


# --- strict sheets: each problem is one line naming the sheet, the row or column, and the fix ----


def _sheet(tmp_path, text):
    (tmp_path / "a.tif").write_bytes(b"x")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(text, encoding="utf-8")
    return sheet


@pytest.mark.parametrize("skip_bad_rows", [False, True])
def test_header_without_rows_is_an_error(tmp_path, skip_bad_rows):
    """Used to give an empty batch and exit 0, in batch mode too."""
    sheet = _sheet(tmp_path, "patient_id,slide_id,path,assay\n")
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=skip_bad_rows)
    assert str(err.value) == f"{sheet}: has a header but no slide rows: add one row per slide"
    with pytest.raises(SampleSheetError, match="no slide rows"):
        jobs_for_input(sheet, known_assays=ASSAYS)


def test_empty_file_is_an_error(tmp_path):
    sheet = _sheet(tmp_path, "")
    with pytest.raises(SampleSheetError, match="is empty: the first line must be the header"):
        read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)


def test_every_row_problem_names_the_sheet(tmp_path):
    sheet = _sheet(
        tmp_path,
        "patient_id,slide_id,path,assay,mpp\nP1,s1,a.tif,ki67,\nP1,s1,a.tif,ki67,\nP2,s2,,ki67,\n",
    )
    _, problems = read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)
    assert problems == [
        f"{sheet}: row 3: slide_id 's1' repeats row 2: give each slide its own slide_id",
        f"{sheet}: row 4: empty 'path'",
    ]
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(sheet, known_assays=ASSAYS)
    assert str(err.value).splitlines() == problems  # one line per problem, nothing else
    assert err.value.problems == problems


def test_unknown_assay_suggests_the_close_one(tmp_path):
    sheet = _sheet(tmp_path, "patient_id,slide_id,path,assay\nP1,s1,a.tif,sabgal_ki67\n")
    known = (*ASSAYS, "sabgal+ki67")
    _, problems = read_sample_sheet(sheet, known_assays=known, skip_bad_rows=True)
    assert problems == [
        f"{sheet}: row 2: unknown assay 'sabgal_ki67': did you mean 'sabgal+ki67'? "
        "(known: ki67, p16, sabgal, sabgal+ki67)"
    ]


@pytest.mark.parametrize("mpp", ["0,25", "nan", "-0.5", "inf", "0"])
def test_bad_mpp(tmp_path, mpp):
    sheet = _sheet(tmp_path, f'patient_id,slide_id,path,assay,mpp\nP1,s1,a.tif,ki67,"{mpp}"\n')
    _, problems = read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)
    assert len(problems) == 1 and problems[0].startswith(f"{sheet}: row 2: mpp {mpp!r}")
    assert "µm per pixel between 0.01 and 100, with a decimal point" in problems[0]


def test_near_miss_column_is_an_error(tmp_path):
    """``mmp`` for ``mpp`` used to be ignored: the slide ran with its file's calibration."""
    sheet = _sheet(tmp_path, "patient_id,slide_id,path,assay,mmp,notes\nP1,s1,a.tif,ki67,0.5,x\n")
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)
    assert (
        str(err.value) == f"{sheet}: column 'mmp' is not a sample-sheet column: did you mean 'mpp'?"
    )


def test_other_extra_columns_are_kept_out_of_the_way(tmp_path):
    sheet = _sheet(tmp_path, "patient_id,slide_id,path,assay,notes\nP1,s1,a.tif,ki67,x\n")
    jobs, problems = read_sample_sheet(sheet, known_assays=ASSAYS)
    assert [j.slide_id for j in jobs] == ["s1"] and problems == []


def test_repeated_column_is_an_error(tmp_path):
    sheet = _sheet(tmp_path, "patient_id,slide_id,path,assay,path\nP1,s1,a.tif,ki67,b.tif\n")
    with pytest.raises(SampleSheetError, match="column 'path' appears 2 times"):
        read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)


def test_row_with_more_values_than_columns(tmp_path):
    """An unquoted comma in a path shifted the row silently; the extra values were dropped."""
    sheet = _sheet(tmp_path, "patient_id,slide_id,path,assay\nP1,s1,a.tif,ki67,extra\n")
    _, problems = read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)
    assert problems == [
        f'{sheet}: row 2: 5 values for 4 columns: quote a value that holds a comma ("a,b.svs")'
    ]


def test_semicolon_separated_sheet_gets_a_hint(tmp_path):
    sheet = _sheet(tmp_path, "patient_id;slide_id;path;assay\nP1;s1;a.tif;ki67\n")
    with pytest.raises(SampleSheetError, match="separated by ';': save it as comma-separated CSV"):
        read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)


def test_path_to_a_folder(tmp_path):
    (tmp_path / "d.svs").mkdir()
    sheet = _sheet(tmp_path, "patient_id,slide_id,path,assay\nP1,s1,d.svs,ki67\n")
    _, problems = read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)
    assert problems == [f"{sheet}: row 2: {tmp_path / 'd.svs'} is a folder, not a slide file"]


def test_row_numbers_are_the_spreadsheet_rows(tmp_path):
    """Rows were numbered from the first slide (row 1 = spreadsheet row 2). A spreadsheet shows
    the header as row 1, a blank line as an empty row and a quoted multi-line cell in one row."""
    sheet = _sheet(
        tmp_path,
        "patient_id,slide_id,path,assay,notes\n"
        "P1,s1,a.tif,ki67,\n"  # row 2
        "\n"  # row 3: blank
        'P1,s2,a.tif,ki67,"stained twice\nsee lab book"\n'  # row 4, two lines of text
        "P2,s3,a.tif,kI67,\n"  # row 5
        "P2,s1,a.tif,ki67,\n",  # row 6
    )
    jobs, problems = read_sample_sheet(sheet, known_assays=ASSAYS, skip_bad_rows=True)
    assert [(j.slide_id, j.row) for j in jobs] == [("s1", 2), ("s2", 4)]
    assert [p.split(": ")[1] for p in problems] == ["row 5", "row 6"]
    assert problems[1] == (
        f"{sheet}: row 6: slide_id 's1' repeats row 2: give each slide its own slide_id"
    )
    assert jobs[1].row == 4
