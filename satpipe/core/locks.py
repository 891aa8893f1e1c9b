"""One writer per output: a lock file held while a satpipe command writes a run directory or
a store.

    with WriterLock(lock_path, target, "a run"):
        ...   # only this process writes target

`satpipe train` holds `RUN/train.lock` (satpipe.train.runlock); every store writer (saliency,
data make / import, publish, score) holds `NAME.zarr.lock` beside the store (`store_lock`), so
the lock exists before the store does and an `--overwrite` never removes it.

The lock file holds the holder's pid, host and start time (JSON), so a refusal can name it.
It appears atomically, already locked: the record is written to a private temporary file, an
`flock` is taken on it, and only then is it hard-linked to `train.lock` (a link, like
O_EXCL, fails when the name exists). The holder keeps the flock until it releases the lock or
dies; the kernel drops it with the process, whatever killed it (SIGKILL included). So:

- a lock whose flock can be taken belongs to a process that is gone (a stale lock, on this
  host or any other sharing the filesystem): it is taken over, in place, under that flock;
- a lock whose flock is held is refused with a line naming its holder.

On filesystems without flock (ENOLCK, EOPNOTSUPP) a lock is stale when it names this host
and a pid that is not running; a lock from another host is then refused, with the file to
delete once that process is known to be gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from satpipe.core.errors import SatpipeError, note, quote

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", -1))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _flock(fd: int, mode: int = fcntl.LOCK_EX) -> bool | None:
    """Try `mode` (LOCK_EX, LOCK_SH) without waiting. True: locked now; False: held by another
    open file; None: no flock on this filesystem."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return None
        raise


class WriterLock:
    """The lock file `lock_path` of one output `target` (see the module docstring); `what`
    names the output in refusals ("run", "store"). Re-entrant it is not: a second lock on the
    same file, even in the same process, is refused. `remove_made_dir`: release removes the
    lock's directory if acquire made it and it is empty (a run refused before writing leaves
    nothing behind)."""

    def __init__(
        self,
        lock_path: str | os.PathLike,
        target: str | os.PathLike | None = None,
        what: str = "output",
        remove_made_dir: bool = False,
    ) -> None:
        self.path = Path(lock_path)
        self.dir = self.path.parent
        self.target = str(target if target is not None else self.path.parent)
        self.what = what
        self._remove_made_dir = remove_made_dir
        self._fd: int | None = None
        self._made_dir = False

    def _record(self) -> bytes:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:500],
        }
        return (json.dumps(record) + "\n").encode()

    def _holder(self) -> dict[str, Any]:
        try:
            found = json.loads(self.path.read_text() or "{}")
            return found if isinstance(found, dict) else {}
        except (OSError, ValueError, RecursionError):
            return {}

    def _refuse(self, holder: dict[str, Any], extra: str = "") -> SatpipeError:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        since = f" since {holder['started']}" if holder.get("started") else ""
        return SatpipeError(
            f"{self.target}: another satpipe process is writing this {self.what} ({who}{since}"
            f"{_command(holder)}); wait for it or stop it{extra} (lock file {self.path})"
        )

    def acquire(self) -> WriterLock:
        """Take the lock, taking over a stale one; refuse a live holder (SatpipeError)."""
        try:
            self._made_dir = not self.dir.exists()
            self.dir.mkdir(parents=True, exist_ok=True)
            for _ in range(20):  # retried only when the lock changes hands under us
                if self._create() or self._take_over():
                    return self
            raise SatpipeError(f"{self.path}: lock changes hands too often; try again")
        except OSError as exc:
            reason = quote(exc)
            raise SatpipeError(f"{self.path}: cannot take the {self.what} lock ({reason})") from exc

    def _create(self) -> bool:
        """Make the lock file, already flocked, if the name is free: True when it is ours."""
        tmp = self.dir / f".{self.path.name}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            os.write(fd, self._record())
            os.fsync(fd)
            _flock(fd)  # None (no flock here) falls back to pid checks
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                os.close(fd)
                return False
            self._fd = fd
            return True
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self) -> bool:
        """The lock exists: take it if its holder is gone. False: it vanished, try again."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            locked = _flock(fd)
            holder = self._holder()
            if locked is False:
                raise self._refuse(holder)
            if locked is None:
                host, pid = holder.get("host"), holder.get("pid")
                if host != socket.gethostname():
                    raise self._refuse(holder, "; delete the lock file once it is gone")
                if isinstance(pid, int) and _pid_alive(pid):
                    raise self._refuse(holder)
            # The file we locked must still be the one named by the lock path (its holder may have
            # released it, removing the name, between our open and our flock).
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._record(), 0)
            os.fsync(fd)
        except FileNotFoundError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        note(
            f"{self.target}: took over the lock of a {self.what} whose writer is no longer "
            f"running ({who})"
        )
        return True

    def release(self) -> None:
        """Remove the lock file, then drop the flock (in that order: no one can take a lock
        whose name is gone)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        if (
            self._made_dir and self._remove_made_dir
        ):  # a run refused before writing anything leaves no directory behind
            with contextlib.suppress(OSError):  # not empty (the run wrote), or already gone
                self.dir.rmdir()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _command(holder: dict[str, Any]) -> str:
    command = str(holder.get("command") or "").strip()
    return f", `{command[:120]}`" if command else ""


def held_by_other(lock_path: str | os.PathLike) -> dict[str, Any] | None:
    """The holder record of `lock_path` when a live process holds it, else None (no lock, or a
    stale one). Takes nothing: for readers that only need to know (eval of a running run)."""
    path = Path(lock_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        locked = _flock_shared(fd)
        try:
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError, RecursionError):
            holder = {}
        holder = holder if isinstance(holder, dict) else {}
        if locked is None:  # no flock here: the pid decides (this host only)
            pid = holder.get("pid")
            live = holder.get("host") != socket.gethostname() or (
                isinstance(pid, int) and _pid_alive(pid)
            )
            return holder if live else None
        return None if locked else holder
    finally:
        os.close(fd)


def _flock_shared(fd: int) -> bool | None:
    """True: nobody holds it (a shared lock was taken and dropped); False: held; None: no flock."""
    locked = _flock(fd, fcntl.LOCK_SH)
    if locked:
        fcntl.flock(fd, fcntl.LOCK_UN)
    return locked
