"""Synthetic brightfield slides with per-cell ground truth, rendered from physics.

A synthetic slide is a field of cells defined in slide coordinates (µm), stained by Beer-Lambert mixing of
reference stain vectors (:data:`senpath.stain.REFERENCE_STAINS`) in optical density (OD) and imaged with
blur, uneven illumination, sensor noise and JPEG artefacts. Every cell carries marker truth (Ki67, p16,
SA-beta-gal) with intensity levels 0/1+/2+/3+.

Design
------
*Resolution independence.* Nothing is stored at a pixel size. Cells live on a jittered lattice of
``SITE_UM``-µm sites; every random property of a site (presence, senescence, size, shape, marker levels)
is a counter-based hash of ``(seed, stream, site x, site y)``, so any region, at any mpp, in any tile
order, computes the same cells without generating their neighbours first. (Per-block seeded RNGs would
also work, but a hash per site needs no block bookkeeping and makes neighbour conflicts trivially
consistent.) Overlapping nuclei are resolved by a *local* rule: a candidate is dropped when a conflicting
candidate of higher priority exists nearby (senescent cells first), which depends only on a fixed
neighbourhood and therefore gives the same answer in every region. Low-frequency fields (tissue mask,
cellularity) are hashed value noise evaluated on a global 4 µm node grid and interpolated bilinearly;
textures (chromatin, X-gal granules, stroma fibres) are periodic 0.25 µm/px images sampled at global
positions (with mip-maps for coarse pixels). Sensor noise comes from RNG tiles keyed by global pixel
coordinates. Hence ``render_region`` of a sub-region equals the crop of a larger render, bit for bit
(without JPEG artefacts, which depend on the 8x8 block grid of the image they are encoded in).

*Rendering.* Cell bodies (big cells first, so small cells keep their cytoplasm) and nuclei are
rasterised as shape-noised ellipse polygons into local label maps (``cv2.fillPoly`` with 1/16 px
fixed-point vertices on a canvas that contains every drawn polygon whole, which keeps the raster
translation invariant). Per-pixel stain concentrations come from per-cell look-up tables times
textures; ``OD = C @ V`` with ``V`` the unit stain vectors; ``I = I0 * illumination * 10**-OD``; the
optical blur acts on intensity (not OD), then shot + read noise, then 8-bit quantisation.

*Marker levels.* A marker at level ``L`` is rendered with mean chromogen concentration
``MARKER_LEVEL_OD[L]`` (OD units along the unit stain vector) inside its compartment (Ki67: nucleus;
p16: nucleus and cytoplasm; SA-beta-gal: cytoplasm, granular), times a small per-cell jitter. The levels
sit inside the scoring bins with margin for blur and JPEG losses.

*Assays.* ``sabgal-eosin`` has no hematoxylin: its nuclei are made visible by denser eosin (acidophilic
nucleoplasm plus chromatin texture), so the image stays a clean two-stain (eosin, X-gal) mixture that
the X-gal+eosin preset deconvolves exactly. The same seed gives the same cells (positions, senescence,
marker truth) in every assay, like serial sections stained differently.

*Pyramids.* Levels with pixels no coarser than ``params.max_render_mpp`` (default 2 µm: levels 0-2 of
a 0.5 µm slide) are rendered directly at their own mpp, tile row by tile row (bit-identical to
``render_region`` at that mpp). Coarser levels are derived from the last direct level by a streamed 2x
area-mean cascade written to unnamed temporary files (rendering them directly would redraw every cell
once per level). Memory therefore does not grow with slide height, and only the last direct level's
tile row (width / 4 at 0.5 µm) is held across strips.
"""

from __future__ import annotations

from senpath.synth._culture import (
    CultureField,
    CultureParams,
    dapi_frame_points,
    matched_cells,
    render_culture_field,
)
from senpath.synth._layout import SITE_UM
from senpath.synth._params import (
    ASSAY_MARKERS,
    ASSAY_STAINS,
    ASSAYS,
    MARKER_LEVEL_OD,
    SynthParams,
    SynthRegion,
    SynthSlide,
)
from senpath.synth._rendering import render_region
from senpath.synth._slide import default_n_levels, slide_paths, write_slide
from senpath.synth._truth import truth_columns

__all__ = [
    "ASSAYS",
    "CultureField",
    "CultureParams",
    "dapi_frame_points",
    "ASSAY_MARKERS",
    "ASSAY_STAINS",
    "MARKER_LEVEL_OD",
    "SITE_UM",
    "SynthParams",
    "SynthRegion",
    "SynthSlide",
    "default_n_levels",
    "matched_cells",
    "render_culture_field",
    "render_region",
    "slide_paths",
    "truth_columns",
    "write_slide",
]
