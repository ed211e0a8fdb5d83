"""OpenSlide backend (optional extra ``senpath[openslide]``): MRXS, VMS/VMU, BIF, DICOM-WSI, ...

Used for formats tifffile cannot read. Each level is a dask array whose chunks are multiples of
the file's tiles; a chunk is one ``OpenSlide.read_region`` call.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from senpath.io._slide import (
    PixelFormat,
    Slide,
    SlideError,
    check_dimensions,
    check_mpp,
    chunk_multiple,
    missing_mpp,
    parse_float,
    plausible_mpp,
    slide_id_from_path,
)

EXTENSIONS = (
    ".mrxs",
    ".vms",
    ".vmu",
    ".bif",
    ".dcm",
    ".svslide",
    ".scn",
    ".ndpi",
    ".svs",
    ".tif",
    ".tiff",
)
INSTALL_HINT = "pip install 'senpath[openslide]' (openslide-python + openslide-bin)"

#: Most slides kept open per process; older handles are closed.
MAX_OPEN_SLIDES = 32
_lock = threading.Lock()
_handles: OrderedDict[tuple[str, int], Any] = OrderedDict()
_RGBA = PixelFormat(samples=4, dtype=np.dtype(np.uint8))


def available() -> bool:
    """Whether openslide-python is installed (it brings its library through openslide-bin)."""
    return importlib.util.find_spec("openslide") is not None


def _handle(path: str) -> Any:
    import openslide

    key = (path, os.stat(path).st_mtime_ns)
    with _lock:
        if key in _handles:
            _handles.move_to_end(key)
            return _handles[key]
        handle = _handles[key] = openslide.OpenSlide(path)
        stale = [k for k in _handles if k[0] == path and k != key]
        stale += list(_handles)[: max(0, len(_handles) - len(stale) - MAX_OPEN_SLIDES)]
        for old in dict.fromkeys(stale):
            _handles.pop(old).close()
        return handle


class OpenSlideLevelArray:
    """Array-like ``(Y, X, 3) uint8`` over one OpenSlide level; pickles as ``(path, level)``."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, path: str, level: int) -> None:
        self.path, self.level = path, level
        osr = _handle(path)
        width, height = osr.level_dimensions[level]
        self.shape = (int(height), int(width), 3)
        self.downsample = float(osr.level_downsamples[level])
        props = osr.properties
        self.segment = (
            int(props.get(f"openslide.level[{level}].tile-height", 256)),
            int(props.get(f"openslide.level[{level}].tile-width", 256)),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.level))

    def __getitem__(self, key: tuple[slice, ...]) -> NDArray[np.uint8]:
        y0, y1, _ = key[0].indices(self.shape[0])
        x0, x1, _ = key[1].indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.empty((max(0, y1 - y0), max(0, x1 - x0), 3), dtype=np.uint8)
        location = (round(x0 * self.downsample), round(y0 * self.downsample))
        try:
            image = _handle(self.path).read_region(location, self.level, (x1 - x0, y1 - y0))
        except Exception as exc:  # openslide.OpenSlideError and friends
            raise SlideError(
                f"{self.path}: OpenSlide cannot read level {self.level} rows {y0}-{y1} cols "
                f"{x0}-{x1}: {exc}. The slide data are corrupt; re-export or re-scan it."
            ) from exc
        out = _RGBA.to_rgb8(np.asarray(image))
        return out[:, :, key[2]] if len(key) > 2 else out


def can_open(path: Path) -> str | None:
    """Reason OpenSlide can read ``path``, or None (not installed, or format not recognised)."""
    if not path.name.lower().endswith(EXTENSIONS) or not available():
        return None
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None
    if vendor is None:
        return None
    return f"OpenSlide recognises it as {vendor!r} (a format tifffile does not read)"


def open_openslide(path: Path, *, mpp: tuple[float, float] | None, reason: str) -> Slide:
    """Open a slide with OpenSlide; see :func:`senpath.io.open_slide`."""
    import dask
    import dask.array as da
    import dask.base

    spath = str(path)
    try:
        osr = _handle(spath)
    except Exception as exc:
        raise SlideError(f"{path}: OpenSlide cannot open it ({exc}); re-export the slide.") from exc
    props = osr.properties
    levels = []
    sources = []
    tile_size = (256, 256)
    for level in range(osr.level_count):
        width, height = osr.level_dimensions[level]
        check_dimensions(path, (height, width))
        reader = OpenSlideLevelArray(spath, level)
        sources.append(reader)
        if level == 0:
            tile_size = reader.segment
        token = dask.base.tokenize(spath, os.stat(spath).st_mtime_ns, level)
        levels.append(
            da.from_array(
                reader,
                chunks=(chunk_multiple(reader.segment[0]), chunk_multiple(reader.segment[1]), 3),
                asarray=False,
                fancy=False,
                lock=False,
                name=f"senpath-openslide-{path.name}-{level}-{token}",
                meta=np.empty((0, 0, 0), dtype=np.uint8),
            )
        )
    raw = (props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))
    x, y = parse_float(raw[0]), parse_float(raw[1])
    # the file's own calibration, kept beside an explicit mpp= (Slide.mpp_disagreement)
    file_mpp = (x, y) if x is not None and y is not None and plausible_mpp((x, y)) else None
    file_mpp_source = "openslide.mpp-x/y" if file_mpp is not None else ""
    if mpp is not None:
        final_mpp, source = mpp, "mpp="
    elif raw[0] is not None and raw[1] is not None:
        source = "openslide.mpp-x/y"
        if x is None or y is None:
            raise missing_mpp(path, f"openslide.mpp-x/y are {raw[0]!r}/{raw[1]!r}, not numbers")
        final_mpp = check_mpp(path, (x, y), source=source)
    else:
        raise missing_mpp(path, "OpenSlide reports no openslide.mpp-x")
    objective = parse_float(props.get("openslide.objective-power"))
    if objective is not None and not (math.isfinite(objective) and objective > 0):
        objective = None

    associated = {}
    for name in osr.associated_images:
        key = name.lower()
        if key in ("thumbnail", "label", "macro"):
            image = osr.associated_images[name]
            delayed = dask.delayed(lambda im=image: _RGBA.to_rgb8(np.asarray(im.convert("RGBA"))))
            associated[key] = da.from_delayed(
                delayed(), shape=(image.height, image.width, 3), dtype=np.uint8
            )
    width0 = levels[0].shape[1]
    return Slide(
        path=path,
        slide_id=slide_id_from_path(path),
        levels=levels,
        mpp=final_mpp,
        downsamples=[width0 / a.shape[1] for a in levels],
        objective_power=objective,
        vendor=str(props.get("openslide.vendor", "unknown")),
        backend="openslide",
        backend_reason=reason,
        tile_size=tile_size,
        associated=associated,
        mpp_source=source,
        sources=sources,
        file_mpp=file_mpp,
        file_mpp_source=file_mpp_source,
    )
