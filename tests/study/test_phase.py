"""The phase-map pages: pairing, fits and their intervals, the theory's curves."""

import math
import warnings

import numpy as np
import pytest

from tadlora.runs import config
from tadlora.study import phase


def row(method, k, p, seed, final, lr=1e-3, si="auto", kind="er", cross=()):
    cfg = config.load(None, [f"method.name={method}", f"train.local_steps={k}",
                             f"topology.p={p}", f"topology.kind={kind}", f"run.seed={seed}",
                             f"train.lr={lr}", f"method.switch_interval={si}" if si != "auto"
                             else "method.switch_interval=\"auto\""])
    from tadlora.study.labels import topology_label

    return {"cfg": cfg, "method": method, "si": si, "lr": lr, "seed": seed, "final": final,
            "finished": True, "kind": kind, "p": p, "connectivity": topology_label(kind, p),
            "variant": {"train.local_steps": k}, "rho": None, "task": f"t [local_steps={k}]",
            "cross": list(cross)}


def test_tad_minus_lora_pairs_seeds_at_each_methods_best_lr():
    rows = [row("lora", 2, 0.1, s, 0.60 + 0.01 * s, lr=1e-3) for s in range(3)]
    rows += [row("lora", 2, 0.1, s, 0.70 + 0.01 * s, lr=3e-4) for s in range(3)]  # lora's best
    rows += [row("tad", 2, 0.1, s, 0.72, lr=1e-3) for s in range(3)]
    rows += [row("tad", 2, 0.1, s, 0.50, lr=3e-4) for s in range(2)]
    diffs = phase.tad_minus_lora(rows)
    assert list(diffs) == [((), 2, "ER p=0.1")]
    assert diffs[(), 2, "ER p=0.1"] == pytest.approx([0.02, 0.01, 0.0])


def test_fit_recovers_c_and_the_exponent():
    x = np.array([1.1, 1.7, 3.4, 4.5])
    c, c2, beta = phase.fit(x, 2.0 * x)
    assert c == pytest.approx(2.0) and beta == pytest.approx(1.0) and c2 == pytest.approx(2.0)
    _, _, beta2 = phase.fit(x, 3.0 * x ** 2)
    assert beta2 == pytest.approx(2.0)
    assert math.isnan(phase.fit(np.array([2.0, 2.0]), np.array([1.0, 3.0]))[2])


def test_best_t_and_its_bootstrap_interval():
    rng = np.random.default_rng(0)
    conns = {}
    x = {"a": 1.0, "b": 2.0, "c": 4.0}
    for name, xv in x.items():  # true best T = 2 x, clear margins, seed noise
        conns[name] = {t: {s: -abs(t - 2 * xv) + 0.1 * rng.standard_normal() for s in range(8)}
                       for t in (1, 2, 4, 8, 16)}
    assert [phase.best_t(conns[n], list(range(8))) for n in x] == [2, 4, 8]
    boot = phase.bootstrap(conns, x)
    lo, hi = np.percentile(boot[:, 0], [2.5, 97.5])
    assert lo <= 2.0 <= hi


def test_predicted_cross_term_error_falls_with_t_and_faster_on_dense_graphs():
    sparse = phase.predicted_cross(0.9, [1, 2, 5, 10], 0.1)
    dense = phase.predicted_cross(0.2, [1, 2, 5, 10], 0.1)
    assert sparse[0] == dense[0] == 0.1
    assert all(a > b for a, b in zip(sparse, sparse[1:], strict=False))
    assert dense[-1] < sparse[-1]
    assert phase.predicted_cross(0.5, [1, 2], 1.0)[1] == pytest.approx((1 + 0.5 ** 0.5) / 2)


def test_pages_have_the_heat_map_and_the_bias_proxy(tmp_path):
    rows = []
    for k in (1, 5):
        for s in range(2):
            rows += [row("lora", k, 0.1, s, 0.6), row("tad", k, 0.1, s, 0.6 + 0.01 * k)]
    for s in range(2):
        rows += [row("lora", 5, 0.5, s, 0.7, kind="complete"),
                 row("tad", 5, 0.5, s, 0.68, si=3, kind="complete")]
    text = "\n".join(phase.pages(rows, tmp_path))
    assert "## Phase map" in text and "| 1 | +1.00 ± 0.00 (2) |" in text
    assert "| 5 | +5.00 ± 0.00 (2) |" in text
    assert "3: -2.00 ± 0.00 (2)" in text  # tad - lora on the complete graph
    assert (tmp_path / "phase_tad_minus_lora_0.png").is_file()
    assert phase.pages(rows[:2], tmp_path) == []


def test_last_phase_follows_the_alternation():
    from tadlora.core.methods import Alternating

    for t in (1, 2, 3, 5, 10, 15, 20, 30):
        assert phase.last_phase(t, 150) == Alternating(interval=t).phase(149)


def test_a_fit_no_resample_could_make_has_no_interval_and_no_warning():
    boot = np.array([[1.0, np.nan, np.nan], [2.0, 4.0, np.nan], [3.0, 6.0, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = phase.interval(boot)
    assert np.allclose(lo[:2], [1.05, 4.05]) and np.allclose(hi[:2], [2.95, 5.95])
    assert np.isnan(lo[2]) and np.isnan(hi[2])
