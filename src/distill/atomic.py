"""Atomic file writes, distill's temporaries, the folder lock, and fault injection.

* :func:`atomic_write_bytes` / :func:`atomic_write_json`: a temporary sibling (``*.distill.tmp``),
  fsync, rename: a crash leaves the old file or the new one, never a mixture;
* :func:`remove_temporaries`: what a killed write left (only distill's own temporaries);
* :class:`FolderLock`: an exclusive ``fcntl.flock`` on a lock file, released by the kernel when
  its process dies;
* :func:`fault_point`: every file-system step of a write calls it, so the crash-safety tests can
  SIGKILL the process at any one of them.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

from distill.errors import DistillError


_FAULT_STEPS = [0]


def fault_point(step: str) -> None:
    """Fault injection for the crash-safety tests: every file-system step of a checkpoint or store
    write calls this; with ``$DISTILL_FAULT_AT=k`` the process SIGKILLs itself at the k-th step
    (``$DISTILL_FAULT_LOG``, when set, names a file that gets one line per step reached)."""
    at = os.environ.get("DISTILL_FAULT_AT")
    if at is None:
        return
    _FAULT_STEPS[0] += 1
    log = os.environ.get("DISTILL_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{_FAULT_STEPS[0]} {step}\n")
    if _FAULT_STEPS[0] == int(at):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


#: the suffix of distill's temporary files: a sweep after a kill removes these and no file of the user's
TMP_SUFFIX = ".distill.tmp"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync, rename over ``path``. A full disk is a
    :class:`DistillError` naming the file; the old ``path`` is untouched and no temporary is left."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=TMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"written {tmp}")
        os.replace(tmp, path)
        tmp = None
        fault_point(f"renamed {path}")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DistillError(f"disk full while writing {path}; free space and rerun the same command "
                               "to resume") from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def remove_temporaries(folder: Path) -> int:
    """Delete the temporaries (``*.distill.tmp``, only distill's own) a killed write left in ``folder`` (call it while holding the
    folder's lock). Returns how many were removed."""
    n = 0
    for p in Path(folder).glob("*" + TMP_SUFFIX):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n



class FolderLock:
    """An exclusive ``fcntl.flock`` on ``lockfile`` guarding ``what`` (a folder). Held: a second
    process gets a one-line :class:`DistillError` naming ``what`` and the holder (pid@host), or
    with ``wait`` logs once and waits. The kernel drops the lock when the holder dies, so a killed
    run never leaves a stale lock behind."""

    def __init__(self, lockfile, what, *, wait: bool = False, log=print):
        self.lockfile, self.what, self.wait, self.log = Path(lockfile), what, wait, log
        self._fd = None

    def __enter__(self) -> "FolderLock":
        self.lockfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                if not self.wait:
                    os.close(fd)
                    raise DistillError(f"{self.what} is in use by process {holder}; wait for it to finish or "
                                       "choose another output folder") from None
                if not said:
                    self.log(f"[wait] {self.what} is in use by process {holder}; waiting for it")
                    said = True
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{os.uname().nodename}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
