"""Where the napari viewer looks: its camera and canvas size, across napari versions."""

from __future__ import annotations

from typing import Any


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _canvas_size(viewer: Any) -> tuple[int, int]:
    """(height, width) of the viewer's canvas in screen px.

    ``viewer.canvas.size`` is public since napari 0.9 (the canvas model, napari#8633); before it only
    the private, deprecated ``window._qt_viewer.canvas.size`` had it.
    """
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is None:
        try:
            size = viewer.window._qt_viewer.canvas.size
        except AttributeError:  # neither: a typical canvas
            return 800, 1000
    h, w = size
    return int(h), int(w)
