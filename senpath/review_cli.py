"""``senpath review``: a slide's review status, sign-off, and QuPath-edited cells read back.

Thin commands over :mod:`senpath.corrections` (status, sign-off) and :mod:`senpath.qupath_import`;
registered on the main app by :mod:`senpath.cli`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

review_app = typer.Typer(
    name="review",
    help="Review status and sign-off of slides; import cells edited in QuPath as corrections.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console(stderr=True)

ResultsArg = Annotated[Path, typer.Argument(help="Results folder written by `senpath run`.")]
SlideArg = Annotated[str, typer.Argument(help="The slide's id (its folder under RESULTS).")]
ReviewerOpt = Annotated[
    str | None,
    typer.Option("--reviewer", help="Who does it (default: $SENPATH_USER or the login name)."),
]


def _fail(line: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
    return typer.Exit(2)


def _store(results: Path, slide: str) -> Path:
    from senpath.results import is_complete, store_folder

    try:
        folder = store_folder(results, slide)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if not is_complete(folder):
        raise _fail(f"{folder}: no complete results store of slide {slide!r} here")
    return folder


@review_app.command("status")
def status(results: ResultsArg) -> None:
    """List each slide's review status: not started, in review, signed off (who and when).

    Example: senpath review status results/
    """
    from senpath.corrections import log_matches, n_corrections, read_log, review_status
    from senpath.results import find_stores, is_complete, read_manifest

    stores = [results] if is_complete(results) else find_stores(results)
    if not stores:
        raise _fail(f"no complete results stores under {results}")
    table = Table(title=f"review status: {results}")
    for col in ("slide_id", "status", "by", "when (UTC)", "corrections", "note"):
        table.add_column(col)
    for folder in stores:
        entries = read_log(folder)
        stale = not log_matches(entries, read_manifest(folder) or {})
        st = review_status([] if stale else entries)
        note = "its log is of an earlier analysis (not applied)" if stale else st.note
        table.add_row(
            folder.name,
            st.status,
            st.reviewer,
            st.time[:19].replace("T", " "),
            str(0 if stale else n_corrections(entries)),
            note,
        )
    Console().print(table)


def _change_status(
    results: Path, slide: str, reviewer: str | None, change: Callable[[Any], None]
) -> None:
    """Apply ``change`` to the slide's correction session, save, and print the new status."""
    from senpath.corrections import CorrectionError, CorrectionSession

    folder = _store(results, slide)
    try:
        with CorrectionSession(folder, user=reviewer) as session:
            change(session)
            session.save()
            line = session.review.describe()
    except CorrectionError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{slide}: {line}")


@review_app.command("sign-off")
def sign_off(
    results: ResultsArg,
    slide: SlideArg,
    reviewer: Annotated[str, typer.Option("--reviewer", help="Who signs the slide off.")],
    note: Annotated[str | None, typer.Option("--note", help="A comment kept with it.")] = None,
) -> None:
    """Sign a slide's review off (recorded in its corrections log with the reviewer and time).

    A later edit of the slide re-opens it (back to "in review", logged).

    Example: senpath review sign-off results/ P01-ki67 --reviewer "A. Pathologist"
    """
    _change_status(
        results, slide, reviewer, lambda session: session.sign_off(reviewer=reviewer, note=note)
    )


@review_app.command("reopen")
def reopen(
    results: ResultsArg,
    slide: SlideArg,
    reason: Annotated[str, typer.Option("--reason", help="Why the sign-off is re-opened.")],
    reviewer: ReviewerOpt = None,
) -> None:
    """Re-open a signed-off slide for review (status back to "in review", with the reason).

    Example: senpath review reopen results/ P01-ki67 --reason "recount the margin" --reviewer bob
    """
    _change_status(results, slide, reviewer, lambda session: session.reopen(reason=reason))


@review_app.command("import-qupath")
def import_qupath(
    results: ResultsArg,
    slide: SlideArg,
    geojson: Annotated[Path, typer.Argument(help="The GeoJSON file QuPath exported.")],
    reviewer: ReviewerOpt = None,
    tolerance_um: Annotated[
        float,
        typer.Option(
            "--tolerance-um",
            min=0.0,
            help="Largest nucleus-centroid distance (µm) for matching a cell without its id.",
        ),
    ] = 3.0,
    keep_deleted: Annotated[
        bool,
        typer.Option(
            "--keep-deleted",
            help="Do not exclude the cells the file lacks (a file of part of the slide).",
        ),
    ] = False,
    no_add: Annotated[
        bool,
        typer.Option("--no-add", help="Note the cells drawn in QuPath instead of adding them."),
    ] = False,
) -> None:
    """Read cells edited in QuPath back as corrections (logged with source "qupath", undoable).

    Changed classifications set the calls, deleted cells and Ignore* cells are excluded, cells
    drawn in QuPath are added as nuclei. Export the cells first with
    `senpath export RESULTS --format geojson`.

    Example: senpath review import-qupath results/ P01-ki67 qupath/P01-ki67.geojson --reviewer anna
    """
    from senpath.corrections import CorrectionError, CorrectionSession
    from senpath.qupath_import import import_qupath_cells

    folder = _store(results, slide)
    if not geojson.is_file():
        raise _fail(f"{geojson}: no such file")
    try:
        with CorrectionSession(folder, user=reviewer) as session:
            done = import_qupath_cells(
                session,
                geojson,
                tolerance_um=tolerance_um,
                deletions=not keep_deleted,
                add_nuclei=not no_add,
            )
            session.save()
    except CorrectionError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{slide}: {done.describe()}", soft_wrap=True)
    for line in done.notes:
        console.print(f"  left aside: {escape(line)}", soft_wrap=True)
