"""Fixtures of the napari plugin tests: a small analysed slide, and where screenshots go.

The tests need a display (run them under ``xvfb-run -a``); napari's ``make_napari_viewer`` fixture
comes with napari's pytest plugin.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from senpath.testing import analysed_synthetic_slide, copy_store

REPO = Path(__file__).resolve().parents[3]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a display, skip the plugin's tests (or fail when ``SENPATH_REQUIRE_DISPLAY`` is set,
    as ``make test`` does, so CI never skips them silently)."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    here = Path(__file__).parent
    mine = [item for item in items if here in Path(str(item.fspath)).parents]
    if not mine:
        return
    if os.environ.get("SENPATH_REQUIRE_DISPLAY"):
        raise pytest.UsageError("the napari tests need a display: run them under `xvfb-run -a`")
    skip = pytest.mark.skip(reason="needs a display (run under `xvfb-run -a`, as `make test` does)")
    for item in mine:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """``$SENPATH_SCREENSHOTS`` or ``<repo>/results/screenshots`` (git-ignored)."""
    path = Path(os.environ.get("SENPATH_SCREENSHOTS") or REPO / "results" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(slide, results store) of a 768 x 768 px synthetic Ki67 slide, classical segmenter."""
    root = tmp_path_factory.mktemp("napari")
    return analysed_synthetic_slide(root, name="ki67", shape=(768, 768), seed=3)


@pytest.fixture
def store(analysed: tuple[Path, Path], tmp_path: Path) -> Path:
    """A fresh copy of the analysed store."""
    return copy_store(analysed[1], tmp_path)
