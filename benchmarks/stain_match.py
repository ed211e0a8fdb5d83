"""Stain QC against wrong assays: every image run under every two-stain marker assay.

Prints one row per image: per assay, ``ok`` or what flags it (``residual``: the residual rule of
:func:`senpath.stain.stain_qc`; ``hue:NAME``: :func:`senpath.stain_match.better_fitting_assays` names
another assay). Images: the bundled samples and, when ``../shared/data`` is there, the real Ki67
tiles, regions and IHC image (0.25 µm/px), plus two synthetic culture fields.

    python benchmarks/stain_match.py
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import tifffile

from senpath import synth
from senpath.config import AnalysisConfig, load_assays
from senpath.slide_plan import plan_slide
from senpath.stain import stain_qc

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RUN_AS = ("ki67", "p16", "sabgal", "sabgal-eosin", "sabgal-culture")


def images(tmp: Path) -> list[tuple[Path, float | None]]:
    """(path, mpp override) of every image the benchmark runs."""
    found: list[tuple[Path, float | None]] = [
        (p, None) for p in sorted((ROOT / "sample_images").glob("*.tif"))
    ]
    if SHARED.is_dir():
        real = sorted((SHARED / "ki67_ihc_tiles").glob("*_ihc.png"))
        real += sorted((SHARED / "ki67_ihc_rois").glob("*.png"))
        real += [SHARED / "unlabelled" / "skimage_ihc.png"]
        found += [(p, 0.25) for p in real]
    for seed in (0, 1):
        path = tmp / f"culture_{seed}.tif"
        tifffile.imwrite(path, synth.render_culture_field(shape=(512, 512), seed=seed).rgb)
        found.append((path, 1.0))
    return found


def main() -> None:
    warnings.filterwarnings("ignore")
    assays = load_assays()
    config = AnalysisConfig(segmenter="classical")
    with tempfile.TemporaryDirectory() as tmp:
        for path, mpp in images(Path(tmp)):
            row = []
            for name in RUN_AS:
                plan = plan_slide(path, assay=assays[name], config=config, mpp=mpp)
                qc = stain_qc(plan.stain_estimate, assay=name, assay_match=plan.stain_match)
                match = plan.stain_match or {}
                flags = []
                if qc["residual_fraction"] > qc["max_residual_fraction"]:  # type: ignore[operator]
                    flags.append("residual")
                if match.get("better_fit"):
                    flags.append("hue:" + str(match["better_fit"]).split(" ")[0])
                row.append(f"{name}={'+'.join(flags) or 'ok'}")
            print(f"{path.name:28s}", " ".join(row), flush=True)


if __name__ == "__main__":
    main()
