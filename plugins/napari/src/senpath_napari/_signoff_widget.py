"""Sign-off widget: who reviews, why cells are excluded, the slide's review status, and QuPath.

- reviewer name: written into every log entry the review makes from now on (and the sign-off);
- reason for exclusions: required to exclude cells while this panel is open (kept with each
  exclusion in the audit log);
- status (not started / in review / signed off, with who and when), "Sign off" and "Re-open"
  (with a note: the sign-off comment, or why it is re-opened); an edit of a signed-off slide
  re-opens it by itself, logged;
- "Import QuPath cells…": a GeoJSON file exported from QuPath after editing the cells
  ``senpath export --format geojson`` wrote, read back as corrections
  (:func:`senpath.qupath_import.import_qupath_cells`; ``senpath review import-qupath`` does the same
  from the command line).

The panel works on the store the "Review and correct" panel has open, through that panel's session
(one writer of a store at a time: see :mod:`senpath.corrections.lock`), and redraws it after an
import. Without one, it opens the store shown in the viewer (or chosen) for the time of each action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from senpath_napari._layers import store_of


class SignOffWidget(QWidget):
    """Dock widget: reviewer, exclusion reason, review status and sign-off, QuPath import.

    Parameters
    ----------
    napari_viewer : the viewer (napari passes it).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from senpath.store_lock import default_user

        self.viewer = napari_viewer
        self.folder: Path | None = None
        self._build(default_user())
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        # the review panel's edits re-open a signed-off slide: show it without a click here
        self._poll = QTimer(self)
        self._poll.setInterval(1000)
        self._poll.timeout.connect(self.refresh)
        self._poll.start()
        for layer in list(self.viewer.layers):
            if self._store_of(layer) and self.folder is None:
                self.set_store(self._store_of(layer))

    # ------------------------------------------------------------------------------ layout

    def _build(self, user: str) -> None:
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.store_label = QLabel("no results open")
        self.store_label.setWordWrap(True)
        choose = QPushButton("Open results…")
        choose.clicked.connect(self._choose_store)
        top.addWidget(self.store_label, 1)
        top.addWidget(choose)
        layout.addLayout(top)

        form = QFormLayout()
        self.reviewer_edit = QLineEdit(user)
        self.reviewer_edit.setToolTip("Recorded with every correction and with the sign-off")
        self.reviewer_edit.textChanged.connect(lambda _: self.attach())
        self.reason_edit = QLineEdit()
        self.reason_edit.setPlaceholderText("required to exclude cells (fold, out of focus…)")
        self.reason_edit.textChanged.connect(lambda _: self.attach())
        form.addRow("reviewer", self.reviewer_edit)
        form.addRow("reason for exclusions", self.reason_edit)
        layout.addLayout(form)

        box = QGroupBox("Review status")
        bl = QVBoxLayout(box)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        bl.addWidget(self.status_label)
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("sign-off comment, or why it is re-opened")
        bl.addWidget(self.note_edit)
        row = QHBoxLayout()
        self.sign_off_button = QPushButton("Sign off")
        self.sign_off_button.clicked.connect(lambda: self.sign_off())
        self.reopen_button = QPushButton("Re-open")
        self.reopen_button.clicked.connect(lambda: self.reopen())
        row.addWidget(self.sign_off_button)
        row.addWidget(self.reopen_button)
        bl.addLayout(row)
        layout.addWidget(box)

        box = QGroupBox("QuPath")
        ql = QVBoxLayout(box)
        row = QHBoxLayout()
        self.tolerance_spin = QDoubleSpinBox()
        self.tolerance_spin.setRange(0.0, 20.0)
        self.tolerance_spin.setDecimals(1)
        self.tolerance_spin.setValue(3.0)
        self.tolerance_spin.setSuffix(" µm")
        self.tolerance_spin.setToolTip("Cells without their id are matched by centroid within this")
        import_button = QPushButton("Import QuPath cells…")
        import_button.clicked.connect(self._choose_geojson)
        row.addWidget(QLabel("match within"))
        row.addWidget(self.tolerance_spin)
        row.addWidget(import_button, 1)
        ql.addLayout(row)
        self.import_label = QLabel("")
        self.import_label.setWordWrap(True)
        ql.addWidget(self.import_label)
        layout.addWidget(box)
        self.message_label = QLabel("")
        self.message_label.setWordWrap(True)
        layout.addWidget(self.message_label)
        layout.addStretch(1)

    # ----------------------------------------------------------------------------- store

    _store_of = staticmethod(store_of)

    def closeEvent(self, event: Any) -> None:
        self._poll.stop()
        self.viewer.layers.events.inserted.disconnect(self._on_layer_inserted)
        super().closeEvent(event)

    def _on_layer_inserted(self, event: Any) -> None:
        store = self._store_of(event.value)
        if store and self.folder is None:
            self.set_store(store)
        self.attach()

    def _choose_store(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "senpath results folder (results/<slide>)")
        if folder:
            self.set_store(folder)

    def set_store(self, folder: str | Path) -> None:
        """Work on this slide's store (the review panel's, when it has one open)."""
        self.folder = Path(folder)
        self.store_label.setText(f"<b>{self.folder.name}</b> ({self.folder})")
        self.attach()
        self.refresh()

    def review_panel(self) -> Any:
        """The "Review and correct" panel of this viewer that corrects the store (or ``None``)."""
        try:
            docked = list(self.viewer.window.dock_widgets.values())
        except AttributeError:  # a viewer without a window (headless)
            return None
        for widget in docked:
            session = getattr(widget, "session", None)
            if widget is self or session is None or getattr(session, "read_only", True):
                continue
            if self.folder is None or Path(session.folder) == self.folder:
                return widget
        return None

    def attach(self) -> None:
        """Give the review panel's session this panel's reviewer and exclusion reason."""
        panel = self.review_panel()
        if panel is None:
            return
        if self.folder is None:
            self.set_store(panel.session.folder)
            return
        session = panel.session
        session.user = self.reviewer or session.user
        session.exclusion_reason = self.reason_edit.text().strip() or None
        session.require_exclusion_reason = True

    @property
    def reviewer(self) -> str:
        return self.reviewer_edit.text().strip()

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The review panel's session, else one opened (and saved, closed) for this action."""
        from senpath.corrections import CorrectionSession

        panel = self.review_panel()
        if panel is not None:
            self.attach()
            yield panel.session
            if hasattr(panel, "refresh_overlay"):
                panel.refresh_overlay()
            panel.save()
            return
        if self.folder is None:
            raise ValueError("open a slide's results first")
        with CorrectionSession(self.folder, user=self.reviewer or None) as session:
            yield session
            session.save()

    def _act(self, action: Callable[[Any], Any]) -> Any:
        """Run one action on the store; say why when it cannot be done (locked, invalid)."""
        from senpath.corrections import CorrectionError

        try:
            with self._session() as session:
                result = action(session)
        except (CorrectionError, ValueError) as exc:
            self._tell(str(exc))
            return None
        self.refresh()
        return result

    def _tell(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.message_label.setText(message)
        show_warning(message)

    # ------------------------------------------------------------------------------ status

    def refresh(self) -> None:
        """Show the store's review status now (read from its log)."""
        from senpath.corrections import read_log, review_status

        if self.folder is None:
            self.status_label.setText("")
            return
        panel = self.review_panel()
        entries = panel.session.entries if panel is not None else read_log(self.folder)
        status = review_status(entries)
        self.status_label.setText(f"<b>{status.describe()}</b>")
        signed = status.signed_off
        self.sign_off_button.setEnabled(not signed)
        self.reopen_button.setEnabled(signed)

    def sign_off(self) -> dict[str, Any] | None:
        """Sign the slide off as the reviewer named in the panel (with the note as comment)."""
        if not self.reviewer:
            self._tell("type the reviewer's name before signing off")
            return None
        note = self.note_edit.text().strip() or None
        entry = self._act(lambda s: s.sign_off(reviewer=self.reviewer, note=note))
        if entry is not None:
            self.message_label.setText(f"signed off by {entry['user']}")
            self.note_edit.clear()
        return entry

    def reopen(self) -> dict[str, Any] | None:
        """Re-open a signed-off slide; the note says why (required)."""
        reason = self.note_edit.text().strip()
        if not reason:
            self._tell("say why the sign-off is re-opened (the note field)")
            return None
        entry = self._act(lambda s: s.reopen(reason=reason, reviewer=self.reviewer or None))
        if entry is not None:
            self.message_label.setText(f"re-opened by {entry['user']}: {reason}")
            self.note_edit.clear()
        return entry

    # ------------------------------------------------------------------------------ QuPath

    def _choose_geojson(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "GeoJSON exported from QuPath", "", "GeoJSON (*.geojson *.json)"
        )
        if path:
            self.import_qupath(path)

    def import_qupath(self, path: str | Path) -> Any:
        """Read a QuPath-edited GeoJSON file of this slide's cells back as corrections."""
        from senpath.qupath_import import import_qupath_cells

        tolerance = float(self.tolerance_spin.value())
        done = self._act(lambda s: import_qupath_cells(s, path, tolerance_um=tolerance))
        if done is not None:
            text = done.describe()
            if done.notes:
                text += "\nleft aside: " + "; ".join(done.notes[:5])
            self.import_label.setText(text)
        return done
