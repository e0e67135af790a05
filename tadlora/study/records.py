"""Compact records of finished runs: what `tadlora report` reads, a few KB a run, so a study's
results survive a change of machine (results/ does not; records are committed, under
study/records/). `tadlora keep RUNS_DIR DEST` writes one for every finished run under RUNS_DIR:

- config.toml, the resolved config, as the run wrote it;
- summary.json, as the run wrote it;
- metrics.jsonl: the evaluated rounds whole, and of every other round what the report plots
  (phase, T, train loss, cross-term error, the online rho estimate), to 5 significant digits.

No checkpoints, no per-client training losses. A record is a run directory to the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..runs.rundir import CONFIG, METRICS, SUMMARY, RunDir

__all__ = ["SLIM", "compact_metrics", "keep", "add_parser"]

SLIM = ("round", "phase", "switch_interval", "train_loss", "cross_term_error", "rho_estimate",
        "rho_estimate_spread", "rho_mc")  # what the report reads of a round (those present)


def _short(value):
    return float(f"{value:.5g}") if isinstance(value, float) else value


def compact_metrics(records: list[dict]) -> list[dict]:
    """Evaluated rounds whole; the others reduced to SLIM."""
    return [r if "eval" in r else {k: _short(r[k]) for k in SLIM if k in r} for r in records]


def keep(runs_dir: str | Path, dest: str | Path) -> list[Path]:
    """A compact record in dest/<relative path> of every finished run under runs_dir (one with
    a summary.json); returns the records written. A record already there is rewritten."""
    root, out, written = Path(runs_dir), Path(dest), []
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory of runs")
    for summary in sorted(root.rglob(SUMMARY)):
        src = summary.parent
        if not (src / CONFIG).is_file():
            continue
        target = out / src.relative_to(root)
        target.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG, SUMMARY):
            shutil.copyfile(src / name, target / name)
        lines = [json.dumps(r, allow_nan=False) for r in compact_metrics(RunDir(src).records())]
        (target / METRICS).write_text("".join(line + "\n" for line in lines))
        written.append(target)
    return written


def cmd_keep(ns: argparse.Namespace) -> int:
    written = keep(ns.runs_dir, ns.dest)
    size = sum(f.stat().st_size for d in written for f in d.iterdir())
    print(f"kept {len(written)} finished runs of {ns.runs_dir} in {ns.dest} "
          f"({size / 1024:.0f} KiB)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `tadlora keep RUNS_DIR DEST`."""
    k = subparsers.add_parser("keep", help="compact records of the finished runs under a "
                                           "directory (for committing a study's results)")
    k.add_argument("runs_dir")
    k.add_argument("dest")
    k.set_defaults(func=cmd_keep)
    return k
