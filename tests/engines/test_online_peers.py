"""switch_interval=online on real peers (gloo, 127.0.0.1): 2 peers (all_gather), and 3 (p2p)
that lose one, give the simulator's estimates, spreads and T every round, under a
topology.schedule, and the estimate's bytes on the wire."""

from tadlora.core import estimate
from tests.engines.peers import records, reference, tadlora
from tests.runs.test_loop import ONLINE

SAME = ("round", "phase", "switch_interval", "rho_estimate", "rho_estimate_spread", "rho_mc")
WIDTH = 2 * 2 * 8 * 32 + estimate.WIDTH  # a row: A and B of query and value (r 8, 32), probes


def check_online(got, want):
    """The peers' records carry the simulator's estimates and T; in both, the estimate's bytes
    are its share of a row: WIDTH of its values (the simulator: per neighbour), and a decision
    round adds each client's proposal to every other client."""
    assert [{k: r[k] for k in SAME} for r in got] == [{k: r[k] for k in SAME} for r in want]
    for p, s in zip(got, want, strict=True):
        assert abs(p["train_loss"] - s["train_loss"]) < 1e-5
        for r in (p, s):
            extra = estimate.decision_bytes(6) if (r["round"] + 1) % estimate.WINDOW == 0 else 0
            assert [b - extra for b in r["online_bytes"]] == [
                (b - extra) * estimate.WIDTH // WIDTH for b in r["bytes_sent"]], r["round"]


def test_all_gather_peers_give_the_simulators_estimates_and_t_under_a_schedule(tmp_path):
    argv = [*ONLINE, "distributed.timeout_s=30", f"run.out_dir={tmp_path}", "run.name=peers"]
    rc, _, err = tadlora("launch", "--peers", "2", *argv, "distributed.mode=all_gather")
    assert rc == 0, err
    got = records(tmp_path / "peers")
    assert [r["switch_interval"] for r in got[39:41]] == [1, 4]  # the change at round 20
    check_online(got, reference(argv)[1])


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
    check_online(got, reference(argv, departures=((first, (2, 3)),))[1])
    assert got[39]["switch_interval"] == 1 < got[40]["switch_interval"]  # the sparse graph
