"""Training and validation data: real nucleus annotations re-rendered in stain space.

Real morphology, our stains. Every annotated image (MoNuSeg and CoNSeP H&E, DeepLIIF Ki67 IHC) is
resampled to the network's 0.5 µm/px, colour-deconvolved into stain amounts (optical density, OD)
and re-composed with the stains senpath measures:

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
Then blur, noise, JPEG, flips and 90° rotations. Everything is drawn from a seeded
:class:`numpy.random.Generator`, so a step's batch depends only on ``(seed, step)``.

Splits (fixed, see :data:`MONUSEG_VALIDATION`, :data:`KI67_VALIDATION`): three MoNuSeg images, the
whole CoNSeP test split and two Ki67 tiles are never trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from senpath.stain import REFERENCE_STAINS, StainSet, estimate_background, unit

#: Physical resolution the network works at (µm/px).
NETWORK_MPP = 0.5
#: MoNuSeg and the DeepLIIF Ki67 tiles are 40x scans.
MONUSEG_MPP = 0.25
KI67_MPP = 0.25
#: The re-packed CoNSeP patches carry no scale. Their median nucleus diameter is 16.6 px against
#: 24.3 px for MoNuSeg at 0.25 µm/px, so about 0.37 µm/px; we use 0.38 (colorectal nuclei run large).
CONSEP_MPP = 0.38

#: MoNuSeg images held out for validation (lung, kidney, breast); never trained on.
MONUSEG_VALIDATION: tuple[str, ...] = (
    "TCGA-21-5786-01Z-00-DX1",
    "TCGA-B0-5698-01Z-00-DX1",
    "TCGA-E2-A1B5-01Z-00-DX1",
)
#: Ki67 IHC tiles held out for validation; the other four are trained on.
KI67_VALIDATION: tuple[str, ...] = ("Lung1", "6_2")

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


@dataclass
class AnnotatedImage:
    """One annotated image resampled to :data:`NETWORK_MPP`.

    Attributes
    ----------
    name : str
        Source and file stem, e.g. ``"monuseg/TCGA-21-5784-01Z-00-DX1"``.
    kind : str
        ``"he"`` (H&E source, re-rendered by recipe) or ``"ihc"`` (hematoxylin + DAB source).
    rgb : (Y, X, 3) uint8
    labels : (Y, X) int32
        Nucleus instances, 0 = background.
    mpp : float
        Resolution of ``rgb`` and ``labels`` (µm/px).
    """

    name: str
    kind: str
    rgb: NDArray[np.uint8]
    labels: NDArray[np.int32]
    mpp: float


# --------------------------------------------------------------------------- resampling


def resample_rgb(rgb: NDArray[np.uint8], shape: tuple[int, int]) -> NDArray[np.uint8]:
    """Resize an RGB image to ``shape`` (area averaging when shrinking, bilinear otherwise)."""
    import cv2

    if rgb.shape[:2] == tuple(shape):
        return rgb
    shrink = shape[0] < rgb.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(rgb, (shape[1], shape[0]), interpolation=interp), np.uint8)


def resample_labels(labels: NDArray[np.integer], shape: tuple[int, int]) -> NDArray[np.int32]:
    """Nearest-neighbour resize of a label image to ``shape`` (pixel centres aligned)."""
    if labels.shape == tuple(shape):
        return labels.astype(np.int32, copy=False)
    ys = ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64)
    xs = ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64)
    ys = np.clip(ys, 0, labels.shape[0] - 1)
    xs = np.clip(xs, 0, labels.shape[1] - 1)
    return labels[ys[:, None], xs[None, :]].astype(np.int32)


def shape_at_mpp(shape: Sequence[int], mpp: float, target_mpp: float) -> tuple[int, int]:
    """Pixel shape ``(Y, X)`` of an image of ``shape`` at ``mpp`` once resampled to ``target_mpp``."""
    f = mpp / target_mpp
    return max(1, round(shape[0] * f)), max(1, round(shape[1] * f))


# --------------------------------------------------------------------------- targets


def instance_targets(
    labels: NDArray[np.integer],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Foreground and normalised distance-to-boundary targets from an instance label image.

    Parameters
    ----------
    labels : (Y, X) int
        Nucleus instances, 0 = background.

    Returns
    -------
    foreground : (Y, X) float32
        1 inside nuclei, 0 elsewhere.
    distance : (Y, X) float32
        Euclidean distance to the nucleus edge divided by its maximum inside that nucleus (so every
        nucleus peaks at 1), 0 outside nuclei. Touching nuclei are separated because the distance is
        computed per instance.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    distance = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = labels[sl] == i
        d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        m = d.max()
        if m > 0:
            distance[sl][mask] = (d[mask] / m).astype(np.float32)
    return (labels > 0).astype(np.float32), distance


def cell_regions(labels: NDArray[np.integer], *, mpp: float, cytoplasm_um: float = 3.0):
    """Cell label image: nuclei grown by ``cytoplasm_um`` µm without merging (cytoplasm proxy)."""
    from skimage.segmentation import expand_labels

    return expand_labels(labels, distance=cytoplasm_um / mpp).astype(np.int32)


# --------------------------------------------------------------------------- loading


def _read_rgb(path: Path) -> NDArray[np.uint8]:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)


def _read_labels(path: Path) -> NDArray[np.int32]:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path).astype(np.int32)
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise OSError(f"cannot read label image {path}")
    return arr.astype(np.int32)


def _to_network(name: str, kind: str, rgb, labels, mpp: float) -> AnnotatedImage:
    shape = shape_at_mpp(rgb.shape, mpp, NETWORK_MPP)
    return AnnotatedImage(
        name, kind, resample_rgb(rgb, shape), resample_labels(labels, shape), NETWORK_MPP
    )


def load_monuseg(root: Path, *, split: str, native: bool = False) -> list[AnnotatedImage]:
    """MoNuSeg images (``split`` = ``"train"`` or ``"validation"``), resampled unless ``native``."""
    out = []
    folder = Path(root) / "monuseg_train"
    for img_path in sorted((folder / "images").glob("*.png")):
        held_out = img_path.stem in MONUSEG_VALIDATION
        if held_out != (split == "validation"):
            continue
        rgb = _read_rgb(img_path)
        labels = _read_labels(folder / "labels" / f"{img_path.stem}.tif")
        name = f"monuseg/{img_path.stem}"
        if native:
            out.append(AnnotatedImage(name, "he", rgb, labels, MONUSEG_MPP))
        else:
            out.append(_to_network(name, "he", rgb, labels, MONUSEG_MPP))
    return out


def load_consep(
    root: Path, *, split: str, limit: int | None = None, native: bool = False
) -> list[AnnotatedImage]:
    """CoNSeP patches of ``split`` (``"train"`` or ``"test"``); ``limit`` keeps an even subsample."""
    folder = Path(root) / "consep" / split
    paths = sorted((folder / "images").glob("*.jpg"))
    if limit is not None and limit < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    out = []
    for img_path in paths:
        rgb = _read_rgb(img_path)
        labels = _read_labels(folder / "labels" / f"{img_path.stem}.png")
        name = f"consep_{split}/{img_path.stem}"
        if native:
            out.append(AnnotatedImage(name, "he", rgb, labels, CONSEP_MPP))
        else:
            out.append(_to_network(name, "he", rgb, labels, CONSEP_MPP))
    return out


def load_ki67(root: Path, *, split: str, native: bool = False) -> list[AnnotatedImage]:
    """DeepLIIF Ki67 IHC tiles (``split`` = ``"train"`` or ``"validation"``)."""
    folder = Path(root) / "ki67_ihc_tiles"
    out = []
    for img_path in sorted(folder.glob("*_ihc.png")):
        stem = img_path.name[: -len("_ihc.png")]
        if (stem in KI67_VALIDATION) != (split == "validation"):
            continue
        rgb = _read_rgb(img_path)
        labels = _read_labels(folder / f"{stem}_labels.tif")
        name = f"ki67/{stem}"
        if native:
            out.append(AnnotatedImage(name, "ihc", rgb, labels, KI67_MPP))
        else:
            out.append(_to_network(name, "ihc", rgb, labels, KI67_MPP))
    return out


def ki67_positive_ids(root: Path, stem: str) -> dict[int, int]:
    """Ki67 positivity per instance id of tile ``stem`` (1 = positive)."""
    path = Path(root) / "ki67_ihc_tiles" / f"{stem}_positive.json"
    return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}


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


# --------------------------------------------------------------------------- sampler


@dataclass
class _Prepared:
    image: AnnotatedImage
    cells: NDArray[np.int32]
    distance: NDArray[np.float32]
    weight: float


class CropSampler:
    """Draws augmented training crops with their targets, deterministically per ``(seed, step)``.

    Parameters
    ----------
    sources : dict of str to list of AnnotatedImage
        Images per source (e.g. ``{"monuseg": [...], "consep": [...], "ki67": [...]}``), already at
        :data:`NETWORK_MPP`.
    source_weights : dict of str to float
        Probability of drawing a crop from each source.
    crop_size : int
        Side of a crop in pixels at :data:`NETWORK_MPP`.
    seed : int
    """

    def __init__(
        self,
        sources: dict[str, list[AnnotatedImage]],
        source_weights: dict[str, float],
        *,
        crop_size: int = 128,
        seed: int = 0,
    ) -> None:
        self.crop_size = crop_size
        self.seed = seed
        self.sources: dict[str, list[_Prepared]] = {}
        for name, images in sources.items():
            prepared = []
            for im in images:
                _, dist = instance_targets(im.labels)
                prepared.append(
                    _Prepared(im, cell_regions(im.labels, mpp=im.mpp), dist, float(im.labels.size))
                )
            self.sources[name] = prepared
        names = [n for n in source_weights if self.sources.get(n)]
        w = np.array([source_weights[n] for n in names], float)
        self.source_names = names
        self.source_p = w / w.sum()

    def crop(
        self, rng: np.random.Generator
    ) -> tuple[NDArray[np.uint8], NDArray[np.int32], NDArray]:
        """One augmented crop: ``rgb (S, S, 3) uint8``, ``labels (S, S) int32``, ``distance``."""
        import cv2

        source = self.sources[str(rng.choice(self.source_names, p=self.source_p))]
        w = np.array([p.weight for p in source])
        item = source[int(rng.choice(len(source), p=w / w.sum()))]
        s = self.crop_size
        # Scale jitter ±25 %: nuclei vary in size between organs and scanners' mpp are approximate.
        scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        side = max(8, round(s * scale))
        rgb: NDArray[Any] = item.image.rgb
        labels: NDArray[Any] = item.image.labels
        cells: NDArray[Any] = item.cells
        dist: NDArray[Any] = item.distance
        pad_y, pad_x = max(0, side - rgb.shape[0]), max(0, side - rgb.shape[1])
        if pad_y or pad_x:
            pads = ((0, pad_y), (0, pad_x))
            rgb = np.pad(rgb, pads + ((0, 0),), mode="reflect")
            labels, cells, dist = (np.pad(a, pads) for a in (labels, cells, dist))
        y = int(rng.integers(0, rgb.shape[0] - side + 1))
        x = int(rng.integers(0, rgb.shape[1] - side + 1))
        sl = (slice(y, y + side), slice(x, x + side))
        rgb, labels, cells, dist = rgb[sl], labels[sl], cells[sl], dist[sl]
        if side != s:
            rgb = resample_rgb(np.ascontiguousarray(rgb), (s, s))
            labels = resample_labels(labels, (s, s))
            cells = resample_labels(cells, (s, s))
            dist = cv2.resize(np.ascontiguousarray(dist), (s, s), interpolation=cv2.INTER_LINEAR)
            dist = np.where(labels > 0, dist, 0).astype(np.float32)
        k = int(rng.integers(4))
        flip = bool(rng.random() < 0.5)
        arrays = []
        for a in (rgb, labels, cells, dist):
            a = np.rot90(a, k)
            if flip:
                a = a[:, ::-1]
            arrays.append(np.ascontiguousarray(a))
        rgb, labels, cells, dist = arrays
        if item.image.kind != "synth":  # synthetic slides are already in their assay's stains
            rgb = render_crop(rgb, labels, cells, kind=item.image.kind, rng=rng)
        rgb = degrade(rgb, rng)
        return rgb, labels, dist

    def batch(self, step: int, batch_size: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Inputs ``(B, 3, S, S)`` float32 in [0, 1] and targets ``(B, 2, S, S)`` for ``step``."""
        rng = np.random.default_rng([self.seed, step])
        xs, ys = [], []
        for _ in range(batch_size):
            rgb, labels, dist = self.crop(rng)
            xs.append(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
            ys.append(np.stack([(labels > 0).astype(np.float32), dist]))
        return np.stack(xs), np.stack(ys)


def load_synthetic(
    *, per_assay: int = 6, shape: tuple[int, int] = (384, 384), seed: int = 1000
) -> list[AnnotatedImage]:
    """Regions of generated slides (:mod:`senpath.synth`) of every assay, at :data:`NETWORK_MPP`.

    A supplement to the real annotations: it shows the network our generator's nuclei in every stain
    combination (the synthetic sample slides and test slides are made by it). Seeds ``seed + i``
    never overlap the small seeds the tests and sample images use.
    """
    from senpath import synth

    # about 20 nuclei in a 384² px region (192 µm): fewer means the region is mostly glass
    min_nuclei = max(3, round(20 * shape[0] * shape[1] / 384**2))
    images = []
    for a, assay in enumerate(synth.ASSAYS):
        for i in range(per_assay):
            slide_seed = seed + 100 * a + i
            for k in range(8):  # skip regions that fell on glass: move along the slide
                origin = (400.0 * k, 250.0 * k)
                region = synth.render_region(
                    assay, shape=shape, mpp=NETWORK_MPP, seed=slide_seed, origin_um=origin,
                    params=synth.SynthParams(tissue_fraction=0.85),
                )  # fmt: skip
                if len(np.unique(region.labels)) > min_nuclei:
                    break
            images.append(
                AnnotatedImage(
                    f"synth/{assay}-{slide_seed}@{origin[0]:g},{origin[1]:g}",
                    "synth",
                    region.rgb,
                    region.labels.astype(np.int32),
                    NETWORK_MPP,
                )
            )
    return images


def rerendered(
    images: Sequence[AnnotatedImage], recipe: str, rng: np.random.Generator
) -> list[AnnotatedImage]:
    """H&E images re-rendered in another stain combination (:func:`render_crop`), same labels;
    named ``<name>:<recipe>``. Used for validation sets in senescence stains."""
    out = []
    for im in images:
        cells = cell_regions(im.labels, mpp=im.mpp)
        rgb = render_crop(im.rgb, im.labels, cells, kind="he", rng=rng, recipe=recipe)
        out.append(AnnotatedImage(f"{im.name}:{recipe}", "he", rgb, im.labels, im.mpp))
    return out


def training_sources(root: Path, *, synthetic: bool = False) -> dict[str, list[AnnotatedImage]]:
    """Training images per source: MoNuSeg minus held-out, CoNSeP train, four Ki67 tiles, and (with
    ``synthetic``) generated regions of every assay."""
    sources = {
        "monuseg": load_monuseg(root, split="train"),
        "consep": load_consep(root, split="train"),
        "ki67": load_ki67(root, split="train"),
    }
    if synthetic:
        sources["synth"] = load_synthetic()
    return sources


#: Default probability of drawing a crop from each source.
SOURCE_WEIGHTS: dict[str, float] = {"monuseg": 0.45, "consep": 0.35, "ki67": 0.2}


def source_weights(synthetic_share: float = 0.0) -> dict[str, float]:
    """:data:`SOURCE_WEIGHTS` with a share of synthetic crops (the real sources scaled down)."""
    if not 0.0 <= synthetic_share < 1.0:
        raise ValueError(f"synthetic_share must be in [0, 1), got {synthetic_share}")
    weights = {k: v * (1.0 - synthetic_share) for k, v in SOURCE_WEIGHTS.items()}
    if synthetic_share > 0:
        weights["synth"] = synthetic_share
    return weights


def validation_images(
    root: Path, *, consep_limit: int | None = None, native: bool = True
) -> list[AnnotatedImage]:
    """Held-out images at their native resolution (MoNuSeg 3, CoNSeP test, Ki67 2)."""
    return (
        load_monuseg(root, split="validation", native=native)
        + load_consep(root, split="test", limit=consep_limit, native=native)
        + load_ki67(root, split="validation", native=native)
    )
