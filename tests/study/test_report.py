"""`tadlora report`: the markdown tables, the CSV, the plots and the command."""

import argparse

import numpy as np
import pytest

from tadlora.runs.config import ConfigError
from tadlora.study import report
from tadlora.study.interval import best_t, fit_c
from tadlora.study.results import collect
from tests.study.conftest import ACC, fake_run


def test_report_markdown_and_plots(study, tmp_path):
    path = report.write_report(study, tmp_path / "rep")
    text = path.read_text()
    assert ("28 finished runs (0.47 h of run wall time in all; 28 on Test CPU (2 cores)); "
            "1 unfinished") in text
    mean, std = np.mean(ACC["lora", 0.002, 0.1]), np.std(ACC["lora", 0.002, 0.1], ddof=1)
    # lora's best rate moves with the connectivity: each cell at its own, named
    assert ("| lora | per cell | 82.00 ± 2.00 (3) at 0.002 | 91.00 ± 1.00 (3) at 0.005 | "
            "71.00 ± 1.41 (2) at 0.002 |") in text
    assert "| tad | 0.002 | 80.00 ± 1.00 (3) | 77.00 ± 1.00 (3) |  |" in text
    assert f"{100 * mean:.2f} ± {100 * std:.2f} (3)" in text
    assert "| lora | 0.005 | 61.00 ± 1.00 (3) | 91.00 ± 1.00 (3) |  |" in text  # full table
    assert ("lora, ER p=0.5: 0.002 (0.002: 82.00, 0.005: 61.00); "
            "lora, ER p=0.1: 0.005 (0.002: 72.00, 0.005: 91.00); tad, ER p=0.5: 0.002") in text
    assert "| local | 0.002 | 61.00 ± 1.41 (2) | 61.00 ± 1.41 (2) † |" in text
    assert (tmp_path / "rep" / "runs.csv").is_file() and "[runs.csv](runs.csv)" in text
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


def test_best_t_table_and_fit_from_a_t_sweep(t_sweep, tmp_path):
    found = best_t(collect(t_sweep), "rotten_tomatoes")
    c = fit_c([1, 3, 5], [f["rho"] for f in found])
    text = report.write_report(t_sweep, tmp_path / "rep").read_text()
    assert f"**c = {c:.3f}**" in text and "| tad T=auto |" in text
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
    empty = tmp_path / "empty"
    empty.mkdir()  # a directory without runs (a typo'd path, say) is an error, not a blank page
    with pytest.raises(ConfigError, match=f"no runs under {empty} .*give the directory"):
        ns.func(parser.parse_args(["report", str(empty)]))
    assert not (empty / "report").exists()


def test_cell_text_shows_spread_only_over_several_seeds():
    assert report._pct((0.755, 0.0, 1)) == "75.50 (1)"
    assert report._pct((0.755, 0.012, 3), " †") == "75.50 ± 1.20 (3) †"
    assert report._pct(None) == ""


def test_paired_table_shows_the_differences_against_lora(study, tmp_path):
    text = report.write_report(study, tmp_path / "rep").read_text()
    # each at its picked rate: at p=0.1 tad's 0.002 against lora's 0.005
    assert "| tad | -2.00 ± 3.00 (n=3; ahead on 1) | -14.00 ± 2.00 (n=3; ahead on 0) |  |" in text
    same = text[text.index("at the same learning rate"):]
    assert "| tad | 0.002 | -2.00 ± 3.00 (n=3; ahead on 1) | +5.00 ± 3.61 (n=3; ahead on 3) |  |" \
        in same
    assert "| tad | 0.005 | -9.00 ± 1.00 (n=3; ahead on 0) | -30.00 ± 0.00 (n=3; ahead on 0) |" \
        in same


def test_a_directory_of_sweeps_gets_one_report_per_sweep(tmp_path):
    """results/ or study/records: each sweep reported on its own (the same config in two
    sweeps counts once in each), with an index; a directory of runs stays one report."""
    root = tmp_path / "records"
    for sweep, acc in (("a", 0.7), ("b", 0.9)):
        for seed in range(2):
            fake_run(root / sweep, f"lora_{seed}", ["method.name=lora", f"run.seed={seed}"],
                     acc)
    assert report.sweeps_under(root) == [root / "a", root / "b"]
    assert report.sweeps_under(root / "a") == []
    index = report.write_report(root, tmp_path / "rep")
    text = index.read_text()
    assert "- [a](a/report.md): 2 finished runs" in text and "- [b](b/report.md)" in text
    for sweep, acc in (("a", 70), ("b", 90)):
        sub = (tmp_path / "rep" / sweep / "report.md").read_text()
        assert "2 finished runs" in sub and f"| lora | 0.005 | {acc:.2f} ± 0.00 (2) |" in sub


def test_the_report_counts_runs_per_machine_and_those_that_name_none():
    done = [{"machine": "CPU A"}, {"machine": "CPU B"}, {"machine": "CPU B"}, {"machine": None}]
    assert report.machines(done) == "2 on CPU B; 1 on CPU A; 1 on machine not recorded"
