"""`tadlora sweep`: a sweep file's grid (study/sweep_file.py) as resumable runs in out_dir/<run
name>, with one progress bar. A rerun skips finished runs, resumes checkpointed ones, starts the
others over and leaves alone a run whose config the sweep file no longer matches. --only
KEY=V[,V...] runs a part of the grid: a long study runs in pieces; --kept DIR skips the runs
whose compact records (study/records) another machine made. Planning: study/sweep_plan.py."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ..runs import config, loop, rundir
from ..runs.config import ConfigError
from ..runs.lock import Lock
from ..runs.rundir import ERROR_LOG, RUN_FILES, RunDir
from .sweep_file import Sweep, load_sweep
from .sweep_plan import Job, kept_runs, out_dir, plan

TAIL = 8000  # characters of a failed run's stderr kept


def _clear(directory: Path) -> None:
    """Remove an unfinished run's files (only a run's, never while a process writes them)."""
    if not directory.exists():
        return
    strange = sorted(p.name for p in directory.iterdir() if p.name not in RUN_FILES)
    if strange:
        raise ConfigError(f"{directory} holds files a run does not make ({strange}); "
                          "move them before the sweep starts this run over")
    with Lock(directory):
        RunDir(directory).remove_files()


def _in_process(job: Job, base: Path | None) -> str | None:
    """Run one job here; the error text on failure, None on success."""
    try:
        if job.action == "resume":
            loop.resume(job.directory, list(job.resume_overrides))
        else:
            _clear(job.directory)
            loop.run(config.load(base, job.overrides))
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
    bar.set_postfix({k: counts[k] for k in ("done", "skipped", "failed")}, refresh=False)
    bar.update()


def run_sweep(sweep: Sweep, jobs: int = 1, overrides: list[str] = (),
              only: list[str] = (), kept: set[str] = frozenset()) -> dict[str, int]:
    """Run what is left of the sweep (of its runs matching `only`, see plan); jobs > 1 runs
    that many subprocesses at a time.

    Returns counts: total, done (this time, resumed included), resumed, skipped (finished
    before, here or in `kept`), failed (this time, and run dirs whose config no longer matches
    the sweep).
    """
    from tqdm import tqdm

    todo = plan(sweep, overrides, only, kept)
    rundir.make_dir(out := out_dir(sweep, overrides)[0], "the sweep's out_dir")
    counts = {"total": len(todo), "done": 0, "resumed": 0, "skipped": 0, "failed": 0}
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="run")
    with Lock(out, "sweep out_dir"), bar:  # one sweep at a time on an out_dir
        for job in todo:
            if job.action in ("skip", "kept", "stale"):
                counts["failed" if job.action == "stale" else "skipped"] += 1
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


def _jobs(text: str) -> int:
    if not text.lstrip("+").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give the number of runs at a time, >= 1")
    return int(text)


def _options(parser: argparse.ArgumentParser, default: int | None) -> None:
    parser.add_argument("--jobs", type=_jobs, default=default,
                        help="runs at a time, as subprocesses when > 1 (default: one per core "
                             "on CPU, 1 on GPU; 1 runs in this process)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    parser.add_argument("--only", action="append", metavar="KEY=V[,V...]",
                        help="only the runs whose section.key is one of the values (repeat "
                             "for several keys), e.g. --only run.seed=0 --only "
                             "method.name=lora,tad")
    parser.add_argument("--kept", action="append", metavar="DIR",
                        help="skip the runs finished under DIR (run directories or compact "
                             "records, e.g. study/records, from any machine; repeatable)")


def _arguments(ns: argparse.Namespace) -> tuple[int, bool, list[str], list[str], list[str]]:
    """Options may come before or after SWEEP_FILE and between overrides: argparse's nargs='*'
    cannot take overrides after an option, so what follows the file is parsed here."""
    inner = argparse.ArgumentParser(prog="tadlora sweep SWEEP_FILE")
    _options(inner, None)
    inner.add_argument("overrides", nargs="*")
    rest = inner.parse_intermixed_args(ns.rest)
    only = [*(ns.only or []), *(rest.only or [])]
    kept = [*(ns.kept or []), *(rest.kept or [])]
    return rest.jobs or ns.jobs or 0, rest.dry_run or ns.dry_run, rest.overrides, only, kept


def default_jobs(sweep: Sweep, todo: list[Job]) -> int:
    """Without --jobs: a single-thread run per core on CPU (on 2 cores, 2 such runs finished
    a sweep 1.18x sooner than one 2-thread run at a time: benchmarks/RESULTS.md); one on GPU."""
    cpu = not todo or config.load(sweep.base, todo[0].overrides).train.device == "cpu"
    return max(1, os.cpu_count() or 1) if cpu else 1


def cmd_sweep(ns: argparse.Namespace) -> int:
    jobs, dry_run, overrides, only, kept_dirs = _arguments(ns)
    sweep = load_sweep(ns.sweep_file)
    kept = kept_runs(kept_dirs)
    planned = plan(sweep, overrides, only, kept)
    jobs = jobs or default_jobs(sweep, planned)
    if dry_run:
        for job in planned:
            print(f"{job.action:<6} {job.directory}" + (f"  ({job.note})" if job.note else ""))
        actions = [j.action for j in planned]
        print(f"{len(planned)} runs: " + ", ".join(f"{actions.count(a)} {a}" for a in
                                                    ("new", "resume", "skip", "kept", "stale")))
        return 0
    c = run_sweep(sweep, jobs, overrides, only, kept)
    print(f"sweep {sweep.name}: {c['total']} runs: {c['done']} done ({c['resumed']} resumed), "
          f"{c['skipped']} already finished, {c['failed']} failed")
    return 1 if c["failed"] else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `tadlora sweep SWEEP_FILE [--jobs N] [--only KEY=V[,V...]] [--kept DIR]
    [--dry-run] [section.key=value ...]`."""
    s = subparsers.add_parser(
        "sweep", help="run a grid of runs from a sweep file (resumable)",
        usage="tadlora sweep SWEEP_FILE [--jobs N] [--only KEY=V[,V...]] [--kept DIR] "
              "[--dry-run] [section.key=value ...]",
        description="Runs every run of the sweep file that is not finished yet. Overrides apply "
                    "to every run; run.out_dir=DIR moves the whole sweep. Exit status 1 when "
                    "a run failed.")
    _options(s, None)
    s.add_argument("sweep_file")
    s.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_sweep)
    return s
