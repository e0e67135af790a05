"""The cost of one round's mixing: factor-wise gossip (lora, tad: one einsum per factor, plus
the cross-term diagnostic) against product consensus (decaf: form sum_j W_ij B_j A_j and
re-factorise it by truncated SVD, per client and layer), on the adapted shapes of a model.

    .venv/bin/python benchmarks/bench_mixing.py [--clients 10] [--layers 6] [--width 384]
        [--rank 8] [--repeats 5]

Defaults: all-MiniLM-L6-v2 (6 layers, query and value 384 x 384, so 12 adapted layers), LoRA
rank 8, 10 clients, an ER p=0.5 round's Metropolis-Hastings weights. The two are timed
alternately; the medians are printed with their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tadlora.core import gossip, topology


def factors(n: int, layers: int, width: int, r: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    a = {f"l{i}": torch.randn(n, r, width, generator=g) / width ** 0.5 for i in range(layers)}
    b = {f"l{i}": torch.randn(n, width, r, generator=g) * 0.01 for i in range(layers)}
    return a, b


def factor_wise(a: dict, b: dict, w: torch.Tensor) -> None:
    gossip.cross_term_error(a, b, w, w, w)
    gossip.mix({**{f"A{k}": v for k, v in a.items()}, **{f"B{k}": v for k, v in b.items()}}, w)


def product(a: dict, b: dict, w: torch.Tensor) -> None:
    gossip.product_consensus(a, b, w, range(len(w)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--layers", type=int, default=6, help="transformer layers (query + value)")
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    a, b = factors(args.clients, 2 * args.layers, args.width, args.rank)
    w = torch.as_tensor(topology.mixing_process("er", args.clients, 0, 0.5)(0))
    times: dict[str, list[float]] = {"factor-wise": [], "product": []}
    for _ in range(args.repeats + 1):  # the first repetition warms up and is dropped
        for name, fn in (("factor-wise", factor_wise), ("product", product)):
            t0 = time.perf_counter()
            fn(a, b, w)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    print(f"{args.clients} clients, {2 * args.layers} adapted layers of {args.width} x "
          f"{args.width}, rank {args.rank}, torch threads {torch.get_num_threads()}")
    for name, t in med.items():
        print(f"{name:>12}: {1000 * t:8.1f} ms per round")
    print(f"product / factor-wise: {med['product'] / med['factor-wise']:.1f}x")


if __name__ == "__main__":
    main()
