"""Stain-space re-rendering of real annotated crops into the assays senpath measures.

Real morphology, our stains. An H&E crop is colour-deconvolved into stain amounts (optical
density, OD) and re-composed with the stains senpath measures:

==================  =====================================================================
recipe              what the rendered crop shows
==================  =====================================================================
``he``              the original H&E, with stain-vector and intensity jitter
``h_dab``           hematoxylin nuclei; DAB in some nuclei (Ki67/p16) and in some cytoplasm
``xgal_nfr``        nuclear fast red nuclei; X-gal granules in the cytoplasm of some cells
``h_dab_fast_red``  hematoxylin nuclei; DAB in some nuclei; Fast Red in some cytoplasm
``xgal_eosin``      eosin counterstain (nuclei faint); X-gal granules in some cytoplasm
``xgal_h_dab``      hematoxylin nuclei; DAB in some nuclei; X-gal in some cytoplasm
==================  =====================================================================

Ki67 IHC tiles are deconvolved into hematoxylin + DAB and re-composed with jittered vectors.
:func:`degrade` then adds scanner-like blur, noise and JPEG compression. Randomness comes only from
the :class:`numpy.random.Generator` passed in, so a crop is reproduced from the same generator state.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from senpath.stain import REFERENCE_STAINS, StainSet, estimate_background, unit

#: Rendering recipes for H&E sources and their sampling probabilities.
RECIPES: dict[str, float] = {
    "he": 0.25,
    "h_dab": 0.2,
    "xgal_nfr": 0.15,
    "h_dab_fast_red": 0.1,
    "xgal_eosin": 0.1,
    "xgal_h_dab": 0.2,
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


def render_crop(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.int32],
    cells: NDArray[np.int32],
    *,
    kind: str,
    rng: np.random.Generator,
    recipe: str | None = None,
) -> NDArray[np.uint8]:
    """Re-render a crop in another stain combination (see the module docstring).

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
        Source crop (H&E when ``kind="he"``, hematoxylin + DAB when ``kind="ihc"``).
    labels, cells : (Y, X) int32
        Nucleus instances and the same instances grown into cells (cytoplasm proxy).
    kind : {"he", "ihc"}
    rng : numpy Generator
    recipe : str, optional
        One of :data:`RECIPES` (H&E sources only); drawn at random when omitted.

    Returns
    -------
    (Y, X, 3) uint8
    """
    i0 = estimate_background(rgb)
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / i0.astype(np.float32))
    od = np.maximum(od, 0.0)
    out_i0 = np.clip(rng.uniform(225, 255) + rng.normal(0, 4, 3), 200, 255)
    shape = labels.shape

    if kind == "ihc":
        h, dab, res = _deconvolve3(od, "hematoxylin", "dab")
        vh, vd = _jitter_vector("hematoxylin", rng), _jitter_vector("dab", rng)
        out = (
            h[..., None] * rng.uniform(0.7, 1.3) * vh
            + dab[..., None] * rng.uniform(0.7, 1.3) * vd
            + res[..., None] * _residual_vector(vh, vd) * rng.uniform(0.0, 1.0)
        )
        return _od_to_rgb(out, out_i0)

    h, e, res = _deconvolve3(od, "hematoxylin", "eosin")
    if recipe is None:
        names = list(RECIPES)
        p = np.array([RECIPES[n] for n in names])
        recipe = str(rng.choice(names, p=p / p.sum()))
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")

    nucleus = labels > 0
    # Cells of nuclei cut by the crop edge reach in, so select among cell ids (a superset).
    ids = np.unique(cells)
    ids = ids[ids > 0]
    cytoplasm = (cells > 0) & ~nucleus
    hn = h * rng.uniform(0.6, 1.3)

    def nuclear_dab() -> NDArray[np.float32]:
        pos = _pick(ids, rng.uniform(0.0, 0.7), rng)[labels]
        level = rng.uniform(0.2, 1.2)
        texture = 1.0 + 0.3 * _smooth_noise(shape, rng, 1.0)
        return (pos * level * np.clip(texture, 0.2, None)).astype(np.float32)

    def cytoplasmic(stain_level: float, granular: bool) -> NDArray[np.float32]:
        sel = _pick(ids, rng.uniform(0.0, 0.8), rng)[cells] & cytoplasm
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
        dab = nuclear_dab() + cytoplasmic(rng.uniform(0.0, 0.8), granular=False)
        dab += e * rng.uniform(0.0, 0.15)
        layers = [(hn * rng.uniform(0.5, 1.0), _jitter_vector("hematoxylin", rng))]
        layers.append((dab, _jitter_vector("dab", rng)))
    elif recipe == "xgal_nfr":
        nfr = hn * rng.uniform(0.4, 1.0) + e * rng.uniform(0.0, 0.2)
        layers = [(nfr, _jitter_vector("nuclear_fast_red", rng))]
        layers.append(
            (cytoplasmic(rng.uniform(0.3, 1.5), granular=True), _jitter_vector("xgal", rng))
        )
    elif recipe == "h_dab_fast_red":
        layers = [(hn * rng.uniform(0.5, 1.0), _jitter_vector("hematoxylin", rng))]
        layers.append((nuclear_dab(), _jitter_vector("dab", rng)))
        fr = cytoplasmic(rng.uniform(0.2, 1.0), granular=False)
        layers.append((fr, _jitter_vector("fast_red", rng)))
    elif recipe == "xgal_eosin":
        eo = e * rng.uniform(0.5, 1.2) + h * rng.uniform(0.15, 0.6)
        layers = [(eo, _jitter_vector("eosin", rng))]
        layers.append(
            (cytoplasmic(rng.uniform(0.3, 1.5), granular=True), _jitter_vector("xgal", rng))
        )
    elif recipe == "xgal_h_dab":
        layers = [(hn * rng.uniform(0.5, 1.0), _jitter_vector("hematoxylin", rng))]
        layers.append((nuclear_dab(), _jitter_vector("dab", rng)))
        layers.append(
            (cytoplasmic(rng.uniform(0.3, 1.5), granular=True), _jitter_vector("xgal", rng))
        )
    out = np.zeros(od.shape, np.float32)
    for amount, vector in layers:
        out += amount[..., None] * vector.astype(np.float32)
    return _od_to_rgb(out, out_i0)


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
