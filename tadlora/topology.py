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
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GraphProcess = Callable[[int], np.ndarray]  # round -> adjacency (n, n) bool
MixingProcess = Callable[[int], np.ndarray]  # round -> W(t) (n, n) float64

# Placeholder until calibrated by our own T sweeps: T = max(1, round(c / sqrt(1 - rho))).
DEFAULT_C: float = 1.0

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


# --- graph files -------------------------------------------------------------------------------

Edge = tuple[int, int, str]  # (i, j, where in the file)


def from_file(path: str | Path | None) -> np.ndarray:
    """Static graph from a user file, in one of two formats.

    JSON (the text starts with "{"): `{"n": 4, "edges": [[0, 1], [1, 2]]}`.
    Edge list: one "i j" pair of 0-based node indices per line; '#' starts a comment; blank lines
    are ignored; an optional first line "n 10" gives the number of nodes.
    In both formats n is optional and defaults to 1 + the largest index (give it to have isolated
    nodes at the end). Edges are undirected; duplicates (also "j i" after "i j") are merged.
    Raises ValueError naming the file, the line (or edge) and what to fix on a missing file,
    a malformed line, a self-loop or an index out of range.
    """
    if path is None:
        raise ValueError("graph kind 'file' needs a path to a graph file")
    if not Path(path).is_file():
        raise ValueError(f"graph file {path} does not exist (or is not a file)")
    text = Path(path).read_text(encoding="utf-8")
    parse = _parse_json if text.lstrip().startswith("{") else _parse_edge_list
    n, edges = parse(text, str(path))
    return _edges_to_adjacency(edges, n, str(path))


def _parse_json(text: str, path: str) -> tuple[int | None, list[Edge]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"graph file {path}: invalid JSON at line {err.lineno}: {err.msg}"
        ) from err
    unknown = set(data) - {"n", "edges"}
    if unknown or not isinstance(data.get("edges"), list):
        raise ValueError(
            f'graph file {path}: expected {{"n": <int>, "edges": [[i, j], ...]}}, '
            f"got keys {sorted(data)}"
        )
    n = data.get("n")
    if n is not None and not _is_int(n):
        raise ValueError(f'graph file {path}: "n" must be an integer, got {n!r}')
    edges = []
    for k, e in enumerate(data["edges"]):
        if not (isinstance(e, list) and len(e) == 2 and all(_is_int(v) for v in e)):
            raise ValueError(f"graph file {path}, edges[{k}]: expected [i, j] integers, got {e!r}")
        edges.append((e[0], e[1], f"edges[{k}]"))
    return n, edges


def _parse_edge_list(text: str, path: str) -> tuple[int | None, list[Edge]]:
    n, edges = None, []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        where = f"graph file {path}, line {lineno}"
        if len(tokens) == 2 and tokens[0] == "n" and tokens[1].isdigit():
            if n is not None or edges:
                raise ValueError(f"{where}: the 'n <count>' line must be the first line")
            n = int(tokens[1])
        elif len(tokens) == 2 and all(_is_int_token(t) for t in tokens):
            edges.append((int(tokens[0]), int(tokens[1]), f"line {lineno}"))
        else:
            raise ValueError(
                f"{where}: cannot parse {raw.strip()!r}; expected 'i j' (two node indices), "
                "'n <count>' as the first line, or a '#' comment"
            )
    return n, edges


def _edges_to_adjacency(edges: list[Edge], n: int | None, path: str) -> np.ndarray:
    if n is None:
        if not edges:
            raise ValueError(f"graph file {path}: no edges and no n given; cannot tell the size")
        n = 1 + max(max(i, j) for i, j, _ in edges)
    if n < 1:
        raise ValueError(f"graph file {path}: n must be >= 1, got {n}")
    adj = np.zeros((n, n), dtype=bool)
    for i, j, where in edges:
        if i == j:
            raise ValueError(f"graph file {path}, {where}: self-loop {i}-{j}; remove it")
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(
                f"graph file {path}, {where}: edge {i}-{j} is out of range; "
                f"with n = {n} node indices must be in 0..{n - 1}"
            )
        adj[i, j] = adj[j, i] = True  # duplicates merge here
    return adj


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_token(token: str) -> bool:
    return re.fullmatch(r"-?\d+", token) is not None


# --- processes ---------------------------------------------------------------------------------

GRAPHS: dict[str, Callable[..., np.ndarray]] = {
    "er": erdos_renyi,
    "ring": ring,
    "complete": complete,
    "pairs": pairs,
    "file": from_file,
}


def graph_process(
    kind: str, n: int, seed: int, p: float = 0.5, path: str | None = None
) -> GraphProcess:
    """round -> adjacency (n, n) for the graph `kind`, with its arguments validated.

    A graph takes what its parameter names ask for among n, seed, round, p, path; a graph with no
    `round` parameter is static (built and checked once, here).
    """
    if kind not in GRAPHS:
        raise ValueError(f"unknown graph {kind!r}; valid graphs: {sorted(GRAPHS)}")
    graph = GRAPHS[kind]
    wanted = inspect.signature(graph).parameters
    _check_args(n, seed, p if "p" in wanted else None)
    given = {"n": n, "seed": seed, "p": p, "path": path}
    kwargs = {k: v for k, v in given.items() if k in wanted}
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
    kind: str, n: int, seed: int, p: float = 0.5, path: str | None = None
) -> MixingProcess:
    """round -> W(t) (n, n): Metropolis-Hastings weights of that round's graph."""
    graph = graph_process(kind, n, seed, p, path)
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


def spectral_gap(rho: float) -> float:
    return 1.0 - rho


def mean_degree(process: GraphProcess, n: int, samples: int) -> float:
    """Average node degree over rounds 0..samples-1 of a graph process."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    total = sum(int(process(t).sum()) for t in range(samples))  # sum of degrees
    return total / (n * samples)


def switch_interval(rho: float, c: float) -> int:
    """Topology-aware switching interval T = max(1, round(c / sqrt(1 - rho)))."""
    if rho >= 1.0:
        raise ValueError(
            f"rho = {rho} >= 1: the graph process never mixes (some clients are never "
            "connected, e.g. a disconnected graph or p too small for the rounds sampled), so no "
            "switching interval can bring the frozen factor to consensus; use a connected "
            "topology or set a fixed integer interval"
        )
    if rho < 0.0 or c <= 0.0:
        raise ValueError(f"need 0 <= rho < 1 and c > 0, got rho = {rho}, c = {c}")
    return max(1, round(c / math.sqrt(1.0 - rho)))


@dataclass(frozen=True)
class TopologyStats:
    rho: float
    spectral_gap: float
    mean_degree: float
    auto_interval: int | None  # None when the process never mixes (rho = 1)


def topology_stats(
    kind: str,
    n: int,
    p: float = 0.5,
    path: str | None = None,
    c: float = DEFAULT_C,
    samples: int = 2000,
) -> TopologyStats:
    """rho, spectral gap, mean degree and auto switching interval of one topology process
    (all on the graph stream of seed RHO_SEED)."""
    rho = process_rho(kind, n, p, path, samples)
    interval = switch_interval(rho, c) if rho < 1.0 else None
    degree = mean_degree(graph_process(kind, n, RHO_SEED, p, path), n, samples)
    return TopologyStats(rho, spectral_gap(rho), degree, interval)
