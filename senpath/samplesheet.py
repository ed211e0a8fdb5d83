"""Sample sheets and batch inputs: which slides to analyse, for which patient, with which assay.

A sample sheet is a CSV with columns ``patient_id,slide_id,path,assay`` and optional ``mpp`` and
``section``. Relative paths resolve against the sheet's folder. Every row is validated and all problems
are reported together, each with its row number, so a user fixes the sheet in one go.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: File extensions that a folder scan picks up as slides.
SLIDE_EXTENSIONS = (
    ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".tif", ".tiff", ".ome.tif",
    ".ome.tiff", ".png", ".jpg", ".jpeg",
)  # fmt: skip
REQUIRED_COLUMNS = ("patient_id", "slide_id", "path", "assay")
_SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class SampleSheetError(ValueError):
    """A sample sheet with problems; ``problems`` lists one message per bad row or column."""

    def __init__(self, sheet: Path, problems: list[str]) -> None:
        self.sheet = sheet
        self.problems = problems
        super().__init__(
            f"sample sheet {sheet} has {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )


@dataclass(frozen=True)
class SlideJob:
    """One slide to analyse."""

    slide_id: str
    path: Path
    assay: str
    patient_id: str
    mpp: float | None = None
    section: str | None = None
    row: int | None = None  # row number in the sample sheet (1 = first data row), for messages


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
    try:
        with open(sheet, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SampleSheetError(sheet, [f"cannot read the file: {exc}"]) from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise SampleSheetError(
            sheet,
            [f"missing column(s) {missing}; the header must include {list(REQUIRED_COLUMNS)}"],
        )
    jobs: list[SlideJob] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(rows, start=1):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"row {i}"
        errs = []
        for col in REQUIRED_COLUMNS:
            if not row.get(col):
                errs.append(f"{where}: empty {col!r}")
        slide_id = row.get("slide_id", "")
        if slide_id and not _SLIDE_ID.match(slide_id):
            errs.append(
                f"{where}: slide_id {slide_id!r} may only use letters, digits, '.', '_', '+', '-'"
            )
        if slide_id in seen:
            errs.append(f"{where}: slide_id {slide_id!r} repeats row {seen[slide_id]}")
        assay = row.get("assay", "")
        if assay and assay not in assays:
            errs.append(f"{where}: unknown assay {assay!r}; known: {', '.join(sorted(assays))}")
        mpp: float | None = None
        if row.get("mpp"):
            try:
                mpp = float(row["mpp"])
                if not (math.isfinite(mpp) and 0.01 <= mpp <= 100):
                    raise ValueError
            except ValueError:
                errs.append(f"{where}: mpp {row['mpp']!r} is not a pixel size in µm (0.01-100)")
        path = Path(row.get("path", ""))
        if not path.is_absolute():
            path = sheet.parent / path
        if row.get("path") and not path.exists():
            errs.append(f"{where}: slide file {path} does not exist")
        if errs:
            problems.extend(errs)
            continue
        seen[slide_id] = i
        jobs.append(
            SlideJob(slide_id, path, assay, row["patient_id"], mpp, row.get("section") or None, i)
        )
    if problems and not skip_bad_rows:
        raise SampleSheetError(sheet, problems)
    return jobs, problems


def scan_folder(folder: str | Path) -> list[Path]:
    """Slide files under ``folder`` (recursive, by known extension), sorted; MRXS companion folders skipped."""
    folder = Path(folder)
    found = []
    for p in sorted(folder.rglob("*")):
        name = p.name.lower()
        if p.is_file() and not name.startswith(".") and name.endswith(SLIDE_EXTENSIONS):
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
            jobs = [
                SlideJob(
                    j.slide_id,
                    j.path,
                    assay or j.assay,
                    j.patient_id,
                    mpp or j.mpp,
                    j.section,
                    j.row,
                )
                for j in jobs
            ]
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
