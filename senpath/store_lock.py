"""The writer's lock of a results store (``<out>/<slide_id>/store.lock``): one writer at a time.

Two writers of one store interleave their files: two ``senpath run`` on one ``--out`` analysing the
same slide, or a run re-analysing a slide while a person reviews it in napari (whose corrections are
saved into the same store). Every writer of a store holds its lock while it writes: a run for the
whole analysis of the slide, a review session (:mod:`senpath.corrections`) while it is open. A second
writer is refused with a message naming the holder; a review then opens read-only, a run reports the
slide as failed (run again later to resume it).

The granularity is the store, not the batch's ``--out``: that is what a run and a review conflict on,
and it lets several runs share one ``--out`` with different slides (a SLURM array job per slide
list). Two runs of the same sheet do not wait for each other: the second reports the slides the
first is writing, and skips those the first has finished.

The lock file says who writes (``host``, ``pid``, ``user``, ``time``, ``purpose``: ``run`` or
``review``, and a ``token`` of the holder). A lock is stale, and is taken over with a
:class:`StaleLockWarning`, when its process is gone: a dead pid on this host, or a holder in this very
process that was released or garbage-collected. A lock from another host cannot be checked: it is
honoured, and the message says which file to remove once that writer is known to be gone.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import socket
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from senpath.results import pid_alive

#: The lock file, in the store's folder.
STORE_LOCK = "store.lock"
#: What a holder does with the store (said in messages to the others).
PURPOSES = ("run", "review")

#: Tokens of the locks this process holds now (a lock of this pid with another token is stale).
_HELD: weakref.WeakValueDictionary[str, StoreLock] = weakref.WeakValueDictionary()
#: The run locks this process holds, by store folder: a run nests (batch → slide → commit).
_RUNS: dict[str, tuple[StoreLock, int]] = {}
_RUNS_GUARD = threading.Lock()


class StoreBusyError(RuntimeError):
    """Another writer (a run, a review) holds the store's lock; its message says who."""


class StaleLockWarning(UserWarning):
    """A lock left by a writer that is no longer running was taken over."""


def default_user() -> str:
    """The name recorded in locks and logs: ``$SENPATH_USER`` or the login name."""
    try:
        return os.environ.get("SENPATH_USER") or getpass.getuser()
    except Exception:  # no login name (containers): still record something
        return "unknown"


@dataclass(frozen=True)
class LockOwner:
    """Who holds a store's lock (the content of the lock file)."""

    host: str
    pid: int
    user: str
    time: str
    token: str
    purpose: str = "review"

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
                purpose=str(raw.get("purpose", "review")),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        """``anna on host (process 123, since 2026-01-01T10:00:00+00:00)``."""
        return f"{self.user} on {self.host} (process {self.pid}, since {self.time})"

    def doing(self) -> str:
        """What the holder does, for a message: ``being reviewed by ...``."""
        if self.purpose == "run":
            return f"being written by a senpath run of {self.describe()}"
        return f"being reviewed (corrections are being made) by {self.describe()}"


def owner_alive(owner: LockOwner) -> bool:
    """Whether the holder of a lock may still be writing.

    On this host, its process must exist, and when it is this very process, the holder must still
    hold it; on another host nothing can be checked, so it counts as alive.
    """
    if owner.host != socket.gethostname():
        return True
    if owner.pid == os.getpid():
        return owner.token in _HELD
    return pid_alive(owner.pid)


def _remove_if_ours(path: Path, token: str) -> None:
    owner = LockOwner.read(path)
    if owner is not None and owner.token == token:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class StoreLock:
    """The lock of one results store, held by one writer.

    Parameters
    ----------
    folder : the slide's store (created if missing).
    purpose : ``"run"`` or ``"review"``: what the holder does, told to writers it refuses.
    user : the name recorded in the lock (default: :func:`default_user`).
    name : the lock file's name in ``folder``.
    error : the exception raised when the store is busy (a subclass of :class:`StoreBusyError`).
    advice : what the refused writer is told to do, after who holds the lock.
    warn : warn (:class:`StaleLockWarning`) when a stale lock is taken over; ``taken_over`` says it
        either way.

    Raises
    ------
    StoreBusyError
        When another live writer holds the lock; the message says who, and what to do.

    Notes
    -----
    The lock is released by :meth:`release`, and at the latest when this object is
    garbage-collected or the interpreter exits.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        purpose: str,
        user: str | None = None,
        name: str = STORE_LOCK,
        error: type[StoreBusyError] = StoreBusyError,
        advice: str = "",
        warn: bool = True,
    ) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        self.path = Path(folder) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = LockOwner(
            host=socket.gethostname(),
            pid=os.getpid(),
            user=user or default_user(),
            time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            token=uuid.uuid4().hex,
            purpose=purpose,
        )
        self.taken_over: LockOwner | None = None
        self.took_over = False
        self._error, self._advice, self._warn = error, advice, warn
        self._acquire()
        _HELD[self.owner.token] = self
        self._finalizer = weakref.finalize(self, _remove_if_ours, self.path, self.owner.token)

    def _payload(self) -> bytes:
        return json.dumps(self.owner.__dict__, sort_keys=True).encode("utf-8")

    def _create(self) -> bool:
        """Create the lock file with its content in one step; ``False`` when it exists."""
        tmp = self.path.with_name(f".{self.path.name}.{self.owner.token}")
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

    def _busy(self, what: str, *, remove_hint: bool = False) -> StoreBusyError:
        advice = f"; {self._advice}" if self._advice else ""
        hint = f". If it is known to be gone, remove {self.path}" if remove_hint else ""
        return self._error(f"{self.path.parent}: {what}{advice}{hint}")

    def _acquire(self) -> None:
        for _ in range(3):  # another writer may take over the same stale lock at the same time
            if self._create():
                return
            owner = LockOwner.read(self.path)
            if owner is not None and owner_alive(owner):
                raise self._busy(owner.doing(), remove_hint=True)
            if owner is None and self.path.exists():
                age = _dt.datetime.now().timestamp() - self.path.stat().st_mtime
                if age < 10:  # being written by the fallback path of another writer
                    raise self._busy("its lock is being taken by another writer")
            # stale: its process is gone; replace it only if it is still the stale one
            self.taken_over = owner
            stale = self.path.with_name(f".{self.path.name}.stale.{self.owner.token}")
            try:
                os.replace(self.path, stale)
            except FileNotFoundError:
                continue
            if LockOwner.read(stale) != owner:  # another writer's fresh lock: give it back
                if not self._create_from(stale):
                    stale.unlink(missing_ok=True)
                continue
            stale.unlink(missing_ok=True)
            self.took_over = True
            if self._warn:
                warnings.warn(self.takeover_message(), StaleLockWarning, stacklevel=4)
        raise self._busy("could not take its lock; try again")

    def takeover_message(self) -> str:
        """What taking over a stale lock means (empty when none was taken over)."""
        if not self.took_over:
            return ""
        owner = self.taken_over
        who = owner.describe() if owner else "an unreadable lock file"
        kind = owner.purpose if owner else "writer"
        after = (
            "its edits up to then are in the log"
            if kind == "review"
            else "what it left unfinished is redone"
        )
        return (
            f"{self.path.parent.name}: took over the store lock of {who}, a {kind} that is no "
            f"longer running ({after})"
        )

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
        """Remove the lock file (when it is still this holder's)."""
        _HELD.pop(self.owner.token, None)
        self._finalizer()


def store_lock_owner(folder: str | Path, *, name: str = STORE_LOCK) -> LockOwner | None:
    """Who holds a store's lock (``None``: nobody, or a stale lock)."""
    owner = LockOwner.read(Path(folder) / name)
    return owner if owner is not None and owner_alive(owner) else None


@contextmanager
def hold_store(
    folder: str | Path, *, user: str | None = None, warn: bool = True
) -> Iterator[StoreLock]:
    """Hold a store's lock for a run (analysis and commit) for the time of the ``with`` block.

    Nested holds of the same store in this process share one lock (a batch holds it around the
    slide's analysis, which holds it around its commit). The folder is created for the lock, and
    removed again on release when nothing was written to it (a slide that failed early).

    Raises
    ------
    StoreBusyError
        When another run or a review writes the store now.
    """
    key = str(Path(folder).absolute())
    with _RUNS_GUARD:
        held = _RUNS.get(key)
        if held is not None and held[0].held:
            _RUNS[key] = (held[0], held[1] + 1)
            lock = held[0]
        else:
            lock = StoreLock(
                folder,
                purpose="run",
                user=user,
                advice="not analysed twice: run again when that is done to resume it",
                warn=warn,
            )
            _RUNS[key] = (lock, 1)
    try:
        yield lock
    finally:
        with _RUNS_GUARD:
            current, count = _RUNS.get(key, (lock, 1))
            if count <= 1:
                _RUNS.pop(key, None)
                lock.release()
                with suppress(OSError):  # only when empty: a failed slide leaves no folder
                    lock.path.parent.rmdir()
            else:
                _RUNS[key] = (current, count - 1)
