"""Hostile and half-copied slide files (issue 16): one clear line each, no hang, bounded memory.

Every file is made here (tifffile, or a few raw bytes patched into what tifffile wrote) and is
small: a header claiming 10⁶ x 10⁶ px is a few KB to a few MB on disk. Each is read in a child
process the way a batch reads a slide (``open_slide``, then the low-resolution tissue mask), under
a time limit and with its peak memory (RSS) measured, so a hang or a blow-up fails the test
instead of the test machine. The last test runs ``senpath run`` on a folder of such files plus two
good slides.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="named pipes, links, /proc/self/status peak RSS"
)

#: Peak resident memory (MiB) of a whole Python process reading a bad file (interpreter, numpy,
#: dask and tifffile included): a bad file must cost no more than this.
MEMORY_BOUND_MIB = 300
#: A read that takes longer than this has hung (a good small slide opens in well under a second).
TIMEOUT_S = 20.0
#: A child past this is stopped at once, so a regression cannot take the test machine down.
_KILL_RSS_MIB = 1500

_RES = {"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}  # 0.5 µm/px

# What a batch does with a slide first: open it and compute the tissue mask at low resolution.
_CHILD = """
import json, sys
from senpath.config import AnalysisConfig
from senpath.io import open_slide
path, mpp = sys.argv[1], None if sys.argv[2] == "-" else float(sys.argv[2])
try:
    slide = open_slide(path, mpp=mpp)
    from senpath.tissue import tissue_mask
    tissue_mask(slide, target_mpp=AnalysisConfig().tissue_mpp)
    result = {"error": None, "message": ""}
except Exception as exc:
    result = {"error": type(exc).__name__, "message": str(exc)}
# VmHWM: this process's own peak (ru_maxrss would include the parent's, shared until exec)
with open("/proc/self/status") as status:
    peak = [line.split()[1] for line in status if line.startswith("VmHWM:")]
result["max_rss_mib"] = int(peak[0]) / 1024
print(json.dumps(result))
"""


@dataclass
class Outcome:
    """How a child process fared with one file."""

    error: str | None
    message: str
    peak_rss_mib: float
    seconds: float
    stopped: str | None  # "timeout" or "memory" when the child had to be killed
    stderr: str


def read_in_child(path: Path, *, mpp: float | None = None) -> Outcome:
    """Open ``path`` and compute its tissue mask in a child process, watching time and RSS."""
    import psutil

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-c", _CHILD, str(path), "-" if mpp is None else str(mpp)]
    err_path = path.parent / f".{path.name}.stderr"
    t0 = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env, cwd=path.parent)
        watch = psutil.Process(proc.pid)
        peak, stopped = 0, None
        while proc.poll() is None:
            try:
                peak = max(peak, watch.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            if peak > _KILL_RSS_MIB * 2**20:
                stopped = "memory"
            elif time.monotonic() - t0 > TIMEOUT_S:
                stopped = "timeout"
            if stopped:
                proc.kill()
                break
            time.sleep(0.01)
        out = proc.communicate()[0].decode()
    seconds = time.monotonic() - t0
    stderr = err_path.read_text(errors="replace")
    if stopped:
        return Outcome(None, "", peak / 2**20, seconds, stopped, stderr)
    result = json.loads(out.strip().splitlines()[-1])
    rss = max(peak / 2**20, result["max_rss_mib"])
    return Outcome(result["error"], result["message"], rss, seconds, None, stderr)


# ----------------------------------------------------------------------------- file builders


def _tiled(path: Path, shape=(64, 64), tile=(32, 32), compression="zlib", **kw) -> Path:
    image = np.full((*shape, 3), 200, np.uint8)
    tifffile.imwrite(
        path, image, tile=tile, photometric="rgb", compression=compression, **_RES, **kw
    )
    return path


def _stripped(path: Path, shape=(64, 64), compression=None) -> Path:
    image = np.full((*shape, 3), 200, np.uint8)
    tifffile.imwrite(
        path, image, rowsperstrip=shape[0], photometric="rgb", compression=compression, **_RES
    )
    return path


def _overwrite(path: Path, **tags: object) -> None:
    """Rewrite tags of the first page in place (tifffile appends values that no longer fit)."""
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for name, value in tags.items():
            tif.pages[0].tags[name].overwrite(value)


def _tiles(side: int, tile: int) -> int:
    return (-(-side // tile)) ** 2


def _fifo(tmp: Path) -> Path:
    path = tmp / "pipe.tif"
    os.mkfifo(path)  # no writer: opening it for reading blocks forever
    return path


def _symlink_loop(tmp: Path) -> Path:
    path = tmp / "loop.svs"
    path.symlink_to(path.name)
    return path


def _dangling_symlink(tmp: Path) -> Path:
    path = tmp / "link.svs"
    path.symlink_to(tmp / "gone.svs")
    return path


def _tiled_1e6_empty(tmp: Path) -> Path:
    """10⁶ x 10⁶ px in 1,024-px tiles: a full tile table (7.6 MB) of zeros, no pixel data."""
    path = _tiled(tmp / "huge_sparse.tif", shape=(16, 16), tile=(1024, 1024))
    n = _tiles(1_000_000, 1024)
    _overwrite(
        path,
        ImageWidth=1_000_000,
        ImageLength=1_000_000,
        TileOffsets=np.zeros(n, np.uint32),
        TileByteCounts=np.zeros(n, np.uint32),
    )
    return path


def _tiled_1e6_tables_past_end(tmp: Path) -> Path:
    """10⁶ x 10⁶ px in 256-px tiles whose 15 M-entry tile tables lie past the end of the file."""
    path = _tiled(tmp / "huge_tables.tif", shape=(256, 256), tile=(256, 256))
    _overwrite(path, ImageWidth=1_000_000, ImageLength=1_000_000)
    n = _tiles(1_000_000, 256)
    with tifffile.TiffFile(path) as tif:
        assert tif.byteorder == "<" and not tif.is_bigtiff
        entries = [tif.pages[0].tags[code].offset for code in (324, 325)]
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        for k, entry in enumerate(entries):  # an IFD entry: code, type, count, value offset
            fh.seek(entry + 4)
            fh.write(struct.pack("<II", n, size + 16 + 4 * n * k))
    return path


def _tiled_1e6_patched_size(tmp: Path) -> Path:
    """A good 512-px tiled TIFF whose header was changed to say 10⁶ x 10⁶ px (4 tiles listed)."""
    path = _tiled(tmp / "huge_header.tif", shape=(512, 512), tile=(256, 256))
    _overwrite(path, ImageWidth=1_000_000, ImageLength=1_000_000)
    return path


def _tiled_shared_tile(tmp: Path) -> Path:
    """400,000² px whose 152,881 tile entries all point at one small compressed tile."""
    path = _tiled(tmp / "one_tile_everywhere.tif", shape=(16, 16), tile=(1024, 1024))
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    n = _tiles(400_000, 1024)
    _overwrite(
        path,
        ImageWidth=400_000,
        ImageLength=400_000,
        TileOffsets=np.full(n, offset, np.uint32),
        TileByteCounts=np.full(n, count, np.uint32),
    )
    return path


def _one_strip(tmp: Path, side: int) -> Path:
    """One uncompressed strip declared ``side`` x ``side`` px over 12 KiB of data."""
    path = _stripped(tmp / f"strip_{side}.tif")
    _overwrite(path, ImageWidth=side, ImageLength=side, RowsPerStrip=side)
    return path


def _deflate_bomb(tmp: Path) -> Path:
    """8,000² px in one deflate strip: 183 MiB decoded from 186 KB on disk (genuine data)."""
    path = _stripped(tmp / "bomb.tif", shape=(16, 16), compression="zlib")
    side = 8000
    packer = zlib.compressobj(9)
    rows = bytes(side * 3 * 500)
    blob = b"".join(packer.compress(rows) for _ in range(side // 500)) + packer.flush()
    offset = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(blob)
    _overwrite(
        path,
        ImageWidth=side,
        ImageLength=side,
        RowsPerStrip=side,
        StripOffsets=(offset,),
        StripByteCounts=(len(blob),),
    )
    return path


def _tile_width_zero(tmp: Path) -> Path:
    path = _tiled(tmp / "tile0.tif")
    _overwrite(path, TileWidth=0)
    return path


def _svs(path: Path, *, mpp: str = "0.25") -> Path:
    """Aperio-like SVS: tiled baseline, stripped thumbnail, tiled level 1."""
    image = np.full((512, 768, 3), 200, np.uint8)
    image[100:300, 200:500] = (120, 60, 140)
    head = "Aperio Image Library v12.0.0\n"
    desc = head + f"768x512 (128x128) JPEG/RGB Q=90|AppMag = 40|MPP = {mpp}"
    kw = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(128, 128), description=desc, compression="jpeg", **kw)
        tw.write(image[::4, ::4].copy(), description=head + "thumb", **kw)
        tw.write(image[::2, ::2].copy(), tile=(128, 128), description=head + "l1", **kw)
    return path


def _level_larger_than_level0(tmp: Path) -> Path:
    """An SVS whose level 1 header says 1,536 x 1,024 px (level 0 is 768 x 512), same tile count."""
    path = _svs(tmp / "inverted.svs")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tags = tif.pages[2].tags  # baseline, thumbnail, level 1
        for name, value in (("ImageWidth", 1536), ("ImageLength", 1024)):
            tags[name].overwrite(value)
        for name in ("TileWidth", "TileLength"):
            tags[name].overwrite(512)  # 3 x 2 tiles, as the real 384 x 256 px in 128-px tiles
    return path


def _cut_svs(tmp: Path, where: str) -> Path:
    whole = _svs(tmp / "whole.svs")
    with tifffile.TiffFile(whole) as tif:
        first, second = tif.pages[0], tif.pages[1]
        ifd_end = first.offset + 2 + 12 * len(first.tags) + 4
    cut = {
        "header": 8,  # the header only: the first image directory is missing
        "tile_table": ifd_end + 10,  # directory complete, its values cut off
        "lower_levels": second.offset,  # level 0 whole, everything after it missing
    }[where]
    path = tmp / f"cut_{where}.svs"
    path.write_bytes(whole.read_bytes()[:cut])
    whole.unlink()
    return path


def _png_named_svs(tmp: Path) -> Path:
    from PIL import Image

    path = tmp / "photo.svs"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(path, format="PNG")
    return path


def _text_named_tif(tmp: Path) -> Path:
    path = tmp / "notes.tif"
    path.write_text("slide P01 was re-scanned on Monday; see the lab book\n" * 4)
    return path


def _zeros_named_svs(tmp: Path) -> Path:
    path = tmp / "preallocated.svs"
    path.write_bytes(bytes(64 * 1024))  # space reserved by a copy that never wrote the data
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_huge(tmp: Path) -> Path:
    """A PNG header saying 12,000² px RGB, then 20 rows of data and the end of the file."""
    side = 12_000
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress((b"\x00" + b"\xc8" * (3 * side)) * 20)
    path = tmp / "cut_photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows))
    return path


def _ome_physical_size_text(tmp: Path) -> Path:
    path = tmp / "ome_text_size.ome.tif"
    image = np.full((64, 64, 3), 200, np.uint8)
    tifffile.imwrite(
        path, image, tile=(32, 32), photometric="rgb", metadata={"PhysicalSizeX": 0.5}, ome=True
    )
    data = path.read_bytes()
    assert data.count(b'PhysicalSizeX="0.5"') == 1
    path.write_bytes(data.replace(b'PhysicalSizeX="0.5"', b'PhysicalSizeX="abc"'))
    return path


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    problem: str  # regular expression for the problem part of the message
    mpp: float | None = None


_TRUNCATED = r"truncated or damaged: its header points past the end of the file"
CASES = {
    "named_pipe": Case(_fifo, r"is a named pipe \(FIFO\), not a regular file"),
    "symlink_loop": Case(_symlink_loop, r"a symbolic link loop"),
    "dangling_symlink": Case(_dangling_symlink, r"a symbolic link to .*gone\.svs, which does not"),
    "tiled_1e6_no_data": Case(
        _tiled_1e6_empty, r"no image data: every tile of level 0 \(1000000 x 1000000 px\) is empty"
    ),
    "tiled_1e6_tables_past_end": Case(_tiled_1e6_tables_past_end, _TRUNCATED),
    "tiled_1e6_patched_size": Case(
        _tiled_1e6_patched_size,
        r"tile table of level 0 \(1000000 x 1000000 px\) lists 4 tiles but the header's size "
        r"needs 15264649",
    ),
    "tiled_data_far_below_header": Case(
        _tiled_shared_tile,
        r"header describes level 0 \(400000 x 400000 px\), 447\.\d GiB of pixels, but the file "
        r"holds only 1\.\d MiB",
    ),
    "one_strip_50k_no_data": Case(
        lambda tmp: _one_strip(tmp, 50_000),
        r"header describes level 0 \(50000 x 50000 px\), 7\.0 GiB of pixels, but the file holds "
        r"only 12\.0 KiB",
    ),
    "one_strip_1e6_no_data": Case(
        lambda tmp: _one_strip(tmp, 1_000_000),
        r"header describes level 0 \(1000000 x 1000000 px\), 2\.7 TiB of pixels",
    ),
    "one_strip_deflate_bomb": Case(
        _deflate_bomb,
        r"stored in strips of 8000 x 8000 px that decode to 183\.1 MiB each; senpath decodes at "
        r"most 128\.0 MiB",
    ),
    "tile_width_zero": Case(_tile_width_zero, r"tiles of 0 x 32 px; the header is corrupt"),
    "level_larger_than_level_0": Case(
        _level_larger_than_level0,
        r"pyramid level 1 is 1536 x 1024 px, larger than level 0 \(768 x 512 px\)",
    ),
    "svs_cut_after_header": Case(lambda tmp: _cut_svs(tmp, "header"), _TRUNCATED),
    "svs_cut_in_tile_table": Case(lambda tmp: _cut_svs(tmp, "tile_table"), _TRUNCATED),
    "svs_cut_before_lower_levels": Case(lambda tmp: _cut_svs(tmp, "lower_levels"), _TRUNCATED),
    "png_named_svs": Case(
        _png_named_svs,
        r"it holds a PNG image, not a TIFF file as its extension '\.svs' says; rename it to "
        r"photo\.png",
    ),
    "text_named_tif": Case(_text_named_tif, r"it holds text, not a TIFF file"),
    "zeros_named_svs": Case(_zeros_named_svs, r"it holds only zero bytes"),
    "png_header_12000_truncated": Case(
        _png_header_huge, r"header describes a 12000 x 12000 px image, 412\.0 MiB", mpp=0.5
    ),
    "svs_mpp_nan": Case(
        lambda tmp: _svs(tmp / "mpp_nan.svs", mpp="nan"),
        r"pixel size nan µm/px from Aperio ImageDescription MPP is not a microscope resolution",
    ),
    "svs_mpp_not_a_number": Case(
        lambda tmp: _svs(tmp / "mpp_text.svs", mpp="0.25.1"),
        r"no pixel size .*the Aperio MPP field says '0\.25\.1', not a number.*--mpp",
    ),
    "ome_physical_size_not_a_number": Case(
        _ome_physical_size_text, r"no pixel size .*OME-XML PhysicalSizeX is 'abc', not a number"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_file_gives_one_line_fast_in_bounded_memory(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    path = case.build(tmp_path)
    outcome = read_in_child(path, mpp=case.mpp)
    assert outcome.stopped is None, (
        f"{name}: stopped for {outcome.stopped} after {outcome.seconds:.1f} s at "
        f"{outcome.peak_rss_mib:.0f} MiB"
    )
    assert outcome.error == "SlideError", (outcome.error, outcome.message, outcome.stderr[-2000:])
    message = outcome.message
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and message.count(path.name) == 1, message
    assert re.search(case.problem, message), message
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.peak_rss_mib < MEMORY_BOUND_MIB, (name, outcome.peak_rss_mib)


def _offsets_past_end(tmp: Path) -> Path:
    path = _tiled(tmp / "offsets_outside.tif")
    with tifffile.TiffFile(path) as tif:
        offsets = list(tif.pages[0].dataoffsets)
    offsets[-1] = path.stat().st_size + 10_000
    _overwrite(path, TileOffsets=np.asarray(offsets, np.uint32))
    return path


@pytest.mark.slow
def test_batch_on_a_folder_of_bad_files_and_two_good_slides(tmp_path: Path) -> None:
    from senpath import synth
    from senpath.results import is_complete

    folder = tmp_path / "slides"
    folder.mkdir()
    params = synth.SynthParams(tissue_fraction=0.95)
    for name, seed in (("good-a", 1), ("good-b", 2)):
        synth.write_slide(
            folder / f"{name}.tif", assay="ki67", shape=(512, 512), mpp=0.5, seed=seed,
            params=params, write_labels=False,
        )  # fmt: skip
    expected = {  # slide id (file stem) -> the problem its line must name
        "pipe": CASES["named_pipe"].problem,
        "loop": r"[Ss]ymbolic link",
        "huge_sparse": CASES["tiled_1e6_no_data"].problem,
        "strip_50000": CASES["one_strip_50k_no_data"].problem,
        "photo": CASES["png_named_svs"].problem,
        "notes": CASES["text_named_tif"].problem,
        "cut_lower_levels": _TRUNCATED,
        "offsets_outside": r"truncated: 1 of 4 tiles of level 0 lie past the end of the file",
        "folder": r"is a folder, not a slide file",
        "empty": r"the file is empty \(0 bytes\)",
    }
    for build in (
        _fifo, _symlink_loop, _tiled_1e6_empty, lambda t: _one_strip(t, 50_000), _png_named_svs,
        _text_named_tif, lambda t: _cut_svs(t, "lower_levels"), _offsets_past_end,
    ):  # fmt: skip
        build(folder)
    (folder / "folder.svs").mkdir()
    (folder / "empty.svs").write_bytes(b"")
    if os.geteuid() != 0:  # root reads any file
        locked = folder / "locked.tif"
        locked.write_bytes((folder / "good-a.tif").read_bytes())
        locked.chmod(0)
        expected["locked"] = r"permission denied"

    out = tmp_path / "results"
    code = "from senpath.cli import main; main()"
    args = [sys.executable, "-c", code, "run", str(folder), "--assay", "ki67", "--out", str(out)]
    args += ["--segmenter", "classical"]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"senpath run hung: {exc}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output  # the batch had failures
    assert "Traceback" not in output, output
    for slide_id in ("good-a", "good-b"):
        assert is_complete(out / slide_id), output
    rows = [line for line in output.splitlines() if " failed " in line]
    assert f"{len(expected)} failed" in output, output
    for slide_id, problem in expected.items():
        mine = [row for row in rows if row.split()[1:2] == [slide_id]]
        assert len(mine) == 1, (slide_id, rows)
        assert re.search(problem, mine[0]), mine[0]
    log = (out / "failures.log").read_text()  # the traceback of each, for debugging
    for slide_id in expected:
        assert re.search(rf"^=== \S+ \S+ {re.escape(slide_id)} \(", log, re.M), slide_id
