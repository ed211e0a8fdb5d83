"""Training and validation data: real nucleus annotations re-rendered in stain space.

Real morphology, our stains. Every annotated image (MoNuSeg, CoNSeP and CPM-15 H&E, DSB-2018
hematoxylin, DeepLIIF Ki67 IHC) is resampled to the network's 0.5 µm/px
(:mod:`senpath.segment.datasets`), colour-deconvolved into stain amounts (optical density, OD) and
re-composed with the stains senpath measures (:mod:`senpath.segment.rerender`, which lists the
recipes). Then blur, noise, JPEG, flips and 90° rotations. Everything is drawn from a seeded :class:`numpy.random.Generator`, so a step's batch
depends only on ``(seed, step)``.

This module draws the training crops (:class:`CropSampler`), adds the synthetic supplement
(:func:`load_synthetic`) and assembles the training and validation sets. The names of
:mod:`~senpath.segment.datasets` and :mod:`~senpath.segment.rerender` are re-exported here, so
``senpath.segment.data`` still gives the whole training-data interface.

Splits (fixed, see :data:`MONUSEG_VALIDATION`, :data:`CPM15_VALIDATION`, :data:`DSB2018_HOLDOUT_EVERY`,
:data:`KI67_VALIDATION`): six MoNuSeg images, the whole CoNSeP test split, three CPM-15 images, every
seventh DSB-2018 image and two Ki67 tiles are never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from senpath.segment.counterstain import assay_boost

if TYPE_CHECKING:
    from senpath.config import Assay

# Re-exported (redundant aliases): callers use ``data.X`` for the loaders and the renderer.
from senpath.segment.datasets import CONSEP_MPP as CONSEP_MPP
from senpath.segment.datasets import CPM15_VALIDATION as CPM15_VALIDATION
from senpath.segment.datasets import KI67_MPP as KI67_MPP
from senpath.segment.datasets import KI67_VALIDATION as KI67_VALIDATION
from senpath.segment.datasets import MONUSEG_MPP as MONUSEG_MPP
from senpath.segment.datasets import MONUSEG_VALIDATION as MONUSEG_VALIDATION
from senpath.segment.datasets import NETWORK_MPP as NETWORK_MPP
from senpath.segment.datasets import AnnotatedImage as AnnotatedImage
from senpath.segment.datasets import cell_regions as cell_regions
from senpath.segment.datasets import instance_targets as instance_targets
from senpath.segment.datasets import ki67_positive_ids as ki67_positive_ids
from senpath.segment.datasets import load_consep as load_consep
from senpath.segment.datasets import load_cpm15 as load_cpm15
from senpath.segment.datasets import load_dsb2018 as load_dsb2018
from senpath.segment.datasets import load_ki67 as load_ki67
from senpath.segment.datasets import load_monuseg as load_monuseg
from senpath.segment.datasets import resample_labels as resample_labels
from senpath.segment.datasets import resample_rgb as resample_rgb
from senpath.segment.datasets import shape_at_mpp as shape_at_mpp
from senpath.segment.rerender import PALE_FLOOR as PALE_FLOOR
from senpath.segment.rerender import RECIPE_ASSAYS as RECIPE_ASSAYS
from senpath.segment.rerender import RECIPES as RECIPES
from senpath.segment.rerender import degrade as degrade
from senpath.segment.rerender import draw_recipe as draw_recipe
from senpath.segment.rerender import pale_nuclei as pale_nuclei
from senpath.segment.rerender import recipe_probabilities as recipe_probabilities
from senpath.segment.rerender import render_crop as render_crop
from senpath.segment.rerender import render_with_truth as render_with_truth

# --------------------------------------------------------------------------- sampler


#: Factors a faintly counterstained crop's counterstain is weakened by (``CropSampler(faint_share=)``).
#: The recipes' own draws put re-rendered MoNuSeg crops at a counterstain level (10th / 50th / 90th
#: percentile) of 0.31 / 0.43 / 0.53 OD with hematoxylin + DAB and 0.40 / 0.49 / 0.56 with X-gal +
#: eosin; 0.6x gives medians of 0.29 and 0.33, 0.4x 0.21 and 0.25: 0.3-0.8x spans the band below
#: the faint-counterstain floors (0.3 and 0.4), where the unstained nuclei are missed most (model
#: card, "Faint counterstain flag"). At 0.25x eosin is lost in the glass (no level).
FAINT_RANGE = (0.3, 0.8)

#: Default location of the real data (``../shared/data`` beside the repo in the project's setup).
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"


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
    ignore_padding : bool
        An image smaller than the (scale-jittered) crop is padded by reflection; its mirrored
        nuclei carry no annotation. Off (v1-v5's recipe): the padding is taught as background,
        mirrored nuclei included. On: the targets get a weight channel that is 0 there, so the
        padding does not count in the loss (:func:`senpath.segment.train.segmentation_loss`).
    contact_weight : float
        Loss weight of the pixels where two nuclei touch or nearly do (:func:`contact_pixels`):
        the distance map must dip there for the watershed to part them, and they are few. 1
        (v1-v5): as any pixel, and no weight channel.
    counterstain_references : dict of str to float, optional
        Assay name to counterstain reference (log10 OD): each crop is shown to the network as
        ``senpath run`` shows a slide of its assay (:func:`crop_assay`) to the CNN, its
        counterstain brought up to the reference (:func:`senpath.segment.counterstain.assay_boost`,
        the crop standing for the slide); crops of other assays unchanged. ``None`` (v1-v5): no
        crop normalised, and the batches are those of earlier runs.
    faint_share : float
        Share of the real crops whose whole counterstain is weakened by a factor drawn
        log-uniformly from ``faint_range`` (:func:`render_with_truth`'s ``counterstain_scale``): a
        faintly counterstained section, not single faded nuclei (``pale_share``). 0 (v1-v5): no
        draw, and the batches are those of earlier runs.
    faint_range : (float, float)
        Lowest and highest factor of ``faint_share``.
    """

    def __init__(
        self,
        sources: dict[str, list[AnnotatedImage]],
        source_weights: dict[str, float],
        *,
        crop_size: int = 128,
        seed: int = 0,
        pale_share: float = 0.0,
        recipe_weights: dict[str, float] | None = None,
        stained_weight: float = 1.0,
        pale_floor: float = PALE_FLOOR,
        pale_blur: float = 0.0,
        ignore_padding: bool = False,
        counterstain_references: dict[str, float] | None = None,
        contact_weight: float = 1.0,
        faint_share: float = 0.0,
        faint_range: tuple[float, float] = FAINT_RANGE,
    ) -> None:
        if not 0.0 <= faint_share <= 1.0:
            raise ValueError(f"faint_share must be in [0, 1], got {faint_share}")
        if not 0.0 < faint_range[0] <= faint_range[1] <= 1.0:
            raise ValueError(f"faint_range must be 0 < low <= high <= 1, got {faint_range}")
        if not 0.0 <= pale_share <= 1.0:
            raise ValueError(f"pale_share must be in [0, 1], got {pale_share}")
        if not 0.0 < pale_floor <= 0.8:
            raise ValueError(f"pale_floor must be in (0, 0.8], got {pale_floor}")
        if not 0.0 <= pale_blur <= 1.0:
            raise ValueError(f"pale_blur must be in [0, 1], got {pale_blur}")
        if stained_weight <= 0:
            raise ValueError(f"stained_weight must be > 0, got {stained_weight}")
        if contact_weight <= 0:
            raise ValueError(f"contact_weight must be > 0, got {contact_weight}")
        recipe_probabilities(recipe_weights)  # a bad name fails here, not at the first batch
        self.crop_size = crop_size
        self.seed = seed
        self.pale_share = pale_share
        self.pale_floor = float(pale_floor)
        self.pale_blur = float(pale_blur)
        self.recipe_weights = dict(recipe_weights) if recipe_weights else None
        self.stained_weight = float(stained_weight)
        self.ignore_padding = bool(ignore_padding)
        self.contact_weight = float(contact_weight)
        self.faint_share = float(faint_share)
        self.faint_range = (float(faint_range[0]), float(faint_range[1]))
        self.counterstain_assays: dict[str, Assay] | None = None
        if counterstain_references is not None:
            import dataclasses

            from senpath.config import get_assay

            self.counterstain_assays = {
                name: dataclasses.replace(get_assay(name), counterstain_reference_od=float(ref))
                for name, ref in counterstain_references.items()
            }
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
        rgb, labels, dist, _ = self.crop_with_stained(rng)
        return rgb, labels, dist

    def crop_with_stained(
        self, rng: np.random.Generator
    ) -> tuple[NDArray[np.uint8], NDArray[np.int32], NDArray, NDArray[np.int64]]:
        """:meth:`crop` plus the labels of the nuclei that carry a chromogen (real or rendered)."""
        return self._crop(rng)[:4]

    def _crop(
        self, rng: np.random.Generator
    ) -> tuple[NDArray[np.uint8], NDArray[np.int32], NDArray, NDArray[np.int64], NDArray[np.bool_]]:
        """:meth:`crop_with_stained` plus where the crop shows the image (not its padding)."""
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
        valid: NDArray[Any] = np.ones(rgb.shape[:2], np.uint8)
        pad_y, pad_x = max(0, side - rgb.shape[0]), max(0, side - rgb.shape[1])
        if pad_y or pad_x:
            pads = ((0, pad_y), (0, pad_x))
            rgb = np.pad(rgb, pads + ((0, 0),), mode="reflect")
            labels, cells, dist, valid = (np.pad(a, pads) for a in (labels, cells, dist, valid))
        y = int(rng.integers(0, rgb.shape[0] - side + 1))
        x = int(rng.integers(0, rgb.shape[1] - side + 1))
        sl = (slice(y, y + side), slice(x, x + side))
        rgb, labels, cells, dist, valid = rgb[sl], labels[sl], cells[sl], dist[sl], valid[sl]
        if side != s:
            rgb = resample_rgb(np.ascontiguousarray(rgb), (s, s))
            labels = resample_labels(labels, (s, s))
            cells = resample_labels(cells, (s, s))
            dist = cv2.resize(np.ascontiguousarray(dist), (s, s), interpolation=cv2.INTER_LINEAR)
            dist = np.where(labels > 0, dist, 0).astype(np.float32)
            valid = cv2.resize(np.ascontiguousarray(valid), (s, s), interpolation=cv2.INTER_NEAREST)
        k = int(rng.integers(4))
        flip = bool(rng.random() < 0.5)
        arrays = []
        for a in (rgb, labels, cells, dist, valid):
            a = np.rot90(a, k)
            if flip:
                a = a[:, ::-1]
            arrays.append(np.ascontiguousarray(a))
        rgb, labels, cells, dist, valid = arrays
        stained: list[NDArray] = [np.asarray(v) for v in item.image.stained.values()]
        recipe = None
        if self.counterstain_assays is not None and item.image.kind in ("he", "hematoxylin"):
            recipe = draw_recipe(rng, self.recipe_weights)  # its assay decides the normalisation
        if item.image.kind != "synth":  # synthetic slides are already in their assay's stains
            scale = 1.0
            # Drawn only when asked for, so runs without it keep their batches.
            if self.faint_share > 0 and rng.random() < self.faint_share:
                low, high = np.log(self.faint_range[0]), np.log(self.faint_range[1])
                scale = float(np.exp(rng.uniform(low, high)))
            rgb, added = render_with_truth(
                rgb,
                labels,
                cells,
                kind=item.image.kind,
                rng=rng,
                recipe=recipe,
                recipe_weights=self.recipe_weights,
                counterstain_scale=scale,
            )
            stained += list(added.values())
        keep = np.concatenate(stained).astype(np.int64) if stained else np.zeros(0, np.int64)
        # Drawn only when asked for, so runs without it keep their batches (v2 is reproduced).
        if self.pale_share > 0 and item.image.kind != "synth" and rng.random() < self.pale_share:
            rgb = pale_nuclei(
                rgb, labels, keep, rng, floor=self.pale_floor, blur_share=self.pale_blur
            )
        rgb = degrade(rgb, rng)
        if self.counterstain_assays is not None:
            assay = self.counterstain_assays.get(crop_assay(item.image, recipe) or "")
            boost = None if assay is None else assay_boost(rgb, assay)
            if boost is not None:
                rgb = boost(rgb)
        return rgb, labels, dist, keep, valid.astype(bool)

    def batch(self, step: int, batch_size: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Inputs ``(B, 3, S, S)`` float32 in [0, 1] and targets ``(B, 2, S, S)`` for ``step``.

        With ``stained_weight != 1``, ``contact_weight != 1`` or ``ignore_padding`` the targets get
        a third channel, the per-pixel loss weight: ``stained_weight`` on the nuclei that carry a
        chromogen, times ``contact_weight`` where nuclei touch, 1 elsewhere, and 0 on the padding
        of an image smaller than the crop when it is ignored
        (:func:`senpath.segment.train.segmentation_loss` reads it).
        """
        rng = np.random.default_rng([self.seed, step])
        xs, ys = [], []
        for _ in range(batch_size):
            rgb, labels, dist, stained, valid = self._crop(rng)
            xs.append(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
            target = [(labels > 0).astype(np.float32), dist]
            if self.stained_weight != 1.0 or self.contact_weight != 1.0 or self.ignore_padding:
                on_stained = np.isin(labels, stained) & (labels > 0)
                weight = np.where(on_stained, self.stained_weight, 1.0).astype(np.float32)
                if self.contact_weight != 1.0:
                    weight[contact_pixels(labels)] *= self.contact_weight
                if self.ignore_padding:
                    weight[~valid] = 0.0
                target.append(weight)
            ys.append(np.stack(target))
        return np.stack(xs), np.stack(ys)


def contact_pixels(labels: NDArray[np.integer], radius: int = 2) -> NDArray[np.bool_]:
    """Pixels within ``radius`` px of two different nuclei: where touching nuclei meet, and the
    narrow gaps between near ones (U-Net's weight map, Ronneberger et al., MICCAI 2015, weighs
    these up for the same reason: they decide whether two nuclei come out as one).

    Parameters
    ----------
    labels : (Y, X) int
        Nucleus instances, 0 = background.
    radius : int
        In pixels, Chebyshev distance (a ``2 * radius + 1`` square); 2 px is 1 µm at
        :data:`NETWORK_MPP`.

    Returns
    -------
    (Y, X) bool
        True where the square around the pixel holds two or more different nuclei.
    """
    from scipy import ndimage as ndi

    size = 2 * radius + 1
    labels = np.asarray(labels)
    top = np.iinfo(labels.dtype).max
    high = ndi.maximum_filter(labels, size=size, mode="constant", cval=0)
    low = ndi.minimum_filter(
        np.where(labels > 0, labels, top), size=size, mode="constant", cval=top
    )
    return (low != top) & (high != low)


def crop_assay(image: AnnotatedImage, recipe: str | None) -> str | None:
    """The assay preset a training crop of ``image`` re-rendered in ``recipe`` is stained as: the
    recipe's (:data:`RECIPE_ASSAYS`) for H&E and hematoxylin sources, ``"ki67"`` for the Ki67
    IHC tiles, the generated slide's own (``synth/<assay>-<seed>@...``); ``None`` if not known."""
    if image.kind == "ihc":
        return "ki67"
    if image.kind == "synth":
        return image.name.removeprefix("synth/").rsplit("-", 1)[0]
    return None if recipe is None else RECIPE_ASSAYS[recipe]


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
    """H&E images re-rendered in another stain combination (:func:`render_with_truth`), same labels,
    with the nuclei each chromogen was put in (``stained``); named ``<name>:<recipe>``. Used for
    validation sets in senescence stains."""
    out = []
    for im in images:
        cells = cell_regions(im.labels, mpp=im.mpp)
        rgb, stained = render_with_truth(
            im.rgb, im.labels, cells, kind="he", rng=rng, recipe=recipe
        )
        out.append(AnnotatedImage(f"{im.name}:{recipe}", "he", rgb, im.labels, im.mpp, stained))
    return out


def training_sources(root: Path, *, synthetic: bool = False) -> dict[str, list[AnnotatedImage]]:
    """Training images per source: MoNuSeg (both folders) minus held-out, CoNSeP train, CPM-15 and
    DSB-2018 minus held-out, four Ki67 tiles, and (with ``synthetic``) generated regions of every
    assay."""
    sources = {
        "monuseg": load_monuseg(root, split="train"),
        "consep": load_consep(root, split="train"),
        "cpm15": load_cpm15(root, split="train"),
        "dsb2018": load_dsb2018(root, split="train"),
        "ki67": load_ki67(root, split="train"),
    }
    if synthetic:
        sources["synth"] = load_synthetic()
    return sources


#: Default probability of drawing a crop from each source.
SOURCE_WEIGHTS: dict[str, float] = {
    "monuseg": 0.36,
    "consep": 0.2,
    "cpm15": 0.08,
    "dsb2018": 0.08,
    "ki67": 0.28,
}


def source_weights(
    synthetic_share: float = 0.0, overrides: dict[str, float] | None = None
) -> dict[str, float]:
    """:data:`SOURCE_WEIGHTS` with a share of synthetic crops (the real sources scaled down).

    ``overrides`` replace some real sources' weights (relative, like ``SOURCE_WEIGHTS``'); the
    real sources are then brought back to a sum of 1 before the synthetic share is taken out.
    """
    if not 0.0 <= synthetic_share < 1.0:
        raise ValueError(f"synthetic_share must be in [0, 1), got {synthetic_share}")
    real = dict(SOURCE_WEIGHTS)
    if overrides:
        unknown = sorted(set(overrides) - set(real))
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}: the sources are {sorted(real)}")
        if any(not w >= 0 for w in overrides.values()):  # not >=: NaN fails too
            raise ValueError(f"source weights must be >= 0, got {overrides}")
        real.update(overrides)
        total = sum(real.values())
        if total <= 0:
            raise ValueError("the source weights sum to 0: no crop could be drawn")
        real = {k: v / total for k, v in real.items()}
    weights = {k: v * (1.0 - synthetic_share) for k, v in real.items()}
    if synthetic_share > 0:
        weights["synth"] = synthetic_share
    return weights


def training_validation_images(root: Path, consep_limit: int) -> dict[str, list[AnnotatedImage]]:
    """The held-out images training validates on (``senpath.segment.train``), at
    :data:`NETWORK_MPP`: MoNuSeg and Ki67 held out, the first ``consep_limit`` CoNSeP test patches."""
    return {
        "monuseg": load_monuseg(root, split="validation"),
        "consep": load_consep(root, split="test", limit=consep_limit),
        "ki67": load_ki67(root, split="validation"),
    }


def validation_images(
    root: Path, *, consep_limit: int | None = None, native: bool = True
) -> list[AnnotatedImage]:
    """Held-out images at their native resolution (MoNuSeg 3, CoNSeP test, Ki67 2)."""
    return (
        load_monuseg(root, split="validation", native=native)
        + load_consep(root, split="test", limit=consep_limit, native=native)
        + load_ki67(root, split="validation", native=native)
    )
