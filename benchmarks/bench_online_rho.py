"""The online estimate of rho (core/estimate.py) against the Monte Carlo rho, for 10 clients.

Prints, per topology: the Monte Carlo rho and oracle T; at several warm-up lengths R0, the
worst and the mean absolute error over seeds of the clients' mean estimate; the share of rounds
after R0 = 80, 160 and 300 whose online T equals the oracle T; and how often a client's change
detector fires on a fixed graph model (false alarms, per client and window). Then the tracking
delay under a schedule, in both directions (ER p=0.5 -> 0.02 and 0.02 -> 0.5 at round 60):
rounds after the change until the online T leaves the old oracle T, until it is the new one
for good, and the share of the rounds from 2 windows after the change with the new T.

    .venv/bin/python benchmarks/bench_online_rho.py [--seeds 10] [--first-seed 0] [--rounds 300]
        [--mc-samples 2000]
"""

from __future__ import annotations

import argparse

import numpy as np

from tadlora.core import estimate, topology
from tadlora.core.methods import PhaseSchedule, switch_interval

N = 10
TOPOLOGIES = (("er", 0.5), ("er", 0.1), ("er", 0.02), ("pairs", 0.5), ("ring", 1.0))
WARMUPS = (40, 80, 160, 300, 600)
SHARES = (80, 160, 300)
CHANGES = ("0:0.5,60:0.02", "0:0.02,60:0.5")


def trajectory(mixing, seed: int, rounds: int, c: float = 1.0, resets: list | None = None):
    """Every round's (mean estimate over clients, T in force the next round); the number of
    clients whose detector fired at each window end is appended to `resets`."""
    sched = PhaseSchedule([(0, estimate.WARMUP_T)])
    est = estimate.OnlineEstimate(N, seed, c, range(N), sched)
    out = []
    for t in range(rounds):
        before = est.base_d.copy()
        estimate.step_all(est, t, mixing(t))
        if resets is not None and (t + 1) % estimate.WINDOW == 0:
            resets.append(int((~np.isclose(est.base_d, estimate.TRACE_FORGET * before)).sum()))
        out.append((estimate.summary(est.estimates())["rho_estimate"], sched.interval(t + 1)))
    return out


def accuracy(seeds: range, rounds: int, samples: int) -> None:
    warmups = sorted({r for r in WARMUPS if r < rounds} | {rounds})
    shares = [r for r in SHARES if r < rounds]
    print(f"topology | MC rho ({samples} samples) | oracle T | " + " | ".join(
        f"R0={r}: max err / mean err" for r in warmups) + " | online T = oracle T after R0=" +
        "/".join(map(str, shares)) + " | detector fires per client-window")
    for kind, p in TOPOLOGIES:
        rho = topology.process_rho(kind, N, p, samples=samples)
        oracle = switch_interval(rho, 1.0)
        resets: list[int] = []
        runs = [trajectory(topology.mixing_process(kind, N, s, p), s, rounds, resets=resets)
                for s in seeds]
        cells = []
        for r0 in warmups:
            err = np.abs(np.array([run[r0 - 1][0] for run in runs]) - rho)
            cells.append(f"{err.max():.3f} / {err.mean():.3f}")
        same = [np.mean([T == oracle for run in runs for _, T in run[r0:]]) for r0 in shares]
        name = kind if kind == "ring" else f"{kind} p={p}"
        print(f"{name} | {rho:.3f} | {oracle} | " + " | ".join(cells) + " | " +
              "/".join(f"{x:.1%}" for x in same) + f" | {sum(resets) / (N * len(resets)):.4f}")


def tracking(seeds: range, text: str, samples: int, rounds: int = 200) -> None:
    sched = topology.parse_schedule(text)
    (_, p_old), (at, p_new) = sched
    old = switch_interval(topology.process_rho("er", N, p_old, samples=samples), 1.0)
    new = switch_interval(topology.process_rho("er", N, p_new, samples=samples), 1.0)
    moved, settled, same = [], [], []
    for s in seeds:
        run = trajectory(topology.mixing_process("er", N, s, p_old, None, sched), s, rounds)
        same += [T == new for _, T in run[at + 2 * estimate.WINDOW:]]
        first = next((t + 1 for t in range(at, rounds) if run[t][1] != old), None)
        moved.append(None if first is None else first - at)
        first = next((t + 1 for t in range(at, rounds) if all(T == new for _, T in run[t:])),
                     None)
        settled.append(None if first is None else first - at)
    print(f"schedule {text} (oracle T {old} -> {new}), per seed, rounds after {at} until the "
          f"online T leaves {old}: {moved} (max {max(m or rounds for m in moved)}); until it is "
          f"{new} to round {rounds}: {settled}; T = {new} in {np.mean(same):.1%} of the rounds "
          f"{at + 2 * estimate.WINDOW + 1}-{rounds}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--mc-samples", type=int, default=2000,
                    help="Monte Carlo samples of the reference rho (2000: what auto uses)")
    a = ap.parse_args()
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    accuracy(seeds, a.rounds, a.mc_samples)
    for text in CHANGES:
        tracking(seeds, text, a.mc_samples)


if __name__ == "__main__":
    main()
