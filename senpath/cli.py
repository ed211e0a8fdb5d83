"""The ``senpath`` command line: thin commands over the pipeline and exports (no analysis logic here)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="senpath",
    help="Measure senescence markers (SA-beta-gal, p16, Ki67) per cell in whole-slide images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

MppOpt = Annotated[
    float | None,
    typer.Option("--mpp", help="Pixel size in µm for images without calibration (PNG/JPEG, photos)."),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (CNN segmenter).")
]


@app.command()
def run(
    input: Annotated[Path, typer.Argument(help="A sample sheet CSV, a folder of slides, or one slide.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder (one store per slide).")],
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML with [analysis] settings and extra [assay.*].")
    ] = None,
    assay: Annotated[
        str | None, typer.Option("--assay", help="Assay for all slides (ki67, p16, sabgal, ...).")
    ] = None,
    mpp: MppOpt = None,
    segmenter: Annotated[
        str | None, typer.Option("--segmenter", help="auto | cnn | classical.")
    ] = None,
    device: DeviceOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Redo slides that are already complete.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.")] = False,
) -> None:
    """Analyse slides: segment nuclei, measure stains per cell, call markers, write results stores.

    Examples:

      senpath run sample_images/samples.csv --out results/

      senpath run slides/ --assay ki67 --out results/

      senpath run photo.png --assay p16 --mpp 0.5 --out results/
    """
    from senpath.config import load_assays, load_config
    from senpath.pipeline import plan_batch, run_batch

    assays = load_assays(config)
    cfg = load_config(config).replace(segmenter=segmenter, device=device)
    jobs, problems = plan_batch(input, assays=assays, assay=assay, mpp=mpp)
    for problem in problems:
        console.print(f"[red]sample sheet:[/red] {problem}")
    if dry_run:
        table = Table(title=f"plan: {len(jobs)} slide(s) -> {out}")
        for col in ("slide_id", "patient_id", "assay", "path"):
            table.add_column(col)
        for j in jobs:
            table.add_row(j.slide_id, j.patient_id, j.assay, str(j.path))
        Console().print(table)
        raise typer.Exit(1 if problems else 0)
    report = run_batch(jobs, out=out, config=cfg, assays=assays, force=force, progress=True)
    table = Table(title=f"senpath run: {out}")
    for col in ("slide_id", "status", "cells", "seconds", "message"):
        table.add_column(col)
    for r in report:
        style = {"ok": "green", "skipped": "cyan", "failed": "red"}[r.status]
        table.add_row(
            r.slide_id, f"[{style}]{r.status}[/{style}]", str(r.n_cells), f"{r.seconds:.1f}", r.message
        )
    Console().print(table)
    n_failed = sum(r.status == "failed" for r in report) + len(problems)
    counts = {s: sum(r.status == s for r in report) for s in ("ok", "skipped", "failed")}
    console.print(
        f"{counts['ok']} ok, {counts['skipped']} skipped (already complete), "
        f"{counts['failed']} failed, {len(problems)} bad sample-sheet row(s)"
    )
    if n_failed:
        raise typer.Exit(1)


@app.command()
def export(
    results: Annotated[Path, typer.Argument(help="Results folder written by `senpath run`.")],
    by: Annotated[str, typer.Option("--by", help="patient | slide")] = "patient",
    format: Annotated[str, typer.Option("--format", help="Comma-separated: csv,parquet,xlsx")] = "csv",
    out: Annotated[
        Path | None, typer.Option("--out", help="File stem (default RESULTS/markers_by_<by>).")
    ] = None,
) -> None:
    """Write the per-patient (or per-slide) marker table from committed results.

    Example: senpath export results/ --by patient --format csv,xlsx
    """
    from senpath.export import load_all, marker_table, write_table

    stores = load_all(results)
    if not stores:
        console.print(f"[red]no complete results stores under {results}[/red]")
        raise typer.Exit(1)
    table = marker_table(stores, by=by)
    stem = out or results / f"markers_by_{by}"
    for path in write_table(table, stem, [f.strip() for f in format.split(",") if f.strip()]):
        console.print(f"wrote {path}")


@app.command()
def info(
    slide: Annotated[Path, typer.Argument(help="A slide file.")],
    mpp: MppOpt = None,
) -> None:
    """Show how a slide is read: backend and why, pyramid levels, pixel size, tile size."""
    from senpath.io import open_slide

    Console().print(open_slide(slide, mpp=mpp).describe())


def main() -> None:
    """Console-script entry point; turns expected errors into one clear line and exit code 2."""
    from senpath.config import ConfigError
    from senpath.samplesheet import SampleSheetError

    try:
        app()
    except (ConfigError, SampleSheetError, FileNotFoundError, ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
