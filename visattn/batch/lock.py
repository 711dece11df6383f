"""One batch launch per output folder: a lock file naming its owner, taken over when the owner is gone.

``visattn batch`` run twice on one ``--out`` would run every job twice, append to the same result logs and, at
start-up, delete the other run's temporary files. The main process of a launch (rank 0; the other ranks of the
same ``accelerate launch`` / ``torchrun`` never touch the lock) therefore holds ``.visattn-batch.lock`` in the
folder for the whole run. The file holds the owner's pid, host and start time, for the message a second launch
gets and for the start-up clean-up, which only removes temporary files of its own or of dead processes.

How ownership is decided:

* where the OS offers advisory locks (``fcntl.flock``: Linux, macOS, and NFS through the kernel's lock manager),
  the owner holds an exclusive lock on the open file; the kernel drops it when the process dies, however it dies,
  so a stale lock file is simply locked again and rewritten;
* elsewhere (Windows), the file is created exclusively; an existing file whose owner is a dead process of this
  host is taken over, one whose owner is on another host is left alone (its liveness cannot be checked from here)
  and the message says to delete it once that process is known to be gone.

The owner deletes the file when it finishes.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..generate import UsageError

try:  # POSIX only; the fallback below handles the rest
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".visattn-batch.lock"


class FolderLocked(UsageError):
    """Another live ``visattn batch`` launch owns the output folder."""


def host_name() -> str:
    """This machine's name as recorded in lock files and temporary-file names (no ``@`` or path separators)."""
    name = socket.gethostname() or "localhost"
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this machine (a process we may not signal still exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # Windows raises OSError for a pid that does not exist
        return False
    return True


def owner_alive(pid: int, host: str) -> bool | None:
    """``True``/``False`` for an owner on this host; ``None`` when it is on another host (unknowable from here)."""
    return process_alive(pid) if host == host_name() else None


def _describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {owner.get('started', '?')}"


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # being written, or damaged: treated as an unknown owner
    return data if isinstance(data, dict) else {}


class OutputLock:
    """The lock of one output folder, held by this process; use as a context manager or call :meth:`release`."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.owner = {
            "pid": os.getpid(),
            "host": host_name(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock, or raise :class:`FolderLocked` naming the owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            self._acquire_flock()
        else:  # pragma: no cover - Windows
            self._acquire_exclusive()
        return self

    def _refuse(self, owner: dict[str, Any], hint: str = "") -> FolderLocked:
        return FolderLocked(
            f"output folder {str(self.path.parent)!r} is in use by another visattn batch run "
            f"({_describe(owner)}); wait for it to finish or use another --out{hint}"
        )

    def _acquire_flock(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(_read_owner(self.path)) from None
            except OSError:
                # A file system without advisory locks: fall back to exclusive creation.
                os.close(fd)
                self._acquire_exclusive()
                return
            # The previous owner may have deleted the file between our open and our lock: then we locked an
            # orphaned inode that a third process can no longer see, so try again on the file now at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self._write_owner()
                return
            os.close(fd)

    def _acquire_exclusive(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                alive = owner_alive(int(owner.get("pid") or 0), str(owner.get("host", "")))
                if alive is False:
                    with suppress(FileNotFoundError):
                        self.path.unlink()  # a dead owner's lock: take it over
                    continue
                hint = "" if alive else f" (if that process is gone, delete {str(self.path)!r})"
                raise self._refuse(owner, hint) from None
            self._fd = fd
            self._write_owner()
            return
        raise self._refuse(_read_owner(self.path))

    def _write_owner(self) -> None:
        assert self._fd is not None
        data = (json.dumps(self.owner, sort_keys=True) + "\n").encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0) if hasattr(os, "pwrite") else os.write(self._fd, data)
        os.fsync(self._fd)

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        # Deleted while still locked, so a process waiting on this inode re-checks the path (see _acquire_flock).
        with suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
