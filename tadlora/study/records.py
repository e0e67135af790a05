"""Compact records of finished runs: what `tadlora report` reads, a few KB a run, so a study's
results survive a change of machine (results/ does not; records are committed, under
study/records/). `tadlora keep RUNS_DIR DEST` writes one for every finished run under RUNS_DIR:

- config.toml, the resolved config, as the run wrote it;
- summary.json, as the run wrote it;
- metrics.jsonl: the evaluated rounds whole, and of every other round what the report plots
  (phase, T, train loss, cross-term error, the online rho estimate), to 5 significant digits.

No checkpoints, no per-client training losses. A record is a run directory to the report.

A sweep of thousands of small runs (the testbed's) is kept whole in one file instead,
`tadlora keep --bundle RUNS_DIR DEST` -> DEST/runs.jsonl.gz: a line per finished run with its
config.toml, the summary's score fields, and of every round only what the report reads (the
evaluated mean, the cross-term error to 5 significant digits, the online estimate). The report
reads a bundle's runs as it reads run directories (study/results.py).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from ..runs import config
from ..runs.config import ConfigError
from ..runs.health import warn
from ..runs.rundir import CONFIG, METRICS, SUMMARY, RunDir
from .identity import ELSEWHERE, differences

__all__ = ["BUNDLE", "SLIM", "add_parser", "bundle", "compact_metrics", "config_of", "keep",
           "read_bundle"]

SLIM = ("round", "phase", "switch_interval", "train_loss", "cross_term_error", "rho_estimate",
        "rho_estimate_spread", "rho_mc")  # what the report reads of a round (those present)


def _short(value):
    return float(f"{value:.5g}") if isinstance(value, float) else value


def compact_metrics(records: list[dict]) -> list[dict]:
    """Evaluated rounds whole; the others reduced to SLIM."""
    return [r if "eval" in r else {k: _short(r[k]) for k in SLIM if k in r} for r in records]


BUNDLE = "runs.jsonl.gz"  # a whole sweep in one file
# what the report reads
BUNDLE_SUMMARY = ("mean", "switch_interval", "rho", "wall_time_s", "machine")
ONLINE = ("rho_estimate", "rho_estimate_spread", "rho_mc", "switch_interval")


def _finished(runs_dir: str | Path) -> tuple[Path, list[Path]]:
    """runs_dir and every finished run under it (a config.toml and a summary.json)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory of runs")
    return root, [s.parent for s in sorted(root.rglob(SUMMARY)) if (s.parent / CONFIG).is_file()]


def _read(src: Path) -> tuple[dict, list[dict]] | None:
    """A finished run's summary and round records, or None (with a warning) when either cannot
    be read."""
    run = RunDir(src)
    try:
        return run.read_json(SUMMARY), run.records()
    except (OSError, ValueError) as e:
        warn(f"skipping {src}: {e}")
        return None


def _destination(root: Path, dest: str | Path) -> Path:
    """DEST, a directory (new or existing) that is not RUNS_DIR itself."""
    out = Path(dest)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{dest} is a file; give a directory for the records")
    if out.resolve() == root.resolve():
        raise ValueError(f"{dest} is the directory of the runs itself; give another directory "
                         "for the records")
    return out


def config_of(text: str, what: str = "config") -> config.Config:
    """A record's config (its TOML text, as runs/config.to_toml wrote it) as a Config."""
    try:
        return config.from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} is not valid TOML: {e}") from e


def _not_the_same(kept: str, run: str) -> str | None:
    """Why a record's config (TOML text) is not the same experiment as a run's, or None."""
    try:
        diff = differences(config_of(kept), config_of(run), ELSEWHERE)
    except ConfigError as e:
        return f"the two configs cannot be compared ({e})"
    return f"it is another run ({'; '.join(diff)})" if diff else None


def _refuse(src: Path, where: Path, why: str) -> None:
    warn(f"not keeping {src}: the record {where} of that name is not overwritten: {why}; keep "
         "these runs into another directory (e.g. a subdirectory named after the sweep)")


def keep(runs_dir: str | Path, dest: str | Path) -> list[Path]:
    """A compact record in dest/<relative path> of every finished run under runs_dir (one with
    a summary.json); returns the records written. A record already there is rewritten when it
    is the same experiment (the run resumed, or kept again), never when it is another run."""
    (root, runs), written = _finished(runs_dir), []
    out = _destination(root, dest)
    for src in runs:
        target = out / src.relative_to(root)
        if (target / CONFIG).is_file() and (why := _not_the_same(
                (target / CONFIG).read_text(), (src / CONFIG).read_text())):
            _refuse(src, target, why)
            continue
        if (got := _read(src)) is None:
            continue
        _, rows = got
        target.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG, SUMMARY):
            shutil.copyfile(src / name, target / name)
        lines = [json.dumps(r, allow_nan=False) for r in compact_metrics(rows)]
        (target / METRICS).write_text("".join(line + "\n" for line in lines))
        written.append(target)
    return written


def _bundled(r: dict) -> dict:
    """What the report reads of one round."""
    out = {"round": r["round"]}
    if r.get("cross_term_error") is not None:
        out["cross_term_error"] = _short(r["cross_term_error"])
    if "eval" in r:
        out["eval"] = {"mean": r["eval"]["mean"]}
    if "rho_estimate" in r:
        out.update({k: r.get(k) for k in ONLINE})
    return out


def _entries(path: Path) -> dict[str, dict]:
    """The runs of an existing bundle by name ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        return {e["name"]: e for e in read_bundle(path)}
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} cannot be read ({e}); it is not overwritten: move it away, "
                         "or keep into another directory") from None


def bundle(runs_dir: str | Path, dest: str | Path) -> tuple[Path, int]:
    """Every finished run under runs_dir in dest/runs.jsonl.gz, beside the runs of other names
    already there (a run of the same name is replaced when it is the same experiment, else
    not kept); the same bytes for the same runs. Returns the file and the runs written."""
    root, runs = _finished(runs_dir)
    target = _destination(root, dest) / BUNDLE
    entries, n = _entries(target), 0
    for src in runs:
        name, config_text = str(src.relative_to(root)), (src / CONFIG).read_text()
        old = entries.get(name)
        if old is not None and (why := _not_the_same(old.get("config", ""), config_text)):
            _refuse(src, target, f"{name}: {why}")
            continue
        if (got := _read(src)) is None:
            continue
        summary, rows = got
        entries[name] = {"name": name, "config": config_text,
                         "summary": {k: summary[k] for k in BUNDLE_SUMMARY if k in summary},
                         "metrics": [_bundled(r) for r in rows]}
        n += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with gzip.GzipFile(partial, "wb", mtime=0) as f:
        for _, entry in sorted(entries.items()):
            f.write((json.dumps(entry, allow_nan=False, separators=(",", ":")) + "\n").encode())
    partial.replace(target)  # all or nothing: an interrupted write loses no kept run
    return target, n


def read_bundle(path: Path) -> Iterator[dict]:
    """The runs of a bundle: name, config (TOML text), summary, metrics."""
    with gzip.open(path, "rt") as f:
        for line in f:
            yield json.loads(line)


def cmd_keep(ns: argparse.Namespace) -> int:
    """Exit status 1 when a finished run was not kept (the warnings say why)."""
    finished = len(_finished(ns.runs_dir)[1])
    if ns.bundle:
        target, n = bundle(ns.runs_dir, ns.dest)
        size = target.stat().st_size
    else:
        written = keep(ns.runs_dir, ns.dest)
        n, target = len(written), ns.dest
        size = sum(f.stat().st_size for d in written for f in d.iterdir())
    print(f"kept {n} finished runs of {ns.runs_dir} in {target} ({size / 1024:.0f} KiB)")
    if n < finished:
        print(f"tadlora: {finished - n} finished runs not kept (the warnings above say why)",
              file=sys.stderr)
    return 0 if n == finished else 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `tadlora keep RUNS_DIR DEST`."""
    k = subparsers.add_parser("keep", help="compact records of the finished runs under a "
                                           "directory (for committing a study's results)")
    k.add_argument("runs_dir")
    k.add_argument("dest")
    k.add_argument("--bundle", action="store_true",
                   help=f"one file, DEST/{BUNDLE}, for a sweep of many small runs")
    k.set_defaults(func=cmd_keep)
    return k
