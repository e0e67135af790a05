"""Stacked LoRA: one frozen base model, every client's adapter factors stacked on a client axis.

For each adapted linear layer the factors of all n clients live in two tensors
A: (n, r, d_in) and B: (n, d_out, r). A forward pass runs a *group* of clients at once: the
batch holds g equal chunks of examples, chunk k belonging to the k-th selected client, so each
client's gradient lands in its own slice of A.grad / B.grad. The computation per client is
exactly peft's LoRA: base(x) + (alpha / r) * B @ A @ dropout(x). In a packed forward
(core/packing.py) the rows are real tokens, a different number per client: each client's tokens
are gathered, padded to the longest client, for the two batched products.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from . import packing
from .dropout import Dropout
from .precision import autocast_input

Clients = slice | torch.Tensor  # a contiguous client range, or a 1-d index tensor
KINDS = ("A", "B", "head")  # the kinds of per-client tensors a model carries
HEADS = ("frozen", "trained")  # the classifier head: shared and fixed, or per client and trained


@dataclass(frozen=True, kw_only=True)
class LoRASpec:
    """What every client's adapter is: rank, scale alpha / r, dropout, the linear layers that
    get LoRA (by name, as in peft), and the classifier head (its modules, and whether it is
    `frozen` or `trained` per client)."""

    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    head: str = "frozen"
    head_modules: tuple[str, ...] = ("classifier", "score")

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} is not one of {', '.join(HEADS)}")


class _Stacked(nn.Module):
    """Shared plumbing: which clients the next forward runs, and grouping of the batch."""

    clients: Clients

    def _group(self, x: torch.Tensor, g: int) -> torch.Tensor:
        if x.shape[0] % g:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {g} client groups")
        return x.reshape(g, -1, x.shape[-1])  # (g, rows_per_client * ..., d)

    def n_selected(self, n: int) -> int:
        if isinstance(self.clients, slice):
            return len(range(*self.clients.indices(n)))
        return self.clients.numel()


class LoRALinear(_Stacked):
    """A frozen nn.Linear plus the stacked LoRA factors of every client."""

    def __init__(self, base: nn.Linear, n_clients: int, r: int, alpha: float, dropout: float,
                 init_a: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / r
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        dev, dt = base.weight.device, base.weight.dtype
        self.A = nn.Parameter(init_a.to(dev, dt).expand(n_clients, -1, -1).clone())  # (n, r, d_in)
        self.B = nn.Parameter(torch.zeros(n_clients, base.out_features, r, device=dev, dtype=dt))
        self.clients = slice(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = autocast_input(x)  # one cast for the base and the LoRA products (bf16 autocast)
        y = self.base(x)
        a, b = self.A[self.clients], self.B[self.clients]  # (g, r, d_in), (g, d_out, r)
        lay, x = packing.current(), self.dropout(x)
        if lay is not None:
            rows = lay.to_clients(x.reshape(-1, x.shape[-1]))
        else:
            rows = self._group(x, a.shape[0])
        delta = torch.bmm(torch.bmm(rows, a.transpose(1, 2)), b.transpose(1, 2))  # (g, m, d_out)
        if lay is not None:
            delta = lay.from_clients(delta)
        return y + self.scale * delta.reshape(y.shape).to(y.dtype)


class StackedLinear(_Stacked):
    """A linear layer with a full weight per client: the trained classifier head."""

    def __init__(self, base: nn.Linear, n_clients: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(base.weight.detach().expand(n_clients, -1, -1).clone())
        bias = base.bias if base.bias is not None else torch.zeros(base.out_features)
        self.bias = nn.Parameter(bias.detach().expand(n_clients, -1).clone())
        self.clients = slice(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight[self.clients], self.bias[self.clients]  # (g, out, in), (g, out)
        y = torch.baddbmm(b.unsqueeze(1), self._group(x, w.shape[0]), w.transpose(1, 2))
        return y.reshape(*x.shape[:-1], w.shape[1])


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def in_head(name: str, head_modules: tuple[str, ...]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in head_modules)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _init_a(r: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
    """peft's LoRA A initialisation (Kaiming-uniform, a=sqrt(5)), drawn from a seeded generator."""
    a = torch.empty(r, d_in)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    return a


def inject(model: nn.Module, n_clients: int, spec: LoRASpec, seed: int) -> nn.Module:
    """Freeze `model`, wrap every linear layer named in spec.targets with stacked LoRA factors
    (identical seeded A on every client, B = 0) and, for a trained head, every linear layer
    inside the head modules with a per-client full weight. Returns the same model, modified in
    place."""
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = [(n, m) for n, m in linears if _matches(n, list(spec.targets))]
    if not targets:
        raise ValueError(f"model.target_modules={list(spec.targets)} matches no linear layer; "
                         f"linear layers are named like {[n for n, _ in linears[:6]]}")
    for name, lin in targets:
        init_a = _init_a(spec.r, lin.in_features, gen)
        _set_module(model, name, LoRALinear(lin, n_clients, spec.r, spec.alpha, spec.dropout,
                                            init_a))
    if spec.head == "trained":
        for name, lin in linears:
            if in_head(name, spec.head_modules):
                _set_module(model, name, StackedLinear(lin, n_clients))
    return model


def factors(model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """The per-client tensors by kind: {"A": {name: (n, r, d_in)}, "B": {...}, "head": {...}}."""
    out: dict[str, dict[str, nn.Parameter]] = {k: {} for k in KINDS}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out["A"][name] = m.A
            out["B"][name] = m.B
        elif isinstance(m, StackedLinear):
            out["head"][name + ".weight"] = m.weight
            out["head"][name + ".bias"] = m.bias
    return out


@contextmanager
def select(model: nn.Module, clients: Clients) -> Iterator[None]:
    """Run the next forward passes for `clients` (the batch holds one equal chunk per client)."""
    mods = [m for m in model.modules() if isinstance(m, _Stacked)]
    old = [m.clients for m in mods]
    for m in mods:
        m.clients = clients
    try:
        yield
    finally:
        for m, c in zip(mods, old, strict=True):
            m.clients = c


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """All per-client tensors, flat: {"A/<layer>": ..., "B/<layer>": ..., "head/<param>": ...}."""
    return {f"{k}/{n}": p for k, ps in factors(model).items() for n, p in ps.items()}


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors saved by `state` back in, checking names and shapes."""
    own = state(model)
    if set(own) != set(tensors):
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        raise ValueError(f"adapter tensors do not fit this model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]} (was it saved with other target_modules/head?)")
    with torch.no_grad():
        for name, p in own.items():
            if p.shape != tensors[name].shape:
                raise ValueError(f"{name}: saved shape {tuple(tensors[name].shape)} != model "
                                 f"shape {tuple(p.shape)} (other clients.n or lora_r?)")
            p.copy_(tensors[name])
