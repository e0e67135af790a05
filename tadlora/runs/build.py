"""Config -> the library's objects: model, data, partition, graph process, method policy, and
the Federation and validation set the engines run. The only place a Config meets the layers
below."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..core import estimate, lora, methods, packing, topology, train
from ..core.evaluate import EvalSet, TensorEvalSet
from ..core.federation import Federation, MakeBatch
from ..core.precision import cast_frozen, resolve_precision
from ..data import partition, sources, synthetic
from ..data.text import Encoded, TextData, batch_indices, collate, encode, share_at_limit
from . import inputs
from .config import Config, ConfigError
from .health import check_max_length, check_usable, warn
from .model import load_model

CUT_WARN = 0.05  # warn when more of the training examples than this fill data.max_length


def lora_spec(cfg: Config) -> lora.LoRASpec:
    m = cfg.model
    return lora.LoRASpec(r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout,
                         targets=m.target_modules, head=m.head, head_modules=m.head_modules)


def stack_adapters(model: nn.Module, cfg: Config, n: int | None = None) -> nn.Module:
    """Stacked adapters for all clients, or for `n` of them (a distributed peer's slice)."""
    return lora.inject(model, n or cfg.clients.n, lora_spec(cfg), cfg.run.seed)


def load_data(cfg: Config) -> tuple[TextData, TextData]:
    d = cfg.data
    train_set, val = sources.load_source(d.source, d.path or None, d.task or None, d.val_size,
                                         cfg.run.seed)
    if d.val_size and len(val.labels) > d.val_size:  # a fixed subset, the same for every run
        keep = np.sort(np.random.default_rng(0).permutation(len(val.labels))[:d.val_size])
        val = val.subset(keep)
    return train_set, val


def client_parts(cfg: Config, labels: np.ndarray) -> list[np.ndarray]:
    d = cfg.data
    return partition.partition(labels, cfg.clients.n, d.partition, cfg.run.seed, d.alpha,
                               d.examples_per_client or None)


def schedule(cfg: Config) -> topology.Schedule:
    """topology.schedule's pieces, () without one."""
    t = cfg.topology
    return topology.parse_schedule(t.schedule, t.kind) if t.schedule else ()


def mixing(cfg: Config) -> topology.MixingProcess:
    t = cfg.topology
    return topology.mixing_process(t.kind, cfg.clients.n, cfg.run.seed, t.p, t.path or None,
                                   schedule(cfg))


def segment_rhos(cfg: Config) -> tuple[tuple[int, float], ...]:
    """(first round, Monte Carlo rho) of every piece of the topology (one without a schedule)."""
    t = cfg.topology
    return topology.segment_rhos(t.kind, cfg.clients.n, t.p, t.path or None, t.rho_samples,
                                 schedule(cfg))


def policy(cfg: Config) -> tuple[methods.Joint, float | None]:
    """The method's policy and, when it was needed (switch_interval=auto or online), the rho of
    the topology's first piece. auto with a topology.schedule: T per piece, from its rho;
    online: T from the estimate (core/estimate.py), WARMUP_T until its first decision."""
    pol, rhos = _policy(cfg)
    return pol, (rhos[0][1] if rhos else None)


def _policy(cfg: Config) -> tuple[methods.Joint, tuple[tuple[int, float], ...]]:
    """policy, with every piece's (first round, rho) when they were needed (else ())."""
    rhos: list[tuple[int, float]] = []
    si, c = cfg.method.switch_interval, cfg.method.c

    def auto() -> int:
        rhos.extend(segment_rhos(cfg))
        if any(rho >= 1.0 for _, rho in rhos) and si == "auto":
            raise ConfigError("method.switch_interval=auto: this topology never mixes (rho = 1); "
                              "give an integer switch interval or a connected graph")
        return estimate.WARMUP_T if si == "online" else methods.switch_interval(rhos[0][1], c)

    pol = methods.make(cfg.method.name, None if si in ("auto", "online") else int(si), auto)
    if rhos and (si == "online" or len(rhos) > 1):
        pieces = [(0, estimate.WARMUP_T)] if si == "online" else [
            (r, methods.switch_interval(rho, c)) for r, rho in rhos]
        pol = replace(pol, schedule=methods.PhaseSchedule(pieces))
    return pol, tuple(rhos)


def online(cfg: Config, pol: methods.Joint, clients: range) -> estimate.OnlineEstimate | None:
    """The held clients' online estimate when the policy follows one."""
    if cfg.method.switch_interval != "online" or getattr(pol, "schedule", None) is None:
        return None
    return estimate.OnlineEstimate(cfg.clients.n, cfg.run.seed, cfg.method.c, clients,
                                   pol.schedule)


def device(cfg: Config) -> torch.device:
    dev = torch.device(cfg.train.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    check_usable(cfg, dev)
    return dev


def local_spec(cfg: Config, dev: torch.device) -> train.LocalSpec:
    t = cfg.train
    return train.LocalSpec(steps=t.local_steps, lr=t.lr, lr_schedule=t.lr_schedule,
                           rounds=cfg.run.rounds, clip_norm=t.clip_norm,
                           optimizer_state=t.optimizer_state,
                           precision=resolve_precision(t.precision, dev), device=dev,
                           per_forward=t.clients_per_forward)


@dataclass(kw_only=True)
class Experiment:
    """A built run: the federation, the validation set, and what reporting needs."""

    cfg: Config
    fed: Federation
    val: EvalSet | TensorEvalSet
    label_counts: list[list[int]]
    label_names: list[str]
    rho: float | None
    inputs: dict[str, str]  # runs/inputs.py: the files read, by content


def batches(cfg: Config, parts: list[np.ndarray], clients: range, enc: Encoded,
            mine: np.ndarray, pad_id: int):
    """(round, step, slice of `clients`) -> the collated batch: each client's batch of that
    step, drawn with its global id; `enc` holds the train-set rows `mine` (sorted)."""
    t = cfg.train

    def make_batch(rnd: int, k: int, group: slice) -> dict[str, torch.Tensor]:
        step = rnd * t.local_steps + k
        idx = np.concatenate([batch_indices(parts[c], t.batch_size, cfg.run.seed, c, step)
                              for c in clients[group]])
        return collate(enc, np.searchsorted(mine, idx), pad_id)

    return make_batch


@dataclass(kw_only=True)
class Task:
    """What a data source gives the federation: the frozen base model, the batches of the
    clients held, the validation set, and the clients' label counts."""

    model: nn.Module
    make_batch: MakeBatch
    val: EvalSet | TensorEvalSet
    label_counts: list[list[int]]
    label_names: list[str]
    sample: dict[str, torch.Tensor] | None = None  # a few padded examples: packing's check


def text_task(cfg: Config, clients: range) -> Task:
    """A text source: a sequence-classification model, tokenised client shards."""
    train_set, val_set = load_data(cfg)
    parts = client_parts(cfg, train_set.labels)
    model, tok = load_model(cfg, len(train_set.label_names))
    check_max_length(cfg, model)
    mine = np.unique(np.concatenate([parts[c] for c in clients]))  # sorted train-set indices
    enc = encode(train_set.subset(mine), tok, cfg.data.max_length)
    if (cut := share_at_limit(enc, cfg.data.max_length)) > CUT_WARN:
        warn(f"{cut:.0%} of the training examples fill data.max_length={cfg.data.max_length} "
             "tokens, so most of those are cut: raise it if the task needs the rest of the text")
    pad_id = tok.pad_token_id or 0
    val = EvalSet(encode(val_set, tok, cfg.data.max_length), pad_id,
                  max(64, cfg.train.batch_size))
    return Task(model=model, make_batch=batches(cfg, parts, clients, enc, mine, pad_id),
                val=val, label_counts=partition.label_counts(train_set.labels, parts),
                label_names=train_set.label_names, sample=_sample(enc, pad_id))


def _sample(enc: Encoded, pad_id: int, size: int = 6) -> dict[str, torch.Tensor]:
    """The longest and shortest training sequences, padded: packing's check (core/packing)."""
    order = np.argsort([len(ids) for ids in enc.input_ids], kind="stable")
    idx = np.unique(np.concatenate([order[:size // 2], order[-(size - size // 2):]]))
    batch = collate(enc, idx, pad_id)
    batch.pop("labels")
    return batch


def synthetic_task(cfg: Config, clients: range) -> Task:
    """The testbed (data/synthetic.py): client-specific teachers, exact-size samples."""
    spec, n, t = cfg.synthetic, cfg.clients.n, cfg.train
    task = synthetic.make_task(spec, n)
    props = synthetic.class_proportions(cfg.data.partition, n, spec.classes, cfg.run.seed,
                                        cfg.data.alpha)
    data = synthetic.split(task, props, cfg.data.examples_per_client or 256, cfg.run.seed)
    rows = np.arange(data.y.shape[1])

    def make_batch(rnd: int, k: int, group: slice) -> dict[str, torch.Tensor]:
        step = rnd * t.local_steps + k
        picks = [(c, batch_indices(rows, t.batch_size, cfg.run.seed, c, step))
                 for c in clients[group]]
        return {"x": torch.cat([data.x[c, i] for c, i in picks]),
                "labels": torch.cat([data.y[c, i] for c, i in picks])}

    counts = [np.bincount(y, minlength=spec.classes).tolist() for y in data.y.numpy()]
    return Task(model=synthetic.base_model(task), make_batch=make_batch,
                val=TensorEvalSet({"x": data.val_x}, data.val_y, 2048), label_counts=counts,
                label_names=[f"class{c}" for c in range(spec.classes)])


def build(cfg: Config, clients: range | None = None) -> Experiment:
    """`clients`: build only these (a distributed peer's slice): their stacked adapters and
    their training examples, batches drawn with global client ids. Default: every client."""
    clients = clients or range(cfg.clients.n)
    task = (synthetic_task if cfg.data.source == synthetic.NAME else text_task)(cfg, clients)
    dev = device(cfg)
    model = stack_adapters(task.model, cfg, len(clients)).to(dev)
    if task.sample is not None:
        packing.prepare(model, {k: v.to(dev) for k, v in task.sample.items()})
    spec = local_spec(cfg, dev)
    cast_frozen(model, spec.precision)
    pol, rhos = _policy(cfg)  # the Monte Carlo rho of each piece, once
    fed = Federation(model=model, optimizer=train.make_optimizer(model, cfg.train.lr,
                                                                 cfg.train.weight_decay),
                     policy=pol, mixing=mixing(cfg), make_batch=task.make_batch,
                     clients=clients, seed=cfg.run.seed, local=spec,
                     online=online(cfg, pol, clients),
                     rho_segments=rhos if getattr(pol, "schedule", None) else ())
    return Experiment(cfg=cfg, fed=fed, val=task.val, label_counts=task.label_counts,
                      label_names=task.label_names, rho=rhos[0][1] if rhos else None,
                      inputs=inputs.digests(inputs.input_files(cfg)))
