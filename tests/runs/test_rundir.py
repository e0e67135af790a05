"""The run directory: names, creation, the metrics log, atomic writes, resumable config."""

import json

import pytest

from tadlora.runs import config, rundir
from tadlora.runs.config import ConfigError
from tadlora.runs.rundir import RunDir


def test_create_writes_the_config_and_refuses_a_started_run(tmp_path):
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=r", "method.name=lora"])
    run = RunDir.create(cfg)
    assert run.path == tmp_path / "r" and config.load(run.config) == cfg
    run.append({"round": 0})
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        RunDir.create(cfg)


def test_default_name_says_method_topology_and_seed():
    cfg = config.load(None, ["method.name=ffa", "topology.kind=ring", "run.seed=3"])
    assert rundir.default_name(cfg).startswith("ffa-ring-s3-")
    assert rundir.default_name(config.load(None, ["run.name=x"])) == "x"


def test_metrics_log_append_read_truncate(tmp_path):
    run = RunDir(tmp_path)
    assert run.records() == []
    for t in range(4):
        run.append({"round": t, "loss": 1.0 / (t + 1)})
    assert [r["round"] for r in run.records()] == [0, 1, 2, 3]
    assert [r["round"] for r in run.records(before=2)] == [0, 1]
    run.truncate(2)
    assert [json.loads(x)["round"] for x in run.metrics.read_text().splitlines()] == [0, 1]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_json_files_are_written_whole(tmp_path):
    run = RunDir(tmp_path)
    run.write_json("summary.json", {"mean": 0.5})
    assert run.read_json("summary.json") == {"mean": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_saved_round_reads_the_checkpoint_or_says_zero(tmp_path):
    run = RunDir(tmp_path)
    assert run.saved_round() == 0
    run.checkpoint.mkdir()
    (run.checkpoint / rundir.META).write_text("not json")
    assert run.saved_round() == 0
    (run.checkpoint / rundir.META).write_text(json.dumps({"round": 7}))
    assert run.saved_round() == 7
    assert run.slice(2, 7) == tmp_path / "peers" / "rank-2" / "round-000007"


def test_resumable_config_allows_only_run_keys(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        rundir.resumable_config(tmp_path)
    RunDir.create(config.load(None, [f"run.out_dir={tmp_path}", "run.name=r"]))
    assert rundir.resumable_config(tmp_path / "r", ["run.rounds=90"]).run.rounds == 90
    with pytest.raises(ConfigError, match="only run"):
        rundir.resumable_config(tmp_path / "r", ["train.lr=1"])
    with pytest.raises(ConfigError, match="only run"):
        rundir.resumable_config(tmp_path / "r", ["run.seed=2"])
