"""switch_interval=online on real peers (gloo, 127.0.0.1): 2 peers (all_gather) and 3 (p2p)
give the simulator's estimates, spreads and T every round, under a topology.schedule, and the
estimate's bytes on the wire."""

import pytest

from tadlora.core import estimate
from tests.engines.peers import records, reference, tadlora
from tests.runs.test_loop import ONLINE

SAME = ("round", "phase", "switch_interval", "rho_estimate", "rho_estimate_spread", "rho_mc")


@pytest.mark.parametrize(("peers", "mode"), [(2, "all_gather"), (3, "p2p")])
def test_peers_give_the_simulators_estimates_and_t_under_a_schedule(tmp_path, peers, mode):
    argv = [*ONLINE, "distributed.timeout_s=30", f"run.out_dir={tmp_path}"]
    rc, _, err = tadlora("launch", "--peers", str(peers), *argv, "run.name=peers",
                         f"distributed.mode={mode}")
    assert rc == 0, err
    rc, _, err = tadlora("run", *argv, "run.name=sim")
    assert rc == 0, err
    peers, sim = records(tmp_path / "peers"), records(tmp_path / "sim")
    assert [{k: r[k] for k in SAME} for r in peers] == [{k: r[k] for k in SAME} for r in sim]
    assert [r["switch_interval"] for r in peers[39:41]] == [1, 4]  # the change at round 20
    width = 2 * 2 * 8 * 32 + estimate.WIDTH  # A and B of query and value (r 8, 32), probes
    for p, s in zip(peers, sim, strict=True):
        assert abs(p["train_loss"] - s["train_loss"]) < 1e-5
        # a decision round adds each client's proposal to every other client; otherwise the
        # estimate's share of a row: WIDTH of its values (the simulator: per neighbour)
        extra = estimate.decision_bytes(6) if (p["round"] + 1) % estimate.WINDOW == 0 else 0
        assert [b - extra for b in p["online_bytes"]] == [
            (b - extra) * estimate.WIDTH // width for b in p["bytes_sent"]]
        assert [b - extra for b in s["online_bytes"]] == [
            (b - extra) * estimate.WIDTH // width for b in s["bytes_sent"]]


def test_p2p_peers_that_lose_one_go_on_with_the_simulators_estimates_and_t(tmp_path):
    """on_peer_loss=continue under the online T: 3 p2p peers, rank 1 (clients 2, 3) killed in
    round 30; the survivors replay the estimate on resume and every record from then on,
    departed clients' proposals left out, is the simulator's with the same departures."""
    argv = [*ONLINE, "distributed.timeout_s=30", f"run.out_dir={tmp_path}", "run.name=peers",
            "distributed.mode=p2p", "distributed.on_peer_loss=continue"]
    rc, _, err = tadlora("launch", "--peers", "3", *argv, env={"TADLORA_FAULT": "kill:1:30"})
    assert rc == 0, err
    got = records(tmp_path / "peers")
    first = next(r["round"] for r in got if r.get("departed"))
    assert 20 < first <= 30 and all(r["departed"] == [2, 3] for r in got[first:])
    _, want, _ = reference(argv, departures=((first, (2, 3)),))
    assert [{k: r[k] for k in SAME} for r in got] == [{k: r[k] for k in SAME} for r in want]
    assert got[39]["switch_interval"] == 1 < got[40]["switch_interval"]  # the sparse graph
