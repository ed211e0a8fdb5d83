"""Assays, marker intensity levels and slide parameters of the synthetic slide generator.

The assay tables (stains of each assay, chromogen of each marker), :data:`MARKER_LEVEL_OD`, the
:class:`SynthParams` a slide is drawn from, the records :func:`~senpath.synth.render_region` and
:func:`~senpath.synth.write_slide` return, and the validation of their common arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

ASSAYS: tuple[str, ...] = ("ki67", "p16", "sabgal", "sabgal-eosin", "sabgal+ki67", "p16+ki67")

#: Mean chromogen concentration (OD along the unit stain vector, inside the marker's compartment) for
#: intensity levels 0, 1+, 2+, 3+; centred in the scoring bins [0.15, 0.375), [0.375, 0.70), >= 0.70.
MARKER_LEVEL_OD: dict[int, float] = {0: 0.0, 1: 0.25, 2: 0.52, 3: 0.95}

#: Stains present in each assay's image (counterstain first), i.e. the stain set that deconvolves it.
ASSAY_STAINS: dict[str, tuple[str, ...]] = {
    "ki67": ("hematoxylin", "dab"),
    "p16": ("hematoxylin", "dab"),
    "sabgal": ("nuclear_fast_red", "xgal"),
    "sabgal-eosin": ("eosin", "xgal"),
    "sabgal+ki67": ("hematoxylin", "xgal", "dab"),
    "p16+ki67": ("hematoxylin", "dab", "fast_red"),
}

#: Chromogen of each marker in each assay.
ASSAY_MARKERS: dict[str, dict[str, str]] = {
    "ki67": {"ki67": "dab"},
    "p16": {"p16": "dab"},
    "sabgal": {"sabgal": "xgal"},
    "sabgal-eosin": {"sabgal": "xgal"},
    "sabgal+ki67": {"sabgal": "xgal", "ki67": "dab"},
    "p16+ki67": {"p16": "dab", "ki67": "fast_red"},
}


@dataclass(frozen=True)
class SynthParams:
    """Parameters of a synthetic slide; all sizes in µm, OD in optical-density units.

    Attributes
    ----------
    tissue_fraction : float
        Expected fraction of the slide area covered by tissue (1.0: no glass). The tissue field is
        irregular at scales up to ~2.4 mm, so small regions are mostly tissue or mostly glass.
    cell_density_per_mm2 : float
        Nucleus density in the most cellular tissue (about, for default nucleus sizes; at most ~2,900
        per mm² with this cell lattice).
    cellularity_min : float
        Relative cell density in the least cellular (stroma-rich) areas, 0-1.
    senescent_fraction : float
        Fraction of cells that are senescent.
    ki67_positive_fraction : float
        Fraction of non-senescent cells that are Ki67+ (senescent cells are always Ki67-).
    p16_positive_fraction_senescent, p16_positive_fraction_other : float
        Fraction p16+ among senescent and among other cells.
    sabgal_positive_fraction_senescent, sabgal_positive_fraction_other : float
        Fraction SA-beta-gal+ among senescent and among other cells.
    level_weights_senescent, level_weights_other : (3,) floats
        Relative frequency of 1+, 2+, 3+ among positive cells (p16, SA-beta-gal).
    ki67_level_weights : (3,) floats
        Relative frequency of 1+, 2+, 3+ among Ki67+ cells.
    marker_od_scale : float
        Strength of every chromogen: the marker ODs of :data:`MARKER_LEVEL_OD` are multiplied by it
        (0.45: a faint stain, 1+ cells near 0.11 OD, as culture X-gal often is; 1: as preset).
    marker_background_od : float
        Chromogen every cell takes up whatever its level (non-specific staining; a negative
        control shows it too), added before the jitter.
    level_jitter : float
        Relative per-cell variation of a marker's OD around its level (uniform, +/-).
    nucleus_diameter_um, nucleus_diameter_sd_um : float
        Equivalent diameter of normal nuclei.
    senescent_nucleus_diameter_um, senescent_nucleus_diameter_sd_um : float
        Equivalent diameter of senescent (enlarged) nuclei.
    nucleus_aspect_max : float
        Largest major/minor axis ratio of nuclei.
    nucleus_shape_noise : float
        Amplitude of the low-order harmonic wobble of nuclear outlines (relative radius).
    cell_diameter_ratio, senescent_cell_diameter_ratio : float
        Cell body diameter over nucleus diameter (normal, senescent: big flat cells).
    nucleus_counterstain_od, cytoplasm_counterstain_od, stroma_counterstain_od : float
        Counterstain (hematoxylin or nuclear fast red) concentration in nuclei, cytoplasm and stroma.
    eosin_nucleus_od, eosin_cytoplasm_od, eosin_stroma_od : float
        Eosin concentrations of the ``sabgal-eosin`` assay (nuclei denser than cytoplasm).
    chromatin_contrast : float
        Strength of the chromatin texture in nuclei (0: flat).
    blur_sigma_um : float
        Standard deviation of the Gaussian optical blur, applied to intensity.
    noise_sd : float
        Sensor noise (8-bit grey levels) at glass brightness; shot noise scales with sqrt(intensity).
    illumination_falloff : float
        Relative darkening at the corners of each camera field of view (vignetting).
    field_of_view_um : float
        Size of the camera field of view that the vignetting repeats with.
    background_rgb : (3,) floats
        Glass intensity I0 (R, G, B) at the centre of a field of view.
    jpeg_quality : int or None
        Quality of JPEG artefacts (``render_region``: round trip; ``write_slide``: the tile
        compression quality, or a per-tile round trip for lossless compression). None: no artefacts.
    ki67_patches : tuple of (x_um, y_um, radius_um, fraction)
        Proliferative patches: inside each circle (slide µm), the Ki67+ fraction of
        non-senescent cells is ``fraction`` instead of ``ki67_positive_fraction`` (the last patch
        that holds a cell wins). Known spatial structure for hot-spot tests.
    stain_vectors : ((name, (r, g, b)), ...)
        OD vectors that replace the reference ones (:data:`senpath.stain.REFERENCE_STAINS`) for
        the named stains (normalised here), so a slide is drawn with stains perturbed from the
        pipeline's presets, as a real lab's are. Empty: the reference vectors.
    max_render_mpp : float
        ``render_region`` renders grids coarser than this at this pixel size and area-averages them;
        ``write_slide`` renders the levels up to this pixel size directly and derives coarser ones by
        2x area-mean downsampling.
    """

    tissue_fraction: float = 0.6
    cell_density_per_mm2: float = 2500.0
    cellularity_min: float = 0.25
    senescent_fraction: float = 0.15
    ki67_positive_fraction: float = 0.25
    p16_positive_fraction_senescent: float = 0.85
    p16_positive_fraction_other: float = 0.05
    sabgal_positive_fraction_senescent: float = 0.9
    sabgal_positive_fraction_other: float = 0.03
    level_weights_senescent: tuple[float, float, float] = (0.2, 0.35, 0.45)
    level_weights_other: tuple[float, float, float] = (0.55, 0.3, 0.15)
    ki67_level_weights: tuple[float, float, float] = (0.3, 0.4, 0.3)
    marker_od_scale: float = 1.0
    marker_background_od: float = 0.0
    level_jitter: float = 0.08
    nucleus_diameter_um: float = 7.0
    nucleus_diameter_sd_um: float = 0.8
    senescent_nucleus_diameter_um: float = 12.5
    senescent_nucleus_diameter_sd_um: float = 1.0
    nucleus_aspect_max: float = 1.6
    nucleus_shape_noise: float = 0.05
    cell_diameter_ratio: float = 1.8
    senescent_cell_diameter_ratio: float = 2.4
    nucleus_counterstain_od: float = 0.45
    cytoplasm_counterstain_od: float = 0.10
    stroma_counterstain_od: float = 0.09
    eosin_nucleus_od: float = 0.5
    eosin_cytoplasm_od: float = 0.14
    eosin_stroma_od: float = 0.16
    chromatin_contrast: float = 0.35
    blur_sigma_um: float = 0.25
    noise_sd: float = 2.0
    illumination_falloff: float = (
        0.02  # WSI scanners flat-field correct; microscope photos vignette more
    )
    field_of_view_um: float = 600.0
    background_rgb: tuple[float, float, float] = (243.0, 241.0, 245.0)
    jpeg_quality: int | None = 85
    max_render_mpp: float = 2.0
    ki67_patches: tuple[tuple[float, float, float, float], ...] = ()
    stain_vectors: tuple[tuple[str, tuple[float, float, float]], ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_fraction") or f.name in {"cellularity_min"}:
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"SynthParams.{f.name}={value!r}: give a value in [0, 1]")
        for name in ("level_weights_senescent", "level_weights_other", "ki67_level_weights"):
            w = getattr(self, name)
            if len(w) != 3 or min(w) < 0 or sum(w) <= 0:
                raise ValueError(
                    f"SynthParams.{name}={w!r}: give three non-negative weights (1+, 2+, 3+)"
                )
        if self.nucleus_diameter_um <= 0 or self.senescent_nucleus_diameter_um <= 0:
            raise ValueError("SynthParams: nucleus diameters must be positive µm")
        max_nucleus = max(self.nucleus_diameter_um, self.senescent_nucleus_diameter_um)
        if max_nucleus > 18.0:
            raise ValueError(
                f"SynthParams: nucleus diameters up to 18 µm are supported, got {max_nucleus}"
            )
        if not 0 < self.marker_od_scale <= 4:
            raise ValueError(
                f"SynthParams.marker_od_scale={self.marker_od_scale!r}: give a value in (0, 4]"
            )
        if not 0 <= self.marker_background_od <= 1:
            raise ValueError(
                f"SynthParams.marker_background_od={self.marker_background_od!r}: give 0-1 OD"
            )
        for patch in self.ki67_patches:
            if len(patch) != 4 or patch[2] <= 0 or not 0 <= patch[3] <= 1:
                raise ValueError(
                    f"SynthParams.ki67_patches entry {patch!r}: give (x_um, y_um, radius_um > 0, "
                    "fraction in [0, 1])"
                )
        for name, vector in self.stain_vectors:
            if len(vector) != 3 or min(vector) < 0 or max(vector) <= 0:
                raise ValueError(
                    f"SynthParams.stain_vectors[{name!r}]={vector!r}: give three OD values >= 0"
                )
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"SynthParams.jpeg_quality={self.jpeg_quality}: give 1-100 or None")
        if self.blur_sigma_um < 0 or self.noise_sd < 0 or self.max_render_mpp <= 0:
            raise ValueError(
                "SynthParams: blur_sigma_um and noise_sd must be >= 0, max_render_mpp > 0"
            )


@dataclass(frozen=True)
class SynthRegion:
    """A rendered region.

    Attributes
    ----------
    rgb : (Y, X, 3) uint8
    labels : (Y, X) int32
        Nucleus instance labels; 0 = background, otherwise the global ``cell_id``.
    truth : pandas.DataFrame
        One row per cell whose nucleus has at least one pixel in ``labels`` (see :func:`truth_columns`).
    mpp : float
    origin_um : (2,) float
        Slide position (y, x) of the region's top-left pixel corner.
    assay : str
    """

    rgb: NDArray[np.uint8]
    labels: NDArray[np.int32]
    truth: pd.DataFrame
    mpp: float
    origin_um: tuple[float, float]
    assay: str


@dataclass(frozen=True)
class SynthSlide:
    """Files written by :func:`write_slide`.

    Attributes
    ----------
    path : Path
        Pyramidal tiled RGB TIFF (or OME-TIFF).
    labels_path : Path or None
        Pyramidal tiled uint32 TIFF of nucleus instance labels on the same grids, or None.
    truth_path : Path
        Parquet table, one row per cell with at least one nucleus pixel on level 0.
    shape : (2,) int
        Level-0 shape (Y, X) in pixels.
    mpp : float
        Level-0 pixel size (µm).
    assay : str
    level_shapes : list of (2,) int
        Shape of every pyramid level; level ``k`` has pixel size ``mpp * 2**k``.
    """

    path: Path
    labels_path: Path | None
    truth_path: Path
    shape: tuple[int, int]
    mpp: float
    assay: str
    level_shapes: list[tuple[int, int]] = field(default_factory=list)


def _check(assay: str, shape: tuple[int, int], mpp: float) -> tuple[int, int]:
    if assay not in ASSAYS:
        raise ValueError(f"unknown assay {assay!r}: use one of {', '.join(ASSAYS)}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape={shape!r}: give (Y, X) in pixels, both >= 1")
    if not 0.05 <= mpp <= 64.0:
        raise ValueError(
            f"mpp={mpp!r}: give the pixel size in µm per pixel (0.05-64, e.g. 0.5 for 20x)"
        )
    return int(shape[0]), int(shape[1])
