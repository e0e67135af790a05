"""tad's switching interval against the graph's connectivity: the best T per connectivity,
picked on matched seeds, and the fit T_best ~ c / sqrt(1 - rho)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from ..core import topology
from ..core.methods import DEFAULT_C, switch_interval
from .results import conn_order, stats


def fit_c(t_best: list[float], rho: list[float]) -> float:
    """Least squares c in T_best ~ c / sqrt(1 - rho) (a line through the origin in x)."""
    x = 1.0 / np.sqrt(1.0 - np.asarray(rho, dtype=float))
    t = np.asarray(t_best, dtype=float)
    return float((x * t).sum() / (x * x).sum())


_RHO_CACHE: dict[tuple, float] = {}


def rho_of(run: dict) -> float:
    """The run's rho: from its summary, else estimated for its topology (cached; the estimate
    does not depend on the run's seed)."""
    if run["rho"] is not None:
        return float(run["rho"])
    cfg = run["cfg"]
    t, n = cfg.topology, cfg.clients.n
    key = (t.kind, n, t.p, t.path, t.rho_samples)
    if key not in _RHO_CACHE:
        _RHO_CACHE[key] = topology.process_rho(t.kind, n, t.p, t.path or None, t.rho_samples)
    return _RHO_CACHE[key]


def _trained_t(r: dict) -> int | None:
    """The fixed T a tad run trained with: its own, or the one auto resolved to (auto builds the
    same policy with that T, core/methods.py); None for online."""
    if isinstance(r["si"], int):
        return r["si"]
    return r["T"] if r["si"] == "auto" else None


def matched_seeds(by_t: dict[int, dict]) -> list[int]:
    """The seeds to compare the T on (T -> seed -> score): of the seed sets that one T ran or
    that every T ran, the one shared by the most runs (T x seeds, then more seeds), among those
    at least two T ran; [] when no two T share a seed. So a T run on more seeds than the rest
    does not decide the pick, and one run on fewer does not cut the others down to its seeds."""
    sets = [set(v) for v in by_t.values()]
    shared = {frozenset(s) for s in [*sets, set.intersection(*sets)] if s}

    def score(s: frozenset) -> tuple:
        return sum(s <= t for t in sets) * len(s), len(s), sorted(s)

    found = [score(s) for s in shared if sum(s <= t for t in sets) >= 2]
    return max(found)[2] if found else []


def _common_lr(runs: list[dict]) -> float:
    """The learning rate of the most runs (ties: the smaller rate)."""
    count = Counter(r["lr"] for r in runs)
    return min(count, key=lambda lr: (-count[lr], lr))


def best_t(rows: list[dict], task: str) -> list[dict]:
    """Per connectivity with >= 2 fixed T for tad (an auto run counts at its T, unless a fixed
    run of that T and seed is there): the best T and the T within one std of it, picked on
    matched seeds (`matched_seeds`, as `pick_lr` picks a rate; all seeds if no two T share
    one), at the learning rate most of its tad runs used (a T sweep's), rho."""
    runs = [r for r in rows if r["finished"] and r["task"] == task and r["method"] == "tad"]
    out = []
    for conn in conn_order(runs):
        here = [r for r in runs if r["connectivity"] == conn]
        lr = _common_lr(here)
        here = [r for r in here if r["lr"] == lr]
        by_t = defaultdict(dict)  # T -> seed -> final; a fixed run first, then an auto one
        for r in sorted(here, key=lambda r: r["si"] == "auto"):
            t = _trained_t(r)
            if t is not None:
                by_t[t].setdefault(r["seed"], r["final"])
        if len(by_t) < 2:
            continue
        st = {t: stats(list(v.values())) for t, v in sorted(by_t.items())}
        seeds = matched_seeds(by_t)
        on = ({t: stats([v[s] for s in seeds]) for t, v in by_t.items() if set(seeds) <= set(v)}
              if seeds else st)
        best = max(on, key=lambda t: (on[t][0], -t))
        group = sorted(t for t in on if on[t][0] >= on[best][0] - on[best][1])
        rho = float(np.mean([rho_of(r) for r in here]))
        auto = sorted({r["T"] for r in here if r["si"] == "auto"})
        out.append({"connectivity": conn, "lr": lr, "rho": rho, "x": 1 / math.sqrt(1 - rho),
                    "best": best, "stats": st, "matched": on, "seeds": seeds,
                    "group": group, "auto": auto,
                    "default": switch_interval(rho, DEFAULT_C)})
    return out
