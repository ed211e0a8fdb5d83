"""Wrong-assay check: does another assay's stain set describe the slide's colours much better?

The residual rule of :func:`senpath.stain.stain_qc` catches a slide whose colours lie off the plane of
its assay's stains. It misses one common mistake: an H-DAB slide (Ki67 or p16 IHC) run as X-gal +
nuclear fast red (``sabgal``), or as X-gal on cultured cells (``sabgal-culture``). The two stain pairs
lie in nearly the same plane of OD space, and each stain of one pair is only 16-19° from a stain of the
other (DAB - nuclear fast red 16.5°, hematoxylin - X-gal 18.8°), so the per-slide estimate, allowed to
turn each vector by 15°, bends the ``sabgal`` vectors onto hematoxylin and DAB and explains the slide:
measured on a real Ki67 tile (DeepLIIF ``22_2``), 4.4 % of the tissue OD is left unexplained under
``sabgal``, as much as under ``ki67``. Real hematoxylin is often bluer than the reference (6-7° from
X-gal on the DeepLIIF tiles), so the hue of the counterstain cannot tell the two assays apart either;
the chromogen can: those slides' brown extreme lies 2-9° from DAB and 14-23° from nuclear fast red.

Nor does "the assay's chromogen channel carries little OD" work as a rule: under ``sabgal`` the X-gal
channel takes up the hematoxylin of every nucleus.

The rule (:func:`better_fitting_assays`). The slide's two extreme stain directions (Macenko; the same
ones :func:`senpath.stain.estimate_stains` compares with the assay's prior) are matched to the run
assay's stains and to every other two-stain assay's stains. Another assay B is named when

1. the two directions lie, summed, at least ``margin_deg`` (5°) nearer to B's stains than to the run
   assay's (both count: a bluer hematoxylin alone sits near X-gal, and the chromogen then decides);
2. one direction lies within ``near_deg`` (10°) of a stain of B that the run assay lacks;
3. each of B's stains is within its hue tolerance of the direction matched to it;
4. B's stains explain the slide at least as well: its unexplained OD fraction, estimated the same way,
   is no more than the run assay's plus ``residual_slack`` (1 point), and within
   :data:`senpath.stain.MAX_RESIDUAL_FRACTION`.

:func:`senpath.stain.stain_qc` turns a named assay into the "stain mismatch" warning only where the
residual rule passed (where it fired, the warning already stands, and an H&E or three-stain slide
would be named after the nearest two-stain preset, which can mislead).

Measured (``python benchmarks/stain_match.py``, every image under every two-stain marker assay):
the 10 real Ki67 tiles, regions and IHC image of the shared data run as ``sabgal`` are all flagged
(``22_2`` by this rule alone, the others by the residual rule, most by both); run as ``sabgal-culture``, 8
of 10 (``22_2`` and ``799_2`` are not: the neutral cell-body vector absorbs them). This rule flags
no image under its own assay: the bundled samples, synthetic X-gal slides and culture fields, the
real Ki67 tiles under ``ki67``. Comparing the presets' residuals instead (e.g. "another preset
leaves less than half as much OD unexplained") names ``sabgal`` for real Ki67 tiles: on the six DeepLIIF
tiles the bluer hematoxylin leaves 15-22 % of the OD unexplained by the H-DAB preset, 10-21 % by the
X-gal one.
Limits: assays without a marker (``he``) and three-stain assays are not checked (no
marker figures, resp. no two extreme directions), an assay whose objects are cells is never named
(its neutral "stain" is not a stain); where the chromogen never appears without the counterstain
(synthetic Ki67, DAB always on hematoxylin nuclei) the extreme direction is a mixture between DAB
and nuclear fast red, and such a slide run as ``sabgal`` is not flagged when the residual rule
passes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from senpath.stain import (
    MAX_RESIDUAL_FRACTION,
    StainEstimate,
    StainSet,
    angle_deg,
    estimate_stains,
    extreme_directions,
    max_angle_for,
)

if TYPE_CHECKING:
    from senpath.config import Assay

#: A slide direction this close (degrees) to a stain the run assay lacks is taken to be that stain.
NEAR_DEG = 10.0
#: The slide's two directions together must lie at least this much (degrees, summed) nearer to the
#: other assay's stains than to the run assay's.
MARGIN_DEG = 5.0
#: The other assay must explain the slide at least as well, give or take this fraction of tissue OD.
RESIDUAL_SLACK = 0.01


def _matched(
    directions: NDArray[np.float64], vectors: NDArray[np.float64]
) -> tuple[list[int], list[float]]:
    """Assign the two slide directions to two stain vectors by the smaller total angle.

    Returns, per stain, the index of its direction and the angle between them (degrees).
    """
    straight = [angle_deg(directions[0], vectors[0]), angle_deg(directions[1], vectors[1])]
    swapped = [angle_deg(directions[1], vectors[0]), angle_deg(directions[0], vectors[1])]
    if sum(swapped) < sum(straight):
        return [1, 0], swapped
    return [0, 1], straight


def _stains_of(assay: Assay) -> StainSet:
    return StainSet.from_names(assay.stains, overrides=assay.stain_vectors)


def _angles(names: tuple[str, ...], angles: list[float]) -> str:
    """``2° from dab and 12° from hematoxylin``."""
    return " and ".join(f"{a:.0f}° from {n}" for n, a in zip(names, angles, strict=True))


def _label(names: list[str], assays: Mapping[str, Assay]) -> str:
    """``ki67/p16 (hematoxylin + dab)`` for assays that share one stain set."""
    stains = " + ".join(assays[names[0]].stains)
    return f"{'/'.join(names)} ({stains})"


def better_fitting_assays(
    od: NDArray[np.floating],
    *,
    assay: Assay,
    assays: Mapping[str, Assay],
    estimate: StainEstimate,
    min_od: float = 0.15,
    min_pixels: int = 1000,
    near_deg: float = NEAR_DEG,
    margin_deg: float = MARGIN_DEG,
    residual_slack: float = RESIDUAL_SLACK,
) -> dict[str, Any]:
    """Whether another assay's stains describe the slide's colours much better than ``assay``'s.

    Parameters
    ----------
    od : (N, 3) float
        OD samples of the slide's tissue (the sample :func:`senpath.stain.estimate_stains` used).
    assay : the assay the slide is run under.
    assays : the assays to compare with (e.g. :func:`senpath.config.load_assays`); those with the same
        stain names as ``assay``, or without exactly two stains, are skipped.
    estimate : the slide's stain estimate under ``assay`` (its unexplained OD fraction is the bar).
    min_od, min_pixels : pixels with less OD are left out; fewer stained pixels: no check.
    near_deg, margin_deg, residual_slack : the rule's bounds (module docstring).

    Returns
    -------
    dict
        JSON-ready: ``checked`` (bool), ``reason`` (why not checked, or ""), ``better_fit`` (the
        label of the better-fitting assays, e.g. ``"ki67/p16 (hematoxylin + dab)"``, or ""),
        ``better_assays`` (their names), ``detail`` (the evidence in one sentence, or "") and
        ``rule`` (the bounds used).
    """
    record: dict[str, Any] = {
        "checked": False,
        "reason": "",
        "better_fit": "",
        "better_assays": [],
        "detail": "",
        "rule": {"near_deg": near_deg, "margin_deg": margin_deg, "residual_slack": residual_slack},
    }
    if not assay.markers:
        record["reason"] = "the assay has no marker"
        return record
    if len(assay.stains) != 2:
        record["reason"] = "needs a two-stain assay (three stains have no two extreme directions)"
        return record
    od = np.asarray(od, dtype=np.float64).reshape(-1, 3)
    stained = od[np.linalg.norm(od, axis=1) >= min_od]
    if len(stained) < min_pixels or not np.isfinite(estimate.residual_fraction):
        record["reason"] = f"too few stained pixels ({len(stained)} < {min_pixels})"
        return record
    record["checked"] = True
    directions = extreme_directions(stained, percentile=1.0)
    own = _stains_of(assay)
    _, own_angle = _matched(directions, own.vectors)

    found: dict[tuple[str, ...], list[str]] = {}
    evidence: dict[tuple[str, ...], str] = {}
    nearest: dict[tuple[str, ...], float] = {}
    for name, other in assays.items():
        # an assay whose objects are cells carries a neutral "cell_body" vector, not a stain: grey
        # lies 11-23° from DAB, hematoxylin and nuclear fast red mixtures alike, so it would claim them
        if (
            len(other.stains) != 2
            or set(other.stains) == set(assay.stains)
            or other.objects == "cells"
        ):
            continue
        stains = _stains_of(other)
        _, angles = _matched(directions, stains.vectors)
        # 2. B describes the whole slide: every stain within its hue tolerance
        if any(
            a > max_angle_for(s, other.stain_tolerance_deg)
            for s, a in zip(stains.names, angles, strict=True)
        ):
            continue
        # 1. the slide's hue pair is clearly nearer B's stains than the run assay's (both directions
        # count: a bluer hematoxylin alone sits near X-gal, the chromogen then tells them apart) ...
        if sum(angles) > sum(own_angle) - margin_deg:
            continue
        # ... and one direction is a stain of B that the run assay lacks
        if not any(
            s not in assay.stains and a <= near_deg
            for s, a in zip(stains.names, angles, strict=True)
        ):
            continue
        # 3. B explains the slide at least as well
        fit = estimate_stains(stained, stains, max_angle_deg=other.stain_tolerance_deg)
        bar = estimate.residual_fraction + residual_slack
        if not (fit.residual_fraction <= bar and fit.residual_fraction <= MAX_RESIDUAL_FRACTION):
            continue
        key = tuple(sorted(other.stains))
        found.setdefault(key, []).append(name)
        nearest[key] = sum(angles)
        evidence.setdefault(
            key,
            f"its two stain hues lie {_angles(stains.names, angles)} ({sum(angles):.0f}° in all), "
            f"against {_angles(own.names, own_angle)} ({sum(own_angle):.0f}°); "
            f"{' + '.join(other.stains)} leave {100 * fit.residual_fraction:.1f}% of the tissue OD "
            f"unexplained, {100 * estimate.residual_fraction:.1f}% under {assay.name!r}",
        )
    if found:
        # the stain set nearest in hue is named (ties: by stain names, so the message is reproducible)
        key = min(found, key=lambda k: (nearest[k], k))
        record.update(
            better_fit=_label(found[key], assays),
            better_assays=sorted(n for names in found.values() for n in names),
            detail=evidence[key],
        )
    return record
