"""The report's page on switch_interval=online: every online run group's estimate of rho
(mean over clients, averaged over seeds, with the clients' spread) against the Monte Carlo rho
of the topology's current piece, the T in force against the oracle's, and a table of the
estimate's error and the share of rounds whose T is the oracle's."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..core.methods import switch_interval
from .plots import _file, _pyplot, _save

WARM = 80  # rounds before the table's errors count (core/estimate: two decisions of 20 rounds)


def _series(runs: list[dict]) -> dict[str, np.ndarray]:
    """Per round, over the runs (seeds): mean estimate, mean spread, Monte Carlo rho, mean T."""
    rows = [np.array([[np.nan if v is None else v for v in o[1:]] for o in r["online"]])
            for r in runs]
    length = min(len(x) for x in rows)
    stack = np.stack([x[:length] for x in rows])  # (seeds, rounds, 4)
    with warnings.catch_warnings():  # rounds before the first estimate: all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
    return {"round": np.arange(length), "estimate": mean[:, 0], "spread": mean[:, 1],
            "rho": stack[0, :, 2], "T": mean[:, 3], "all": stack}


def _plot(s: dict[str, np.ndarray], c: float, title: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = s["round"]
    ax.plot(x, s["estimate"], label="online estimate (clients' mean)")
    ax.fill_between(x, s["estimate"] - s["spread"], s["estimate"] + s["spread"], alpha=0.25,
                    label="± clients' spread")
    ax.step(x, s["rho"], where="post", color="k", lw=1, label="Monte Carlo rho")
    ax.set_ylim(0, 1)
    right = ax.twinx()
    right.step(x, s["T"], where="post", color="C3", lw=1, label="online T (seeds' mean)")
    right.step(x, [_oracle(r, c) for r in s["rho"]], where="post", color="C3", ls=":", lw=1,
               label="oracle T")
    right.set_ylabel("T")
    right.legend(fontsize=7, loc="lower right")
    return _save(fig, path, ax, "round", "rho", title)


def _oracle(rho: float, c: float) -> float:
    return switch_interval(rho, c) if np.isfinite(rho) and rho < 1 else np.nan


def pages(rows: list[dict], out: Path) -> list[str]:
    """The markdown (and plots) for the finished runs with an online estimate; [] if none."""
    groups = defaultdict(list)
    for r in rows:
        if r["finished"] and r["online"]:
            groups[r["task"], r["connectivity"]].append(r)
    if not groups:
        return []
    lines = ["## Online estimate of rho", "",
             f"After round {WARM}: mean |estimate - Monte Carlo rho| over rounds (worst seed), "
             "share of rounds whose T is the oracle's.", "",
             "| task | topology | seeds | error (worst seed) | T = oracle T |",
             "|---|---|---|---|---|"]
    plots = []
    for (task, conn), runs in sorted(groups.items()):
        s, c = _series(runs), runs[0]["cfg"].method.c
        stack = s["all"][:, WARM:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            err = np.nanmean(np.abs(stack[..., 0] - stack[..., 2]), axis=1)
        same = np.mean(stack[..., 3] == [[_oracle(r, c) for r in stack[0, :, 2]]])
        lines.append(f"| {task} | {conn} | {len(runs)} | {np.nanmean(err):.3f} "
                     f"({np.nanmax(err):.3f}) | {same:.0%} |")
        plot = _plot(s, c, f"{task}, {conn}", _file(out, "rho_online", task, runs[0]))
        plots += [f"![{plot.stem}]({plot.name})", ""]
    return [*lines, "", *plots]
