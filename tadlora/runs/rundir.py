"""The run directory: the names of its files, creating it, atomic writes, the metrics log
(append, read, truncate on resume) and the config a resume may change. Nothing else spells
these names.

  config.toml     the resolved config (what --resume reads back)
  clients.json    per-client label counts and names, rho, the switch interval
  metrics.jsonl   one JSON object per round (and the evaluation when there is one)
  summary.json    final per-client accuracies, their aggregates and the averaged adapter's
  elapsed.json    the wall seconds spent when each checkpoint was saved (a resume adds on)
  checkpoint/     every client's tensors + AdamW state (safetensors) after the last saved round
  peers/rank-K/round-RRRRRR/   a distributed run's checkpoint slices, one per peer and round
  error.log       a sweep's record of why the run failed
  writer.lock     held by the one process writing the directory (runs/lock.py)

A run directory holds only these files: a new run refuses a directory with anything else in it
(it is not a run), and a directory with a checkpoint or a summary (a started run, to resume).
A directory with a config but no checkpoint yet (killed before its first one) starts over.
metrics.jsonl and the JSON files are strict JSON: a non-finite number is written as null.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load, parse_overrides, to_toml
from .lock import LOCK, Lock

CONFIG, CLIENTS, METRICS, SUMMARY = "config.toml", "clients.json", "metrics.jsonl", "summary.json"
ELAPSED = "elapsed.json"
CHECKPOINT, PEERS, ERROR_LOG = "checkpoint", "peers", "error.log"
LOGS = "logs"  # a launch's peer output, rank-K.log (engines/peer_output.py)
META = "state.json"  # a checkpoint's round, switch interval and checksums
PREVIOUS = f"{CHECKPOINT}.prev"  # the checkpoint before the last (a resume falls back to it)
RUN_FILES = {CONFIG, CLIENTS, METRICS, SUMMARY, ELAPSED, CHECKPOINT, PEERS, ERROR_LOG, LOCK,
             PREVIOUS, LOGS, f"{CHECKPOINT}.tmp", f"{CHECKPOINT}.old",
             *(f"{f}.tmp" for f in (CONFIG, CLIENTS, METRICS, SUMMARY, ELAPSED))}
RESUMABLE_KEYS = ("checkpoint_every", "eval_every", "progress", "rounds")  # run.* on --resume


def default_name(cfg: Config) -> str:
    """run.name, or <method>-<topology>-s<seed>-<date>-<time> when it is empty."""
    return cfg.run.name or (f"{cfg.method.name}-{cfg.topology.kind}-s{cfg.run.seed}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")


def check_name(name: str) -> str:
    """run.name must name one directory inside run.out_dir."""
    if name in (".", "..") or "/" in name or "\\" in name or name != name.strip() or not name:
        raise ConfigError(f"run.name={name!r}: a run name is one directory name inside "
                          "run.out_dir (no '/', no '..'); put the parent in run.out_dir")
    return name


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinity replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def _record(line: str) -> dict | None:
    """One line of metrics.jsonl as a round record, or None when it is not one (what resume
    and report read of it has its type: an integer round, a number loss, an eval's mean)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    ok = (isinstance(row, dict) and isinstance(row.get("round"), int)
          and isinstance(row.get("train_loss"), int | float | None)
          and isinstance(row.get("eval", {"mean": 0.0}), dict)
          and isinstance(row.get("eval", {"mean": 0.0}).get("mean"), int | float))
    return row if ok else None


def atomic_write(path: Path, text: str) -> None:
    """Write a file so that a reader (or a crash) sees the old content or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"RUN_DIR/{name}")


def make_dir(path: Path, key: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a directory should be, no permission, ...
        raise ConfigError(f"{key}: cannot create the directory {path} ({e.strerror}: "
                          f"{e.filename}); choose another {key}") from e


@dataclass(frozen=True)
class RunDir:
    path: Path
    lock: Lock | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, cfg: Config) -> RunDir:
        """A new run directory with the resolved config, locked for this process. Refuses a
        directory that is not a run, a started run and one another process writes."""
        path = Path(cfg.run.out_dir) / check_name(default_name(cfg))
        make_dir(path, "run.out_dir")
        cls(path).check_is_run()  # before the lock file is written into it
        run = cls.open(path)
        try:
            if run.started():
                raise ConfigError(f"run directory {path} already holds a run; continue it "
                                  f"with `tadlora run --resume {path}` or choose another "
                                  "run.name")
            run.remove_files()  # what a run killed before its first checkpoint left
            run.write_config(cfg)
        except BaseException:
            run.unlock()
            raise
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory, locked for this process (the one writer)."""
        return cls(Path(path), Lock(Path(path)))

    def unlock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def started(self) -> bool:
        """Whether a checkpoint (merged, previous or a peer's slice) or a summary exists."""
        return (self.summary.exists() or self.checkpoint.exists() or self.previous.exists()
                or any(self.peers.glob("rank-*/round-*")))

    def check_is_run(self) -> None:
        strange = sorted(p.name for p in self.path.iterdir() if p.name not in RUN_FILES)
        if strange:
            raise ConfigError(f"{self.path} is not a run directory (it holds {strange[:5]}); "
                              "a run writes only into a new directory or a run directory: "
                              "choose another run.name or run.out_dir")

    def remove_files(self) -> None:
        """Remove the run's files (never the lock, never anything a run does not make)."""
        for name in sorted(RUN_FILES - {LOCK}):
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)

    def discard(self) -> None:
        """After a start-up failure, before any checkpoint: leave nothing behind."""
        self.remove_files()
        (self.path / LOCK).unlink(missing_ok=True)
        self.unlock()
        if not any(self.path.iterdir()):
            self.path.rmdir()

    config = _file(CONFIG)
    metrics = _file(METRICS)
    summary = _file(SUMMARY)
    checkpoint = _file(CHECKPOINT)
    previous = _file(PREVIOUS)
    peers = _file(PEERS)

    def peer_slices(self, rank: int) -> Path:
        return self.peers / f"rank-{rank}"

    def slice(self, rank: int, rnd: int) -> Path:
        """Where rank `rank` keeps its checkpoint slice after `rnd` rounds."""
        return self.peer_slices(rank) / f"round-{rnd:06d}"

    def write_config(self, cfg: Config) -> None:
        atomic_write(self.config, to_toml(cfg))

    def write_json(self, name: str, obj: dict) -> None:
        atomic_write(self.path / name, dumps(obj, indent=1))

    def read_json(self, name: str) -> dict:
        file = self.path / name
        try:
            obj = json.loads(file.read_text())
        except ValueError as e:
            raise ValueError(f"{file} is not valid JSON ({e}); restore it from a copy, or "
                             "start the run again") from e
        if not isinstance(obj, dict):
            raise ValueError(f"{file} holds {obj!r:.40}, not a JSON object; restore it from a "
                             "copy, or start the run again")
        return obj

    def append(self, record: dict) -> None:
        """One round's record at the end of metrics.jsonl."""
        with self.metrics.open("a") as log:
            log.write(dumps(record) + "\n")

    def records(self, before: int | None = None) -> list[dict]:
        """The round records of the run (only rounds < before, if given)."""
        if not self.metrics.exists():
            return []
        lines, rows = self.metrics.read_text(errors="replace").split("\n"), []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if (row := _record(line)) is not None:
                rows.append(row)
            elif i < len(lines):  # a torn last line (killed mid-append) is a round not saved
                raise ValueError(
                    f"{self.metrics}, line {i}: not a round record ({line[:60]!r}); the run's "
                    "log is damaged: restore the file from a copy, or start the run again")
        return [r for r in rows if before is None or r["round"] < before]

    def truncate(self, before: int) -> None:
        """Drop records of rounds that the checkpoint does not cover (they will be rerun)."""
        atomic_write(self.metrics, "".join(dumps(r) + "\n" for r in self.records(before)))

    def elapsed(self, rnd: int) -> float:
        """The wall seconds the run had spent when it saved the checkpoint of round `rnd` (0
        when not known: round 0, or a run from before elapsed.json)."""
        try:
            return float(json.loads((self.path / ELAPSED).read_text())[str(rnd)])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def note_elapsed(self, rnd: int, seconds: float) -> None:
        """Remember the wall seconds spent up to the checkpoint of round `rnd`."""
        try:
            times = dict(json.loads((self.path / ELAPSED).read_text()))
        except (OSError, ValueError, TypeError):  # none yet, or damaged: start the record over
            times = {}
        atomic_write(self.path / ELAPSED, dumps({**times, str(rnd): round(seconds, 1)}))

    def saved_round(self) -> int:
        """The next round the newest readable checkpoint (or the previous one) would run; 0
        when there is none."""
        for d in (self.checkpoint, self.previous):
            try:
                return int(json.loads((d / META).read_text())["round"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return 0


def resumable_config(directory: str | Path, overrides: list[str] = ()) -> Config:
    """The config of the run in `directory`, with the run.* overrides a resume may make."""
    run = RunDir(Path(directory))
    if not run.config.is_file():
        raise ConfigError(f"{run.path} is not a run directory (no {CONFIG})")
    changed = {f"{s}.{k}" for s, kv in parse_overrides(list(overrides)).items() for k in kv}
    if any(not k.startswith("run.") or k[4:] not in RESUMABLE_KEYS for k in changed):
        raise ConfigError(f"on --resume only run.{{{', '.join(sorted(RESUMABLE_KEYS))}}} may "
                          f"change; got {sorted(changed)}")
    return load(run.config, overrides)
