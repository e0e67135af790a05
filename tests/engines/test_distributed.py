"""Real peers on torch.distributed (gloo, 127.0.0.1): parity with the in-process engine,
faults (a failed peer, a frozen peer, NaN and wrong-shape payloads; a killed one:
test_peer_loss), resume (on another number of peers, and in one process; on the same ones:
test_peer_loss), and two torchrun node groups. Every process group is started in its own
session and killed on timeout (tests/engines/peers.py)."""

import json
import shutil
import sys

import torch

from tadlora.core.federation import mixed_kinds
from tadlora.engines import exchange
from tadlora.runs import config, loop, machine
from tadlora.runs.build import mixing, policy
from tests.engines.peers import (
    args,
    assert_close_records,
    close,
    elsewhere,
    free_port,
    merged,
    records,
    reference,
    run_group,
    same_as_simulator,
    slices_of_round,
    tadlora,
)

# ------------------------------------------------------------------ parity with the simulator


def test_two_peers_all_gather_match_the_simulator_every_round(two_peers):
    """decaf: each peer re-factorises its own clients' mixed products from the factors it
    received; the result, records and diagnostics are the simulator's (p2p: test_records)."""
    check_parity(*two_peers, peers=2, mode="all_gather")


def test_four_peers_p2p_match_the_simulator_every_round(nodrop_model_dir, tmp_path):
    argv = args(nodrop_model_dir, tmp_path, "d", "method.name=rolora", "distributed.mode=p2p",
                "distributed.keep_slices=true")
    rc, _, err = tadlora("launch", "--peers", "4", *argv)
    assert rc == 0, err
    check_parity(argv, tmp_path / "d", peers=4, mode="p2p")
    # p2p: rank 0 gets no one's factors from the exchange, so the others send them for the
    # diagnostics (counted apart from the exchange)
    for r in records(tmp_path / "d"):
        assert r["diagnostic_bytes"][0] == 0 and min(r["diagnostic_bytes"][1:]) > 0


def test_with_dropout_peers_match_the_simulator_in_any_grouping(tiny_model_dir, tmp_path):
    """Hidden, attention and LoRA dropout on, at the precision this CPU runs (auto): every
    client draws its masks from its own stream and its tokens run packed, so 2 peers train
    what one process trains in one group. Measured: bit for bit at equal thread counts in fp32
    and bf16; with 2 threads in the simulator and 1 per peer, 1.5e-8 in fp32 and 0 in bf16
    (bf16 where the CPU has it natively)."""
    argv = args(tiny_model_dir, tmp_path, "d", "method.name=tad", "model.lora_dropout=0.1",
                "distributed.keep_slices=true", "train.precision=auto")
    rc, _, err = tadlora("launch", "--peers", "2", *argv)
    assert rc == 0, err
    check_parity(argv, tmp_path / "d", peers=2, mode="all_gather", exact=False)


def check_parity(argv, d, peers, mode, exact=True):
    """The run in `d` is bit for bit the simulator's with the peers' forward groups (`exact`;
    else within 1e-6: the peers run one thread each, and the matmuls of attention with dropout
    round differently at another thread count), and within 1e-6 of the simulator's default
    (one group): every client's tensors after every round, the records and the summary. Bytes
    are what the mode must send."""
    states, want, _ = reference([*argv, f"train.clients_per_forward={8 // peers}"])
    got_records = records(d)
    for t, state in enumerate(states):
        got = slices_of_round(d, t + 1)
        assert all(torch.equal(got[k], v) if exact else (got[k] - v).abs().max() <= 1e-6
                   for k, v in state.items()), t
        assert not exact or same_as_simulator(got_records[t], want[t])
    states, want, summary = reference(argv)
    for t, state in enumerate(states):
        got = slices_of_round(d, t + 1)
        for k, v in state.items():
            assert (got[k] - v).abs().max() <= 1e-6, (t, k)
    assert_close_records(got_records, want)
    assert all(r["peers"] == peers and r["mode"] == mode for r in got_records)
    got_summary = json.loads((d / "summary.json").read_text())
    for key, value in summary.items():
        if key not in ("wall_time_s", "machine"):  # the peers run with other thread counts
            assert close(got_summary[key], value), key
    assert got_summary["machine"].startswith(machine.cpu_name())
    assert config.load(d / "config.toml") == config.load(None, argv)
    final = merged(d)
    assert all((final[k] - v).abs().max() <= 1e-6 for k, v in states[-1].items())
    cfg = config.load(None, argv)
    pol, mix = policy(cfg)[0], mixing(cfg)
    slices = exchange.client_slices(8, peers)
    for r in got_records:  # bytes: all_gather sends every row to every other peer; p2p the least
        kinds = mixed_kinds(pol, r["round"])
        row = 4 * sum(v[0].numel() for k, v in states[0].items() if k.split("/")[0] in kinds)
        w = pol.weights(mix(r["round"]))
        least = exchange.least_bytes(w, slices, row)
        assert r["bytes_sent"] == (least if mode == "p2p" else [row * (peers - 1)] * 8)


# ------------------------------------------------------------------ faults and resume


def test_a_failed_peer_is_named_and_the_run_resumes_on_another_number_of_peers(
        nodrop_model_dir, tmp_path):
    """2 peers; rank 1 raises in round 2 with an error dragging 100 lines of C++ frames: the
    launcher's first line names rank 1, round 2 and the error, no frame or traceback reaches
    the terminal, RUN_DIR/logs/rank-1.log holds all of it, and no finished round is lost. The
    run resumes on 3 peers (`tadlora launch --peers 3 --resume`) and, from a copy, in one
    process (`tadlora run --resume`): each peer reads its new slice of the clients, tensors and
    AdamW moments (train.optimizer_state=keep), from the old peers' slices. Both end bit for
    bit where the in-process engine ends when it trains with the same forward groups (4+4
    clients, then 3+3+2 or all 8), and within 1e-6 of its default run. (A killed peer:
    test_peer_loss; a resume on the same peers: the torchrun restart there.)"""
    argv = args(nodrop_model_dir, tmp_path, "m", "method.name=tad", "method.switch_interval=1",
                "train.optimizer_state=keep", "distributed.keep_slices=true")
    rc, _, err = tadlora("launch", "--peers", "2", *argv, env={"TADLORA_FAULT": "raise:1:2"})
    assert rc == 3, err
    mine = [line for line in err.splitlines() if line.startswith("tadlora launch:")]
    assert mine[0] == "tadlora launch: rank 1 (round 2): failed: RuntimeError: injected failure"
    assert "--resume" in err
    d = tmp_path / "m"
    assert f"every peer's full output: {d / 'logs'}/rank-K.log" in err
    assert "frame #" not in err and "Traceback" not in err and len(err.splitlines()) < 10
    log = (d / "logs" / "rank-1.log").read_text()
    assert "Traceback" in log and "frame #99" in log
    assert [r["round"] for r in records(d)] == [0, 1]
    assert not (d / "summary.json").exists()
    alone = shutil.copytree(d, tmp_path / "alone")

    rc, out, err = tadlora("launch", "--peers", "3", "--resume", str(d))
    assert rc == 0, err
    assert f"run directory: {d}" in out
    got = records(d)
    assert [r["peers"] for r in got] == [2, 2, 3, 3]
    states, want, _ = reference(argv, per_forward={0: 4, 2: 3})
    for t, state in enumerate(states):  # rounds 1-2: the 2 old slices; 3-4: the 3 new ones
        kept = slices_of_round(d, t + 1)
        assert all(torch.equal(kept[k], v) for k, v in state.items()), t
        assert same_as_simulator(got[t], want[t]), t
    assert all(torch.equal(merged(d)[k], v) for k, v in states[-1].items())
    row = 4 * sum(v[0].numel() for v in states[0].values())  # tad mixes A and B every round
    assert [r["bytes_sent"] for r in got] == [[row * (r["peers"] - 1)] * 8 for r in got]

    _, summary = loop.resume(alone)
    states, want, _ = reference(argv, per_forward={0: 4, 2: 0})
    in_one = records(alone)
    assert ["peers" in r for r in in_one] == [True, True, False, False]
    assert all(same_as_simulator(g, w) for g, w in zip(in_one, want, strict=True))
    assert all(torch.equal(merged(alone)[k], v) for k, v in states[-1].items())
    assert summary["client_acc"] == want[-1]["eval"]["client_acc"]

    states, want, _ = reference(argv)
    assert_close_records(got, want)
    assert_close_records(in_one, want)
    for final in (merged(d), merged(alone)):
        assert all((final[k] - v).abs().max() <= 1e-6 for k, v in states[-1].items())


def test_bad_payloads_are_left_out_and_a_frozen_peer_is_detected(nodrop_model_dir, tmp_path):
    """One run, three faults: rank 1 sends a NaN in round 0, rank 0 a payload one column too
    wide in round 1 (both left out of that round's mixing, with a warning, and the run goes
    on), then rank 1 freezes (SIGSTOP) in round 2: rank 0 names it within the 3 s timeout,
    keeps the checkpoint and exits; the launcher kills the frozen process."""
    argv = args(nodrop_model_dir, tmp_path, "f", "method.name=lora", "distributed.timeout_s=3")
    rc, _, err = tadlora("launch", "--peers", "2", *argv,
                         env={"TADLORA_FAULT": "nan:1:0,shape:0:1,hang:1:2"})
    assert rc == 3
    assert "round 0: client 4 left out of the mixing: non-finite values from rank 1" in err
    assert "round 1: client 0 left out of the mixing: rank 0 sent a bad payload (wrong width" in err
    assert "lost rank 1: no heartbeat" in err
    assert "rank 1 did not stop on its own" in err
    rows = records(tmp_path / "f")
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["excluded"] == {"4": [0]}
    assert rows[1]["excluded"] == {str(c): [1] for c in range(4)}
    kept = slices_of_round(tmp_path / "f", 2)
    assert all(torch.isfinite(v).all() for v in kept.values())


# ------------------------------------------------------------------ two torchrun node groups


def test_two_torchrun_node_groups_equal_one_group(two_peers, tmp_path):
    """torchrun --nnodes 2 (one peer per node group) on 127.0.0.1 gives bit for bit the run
    that `tadlora launch --peers 2` gave."""
    argv, one = two_peers
    two = elsewhere(argv, tmp_path, "two")
    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                "--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    results = run_group([[*torchrun, "--node-rank", str(k), "-m", "tadlora.cli", "peer", *two]
                         for k in (0, 1)])
    assert [rc for rc, _, _ in results] == [0, 0], results[0][2] + results[1][2]
    a, b = merged(one), merged(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)
    timing = {"compute_s", "wait_s", "transfer_s"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in records(one)]
    assert strip == [{k: v for k, v in r.items() if k not in timing}
                     for r in records(tmp_path / "two")]
