"""`tadlora launch`: start N local peers as processes, watch them, report how they ended.

The launcher hosts the rendezvous store (as torchrun's agent does), so the store outlives any
peer, and it is the first to see a peer exit: it writes the exit into the store at once, so the
surviving peers name the lost one immediately instead of after the heartbeat timeout. Peers
that are still running once the others are gone (a frozen peer) are killed after the timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from .liveness import AGENT_STORE_ENV

POLL = 0.1  # seconds between looks at the peer processes
GRACE = 2.0  # extra seconds for survivors to write their checkpoint and exit


@dataclass
class Outcome:
    code: int  # 0: every peer finished; 3: a peer was lost (resumable); else a peer's error code
    directory: Path | None
    problems: list[str] = field(default_factory=list)


def describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return {3: "stopped after losing a peer", 130: "was interrupted"}.get(
        code, f"exited with code {code}")


def peer_env(rank: int, world: int, port: int) -> dict[str, str]:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONUNBUFFERED="1")
    env[AGENT_STORE_ENV] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    return env


def _watch(procs: list[subprocess.Popen], store: dist.Store, timeout: float
           ) -> tuple[list[int], list[str]]:
    """Wait for every peer, publishing each exit at once. After a failure, peers still running
    `timeout` later, or left alone for GRACE seconds, are frozen: they are killed."""
    codes: list[int | None] = [None] * len(procs)
    failed_at = last_exit = None
    problems: list[str] = []
    while any(c is None for c in codes):
        for k, p in enumerate(procs):
            if codes[k] is None and p.poll() is not None:
                codes[k], last_exit = p.returncode, time.monotonic()
                if p.returncode != 0:
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
                problems.append(f"rank {k} did not stop on its own (frozen?) and was killed")
        time.sleep(POLL)
    return [c or 0 for c in codes], problems


def launch(peers: int, args: list[str], timeout: float, out_dir: str | Path,
           resume: Path | None = None) -> Outcome:
    """Run `tadlora peer` in `peers` local processes on 127.0.0.1 with `args` (config and
    overrides, or run.* overrides with `resume`); `timeout` is their distributed.timeout_s
    and `out_dir` their run.out_dir."""
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=timeout))
    ours = dist.PrefixStore("tadlora/0", store)
    cmd = [sys.executable, "-m", "tadlora.cli", "peer",
           *(["--resume", str(resume)] if resume else []), *args]
    procs = [subprocess.Popen(cmd, env=peer_env(k, peers, store.port)) for k in range(peers)]
    try:
        codes, problems = _watch(procs, ours, timeout)
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
    lost = any(c == 3 or c < 0 for c in codes)
    return Outcome(3 if lost else max(codes), directory, problems)
