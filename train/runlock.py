"""One writer per run directory: `RUN/train.lock`, held while `satpipe train` runs.

    with RunLock(run_dir):
        ...   # only this process writes checkpoints and metrics into run_dir

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

from satpipe.errors import SatpipeError, note, os_error_line

LOCK_NAME = "train.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", -1))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _flock(fd: int) -> bool | None:
    """True: locked now; False: held by another open file; None: no flock on this filesystem."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return None
        raise


class RunLock:
    """The lock of one run directory (see the module docstring). Re-entrant it is not: a
    second RunLock on the same directory, even in the same process, is refused."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_NAME
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
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict[str, Any], extra: str = "") -> SatpipeError:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        since = f" since {holder['started']}" if holder.get("started") else ""
        return SatpipeError(
            f"{self.dir}: another satpipe train is writing this run ({who}{since}); wait for it "
            f"or stop it{extra} (lock file {self.path})"
        )

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; refuse a live holder (SatpipeError)."""
        try:
            self._made_dir = not self.dir.exists()
            self.dir.mkdir(parents=True, exist_ok=True)
            for _ in range(20):  # retried only when the lock changes hands under us
                if self._create() or self._take_over():
                    return self
            raise SatpipeError(f"{self.path}: lock changes hands too often; try again")
        except OSError as exc:
            reason = os_error_line(exc)
            raise SatpipeError(f"{self.path}: cannot take the run lock ({reason})") from exc

    def _create(self) -> bool:
        """Make the lock file, already flocked, if the name is free: True when it is ours."""
        tmp = self.dir / f".{LOCK_NAME}.{uuid.uuid4().hex}"
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
            # The file we locked must still be the one named train.lock (its holder may have
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
        note(f"{self.dir}: took over the lock of a run that is no longer running ({who})")
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
        if self._made_dir:  # a run refused before writing anything leaves no directory behind
            with contextlib.suppress(OSError):  # not empty (the run wrote), or already gone
                self.dir.rmdir()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
