"""The online estimate of the graph process's contraction rho, and the agreement on one T.

Estimator (every client, from what it observes; row-gated trace). For an exchangeable random
graph (ER, pairs) E[W^T W] - J = rho (I - J), so rho = (E[tr(W^T W)] - 1) / (n - 1). A client's
share of the trace comes from its OWN row of W(t), with no communication: q_i(t) = sum_j
w_ij(t)^2 - 1/n. Each round it mixes a running sum u_i with the same W(t) as its factors and adds
q_i(t); every WINDOW rounds all clients multiply u_i and the count of rounds d (the same for
every client, never sent) by TRACE_FORGET, so rho_i = u_i / d * n / (n - 1) is the pooled trace
of the clients' recent rows. Change detector (local): a client marks u_i and d at each window
start; at a window's end it compares the window's own share ((u_i - mark) / (d - mark_d)) with
its estimate at the window start, and when they differ by more than JUMP it drops its own past
(it subtracts its mark, forgotten in step, from then on): its estimate restarts from the window
that saw the change. The subtraction is local, the gossiped u_i is untouched, so a client's
reset affects only its own estimate. A static graph (the ring) has a trace of its mean mode,
not its slowest one, so a client whose row did not change in the last window uses a probe
(power-iteration) estimate instead: one probe value mixed with W(t), restarted every window from
a zero-mean draw (the same (n, 1) matrix from (seed, window) for every client, minus its mean),
whose squared value e_i is the client's squared disagreement; it sums its one-round transitions
(after BURN_IN rounds, while e_i is above FLOOR of its start) and at the window's end adds them
to two gossiped sums s_i <- FORGET s_i + (after, before): rho_i = s_i[0] / s_i[1]. On the wire:
the probe, the two probe sums and the trace sum, WIDTH = 4 float32 per client.

Agreement. T changes only at the end of a window (rounds every client can compute: t + 1 a
multiple of WINDOW). There every client with evidence proposes T_i = switch_interval(rho_i, c)
(the trace clients from the estimate including the window, the probe clients from their sums
before adding it), the proposals (one integer per client) go to every client, and every client
takes the same lower median of them, in force from the next round. A client whose estimate
differs (noise, a reset, a sparse-ER client whose row stayed constant for a window and so
proposes from the probes) moves the median by at most one rank, never the phase schedule of
the others: all clients switch phase in the same rounds. With no proposal at all the T in force
stays. Before the first decision (round WINDOW - 1; 2 WINDOW - 1 on a static graph) T is
WARMUP_T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .methods import PhaseSchedule, switch_interval

WINDOW = 20  # rounds between probe restarts and decisions
PROBES = 1  # probe values per client
BURN_IN = 4  # rounds of a window before its transitions count (a static graph's fast modes)
FLOOR = 1e-9  # transitions from e_i below FLOOR x its window start are float32 noise
FORGET = 0.9  # weight of the past windows in the gossiped probe sums (a memory of ~10 windows)
TRACE_FORGET = 0.9  # the same for the trace sum and its count of rounds
JUMP = 0.2  # a window's trace further than this from the estimate before it: a change
WARMUP_T = 1  # T before the first decision
WIDTH = PROBES + 3  # float32 values per client on the wire: probes, 2 probe sums, trace sum
_STREAM = 11  # the probes' random stream
_LOCAL = ("z", "s", "u", "acc", "e0", "e", "row", "changed", "moving", "mark", "base", "base_d")


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
    s: np.ndarray = field(init=False)  # (h, 2) float32 gossiped probe sums
    u: np.ndarray = field(init=False)  # (h,) float32 gossiped trace sum
    d: float = field(init=False)  # the count of rounds in u (every client's, not sent)
    mark_d: float = field(init=False)  # d at the window start
    acc: np.ndarray = field(init=False)  # (h, 2) float64 this window's own transitions
    e0: np.ndarray = field(init=False)  # (h,) e_i at the window start
    e: np.ndarray = field(init=False)  # (h,) e_i now
    row: np.ndarray = field(init=False)  # (h, n) the row each client applied last round
    changed: np.ndarray = field(init=False)  # (h,) bool: the row changed in this window
    moving: np.ndarray = field(init=False)  # (h,) bool: it changed in the last window
    mark: np.ndarray = field(init=False)  # (h,) float64 u_i at the window start
    base: np.ndarray = field(init=False)  # (h,) float64 the past a client dropped from u_i
    base_d: np.ndarray = field(init=False)  # (h,) float64 its count of rounds

    def __post_init__(self) -> None:
        h = len(self.held)
        self.s = np.zeros((h, 2), np.float32)
        self.u = np.zeros(h, np.float32)
        self.d = self.mark_d = 0.0
        self.row = np.full((h, self.n), np.nan)
        self.moving = np.zeros(h, bool)
        self.mark, self.base, self.base_d = np.zeros(h), np.zeros(h), np.zeros(h)
        self._restart(0)

    def _restart(self, window: int) -> None:
        self.z = probe_start(self.n, self.seed, window)[self.held.start:self.held.stop]
        self.e = self.e0 = _sq(self.z)
        self.acc = np.zeros((len(self.held), 2))
        self.changed = np.zeros(len(self.held), bool)
        self.mark, self.mark_d = self.u.astype(np.float64), self.d

    def payload(self) -> np.ndarray:
        """This round's values of the clients held, (h, WIDTH) float32: probe, sums, trace."""
        return np.concatenate([self.z, self.s, self.u[:, None]], axis=1)

    def _trace(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        r = np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0.5)
        return np.clip(r * self.n / (self.n - 1), 0, 1)

    def estimates(self) -> np.ndarray:
        """Every held client's rho_i (NaN while it has no evidence): the trace estimate for a
        client whose row changes, else the probe estimate."""
        num, den = self.s[:, 0].astype(np.float64), self.s[:, 1].astype(np.float64)
        probe = np.clip(np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0), 0, 1)
        trace = self._trace(self.u - self.base, self.d - self.base_d)
        return np.where(self.moving | self.changed, trace, probe)

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
        w_rows = np.asarray(w_rows, np.float64)
        mixed = mix_rows(w_rows, every)
        self.z, self.s = mixed[:, :PROBES], mixed[:, PROBES:PROBES + 2]
        q = (w_rows ** 2).sum(axis=1) - 1.0 / self.n  # this client's share of tr(W^T W) - 1
        self.u = (mixed[:, -1].astype(np.float64) + q).astype(np.float32)
        self.d += 1.0
        self.changed |= (t > 0) & (w_rows != self.row).any(axis=1)
        self.row = w_rows.copy()
        before, self.e = self.e, _sq(self.z)
        step = t % WINDOW + 1  # mixings done in this window
        count = (step - 1 >= BURN_IN) & (before > FLOOR * self.e0)
        self.acc += np.stack([np.where(count, self.e, 0), np.where(count, before, 0)], 1)
        self.next_round = t + 1
        if step == WINDOW:
            self._detect()
        return step == WINDOW

    def _detect(self) -> None:
        """End of window: a client whose window's trace is further than JUMP from its trace
        estimate at the window start drops its past (from its own estimate only)."""
        self.moving = self.changed.copy()
        past = self._trace(self.mark - self.base, self.mark_d - self.base_d)
        now = self._trace(self.u - self.mark, np.full(len(self.u), self.d - self.mark_d))
        jump = np.abs(now - past) > JUMP  # False where past is NaN
        self.base = np.where(jump, self.mark, self.base)
        self.base_d = np.where(jump, self.mark_d, self.base_d)

    def decide(self, t: int, proposals: np.ndarray) -> None:
        """End of window: every client's proposals (n,) -> the T from round t + 1 (the lower
        median of those > 0); then add this window's transitions to the probe sums, forget in
        the trace sums and restart the probes."""
        if (given := [int(p) for p in proposals if p > 0]):
            self.schedule.set_from(t + 1, lower_median(given))
        self.s = (FORGET * self.s.astype(np.float64) + self.acc).astype(np.float32)
        self.u = (TRACE_FORGET * self.u.astype(np.float64)).astype(np.float32)
        self.d *= TRACE_FORGET
        self.base, self.base_d = TRACE_FORGET * self.base, TRACE_FORGET * self.base_d
        self._restart((t + 1) // WINDOW)


def mix_rows(w_rows: np.ndarray, every: np.ndarray) -> np.ndarray:
    """(h, n) x (n, WIDTH) -> (h, WIDTH) float32, each row summed over the n clients in the
    same order whatever rows are asked for (a peer's rows equal the simulator's, bit for bit)."""
    return (w_rows[:, :, None] * every.astype(np.float64)[None]).sum(axis=1).astype(np.float32)


def _sq(z: np.ndarray) -> np.ndarray:
    return (z.astype(np.float64) ** 2).sum(axis=1)


Share = Callable[[np.ndarray], np.ndarray]  # held clients' proposals -> every client's (n,)


def online_round(est: OnlineEstimate, t: int, w_rows: np.ndarray, every: np.ndarray,
                 share: Share, silent: list[int] | None = None) -> bool:
    """Round t on the held clients: absorb the mixing and, at a window's end, decide on the
    proposals that `share` brings from every client; the held rows `silent` (departed
    clients) propose nothing. Returns whether proposals were sent."""
    due = est.absorb(t, w_rows, every)
    if due:
        proposals = est.proposals()
        proposals[silent or []] = 0
        est.decide(t, share(proposals))
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


def step_all(est: OnlineEstimate, t: int, w: np.ndarray, silent: list[int] | None = None
             ) -> None:
    """Round t for an estimator holding every client (replays, studies)."""
    online_round(est, t, w, est.payload(), lambda proposals: proposals, silent)


def replay(est: OnlineEstimate, upto: int, mixing: Callable[[int], np.ndarray],
           silent: Callable[[int], list[int]] = lambda t: []) -> None:
    """Bring `est` to round `upto` (a resumed run): the estimate depends only on the graphs
    (and on which clients had departed, `silent`), so every client's state is recomputed
    from round 0 and the held rows kept."""
    if est.next_round >= upto:
        return
    full = OnlineEstimate(est.n, est.seed, est.c, range(est.n), est.schedule)
    est.schedule.reset()
    for t in range(upto):
        step_all(full, t, mixing(t), silent(t))
    rows = slice(est.held.start, est.held.stop)
    for name in _LOCAL:
        setattr(est, name, getattr(full, name)[rows])
    est.d, est.mark_d, est.next_round = full.d, full.mark_d, upto
