"""What each run of a sweep needs: its directory, its overrides, and whether to start it, resume
it, skip it (finished here, or kept elsewhere: a compact record with the same config, e.g. in
study/records, from another machine) or leave it alone (its config no longer matches)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runs import config
from ..runs.config import Config, ConfigError, toml_value
from ..runs.rundir import CONFIG, RESUMABLE_KEYS, SUMMARY, RunDir
from .identity import differences, identity
from .results import collect
from .sweep_file import Sweep


@dataclass(frozen=True)
class Job:
    name: str
    directory: Path
    overrides: list[str]  # all of them, for a new run
    action: str  # new | resume | skip | kept | stale
    note: str = ""  # stale: what differs
    resume_overrides: tuple[str, ...] = ()


# ------------------------------------------------------------------ planning: what each run needs


def _status(directory: Path, cfg: Config) -> tuple[str, str]:
    """(action, note) for a run directory that should hold `cfg`."""
    if not (directory / CONFIG).is_file():
        return "new", ""
    try:
        stored = config.load(directory / CONFIG)
    except ConfigError as e:  # e.g. written by another version: never delete it
        return "stale", f"its {CONFIG} cannot be read ({e})"
    diff = differences(stored, cfg)
    if diff:
        return "stale", f"its config differs from the sweep's: {'; '.join(diff)}"
    saved = RunDir(directory).saved_round()  # 0 = none (or unreadable: start over)
    finished = (directory / SUMMARY).is_file()
    if finished and stored.run.rounds == cfg.run.rounds:
        return "skip", ""
    if max(saved, stored.run.rounds if finished else 0) > cfg.run.rounds:
        return "stale", f"it ran more rounds than the sweep's {cfg.run.rounds}"
    return ("resume", "") if 0 < saved < cfg.run.rounds else ("new", "")


def _check_only(sweep: Sweep, only: list[str]) -> None:
    for spec in only:  # section.key=v1,v2 with a key of the grid
        key, sep, _ = spec.partition("=")
        if not sep:
            raise ConfigError(f"--only {spec!r} must look like section.key=value[,value...], "
                              "e.g. --only run.seed=0,1")
        if key.strip() not in sweep.axes:
            raise ConfigError(f"--only {spec!r}: {key.strip()} is not a key the sweep varies; "
                              f"its keys are {', '.join(sorted(sweep.axes))}")


def _selected(cfg: Config, base: Path | None, overrides: list[str], only: list[str]) -> bool:
    """Whether the run matches every `section.key=v1,v2,...` of `only` (one of the values):
    setting the key to that value leaves its config as it is."""
    for spec in only:
        key, _, values = spec.partition("=")
        if not any(config.load(base, [*overrides, f"{key}={v}"]) == cfg
                   for v in values.split(",")):
            return False
    return True


def out_dir(sweep: Sweep, overrides: list[str]) -> tuple[Path, list[str]]:
    """The sweep's out_dir (run.out_dir=DIR moves it) and the other overrides (not run.name,
    not a key the grid varies: the runs' names would lie)."""
    out, extra = sweep.out_dir, []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == "run.name":
            raise ConfigError("run.name is set by the sweep for each run")
        if key in sweep.axes:
            raise ConfigError(f"override {item!r}: {key} is an axis of the sweep's grid (the runs "
                              f"are named after it); use --only {key}=VALUE or edit the sweep")
        if key == "run.out_dir":
            out = Path(str(config.parse_overrides([item])["run"]["out_dir"]))
        else:
            extra.append(item)
    return out, extra


def kept_runs(dirs: list[str | Path]) -> set[str]:
    """The identities of the finished runs (directories, compact records, bundles) under dirs."""
    for d in dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"--kept {d}: not a directory of runs or records")
    return {identity(r["cfg"]) for d in dirs for r in collect(d) if r["finished"]}


def plan(sweep: Sweep, overrides: list[str] = (), only: list[str] = (),
         kept: set[str] = frozenset()) -> list[Job]:
    """One Job per run (those matching `only`): its directory, its overrides and what to do
    with it; a run to start or resume that `kept` (kept_runs) holds is kept."""
    out, extra = out_dir(sweep, overrides)
    _check_only(sweep, list(only))
    jobs = []
    for name, ovr in sweep.runs:
        full = [*ovr, *extra, f"run.out_dir={toml_value(str(out))}", f"run.name={toml_value(name)}",
                "run.progress=false"]
        cfg = config.load(sweep.base, full)
        if not _selected(cfg, sweep.base, full, only):
            continue
        action, note = _status(out / name, cfg)
        action = "kept" if action in ("new", "resume") and identity(cfg) in kept else action
        resume = tuple(f"run.{k}={toml_value(getattr(cfg.run, k))}" for k in RESUMABLE_KEYS)
        jobs.append(Job(name, out / name, full, action, note, resume))
    if only and not jobs:
        raise ConfigError(f"--only {' --only '.join(only)} matches no run of the sweep")
    return jobs
