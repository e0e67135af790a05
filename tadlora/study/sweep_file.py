"""Sweep files: a grid of runs from one TOML file, and the names of its runs.

A sweep file (see sweeps/*.toml):

    [sweep]
    name = "study_rt"
    out_dir = "results/study_rt"   # default results/<name>; relative to the working directory
    base = "base.toml"             # optional config file, relative to the sweep file

    [base]                         # overrides applied to every run
    "run.rounds" = 100

    [grid]                         # the runs: the cartesian product of these lists
    "run.seed" = [0, 1, 2]
    "method.name" = ["lora", "tad"]
    "topology.p" = [0.5, 0.1]

    [[include]]                    # more runs: this set crossed with the grid minus its keys
    "topology.kind" = "ring"
    "topology.p" = 0.5             # a ring ignores p; fixing it drops the p axis for the ring

Keys are "section.key" of the run config (quoted, or as TOML sub-tables). An include's list
value is an axis of its own. Runs with the same resolved config are kept once. Paths inside
values (data.path, model.path, topology.path) and out_dir are used as given: relative to the
working directory, so run sweeps from the repository root. Order of precedence: defaults <-
base file <- [base] <- grid / include <- command-line overrides (`run.out_dir=DIR` moves the
whole sweep). Runs are ordered seed-major, so an interrupted sweep has whole seeds first.

A run is named from the config values that vary across the sweep, e.g.
`tad__er-p0.1__T3__lr0.005__s0`, and lives in out_dir/<name>.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runs import config
from ..runs.config import Config, ConfigError, read_toml, toml_value
from .labels import task_label, topology_label

Settings = dict[str, Any]  # "section.key" -> value
TASK_KEYS = ("data.source", "data.path", "data.task")
TOPOLOGY_KEYS = ("topology.kind", "topology.p", "topology.path")
NAME_ORDER = ("task", "method.name", "topology", "method.switch_interval", "method.c",
              "train.lr", "run.seed")
SEGMENT = {"method.name": "{}", "method.switch_interval": "T{}", "method.c": "c{:g}",
           "train.lr": "lr{:g}", "run.seed": "s{}"}
NOT_NAMED = {"run.name", "run.out_dir", "run.progress"}


@dataclass(frozen=True)
class Sweep:
    name: str
    out_dir: Path
    base: Path | None  # config file the overrides apply to
    runs: list[tuple[str, list[str]]]  # (run name, its "section.key=value" overrides)
    axes: frozenset[str] = frozenset()  # the keys [grid] and [[include]] set


# ------------------------------------------------------------------ the sweep file


def flat(table: dict, prefix: str = "") -> Settings:
    """{"run": {"seed": 1}} or {"run.seed": 1} -> {"run.seed": 1}."""
    out: Settings = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def overrides_of(settings: Settings) -> list[str]:
    return [f"{k}={toml_value(v)}" for k, v in settings.items()]


def _product(axes: dict[str, list]) -> list[Settings]:
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def expand(base: Settings, grid: dict[str, list], includes: list[Settings]) -> list[Settings]:
    """The grid's runs, then each include crossed with the grid axes it does not set."""
    runs = [{**base, **c} for c in _product(grid)]
    for inc in includes:
        axes = {k: v for k, v in grid.items() if k not in inc}
        axes |= {k: v if isinstance(v, list) else [v] for k, v in inc.items()}
        runs += [{**base, **c} for c in _product(axes)]
    return runs


def _read(path: Path) -> dict:
    raw = read_toml(path, "sweep file")
    unknown = set(raw) - {"sweep", "base", "grid", "include"}
    if unknown or not isinstance(raw.get("sweep"), dict) or "name" not in raw["sweep"]:
        raise ConfigError(f"sweep file {path}: needs [sweep] name = ...; allowed tables are "
                          f"[sweep], [base], [grid], [[include]] (got {sorted(unknown)})")
    _check_kinds(raw, path)
    return raw


def _check_kinds(raw: dict, path: Path) -> None:
    """[sweep]'s values are strings, [base] and [grid] tables, [[include]] a list of tables."""
    wrong = [f"[sweep] {k} must be a string" for k in ("name", "out_dir", "base")
             if not isinstance(raw["sweep"].get(k, ""), str)]
    wrong += [f"[sweep] has no key {k!r} (its keys: name, out_dir, base)"
              for k in sorted(set(raw["sweep"]) - {"name", "out_dir", "base"})]
    wrong += [f"{k} must be a table, [{k}]" for k in ("base", "grid")
              if not isinstance(raw.get(k, {}), dict)]
    include = raw.get("include", [])
    if not isinstance(include, list) or not all(isinstance(t, dict) for t in include):
        wrong.append("include must be a list of tables, each written [[include]]")
    if wrong:
        raise ConfigError(f"sweep file {path}: {'; '.join(wrong)}")


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file: every run's config is resolved once here."""
    path = Path(path)
    raw = _read(path)
    meta = raw["sweep"]
    base_file = path.parent / meta["base"] if meta.get("base") else None
    grid = flat(raw.get("grid", {}))
    bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
    if bad:
        raise ConfigError(f"sweep file {path}: [grid] values must be non-empty lists: {bad}")
    twice = next(((k, x) for k, v in grid.items() for i, x in enumerate(v) if x in v[:i]), None)
    if twice:
        raise ConfigError(f"sweep file {path}: [grid] {twice[0]} lists {twice[1]!r} more than "
                          "once; list each value once")
    includes = [flat(t) for t in raw.get("include", [])]
    if fixed := sorted(NOT_NAMED & set(grid).union(*includes)):
        raise ConfigError(f"sweep file {path}: {fixed} cannot vary: the sweep names each run and "
                          "sets its directory and progress; remove them from [grid] and "
                          "[[include]] (the directory of the runs is [sweep] out_dir)")
    if empty := sorted(k for inc in includes for k, v in inc.items() if v == []):
        raise ConfigError(f"sweep file {path}: [[include]] {empty} is an empty list, which "
                          "makes no runs; give at least one value")
    if not grid and not includes:
        raise ConfigError(f"sweep file {path}: [grid] is empty and there is no [[include]], so "
                          'there are no runs; give an axis, e.g. "run.seed" = [0, 1, 2]')
    settings = expand(flat(raw.get("base", {})), grid, includes)
    runs: dict[Config, Settings] = {}
    for s in settings:
        try:
            runs.setdefault(config.load(base_file, overrides_of(s)), s)
        except ConfigError as e:
            raise ConfigError(f"sweep file {path}, run {s}: {e}") from e
    cfgs = sorted(runs, key=lambda c: c.run.seed)  # stable: seed-major, file order within
    names = run_names(cfgs)
    return Sweep(meta["name"], Path(meta.get("out_dir", f"results/{meta['name']}")), base_file,
                 [(n, overrides_of(runs[c])) for n, c in zip(names, cfgs, strict=True)],
                 frozenset(grid).union(*includes))


# ------------------------------------------------------------------ run names


def _segment(field: str, f: Settings) -> str:
    if field == "task":
        text = task_label(f["data.source"], f["data.path"], f["data.task"])
    elif field == "topology":
        text = topology_label(f["topology.kind"], f["topology.p"], f["topology.path"], slug=True)
    elif field in SEGMENT:
        text = SEGMENT[field].format(f[field])
    else:
        v = f[field]
        text = f"{field.split('.')[1]}-{'+'.join(v) if isinstance(v, list) else v}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _fields(varying: list[str]) -> list[str]:
    grouped = {"task": TASK_KEYS, "topology": TOPOLOGY_KEYS}
    present = {f for f in NAME_ORDER if f in varying or set(grouped.get(f, ())) & set(varying)}
    covered = set(NAME_ORDER) | set(TASK_KEYS) | set(TOPOLOGY_KEYS)
    return [f for f in NAME_ORDER if f in present] + [k for k in varying if k not in covered]


def run_names(cfgs: list[Config]) -> list[str]:
    """Readable, deterministic names from the values that vary across `cfgs`; unique."""
    values = [flat(config.to_dict(c)) for c in cfgs]
    varying = [k for k in values[0] if k not in NOT_NAMED
               and len({repr(f[k]) for f in values}) > 1] if values else []
    fields = _fields(varying)
    names = ["__".join(_segment(x, f) for x in fields) or "run" for f in values]
    for name in {n for n in names if names.count(n) > 1}:
        same = [i for i, n in enumerate(names) if n == name]
        diff = sorted(k for k in varying if len({repr(values[i][k]) for i in same}) > 1)
        raise ConfigError(f"two runs would both be named {name!r} (they differ in {diff}); "
                          "fix that key in the include that makes them (e.g. topology.p for "
                          "a ring)")
    return names
