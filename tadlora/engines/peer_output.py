"""What `tadlora launch` shows of its peers' output, and the line that says why a run failed.

Every byte a peer writes (stdout and stderr) goes to its log file, which ends up in
RUN_DIR/logs/rank-K.log. The terminal gets only the first line of each INFO or WARNING log
record (`[rank K] LEVEL ...`) and rank 0's progress bar: no tracebacks, no C++ frames, no
ERROR records (the launcher sums those up: `summary`, one line naming the peer, the round and
the error, then where the full logs are).
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SHOWN = re.compile(rb"^\[rank \d+\] (INFO|WARNING) ")  # log records shown live
BAR = re.compile(rb"\d+/\d+ \[")  # a tqdm progress bar with a total (rank 0's)
WARNING = b"tadlora: warning: "  # a warning for the user (cli._show_warning), rank 0's shown
SEGMENT = re.compile(rb"(?<=[\r\n])")  # split after every \r or \n, keeping them
MAX_MESSAGE = 300  # characters of a peer's error message in the summary line


def shown(segment: bytes, rank: int) -> bool:
    """Whether one line (or \\r-terminated bar update) of a peer's output goes to the terminal."""
    return bool(SHOWN.match(segment)) or (rank == 0 and (
        segment == b"\r" or bool(BAR.search(segment)) or segment.startswith(WARNING)))


class Forwarder:
    """Copies one peer's output to its log file, and what `shown` allows to the terminal."""

    lock = threading.Lock()  # one writer at a time on the terminal
    at_line_start = True  # whether the terminal's last shown byte ended a line

    def __init__(self, rank: int, stream: BinaryIO, log: Path,
                 terminal: BinaryIO | None = None) -> None:
        self.rank, self.stream, self.log = rank, stream, log
        self.terminal = terminal or sys.stderr.buffer
        self.thread = threading.Thread(target=self._copy, daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        pending = b""
        with self.log.open("ab") as log:
            log.write(f"=== tadlora launch, {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            while chunk := self.stream.read1(65536):
                log.write(chunk)
                log.flush()
                *segments, pending = SEGMENT.split(pending + chunk)
                self._show([s for s in segments if shown(s, self.rank)])
            log.write(pending)

    def _show(self, segments: list[bytes]) -> None:
        if not segments:
            return
        with Forwarder.lock:
            for s in segments:
                self.terminal.write(s)
            self.terminal.flush()
            Forwarder.at_line_start = segments[-1].endswith(b"\n")

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)

    @staticmethod
    def new_line() -> str:
        """What to print before the launcher's own lines: a newline after a bar left open."""
        return "" if Forwarder.at_line_start else "\n"


@dataclass
class Ending:
    """How one peer ended: its exit code, its own last words (what it announced in the store
    on its way out, if anything), the last round it started, whether the launcher killed it."""

    rank: int
    code: int
    message: str | None = None
    round: int | None = None
    killed: bool = False


def describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return {3: "stopped after losing a peer", 130: "was interrupted"}.get(
        code, f"exited with code {code}")


def cause(endings: list[Ending]) -> Ending | None:
    """The peer whose failure the others followed, from endings in the order they exited: the
    first that failed on its own (not a lost-peer stop, not killed by the launcher), else the
    first that stopped after losing a peer (its message names the lost one)."""
    failed = [e for e in endings if e.code != 0]
    own = [e for e in failed if e.code != 3 and not e.killed]
    return (own or [e for e in failed if e.code == 3] or failed or [None])[0]


def summary(e: Ending) -> str:
    """One line: which peer, where, and its error's first line (never a traceback)."""
    where = "start-up" if e.round is None else f"round {e.round}"
    what = (e.message or "").strip().splitlines()
    text = what[0] if what else describe(e.code)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + " ..."
    return f"rank {e.rank} ({where}): {text}"


def keep_logs(logs: Path, directory: Path | None) -> Path:
    """Append this launch's peer logs to RUN_DIR/logs/ (when the run directory exists), and
    return where they now are (else they stay in `logs`)."""
    if directory is None or not Path(directory).is_dir():
        return logs
    dest = Path(directory) / "logs"
    dest.mkdir(exist_ok=True)
    for f in sorted(logs.glob("rank-*.log")):
        with (dest / f.name).open("ab") as out, f.open("rb") as src:
            shutil.copyfileobj(src, out)
    shutil.rmtree(logs, ignore_errors=True)
    return dest
