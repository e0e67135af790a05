import json

import pytest
import torch

from tadlora import checkpoint, cli, config, runner, topology, train
from tadlora.checkpoint import CheckpointError
from tadlora.config import ConfigError
from tests.conftest import tiny_run_args


def records(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


def test_run_writes_the_run_directory(tiny_model_dir, tmp_path):
    cfg = config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "r"))
    d, summary = runner.run(cfg)
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
    assert summary["precision"] == train.resolve_precision("auto", torch.device("cpu"))
    assert (d / "checkpoint" / "adapters.safetensors").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        runner.run(cfg)


def test_interrupted_run_resumes_to_the_same_metrics(tiny_model_dir, tmp_path, monkeypatch):
    args = tiny_run_args(tiny_model_dir, tmp_path, "full", "method.name=lora")
    full, full_summary = runner.run(config.load(None, args))

    real_round = runner.run_round

    def crash_at_3(fed, t):
        if t == 3:
            raise KeyboardInterrupt
        return real_round(fed, t)

    monkeypatch.setattr(runner, "run_round", crash_at_3)
    args[2] = "run.name=cut"
    with pytest.raises(KeyboardInterrupt):
        runner.run(config.load(None, args))
    cut = tmp_path / "cut"
    assert [r["round"] for r in records(cut)] == [0, 1, 2]
    monkeypatch.setattr(runner, "run_round", real_round)
    _, resumed_summary = runner.resume(cut)
    assert records(cut) == records(full)
    assert strip_time([resumed_summary]) == strip_time([full_summary])


def test_resume_rejects_corrupt_checkpoint_and_changed_config(tiny_model_dir, tmp_path):
    d, _ = runner.run(config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "c")))
    with pytest.raises(ConfigError, match="already finished 4 rounds"):
        runner.resume(d)
    with pytest.raises(ConfigError, match="only run"):
        runner.resume(d, ["train.lr=1"])
    (d / "checkpoint" / "adapters.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        runner.resume(d, ["run.rounds=6"])


def test_cli_run_prints_table_and_errors_cleanly(tiny_model_dir, tmp_path, capsys):
    assert cli.main(["run", *tiny_run_args(tiny_model_dir, tmp_path, "cli")]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "std" in out and "averaged adapter" in out
    assert cli.main(["run", "train.nope=1"]) == 2
    assert "unknown config key train.nope" in capsys.readouterr().err
    assert cli.main(["run", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_export_loads_in_peft(tiny_model_dir, tmp_path, capsys):
    import torch
    from peft import PeftModel

    from tadlora import lora

    d, _ = runner.run(config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "e",
                                                      "model.head=trained")))
    assert cli.main(["export", str(d), "--client", "2", "--out", str(tmp_path / "a")]) == 0
    cfg = config.load(d / "config.toml")
    base, _ = runner.load_model(cfg, 2)
    ours = runner.stack_adapters(runner.load_model(cfg, 2)[0], cfg).eval()
    lora.load_state(ours, checkpoint.read(d / "checkpoint")[1])
    ids = torch.randint(1000, 2000, (2, 5))
    with lora.select(ours, slice(2, 3)), torch.no_grad():
        expected = ours(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - expected).abs().max() <= 1e-5
    assert cli.main(["export", str(d), "--client", "9", "--out", str(tmp_path / "b")]) == 2


def test_cli_topology(capsys):
    assert cli.main(["topology", "topology.p=0.1", "topology.rho_samples=500"]) == 0
    out = capsys.readouterr().out
    assert "rho" in out and "spectral gap" in out and "mean degree" in out and "auto T" in out


def test_auto_interval_is_the_same_for_every_run_seed():
    # rho belongs to the topology, not to one run's graphs: seeds 0 and 1 used to estimate it on
    # their own graph streams and at p=0.02 landed on either side of a rounding edge (T = 3 or 4).
    def auto(seed):
        cfg = config.load(None, ["method.name=tad", "topology.p=0.02", "topology.rho_samples=200",
                                 f"run.seed={seed}"])
        pol, rho = runner.policy(cfg)
        return pol.interval, rho

    assert auto(0) == auto(1) == auto(7)
    assert auto(0)[1] == topology.process_rho("er", 10, 0.02, samples=200)
