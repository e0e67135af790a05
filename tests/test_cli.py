"""The command line: printing, exit codes and clean errors (the work is tested with the
library modules it calls)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tadlora import cli
from tadlora.study import sweep
from tests.conftest import tiny_run_args
from tests.core.test_graph_files import _write


def test_cli_run_prints_table_and_errors_cleanly(tiny_model_dir, tmp_path, capsys):
    assert cli.main(["run", *tiny_run_args(tiny_model_dir, tmp_path, "cli")]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "std" in out and "averaged adapter" in out
    assert cli.main(["run", "train.nope=1"]) == 2
    assert "unknown config key train.nope" in capsys.readouterr().err
    assert cli.main(["run", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_topology(capsys):
    assert cli.main(["topology", "topology.p=0.1", "topology.rho_samples=500"]) == 0
    out = capsys.readouterr().out
    assert "rho" in out and "spectral gap" in out and "mean degree" in out and "auto T" in out


def test_cli_topology_auto_interval(tmp_path, capsys):
    # MH ring of 10: rho = 0.7618, so T = round(2 / sqrt(1 - rho)) = 4 with c = 2
    assert cli.main(["topology", "topology.kind=ring", "method.c=2", "topology.rho_samples=5"]) == 0
    assert "auto T (c=2)  4\n" in capsys.readouterr().out
    path = _write(tmp_path, "two_parts.txt", "0 1\n2 3\n")
    assert cli.main(["topology", "topology.kind=file", f"topology.path={path}", "clients.n=4",
                     "topology.rho_samples=2"]) == 0
    out = capsys.readouterr().out
    assert "rho            1.0000" in out and "auto T (c=1)  none (the graph never mixes)" in out


def test_cli_topology_prints_each_schedule_pieces_rho_and_auto_t(capsys):
    assert cli.main(["topology", "topology.schedule=0:0.5,60:0.02"]) == 0
    out = capsys.readouterr().out
    assert "from round 0: rho 0.15" in out and "from round 60: rho 0.91" in out
    assert out.rstrip().endswith("auto T 3")


def test_launch_refuses_more_peers_than_clients_and_no_peer(tmp_path, capsys):
    assert cli.main(["launch", "--peers", "5", "clients.n=4", f"run.out_dir={tmp_path}"]) == 2
    assert "every peer needs at least one client (use at most 4" in capsys.readouterr().err
    assert cli.main(["launch", "--peers", "0", "clients.n=4", f"run.out_dir={tmp_path}"]) == 2
    assert "(use at least 1 peer)" in capsys.readouterr().err


# ------------------------------------------------------------------ messages (issue 17)


def error_of(capsys, *argv) -> str:
    """Run the command line; it must end with status 2 and a one-line message, no traceback."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("tadlora: error: ") and "Traceback" not in err
    return err


def test_model_files_that_are_corrupt_or_missing_are_named(tiny_model_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad-model"
    shutil.copytree(tiny_model_dir, bad)
    weights = next(bad.glob("*.safetensors"))
    weights.write_bytes(os.urandom(4096))
    err = error_of(capsys, "run", *tiny_run_args(bad, tmp_path / "out", "m"))
    assert "the model files in" in err and "corrupt" in err
    assert not (tmp_path / "out" / "m").exists()  # a start-up failure leaves nothing
    t0 = time.time()
    err = error_of(capsys, "run", *tiny_run_args(tmp_path / "nope", tmp_path / "out", "m"))
    assert "does not exist" in err and time.time() - t0 < 20  # no minute of hub retries


def test_an_override_without_a_value_is_not_taken_for_a_config_file(tmp_path, capsys):
    err = error_of(capsys, "run", "train.lr", "clients.n=2")
    assert "'train.lr' is not a config file, and an override needs a value: train.lr=VALUE" in err
    err = error_of(capsys, "run", str(tmp_path / "missing.toml"))
    assert "missing.toml does not exist" in err


def test_unknown_device_out_dir_through_a_file_one_class_and_an_unseen_label(tmp_path, capsys):
    err = error_of(capsys, "run", "train.device=gpu", f"run.out_dir={tmp_path}")
    assert "train.device='gpu' is not a torch device" in err
    (tmp_path / "file").write_text("")
    err = error_of(capsys, "run", f"run.out_dir={tmp_path / 'file' / 'runs'}", "run.name=r")
    assert "run.out_dir: cannot create the directory" in err
    data = tmp_path / "one"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.csv").write_text("text_a,label\na,pos\nb,pos\n")
    err = error_of(capsys, "run", "data.source=files", f"data.path={data}",
                   f"run.out_dir={tmp_path / 'o'}", "run.name=r", "clients.n=2")
    assert "one class only ('pos')" in err
    (data / "train.csv").write_text("text_a,label\na,pos\nb,neg\n")
    (data / "validation.csv").write_text("text_a,label\na,pos\nb,odd\nc,odd\n")
    err = error_of(capsys, "run", "data.source=files", f"data.path={data}",
                   f"run.out_dir={tmp_path / 'o'}", "run.name=r", "clients.n=2")
    assert "validation label 'odd' never occurs in the training set (2 validation" in err


def test_export_refuses_an_existing_file_and_names_a_malformed_state_json(tmp_path, capsys):
    import json

    from tadlora.runs import config
    from tadlora.runs.rundir import RunDir

    run = RunDir.create(config.load(None, [f"run.out_dir={tmp_path}", "run.name=r"]))
    run.unlock()
    run.checkpoint.mkdir()
    (run.checkpoint / "state.json").write_text(json.dumps(["not", "a", "dict"]))
    (tmp_path / "taken").write_text("")
    err = error_of(capsys, "export", str(run.path), "--client", "0", "--out",
                   str(tmp_path / "taken"))
    assert "is an existing file; give a directory" in err
    err = error_of(capsys, "export", str(run.path), "--client", "0", "--out",
                   str(tmp_path / "adapter"))
    assert "state.json is malformed" in err


def test_warnings_are_one_line_for_the_user(tmp_path, capsys):
    assert cli.main(["run", "data.source=synthetic", "clients.n=1", "run.rounds=1",
                     "run.progress=false", "synthetic.val_per_client=20",
                     "data.examples_per_client=16", f"run.out_dir={tmp_path}", "run.name=one"]) == 0
    err = capsys.readouterr().err
    assert "tadlora: warning: clients.n=1: one client has no peers" in err


def test_a_hub_id_on_a_machine_without_the_hub_searches_the_cache_only(tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE once, when first imported: runs/model.py sets it before
    importing transformers, so an unreachable hub costs no minute of retries."""
    import subprocess
    import sys
    code = ("import sys; from tadlora import cli; from tadlora.runs import model; "
            "model._hub_reachable = lambda: False; "
            "sys.exit(cli.main(['run', 'model.path=no-such-org/no-such-model', "
            f"'run.out_dir={tmp_path}']))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",
                                                             "TRANSFORMERS_OFFLINE")}
    got = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 2 and "Traceback" not in got.stderr
    assert "the hub is offline: only its cache was searched" in got.stderr
    assert "Retrying" not in got.stderr


def test_sigterm_stops_a_run_like_ctrl_c_and_names_its_resume(tiny_model_dir, tmp_path):
    """kill, timeout and batch schedulers send SIGTERM: the run stops with status 130 and the
    command that continues it, and that command finishes the run."""
    args = tiny_run_args(tiny_model_dir, tmp_path, "long", "run.rounds=10000", "run.eval_every=0")
    proc = subprocess.Popen([sys.executable, "-m", "tadlora.cli", "run", *args],
                            stderr=subprocess.PIPE, text=True)
    saved = tmp_path / "long" / "checkpoint"
    deadline = time.time() + 120
    while not saved.is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert (f"tadlora: interrupted; its finished rounds are kept: continue with `tadlora run "
            f"--resume {tmp_path / 'long'}`") in err and "Traceback" not in err
    done = json.loads((saved / "state.json").read_text())["round"]
    assert cli.main(["run", "--resume", str(tmp_path / "long"), f"run.rounds={done + 1}"]) == 0


def test_an_interrupted_sweep_says_that_running_it_again_resumes(tmp_path, monkeypatch, capsys):
    def interrupted(ns):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep, "cmd_sweep", interrupted)
    assert cli.main(["sweep", str(tmp_path / "s.toml")]) == 130
    assert "run the same sweep command again" in capsys.readouterr().err


def test_report_onto_a_file_and_a_sweep_without_jobs_are_named(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "a-file")]) == 2
    assert "a-file is a file; give a directory" in capsys.readouterr().err
    for jobs in ("0", "-3", "two"):
        with pytest.raises(SystemExit) as stop:
            cli.main(["sweep", "sweeps/smoke.toml", "--jobs", jobs, "--dry-run"])
        assert stop.value.code == 2
        want = f"--jobs: {jobs!r}: give the number of runs at a time, >= 1"
        assert want in capsys.readouterr().err
