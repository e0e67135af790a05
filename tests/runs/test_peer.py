"""A peer process: joining fails clearly outside torchrun; rank 0 names the run directory."""

import pytest
import torch.distributed as dist

from tadlora.runs import config, peer
from tadlora.runs.config import ConfigError


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
    with pytest.raises(ConfigError, match="already holds a run"):
        run.append({"round": 0})
        peer._run_directory(cfg, 0, failed)
    with pytest.raises(ConfigError, match="rank 0 could not create"):
        peer._run_directory(cfg, 1, failed)
