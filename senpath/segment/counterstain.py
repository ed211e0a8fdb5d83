"""Counterstain normalisation before the nucleus CNN: a faint counterstain brought up to a reference.

A nucleus under no chromogen is seen only through its counterstain (hematoxylin, nuclear fast red,
eosin). Where that counterstain is faint (an X-gal section counterstained lightly so the blue-green
precipitate shows, a pale hematoxylin next to DAB), the CNN finds unstained nuclei less often than
stained ones, and every ratio of counts (Ki67 index, % p16+, senescence index) is biased. The
slide's counterstain level is measured once, on the tissue sample its stain vectors are estimated
from (:func:`counterstain_level`); a slide below the reference has the counterstain's amount
multiplied by a gain in every tile before the network (:func:`boost_counterstain`), as stain
normalisation does for one stain (Macenko et al., ISBI 2009). The chromogens are left as they are,
and so is a slide at or above the reference (the gain is never below 1). Only the image the CNN
sees changes: stains are measured on the original pixels.

The reference is the assay's (``counterstain_reference_od`` of an ``[assay.NAME]`` table; the
presets' values were chosen on training images re-rendered in their stains, see the model card,
"Counterstain normalisation"); an assay without one is never normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from senpath.stain import StainSet, rgb_to_od

if TYPE_CHECKING:
    from senpath.config import Assay

#: Largest gain applied: a slide with almost no counterstain is not made up from noise.
MAX_GAIN = 2.0
#: Pixels with a smaller OD magnitude (glass, faint stroma) are not tissue for the level.
MIN_TISSUE_OD = 0.15
#: Percentile of the counterstain amount over the tissue taken as the slide's level: nuclei are a
#: minority of the tissue and hold most of the counterstain, so its top decile follows them (the
#: percentile of the per-image gain first measured, model card "darker input").
LEVEL_PERCENTILE = 90.0
#: Counterstain level (log10 OD, in the images the CNN sees: after any normalisation) below which a
#: slide's unstained nuclei are flagged as likely missed more often than stained ones. Measured
#: with v5 on the held-out images re-rendered four times in every stain combination (model card,
#: "Faint counterstain flag"), the stained-vs-unstained recall gap below 0.3 / 0.3-0.4 / above 0.4
#: OD: hematoxylin 8.0 / 5.1 / 3.2 points, nuclear fast red 10.2 (3 images) / 4.3 / 1.2, eosin
#: 20.0 / 16.0 / 3.0: eosin, a weak nuclear stain, needs more.
FAINT_COUNTERSTAIN_OD: Mapping[str, float] = {"eosin": 0.4}
#: The floor of every other counterstain (see :data:`FAINT_COUNTERSTAIN_OD`).
FAINT_COUNTERSTAIN_DEFAULT_OD = 0.3


def counterstain_level(
    od: NDArray[np.floating], stains: StainSet, *, counterstain: int = 0
) -> float:
    """A slide's counterstain level: the 90th percentile of its amount over the tissue.

    Parameters
    ----------
    od : (N, 3) or (Y, X, 3) float
        Optical densities (log10, :func:`senpath.stain.rgb_to_od`) sampled from the slide's tissue.
    stains : the slide's stain vectors.
    counterstain : position of the counterstain in ``stains`` (the assay's first nuclear stain).

    Returns
    -------
    float
        Level in log10 OD units along the counterstain's vector; ``nan`` when the sample holds no
        tissue (fewer than 100 pixels above :data:`MIN_TISSUE_OD`).
    """
    flat = np.asarray(od, dtype=np.float32).reshape(-1, 3)
    tissue = flat[np.linalg.norm(flat, axis=1) >= MIN_TISSUE_OD]
    if len(tissue) < 100:
        return float("nan")
    amount = _amount(tissue, stains, counterstain)
    return float(np.percentile(amount, LEVEL_PERCENTILE))


def counterstain_gain(level: float, *, reference: float, max_gain: float = MAX_GAIN) -> float:
    """Gain that brings a slide's counterstain ``level`` up to ``reference``: ``reference / level``
    bounded to [1, ``max_gain``]; 1 when the level is unknown (``nan``) or not positive."""
    if not np.isfinite(level) or level <= 0.0:
        return 1.0
    return float(np.clip(reference / level, 1.0, max_gain))


def faint_counterstain_qc(stain: str, level: float, gain: float = 1.0) -> dict[str, Any]:
    """A slide's faint-counterstain flag: its counterstain ``stain`` at ``level`` (log10 OD,
    :func:`counterstain_level`) times ``gain`` (the normalisation the CNN's images get) against the
    stain's floor (:data:`FAINT_COUNTERSTAIN_OD`).

    Returns
    -------
    dict
        ``stain``, ``level_od``, ``gain``, ``seen_od`` (what the CNN sees), ``floor_od`` and
        ``status``: ``faint`` (below the floor: unstained nuclei are likely missed more often than
        stained ones, so a marker's % positive may read high), ``ok``, or ``unknown`` (no level:
        no tissue in the sample).
    """
    floor = float(FAINT_COUNTERSTAIN_OD.get(stain, FAINT_COUNTERSTAIN_DEFAULT_OD))
    known = bool(np.isfinite(level))
    seen = float(level) * float(gain) if known else float("nan")
    return {
        "stain": stain,
        "level_od": round(float(level), 4) if known else None,
        "gain": round(float(gain), 4),
        "seen_od": round(seen, 4) if known else None,
        "floor_od": floor,
        "status": "unknown" if not known else ("faint" if seen < floor else "ok"),
    }


def faint_counterstain_warning(qc: Mapping[str, Any]) -> str:
    """The one-line warning of a ``faint`` :func:`faint_counterstain_qc` record (``""`` otherwise);
    a slide's ``summary.json`` keeps it as the record's ``warning`` where the assay has a marker."""
    if qc.get("status") != "faint":
        return ""
    normalised = f", {qc['gain']:g}x normalised" if qc["gain"] != 1.0 else ""
    return (
        f"faint counterstain: {qc['stain']} at {qc['seen_od']:.2f} OD as the nucleus CNN sees it"
        f"{normalised} (below {qc['floor_od']:g}): unstained nuclei are likely missed more often "
        "than stained ones, so % positive may read high; check qc_overlay.png for unmarked pale "
        "nuclei, counterstain more strongly, or give the assay a counterstain_reference_od"
    )


def boost_counterstain(
    rgb: NDArray[np.uint8],
    stains: StainSet,
    i0: float | Sequence[float] | NDArray[np.floating],
    gain: float,
    *,
    counterstain: int = 0,
) -> NDArray[np.uint8]:
    """``rgb`` with the counterstain's amount multiplied by ``gain`` (the chromogens unchanged).

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    stains : the slide's stain vectors.
    i0 : glass intensity (per RGB channel).
    gain : factor on the counterstain's amount (:func:`counterstain_gain`); 1 returns ``rgb`` itself.
    counterstain : position of the counterstain in ``stains``.

    Returns
    -------
    (Y, X, 3) uint8
    """
    if gain == 1.0:
        return rgb
    if gain < 1.0:
        raise ValueError(f"gain {gain} < 1: the counterstain is only ever strengthened")
    glass = [float(v) for v in np.atleast_1d(i0)]
    od = rgb_to_od(rgb, glass)
    amount = _amount(od.reshape(-1, 3), stains, counterstain).reshape(od.shape[:-1])
    # OD + (gain - 1) * amount * vector, as intensities: one factor per pixel and channel (3x
    # faster than back through od_to_rgb, and pixels without counterstain keep their exact value)
    per_amount = np.float32(-np.log(10.0) * (gain - 1.0)) * stains.vectors[counterstain]
    factor = np.exp(amount[..., None] * per_amount.astype(np.float32))
    return np.clip(np.rint(rgb * factor), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class CounterstainBoost:
    """One slide's counterstain normalisation, applied to each tile before the CNN.

    Attributes
    ----------
    stains : the slide's stain vectors.
    i0 : (3,) glass intensity per RGB channel.
    gain : factor on the counterstain's amount (> 1; a slide at the reference gets no boost).
    counterstain : position of the counterstain in ``stains``.
    """

    stains: StainSet
    i0: Any
    gain: float
    counterstain: int = 0

    def __call__(self, rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """``rgb`` as the CNN should see it (:func:`boost_counterstain`)."""
        return boost_counterstain(
            rgb, self.stains, self.i0, self.gain, counterstain=self.counterstain
        )


def image_boost(
    rgb: NDArray[np.uint8],
    prior: StainSet,
    counterstain: str,
    *,
    reference: float,
    max_angle_deg: float | Mapping[str, float] | None = None,
) -> CounterstainBoost | None:
    """The counterstain normalisation of one image taken as a whole slide: its glass intensity,
    stain vectors (:func:`senpath.stain.estimate_stains`, ``prior`` the assay's) and counterstain
    level from its own pixels, as a slide's plan has them from its tissue sample.

    Returns
    -------
    CounterstainBoost or None
        ``None`` when the image needs none (its level is at or above ``reference``, or it holds no
        tissue).
    """
    stains, i0, level = image_counterstain(rgb, prior, counterstain, max_angle_deg=max_angle_deg)
    gain = counterstain_gain(level, reference=reference)
    index = stains.index(counterstain)
    return None if gain == 1.0 else CounterstainBoost(stains, i0, gain, index)


def image_counterstain(
    rgb: NDArray[np.uint8],
    prior: StainSet,
    counterstain: str,
    *,
    max_angle_deg: float | Mapping[str, float] | None = None,
) -> tuple[StainSet, NDArray[np.floating], float]:
    """One image taken as a whole slide: its stain vectors (:func:`senpath.stain.estimate_stains`,
    ``prior`` the assay's), glass intensity (3,) and ``counterstain``'s level
    (:func:`counterstain_level`), all from its own pixels."""
    from senpath.stain import estimate_background, estimate_stains

    i0 = estimate_background(rgb)
    od = rgb_to_od(rgb, i0.tolist()).reshape(-1, 3)
    stains = estimate_stains(od, prior, max_angle_deg=max_angle_deg).stains
    return stains, i0, counterstain_level(od, stains, counterstain=stains.index(counterstain))


def assay_boost(
    rgb: NDArray[np.uint8], assay: Assay, *, reference: float | None = None
) -> CounterstainBoost | None:
    """:func:`image_boost` of one image stained as ``assay`` (its stains, vectors, tolerances and
    first nuclear stain), to the assay's ``counterstain_reference_od`` or ``reference``; ``None``
    when it needs none or the assay has no reference."""
    level = assay.counterstain_reference_od if reference is None else reference
    if level is None:
        return None
    prior = StainSet.from_names(assay.stains, overrides=assay.stain_vectors)
    return image_boost(
        rgb,
        prior,
        assay.nuclear_stains[0],
        reference=level,
        max_angle_deg=assay.stain_tolerance_deg,
    )


def parse_references(text: str) -> dict[str, float]:
    """Counterstain references per assay from ``"preset,sabgal-eosin=0.7"``: ``preset`` stands
    for every assay preset that has a ``counterstain_reference_od``, ``ASSAY=OD`` adds or replaces
    one (later parts win), ``none`` for none. Raises ``ValueError`` for an unknown assay or a
    reference an assay table's ``counterstain_reference_od`` would refuse."""
    from senpath.config import COUNTERSTAIN_REFERENCE, load_assays

    assays = load_assays()
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "none":
            continue
        if part == "preset":
            out.update(
                {
                    name: float(a.counterstain_reference_od)
                    for name, a in assays.items()
                    if a.counterstain_reference_od is not None
                }
            )
            continue
        name, _, value = (x.strip() for x in part.partition("="))
        if name not in assays:
            known = ", ".join(sorted(assays))
            raise ValueError(f"{part!r}: unknown assay {name!r}; known assays: {known}")
        try:
            reference = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: expected preset, none or ASSAY=OD (a number)") from None
        problem = COUNTERSTAIN_REFERENCE.check(reference)
        if problem is not None:
            raise ValueError(f"{part!r}: the reference {problem}")
        out[name] = reference
    return out


def _amount(flat_od: NDArray[np.floating], stains: StainSet, counterstain: int) -> NDArray:
    """Least-squares amount of one stain per pixel (:func:`senpath.stain.deconvolve`'s), clipped at 0."""
    column = np.linalg.pinv(stains.vectors)[:, counterstain].astype(np.float32)
    return np.maximum(np.asarray(flat_od, dtype=np.float32) @ column, 0.0)
