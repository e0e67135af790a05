"""`tadlora launch`: start N local peers as processes, watch them, report how they ended.

The launcher hosts the rendezvous store (as torchrun's agent does), so the store outlives any
peer, and it is the first to see a peer exit: it writes the exit into the store at once, so the
surviving peers name the lost one immediately instead of after the heartbeat timeout. Peers
that are still running once the others are gone (a frozen peer) are killed after the timeout.
On a failure, the first problem it reports is one line naming the peer that failed first, its
round and its error; every peer's full output is in RUN_DIR/logs/rank-K.log (peer_output.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from .exchange import client_slices
from .liveness import AGENT_STORE_ENV, ROUND_KEY
from .peer_output import Ending, Forwarder, cause, describe, keep_logs, summary

POLL = 0.1  # seconds between looks at the peer processes
GRACE = 2.0  # extra seconds for survivors to write their checkpoint and exit


@dataclass
class Outcome:
    code: int  # 0: every peer finished; 3: a peer was lost (resumable); else a peer's error code
    directory: Path | None
    problems: list[str] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # ranks that crashed, were killed or froze
    peers: int = 0  # peers in the last group started


def peer_env(rank: int, world: int, port: int, restart: int = 0) -> dict[str, str]:
    """A peer's environment, as torchrun's agent sets it (restart: the group's restart count)."""
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONUNBUFFERED="1", TORCHELASTIC_RESTART_COUNT=str(restart))
    env[AGENT_STORE_ENV] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    return env


def _read(store: dist.Store, key: str) -> str | None:
    try:
        return store.get(key).decode(errors="replace") if store.check([key]) else None
    except Exception:  # best effort: the summary then says less
        return None


def _ending(store: dist.Store, k: int, code: int, killed: bool = False) -> Ending:
    """Peer k's exit, with what it announced and the round it was in (read from the store)."""
    t = _read(store, f"{ROUND_KEY}/{k}")
    return Ending(k, code, _read(store, f"exit/{k}"), int(t) if t else None, killed)


def _watch(procs: list[subprocess.Popen], store: dist.Store, timeout: float
           ) -> tuple[list[int], list[str], list[Ending]]:
    """Wait for every peer, publishing each exit at once. After a failure, peers still running
    `timeout` later, or left alone for GRACE seconds, are frozen: they are killed."""
    codes: list[int | None] = [None] * len(procs)
    failed_at = last_exit = None
    problems: list[str] = []
    endings: list[Ending] = []
    while any(c is None for c in codes):
        for k, p in enumerate(procs):
            if codes[k] is None and p.poll() is not None:
                codes[k], last_exit = p.returncode, time.monotonic()
                if p.returncode != 0:
                    endings.append(_ending(store, k, p.returncode))
                    store.set(f"exit/{k}", describe(p.returncode))
                    failed_at = failed_at or last_exit
                    problems.append(f"rank {k} {describe(p.returncode)}")
        running = [k for k, c in enumerate(codes) if c is None]
        now = time.monotonic()
        if failed_at is not None and running and (
                now - failed_at > timeout + GRACE or (len(running) == 1
                                                      and now - last_exit > GRACE)):
            for k in running:
                procs[k].kill()
                codes[k] = procs[k].wait()
                endings.append(_ending(store, k, codes[k], killed=True))
                problems.append(f"rank {k} did not stop on its own (frozen?) and was killed")
        time.sleep(POLL)
    return [c or 0 for c in codes], problems, endings


def launch(peers: int, args: list[str], timeout: float, out_dir: str | Path,
           resume: Path | None = None, on_loss: str = "stop", n_clients: int = 0) -> Outcome:
    """Run `tadlora peer` in `peers` local processes on 127.0.0.1 with `args` (config and
    overrides, or run.* overrides with `resume`); `timeout` is their distributed.timeout_s
    and `out_dir` their run.out_dir. on_loss="continue" (distributed.on_peer_loss): when
    peers crash, are killed or freeze, the survivors are started again as a smaller group,
    as torchrun's agent restarts a worker group, from the newest checkpoint slices, and the
    lost peers' clients (of `n_clients`) depart from that round (core/membership.py)."""
    out, restarts = _group(peers, args, timeout, out_dir, resume, 0), 0
    while on_loss == "continue" and out.directory is not None and 0 < len(out.lost) < peers:
        gone = [c for k in out.lost for c in client_slices(n_clients, peers)[k]]
        peers, restarts = peers - len(out.lost), restarts + 1
        for problem in [*out.problems, f"continuing with {peers} peer(s) without clients "
                                       f"{gone} (lost rank(s) {out.lost})"]:
            sys.stderr.write(f"tadlora launch: {problem}\n")
        out = _group(peers, ["--depart", ",".join(map(str, gone))], timeout, out_dir,
                     out.directory, restarts)
    return out


def _group(peers: int, args: list[str], timeout: float, out_dir: str | Path,
           resume: Path | None, restart: int) -> Outcome:
    """One group of peers, from start to its last exit."""
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=timeout))
    ours = dist.PrefixStore("tadlora/0", store)
    cmd = [sys.executable, "-m", "tadlora.cli", "peer",
           *(["--resume", str(resume)] if resume else []), *args]
    logs = Path(tempfile.mkdtemp(prefix="tadlora-launch-"))
    procs = [subprocess.Popen(cmd, env=peer_env(k, peers, store.port, restart),
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for k in range(peers)]
    copies = [Forwarder(k, p.stdout, logs / f"rank-{k}.log") for k, p in enumerate(procs)]
    try:
        codes, problems, endings = _watch(procs, ours, timeout)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    directory = resume
    if directory is None and ours.check(["run_name"]) and ours.get("run_name"):
        directory = Path(out_dir) / ours.get("run_name").decode()
    for c in copies:
        c.join()
    where = keep_logs(logs, directory)
    first = cause(endings)
    if first is not None:
        sys.stderr.write(Forwarder.new_line())  # end a progress bar left open
        plain = f"rank {first.rank} {describe(first.code)}"  # said better by the summary
        problems = [summary(first), *(p for p in problems if p != plain),
                    f"every peer's full output: {where}/rank-K.log"]
    lost = any(c == 3 or c < 0 for c in codes)
    return Outcome(3 if lost else max(codes), directory, problems, lost_ranks(codes), peers)


def lost_ranks(codes: list[int]) -> list[int]:
    """The peers lost to a crash, a signal or a freeze (exit 1 or < 0) while every other peer
    stopped because of them (exit 3); [] for anything else (an input error hits every peer)."""
    crashed = [k for k, c in enumerate(codes) if c == 1 or c < 0]
    return crashed if all(c == 3 for k, c in enumerate(codes) if k not in crashed) else []
