"""The :class:`Slide` object every backend returns, and the errors/helpers they share."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Relative tolerance when comparing a level's µm/px with a requested µm/px: pyramid levels are
#: rarely exact powers of two (Aperio level 1 is often a 4.0003x downsample).
MPP_TOLERANCE = 0.02
#: A level-0 pixel size outside this range (µm/px) is not a microscope resolution: TIFF writers put
#: 72 dpi (352.8 µm/px) in files that have no physical size at all.
PLAUSIBLE_MPP_UM = (0.02, 50.0)
#: Relative difference between an explicit ``mpp=`` and the file's own calibration above which
#: opening the slide warns: scanners round their µm/px by a percent or two, a wrong objective or a
#: µm/mm slip is off by 2x or more.
MPP_DISAGREEMENT = 0.05
#: Largest level-0 side (px) we accept; a header claiming more is corrupt (1M px at 0.25 µm is 25 cm).
MAX_SIDE_PX = 1 << 20
#: Value used for pixels outside the scanned area (brightfield background is white).
BACKGROUND = 255


class SlideError(ValueError):
    """A slide cannot be opened or read; the message names the file, the problem and the fix."""


class SlideWarning(UserWarning):
    """A slide was opened but its data were converted (e.g. 16-bit scaled to 8-bit), or an
    explicit pixel size contradicts the file's own."""


@dataclass(frozen=True)
class PixelFormat:
    """How a backend's raw blocks are converted to ``(Y, X, 3) uint8`` RGB.

    Attributes
    ----------
    samples : int
        Samples per pixel in the file (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
    dtype : numpy.dtype
        Sample type in the file (uint8 or uint16).
    """

    samples: int
    dtype: np.dtype

    @classmethod
    def check(cls, path: Path, *, samples: int, dtype: Any) -> PixelFormat:
        """Validate a file's pixel format; raise :class:`SlideError` for what we refuse."""
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
            raise SlideError(
                f"{path}: pixels are {dtype}, but senpath reads brightfield RGB images with 8- or "
                "16-bit unsigned samples; export the slide as 8-bit RGB (e.g. a pyramidal TIFF)."
            )
        if samples not in (1, 2, 3, 4):
            raise SlideError(
                f"{path}: {samples} samples per pixel (a multichannel/fluorescence image?); senpath "
                "reads brightfield RGB, RGBA or grayscale images. Export an RGB rendering."
            )
        if dtype == np.uint16:
            warnings.warn(
                f"{path}: 16-bit samples are scaled to 8-bit (value / 257) for analysis.",
                SlideWarning,
                stacklevel=3,
            )
        return cls(samples=samples, dtype=dtype)

    def to_rgb8(self, block: NDArray[Any]) -> NDArray[np.uint8]:
        """Convert a raw block ``(Y, X)`` or ``(Y, X, S)`` to ``(Y, X, 3) uint8`` RGB.

        Grayscale is replicated to three channels; alpha is composited onto white (transparent
        areas of a brightfield scan are background); 16-bit is scaled by 1/257.
        """
        if block.ndim == 2:
            block = block[..., None]
        if block.dtype == np.uint16:
            block = ((block.astype(np.uint32) + 128) // 257).astype(np.uint8)
        samples = block.shape[-1]
        if samples in (2, 4):
            color = block[..., :-1].astype(np.uint16)
            alpha = block[..., -1:].astype(np.uint16)
            block = ((color * alpha + BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)
            samples -= 1
        if samples == 1:
            block = np.repeat(block, 3, axis=-1)
        return np.ascontiguousarray(block, dtype=np.uint8)


def parse_float(value: Any) -> float | None:
    """``value`` (metadata text or number) as a float, or None when it is not a number.

    NaN and infinities are returned as floats: :func:`check_mpp` names them in its message.
    """
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def plausible_mpp(mpp: tuple[float, float]) -> bool:
    """Whether both pixel sizes (µm/px) are finite and within :data:`PLAUSIBLE_MPP_UM`."""
    low, high = PLAUSIBLE_MPP_UM
    return all(math.isfinite(value) and low <= value <= high for value in mpp)


def check_mpp(path: Path, mpp: tuple[float, float], *, source: str) -> tuple[float, float]:
    """Raise :class:`SlideError` unless both pixel sizes are plausible microscope µm/px."""
    low, high = PLAUSIBLE_MPP_UM
    for value in mpp:
        if not plausible_mpp((value, value)):
            raise SlideError(
                f"{path}: pixel size {value:g} µm/px from {source} is not a microscope resolution "
                f"(expected {low}-{high} µm/px); pass the true level-0 pixel size with --mpp / mpp="
                " (e.g. mpp=0.25 for 40x, 0.5 for 20x)."
            )
    return (float(mpp[0]), float(mpp[1]))


def normalize_mpp(
    path: Path, mpp: float | tuple[float, float] | None
) -> tuple[float, float] | None:
    """Turn a user's ``mpp=`` (one number or (x, y)) into a checked (x, y) pair."""
    if mpp is None:
        return None
    try:
        if isinstance(mpp, (int, float, np.integer, np.floating)):
            pair = (float(mpp), float(mpp))
        else:
            x, y = mpp
            pair = (float(x), float(y))
    except (TypeError, ValueError):
        raise SlideError(
            f"{path}: mpp= must be a number or an (x, y) pair in µm/px, got {mpp!r}"
        ) from None
    return check_mpp(path, pair, source="mpp=")


def _mpp_text(mpp: tuple[float, float]) -> str:
    """``0.25`` for a square pixel, ``0.25 x 0.26`` otherwise."""
    return f"{mpp[0]:g}" if mpp[0] == mpp[1] else f"{mpp[0]:g} x {mpp[1]:g}"


def missing_mpp(path: Path, detail: str = "") -> SlideError:
    """The error for a slide with no physical pixel size."""
    extra = f" ({detail})" if detail else ""
    return SlideError(
        f"{path}: no pixel size (µm/px) in the file's metadata{extra}; every size in senpath is in "
        "µm, so pass the level-0 pixel size with --mpp / mpp= (e.g. mpp=0.25 for 40x, 0.5 for 20x)."
    )


def check_dimensions(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse absurd header dimensions (zero, or a side over :data:`MAX_SIDE_PX`)."""
    height, width = int(shape[0]), int(shape[1])
    if height <= 0 or width <= 0 or height > MAX_SIDE_PX or width > MAX_SIDE_PX:
        raise SlideError(
            f"{path}: the header says the image is {width} x {height} px, which is not a valid slide "
            f"(each side must be 1-{MAX_SIDE_PX} px); the file is probably corrupt: re-export it."
        )


def chunk_multiple(tile: int, *, target: int = 1024) -> int:
    """Largest multiple of the file's ``tile`` size not above ``target`` (at least one tile).

    Dask chunks follow the file's tiles but group several of them: a 256-px JPEG tile decodes in
    ~0.2 ms, less than dask's per-task overhead, so one task per tile would halve throughput.
    """
    return max(1, target // max(1, tile)) * max(1, tile)


@dataclass(frozen=True, eq=False)
class Slide:
    """A whole-slide image as a lazy pyramid of RGB levels.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    slide_id : str
        File name without its extension(s), used as the results folder name.
    levels : list of dask.array.Array
        Each ``(Y, X, 3) uint8``, level 0 (full resolution) first; chunks are whole multiples of
        the file's tiles. Nothing is decoded until a chunk is computed.
    mpp : tuple of float
        Level-0 pixel size ``(x, y)`` in µm/px.
    downsamples : list of float
        Level-0 width over each level's width (1.0 first).
    objective_power : float or None
        Scanner objective magnification when the file states it.
    vendor : str
        Format/vendor (``"aperio"``, ``"ome"``, ``"generic-tiff"``, ``"png"``, ...).
    backend : str
        Name of the backend that opened the file.
    backend_reason : str
        Why that backend was chosen.
    tile_size : tuple of int
        The file's level-0 tile ``(height, width)`` in px.
    associated : dict of str to dask.array.Array
        Small associated images (``label``, ``macro``, ``thumbnail``) as lazy ``(Y, X, 3) uint8``.
    mpp_source : str
        Where :attr:`mpp` came from (a metadata field or ``mpp=``).
    sources : list
        Per level, the backend's array-like reader (``reader[y0:y1, x0:x1] -> (Y, X, 3) uint8``
        ndarray) that decodes only the file tiles a box touches; see :meth:`level_source`.
    file_mpp : tuple of float or None
        The file's own level-0 ``(x, y)`` µm/px when its metadata state a plausible one, also when
        ``mpp=`` overrode it (then :attr:`mpp` differs); None for an uncalibrated file.
    file_mpp_source : str
        The metadata field :attr:`file_mpp` came from.
    """

    path: Path
    slide_id: str
    levels: list[Any]
    mpp: tuple[float, float]
    downsamples: list[float]
    objective_power: float | None
    vendor: str
    backend: str
    backend_reason: str
    tile_size: tuple[int, int]
    associated: dict[str, Any] = field(default_factory=dict)
    mpp_source: str = ""
    sources: list[Any] = field(default_factory=list, repr=False)
    file_mpp: tuple[float, float] | None = None
    file_mpp_source: str = ""

    def mpp_disagreement(self) -> str | None:
        """One line when an explicit ``mpp=`` contradicts the file's own calibration, else None.

        They contradict when they differ by more than :data:`MPP_DISAGREEMENT` (relative to the
        file's value) in x or y. The explicit value is the one used.
        """
        if self.mpp_source != "mpp=" or self.file_mpp is None:
            return None
        apart = max(abs(e / f - 1.0) for e, f in zip(self.mpp, self.file_mpp, strict=True))
        if apart <= MPP_DISAGREEMENT:
            return None
        return (
            f"{self.path}: the explicit pixel size {_mpp_text(self.mpp)} µm/px (--mpp or the "
            f"sample sheet's mpp) differs by {apart:.0%} from the file's "
            f"{_mpp_text(self.file_mpp)} µm/px ({self.file_mpp_source}); analysing at "
            f"{_mpp_text(self.mpp)} µm/px: check which one is right"
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)`` in px."""
        return (int(self.levels[0].shape[0]), int(self.levels[0].shape[1]))

    def level_source(self, level: int) -> Any:
        """Array-like for reading boxes of ``level`` directly (numpy result, no dask graph).

        Slicing a dask level decodes every whole chunk the box touches (dask does not push the
        slice into the reader), so a 1,144-px tile box can decode nine 1,024-px chunks; the
        source decodes only the file tiles under the box. Use it for tile-by-tile reads; use
        :attr:`levels` for whole-level dask computations.
        """
        self._check_level(level)
        if level < len(self.sources):
            return self.sources[level]
        return _DaskSource(self.levels[level])

    def read_box(self, level: int, y0: int, x0: int, y1: int, x1: int) -> NDArray[np.uint8]:
        """Pixels ``[y0:y1, x0:x1]`` of ``level`` as ``(Y, X, 3) uint8`` (must lie inside it)."""
        return np.asarray(self.level_source(level)[y0:y1, x0:x1])

    def level_mpp(self, level: int) -> float:
        """Pixel size of ``level`` in µm/px (mean of x and y)."""
        self._check_level(level)
        return 0.5 * (self.mpp[0] + self.mpp[1]) * self.downsamples[level]

    def best_level(self, mpp: float) -> int:
        """Coarsest level whose pixel size is at most ``mpp`` (within :data:`MPP_TOLERANCE`).

        Reading there and downsampling never upsamples unless ``mpp`` is finer than level 0
        (then level 0 is returned).

        Parameters
        ----------
        mpp : float
            Requested pixel size in µm/px.
        """
        if not mpp > 0:
            raise ValueError(f"mpp must be a positive pixel size in µm/px, got {mpp!r}")
        best = 0
        for level in range(len(self.levels)):
            if self.level_mpp(level) <= mpp * (1 + MPP_TOLERANCE):
                best = level
        return best

    def read_region(
        self,
        x_um: float,
        y_um: float,
        width_um: float,
        height_um: float,
        *,
        mpp: float,
    ) -> NDArray[np.uint8]:
        """Read a rectangle given in level-0 µm, resampled to ``mpp`` µm/px.

        Parameters
        ----------
        x_um, y_um : float
            Top-left corner in µm from the level-0 origin.
        width_um, height_um : float
            Size of the rectangle in µm.
        mpp : float
            Output pixel size in µm/px.

        Returns
        -------
        (Y, X, 3) uint8 ndarray
            ``Y = round(height_um / mpp)``, ``X = round(width_um / mpp)``; areas outside the
            slide are white (255).
        """
        import cv2

        if width_um <= 0 or height_um <= 0:
            raise ValueError(
                f"width_um and height_um must be positive, got {width_um}, {height_um}"
            )
        out_w = max(1, round(width_um / mpp))
        out_h = max(1, round(height_um / mpp))
        level = self.best_level(mpp)
        arr = self.levels[level]
        # per-axis level pixel size: level shapes are rounded, so use the exact ratio per axis
        sx = self.mpp[0] * self.levels[0].shape[1] / arr.shape[1]
        sy = self.mpp[1] * self.levels[0].shape[0] / arr.shape[0]
        x0, x1 = round(x_um / sx), round((x_um + width_um) / sx)
        y0, y1 = round(y_um / sy), round((y_um + height_um) / sy)
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        cy0, cy1 = max(y0, 0), min(y1, arr.shape[0])
        cx0, cx1 = max(x0, 0), min(x1, arr.shape[1])
        if (cy0, cx0, cy1, cx1) == (y0, x0, y1, x1):
            region = self.read_box(level, y0, x0, y1, x1)  # inside the slide: no padded copy
            if region.base is not None or not region.flags.writeable:
                region = region.copy()  # a view into a backend's cache: the caller may write
        else:
            region = np.full((y1 - y0, x1 - x0, 3), BACKGROUND, dtype=np.uint8)
            if cy1 > cy0 and cx1 > cx0:
                region[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self.read_box(
                    level, cy0, cx0, cy1, cx1
                )
        if region.shape[:2] == (out_h, out_w):
            return region
        shrink = region.shape[0] >= out_h and region.shape[1] >= out_w
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return np.asarray(cv2.resize(region, (out_w, out_h), interpolation=interp), dtype=np.uint8)

    def describe(self) -> str:
        """Human-readable summary: backend and why, levels with shapes and µm/px, tile size."""
        lines = [
            f"slide {self.slide_id}  ({self.path})",
            f"  backend: {self.backend} ({self.backend_reason})",
            f"  vendor: {self.vendor}; objective: "
            + (f"{self.objective_power:g}x" if self.objective_power else "unknown"),
            f"  pixel size: {self.mpp[0]:.4f} x {self.mpp[1]:.4f} µm/px (from {self.mpp_source})",
            f"  file tile: {self.tile_size[1]} x {self.tile_size[0]} px; "
            f"dask chunk: {self.levels[0].chunksize[1]} x {self.levels[0].chunksize[0]} px",
            "  levels:",
        ]
        for i, arr in enumerate(self.levels):
            lines.append(
                f"    {i}: {arr.shape[1]} x {arr.shape[0]} px, downsample {self.downsamples[i]:.3f},"
                f" {self.level_mpp(i):.3f} µm/px"
            )
        if self.associated:
            items = ", ".join(f"{k} {v.shape[1]}x{v.shape[0]}" for k, v in self.associated.items())
            lines.append(f"  associated images: {items}")
        return "\n".join(lines)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < len(self.levels):
            raise IndexError(
                f"level {level} does not exist: {self.slide_id} has levels 0-{len(self.levels) - 1}"
            )


class _DaskSource:
    """Array-like over a dask level for backends without a direct reader."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: Any) -> NDArray[np.uint8]:
        return np.asarray(self.array[key].compute())


def slide_id_from_path(path: Path) -> str:
    """File stem without compound extensions such as ``.ome.tiff``."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.btf"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
