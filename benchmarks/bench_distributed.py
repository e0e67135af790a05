"""Distributed benchmark on loopback: communication against compute per round, and bytes sent
against the least any exchange could send.

Part 1 (time): `tadlora launch` with 2 and 4 peers, all_gather and p2p, method tad, the packaged
MiniLM cut to 2 layers (LoRA r=8 on query/value: 24,576 floats = 96 KiB per client and factor
pair), 8 clients, batch 16, 4 local steps. Every peer logs per round
  compute_s   its local training,
  wait_s      the barrier before the exchange: waiting for the slowest peer (load imbalance;
              4 peers share this machine's cores) plus the store round trips,
  transfer_s  the exchange itself and the mixing of its clients' rows.
Printed: medians over rounds 1.. (round 0 warms up) of the per-peer means, and the
communication share transfer / (compute + wait + transfer), the aim being < 5%; the share with
the barrier wait counted as communication too is printed beside it.

Part 2 (bytes): every method, 4 peers, both modes, 2 rounds of one step: bytes per round the
peers actually sent (headers and all_gather's padding included) against the least any exchange
can send (each client's mixed row once to every other peer that mixes it:
exchange.least_bytes, which p2p mode sends plus its headers) and against what one process per
client would send (the simulator's bytes_sent: its row once per neighbour).

    .venv/bin/python benchmarks/bench_distributed.py [--quick] [--peers 2 4] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tadlora.core import lora
from tadlora.core.federation import mixed_kinds
from tadlora.core.methods import METHODS as REGISTRY
from tadlora.engines import exchange
from tadlora.runs import build as runner
from tadlora.runs import config

BASE = ["model.path=minilm", "model.num_layers=2", "clients.n=8", "data.examples_per_client=64",
        "data.val_size=64", "data.max_length=64", "train.batch_size=16", "run.eval_every=0",
        "run.progress=false", "topology.p=0.3", "topology.rho_samples=200",
        "distributed.timeout_s=120"]
METHODS = tuple(REGISTRY)


def launch(peers: int, out: Path, name: str, extra: list[str]) -> list[dict]:
    """One `tadlora launch`; returns its round records."""
    argv = [*BASE, f"run.out_dir={out}", f"run.name={name}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "tadlora.cli", "launch", "--peers", str(peers),
                           *argv], env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"launch failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = (out / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line]


def timing(out: Path, peers: list[int], rounds: int, steps: int) -> None:
    print(f"per-round times, medians over rounds 1..{rounds - 1} of the per-peer means "
          f"(tad, MiniLM-2L, 8 clients, {steps} local steps of batch 16)")
    print(f"{'peers':>5} {'mode':>10} {'compute s':>10} {'wait s':>8} {'transfer s':>10} "
          f"{'comm %':>7} {'comm+wait %':>11} {'bytes/round':>12}")
    for n in peers:
        for mode in ("all_gather", "p2p"):
            recs = launch(n, out, f"t{n}-{mode}", [f"run.rounds={rounds}", "method.name=tad",
                                                  f"train.local_steps={steps}",
                                                  f"distributed.mode={mode}"])[1:]
            c, w, x = (statistics.median(float(np.mean(r[k])) for r in recs)
                       for k in ("compute_s", "wait_s", "transfer_s"))
            sent = statistics.median(sum(r["peer_bytes_sent"]) for r in recs)
            print(f"{n:>5} {mode:>10} {c:>10.3f} {w:>8.4f} {x:>10.4f} "
                  f"{100 * x / (c + w + x):>6.2f}% {100 * (w + x) / (c + w + x):>10.2f}% "
                  f"{sent:>12,.0f}")


def row_bytes(cfg: config.Config) -> dict[str, int]:
    """Bytes of one client's tensors of each kind (A, B, head)."""
    train_set, _ = runner.load_data(cfg)
    model, _ = runner.load_model(cfg, len(train_set.label_names))
    fac = lora.factors(runner.stack_adapters(model, cfg, 1))
    return {k: sum(p[0].numel() * p.element_size() for p in ps.values())
            for k, ps in fac.items()}


def least(cfg: config.Config, rec: dict, peers: int, sizes: dict[str, int]) -> tuple[int, int]:
    """(the least bytes any exchange can send, one process per client) for a round."""
    pol = runner.policy(cfg)[0]
    kinds = mixed_kinds(pol, rec["round"])
    if not kinds:
        return 0, 0
    w = pol.weights(runner.mixing(cfg)(rec["round"]))
    row = sum(sizes[k] for k in kinds)
    slices = exchange.client_slices(cfg.clients.n, peers)
    degree = ((w != 0) & ~np.eye(len(w), dtype=bool)).sum(axis=0)
    return sum(exchange.least_bytes(w, slices, row)), int(row * degree.sum())


def traffic(out: Path, peers: int, methods: tuple[str, ...]) -> None:
    sizes = row_bytes(config.load(None, BASE))
    print(f"\nbytes per round, {peers} peers, mean of 2 rounds (switch_interval=1 for tad and "
          "adf so both phases show)")
    print(f"{'method':>7} {'mode':>10} {'sent':>12} {'least':>12} {'sent/least':>10} "
          f"{'1 proc/client':>14}")
    for method in methods:
        for mode in ("all_gather", "p2p"):
            extra = ["run.rounds=2", "train.local_steps=1", f"method.name={method}",
                     f"distributed.mode={mode}", "distributed.diagnostics=false"]
            if method in ("tad", "adf"):
                extra.append("method.switch_interval=1")
            recs = launch(peers, out, f"b-{method}-{mode}", extra)
            cfg = config.load(None, [*BASE, *extra])
            sent = np.mean([sum(r["peer_bytes_sent"]) for r in recs])
            low, per_client = np.mean([least(cfg, r, peers, sizes) for r in recs], axis=0)
            ratio = f"{sent / low:10.3f}" if low else f"{'-':>10}"
            print(f"{method:>7} {mode:>10} {sent:>12,.0f} {low:>12,.0f} {ratio} "
                  f"{per_client:>14,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="local steps per round")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 2 steps; 3 methods")
    ns = ap.parse_args()
    rounds, steps = (3, 2) if ns.quick else (ns.rounds, ns.steps)
    with tempfile.TemporaryDirectory() as tmp:
        timing(Path(tmp), ns.peers, rounds, steps)
        traffic(Path(tmp), max(ns.peers), ("lora", "ffa", "local") if ns.quick else METHODS)


if __name__ == "__main__":
    main()
