"""One peer process of a distributed run: join the peers, build this peer's slice of the
clients, and drive the round loop (runs/loop.py) with the distributed engine (started by
`tadlora launch`, or by torchrun on each host).

The run directory is the one `tadlora run` writes, plus each peer's checkpoint slices:
  config.toml, clients.json, metrics.jsonl, summary.json   rank 0
  checkpoint/                    the merged checkpoint, written by rank 0 after the last round
                                 (what `tadlora export` and `tadlora run --resume` read)
  peers/rank-K/round-RRRRRR/     rank K's slice after each saved round; the last two are kept
                                 (peers can be one round apart when one dies) and removed once
                                 the merged checkpoint exists (distributed.keep_slices: all kept)
A peer that loses another keeps its slices and exits with PEER_LOST; `tadlora launch --resume`
then restarts from the newest round that every client's slice reached (any number of peers:
a peer reads the rows it needs from whichever slices hold them). Under
distributed.on_peer_loss=continue the launcher does that by itself, with the lost peers'
clients departed (`--depart`, core/membership.py); `--rejoin` brings them back. A group that
torchrun restarted (--max-restarts) resumes its run by itself (`restarted_run`).

Several hosts, with torchrun (HOST:PORT = an address and free port of host 0 that the other
hosts reach; the same config file and data on every host, which the peers check as they join
(`_same_run`); M peer processes per host):
    host 0:  torchrun --nnodes 2 --node-rank 0 --nproc-per-node M --rdzv-endpoint HOST:PORT \
                 -m tadlora.cli peer exp.toml run.name=exp1
    host 1:  torchrun --nnodes 2 --node-rank 1 --nproc-per-node M --rdzv-endpoint HOST:PORT \
                 -m tadlora.cli peer exp.toml run.name=exp1
Rank 0 (on host 0) writes metrics.jsonl, summary.json and the merged checkpoint; every host
keeps its own slices under peers/. After a failure run the same commands with
`peer --resume runs/exp1` (the same hosts in the same order, unless the run directory is on a
shared disk). Gloo picks the network interface from the host name; set GLOO_SOCKET_IFNAME
where that is the wrong one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .. import __version__
from ..core.membership import NO_CHANGE, Change
from ..engines import auth, exchange
from ..engines.distributed import DistributedEngine
from ..engines.exchange import ProtocolError
from ..engines.liveness import Liveness, PeerLost, join
from ..engines.net import Net, backend
from . import inputs
from .build import Experiment, build
from .checkpoint import CheckpointError
from .config import Config, ConfigError, to_dict, toml_value
from .health import check_device
from .loop import execute
from .rundir import RunDir

PEER_LOST, INTERRUPTED = 3, 130
# where things are on a host, not what the run computes: these may differ between peers
HOST_LOCAL = ("run.out_dir", "run.progress", "model.path", "data.path", "topology.path",
              "distributed.secret_file")
SHOWN = 4  # differing settings named in the error
log = logging.getLogger("tadlora.peer")


def _settings(cfg: Config, change: Change) -> dict[str, str]:
    """What every peer must agree on: the resolved config but its host-local keys, the
    contents of the files those keys name, the membership change of a resume, and the
    tadlora version."""
    flat = {f"{section}.{key}": toml_value(value) for section, values in to_dict(cfg).items()
            for key, value in values.items() if f"{section}.{key}" not in HOST_LOCAL}
    moved = " ".join([f"--depart {','.join(map(str, change.depart))}"] * bool(change.depart)
                     + ["--rejoin"] * change.rejoin) or "none"
    files = inputs.digests(inputs.input_files(cfg))
    return {**flat, **{f"contents of {k}": v for k, v in files.items()},
            "--depart/--rejoin": moved, "tadlora version": __version__}


def _same_run(cfg: Config, change: Change, live: Liveness) -> None:
    """Each peer publishes its settings and, once every peer has (a peer that dies first is
    named), compares every peer's with rank 0's: a peer started with another config, other
    overrides or other files stops the whole group, before anything is written, with one
    error that every peer prints alike."""
    live.store.set(f"settings/{live.rank}", json.dumps(_settings(cfg, change)))
    live.barrier("settings")
    ref = json.loads(live.store.get("settings/0"))
    for other in range(1, live.world):
        got = json.loads(live.store.get(f"settings/{other}"))
        if diff := sorted(k for k in ref.keys() | got.keys() if ref.get(k) != got.get(k)):
            shown = "; ".join(f"{k} = {got.get(k, '-')} on rank {other}, {ref.get(k, '-')} on "
                              "rank 0" for k in diff[:SHOWN])
            more = f" (and {len(diff) - SHOWN} more)" if len(diff) > SHOWN else ""
            raise ConfigError(f"the peers were not started with the same run: {shown}{more}; "
                              "start every peer with the same config file, overrides and files "
                              f"(only {', '.join(HOST_LOCAL)} may differ between hosts)")


def _run_directory(cfg: Config, rank: int, store: dist.Store,
                   resume: Path | None = None) -> RunDir:
    """Rank 0 creates the run directory (or opens `resume`), holds its lock (runs/lock.py) for
    its whole life, and tells the others the directory's name (through the store)."""
    if rank == 0:
        try:
            run = RunDir.open(resume) if resume else RunDir.create(cfg)
        except ConfigError:
            store.set("run_name", "")
            raise
        store.set("run_name", run.path.name)
        return run
    name = store.get("run_name").decode()
    if not name:
        raise ConfigError("rank 0 could not create or lock the run directory (see its message)")
    return RunDir(resume or Path(cfg.run.out_dir) / name)


def _build(cfg: Config, run: RunDir, clients: range, fresh: bool) -> Experiment:
    """This peer's clients; a new run that fails here is removed by rank 0 (`fresh`)."""
    try:
        return build(cfg, clients)
    except BaseException:
        if fresh:
            run.discard()
        raise


def _exit(live: Liveness, code: int, why: str) -> None:
    """Leave without waiting on anybody: tell the others, flush, and exit the process."""
    live.announce_exit(why)
    live.stop()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def restarted_run(cfg: Config) -> Path | None:
    """Under torchrun --max-restarts, a restarted group (TORCHELASTIC_RESTART_COUNT > 0) that
    was given a new run's config resumes that run (run.name names it): every peer, the one
    that failed too, rejoins from its last slice at the round every client's slices reached."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0"):
        return None
    if not cfg.run.name:
        raise ConfigError("a restarted torchrun group cannot find its run: give the peers "
                          "run.name=NAME so that a restart resumes RUN_DIR = run.out_dir/NAME")
    path = Path(cfg.run.out_dir) / cfg.run.name
    return path if path.is_dir() else None


def main(cfg: Config, resume: Path | None = None, change: Change = NO_CHANGE) -> int:
    """Run this process as one peer (rank and rendezvous from torchrun's environment); a
    resume may change who takes part (`change`: core/membership.py)."""
    comm = torch.device("cpu")
    check_device(cfg)
    name = backend(cfg.distributed.backend, cfg.train.device)
    if name == "nccl":  # one GPU per peer process; transfers happen on it
        comm = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(comm)
    try:
        rank, world, store, live = join(name, cfg.distributed.timeout_s)
        slices = exchange.client_slices(cfg.clients.n, world)
    except (RuntimeError, ValueError) as e:
        print(f"tadlora peer: could not join the peers: {e}", file=sys.stderr)
        return 1
    logging.basicConfig(format=f"[rank {rank}] %(levelname)s %(message)s", level=logging.INFO)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # torchrun stops peers this way
    d = cfg.distributed
    net = Net(rank, slices, live, d.mode, d.diagnostics, comm, d.max_norm_ratio,
              auth.secret(d.secret_file))
    run = None
    try:
        _same_run(cfg, change, live)
        run = _run_directory(cfg, rank, store, resume)
        exp = _build(cfg, run, net.clients, fresh=rank == 0 and resume is None)
        execute(DistributedEngine(exp.fed, exp.val, net), exp, run, resume is not None, change)
    except (PeerLost, ProtocolError) as e:
        where = run.path if run else "RUN_DIR"
        log.error("%s. Stopping; the last checkpoint is kept: continue with `tadlora launch "
                  "--peers %d --resume %s` (under torchrun: the same command with `peer "
                  "--resume %s`)", e, world, where, where)
        _exit(live, PEER_LOST, f"stopped after it {e}")
    except KeyboardInterrupt:
        log.error("interrupted; the last checkpoint is kept")
        _exit(live, INTERRUPTED, "was interrupted")
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        _exit(live, 2, f"failed: {e}")
    except Exception as e:
        log.exception("failed: %s", e)
        _exit(live, 1, f"failed: {type(e).__name__}: {e}")
    live.stop()
    dist.destroy_process_group()
    return 0
