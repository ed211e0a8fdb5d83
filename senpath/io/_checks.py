"""Cheap sanity checks on a slide file, run before anything is decoded.

Half-copied files on network drives, placeholders and files whose extension lies reach the readers
every day. Each check here costs a ``stat``, a few hundred bytes of the file or the header's tile
table, and turns such a file into one :class:`~senpath.io.SlideError` line that names the file and
the problem, instead of a hang (a named pipe), a raw library error or a decode that allocates
gigabytes (a header claiming 10⁶ x 10⁶ px over a file of a few KB).

The memory of every read is bounded by :data:`MAX_SEGMENT_BYTES` (one file tile or strip, decoded);
a file that passes these checks is read tile by tile (see ``_tiff.TiffLevelArray``).
"""

from __future__ import annotations

import errno
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from senpath.io._slide import SlideError

#: Largest decoded tile or strip (bytes) senpath reads; a read holds a few of them at a time.
#: 128 MiB is an 8-bit RGB strip of 6,500 x 6,500 px; slide tiles are 256-1,024 px (0.2-3 MiB).
MAX_SEGMENT_BYTES = 128 * 2**20
#: Largest ratio of decoded pixel bytes to the bytes on disk that hold them. Deflate cannot exceed
#: ~1,032:1 and JPEG tiles of blank glass reach a few hundred to one; zstd or JPEG 2000 on constant
#: tiles go higher, hence the margin. A header claiming 10⁶ x 10⁶ px over a few MB is ~10⁶:1.
MAX_COMPRESSION_RATIO = 10_000
#: Largest ratio of a whole level's decoded bytes, empty (sparse) tiles included, to the file size.
#: Sparse files leave glass tiles out; even a slide that is 99 % glass stays far below this.
MAX_SPARSE_RATIO = 100_000
#: Bytes of the file's start read to recognise its content.
HEAD_BYTES = 512

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SIGNATURES: tuple[tuple[tuple[bytes, ...], str], ...] = (
    (_TIFF_MAGIC, "a TIFF file"),
    ((b"\x89PNG\r\n\x1a\n",), "a PNG image"),
    ((b"\xff\xd8\xff",), "a JPEG image"),
    ((b"GIF87a", b"GIF89a"), "a GIF image"),
    ((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"), "a JPEG 2000 image"),
    ((b"%PDF",), "a PDF document"),
    ((b"PK\x03\x04",), "a ZIP archive"),
    ((b"\x1f\x8b",), "a gzip archive"),
    ((b"SQLite format 3\x00",), "an SQLite database"),
)
#: What each extension promises, for the extensions whose content we can recognise.
_EXPECTED = {
    **{
        ext: "a TIFF file"
        for ext in (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".btf", ".tf8", ".tf2")
    },
    ".qptiff": "a TIFF file",
    ".png": "a PNG image",
    ".jpg": "a JPEG image",
    ".jpeg": "a JPEG image",
}
_RENAME = {"a TIFF file": ".tif", "a PNG image": ".png", "a JPEG image": ".jpg"}


@dataclass(frozen=True)
class FileProbe:
    """What :func:`probe_file` learnt about a regular, readable, non-empty file.

    Attributes
    ----------
    size : int
        File size in bytes.
    head : bytes
        The first :data:`HEAD_BYTES` bytes (fewer for a smaller file).
    """

    size: int
    head: bytes


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def _not_regular(path: Path, mode: int) -> SlideError:
    return SlideError(
        f"{path}: is {_kind_of(mode)}, not a regular file; senpath reads only slide files (reading "
        "a pipe or device could wait forever): copy the slide to a file and pass that."
    )


def probe_file(path: Path) -> FileProbe:
    """Check that ``path`` is a readable, non-empty regular file and read its first bytes.

    Nothing that is not a regular file is ever opened: a named pipe would block the batch until a
    writer appears. The file is opened non-blocking and checked again on the open descriptor, so
    a path swapped for a pipe between the two checks cannot block either.

    Parameters
    ----------
    path : pathlib.Path
        The slide file.

    Returns
    -------
    FileProbe
        Size and first bytes.

    Raises
    ------
    SlideError
        Missing file, broken symbolic link, link loop, folder, pipe, socket or device, no read
        permission, empty file; the message names the file and the fix.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _stat_error(path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise SlideError(
            f"{path}: is a folder, not a slide file; pass the slide file inside it (for MRXS, the "
            ".mrxs file next to the folder)."
        )
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    if st.st_size == 0:
        raise SlideError(f"{path}: the file is empty (0 bytes); copy or export the slide again.")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise SlideError(
            f"{path}: permission denied; make the file readable for this user (chmod a+r)."
        ) from None
    except OSError as exc:
        raise SlideError(f"{path}: cannot open the file ({exc.strerror}).") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since the stat above
            raise _not_regular(path, st.st_mode)
        head = os.read(fd, HEAD_BYTES)
    except OSError as exc:
        raise SlideError(
            f"{path}: cannot read the file ({exc.strerror}); check the disk or network share."
        ) from None
    finally:
        os.close(fd)
    return FileProbe(size=int(st.st_size), head=head)


def _stat_error(path: Path, exc: OSError) -> SlideError:
    if exc.errno == errno.ELOOP:
        return SlideError(
            f"{path}: a symbolic link loop (the link leads back to itself); replace it with the "
            "slide file or a link to it."
        )
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return SlideError(
            f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; copy the slide "
            "itself or fix the link."
        )
    if exc.errno == errno.ENOENT:
        return SlideError(f"{path}: no such file; check the path (relative to {Path.cwd()}).")
    if exc.errno == errno.EACCES:
        return SlideError(
            f"{path}: permission denied on a folder of its path; make the folders searchable "
            "(chmod a+x) for this user."
        )
    return SlideError(f"{path}: cannot reach the file ({exc.strerror}).")


def describe_content(head: bytes) -> str:
    """Name what the bytes ``head`` (a file's start) hold: ``"a PNG image"``, ``"text"``, ..."""
    for magics, kind in _SIGNATURES:
        if head.startswith(magics):
            return kind
    if head[128:132] == b"DICM":
        return "a DICOM file"
    if not head.strip(b"\x00"):
        return "only zero bytes (space reserved by a copy that never wrote the data)"
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a web page saved in place of the slide?)"
    text = head.decode("utf-8", errors="replace")  # a character cut at the end is one U+FFFD
    if sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text):
        return "text"
    return "unrecognised binary data"


def content_mismatch(path: Path, head: bytes) -> SlideError | None:
    """An error when the file's first bytes are not what its extension promises, else None.

    Only extensions whose content has a signature (TIFF family, PNG, JPEG) are checked; MRXS and
    VMS are text and are left to OpenSlide.
    """
    ext = path.suffix.lower()
    expected = _EXPECTED.get(ext)
    if expected is None:
        return None
    found = describe_content(head)
    if found == expected:
        return None
    if found in _RENAME:
        fix = f"rename it to {path.stem}{_RENAME[found]} (or export the slide again)"
    elif found.startswith("only zero bytes"):
        fix = "the copy is incomplete: copy or download it again"
    else:
        fix = "it is not a slide, or is damaged: copy or export the slide again"
    return SlideError(
        f"{path}: no reader can open this file: it holds {found}, not {expected} as its "
        f"extension {ext!r} says; {fix}."
    )


def human_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``: a byte count for a message."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def check_ratio(path: Path, *, decoded: int, stored: int, compressed: bool, what: str) -> None:
    """Refuse ``decoded`` pixel bytes that ``stored`` bytes on disk cannot hold.

    Parameters
    ----------
    path : pathlib.Path
        The file (for the message).
    decoded : int
        Bytes the header says the pixels take once decoded.
    stored : int
        Bytes on disk that hold them (tile data, or the file size).
    compressed : bool
        False for uncompressed data, which must take at least as many bytes as it decodes to.
    what : str
        What the pixels are, e.g. ``"level 0 (1000000 x 1000000 px)"``.
    """
    limit = MAX_COMPRESSION_RATIO if compressed else 1.0
    if decoded <= limit * max(stored, 1):
        return
    raise SlideError(
        f"{path}: the header describes {what}, {human_bytes(decoded)} of pixels, but the file "
        f"holds only {human_bytes(stored)} of image data for it; the file is truncated (a "
        "half-finished copy?) or its header is corrupt: copy or export the slide again."
    )


def check_tiff_level(path: Path, level: int, page: Any, file_size: int) -> None:
    """Check one pyramid level's tile (or strip) table against its header and the file.

    Uses only what tifffile exposes (tile/strip size, ``page.chunked``, ``dataoffsets``,
    ``databytecounts``, ``compression``), cheapest first: the tile size must be positive, the
    table must list a tile for every place the header's size needs, tiles must lie inside the
    file, at least one must hold data, the header's size must fit the bytes on disk (see
    :func:`check_ratio`; :data:`MAX_SPARSE_RATIO` with empty tiles counted), and one decoded tile
    must fit :data:`MAX_SEGMENT_BYTES`.

    Parameters
    ----------
    path : pathlib.Path
        The TIFF file.
    level : int
        Pyramid level index (for the message).
    page : tifffile.TiffPage
        The level's key page.
    file_size : int
        Size of the file in bytes.

    Raises
    ------
    SlideError
        For the first problem found; the message names the file, the level and the fix.
    """
    height, width = int(page.imagelength), int(page.imagewidth)
    where = f"level {level} ({width} x {height} px)"
    itemsize = np.dtype(page.dtype).itemsize if page.dtype is not None else 1
    samples = int(page.samplesperpixel)
    planes = samples if int(page.planarconfig) == 2 else 1
    seg_samples = samples // planes
    if page.is_tiled or 322 in page.tags or 323 in page.tags:  # TileWidth, TileLength
        seg_rows, seg_cols, kind = int(page.tilelength), int(page.tilewidth), "tile"
        seg_rows *= max(1, int(page.tiledepth))
    else:
        seg_rows, seg_cols, kind = min(int(page.rowsperstrip), height), width, "strip"
    if seg_rows < 1 or seg_cols < 1:
        raise SlideError(
            f"{path}: {where} has {kind}s of {seg_cols} x {seg_rows} px; the header is corrupt: "
            "export the slide again."
        )
    segment_bytes = seg_rows * seg_cols * seg_samples * itemsize
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    needed = math.prod(int(n) for n in page.chunked)
    listed = min(offsets.size, counts.size)
    if listed < needed:
        raise SlideError(
            f"{path}: the {kind} table of {where} lists {listed} {kind}s but the header's size "
            f"needs {needed}; the header is corrupt or the file is truncated: copy or export the "
            "slide again."
        )
    offsets, counts = offsets[:needed], counts[:needed]
    if bool((counts < 0).any() or (offsets < 0).any()):
        raise SlideError(f"{path}: the {kind} table of {where} is corrupt; export it again.")
    ends = offsets + counts
    outside = int((ends > file_size).sum())
    if outside:
        raise SlideError(
            f"{path}: truncated: {outside} of {needed} {kind}s of level {level} lie past the end "
            f"of the file ({file_size} bytes); the copy is incomplete: copy or download it again."
        )
    present = (offsets > 0) & (counts > 0)
    n_present = int(present.sum())
    if n_present == 0:
        raise SlideError(
            f"{path}: no image data: every {kind} of {where} is empty (no bytes in the file); "
            "the file is a placeholder or a half-finished copy: copy or export the slide again."
        )
    if page.is_tiled:
        decoded = n_present * segment_bytes
    else:  # the last strip of each plane may be shorter
        per_plane = math.ceil(height / seg_rows)
        rows = np.minimum(seg_rows, height - (np.arange(needed) % per_plane) * seg_rows)
        decoded = int(rows[present].sum()) * seg_cols * seg_samples * itemsize
    stored = min(int(counts[present].sum()), file_size)
    compressed = int(page.compression) != 1
    check_ratio(path, decoded=decoded, stored=stored, compressed=compressed, what=where)
    total = height * width * samples * itemsize
    if total > MAX_SPARSE_RATIO * file_size:
        raise SlideError(
            f"{path}: the header describes {where}, {human_bytes(total)} of pixels, but the file "
            f"is only {human_bytes(file_size)} and {needed - n_present} of its {needed} {kind}s are "
            "empty; the header is corrupt or the copy incomplete: copy or export the slide again."
        )
    # last: a file holding this much data is real, only too coarse-grained to read safely
    if segment_bytes > MAX_SEGMENT_BYTES:
        raise SlideError(
            f"{path}: {where} is stored in {kind}s of {seg_cols} x {seg_rows} px that decode to "
            f"{human_bytes(segment_bytes)} each; senpath decodes at most "
            f"{human_bytes(MAX_SEGMENT_BYTES)} at a time to bound its memory: save the image as a "
            "tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid --compression jpeg)."
        )


def check_level_sizes(path: Path, shapes: list[tuple[int, int]]) -> None:
    """Refuse a pyramid whose lower levels are larger than level 0 (the first, full-resolution one).

    Parameters
    ----------
    path : pathlib.Path
        The file.
    shapes : list of (int, int)
        ``(height, width)`` of each level in the file's order, level 0 first.
    """
    h0, w0 = shapes[0]
    for i, (h, w) in enumerate(shapes[1:], start=1):
        if h > h0 or w > w0:
            raise SlideError(
                f"{path}: pyramid level {i} is {w} x {h} px, larger than level 0 ({w0} x {h0} px); "
                "the pyramid is corrupt: export the slide again."
            )
