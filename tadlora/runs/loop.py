"""The one round loop, for both engines: start or resume, rounds, evaluation when due, the
metrics log, checkpoints, the summary. `run` and `resume` drive it for the in-process engine;
runs/peer.py drives it for one peer of a distributed run.

Checkpoints: a single process saves RUN_DIR/checkpoint; each peer of a distributed run saves
its slice (RUN_DIR/peers/rank-K/round-R, the last two kept) and rank 0 writes the merged
checkpoint after the last round, after which the slices are removed (distributed.keep_slices:
kept). A resume, with any number of processes, restarts from the newest round whose slices
(the merged checkpoint counts as one) hold every client this process needs, agreed by all;
a round whose checkpoint fails its checksums is passed over for the one before, with a warning.
A run with no checkpoint yet resumes from round 0. The rounds after the checkpoint that
metrics.jsonl holds are dropped and run again, and the warning says how many.

After every round each process checks its clients' factors, and rank 0 their losses: a NaN or
infinity stops the run (health.NonFiniteError) before it is saved, so the last checkpoint is
the last finite state. A new run takes the run directory's lock for its whole life
(runs/lock.py); a run that fails before its first round leaves nothing behind.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..core import membership
from ..core.membership import NO_CHANGE, Change
from ..engines.base import Engine
from ..engines.local import LocalEngine
from . import checkpoint, health, inputs, machine
from .build import Experiment, build
from .checkpoint import CheckpointError
from .config import Config, ConfigError
from .health import NonFiniteError, warn
from .rundir import CLIENTS, SUMMARY, RunDir, resumable_config


def due(cfg: Config, t: int) -> bool:
    """Whether round t is evaluated: every run.eval_every rounds, and always the last."""
    last = t == cfg.run.rounds - 1
    return last or (cfg.run.eval_every > 0 and (t + 1) % cfg.run.eval_every == 0)


def summary(exp: Experiment, records: list[dict], wall: float) -> dict:
    last_eval = next(r["eval"] for r in reversed(records) if "eval" in r)
    cfg = exp.cfg
    return {"method": cfg.method.name, "topology": cfg.topology.kind, "p": cfg.topology.p,
            "rounds": len(records), "rho": exp.rho, "precision": exp.fed.local.precision,
            "switch_interval": exp.fed.policy.interval_at(len(records) - 1),
            "machine": machine.describe(exp.fed.local.device), "inputs": exp.inputs,
            "label_names": exp.label_names, "label_counts": exp.label_counts,
            "wall_time_s": round(wall, 1), **last_eval}


def clients_info(exp: Experiment) -> dict:
    return {"label_names": exp.label_names, "label_counts": exp.label_counts, "rho": exp.rho,
            "switch_interval": exp.fed.policy.interval, "inputs": exp.inputs}


def _read_round(engine: Engine, parts: list, rnd: int, n: int) -> tuple | None:
    """Round `rnd`'s rows for this process and the run's departures, or None (with a warning)
    when a slice is corrupt; agreed by all processes."""
    chosen = checkpoint.cover(parts, rnd, engine.fed.clients)
    try:
        *rows, meta = checkpoint.read_rows(chosen, engine.fed.clients,
                                           engine.fed.policy.interval)
    except checkpoint.CorruptCheckpoint as e:
        warn(f"{e}; falling back to an older checkpoint")
        rows = None
    if not engine.agree(int(rows is not None)):
        return None
    try:
        return rows, membership.from_json(meta.get("departures"), n)
    except ValueError as e:
        raise CheckpointError(f"{chosen[0][1]}: {e}") from e


def _unrestorable(run: RunDir, parts: list, corrupt: list[int]) -> str:
    if corrupt:
        return (f"{run.path}: every checkpoint that holds all clients is corrupt (rounds "
                f"{sorted(corrupt)} fail their sha256 checks); restore the run directory from a "
                "copy, or start the run again without --resume")
    return (f"{run.path}: no round whose checkpoint slices hold every client (found rounds "
            f"{sorted({r for r, _, _ in parts})}); without a shared disk, resume with the same "
            "peers on the same hosts")


def restore(engine: Engine, run: RunDir, exp: Experiment) -> int:
    """Load the engine's clients from the newest round every process can restore (and whose
    checksums hold); returns it, or 0 when the run has no checkpoint yet."""
    parts = checkpoint.slices(run, exp.cfg.clients.n)
    clients = engine.fed.clients
    rounds = sorted({r for r, _, _ in parts if checkpoint.cover(parts, r, clients)})
    engine.barrier("restore")  # builds take unequal times
    corrupt = []
    while True:
        rnd = engine.agree(rounds[-1] if rounds else -1)
        if rnd < 0 and engine.agree(int(not parts)):
            warn(f"{run.path} has no checkpoint yet: starting from round 0")
            return 0
        if rnd < 0 or engine.agree(int(rnd in rounds)) == 0:
            raise CheckpointError(_unrestorable(run, parts, corrupt))
        got = _read_round(engine, parts, rnd, exp.cfg.clients.n)
        if got is not None:
            break
        corrupt.append(rnd)
        rounds = [r for r in rounds if r != rnd]
    rows, engine.fed.departures = got
    try:
        engine.fed.load(*rows)
    except ValueError as e:
        raise CheckpointError(f"checkpoint in {run.path} does not fit this model: {e}") from e
    return rnd


def dropped(run: RunDir, first: int, cfg: Config) -> None:
    """Say how many logged rounds the checkpoint does not cover (they are run again), and which
    rounds it covers have no record (a log cut or edited: their metrics are gone)."""
    logged = {r["round"] for r in run.records()}
    lost, gone = sorted(r for r in logged if r >= first), sorted(set(range(first)) - logged)
    if gone:
        warn(f"{run.metrics} has no record of {len(gone)} round(s) the checkpoint covers "
             f"({gone[0]}..{gone[-1]}): the log was cut or edited; the training state is "
             "intact, but those rounds' metrics are lost (restore the file to keep them)")
    if lost:
        warn(f"resuming {run.path} from round {first}: the {len(lost)} logged round(s) after "
             f"the checkpoint it restores ({lost[0]}..{lost[-1]}) are dropped and run again "
             f"(run.checkpoint_every={cfg.run.checkpoint_every})")


def _departures(engine: Engine) -> dict:
    events = engine.fed.departures
    return {"departures": membership.to_json(events)} if events else {}


def save(engine: Engine, run: RunDir, exp: Experiment, rnd: int) -> None:
    """The checkpoint after `rnd` rounds: the run's own, or this peer's slice (last two kept)."""
    clients = engine.fed.clients
    meta = {"round": rnd, "switch_interval": exp.fed.policy.interval,
            "clients": [clients.start, clients.stop], **_departures(engine)}
    if engine.world == 1:
        checkpoint.save(run.checkpoint, *engine.fed.state(), meta, keep=run.previous)
        return
    checkpoint.save(run.slice(engine.rank, rnd), *engine.fed.state(), meta)
    if not exp.cfg.distributed.keep_slices:
        mine = sorted(p for p in run.peer_slices(engine.rank).glob("round-*")
                      if p.name[6:].isdigit())
        for old in mine[:-2]:
            shutil.rmtree(old, ignore_errors=True)


def finish(engine: Engine, run: RunDir, exp: Experiment) -> None:
    """After the last round: the merged checkpoint (several processes), then no slices left."""
    cfg = exp.cfg
    if engine.world > 1:
        engine.barrier("merge")  # rank 0 may still be evaluating
        state = engine.gather_state(cfg.run.rounds)
        if state is not None:
            checkpoint.save(run.checkpoint, *state, {"round": cfg.run.rounds,
                                                     "switch_interval": exp.fed.policy.interval,
                                                     **_departures(engine)},
                            keep=run.previous)
        engine.barrier("merged")
    if cfg.distributed.keep_slices:
        return
    shutil.rmtree(run.peer_slices(engine.rank), ignore_errors=True)
    engine.barrier("cleaned")
    if engine.rank == 0:
        shutil.rmtree(run.peers, ignore_errors=True)


def _change(engine: Engine, run: RunDir, n: int, first: int, change: Change) -> None:
    """Apply a resume's change to who takes part, from round `first` on, and say it."""
    before = engine.fed.departed(first)
    try:
        engine.fed.departures = membership.changed(engine.fed.departures, first, change, n)
    except ValueError as e:
        raise ConfigError(f"{run.path}: {e}") from e
    now = engine.fed.departed(first)
    if engine.rank == 0 and now != before:
        warn(f"from round {first}: clients {sorted(now - before)} depart" if now > before else
             f"from round {first}: clients {sorted(before - now)} rejoin with the state they "
             "left with")


def start(engine: Engine, run: RunDir, exp: Experiment, resume: bool, change: Change) -> int:
    """The first round to run: restored on resume, with `change` to who takes part from then
    on; the run's files are written on rank 0."""
    cfg, writer = exp.cfg, engine.rank == 0
    first = restore(engine, run, exp) if resume else 0
    if first >= cfg.run.rounds:
        raise ConfigError(f"{run.path} already finished {first} rounds; extend it with "
                          f"run.rounds=<more than {first}>")
    if resume:
        _change(engine, run, cfg.clients.n, first, change)
    if writer and resume:
        dropped(run, first, cfg)
        inputs.warn_if_changed(run, exp.inputs, first)
        run.write_config(cfg)
        run.truncate(first)
    if writer and first == 0:
        run.write_json(CLIENTS, clients_info(exp))
        for problem in health.questionable(cfg):
            warn(problem)
    return first


def stop_if_nonfinite(engine: Engine, run: RunDir, record: dict | None, t: int,
                      kept: int) -> None:
    """Stop before round t is saved when a loss or factor is not finite (the record, with the
    clients under "nonfinite", is logged first); `kept`: the rounds the checkpoint holds."""
    losses = health.nonfinite_losses(record)
    factors = health.nonfinite_clients(engine.fed.model, engine.fed.clients)
    if losses or factors:
        if record is not None:
            record["nonfinite"] = sorted(set(losses) | set(factors))
            run.append(record)
        raise NonFiniteError(health.nonfinite_message(t, losses, factors, kept))


def execute(engine: Engine, exp: Experiment, run: RunDir, resume: bool,
            change: Change = NO_CHANGE) -> dict | None:
    """Rounds from the start (or from the checkpoint, with `change` to who takes part) to
    run.rounds; the summary on rank 0."""
    from tqdm import tqdm

    cfg, t0, writer = exp.cfg, time.time(), engine.rank == 0
    first = start(engine, run, exp, resume, change)
    spent = run.elapsed(first) if writer else 0.0  # before this process: a resume adds on
    logged = run.records() if writer else []
    first_loss, warned = (logged[0].get("train_loss") if logged else None), False
    peers = f" x{engine.world} peers" if engine.world > 1 else f" {cfg.topology.kind}"
    bar = tqdm(range(first, cfg.run.rounds), desc=f"{cfg.method.name}{peers}", unit="round",
               disable=not cfg.run.progress or not writer, initial=first, total=cfg.run.rounds)
    for t in bar:
        record = engine.round(t)
        if first_loss is None and record is not None:
            first_loss = record["train_loss"]
        stop_if_nonfinite(engine, run, record, t, max(first, t - t % cfg.run.checkpoint_every))
        warned = health.divergence(record, first_loss, warned)
        if due(cfg, t):
            ev = engine.evaluate(t)
            if record is not None:
                record["eval"] = ev
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{ev['mean']:.3f}")
        if record is not None:
            run.append(record)
        if (t + 1) % cfg.run.checkpoint_every == 0 or t == cfg.run.rounds - 1:
            save(engine, run, exp, t + 1)
            if writer:
                run.note_elapsed(t + 1, spent + time.time() - t0)
    finish(engine, run, exp)
    if not writer:
        return None
    result = summary(exp, run.records(), spent + time.time() - t0)
    run.write_json(SUMMARY, result)
    return result


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (cli.py) stopped a run of this process; args[0] resumes it."""


def _here(exp: Experiment, run_dir: RunDir, resume: bool) -> dict:
    try:
        return execute(LocalEngine(exp.fed, exp.val), exp, run_dir, resume=resume)
    except KeyboardInterrupt as e:
        raise Interrupted(run_dir.path) from e


def run(cfg: Config) -> tuple[Path, dict]:
    """A new run from scratch, every client in this process; (run directory, summary)."""
    health.check_device(cfg)
    run_dir = RunDir.create(cfg)
    try:
        try:
            exp = build(cfg)
        except BaseException:
            run_dir.discard()  # a start-up failure leaves nothing behind
            raise
        return run_dir.path, _here(exp, run_dir, resume=False)
    finally:
        run_dir.unlock()


def resume(directory: str | Path, overrides: list[str] = ()) -> tuple[Path, dict]:
    """Continue an interrupted run from its last checkpoint (run.* keys may be changed, e.g.
    run.rounds to extend it); ends with the same metrics as an uninterrupted run."""
    cfg = resumable_config(directory, overrides)
    health.check_device(cfg)
    run_dir = RunDir.open(Path(directory))
    try:  # interrupted while building too: the run is as it was
        exp = build(cfg)
        return run_dir.path, execute(LocalEngine(exp.fed, exp.val), exp, run_dir, resume=True)
    except KeyboardInterrupt as e:
        raise Interrupted(run_dir.path) from e
    finally:
        run_dir.unlock()
