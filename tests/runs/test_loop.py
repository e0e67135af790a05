"""The round loop in one process: the run directory it writes, checkpoints and resume."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tadlora.core import lora
from tadlora.core.precision import resolve_precision
from tadlora.engines import local
from tadlora.runs import config, inputs, loop, machine
from tadlora.runs.checkpoint import CheckpointError
from tadlora.runs.config import ConfigError
from tadlora.runs.health import NonFiniteError, RunWarning, questionable
from tests.conftest import tiny_run_args
from tests.runs.test_checkpoint import flip_a_byte_of_tensor_data


def records(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


def saved_round(d):
    return json.loads((d / "checkpoint" / "state.json").read_text())["round"]


def crash_at(t_crash, real=local.run_round):
    """engines.local.run_round, but round `t_crash` is interrupted (as by Ctrl-C)."""
    def run_round(fed, t):
        if t == t_crash:
            raise KeyboardInterrupt
        return real(fed, t)
    return run_round


def crashed_run(args, t_crash, monkeypatch):
    """Run the config of `args` until round `t_crash` is interrupted; its run directory."""
    cfg = config.load(None, args)
    monkeypatch.setattr(local, "run_round", crash_at(t_crash))
    with pytest.raises(KeyboardInterrupt):
        loop.run(cfg)
    monkeypatch.undo()
    return Path(cfg.run.out_dir) / cfg.run.name


def test_run_writes_the_run_directory(tiny_model_dir, tmp_path):
    cfg = config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "r"))
    d, summary = loop.run(cfg)
    assert config.load(d / "config.toml") == cfg
    rows = records(d)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert [("eval" in r) for r in rows] == [False, True, False, True]
    for key in ["phase", "switch_interval", "train_loss", "consensus_A", "consensus_B",
                "cross_term_error", "bytes_sent"]:
        assert key in rows[0]
    assert rows[0]["phase"] == "B" and len(rows[0]["bytes_sent"]) == 4
    assert json.loads((d / "summary.json").read_text()) == summary
    assert summary["client_acc"] == rows[-1]["eval"]["client_acc"]
    assert len(summary["label_counts"]) == 4 and summary["rho"] is not None
    assert summary["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert summary["machine"] == machine.describe(torch.device("cpu"))
    assert (d / "checkpoint" / "adapters.safetensors").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        loop.run(cfg)


def test_interrupted_run_resumes_to_the_same_metrics(tiny_model_dir, tmp_path, monkeypatch):
    args = tiny_run_args(tiny_model_dir, tmp_path, "full", "method.name=lora")
    full, full_summary = loop.run(config.load(None, args))

    monkeypatch.setattr(local, "run_round", crash_at(3))
    args[2] = "run.name=cut"
    with pytest.raises(KeyboardInterrupt):
        loop.run(config.load(None, args))
    cut = tmp_path / "cut"
    assert [r["round"] for r in records(cut)] == [0, 1, 2]
    monkeypatch.undo()
    _, resumed_summary = loop.resume(cut)
    assert records(cut) == records(full)
    assert strip_time([resumed_summary]) == strip_time([full_summary])


def test_a_resumed_run_counts_the_wall_time_spent_before_its_checkpoint(
        tiny_model_dir, tmp_path, monkeypatch):
    cut = crashed_run(tiny_run_args(tiny_model_dir, tmp_path, "cut", "method.name=lora"), 3,
                      monkeypatch)
    kept = saved_round(cut)
    spent = json.loads((cut / "elapsed.json").read_text())
    assert kept > 0 and 0 < spent[str(kept)] < 600
    (cut / "elapsed.json").write_text(json.dumps({str(kept): 1000.0}))  # a long first session
    _, summary = loop.resume(cut)
    assert 1000.0 <= summary["wall_time_s"] < 1600  # rounded to 0.1 s: a fast resume adds 0
    assert json.loads((cut / "elapsed.json").read_text())["4"] == pytest.approx(
        summary["wall_time_s"], abs=60)


def test_resume_rejects_corrupt_checkpoint_and_changed_config(tiny_model_dir, tmp_path):
    d, _ = loop.run(config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "c")))
    with pytest.raises(ConfigError, match="already finished 4 rounds"):
        loop.resume(d)
    with pytest.raises(ConfigError, match="only run"):
        loop.resume(d, ["train.lr=1"])
    for ck in ("checkpoint", "checkpoint.prev"):
        (d / ck / "adapters.safetensors").write_bytes(b"garbage")
    with pytest.warns(RunWarning, match="sha256"), \
            pytest.raises(CheckpointError, match="corrupt.*without --resume"):
        loop.resume(d, ["run.rounds=6"])


def test_checkpoint_every_keeps_the_last_multiple_and_resume_reruns_since(
        tiny_model_dir, tmp_path, monkeypatch):
    """run.checkpoint_every=2: a crash in round 3 leaves rounds 0-2 in metrics.jsonl and the
    checkpoint of round 2 (after rounds 0-1); the resume drops round 2's record, reruns rounds
    2 and 3 and ends with the uninterrupted run's metrics and tensors."""
    args = tiny_run_args(tiny_model_dir, tmp_path, "full", "method.name=tad",
                         "method.switch_interval=1", "train.optimizer_state=keep",
                         "run.checkpoint_every=2")
    full, full_summary = loop.run(config.load(None, args))
    assert saved_round(full) == 4

    saves = []
    real_save = loop.save
    monkeypatch.setattr(loop, "save", lambda e, r, x, rnd: saves.append(rnd) or
                        real_save(e, r, x, rnd))
    monkeypatch.setattr(local, "run_round", crash_at(3))
    args[2] = "run.name=cut"
    with pytest.raises(KeyboardInterrupt):
        loop.run(config.load(None, args))
    cut = tmp_path / "cut"
    assert saves == [2]  # not after rounds 1 and 3
    assert [r["round"] for r in records(cut)] == [0, 1, 2]
    assert saved_round(cut) == 2

    ran = []
    monkeypatch.setattr(local, "run_round", lambda fed, t: ran.append(t) or
                        crash_at(None)(fed, t))
    with pytest.warns(RunWarning, match=r"from round 2: the 1 logged round\(s\) after the "
                                         r"checkpoint it restores \(2..2\) are dropped"):
        _, resumed_summary = loop.resume(cut)
    assert ran == [2, 3] and saves == [2, 4]  # the last round is always saved
    assert records(cut) == records(full)
    assert strip_time([resumed_summary]) == strip_time([full_summary])
    from safetensors.torch import load_file
    for name in ("adapters.safetensors", "optimizer.safetensors"):
        a = load_file(str(full / "checkpoint" / name))
        b = load_file(str(cut / "checkpoint" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_refuses_a_changed_switch_interval(tiny_model_dir, tmp_path):
    """The checkpoint records the switch interval it was made with: a config (or code) that now
    gives another T cannot continue it, and the refusal leaves the run as it was."""
    d, _ = loop.run(config.load(None, tiny_run_args(
        tiny_model_dir, tmp_path, "t", "method.name=tad", "method.switch_interval=2")))
    before = records(d)
    text = (d / "config.toml").read_text()
    assert "switch_interval = 2\n" in text
    (d / "config.toml").write_text(text.replace("switch_interval = 2\n", "switch_interval = 3\n"))
    with pytest.raises(CheckpointError, match="made with switch interval 2, the config now "
                                              "gives 3"):
        loop.resume(d, ["run.rounds=6"])
    assert records(d) == before and saved_round(d) == 4
    (d / "config.toml").write_text(text)  # the interval it was made with: resumes
    _, summary = loop.resume(d, ["run.rounds=6"])
    assert summary["rounds"] == 6 and [r["switch_interval"] for r in records(d)] == [2] * 6


# ------------------------------------------------------------------ integrity (issue 17)


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(tiny_model_dir, tmp_path):
    """Flipped bytes in the last checkpoint's tensor data: resume warns, restores the previous
    checkpoint (round 3), truncates metrics.jsonl to it, ends with the full run's metrics and keeps
    round 3 as the fallback; with both corrupt it names the fix."""
    args = tiny_run_args(tiny_model_dir, tmp_path, "full", "method.name=lora")
    full, _ = loop.run(config.load(None, args))
    args[2] = "run.name=c"
    d, _ = loop.run(config.load(None, args))
    assert saved_round(d) == 4 and (d / "checkpoint.prev").is_dir()
    (d / "summary.json").unlink()
    flip_a_byte_of_tensor_data(d / "checkpoint" / "adapters.safetensors")
    with pytest.warns(RunWarning) as got:  # both warnings caught, neither re-emitted
        loop.resume(d, ["run.rounds=4"])
    messages = [str(w.message) for w in got]
    assert any("sha256" in m and "falling back" in m for m in messages)
    assert any("the 1 logged round(s) after the checkpoint it restores (3..3)" in m
               for m in messages)
    assert strip_time(records(d)) == strip_time(records(full))
    prev = json.loads((d / "checkpoint.prev" / "state.json").read_text())
    assert prev["round"] == 3  # the corrupt round-4 checkpoint did not displace it
    for d2 in (d / "checkpoint", d / "checkpoint.prev"):
        flip_a_byte_of_tensor_data(d2 / "adapters.safetensors")
    with pytest.warns(RunWarning), pytest.raises(
            CheckpointError, match=r"every checkpoint .* corrupt \(rounds \[3, 4\] fail"):
        loop.resume(d, ["run.rounds=6"])


def test_a_resume_names_rounds_the_log_lost_before_the_checkpoint(tiny_model_dir, tmp_path):
    """A log cut or edited by hand (round 1's line gone, the checkpoint at round 4): the resume
    warns that those metrics are lost, keeps the others and goes on from the checkpoint."""
    d, _ = loop.run(config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "cut")))
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    (d / "metrics.jsonl").write_text("".join(lines[:1] + lines[2:]))
    with pytest.warns(RunWarning, match=r"no record of 1 round\(s\) the checkpoint covers "
                                        r"\(1..1\).*metrics are lost"):
        loop.resume(d, ["run.rounds=5"])
    assert [r["round"] for r in records(d)] == [0, 2, 3, 4]


def test_a_run_records_its_files_by_content_and_a_resume_names_those_that_changed(
        tiny_model_dir, tmp_path, monkeypatch):
    graph = tmp_path / "g.txt"
    graph.write_text("0 1\n1 2\n2 3\n3 0\n")
    d = crashed_run(tiny_run_args(tiny_model_dir, tmp_path, "g", "topology.kind=file",
                                  f"topology.path={graph}", "method.name=lora"), 3, monkeypatch)
    recorded = json.loads((d / "clients.json").read_text())["inputs"]
    assert sorted(recorded) == ["model.path", "topology.path"]
    assert all(re.fullmatch("[0-9a-f]{12}", v) for v in recorded.values())
    graph.write_text("0 1\n1 2\n2 3\n3 0\n0 2\n")
    with pytest.warns(RunWarning, match=rf"the files of topology.path \({recorded['topology.path']}"
                                        r", now [0-9a-f]{12}\) are not the ones .* started on: its "
                                        r"rounds from 3 on read other files"):
        _, summary = loop.resume(d)
    assert summary["inputs"]["topology.path"] != recorded["topology.path"]
    assert summary["inputs"]["model.path"] == recorded["model.path"]


def test_a_run_hashes_its_files_once_and_records_the_bytes_it_read(
        tiny_model_dir, tmp_path, monkeypatch):
    graph = tmp_path / "g.txt"
    graph.write_text("0 1\n1 2\n2 3\n3 0\n")
    hashed, real_contents, real_round = [], inputs.contents, local.run_round

    def contents(path):
        hashed.append(Path(path).name)
        return real_contents(path)

    def run_round(fed, t):  # the file changes under the running run: it read the old bytes
        graph.write_text("0 1\n1 2\n2 3\n3 0\n0 2\n")
        return real_round(fed, t)

    monkeypatch.setattr(inputs, "contents", contents)
    monkeypatch.setattr(local, "run_round", run_round)
    d, summary = loop.run(config.load(None, tiny_run_args(
        tiny_model_dir, tmp_path, "h", "topology.kind=file", f"topology.path={graph}")))
    assert sorted(hashed) == sorted([Path(tiny_model_dir).name, "g.txt"])
    assert summary["inputs"] == json.loads((d / "clients.json").read_text())["inputs"]
    assert summary["inputs"]["topology.path"] != real_contents(graph)  # not the bytes at the end


def test_the_testbed_reads_no_model_or_data_files():
    cfg = config.load(None, ["data.source=synthetic", "data.path=somewhere"])
    assert inputs.input_files(cfg) == {"model.path": "", "data.path": "", "topology.path": ""}


def test_a_run_killed_before_its_first_checkpoint_reruns_or_resumes(
        tiny_model_dir, tmp_path, monkeypatch):
    args = tiny_run_args(tiny_model_dir, tmp_path, "k", "run.checkpoint_every=3")
    d = crashed_run(args, 2, monkeypatch)
    assert [r["round"] for r in records(d)] == [0, 1] and not (d / "checkpoint").exists()
    with pytest.warns(RunWarning) as got:
        _, summary = loop.resume(d)
    messages = [str(w.message) for w in got]
    assert any("no checkpoint yet: starting from round 0" in m for m in messages)
    dropped = "the 2 logged round(s) after the checkpoint it restores (0..1)"
    assert any(dropped in m for m in messages)
    assert [r["round"] for r in records(d)] == [0, 1, 2, 3] and summary["rounds"] == 4
    args[2] = "run.name=k2"
    crashed_run(args, 1, monkeypatch)
    _, again = loop.run(config.load(None, args))  # the same command again starts over
    assert again["rounds"] == 4


def test_a_second_writer_is_refused_while_the_first_runs(tiny_model_dir, tmp_path, monkeypatch):
    args = tiny_run_args(tiny_model_dir, tmp_path, "w")
    seen = []

    def run_round(fed, t, real=local.run_round):
        if t == 1:
            with pytest.raises(ConfigError, match=f"being written by .*pid {os.getpid()}"):
                loop.resume(tmp_path / "w")
            with pytest.raises(ConfigError, match="being written"):
                loop.run(config.load(None, args))
            seen.append(t)
        return real(fed, t)

    monkeypatch.setattr(local, "run_round", run_round)
    loop.run(config.load(None, args))
    assert seen == [1] and [r["round"] for r in records(tmp_path / "w")] == [0, 1, 2, 3]


def test_a_run_that_fails_at_start_up_leaves_nothing(tmp_path):
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=bad",
                             f"model.path={tmp_path / 'no-such-model'}", "clients.n=2",
                             "data.source=synthetic", "train.device=cuda:7"])
    with pytest.raises(ConfigError):
        loop.run(cfg)
    assert sorted(tmp_path.iterdir()) == []


def nan_at(t_bad, client, real=local.run_round):
    """engines.local.run_round, but client `client`'s factors turn NaN in round `t_bad`."""
    def run_round(fed, t):
        record = real(fed, t)
        if t == t_bad:
            with torch.no_grad():
                next(iter(lora.state(fed.model).values()))[client].fill_(float("nan"))
        return record
    return run_round


def test_non_finite_factors_stop_the_run_and_keep_the_last_finite_checkpoint(
        tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(local, "run_round", nan_at(2, 1))
    args = tiny_run_args(tiny_model_dir, tmp_path, "n", "method.name=lora")
    with pytest.raises(NonFiniteError, match=r"round 2: client\(s\) \[1\] hold non-finite "
                                             r"factors.*after 2 rounds"):
        loop.run(config.load(None, args))
    d = tmp_path / "n"
    assert saved_round(d) == 2 and not (d / "summary.json").exists()
    text = (d / "metrics.jsonl").read_text()
    rows = [json.loads(x, parse_constant=pytest.fail) for x in text.splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["nonfinite"] == [1]
    assert all(torch.isfinite(v).all() for v in
               load_file(str(d / "checkpoint" / "adapters.safetensors")).values())


def test_divergence_is_warned_and_recorded(tiny_model_dir, tmp_path, monkeypatch):
    def run_round(fed, t, real=local.run_round):
        record = real(fed, t)
        record["train_loss"] *= 10 if t == 2 else 1
        return record

    monkeypatch.setattr(local, "run_round", run_round)
    with pytest.warns(RunWarning, match="round 2: diverging: training loss .* train.lr"):
        loop.run(config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "dv")))
    rows = records(tmp_path / "dv")
    assert ["warning" in r for r in rows] == [False, False, True, False]


def test_questionable_settings_are_warned(tiny_model_dir, tmp_path):
    args = tiny_run_args(tiny_model_dir, tmp_path, "q", "method.name=lora",
                         "method.switch_interval=3", "run.rounds=1")
    with pytest.warns(RunWarning, match="switch_interval=3 has no effect on method.name=lora"):
        loop.run(config.load(None, args))
    assert "only tad takes" in questionable(config.load(None, ["method.name=adf",
                                                               "method.switch_interval=online"]))[0]
    assert questionable(config.load(None, ["method.switch_interval=online"])) == []


ONLINE = ["data.source=synthetic", "clients.n=6", "data.examples_per_client=32",
          "synthetic.val_per_client=20", "train.local_steps=1", "train.batch_size=4",
          "run.rounds=70", "run.eval_every=0", "run.progress=false", "topology.rho_samples=200",
          "method.switch_interval=online", "topology.schedule=0:0.5,20:0.02"]


def test_an_online_run_records_its_estimate_and_resumes_to_the_same_metrics(tmp_path,
                                                                           monkeypatch):
    """The estimate replays from the graphs on resume (core/estimate.replay): a run cut in
    round 65, after two decisions, ends with the uninterrupted run's every record."""
    args = [*ONLINE, f"run.out_dir={tmp_path}", "run.name=full"]
    full, _ = loop.run(config.load(None, args))
    rows = records(full)
    assert rows[0]["rho_estimate"] is None and rows[0]["switch_interval"] == 1
    assert rows[45]["rho_mc"] > 0.8 > rows[0]["rho_mc"]
    assert abs(rows[45]["rho_estimate"] - rows[45]["rho_mc"]) < 0.05  # a window after 20
    assert [rows[t]["switch_interval"] for t in (39, 40)] == [1, 4]  # the decision of round 39
    assert rows[-1]["rho_estimate_spread"] >= 0
    assert all(0 < sum(r["online_bytes"]) < 0.01 * sum(r["bytes_sent"]) for r in rows[:20])
    monkeypatch.setattr(local, "run_round", crash_at(65))
    with pytest.raises(KeyboardInterrupt):
        loop.run(config.load(None, [*ONLINE, f"run.out_dir={tmp_path}", "run.name=cut"]))
    monkeypatch.undo()
    loop.resume(tmp_path / "cut")
    assert strip_time(records(tmp_path / "cut")) == strip_time(rows)
