"""Real annotated nucleus sets: loading, resampling to the network's resolution, targets, splits.

Every annotated image (MoNuSeg, CoNSeP and CPM-15 H&E, DSB-2018 hematoxylin, DeepLIIF Ki67 IHC) is resampled to the network's
0.5 µm/px (:data:`NETWORK_MPP`); :func:`instance_targets` gives the foreground and distance targets
the network is trained on.

Splits (fixed, see :data:`MONUSEG_VALIDATION`, :data:`CPM15_VALIDATION`, :data:`DSB2018_HOLDOUT_EVERY`,
:data:`KI67_VALIDATION`): six MoNuSeg images, the whole CoNSeP test split, three CPM-15 images, every
seventh DSB-2018 image and two Ki67 tiles are never trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from senpath.segment.resample import NETWORK_MPP as NETWORK_MPP
from senpath.segment.resample import resample_labels as resample_labels
from senpath.segment.resample import resample_rgb as resample_rgb
from senpath.segment.resample import shape_at_mpp as shape_at_mpp

#: MoNuSeg and the DeepLIIF Ki67 tiles are 40x scans.
MONUSEG_MPP = 0.25
KI67_MPP = 0.25
#: The re-packed CoNSeP patches carry no scale. Their median nucleus diameter is 16.6 px against
#: 24.3 px for MoNuSeg at 0.25 µm/px, so about 0.37 µm/px; we use 0.38 (colorectal nuclei run large).
CONSEP_MPP = 0.38

#: Median nucleus equivalent diameter (µm) of the annotated 40x sets (MoNuSeg 6.0, CPM-15 6.5): the
#: yardstick that gives a scale to images that carry none (DSB-2018).
NUCLEUS_DIAMETER_UM = 6.25

#: MoNuSeg images held out for validation; never trained on. The first three (lung, kidney, breast)
#: are v1's held-out set; v2 adds three of ``monuseg_train_extra/`` (lung, prostate, liver).
MONUSEG_VALIDATION: tuple[str, ...] = (
    "TCGA-21-5786-01Z-00-DX1",
    "TCGA-B0-5698-01Z-00-DX1",
    "TCGA-E2-A1B5-01Z-00-DX1",
    "TCGA-38-6178-01Z-00-DX1",
    "TCGA-G9-6348-01Z-00-DX1",
    "TCGA-KB-A93J-01A-01-TS1",
)
#: MoNuSeg folders under the data root, in reading order (the 13 images v1 saw come first).
MONUSEG_FOLDERS: tuple[str, ...] = ("monuseg_train", "monuseg_train_extra")
#: CPM-15 images held out for validation (one 20x, two 40x).
CPM15_VALIDATION: tuple[str, ...] = ("image03", "image09", "image13")
#: Every ``DSB2018_HOLDOUT_EVERY``-th DSB-2018 image (in name order) is held out.
DSB2018_HOLDOUT_EVERY = 7
#: Ki67 IHC tiles held out for validation; the other four are trained on.
KI67_VALIDATION: tuple[str, ...] = ("Lung1", "6_2")


@dataclass
class AnnotatedImage:
    """One annotated image resampled to :data:`NETWORK_MPP`.

    Attributes
    ----------
    name : str
        Source and file stem, e.g. ``"monuseg/TCGA-21-5784-01Z-00-DX1"``.
    kind : str
        ``"he"`` (H&E source, re-rendered by recipe), ``"ihc"`` (hematoxylin + DAB source),
        ``"hematoxylin"`` (hematoxylin only, re-rendered like H&E) or ``"synth"`` (generated).
    rgb : (Y, X, 3) uint8
    labels : (Y, X) int32
        Nucleus instances, 0 = background.
    mpp : float
        Resolution of ``rgb`` and ``labels`` (µm/px).
    stained : dict of str to int array
        Per chromogen (``"dab"``, ``"fast_red"``, ``"xgal"``), the labels of the nuclei that carry
        it, where known: the Ki67-positive nuclei of the DeepLIIF tiles (``"dab"``), or what a
        re-rendering added. Empty when unknown.
    """

    name: str
    kind: str
    rgb: NDArray[np.uint8]
    labels: NDArray[np.int32]
    mpp: float
    stained: dict[str, NDArray[np.int64]] = field(default_factory=dict)


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


def _annotated(name: str, kind: str, rgb, labels, mpp: float, *, native: bool) -> AnnotatedImage:
    if native:
        return AnnotatedImage(name, kind, rgb, labels, mpp)
    return _to_network(name, kind, rgb, labels, mpp)


def _in_split(held_out: bool, split: str) -> bool:
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    return held_out == (split == "validation")


def load_monuseg(root: Path, *, split: str, native: bool = False) -> list[AnnotatedImage]:
    """MoNuSeg images (``split`` = ``"train"`` or ``"validation"``), resampled unless ``native``.

    Reads every folder of :data:`MONUSEG_FOLDERS` that exists under ``root``.
    """
    out = []
    for sub in MONUSEG_FOLDERS:
        folder = Path(root) / sub
        for img_path in sorted((folder / "images").glob("*.png")):
            if not _in_split(img_path.stem in MONUSEG_VALIDATION, split):
                continue
            rgb = _read_rgb(img_path)
            labels = _read_labels(folder / "labels" / f"{img_path.stem}.tif")
            name = f"monuseg/{img_path.stem}"
            out.append(_annotated(name, "he", rgb, labels, MONUSEG_MPP, native=native))
    return out


def load_cpm15(root: Path, *, split: str, native: bool = False) -> list[AnnotatedImage]:
    """CPM-15 H&E images; 20x images at 0.5 µm/px, 40x at 0.25 (``magnification.json``)."""
    folder = Path(root) / "cpm15"
    if not folder.is_dir():
        return []
    magnification = json.loads((folder / "magnification.json").read_text())
    out = []
    for img_path in sorted((folder / "images").glob("*.png")):
        if not _in_split(img_path.stem in CPM15_VALIDATION, split):
            continue
        mpp = {"20x": 0.5, "40x": 0.25}[magnification[img_path.stem]]
        rgb = _read_rgb(img_path)
        labels = _read_labels(folder / "labels" / f"{img_path.stem}.tif")
        out.append(_annotated(f"cpm15/{img_path.stem}", "he", rgb, labels, mpp, native=native))
    return out


def estimated_mpp(labels: NDArray[np.integer]) -> float:
    """Scale (µm/px) of an image without one, from its nuclei: median equivalent diameter taken as
    :data:`NUCLEUS_DIAMETER_UM`. Clipped to 0.1–1.0 µm/px (10x–100x)."""
    from skimage.measure import regionprops

    diameters = [r.equivalent_diameter_area for r in regionprops(np.asarray(labels, np.int32))]
    if not diameters:
        raise ValueError("cannot estimate the scale of an image without annotated nuclei")
    return float(np.clip(NUCLEUS_DIAMETER_UM / np.median(diameters), 0.1, 1.0))


def load_dsb2018(root: Path, *, split: str, native: bool = False) -> list[AnnotatedImage]:
    """DSB-2018 hematoxylin tissue crops (kind ``"hematoxylin"``), scale from :func:`estimated_mpp`."""
    folder = Path(root) / "dsb2018_stage1_he"
    if not folder.is_dir():
        return []
    out = []
    for i, img_path in enumerate(sorted((folder / "images").glob("*.png"))):
        if not _in_split(i % DSB2018_HOLDOUT_EVERY == DSB2018_HOLDOUT_EVERY - 1, split):
            continue
        rgb = _read_rgb(img_path)
        labels = _read_labels(folder / "labels" / img_path.name)
        name = f"dsb2018/{img_path.stem}"
        mpp = estimated_mpp(labels)
        out.append(_annotated(name, "hematoxylin", rgb, labels, mpp, native=native))
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
        out.append(_annotated(name, "he", rgb, labels, CONSEP_MPP, native=native))
    return out


#: Largest annotation offset (px) :func:`annotation_offset` looks for, and the least gain in the
#: overlap of the annotated nuclei with the image's dark pixels that makes it move the annotation.
MAX_ANNOTATION_SHIFT_PX = 12
MIN_ANNOTATION_GAIN = 0.05


def annotation_offset(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.integer],
    *,
    max_shift: int = MAX_ANNOTATION_SHIFT_PX,
    min_gain: float = MIN_ANNOTATION_GAIN,
) -> tuple[int, int]:
    """The whole-pixel ``(dy, dx)`` that moves an annotation onto its image's nuclei, or (0, 0).

    Two DeepLIIF tiles' label panels do not sit on their IHC panels: Lung1's nuclei are drawn
    ~2 µm (7-8 px) below the stained nuclei, Bladder1's 6 px to their left, the other four
    within a pixel. The offset is the cross-correlation peak of the annotation mask with the
    image's darkness (``skimage.registration.phase_cross_correlation`` without normalisation;
    blind to any model). It is kept only when it lies within ``max_shift`` px and raises the
    mask's sum of (centred) darkness by at least ``min_gain`` over no shift; else the annotation
    is taken as drawn.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
        The annotated image (brightfield: nuclei darker than the background).
    labels : (Y, X) int
        Its nucleus instances (0 = background).
    max_shift : largest offset looked for, in px of the image.
    min_gain : least relative gain in overlap with the darkness for the offset to be kept.

    Returns
    -------
    tuple of int
        ``(dy, dx)`` in px; :func:`shift_labels` applies it.
    """
    from skimage.color import rgb2gray
    from skimage.registration import phase_cross_correlation

    dark = 1.0 - rgb2gray(rgb[..., :3])
    dark -= dark.mean()
    mask = (np.asarray(labels) > 0).astype(np.float64)
    if not mask.any():
        return (0, 0)
    peak, _, _ = phase_cross_correlation(dark, mask, normalization=None)
    dy, dx = (int(round(float(v))) for v in peak)
    if (dy, dx) == (0, 0) or max(abs(dy), abs(dx)) > max_shift:
        return (0, 0)
    before = float((mask * dark).sum())
    after = float((shift_labels(mask, (dy, dx)) * dark).sum())
    return (dy, dx) if before > 0 and after >= (1.0 + min_gain) * before else (0, 0)


def shift_labels(labels: NDArray[Any], offset: tuple[int, int]) -> NDArray[Any]:
    """``labels`` moved by whole pixels ``(dy, dx)``; what leaves the frame is cut, 0 fills in."""
    dy, dx = offset
    out = np.zeros_like(labels)
    h, w = labels.shape[:2]
    src_y, dst_y = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    src_x, dst_x = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[dst_y, dst_x] = labels[src_y, src_x]
    return out


def ki67_tile(
    root: Path, stem: str
) -> tuple[NDArray[np.uint8], NDArray[np.int32], tuple[int, int]]:
    """One DeepLIIF tile at its own 0.25 µm/px: RGB, labels moved onto the image
    (:func:`annotation_offset`), and the offset applied."""
    folder = Path(root) / "ki67_ihc_tiles"
    rgb = _read_rgb(folder / f"{stem}_ihc.png")
    labels = _read_labels(folder / f"{stem}_labels.tif")
    offset = annotation_offset(rgb, labels)
    return rgb, shift_labels(labels, offset), offset


def load_ki67(root: Path, *, split: str, native: bool = False) -> list[AnnotatedImage]:
    """DeepLIIF Ki67 IHC tiles (``split`` = ``"train"`` or ``"validation"``), each annotation
    moved onto its image where it is off (:func:`annotation_offset`)."""
    folder = Path(root) / "ki67_ihc_tiles"
    out = []
    for img_path in sorted(folder.glob("*_ihc.png")):
        stem = img_path.name[: -len("_ihc.png")]
        if not _in_split(stem in KI67_VALIDATION, split):
            continue
        rgb, labels, _ = ki67_tile(root, stem)
        name = f"ki67/{stem}"
        im = _annotated(name, "ihc", rgb, labels, KI67_MPP, native=native)
        positive = ki67_positive_ids(root, stem)
        im.stained = {"dab": np.array(sorted(i for i, v in positive.items() if v), np.int64)}
        out.append(im)
    return out


def ki67_positive_ids(root: Path, stem: str) -> dict[int, int]:
    """Ki67 positivity per instance id of tile ``stem`` (1 = positive)."""
    path = Path(root) / "ki67_ihc_tiles" / f"{stem}_positive.json"
    return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
