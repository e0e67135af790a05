import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tadlora import config, runner, sweep
from tadlora.config import ConfigError
from tadlora.sweep_file import load_sweep
from tests.conftest import tiny_run_args

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


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


GRID = """
[sweep]
name = "g"
out_dir = "out/g"
base = "base.toml"

[base]
"run.rounds" = 7
train = {lr = 5e-3}

[grid]
"method.name" = ["lora", "tad"]
"topology.p" = [0.5, 0.1]
"run.seed" = [0, 1]
"method.switch_interval" = [3, 5]

[[include]]
"topology.kind" = "ring"
"topology.p" = 0.5

[[include]]
"method.name" = ["local", "fedavg"]
"method.switch_interval" = 3
"""


def test_grid_expansion_names_and_includes(tmp_path):
    write(tmp_path / "base.toml", "[train]\nweight_decay = 0.5\n")
    s = load_sweep(write(tmp_path / "g.toml", GRID))
    assert s.name == "g" and s.out_dir == Path("out/g") and s.base == tmp_path / "base.toml"
    names = [n for n, _ in s.runs]
    # 2 x 2 x 2 x 2 grid, ring: 2 methods x 2 seeds x 2 T, references: 2 x 2 p x 2 seeds
    assert len(names) == 16 + 8 + 8 == len(set(names))
    assert names[0] == "lora__er-p0.5__T3__s0"
    assert "tad__ring__T5__s1" in names and "fedavg__er-p0.1__T3__s1" in names
    assert all(n.endswith("__s0") for n in names[:16])  # seed-major
    cfg = config.load(s.base, dict(s.runs)["tad__er-p0.1__T5__s1"])
    assert (cfg.run.rounds, cfg.train.lr, cfg.train.weight_decay) == (7, 5e-3, 0.5)
    assert (cfg.method.name, cfg.topology.p, cfg.method.switch_interval) == ("tad", 0.1, 5)
    assert config.load(s.base, dict(s.runs)["tad__ring__T5__s1"]).topology.kind == "ring"


def test_duplicates_dropped_and_bad_sweeps_rejected(tmp_path):
    dup = '[sweep]\nname="d"\n[grid]\n"run.seed"=[0, 1]\n[[include]]\n"run.seed"=1\n'
    assert [n for n, _ in load_sweep(write(tmp_path / "d.toml", dup)).runs] == ["s0", "s1"]
    one = '[sweep]\nname="o"\n[base]\n"run.seed"=3\n'
    assert [n for n, _ in load_sweep(write(tmp_path / "o.toml", one)).runs] == ["run"]
    ring = ('[sweep]\nname="r"\n[grid]\n"topology.p"=[0.5, 0.1]\n'
            '[[include]]\n"topology.kind"="ring"\n')
    with pytest.raises(ConfigError, match="both be named 'ring'.*topology.p"):
        load_sweep(write(tmp_path / "r.toml", ring))
    with pytest.raises(ConfigError, match="non-empty lists"):
        load_sweep(write(tmp_path / "b.toml", '[sweep]\nname="b"\n[grid]\n"run.seed"=1\n'))
    with pytest.raises(ConfigError, match="unknown config key train.x"):
        load_sweep(write(tmp_path / "k.toml", '[sweep]\nname="k"\n[grid]\n"train.x"=[1]\n'))
    with pytest.raises(ConfigError, match=r"needs \[sweep\] name"):
        load_sweep(write(tmp_path / "n.toml", '[grid]\n"run.seed"=[1]\n'))


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
    with pytest.raises(ConfigError, match="unknown config key run.sed"):
        sweep.plan(s, only=["run.sed=1"])


def test_shipped_sweep_files_load():
    sizes = {"smoke": 4, "study_rt": 74, "study_mnli": 42, "t_sweep": 45,
             "investigate_rt": 16, "precision_rt": 8}
    for name, size in sizes.items():
        s = load_sweep(REPO / "sweeps" / f"{name}.toml")
        assert (s.name, len(s.runs)) == (name, size)
    mnli = load_sweep(REPO / "sweeps" / "study_mnli.toml")
    cfg = config.load(None, mnli.runs[0][1])
    assert cfg.data.source == "files" and cfg.data.max_length == 128
    assert sweep.RESUME_KEYS == tuple(sorted(runner.RESUMABLE_KEYS))
    assert (sweep.CONFIG, sweep.SUMMARY, sweep.CKPT) == (runner.CONFIG, runner.SUMMARY,
                                                           runner.CKPT)


def test_precision_rt_is_study_rt_in_fp32():
    """The matched-seed precision check compares configs equal in everything but precision."""
    def configs(name: str) -> dict[str, config.Config]:
        s = load_sweep(REPO / "sweeps" / f"{name}.toml")
        return {n: config.load(s.base, o) for n, o in s.runs}
    study = {n.replace("__lr0.005", ""): c for n, c in configs("study_rt").items()}
    fp32 = configs("precision_rt")
    for name, cfg in fp32.items():
        assert cfg.train.precision == "fp32"
        bf16 = replace(cfg, train=replace(cfg.train, precision="bf16"))
        assert study[name] == bf16, name


def fake_run_dir(d: Path, cfg: config.Config, saved_round: int | None, finished: bool) -> None:
    d.mkdir(parents=True)
    (d / "config.toml").write_text(config.to_toml(cfg))
    (d / "metrics.jsonl").write_text("")
    if saved_round is not None:
        (d / "checkpoint").mkdir()
        (d / "checkpoint" / "state.json").write_text(json.dumps({"round": saved_round}))
    if finished:
        (d / "summary.json").write_text("{}")


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
        assert bool(sweep._differences(a, replace(a, method=replace(a.method, c=2.5)))) == matters
    assert "run.rounds=4" in jobs["s4"].resume_overrides  # a shorter finished run is extended
    with pytest.raises(ConfigError, match="run.name"):
        sweep.plan(s, ["run.name=x"])


def test_sweep_runs_skips_isolates_failure_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    s = load_sweep(REPO / "sweeps" / "smoke.toml")
    over = tiny_overrides(tiny_model_dir, tmp_path / "runs")
    real_round = runner.run_round

    def fail_tad_s1_at_2(fed, t):
        if t == 2 and fed.policy.name == "tad" and fed.seed == 1:
            raise RuntimeError("boom")
        return real_round(fed, t)

    monkeypatch.setattr(runner, "run_round", fail_tad_s1_at_2)
    counts = sweep.run_sweep(s, 1, over)
    assert counts == {"total": 4, "done": 3, "resumed": 0, "skipped": 0, "failed": 1}
    broken = tmp_path / "runs" / "tad__s1"
    assert "boom" in (broken / "error.log").read_text()
    assert not (broken / "summary.json").exists() and (broken / "checkpoint").is_dir()

    monkeypatch.setattr(runner, "run_round", real_round)
    counts = sweep.run_sweep(s, 1, over)
    assert counts == {"total": 4, "done": 1, "resumed": 1, "skipped": 3, "failed": 0}
    assert not (broken / "error.log").exists()
    rounds = [json.loads(x)["round"] for x in (broken / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2]
    assert json.loads((broken / "summary.json").read_text())["rounds"] == 3

    from tadlora import report
    assert len(report.collect(tmp_path / "runs")) == 4


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
