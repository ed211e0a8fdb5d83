"""Tests for senpath.io: slides are written here with tifffile (small, seeded)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from senpath.io import (
    BACKENDS,
    Backend,
    Slide,
    SlideError,
    SlideWarning,
    open_slide,
    register_backend,
    supported_extensions,
)


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth-ish RGB so JPEG is close to the original; values 60-250."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 250, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[: shape[0], : shape[1]].copy()


def write_pyramid(
    path: Path,
    image: np.ndarray,
    *,
    levels: int = 3,
    tile: int = 64,
    compression: str | None = None,
    mpp: float | None = 0.5,
) -> None:
    """Generic pyramidal TIFF: level 0 + SubIFDs, resolution tags in cm."""
    kwargs: dict = {
        "photometric": "rgb" if image.ndim == 3 and image.shape[-1] in (3, 4) else "minisblack"
    }
    if mpp is not None:
        kwargs.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    if image.ndim == 3 and image.shape[-1] == 4:
        kwargs["extrasamples"] = ["unassalpha"]
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(tile, tile), compression=compression, subifds=levels - 1, **kwargs)
        for i in range(1, levels):
            kwargs.pop("resolution", None)
            kwargs.pop("resolutionunit", None)
            tw.write(
                image[:: 2**i, :: 2**i].copy(),
                tile=(tile, tile),
                compression=compression,
                subfiletype=1,
                **kwargs,
            )


def write_svs(path: Path, image: np.ndarray, *, mpp: float | None = 0.2525) -> None:
    """Aperio-like SVS: baseline, thumbnail, level 1, label, macro; MPP in the description."""
    head = "Aperio Image Library v12.0.0\n"
    desc = head + f"{image.shape[1]}x{image.shape[0]} (128x128) JPEG/RGB Q=90|AppMag = 40"
    if mpp is not None:
        desc += f"|MPP = {mpp}"
    kw = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(128, 128), description=desc, compression="jpeg", **kw)
        tw.write(image[::4, ::4].copy(), description=head + "thumb", **kw)
        tw.write(
            image[::2, ::2].copy(),
            tile=(128, 128),
            description=head + "l1",
            compression="jpeg",
            **kw,
        )
        tw.write(image[:50, :60].copy(), description=head + "label", subfiletype=1, **kw)
        tw.write(image[:40, :90].copy(), description=head + "macro", subfiletype=9, **kw)


@pytest.fixture
def pyramid(tmp_path: Path) -> tuple[Path, np.ndarray]:
    image = _image((300, 420))
    path = tmp_path / "pyr.tif"
    write_pyramid(path, image, compression=None)
    return path, image


def test_generic_pyramid_levels_mpp_and_pixels(pyramid: tuple[Path, np.ndarray]) -> None:
    path, image = pyramid
    slide = open_slide(path)
    assert isinstance(slide, Slide)
    assert slide.slide_id == "pyr"
    assert slide.backend == "tifffile" and slide.vendor == "generic-tiff"
    assert [lv.shape for lv in slide.levels] == [(300, 420, 3), (150, 210, 3), (75, 105, 3)]
    assert all(lv.dtype == np.uint8 for lv in slide.levels)
    assert slide.mpp == pytest.approx((0.5, 0.5))
    assert slide.downsamples == pytest.approx([1.0, 2.0, 4.0])
    assert slide.tile_size == (64, 64)
    # chunks are whole multiples of the file's tiles
    assert all(c % 64 == 0 for c in slide.levels[0].chunks[0][:-1])
    np.testing.assert_array_equal(slide.levels[0].compute(), image)
    np.testing.assert_array_equal(slide.levels[2].compute(), image[::4, ::4])
    # an unaligned slice decodes only what it needs and is exact
    np.testing.assert_array_equal(slide.levels[0][37:201, 55:333].compute(), image[37:201, 55:333])


def test_level_mpp_best_level_and_read_region(pyramid: tuple[Path, np.ndarray]) -> None:
    path, image = pyramid
    slide = open_slide(path)
    assert slide.level_mpp(1) == pytest.approx(1.0)
    assert slide.best_level(0.5) == 0
    assert slide.best_level(0.25) == 0  # finer than level 0: read level 0
    assert slide.best_level(1.0) == 1
    assert slide.best_level(1.9) == 1  # never pick a coarser level than asked for
    assert slide.best_level(2.0) == 2
    assert slide.best_level(100) == 2
    # at the native resolution a region is an exact crop; µm -> px at 0.5 µm/px
    region = slide.read_region(10.0, 20.0, 30.0, 15.0, mpp=0.5)
    np.testing.assert_array_equal(region, image[40:70, 20:80])
    # at 1 µm/px it comes from level 1 unchanged
    np.testing.assert_array_equal(
        slide.read_region(10, 20, 30, 15, mpp=1.0), image[::2, ::2][20:35, 10:40]
    )
    # 1.5 µm/px: level 1 resampled; shape in µm / mpp
    assert slide.read_region(0, 0, 60, 30, mpp=1.5).shape == (20, 40, 3)
    # outside the slide is white
    outside = slide.read_region(-10, -10, 5, 5, mpp=0.5)
    assert outside.shape == (10, 10, 3) and (outside == 255).all()
    with pytest.raises(IndexError, match="levels 0-2"):
        slide.level_mpp(3)


def test_describe_names_backend_levels_and_tiles(pyramid: tuple[Path, np.ndarray]) -> None:
    text = open_slide(pyramid[0]).describe()
    assert "tifffile" in text and "TIFF header" in text
    assert "420 x 300 px" in text and "0.500 µm/px" in text and "2.000 µm/px" in text
    assert "file tile: 64 x 64 px" in text


def test_jpeg_pyramid_is_lazy_and_close(tmp_path: Path) -> None:
    image = _image((256, 320), seed=1)
    path = tmp_path / "jpeg.tiff"
    write_pyramid(path, image, compression="jpeg", tile=64)
    slide = open_slide(path)
    data = slide.levels[0].compute()
    assert data.shape == image.shape
    assert np.abs(data.astype(int) - image).mean() < 10  # lossy (chroma subsampled) but faithful
    np.testing.assert_array_equal(data, tifffile.imread(path))


def test_level_arrays_pickle_for_distributed_workers(pyramid: tuple[Path, np.ndarray]) -> None:
    path, image = pyramid
    level = open_slide(path).levels[1]
    clone = pickle.loads(pickle.dumps(level))
    np.testing.assert_array_equal(clone.compute(), image[::2, ::2])


def test_aperio_svs_mpp_objective_and_associated(tmp_path: Path) -> None:
    image = _image((300, 400), seed=2)
    path = tmp_path / "aperio.svs"
    write_svs(path, image)
    slide = open_slide(path)
    assert slide.vendor == "aperio"
    assert slide.mpp == (0.2525, 0.2525)
    assert slide.mpp_source == "Aperio ImageDescription MPP"
    assert slide.objective_power == 40
    assert [lv.shape[:2] for lv in slide.levels] == [(300, 400), (150, 200)]
    assert set(slide.associated) == {"thumbnail", "label", "macro"}
    np.testing.assert_array_equal(slide.associated["label"].compute(), image[:50, :60])
    assert slide.level_mpp(1) == pytest.approx(0.505)


def test_aperio_without_mpp_asks_for_it(tmp_path: Path) -> None:
    path = tmp_path / "nompp.svs"
    write_svs(path, _image((200, 200)), mpp=None)
    with pytest.raises(SlideError, match=r"nompp\.svs.*mpp="):
        open_slide(path)
    assert open_slide(path, mpp=0.25).mpp == (0.25, 0.25)


def test_ome_tiff_physical_size(tmp_path: Path) -> None:
    image = _image((256, 256), seed=3)
    path = tmp_path / "sample.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        meta = {
            "axes": "YXS",
            "PhysicalSizeX": 0.25,
            "PhysicalSizeY": 0.26,
            "PhysicalSizeXUnit": "µm",
        }
        tw.write(image, tile=(128, 128), photometric="rgb", subifds=1, metadata=meta)
        tw.write(image[::2, ::2].copy(), tile=(128, 128), photometric="rgb", subfiletype=1)
    slide = open_slide(path)
    assert slide.slide_id == "sample"
    assert slide.vendor == "ome"
    assert slide.mpp == pytest.approx((0.25, 0.26))
    assert len(slide.levels) == 2
    np.testing.assert_array_equal(slide.levels[1].compute(), image[::2, ::2])


def test_resolution_in_inches(tmp_path: Path) -> None:
    path = tmp_path / "inch.tif"
    tifffile.imwrite(
        path,
        _image((64, 64)),
        photometric="rgb",
        resolution=(25400 / 0.5, 25400 / 0.5),
        resolutionunit="INCH",
    )
    assert open_slide(path).mpp == pytest.approx((0.5, 0.5))


def test_plain_tiff_without_physical_unit_needs_mpp(tmp_path: Path) -> None:
    path = tmp_path / "nounit.tif"
    tifffile.imwrite(path, _image((64, 64)), photometric="rgb")
    with pytest.raises(SlideError, match="--mpp / mpp="):
        open_slide(path)
    slide = open_slide(path, mpp=(0.3, 0.4))
    assert slide.mpp == (0.3, 0.4) and slide.mpp_source == "mpp="


def test_screen_dpi_is_not_a_microscope_resolution(tmp_path: Path) -> None:
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(
        path, _image((64, 64)), photometric="rgb", resolution=(72, 72), resolutionunit="INCH"
    )
    with pytest.raises(SlideError, match=r"352\.778 µm/px.*not a microscope resolution"):
        open_slide(path)


def _no_slide_warning(path: Path, **kwargs: object) -> Slide:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlideWarning)
        return open_slide(path, **kwargs)  # type: ignore[arg-type]


def test_explicit_mpp_that_contradicts_the_file_warns_and_is_used(tmp_path: Path) -> None:
    """An --mpp 2x off the file's resolution tags was applied without a word."""
    path = tmp_path / "calibrated.tif"
    write_pyramid(path, _image((128, 128)), levels=1, mpp=0.5)  # X/YResolution in cm
    with pytest.warns(SlideWarning) as caught:
        slide = open_slide(path, mpp=1.0)
    assert [str(w.message) for w in caught] == [
        f"{path}: the explicit pixel size 1 µm/px (--mpp or the sample sheet's mpp) differs by "
        "100% from the file's 0.5 µm/px (TIFF X/YResolution (cm)); analysing at 1 µm/px: check "
        "which one is right"
    ]
    assert slide.mpp == (1.0, 1.0) and slide.mpp_source == "mpp="
    assert slide.file_mpp == pytest.approx((0.5, 0.5))
    assert slide.file_mpp_source == "TIFF X/YResolution (cm)"


def test_explicit_mpp_close_to_the_file_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "calibrated.tif"
    write_pyramid(path, _image((128, 128)), levels=1, mpp=0.5)
    slide = _no_slide_warning(path, mpp=0.51)  # 2 %: scanners round their µm/px
    assert slide.mpp == (0.51, 0.51) and slide.file_mpp == pytest.approx((0.5, 0.5))
    assert slide.mpp_disagreement() is None
    assert _no_slide_warning(path).mpp_disagreement() is None  # the file's own: nothing to say


def test_explicit_mpp_checked_against_svs_and_ome_calibration(tmp_path: Path) -> None:
    svs = tmp_path / "s.svs"
    write_svs(svs, _image((256, 256)), mpp=0.2525)
    with pytest.warns(SlideWarning, match=r"differs by 98% from the file's 0\.2525 µm/px \(Aperio"):
        open_slide(svs, mpp=0.5)
    ome = tmp_path / "o.ome.tif"
    meta = {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
    tifffile.imwrite(ome, _image((64, 64)), photometric="rgb", metadata=meta)
    with pytest.warns(SlideWarning, match=r"file's 0\.25 µm/px \(OME-XML PhysicalSizeX/Y\)"):
        open_slide(ome, mpp=0.125)


def test_explicit_mpp_for_a_screen_dpi_file_is_quiet(tmp_path: Path) -> None:
    """72 dpi is no calibration (the reason --mpp was given): nothing to contradict."""
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(
        path, _image((64, 64)), photometric="rgb", resolution=(72, 72), resolutionunit="INCH"
    )
    slide = _no_slide_warning(path, mpp=0.5)
    assert slide.mpp == (0.5, 0.5) and slide.file_mpp is None


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0] = 100
    rgba[:32, :, 3] = 255  # opaque top half, transparent bottom half
    path = tmp_path / "rgba.tif"
    write_pyramid(path, rgba, levels=1, tile=32)
    out = open_slide(path).levels[0].compute()
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[0, 0], [100, 0, 0])
    np.testing.assert_array_equal(out[-1, -1], [255, 255, 255])


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    gray = _image((64, 96))[..., 0]
    path = tmp_path / "gray.tif"
    write_pyramid(path, gray, levels=1, tile=32)
    out = open_slide(path).levels[0].compute()
    np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=-1))


def test_16bit_is_scaled_with_a_warning(tmp_path: Path) -> None:
    rgb16 = _image((64, 64)).astype(np.uint16) * 257
    path = tmp_path / "deep.tif"
    write_pyramid(path, rgb16, levels=1, tile=32)
    with pytest.warns(SlideWarning, match="16-bit"):
        slide = open_slide(path)
    np.testing.assert_array_equal(slide.levels[0].compute(), rgb16 // 257)


def test_float_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    tifffile.imwrite(
        path,
        np.zeros((32, 32, 3), np.float32),
        photometric="rgb",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    with pytest.raises(SlideError, match=r"float32.*8-bit RGB"):
        open_slide(path)


def test_multichannel_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "five.tif"
    tifffile.imwrite(
        path, np.zeros((5, 32, 32), np.uint8), photometric="minisblack", planarconfig="separate"
    )
    with pytest.raises(SlideError, match="5 samples per pixel"):
        open_slide(path, mpp=0.5)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.svs", None, "no such file"),
        ("empty.svs", b"", "empty"),
        ("slide.xyz", b"data", r"unsupported file type '.xyz'.*\.svs"),
        ("noext", b"data", "no extension"),
        ("fake.tif", b"this is not a tiff file at all", "no reader can open"),
    ],
)
def test_bad_files_raise_slide_error(
    tmp_path: Path, name: str, content: bytes | None, match: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SlideError, match=match) as info:
        open_slide(path)
    assert isinstance(info.value, ValueError)
    assert name in str(info.value)


def test_truncated_file(tmp_path: Path, pyramid: tuple[Path, np.ndarray]) -> None:
    data = pyramid[0].read_bytes()
    for keep in (len(data) // 2, 100, 6):
        cut = tmp_path / f"cut{keep}.tif"
        cut.write_bytes(data[:keep])
        with pytest.raises(SlideError, match=rf"cut{keep}\.tif.*(truncated|damaged)"):
            open_slide(cut)


def test_corrupt_tile_fails_at_read_time_naming_the_tile(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.tif"
    # 2 x 20 tiles of 64 px: dask chunks of 1024 px put columns 16-19 in a second chunk
    write_pyramid(path, _image((128, 1280)), levels=1, tile=64, compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[20 + 17]
        count = tif.pages[0].databytecounts[20 + 17]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\x00" * count  # tile row 1, col 17
    path.write_bytes(bytes(raw))
    slide = open_slide(path)  # lazy: opening decodes nothing
    assert slide.levels[0][:, :1024].compute().shape == (128, 1024, 3)  # other chunk is fine
    with pytest.raises(SlideError, match=r"corrupt\.tif.*level 0, tile row 1 col 17"):
        slide.levels[0].compute()


def test_absurd_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    write_pyramid(path, _image((64, 64)), levels=1, tile=32)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(3_000_000)
    with pytest.raises(SlideError, match=r"huge\.tif.*(not a valid slide|truncated|damaged)"):
        open_slide(path)


def test_bad_mpp_argument(pyramid: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(SlideError, match="not a microscope resolution"):
        open_slide(pyramid[0], mpp=-1)
    with pytest.raises(SlideError, match="unknown backend 'nope'"):
        open_slide(pyramid[0], backend="nope")


def test_png_needs_mpp_and_opens_as_one_level(tmp_path: Path) -> None:
    from PIL import Image

    image = _image((40, 50))
    path = tmp_path / "roi.png"
    Image.fromarray(image).save(path)
    with pytest.raises(SlideError, match="mpp="):
        open_slide(path)
    slide = open_slide(path, mpp=0.5)
    assert slide.backend == "image" and len(slide.levels) == 1
    np.testing.assert_array_equal(slide.levels[0].compute(), image)
    Image.fromarray(image[..., 0]).save(tmp_path / "gray.png")
    assert open_slide(tmp_path / "gray.png", mpp=0.5).levels[0].compute().shape == (40, 50, 3)


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch):
    """Install a fake reader for '.fake' files; the registry is restored afterwards."""
    monkeypatch.setattr("senpath.io.BACKENDS", list(BACKENDS))
    import dask.array as da

    calls: list[Path] = []

    def can_open(path: Path) -> str | None:
        return "fake header" if path.read_bytes().startswith(b"FAKE") else None

    def open_fake(path: Path, *, mpp, reason: str) -> Slide:
        calls.append(path)
        level = da.zeros((10, 10, 3), dtype=np.uint8, chunks=5)
        return Slide(
            path, path.stem, [level], mpp or (1.0, 1.0), [1.0], None, "fake", "fake", reason, (5, 5)
        )

    register_backend(Backend("fake", (".fake",), can_open, open_fake), first=True)
    return calls


def test_registry_dispatch_and_error_listing(tmp_path: Path, fake_backend: list[Path]) -> None:
    good = tmp_path / "a.fake"
    good.write_bytes(b"FAKE...")
    slide = open_slide(good)
    assert slide.backend == "fake" and slide.backend_reason == "fake header"
    assert fake_backend == [good]
    assert ".fake" in supported_extensions()
    bad = tmp_path / "b.fake"
    bad.write_bytes(b"nope")
    with pytest.raises(SlideError, match="fake: does not recognise the content"):
        open_slide(bad)


def test_openslide_missing_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("senpath.io._openslide.available", lambda: False)
    monkeypatch.setattr(
        "senpath.io.BACKENDS",
        [
            Backend(
                b.name,
                b.extensions,
                b.can_open,
                b.open,
                (lambda: False) if b.name == "openslide" else b.available,
                b.install_hint,
            )
            for b in BACKENDS
        ],
    )
    path = tmp_path / "scan.mrxs"
    path.write_bytes(b"[GENERAL]\n")
    with pytest.raises(
        SlideError, match=r"openslide: not installed \(pip install 'senpath\[openslide\]'"
    ):
        open_slide(path)


@pytest.mark.shared_data
def test_cmu1_small_region(shared_data: Path) -> None:
    slide = open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    assert slide.vendor == "aperio" and slide.backend == "tifffile"
    assert slide.mpp == pytest.approx((0.499, 0.499))
    assert [lv.shape for lv in slide.levels] == [(2967, 2220, 3)]
    assert slide.tile_size == (240, 240)
    assert slide.objective_power == 20
    assert {"label", "macro", "thumbnail"} <= set(slide.associated)
    tile = slide.levels[0][:240, :240].compute()
    np.testing.assert_array_equal(tile, tifffile.imread(slide.path)[:240, :240])


@pytest.mark.shared_data
def test_shared_fixtures_open_or_explain(shared_data: Path) -> None:
    slides = shared_data / "slides"
    assert open_slide(slides / "small.svs").mpp == pytest.approx((0.499, 0.499))
    with pytest.raises(SlideError, match="not a microscope resolution"):
        open_slide(slides / "boxes.tiff")  # 72 dpi-like resolution tags
    boxes = open_slide(slides / "boxes.tiff", mpp=0.5)
    assert len(boxes.levels) == 4 and boxes.levels[0].shape == (250, 300, 3)
    png = open_slide(slides / "boxes.png", mpp=0.5)
    np.testing.assert_array_equal(png.levels[0].compute(), boxes.levels[0].compute())


@pytest.mark.shared_data
def test_dicom_through_openslide(shared_data: Path) -> None:
    pytest.importorskip("openslide")
    slide = open_slide(shared_data / "slides" / "boxes_0.dcm")
    assert slide.backend == "openslide" and slide.vendor == "dicom"
    assert slide.mpp == pytest.approx((0.499, 0.499))
    data = slide.levels[0].compute()
    assert data.shape == (16, 16, 3) and data.dtype == np.uint8
    clone = pickle.loads(pickle.dumps(slide.levels[0]))
    np.testing.assert_array_equal(clone.compute(), data)


def test_level_source_reads_boxes_without_whole_chunks(
    pyramid: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from senpath.io import _tiff

    path, image = pyramid
    slide = open_slide(path)
    decoded: list[tuple[int, int]] = []
    original = _tiff.TiffLevelArray._decode_tile

    def spy(self, tif, fd, page, decode, ty, tx):  # type: ignore[no-untyped-def]
        decoded.append((ty, tx))
        return original(self, tif, fd, page, decode, ty, tx)

    monkeypatch.setattr(_tiff.TiffLevelArray, "_decode_tile", spy)
    box = slide.read_box(0, 70, 70, 120, 140)  # 64-px tiles: rows 1, cols 1-2
    np.testing.assert_array_equal(box, image[70:120, 70:140])
    assert sorted(decoded) == [(1, 1), (1, 2)]
    np.testing.assert_array_equal(slide.level_source(1)[5:9, 7:11], image[::2, ::2][5:9, 7:11])


def test_open_file_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from senpath.io import _tiff

    monkeypatch.setattr(_tiff, "MAX_OPEN_FILES", 2)
    images, slides = [], []
    for i in range(4):
        image = _image((64, 64), seed=i)
        write_pyramid(tmp_path / f"s{i}.tif", image, levels=1, tile=32)
        images.append(image)
        slides.append(open_slide(tmp_path / f"s{i}.tif"))
    assert sum(str(tmp_path) in key[0] for key in _tiff._open_files) <= 2
    for image, slide in zip(images, slides, strict=True):  # evicted files reopen on demand
        np.testing.assert_array_equal(slide.levels[0].compute(), image)


def test_reader_library_errors_become_slide_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("senpath.io.BACKENDS", list(BACKENDS))

    def explode(path: Path, *, mpp, reason: str) -> Slide:
        raise KeyError("missing tag 256")

    register_backend(Backend("boom", (".boom",), lambda p: "always", explode), first=True)
    path = tmp_path / "x.boom"
    path.write_bytes(b"123")
    with pytest.raises(SlideError, match=r"x\.boom: the boom reader failed \(KeyError"):
        open_slide(path)


def test_tile_tables_are_compact_and_still_read(tmp_path: Path) -> None:
    from array import array

    from senpath.io import _tiff

    image = _image((512, 512), seed=9)
    path = tmp_path / "many_tiles.tif"
    res = {"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, tile=(16, 16), photometric="rgb", **res)  # 1,024 tiles
    slide = open_slide(path)
    tif, _ = _tiff._open_cached(str(path))
    page = tif.series[0].levels[0].keyframe
    # 8 bytes per entry instead of a tuple of Python ints (~40 bytes): 16 MB at 100k² px
    assert isinstance(page.dataoffsets, array) and isinstance(page.databytecounts, array)
    assert page.tags[324].value is page.dataoffsets
    np.testing.assert_array_equal(slide.levels[0].compute(), image)
    np.testing.assert_array_equal(slide.read_box(0, 100, 37, 140, 301), image[100:140, 37:301])


def test_read_region_returns_an_array_the_caller_owns(tmp_path: Path) -> None:
    from PIL import Image

    image = _image((40, 50))
    path = tmp_path / "roi.png"
    Image.fromarray(image).save(path)
    slide = open_slide(path, mpp=0.5)
    inside = slide.read_region(2.0, 3.0, 10.0, 8.0, mpp=0.5)  # no padding: read directly
    np.testing.assert_array_equal(inside, image[6:22, 4:24])
    inside[:] = 0  # must not write into the backend's pixels
    np.testing.assert_array_equal(
        slide.read_region(2.0, 3.0, 10.0, 8.0, mpp=0.5), image[6:22, 4:24]
    )
