"""Sample sheets and batch inputs: which slides to analyse, for which patient, with which assay.

A sample sheet is a CSV with columns ``patient_id,slide_id,path,assay`` and optional ``mpp``,
``section``, ``batch`` and ``control``; other columns (a lab's notes) are kept out of the way, unless
one is a near miss of a sheet column (``mmp``, ``Section``), which is an error. Relative paths
resolve against the sheet's folder. ``batch`` names the staining run a slide belongs to (any text)
and ``control`` marks a row as that batch's ``negative`` or ``positive`` control (empty: a sample);
the marker cut-offs of a batch and assay with a negative control come from it (see
:mod:`senpath.controls`). Culture experiments add ``condition``, ``plate``, ``well`` and
``replicate`` (see :mod:`senpath.plate`). Every row is validated and all problems are reported together, one line
each naming the sheet and the row, so a user fixes the sheet in one go.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senpath.plate import LAYOUT_COLUMNS, Placement, canonical_well, layout_problems
from senpath.results import slide_id_problem

#: File extensions that a folder scan picks up as slides.
SLIDE_EXTENSIONS = (
    ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".tif", ".tiff", ".ome.tif",
    ".ome.tiff", ".png", ".jpg", ".jpeg",
)  # fmt: skip
REQUIRED_COLUMNS = ("patient_id", "slide_id", "path", "assay")
OPTIONAL_COLUMNS = ("mpp", "section", "batch", "control", *LAYOUT_COLUMNS[:-1])
#: Values of the ``control`` column (empty: the row is a sample, not a control).
CONTROL_KINDS = ("negative", "positive")


class SampleSheetError(ValueError):
    """A sample sheet with problems; ``problems`` lists them, one line each naming the sheet."""

    def __init__(self, sheet: Path, problems: list[str]) -> None:
        self.sheet = sheet
        self.problems = problems
        super().__init__("\n".join(problems))


def _one_edit_apart(a: str, b: str) -> bool:
    """``a`` and ``b`` differ by case only or by one letter changed, added, removed or swapped."""
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )  # fmt: skip
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def _header_problems(sheet: Path, header: list[str]) -> list[str]:
    """Problems of the header row: missing, repeated and misspelt columns (one line each)."""
    problems = []
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        sep = ";" if ";" in header[0] else "\\t"
        return [
            f"{sheet}: the header is separated by {sep!r}: save it as comma-separated CSV "
            f"(columns {','.join(REQUIRED_COLUMNS)})"
        ]
    for col in sorted(set(header)):
        if header.count(col) > 1:
            problems.append(f"{sheet}: column {col!r} appears {header.count(col)} times: keep one")
    absent = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c not in header]
    for col in header:
        near = [c for c in absent if _one_edit_apart(col, c)]
        if col not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS and near:
            problems.append(
                f"{sheet}: column {col!r} is not a sample-sheet column: did you mean {near[0]!r}?"
            )
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing and not problems:
        hints = [
            f"{got[0]!r} for {c!r}?"
            for c in missing
            if (got := difflib.get_close_matches(c, header, n=1, cutoff=0.6))
        ]
        problems.append(
            f"{sheet}: missing column(s) {missing}; the header must include "
            f"{list(REQUIRED_COLUMNS)}" + (f" (did you mean {', '.join(hints)})" if hints else "")
        )
    return problems


@dataclass(frozen=True)
class SlideJob:
    """One slide to analyse."""

    slide_id: str
    path: Path
    assay: str
    patient_id: str
    mpp: float | None = None
    section: str | None = None
    row: int | None = None  # sheet row as a spreadsheet shows it (1 = header), for messages
    batch: str | None = None  # staining batch (sample sheet ``batch``): its controls set cut-offs
    control: str | None = None  # "negative" / "positive" for a control row, None for a sample
    # culture experiments (senpath.plate): the image's condition, plate, well (canonical, "B03")
    # and biological replicate
    condition: str | None = None
    plate: str | None = None
    well: str | None = None
    replicate: str | None = None

    @property
    def placement(self) -> Placement:
        """Where the image belongs in the experiment (for ``<results>/layout.csv``)."""
        return Placement(
            self.slide_id, self.condition, self.plate, self.well, self.replicate, self.control
        )


def _numbered_rows(lines: Iterable[str]) -> tuple[list[str], list[tuple[int, dict[Any, Any]]]]:
    """The header and each slide row with its row number as a spreadsheet shows it.

    A spreadsheet shows one row per CSV record: the header is row 1, a blank line is an (empty)
    row, and a quoted cell spanning several lines stays in one row; so records are counted, not
    lines (``csv.reader.line_num`` counts lines). Rows are mapped as :class:`csv.DictReader` does:
    surplus values under ``None``, missing ones as ``None``; blank rows are left out.
    """
    records = csv.reader(lines)
    fieldnames = next(records, [])
    rows = []
    for number, values in enumerate(records, start=2):
        if not values:
            continue
        raw: dict[Any, Any] = dict(zip(fieldnames, values, strict=False))
        if len(values) > len(fieldnames):
            raw[None] = values[len(fieldnames) :]
        for name in fieldnames[len(values) :]:
            raw[name] = None
        rows.append((number, raw))
    return fieldnames, rows


def read_sample_sheet(
    sheet: str | Path, *, known_assays: Iterable[str], skip_bad_rows: bool = False
) -> tuple[list[SlideJob], list[str]]:
    """Parse and validate a sample sheet.

    Parameters
    ----------
    sheet : CSV path.
    known_assays : accepted assay names.
    skip_bad_rows : if True, bad rows are returned as problems and the good rows still run (batch
        mode: one bad row must not stop the batch); if False, any problem raises.

    Returns
    -------
    (jobs, problems)

    Raises
    ------
    SampleSheetError
        When the sheet cannot be read, misses columns, or (without ``skip_bad_rows``) has bad rows.
    """
    sheet = Path(sheet)
    assays = set(known_assays)
    if sheet.exists() and not sheet.is_file():  # a folder or a pipe: never block on reading it
        raise SampleSheetError(sheet, [f"{sheet}: is not a regular file: give a CSV sample sheet"])
    try:
        with open(sheet, newline="", encoding="utf-8-sig") as fh:
            fieldnames, rows = _numbered_rows(fh)
            header = [h.strip() for h in fieldnames]
    except UnicodeDecodeError:
        raise SampleSheetError(
            sheet, [f"{sheet}: is not UTF-8 text: save the sheet as CSV UTF-8"]
        ) from None
    except (OSError, csv.Error) as exc:
        raise SampleSheetError(sheet, [f"{sheet}: cannot read the file: {exc}"]) from exc
    if not header:
        raise SampleSheetError(
            sheet,
            [f"{sheet}: is empty: the first line must be the header {','.join(REQUIRED_COLUMNS)}"],
        )
    header_problems = _header_problems(sheet, header)
    if header_problems:
        raise SampleSheetError(sheet, header_problems)
    if not rows:  # an empty batch would "succeed" having analysed nothing
        raise SampleSheetError(
            sheet, [f"{sheet}: has a header but no slide rows: add one row per slide"]
        )
    known = ", ".join(sorted(assays))
    jobs: list[SlideJob] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    good_rows: list[tuple[int, dict[str, str]]] = []
    for i, raw in rows:
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{sheet}: row {i}"
        errs = []
        if raw.get(None):  # surplus values (an unquoted comma) are kept under None
            n_values = len(header) + len(raw[None])
            errs.append(
                f"{where}: {n_values} values for {len(header)} columns: quote a value that holds "
                'a comma ("a,b.svs")'
            )
        for col in REQUIRED_COLUMNS:
            if not row.get(col):
                errs.append(f"{where}: empty {col!r}")
        slide_id = row.get("slide_id", "")
        if slide_id and (problem := slide_id_problem(slide_id)):
            errs.append(f"{where}: {problem}")
        if slide_id in seen:
            errs.append(
                f"{where}: slide_id {slide_id!r} repeats row {seen[slide_id]}: give each slide its "
                "own slide_id"
            )
        assay = row.get("assay", "")
        if assay and assay not in assays:
            close = difflib.get_close_matches(assay, sorted(assays), n=1, cutoff=0.6)
            hint = f": did you mean {close[0]!r}?" if close else ";"
            errs.append(f"{where}: unknown assay {assay!r}{hint} (known: {known})")
        mpp: float | None = None
        if row.get("mpp"):
            try:
                mpp = float(row["mpp"])
                if not (math.isfinite(mpp) and 0.01 <= mpp <= 100):
                    raise ValueError
            except ValueError:
                errs.append(
                    f"{where}: mpp {row['mpp']!r} is not a pixel size: give µm per pixel between "
                    "0.01 and 100, with a decimal point (0.25), or leave it empty"
                )
        control = row.get("control", "").lower() or None
        if control is not None and control not in CONTROL_KINDS:
            close = difflib.get_close_matches(control, CONTROL_KINDS, n=1, cutoff=0.6)
            hint = f": did you mean {close[0]!r}?" if close else ""
            errs.append(
                f"{where}: control {row['control']!r} is not a control kind{hint} (write "
                "negative, positive, or leave it empty for a sample)"
            )
        if row.get("well") and (well_problem := layout_problems([(i, row)], sheet)):
            errs.append(well_problem[i])
        path = Path(row.get("path", ""))
        if not path.is_absolute():
            path = sheet.parent / path
        if row.get("path") and not path.exists():
            errs.append(f"{where}: slide file {path} does not exist")
        elif row.get("path") and path.is_dir():
            errs.append(f"{where}: {path} is a folder, not a slide file")
        if errs:
            problems.extend(errs)
            continue
        seen[slide_id] = i
        good_rows.append((i, row))
        jobs.append(
            SlideJob(
                slide_id,
                path,
                assay,
                row["patient_id"],
                mpp,
                row.get("section") or None,
                i,
                batch=row.get("batch") or None,
                control=control,
                condition=row.get("condition") or None,
                plate=row.get("plate") or None,
                well=canonical_well(row["well"]) if row.get("well") else None,
                replicate=row.get("replicate") or None,
            )  # fmt: skip
        )
    # across rows: a well given two conditions (or replicates); the later row is the bad one
    clashes = layout_problems(good_rows, sheet)
    if clashes:
        problems.extend(clashes.values())
        jobs = [j for j in jobs if j.row not in clashes]
    if problems and not skip_bad_rows:
        raise SampleSheetError(sheet, problems)
    return jobs, problems


def scan_folder(folder: str | Path) -> list[Path]:
    """Slide files under ``folder`` (recursive, by known extension), sorted; MRXS companion folders skipped."""
    folder = Path(folder)
    found = []
    for p in sorted(folder.rglob("*")):
        name = p.name.lower()
        # anything named like a slide is a job, even a folder, a named pipe or a broken link: its
        # failure line then says what is wrong instead of the scan leaving it out silently
        if not name.startswith(".") and name.endswith(SLIDE_EXTENSIONS):
            if name.endswith((".labels.tif", ".labels.tiff")):  # ground-truth label images
                continue
            found.append(p)
    return found


def jobs_for_input(
    source: str | Path,
    *,
    known_assays: Iterable[str],
    assay: str | None = None,
    mpp: float | None = None,
    overrides: Mapping[str, str] | None = None,
) -> tuple[list[SlideJob], list[str]]:
    """Jobs for a CLI input: a sample sheet CSV, a folder of slides, or one slide.

    A folder holding exactly one ``*.csv`` sample sheet uses it. Without a sheet, every slide is its own
    patient and ``assay`` must be given.
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    if src.is_dir():
        sheets = sorted(src.glob("*.csv"))
        if len(sheets) == 1:
            src = sheets[0]
    if src.suffix.lower() == ".csv":
        jobs, problems = read_sample_sheet(src, known_assays=known_assays, skip_bad_rows=True)
        if assay or mpp:
            jobs = [dataclasses.replace(j, assay=assay or j.assay, mpp=mpp or j.mpp) for j in jobs]
        return jobs, problems
    if assay is None:
        raise ValueError(
            f"no sample sheet for {src}: pass --assay (one of {', '.join(sorted(known_assays))}) "
            "or give a sample sheet CSV"
        )
    paths = scan_folder(src) if src.is_dir() else [src]
    jobs = []
    for p in paths:
        sid = re.sub(r"[^A-Za-z0-9._+-]", "_", p.name.split(".")[0]) or "slide"
        jobs.append(SlideJob(sid, p, assay, sid, mpp))
    return jobs, []
