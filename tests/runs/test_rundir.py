"""The run directory: names, creation, the metrics log, atomic writes, resumable config."""

import json
import os
import subprocess
import sys

import pytest

from tadlora.runs import config, lock, rundir
from tadlora.runs.config import ConfigError
from tadlora.runs.rundir import RunDir


def test_create_writes_the_config_and_refuses_a_started_run(tmp_path):
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=r", "method.name=lora"])
    run = RunDir.create(cfg)
    assert run.path == tmp_path / "r" and config.load(run.config) == cfg
    run.checkpoint.mkdir()
    run.unlock()
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        RunDir.create(cfg)
    run.checkpoint.rmdir()
    (run.path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        RunDir.create(cfg)


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=r"])
    run = RunDir.create(cfg)
    run.append({"round": 0})
    run.write_json("clients.json", {})
    run.unlock()  # as when its process died
    again = RunDir.create(cfg)
    assert again.records() == [] and not (again.path / "clients.json").exists()
    assert sorted(p.name for p in again.path.iterdir()) == ["config.toml", "writer.lock"]


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=r"])
    run = RunDir.create(cfg)
    with pytest.raises(ConfigError, match=rf"being written by .*pid {os.getpid()}"):
        RunDir.create(cfg)
    with pytest.raises(lock.Busy):
        RunDir.open(run.path)
    run.unlock()
    RunDir.open(run.path).unlock()


def test_a_lock_of_a_dead_process_does_not_block(tmp_path):
    """A process that takes the lock and is killed (SIGKILL): the kernel drops its lock."""
    code = ("import sys, os, signal; from pathlib import Path; from tadlora.runs.lock import "
            "Lock; Lock(Path(sys.argv[1])); print('held', flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode == -9 and "held" in done.stdout
    assert "pid" in (tmp_path / lock.LOCK).read_text()  # the dead holder's line is still there
    with lock.Lock(tmp_path) as held:
        assert f"pid {os.getpid()}" in held.path.read_text()


def test_never_writes_into_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=mine"])
    with pytest.raises(ConfigError, match=r"not a run directory .*notes.txt"):
        RunDir.create(cfg)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/tmp/x", "a\\b"])
def test_run_name_cannot_leave_the_out_dir(tmp_path, name):
    cfg = config.load(None, [f"run.out_dir={tmp_path / 'out'}", f"run.name={name}"])
    with pytest.raises(ConfigError, match="run.name=.*one directory name inside run.out_dir"):
        RunDir.create(cfg)
    assert not (tmp_path / "out").exists() and sorted(tmp_path.iterdir()) == []


def test_an_out_dir_through_a_file_is_named(tmp_path):
    (tmp_path / "f").write_text("")
    cfg = config.load(None, [f"run.out_dir={tmp_path / 'f' / 'runs'}", "run.name=r"])
    with pytest.raises(ConfigError, match="run.out_dir: cannot create the directory"):
        RunDir.create(cfg)


def test_discard_leaves_nothing_of_a_run_that_failed_at_start_up(tmp_path):
    run = RunDir.create(config.load(None, [f"run.out_dir={tmp_path}", "run.name=r"]))
    run.discard()
    assert sorted(tmp_path.iterdir()) == []


def test_the_metrics_log_is_strict_json(tmp_path):
    run = RunDir(tmp_path)
    run.append({"round": 0, "train_loss": float("nan"), "client_loss": [1.0, float("inf")]})
    line = run.metrics.read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == \
        {"round": 0, "train_loss": None, "client_loss": [1.0, None]}
    assert run.records() == [json.loads(line)]


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


def test_a_torn_last_record_is_a_round_not_saved_and_a_damaged_one_is_named(tmp_path):
    """Killed while appending round 2 (it precedes that round's checkpoint): the partial line
    is passed over and a resume's truncate removes it; a bad complete line names the file,
    its line and the fix, for resume and report alike."""
    run = RunDir(tmp_path)
    for t in range(2):
        run.append({"round": t})
    with run.metrics.open("a") as log:
        log.write('{"round": 2, "train_lo')
    assert [r["round"] for r in run.records()] == [0, 1]
    run.truncate(2)
    assert run.metrics.read_text() == '{"round": 0}\n{"round": 1}\n'
    for bad in ("garbage", "[1, 2]", '{"loss": 1}', '{"round": 1, "eval": 5}',
                '{"round": 1, "eval": {"x": 1}}', '{"round": 1, "train_loss": "x"}'):
        run.metrics.write_text(f'{{"round": 0}}\n{bad}\n{{"round": 2}}\n')
        with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a round record .*"
                                             r"restore the file from a copy"):
            run.records()
    (tmp_path / "summary.json").write_text('{"mean": ')
    with pytest.raises(ValueError, match=r"summary.json is not valid JSON .*restore it"):
        run.read_json("summary.json")


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


def test_a_json_file_that_is_not_an_object_is_named(tmp_path):
    """clients.json or summary.json damaged into valid JSON of another kind (a list): resume,
    export, keep and report get a ValueError naming the file, not a TypeError."""
    run = RunDir(tmp_path)
    (tmp_path / "clients.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"clients.json holds \[1, 2\], not a JSON object; "
                                         r"restore it"):
        run.read_json("clients.json")


@pytest.mark.parametrize("damaged", ["[1, 2]", '"x"', "{not json"])
def test_a_damaged_elapsed_record_starts_over_instead_of_failing_every_checkpoint(tmp_path,
                                                                                 damaged):
    run = RunDir(tmp_path)
    (tmp_path / rundir.ELAPSED).write_text(damaged)
    assert run.elapsed(3) == 0.0
    run.note_elapsed(3, 12.34)
    assert run.elapsed(3) == 12.3
