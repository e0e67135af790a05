"""Helpers for tests that start real peers on torch.distributed (gloo, 127.0.0.1): the run's
overrides, process groups killed whole on timeout, and the in-process engine as reference.

The default overrides turn LoRA dropout off and the fixtures' `nodrop_model_dir` has no hidden
or attention dropout; a test that wants dropout on adds `model.lora_dropout=...` and uses
`tiny_model_dir` (every client draws its masks from its own stream: core/dropout.py).
"""

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tadlora.core import lora
from tadlora.engines import local
from tadlora.runs import config, loop
from tadlora.runs.build import build

TIMEOUT = 240  # seconds for one launch; a hang fails the test instead of the suite
SAME_AS_SIMULATOR = ("phase", "switch_interval", "train_loss", "client_loss", "consensus_A",
                     "consensus_B", "cross_term_error", "eval")


def args(model_dir, out, name, *extra):
    return [f"model.path={model_dir}", f"run.out_dir={out}", f"run.name={name}",
            "run.rounds=4", "run.eval_every=2", "run.progress=false", "clients.n=8",
            "data.examples_per_client=12", "data.val_size=40", "data.max_length=32",
            "train.local_steps=2", "train.batch_size=4", "topology.p=0.4",
            "topology.rho_samples=100", "model.lora_dropout=0", "distributed.timeout_s=30",
            "train.precision=fp32",  # 1e-6 parity across forward groupings needs fp32 math
            *extra]


def elsewhere(argv, out, name):
    """The same run's overrides with another run directory."""
    return [a for a in argv if not a.startswith(("run.out_dir", "run.name"))] + [
        f"run.out_dir={out}", f"run.name={name}"]


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
    """`tadlora ARGV` in a subprocess: (exit code, stdout, stderr)."""
    return run_group([[sys.executable, "-m", "tadlora.cli", *argv]], env)[0]


def reference(argv, per_forward=None, departures=()):
    """The in-process engine: every client's tensors after every round, the records and the
    summary. per_forward: {round: train.clients_per_forward from that round on} (the forward
    groups of the peers, when a resume changed their number); departures: the clients that
    take no part, from a round on (core/membership.py)."""
    cfg = config.load(None, argv)
    exp = build(cfg)
    exp.fed.departures = departures
    states, records = [], []
    for t in range(cfg.run.rounds):
        if per_forward and t in per_forward:
            exp.fed.local = replace(exp.fed.local, per_forward=per_forward[t])
        rec = local.run_round(exp.fed, t)
        if loop.due(cfg, t):
            rec["eval"] = local.evaluation(exp.fed, exp.val, t)
        records.append(rec)
        states.append({k: v.detach().clone() for k, v in lora.state(exp.fed.model).items()})
    return states, records, loop.summary(exp, records, 0.0)


def slices_of_round(run_dir, rnd):
    """Every client's tensors after `rnd` rounds, stitched from the peers' kept slices."""
    parts = sorted(Path(run_dir).glob(f"peers/rank-*/round-{rnd:06d}"),
                   key=lambda d: json.loads((d / "state.json").read_text())["clients"][0])
    tensors = [load_file(str(d / "adapters.safetensors")) for d in parts]
    return {k: torch.cat([t[k] for t in tensors]) for k in tensors[0]}


def merged(run_dir):
    return load_file(str(Path(run_dir) / "checkpoint" / "adapters.safetensors"))


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
        assert np.allclose(np.array(g["client_loss"], dtype=float),  # None: departed
                           np.array(w["client_loss"], dtype=float), atol=2e-5, equal_nan=True)
        assert g.get("departed") == w.get("departed")
        for key in ("train_loss", "consensus_A", "consensus_B", "cross_term_error"):
            assert abs(g[key] - w[key]) <= 1e-6 * max(1.0, abs(w[key])), (g["round"], key)
        assert ("eval" in g) == ("eval" in w)
        if "eval" in w:
            assert close(g["eval"], w["eval"]), g["round"]


def same_as_simulator(got, want):
    """The record fields a peer run shares bit for bit with the in-process engine's."""
    return ({k: got.get(k) for k in SAME_AS_SIMULATOR}
            == {k: want.get(k) for k in SAME_AS_SIMULATOR})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
