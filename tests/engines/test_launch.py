"""The launcher's view of its peers: how an exit is described, the environment a peer gets,
what of their output reaches the terminal, and the one line that says why a run failed (a
real failed peer: test_distributed)."""

import io
import os

from tadlora.engines.launch import describe, peer_env
from tadlora.engines.liveness import AGENT_STORE_ENV
from tadlora.engines.peer_output import Ending, Forwarder, cause, shown, summary


def test_exits_are_described_in_words():
    assert describe(-9) == "was killed by SIGKILL"
    assert describe(3) == "stopped after losing a peer"
    assert describe(130) == "was interrupted"
    assert describe(2) == "exited with code 2"


def test_peer_environment_is_torchruns():
    env = peer_env(1, 4, 29500)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "4", "29500")
    assert env["LOCAL_RANK"] == "1" and env[AGENT_STORE_ENV] == "1"


def test_only_log_records_and_rank_0s_bar_reach_the_terminal():
    assert shown(b"[rank 1] WARNING round 0: client 4 left out\n", 1)
    assert shown(b"[rank 0] INFO resumed\n", 0)
    assert not shown(b"[rank 1] ERROR failed: boom\n", 1)  # summed up by the launcher
    assert not shown(b"Traceback (most recent call last):\n", 0)
    assert not shown(b"frame #3: 0x0000 in c10::something() from libtorch.so\n", 0)
    assert shown(b"lora x2 peers:  50%|#####     | 2/4 [00:00<00:00, 5.8round/s]\r", 0)
    assert not shown(b"lora x2 peers:  50%|#####     | 2/4 [00:00<00:00, 5.8round/s]\r", 1)
    assert shown(b"tadlora: warning: from round 2: clients [3] depart\n", 0)
    assert not shown(b"tadlora: warning: from round 2: clients [3] depart\n", 1)


def test_forwarder_logs_everything_and_shows_the_rest_filtered(tmp_path):
    r, w = os.pipe()
    terminal = io.BytesIO()
    copy = Forwarder(1, os.fdopen(r, "rb"), tmp_path / "rank-1.log", terminal)
    with os.fdopen(w, "wb") as out:
        out.write(b"[rank 1] WARNING kept\n[rank 1] ERROR failed: x\nTraceback (most\n  File")
        out.write(b" x\nframe #0: c10\n")
    copy.join()
    assert terminal.getvalue() == b"[rank 1] WARNING kept\n"
    assert tmp_path.joinpath("rank-1.log").read_bytes().endswith(
        b"[rank 1] WARNING kept\n[rank 1] ERROR failed: x\nTraceback (most\n  File x\n"
        b"frame #0: c10\n")


def test_the_cause_is_the_first_peer_that_failed_on_its_own():
    lost = Ending(0, 3, "stopped after it lost rank 1: was killed by SIGKILL", 2)
    killed = Ending(1, -9, None, 2)
    assert cause([lost, killed]) is killed
    assert summary(killed) == "rank 1 (round 2): was killed by SIGKILL"
    frozen = Ending(1, -9, None, 2, killed=True)  # killed by the launcher: not the cause
    assert cause([lost, frozen]) is lost
    assert summary(lost).startswith("rank 0 (round 2): stopped after it lost rank 1")
    error = Ending(1, 1, "failed: RuntimeError: boom\nframe #0: c10\nframe #1: c10", None)
    assert summary(error) == "rank 1 (start-up): failed: RuntimeError: boom"
    assert len(summary(Ending(0, 1, "x" * 5000, 0))) < 350
    assert cause([Ending(0, 0)]) is None
