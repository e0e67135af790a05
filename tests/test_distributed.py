"""Real peers on torch.distributed (gloo, 127.0.0.1): parity with the in-process simulator,
faults (a killed peer, a frozen peer, NaN and wrong-shape payloads), resume, and two torchrun
node groups. Every process group is started in its own session and killed on timeout.

Parity needs training that does not depend on how clients are grouped into forward passes:
the simulator draws dropout masks per forward group, so the model here has no dropout
(hidden, attention and LoRA dropout 0); see tadlora/distributed.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tadlora import config, exchange, lora, runner, simulate
from tadlora.distributed import dropout_seed
from tadlora.gossip import mix_held, renormalised
from tests.conftest import save_tiny

TIMEOUT = 240  # seconds for one launch; a hang fails the test instead of the suite


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny random BERT without dropout, saved with the packaged tokenizer."""
    return save_tiny(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=False)


def args(model_dir, out, name, *extra):
    return [f"model.path={model_dir}", f"run.out_dir={out}", f"run.name={name}",
            "run.rounds=4", "run.eval_every=2", "run.progress=false", "clients.n=8",
            "data.examples_per_client=12", "data.val_size=40", "data.max_length=32",
            "train.local_steps=2", "train.batch_size=4", "topology.p=0.4",
            "topology.rho_samples=100", "model.lora_dropout=0", "distributed.timeout_s=30",
            "train.precision=fp32",  # 1e-6 parity across forward groupings needs fp32 math
            *extra]


def run_group(cmds, env=None, timeout=TIMEOUT):
    """Run commands side by side, each in its own session (killed whole on timeout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for c in cmds]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True)]


def tadlora(*argv, env=None):
    return run_group([[sys.executable, "-m", "tadlora.cli", *argv]], env)[0]


def reference(argv):
    """The in-process simulator: every client's tensors after every round, and the records."""
    cfg = config.load(None, argv)
    exp = runner.build(cfg)
    states, records = [], []
    for t in range(cfg.run.rounds):
        rec = simulate.run_round(exp.fed, t)
        if runner.due(cfg, t):
            rec["eval"] = runner.evaluation(exp)
        records.append(rec)
        states.append({k: v.detach().clone() for k, v in lora.state(exp.fed.model).items()})
    return states, records, runner.summary(exp, records, 0.0)


def slices_of_round(run_dir, rnd):
    """Every client's tensors after `rnd` rounds, stitched from the peers' kept slices."""
    parts = sorted(Path(run_dir).glob(f"peers/rank-*/round-{rnd:06d}"),
                   key=lambda d: json.loads((d / "state.json").read_text())["clients"][0])
    tensors = [load_file(str(d / "adapters.safetensors")) for d in parts]
    return {k: torch.cat([t[k] for t in tensors]) for k in tensors[0]}


def records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().split(
        "\n") if line]


def close(a, b, tol=1e-6):
    """Equal, or numerically equal within tol (numbers and nested lists of numbers)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if a == b:
        return True
    if isinstance(a, str) or a is None or b is None:
        return False
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=tol, rtol=0)


def assert_close_records(got, want):
    assert [r["round"] for r in got] == [r["round"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["phase"] == w["phase"] and g["switch_interval"] == w["switch_interval"]
        assert np.allclose(g["client_loss"], w["client_loss"], atol=2e-5)
        for key in ("train_loss", "consensus_A", "consensus_B", "cross_term_error"):
            assert abs(g[key] - w[key]) <= 1e-6 * max(1.0, abs(w[key])), (g["round"], key)
        assert ("eval" in g) == ("eval" in w)
        if "eval" in w:
            assert close(g["eval"], w["eval"]), g["round"]


# ------------------------------------------------------------------ pure parts, no processes


def test_client_slices_are_contiguous_and_balanced():
    s = exchange.client_slices(10, 4)
    assert s == [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    with pytest.raises(ValueError, match="at least one client"):
        exchange.client_slices(3, 4)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 8])
def test_schedule_meets_every_pair_once_one_partner_per_stage(world):
    seen = []
    for stage in exchange.schedule(world):
        ranks = [r for pair in stage for r in pair]
        assert len(ranks) == len(set(ranks))
        seen += stage
    assert sorted(seen) == [(a, b) for a in range(world) for b in range(a + 1, world)]


def test_neighbour_rows_follow_w():
    w = np.eye(4)
    w[0, 3] = w[3, 0] = 0.5
    s = exchange.client_slices(4, 2)
    assert exchange.needed_rows(w, s[1], s[0]) == [3]  # client 0 mixes with client 3
    assert exchange.needed_rows(w, s[0], s[1]) == [0]


def test_stamp_checks_shape_dtype_and_refuses_absurd_headers():
    s = exchange.Stamp(3, 1, 2, 10, torch.float32, 3)
    assert exchange.Stamp.parse(s.header(), 1, 100) == s
    assert "wrong width" in exchange.Stamp(3, 1, 2, 11, torch.float32, 3).mismatch(s)
    assert "wrong dtype" in exchange.Stamp(3, 1, 2, 10, torch.float64, 3).mismatch(s)
    with pytest.raises(exchange.ProtocolError, match="more than"):
        exchange.Stamp.parse(s.header(), 1, 19)
    bad = s.header()
    bad[0] = 1.0
    with pytest.raises(exchange.ProtocolError, match="malformed"):
        exchange.Stamp.parse(bad, 1, 100)


def test_pack_unpack_round_trip():
    a, b = torch.randn(3, 2, 5), torch.randn(3, 4)
    rows = exchange.pack([a, b])
    assert rows.shape == (3, 14)
    x, y = exchange.unpack(rows, [a, b])
    assert torch.equal(x, a) and torch.equal(y, b)


def test_mixing_leaves_out_bad_rows_and_renormalises():
    w = np.array([[0.5, 0.25, 0.25], [0.25, 0.75, 0.0], [0.25, 0.0, 0.75]])
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [float("nan"), 0.0]])
    out = mix_held(w, range(0, 3), [x], {2: "nan"})[0]
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], (0.5 * x[0] + 0.25 * x[1]) / 0.75)
    assert torch.allclose(out[1], 0.25 * x[0] + 0.75 * x[1])
    assert torch.equal(out[2], x[0])  # the bad client takes its healthy neighbours' average
    assert np.allclose(renormalised(w, {2})[:2].sum(1), 1.0)
    alone = mix_held(np.eye(3), range(2, 3), [x], {2: "nan"})[0]
    assert torch.isnan(alone[0, 0])  # no healthy neighbour: it keeps its own


def test_mixing_held_rows_is_the_simulators_mixing_bit_for_bit():
    """A peer holding only its rows and its neighbours' (zeros elsewhere) computes exactly
    what gossip.mix computes on every client's tensor."""
    from tadlora import gossip, topology

    w = topology.metropolis_hastings(topology.erdos_renyi(8, 0, 3, 0.3))
    x = torch.randn(8, 4, 16)
    everyone = x.clone()
    gossip.mix({"x": everyone}, torch.as_tensor(w))
    mine = range(2, 4)
    held = np.flatnonzero((w[mine.start:mine.stop] != 0).any(0))
    partial = torch.zeros_like(x)
    partial[held] = x[held]
    assert len(held) < 8
    assert torch.equal(mix_held(w, mine, [partial], {})[0], everyone[2:4])


def test_one_peer_draws_the_simulators_dropout():
    assert dropout_seed(7, 3, 0) == 7 * 1_000_003 + 3  # simulate.prepare_round's seed


def test_launch_refuses_more_peers_than_clients(tmp_path, capsys):
    from tadlora import cli

    assert cli.main(["launch", "--peers", "5", "clients.n=4", f"run.out_dir={tmp_path}"]) == 2
    assert "every peer needs at least one client" in capsys.readouterr().err


# ------------------------------------------------------------------ parity with the simulator


@pytest.fixture(scope="module")
def two_peers(model_dir, tmp_path_factory):
    """A 2-peer all_gather run of tad, every round's slices kept: (argv, run directory)."""
    out = tmp_path_factory.mktemp("two-peers")
    argv = args(model_dir, out, "d", "method.name=tad", "distributed.keep_slices=true")
    rc, stdout, err = tadlora("launch", "--peers", "2", *argv)
    assert rc == 0, err
    assert "averaged adapter" in stdout and f"run directory: {out / 'd'}" in stdout
    return argv, out / "d"


def test_two_peers_all_gather_match_the_simulator_every_round(two_peers):
    check_parity(*two_peers, peers=2, mode="all_gather")


def test_four_peers_p2p_match_the_simulator_every_round(model_dir, tmp_path):
    argv = args(model_dir, tmp_path, "d", "method.name=rolora", "distributed.mode=p2p",
                "distributed.keep_slices=true")
    rc, _, err = tadlora("launch", "--peers", "4", *argv)
    assert rc == 0, err
    check_parity(argv, tmp_path / "d", peers=4, mode="p2p")


SAME_AS_SIMULATOR = ("phase", "switch_interval", "train_loss", "client_loss", "consensus_A",
                     "consensus_B", "cross_term_error", "eval")


def check_parity(argv, d, peers, mode):
    """The run in `d` is bit for bit the simulator's with the peers' forward groups, and
    within 1e-6 of the simulator's default (one group): every client's tensors after every
    round, the records and the summary. Bytes are what the mode must send."""
    states, want, _ = reference([*argv, f"train.clients_per_forward={8 // peers}"])
    got_records = records(d)
    for t, state in enumerate(states):
        got = slices_of_round(d, t + 1)
        assert all(torch.equal(got[k], v) for k, v in state.items()), t
        assert {k: got_records[t].get(k) for k in SAME_AS_SIMULATOR} == {
            k: want[t].get(k) for k in SAME_AS_SIMULATOR}
    states, want, summary = reference(argv)
    for t, state in enumerate(states):
        got = slices_of_round(d, t + 1)
        for k, v in state.items():
            assert (got[k] - v).abs().max() <= 1e-6, (t, k)
    assert_close_records(got_records, want)
    assert all(r["peers"] == peers and r["mode"] == mode for r in got_records)
    got_summary = json.loads((d / "summary.json").read_text())
    for key, value in summary.items():
        if key != "wall_time_s":
            assert close(got_summary[key], value), key
    assert config.load(d / "config.toml") == config.load(None, argv)
    merged = load_file(str(d / "checkpoint" / "adapters.safetensors"))
    assert all((merged[k] - v).abs().max() <= 1e-6 for k, v in states[-1].items())
    cfg = config.load(None, argv)
    pol, mixing = runner.policy(cfg)[0], runner.mixing(cfg)
    slices = exchange.client_slices(8, peers)
    for r in got_records:  # bytes: all_gather sends every row to every other peer; p2p the least
        kinds = simulate.mixed_kinds(pol, r["round"])
        row = 4 * sum(v[0].numel() for k, v in states[0].items() if k.split("/")[0] in kinds)
        w = pol.weights(mixing(r["round"]))
        least = exchange.least_bytes(w, slices, row)
        assert r["bytes_sent"] == (least if mode == "p2p" else [row * (peers - 1)] * 8)


# ------------------------------------------------------------------ faults


def test_killed_peer_is_named_and_the_run_resumes_to_the_same_result(model_dir, tmp_path):
    argv = args(model_dir, tmp_path, "k", "method.name=lora")
    rc, _, err = tadlora("launch", "--peers", "2", *argv, env={"TADLORA_FAULT": "kill:1:2"})
    assert rc == 3
    assert "lost rank 1: was killed by SIGKILL" in err
    assert "--resume" in err
    d = tmp_path / "k"
    assert [r["round"] for r in records(d)] == [0, 1]  # no finished round lost
    assert not (d / "summary.json").exists()
    rc, out, err = tadlora("launch", "--peers", "2", "--resume", str(d))
    assert rc == 0, err
    states, want, summary = reference(argv)
    assert_close_records(records(d), want)
    merged = load_file(str(d / "checkpoint" / "adapters.safetensors"))
    assert all((merged[k] - v).abs().max() <= 1e-6 for k, v in states[-1].items())
    assert not (d / "peers").exists()


def test_bad_payloads_are_left_out_and_a_frozen_peer_is_detected(model_dir, tmp_path):
    """One run, three faults: rank 1 sends a NaN in round 0, rank 0 a payload one column too
    wide in round 1 (both left out of that round's mixing, with a warning, and the run goes
    on), then rank 1 freezes (SIGSTOP) in round 2: rank 0 names it within the 3 s timeout,
    keeps the checkpoint and exits; the launcher kills the frozen process."""
    argv = args(model_dir, tmp_path, "f", "method.name=lora", "distributed.timeout_s=3")
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_node_groups_equal_one_group(two_peers, tmp_path):
    """torchrun --nnodes 2 (one peer per node group) on 127.0.0.1 gives bit for bit the run
    that `tadlora launch --peers 2` gave."""
    argv, one = two_peers
    two = [a for a in argv if not a.startswith(("run.out_dir", "run.name"))]
    two += [f"run.out_dir={tmp_path}", "run.name=two"]
    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                "--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    results = run_group([[*torchrun, "--node-rank", str(k), "-m", "tadlora.cli", "peer", *two]
                         for k in (0, 1)])
    assert [rc for rc, _, _ in results] == [0, 0], results[0][2] + results[1][2]
    a = load_file(str(one / "checkpoint" / "adapters.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint" / "adapters.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    timing = {"compute_s", "wait_s", "transfer_s"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in records(one)]
    assert strip == [{k: v for k, v in r.items() if k not in timing}
                     for r in records(tmp_path / "two")]
