"""runs.csv: one line per finished run of a report (what a cell of its tables is made of)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

RUN_COLUMNS = ("run", "task", "method", "switch_interval", "T", "lr", "connectivity", "seed",
               "final_acc", "mean_cross_term_error", "wall_time_s", "machine", "precision")


def write_runs_csv(rows: list[dict], path: Path) -> None:
    """One line per finished run: what a cell of the tables is made of, for merging runs from
    several machines or sessions and for one's own analysis."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RUN_COLUMNS)
        for r in sorted((r for r in rows if r["finished"]), key=lambda r: r["name"]):
            cross = f"{np.mean([e for _, e in r['cross']]):.6f}" if r["cross"] else ""
            si = r["si"] if r["T"] is not None else ""  # methods that never switch: blank
            w.writerow([r["name"], r["task"], r["method"], si, r["T"] or "", r["lr"],
                        r["connectivity"], r["seed"], f"{r['final']:.6f}", cross,
                        r["wall"] or "", r["machine"] or "", r["precision"]])
