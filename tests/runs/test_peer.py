"""A peer process: joining fails clearly outside torchrun; rank 0 names the run directory."""

import json
import os
import re
import sys
from types import SimpleNamespace

import pytest
import torch.distributed as dist

from tadlora.core.membership import NO_CHANGE, Change
from tadlora.runs import config, loop, peer
from tadlora.runs.config import ConfigError
from tadlora.runs.rundir import RunDir
from tests.engines.peers import args, free_port, run_group


def test_a_peer_outside_torchrun_says_how_to_start_it(monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert peer.main(config.load(None, [])) == 1
    assert "tadlora launch" in capsys.readouterr().err


def test_rank_0_creates_the_run_directory_and_the_others_read_its_name(tmp_path):
    store = dist.HashStore()
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=exp"])
    run = peer._run_directory(cfg, 0, store)
    assert run.config.is_file() and store.get("run_name") == b"exp"
    assert peer._run_directory(cfg, 1, store).path == run.path
    failed = dist.HashStore()
    with pytest.raises(ConfigError, match="being written by"):  # rank 0 holds the lock
        peer._run_directory(cfg, 0, failed)
    with pytest.raises(ConfigError, match="rank 0 could not create or lock"):
        peer._run_directory(cfg, 1, failed)
    run.checkpoint.mkdir()
    run.unlock()
    with pytest.raises(ConfigError, match="already holds a run"):
        peer._run_directory(cfg, 0, dist.HashStore())


def test_rank_0_of_a_resume_holds_the_run_directory_lock(tmp_path):
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=exp"])
    RunDir.create(cfg).unlock()
    store = dist.HashStore()
    held = peer._run_directory(cfg, 0, store, tmp_path / "exp")
    assert store.get("run_name") == b"exp" and held.lock is not None
    assert peer._run_directory(cfg, 1, store, tmp_path / "exp").path == tmp_path / "exp"
    with pytest.raises(ConfigError, match=f"being written by .*pid {os.getpid()}"):
        peer._run_directory(cfg, 0, dist.HashStore(), tmp_path / "exp")
    with pytest.raises(ConfigError, match="being written by"):
        loop.resume(tmp_path / "exp")  # `tadlora run --resume` while the peers run


def test_a_new_peer_run_that_fails_to_build_leaves_nothing(tmp_path):
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=exp", "data.source=files",
                             f"data.path={tmp_path / 'none'}"])
    run = peer._run_directory(cfg, 0, dist.HashStore())
    with pytest.raises(FileNotFoundError):
        peer._build(cfg, run, range(0, 5), fresh=True)
    assert sorted(tmp_path.iterdir()) == []


def _compare(ours, theirs, theirs_change=NO_CHANGE):
    """Rank 0's check against a rank 1 that published `theirs` (no real peers needed)."""
    store = dist.HashStore()
    store.set("settings/1", json.dumps(peer._settings(theirs, theirs_change)))
    peer._same_run(ours, NO_CHANGE, SimpleNamespace(store=store, rank=0, world=2,
                                                    barrier=lambda tag: 0.0))


def test_peers_started_with_other_settings_stop_naming_them(tmp_path):
    """Every peer compares its settings with rank 0's; host-local paths may differ."""
    base = [f"run.out_dir={tmp_path}", "run.name=exp"]
    ours = config.load(None, base)
    with pytest.raises(ConfigError, match=r"train.lr = 0.002 on rank 1, 0.001 on rank 0; start "
                                          r"every peer with the same config file"):
        _compare(config.load(None, [*base, "train.lr=1e-3"]),
                 config.load(None, [*base, "train.lr=2e-3"]))
    _compare(ours, config.load(None, [*base, "run.out_dir=/elsewhere", "run.progress=false"]))
    with pytest.raises(ConfigError, match=r"--depart/--rejoin = --depart 2 on rank 1, none on "
                                          r"rank 0; clients.n = 4 .* \(and 2 more\)"):
        _compare(ours, config.load(None, [*base, "run.rounds=7", "clients.n=4", "train.lr=1e-4",
                                          "run.seed=3", "method.name=lora"]), Change(depart=(2,)))


def test_peers_compare_the_contents_of_their_files_not_their_paths(tmp_path):
    """The same data under two paths is the same run; other bytes, or no file, are not."""
    here, there, other = (tmp_path / d for d in ("here", "there", "other"))
    for d, label in ((here, "pos"), (there, "pos"), (other, "neg")):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "train.csv").write_text(f"text,label\nok,{label}\n")
    files = ["data.source=files", "topology.kind=file"]
    (tmp_path / "g.txt").write_text("0 1\n")

    def cfg(data, graph="g.txt"):
        return config.load(None, [*files, f"data.path={data}",
                                  f"topology.path={tmp_path / graph}"])

    _compare(cfg(here), cfg(there))
    with pytest.raises(ConfigError, match=r"contents of data.path = \w{12} on rank 1, \w{12} on "
                                          r"rank 0; start every peer with the same config file, "
                                          r"overrides and files"):
        _compare(cfg(here), cfg(other))
    with pytest.raises(ConfigError, match="contents of topology.path = missing on rank 1"):
        _compare(cfg(here), cfg(here, "none.txt"))


def test_torchrun_peers_with_other_overrides_exit_before_writing(nodrop_model_dir, tmp_path):
    """Two torchrun node groups started with different learning rates: both peers exit with
    status 2 and the same one-line error (torchrun adds its own report), and no run directory
    is left."""
    argv = args(nodrop_model_dir, tmp_path, "exp")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                "--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    results = run_group([[*torchrun, "--node-rank", str(k), "-m", "tadlora.cli", "peer", *argv,
                          f"train.lr={lr}"] for k, lr in ((0, 1e-3), (1, 2e-3))], timeout=120)
    for rc, _, err in results:
        assert rc != 0 and "train.lr = 0.002 on rank 1, 0.001 on rank 0" in err, err
        assert "exitcode  : 2" in err and not re.search(r'File "[^"]*/tadlora/\w+', err)
    assert not (tmp_path / "exp").exists()
