"""Dropout with one random stream per client, fast on CPU.

Every dropout of a forward pass (the base model's hidden and attention dropout, LoRA's dropout)
draws each client's part of its mask from that client's own stream, a numpy Generator seeded by
(run seed, round, local step, client). A client's masks therefore do not depend on which other
clients share its forward pass, so `tadlora run` and `tadlora launch` (any grouping) train the
same models. On CPU the streams also make dropout cheap: torch's CPU bernoulli_ (16.9 ms for
3.4M elements on a 2-core Xeon) was the largest cost of a training step; 16 random bits per
element from numpy's PCG64 (raw 64-bit outputs split in four) cost about a twelfth of it.

A mask element keeps its value when its 16 bits are >= round(p * 65536): the drop probability
is p to within 2**-17, and the kept values are scaled by the exact inverse of the keep rate.
On a GPU each client's stream is a torch Generator on the device instead (the masks are drawn
there). Without streams (no forward group declared, or outside training) dropout is torch's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Streams", "Dropout", "apply", "client_seeds", "dropout", "replace_dropouts",
           "streams", "using"]

BITS = 1 << 16


class _Client:
    """One client's random stream in a forward group: a numpy PCG64 Generator for CPU
    tensors, and (made when first needed) a torch Generator on each other device, all seeded
    by the client's seed."""

    def __init__(self, seed: int) -> None:
        self.seed, self.numpy, self.torch = seed, np.random.default_rng(seed), {}

    def on(self, device: torch.device) -> torch.Generator:
        if device not in self.torch:
            self.torch[device] = torch.Generator(device).manual_seed(self.seed)
        return self.torch[device]


@dataclass
class Streams:
    """The random streams of one forward group, one per client, in group order."""

    clients: list[_Client]

    @classmethod
    def from_seeds(cls, seeds: Sequence[int]) -> Streams:
        return cls([_Client(int(s)) for s in seeds])

    def mask(self, rows: Sequence[int], width: int, p: float) -> np.ndarray:
        """Keep-mask (sum(rows), width): client c's `rows[c]` rows from its own stream, four
        16-bit draws from each 64-bit output of the generator."""
        threshold = round(p * BITS)
        parts = [_bits(c.numpy, n * width) for c, n in zip(self.clients, rows, strict=True)]
        return (np.concatenate(parts) >= threshold).reshape(-1, width)

    def keep(self, rows: Sequence[int], width: int, p: float, device: torch.device
             ) -> tuple[torch.Tensor, float]:
        """The keep-mask on `device` and the scale of the kept values. On CPU from `mask`; on
        another device (a GPU) drawn there by each client's torch Generator, so no mask
        crosses the bus."""
        if device.type == "cpu":
            return (torch.from_numpy(self.mask(rows, width, p).view(np.uint8)),
                    BITS / (BITS - round(p * BITS)))
        return self.device_keep(rows, width, p, device)

    def device_keep(self, rows: Sequence[int], width: int, p: float, device: torch.device
                    ) -> tuple[torch.Tensor, float]:
        """Keep-mask and scale drawn on `device` by each client's torch Generator."""
        parts = [torch.rand((n, width), generator=c.on(device), device=device) >= p
                 for c, n in zip(self.clients, rows, strict=True)]
        return torch.cat(parts), 1.0 / (1.0 - p)

    def client(self, c: int) -> Streams:
        """Client c's stream alone (attention draws per client)."""
        return Streams([self.clients[c]])


def _bits(generator: np.random.Generator, n: int) -> np.ndarray:
    """n uniform 16-bit numbers: the generator's raw 64-bit outputs, each split in four."""
    return generator.bit_generator.random_raw(-(-n // 4)).view(np.uint16)[:n]


_active: ContextVar[tuple[Streams, Sequence[int]] | None] = ContextVar("tadlora_streams",
                                                                        default=None)


def client_seeds(seed: int, t: int, k: int, clients: Sequence[int]) -> list[int]:
    """The dropout seed of each client (global ids) at round t, local step k: a pure function,
    the same in every process and grouping."""
    return [int(np.random.SeedSequence([seed, t, k, c]).generate_state(1, np.uint64)[0] >> 1)
            for c in clients]


@contextmanager
def using(streams: Streams | None, rows: Sequence[int] | None = None) -> Iterator[None]:
    """Dropout in this block draws from `streams`; `rows` is each client's row count in the
    tensors dropout sees by default (its token count for packed batches)."""
    token = _active.set(None if streams is None else (streams, list(rows or [])))
    try:
        yield
    finally:
        _active.reset(token)


def streams() -> Streams | None:
    active = _active.get()
    return None if active is None else active[0]


def _split(n_rows: int, default: Sequence[int], groups: int) -> list[int]:
    """Each client's share of n_rows: the declared rows (tokens), or an equal split (examples,
    padded token blocks)."""
    if sum(default) == n_rows:
        return list(default)
    if n_rows % groups:
        raise ValueError(f"dropout on {n_rows} rows cannot split into {groups} clients")
    return [n_rows // groups] * groups


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout; per-client streams when some are active, else torch's."""
    active = _active.get()
    if not training or p == 0:
        return x
    if active is None:
        return nn.functional.dropout(x, p, True)
    st, declared = active
    n_rows = x.numel() // x.shape[-1]
    return apply(x, st, _split(n_rows, declared, len(st.clients)), p)


def apply(x: torch.Tensor, st: Streams, rows: Sequence[int], p: float) -> torch.Tensor:
    """x with the streams' dropout mask (client c's rows[c] rows from its stream) applied."""
    keep, scale = st.keep(rows, x.shape[-1], p, x.device)
    return (x * keep.view(x.shape)).mul_(scale)


class Dropout(nn.Module):
    """nn.Dropout that draws from the active per-client streams."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def replace_dropouts(model: nn.Module) -> int:
    """Swap every nn.Dropout of `model` for a streams Dropout of the same p; returns how many."""
    found = [(n, m) for n, m in model.named_modules() if type(m) is nn.Dropout]
    for name, m in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, Dropout(m.p))
    return len(found)
