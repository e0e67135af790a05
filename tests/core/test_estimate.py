"""The online estimate of rho and the agreement on one T (core/estimate.py)."""

import numpy as np
import pytest

from tadlora.core import estimate, topology
from tadlora.core.estimate import WINDOW, OnlineEstimate, replay, step_all
from tadlora.core.methods import PhaseSchedule, switch_interval

N = 10


def fresh(seed=0, held=range(N), c=1.0):
    return OnlineEstimate(N, seed, c, held, PhaseSchedule([(0, estimate.WARMUP_T)]))


def run(mixing, rounds, seed=0):
    est = fresh(seed)
    for t in range(rounds):
        step_all(est, t, mixing(t))
    return est


def test_probes_start_with_zero_mean_and_mixing_keeps_it():
    z = estimate.probe_start(N, 3, 7)
    assert z.shape == (N, estimate.PROBES) and abs(z.astype(float).sum(0)).max() < 1e-6
    w = topology.mixing_process("er", N, 0, 0.3)(5)
    assert abs(estimate.mix_rows(w, z).astype(float).sum(0)).max() < 1e-6


R0 = 160  # the stated warm-up
SEEDS = range(5)
TOPOLOGIES = [("er", 0.5), ("er", 0.1), ("er", 0.02), ("pairs", 0.5), ("ring", 1.0)]


@pytest.mark.parametrize(("kind", "p"), TOPOLOGIES)
def test_after_the_warm_up_the_estimate_is_near_the_monte_carlo_rho_and_t_is_the_oracle(kind,
                                                                                       p):
    """Seeds 0-4, every round from R0 = 160 to 200 (benchmarks/bench_online_rho.py measures
    30 seeds). ER p = 0.02: rho = 0.914 (2000 samples; 0.909 with 20000) is near the rounding
    edge of T = 3 and 4 (rho = 0.918), so T may be 4 in a few rounds."""
    rho = topology.process_rho(kind, N, p)
    oracle, same = switch_interval(rho, 1.0), []
    for seed in SEEDS:
        est, mixing = fresh(seed), topology.mixing_process(kind, N, seed, p)
        for t in range(200):
            step_all(est, t, mixing(t))
            if t + 1 >= R0:
                assert abs(np.nanmean(est.estimates()) - rho) < 0.05, (seed, t)
                same.append(est.schedule.interval(t + 1) == oracle)
    assert np.mean(same) >= (0.9 if p == 0.02 else 1.0)


def test_the_trace_share_of_a_row_and_the_row_gate():
    """A client's q_i sums to tr(W^T W) - 1 over the clients; on the ring no row ever changes,
    so every client reports the probe estimate (the trace is the ring's mean mode, 0.26)."""
    w = topology.mixing_process("er", N, 0, 0.3)(4)
    est = fresh()
    est.absorb(0, w, est.payload())
    assert est.u.astype(float).sum() == pytest.approx(np.trace(w.T @ w) - 1, abs=1e-5)
    ring = run(topology.mixing_process("ring", N, 0), 3 * WINDOW)
    assert not ring.moving.any() and not ring.changed.any()
    assert abs(np.nanmean(ring.estimates()) - topology.process_rho("ring", N)) < 0.05
    assert abs(np.nanmean(ring._trace(ring.u, np.full(N, ring.d))) - 0.26) < 0.02


@pytest.mark.parametrize("text", ["0:0.5,60:0.02", "0:0.02,60:0.5"])
def test_the_t_follows_a_change_at_a_window_start_within_one_window(text):
    """Stated bound: a change at a window's start is in T one window later (the detector
    fires at that window's end); within two for a change inside a window."""
    sched = topology.parse_schedule(text)
    (_, p0), (_, p1) = sched
    before = switch_interval(topology.process_rho("er", N, p0), 1.0)
    after = switch_interval(topology.process_rho("er", N, p1), 1.0)
    assert before != after
    for seed in SEEDS:
        est = run(topology.mixing_process("er", N, seed, p0, None, sched), 120, seed)
        assert est.schedule.interval(60 + WINDOW) != before
        assert abs(est.schedule.interval(60 + WINDOW) - after) <= 1  # 3 or 4 for p = 0.02
        assert abs(est.schedule.interval(120) - after) <= (p1 == 0.02)


def test_a_reset_changes_only_the_clients_own_estimate_never_the_gossiped_values(monkeypatch):
    sched = topology.parse_schedule("0:0.5,60:0.02")
    mixing = topology.mixing_process("er", N, 0, 0.5, None, sched)
    with_reset = run(mixing, 100)
    monkeypatch.setattr(estimate, "JUMP", np.inf)  # no detector
    without = run(mixing, 100)
    assert np.array_equal(with_reset.payload(), without.payload())
    assert (with_reset.base_d > 0).all() and (without.base_d == 0).all()
    rho = topology.process_rho("er", N, 0.02)
    assert abs(np.nanmean(with_reset.estimates()) - rho) < 0.05
    assert np.nanmean(without.estimates()) < rho - 0.1  # the dense past still weighs


def test_peers_holding_slices_compute_the_simulators_rows_bit_for_bit():
    mixing = topology.mixing_process("er", N, 1, 0.2)
    full = fresh(1)
    halves = [fresh(1, range(0, 4)), fresh(1, range(4, N))]
    for t in range(3 * WINDOW):
        w = mixing(t)
        every = np.concatenate([h.payload() for h in halves])
        due = [h.absorb(t, w[h.held.start:h.held.stop], every) for h in halves]
        if all(due):  # as the peers' all-reduce: every client's proposal to every peer
            proposals = np.concatenate([h.proposals() for h in halves])
            for h in halves:
                h.decide(t, proposals)
        step_all(full, t, w)
        assert np.array_equal(np.concatenate([h.payload() for h in halves]), full.payload())
    assert halves[0].schedule.segments == full.schedule.segments


def test_the_t_is_the_lower_median_of_the_proposals_and_one_outlier_cannot_move_it():
    est = fresh()
    est.decide(WINDOW - 1, np.array([2, 2, 9, 2, 3, 2, 40, 2, 2, 2]))
    assert est.schedule.interval(WINDOW) == 2
    est.decide(2 * WINDOW - 1, np.array([0] * N))  # no client has evidence: T stays
    assert est.schedule.interval(2 * WINDOW) == 2
    est.decide(3 * WINDOW - 1, np.array([3, 4]))  # lower median of an even count
    assert est.schedule.segments == [(0, 1), (WINDOW, 2), (3 * WINDOW, 3)]


def test_a_resumed_estimate_replays_to_the_live_state():
    mixing = topology.mixing_process("er", N, 2, 0.1)
    live = run(mixing, 55, seed=2)
    resumed = OnlineEstimate(N, 2, 1.0, range(3, 7), PhaseSchedule([(0, 1)]))
    replay(resumed, 55, mixing)
    assert np.array_equal(resumed.payload(), live.payload()[3:7])
    assert np.array_equal(resumed.estimates(), live.estimates()[3:7], equal_nan=True)
    assert resumed.schedule.segments == live.schedule.segments and resumed.next_round == 55
    with pytest.raises(ValueError, match="asked to absorb round 3"):
        resumed.absorb(3, mixing(3)[3:7], live.payload())


def test_summary_and_bytes():
    assert estimate.summary(np.array([np.nan, np.nan])) == {"rho_estimate": None,
                                                            "rho_estimate_spread": None}
    s = estimate.summary(np.array([0.2, np.nan, 0.4]))
    assert s["rho_estimate"] == pytest.approx(0.3)
    assert s["rho_estimate_spread"] == pytest.approx(0.1)
    assert estimate.decision_bytes(N) == 36


def test_departed_clients_propose_nothing_and_a_replay_knows_it():
    """The held rows `silent` (departed clients) send a proposal of 0; a replay given the same
    departures rebuilds the live schedule, one without them does not have to."""
    mixing = topology.mixing_process("er", N, 1, 0.3)
    silent = lambda t: [0, 1, 2, 3, 4, 5, 6, 7] if t >= WINDOW - 1 else []  # noqa: E731
    live, sent = fresh(1), []
    for t in range(2 * WINDOW):
        estimate.online_round(live, t, mixing(t), live.payload(),
                              lambda p: sent.append(p.copy()) or p, silent(t))
    assert len(sent) == 2 and all((p[:8] == 0).all() and (p[8:] > 0).all() for p in sent)
    assert live.schedule.interval(WINDOW) == min(sent[0][8:])  # lower median of two
    resumed = OnlineEstimate(N, 1, 1.0, range(2, 5), PhaseSchedule([(0, 1)]))
    replay(resumed, 2 * WINDOW, mixing, silent)
    assert resumed.schedule.segments == live.schedule.segments
