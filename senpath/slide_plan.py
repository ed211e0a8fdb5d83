"""Plan one slide: the per-slide decisions the tile stage needs, made once (first stage).

::

    plan_slide  open_slide → tissue mask (low resolution) → glass intensity → tile grid at the
                analysis mpp over tissue, with halo → stain vectors (per-slide estimate or preset)

The plan is small, plain data (:class:`SlidePlan`), so :mod:`senpath.slide_analysis` runs the tile and
commit stages from it in this process and :mod:`senpath.distributed` ships it to dask workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from senpath.config import AnalysisConfig, Assay, load_assays
from senpath.segment import resolve_method
from senpath.segment.counterstain import (
    CounterstainBoost,
    counterstain_gain,
    counterstain_level,
    faint_counterstain_qc,
)
from senpath.stain import (
    DEFAULT_I0,
    StainEstimate,
    StainSet,
    estimate_background,
    estimate_stains,
    rgb_to_od,
)
from senpath.stain_match import better_fitting_assays
from senpath.tiling import Box, Tile, halo_px, tile_grid


@dataclass
class SlidePlan:
    """Everything the tile stage of one slide needs, decided once per slide (small and picklable).

    The stages of :func:`senpath.slide_analysis.analyze_slide` — :func:`plan_slide`,
    :func:`~senpath.tile_engine.analyze_tiles` (or :func:`~senpath.tile_engine.segment_tiles`
    then :func:`~senpath.tile_engine.analyze_tiles`) and
    :func:`~senpath.slide_analysis.commit_slide` — take and return plain data, so the same code runs
    in this process or as dask tasks on other machines (:mod:`senpath.distributed`), with identical
    results.

    Attributes
    ----------
    path : the slide file.
    slide_id, patient_id : names used in the store.
    mpp : the ``mpp`` override given for an uncalibrated file (µm/px), or ``None``.
    assay : the assay definition.
    config : the settings, with ``segmenter`` resolved to ``cnn`` or ``classical``.
    prior : the assay's preset stain vectors.
    stain_estimate : the slide's stain vectors and their QC evidence.
    i0 : glass intensity per RGB channel.
    shape_px : (Y, X) of the slide at the analysis resolution ``config.analysis_mpp``.
    tiles : the tissue tile grid, in the order ids are assigned (row-major).
    tissue_fraction : fraction of the slide covered by tissue.
    tissue_area_mm2 : tissue area in mm².
    timings : seconds spent so far, by stage (``tissue_s``, ``stains_s``).
    """

    path: Path
    slide_id: str
    patient_id: str
    mpp: float | None
    assay: Assay
    config: AnalysisConfig
    prior: StainSet
    stain_estimate: StainEstimate
    i0: Any  # (3,) float64 ndarray, the glass intensity per RGB channel
    shape_px: tuple[int, int]
    tiles: list[Tile]
    tissue_fraction: float
    tissue_area_mm2: float
    timings: dict[str, float]
    #: the paired nuclear image and its registration (``path``, ``channel``, ``registration``), or
    #: ``None`` (see :func:`senpath.segment.paired_nuclei.pair_nuclear_image`)
    nuclear: dict[str, Any] | None = None
    #: whether another assay's stains describe the slide much better (the wrong-assay check,
    #: :func:`senpath.stain_match.better_fitting_assays`), or ``None`` (a plan made without it)
    stain_match: dict[str, Any] | None = None
    #: the CNN's counterstain normalisation (:mod:`senpath.segment.counterstain`): ``stain``,
    #: ``level`` (log10 OD), ``reference`` and ``gain``; ``None`` when the slide gets none (the
    #: assay has no ``counterstain_reference_od``, the setting is off, or the nuclei do not come
    #: from the CNN)
    counterstain: dict[str, Any] | None = None
    #: the faint-counterstain flag (:func:`senpath.segment.counterstain.faint_counterstain_qc`):
    #: the counterstain's level as the CNN sees it against its floor; ``None`` when the nuclei do
    #: not come from the CNN
    counterstain_qc: dict[str, Any] | None = None

    @property
    def counterstain_gain(self) -> float:
        """Factor on the counterstain's amount in the images the CNN sees (1: none)."""
        return 1.0 if self.counterstain is None else float(self.counterstain["gain"])

    @property
    def counterstain_boost(self) -> CounterstainBoost | None:
        """What the CNN's images get before it (``None`` when the gain is 1)."""
        if self.counterstain_gain == 1.0:
            return None
        stains = self.stain_estimate.stains
        index = stains.index(str(self.counterstain["stain"]))  # type: ignore[index]
        return CounterstainBoost(stains, self.i0, self.counterstain_gain, index)

    @property
    def n_tiles(self) -> int:
        """Number of tissue tiles."""
        return len(self.tiles)


def plan_slide(
    path: str | Path,
    *,
    assay: Assay,
    config: AnalysisConfig,
    mpp: float | None = None,
    slide_id: str | None = None,
    patient_id: str | None = None,
    slide: Any = None,
    nuclear_image: str | Path | None = None,
    nuclear_channel: int | None = None,
) -> SlidePlan:
    """First stage of analysing a slide: tissue mask, glass intensity, tile grid, stain vectors.

    The later stages are :func:`senpath.tile_engine.analyze_tiles` and
    :func:`senpath.slide_analysis.commit_slide` (:func:`senpath.slide_analysis.analyze_slide` runs
    all three).

    Parameters
    ----------
    path : slide file.
    assay : the assay definition.
    config : analysis settings (``segmenter`` may be ``auto``; the plan holds it resolved).
    mpp : pixel size in µm for files without calibration.
    slide_id, patient_id : names used in the store (default: the file stem).
    slide : the already opened slide of ``path`` (opened here when ``None``).
    nuclear_image, nuclear_channel : a DAPI/Hoechst image of the same field (and its channel in a
        multi-channel TIFF), the nucleus source of an assay whose objects are cells; registered
        here (:func:`senpath.segment.paired_nuclei.pair_nuclear_image`).

    Returns
    -------
    SlidePlan

    Raises
    ------
    senpath.segment.paired_nuclei.RegistrationError
        When the nuclear image does not register to the brightfield image (one line).
    """
    from senpath.io import open_slide
    from senpath.tissue import tissue_mask

    slide = slide if slide is not None else open_slide(path, mpp=mpp)
    slide_id = slide_id or slide.slide_id
    config = config.with_segmenter(resolve_method(config.segmenter, model=config.model))
    prior = StainSet.from_names(assay.stains, overrides=assay.stain_vectors)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    tissue = tissue_mask(slide, target_mpp=config.tissue_mpp)
    if assay.objects == "cells":  # a culture photo: the whole field is the sample
        from senpath.segment.whole_cell import culture_field_plan

        tissue, i0, halo_um = culture_field_plan(slide, tissue, halo_um=config.halo_um)
    else:
        i0, halo_um = _estimate_i0(slide, tissue), config.halo_um
    timings["tissue_s"] = time.perf_counter() - t

    amp = config.analysis_mpp
    height_um = slide.shape[0] * slide.mpp[1]
    width_um = slide.shape[1] * slide.mpp[0]
    shape_px = (max(1, round(height_um / amp)), max(1, round(width_um / amp)))
    tile_px = max(64, round(config.tile_size_um / amp))
    tiles = tile_grid(
        shape_px,
        tile_size=tile_px,
        halo=halo_px(halo_um, amp),
        mask=tissue.mask,
        mask_scale=tissue.mpp / amp,
    )

    nuclear = None
    if nuclear_image is not None:
        nuclear = _pair_nuclear(slide, nuclear_image, nuclear_channel, assay, shape_px, amp)
        timings["register_s"] = time.perf_counter() - t

    t = time.perf_counter()
    reference = counterstain_reference(
        assay, config, method=config.segmenter, paired=nuclear is not None
    )
    cnn_nuclei = _cnn_nuclei(assay, method=config.segmenter, paired=nuclear is not None)
    stain_estimate, stain_match, counterstain, counterstain_qc = _slide_stains(
        slide,
        tiles,
        prior=prior,
        i0=i0,
        mpp=amp,
        mode=config.stain_vectors,
        assay=assay,
        counterstain=assay.nuclear_stains[0] if cnn_nuclei else None,
        reference=reference,
    )
    timings["stains_s"] = time.perf_counter() - t
    return SlidePlan(
        path=Path(path),
        slide_id=slide_id,
        patient_id=patient_id or slide_id,
        mpp=mpp,
        assay=assay,
        config=config,
        prior=prior,
        stain_estimate=stain_estimate,
        i0=np.asarray(i0, dtype=np.float64),
        shape_px=shape_px,
        tiles=list(tiles),
        tissue_fraction=float(tissue.fraction),
        tissue_area_mm2=float(tissue.mask.sum()) * (tissue.mpp / 1000.0) ** 2,
        timings=timings,
        nuclear=nuclear,
        stain_match=stain_match,
        counterstain=counterstain,
        counterstain_qc=counterstain_qc,
    )


def counterstain_reference(
    assay: Assay, config: AnalysisConfig, *, method: str, paired: bool = False
) -> float | None:
    """The counterstain level a slide's CNN input is normalised to
    (:mod:`senpath.segment.counterstain`), or ``None`` when it is not: the assay has no
    ``counterstain_reference_od``, ``normalise_counterstain`` is off, the nuclei do not come from
    the CNN (``method``, resolved), or they come from a paired nuclear image (``paired``)."""
    if not config.normalise_counterstain or not _cnn_nuclei(assay, method=method, paired=paired):
        return None
    return assay.counterstain_reference_od


def _cnn_nuclei(assay: Assay, *, method: str, paired: bool) -> bool:
    """Whether a slide's nuclei come from the CNN on its own pixels: ``method`` (resolved) is
    ``cnn``, no paired nuclear image gives them, and the assay's objects are nuclei."""
    return method == "cnn" and not paired and assay.objects == "nuclei"


def reference_warnings(
    config: AnalysisConfig,
    uses: Iterable[tuple[Assay, bool]],
    *,
    settings: str = "the --config file",
) -> list[str]:
    """One line per assay whose slides this run shows the CNN otherwise than its network was
    trained to see them: a network trained with ``train --counterstain-references`` (recorded in
    its JSON, :func:`senpath.segment.weights.trained_counterstain_references`) expects an assay's
    counterstain brought up to that level, and its measured accuracy holds for that input.

    ``uses``: the batch's ``(assay, paired)`` pairs (``paired``: the nuclei come from a paired
    nuclear image, not the CNN); ``settings``: where the user sets the assay tables (the napari
    widget: its settings file). Nothing for the classical path, a model trained on crops as
    rendered (v1-v5: the normalisation is then the run's choice) or a model that cannot be read
    (its slides say why)."""
    from senpath.segment.weights import load_spec, trained_counterstain_references

    method = resolve_method(config.segmenter, model=config.model)
    if method != "cnn":
        return []
    try:
        trained = trained_counterstain_references(load_spec(config.model))
    except (OSError, ValueError):
        return []
    lines: list[str] = []
    seen: set[str] = set()
    for assay, paired in uses:
        wanted = trained.get(assay.name)
        if wanted is None or paired or assay.objects != "nuclei" or assay.name in seen:
            continue
        seen.add(assay.name)
        used = counterstain_reference(assay, config, method=method)
        if used is not None and abs(used - wanted) < 1e-9:
            continue
        if not config.normalise_counterstain:
            how = "does not normalise it (normalise_counterstain = false)"
            fix = " and normalise_counterstain = true in [analysis]"
        elif used is None:
            how, fix = "does not normalise it (the assay has no counterstain_reference_od)", ""
        else:
            how, fix = f"brings it up to {used:g} OD", ""
        lines.append(
            f"the nucleus model {config.model or 'shipped with senpath'} was trained on "
            f"{assay.name} slides with the counterstain brought up to {wanted:g} OD; this run "
            f"{how}: set counterstain_reference_od = {wanted:g} in [assay.{assay.name}]{fix} "
            f"of {settings}, or its detection is not what was measured for it"
        )
    return lines


def _pair_nuclear(
    slide: Any,
    nuclear_image: str | Path,
    channel: int | None,
    assay: Assay,
    shape_px: tuple[int, int],
    mpp: float,
) -> dict[str, Any]:
    """Register the paired nuclear image to the whole brightfield field (a camera frame)."""
    from senpath.segment.paired_nuclei import (
        MAX_PAIRED_PIXELS,
        RegistrationError,
        pair_nuclear_image,
    )

    if assay.objects != "cells":
        raise ValueError(
            f"{nuclear_image}: a paired nuclear image is for assays whose objects are cells "
            f"(sabgal-culture), not {assay.name!r}"
        )
    if shape_px[0] * shape_px[1] > MAX_PAIRED_PIXELS:
        raise RegistrationError(
            f"{nuclear_image}: the brightfield image is {shape_px[1]} x {shape_px[0]} px at the "
            "analysis mpp, more than a camera frame: pair nuclear images with single fields"
        )
    rgb = read_grid_box(slide, Box(0, 0, shape_px[0], shape_px[1]), mpp)
    return pair_nuclear_image(rgb, nuclear_image, channel=channel, mpp=mpp)


def read_grid_box(slide: Any, box: Box, mpp: float) -> NDArray[np.uint8]:
    """The pixels of ``box`` of the analysis grid (px at ``mpp`` µm/px) as (Y, X, 3) uint8."""
    return slide.read_region(
        box.x0 * mpp, box.y0 * mpp, (box.x1 - box.x0) * mpp, (box.y1 - box.y0) * mpp, mpp=mpp
    )


#: Tiles sampled (evenly over the tissue tile grid) for the per-slide stain estimate, and pixels kept.
_STAIN_SAMPLE_TILES = 8
_STAIN_SAMPLE_PIXELS = 400_000


def _slide_stains(
    slide: Any,
    tiles: Sequence[Any],
    *,
    prior: StainSet,
    i0: Any,
    mpp: float,
    mode: str,
    assay: Assay,
    counterstain: str | None = None,
    reference: float | None = None,
) -> tuple[StainEstimate, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """The slide's stain vectors (estimated from a sample of its tissue tiles, or the prior), the
    wrong-assay check on the same sample against the shipped assay presets (so a run gives the
    same answer on every machine, whatever settings file it read), and, when ``counterstain``
    names a stain (the CNN's nuclei), its level from the same sample: the CNN's counterstain
    normalisation to ``reference`` when there is one (see :attr:`SlidePlan.counterstain`) and the
    faint-counterstain flag (:attr:`SlidePlan.counterstain_qc`).

    Pixels are sampled at the analysis resolution (at a coarse resolution, nuclei and cytoplasm mix and
    the extreme stain directions that Macenko's method looks for are lost).
    """

    picks = np.unique(
        np.linspace(0, len(tiles) - 1, min(len(tiles), _STAIN_SAMPLE_TILES)).astype(int)
    )
    samples = []
    for k in picks.tolist() if len(tiles) else []:
        rgb = read_grid_box(slide, tiles[k].core, mpp)
        samples.append(rgb_to_od(rgb, i0).reshape(-1, 3))
    od = np.concatenate(samples) if samples else np.zeros((0, 3), np.float32)
    if len(od) > _STAIN_SAMPLE_PIXELS:
        od = od[:: -(-len(od) // _STAIN_SAMPLE_PIXELS)]
    estimate = estimate_stains(
        od, prior, estimate=mode == "estimate", max_angle_deg=assay.stain_tolerance_deg
    )
    match = better_fitting_assays(od, assay=assay, assays=load_assays(), estimate=estimate)
    if counterstain is None:
        return estimate, match, None, None
    stains = estimate.stains
    level = counterstain_level(od, stains, counterstain=stains.index(counterstain))
    if reference is None:
        return estimate, match, None, faint_counterstain_qc(counterstain, level)
    gain = round(counterstain_gain(level, reference=reference), 4)
    record = {
        "stain": counterstain,
        "level": round(level, 4) if np.isfinite(level) else None,
        "reference": reference,
        "gain": gain,
    }
    return estimate, match, record, faint_counterstain_qc(counterstain, level, gain)


def _estimate_i0(slide: Any, tissue: Any) -> NDArray[np.float64]:
    """Glass intensity from the low-resolution image outside the tissue (default when no glass)."""
    import cv2

    height_um = slide.shape[0] * slide.mpp[1]
    width_um = slide.shape[1] * slide.mpp[0]
    thumb = slide.read_region(0, 0, width_um, height_um, mpp=tissue.mpp)
    mask = cv2.resize(
        tissue.mask.astype(np.uint8),
        (thumb.shape[1], thumb.shape[0]),
        interpolation=cv2.INTER_NEAREST,
    ).astype(bool)
    glass = thumb[~mask]
    if glass.shape[0] < 100:
        return np.full(3, DEFAULT_I0)
    return estimate_background(glass, percentile=50.0)
