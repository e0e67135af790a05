"""The report's plots: mean and spread over seeds, file names, what each plot needs."""

import numpy as np
import pytest

from tadlora.runs import config
from tadlora.study import plots


def test_curve_is_the_mean_and_sample_std_over_runs():
    runs = [{"evals": [(10, 0.5), (20, 0.7)]}, {"evals": [(10, 0.7), (20, 0.9)]},
            {"evals": [(20, 0.8)]}]
    x, m, s = plots._curve(runs, "evals")
    assert x.tolist() == [10, 20] and np.allclose(m, [0.6, 0.8])
    assert np.allclose(s, [np.std([0.5, 0.7], ddof=1), np.std([0.7, 0.9, 0.8], ddof=1)])


def test_file_names_are_safe_and_carry_the_topology(tmp_path):
    run = {"cfg": config.load(None, ["topology.kind=er", "topology.p=0.1"])}
    assert plots._file(tmp_path, "acc", "mnli [K=2]", run).name == "acc__mnli__K_2___er-p0.1.png"


def test_accuracy_vs_p_needs_two_edge_probabilities(tmp_path):
    def row(p, final):
        return {"kind": "er", "p": p, "label": "lora", "final": final}

    assert plots.accuracy_vs_p([row(0.5, 0.7)], "t", tmp_path) == []
    out = plots.accuracy_vs_p([row(0.5, 0.7), row(0.1, 0.6)], "t", tmp_path)
    assert [p.name for p in out] == ["acc_vs_p__t.png"] and out[0].is_file()


def test_accuracy_vs_t_draws_lora_as_the_bar_to_clear_and_a_t_with_fewer_seeds_apart(
        tmp_path, monkeypatch):
    on = {1: (0.7, 0.01, 2), 5: (0.72, 0.02, 2)}
    found = [{"connectivity": c, "lr": 1e-3, "stats": dict(on), "matched": on}
             for c in ("ER p=0.1", "ER p=0.02")]
    found[0]["stats"][3] = (0.6, 0.0, 1)  # seed 0 only: not on the line
    runs = [{"connectivity": "ER p=0.1", "method": "lora", "si": "auto", "final": f, "lr": lr,
             "finished": True, "task": "t"}  # lora at another rate than the T: not the bar
            for f, lr in ((0.74, 1e-3), (0.76, 1e-3), (0.99, 5e-4))]
    drawn = {}

    def keep(fig, path, ax, *labels):
        handles, names = ax.get_legend_handles_labels()
        drawn.update(zip(names, handles, strict=True))
        return path

    monkeypatch.setattr(plots, "_save", keep)
    plots.accuracy_vs_t(found, runs, "t", tmp_path)
    assert set(drawn) == {"ER p=0.1", "ER p=0.02", "lora, ER p=0.1", "ER p=0.1, fewer seeds"}
    assert list(drawn["ER p=0.1, fewer seeds"].get_xdata()) == [3]
    assert drawn["lora, ER p=0.1"].get_ydata()[0] == pytest.approx(0.75)


def test_every_series_of_a_crowded_plot_has_its_own_style(tmp_path, monkeypatch):
    labels = ["lora", "ffa", "rolora", *(f"tad T={t}" for t in (1, 2, 3, 5, 10, 15, 20)),
              "tad T=auto", "adf"]  # 12 series: past the 10 colours of the cycle
    cfg = config.load(None, ["topology.kind=er", "topology.p=0.1"])
    runs = [{"kind": "er", "p": p, "label": label, "final": 0.7, "connectivity": "ER p=0.1",
             "evals": [(50, 0.6), (150, 0.7)], "cfg": cfg} for label in labels for p in (0.1, 0.5)]
    styles = []

    def keep(fig, path, ax, *labels):
        for h in ax.get_legend_handles_labels()[0]:
            line = h.lines[0] if hasattr(h, "lines") else h  # errorbar containers
            styles.append((line.get_color(), line.get_marker(), line.get_linestyle()))
        return path

    monkeypatch.setattr(plots, "_save", keep)
    plots.accuracy_vs_p(runs, "t", tmp_path)
    assert len(styles) == len(set(styles)) == len(labels)
    styles.clear()
    plots.accuracy_vs_rounds([r for r in runs if r["p"] == 0.1], "t", tmp_path)
    assert len(styles) == len(set(styles)) == len(labels)
    assert len({tuple(plots._style(i).values()) for i in range(70)}) == 70
