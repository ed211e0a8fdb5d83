"""The writer's lock of a store's corrections (``corrections.lock``): one review writes at a time.

Two review windows on one results folder (two napari windows, or two people on a shared drive) would
otherwise append to the same log from two in-memory copies of it: the second one's edits are made
against a table that lacks the first one's, and an undo reverts the last edit *it* knows of. The lock
file says who writes (``host``, ``pid``, ``user``, ``time``, and a ``token`` of the session); a second
session opens read-only (or raises :class:`StoreLockedError`) while the first is alive.

A lock is stale, and is taken over with a :class:`StaleLockWarning`, when its process is gone: a dead
pid on this host, or a session of this very process that was closed or garbage-collected without
releasing it. A lock from another host cannot be checked: it is honoured, and the message says which
file to remove once that review is known to be closed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import uuid
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

from senpath.corrections.log import CorrectionError, _default_user

#: The lock file, next to the log.
LOCK = "corrections.lock"

#: Tokens of the locks this process holds now (a lock of this pid with another token is stale).
_HELD: weakref.WeakValueDictionary[str, CorrectionLock] = weakref.WeakValueDictionary()


class StoreLockedError(CorrectionError):
    """Another review session writes this store's corrections; open it read-only instead."""


class StaleLockWarning(UserWarning):
    """A lock left by a review that is no longer running was taken over."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds a store's lock (the content of ``corrections.lock``)."""

    host: str
    pid: int
    user: str
    time: str
    token: str

    @classmethod
    def read(cls, path: Path) -> LockOwner | None:
        """The owner recorded in ``path`` (``None``: no lock, or a file that is not a lock)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                user=str(raw["user"]),
                time=str(raw["time"]),
                token=str(raw["token"]),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"{self.user} on {self.host} (process {self.pid}, since {self.time})"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def owner_alive(owner: LockOwner) -> bool:
    """Whether the session that took the lock may still be writing.

    On this host, its process must exist, and when it is this very process, the session must still
    hold it; on another host nothing can be checked, so it counts as alive.
    """
    if owner.host != socket.gethostname():
        return True
    if owner.pid == os.getpid():
        return owner.token in _HELD
    return _pid_alive(owner.pid)


def _remove_if_ours(path: Path, token: str) -> None:
    owner = LockOwner.read(path)
    if owner is not None and owner.token == token:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class CorrectionLock:
    """The lock of one store's corrections, held by one review session.

    Parameters
    ----------
    folder : the slide's store.
    user : the name recorded in the lock.

    Raises
    ------
    StoreLockedError
        When another live session holds the lock; its message says who, and what to do.

    Notes
    -----
    ``taken_over`` holds the owner of a stale lock that was replaced (``None`` otherwise). The lock
    is released by :meth:`release`, and at the latest when this object is garbage-collected or the
    interpreter exits.
    """

    def __init__(self, folder: str | Path, *, user: str | None = None) -> None:
        self.path = Path(folder) / LOCK
        self.owner = LockOwner(
            host=socket.gethostname(),
            pid=os.getpid(),
            user=user or _default_user(),
            time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            token=uuid.uuid4().hex,
        )
        self.taken_over: LockOwner | None = None
        self._acquire()
        _HELD[self.owner.token] = self
        self._finalizer = weakref.finalize(self, _remove_if_ours, self.path, self.owner.token)

    def _payload(self) -> bytes:
        return json.dumps(self.owner.__dict__, sort_keys=True).encode("utf-8")

    def _create(self) -> bool:
        """Create the lock file with its content in one step; ``False`` when it exists."""
        tmp = self.path.with_name(f".{LOCK}.{self.owner.token}")
        tmp.write_bytes(self._payload())
        try:
            os.link(tmp, self.path)  # atomic, fails when the lock exists: never half written
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links (some network shares)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._payload())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _acquire(self) -> None:
        for _ in range(3):  # another session may take over the same stale lock at the same time
            if self._create():
                return
            owner = LockOwner.read(self.path)
            if owner is not None and owner_alive(owner):
                raise StoreLockedError(
                    f"{self.path.parent.name}: corrections are being made by {owner.describe()}; "
                    "opened read-only (close that review first). If it is known to be closed, "
                    f"remove {self.path}"
                )
            if owner is None and self.path.exists():
                age = _dt.datetime.now().timestamp() - self.path.stat().st_mtime
                if age < 10:  # being written by the fallback path of another session
                    raise StoreLockedError(
                        f"{self.path} is being taken by another review; opened read-only"
                    )
            # stale: its process is gone; replace it only if it is still the stale one
            self.taken_over = owner
            stale = self.path.with_name(f".{LOCK}.stale.{self.owner.token}")
            try:
                os.replace(self.path, stale)
            except FileNotFoundError:
                continue
            if LockOwner.read(stale) != owner:  # another session's fresh lock: give it back
                if not self._create_from(stale):
                    stale.unlink(missing_ok=True)
                continue
            stale.unlink(missing_ok=True)
            who = owner.describe() if owner else "an unreadable lock file"
            warnings.warn(
                f"{self.path.parent.name}: took over the corrections lock of {who}, a review that "
                "is no longer running (its edits up to then are in the log)",
                StaleLockWarning,
                stacklevel=4,
            )
        raise StoreLockedError(f"{self.path}: could not take the lock; try again")

    def _create_from(self, moved: Path) -> bool:
        try:
            os.link(moved, self.path)
        except OSError:
            return False
        moved.unlink(missing_ok=True)
        return True

    @property
    def held(self) -> bool:
        """Whether this lock is still the store's lock."""
        current = LockOwner.read(self.path)
        return current is not None and current.token == self.owner.token

    def release(self) -> None:
        """Remove the lock file (when it is still this session's)."""
        _HELD.pop(self.owner.token, None)
        self._finalizer()


def lock_owner(folder: str | Path) -> LockOwner | None:
    """Who holds the corrections lock of a store (``None``: nobody, or a stale lock)."""
    owner = LockOwner.read(Path(folder) / LOCK)
    return owner if owner is not None and owner_alive(owner) else None
