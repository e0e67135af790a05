"""`tadlora report RUNS_DIR`: tables and plots over every run directory under RUNS_DIR.

A run counts once it has a summary.json. Its score is the final mean client accuracy (every
client's own model on the validation set, averaged over the clients); a table cell is the mean
and the sample standard deviation (ddof=1) of that score over the seeds of one
(task, method, connectivity, learning rate). Where several learning rates were run, each
(task, method) keeps the one with the best score averaged over its connectivities and seeds.
A method whose runs used several switching intervals is split into one row per interval
("tad T=3", "tad T=auto"). A paired table gives each method's difference to lora on the same
seeds. The best T per connectivity is fitted as T_best ~ c / sqrt(1 - rho).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import config
from .config import ConfigError
from .sweep_file import task_label
from .topology import DEFAULT_C, switch_interval

METHOD_ORDER = ("lora", "ffa", "rolora", "adf", "tad", "local", "fedavg")
REFERENCES = ("local", "fedavg")  # no graph involved: one run stands for every connectivity
SAME_IN_GROUP = ("run.seed", "run.name", "run.out_dir", "run.progress", "run.eval_every",
                 "run.checkpoint_every", "topology.rho_samples")


# ------------------------------------------------------------------ reading runs


def connectivity(kind: str, p: float, path: str = "") -> str:
    """'ER p=0.5', 'pairs p=0.1', 'ring', 'complete', 'file graph.txt'."""
    if kind in ("er", "pairs"):
        return f"{'ER' if kind == 'er' else 'pairs'} p={p:g}"
    return f"file {Path(path).name}" if kind == "file" else kind


def _read_run(d: Path, root: Path) -> dict:
    cfg = config.load(d / "config.toml")
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() \
        else None
    t = cfg.topology
    return {"dir": d, "name": str(d.relative_to(root)), "cfg": cfg, "seed": cfg.run.seed,
            "task": task_label(cfg.data.source, cfg.data.path, cfg.data.task),
            "method": cfg.method.name, "si": cfg.method.switch_interval, "lr": cfg.train.lr,
            "kind": t.kind, "p": t.p, "connectivity": connectivity(t.kind, t.p, t.path),
            "finished": summary is not None, "final": summary["mean"] if summary else None,
            "T": (summary or {}).get("switch_interval"), "rho": (summary or {}).get("rho"),
            "wall": (summary or {}).get("wall_time_s"),
            "evals": [(m["round"] + 1, m["eval"]["mean"]) for m in metrics if "eval" in m],
            "cross": [(m["round"] + 1, m["cross_term_error"]) for m in metrics
                      if m.get("cross_term_error") is not None]}


def collect(runs_dir: str | Path) -> list[dict]:
    """Every run directory (config.toml + metrics.jsonl) under runs_dir, recursively."""
    root, rows = Path(runs_dir), []
    for cfg_file in sorted(root.rglob("config.toml")):
        if (cfg_file.parent / "metrics.jsonl").is_file():
            try:
                rows.append(_read_run(cfg_file.parent, root))
            except (ConfigError, ValueError, KeyError, OSError) as e:
                print(f"tadlora report: skipping {cfg_file.parent}: {e}", file=sys.stderr)
    _label(rows)
    return rows


def _label(rows: list[dict]) -> None:
    """row["label"]: the method, with its switching interval where the task has several."""
    intervals = defaultdict(set)
    for r in rows:
        intervals[r["task"], r["method"]].add(str(r["si"]))
    for r in rows:
        several = len(intervals[r["task"], r["method"]]) > 1
        r["label"] = f"{r['method']} T={r['si']}" if several else r["method"]


# ------------------------------------------------------------------ aggregates


def stats(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std over seeds (0 for one seed), n)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _order(label: str) -> tuple:
    method, _, rest = label.partition(" ")
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    t = rest.removeprefix("T=")
    return rank, method, not t.isdigit(), int(t) if t.isdigit() else 0, t


def _conn_order(rows: list[dict]) -> list[str]:
    seen = {r["connectivity"]: (r["kind"] != "er", r["kind"], -r["p"]) for r in rows}
    return sorted(seen, key=seen.get)


def cells(rows: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """(task, label, connectivity, lr) -> stats of the final accuracy over seeds."""
    groups = defaultdict(list)
    for r in rows:
        if r["finished"]:
            groups[r["task"], r["label"], r["connectivity"], r["lr"]].append(r["final"])
    return {k: stats(v) for k, v in groups.items()}


def pick_lr(rows: list[dict]) -> dict[tuple[str, str], tuple[float, dict[float, float]]]:
    """(task, label) -> (best lr, {lr: score}); score = mean over connectivities of the
    mean over seeds, over the connectivities run at every lr (all, if none is common).
    Ties go to the smaller lr."""
    scores = defaultdict(lambda: defaultdict(dict))
    for (task, label, conn, lr), (mean, _, _) in cells(rows).items():
        scores[task, label][lr][conn] = mean
    out = {}
    for key, by_lr in scores.items():
        common = set.intersection(*(set(c) for c in by_lr.values()))
        avg = {lr: float(np.mean([m for c, m in by_conn.items() if c in common or not common]))
               for lr, by_conn in sorted(by_lr.items())}
        out[key] = (max(avg, key=lambda lr: (avg[lr], -lr)), avg)
    return out


def best_rows(rows: list[dict]) -> list[dict]:
    """The finished runs at the learning rate picked for their (task, label)."""
    picked = pick_lr(rows)
    return [r for r in rows if r["finished"] and picked[r["task"], r["label"]][0] == r["lr"]]


def paired(rows: list[dict], task: str, against: str = "lora") -> dict[tuple[str, str], list]:
    """(label, connectivity) -> [label's score - `against`'s score] over the seeds both ran, at
    their picked learning rates. Same seed = same data, initialisation and graphs, so the
    difference carries less noise than the two cells' means. A (label, connectivity, seed) run
    more than once (other settings in the same directory) is not paired."""
    runs = defaultdict(list)
    for r in best_rows(rows):
        if r["task"] == task and r["method"] not in REFERENCES:
            runs[r["label"], r["connectivity"], r["seed"]].append(r["final"])
    out = defaultdict(list)
    for (label, conn, seed), finals in sorted(runs.items()):
        base = runs.get((against, conn, seed), [])
        if label != against and len(finals) == len(base) == 1:
            out[label, conn].append(finals[0] - base[0])
    return dict(out)


def mixed_settings(rows: list[dict]) -> list[str]:
    """Config keys that differ between the seeds of one table cell (a warning for the reader)."""
    groups = defaultdict(list)
    for r in rows:
        if r["finished"]:
            groups[r["task"], r["label"], r["connectivity"], r["lr"]].append(
                config.to_dict(r["cfg"]))
    keys = set()
    for dicts in groups.values():
        for section, values in dicts[0].items():
            for k, v in values.items():
                if f"{section}.{k}" not in SAME_IN_GROUP and any(
                        d[section][k] != v for d in dicts[1:]):
                    keys.add(f"{section}.{k}")
    return sorted(keys)


# ------------------------------------------------------------------ switching interval vs rho


def fit_c(t_best: list[float], rho: list[float]) -> float:
    """Least squares c in T_best ~ c / sqrt(1 - rho) (a line through the origin in x)."""
    x = 1.0 / np.sqrt(1.0 - np.asarray(rho, dtype=float))
    t = np.asarray(t_best, dtype=float)
    return float((x * t).sum() / (x * x).sum())


_RHO_CACHE: dict[tuple, float] = {}


def rho_of(run: dict) -> float:
    """The run's rho: from its summary, else estimated for its topology (cached; the estimate
    does not depend on the run's seed)."""
    if run["rho"] is not None:
        return float(run["rho"])
    from . import topology

    cfg = run["cfg"]
    t, n = cfg.topology, cfg.clients.n
    key = (t.kind, n, t.p, t.path, t.rho_samples)
    if key not in _RHO_CACHE:
        _RHO_CACHE[key] = topology.process_rho(t.kind, n, t.p, t.path or None, t.rho_samples)
    return _RHO_CACHE[key]


def best_t(rows: list[dict], task: str) -> list[dict]:
    """Per connectivity with >= 2 fixed T for tad: the best T, the T within one std of it, rho."""
    runs = [r for r in best_rows(rows) if r["task"] == task and r["method"] == "tad"]
    out = []
    for conn in _conn_order(runs):
        here = [r for r in runs if r["connectivity"] == conn]
        by_t = defaultdict(list)
        for r in here:
            if isinstance(r["si"], int):
                by_t[r["si"]].append(r["final"])
        if len(by_t) < 2:
            continue
        st = {t: stats(v) for t, v in sorted(by_t.items())}
        best = max(st, key=lambda t: (st[t][0], -t))
        group = [t for t in st if st[t][0] >= st[best][0] - st[best][1]]
        rho = float(np.mean([rho_of(r) for r in here]))
        auto = sorted({r["T"] for r in here if r["si"] == "auto"})
        out.append({"connectivity": conn, "rho": rho, "x": 1 / math.sqrt(1 - rho),
                    "best": best, "stats": st, "group": group, "auto": auto,
                    "default": switch_interval(rho, DEFAULT_C)})
    return out


# ------------------------------------------------------------------ per-run listing

RUN_COLUMNS = ("run", "task", "method", "switch_interval", "T", "lr", "connectivity", "seed",
               "final_acc", "mean_cross_term_error", "wall_time_s")


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
                        r["wall"] or ""])


# ------------------------------------------------------------------ markdown


def _spread(s: tuple[float, float, int], sign: str = "") -> str:
    """mean ± std in points; one seed has no spread to show. sign="+": signed mean."""
    spread = f" ± {100 * s[1]:.2f}" if s[2] > 1 else ""
    return f"{100 * s[0]:{sign}.2f}{spread}"


def _pct(s: tuple[float, float, int] | None, mark: str = "") -> str:
    """mean ± std (seeds)."""
    return "" if s is None else f"{_spread(s)} ({s[2]}){mark}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(row) + " |" for row in body], ""]


def _cell(c: dict, task: str, label: str, conn: str, lr: float) -> str:
    """A method x connectivity cell; a reference method run at one connectivity fills all."""
    if c.get((task, label, conn, lr)) is not None or label.split(" ")[0] not in REFERENCES:
        return _pct(c.get((task, label, conn, lr)))
    own = [k for k in c if k[:2] == (task, label) and k[3] == lr]
    return _pct(c[own[0]], " †") if len(own) == 1 else ""


def accuracy_tables(rows: list[dict], task: str) -> list[str]:
    mine = [r for r in rows if r["task"] == task and r["finished"]]
    c, picked, conns = cells(mine), pick_lr(mine), _conn_order(mine)
    labels = sorted({r["label"] for r in mine}, key=_order)
    body = [[label, f"{picked[task, label][0]:g}",
             *[_cell(c, task, label, conn, picked[task, label][0]) for conn in conns]]
            for label in labels]
    out = ["Final mean client accuracy (%), mean ± std over seeds (number of seeds), at each "
           "method's picked learning rate:", "", *_table(["method", "lr", *conns], body)]
    if any(r["label"].split(" ")[0] in REFERENCES for r in mine):
        out += ["† a topology-independent reference run at one connectivity, repeated.", ""]
    lrs = sorted({r["lr"] for r in mine})
    if len(lrs) > 1:
        out += ["Learning rate picked per method (score: mean accuracy over the seeds and the "
                "connectivities run at every lr): "
                + "; ".join(f"{label} {picked[task, label][0]:g} (" + ", ".join(
                    f"{lr:g}: {100 * s:.2f}" for lr, s in picked[task, label][1].items()) + ")"
                            for label in labels), "", "All learning rates:", ""]
        full = [[label, f"{lr:g}", *[_cell(c, task, label, conn, lr) for conn in conns]]
                for label in labels for lr in lrs if any(k[:2] == (task, label) and k[3] == lr
                                                         for k in c)]
        out += _table(["method", "lr", *conns], full)
    return out


def paired_table(rows: list[dict], task: str, against: str = "lora") -> list[str]:
    diffs = paired(rows, task, against)
    if not diffs:
        return []
    conns = _conn_order([r for r in rows if r["task"] == task and r["finished"]])
    labels = sorted({label for label, _ in diffs}, key=_order)

    def cell(d: list[float] | None) -> str:
        return f"{_spread(stats(d), '+')} (n={len(d)}; ahead on {sum(x > 0 for x in d)})" \
            if d else ""
    body = [[label, *[cell(diffs.get((label, conn))) for conn in conns]] for label in labels]
    return [f"Paired against {against}: accuracy minus {against}'s on the same seed (points; "
            f"mean ± std over the n seeds both ran; on how many seeds it was ahead):", "",
            *_table(["method", *conns], body)]


def t_table(found: list[dict]) -> list[str]:
    if not found:
        return []
    c = fit_c([f["best"] for f in found], [f["rho"] for f in found])
    body = [[f["connectivity"], f"{f['rho']:.3f}", f"{f['x']:.2f}", str(f["best"]),
             _pct(f["stats"][f["best"]]), ", ".join(map(str, f["group"])),
             ", ".join(map(str, f["auto"])) or "-",
             f"{f['default']} ({'in' if f['default'] in f['group'] else 'outside'})",
             str(switch_interval(f["rho"], c))]
            for f in found]
    return ["Best switching interval of tad per connectivity (best group: T whose mean is "
            "within one std of the best T's mean; auto T: the T that runs with "
            "switch_interval=auto used):", "",
            *_table(["connectivity", "rho", "1/sqrt(1-rho)", "best T", "accuracy at best T",
                     "best group", "auto T (runs)", f"auto T (default c = {DEFAULT_C:g})",
                     "auto T with the fitted c"], body),
            f"Least-squares fit of T_best ≈ c / sqrt(1 - rho) over {len(found)} "
            f"connectivities: **c = {c:.3f}**.", ""]


def write_report(runs_dir: str | Path, out: str | Path | None = None) -> Path:
    """report.md and the PNG plots in `out` (default RUNS_DIR/report); returns report.md."""
    from .report_plots import plot_task

    root = Path(runs_dir)
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(root)
    done = [r for r in rows if r["finished"]]
    hours = sum(r["wall"] or 0 for r in done) / 3600
    write_runs_csv(rows, out / "runs.csv")
    lines = [f"# Report on {root}", "", f"Regenerate: `tadlora report {root} --out {out}`", "",
             f"{len(done)} finished runs ({hours:.2f} h of run wall time in all); "
             f"{len(rows) - len(done)} unfinished runs not counted. One line per run: "
             "[runs.csv](runs.csv).", ""]
    mixed = mixed_settings(rows)
    if mixed:
        lines += [f"**Warning**: seeds of one cell differ in {', '.join(mixed)}.", ""]
    points = []
    for task in sorted({r["task"] for r in done}):
        found = best_t(rows, task)
        points += found
        lines += [f"## {task}", "", *accuracy_tables(rows, task),
                  *paired_table(rows, task), *t_table(found)]
        for plot in plot_task(rows, task, found, out):
            lines += [f"![{plot.stem}]({plot.name})", ""]
    if len({r["task"] for r in done}) > 1 and points:
        c = fit_c([f["best"] for f in points], [f["rho"] for f in points])
        lines += ["## Fit over all tasks", "", f"T_best ≈ c / sqrt(1 - rho) over {len(points)} "
                  f"(task, connectivity) points: **c = {c:.3f}**.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def cmd_report(ns: argparse.Namespace) -> int:
    if not Path(ns.runs_dir).is_dir():
        raise ConfigError(f"runs directory {ns.runs_dir} does not exist")
    path = write_report(ns.runs_dir, ns.out)
    print(f"report: {path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `tadlora report RUNS_DIR [--out DIR]`."""
    r = subparsers.add_parser("report", help="tables and plots over the runs under a directory",
                              description=__doc__.splitlines()[0])
    r.add_argument("runs_dir")
    r.add_argument("--out", help="output directory (default RUNS_DIR/report)")
    r.set_defaults(func=cmd_report)
    return r
