"""Culture plates: well names, plate formats, and a batch's layout (which slide is which well).

A culture experiment photographs wells of multiwell plates (one or several fields per well); the
sample sheet says, per image, its ``condition`` (treated, untreated, ...), ``plate``, ``well`` (``A1``
... ``H12`` on a 96-well plate, ``A01`` ... ``P24`` on a 384-well plate) and biological
``replicate``. A batch writes these columns to ``<results>/layout.csv`` (:func:`record_layout`), so
the exports and the report group the stored slides by condition and draw plate maps without the
sheet (:mod:`senpath.conditions`). The layout is not part of a store's identity: correcting a
condition name in the sheet and running again (every slide skipped as complete) updates the layout
without analysing anything again.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senpath.results import atomic_write_bytes

#: The batch's layout file under the results root.
LAYOUT = "layout.csv"
#: Sample-sheet columns of the layout, in the file's order after ``slide_id``.
LAYOUT_COLUMNS = ("condition", "plate", "well", "replicate", "control")
#: Standard plate formats: wells -> (rows, columns).
PLATE_FORMATS: dict[int, tuple[int, int]] = {
    6: (2, 3),
    12: (3, 4),
    24: (4, 6),
    48: (6, 8),
    96: (8, 12),
    384: (16, 24),
}
_WELL = re.compile(r"^([A-Za-z])\s*0*(\d{1,2})$")
_MAX_ROWS, _MAX_COLUMNS = PLATE_FORMATS[384]


def parse_well(text: str) -> tuple[int, int]:
    """The (row, column) of a well name, both counted from 0: ``"B3"`` and ``"b03"`` -> ``(1, 2)``.

    Raises
    ------
    ValueError
        When ``text`` is not a well of a plate of up to 384 wells (rows A-P, columns 1-24).
    """
    m = _WELL.match(text.strip())
    if m:
        row, column = ord(m[1].upper()) - ord("A"), int(m[2]) - 1
        if row < _MAX_ROWS and 0 <= column < _MAX_COLUMNS:
            return row, column
    raise ValueError(
        f"well {text!r} is not a well name: write a row letter A-P and a column 1-24 "
        "(A1, B03, H12, P24)"
    )


def well_name(row: int, column: int) -> str:
    """The canonical name of a well: a row letter and a two-digit column (``B03``)."""
    return f"{chr(ord('A') + row)}{column + 1:02d}"


def canonical_well(text: str) -> str:
    """``"b3"`` -> ``"B03"`` (see :func:`parse_well`)."""
    return well_name(*parse_well(text))


def plate_format(wells: Iterable[str]) -> tuple[int, int]:
    """(rows, columns) of the smallest standard plate that holds every one of ``wells``."""
    positions = [parse_well(w) for w in wells]
    need_rows = max((r for r, _ in positions), default=0) + 1
    need_cols = max((c for _, c in positions), default=0) + 1
    for rows, columns in PLATE_FORMATS.values():
        if need_rows <= rows and need_cols <= columns:
            return rows, columns
    return PLATE_FORMATS[384]


@dataclass(frozen=True)
class Placement:
    """Where one image of a batch belongs in the experiment (empty fields: not given)."""

    slide_id: str
    condition: str | None = None
    plate: str | None = None
    well: str | None = None
    replicate: str | None = None
    control: str | None = None

    @property
    def well_key(self) -> tuple[str, str] | None:
        """``(plate, well)`` of an image of a well (``None``: the image is its own unit)."""
        return None if self.well is None else (self.plate or "", self.well)


def layout_problems(rows: Sequence[tuple[int, Mapping[str, str]]], sheet: Path) -> dict[int, str]:
    """Problems of a sample sheet's layout columns, one line per bad row (keyed by row number).

    ``rows``: (row number, row) pairs, each row a mapping of column to (stripped) text. A well name
    that is not one, and a well of a plate given two conditions or two replicates (rows of one well
    must describe the same cells), are problems; the second row of a clash names the first.
    """
    problems: dict[int, str] = {}
    first: dict[tuple[str, str], tuple[int, str, str]] = {}
    for number, row in rows:
        text = row.get("well") or ""
        if not text:
            continue
        try:
            well = canonical_well(text)
        except ValueError as exc:
            problems[number] = f"{sheet}: row {number}: {exc}"
            continue
        plate = row.get("plate") or ""
        key = (plate, well)
        condition, replicate = row.get("condition") or "", row.get("replicate") or ""
        if key not in first:
            first[key] = (number, condition, replicate)
            continue
        other, other_condition, other_replicate = first[key]
        where = f"well {well}" + (f" of plate {plate!r}" if plate else "")
        if condition != other_condition:
            problems[number] = (
                f"{sheet}: row {number}: {where} is condition {condition!r} here but "
                f"{other_condition!r} in row {other}: one well holds one condition"
            )
        elif replicate != other_replicate:
            problems[number] = (
                f"{sheet}: row {number}: {where} is replicate {replicate!r} here but "
                f"{other_replicate!r} in row {other}: one well belongs to one replicate"
            )
    return problems


def record_layout(out: str | Path, placements: Iterable[Placement]) -> Path | None:
    """Write (or update) ``<out>/layout.csv`` with the batch's placements; returns its path.

    Slides already in the file and not in ``placements`` keep their rows (an earlier batch into
    the same results folder). Nothing is written when no placement says anything and there is no
    file yet (a batch of tissue sections).
    """
    path = Path(out) / LAYOUT
    placements = list(placements)
    known = read_layout(out)
    said = any(any(getattr(p, c) for c in LAYOUT_COLUMNS) for p in placements)
    if not said and not known:
        return None
    known.update({p.slide_id: p for p in placements})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("slide_id", *LAYOUT_COLUMNS))
    for slide_id in sorted(known):
        p = known[slide_id]
        writer.writerow((slide_id, *(getattr(p, c) or "" for c in LAYOUT_COLUMNS)))
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


def read_layout(root: str | Path) -> dict[str, Placement]:
    """The placements of ``<root>/layout.csv`` by slide id (``{}`` when there is none).

    Raises
    ------
    ValueError
        When the file is not a layout (no ``slide_id`` column) or names a well that is not one;
        the message names the file and the row.
    """
    path = Path(root) / LAYOUT
    if not path.is_file():
        return {}
    out: dict[str, Placement] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if "slide_id" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no slide_id column: it is not a senpath layout file")
        for number, raw in enumerate(reader, start=2):
            values: dict[str, Any] = {c: (raw.get(c) or "").strip() or None for c in LAYOUT_COLUMNS}
            if values["well"]:
                try:
                    values["well"] = canonical_well(values["well"])
                except ValueError as exc:
                    raise ValueError(f"{path}: row {number}: {exc}") from None
            slide_id = (raw.get("slide_id") or "").strip()
            if slide_id:
                out[slide_id] = Placement(slide_id, **values)
    return out
