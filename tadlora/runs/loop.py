"""The one round loop, for both engines: start or resume, rounds, evaluation when due, the
metrics log, checkpoints, the summary. `run` and `resume` drive it for the in-process engine;
runs/peer.py drives it for one peer of a distributed run.

Checkpoints: a single process saves RUN_DIR/checkpoint; each peer of a distributed run saves
its slice (RUN_DIR/peers/rank-K/round-R, the last two kept) and rank 0 writes the merged
checkpoint after the last round, after which the slices are removed (distributed.keep_slices:
kept). A resume, with any number of processes, restarts from the newest round whose slices
(the merged checkpoint counts as one) hold every client this process needs, agreed by all.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..engines.base import Engine
from ..engines.local import LocalEngine
from . import checkpoint
from .build import Experiment, build
from .checkpoint import CheckpointError
from .config import Config, ConfigError
from .rundir import CLIENTS, SUMMARY, RunDir, resumable_config


def due(cfg: Config, t: int) -> bool:
    """Whether round t is evaluated: every run.eval_every rounds, and always the last."""
    last = t == cfg.run.rounds - 1
    return last or (cfg.run.eval_every > 0 and (t + 1) % cfg.run.eval_every == 0)


def summary(exp: Experiment, records: list[dict], wall: float) -> dict:
    last_eval = next(r["eval"] for r in reversed(records) if "eval" in r)
    cfg = exp.cfg
    return {"method": cfg.method.name, "topology": cfg.topology.kind, "p": cfg.topology.p,
            "rounds": len(records), "switch_interval": exp.fed.policy.interval, "rho": exp.rho,
            "precision": exp.fed.local.precision,
            "label_names": exp.label_names, "label_counts": exp.label_counts,
            "wall_time_s": round(wall, 1), **last_eval}


def clients_info(exp: Experiment) -> dict:
    return {"label_names": exp.label_names, "label_counts": exp.label_counts, "rho": exp.rho,
            "switch_interval": exp.fed.policy.interval}


def restore(engine: Engine, run: RunDir, exp: Experiment) -> int:
    """Load the engine's clients from the newest round every process can restore; returns it."""
    parts = checkpoint.slices(run, exp.cfg.clients.n)
    clients = engine.fed.clients
    rounds = sorted({r for r, _, _ in parts if checkpoint.cover(parts, r, clients)})
    engine.barrier("restore")  # builds take unequal times
    rnd = engine.agree(rounds[-1] if rounds else -1)
    if engine.agree(int(rnd in rounds)) == 0:
        if not parts:
            checkpoint.read(run.checkpoint)  # raises: no checkpoint, nothing to resume from
        raise CheckpointError(
            f"{run.path}: no round whose checkpoint slices hold every client (found rounds "
            f"{sorted({r for r, _, _ in parts})}); without a shared disk, resume with the same "
            "peers on the same hosts")
    chosen = checkpoint.cover(parts, rnd, clients)
    tensors, moments = checkpoint.read_rows(chosen, clients, exp.fed.policy.interval)
    try:
        engine.fed.load(tensors, moments)
    except ValueError as e:
        raise CheckpointError(f"checkpoint in {run.path} does not fit this model: {e}") from e
    return rnd


def save(engine: Engine, run: RunDir, exp: Experiment, rnd: int) -> None:
    """The checkpoint after `rnd` rounds: the run's own, or this peer's slice (last two kept)."""
    clients = engine.fed.clients
    meta = {"round": rnd, "switch_interval": exp.fed.policy.interval,
            "clients": [clients.start, clients.stop]}
    if engine.world == 1:
        checkpoint.save(run.checkpoint, *engine.fed.state(), meta)
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
                                                     "switch_interval": exp.fed.policy.interval})
        engine.barrier("merged")
    if cfg.distributed.keep_slices:
        return
    shutil.rmtree(run.peer_slices(engine.rank), ignore_errors=True)
    engine.barrier("cleaned")
    if engine.rank == 0:
        shutil.rmtree(run.peers, ignore_errors=True)


def execute(engine: Engine, exp: Experiment, run: RunDir, resume: bool) -> dict | None:
    """Rounds from the start (or from the checkpoint) to run.rounds; the summary on rank 0."""
    from tqdm import tqdm

    cfg, t0, writer = exp.cfg, time.time(), engine.rank == 0
    first = restore(engine, run, exp) if resume else 0
    if first >= cfg.run.rounds:
        raise ConfigError(f"{run.path} already finished {first} rounds; extend it with "
                          f"run.rounds=<more than {first}>")
    if writer and resume:
        run.write_config(cfg)
        run.truncate(first)
    elif writer:
        run.write_json(CLIENTS, clients_info(exp))
    peers = f" x{engine.world} peers" if engine.world > 1 else f" {cfg.topology.kind}"
    bar = tqdm(range(first, cfg.run.rounds), desc=f"{cfg.method.name}{peers}", unit="round",
               disable=not cfg.run.progress or not writer, initial=first, total=cfg.run.rounds)
    for t in bar:
        record = engine.round(t)
        if due(cfg, t):
            ev = engine.evaluate(t)
            if record is not None:
                record["eval"] = ev
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{ev['mean']:.3f}")
        if record is not None:
            run.append(record)
        if (t + 1) % cfg.run.checkpoint_every == 0 or t == cfg.run.rounds - 1:
            save(engine, run, exp, t + 1)
    finish(engine, run, exp)
    if not writer:
        return None
    result = summary(exp, run.records(), time.time() - t0)
    run.write_json(SUMMARY, result)
    return result


def run(cfg: Config) -> tuple[Path, dict]:
    """A new run from scratch, every client in this process; (run directory, summary)."""
    run_dir = RunDir.create(cfg)
    exp = build(cfg)
    return run_dir.path, execute(LocalEngine(exp.fed, exp.val), exp, run_dir, resume=False)


def resume(directory: str | Path, overrides: list[str] = ()) -> tuple[Path, dict]:
    """Continue an interrupted run from its last checkpoint (run.* keys may be changed, e.g.
    run.rounds to extend it); ends with the same metrics as an uninterrupted run."""
    run_dir = RunDir(Path(directory))
    exp = build(resumable_config(run_dir.path, overrides))
    return run_dir.path, execute(LocalEngine(exp.fed, exp.val), exp, run_dir, resume=True)
