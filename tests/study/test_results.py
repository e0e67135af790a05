"""The runs under a directory, read, and the numbers of the report's tables (by hand)."""

import csv

import numpy as np
import pytest

from tadlora.core import topology
from tadlora.core.methods import DEFAULT_C, switch_interval
from tadlora.study.interval import best_t, fit_c, matched_seeds
from tadlora.study.report import paired_table
from tadlora.study.results import (
    cells,
    collect,
    crossed_precisions,
    mixed_settings,
    paired,
    paired_by_lr,
    pick_lr,
)
from tadlora.study.runs_csv import write_runs_csv
from tests.study.conftest import ACC, T_BEST, fake_run


def test_collect_labels_and_table_values_match_hand_computation(study):
    rows = collect(study)
    assert len(rows) == 8 * 3 + 4 + 1 and sum(not r["finished"] for r in rows) == 1
    r = next(r for r in rows if r["name"] == "lora_0.002_0.1_1")
    assert (r["task"], r["connectivity"], r["lr"], r["final"]) == ("rotten_tomatoes", "ER p=0.1",
                                                                    0.002, 0.71)
    assert r["evals"] == [(2, 0.71 / 2), (4, 0.71)] and r["cross"][0] == (1, 0.1)
    table = cells(rows)
    for (m, lr, p), accs in ACC.items():
        mean, std, n = table["rotten_tomatoes", m, f"ER p={p:g}", lr]
        assert mean == pytest.approx(np.mean(accs)) and n == 3
        assert std == pytest.approx(np.std(accs, ddof=1))
    assert table["rotten_tomatoes", "lora", "ring", 0.002][2] == 2  # the unfinished run: out


def test_lr_is_picked_per_method_and_connectivity(study):
    picked = pick_lr(collect(study))
    # lora's best rate moves with the connectivity; the ring ran at one rate only
    assert picked["rotten_tomatoes", "lora", "ER p=0.5"] == (
        0.002, {0.002: pytest.approx(0.82), 0.005: pytest.approx(0.61)})
    assert picked["rotten_tomatoes", "lora", "ER p=0.1"] == (
        0.005, {0.002: pytest.approx(np.mean([0.70, 0.71, 0.75])), 0.005: pytest.approx(0.91)})
    assert picked["rotten_tomatoes", "lora", "ring"] == (0.002, {0.002: pytest.approx(0.71)})
    assert [picked["rotten_tomatoes", "tad", f"ER p={p}"][0] for p in (0.5, 0.1)] == [0.002] * 2


def test_runs_csv_lists_every_finished_run(study, tmp_path):
    write_runs_csv(collect(study), tmp_path / "runs.csv")
    with (tmp_path / "runs.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 28 and "sub/unfinished" not in {x["run"] for x in lines}
    row = next(x for x in lines if x["run"] == "lora_0.002_0.1_1")
    assert (row["method"], row["connectivity"], row["seed"], row["lr"]) == ("lora", "ER p=0.1",
                                                                            "1", "0.002")
    assert float(row["final_acc"]) == 0.71 and float(row["wall_time_s"]) == 60.0
    assert (row["machine"], row["precision"]) == ("Test CPU (2 cores)", "fp32")
    assert row["switch_interval"] == row["T"] == ""  # lora never switches
    assert float(row["mean_cross_term_error"]) == pytest.approx(0.25)  # mean of 0.1 .. 0.4


def test_fit_c_on_synthetic_data():
    rho = np.array([0.15, 0.64, 0.91])
    x = 1 / np.sqrt(1 - rho)
    assert fit_c(list(2.0 * x), list(rho)) == pytest.approx(2.0)
    noisy = 1.5 * x + np.array([0.1, -0.2, 0.05])
    assert fit_c(list(noisy), list(rho)) == pytest.approx((x @ noisy) / (x @ x))


def test_best_t_and_fit_from_a_t_sweep(t_sweep):
    rows = collect(t_sweep)
    found = best_t(rows, "rotten_tomatoes")
    assert [f["best"] for f in found] == [1, 3, 5] and found[0]["auto"] == [3]
    fixed = [r for r in rows if r["p"] == 0.1 and r["si"] != "auto"]
    expected = np.mean([0.5] + [topology.process_rho("er", 10, 0.1, samples=300)] * len(fixed))
    assert found[1]["rho"] == pytest.approx(expected)  # summary rho where given, else computed
    defaults = [switch_interval(f["rho"], DEFAULT_C) for f in found]
    assert [f["default"] for f in found] == defaults
    c = fit_c([1, 3, 5], [f["rho"] for f in found])
    x = 1 / np.sqrt(1 - np.array([f["rho"] for f in found]))
    assert c == pytest.approx((x @ [1, 3, 5]) / (x @ x))


def test_paired_differences_against_lora_match_hand_computation(study, tmp_path):
    rows = collect(study)
    diffs = paired(rows, "rotten_tomatoes")
    # at the picked rates: both 0.002 at p=0.5, tad 0.002 against lora 0.005 at p=0.1; tad has
    # no ring runs; the references are not paired
    assert set(diffs) == {("tad", "ER p=0.5"), ("tad", "ER p=0.1")}
    assert diffs["tad", "ER p=0.5"] == pytest.approx([0.01, -0.02, -0.05])
    assert diffs["tad", "ER p=0.1"] == pytest.approx([-0.12, -0.14, -0.16])
    by_lr = paired_by_lr(rows, "rotten_tomatoes")  # at the same rate, every rate both ran
    assert set(by_lr) == {("tad", lr, f"ER p={p}") for lr in (0.002, 0.005) for p in (0.5, 0.1)}
    assert by_lr["tad", 0.002, "ER p=0.1"] == pytest.approx([0.08, 0.06, 0.01])
    assert by_lr["tad", 0.005, "ER p=0.5"] == pytest.approx([-0.10, -0.09, -0.08])


def test_seeds_and_pairs_that_resolved_precision_auto_differently_are_flagged(tmp_path):
    """precision=auto is bf16 on one machine and fp32 on another: the configs agree, the runs
    do not. Seed 1's tad ran in fp32, every other run in bf16."""
    root = tmp_path / "runs"
    for seed, tad_precision in enumerate(["bf16", "fp32"]):
        fake_run(root, f"lora_{seed}", ["method.name=lora", f"run.seed={seed}"], 0.8,
                 precision="bf16")
        fake_run(root, f"tad_{seed}", ["method.name=tad", f"run.seed={seed}"], 0.7,
                 precision=tad_precision)
    rows = collect(root)
    task, conn = rows[0]["task"], rows[0]["connectivity"]
    assert mixed_settings(rows) == ["train.precision"]
    assert crossed_precisions(rows, task) == [f"tad, {conn}, seed 1 (fp32 vs bf16)"]
    assert paired(rows, task)["tad", conn] == pytest.approx([-0.1, -0.1])  # still paired
    assert "different precisions: tad" in "\n".join(paired_table(rows, task))
    same = [r for r in rows if r["precision"] == "bf16"]
    assert mixed_settings(same) == [] and crossed_precisions(same, task) == []


def test_seeds_of_one_cell_that_read_other_files_are_flagged(tmp_path):
    """Seeds 0 and 1 recorded other bytes under data.path; seed 2 predates the record."""
    root = tmp_path / "runs"
    for seed, inputs in enumerate([{"data.path": "aaa", "model.path": "m"},
                                   {"data.path": "bbb", "model.path": "m"}, None]):
        fake_run(root, f"lora_{seed}", ["method.name=lora", f"run.seed={seed}"], 0.8,
                 inputs=inputs)
    rows = collect(root)
    assert mixed_settings(rows) == ["the files of data.path"]
    assert mixed_settings([r for r in rows if r["seed"] != 1]) == []


def test_a_seed_run_twice_in_other_settings_is_not_paired(study):
    # in a setting the report merges into the same cell (how it was computed, not what):
    # a setting such as train.local_steps would make a task variant of its own
    fake_run(study, "tad_again", ["method.name=tad", "train.lr=0.002", "topology.p=0.1",
                                  "run.seed=0", "train.precision=bf16"], 0.99)
    rows = collect(study)
    assert paired_by_lr(rows, "rotten_tomatoes")["tad", 0.002, "ER p=0.1"] == pytest.approx(
        [0.06, 0.01])  # seed 0 is ambiguous now
    assert paired(rows, "rotten_tomatoes")["tad", "ER p=0.1"] == pytest.approx([-0.14, -0.16])


def test_best_t_counts_an_auto_run_at_the_t_it_resolved_to(t_sweep):
    # the fixture's auto runs resolve to T=3 on seed 0, which a fixed T=3 run already has
    before = best_t(collect(t_sweep), "rotten_tomatoes")
    assert [f["stats"][3][2] for f in before] == [2, 2, 2]
    for p in T_BEST:
        fake_run(t_sweep, f"{p}_auto_2", ["method.name=tad", f"topology.p={p}", "run.seed=2",
                                          "topology.rho_samples=300"], 0.9, rho=0.5)
    after = best_t(collect(t_sweep), "rotten_tomatoes")
    assert [f["stats"][3][2] for f in after] == [3, 3, 3]  # seed 2 adds; seed 0 not twice
    assert [f["best"] for f in after] == [1, 3, 5]  # picked on seeds 0-1, which every T ran
    assert after[0]["stats"][3][0] == pytest.approx(np.mean([0.8 - 0.02, 0.8 - 0.02 + 0.001, 0.9]))


def test_best_t_is_picked_on_the_seeds_every_t_ran(t_sweep):
    # a third seed for the best T only, far below: its 3-seed mean falls under its neighbours'
    # 2-seed means, but on the seeds every T ran (0, 1) it is still the best
    for p, t in T_BEST.items():
        fake_run(t_sweep, f"{p}_{t}_2", ["method.name=tad", f"topology.p={p}", "run.seed=2",
                                         f"method.switch_interval={t}",
                                         "topology.rho_samples=300"], 0.7)
    found = best_t(collect(t_sweep), "rotten_tomatoes")
    assert [f["best"] for f in found] == list(T_BEST.values())
    assert [f["seeds"] for f in found] == [[0, 1]] * 3
    assert found[0]["stats"][1][2] == 3
    assert found[0]["matched"][1] == pytest.approx((0.8005, np.std([0.8, 0.801], ddof=1), 2))


def test_lr_is_picked_on_the_seeds_every_lr_ran(tmp_path):
    # 1e-3 on seeds 0-2 (mean 0.74), 5e-4 on seed 0 only: 0.75 beats the 3-seed mean but not
    # 1e-3's own seed 0 (0.76), so 1e-3 wins on the matched seed
    for seed, acc in enumerate([0.76, 0.72, 0.74]):
        fake_run(tmp_path, f"a{seed}", ["method.name=lora", "train.lr=1e-3", f"run.seed={seed}"],
                 acc)
    fake_run(tmp_path, "b0", ["method.name=lora", "train.lr=5e-4", "run.seed=0"], 0.75)
    rows = collect(tmp_path)
    lr, scores = pick_lr(rows)["rotten_tomatoes", "lora", rows[0]["connectivity"]]
    assert lr == 1e-3 and scores == {5e-4: pytest.approx(0.75), 1e-3: pytest.approx(0.76)}


def test_best_t_leaves_out_a_t_run_on_fewer_seeds_instead_of_matching_down_to_them(t_sweep):
    # a third seed for T = 1, 3, 5 (not 10), and T = 7 on seed 0 only: the pick is made on
    # seeds 0-2 among T = 1, 3, 5 (9 runs), not on seed 0 over every T (5) or 0-1 (8)
    for p in T_BEST:
        for t in (1, 3, 5):
            fake_run(t_sweep, f"{p}_{t}_2", ["method.name=tad", f"topology.p={p}", "run.seed=2",
                                             f"method.switch_interval={t}",
                                             "topology.rho_samples=300"], 0.8 - 0.01 * t)
        fake_run(t_sweep, f"{p}_7_0", ["method.name=tad", f"topology.p={p}", "run.seed=0",
                                       "method.switch_interval=7", "topology.rho_samples=300"],
                 0.99)
    found = best_t(collect(t_sweep), "rotten_tomatoes")
    assert [f["seeds"] for f in found] == [[0, 1, 2]] * 3
    assert [sorted(f["matched"]) for f in found] == [[1, 3, 5]] * 3
    assert [f["best"] for f in found] == [1, 3, 5] and found[0]["stats"][7][0] == 0.99
    assert matched_seeds({1: {0: 1}, 2: {1: 1}}) == []  # no two T share a seed


@pytest.mark.parametrize("summary", ['[1]', '{"mean": "x"}', '{"rho": 0.5}'])
def test_a_run_with_a_damaged_summary_is_skipped_naming_the_file(tmp_path, capsys, summary):
    """Valid JSON that is not a summary (a list, a mean that is no number, no mean): the report
    skips the run and names its summary.json, instead of a traceback or a formatting error."""
    fake_run(tmp_path, "ok", ["run.seed=0"], 0.8)
    bad = fake_run(tmp_path, "bad", ["run.seed=1"], 0.7)
    (bad / "summary.json").write_text(summary)
    assert [r["name"] for r in collect(tmp_path)] == ["ok"]
    err = capsys.readouterr().err
    assert "skipping" in err and "bad/summary.json" in err and "restore it" in err


def test_best_t_compares_the_t_at_the_rate_most_tad_runs_used(t_sweep):
    # a tuned auto run at another rate, far ahead: neither a T of the sweep nor its auto T
    before = best_t(collect(t_sweep), "rotten_tomatoes")
    for p in T_BEST:
        fake_run(t_sweep, f"{p}_auto_fast", ["method.name=tad", f"topology.p={p}",
                                             "train.lr=0.001", "topology.rho_samples=300"],
                 0.99, rho=0.5)
    after = best_t(collect(t_sweep), "rotten_tomatoes")
    assert {f["lr"] for f in after} == {before[0]["lr"]} != {0.001}
    assert [(f["best"], f["stats"]) for f in after] == [(f["best"], f["stats"]) for f in before]
