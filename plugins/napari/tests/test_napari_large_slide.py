"""A 100,000 x 100,000 px generated slide opens lazily: dask levels, memory stays small.

Rendering 10^10 pixels of synthetic tissue would take hours, so the slide is a sparse pyramidal
TIFF (how scanners store unscanned areas: tiles with no data read as background): a synthetic
tissue patch from ``senpath.synth.render_region`` in its top-left corner on every level, empty tiles
elsewhere. Writes ``large_slide.json`` (open time, RSS) and ``large_slide.png`` next to the review
screenshots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SIDE = 100_000
TILE = 512
MPP = 0.25
PATCH = 2048  # px of rendered tissue at level 0


def write_sparse_slide(path: Path) -> Path:
    """Write the sparse 100k x 100k pyramid (JPEG tiles, 0.25 µm/px resolution tags)."""
    import cv2
    import tifffile
    from senpath import synth

    patch = synth.render_region("ki67", shape=(PATCH, PATCH), mpp=MPP, seed=5).rgb

    def tiles(shape: tuple[int, int], content: np.ndarray) -> Iterator[np.ndarray | None]:
        ny, nx = -(-shape[0] // TILE), -(-shape[1] // TILE)
        for ty in range(ny):
            for tx in range(nx):
                block = content[ty * TILE : (ty + 1) * TILE, tx * TILE : (tx + 1) * TILE]
                if block.size == 0:
                    yield None  # an empty tile: no bytes, read as background
                else:
                    full = np.full((TILE, TILE, 3), 255, np.uint8)
                    full[: block.shape[0], : block.shape[1]] = block
                    yield full

    shape, level, content = (SIDE, SIDE), 0, patch
    res = (1e4 / MPP, 1e4 / MPP)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        while True:
            tw.write(
                tiles(shape, content),
                shape=(*shape, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                resolution=tuple(r / 2**level for r in res),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
            )
            if max(shape) <= TILE:
                break
            shape, level = (-(-shape[0] // 2), -(-shape[1] // 2)), level + 1
            side = max(1, content.shape[0] // 2)
            content = cv2.resize(content, (side, side), interpolation=cv2.INTER_AREA)
    return path


@pytest.mark.slow
def test_100k_slide_opens_without_loading(make_napari_viewer, tmp_path, screenshot_dir) -> None:
    import dask.array as da
    import psutil
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    path = write_sparse_slide(tmp_path / "big.tif")
    write_s = time.perf_counter() - t
    viewer = make_napari_viewer(show=True)
    QApplication.processEvents()
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    t = time.perf_counter()
    [layer] = viewer.open(str(path), plugin="senpath-napari")
    QApplication.processEvents()
    open_s = time.perf_counter() - t
    viewer.scene.camera.center = (PATCH * MPP / 2, PATCH * MPP / 2)  # zoom into the tissue
    viewer.scene.camera.zoom = 1.5
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    view_s = time.perf_counter() - t
    rss_after = proc.memory_info().rss
    assert layer.multiscale and layer.rgb
    assert all(isinstance(level, da.Array) for level in layer.data)
    assert layer.data[0].shape == (SIDE, SIDE, 3)
    assert layer.scale[-1] == pytest.approx(MPP)
    grown_mb = (rss_after - rss_before) / 2**20
    assert grown_mb < 500, f"opening grew RSS by {grown_mb:.0f} MiB (level 0 is 28,610 MiB)"
    viewer.screenshot(str(screenshot_dir / "large_slide.png"), canvas_only=True)
    report = {
        "slide_px": [SIDE, SIDE],
        "levels": len(layer.data),
        "write_s": round(write_s, 2),
        "open_s": round(open_s, 3),
        "open_and_view_s": round(view_s, 3),
        "rss_before_mib": round(rss_before / 2**20),
        "rss_after_mib": round(rss_after / 2**20),
        "rss_growth_mib": round(grown_mb, 1),
        "file_mib": round(path.stat().st_size / 2**20, 2),
    }
    (screenshot_dir / "large_slide.json").write_text(json.dumps(report, indent=2) + "\n")
    print(report)
