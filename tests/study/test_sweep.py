"""`tadlora sweep`: what each run directory needs (plan), running the grid in-process and as
subprocesses, skipping finished runs, isolating failures, resuming."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tadlora.engines import local
from tadlora.runs import config, loop
from tadlora.runs.config import ConfigError
from tadlora.runs.lock import Lock
from tadlora.runs.rundir import RunDir
from tadlora.study import identity, results, sweep, sweep_plan
from tadlora.study.sweep_file import load_sweep
from tests.conftest import tiny_run_args
from tests.study.test_sweep_file import GRID, REPO, write


def tiny_overrides(model_dir, out_dir, *extra):
    """tiny_run_args, smaller still, as sweep overrides (the sweep names its runs itself)."""
    smaller = ["run.rounds=3", "run.eval_every=3", "clients.n=2", "train.local_steps=1",
               "data.val_size=16", "data.examples_per_client=8", "topology.rho_samples=50"]
    return [a for a in tiny_run_args(model_dir, out_dir, "x", *smaller, *extra)
            if not a.startswith("run.name=")]


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tadlora")
    sweep.add_parser(parser.add_subparsers())
    ns = parser.parse_args(argv)
    return ns.func(ns)


def test_only_selects_a_piece_of_the_grid(tmp_path, capsys):
    write(tmp_path / "base.toml", "")
    f = write(tmp_path / "g.toml", GRID)
    s = load_sweep(f)
    names = [j.name for j in sweep.plan(s, only=["run.seed=1", "method.name=tad,fedavg"])]
    assert names == ["tad__er-p0.5__T3__s1", "tad__er-p0.5__T5__s1", "tad__er-p0.1__T3__s1",
                     "tad__er-p0.1__T5__s1", "tad__ring__T3__s1", "tad__ring__T5__s1",
                     "fedavg__er-p0.5__T3__s1", "fedavg__er-p0.1__T3__s1"]
    assert [j.name for j in sweep.plan(s, only=["topology.p=0.1", "run.seed=0",
                                                "method.name=lora"])] == [
        "lora__er-p0.1__T3__s0", "lora__er-p0.1__T5__s0"]
    assert cli(["sweep", str(f), "--dry-run", "--only", "topology.kind=ring",
                "--only", "run.seed=0"]) == 0
    assert "4 runs: 4 new" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--only 'run.seed' must look like"):
        sweep.plan(s, only=["run.seed"])
    with pytest.raises(ConfigError, match="run.sed is not a key the sweep varies; its keys "
                                          "are method.name, method.switch_interval, run.seed"):
        sweep.plan(s, only=["run.sed=1"])
    with pytest.raises(ConfigError, match="train.lr is not a key the sweep varies"):
        sweep.plan(s, only=["train.lr=0.005"])  # in [base], not an axis
    with pytest.raises(ConfigError, match="--only run.seed=7 matches no run"):
        sweep.plan(s, only=["run.seed=7"])
    with pytest.raises(ConfigError, match="matches no run"):
        sweep.plan(s, only=["topology.kind=ring", "topology.p=0.1"])


def test_an_override_of_a_grid_axis_is_refused(tmp_path):
    write(tmp_path / "base.toml", "")
    s = load_sweep(write(tmp_path / "g.toml", GRID))
    for key in ("method.name=lora", "run.seed=3", "topology.kind=complete"):  # grid, include
        with pytest.raises(ConfigError, match=f"{key.split('=')[0]} is an axis of the sweep"):
            sweep.plan(s, [key])
    assert len(sweep.plan(s, ["train.lr=1e-3"])) == len(s.runs)


def test_two_sweeps_on_one_out_dir_do_not_race(tmp_path):
    write(tmp_path / "base.toml", "")
    s = replace(load_sweep(write(tmp_path / "g.toml", GRID)), out_dir=tmp_path / "out")
    (tmp_path / "out").mkdir()
    with Lock(tmp_path / "out", "sweep out_dir"), \
            pytest.raises(ConfigError, match="sweep out_dir .*out is being written by .*pid"):
        sweep.run_sweep(s, 1, only=["run.seed=0"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["writer.lock"]


def fake_run_dir(d: Path, cfg: config.Config, saved_round: int | None, finished: bool) -> None:
    d.mkdir(parents=True)
    (d / "config.toml").write_text(config.to_toml(cfg))
    (d / "metrics.jsonl").write_text("")
    if saved_round is not None:
        (d / "checkpoint").mkdir()
        (d / "checkpoint" / "state.json").write_text(json.dumps({"round": saved_round}))
    if finished:
        (d / "summary.json").write_text('{"mean": 0.5}')


def test_plan_classifies_run_directories(tmp_path):
    s = load_sweep(write(tmp_path / "s.toml", '[sweep]\nname="s"\n[base]\n"run.rounds"=4\n'
                               '[grid]\n"run.seed"=[0, 1, 2, 3, 4, 5]\n'))
    out = tmp_path / "out"
    cfgs = {j.name: config.load(None, j.overrides) for j in sweep.plan(s, [f"run.out_dir={out}"])}
    fake_run_dir(out / "s0", cfgs["s0"], 4, True)  # finished
    fake_run_dir(out / "s1", cfgs["s1"], 2, False)  # interrupted
    fake_run_dir(out / "s2", cfgs["s2"], None, False)  # never checkpointed
    c3, c4 = cfgs["s3"], cfgs["s4"]
    fake_run_dir(out / "s3", replace(c3, train=replace(c3.train, lr=1.0)), 4, True)  # changed
    fake_run_dir(out / "s4", replace(c4, run=replace(c4.run, rounds=2)), 2, True)  # shorter
    (out / "s5").mkdir()
    (out / "s5" / "config.toml").write_text("[train]\nold_key = 1\n")  # another version's
    jobs = {j.name: j for j in sweep.plan(s, [f"run.out_dir={out}"])}
    assert {n: j.action for n, j in jobs.items()} == {
        "s0": "skip", "s1": "resume", "s2": "new", "s3": "stale", "s4": "resume", "s5": "stale"}
    assert "cannot be read" in jobs["s5"].note
    assert "train.lr" in jobs["s3"].note
    # c (the constant of switch_interval=auto) matters to tad with auto only
    for method, matters in [("tad", True), ("lora", False), ("adf", False)]:
        a = config.load(None, [f"method.name={method}"])
        other = replace(a, method=replace(a.method, c=2.5))
        assert bool(identity.differences(a, other)) == matters
    assert "run.rounds=4" in jobs["s4"].resume_overrides  # a shorter finished run is extended
    with pytest.raises(ConfigError, match="run.name"):
        sweep.plan(s, ["run.name=x"])


def test_runs_kept_elsewhere_are_skipped(tmp_path, capsys):
    """--kept DIR: a run finished under DIR (e.g. study/records, from another machine, under
    another name or on another device) is not run again; one with other rounds, or unfinished
    there, is."""
    f = write(tmp_path / "s.toml", '[sweep]\nname="s"\n[base]\n"run.rounds"=4\n'
                                   '[grid]\n"run.seed"=[0, 1, 2, 3]\n')
    s, here, recs = load_sweep(f), tmp_path / "here", tmp_path / "records"
    cfgs = {j.name: config.load(None, j.overrides) for j in sweep.plan(s, [f"run.out_dir={here}"])}
    c0, c1 = cfgs["s0"], cfgs["s1"]
    fake_run_dir(recs / "other", replace(c0, run=replace(c0.run, name="other", out_dir="x"),
                                         train=replace(c0.train, device="cuda")), None, True)
    fake_run_dir(recs / "s1", replace(c1, run=replace(c1.run, rounds=2)), None, True)
    fake_run_dir(recs / "s2", cfgs["s2"], 2, False)  # unfinished there
    fake_run_dir(here / "s3", cfgs["s3"], 2, False)  # checkpointed here, finished there
    fake_run_dir(recs / "s3", cfgs["s3"], None, True)
    kept = sweep_plan.kept_runs([recs])
    jobs = {j.name: j.action for j in sweep.plan(s, [f"run.out_dir={here}"], kept=kept)}
    assert jobs == {"s0": "kept", "s1": "new", "s2": "new", "s3": "kept"}
    assert cli(["sweep", str(f), f"run.out_dir={here}", "--kept", str(recs), "--dry-run"]) == 0
    assert "4 runs: 2 new, 0 resume, 0 skip, 2 kept, 0 stale" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--kept .*nope: not a directory of runs or records"):
        sweep_plan.kept_runs([tmp_path / "nope"])


def test_sweep_runs_skips_isolates_failure_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    s = load_sweep(REPO / "sweeps" / "smoke.toml")
    over = tiny_overrides(tiny_model_dir, tmp_path / "runs")
    real_round = local.run_round

    def fail_tad_s1_at_2(fed, t):
        if t == 2 and fed.policy.name == "tad" and fed.seed == 1:
            raise RuntimeError("boom")
        return real_round(fed, t)

    monkeypatch.setattr(local, "run_round", fail_tad_s1_at_2)
    counts = sweep.run_sweep(s, 1, over)
    assert counts == {"total": 4, "done": 3, "resumed": 0, "skipped": 0, "failed": 1}
    broken = tmp_path / "runs" / "tad__s1"
    assert "boom" in (broken / "error.log").read_text()
    assert not (broken / "summary.json").exists() and (broken / "checkpoint").is_dir()

    monkeypatch.setattr(local, "run_round", real_round)
    counts = sweep.run_sweep(s, 1, over)
    assert counts == {"total": 4, "done": 1, "resumed": 1, "skipped": 3, "failed": 0}
    assert not (broken / "error.log").exists()
    rounds = [json.loads(x)["round"] for x in (broken / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2]
    assert json.loads((broken / "summary.json").read_text())["rounds"] == 3

    assert len(results.collect(tmp_path / "runs")) == 4


def test_parallel_subprocesses_and_cli(tiny_model_dir, tmp_path, capsys):
    f = write(tmp_path / "p.toml", '[sweep]\nname="p"\n[base]\n"topology.path"="missing.txt"\n'
                                   '[grid]\n"topology.kind"=["er", "file"]\n')
    out = tmp_path / "runs"
    args = tiny_overrides(tiny_model_dir, out)
    assert cli(["sweep", str(f), "--dry-run", *args]) == 0
    assert "2 runs: 2 new" in capsys.readouterr().out
    assert cli(["sweep", str(f), *args, "--jobs", "2"]) == 1  # options after overrides work
    assert (out / "er-p0.5" / "summary.json").is_file()
    assert "missing.txt" in (out / "file-missing" / "error.log").read_text()
    assert "1 done (0 resumed), 0 already finished, 1 failed" in capsys.readouterr().out


def test_plan_reads_the_run_directories_the_loop_writes(tiny_model_dir, tmp_path, monkeypatch):
    """plan classifies directories written by runs.loop itself: a finished run is skipped, an
    interrupted one resumed (its resume overrides are ones a resume accepts) and a missing one
    started; a longer sweep extends a finished run; a changed setting makes it stale."""
    s = load_sweep(write(tmp_path / "s.toml", '[sweep]\nname="s"\n[grid]\n"run.seed"=[0, 1, 2]\n'))
    over = tiny_overrides(tiny_model_dir, tmp_path / "runs")
    jobs = {j.name: j for j in sweep.plan(s, over)}
    assert {n: j.action for n, j in jobs.items()} == {"s0": "new", "s1": "new", "s2": "new"}
    loop.run(config.load(None, jobs["s0"].overrides))
    real_round = local.run_round

    def interrupted_at_2(fed, t):
        if t == 2:
            raise KeyboardInterrupt
        return real_round(fed, t)

    monkeypatch.setattr(local, "run_round", interrupted_at_2)
    with pytest.raises(KeyboardInterrupt):
        loop.run(config.load(None, jobs["s1"].overrides))
    monkeypatch.undo()
    jobs = {j.name: j for j in sweep.plan(s, over)}
    assert {n: j.action for n, j in jobs.items()} == {"s0": "skip", "s1": "resume", "s2": "new"}

    counts = sweep.run_sweep(s, 1, over)
    assert counts == {"total": 3, "done": 2, "resumed": 1, "skipped": 1, "failed": 0}
    assert all((j.directory / "summary.json").is_file() for j in jobs.values())
    assert [r["round"] for r in RunDir(jobs["s1"].directory).records()] == [0, 1, 2]

    longer = [*over, "run.rounds=4"]
    assert {j.action for j in sweep.plan(s, longer)} == {"resume"}
    counts = sweep.run_sweep(s, 1, longer, only=["run.seed=0"])
    assert counts == {"total": 1, "done": 1, "resumed": 1, "skipped": 0, "failed": 0}
    assert json.loads((jobs["s0"].directory / "summary.json").read_text())["rounds"] == 4
    assert [j.action for j in sweep.plan(s, longer)] == ["skip", "resume", "resume"]

    changed = {j.name: j for j in sweep.plan(s, [*over, "train.lr=0.1"])}
    assert {j.action for j in changed.values()} == {"stale"}
    assert "train.lr" in changed["s0"].note


def test_without_jobs_a_cpu_sweep_runs_one_run_per_core(tmp_path, monkeypatch):
    write(tmp_path / "base.toml", "")
    s = load_sweep(write(tmp_path / "g.toml", GRID))
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 6)
    assert sweep.default_jobs(s, sweep.plan(s)) == 6
    assert sweep.default_jobs(s, sweep.plan(s, ["train.device=cuda"])) == 1  # one GPU
    ns = argparse.Namespace(rest=["--jobs", "3"], jobs=None, only=None, kept=None, dry_run=False)
    assert sweep._arguments(ns)[0] == 3
