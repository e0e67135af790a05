"""Memory benchmark: peak RSS of a short simulated run with 1, 10 and 100 clients.

Each measurement runs in a fresh Python subprocess (this script re-invoked with --child N), so
the measurements cannot contaminate each other; each size is run 3 times (--repeats) and the run
with the median peak is reported, as a run's peak varies by 10-25 MiB with thread timing.
A child builds the experiment through the library (tadlora.runs.config.load +
tadlora.runs.build.build), runs a round with tadlora.engines.local.run_round (no evaluation)
and reports:
  - its peak RSS over the whole process (resource.getrusage ru_maxrss),
  - its peak RSS during the rounds only (VmHWM reset through /proc/self/clear_refs after build),
  - the bytes of all live tensors after the rounds (found through gc; storages counted once),
  - the per-client state measured on the actual tensors: factors + their gradients + the two
    AdamW moments (lora.state(model) and optimizer.state), divided by the number of clients,
  - the tokenised training examples build() holds (they grow with n: every client has its own),
  - optionally, one extra round split into the calls run_round makes, with the peak of each.

Fairness choices, so that the growth measures per-client state and not something else:
  - method=lora: A and B both train every round, so every factor has a gradient and two AdamW
    moments (the largest per-client state of all methods);
  - train.clients_per_forward=1: one forward/backward holds one client's batch for every size
    (activations grow with the group batch, which is not per-client state);
  - equal work: every size runs the same number of forward/backward passes per round
    (train.local_steps = passes / n: 100 steps for 1 client, 10 for 10, 1 for 100). The
    allocator's footprint grows with the number and the shapes of the batches it has seen, and
    the widest batch sets the activation peak; a 1-client run of 2 steps would see 2 batches,
    a 100-client run 200;
  - data.max_length=32 (most batches of review sentences reach it, so the widest batch is the
    same for every size) and few examples per client (32; their tokens are counted).
The requirement: growth per client (RSS100 - RSS10) / 90 within 1.5x of the per-client state.

    .venv/bin/python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MiB = 2**20
SIZES = (1, 10, 100)


# ------------------------------------------------------------------ child: one measured run


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss() -> int:
    """Current resident set size in bytes."""
    return _status_kib("VmRSS") * 1024


def peak() -> int:
    """Peak resident set size (high-water mark) in bytes, since start or the last reset."""
    return _status_kib("VmHWM") * 1024


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if t is not None else 0


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage reachable from Python (each storage counted once)."""
    import torch

    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter):
            s = obj.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


def state_bytes(model, optimizer) -> dict[str, int]:
    """Bytes of all clients' per-client tensors, their gradients and AdamW moments."""
    from tadlora.core import lora

    tensors = lora.state(model).values()
    moments = sum(_nbytes(v) for p in tensors for k, v in optimizer.state.get(p, {}).items()
                  if k in ("exp_avg", "exp_avg_sq"))
    return {"factors": sum(_nbytes(p) for p in tensors),
            "grads": sum(_nbytes(p.grad) for p in tensors),
            "moments": moments}


def data_footprint(fed) -> dict[str, int] | None:
    """The tokenised training examples build() holds (the data.Encoded in make_batch's closure:
    Python lists of token ids): example count and bytes (list objects + the int objects outside
    CPython's small-int cache). None if build() no longer keeps them that way."""
    from tadlora.data import text as data

    cells = fed.make_batch.__closure__ or ()
    enc = next((c.cell_contents for c in cells if isinstance(c.cell_contents, data.Encoded)), None)
    if enc is None:
        return None
    seqs = [s for col in (enc.input_ids, enc.token_type_ids or []) for s in col]
    total = sum(sys.getsizeof(s) + sum(28 for i in s if not -5 <= i <= 256) for s in seqs)
    return {"examples": len(enc.input_ids), "bytes": total + _nbytes(enc.labels)}


def no_cross_term() -> None:
    """Counterfactual: replace the cross-term diagnostic (its temporaries are dense d_out x d_in
    B @ A products, for all clients or a chunk of them) by a stub, to show what it costs."""
    from tadlora.core import gossip

    gossip.cross_term_error = lambda *args, **kwargs: float("nan")


def phase_peaks(fed, t: int) -> dict[str, int]:
    """One extra round, split into the calls run_round makes, with the peak RSS reached in
    each above the RSS when it started: where a peak comes from."""
    from tadlora.core import federation
    from tadlora.engines import local

    out = {}
    federation.prepare_round(fed, t)
    for name, fn in (("local_training", lambda: federation.local_training(fed, t)),
                     ("mix_and_measure", lambda: local.mix_and_measure(
                         fed.model, fed.policy, fed.mixing(t), t))):
        start = rss()
        reset_peak()
        fn()
        out[name] = peak() - start
    return out


def child(n: int, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(2)
    from tadlora.core import lora
    from tadlora.engines import local as simulate
    from tadlora.runs import build as runner
    from tadlora.runs import config

    if args.no_cross_term:
        no_cross_term()
    cfg = config.load(None, [
        f"clients.n={n}", "model.path=minilm", f"model.num_layers={args.layers}",
        "train.precision=fp32", "method.name=lora", "topology.kind=er",
        "data.partition=label_skew", f"data.examples_per_client={args.examples_per_client}",
        f"data.max_length={args.max_length}", f"run.rounds={args.rounds}",
        f"train.local_steps={steps(n, args)}", f"train.batch_size={args.batch_size}",
        "train.clients_per_forward=1", "run.progress=false"])
    out = {"n": n, "steps": cfg.train.local_steps}
    t0 = time.perf_counter()
    exp = runner.build(cfg)
    out.update(rss_built=rss(), build_s=time.perf_counter() - t0)
    out["peak_resettable"] = reset_peak()
    t0 = time.perf_counter()
    for t in range(cfg.run.rounds):
        simulate.run_round(exp.fed, t)
    out.update(rounds_s=time.perf_counter() - t0, peak_rounds=peak(),
               peak_process=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    out["live_after"] = live_tensor_bytes()
    out["state"] = state_bytes(exp.fed.model, exp.fed.optimizer)
    own = {id(p) for p in lora.state(exp.fed.model).values()}
    out["base_param_bytes"] = sum(_nbytes(p) for p in exp.fed.model.parameters()
                                  if id(p) not in own)
    out["data"] = data_footprint(exp.fed)
    diagnose = args.phases and out["peak_resettable"]
    out["phases"] = phase_peaks(exp.fed, cfg.run.rounds) if diagnose else None
    return out


def steps(n: int, args: argparse.Namespace) -> int:
    """Local steps so that every size runs the same number of forward passes per round."""
    return max(1, args.passes // n)


# ------------------------------------------------------------------ parent: report


def run_child(n: int, args: argparse.Namespace, stub_cross_term: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--rounds", str(args.rounds),
           "--passes", str(args.passes), "--batch-size", str(args.batch_size),
           "--examples-per-client", str(args.examples_per_client),
           "--max-length", str(args.max_length), "--layers", str(args.layers)]
    cmd += ["--no-cross-term"] if stub_cross_term else ["--phases"] * args.phases
    env = {**os.environ, "OMP_WAIT_POLICY": args.omp_wait}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"child for n={n} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_run(n: int, args: argparse.Namespace, stub: bool, name: str) -> dict:
    """args.repeats fresh runs of one size; the run with the median peak RSS, plus all peaks.
    (A run's peak varies by ~10-25 MiB with thread timing and allocator state.) Only the first
    run of the simulator as is does the per-phase diagnostic round."""
    runs = []
    for i in range(args.repeats):
        phases = args.phases and not stub and i == 0
        runs.append(run_child(n, argparse.Namespace(**{**vars(args), "phases": phases}), stub))
        print(f"[{name}] n={n:>3} run {i + 1}: peak RSS {runs[-1]['peak_process'] / MiB:.1f} "
              f"MiB ({runs[-1]['build_s'] + runs[-1]['rounds_s']:.1f} s)", flush=True)
    best = sorted(runs, key=lambda r: r["peak_process"])[(len(runs) - 1) // 2]
    best = {**best, "phases": runs[0]["phases"], "repeats": [r["peak_process"] for r in runs]}
    return best


def mib(b: float) -> str:
    return f"{b / MiB:7.1f} MiB"


def kib(b: float) -> str:
    return f"{b / 1024:7.1f} KiB"


def data_bytes(r: dict) -> int:
    return r["data"]["bytes"] if r["data"] else 0


def table(res: dict[int, dict]) -> None:
    print(f"{'clients':>7} {'steps':>5} {'RSS built':>11} {'peak process':>12} "
          f"{'(min-max of repeats)':>21} {'peak rounds':>11} {'live tensors':>12} "
          f"{'train examples held':>22} {'time':>6}")
    for n, r in res.items():
        d = r["data"]
        held = f"{d['examples']:>5} ex {d['bytes'] / MiB:5.2f} MiB" if d else "unknown"
        peaks = r["repeats"]
        spread = f"({min(peaks) / MiB:.1f}-{max(peaks) / MiB:.1f}, {len(peaks)} runs)"
        print(f"{n:>7} {r['steps']:>5} {mib(r['rss_built'])} {mib(r['peak_process']):>12} "
              f"{spread:>21} {mib(r['peak_rounds']):>11} {mib(r['live_after']):>12} {held:>22} "
              f"{r['build_s'] + r['rounds_s']:5.1f}s")


def growth(res: dict[int, dict], per_client: float, key: str, label: str) -> float:
    """Print the growth per client of res[n][key] (raw, and less the training examples' growth);
    returns the ratio (X100 - X10) / 90 / per-client state."""
    print(f"  growth per client of the {label}:")
    ratios = []
    for hi, lo in ((res[100], res[10]), (res[10], res[1])):
        span = hi["n"] - lo["n"]
        g = (hi[key] - lo[key]) / span
        g_data = (data_bytes(hi) - data_bytes(lo)) / span
        tag = f"({hi['n']:>3} - {lo['n']:>2}) / {span:<2}"
        print(f"    {tag} = {kib(g)} = {g / per_client:5.2f} x state; less the training "
              f"examples' growth ({kib(g_data).strip()}): {(g - g_data) / per_client:5.2f} x")
        ratios.append(g / per_client)
    return ratios[0]


def report(series: dict[str, dict[int, dict]], args: argparse.Namespace) -> None:
    steps_txt = ", ".join(f"{steps(n, args)} for {n}" for n in SIZES)
    print(f"\nshort run per size: {args.rounds} round(s); local steps {steps_txt} clients "
          f"(= {args.passes} forward passes per round for every size); batch {args.batch_size}; "
          f"{args.examples_per_client} examples/client (label_skew); data.max_length="
          f"{args.max_length}; train.clients_per_forward=1; MiniLM ({args.layers or 6} layers) "
          f"fp32; method=lora; engines.local.run_round; no evaluation; one fresh process per row "
          f"(2 torch threads, OMP_WAIT_POLICY={args.omp_wait}).")
    res = series["simulator as is"]
    st = {k: v / 100 for k, v in res[100]["state"].items()}
    per_client = sum(st.values())
    print(f"\nper-client state, measured on the tensors of the 100-client run / 100: factors "
          f"{kib(st['factors']).strip()} + grads {kib(st['grads']).strip()} + AdamW moments "
          f"{kib(st['moments']).strip()} = {kib(per_client).strip()}")
    ratios = {}
    for name, rs in series.items():
        print(f"\n== {name} ==")
        table(rs)
        ratios[name] = growth(rs, per_client, "peak_process", "peak RSS (whole process)")
        growth(rs, per_client, "peak_rounds", "peak RSS during the rounds")
        growth(rs, per_client, "live_after", "live tensors after the rounds")
        if rs[100]["phases"]:
            print("  peak above the RSS at the call's start, in one extra round:")
            for n, r in rs.items():
                ph = r["phases"]
                print(f"    {n:>3} clients: local_training +{mib(ph['local_training'])}, "
                      f"mix_and_measure (gossip + diagnostics) +{mib(ph['mix_and_measure'])}")
    print("\nrequirement: peak RSS growth per client (RSS100 - RSS10) / 90 within 1.5x of the "
          "per-client state")
    for name, ratio in ratios.items():
        print(f"  {name:<52} {ratio:5.2f}x  {'PASS' if ratio <= 1.5 else 'FAIL'}")
    base = res[1]["base_param_bytes"]
    copies = 100 * (base + per_client)
    peak100 = res[100]["peak_process"]
    print(f"\nfor comparison, 100 separate model copies: 100 x ({base / MiB:.1f} MiB base "
          f"parameters + {per_client / 1024:.0f} KiB adapter state) = {copies / MiB:.0f} MiB of "
          f"tensors alone (no activations, no runtime), vs a measured peak RSS of "
          f"{peak100 / MiB:.0f} MiB for the whole 100-client process ({copies / peak100:.1f}x).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2-layer MiniLM, 1 round, no "
                    "counterfactual series, no per-phase round")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-cross-term", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=None, help="model.num_layers (0 = all 6)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per run")
    ap.add_argument("--repeats", type=int, default=None,
                    help="fresh runs per size, the median peak is reported (default 3, quick 1)")
    ap.add_argument("--passes", type=int, default=100,
                    help="forward passes per round for every size (local_steps = passes / n)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--examples-per-client", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--omp-wait", default=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
                    help="OMP_WAIT_POLICY of the children (PASSIVE: OpenMP threads sleep instead "
                    "of spinning, which on a shared 2-core machine is ~10x faster; no effect on "
                    "memory)")
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args)))
        return
    args.layers = (2 if args.quick else 0) if args.layers is None else args.layers
    args.repeats = (1 if args.quick else 3) if args.repeats is None else args.repeats
    args.phases = not args.quick
    variants = {"simulator as is": False}
    if not args.quick:
        variants["counterfactual: cross-term diagnostic stubbed out"] = True
    t0 = time.perf_counter()
    series: dict[str, dict[int, dict]] = {}
    for name, stub in variants.items():
        series[name] = {}
        for n in SIZES:
            series[name][n] = median_run(n, args, stub, name)
    report(series, args)
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
