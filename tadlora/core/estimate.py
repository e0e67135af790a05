"""The online estimate of the graph process's contraction rho, and the agreement on one T.

Estimator (every client, from what it observes). Each client holds PROBES probe values, mixed
with the same W(t) as its factors (they travel in the same row). Every WINDOW rounds the probes
restart from a zero-mean draw (every client draws the same (n, PROBES) matrix from (seed,
window) and keeps its own row minus the column means: the clients' mean is 0, and mixing with a
doubly stochastic W keeps it 0). A client's own squared probe norm e_i(t) = |z_i(t)|^2 is then
its squared disagreement with the mean, and sum_i e_i(t+1) / sum_i e_i(t) = rho in expectation
for an exchangeable graph (E[W^T W] - J = rho (I - J)); for a static graph the ratio tends to
its slowest mode, the same rho. A client sums its one-round transitions of the window (after
BURN_IN rounds, while e_i is above FLOOR of its start: float32 noise) into (a_i, b_i) and, at
the window's end, adds them to a second pair of gossiped values s_i <- FORGET s_i + (a_i, b_i),
also mixed with W(t) every round. s_i tends to the clients' mean, so a client's estimate
rho_i = s_i[0] / s_i[1] is the pooled ratio of every client's transitions.

Agreement. T changes only at the end of a window (rounds every client can compute: t + 1 a
multiple of WINDOW). There, every client with evidence proposes T_i = switch_interval(rho_i, c)
from its estimate before adding its new window, the proposals (one integer per client) go to
every client, and every client takes the same lower median of them, in force from the next
round. A client whose estimate differs (noise, a bad row) moves the median by at most one rank,
never the phase schedule of the others: all clients switch phase in the same rounds. With no
proposal at all the T in force stays. Before the first decision (round 2 WINDOW - 1), T is
WARMUP_T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .methods import PhaseSchedule, switch_interval

WINDOW = 20  # rounds between probe restarts and decisions
PROBES = 2  # probe values per client
BURN_IN = 4  # rounds of a window before its transitions count (a static graph's fast modes)
FLOOR = 1e-9  # transitions from e_i below FLOOR x its window start are float32 noise
FORGET = 0.9  # weight of the past windows in the gossiped sums (a memory of ~10 windows)
WARMUP_T = 1  # T before the first decision
WIDTH = PROBES + 2  # float32 values per client on the wire
_STREAM = 11  # the probes' random stream


def probe_start(n: int, seed: int, window: int) -> np.ndarray:
    """The zero-mean probes (n, PROBES) float32 of every client at the start of `window`."""
    g = np.random.default_rng([seed, window, _STREAM]).standard_normal((n, PROBES))
    return (g - g.mean(axis=0)).astype(np.float32)


def lower_median(values: list[int]) -> int:
    return sorted(values)[(len(values) - 1) // 2]


@dataclass
class OnlineEstimate:
    """The estimator's state for the clients `held` (rows), and the T in force."""

    n: int
    seed: int
    c: float
    held: range
    schedule: PhaseSchedule
    next_round: int = 0  # the round whose mixing is absorbed next
    z: np.ndarray = field(init=False)  # (h, PROBES) float32 probes
    s: np.ndarray = field(init=False)  # (h, 2) float32 gossiped sums
    acc: np.ndarray = field(init=False)  # (h, 2) float64 this window's own transitions
    e0: np.ndarray = field(init=False)  # (h,) e_i at the window start
    e: np.ndarray = field(init=False)  # (h,) e_i now

    def __post_init__(self) -> None:
        self.s = np.zeros((len(self.held), 2), np.float32)
        self._restart(0)

    def _restart(self, window: int) -> None:
        self.z = probe_start(self.n, self.seed, window)[self.held.start:self.held.stop]
        self.e = self.e0 = _sq(self.z)
        self.acc = np.zeros((len(self.held), 2))

    def payload(self) -> np.ndarray:
        """This round's values of the clients held, (h, WIDTH) float32: probes, then sums."""
        return np.concatenate([self.z, self.s], axis=1)

    def estimates(self) -> np.ndarray:
        """Every held client's rho_i (NaN while it has no evidence)."""
        num, den = self.s[:, 0].astype(np.float64), self.s[:, 1].astype(np.float64)
        return np.clip(np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0), 0, 1)

    def proposals(self) -> np.ndarray:
        """The held clients' proposed T at a decision round, (h,) int32: 0 (none) from a client
        without evidence, or whose estimate says the graph never mixes."""
        return np.array([switch_interval(r, self.c) if np.isfinite(r) and r < 1 else 0
                         for r in self.estimates()], dtype=np.int32)

    def absorb(self, t: int, w_rows: np.ndarray, every: np.ndarray) -> bool:
        """Round t's mixing: `w_rows` (h, n) the weights the held clients applied, `every`
        (n, WIDTH) every client's payload (rows with zero weight may be anything finite).
        Returns whether t ends a window with a decision due (`decide` next)."""
        if t != self.next_round:
            raise ValueError(f"estimator at round {self.next_round}, asked to absorb round {t}")
        mixed = mix_rows(w_rows, every)
        self.z, self.s = mixed[:, :PROBES], mixed[:, PROBES:]
        before, self.e = self.e, _sq(self.z)
        step = t % WINDOW + 1  # mixings done in this window
        count = (step - 1 >= BURN_IN) & (before > FLOOR * self.e0)
        self.acc += np.stack([np.where(count, self.e, 0), np.where(count, before, 0)], 1)
        self.next_round = t + 1
        return step == WINDOW

    def decide(self, t: int, proposals: np.ndarray) -> None:
        """End of window: every client's proposals (n,) -> the T from round t + 1 (the lower
        median of those > 0); then add this window's transitions to the gossiped sums and
        restart the probes."""
        if (given := [int(p) for p in proposals if p > 0]):
            self.schedule.set_from(t + 1, lower_median(given))
        self.s = (FORGET * self.s.astype(np.float64) + self.acc).astype(np.float32)
        self._restart((t + 1) // WINDOW)



def mix_rows(w_rows: np.ndarray, every: np.ndarray) -> np.ndarray:
    """(h, n) x (n, WIDTH) -> (h, WIDTH) float32, each row summed over the n clients in the
    same order whatever rows are asked for (a peer's rows equal the simulator's, bit for bit)."""
    return (w_rows[:, :, None] * every.astype(np.float64)[None]).sum(axis=1).astype(np.float32)


def _sq(z: np.ndarray) -> np.ndarray:
    return (z.astype(np.float64) ** 2).sum(axis=1)


Share = Callable[[np.ndarray], np.ndarray]  # held clients' proposals -> every client's (n,)


def online_round(est: OnlineEstimate, t: int, w_rows: np.ndarray, every: np.ndarray,
                 share: Share) -> bool:
    """Round t on the held clients: absorb the mixing and, at a window's end, decide on the
    proposals that `share` brings from every client. Returns whether proposals were sent."""
    due = est.absorb(t, w_rows, every)
    if due:
        est.decide(t, share(est.proposals()))
    return due


def decision_bytes(n: int) -> int:
    """What a client sends in a decision round: its int32 proposal to every other client."""
    return 4 * (n - 1)


def summary(estimates: np.ndarray) -> dict:
    """A round's record of every client's estimate: mean and spread (std) over the clients
    with evidence (None before any)."""
    ok = estimates[np.isfinite(estimates)]
    return {"rho_estimate": float(ok.mean()) if ok.size else None,
            "rho_estimate_spread": float(ok.std()) if ok.size else None}


def step_all(est: OnlineEstimate, t: int, w: np.ndarray) -> None:
    """Round t for an estimator holding every client (replays, studies)."""
    online_round(est, t, w, est.payload(), lambda proposals: proposals)


def replay(est: OnlineEstimate, upto: int, mixing: Callable[[int], np.ndarray]) -> None:
    """Bring `est` to round `upto` (a resumed run): the estimate depends only on the graphs,
    so every client's state is recomputed from round 0 and the held rows kept."""
    if est.next_round >= upto:
        return
    full = OnlineEstimate(est.n, est.seed, est.c, range(est.n), est.schedule)
    est.schedule.reset()
    for t in range(upto):
        step_all(full, t, mixing(t))
    rows = slice(est.held.start, est.held.stop)
    est.z, est.s, est.acc = full.z[rows], full.s[rows], full.acc[rows]
    est.e, est.e0, est.next_round = full.e[rows], full.e0[rows], upto
