"""The files a run reads, by content: a short sha256 of what model.path, data.path and
topology.path name (every file under a directory, names and bytes). `build` computes them once,
as it reads the files (Experiment.inputs); a run records them in clients.json and its summary
(so a kept record says which data it ran on), a resume warns when they changed
(`warn_if_changed`), and the peers of a distributed run compare theirs as they join
(runs/peer.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..data import synthetic
from .config import Config, ConfigError
from .health import warn
from .model import model_path
from .rundir import CLIENTS, RunDir

SHORT = 12  # hex digits kept: enough to tell versions of a file apart


def contents(path: str | Path) -> str:
    """A short sha256 of a file, or of every file under a directory; "missing" or
    "unreadable (...)" where there is nothing to read."""
    root = Path(path).expanduser()
    if not root.exists():
        return "missing"
    digest = hashlib.sha256()
    try:
        for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if f.is_file():
                digest.update(f"{f.relative_to(root) if root.is_dir() else ''}\0".encode())
                with f.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return digest.hexdigest()[:SHORT]


def input_files(cfg: Config) -> dict[str, str]:
    """{key: path} of the files a run reads (`digests` hashes them): the model directory
    of a text task (not a hub id), data.path and topology.path; "" where a key names none."""
    text = cfg.data.source != synthetic.NAME
    try:
        model = model_path(cfg.model.path) if text else ""
    except ConfigError:
        model = cfg.model.path  # build names the problem; it is hashed as "missing"
    return {"model.path": model if Path(model).is_dir() else "",
            "data.path": cfg.data.path if text else "", "topology.path": cfg.topology.path}


def digests(files: dict[str, str]) -> dict[str, str]:
    """{key: path} -> {key: contents}, for the keys that name a file ("" names none)."""
    return {key: contents(path) for key, path in files.items() if path}


def changes(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The keys whose files differ between two `digests`, as 'key (X, now Y)'."""
    return [f"{key} ({before[key]}, now {now.get(key, 'not read')})" for key in sorted(before)
            if before[key] != now.get(key)]


def warn_if_changed(run: RunDir, now: dict[str, str], first: int) -> None:
    """Warn when a resume from round `first` > 0 reads other files (`now`: their digests) than
    the run started on."""
    try:
        before = run.read_json(CLIENTS).get("inputs", {})
    except (OSError, ValueError):  # no record to compare with: nothing to say
        return
    if first and (moved := changes(before, now)):
        warn(f"the files of {'; '.join(moved)} are not the ones {run.path} started on: its "
             f"rounds from {first} on read other files than the rounds before (sha256 shown; "
             "restore the files to continue the same run)")
