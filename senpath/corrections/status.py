"""A slide's review status and sign-off: not started, in review, signed off (who and when).

The status is not a file of its own: it is read from the audit log (``corrections.jsonl``), so it
is written the way every correction is (appended and fsynced, under the store's lock) and it belongs
to the analysis the log corrects (a re-analysed slide starts again at "not started")::

    review_status   status ("in review" / "signed off"), previous, user (the reviewer), note (a
                    sign-off comment, or why it was re-opened)

A slide is "not started" until a first correction or status entry, "in review" from then on, and
"signed off" from a ``review_status`` entry saying so until the next edit: an edit of a signed-off
slide (a flip, an exclusion, a threshold, a nucleus edit, an undo) first logs a ``review_status``
entry re-opening it (back to "in review", the edit named in its note), so the log says who
re-opened it and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from senpath.corrections.log import CELL_ACTIONS, CorrectionError

NOT_STARTED = "not started"
IN_REVIEW = "in review"
SIGNED_OFF = "signed off"
#: The review states of a slide, in the order a review goes through them.
REVIEW_STATUSES = (NOT_STARTED, IN_REVIEW, SIGNED_OFF)
#: Entries that are edits of the slide (they re-open a signed-off slide).
EDIT_ACTIONS = (*CELL_ACTIONS, "undo")


@dataclass(frozen=True)
class ReviewStatus:
    """Where a slide's review stands.

    Attributes
    ----------
    status : one of :data:`REVIEW_STATUSES`.
    reviewer : who set the status (signed off, re-opened) or, in review, who made the last edit
        (``""`` when not started).
    time : when (UTC, ISO 8601; ``""`` when not started).
    signed_off_by, signed_off_time : the sign-off in effect (``""`` unless signed off).
    started_time : the review's first entry (``""`` when not started).
    note : the sign-off comment, or why the slide was re-opened.
    """

    status: str = NOT_STARTED
    reviewer: str = ""
    time: str = ""
    signed_off_by: str = ""
    signed_off_time: str = ""
    started_time: str = ""
    note: str = ""

    @property
    def signed_off(self) -> bool:
        return self.status == SIGNED_OFF

    def to_dict(self) -> dict[str, str]:
        """The status as JSON-ready text fields (``summary.json``'s ``review``)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for people: ``signed off by anna, 2026-01-02 10:00 UTC``."""
        if self.status == NOT_STARTED:
            return NOT_STARTED
        when = _short_time(self.time)
        who = f" by {self.reviewer}" if self.reviewer else ""
        if self.status == SIGNED_OFF:
            return f"{SIGNED_OFF}{who}, {when}"
        return f"{IN_REVIEW} (last{who}, {when})"


def _short_time(time: str) -> str:
    """``2026-01-02T10:00:31.123456Z`` -> ``2026-01-02 10:00 UTC``."""
    return f"{time[:10]} {time[11:16]} UTC" if len(time) >= 16 else time


def review_status(entries: Sequence[Mapping[str, Any]]) -> ReviewStatus:
    """The review status a corrections log says (:data:`REVIEW_STATUSES`).

    Parameters
    ----------
    entries : the log (:func:`senpath.corrections.read_log`, or ``SlideResults.corrections``).
    """
    body = [e for e in entries if e.get("action") != "start"]
    if not body:
        return ReviewStatus()
    started = str(body[0].get("time", ""))
    status, by, at, note = IN_REVIEW, "", "", ""
    signed_by, signed_at = "", ""
    for e in body:
        action = e.get("action")
        if action == "review_status":
            status = str(e.get("status", IN_REVIEW))
            by, at, note = str(e.get("user", "")), str(e.get("time", "")), str(e.get("note", ""))
            signed_by, signed_at = (by, at) if status == SIGNED_OFF else ("", "")
        elif action in EDIT_ACTIONS:
            # an edit after a sign-off re-opens the slide (logged so; read so in any case)
            if status == SIGNED_OFF:
                note = f"edited after sign-off ({action})"
            status, by, at = IN_REVIEW, str(e.get("user", "")), str(e.get("time", ""))
            signed_by, signed_at = "", ""
    return ReviewStatus(
        status=status,
        reviewer=by,
        time=at,
        signed_off_by=signed_by,
        signed_off_time=signed_at,
        started_time=started,
        note=note,
    )


class ReviewSignOff:
    """The sign-off methods of :class:`~senpath.corrections.CorrectionSession` (a mixin: the
    session's state is declared here, set by the session)."""

    entries: list[dict[str, Any]]
    user: str

    if TYPE_CHECKING:

        @property
        def slide_id(self) -> str: ...

        def _log(self, entry: dict[str, Any]) -> dict[str, Any]: ...

    @property
    def review(self) -> ReviewStatus:
        """The slide's review status now."""
        return review_status(self.entries)

    def _set_status(self, status: str, *, reviewer: str | None, note: str | None) -> dict[str, Any]:
        who = (reviewer if reviewer is not None else self.user).strip()
        if not who:
            raise CorrectionError(f"{self.slide_id}: give the reviewer's name")
        return self._log(
            {
                "action": "review_status",
                "status": status,
                "previous": self.review.status,
                "user": who,
                "cell_ids": [],
                **({"note": note} if note else {}),
            }
        )

    def sign_off(self, *, reviewer: str | None = None, note: str | None = None) -> dict[str, Any]:
        """Sign the slide's review off: its figures are the ones the reviewer stands behind.

        Parameters
        ----------
        reviewer : who signs off (default: the session's user); recorded with the time (UTC).
        note : a comment kept with the sign-off.

        Returns the log entry. An edit made later re-opens the slide (back to "in review").

        Raises
        ------
        CorrectionError
            When the slide is already signed off, the reviewer's name is empty, or the session is
            read-only.
        """
        current = self.review
        if current.signed_off:
            raise CorrectionError(
                f"{self.slide_id} is already signed off by {current.signed_off_by} "
                f"({_short_time(current.signed_off_time)})"
            )
        return self._set_status(SIGNED_OFF, reviewer=reviewer, note=note)

    def reopen(self, *, reason: str, reviewer: str | None = None) -> dict[str, Any]:
        """Re-open a signed-off slide for review (status back to "in review"), saying why.

        Raises
        ------
        CorrectionError
            When the slide is not signed off, or no reason is given.
        """
        if not self.review.signed_off:
            raise CorrectionError(f"{self.slide_id} is not signed off: nothing to re-open")
        if not reason.strip():
            raise CorrectionError(f"{self.slide_id}: say why the sign-off is re-opened")
        return self._set_status(IN_REVIEW, reviewer=reviewer, note=reason.strip())

    def _reopen_before(self, action: str) -> None:
        """Log the re-opening of a signed-off slide before an edit of it is logged."""
        if action in EDIT_ACTIONS and self.review.signed_off:
            self._set_status(IN_REVIEW, reviewer=None, note=f"edited after sign-off ({action})")

    def record_note(self, text: str, **fields: Any) -> dict[str, Any]:
        """Log a ``note`` entry: something the review records that changes no cell (an import's
        summary, detections that could not be added). ``fields`` are kept with it (JSON values)."""
        if not text.strip():
            raise CorrectionError("a note needs text")
        return self._log({"action": "note", "text": text.strip(), "cell_ids": [], **fields})
