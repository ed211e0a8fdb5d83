"""The writer's lock of a store, as a review session takes it: one writer of a store at a time.

Two review windows on one results folder (two napari windows, or two people on a shared drive) would
otherwise append to the same log from two in-memory copies of it: the second one's edits are made
against a table that lacks the first one's, and an undo reverts the last edit *it* knows of. A run
re-analysing the slide meanwhile would replace the cells under the review. So a review holds the
store's lock (:mod:`senpath.store_lock`, the one lock every writer of a store takes, ``store.lock``)
while it is open; a second session opens read-only (or raises :class:`StoreLockedError`) while the
first writer, a review or a run, is alive. A lock whose process is gone is taken over with a
:class:`StaleLockWarning`.
"""

from __future__ import annotations

from pathlib import Path

from senpath.corrections.log import CorrectionError
from senpath.store_lock import (
    STORE_LOCK,
    LockOwner,
    StaleLockWarning,
    StoreBusyError,
    StoreLock,
    store_lock_owner,
)

#: The lock file, in the store's folder (shared with runs: see :mod:`senpath.store_lock`).
LOCK = STORE_LOCK

__all__ = [
    "LOCK",
    "CorrectionLock",
    "LockOwner",
    "StaleLockWarning",
    "StoreLockedError",
    "lock_owner",
]


class StoreLockedError(CorrectionError, StoreBusyError):
    """Another writer (a review session, a run) writes this store now; open it read-only instead."""


class CorrectionLock(StoreLock):
    """The store's lock, held by one review session.

    Parameters
    ----------
    folder : the slide's store.
    user : the name recorded in the lock.

    Raises
    ------
    StoreLockedError
        When another live writer holds the lock; its message says who, and what to do.

    Notes
    -----
    ``taken_over`` holds the owner of a stale lock that was replaced (``None`` otherwise). The lock
    is released by :meth:`release`, and at the latest when this object is garbage-collected or the
    interpreter exits.
    """

    def __init__(self, folder: str | Path, *, user: str | None = None) -> None:
        super().__init__(
            folder,
            purpose="review",
            user=user,
            error=StoreLockedError,
            advice="opened read-only (correct it once that is closed)",
        )


def lock_owner(folder: str | Path) -> LockOwner | None:
    """Who writes a store now, a review or a run (``None``: nobody, or a stale lock)."""
    return store_lock_owner(folder)
