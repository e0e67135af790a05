"""distributed.on_peer_loss=continue: the survivors of a lost peer finish the run without its
clients, the departed clients rejoin on a later resume, and a torchrun group restarted after a
failure resumes by itself (real peers on gloo, 127.0.0.1; tests/engines/peers.py)."""

import json
import sys

import torch

from tadlora import cli
from tadlora.engines.launch import lost_ranks
from tests.engines.peers import (
    args,
    assert_close_records,
    free_port,
    merged,
    records,
    reference,
    run_group,
    slices_of_round,
    tadlora,
)


def _tensors_of(state, clients):
    return {k: v[clients] for k, v in state.items()}


def test_survivors_finish_without_the_lost_peers_clients_and_they_rejoin(nodrop_model_dir,
                                                                         tmp_path):
    """3 peers (clients 0-2, 3-5, 6-7); rank 1 is killed in round 2. The launcher starts the
    2 survivors again from the round-2 slices, clients 3-5 departed: the run ends (exit 0)
    within 1e-6 of the simulator with the same departures, the departed clients end exactly as
    they left, and every record from round 2 names them. A resume with --rejoin (2 more
    rounds, on 2 peers: other slices) brings them back with that state, again as the
    simulator does."""
    argv = args(nodrop_model_dir, tmp_path, "c", "method.name=tad", "method.switch_interval=1",
                "distributed.on_peer_loss=continue", "distributed.keep_slices=true",
                "train.lr_schedule=constant")
    rc, out, err = tadlora("launch", "--peers", "3", *argv, env={"TADLORA_FAULT": "kill:1:2"})
    assert rc == 0, err
    assert "rank 1 (round 2): was killed by SIGKILL" in err
    assert "continuing with 2 peer(s) without clients [3, 4, 5] (lost rank(s) [1])" in err
    assert "from round 2: clients [3, 4, 5] depart" in err
    d = tmp_path / "c"
    got = records(d)
    assert [r["round"] for r in got] == [0, 1, 2, 3]
    assert [r["peers"] for r in got] == [3, 3, 2, 2]
    assert [r.get("departed") for r in got] == [None, None, [3, 4, 5], [3, 4, 5]]
    assert all(r["client_loss"][3:6] == [None] * 3 for r in got[2:])
    departures = ((2, (3, 4, 5)),)
    states, want, _ = reference(argv, departures=departures)
    assert_close_records(got, want)
    final, left = merged(d), slices_of_round(d, 2)
    assert all((final[k] - v).abs().max() <= 1e-6 for k, v in states[-1].items())
    assert all(torch.equal(final[k][3:6], left[k][3:6]) for k in final)  # as they left
    summary = json.loads((d / "summary.json").read_text())
    assert summary["departed"] == [3, 4, 5]
    assert summary["mean"] == sum(summary["client_acc"][c] for c in (0, 1, 2, 6, 7)) / 5
    assert out.count("departed (not in the aggregates)") == 3

    rc, out, err = tadlora("launch", "--peers", "2", "--resume", str(d), "--rejoin",
                           "run.rounds=6")
    assert rc == 0, err
    assert "from round 4: clients [3, 4, 5] rejoin" in err
    got = records(d)
    assert [r.get("departed") for r in got[4:]] == [None, None]
    states, want, _ = reference([*argv, "run.rounds=6"], departures=(*departures, (4, ())))
    assert_close_records(got, want)
    final = merged(d)
    assert all((final[k] - v).abs().max() <= 1e-6 for k, v in states[-1].items())
    assert not any(torch.equal(final[k][3:6], left[k][3:6]) for k in final if "A/" in k)


def test_only_crashed_killed_or_frozen_peers_are_lost():
    """The launcher continues without the peers that crashed (1) or died of a signal (< 0)
    while all the others stopped because of them (3); an input error (2), an interrupt (130),
    or a peer that finished (0) is not a lost peer: nobody is restarted."""
    assert lost_ranks([3, -9, 3]) == [1]
    assert lost_ranks([1, 3, -19]) == [0, 2]
    assert lost_ranks([3, 2]) == [] and lost_ranks([130, 3]) == []
    assert lost_ranks([0, 1]) == [] and lost_ranks([0, 0]) == []
    assert lost_ranks([1, 1]) == [0, 1]  # all lost: the launcher has nobody to go on with


def test_rejoin_and_depart_need_a_resume(nodrop_model_dir, tmp_path, capsys):
    argv = args(nodrop_model_dir, tmp_path, "s", "method.name=lora")
    assert cli.main(["launch", "--peers", "2", "--rejoin", *argv]) == 2
    assert "--rejoin and --depart change a resumed run: add --resume" in capsys.readouterr().err
    assert cli.main(["peer", "--resume", str(tmp_path), "--depart", "x"]) == 2
    assert "--depart 'x': give client ids" in capsys.readouterr().err


def test_a_restarted_torchrun_group_resumes_its_run(nodrop_model_dir, tmp_path):
    """torchrun --max-restarts 1: rank 1 fails in round 2, torchrun restarts both peers, and
    they resume the run (run.name) from their slices: every round logged once, the end within
    1e-6 of the simulator, and the slices removed once the merged checkpoint is written."""
    argv = args(nodrop_model_dir, tmp_path, "t", "method.name=lora")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                "--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.2",
                "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    [(rc, _, err)] = run_group([[*torchrun, "-m", "tadlora.cli", "peer", *argv]],
                               env={"TADLORA_FAULT": "raise:1:2"})
    assert rc == 0, err
    d = tmp_path / "t"
    assert [r["round"] for r in records(d)] == [0, 1, 2, 3]
    states, want, _ = reference(argv)
    assert_close_records(records(d), want)
    assert all((merged(d)[k] - v).abs().max() <= 1e-6 for k, v in states[-1].items())
    assert not (d / "peers").exists()
