"""Liveness over a rendezvous store: exits announced, heartbeats gone still, barriers."""

import threading
import time

import pytest
import torch.distributed as dist

from tadlora.engines.liveness import Liveness, PeerLost


@pytest.fixture
def pair():
    master = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False)
    other = dist.TCPStore("127.0.0.1", master.port, None, is_master=False,
                          wait_for_workers=False)
    lives = [Liveness(dist.PrefixStore("t", s), k, 2, timeout=0.6)
             for k, s in enumerate((master, other))]
    yield lives
    for live in lives:
        live.stop()


def test_an_announced_exit_is_named(pair):
    a, b = pair
    a.check()  # both alive
    b.announce_exit("crashed in round 3")
    with pytest.raises(PeerLost, match="rank 1: crashed in round 3"):
        a.check()


def test_a_still_heartbeat_is_a_lost_peer(pair):
    a, b = pair
    for _ in range(10):  # alive: its counter moves
        a.check()
        time.sleep(0.1)
    b.stop()
    t0 = time.monotonic()
    with pytest.raises(PeerLost, match="rank 1: no heartbeat"):
        while time.monotonic() - t0 < 5:
            a.check()
            time.sleep(0.05)
    assert time.monotonic() - t0 >= 0.6  # named once still for the timeout, not before


def test_barrier_waits_for_everybody(pair):
    a, b = pair
    done = []
    t = threading.Thread(target=lambda: done.append(a.barrier("x")))
    t.start()
    time.sleep(0.2)
    assert not done
    b.barrier("x")
    t.join(5)
    assert done and done[0] >= 0.1
