"""The runs under a directory, read, and what the report's tables and plots are made of.

A run counts once it has a summary.json. Its score is the final mean client accuracy (every
client's own model on the validation set, averaged over the clients); a table cell is the mean
and the sample standard deviation (ddof=1) of that score over the seeds of one
(task, method, connectivity, learning rate). Where several learning rates were run, each
(task, method) keeps the one with the best score averaged over its connectivities and seeds.
A method whose runs used several switching intervals is split into one row per interval
("tad T=3", "tad T=auto"). Paired differences compare each method with lora on the same
seeds (the best T per connectivity: study/interval.py).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..core.methods import METHODS, uses_graph
from ..runs import config
from ..runs.config import ConfigError
from ..runs.rundir import CONFIG, METRICS, SUMMARY, RunDir
from . import records
from .labels import task_label, topology_label
from .sweep_file import flat

SAME_IN_GROUP = ("run.seed", "run.name", "run.out_dir", "run.progress", "run.eval_every",
                 "run.checkpoint_every", "topology.rho_samples")
# what tables lay out as rows, columns and cells: never part of a run's variant
AXES = ("run.seed", "method.name", "method.switch_interval", "train.lr", "topology.kind",
        "topology.p", "topology.path", "data.source", "data.path", "data.task")
# how a run was computed, not what: merged in one cell (with a warning when seeds differ)
HOW = (*SAME_IN_GROUP, "train.precision", "train.device", "train.clients_per_forward")


def is_reference(method: str) -> bool:
    """A method the graph does not affect (local, fedavg): one run stands for every
    connectivity."""
    return method in METHODS and not uses_graph(method)


# ------------------------------------------------------------------ reading runs


def _read_run(d: Path, root: Path) -> dict:
    run = RunDir(d)
    summary = run.read_json(SUMMARY) if run.summary.is_file() else None
    if summary is not None and not isinstance(summary.get("mean"), int | float):
        raise ValueError(f"{run.summary} has no number 'mean' (the final mean accuracy), got "
                         f"{summary.get('mean')!r:.40}; restore it from a copy of the run")
    return _row(d, str(d.relative_to(root)), config.load(run.config), summary, run.records())


def _bundle_rows(path: Path, root: Path) -> list[dict]:
    """The runs of a bundle (study/records.py) as rows, named as their directories were; an
    entry that cannot be read is skipped with a message naming it, the others are kept."""
    here, rows = path.parent, []
    for i, e in enumerate(records.read_bundle(path), 1):
        try:
            d = here / e["name"]
            rows.append(_row(d, str(d.relative_to(root)),
                             records.config_of(e["config"], f"the config of {e['name']} in {path}"),
                             e["summary"], e["metrics"]))
        except (ConfigError, ValueError, KeyError, TypeError) as err:
            print(f"tadlora: skipping entry {i} of {path}: {err}", file=sys.stderr)
    return rows


def _row(d: Path, name: str, cfg: config.Config, summary: dict | None, metrics: list[dict]
         ) -> dict:
    t = cfg.topology
    return {"dir": d, "name": name, "cfg": cfg, "seed": cfg.run.seed,
            "task": task_label(cfg.data.source, cfg.data.path, cfg.data.task),
            "method": cfg.method.name, "si": cfg.method.switch_interval, "lr": cfg.train.lr,
            "kind": t.kind, "p": t.p, "connectivity": f"{t.kind} {t.schedule}" if t.schedule
            else topology_label(t.kind, t.p, t.path),
            "finished": summary is not None, "final": summary["mean"] if summary else None,
            "T": (summary or {}).get("switch_interval"), "rho": (summary or {}).get("rho"),
            "wall": (summary or {}).get("wall_time_s"),
            "machine": (summary or {}).get("machine"),
            "precision": (summary or {}).get("precision") or cfg.train.precision,
            "inputs": (summary or {}).get("inputs", {}),  # runs/inputs.py; {} before it existed
            "evals": [(m["round"] + 1, m["eval"]["mean"]) for m in metrics if "eval" in m],
            "cross": [(m["round"] + 1, m["cross_term_error"]) for m in metrics
                      if m.get("cross_term_error") is not None],
            "online": [(m["round"], m["rho_estimate"], m["rho_estimate_spread"], m.get("rho_mc"),
                        m["switch_interval"]) for m in metrics if "rho_estimate" in m]}


def is_run_dir(d: Path) -> bool:
    """A run directory: a config.toml and a metrics.jsonl."""
    return (d / CONFIG).is_file() and (d / METRICS).is_file()


def collect(runs_dir: str | Path) -> list[dict]:
    """Every run directory (`is_run_dir`) under runs_dir, recursively, and every run of a
    bundle (runs.jsonl.gz, study/records.py) there."""
    root, rows = Path(runs_dir), []
    for cfg_file in sorted(root.rglob(CONFIG)):
        if is_run_dir(cfg_file.parent):
            try:
                rows.append(_read_run(cfg_file.parent, root))
            except (ConfigError, ValueError, KeyError, OSError) as e:
                print(f"tadlora: skipping {cfg_file.parent}: {e}", file=sys.stderr)
    for path in sorted(root.rglob(records.BUNDLE)):
        try:
            rows += _bundle_rows(path, root)
        except (ConfigError, ValueError, KeyError, OSError, EOFError) as e:
            print(f"tadlora: skipping {path}: {e}", file=sys.stderr)
    _variants(rows)
    _label(rows)
    return rows


def _variants(rows: list[dict]) -> None:
    """row["variant"]: the settings that vary across the runs besides the tables' axes (e.g.
    train.local_steps in a phase map); each variant is reported as a task of its own,
    "synthetic [local_steps=5]"."""
    flats = [flat(config.to_dict(r["cfg"])) for r in rows]
    keys = {k for f in flats for k in f}  # each key's values once (not once per run: n^2)
    varying = sorted(k for k in keys if k not in AXES and k not in HOW
                     and not k.startswith("distributed.")
                     and len({repr(g.get(k)) for g in flats}) > 1)
    for r, f in zip(rows, flats, strict=True):
        r["variant"] = {k: f[k] for k in varying}
        if varying:
            r["task"] += " [" + ", ".join(f"{k.split('.', 1)[1]}={f[k]}" for k in varying) + "]"


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


def order(label: str) -> tuple:
    """Sort key of a row label: the methods' registry order, then T."""
    method, _, rest = label.partition(" ")
    names = list(METHODS)
    rank = names.index(method) if method in names else len(names)
    t = rest.removeprefix("T=")
    return rank, method, not t.isdigit(), int(t) if t.isdigit() else 0, t


def conn_order(rows: list[dict]) -> list[str]:
    seen = {r["connectivity"]: (r["kind"] != "er", r["kind"], -r["p"]) for r in rows}
    return sorted(seen, key=seen.get)


def cells(rows: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """(task, label, connectivity, lr) -> stats of the final accuracy over seeds."""
    groups = defaultdict(list)
    for r in rows:
        if r["finished"]:
            groups[r["task"], r["label"], r["connectivity"], r["lr"]].append(r["final"])
    return {k: stats(v) for k, v in groups.items()}


def pick_lr(rows: list[dict]) -> dict[tuple[str, str, str], tuple[float, dict[float, float]]]:
    """(task, label, connectivity) -> (best lr, {lr: score}); score = the mean final accuracy
    over the seeds that every lr of the cell ran (matched: the same shards, initialisation and
    graphs), else over all its seeds. Ties go to the smaller lr. Each cell is tuned on its own:
    a method's best rate can move with the connectivity."""
    runs = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        if r["finished"]:
            runs[r["task"], r["label"], r["connectivity"]][r["lr"]][r["seed"]].append(r["final"])
    out = {}
    for key, by_lr in runs.items():
        seeds = set.intersection(*(set(v) for v in by_lr.values()))
        avg = {lr: float(np.mean([x for seed, finals in v.items() if seed in seeds or not seeds
                                  for x in finals])) for lr, v in sorted(by_lr.items())}
        out[key] = (max(avg, key=lambda lr: (avg[lr], -lr)), avg)
    return out


def best_rows(rows: list[dict]) -> list[dict]:
    """The finished runs at the learning rate picked for their (task, label, connectivity)."""
    picked = pick_lr(rows)
    return [r for r in rows if r["finished"]
            and picked[r["task"], r["label"], r["connectivity"]][0] == r["lr"]]


def _pairs(rows: list[dict], task: str, against: str, same_lr: bool = False
           ) -> list[tuple[dict, dict]]:
    """(run, `against`'s run on the same seed) for each label and connectivity: at their
    picked learning rates, or with same_lr at every rate both ran. A (label, connectivity,
    seed, lr) run more than once (other settings in the same directory) is not paired."""
    runs = defaultdict(list)
    for r in [r for r in rows if r["finished"]] if same_lr else best_rows(rows):
        if r["task"] == task and not is_reference(r["method"]):
            runs[r["label"], r["connectivity"], r["seed"], r["lr"] if same_lr else None].append(r)
    out = []
    for (label, conn, seed, lr), found in sorted(runs.items(), key=lambda kv: kv[0][:3]):
        base = runs.get((against, conn, seed, lr), [])
        if label != against and len(found) == len(base) == 1:
            out.append((found[0], base[0]))
    return out


def paired(rows: list[dict], task: str, against: str = "lora") -> dict[tuple[str, str], list]:
    """(label, connectivity) -> [label's score - `against`'s score] over the seeds both ran, at
    their picked learning rates. Same seed = same data, initialisation and graphs, so the
    difference carries less noise than the two cells' means."""
    out = defaultdict(list)
    for r, base in _pairs(rows, task, against):
        out[r["label"], r["connectivity"]].append(r["final"] - base["final"])
    return dict(out)


def paired_by_lr(rows: list[dict], task: str, against: str = "lora"
                 ) -> dict[tuple[str, float, str], list]:
    """(label, lr, connectivity) -> the differences of `paired`, at every rate both ran."""
    out = defaultdict(list)
    for r, base in _pairs(rows, task, against, same_lr=True):
        out[r["label"], r["lr"], r["connectivity"]].append(r["final"] - base["final"])
    return dict(out)


def crossed_precisions(rows: list[dict], task: str, against: str = "lora") -> list[str]:
    """The pairs of `paired` whose two runs were computed at different precisions (runs on
    machines with and without native bf16), as "label, connectivity, seed s (fp32 vs bf16)"."""
    return [f"{r['label']}, {r['connectivity']}, seed {r['seed']} "
            f"({r['precision']} vs {base['precision']})"
            for r, base in _pairs(rows, task, against) if r["precision"] != base["precision"]]


def mixed_settings(rows: list[dict]) -> list[str]:
    """Config keys that differ between the seeds of one table cell (a warning for the reader);
    train.precision as the run resolved it (precision=auto is bf16 or fp32 by machine), and
    the contents of the files a key names, where the runs recorded them (runs/inputs.py)."""
    groups = defaultdict(list)
    for r in rows:
        if r["finished"]:
            d = config.to_dict(r["cfg"])
            d["train"] = {**d["train"], "precision": r["precision"]}
            groups[r["task"], r["label"], r["connectivity"], r["lr"]].append((d, r["inputs"]))
    keys = set()
    for group in groups.values():
        dicts = [d for d, _ in group]
        for section, values in dicts[0].items():
            for k, v in values.items():
                if f"{section}.{k}" not in SAME_IN_GROUP and any(
                        d[section][k] != v for d in dicts[1:]):
                    keys.add(f"{section}.{k}")
        for key in {k for _, files in group for k in files}:
            if len({files[key] for _, files in group if key in files}) > 1:
                keys.add(f"the files of {key}")
    return sorted(keys)
