"""Communication graphs, Metropolis-Hastings mixing weights and the contraction rho.

A graph is a function `(n, seed, round, ...) -> adjacency`, where an adjacency is a numpy bool
array (n, n), symmetric with a zero diagonal. Every round's graph is a pure function of
(seed, round): each random graph draws from `np.random.default_rng([seed, round, stream])` with a
small constant `stream` per graph kind, so every peer computes the same W(t) with no coordinator
and no global random state. Weights are derived in one place (`metropolis_hastings`); a
time-varying scheme is a process `round -> W(t)`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .graph_files import from_file

GraphProcess = Callable[[int], np.ndarray]  # round -> adjacency (n, n) bool
MixingProcess = Callable[[int], np.ndarray]  # round -> W(t) (n, n) float64

# One random stream per graph kind, so two kinds with the same seed draw independent graphs.
_ER_STREAM = 1
_PAIRS_STREAM = 2
# rho this close to 1 is float noise around a graph process that never mixes (W = I forever).
_RHO_ONE_TOL = 1e-9
# rho, and so the auto T, is a property of a topology's distribution, not of one run's draws: it
# is estimated on this one stream of graphs whatever run.seed is, so every seed of a study gets
# the same T (estimating on each run's own stream moved T across a rounding edge between seeds).
RHO_SEED = 0


def _symmetric(upper: np.ndarray, n: int) -> np.ndarray:
    """Adjacency (n, n) from a bool mask over the upper triangle (row-major, k = 1)."""
    rows, cols = np.triu_indices(n, k=1)
    adj = np.zeros((n, n), dtype=bool)
    adj[rows[upper], cols[upper]] = True
    return adj | adj.T


def erdos_renyi(n: int, seed: int, round: int, p: float) -> np.ndarray:
    """Each edge of the complete graph is active with probability p, re-drawn every round."""
    rng = np.random.default_rng([seed, round, _ER_STREAM])
    return _symmetric(rng.random(n * (n - 1) // 2) < p, n)  # (n, n)


def ring(n: int, seed: int, round: int) -> np.ndarray:
    """Static ring i ~ i+1 (mod n); n = 2 gives one edge, n = 1 no edge. seed, round unused."""
    adj = np.zeros((n, n), dtype=bool)
    if n >= 2:
        i = np.arange(n)
        adj[i, (i + 1) % n] = True
        adj |= adj.T
    return adj


def complete(n: int, seed: int, round: int) -> np.ndarray:
    """Static complete graph. seed, round unused."""
    return ~np.eye(n, dtype=bool)


def pairs(n: int, seed: int, round: int, p: float = 1.0) -> np.ndarray:
    """Random pairwise matching ("gossip"): shuffle the clients, pair consecutive ones, keep each
    pair's edge with probability p. Every client meets at most one peer (odd n: one sits out)."""
    rng = np.random.default_rng([seed, round, _PAIRS_STREAM])
    order = rng.permutation(n)
    a, b = order[0 : n - 1 : 2], order[1:n:2]  # (n // 2,) each
    keep = rng.random(n // 2) < p
    adj = np.zeros((n, n), dtype=bool)
    adj[a[keep], b[keep]] = True
    return adj | adj.T


# --- processes ---------------------------------------------------------------------------------

GRAPHS: dict[str, Callable[..., np.ndarray]] = {
    "er": erdos_renyi,
    "ring": ring,
    "complete": complete,
    "pairs": pairs,
    "file": from_file,
}


def parameters(kind: str) -> set[str]:
    """The parameter names of graph `kind` (what it is drawn from: n, seed, round, p, path)."""
    if kind not in GRAPHS:
        raise ValueError(f"unknown graph {kind!r}; valid graphs: {sorted(GRAPHS)}")
    return set(inspect.signature(GRAPHS[kind]).parameters)


Schedule = tuple[tuple[int, float], ...]  # (first round, p) pieces, the first at round 0


def parse_schedule(text: str, kind: str = "er") -> Schedule:
    """'0:0.5,60:0.02' -> ((0, 0.5), (60, 0.02)): the edge probability from each round on.
    ValueError naming the piece when a piece is not ROUND:P, the rounds do not start at 0 and
    increase, or a p is outside (0, 1]; or when graph `kind` has no p drawn every round."""
    _check_scheduled(kind)
    pieces = []
    for piece in text.split(","):
        r, sep, p = piece.strip().partition(":")
        try:
            pieces.append((int(r), float(p)))
        except ValueError:
            raise ValueError(f"piece {piece.strip()!r} is not ROUND:P (e.g. 0:0.5,60:0.02)") \
                from None
        if not sep or not 0.0 < pieces[-1][1] <= 1.0:
            raise ValueError(f"piece {piece.strip()!r}: need ROUND:P with P in (0, 1]")
    rounds = [r for r, _ in pieces]
    if rounds[0] != 0 or any(b <= a for a, b in zip(rounds, rounds[1:], strict=False)):
        raise ValueError(f"rounds {rounds}: the first piece starts at round 0 and the rounds "
                         "increase")
    return tuple(pieces)


def schedule_problem(text: str, kind: str) -> str | None:
    """What is wrong with topology.schedule `text` for graph `kind`, or None."""
    try:
        parse_schedule(text, kind)
    except ValueError as e:
        return str(e)
    return None


def _check_scheduled(kind: str) -> None:
    if not {"p", "round"} <= parameters(kind):
        takes = [k for k in GRAPHS if {"p", "round"} <= parameters(k)]
        raise ValueError(f"topology.kind={kind} has no edge probability drawn every round; "
                         f"use one that has: {', '.join(takes)}")


def p_at(schedule: Schedule, t: int) -> float:
    """The edge probability of round t under `schedule`."""
    return next(p for r, p in reversed(schedule) if r <= t)


def graph_process(
    kind: str, n: int, seed: int, p: float = 0.5, path: str | None = None,
    schedule: Schedule = (),
) -> GraphProcess:
    """round -> adjacency (n, n) for the graph `kind`, with its arguments validated.

    A graph takes what its parameter names ask for among n, seed, round, p, path; a graph with no
    `round` parameter is static (built and checked once, here). A `schedule` replaces p by the
    p of each round's piece (graphs drawn every round with a p only).
    """
    wanted = parameters(kind)
    graph = GRAPHS[kind]
    _check_args(n, seed, p if "p" in wanted else None)
    given = {"n": n, "seed": seed, "p": p, "path": path}
    kwargs = {k: v for k, v in given.items() if k in wanted}
    if schedule:
        _check_scheduled(kind)
        kwargs.pop("p")
        return lambda t: graph(round=t, p=p_at(schedule, t), **kwargs)
    if "round" in wanted:
        return lambda t: graph(round=t, **kwargs)
    adj = graph(**kwargs)  # (m, m)
    if adj.shape != (n, n):
        source = f"graph file {path}" if "path" in wanted else f"graph {kind!r}"
        raise ValueError(f"{source} has {adj.shape[0]} nodes but clients.n = {n}")
    return lambda t: adj.copy()


def _check_args(n: int, seed: int, p: float | None) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of clients n must be an integer >= 1, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if p is not None and not 0.0 < p <= 1.0:
        raise ValueError(f"edge probability p must be in (0, 1], got {p!r}")


def metropolis_hastings(adj: np.ndarray) -> np.ndarray:
    """Mixing matrix (n, n) float64: w_ij = 1 / (1 + max(deg_i, deg_j)) on edges,
    w_ii = 1 - row sum. Symmetric, doubly stochastic, nonnegative; an isolated node has w_ii = 1."""
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be square (n, n), got shape {adj.shape}")
    adj = adj.astype(bool)
    if not np.array_equal(adj, adj.T) or adj.diagonal().any():
        raise ValueError("adjacency must be symmetric with a zero diagonal")
    deg = adj.sum(axis=1)  # (n,)
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)  # (n, n)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def uniform_weights(n: int) -> np.ndarray:
    """J = 11^T / n (n, n): exact averaging, what a central server gives (fedavg)."""
    return np.full((n, n), 1.0 / n)


def mixing_process(
    kind: str, n: int, seed: int, p: float = 0.5, path: str | None = None,
    schedule: Schedule = (),
) -> MixingProcess:
    """round -> W(t) (n, n): Metropolis-Hastings weights of that round's graph."""
    graph = graph_process(kind, n, seed, p, path, schedule)
    return lambda t: metropolis_hastings(graph(t))


# --- statistics --------------------------------------------------------------------------------


def contraction(mixing: MixingProcess, n: int, samples: int = 2000, start: int = 0) -> float:
    """Monte Carlo rho = largest eigenvalue of E[W^T W] - J over rounds start..start+samples-1,
    i.e. the second-largest eigenvalue of E[W^T W] (its largest is 1 for doubly stochastic W).

    The max-eigenvalue estimate is biased upwards by the sampling noise: for 10 clients and
    Erdos-Renyi graphs, 2000 samples give +0.005 to +0.011 with a seed-to-seed std <= 0.004.
    A static graph needs one sample. rho = 1 (within 1e-9) means the process never mixes.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    second_moment = np.zeros((n, n))  # (n, n)
    for t in range(start, start + samples):
        w = mixing(t)  # (n, n)
        second_moment += w.T @ w
    second_moment /= samples
    rho = float(np.linalg.eigvalsh(second_moment - uniform_weights(n))[-1])
    return 1.0 if rho > 1.0 - _RHO_ONE_TOL else max(rho, 0.0)


def process_rho(
    kind: str, n: int, p: float = 0.5, path: str | None = None, samples: int = 2000
) -> float:
    """rho of the topology `kind`, estimated on the graph stream of seed RHO_SEED."""
    return contraction(mixing_process(kind, n, RHO_SEED, p, path), n, samples)


def segment_rhos(kind: str, n: int, p: float, path: str | None, samples: int,
                 schedule: Schedule = ()) -> tuple[tuple[int, float], ...]:
    """(first round, rho) of every piece of `schedule` (one piece from round 0 without)."""
    pieces = schedule or ((0, p),)
    return tuple((r, process_rho(kind, n, q, path, samples)) for r, q in pieces)


def spectral_gap(rho: float) -> float:
    return 1.0 - rho


def mean_degree(process: GraphProcess, n: int, samples: int) -> float:
    """Average node degree over rounds 0..samples-1 of a graph process."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    total = sum(int(process(t).sum()) for t in range(samples))  # sum of degrees
    return total / (n * samples)


@dataclass(frozen=True)
class TopologyStats:
    rho: float
    spectral_gap: float
    mean_degree: float


def topology_stats(
    kind: str, n: int, p: float = 0.5, path: str | None = None, samples: int = 2000
) -> TopologyStats:
    """rho, spectral gap and mean degree of one topology process (all on the graph stream of
    seed RHO_SEED)."""
    rho = process_rho(kind, n, p, path, samples)
    degree = mean_degree(graph_process(kind, n, RHO_SEED, p, path), n, samples)
    return TopologyStats(rho, spectral_gap(rho), degree)
