"""``senpath regions``: give an analysed slide its regions without analysing it again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

regions_app = typer.Typer(
    help="Regions of analysed slides (QuPath annotations, the tissue outline): per-region figures.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console(stderr=True)

ExcludeOpt = Annotated[
    str | None,
    typer.Option(
        "--exclude",
        help="Comma-separated annotation classes whose cells are not counted (default: "
        "Exclude,Ignore*,Necrosis,Fold,Pen,Artefact,Artifact).",
    ),
]


def _exclusion_classes(text: str | None) -> tuple[str, ...]:
    from senpath.regions import EXCLUSION_CLASSES

    if text is None:
        return EXCLUSION_CLASSES
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _print_regions(slide_id: str, summary: dict[str, Any]) -> None:
    from senpath.region_store import region_text

    console.print(escape(f"{slide_id}: {region_text(summary)}"), soft_wrap=True)
    by_region = (summary.get("regions") or {}).get("by_region") or {}
    table = Table("region", "cells", "cells/mm²", *summary.get("markers", {}), "median nucleus µm²")
    for name, entry in by_region.items():
        per_mm2 = entry.get("cells_per_mm2")
        pct = [
            "-" if m["pct_positive"] is None else f"{m['pct_positive']:.1f}% +"
            for m in entry["markers"].values()
        ]
        area = entry.get("median_nucleus_area_um2")
        table.add_row(
            escape(name),
            str(entry["n_cells"]),
            "-" if per_mm2 is None else f"{per_mm2:.0f}",
            *pct,
            "-" if area is None else f"{area:.1f}",
        )
    console.print(table)


@regions_app.command("import")
def import_command(
    results: Annotated[Path, typer.Argument(help="Results folder written by `senpath run`.")],
    slide_id: Annotated[str, typer.Argument(help="The slide's id (its folder under RESULTS).")],
    geojson: Annotated[
        Path, typer.Argument(help="QuPath GeoJSON of the slide's annotations (level-0 pixels).")
    ],
    exclude: ExcludeOpt = None,
) -> None:
    """Attach QuPath annotations to an analysed slide: each cell gets its region, and the slide is
    re-summarised per region (cells in exclusion classes are not counted). No re-segmentation.

    Example: senpath regions import results/ P01-ki67 P01-ki67.geojson
    """
    from senpath.region_store import import_regions
    from senpath.results import read_results, store_folder

    folder = store_folder(results, slide_id)
    import_regions(folder, geojson, exclusion_classes=_exclusion_classes(exclude))
    _print_regions(slide_id, read_results(folder).summary)


@regions_app.command("tissue")
def tissue_command(
    results: Annotated[Path, typer.Argument(help="Results folder written by `senpath run`.")],
    slide_id: Annotated[str, typer.Argument(help="The slide's id (its folder under RESULTS).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Also write the tissue outline as QuPath GeoJSON here."),
    ] = None,
) -> None:
    """Give an analysed slide one generated region, Tissue: the outline of its tissue mask (the
    analysis' own settings), so cells off the mask count as Unannotated. Reads the slide.

    Example: senpath regions tissue results/ P01-ki67
    """
    from senpath.region_store import tissue_regions
    from senpath.results import atomic_write_bytes, read_results, store_folder

    folder = store_folder(results, slide_id)
    data = tissue_regions(folder)
    if out is not None:
        atomic_write_bytes(out, data)
        console.print(f"wrote {out}")
    _print_regions(slide_id, read_results(folder).summary)
