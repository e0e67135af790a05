"""Issue 14, item 3: does the switching-interval rule T = c / sqrt(1 - rho) need another input?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/analyze_t_rule.py RUNS_DIR [RUNS_DIR ...]

Each RUNS_DIR is a fixed-T sweep of tad (e.g. results/testbed_t, results/testbed_t_lr5e-3).
Per (sweep, topology): rho (the project's Monte Carlo estimate, study.results.rho_of), the gap
1 - rho, and the effective number of neighbours of Vogels et al. (NeurIPS 2022, "Beyond spectral
gap"; their code: epfml/topology-in-decentralized-learning, random_walks.py): for the random walk
x <- W(t) (sqrt(gamma) x + xi), xi i.i.d. N(0, 1) per worker, n_eff(gamma) = [1 / (1 - gamma)] /
(mean over workers of the stationary E[x_i^2]); 1 / (1 - gamma) is a lone worker's variance
(W = I), so n_eff = 1 there and n for exact averaging. Here W(t) is one gossip round's
Metropolis-Hastings matrix, drawn on the stream of topology.RHO_SEED, and E[x x^T] is iterated
exactly (Sigma <- W (gamma Sigma + I) W^T) over sampled rounds. gamma is taken at 0.5, 0.9, 0.99
and at the run's own gamma_run = (1 - lr)^(2K): the paper's quadratic toy model has a per-step
decay (1 - lr)^2 (unit curvature); a round of K local steps compounds it (an adaptation: the
runs use AdamW, not SGD, so gamma_run is a heuristic link to K x lr).

Best T per topology: the T with the best mean final accuracy over the seeds common to the sweep
(study.phase.best_t); its group: the T whose mean paired difference to the best T (same seed =
same data, init and graphs) is within one standard error of that difference. Each candidate rule
T = max(1, round(c x)) is fitted through the origin (study.phase.fit, also giving the free
exponent beta of T ~ c' x^beta), with a 95% bootstrap interval over seeds (resampled within each
sweep); a rule's T is "in" a group when the swept T nearest to it (in log T) is in the group.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np

from tadlora.core import topology
from tadlora.study.phase import best_t, fit, t_sweeps
from tadlora.study.results import collect, conn_order, rho_of

GAMMAS = (0.5, 0.9, 0.99)
NEFF_SAMPLES, BURN = 2000, 1000  # averaged rounds after BURN >= 10 / (1 - max gamma) rounds
BOOT, SEED = 2000, 0
C_GRID = np.geomspace(0.1, 100.0, 601)


def rounds_w(kind: str, n: int, p: float, path: str | None, seed: int) -> np.ndarray:
    """(BURN + NEFF_SAMPLES, n, n) Metropolis-Hastings matrices of rounds 0.. of one stream."""
    mix = topology.mixing_process(kind, n, seed, p, path)
    return np.stack([mix(t) for t in range(BURN + NEFF_SAMPLES)])


def n_eff(ws: np.ndarray, gamma: float) -> float:
    """Vogels et al.'s effective number of neighbours of the walk x <- W(t)(sqrt(g) x + xi)."""
    n = ws.shape[1]
    sigma, total = np.zeros((n, n)), 0.0
    for t, w in enumerate(ws):
        sigma = w @ (gamma * sigma + np.eye(n)) @ w.T
        if t >= BURN:
            total += np.trace(sigma) / n
    return 1.0 / (1.0 - gamma) / (total / (len(ws) - BURN))


def group(by_t: dict[int, dict[int, float]], seeds: list[int]) -> tuple[int, list[int]]:
    """The best T and the T within one standard error (paired by seed) of it."""
    b = best_t(by_t, seeds)
    out = []
    for t, v in sorted(by_t.items()):
        d = np.array([v[s] - by_t[b][s] for s in seeds])
        if t == b or d.mean() >= -d.std(ddof=1) / math.sqrt(len(d)):
            out.append(t)
    return b, out


def points(dirs: list[str]) -> tuple[list[dict], float]:
    pts, cache, spread = [], {}, 0.0
    for i, d in enumerate(dirs):
        rows = [r for r in collect(d) if r["finished"]]
        for (_, lr), conns in t_sweeps(rows).items():
            seeds = sorted(set.intersection(*(set(v) for by_t in conns.values()
                                               for v in by_t.values())))
            for conn in conn_order([r for r in rows if r["connectivity"] in conns]):
                run = next(r for r in rows if r["connectivity"] == conn and r["lr"] == lr)
                cfg, by_t = run["cfg"], conns[conn]
                n, k = cfg.clients.n, cfg.train.local_steps
                key = (run["kind"], n, run["p"], cfg.topology.path or None)
                g_run = (1.0 - lr) ** (2 * k)
                gammas = (*GAMMAS, g_run)
                if key not in cache:
                    cache[key] = rounds_w(*key, topology.RHO_SEED)
                ne = {g: n_eff(cache[key], g) for g in gammas}
                other = rounds_w(*key, topology.RHO_SEED + 1)  # a second stream: MC spread
                spread = max(spread, *(abs(n_eff(other, g) / ne[g] - 1) for g in gammas))
                b, grp = group(by_t, seeds)
                acc = [100 * by_t[b][s] for s in seeds]
                pts.append({"sweep": i, "lr": lr, "k": k, "n": n, "conn": conn,
                            "rho": rho_of(run), "neff": ne, "g_run": g_run, "by_t": by_t,
                            "seeds": seeds, "best": b, "group": grp,
                            "acc": (np.mean(acc), np.std(acc, ddof=1))})
    return pts, spread


def rules() -> dict[str, Callable[[dict], float]]:
    out = {"T = c (no input)": lambda p: 1.0,
           "c / sqrt(1 - rho)": lambda p: (1 - p["rho"]) ** -0.5,
           "c / (1 - rho)": lambda p: 1 / (1 - p["rho"])}
    for g in (*GAMMAS, "run"):
        def ne(p, g=g):
            return p["neff"][p["g_run"] if g == "run" else g]
        out[f"c sqrt(n / n_eff({g}))"] = lambda p, ne=ne: math.sqrt(p["n"] / ne(p))
        out[f"c n / n_eff({g})"] = lambda p, ne=ne: p["n"] / ne(p)
    out["c / (K lr)"] = lambda p: 1 / (p["k"] * p["lr"])
    out["c / (sqrt(1 - rho) K lr)"] = lambda p: (1 - p["rho"]) ** -0.5 / (p["k"] * p["lr"])
    return out


def hits(c: float, x: np.ndarray, pts: list[dict]) -> np.ndarray:
    """Per point: whether the swept T nearest (log) to max(1, round(c x)) is in its group."""
    out = []
    for xi, p in zip(x, pts, strict=True):
        t = max(1, round(c * xi))
        near = min(p["by_t"], key=lambda s: (abs(math.log(s / t)), s))
        out.append(near in p["group"])
    return np.array(out)


def bootstrap_t(pts: list[dict], sweeps: int) -> np.ndarray:
    """(BOOT, points) best T over seed resamples (one resample per sweep, shared by its points)."""
    rng = np.random.default_rng(SEED)
    out = np.zeros((BOOT, len(pts)))
    for b in range(BOOT):
        picks = {}
        for i in range(sweeps):
            seeds = next(p["seeds"] for p in pts if p["sweep"] == i)
            picks[i] = list(rng.choice(seeds, size=len(seeds)))
        out[b] = [best_t(p["by_t"], picks[p["sweep"]]) for p in pts]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dirs", nargs="+")
    start = time.perf_counter()
    dirs = ap.parse_args().runs_dirs
    pts, spread = points(dirs)
    cols = " | ".join(f"n_eff({g})" for g in GAMMAS)
    print(f"| lr | K | connectivity | rho | 1 - rho | {cols} | gamma_run: n_eff | seeds | "
          "best T (acc %) | group (1 paired SE) |\n|" + "---|" * (11 + len(GAMMAS) - 2))
    for p in pts:
        ne = " | ".join(f"{p['neff'][g]:.2f}" for g in GAMMAS)
        print(f"| {p['lr']:g} | {p['k']} | {p['conn']} | {p['rho']:.3f} | {1 - p['rho']:.3f} | "
              f"{ne} | {p['g_run']:.3f}: {p['neff'][p['g_run']]:.2f} | {len(p['seeds'])} | "
              f"{p['best']} ({p['acc'][0]:.2f} ± {p['acc'][1]:.2f}) | "
              f"{', '.join(map(str, p['group']))} |")
    narrow = sum(len(p["group"]) < len(p["by_t"]) for p in pts)
    print(f"\n{len(pts)} (sweep, topology) points; {narrow} have a group narrower than all "
          f"swept T. n_eff on a second graph stream (seed {topology.RHO_SEED + 1}) differs by "
          f"at most {100 * spread:.1f} %.\n")
    boot = bootstrap_t(pts, len(dirs))
    t = np.array([p["best"] for p in pts], dtype=float)
    sw = np.array([p["sweep"] for p in pts])
    lrs = [f"{next(p['lr'] for p in pts if p['sweep'] == i):g}" for i in range(len(dirs))]
    print("| rule | c (all) | 95% CI | " + " | ".join(f"c (lr {lr})" for lr in lrs)
          + " | beta (95% CI) | in group at c (" + " + ".join(lrs) + ") | best over c |\n|"
          + "---|" * (6 + len(dirs)))
    for name, f in rules().items():
        x = np.array([f(p) for p in pts])
        c, _, beta = fit(x, t)
        cb = boot @ x / (x @ x)
        lo, hi = np.percentile(cb, [2.5, 97.5])
        betas = [fit(x, bt)[2] for bt in boot[:500]] if not math.isnan(beta) else [math.nan]
        blo, bhi = np.nanpercentile(betas, [2.5, 97.5]) if not math.isnan(beta) else (0, 0)
        per = " | ".join(f"{fit(x[sw == i], t[sw == i])[0]:.2f}" for i in range(len(dirs)))
        h = hits(c, x, pts)
        split = " + ".join(str(int(h[sw == i].sum())) for i in range(len(dirs)))
        grid = np.array([hits(cg, x, pts).sum() for cg in C_GRID])
        at = C_GRID[grid == grid.max()]
        bstr = "-" if math.isnan(beta) else f"{beta:.2f} ({blo:.2f} to {bhi:.2f})"
        print(f"| {name} | {c:.2f} | {lo:.2f} to {hi:.2f} | {per} | {bstr} | "
              f"{int(h.sum())}/{len(pts)} ({split}) | {grid.max()}/{len(pts)} at c "
              f"{at.min():.2f} to {at.max():.2f} |")
    print(f"\nbeta intervals from the first 500 of {BOOT} resamples. "
          f"Runtime {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
