"""The ``senpath`` command line: thin commands over the pipeline and exports (no analysis logic here)."""

from __future__ import annotations

import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from senpath.cli_regions import regions_app

app = typer.Typer(
    name="senpath",
    help="Measure senescence markers (SA-beta-gal, p16, Ki67) per cell in whole-slide images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # help and usage errors quote TOML tables ([analysis], [assay.*]): plain text, not rich markup
    rich_markup_mode=None,
)
console = Console(stderr=True)
app.add_typer(regions_app, name="regions")  # senpath regions import|tissue (senpath.cli_regions)
#: ``--debug``: print tracebacks (default: one line per problem; a batch's are in failures.log).
_DEBUG = False
DEBUG_HELP = "Print the traceback of every error (default: one line each; see failures.log)."


def _print_version(value: bool) -> None:
    if value:
        import senpath

        print(f"senpath {senpath.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help=DEBUG_HELP)] = False,
) -> None:
    """Measure senescence markers (SA-beta-gal, p16, Ki67) per cell in whole-slide images."""
    # one callback only: typer keeps the last one registered, so --version and --debug share it
    global _DEBUG
    _DEBUG = _DEBUG or debug


MppOpt = Annotated[
    float | None,
    typer.Option(
        "--mpp", help="Pixel size in µm for images without calibration (PNG/JPEG, photos)."
    ),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Your own nucleus model for the CNN: its nucleus_unet.json (or folder), as written by "
        "`python -m senpath.segment.export`. Default: the shipped model.",
    ),
]
SettingsOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML with [analysis] settings and extra [assay.*] tables."),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (CNN segmenter).")
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="auto | fp32 | bf16 | fp16 | onnx-fp32 | onnx-int8: how the CNN runs (auto: measured once per "
        "machine on a CPU, fp16 on CUDA).",
    ),
]


@app.command()
def run(
    input: Annotated[
        Path, typer.Argument(help="A sample sheet CSV, a folder of slides, or one slide.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder (one store per slide).")],
    config: SettingsOpt = None,
    assay: Annotated[
        str | None, typer.Option("--assay", help="Assay for all slides (ki67, p16, sabgal, ...).")
    ] = None,
    mpp: MppOpt = None,
    segmenter: Annotated[
        str | None, typer.Option("--segmenter", help="auto | cnn | classical.")
    ] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    model: ModelOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo slides that are already complete.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Run on a local dask cluster of N worker processes (N >= 2; 0/1: this process).",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Run on an existing dask cluster: its scheduler address (tcp://host:8786).",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help=DEBUG_HELP)] = False,
) -> None:
    """Analyse slides: segment nuclei, measure stains per cell, call markers, write results stores.

    Examples:

      senpath run sample_images/samples.csv --out results/

      senpath run slides/ --assay ki67 --out results/

      senpath run photo.png --assay p16 --mpp 0.5 --out results/

      senpath run samples.csv --out results/ --workers 4            (local dask cluster)

      senpath run samples.csv --out results/ --scheduler tcp://node01:8786   (SLURM, see docs)
    """
    from senpath.config import load_settings
    from senpath.pipeline import plan_batch, run_batch

    global _DEBUG
    _DEBUG = _DEBUG or debug
    if workers and scheduler:
        raise typer.BadParameter("--workers and --scheduler are mutually exclusive: give one")
    settings = load_settings(config)  # the whole file, checked once: every problem on its own line
    _check_environment()
    assays = settings.assays
    cfg = settings.analysis.replace(
        segmenter=segmenter, device=device, model=str(model) if model else None,
        precision=precision,
    )  # fmt: skip
    jobs, problems = plan_batch(input, assays=assays, assay=assay, mpp=mpp)
    for problem in problems:
        _error_line("sample sheet", problem)
    if dry_run:
        table = Table(title=f"plan: {len(jobs)} slide(s) -> {out}")
        for col in ("slide_id", "patient_id", "assay", "path"):
            table.add_column(col)
        for j in jobs:
            table.add_row(j.slide_id, j.patient_id, j.assay, str(j.path))
        Console().print(table)
        raise typer.Exit(1 if problems else 0)
    report = run_batch(
        jobs, out=out, config=cfg, assays=assays, force=force, progress=True,
        workers=workers, scheduler=scheduler,
    )  # fmt: skip
    table = Table(title=f"senpath run: {out}")
    for col in ("slide_id", "status", "cells", "seconds"):
        table.add_column(col)
    table.add_column("message", overflow="fold")  # a failure names its file: never cut it short
    for r in report:
        style = {"ok": "green", "skipped": "cyan", "failed": "red"}[r.status]
        table.add_row(
            r.slide_id,
            f"[{style}]{r.status}[/{style}]",
            str(r.n_cells),
            f"{r.seconds:.1f}",
            r.message,
        )
    Console().print(table)
    if _DEBUG:
        for r in report:
            if r.status == "failed" and r.traceback:
                console.print(f"--- {r.slide_id}", soft_wrap=True)
                console.print(r.traceback, markup=False, highlight=False, soft_wrap=True)
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
    by: Annotated[
        str,
        typer.Option(
            "--by", help="patient | slide | patient,region | slide,region | condition | well"
        ),
    ] = "patient",
    format: Annotated[
        str,
        typer.Option("--format", help="Comma-separated: csv,parquet,xlsx,geojson,anndata"),
    ] = "csv",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Table file stem (default RESULTS/markers_by_<by>); with geojson alone, the "
            "GeoJSON folder (default RESULTS/geojson; tables then go to RESULTS).",
        ),
    ] = None,
    include_unreliable: Annotated[
        bool,
        typer.Option(
            "--include-unreliable",
            help="Pool slides whose stains do not match their assay (stain QC warning) into the "
            "per-patient figures too; by default they are left out (the table names them).",
        ),
    ] = False,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="With --by condition: the condition the others are compared with (default: "
            "one named untreated, control, vehicle, DMSO, mock...).",
        ),
    ] = None,
) -> None:
    """Write the per-patient (or per-slide) marker table, or per-slide QuPath GeoJSON cells.

    Table formats already written at the same place by an earlier export are rewritten too, so no
    file keeps figures from before a review.

    Examples:

      senpath export results/ --by patient --format csv,xlsx

      senpath export results/ --format geojson --out qupath/   (one <slide_id>.geojson per slide)

      senpath export results/ --format anndata   (every cell in RESULTS/cells.h5ad)

      senpath export results/ --by condition --format csv,xlsx --reference untreated
      senpath export results/ --by patient,region   (one row per patient and region)
    """
    from senpath.export import (
        CELL_FORMATS,
        EXPORT_FORMATS,
        SLIDE_FORMATS,
        export_geojson,
        load_all,
        marker_table,
        stale_formats,
        write_anndata,
        write_table,
    )

    known = EXPORT_FORMATS + SLIDE_FORMATS + CELL_FORMATS
    formats = [f.strip().lower() for f in format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in known]
    if unknown:
        raise typer.BadParameter(f"unknown format(s) {', '.join(unknown)}; use {', '.join(known)}")
    stores = load_all(results)
    if not stores:
        console.print(f"[red]no complete results stores under {results}[/red]")
        raise typer.Exit(1)
    tables = [f for f in formats if f in EXPORT_FORMATS]
    stem = results / f"markers_by_{by.replace(',', '_').replace(' ', '')}"
    if "geojson" in formats:
        # --out names the GeoJSON folder here; the tables stay beside the stores, never in it
        folder = out or results / "geojson"
        for path in export_geojson(stores, folder):
            console.print(f"wrote {path}")
    elif out is not None:
        stem = out
    if tables and by in ("condition", "well"):  # culture plates: senpath.conditions
        from senpath.conditions import export_conditions

        for path in export_conditions(
            stores, results, by=by, formats=tables + stale_formats(stem, tables), stem=stem,
            reference=reference, include_unreliable=include_unreliable,
        ):  # fmt: skip
            console.print(f"wrote {path}")
    elif tables:
        # the same table in other formats from an earlier export would keep older figures
        # (uncorrected ones after a review): rewrite them too
        stale = stale_formats(stem, tables)
        if stale:
            console.print(f"also rewriting {', '.join(stale)} at {stem} (an earlier export)")
        for path in write_table(
            marker_table(stores, by=by, include_unreliable=include_unreliable),
            stem,
            tables + stale,
        ):
            console.print(f"wrote {path}")
    if "anndata" in formats:
        console.print(f"wrote {write_anndata(stores, stem.parent / 'cells.h5ad')}")


@app.command()
def spatial(
    results: Annotated[Path, typer.Argument(help="Results folder written by `senpath run`.")],
    grid_um: Annotated[
        float, typer.Option("--grid-um", help="Bin side of the density maps in µm.")
    ] = 100.0,
    field: Annotated[
        str,
        typer.Option(
            "--field", help="Hot-spot field: area (a field of --field-mm2) | cells (--field-cells)."
        ),
    ] = "area",
    field_mm2: Annotated[
        float, typer.Option("--field-mm2", help="Hot-spot field area in mm² (IKWG: about 0.2).")
    ] = 0.2,
    shape: Annotated[
        str, typer.Option("--shape", help="circle | square (--field area).")
    ] = "circle",
    field_cells: Annotated[
        int, typer.Option("--field-cells", help="Cells per hot-spot field (--field cells).")
    ] = 500,
    min_cells: Annotated[
        int, typer.Option("--min-cells", help="Fewest cells an area field must hold to count.")
    ] = 100,
    step_um: Annotated[
        float, typer.Option("--step-um", help="Spacing of the candidate hot-spot centres in µm.")
    ] = 50.0,
    format: Annotated[
        str, typer.Option("--format", help="Comma-separated table formats: csv,parquet,xlsx")
    ] = "csv",
) -> None:
    """Density maps and hot-spots of every slide, from the stored cells (no re-segmentation).

    Writes RESULTS/<slide>/density.ome.zarr (cells/mm², % positive per marker, senescence index on
    a grid in µm), RESULTS/<slide>/hotspots.json and RESULTS/hotspots_by_slide.csv (per slide and
    marker: hot-spot index, centre in µm, field area, cells in the field, global index).

    Examples:

      senpath spatial results/

      senpath spatial results/ --grid-um 50 --field cells --field-cells 500
    """
    from senpath.spatial import HotspotRule, run_spatial

    formats = [f.strip().lower() for f in format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("csv", "parquet", "xlsx")]
    if bad:
        raise typer.BadParameter(f"unknown format(s) {', '.join(bad)}; use csv, parquet, xlsx")
    rule = HotspotRule(
        field=field,  # type: ignore[arg-type]  # checked by HotspotRule
        field_area_mm2=field_mm2,
        shape=shape,  # type: ignore[arg-type]
        field_cells=field_cells,
        min_cells=min_cells,
        step_um=step_um,
    )
    written, failures = run_spatial(
        results,
        grid_um=grid_um,
        rule=rule,
        formats=formats,
        on_slide=lambda slide_id, paths: console.print(
            f"{escape(slide_id)}: wrote {', '.join(p.name for p in paths)}"
        ),
    )
    for folder, reason in failures:
        _error_line("failed", f"{folder}: {reason}")
    for path in written:
        if path.name.startswith("hotspots_by_slide"):
            console.print(f"wrote {path}")
    if failures:
        raise typer.Exit(1)


@app.command()
def profile(
    store: Annotated[Path, typer.Argument(help="One slide's results folder (RESULTS/<slide_id>).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="TOML file to write.")],
    name: Annotated[
        str | None,
        typer.Option("--name", help="Assay name of the profile (default: the slide's assay)."),
    ] = None,
) -> None:
    """Save a slide's stain vectors and marker thresholds as a lab profile for the whole batch.

    Pass the profile to later runs with --config; name the profile's assay in the sample sheet.

    Example: senpath profile results/P01-ki67 --out labA.toml --name ki67-labA
    """
    from senpath.corrections import load_results
    from senpath.export import profile_from_store
    from senpath.results import atomic_write_bytes

    text = profile_from_store(load_results(store), name=name)
    atomic_write_bytes(out, text.encode("utf-8"))
    console.print(f"wrote {out}")


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="Results folder written by `senpath run`.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file (default RESULTS/report.html).")
    ] = None,
    include_unreliable: Annotated[
        bool,
        typer.Option(
            "--include-unreliable",
            help="Pool slides with a stain QC warning into the per-patient figures too.",
        ),
    ] = False,
) -> None:
    """Write a self-contained HTML batch report: per-patient marker bars with 95% CIs, marker OD
    histograms with thresholds, QC thumbnails, the per-patient table and failed slides.

    Example: senpath report results/
    """
    from senpath.report import write_report

    path = write_report(results, out=out, include_unreliable=include_unreliable)
    console.print(f"wrote {path}")


@app.command()
def rescore(
    results: Annotated[Path, typer.Argument(help="Results folder written by `senpath run`.")],
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--threshold",
            help="A fixed OD threshold, MARKER=OD (sabgal=0.10); repeat for more markers.",
        ),
    ] = None,
    settings: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            help="A settings TOML: its marker rules, auto_threshold and control_percentile.",
        ),
    ] = None,
) -> None:
    """Re-apply marker thresholds to the stored per-cell measurements, without segmenting again.

    Rewrites the calls, summary, provenance (old and new thresholds) and QC pictures of every
    store; a reviewer's call flips and exclusions stay applied on top.

    Examples:

      senpath rescore results/ --threshold sabgal=0.10

      senpath rescore results/ --settings lab.toml   (e.g. [analysis] control_percentile = 95)
    """
    from senpath.rescore import rescore_results

    reports = rescore_results(results, thresholds=threshold or [], settings=settings)
    table = Table(title=f"senpath rescore: {results}")
    for col in ("slide_id", "status", "thresholds (OD)", "calls changed", "seconds"):
        table.add_column(col)
    table.add_column("message", overflow="fold")
    for r in reports:
        style = "green" if r.status == "ok" else "red"
        moved = "; ".join(
            f"{m} {r.before.get(m, float('nan')):.3f} -> {od:.3f}" for m, od in r.after.items()
        )
        table.add_row(
            r.slide_id, f"[{style}]{r.status}[/{style}]", moved, str(r.n_changed),
            f"{r.seconds:.1f}", escape(r.message),
        )  # fmt: skip
    Console().print(table)
    if any(r.status == "failed" for r in reports):
        raise typer.Exit(1)


@app.command()
def relink(
    store: Annotated[Path, typer.Argument(help="One slide's results folder (RESULTS/<slide_id>).")],
    slide: Annotated[Path, typer.Argument(help="Where the slide file is now.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Accept a file whose size differs from the analysed slide's."),
    ] = False,
) -> None:
    """Point a results folder to its slide after the slide was moved (recorded in its corrections log).

    The review in napari and nucleus edits read the slide's pixels from there; the analysis itself
    (provenance.json) is left as it was.

    Example: senpath relink results/P01-ki67 /archive/2024/P01-ki67.svs
    """
    from senpath.corrections import CorrectionError, CorrectionSession

    try:
        with CorrectionSession(store) as session:
            entry = session.relink_slide(slide, force=force)
    except CorrectionError as exc:
        _error_line("error", str(exc))
        raise typer.Exit(2) from None
    console.print(f"{store.name}: slide now at {entry['slide_path']} (was {entry['previous']})")


# `senpath review status | sign-off | reopen | import-qupath` (senpath/review_cli.py)
from senpath.review_cli import review_app  # noqa: E402

app.add_typer(review_app, name="review")


@app.command()
def register(
    results: Annotated[Path, typer.Argument(help="Results folder written by `senpath run`.")],
    patient: Annotated[
        list[str] | None,
        typer.Option(
            "--patient",
            help="Patient id (repeat for several; default every patient "
            "with two or more sections).",
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Slide id of the reference section (one --patient)."),
    ] = None,
    rule: Annotated[
        str,
        typer.Option("--rule", help="Co-localisation rule over per-grid-cell positive fractions."),
    ] = "sabgal>=0.3,ki67<=0.1",
    grid_um: Annotated[float, typer.Option("--grid-um", help="Map grid cell size in µm.")] = 100.0,
) -> None:
    """Register a patient's adjacent sections and write the cross-section co-localisation map
    (RESULTS/_sections/PATIENT/: registration.json, colocalisation.parquet, alignment.png).

    Example: senpath register results/ --patient P01
    """
    from senpath.registration import SectionsError, patients_with_sections, register_patient
    from senpath.registration._store import summary_lines

    patients = list(patient or patients_with_sections(results))
    if not patients:
        _error_line("error", f"{results}: no patient has two or more complete slide stores")
        raise typer.Exit(2)
    if reference is not None and len(patients) != 1:
        _error_line("error", "--reference needs exactly one --patient")
        raise typer.Exit(2)
    failed = 0
    for pid in patients:
        try:
            done = register_patient(results, pid, reference=reference, rule=rule, grid_um=grid_um)
        except (SectionsError, ValueError, OSError) as exc:
            _error_line("error", f"{pid}: {exc}")
            failed += 1
            continue
        import json

        record = json.loads((done.folder / "registration.json").read_text(encoding="utf-8"))
        for section, (used, *unused) in done.duplicates.items():
            console.print(
                escape(f"{pid}: section {section} has {len(unused) + 1} stores: registered "
                       f"{used}, not used {', '.join(unused)}"),
                soft_wrap=True,
            )  # fmt: skip
        for line in summary_lines(record):
            console.print(escape(f"{pid}: {line}"), soft_wrap=True)
        failed += sum(not r.ok for r in done.registrations)
        console.print(f"wrote {done.folder}")
    if failed:
        raise typer.Exit(1)


@app.command()
def info(
    slide: Annotated[Path, typer.Argument(help="A slide file.")],
    mpp: MppOpt = None,
) -> None:
    """Show how a slide is read: backend and why, pyramid levels, pixel size, tile size."""
    from senpath.io import open_slide

    Console().print(open_slide(slide, mpp=mpp).describe())


def _segmenter_for(
    method: str, assay: str, device: str, model: Path | None = None, config: Path | None = None
) -> object:
    """A callable rgb, mpp -> labels for ``segment`` and ``evaluate``: the assay's stains and,
    for the CNN, its counterstain normalisation as ``senpath run`` does it (``config``: a settings
    TOML whose ``[assay.*]`` tables and ``[analysis]`` settings apply; ``--model`` wins over its
    ``model``)."""
    from senpath.config import get_assay, load_settings
    from senpath.segment import resolve_method, segment_nuclei
    from senpath.slide_plan import counterstain_reference, reference_warnings
    from senpath.stain import StainSet

    settings = load_settings(config)  # the presets and defaults when None
    model_path = str(model) if model else settings.analysis.model
    method = resolve_method(method, model=model_path)
    assay_obj = get_assay(assay, settings.assays)
    stains = StainSet.from_names(assay_obj.stains)
    analysis = settings.analysis.replace(segmenter=method, model=model_path)
    reference = counterstain_reference(assay_obj, analysis, method=method)
    for line in reference_warnings(analysis, [(assay_obj, False)]):
        warnings.warn(line, stacklevel=2)

    def run(rgb: object, mpp: float) -> object:
        return segment_nuclei(
            rgb,  # type: ignore[arg-type]
            mpp=mpp,
            stains=stains,
            nuclear_stains=assay_obj.nuclear_stains,
            method=method,
            device=device,
            model=model_path,
            counterstain_reference_od=reference,
        )

    return run


@app.command()
def segment(
    image: Annotated[Path, typer.Argument(help="An image or slide.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output label image (uint32 TIFF).")],
    mpp: MppOpt = None,
    device: DeviceOpt = "auto",
    segmenter: Annotated[str, typer.Option("--segmenter", help="auto | cnn | classical.")] = "auto",
    model: ModelOpt = None,
    assay: Annotated[
        str, typer.Option("--assay", help="Stains for the classical segmenter (he, ki67, ...).")
    ] = "he",
    region: Annotated[
        str | None,
        typer.Option(
            "--region", help="x,y,width,height in µm (level 0); default: the whole image."
        ),
    ] = None,
    config: SettingsOpt = None,
) -> None:
    """Segment nuclei and write an instance label image on the input's pixel grid.

    Example: senpath segment tile.png --mpp 0.25 --out tile_labels.tif
    """
    import numpy as np
    import tifffile

    from senpath.io import open_slide

    slide = open_slide(image, mpp=mpp)
    level_mpp = slide.level_mpp(0)
    if region:
        try:
            x, y, w, h = (float(v) for v in region.split(","))
        except ValueError:
            raise typer.BadParameter("--region takes x,y,width,height in µm") from None
    else:
        x, y = 0.0, 0.0
        h, w = slide.shape[0] * slide.mpp[1], slide.shape[1] * slide.mpp[0]
    if (w / level_mpp) * (h / level_mpp) > 400e6:
        raise typer.BadParameter(
            "the region is over 400 megapixels: choose a --region, or use `senpath run` for whole slides"
        )
    rgb = slide.read_region(x, y, w, h, mpp=level_mpp)
    labels = _segmenter_for(segmenter, assay, device or "auto", model, config)(rgb, level_mpp)  # type: ignore[operator]
    out.parent.mkdir(parents=True, exist_ok=True)
    res = 1e4 / level_mpp
    tifffile.imwrite(
        out, np.asarray(labels, np.uint32), compression="zlib",
        resolution=(res, res), resolutionunit="CENTIMETER",
    )  # fmt: skip
    console.print(
        f"wrote {out}: {int(np.max(labels))} nuclei, {labels.shape[1]}x{labels.shape[0]} px"
    )


@app.command()
def evaluate(
    images: Annotated[Path, typer.Option("--images", help="Folder of RGB images.")],
    labels: Annotated[
        Path, typer.Option("--labels", help="Folder of instance label images (same stems).")
    ],
    mpp: Annotated[float, typer.Option("--mpp", help="Pixel size of the images in µm.")],
    device: DeviceOpt = "auto",
    segmenter: Annotated[str, typer.Option("--segmenter", help="auto | cnn | classical.")] = "auto",
    model: ModelOpt = None,
    assay: Annotated[
        str, typer.Option("--assay", help="Stains for the classical segmenter.")
    ] = "he",
    pattern: Annotated[str, typer.Option("--pattern", help="Glob of the images to use.")] = "*",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write scores as JSON.")
    ] = None,
    config: SettingsOpt = None,
) -> None:
    """Score segmentation against annotations: F1 at IoU 0.5, AJI and PQ.

    Pooled figures count all nuclei of all images together; "mean" averages the per-image scores.

    Examples:

      senpath evaluate --images monuseg/images --labels monuseg/labels --mpp 0.25

      senpath evaluate --images ki67 --labels ki67 --pattern "*_ihc.png" --mpp 0.25
    """
    import json

    from senpath.segment.evaluate import evaluate_folder

    seg = _segmenter_for(segmenter, assay, device or "auto", model, config)
    result = evaluate_folder(
        images,
        labels,
        mpp=mpp,
        pattern=pattern,
        predict=lambda rgb: seg(rgb, mpp),  # type: ignore[operator]
    )
    table = Table(title=f"segmentation vs {labels}")
    cols = ["image", "n_true", "n_pred", "f1", "aji", "pq"]
    for col in cols:
        table.add_column(col)
    for row in result.per_image.to_dict(orient="records"):
        table.add_row(
            *(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols)
        )
    Console().print(table)
    Console().print(
        f"pooled: F1 {result.pooled['f1']:.3f}, PQ {result.pooled['pq']:.3f} | per-image mean: "
        f"F1 {result.mean.get('f1', float('nan')):.3f}, AJI {result.mean.get('aji', float('nan')):.3f}, "
        f"PQ {result.mean.get('pq', float('nan')):.3f}"
    )
    if json_out:
        json_out.write_text(json.dumps(result.to_dict(), indent=2, default=str))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train the nucleus CNN (reproduces the shipped weights); `senpath train --help` lists options.

    Example: senpath train --out runs/r1 --minutes 90 --seed 0
    """
    from senpath.segment.train import main as train_main

    raise typer.Exit(train_main(list(ctx.args)))


def _check_environment() -> None:
    """The settings environment variables give (``SENPATH_PRECISION``, ``SENPATH_POST_WORKERS``),
    checked before a batch starts: a bad one is one line and exit code 2, not the same failure
    once per slide."""
    from senpath.post_workers import post_workers_on
    from senpath.segment.predict import precision_from_env

    problems = []
    for check in (precision_from_env, lambda: post_workers_on("cpu")):
        try:
            check()
        except ValueError as exc:
            problems.append(str(exc))
    for problem in problems:
        _error_line("environment", problem)
    if problems:
        raise typer.Exit(2)


def _error_line(label: str, line: str) -> None:
    """Print one problem as one line on stderr: never wrapped, never read as rich markup.

    A settings message quotes TOML (``[analysys]``), which rich would otherwise take for a style tag
    and drop; a long path must not be folded over several lines either.
    """
    console.print(f"[red]{label}:[/red] {escape(line)}", soft_wrap=True)


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """How the command line prints a warning: one line, ``warning: <message>`` (Python's default
    adds the source file, line number and code line); ``--debug`` keeps Python's form."""
    if _DEBUG:
        return _PYTHON_FORMATWARNING(message, category, filename, lineno, line)
    return "warning: " + " ".join(str(message).split()) + "\n"


_PYTHON_FORMATWARNING = warnings.formatwarning


def main() -> None:
    """Console-script entry point; turns expected errors into clear lines and exit code 2.

    An error with several problems (a settings file, a sample sheet) prints one line per problem;
    ``--debug`` (``senpath --debug CMD`` or ``senpath run --debug``) prints the traceback too.
    """
    from senpath.config import ConfigError
    from senpath.samplesheet import SampleSheetError

    warnings.formatwarning = _warning_line
    try:
        app()
    except (ConfigError, SampleSheetError, FileNotFoundError, ValueError, RuntimeError) as exc:
        if _DEBUG:
            traceback.print_exc()
        for line in str(exc).splitlines() or [type(exc).__name__]:
            _error_line("error", line)
        sys.exit(2)
    except Exception as exc:  # a bug or an unforeseen error: one line, the traceback on --debug
        if _DEBUG:
            traceback.print_exc()
        text = " ".join(str(exc).split())
        hint = "" if _DEBUG else " (run with --debug for the traceback)"
        _error_line("error", f"{type(exc).__name__}: {text}{hint}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
