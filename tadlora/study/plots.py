"""The PNG plots of `tadlora report` (matplotlib, Agg backend), one set per task.

Each curve is a mean over seeds at the learning rate the report picked for its method and
connectivity (against T: at the T's rate); the shaded band or error bar is one standard
deviation over seeds.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .labels import topology_label
from .results import best_rows, conn_order, is_reference, order, stats


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(runs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean, std) over the runs' (round, value) series."""
    by_round = defaultdict(list)
    for r in runs:
        for rnd, v in r[key]:
            by_round[rnd].append(v)
    x = np.array(sorted(by_round))
    m = np.array([np.mean(by_round[i]) for i in x])
    s = np.array([np.std(by_round[i], ddof=1) if len(by_round[i]) > 1 else 0.0 for i in x])
    return x, m, s


def _save(fig, path: Path, ax, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # outside, right: curves stay visible
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _log_x(ax, ticks: list[float]) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_xticks(sorted(set(ticks)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


_MARKERS = "osD^vPX"
_MORE_COLOURS = ("black", "darkred", "navy", "darkgoldenrod", "teal", "indigo", "saddlebrown",
                 "slategray", "lime", "magenta")


def _style(i: int) -> dict:
    """The i-th series' colour, marker and line: no two of the first 70 alike (matplotlib's
    colour cycle repeats after 10, and a study's report has more methods and T than that)."""
    colour = f"C{i % 10}" if i % 20 < 10 else _MORE_COLOURS[i % 10]
    return {"color": colour, "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": "-" if i < 10 else "--" if i < 20 else ":" if i < 30 else "-."}


def _by_label(runs: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for r in runs:
        groups[r["label"]].append(r)
    return dict(sorted(groups.items(), key=lambda kv: order(kv[0])))


def _file(out: Path, kind: str, task: str, run: dict | None = None) -> Path:
    """out/<kind>__<task>[__<topology>].png with only safe characters."""
    t = run["cfg"].topology if run else None
    conn = t and (f"{t.kind}-{t.schedule}" if t.schedule else
                  topology_label(t.kind, t.p, t.path, slug=True))
    parts = [kind, task, *([conn] if t else [])]
    return out / (re.sub(r"[^A-Za-z0-9._+-]", "_", "__".join(parts)) + ".png")


def accuracy_vs_rounds(runs: list[dict], task: str, out: Path) -> list[Path]:
    plt, paths = _pyplot(), []
    for conn in conn_order(runs):
        here = [r for r in runs if r["connectivity"] == conn]
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for i, (label, group) in enumerate(_by_label(here).items()):
            x, m, s = _curve(group, "evals")
            style = _style(i)
            ax.plot(x, m, markersize=4, label=label, **style)
            ax.fill_between(x, m - s, m + s, alpha=0.15, color=style["color"])
        paths.append(_save(fig, _file(out, "acc_rounds", task, here[0]), ax, "round",
                           "mean client accuracy", f"{task}, {conn}"))
    return paths


def accuracy_vs_p(runs: list[dict], task: str, out: Path) -> list[Path]:
    er = [r for r in runs if r["kind"] == "er"]
    if len({r["p"] for r in er}) < 2:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, (label, group) in enumerate(_by_label(er).items()):
        by_p = defaultdict(list)
        for r in group:
            by_p[r["p"]].append(r["final"])
        ps = sorted(by_p)
        st = [stats(by_p[p]) for p in ps]
        if is_reference(label.split(" ")[0]) and len(ps) == 1:  # the same at every p
            ax.axhline(st[0][0], linestyle="--", linewidth=1, color=_style(i)["color"],
                       label=f"{label} (any p)")
            continue
        ax.errorbar(ps, [s[0] for s in st], [s[1] for s in st], capsize=3, label=label,
                    **_style(i))
    _log_x(ax, [r["p"] for r in er])
    return [_save(fig, _file(out, "acc_vs_p", task), ax, "edge probability p",
                  "final mean client accuracy", f"{task}, Erdos-Renyi")]


def accuracy_vs_t(found: list[dict], runs: list[dict], task: str, out: Path) -> list[Path]:
    if not found:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for f in found:  # the T compared on matched seeds as a line; a T with fewer, hollow
        on, conn = f["matched"], f["connectivity"]
        ts, rest = sorted(on), sorted(set(f["stats"]) - set(on))
        line = ax.errorbar(ts, [on[t][0] for t in ts], [on[t][1] for t in ts], marker="o",
                           capsize=3, label=conn)
        if rest:
            ax.plot(rest, [f["stats"][t][0] for t in rest], marker="o", markerfacecolor="none",
                    linestyle="none", color=line[0].get_color(), label=f"{conn}, fewer seeds")
        here = [r for r in runs if r["connectivity"] == conn and r["lr"] == f["lr"]
                and r["finished"] and r["task"] == task]  # at the T's learning rate
        auto = [r for r in here if r["method"] == "tad" and r["si"] == "auto"]
        if auto:  # the auto runs' T and accuracy: a star on the same colour
            m = stats([r["final"] for r in auto])[0]
            ax.plot([auto[0]["T"]], [m], marker="*", markersize=14, linestyle="none",
                    color=line[0].get_color(), label=f"auto T={auto[0]['T']}")
        if lora := [r["final"] for r in here if r["method"] == "lora"]:  # the bar to clear
            ax.axhline(stats(lora)[0], linestyle="--", linewidth=1, color=line[0].get_color(),
                       label=f"lora, {conn}")
    _log_x(ax, [t for f in found for t in f["stats"]])
    return [_save(fig, _file(out, "acc_vs_T", task), ax, "switching interval T",
                  "final mean client accuracy", f"{task}, tad")]


def cross_term(runs: list[dict], task: str, out: Path) -> list[Path]:
    plt, paths = _pyplot(), []
    for conn in conn_order(runs):
        here = [r for r in runs if r["connectivity"] == conn and r["method"] in ("lora", "tad")
                and r["cross"]]
        if not here:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for i, (label, group) in enumerate(_by_label(here).items()):
            x, m, _ = _curve(group, "cross")
            ax.plot(x, m, label=label, markevery=max(1, len(x) // 10), markersize=4,
                    **_style(i))
        if all(v > 0 for r in here for _, v in r["cross"]):
            ax.set_yscale("log")
        paths.append(_save(fig, _file(out, "cross_term", task, here[0]), ax, "round",
                           "cross-term error", f"{task}, {conn}"))
    return paths


def plot_task(rows: list[dict], task: str, found: list[dict], out: Path) -> list[Path]:
    """All plots of one task; returns the files written."""
    runs = [r for r in best_rows(rows) if r["task"] == task]
    return [*accuracy_vs_rounds(runs, task, out), *accuracy_vs_p(runs, task, out),
            *accuracy_vs_t(found, rows, task, out), *cross_term(runs, task, out)]
