"""The Review widget's corrections of cells: a click's action, the threshold, the near-threshold
queue, undo and save. Each goes through the store's :class:`senpath.corrections.CorrectionSession`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog


class CellEdits:
    """Mixin of :class:`~senpath_napari._review_widget.ReviewWidget`: cell corrections."""

    viewer: Any
    session: Any
    marker: str | None
    queue: list[int]
    queue_pos: int
    current_cell: int | None
    editor: Any

    def _try(self, edit: Any, *args: Any) -> Any:
        """Make one correction; tell why when it cannot be made (read-only, invalid)."""
        from senpath.corrections import CorrectionError

        try:
            return edit(*args)
        except CorrectionError as exc:
            self._tell(str(exc))
            return None

    def _edited(self, *, overlay: bool = True) -> None:
        """After any correction: redraw, and schedule the autosave of the derived files."""
        if overlay:
            self.refresh_overlay()
        else:
            self._update_stats()
        self._update_status()
        self._autosave.start()

    def cell_at(self, y_um: float, x_um: float) -> int:
        """``cell_id`` of the nucleus at a world position in µm (0: none)."""
        return self.session.cell_at(x_um, y_um) if self.session else 0

    def cycle_click_mode(self) -> str:
        """Switch what a click does to the next of :data:`CLICK_MODES` (Shift-M); returns it."""
        i = self.click_combo.currentIndex()
        self.click_combo.setCurrentIndex((i + 1) % self.click_combo.count())
        mode = self.click_combo.currentText()
        self._update_status(f"a click now does: {mode}")
        return mode

    def click_at(self, y_um: float, x_um: float, *, action: str | None = None) -> int:
        """Apply the click action at a world position (µm); returns the cell id (0: none).

        "inspect" (the default) selects the cell and shows it; only "flip call" and
        "exclude / include" edit.
        """
        if self.session is None or self.marker is None:
            return 0
        cid = self.cell_at(y_um, x_um)
        action = action or self.click_combo.currentText()
        if cid == 0 or action == "off":
            return cid
        self.current_cell = cid
        entry = None
        if action == "flip call":
            entry = self._try(self.session.flip_call, cid, self.marker)
        elif action.startswith("exclude"):
            entry = self._try(self.session.toggle_excluded, cid)
        if entry is not None:
            self._edited()
        self._show_cell(cid)
        return cid

    # -------------------------------------------------------------------------- thresholds

    def apply_threshold(self, value: float | None = None) -> None:
        """Re-score the slide at the slider's threshold (or ``value``, OD) for the current marker."""
        if self.session is None or self.marker is None:
            return
        value = float(self.spin.value() if value is None else value)
        if value != self.spin.value():
            self.spin.setValue(value)
        entry = self._try(self.session.set_thresholds, {self.marker: value})
        if entry is not None:
            self._edited()

    def _choose_profile(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save stain profile (senpath run --config)", "profile.toml", "TOML (*.toml)"
        )
        if path:
            self.save_profile(path)

    def save_profile(self, path: str | Path, *, name: str | None = None) -> Path:
        """Write the slide's stain vectors and the thresholds in effect as a profile for the batch."""
        out = self.session.save_profile(path, name=name)
        self._update_status(f"profile saved to {out}: use it with senpath run --config {out.name}")
        return out

    # ------------------------------------------------------------------------------ queue

    def build_queue(self) -> list[int]:
        """Queue the cells nearest the threshold (within the band), nearest first."""
        if self.session is None or self.marker is None:
            return []
        band = float(self.band_spin.value()) or None
        self.queue = [int(c) for c in self.session.queue(self.marker, band_od=band, limit=None)]
        self.queue_pos = -1
        self.queue_label.setText(f"{len(self.queue)} cells within the band; Shift-N for the first")
        return self.queue

    def _go(self, pos: int) -> int | None:
        if not self.queue:
            self.build_queue()
        if not self.queue:
            return None
        self.queue_pos = max(0, min(pos, len(self.queue) - 1))
        cid = self.queue[self.queue_pos]
        self.current_cell = cid
        self._show_cell(cid, centre=True)
        return cid

    def next_cell(self) -> int | None:
        """Go to the next queued cell (centre the view on it)."""
        return self._go(self.queue_pos + 1)

    def previous_cell(self) -> int | None:
        return self._go(self.queue_pos - 1)

    def flip_current(self) -> None:
        """Flip the call of the current cell."""
        if self.session is not None and self.current_cell and self.marker:
            if self._try(self.session.flip_call, self.current_cell, self.marker) is not None:
                self._edited()
            self._show_cell(self.current_cell)

    def exclude_current(self) -> None:
        """Exclude (or include again) the current cell."""
        if self.session is not None and self.current_cell:
            if self._try(self.session.toggle_excluded, self.current_cell) is not None:
                self._edited()
            self._show_cell(self.current_cell)

    # ---------------------------------------------------------------------------- undo, save

    def undo(self) -> None:
        """Undo the latest correction in effect (logged as an undo entry)."""
        if self.session is None:
            return
        from senpath.corrections import CorrectionError

        try:
            entry = self.session.undo()
        except CorrectionError as exc:
            self._tell(str(exc))
            return
        if entry is None:
            self._update_status("nothing to undo")
            return
        if self.editor is not None:
            self._reload_editor()
        if self.marker:
            self.set_marker(self.marker)
        self._edited()

    def save(self) -> None:
        """Rewrite the store's derived files (summary, manifest) from the corrections."""
        if self.session is None or self.session.read_only:
            return
        from senpath.corrections import CorrectionError

        self._autosave.stop()
        try:
            self.session.save()
        except CorrectionError as exc:  # the lock was taken over (removed by hand)
            self._tell(str(exc))
            return
        self._update_status()
