"""The interface the one round loop (tadlora.runs.loop) drives; both engines implement it."""

from __future__ import annotations

from typing import Protocol

import torch

from ..core.federation import Federation

State = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # (tensors, AdamW moments)


class Engine(Protocol):
    """Runs rounds for the clients of `fed` (every client, or one peer's slice).

    rank, world: this process among the engine's processes (0 and 1 in one process); rank 0
    writes the run directory. round and evaluate return the records on rank 0 and None
    elsewhere. gather_state, agree and barrier are collective: every process calls them."""

    fed: Federation
    rank: int
    world: int

    def round(self, t: int) -> dict | None:
        """Train round t and mix; the round's metrics record."""

    def evaluate(self, t: int) -> dict | None:
        """Every client's own model, and the averaged adapter, on the validation set."""

    def gather_state(self, rnd: int) -> State | None:
        """Every client's checkpoint-form state, on rank 0 (None elsewhere)."""

    def agree(self, value: int) -> int:
        """The minimum of `value` over the processes."""

    def barrier(self, tag: str) -> None:
        """Wait until every process has reached `tag`."""
