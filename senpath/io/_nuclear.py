"""Read a nuclear fluorescence image (DAPI/Hoechst) paired with a brightfield photo.

The nuclear frame is a camera image of the same field: a greyscale TIFF/PNG (8 or 16 bit), an RGB
picture of the stain (DAPI shown blue: the brightest channel is taken), or one channel of a
multi-channel TIFF (``channel``). It is held whole (a camera frame, not a slide): larger than
:data:`MAX_NUCLEAR_PIXELS` is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

#: Largest nuclear image read (pixels): a camera frame is 1-30 MP.
MAX_NUCLEAR_PIXELS = 200_000_000


class NuclearImageError(ValueError):
    """A nuclear image that cannot be used (one line naming the file and the problem)."""


def read_nuclear_image(path: str | Path, *, channel: int | None = None) -> NDArray[np.float32]:
    """The nuclear fluorescence of ``path`` as ``(Y, X) float32`` intensity.

    Parameters
    ----------
    path : TIFF (``.tif``/``.tiff``, multi-channel allowed), PNG or JPEG file.
    channel : 0-based channel of a multi-channel image; ``None``: a single-channel image, or the
        brightest channel of an RGB picture.

    Raises
    ------
    NuclearImageError
        When the file cannot be read, is too large, or has several channels and ``channel`` is
        missing or out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise NuclearImageError(f"{path}: nuclear image not found (or not a regular file)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                if int(np.prod(series.shape)) > MAX_NUCLEAR_PIXELS * 4:
                    raise NuclearImageError(
                        f"{path}: nuclear image of shape {series.shape} is larger than a camera "
                        "frame: give the nuclear image of one field"
                    )
                data = np.asarray(series.asarray())
        else:
            from PIL import Image

            with Image.open(path) as im:
                data = np.asarray(im)
    except NuclearImageError:
        raise
    except Exception as exc:  # any decoder failure is one line naming the file
        raise NuclearImageError(f"{path}: cannot read the nuclear image ({exc})") from None
    data = np.squeeze(data)
    if data.ndim == 2:
        plane = data
    elif data.ndim == 3:
        axis = 2 if data.shape[2] <= 8 else 0 if data.shape[0] <= 8 else None
        if axis is None:
            raise NuclearImageError(
                f"{path}: nuclear image of shape {data.shape} has no channel axis (<= 8 channels)"
            )
        n = data.shape[axis]
        if channel is None:
            if axis == 2 and n in (3, 4):  # a picture of the stain: its brightest channel
                plane = data[..., :3].max(axis=2)
            else:
                raise NuclearImageError(
                    f"{path}: nuclear image has {n} channels: give nuclear_channel (0-{n - 1})"
                )
        elif not 0 <= channel < n:
            raise NuclearImageError(
                f"{path}: nuclear_channel {channel} is out of range: the image has {n} channels "
                f"(0-{n - 1})"
            )
        else:
            plane = np.take(data, channel, axis=axis)
    else:
        raise NuclearImageError(f"{path}: nuclear image of shape {data.shape}: give one 2-D frame")
    if plane.size > MAX_NUCLEAR_PIXELS:
        raise NuclearImageError(f"{path}: nuclear image of {plane.size} px is not a camera frame")
    return np.asarray(plane, np.float32)
