"""The phase map of `tadlora report`, for runs that vary the local steps K or the switching
interval T (the theory testbed's sweeps, or real-model ones):

  - tad minus lora over (K, connectivity): paired by seed, mean ± std, as a table and a heat map;
  - the best T per connectivity against x = 1/sqrt(1 - rho), with T_best ~ c x fitted through
    the origin and, free, T_best ~ c' x^beta (the theory says beta = 1), each with a bootstrap
    interval over seeds;
  - the cross-term error against T, next to the theory's form: while a factor is frozen its
    disagreement contracts by about sqrt(rho) a round, so over a phase of T rounds the error
    scales as g(T) = (1/T) sum_{k<T} rho^{k/2} (scaled to the measured error at the smallest T);
  - a measured proxy of the block-coordinate bias: tad minus lora on the complete graph, where
    averaging is exact and there is no cross-term error, against T (the theory: growing with T).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .interval import rho_of
from .results import conn_order, stats

BOOTSTRAP, SEED = 2000, 0  # resamples of the seeds for the intervals; their generator's seed


def _k(r: dict) -> int:
    return r["cfg"].train.local_steps


def _rest(r: dict) -> tuple:
    """The run's variant without K: what one heat map holds fixed."""
    return tuple(sorted((k, repr(v)) for k, v in r["variant"].items()
                        if k != "train.local_steps"))


def _done(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["finished"]]


def tad_minus_lora(rows: list[dict]) -> dict[tuple, list[float]]:
    """(rest of the variant, K, connectivity) -> tad (T auto) minus lora, per seed (same seed =
    same data, initialisation and graphs), each method at its best learning rate in that cell
    (the lr with the best mean over the cell's seeds)."""
    score = defaultdict(lambda: defaultdict(dict))  # (method, rest, K, conn) -> lr -> seed
    for r in _done(rows):
        if r["method"] == "lora" or (r["method"] == "tad" and r["si"] == "auto"):
            score[r["method"], _rest(r), _k(r), r["connectivity"]][r["lr"]][r["seed"]] = \
                r["final"]
    best = {key: by_lr[max(sorted(by_lr), key=lambda lr: np.mean(list(by_lr[lr].values())))]
            for key, by_lr in score.items()}
    out = {}
    for (method, rest, k, conn), seeds in sorted(best.items()):
        base = best.get(("lora", rest, k, conn), {})
        diffs = [v - base[s] for s, v in sorted(seeds.items()) if s in base]
        if method == "tad" and diffs:
            out[rest, k, conn] = diffs
    return out


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(row) + " |" for row in body], ""]


def _cell(d: list[float] | None) -> str:
    if not d:
        return ""
    m, s, n = stats(d)
    return f"{100 * m:+.2f} ± {100 * s:.2f} ({n})"


def heat_map(rows: list[dict], out: Path) -> list[str]:
    """Markdown and PNGs of tad minus lora over (K, connectivity), one per rest of variant."""
    diffs = tad_minus_lora(rows)
    if len({k for _, k, _ in diffs}) < 2:
        return []
    lines = []
    for i, rest in enumerate(sorted({r for r, _, _ in diffs})):
        here = {(k, c): d for (r, k, c), d in diffs.items() if r == rest}
        ks = sorted({k for k, _ in here})
        conns = conn_order([r for r in _done(rows) if (_k(r), r["connectivity"]) in here])
        title = ", ".join(f"{k}={v}" for k, v in rest) or "all runs"
        body = [[str(k), *[_cell(here.get((k, c))) for c in conns]] for k in ks]
        png = out / f"phase_tad_minus_lora_{i}.png"
        _plot_heat(here, ks, conns, png, title)
        lines += [f"### tad minus lora over local steps K and connectivity ({title})", "",
                  "Final mean client accuracy of tad (T = auto) minus lora's on the same seed, "
                  "each at its best learning rate in the cell, points: mean ± std (seeds).", "",
                  *_table(["K", *conns], body),
                  f"![tad minus lora]({png.name})", ""]
    return lines


def _plot_heat(here: dict, ks: list[int], conns: list[str], path: Path, title: str) -> None:
    from .plots import _pyplot

    plt = _pyplot()
    grid = np.full((len(ks), len(conns)), np.nan)
    for (k, c), d in here.items():
        grid[ks.index(k), conns.index(c)] = 100 * np.mean(d)
    fig, ax = plt.subplots(figsize=(1.2 * len(conns) + 2, 0.6 * len(ks) + 1.8))
    lim = np.nanmax(np.abs(grid)) or 1.0
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for (k, c), d in here.items():
        m, s, _ = stats(d)
        ax.text(conns.index(c), ks.index(k), f"{100 * m:+.1f}\n±{100 * s:.1f}", ha="center",
                va="center", fontsize=7)
    ax.set(xticks=range(len(conns)), xticklabels=conns, yticks=range(len(ks)),
           yticklabels=ks, xlabel="connectivity", ylabel="local steps K",
           title=f"tad - lora (points), {title}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def t_sweeps(rows: list[dict]) -> dict[tuple, dict[str, dict[int, dict[int, float]]]]:
    """(variant, lr) -> connectivity -> T -> seed -> final accuracy of tad with a fixed T."""
    out = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in _done(rows):
        if r["method"] == "tad" and isinstance(r["si"], int):
            key = (tuple(sorted((k, repr(v)) for k, v in r["variant"].items())), r["lr"])
            out[key][r["connectivity"]][r["si"]][r["seed"]] = r["final"]
    return out


def best_t(by_t: dict[int, dict[int, float]], seeds: list[int]) -> int:
    """The T with the best mean over `seeds` (ties: the smaller T)."""
    means = {t: np.mean([v[s] for s in seeds]) for t, v in by_t.items()}
    return max(sorted(means), key=lambda t: means[t])


def fit(x: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """(c of T ~ c x through the origin, c' and beta of T ~ c' x^beta by least squares in
    logs; beta is nan when x takes one value)."""
    c = float((x * t).sum() / (x * x).sum())
    if len(set(np.round(x, 9))) < 2:
        return c, math.nan, math.nan
    beta, log_c = np.polyfit(np.log(x), np.log(t), 1)
    return c, float(math.exp(log_c)), float(beta)


def bootstrap(conns: dict[str, dict[int, dict[int, float]]], x: dict[str, float]
              ) -> np.ndarray:
    """(BOOTSTRAP, 3) fits of (c, c', beta) over seed resamples (the same seeds for every
    connectivity and T: they share data and graphs)."""
    seeds = sorted(set.intersection(*(set(v) for by_t in conns.values() for v in by_t.values())))
    rng = np.random.default_rng(SEED)
    names = sorted(conns)
    out = []
    for _ in range(BOOTSTRAP):
        pick = list(rng.choice(seeds, size=len(seeds)))
        ts = np.array([best_t(conns[c], pick) for c in names], dtype=float)
        out.append(fit(np.array([x[c] for c in names]), ts))
    return np.array(out)


def interval(boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2.5 and 97.5 percentiles of each column of fits; NaN (no warning) for a column that
    no resample could fit, e.g. beta when every resample's best T is the same."""
    lo, hi = np.full(boot.shape[1], np.nan), np.full(boot.shape[1], np.nan)
    ok = np.isfinite(boot).any(axis=0)
    lo[ok], hi[ok] = np.nanpercentile(boot[:, ok], [2.5, 97.5], axis=0)
    return lo, hi


def interval_table(rows: list[dict], out: Path) -> list[str]:
    """The best T per connectivity, its fits and their 95% bootstrap intervals."""
    lines = []
    for i, (key, conns) in enumerate(sorted(t_sweeps(rows).items(), key=lambda kv: repr(kv[0]))):
        conns = {c: by_t for c, by_t in conns.items() if len(by_t) >= 2}
        seeds = sorted(set.intersection(*(set(v) for by_t in conns.values()
                                          for v in by_t.values()))) if conns else []
        if len(conns) < 2 or len(seeds) < 2:
            continue
        runs = {r["connectivity"]: r for r in _done(rows) if r["connectivity"] in conns}
        x = {c: 1 / math.sqrt(1 - rho_of(runs[c])) for c in conns}
        names = sorted(conns, key=x.get)
        best = {c: best_t(conns[c], seeds) for c in names}
        c, c2, beta = fit(np.array([x[n] for n in names]), np.array([best[n] for n in names],
                                                                     dtype=float))
        boot = bootstrap(conns, x)
        lo, hi = interval(boot)
        rounds = runs[names[0]]["cfg"].run.rounds
        body = [[n, f"{x[n]:.2f}", str(best[n]), ", ".join(
            f"{t}{last_phase(t, rounds)}: {100 * np.mean([v[s] for s in seeds]):.2f}"
            for t, v in sorted(conns[n].items()))] for n in names]
        variant = ", ".join(f"{k}={v}" for k, v in key[0]) or "all runs"
        png = out / f"phase_best_T_{i}.png"
        _plot_best(x, best, names, c, (lo[0], hi[0]), png, variant)
        lines += [f"### Best switching interval against 1/sqrt(1 - rho) ({variant}, lr "
                  f"{key[1]:g}, {len(seeds)} seeds)", "",
                  *_table(["connectivity", "1/sqrt(1-rho)", "best T", "mean accuracy by T (%)"],
                          body),
                  f"After each T, the factor its last phase trains ({rounds} rounds): a run "
                  "that ends on an A phase and one that ends on a B phase are not alike.", "",
                  f"T_best ≈ c / sqrt(1 - rho): **c = {c:.2f}** (95% bootstrap interval "
                  f"{lo[0]:.2f} to {hi[0]:.2f}). Free exponent, T_best ≈ c' (1 - rho)^(-beta/2): "
                  f"beta = {beta:.2f} ({lo[2]:.2f} to {hi[2]:.2f}; the theory: 1), c' = {c2:.2f}.",
                  "", f"![best T]({png.name})", ""]
    return lines


def last_phase(t: int, rounds: int) -> str:
    """The factor that tad (B first) trains in the last of `rounds` rounds with interval t."""
    return "B" if ((rounds - 1) // t) % 2 == 0 else "A"


def _plot_best(x: dict, best: dict, names: list[str], c: float, band: tuple, path: Path,
               title: str) -> None:
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.array([x[n] for n in names])
    ax.plot(xs, [best[n] for n in names], "o", label="best T")
    for n in names:
        ax.annotate(n, (x[n], best[n]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    grid = np.linspace(0, xs.max() * 1.1, 50)
    ax.plot(grid, c * grid, label=f"c x, c = {c:.2f}")
    ax.fill_between(grid, band[0] * grid, band[1] * grid, alpha=0.2, label="95% interval")
    ax.set(xlabel="1 / sqrt(1 - rho)", ylabel="best T", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predicted_cross(rho: float, ts: list[int], measured_first: float) -> list[float]:
    """The theory's cross-term error against T, scaled to the measured value at ts[0]."""
    g = [np.mean([rho ** (k / 2) for k in range(t)]) for t in ts]
    return [measured_first * v / g[0] for v in g]


def cross_vs_t(rows: list[dict]) -> list[str]:
    """Mean cross-term error by T (tad) per connectivity, measured and predicted."""
    by = defaultdict(lambda: defaultdict(list))
    for r in _done(rows):
        if r["method"] == "tad" and isinstance(r["si"], int) and r["cross"]:
            by[r["connectivity"], r["task"]][r["si"]].append(np.mean([e for _, e in r["cross"]]))
    body = []
    for (conn, task), per_t in sorted(by.items()):
        ts = sorted(per_t)
        if len(ts) < 2:
            continue
        rho = rho_of(next(r for r in _done(rows) if r["connectivity"] == conn))
        measured = [float(np.mean(per_t[t])) for t in ts]
        theory = predicted_cross(rho, ts, measured[0])
        body.append([task, conn, ", ".join(f"{t}: {m:.4f} / {p:.4f}" for t, m, p in
                                           zip(ts, measured, theory, strict=True))])
    if not body:
        return []
    return ["### Cross-term error against T", "", "Mean over rounds and seeds of tad's "
            "cross-term error, measured / predicted by g(T) = (1/T) sum_{k<T} rho^{k/2} "
            "(scaled to the smallest T):", "", *_table(["task", "connectivity", "T: measured / "
                                                        "predicted"], body)]


def bias_proxy(rows: list[dict]) -> list[str]:
    """tad minus lora on the complete graph (no cross-term error), by T: the alternation's
    own cost (the block-coordinate bias), paired by seed."""
    runs = [r for r in _done(rows) if r["kind"] == "complete"]
    lora = {(r["task"], r["lr"], r["seed"]): r["final"] for r in runs if r["method"] == "lora"}
    gaps = defaultdict(lambda: defaultdict(list))
    for r in runs:
        base = lora.get((r["task"], r["lr"], r["seed"]))
        if r["method"] == "tad" and isinstance(r["si"], int) and base is not None:
            gaps[r["task"]][r["si"]].append(r["final"] - base)
    body = [[task, ", ".join(f"{t}: {_cell(d)}" for t, d in sorted(per_t.items()))]
            for task, per_t in sorted(gaps.items())]
    if not body:
        return []
    return ["### Block-coordinate bias proxy against T", "", "tad (fixed T) minus lora on the "
            "complete graph, where gossip averages exactly and there is no cross-term error: "
            "what alternation alone costs (points, mean ± std (seeds)); the theory expects it "
            "to grow with T.", "", *_table(["task", "T: tad - lora"], body)]


def pages(rows: list[dict], out: Path) -> list[str]:
    """The phase-map sections of the report (empty when the runs do not vary K or T)."""
    lines = [*heat_map(rows, out), *interval_table(rows, out), *cross_vs_t(rows),
             *bias_proxy(rows)]
    return ["## Phase map", "", *lines] if lines else []
