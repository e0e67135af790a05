import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tadlora import config, report, topology


def fake_run(root: Path, name: str, overrides: list[str], final: float | None,
             rho: float | None = None, rounds: int = 4) -> Path:
    """A run directory as runner writes it, with made-up numbers (final=None: unfinished)."""
    cfg = config.load(None, [f"run.rounds={rounds}", "run.eval_every=2", *overrides])
    d = root / name
    d.mkdir(parents=True)
    (d / "config.toml").write_text(config.to_toml(cfg))
    rows = []
    for t in range(rounds if final is not None else rounds // 2):
        r = {"round": t, "phase": "B", "switch_interval": None, "train_loss": 0.5,
             "consensus_A": 0.1, "consensus_B": 0.1, "cross_term_error": 0.1 * (t + 1),
             "bytes_sent": [0]}
        if (t + 1) % 2 == 0:
            acc = (final or 0.5) * (t + 1) / rounds
            r["eval"] = {"client_acc": [acc], "mean": acc, "std": 0.0, "min": acc, "max": acc,
                         "averaged_adapter_acc": acc}
        rows.append(r)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if final is not None:
        T = cfg.method.switch_interval if cfg.method.name == "tad" else None
        (d / "summary.json").write_text(json.dumps(
            {"mean": final, "rho": rho, "switch_interval": 3 if T == "auto" else T,
             "wall_time_s": 60.0}))
    return d


ACC = {  # (method, lr, p) -> final accuracy of seeds 0, 1, 2
    ("lora", 0.002, 0.5): [0.80, 0.82, 0.84], ("lora", 0.002, 0.1): [0.70, 0.71, 0.75],
    ("lora", 0.005, 0.5): [0.60, 0.61, 0.62], ("lora", 0.005, 0.1): [0.90, 0.91, 0.92],
    ("tad", 0.002, 0.5): [0.81, 0.80, 0.79], ("tad", 0.002, 0.1): [0.78, 0.77, 0.76],
    ("tad", 0.005, 0.5): [0.50, 0.52, 0.54], ("tad", 0.005, 0.1): [0.60, 0.61, 0.62],
}


@pytest.fixture
def study(tmp_path) -> Path:
    root = tmp_path / "runs"
    for (m, lr, p), accs in ACC.items():
        for seed, acc in enumerate(accs):
            fake_run(root, f"{m}_{lr}_{p}_{seed}", [f"method.name={m}", f"train.lr={lr}",
                                                    f"topology.p={p}", f"run.seed={seed}"], acc)
    for seed, acc in enumerate([0.70, 0.72]):
        fake_run(root, f"ring_{seed}", ["method.name=lora", "train.lr=0.002", f"run.seed={seed}",
                                        'topology.kind="ring"'], acc)
        fake_run(root, f"local_{seed}", ["method.name=local", "train.lr=0.002",
                                         f"run.seed={seed}"], acc - 0.1)
    fake_run(root, "sub/unfinished", ["method.name=lora", "train.lr=0.002", "run.seed=5"], None)
    return root


def test_collect_labels_and_table_values_match_hand_computation(study):
    rows = report.collect(study)
    assert len(rows) == 8 * 3 + 4 + 1 and sum(not r["finished"] for r in rows) == 1
    r = next(r for r in rows if r["name"] == "lora_0.002_0.1_1")
    assert (r["task"], r["connectivity"], r["lr"], r["final"]) == ("rotten_tomatoes", "ER p=0.1",
                                                                    0.002, 0.71)
    assert r["evals"] == [(2, 0.71 / 2), (4, 0.71)] and r["cross"][0] == (1, 0.1)
    cells = report.cells(rows)
    for (m, lr, p), accs in ACC.items():
        mean, std, n = cells["rotten_tomatoes", m, f"ER p={p:g}", lr]
        assert mean == pytest.approx(np.mean(accs)) and n == 3
        assert std == pytest.approx(np.std(accs, ddof=1))
    assert cells["rotten_tomatoes", "lora", "ring", 0.002][2] == 2  # the unfinished run: out


def test_lr_is_picked_by_the_mean_over_connectivities(study):
    picked = report.pick_lr(report.collect(study))
    lora_lr, lora_scores = picked["rotten_tomatoes", "lora"]
    # lora's ring ran only at 0.002: the score compares the two ER cells run at both lrs
    assert lora_scores[0.002] == pytest.approx(np.mean([0.82, np.mean([0.70, 0.71, 0.75])]))
    assert lora_scores[0.005] == pytest.approx(np.mean([0.61, 0.91])) and lora_lr == 0.002
    assert picked["rotten_tomatoes", "tad"][0] == 0.002
    assert picked["rotten_tomatoes", "local"] == (0.002, {0.002: pytest.approx(0.61)})


def test_report_markdown_and_plots(study, tmp_path):
    path = report.write_report(study, tmp_path / "rep")
    text = path.read_text()
    assert "28 finished runs (0.47 h of run wall time in all); 1 unfinished" in text
    mean, std = np.mean(ACC["lora", 0.002, 0.1]), np.std(ACC["lora", 0.002, 0.1], ddof=1)
    assert f"| lora | 0.002 | {100 * np.mean(ACC['lora', 0.002, 0.5]):.2f} ± " in text
    assert f"{100 * mean:.2f} ± {100 * std:.2f} (3)" in text
    assert "| lora | 0.005 | 61.00 ± 1.00 (3) | 91.00 ± 1.00 (3) |  |" in text  # full table
    assert "lora 0.002 (0.002: 77.00, 0.005: 76.00)" in text
    assert "| local | 0.002 | 61.00 ± 1.41 (2) | 61.00 ± 1.41 (2) † |" in text
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == ["acc_rounds__rotten_tomatoes__er-p0.1.png",
                    "acc_rounds__rotten_tomatoes__er-p0.5.png",
                    "acc_rounds__rotten_tomatoes__ring.png", "acc_vs_p__rotten_tomatoes.png",
                    "cross_term__rotten_tomatoes__er-p0.1.png",
                    "cross_term__rotten_tomatoes__er-p0.5.png",
                    "cross_term__rotten_tomatoes__ring.png"]
    for name in pngs:
        data = (tmp_path / "rep" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert f"]({name})" in text


def test_runs_csv_lists_every_finished_run(study, tmp_path):
    report.write_report(study, tmp_path / "rep")
    with (tmp_path / "rep" / "runs.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 28 and "sub/unfinished" not in {x["run"] for x in lines}
    row = next(x for x in lines if x["run"] == "lora_0.002_0.1_1")
    assert (row["method"], row["connectivity"], row["seed"], row["lr"]) == ("lora", "ER p=0.1",
                                                                            "1", "0.002")
    assert float(row["final_acc"]) == 0.71 and float(row["wall_time_s"]) == 60.0
    assert row["switch_interval"] == row["T"] == ""  # lora never switches
    assert float(row["mean_cross_term_error"]) == pytest.approx(0.25)  # mean of 0.1 .. 0.4


def test_fit_c_on_synthetic_data():
    rho = np.array([0.15, 0.64, 0.91])
    x = 1 / np.sqrt(1 - rho)
    assert report.fit_c(list(2.0 * x), list(rho)) == pytest.approx(2.0)
    noisy = 1.5 * x + np.array([0.1, -0.2, 0.05])
    assert report.fit_c(list(noisy), list(rho)) == pytest.approx((x @ noisy) / (x @ x))


def test_best_t_table_and_fit_from_a_t_sweep(tmp_path):
    root, best = tmp_path / "t", {0.5: 1, 0.1: 3, 0.02: 5}
    for p, t_best in best.items():
        for T in [1, 3, 5, 10]:
            for seed in range(2):
                acc = 0.8 - 0.01 * abs(T - t_best) + 0.001 * seed
                fake_run(root, f"{p}_{T}_{seed}", ["method.name=tad", f"topology.p={p}",
                                                   f"method.switch_interval={T}",
                                                   f"run.seed={seed}", "topology.rho_samples=300"],
                         acc)
        fake_run(root, f"{p}_auto", ["method.name=tad", f"topology.p={p}",
                                     "topology.rho_samples=300"], 0.79, rho=0.5)
    rows = report.collect(root)
    found = report.best_t(rows, "rotten_tomatoes")
    assert [f["best"] for f in found] == [1, 3, 5] and found[0]["auto"] == [3]
    fixed = [r for r in rows if r["p"] == 0.1 and r["si"] != "auto"]
    expected = np.mean([0.5] + [topology.process_rho("er", 10, 0.1, samples=300)] * len(fixed))
    assert found[1]["rho"] == pytest.approx(expected)  # summary rho where given, else computed
    c = report.fit_c([1, 3, 5], [f["rho"] for f in found])
    text = report.write_report(root, tmp_path / "rep").read_text()
    assert f"**c = {c:.3f}**" in text and "| tad T=auto |" in text
    defaults = [topology.switch_interval(f["rho"], topology.DEFAULT_C) for f in found]
    assert [f["default"] for f in found] == defaults
    for f in found:  # the default c's T, and whether it is in the best group
        where = "in" if f["default"] in f["group"] else "outside"
        assert f"| {f['default']} ({where}) |" in text
    assert (tmp_path / "rep" / "acc_vs_T__rotten_tomatoes.png").stat().st_size > 1000


def test_cli(study, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tadlora")
    report.add_parser(parser.add_subparsers())
    ns = parser.parse_args(["report", str(study)])
    assert ns.func(ns) == 0
    assert (study / "report" / "report.md").is_file()
    assert str(study / "report" / "report.md") in capsys.readouterr().out


def test_cell_text_shows_spread_only_over_several_seeds():
    assert report._pct((0.755, 0.0, 1)) == "75.50 (1)"
    assert report._pct((0.755, 0.012, 3), " †") == "75.50 ± 1.20 (3) †"
    assert report._pct(None) == ""


def test_paired_differences_against_lora_match_hand_computation(study, tmp_path):
    rows = report.collect(study)
    diffs = report.paired(rows, "rotten_tomatoes")
    # both picked lr 0.002; tad has no ring runs; the references are not paired
    assert set(diffs) == {("tad", "ER p=0.5"), ("tad", "ER p=0.1")}
    assert diffs["tad", "ER p=0.5"] == pytest.approx([0.01, -0.02, -0.05])
    assert diffs["tad", "ER p=0.1"] == pytest.approx([0.08, 0.06, 0.01])
    text = report.write_report(study, tmp_path / "rep").read_text()
    assert "| tad | -2.00 ± 3.00 (n=3; ahead on 1) | +5.00 ± 3.61 (n=3; ahead on 3) |  |" in text


def test_a_seed_run_twice_in_other_settings_is_not_paired(study):
    fake_run(study, "tad_again", ["method.name=tad", "train.lr=0.002", "topology.p=0.1",
                                  "run.seed=0", "train.local_steps=8"], 0.99)
    diffs = report.paired(report.collect(study), "rotten_tomatoes")
    assert diffs["tad", "ER p=0.1"] == pytest.approx([0.06, 0.01])  # seed 0 is ambiguous now
