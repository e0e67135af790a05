"""One writer per directory: an exclusive `flock` on a lock file inside it, held for as long as
a process writes there (`tadlora run`, `run --resume`, rank 0 of a distributed run, a sweep on
its out_dir). The lock file names its holder; the kernel drops the lock when the holder exits,
however it exits, so a lock left by a dead process never blocks.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path

from .config import ConfigError

LOCK = "writer.lock"


class Busy(ConfigError):
    """The directory is being written by another live process."""


class Lock:
    """An exclusive lock on `directory` (created if needed); `release` (or exit) frees it."""

    def __init__(self, directory: Path, what: str = "run directory"):
        self.path = Path(directory) / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 400, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise Busy(f"{what} {directory} is being written by another process "
                       f"({holder or 'unknown holder'}); wait for it to end or stop it, "
                       "or choose another directory") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, holder_line().encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_line() -> str:
    """Who holds the lock: pid, host and command (what the refusal shows)."""
    command = " ".join(sys.argv[:3])
    return f"pid {os.getpid()} on {socket.gethostname()}: {command}"
