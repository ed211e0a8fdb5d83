"""Plain-image backend: small PNG/JPEG files as a single-level slide (needs ``mpp=``)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from senpath.io._checks import check_ratio
from senpath.io._slide import (
    PixelFormat,
    Slide,
    SlideError,
    check_dimensions,
    check_mpp,
    missing_mpp,
    slide_id_from_path,
)

EXTENSIONS = (".png", ".jpg", ".jpeg")
#: Plain images are decoded whole; above this many pixels a pyramidal TIFF is the right format.
MAX_PIXELS = 16384 * 16384
_MODES: dict[str, tuple[int, type[np.unsignedinteger[Any]]]] = {
    "L": (1, np.uint8),
    "LA": (2, np.uint8),
    "RGB": (3, np.uint8),
    "RGBA": (4, np.uint8),
}
_MODES.update({"I;16": (1, np.uint16), "I;16B": (1, np.uint16), "I;16L": (1, np.uint16)})


def can_open(path: Path) -> str | None:
    """Reason the plain-image reader takes ``path`` (PNG/JPEG extension), else None."""
    if path.name.lower().endswith(EXTENSIONS):
        return f"{path.suffix} is a plain image: decoded whole as a single-level slide"
    return None


def _load(path: str, fmt: PixelFormat, mode: str) -> NDArray[np.uint8]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked at open
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGBA") if mode == "P" else image)
    except Exception as exc:
        raise SlideError(f"{path}: cannot decode the image ({exc}); the file is corrupt.") from exc
    if array.dtype == np.int32:  # PIL mode "I" from 16-bit PNG
        array = array.astype(np.uint16)
    return fmt.to_rgb8(array)


class ImageSource:
    """Array-like over a decoded plain image; decodes on first access and keeps the pixels."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, path: str, fmt: PixelFormat, mode: str, shape: tuple[int, int]) -> None:
        self.path, self.fmt, self.mode = path, fmt, mode
        self.shape = (*shape, 3)
        self._pixels: NDArray[np.uint8] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.fmt, self.mode, self.shape[:2]))

    def __getitem__(self, key: Any) -> NDArray[np.uint8]:
        if self._pixels is None:
            self._pixels = _load(self.path, self.fmt, self.mode)
        return self._pixels[key]


def open_image(path: Path, *, mpp: tuple[float, float] | None, reason: str) -> Slide:
    """Open a PNG/JPEG as a one-level slide; see :func:`senpath.io.open_slide`."""
    import dask
    import dask.array as da
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # the sizes are checked below against the file size and MAX_PIXELS
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height, mode = image.width, image.height, image.mode
                bands = len(image.getbands())
                dpi = image.info.get("dpi")
    except Exception as exc:
        raise SlideError(
            f"{path}: not a readable PNG/JPEG ({exc}); the file is damaged or truncated."
        ) from exc
    check_dimensions(path, (height, width))
    check_ratio(
        path,
        decoded=width * height * bands,
        stored=os.path.getsize(path),
        compressed=True,
        what=f"a {width} x {height} px image",
    )
    if width * height > MAX_PIXELS:
        raise SlideError(
            f"{path}: {width} x {height} px is too large for a plain image (decoded whole); "
            "convert it to a tiled pyramidal TIFF (e.g. with vips tiffsave --tile --pyramid)."
        )
    dtype: type[np.unsignedinteger[Any]]
    if mode == "P":
        samples, dtype = 4, np.uint8
    elif mode in _MODES:
        samples, dtype = _MODES[mode]
    elif mode == "I":
        samples, dtype = 1, np.uint16
    else:
        raise SlideError(
            f"{path}: image mode {mode!r} is not supported; save it as 8-bit RGB, RGBA or grayscale."
        )
    fmt = PixelFormat.check(path, samples=samples, dtype=dtype)
    if mpp is None:
        # dpi in PNG/JPEG headers is a screen resolution, never a microscope's pixel size
        detail = f"the header says {dpi} dpi, which is a screen setting" if dpi else ""
        raise missing_mpp(path, detail)
    mpp = check_mpp(path, mpp, source="mpp=")
    token = dask.base.tokenize(str(path), os.stat(path).st_mtime_ns)
    source = ImageSource(str(path), fmt, mode, (height, width))
    level = da.from_array(
        source,
        chunks=(height, width, 3),
        asarray=False,
        fancy=False,
        lock=False,
        name=f"senpath-image-{token}",
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )
    return Slide(
        path=path,
        slide_id=slide_id_from_path(path),
        levels=[level],
        mpp=mpp,
        downsamples=[1.0],
        objective_power=None,
        vendor=path.suffix.lower().lstrip(".").replace("jpg", "jpeg"),
        backend="image",
        backend_reason=reason,
        tile_size=(height, width),
        associated={},
        mpp_source="mpp=",
        sources=[source],
    )
