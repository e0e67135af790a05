"""Joining the group of peers, and noticing when a peer is gone.

Every peer beats a counter in the rendezvous store (a TCPStore hosted by `tadlora launch` or
by torchrun's agent) from a background thread. Before a collective, a peer waits at a store
barrier until every peer has arrived; while it waits it checks the others: a peer whose
counter has not moved for `timeout` seconds, or whose exit was announced (by the launcher, or
by the peer itself on its way out), is lost, and PeerLost names it. So a slow but alive peer is
waited for, a dead or frozen one is named within the timeout, and the collectives themselves
(whose own timeout is the same) only ever run with everybody present.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

AGENT_STORE_ENV = "TADLORA_AGENT_STORE"  # "1": the launcher hosts the store (as torchrun does)
CHECK_EVERY = 0.25  # seconds between liveness checks while waiting
STARTUP = 120.0  # seconds a peer may take to start beating at all (imports, a loaded machine)
# distributed.on_peer_loss: what the survivors do. stop: keep every finished round in the
# checkpoint and exit (code 3), naming the lost rank; continue: the same, and `tadlora launch`
# starts them again without the lost peers' clients (engines/launch.py, core/membership.py)
ON_PEER_LOSS = ("stop", "continue")
ROUND_KEY = "round"  # round/K: the round rank K is in (Liveness.at)


class PeerLost(RuntimeError):
    """A peer crashed, was killed or stopped answering; `rank` is None if it is unknown."""

    def __init__(self, rank: int | None, why: str) -> None:
        who = f"rank {rank}" if rank is not None else "a peer"
        super().__init__(f"lost {who}: {why}")
        self.rank = rank


class Liveness:
    """Heartbeats, exit notices and barriers over the rendezvous store (keys under a prefix)."""

    def __init__(self, store: dist.Store, rank: int, world: int, timeout: float) -> None:
        self.store, self.rank, self.world, self.timeout = store, rank, world, timeout
        self.beat_every = min(1.0, timeout / 5)
        self._seen = {k: (-1, time.monotonic()) for k in range(world)}
        self._barriers: list[str] = []
        self._stop = threading.Event()
        beat_store = store.clone()  # its own connection: the thread never shares a socket
        self._thread = threading.Thread(target=self._beat, args=(beat_store,), daemon=True)
        self._thread.start()

    def _beat(self, store: dist.Store) -> None:
        while not self._stop.is_set():
            try:
                store.add(f"beat/{self.rank}", 1)
            except Exception:  # the store is gone: the main thread will find out and say so
                return
            self._stop.wait(self.beat_every)

    def stop(self) -> None:
        self._stop.set()

    def at(self, t: int) -> None:
        """Note in the store the round this peer is in (the launcher names it on a failure)."""
        self.store.set(f"{ROUND_KEY}/{self.rank}", str(t))

    def announce_exit(self, why: str) -> None:
        """Tell the others (best effort) why this peer leaves, so they need not time out."""
        try:
            self.store.set(f"exit/{self.rank}", why)
            # a TCPStore set is not answered: a query on the same connection makes sure the
            # store has it before this peer goes (and before another peer looks)
            self.store.check([f"exit/{self.rank}"])
        except Exception:
            pass

    def check(self, ranks: list[int] | None = None) -> None:
        """Raise PeerLost for the first of `ranks` (default: all others) that announced its
        exit or whose heartbeat has been still for longer than the timeout."""
        now = time.monotonic()
        for k in ranks if ranks is not None else range(self.world):
            if k == self.rank:
                continue
            if self.store.check([f"exit/{k}"]):
                raise PeerLost(k, self.store.get(f"exit/{k}").decode(errors="replace"))
            beats = self.store.add(f"beat/{k}", 0)
            if beats != self._seen[k][0]:
                self._seen[k] = (beats, now)
            limit = self.timeout if beats else max(self.timeout, STARTUP)
            if now - self._seen[k][1] > limit:
                raise PeerLost(k, f"no heartbeat for {now - self._seen[k][1]:.0f} s "
                                  f"(timeout {limit:g} s): crashed, frozen or never started")

    def barrier(self, tag: str) -> float:
        """Wait until every peer has reached `tag`; returns the seconds waited."""
        t0 = time.perf_counter()
        self.store.set(f"at/{tag}/{self.rank}", "1")
        self._barriers.append(tag)
        if len(self._barriers) > 2:  # every peer is past it once anyone reaches the next one
            self.store.delete_key(f"at/{self._barriers.pop(0)}/{self.rank}")
        keys = [f"at/{tag}/{k}" for k in range(self.world)]
        pause, next_check = 0.0005, t0 + CHECK_EVERY
        while not self.store.check(keys):
            if time.perf_counter() >= next_check:
                self.check([k for k in range(self.world) if not self.store.check([keys[k]])])
                next_check = time.perf_counter() + CHECK_EVERY
            time.sleep(pause)
            pause = min(2 * pause, 0.005)
        return time.perf_counter() - t0

    def explain(self, error: Exception) -> PeerLost:
        """After a failed transfer: find which peer is gone (waiting up to the timeout)."""
        deadline = time.monotonic() + self.timeout + 2 * self.beat_every
        while time.monotonic() < deadline:
            try:
                self.check()
            except PeerLost as lost:
                return lost
            except Exception:  # the store itself is gone: its host (launcher/agent) died
                return PeerLost(None, f"the rendezvous store stopped answering ({error})")
            time.sleep(CHECK_EVERY)
        return PeerLost(None, f"a transfer failed and no peer could be blamed: {error}")

    def guard(self, fn: Callable[[], object]) -> object:
        """Run a transfer; turn a transport failure into PeerLost naming the lost peer."""
        try:
            return fn()
        except PeerLost:
            raise
        except (RuntimeError, dist.DistError) as e:
            raise self.explain(e) from e


def env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip().isdigit():
        raise RuntimeError(f"environment variable {name} is not set: run peers with "
                           "`tadlora launch --peers N ...` or under torchrun")
    return int(value)


def join(backend: str, timeout: float) -> tuple[int, int, dist.Store, Liveness]:
    """Join the process group described by torchrun's environment variables (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Returns rank, world size, store and liveness."""
    rank, world = env_int("RANK"), env_int("WORLD_SIZE")
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), env_int("MASTER_PORT")
    hosted = (os.environ.get(AGENT_STORE_ENV) == "1"
              or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True")
    base = dist.TCPStore(host, port, world, is_master=rank == 0 and not hosted,
                         timeout=timedelta(seconds=max(timeout, STARTUP)), wait_for_workers=False)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"tadlora/{restart}", base)
    live = Liveness(store, rank, world, timeout)
    live.barrier("joined")  # peers start at different speeds; the group's timeout is for later
    dist.init_process_group(backend, store=dist.PrefixStore(f"pg/{restart}", base), rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout))
    return rank, world, store, live
