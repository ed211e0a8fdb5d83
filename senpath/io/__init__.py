"""Whole-slide image readers: :func:`open_slide` returns a lazy :class:`Slide` pyramid.

Backends are tried in registry order; the first whose ``can_open`` gives a reason opens the
file. ``tifffile`` reads TIFF-family files (SVS, NDPI, OME-TIFF, SCN, generic tiled TIFF),
``openslide`` (optional extra ``senpath[openslide]``) reads MRXS, VMS, BIF, DICOM-WSI, and
``image`` reads small PNG/JPEG files. Only this subpackage imports slide libraries.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from senpath.io import _image, _openslide, _tiff
from senpath.io._checks import content_mismatch, probe_file
from senpath.io._slide import (
    MPP_DISAGREEMENT,
    MPP_TOLERANCE,
    PixelFormat,
    Slide,
    SlideError,
    SlideWarning,
    normalize_mpp,
)

__all__ = [
    "BACKENDS",
    "MPP_DISAGREEMENT",
    "MPP_TOLERANCE",
    "Backend",
    "PixelFormat",
    "Slide",
    "SlideError",
    "SlideWarning",
    "open_slide",
    "register_backend",
    "supported_extensions",
]


@dataclass(frozen=True)
class Backend:
    """A slide reader in the registry.

    Attributes
    ----------
    name : str
        Short name shown by :meth:`Slide.describe` and accepted by ``open_slide(backend=)``.
    extensions : tuple of str
        Lower-case file extensions it may read (used to list what is supported).
    can_open : callable
        ``can_open(path) -> str | None``: why it can read ``path``, or None to decline.
    open : callable
        ``open(path, *, mpp, reason) -> Slide`` with ``mpp`` the user's (x, y) µm/px or None.
    available : callable
        ``available() -> bool``; False when an optional dependency is missing.
    install_hint : str
        How to make it available.
    """

    name: str
    extensions: tuple[str, ...]
    can_open: Callable[[Path], str | None]
    open: Callable[..., Slide]
    available: Callable[[], bool] = lambda: True
    install_hint: str = ""


#: Registry, in the order backends are tried.
BACKENDS: list[Backend] = [
    Backend("tifffile", _tiff.EXTENSIONS, _tiff.can_open, _tiff.open_tiff),
    Backend(
        "openslide",
        _openslide.EXTENSIONS,
        _openslide.can_open,
        _openslide.open_openslide,
        _openslide.available,
        _openslide.INSTALL_HINT,
    ),
    Backend("image", _image.EXTENSIONS, _image.can_open, _image.open_image),
]


def register_backend(backend: Backend, *, first: bool = False) -> None:
    """Add a backend to the registry (tried last, or first with ``first=True``)."""
    global BACKENDS
    rest = [b for b in BACKENDS if b.name != backend.name]
    BACKENDS[:] = [backend, *rest] if first else [*rest, backend]


def supported_extensions() -> list[str]:
    """Sorted extensions some registered backend may read."""
    return sorted({ext for b in BACKENDS for ext in b.extensions})


def open_slide(
    path: str | os.PathLike[str],
    *,
    mpp: float | tuple[float, float] | None = None,
    backend: str | None = None,
) -> Slide:
    """Open a whole-slide image as a lazy pyramid.

    Parameters
    ----------
    path : str or path-like
        The slide file (SVS, NDPI, OME-TIFF, tiled TIFF, MRXS, ..., or a small PNG/JPEG).
    mpp : float or (float, float), optional
        Level-0 pixel size in µm/px (x, y), overriding the file's metadata; required when the
        file has none (PNG/JPEG, plain TIFF). When it differs from the file's own by more than
        5 % (``MPP_DISAGREEMENT``), a :class:`SlideWarning` names both (``mpp`` is used).
    backend : str, optional
        Force a backend by name (see :data:`BACKENDS`) instead of the first that accepts the file.

    Returns
    -------
    Slide
        Levels are dask arrays ``(Y, X, 3) uint8``; nothing is decoded until computed.

    Raises
    ------
    SlideError
        The file is missing, empty, not a regular file (a folder, named pipe, link loop), not
        readable, of an unsupported type, not what its extension says, truncated, damaged, has a
        header that claims more pixels than the file can hold, or has no pixel size; one line
        that names the file, the problem and the fix. Corrupt tile data raise
        :class:`SlideError` when read.

    Notes
    -----
    Cheap checks come first (file type, size, first bytes, then the header's tile table against
    the file size), so a bad file fails in milliseconds without decoding anything; every later
    read decodes at most one file tile or strip at a time (see ``senpath.io._checks``).
    """
    path = Path(path)
    probe = probe_file(path)  # never opens a pipe, a folder or a device
    user_mpp = normalize_mpp(path, mpp)

    candidates = BACKENDS
    if backend is not None:
        candidates = [b for b in BACKENDS if b.name == backend]
        if not candidates:
            names = ", ".join(b.name for b in BACKENDS)
            raise SlideError(f"{path}: unknown backend {backend!r}; choose one of: {names}.")
    name = path.name.lower()
    if not any(name.endswith(ext) for b in candidates for ext in b.extensions):
        raise SlideError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; senpath reads "
            f"{', '.join(supported_extensions())}. Convert the slide to a tiled pyramidal TIFF "
            "or OME-TIFF if its format is not listed."
        )
    declined = []
    for b in candidates:
        if not b.available():
            if any(name.endswith(ext) for ext in b.extensions):
                declined.append(f"{b.name}: not installed ({b.install_hint})")
            continue
        reason = b.can_open(path)
        if reason is not None:
            try:
                slide = b.open(path, mpp=user_mpp, reason=reason)
            except SlideError:
                raise
            except Exception as exc:  # a reader library's own error on a damaged file
                raise SlideError(
                    f"{path}: the {b.name} reader failed ({type(exc).__name__}: {exc}); the file "
                    "is probably damaged or an unusual variant: re-export it as OME-TIFF."
                ) from exc
            disagreement = slide.mpp_disagreement()
            if disagreement is not None:  # the explicit value is used, as asked
                warnings.warn(disagreement, SlideWarning, stacklevel=2)
            return slide
        if any(name.endswith(ext) for ext in b.extensions):
            declined.append(f"{b.name}: does not recognise the content")
    mismatch = content_mismatch(path, probe.head)
    if mismatch is not None:
        raise mismatch
    raise SlideError(
        f"{path}: no reader can open this file ({'; '.join(declined)}). The file may be damaged, "
        "or not what its extension says; check it opens in QuPath or convert it to OME-TIFF."
    )
