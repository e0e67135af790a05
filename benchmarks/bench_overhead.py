"""Overhead benchmark: throughput of a local step inside the simulator vs bare training loops.

Setup: the packaged MiniLM (model.path=minilm), 10 clients, batch 16 per client, method=lora (A
and B both train, as in the bare loops), fp32 and bf16 autocast, torch.set_num_threads(2). The
Federation comes from tadlora.runs.build.build; one "step" = one AdamW step of every client, i.e.
10 x 16 = 160 samples. Five loops, all on the same examples of the same round:

  sim[all]    federation.prepare_round + federation.local_training (= train.local_round) with the
              default train.clients_per_forward=0: the 10 clients' batches in ONE forward.
              Includes everything the simulator does per step: make_batch (index + collate +
              pad), lora.select, per-client mean losses, per-client gradient clipping, loss
              bookkeeping, AdamW over the stacked tensors.
  bare[all]   the SAME stacked model, optimizer and pre-collated group batch (same padding):
              zero_grad / forward / cross-entropy / backward / AdamW.step, nothing else (no
              collate, no per-client loss split, no clipping). The fair measure of the
              simulator's own overhead: the requirement sim[all] / bare[all] >= 0.9.
  sim[1]      the simulator with train.clients_per_forward=1: one forward per client batch.
  bare[1]     bare[all]'s loop with one forward per client batch (same shapes as sim[1]).
  peft[1]     what one would write without the simulator: a plain peft LoRA model
              (get_peft_model, same r / alpha / dropout / targets, frozen head), one forward /
              backward / AdamW.step per client batch (each batch padded on its own). One adapter
              serves all clients: the compute per sample is that of 10 separate peft models.
              Compare with sim[1] (same shapes) and sim[all] (what the simulator does by default).

The machine is shared, so the loops are interleaved (each repetition runs all five, in a rotated
order, on that round's batches), warm-up repetitions are dropped, the ratios are medians of the
per-repetition ratios (a slow spell hits both loops of a pair alike), and OMP_WAIT_POLICY
defaults to PASSIVE (see below; both loops of a pair run under the same policy).

    .venv/bin/python benchmarks/bench_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

# OpenMP threads that sleep instead of spinning at barriers: on a shared 2-core machine spinning
# threads of two busy processes wait on each other and a step gets ~10x slower, at random. Set
# before torch loads its OpenMP runtime; OMP_WAIT_POLICY=ACTIVE in the environment overrides it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

Batch = dict[str, torch.Tensor]
N_CLIENTS = 10
CPU = torch.device("cpu")


def build(args: argparse.Namespace):
    from tadlora.runs import build as runner
    from tadlora.runs import config

    cfg = config.load(None, [
        f"clients.n={N_CLIENTS}", "model.path=minilm", f"model.num_layers={args.layers}",
        "method.name=lora", f"train.batch_size={args.batch_size}",
        f"train.local_steps={args.steps}", "train.clients_per_forward=0", "run.progress=false"])
    return cfg, runner.build(cfg)


def peft_model(cfg, num_labels: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The same base model (same weights, same seeded head) with one plain peft LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    from tadlora.runs import build as runner

    base, _ = runner.load_model(cfg, num_labels)
    m = cfg.model
    model = get_peft_model(base, LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha,
                                            lora_dropout=m.lora_dropout,
                                            target_modules=list(m.target_modules)))
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def bare_stacked(model: nn.Module, opt: torch.optim.Optimizer,
                 steps: list[list[tuple[slice, Batch]]], precision: str) -> None:
    """Plain forward / backward / step over the stacked model: no simulator machinery."""
    from tadlora.core import lora
    from tadlora.core import precision as prec

    model.train()
    for groups in steps:
        opt.zero_grad(set_to_none=True)
        for g, b in groups:
            rows = b["labels"].shape[0] // (g.stop - g.start)
            with lora.select(model, g), prec.autocast(CPU, precision):
                logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits.float()
            # sum of per-client means (what the simulator optimises), without splitting per client
            (nn.functional.cross_entropy(logits, b["labels"], reduction="sum") / rows).backward()
        opt.step()


def bare_peft(model: nn.Module, opt: torch.optim.Optimizer, steps: list[list[Batch]],
              precision: str) -> None:
    """Plain peft loop: forward / backward / AdamW.step for every client batch."""
    from tadlora.core.precision import autocast

    model.train()
    for batches in steps:
        for b in batches:
            opt.zero_grad(set_to_none=True)
            with autocast(CPU, precision):
                logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits.float()
            nn.functional.cross_entropy(logits, b["labels"]).backward()
            opt.step()


def round_batches(fed, t: int) -> tuple[list, list]:
    """Round t's batches exactly as the simulator draws them: per group of all clients, and per
    client. Checks that both hold the same examples."""
    from tadlora.core import train

    grouped = [[(g, fed.make_batch(t, k, g)) for g in train.groups(fed.n_clients, 0)]
               for k in range(fed.local.steps)]
    single = [[fed.make_batch(t, k, slice(c, c + 1)) for c in range(fed.n_clients)]
              for k in range(fed.local.steps)]
    for gs, cs in zip(grouped, single, strict=True):
        whole = torch.cat([b["labels"] for _, b in gs])
        assert torch.equal(whole, torch.cat([b["labels"] for b in cs])), "batches differ"
    return grouped, single


def tokens(steps: list) -> int:
    """Token positions processed (padding included)."""
    flat = [b for s in steps for b in s]
    return sum((b[1] if isinstance(b, tuple) else b)["input_ids"].numel() for b in flat)


def measure(precision: str, cfg, exp, peft, args: argparse.Namespace, t0: int) -> dict:
    """Interleaved repetitions of the five loops; returns per-loop times (warm-up dropped)."""
    from tadlora.core import federation as simulate

    fed_all = replace(exp.fed, local=replace(exp.fed.local, precision=precision, per_forward=0))
    fed_one = replace(exp.fed, local=replace(exp.fed.local, precision=precision, per_forward=1))

    def sim(fed) -> Callable[[int, list, list], None]:
        def go(t: int, grouped: list, single: list) -> None:
            simulate.prepare_round(fed, t)
            simulate.local_training(fed, t)
        return go

    loops = {
        "sim[all]": sim(fed_all),
        "bare[all]": lambda t, gr, si: bare_stacked(exp.fed.model, exp.fed.optimizer, gr,
                                                    precision),
        "sim[1]": sim(fed_one),
        "bare[1]": lambda t, gr, si: bare_stacked(
            exp.fed.model, exp.fed.optimizer,
            [[(slice(c, c + 1), b) for c, b in enumerate(s)] for s in si], precision),
        "peft[1]": lambda t, gr, si: bare_peft(peft[0], peft[1], si, precision),
    }
    names = list(loops)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    toks = {"all": 0, "1": 0}
    load = os.getloadavg()[0]
    for rep in range(args.warmup + args.reps):
        t = t0 + rep
        grouped, single = round_batches(exp.fed, t)
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: no fixed position
        dur, dur_cpu = {}, {}
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            loops[name](t, grouped, single)
            dur[name] = time.perf_counter() - start
            dur_cpu[name] = time.process_time() - start_cpu
        if rep >= args.warmup:
            for name in names:
                times[name].append(dur[name])
                cpu[name].append(dur_cpu[name])
            toks["all"] += tokens(grouped)
            toks["1"] += tokens(single)
        print(f"  {precision} rep {rep}{' (warm-up)' if rep < args.warmup else ''}: "
              + ", ".join(f"{n} {dur[n]:.2f}s" for n in names), flush=True)
    return {"times": times, "cpu": cpu, "tokens": toks, "load": (load, os.getloadavg()[0])}


PAIRS = (("sim[all]", "bare[all]", "simulator overhead: the requirement, >= 0.9"),
         ("sim[1]", "bare[1]", "simulator overhead at one client per forward"),
         ("bare[1]", "peft[1]", "stacked LoRA model vs peft model, same shapes, both bare"),
         ("sim[1]", "peft[1]", "simulator vs a per-client peft loop, same shapes"),
         ("sim[all]", "peft[1]", "simulator default vs a per-client peft loop"))


def paired(a: list[float], b: list[float]) -> list[float]:
    """Per-repetition throughput ratios of loop a over loop b (= time b / time a)."""
    return [tb / ta for ta, tb in zip(a, b, strict=True)]


def report(precision: str, res: dict, args: argparse.Namespace) -> dict[str, float]:
    times, cpu, samples = res["times"], res["cpu"], args.steps * N_CLIENTS * args.batch_size
    reps = len(times["sim[all]"])
    print(f"\n{precision}: {reps} measured repetitions x {args.steps} step(s) x {N_CLIENTS} "
          f"clients x batch {args.batch_size} = {samples} samples per repetition and loop")
    print(f"  {'loop':<10} {'median s/step':>13} {'median samples/s':>16} {'CPU s/step':>10} "
          f"{'tokens/rep (incl. padding)':>27}")
    for name, ts in times.items():
        tok = res["tokens"]["1" if name.endswith("[1]") else "all"]
        med = statistics.median(ts)
        print(f"  {name:<10} {med / args.steps:13.3f} {samples / med:16.1f} "
              f"{statistics.median(cpu[name]) / args.steps:10.3f} {tok / reps:27.0f}")
    print("  throughput ratio A / B: median over repetitions of the paired ratio time B / time A "
          "[min-max over repetitions]; cpu: the same from process CPU time")
    out = {}
    for a, b, note in PAIRS:
        r, r_cpu = paired(times[a], times[b]), paired(cpu[a], cpu[b])
        out[f"{a}/{b}"] = statistics.median(r)
        print(f"    {a:>8} / {b:<9} = {statistics.median(r):5.3f} [{min(r):.3f}-{max(r):.3f}]"
              f"  cpu {statistics.median(r_cpu):5.3f}  ({note})")
    print(f"  load average during this block: {res['load'][0]:.2f} -> {res['load'][1]:.2f} "
          "(2 cores; above ~2 other work competed for them)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2-layer MiniLM, 2 repetitions")
    ap.add_argument("--layers", type=int, default=None, help="model.num_layers (0 = all 6)")
    ap.add_argument("--reps", type=int, default=None, help="measured repetitions (default 6)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up repetitions (dropped)")
    ap.add_argument("--steps", type=int, default=1, help="local steps per repetition")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    if args.layers is None:
        args.layers = 2 if args.quick else 0
    if args.reps is None:
        args.reps = 2 if args.quick else 6
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    cfg, exp = build(args)
    peft = peft_model(cfg, len(exp.label_names))
    print(f"MiniLM ({args.layers or 6} layers), {N_CLIENTS} clients, batch {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}; built in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    ratios = {}
    for i, precision in enumerate(args.precisions.split(",")):
        res = measure(precision, cfg, exp, peft, args, t0=1000 * i)
        ratios[precision] = report(precision, res, args)
    print("\nrequirement: simulator >= 0.9 x the bare loop's throughput (sim[all] / bare[all])")
    for precision, r in ratios.items():
        ok = r["sim[all]/bare[all]"] >= 0.9
        print(f"  {precision}: {r['sim[all]/bare[all]']:.3f}  {'PASS' if ok else 'FAIL'}")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
