"""A peer process: joining fails clearly outside torchrun; rank 0 names the run directory."""

import os

import pytest
import torch.distributed as dist

from tadlora.runs import config, loop, peer
from tadlora.runs.config import ConfigError
from tadlora.runs.rundir import RunDir


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
