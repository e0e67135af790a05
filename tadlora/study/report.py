"""`tadlora report RUNS_DIR`: markdown tables, a CSV of the runs and PNG plots over every run
directory under RUNS_DIR (what the numbers are: study/results.py)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..core.methods import DEFAULT_C, switch_interval
from ..runs.config import ConfigError
from . import online, phase, records
from .interval import best_t, fit_c
from .plots import plot_task
from .results import (
    cells,
    collect,
    conn_order,
    crossed_precisions,
    is_reference,
    is_run_dir,
    mixed_settings,
    order,
    paired,
    paired_by_lr,
    pick_lr,
    stats,
)
from .runs_csv import write_runs_csv

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


def _cell(c: dict, picked: dict, task: str, label: str, conn: str, mark_lr: bool) -> str:
    """A method x connectivity cell at its picked rate (named when the row's rates differ); a
    reference method run at one connectivity fills all."""
    if (key := (task, label, conn)) in picked:
        lr = picked[key][0]
        return _pct(c[(*key, lr)]) + (f" at {lr:g}" if mark_lr else "")
    own = [k for k in picked if k[:2] == (task, label)]
    if is_reference(label.split(" ")[0]) and len(own) == 1:
        return _pct(c[(*own[0], picked[own[0]][0])], " †")
    return ""


def accuracy_tables(rows: list[dict], task: str) -> list[str]:
    mine = [r for r in rows if r["task"] == task and r["finished"]]
    c, picked, conns = cells(mine), pick_lr(mine), conn_order(mine)
    labels = sorted({r["label"] for r in mine}, key=order)
    body = []
    for label in labels:
        lrs = sorted({v[0] for k, v in picked.items() if k[:2] == (task, label)})
        one = len(lrs) == 1
        body.append([label, f"{lrs[0]:g}" if one else "per cell",
                     *[_cell(c, picked, task, label, conn, not one) for conn in conns]])
    out = ["Final mean client accuracy (%), mean ± std over seeds (number of seeds), at the "
           "learning rate picked for each method and connectivity:", "",
           *_table(["method", "lr", *conns], body)]
    if any(is_reference(r["label"].split(" ")[0]) for r in mine):
        out += ["† a topology-independent reference run at one connectivity, repeated.", ""]
    every_lr = sorted({r["lr"] for r in mine})
    if len(every_lr) > 1:
        tuned = [f"{label}, {conn}: {v[0]:g} (" + ", ".join(
            f"{lr:g}: {100 * x:.2f}" for lr, x in v[1].items()) + ")"
            for label in labels for conn in conns
            if len((v := picked.get((task, label, conn), (0, {})))[1]) > 1]
        out += ["Learning rate picked per method and connectivity where several ran (score: "
                "mean accuracy over the seeds that every rate ran): " + "; ".join(tuned), "",
                "All learning rates:", ""]
        full = [[label, f"{lr:g}", *[_pct(c.get((task, label, conn, lr))) for conn in conns]]
                for label in labels for lr in every_lr
                if any(k[:2] == (task, label) and k[3] == lr for k in c)]
        out += _table(["method", "lr", *conns], full)
    return out


def _diff(d: list[float] | None) -> str:
    return f"{_spread(stats(d), '+')} (n={len(d)}; ahead on {sum(x > 0 for x in d)})" if d \
        else ""


def paired_table(rows: list[dict], task: str, against: str = "lora") -> list[str]:
    diffs = paired(rows, task, against)
    if not diffs:
        return []
    conns = conn_order([r for r in rows if r["task"] == task and r["finished"]])
    labels = sorted({label for label, _ in diffs}, key=order)
    body = [[label, *[_diff(diffs.get((label, conn))) for conn in conns]] for label in labels]
    crossed = crossed_precisions(rows, task, against)
    warning = [f"**Warning**: these pairs ran at different precisions: {'; '.join(crossed)}.",
               ""] if crossed else []
    out = [f"Paired against {against}: accuracy minus {against}'s on the same seed (points; "
           f"mean ± std over the n seeds both ran; on how many seeds it was ahead), each at "
           "its picked learning rate:", "", *_table(["method", *conns], body), *warning]
    by_lr = paired_by_lr(rows, task, against)
    if len({lr for _, lr, _ in by_lr}) > 1:  # a shared rate, one table row per rate
        keys = sorted({k[:2] for k in by_lr}, key=lambda k: (order(k[0]), k[1]))
        out += [f"Paired against {against} at the same learning rate:", "",
                *_table(["method", "lr", *conns], [[label, f"{lr:g}", *[
                    _diff(by_lr.get((label, lr, conn))) for conn in conns]]
                    for label, lr in keys])]
    return out


def t_table(found: list[dict]) -> list[str]:
    if not found:
        return []
    c = fit_c([f["best"] for f in found], [f["rho"] for f in found])
    body = [[f["connectivity"], f"{f['lr']:g}", f"{f['rho']:.3f}", f"{f['x']:.2f}", str(f["best"]),
             _pct(f["matched"][f["best"]]), ", ".join(map(str, sorted(f["matched"]))),
             ", ".join(map(str, f["seeds"])) or "all",
             ", ".join(map(str, f["group"])),
             ", ".join(map(str, f["auto"])) or "-",
             f"{f['default']} ({'in' if f['default'] in f['group'] else 'outside'})",
             str(switch_interval(f["rho"], c))]
            for f in found]
    return ["Best switching interval of tad per connectivity, at the learning rate most of "
            "its tad runs used, compared on matched seeds: the "
            "seed set shared by the most runs (T x seeds) among those two T or more ran; a T "
            "without those seeds is left out of the pick, its own mean is in the tables above "
            "(all seeds where no two T share one; best group: T whose mean is within one std "
            "of the best T's mean; auto T: the T that runs with switch_interval=auto used):", "",
            *_table(["connectivity", "lr", "rho", "1/sqrt(1-rho)", "best T", "accuracy at best T",
                     "T compared", "compared on seeds", "best group", "auto T (runs)",
                     f"auto T (default c = {DEFAULT_C:g})",
                     "auto T with the fitted c"], body),
            f"Least-squares fit of T_best ≈ c / sqrt(1 - rho) over {len(found)} "
            f"connectivities: **c = {c:.3f}**.", ""]


def sweeps_under(root: Path) -> list[Path]:
    """The sweeps of a directory of sweeps (results/, study/records): its subdirectories that
    hold runs, when it holds none itself (no run directory or bundle directly in it); else []."""
    children = sorted(d for d in root.iterdir() if d.is_dir())
    if (root / records.BUNDLE).is_file() or any(is_run_dir(d) for d in children):
        return []
    return [d for d in children if (d / records.BUNDLE).is_file()
            or any(is_run_dir(c) for c in d.iterdir() if c.is_dir())]


def write_report(runs_dir: str | Path, out: str | Path | None = None) -> Path:
    """report.md and the PNG plots in `out` (default RUNS_DIR/report); returns report.md.
    A directory of sweeps gets one report per sweep, in out/<sweep>/, and an index: a run of
    the same config in two sweeps is never counted twice."""
    root = Path(runs_dir)
    out = Path(out) if out else root / "report"
    if sweeps := sweeps_under(root):
        return _index(root, out, [(d.name, *_write_one(d, out / d.name)) for d in sweeps])
    return _write_one(root, out)[0]


def machines(done: list[dict]) -> str:
    """Where the runs ran, as their summaries name it, with a count of runs each."""
    count = Counter(r["machine"] or "machine not recorded" for r in done)
    return "; ".join(f"{n} on {m}" for m, n in sorted(count.items(), key=lambda e: -e[1]))


def _write_one(root: Path, out: Path) -> tuple[Path, str]:
    """The report of the runs under `root`; its path and its count of runs."""
    rows = collect(root)
    if not rows:
        raise ConfigError(f"no runs under {root} (a run directory holds config.toml, a bundle is "
                          f"{records.BUNDLE}); give the directory `tadlora run`, `sweep` or "
                          "`keep` wrote to")
    out.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r["finished"]]
    hours = sum(r["wall"] or 0 for r in done) / 3600
    write_runs_csv(rows, out / "runs.csv")
    where = f"; {machines(done)}" if done else ""
    counts = (f"{len(done)} finished runs ({hours:.2f} h of run wall time in all{where}); "
              f"{len(rows) - len(done)} unfinished runs not counted")
    lines = [f"# Report on {root}", "", f"Regenerate: `tadlora report {root} --out {out}`", "",
             f"{counts}. One line per run: [runs.csv](runs.csv).", ""]
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
    lines += phase.pages(rows, out)
    lines += online.pages(rows, out)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path, counts


def _index(root: Path, out: Path, reports: list[tuple[str, Path, str]]) -> Path:
    """out/report.md: a link to each sweep's report, with its count of runs."""
    lines = [f"# Reports on {root}", "", f"Regenerate: `tadlora report {root} --out {out}`", "",
             "One report per sweep (a directory of runs or a bundle):", ""]
    for name, path, counts in reports:
        lines.append(f"- [{name}]({path.relative_to(out)}): {counts}")
    path = out / "report.md"
    path.write_text("\n".join([*lines, ""]))
    return path


def cmd_report(ns: argparse.Namespace) -> int:
    if not Path(ns.runs_dir).is_dir():
        raise ConfigError(f"runs directory {ns.runs_dir} does not exist or is not a directory")
    if ns.out and Path(ns.out).exists() and not Path(ns.out).is_dir():
        raise ConfigError(f"--out {ns.out} is a file; give a directory for the report")
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
