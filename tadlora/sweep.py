"""`tadlora sweep`: a grid of runs from one TOML file, resumable, one progress bar for the grid.

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
`tad__er-p0.1__T3__lr0.005__s0`, and lives in out_dir/<name>. Rerunning the sweep skips runs
with a summary.json, resumes runs with a checkpoint and starts the others over; a run dir whose
config differs from the sweep's (the sweep file changed) is reported and left alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config
from .config import Config, ConfigError, read_toml

Settings = dict[str, Any]  # "section.key" -> value
TASK_KEYS = ("data.source", "data.path", "data.task")
TOPOLOGY_KEYS = ("topology.kind", "topology.p", "topology.path")
NAME_ORDER = ("task", "method.name", "topology", "method.switch_interval", "method.c",
              "train.lr", "run.seed")
SEGMENT = {"method.name": "{}", "method.switch_interval": "T{}", "method.c": "c{:g}",
           "train.lr": "lr{:g}", "run.seed": "s{}"}
NOT_NAMED = {"run.name", "run.out_dir", "run.progress"}
# keys a finished or checkpointed run may differ in from the sweep (resume can change them)
RESUMABLE = {"run.rounds", "run.eval_every", "run.checkpoint_every", "run.progress",
             "run.out_dir"}
# what runner writes in a run dir (runner is imported lazily: it imports torch)
CONFIG, SUMMARY, CKPT = "config.toml", "summary.json", "checkpoint"
RUN_FILES = {CONFIG, SUMMARY, CKPT, "metrics.jsonl", "clients.json", "error.log",
             f"{CKPT}.tmp", f"{CKPT}.old"}
ERROR_LOG, TAIL = "error.log", 8000  # characters of a failed run's stderr kept
RESUME_KEYS = ("checkpoint_every", "eval_every", "progress", "rounds")  # runner.RESUMABLE_KEYS


@dataclass(frozen=True)
class Sweep:
    name: str
    out_dir: Path
    base: Path | None  # config file the overrides apply to
    runs: list[tuple[str, list[str]]]  # (run name, its "section.key=value" overrides)


@dataclass(frozen=True)
class Job:
    name: str
    directory: Path
    overrides: list[str]  # all of them, for a new run
    action: str  # new | resume | skip | stale
    note: str = ""  # stale: what differs
    resume_overrides: tuple[str, ...] = ()


# ------------------------------------------------------------------ the sweep file


def _flat(table: dict, prefix: str = "") -> Settings:
    """{"run": {"seed": 1}} or {"run.seed": 1} -> {"run.seed": 1}."""
    out: Settings = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(i) for i in v) + "]"
    return repr(v)


def overrides_of(settings: Settings) -> list[str]:
    return [f"{k}={_toml(v)}" for k, v in settings.items()]


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
    if unknown or "name" not in raw.get("sweep", {}):
        raise ConfigError(f"sweep file {path}: needs [sweep] name = ...; allowed tables are "
                          f"[sweep], [base], [grid], [[include]] (got {sorted(unknown)})")
    return raw


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file: every run's config is resolved once here."""
    path = Path(path)
    raw = _read(path)
    meta = raw["sweep"]
    base_file = path.parent / meta["base"] if meta.get("base") else None
    grid = _flat(raw.get("grid", {}))
    bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
    if bad:
        raise ConfigError(f"sweep file {path}: [grid] values must be non-empty lists: {bad}")
    settings = expand(_flat(raw.get("base", {})), grid,
                      [_flat(t) for t in raw.get("include", [])])
    runs: dict[Config, Settings] = {}
    for s in settings:
        try:
            runs.setdefault(config.load(base_file, overrides_of(s)), s)
        except ConfigError as e:
            raise ConfigError(f"sweep file {path}, run {s}: {e}") from e
    cfgs = sorted(runs, key=lambda c: c.run.seed)  # stable: seed-major, file order within
    names = run_names(cfgs)
    return Sweep(meta["name"], Path(meta.get("out_dir", f"results/{meta['name']}")), base_file,
                 [(n, overrides_of(runs[c])) for n, c in zip(names, cfgs, strict=True)])


# ------------------------------------------------------------------ run names


def task_label(source: str, path: str = "", task: str = "") -> str:
    """rotten_tomatoes / mnli (basename of a files dir) / sst2 (an hf task)."""
    if source == "files":
        return Path(path).name + (f"-{task}" if task else "")
    return task if source == "hf" else source


def topology_slug(kind: str, p: float, path: str = "") -> str:
    if kind in ("er", "pairs"):
        return f"{kind}-p{p:g}"
    return f"file-{Path(path).stem}" if kind == "file" else kind


def _segment(field: str, f: Settings) -> str:
    if field == "task":
        text = task_label(f["data.source"], f["data.path"], f["data.task"])
    elif field == "topology":
        text = topology_slug(f["topology.kind"], f["topology.p"], f["topology.path"])
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
    flat = [_flat(config.to_dict(c)) for c in cfgs]
    varying = [k for k in flat[0] if k not in NOT_NAMED
               and len({repr(f[k]) for f in flat}) > 1] if flat else []
    fields = _fields(varying)
    names = ["__".join(_segment(x, f) for x in fields) or "run" for f in flat]
    for name in {n for n in names if names.count(n) > 1}:
        same = [i for i, n in enumerate(names) if n == name]
        diff = sorted(k for k in varying if len({repr(flat[i][k]) for i in same}) > 1)
        raise ConfigError(f"two runs would both be named {name!r} (they differ in {diff}); "
                          "fix that key in the include that makes them (e.g. topology.p for "
                          "a ring)")
    return names


# ------------------------------------------------------------------ planning: what each run needs


def _differences(a: Config, b: Config) -> list[str]:
    """Config values that differ and matter: c and rho_samples only feed switch_interval=auto
    (so calibrating the default c does not invalidate the lora, ffa, ... runs)."""
    fa, fb = _flat(config.to_dict(a)), _flat(config.to_dict(b))
    auto = a.method.name == "tad" and a.method.switch_interval == "auto"
    ignored = RESUMABLE | (set() if auto else {"method.c", "topology.rho_samples"})
    return [f"{k}: {fa[k]!r} -> {fb[k]!r}" for k in fa if k not in ignored and fa[k] != fb[k]]


def _status(directory: Path, cfg: Config) -> tuple[str, str]:
    """(action, note) for a run directory that should hold `cfg`."""
    if not (directory / CONFIG).is_file():
        return "new", ""
    try:
        stored = config.load(directory / CONFIG)
    except ConfigError as e:  # e.g. written by another version: never delete it
        return "stale", f"its {CONFIG} cannot be read ({e})"
    diff = _differences(stored, cfg)
    if diff:
        return "stale", f"its config differs from the sweep's: {'; '.join(diff)}"
    try:  # the next round the checkpoint would run; 0 = none (or unreadable: start over)
        saved = int(json.loads((directory / CKPT / "state.json").read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError):
        saved = 0
    finished = (directory / SUMMARY).is_file()
    if finished and stored.run.rounds == cfg.run.rounds:
        return "skip", ""
    if max(saved, stored.run.rounds if finished else 0) > cfg.run.rounds:
        return "stale", f"it ran more rounds than the sweep's {cfg.run.rounds}"
    return ("resume", "") if 0 < saved < cfg.run.rounds else ("new", "")


def _selected(cfg: Config, base: Path | None, overrides: list[str], only: list[str]) -> bool:
    """Whether the run matches every `section.key=v1,v2,...` of `only` (one of the values):
    setting the key to that value leaves its config as it is."""
    for spec in only:
        key, sep, values = spec.partition("=")
        if not sep:
            raise ConfigError(f"--only {spec!r} must look like section.key=value[,value...], "
                              "e.g. --only run.seed=0,1")
        if not any(config.load(base, [*overrides, f"{key}={v}"]) == cfg
                   for v in values.split(",")):
            return False
    return True


def plan(sweep: Sweep, overrides: list[str] = (), only: list[str] = ()) -> list[Job]:
    """One Job per run (those matching `only`): its directory, its overrides and what to do
    with it."""
    out, extra = sweep.out_dir, []
    for item in overrides:
        key = item.partition("=")[0]
        if key.strip() == "run.name":
            raise ConfigError("run.name is set by the sweep for each run")
        if key.strip() == "run.out_dir":
            out = Path(str(config.parse_overrides([item])["run"]["out_dir"]))
        else:
            extra.append(item)
    jobs = []
    for name, ovr in sweep.runs:
        full = [*ovr, *extra, f"run.out_dir={_toml(str(out))}", f"run.name={_toml(name)}",
                "run.progress=false"]
        cfg = config.load(sweep.base, full)
        if not _selected(cfg, sweep.base, full, only):
            continue
        action, note = _status(out / name, cfg)
        resume = tuple(f"run.{k}={_toml(getattr(cfg.run, k))}" for k in RESUME_KEYS)
        jobs.append(Job(name, out / name, full, action, note, resume))
    return jobs


# ------------------------------------------------------------------ running


def _clear(directory: Path) -> None:
    """Remove an unfinished run's files before starting it over (only files a run makes)."""
    if not directory.exists():
        return
    strange = sorted(p.name for p in directory.iterdir() if p.name not in RUN_FILES)
    if strange:
        raise ConfigError(f"{directory} holds files a run does not make ({strange}); "
                          "move them before the sweep starts this run over")
    shutil.rmtree(directory)


def _in_process(job: Job, base: Path | None) -> str | None:
    """Run one job here; the error text on failure, None on success."""
    from . import runner

    try:
        if job.action == "resume":
            runner.resume(job.directory, list(job.resume_overrides))
        else:
            _clear(job.directory)
            runner.run(config.load(base, job.overrides))
    except Exception:  # a failed run must not stop the sweep; KeyboardInterrupt does
        return traceback.format_exc()
    return None


def command(job: Job, base: Path | None) -> list[str]:
    """The `tadlora run` command line of a job, as a subprocess runs it."""
    run = [sys.executable, "-m", "tadlora.cli", "run"]
    if job.action == "resume":
        return [*run, "--resume", str(job.directory), *job.resume_overrides]
    return [*run, *([str(base)] if base else []), *job.overrides]


def _subprocess(job: Job, base: Path | None, threads: int) -> str | None:
    """Run one job as `python -m tadlora.cli run ...`; its stderr tail on failure."""
    try:
        if job.action != "resume":
            _clear(job.directory)
    except ConfigError as e:
        return str(e)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))  # N jobs share the cores
    with tempfile.TemporaryFile() as err:
        rc = subprocess.run(command(job, base), stdout=subprocess.DEVNULL, stderr=err,
                            env=env).returncode
        if rc == 0:
            return None
        err.seek(0)
        tail = err.read().decode(errors="replace")[-TAIL:]
    return f"`{' '.join(command(job, base))}` exited with status {rc}\n{tail}"


def _record(job: Job, error: str | None, counts: dict[str, int], bar) -> None:
    log = job.directory / ERROR_LOG
    if error is None:
        log.unlink(missing_ok=True)
        counts["done"] += 1
        counts["resumed"] += job.action == "resume"
    else:
        job.directory.mkdir(parents=True, exist_ok=True)
        log.write_text(error)
        counts["failed"] += 1
        bar.write(f"failed: {job.name} (see {log})")
    bar.set_postfix(done=counts["done"], skipped=counts["skipped"], failed=counts["failed"],
                    refresh=False)
    bar.update()


def run_sweep(sweep: Sweep, jobs: int = 1, overrides: list[str] = (),
              only: list[str] = ()) -> dict[str, int]:
    """Run what is left of the sweep (of its runs matching `only`, see plan); jobs > 1 runs
    that many subprocesses at a time.

    Returns counts: total, done (this time, resumed included), resumed, skipped (finished
    before), failed (this time, and run dirs whose config no longer matches the sweep).
    """
    from tqdm import tqdm

    todo = plan(sweep, overrides, only)
    counts = {"total": len(todo), "done": 0, "resumed": 0, "skipped": 0, "failed": 0}
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="run")
    with bar:
        for job in todo:
            if job.action in ("skip", "stale"):
                counts["skipped" if job.action == "skip" else "failed"] += 1
                if job.action == "stale":
                    bar.write(f"left alone: {job.directory}: {job.note}")
                bar.update()
        bar.set_postfix(done=0, skipped=counts["skipped"], failed=counts["failed"])
        todo = [j for j in todo if j.action in ("new", "resume")]
        if jobs <= 1:
            for job in todo:
                _record(job, _in_process(job, sweep.base), counts, bar)
            return counts
        threads = max(1, (os.cpu_count() or 1) // jobs)
        pool = ThreadPoolExecutor(jobs)
        futures = {pool.submit(_subprocess, j, sweep.base, threads): j for j in todo}
        try:
            for future in as_completed(futures):
                _record(futures[future], future.result(), counts, bar)
        finally:  # on Ctrl-C start nothing new; the running runs stop at their checkpoint
            pool.shutdown(cancel_futures=True)
    return counts


# ------------------------------------------------------------------ command line


def _options(parser: argparse.ArgumentParser, default: int | None) -> None:
    parser.add_argument("--jobs", type=int, default=default,
                        help="runs at a time, as subprocesses when > 1 (default 1, in-process)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    parser.add_argument("--only", action="append", metavar="KEY=V[,V...]",
                        help="only the runs whose section.key is one of the values (repeat "
                             "for several keys), e.g. --only run.seed=0 --only method.name=lora,tad")


def _arguments(ns: argparse.Namespace) -> tuple[int, bool, list[str], list[str]]:
    """Options may come before or after SWEEP_FILE and between overrides: argparse's nargs='*'
    cannot take overrides after an option, so what follows the file is parsed here."""
    inner = argparse.ArgumentParser(prog="tadlora sweep SWEEP_FILE")
    _options(inner, None)
    inner.add_argument("overrides", nargs="*")
    rest = inner.parse_intermixed_args(ns.rest)
    only = [*(ns.only or []), *(rest.only or [])]
    return rest.jobs or ns.jobs or 1, rest.dry_run or ns.dry_run, rest.overrides, only


def cmd_sweep(ns: argparse.Namespace) -> int:
    jobs, dry_run, overrides, only = _arguments(ns)
    sweep = load_sweep(ns.sweep_file)
    if dry_run:
        planned = plan(sweep, overrides, only)
        for job in planned:
            print(f"{job.action:<6} {job.directory}" + (f"  ({job.note})" if job.note else ""))
        actions = [j.action for j in planned]
        print(f"{len(planned)} runs: " + ", ".join(f"{actions.count(a)} {a}" for a in
                                                    ("new", "resume", "skip", "stale")))
        return 0
    c = run_sweep(sweep, jobs, overrides, only)
    print(f"sweep {sweep.name}: {c['total']} runs: {c['done']} done ({c['resumed']} resumed), "
          f"{c['skipped']} already finished, {c['failed']} failed")
    return 1 if c["failed"] else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `tadlora sweep SWEEP_FILE [--jobs N] [--only KEY=V[,V...]] [--dry-run]
    [section.key=value ...]`."""
    s = subparsers.add_parser(
        "sweep", help="run a grid of runs from a sweep file (resumable)",
        usage="tadlora sweep SWEEP_FILE [--jobs N] [--only KEY=V[,V...]] [--dry-run] "
              "[section.key=value ...]",
        description="Runs every run of the sweep file that is not finished yet. Overrides apply "
                    "to every run; run.out_dir=DIR moves the whole sweep. Exit status 1 when "
                    "a run failed.")
    _options(s, None)
    s.add_argument("sweep_file")
    s.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_sweep)
    return s
