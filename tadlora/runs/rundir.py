"""The run directory: the names of its files, creating it, atomic writes, the metrics log
(append, read, truncate on resume) and the config a resume may change. Nothing else spells
these names.

  config.toml     the resolved config (what --resume reads back)
  clients.json    per-client label counts and names, rho, the switch interval
  metrics.jsonl   one JSON object per round (and the evaluation when there is one)
  summary.json    final per-client accuracies, their aggregates and the averaged adapter's
  checkpoint/     every client's tensors + AdamW state (safetensors) after the last saved round
  peers/rank-K/round-RRRRRR/   a distributed run's checkpoint slices, one per peer and round
  error.log       a sweep's record of why the run failed
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError, load, parse_overrides, to_toml

CONFIG, CLIENTS, METRICS, SUMMARY = "config.toml", "clients.json", "metrics.jsonl", "summary.json"
CHECKPOINT, PEERS, ERROR_LOG = "checkpoint", "peers", "error.log"
META = "state.json"  # a checkpoint's round and switch interval
RUN_FILES = {CONFIG, CLIENTS, METRICS, SUMMARY, CHECKPOINT, PEERS, ERROR_LOG,
             f"{CHECKPOINT}.tmp", f"{CHECKPOINT}.old"}
RESUMABLE_KEYS = ("checkpoint_every", "eval_every", "progress", "rounds")  # run.* on --resume


def default_name(cfg: Config) -> str:
    """run.name, or <method>-<topology>-s<seed>-<date>-<time> when it is empty."""
    return cfg.run.name or (f"{cfg.method.name}-{cfg.topology.kind}-s{cfg.run.seed}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")


def atomic_write(path: Path, text: str) -> None:
    """Write a file so that a reader (or a crash) sees the old content or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"RUN_DIR/{name}")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, cfg: Config) -> RunDir:
        """A new run directory with the resolved config; refuses to overwrite a started run."""
        run = cls(Path(cfg.run.out_dir) / default_name(cfg))
        if run.metrics.exists() or run.checkpoint.exists():
            raise ConfigError(f"run directory {run.path} already holds a run; continue it with "
                              f"`tadlora run --resume {run.path}` or choose another run.name")
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
        return run

    config = _file(CONFIG)
    metrics = _file(METRICS)
    summary = _file(SUMMARY)
    checkpoint = _file(CHECKPOINT)
    peers = _file(PEERS)

    def peer_slices(self, rank: int) -> Path:
        return self.peers / f"rank-{rank}"

    def slice(self, rank: int, rnd: int) -> Path:
        """Where rank `rank` keeps its checkpoint slice after `rnd` rounds."""
        return self.peer_slices(rank) / f"round-{rnd:06d}"

    def write_config(self, cfg: Config) -> None:
        atomic_write(self.config, to_toml(cfg))

    def write_json(self, name: str, obj: dict) -> None:
        atomic_write(self.path / name, json.dumps(obj, indent=1))

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def append(self, record: dict) -> None:
        """One round's record at the end of metrics.jsonl."""
        with self.metrics.open("a") as log:
            log.write(json.dumps(record) + "\n")

    def records(self, before: int | None = None) -> list[dict]:
        """The round records of the run (only rounds < before, if given)."""
        if not self.metrics.exists():
            return []
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines()
                if line.strip()]
        return [r for r in rows if before is None or r["round"] < before]

    def truncate(self, before: int) -> None:
        """Drop records of rounds that the checkpoint does not cover (they will be rerun)."""
        atomic_write(self.metrics, "".join(json.dumps(r) + "\n" for r in self.records(before)))

    def saved_round(self) -> int:
        """The next round the checkpoint would run; 0 when there is none (or it is unreadable)."""
        try:
            return int(json.loads((self.checkpoint / META).read_text())["round"])
        except (OSError, ValueError, KeyError, TypeError):
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
