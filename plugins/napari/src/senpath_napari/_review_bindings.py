"""The Review widget's hooks into the viewer: shortcuts, the click on a nucleus, and their removal.

A closed widget must not go on editing: every binding made here is recorded and removed by
:meth:`ViewerBindings._unhook` (only our own binding of a key: another widget may have rebound it).
"""

from __future__ import annotations

from typing import Any

#: Keyboard shortcuts (viewer-wide).
SHORTCUTS = {
    "Shift-N": "next_cell",
    "Shift-B": "previous_cell",
    "Shift-F": "flip_current",
    "Shift-X": "exclude_current",
    "Shift-U": "undo",
    "Shift-M": "cycle_click_mode",
    "Shift-O": "toggle_overlay",
}
#: What a click on a nucleus does; the first, the default, edits nothing.
CLICK_MODES = ("inspect", "flip call", "exclude / include", "off")


class ViewerBindings:
    """Mixin of :class:`~senpath_napari._review_widget.ReviewWidget`: key and mouse bindings."""

    viewer: Any
    session: Any
    editor: Any
    click_combo: Any
    _key_handlers: dict[str, Any]
    _connected: bool

    def _connect(self) -> None:
        """Register the click action, the shortcuts and the layer watch with the viewer."""
        if self._connected:
            return
        for key, method in SHORTCUTS.items():
            handler = self._key_handler(method)
            self._key_handlers[key] = handler
            self.viewer.bind_key(key, handler, overwrite=True)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        self.viewer.mouse_move_callbacks.append(self._on_hover)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._connected = True

    def _unhook(self) -> None:
        """Remove the shortcuts, the click action and the layer watch from the viewer."""
        if not self._connected:
            return
        from napari.utils.key_bindings import KeyBinding

        for key, handler in self._key_handlers.items():
            # only our own binding: another widget may have bound the key since
            if self.viewer.keymap.get(KeyBinding.from_str(key)) is handler:
                self.viewer.bind_key(key, None)
        self._key_handlers.clear()
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        if self._on_hover in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_hover)
        self.viewer.layers.events.inserted.disconnect(self._on_layer_inserted)
        self._connected = False

    def _on_mouse(self, viewer: Any, event: Any) -> Any:
        if self.session is None or event.button != 1 or self.click_combo.currentText() == "off":
            return
        active = viewer.layers.selection.active
        if active is not None and active is self.editor:
            return  # painting nuclei
        if active is not None and getattr(active, "mode", "pan_zoom") not in ("pan_zoom", None):
            return
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            y, x = event.position[-2], event.position[-1]
            self.click_at(float(y), float(x))

    def _key_handler(self, method: str) -> Any:
        def handler(viewer: Any) -> None:
            getattr(self, method)()

        handler.__name__ = f"senpath_{method}"
        handler.__doc__ = f"senpath review: {method.replace('_', ' ')}"
        return handler
