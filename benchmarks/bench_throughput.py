"""Training throughput of the simulator: all clients in one grouped forward vs one client per
forward, fp32 vs bf16, on CPU or CUDA.

    .venv/bin/python benchmarks/bench_throughput.py [--device cuda] [--clients 10] [--steps 10]
        [--precisions fp32,bf16]

It also prints whether the device computes bf16 natively (core.precision.native_bf16): where it does
not, bf16 autocast is emulated and slower than fp32, which is why train.precision=auto picks fp32.
"""

from __future__ import annotations

import argparse
import time

import torch

from tadlora.core import federation as simulate
from tadlora.core.precision import native_bf16
from tadlora.runs import build as runner
from tadlora.runs import config


def samples_per_second(overrides: list[str], steps: int) -> float:
    exp = runner.build(config.load(None, overrides))
    fed = exp.fed
    simulate.prepare_round(fed, 0)
    simulate.local_training(fed, 0)  # warm-up (allocator, kernels)
    if fed.local.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        simulate.prepare_round(fed, t)
        simulate.local_training(fed, t)
    if fed.local.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * fed.local.steps * fed.n_clients * exp.cfg.train.batch_size / (
        time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10, help="rounds timed (2 local steps each)")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--data-path", default="")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    base = [f"train.device={args.device}", f"clients.n={args.clients}", f"model.path={args.model}",
            "train.local_steps=2", f"train.batch_size={args.batch_size}", "run.progress=false",
            "data.val_size=10", "data.examples_per_client=64", "method.name=lora"]
    if args.data_path:
        base.append(f"data.path={args.data_path}")
    cpu = f"CPU x{torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name() if args.device == "cuda" else cpu
    native = native_bf16(torch.device(args.device))
    print(f"device: {name} (native bf16: {native}); {args.clients} clients, batch "
          f"{args.batch_size}/client, MiniLM-L6")
    print(f"{'precision':>9} {'clients/forward':>15} {'samples/s':>10}")
    for precision in args.precisions.split(","):
        rates = {}
        for per_forward in [1, 0]:
            rates[per_forward] = samples_per_second(
                base + [f"train.precision={precision}",
                        f"train.clients_per_forward={per_forward}"], args.steps)
            label = "all" if per_forward == 0 else str(per_forward)
            print(f"{precision:>9} {label:>15} {rates[per_forward]:>10.1f}")
        print(f"{precision:>9} grouped / one-at-a-time = {rates[0] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
