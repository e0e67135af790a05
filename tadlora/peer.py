"""One peer of a distributed run: what runner.py does for `tadlora run`, for one process that
owns a slice of the clients (started by `tadlora launch`, or by torchrun on each host).

The run directory is the one `tadlora run` writes, plus each peer's checkpoint slices:
  config.toml, clients.json, metrics.jsonl, summary.json   rank 0
  checkpoint/                    the merged checkpoint, written by rank 0 after the last round
                                 (what `tadlora export` and `tadlora run --resume` read)
  peers/rank-K/round-RRRRRR/     rank K's slice after each saved round; the last two are kept
                                 (peers can be one round apart when one dies) and removed once
                                 the merged checkpoint exists (distributed.keep_slices: all kept)
A peer that loses another keeps its slices and exits with PEER_LOST; `tadlora launch --resume`
then restarts from the newest round that every client's slice reached (any number of peers:
a peer reads the rows it needs from whichever slices hold them).

Several hosts, with torchrun (HOST:PORT = an address and free port of host 0 that the other
hosts reach; the same config file and data on every host; M peer processes per host):
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
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint, exchange, lora, runner
from .config import Config, ConfigError, to_toml
from .distributed import Net, evaluation, run_round
from .exchange import ProtocolError
from .liveness import Liveness, PeerLost, join

PEER_LOST, INTERRUPTED = 3, 130
log = logging.getLogger("tadlora.peer")


def backend(cfg: Config) -> str:
    b = cfg.distributed.backend
    return b if b != "auto" else ("nccl" if cfg.train.device.startswith("cuda") else "gloo")


def part_dir(directory: Path, rank: int, rnd: int) -> Path:
    return directory / "peers" / f"rank-{rank}" / f"round-{rnd:06d}"


def save_part(directory: Path, exp: runner.Experiment, net: Net, rnd: int) -> None:
    """This peer's slice after `rnd` rounds; keeps it and the one before."""
    meta = {"round": rnd, "switch_interval": exp.fed.policy.interval,
            "clients": [net.clients.start, net.clients.stop]}
    checkpoint.save(part_dir(directory, net.rank, rnd), exp.fed.model, exp.fed.optimizer, meta)
    mine = sorted(p for p in part_dir(directory, net.rank, 0).parent.glob("round-*")
                  if p.name[6:].isdigit())
    for old in mine[:-2] if not exp.cfg.distributed.keep_slices else []:
        shutil.rmtree(old, ignore_errors=True)


def slices_on_disk(directory: Path, n: int) -> list[tuple[int, range, Path]]:
    """(round, clients, folder) of every checkpoint slice in a run directory; the merged
    checkpoint is a slice holding every client."""
    out = []
    for d in [directory / runner.CKPT, *directory.glob("peers/rank-*/round-*")]:
        meta = d / checkpoint.META
        if meta.is_file() and not d.name.endswith((".tmp", ".old")):
            m = json.loads(meta.read_text())
            lo, hi = m.get("clients", [0, n])
            out.append((int(m["round"]), range(lo, hi), d))
    return out


def _cover(parts: list[tuple[int, range, Path]], rnd: int, want: range
           ) -> list[tuple[range, Path]] | None:
    """Slices of round `rnd` that together hold the clients `want`, or None."""
    pos, chosen = want.start, []
    while pos < want.stop:
        hit = next(((c, d) for r, c, d in parts if r == rnd and pos in c), None)
        if hit is None:
            return None
        chosen.append(hit)
        pos = hit[0].stop
    return chosen


def _agree(net: Net, value: int) -> int:
    """The minimum of `value` over all peers (a tensor collective, never a pickle)."""
    x = torch.tensor([value], dtype=torch.int64, device=net.device)
    net.live.guard(lambda: dist.all_reduce(x, op=dist.ReduceOp.MIN))
    return int(x.item())


def restore(directory: Path, exp: runner.Experiment, net: Net) -> int:
    """Load this peer's clients from the newest round that every peer can restore; returns it."""
    parts = slices_on_disk(directory, net.n)
    rounds = sorted({r for r, _, _ in parts if _cover(parts, r, net.clients)})
    net.live.guard(lambda: net.live.barrier("restore"))  # builds take unequal times
    rnd = _agree(net, rounds[-1] if rounds else -1)
    if _agree(net, int(rnd in rounds)) == 0:
        raise checkpoint.CheckpointError(
            f"{directory}: no round whose checkpoint slices hold every client (found rounds "
            f"{sorted({r for r, _, _ in parts})}); without a shared disk, resume with the same "
            "peers on the same hosts")
    tensors: dict[str, list[torch.Tensor]] = {}
    moments: dict[str, list[torch.Tensor]] = {}
    for held, d in _cover(parts, rnd, net.clients):
        meta, t, o = checkpoint.read(d)
        if meta["switch_interval"] != exp.fed.policy.interval:
            raise checkpoint.CheckpointError(
                f"{d} was made with switch interval {meta['switch_interval']}, the config now "
                f"gives {exp.fed.policy.interval}: the config or the code changed")
        rows = slice(max(net.clients.start, held.start) - held.start,
                     min(net.clients.stop, held.stop) - held.start)
        for k, x in t.items():
            tensors.setdefault(k, []).append(x[rows])
        for k, x in o.items():
            moments.setdefault(k, []).append(x[rows] if x.dim() else x)
    checkpoint.restore(exp.fed.model, exp.fed.optimizer,
                       {k: torch.cat(v) for k, v in tensors.items()},
                       {k: torch.cat(v) if v[0].dim() else v[0] for k, v in moments.items()},
                       str(directory))
    return rnd


def merge(directory: Path, exp: runner.Experiment, net: Net, rnd: int) -> None:
    """Every peer's tensors and AdamW state to rank 0, saved as one ordinary checkpoint."""
    fed = exp.fed
    net.live.guard(lambda: net.live.barrier("merge"))  # rank 0 may still be evaluating
    state = {k: v.detach() for k, v in lora.state(fed.model).items()}
    opt = checkpoint._optimizer_tensors(fed.model, fed.optimizer)
    keys = sorted(state)
    rows = sorted(k for k, v in opt.items() if v.dim())
    full, _ = net.gather(exchange.pack([state[k] for k in keys]), rnd)
    moments = net.gather(exchange.pack([opt[k] for k in rows]), rnd)[0] if rows else None
    if net.rank != 0:
        return
    tensors = dict(zip(keys, exchange.unpack(full, [state[k] for k in keys]), strict=True))
    opt_all = {k: v for k, v in opt.items() if not v.dim()}
    if moments is not None:
        opt_all.update(zip(rows, exchange.unpack(moments, [opt[k] for k in rows]), strict=True))
    checkpoint.save_tensors(directory / runner.CKPT,
                            {k: v.cpu().contiguous() for k, v in tensors.items()},
                            {k: v.cpu().contiguous() for k, v in opt_all.items()},
                            {"round": rnd, "switch_interval": fed.policy.interval})


def _run_directory(cfg: Config, net: Net, store: dist.Store) -> Path:
    """Rank 0 creates the run directory and tells the others its name (through the store)."""
    if net.rank == 0:
        try:
            directory = runner.create(cfg)
        except ConfigError:
            store.set("run_name", "")
            raise
        store.set("run_name", directory.name)
        return directory
    name = store.get("run_name").decode()
    if not name:
        raise ConfigError("rank 0 could not create the run directory (see its message)")
    return Path(cfg.run.out_dir) / name


def _rounds(exp: runner.Experiment, net: Net, directory: Path, first: int) -> None:
    from tqdm import tqdm

    cfg = exp.cfg
    bs = max(64, cfg.train.batch_size)
    bar = tqdm(range(first, cfg.run.rounds), desc=f"{cfg.method.name} x{net.world} peers",
               unit="round", disable=not cfg.run.progress or net.rank != 0, initial=first,
               total=cfg.run.rounds)
    for t in bar:
        record = run_round(exp.fed, net, t)
        if runner.due(cfg, t):
            ev = evaluation(exp.fed, net, t, exp.val, exp.pad_id, bs)
            if record is not None:
                record["eval"] = ev
        if record is not None:
            with (directory / runner.METRICS).open("a") as f:
                f.write(json.dumps(record) + "\n")
        if (t + 1) % cfg.run.checkpoint_every == 0 or t == cfg.run.rounds - 1:
            save_part(directory, exp, net, t + 1)


def _finish(exp: runner.Experiment, net: Net, directory: Path, t0: float) -> dict | None:
    """Merged checkpoint and summary (rank 0), then every peer drops its slices."""
    merge(directory, exp, net, exp.cfg.run.rounds)
    result = None
    if net.rank == 0:
        result = runner.summary(exp, runner.read_metrics(directory), time.time() - t0)
        (directory / runner.SUMMARY).write_text(json.dumps(result, indent=1))
    net.live.guard(lambda: net.live.barrier("merged"))
    if exp.cfg.distributed.keep_slices:
        return result
    shutil.rmtree(directory / "peers" / f"rank-{net.rank}", ignore_errors=True)
    net.live.guard(lambda: net.live.barrier("cleaned"))
    if net.rank == 0:
        shutil.rmtree(directory / "peers", ignore_errors=True)
    return result


def _start(cfg: Config, net: Net, store: dist.Store, resume: Path | None
           ) -> tuple[runner.Experiment, Path, int]:
    directory = resume or _run_directory(cfg, net, store)
    exp = runner.build(cfg, net.clients)
    first = restore(directory, exp, net) if resume else 0
    if first >= cfg.run.rounds:
        raise ConfigError(f"{directory} already finished {first} rounds; extend it with "
                          f"run.rounds=<more than {first}>")
    if net.rank == 0 and resume:
        (directory / runner.CONFIG).write_text(to_toml(cfg))
        runner._truncate_metrics(directory, first)
    elif net.rank == 0:
        (directory / "clients.json").write_text(json.dumps(
            {"label_names": exp.label_names, "label_counts": exp.label_counts, "rho": exp.rho,
             "switch_interval": exp.fed.policy.interval}, indent=1))
    return exp, directory, first


def _exit(live: Liveness, code: int, why: str) -> None:
    """Leave without waiting on anybody: tell the others, flush, and exit the process."""
    live.announce_exit(why)
    live.stop()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(cfg: Config, resume: Path | None = None) -> int:
    """Run this process as one peer (rank and rendezvous from torchrun's environment)."""
    comm = torch.device("cpu")
    if backend(cfg) == "nccl":  # one GPU per peer process; transfers happen on it
        comm = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(comm)
    try:
        rank, world, store, live = join(backend(cfg), cfg.distributed.timeout_s)
        slices = exchange.client_slices(cfg.clients.n, world)
    except (RuntimeError, ValueError) as e:
        print(f"tadlora peer: could not join the peers: {e}", file=sys.stderr)
        return 1
    logging.basicConfig(format=f"[rank {rank}] %(levelname)s %(message)s", level=logging.INFO)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # torchrun stops peers this way
    net = Net(rank, slices, live, cfg.distributed.mode, cfg.distributed.diagnostics, comm)
    directory = resume
    try:
        t0 = time.time()
        exp, directory, first = _start(cfg, net, store, resume)
        _rounds(exp, net, directory, first)
        _finish(exp, net, directory, t0)
    except (PeerLost, ProtocolError) as e:
        log.error("%s. Stopping; the last checkpoint is kept: continue with `tadlora launch "
                  "--peers %d --resume %s` (under torchrun: the same command with `peer "
                  "--resume %s`)", e, world, directory, directory)
        _exit(live, PEER_LOST, f"stopped after it {e}")
    except KeyboardInterrupt:
        log.error("interrupted; the last checkpoint is kept")
        _exit(live, INTERRUPTED, "was interrupted")
    except (ConfigError, checkpoint.CheckpointError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        _exit(live, 2, f"failed: {e}")
    except Exception as e:
        log.exception("failed: %s", e)
        _exit(live, 1, f"failed: {type(e).__name__}: {e}")
    live.stop()
    dist.destroy_process_group()
    return 0
