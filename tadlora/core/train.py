"""The one local training loop: K AdamW steps for every client on the method's trainable factors.

All clients' factors are stacked, so one AdamW over the stacked tensors is n independent AdamWs
(it is elementwise). What must stay per client is done per slice: the loss (a sum of per-client
means, so no client's gradient is scaled by the group size) and gradient clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import lora, packing
from .precision import autocast

# (step, clients) -> collated batch; it may carry "dropout_seeds", one per client (its stream)
BatchFn = Callable[[int, slice], dict[str, torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class LocalSpec:
    """How every client trains in a round: `steps` AdamW steps at the round's learning rate
    (`lr` under `lr_schedule` over `rounds`), a per-client gradient clip (0 = off), what happens
    to the AdamW moments between rounds, precision, device, and how many clients share a
    forward pass (0 = all)."""

    steps: int
    lr: float
    lr_schedule: str = "constant"
    rounds: int = 1
    clip_norm: float = 1.0
    optimizer_state: str = "keep"
    precision: str = "fp32"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    per_forward: int = 0


def set_trainable(model: nn.Module, kinds: Iterable[str]) -> list[nn.Parameter]:
    """Make exactly the per-client tensors of `kinds` trainable; returns them."""
    kinds = set(kinds)
    active = []
    for kind, params in lora.factors(model).items():
        for p in params.values():
            p.requires_grad_(kind in kinds)
            if kind in kinds:
                active.append(p)
    return active


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """One AdamW over every per-client tensor (torch's fused kernel: one pass over each tensor
    instead of a dozen). A frozen factor has grad None and is skipped, so neither its moments
    nor its weight decay move while it is frozen."""
    params = [p for ps in lora.factors(model).values() for p in ps.values()]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def reset_state(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> None:
    """Forget the AdamW moments (and step count) of `params`."""
    for p in params:
        optimizer.state.pop(p, None)


def clip_per_client(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale each client's gradient slice to norm <= max_norm; returns the norms before, (n,)."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = sum(g.detach().float().flatten(1).pow(2).sum(1) for g in grads)  # (n,)
    norms = sq.sqrt()
    if max_norm > 0:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": lambda lr, t, rounds: lr,
    # cosine decay over the rounds: local drift vanishes towards the end, so the clients'
    # models (each evaluated on its own) settle near the consensus of the gossip
    "cosine": lambda lr, t, rounds: lr * 0.5 * (1.0 + math.cos(math.pi * t / rounds)),
}


# train.optimizer_state -> whether a round forgets the AdamW moments, given whether the
# trained factor switched at its start
OPTIMIZER_STATES: dict[str, Callable[[bool], bool]] = {
    "reset_round": lambda switched: True,
    "reset_phase": lambda switched: switched,
    "keep": lambda switched: False,
}


def set_lr(optimizer: torch.optim.Optimizer, schedule: str, lr: float, t: int,
           rounds: int) -> float:
    """The learning rate of round t under `schedule` (constant | cosine), applied."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    value = SCHEDULES[schedule](lr, t, rounds)
    for group in optimizer.param_groups:
        group["lr"] = value
    return value


def groups(n: int, per_forward: int, skip: Collection[int] = ()) -> list[slice]:
    """Client slices that go through the model together (per_forward 0 = as many as run
    side by side), leaving out the rows `skip`."""
    out, start = [], 0
    for stop in [*sorted(set(skip)), n]:
        size = per_forward or max(1, stop - start)
        out += [slice(i, min(i + size, stop)) for i in range(start, stop, size)]
        start = stop + 1
    return out


def _group_loss(model: nn.Module, batch: dict[str, torch.Tensor], g: int) -> torch.Tensor:
    """Per-client mean cross-entropy of a batch holding g equal client chunks, shape (g,)."""
    labels = batch.pop("labels")
    seeds = batch.pop("dropout_seeds", None)
    seeds = None if seeds is None else seeds.tolist()
    logits = packing.logits(model, batch, g, seeds).float()
    loss = nn.functional.cross_entropy(logits, labels, reduction="none")
    return loss.view(g, -1).mean(1)


def local_round(model: nn.Module, optimizer: torch.optim.Optimizer, make_batch: BatchFn,
                n_clients: int, spec: LocalSpec, skip: Collection[int] = ()) -> np.ndarray:
    """spec.steps optimizer steps for all clients; returns each client's mean training loss.
    The rows `skip` (departed clients) are not computed: their gradients stay zero and their
    loss 0, and the optimizer still moves them (the caller puts them back)."""
    model.train()
    params = [p for ps in lora.factors(model).values() for p in ps.values() if p.requires_grad]
    losses, chunks = torch.zeros(n_clients), groups(n_clients, spec.per_forward, skip)
    for k in range(spec.steps if chunks else 0):
        optimizer.zero_grad(set_to_none=True)
        for group in chunks:
            batch = {key: v.to(spec.device) for key, v in make_batch(k, group).items()}
            with lora.select(model, group), autocast(spec.device, spec.precision):
                loss = _group_loss(model, batch, group.stop - group.start)
            loss.sum().backward()
            losses[group] += loss.detach().cpu()
        clip_per_client(params, spec.clip_norm)
        optimizer.step()
    return (losses / spec.steps).numpy()
