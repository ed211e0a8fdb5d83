"""Stain-space re-rendering of real annotated crops into the assays senpath measures.

Real morphology, our stains. An H&E crop is colour-deconvolved into stain amounts (optical
density, OD) and re-composed with the stains senpath measures:

==================  =====================================================================
recipe              what the rendered crop shows
==================  =====================================================================
``he``              the original H&E, with stain-vector and intensity jitter
``h_dab``           hematoxylin nuclei; DAB in some nuclei (Ki67/p16) and in some cytoplasm
``xgal_nfr``        nuclear fast red nuclei; X-gal granules over some cells
``h_dab_fast_red``  hematoxylin nuclei; Fast Red in some nuclei (Ki67); DAB in some nuclei and
                    cytoplasm (p16)
``xgal_eosin``      eosin counterstain (nuclei faint); X-gal granules over some cells
``xgal_h_dab``      hematoxylin nuclei; DAB in some nuclei; X-gal granules over some cells
==================  =====================================================================

A nuclear chromogen (DAB, Fast Red) is drawn per nucleus as real IHC shows it (compare the DeepLIIF
tiles and ROIs): each stained nucleus has its own amount, from faint (0.08 OD) to dark (1.5 OD), a
granular, uneven texture, sometimes a darker rim, and the hematoxylin underneath is partly masked.
X-gal precipitate sits in the cytoplasm but, seen through the section, also over the nucleus.
Ki67 IHC tiles are deconvolved into hematoxylin + DAB and re-composed with jittered vectors; the DAB
of each stained nucleus is scaled on its own, and some unstained nuclei get DAB, so the network sees
every shade of brown on real morphology.
:func:`degrade` then adds scanner-like blur, noise and JPEG compression. Randomness comes only from
the :class:`numpy.random.Generator` passed in, so a crop is reproduced from the same generator state.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from senpath.stain import REFERENCE_STAINS, StainSet, estimate_background, unit

#: Rendering recipes for H&E sources and their sampling probabilities.
RECIPES: dict[str, float] = {
    "he": 0.15,
    "h_dab": 0.3,
    "xgal_nfr": 0.12,
    "h_dab_fast_red": 0.15,
    "xgal_eosin": 0.08,
    "xgal_h_dab": 0.2,
}

#: The assay preset (``senpath.config``) whose stains each recipe renders: a crop re-rendered in a
#: recipe is analysed by ``senpath run`` as that assay (its counterstain normalisation included).
RECIPE_ASSAYS: dict[str, str] = {
    "he": "he",
    "h_dab": "p16",
    "xgal_nfr": "sabgal",
    "h_dab_fast_red": "p16+ki67",
    "xgal_eosin": "sabgal-eosin",
    "xgal_h_dab": "sabgal+ki67",
}

_RESIDUAL_NAME = "residual"


# --------------------------------------------------------------------------- stain rendering


def _jitter_vector(name: str, rng: np.random.Generator, amount: float = 0.08) -> NDArray:
    v = unit(REFERENCE_STAINS[name]) + rng.normal(0.0, amount, 3)
    return unit(np.clip(v, 0.01, None).tolist())


def _residual_vector(a: NDArray, b: NDArray) -> NDArray:
    # Signed: the residual is whatever two stains cannot explain, orthogonal to both.
    return unit(np.cross(a, b).tolist())


def _deconvolve3(
    od: NDArray[np.float32], first: str, second: str
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Amounts of two reference stains and of a residual (third, orthogonal) component."""
    a, b = unit(REFERENCE_STAINS[first]), unit(REFERENCE_STAINS[second])
    stains = StainSet.from_names(
        (first, second, _RESIDUAL_NAME), overrides={_RESIDUAL_NAME: _residual_vector(a, b).tolist()}
    )
    conc = od.reshape(-1, 3) @ np.linalg.pinv(stains.vectors).astype(np.float32)
    conc = conc.reshape(od.shape)
    return np.maximum(conc[..., 0], 0), np.maximum(conc[..., 1], 0), conc[..., 2]


def _smooth_noise(shape, rng: np.random.Generator, sigma: float) -> NDArray[np.float32]:
    import cv2

    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


def _granules(shape, rng: np.random.Generator) -> NDArray[np.float32]:
    """Punctate texture in [0, 1]: X-gal precipitate is granular, about 0.5–1 µm specks."""
    import cv2

    n = _smooth_noise(shape, rng, rng.uniform(0.6, 1.2))
    thr = np.quantile(n, rng.uniform(0.5, 0.8))
    g = np.clip(n - thr, 0, None)
    g = cv2.GaussianBlur(g, (0, 0), 0.6)
    return g / (g.max() + 1e-6)


def _pick(ids: NDArray, fraction: float, rng: np.random.Generator) -> NDArray[np.bool_]:
    """Boolean lookup table (index = label) selecting ``fraction`` of ``ids`` at random."""
    lut = np.zeros(int(ids.max(initial=0)) + 1, bool)  # ids must include every label indexed
    if len(ids):
        lut[ids[rng.random(len(ids)) < fraction]] = True
    lut[0] = False
    return lut


def _per_label(ids: NDArray, values: NDArray) -> NDArray[np.float32]:
    """Lookup table (index = label) holding ``values`` for ``ids``, 0 elsewhere."""
    lut = np.zeros(int(ids.max(initial=0)) + 1, np.float32)
    lut[ids] = values
    return lut


def _nuclear_chromogen(
    labels: NDArray[np.int32], ids: NDArray, rng: np.random.Generator, *, fraction: float
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """A nuclear chromogen as real IHC shows it: ``(amount (Y, X) OD, chosen)``, where ``chosen`` is
    a boolean lookup table (index = label) of the stained nuclei.

    A ``fraction`` of the nuclei is stained, each with its own log-uniform amount in 0.08–1.5 OD,
    under a texture that runs from smooth to granular (chromatin-bound DAB is speckled) and, in
    some crops, a darker rim (the hollow look of many Ki67-positive nuclei).
    """
    import cv2

    shape = labels.shape
    chosen = _pick(ids, fraction, rng)
    level = _per_label(ids, np.exp(rng.uniform(np.log(0.08), np.log(1.5), len(ids))))
    stained = chosen[labels]
    granular = rng.uniform(0.0, 0.9)
    texture = (1.0 - granular) * np.clip(1.0 + 0.3 * _smooth_noise(shape, rng, 1.0), 0.2, None)
    texture += granular * 2.0 * _granules(shape, rng)
    if rng.random() < 0.35:
        inside = cv2.distanceTransform(stained.astype(np.uint8), cv2.DIST_L2, 3)
        rim = np.exp(-inside / rng.uniform(1.0, 2.5))
        texture *= 0.6 + 0.8 * rim
    amount = np.where(stained, level[labels] * texture, 0.0).astype(np.float32)
    # Chromogen precipitate bleeds a little past the nuclear edge.
    blurred = cv2.GaussianBlur(amount, (0, 0), rng.uniform(0.3, 0.9))
    return np.asarray(blurred, np.float32), chosen


def _masked_hematoxylin(
    h: NDArray[np.float32], stained: NDArray[np.bool_], rng: np.random.Generator
) -> NDArray[np.float32]:
    """Hematoxylin partly hidden under a dark nuclear chromogen (less blue shows through)."""
    return np.where(stained, h * rng.uniform(0.15, 1.0), h).astype(np.float32)


def recipe_probabilities(recipe_weights: dict[str, float] | None = None) -> dict[str, float]:
    """The recipes' sampling weights: :data:`RECIPES` with those named in ``recipe_weights``
    replaced. Raises ``ValueError`` for a name that is not a recipe or a negative weight."""
    unknown = sorted(set(recipe_weights or ()) - set(RECIPES))
    if unknown:
        raise ValueError(f"unknown recipe(s) {', '.join(unknown)}: use {', '.join(RECIPES)}")
    negative = sorted(k for k, v in (recipe_weights or {}).items() if v < 0)
    if negative:
        raise ValueError(f"negative recipe weight(s) for {', '.join(negative)}")
    return {**RECIPES, **(recipe_weights or {})}


def draw_recipe(rng: np.random.Generator, recipe_weights: dict[str, float] | None = None) -> str:
    """One recipe drawn with :func:`recipe_probabilities`' weights."""
    names = list(RECIPES)
    weights = recipe_probabilities(recipe_weights)
    p = np.array([weights[n] for n in names])
    return str(rng.choice(names, p=p / p.sum()))


def render_crop(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.int32],
    cells: NDArray[np.int32],
    *,
    kind: str,
    rng: np.random.Generator,
    recipe: str | None = None,
) -> NDArray[np.uint8]:
    """Re-render a crop in another stain combination (see the module docstring and
    :func:`render_with_truth`, which takes the same arguments)."""
    return render_with_truth(rgb, labels, cells, kind=kind, rng=rng, recipe=recipe)[0]


def render_with_truth(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.int32],
    cells: NDArray[np.int32],
    *,
    kind: str,
    rng: np.random.Generator,
    recipe: str | None = None,
    recipe_weights: dict[str, float] | None = None,
    counterstain_scale: float = 1.0,
) -> tuple[NDArray[np.uint8], dict[str, NDArray[np.int64]]]:
    """Re-render a crop in another stain combination and say which nuclei carry which chromogen.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
        Source crop (H&E when ``kind="he"``, hematoxylin + DAB when ``kind="ihc"``).
    labels, cells : (Y, X) int32
        Nucleus instances and the same instances grown into cells (cytoplasm proxy).
    kind : {"he", "hematoxylin", "ihc"}
        ``"hematoxylin"`` (hematoxylin-only tissue) is re-rendered like ``"he"``.
    rng : numpy Generator
    recipe : str, optional
        One of :data:`RECIPES` (H&E sources only); drawn at random when omitted.
    recipe_weights : dict of str to float, optional
        Sampling weights that replace those of :data:`RECIPES` for the recipes named (the others
        keep theirs); used when ``recipe`` is omitted.
    counterstain_scale : float in (0, 2]
        Multiplies the whole crop's counterstain (the nuclear stain every nucleus carries:
        hematoxylin, nuclear fast red, or the eosin of X-gal + eosin) after the recipe's own draw,
        chromogens untouched: below 1, a faintly counterstained section. Drawing nothing from
        ``rng``, it leaves the rest of the rendering as it is at 1.

    Returns
    -------
    rgb : (Y, X, 3) uint8
    stained : dict of str to int array
        Per chromogen added by the recipe (``"dab"``, ``"fast_red"``: nuclear; ``"xgal"``: granules
        over the cell, nucleus included), the nucleus labels that carry it. Real DAB already in an
        IHC source is not listed (only what the rendering added).
    """
    if not 0.0 < counterstain_scale <= 2.0:
        raise ValueError(f"counterstain_scale must be in (0, 2], got {counterstain_scale}")
    marks: dict[str, NDArray[np.bool_]] = {}

    def mark(chromogen: str, chosen: NDArray[np.bool_]) -> None:
        previous = marks.get(chromogen)
        marks[chromogen] = chosen if previous is None else previous | chosen

    def result(out: NDArray[np.float32]) -> tuple[NDArray[np.uint8], dict[str, NDArray[np.int64]]]:
        present = np.unique(labels)
        present = present[present > 0]
        stained = {k: present[lut[present]].astype(np.int64) for k, lut in marks.items()}
        return _od_to_rgb(out, out_i0), stained

    i0 = estimate_background(rgb)
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / i0.astype(np.float32))
    od = np.maximum(od, 0.0)
    out_i0 = np.clip(rng.uniform(225, 255) + rng.normal(0, 4, 3), 200, 255)
    shape = labels.shape

    nucleus = labels > 0
    # Cells of nuclei cut by the crop edge reach in, so select among cell ids (a superset).
    ids = np.unique(cells)
    ids = ids[ids > 0]

    if kind == "ihc":
        h, dab, res = _deconvolve3(od, "hematoxylin", "dab")
        vh, vd = _jitter_vector("hematoxylin", rng), _jitter_vector("dab", rng)
        # Each nucleus' DAB scaled on its own: medium browns as often as dark ones.
        factor = _per_label(ids, np.exp(rng.uniform(np.log(0.25), np.log(1.4), len(ids))))
        dab = np.where(nucleus, dab * factor[labels], dab)
        if rng.random() < 0.5:
            extra, chosen = _nuclear_chromogen(labels, ids, rng, fraction=rng.uniform(0.1, 0.5))
            mark("dab", chosen)
            dab = dab + extra
            h = _masked_hematoxylin(h, chosen[labels], rng)
        out = (
            h[..., None] * (rng.uniform(0.7, 1.3) * counterstain_scale) * vh
            + dab[..., None] * rng.uniform(0.7, 1.3) * vd
            + res[..., None] * _residual_vector(vh, vd) * rng.uniform(0.0, 1.0)
        )
        return result(out)

    h, e, res = _deconvolve3(od, "hematoxylin", "eosin")
    if recipe is None:
        recipe = draw_recipe(rng, recipe_weights)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")

    cytoplasm = (cells > 0) & ~nucleus
    hn = h * rng.uniform(0.6, 1.3)

    def nuclear(
        chromogen: str, fraction_max: float = 0.9
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Amount (Y, X) of a nuclear chromogen and the stained-nucleus mask (Y, X)."""
        fraction = rng.uniform(0.05, fraction_max)
        amount, chosen = _nuclear_chromogen(labels, ids, rng, fraction=fraction)
        mark(chromogen, chosen)
        return amount, chosen[labels]

    def cytoplasmic(stain_level: float, granular: bool) -> NDArray[np.float32]:
        chosen = _pick(ids, rng.uniform(0.0, 0.8), rng)
        if granular:  # X-gal: the granules cover the nucleus too, so the whole cell counts
            mark("xgal", chosen)
        sel = chosen[cells]
        # X-gal granules lie over the nucleus too (seen through the section), more thinly.
        over_nucleus = rng.uniform(0.2, 1.0) if granular else 0.0
        sel = np.where(cytoplasm, sel, sel * over_nucleus).astype(np.float32)
        if granular:
            texture = _granules(shape, rng)
        else:
            texture = np.clip(0.6 + 0.3 * _smooth_noise(shape, rng, 1.5), 0, None)
        import cv2

        soft = cv2.GaussianBlur(sel.astype(np.float32), (0, 0), 1.0)
        return (soft * texture * stain_level).astype(np.float32)

    layers: list[tuple[NDArray[np.float32], NDArray]] = []
    if recipe == "he":
        vh, ve = _jitter_vector("hematoxylin", rng), _jitter_vector("eosin", rng)
        layers = [(hn, vh), (e * rng.uniform(0.5, 1.4), ve)]
        layers.append((res * rng.uniform(0.0, 1.0), _residual_vector(vh, ve)))
    elif recipe == "h_dab":
        dab, stained = nuclear("dab")
        dab = dab + cytoplasmic(rng.uniform(0.0, 0.8), granular=False)
        dab += e * rng.uniform(0.0, 0.15)
        hn = _masked_hematoxylin(hn * rng.uniform(0.5, 1.0), stained, rng)
        layers = [(hn, _jitter_vector("hematoxylin", rng))]
        layers.append((dab, _jitter_vector("dab", rng)))
    elif recipe == "xgal_nfr":
        nfr = hn * rng.uniform(0.4, 1.0) + e * rng.uniform(0.0, 0.2)
        layers = [(nfr, _jitter_vector("nuclear_fast_red", rng))]
        layers.append(
            (cytoplasmic(rng.uniform(0.3, 1.5), granular=True), _jitter_vector("xgal", rng))
        )
    elif recipe == "h_dab_fast_red":
        fast_red, red = nuclear("fast_red", 0.6)  # Ki67 in Fast Red: nuclear
        dab, brown = nuclear("dab", 0.6)  # p16 in DAB: nuclear and cytoplasmic
        dab = dab + cytoplasmic(rng.uniform(0.0, 0.8), granular=False)
        hn = _masked_hematoxylin(hn * rng.uniform(0.5, 1.0), red | brown, rng)
        layers = [(hn, _jitter_vector("hematoxylin", rng))]
        layers.append((dab, _jitter_vector("dab", rng)))
        layers.append((fast_red, _jitter_vector("fast_red", rng)))
    elif recipe == "xgal_eosin":
        eo = e * rng.uniform(0.5, 1.2) + h * rng.uniform(0.15, 0.6)
        layers = [(eo, _jitter_vector("eosin", rng))]
        layers.append(
            (cytoplasmic(rng.uniform(0.3, 1.5), granular=True), _jitter_vector("xgal", rng))
        )
    elif recipe == "xgal_h_dab":
        dab, stained = nuclear("dab")
        hn = _masked_hematoxylin(hn * rng.uniform(0.5, 1.0), stained, rng)
        layers = [(hn, _jitter_vector("hematoxylin", rng))]
        layers.append((dab, _jitter_vector("dab", rng)))
        layers.append(
            (cytoplasmic(rng.uniform(0.3, 1.5), granular=True), _jitter_vector("xgal", rng))
        )
    out = np.zeros(od.shape, np.float32)
    for i, (amount, vector) in enumerate(layers):
        scale = counterstain_scale if i == 0 else 1.0  # every recipe lists its counterstain first
        out += amount[..., None] * (scale * vector.astype(np.float32))
    return result(out)


#: Lowest share of its optical density a nucleus faded by :func:`pale_nuclei` keeps (v3's).
PALE_FLOOR = 0.25


def pale_nuclei(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.int32],
    stained_ids: NDArray[np.int64],
    rng: np.random.Generator,
    *,
    floor: float = PALE_FLOOR,
    blur_share: float = 0.0,
) -> NDArray[np.uint8]:
    """Fade some unstained nuclei: a pale or under-developed counterstain.

    The nuclei a detector misses most on real IHC and X-gal sections are the faint, unstained ones
    (the DeepLIIF tiles and the re-rendered X-gal sets, model card). A random share (30-100 %) of the
    nuclei not in ``stained_ids`` keep only ``floor``-80 % of their optical density (log-uniform,
    per nucleus; ``floor`` 0.25 by default); stained nuclei and the background are left as they are.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    labels : (Y, X) int32
        Nucleus instances.
    stained_ids : int array
        Labels of the nuclei carrying a chromogen (left untouched).
    rng : numpy Generator
    floor : lowest share of optical density a faded nucleus keeps (0 < floor <= 0.8).
    blur_share : share of crops whose faded nuclei are also out of focus (their density spread by
        a Gaussian of 1-2.5 px, blending them into the background: the washed-out negative
        nuclei DeepLIIF's 6_2 annotates and the shipped model misses). 0 draws nothing more, so
        the batches of runs without it are kept.
    """
    if not 0.0 < floor <= 0.8:
        raise ValueError(f"pale floor must be in (0, 0.8], got {floor}")
    if not 0.0 <= blur_share <= 1.0:
        raise ValueError(f"pale blur share must be in [0, 1], got {blur_share}")
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not len(ids):
        return rgb
    chosen = _pick(ids, rng.uniform(0.3, 1.0), rng)
    chosen[np.asarray(stained_ids, np.int64)[np.asarray(stained_ids) < len(chosen)]] = False
    factor = _per_label(ids, np.exp(rng.uniform(np.log(floor), np.log(0.8), len(ids))))
    import cv2

    # The fade reaches 2 px past the annotated outline, softly: annotations sit a little inside
    # the dark nuclear edge, and a hard cut would leave a dark ring the network could learn.
    fade = np.where(chosen[labels], 1.0 - factor[labels], 0.0).astype(np.float32)
    fade = np.asarray(cv2.dilate(fade, np.ones((5, 5), np.uint8)), np.float32)
    fade = np.asarray(cv2.GaussianBlur(fade, (0, 0), 1.0), np.float32)
    scale = 1.0 - fade
    i0 = estimate_background(rgb).astype(np.float32)
    od = np.maximum(-np.log10(np.maximum(rgb.astype(np.float32), 1.0) / i0), 0.0)
    faded = od * scale[..., None]
    if blur_share > 0 and rng.random() < blur_share:
        # out of focus: inside the faded nuclei (and their soft 2 px margin) the density is
        # replaced by its blur, elsewhere left sharp
        sigma = float(rng.uniform(1.0, 2.5))
        blurred = np.asarray(cv2.GaussianBlur(faded, (0, 0), sigma), np.float32)
        where = chosen[labels].astype(np.float32)
        where = np.asarray(cv2.dilate(where, np.ones((5, 5), np.uint8)), np.float32)
        where = np.asarray(cv2.GaussianBlur(where, (0, 0), 1.0), np.float32)[..., None]
        faded = faded * (1.0 - where) + blurred * where
    return _od_to_rgb(faded, i0)


def _od_to_rgb(od: NDArray[np.float32], i0: NDArray) -> NDArray[np.uint8]:
    rgb = i0.astype(np.float32) * np.power(10.0, -np.maximum(od, 0.0))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def degrade(rgb: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Scanner-like degradations: defocus blur, sensor noise, JPEG compression."""
    import cv2

    out = rgb
    if rng.random() < 0.3:
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.0)), np.uint8)
    if rng.random() < 0.4:
        noise = rng.normal(0, rng.uniform(1, 6), out.shape)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        q = int(rng.integers(40, 95))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), np.uint8)[..., ::-1]
    return np.ascontiguousarray(out)
