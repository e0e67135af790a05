"""The launcher's view of its peers: how an exit is described, the environment a peer gets."""

from tadlora.engines.launch import describe, peer_env
from tadlora.engines.liveness import AGENT_STORE_ENV


def test_exits_are_described_in_words():
    assert describe(-9) == "was killed by SIGKILL"
    assert describe(3) == "stopped after losing a peer"
    assert describe(130) == "was interrupted"
    assert describe(2) == "exited with code 2"


def test_peer_environment_is_torchruns():
    env = peer_env(1, 4, 29500)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "4", "29500")
    assert env["LOCAL_RANK"] == "1" and env[AGENT_STORE_ENV] == "1"
