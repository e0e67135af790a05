"""The objects a round needs, and the steps of a round that both engines share.

A round: set the method's trainable factors, K local steps for every client, draw W(t), mix the
method's factors with it, and measure what the mixing did. The engines (tadlora.engines) do the
mixing, in one process or across peers; the steps before it are here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import dropout, lora, membership, train
from .estimate import OnlineEstimate, replay
from .membership import Departures
from .methods import Joint, phase_name

MakeBatch = Callable[[int, int, slice], dict[str, torch.Tensor]]  # (round, step, clients)


@dataclass(kw_only=True)
class Federation:
    """The clients held by one process (all of them, or a peer's slice): their stacked model,
    one AdamW over their factors, the method's policy, the graph process, their batches."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    policy: Joint
    mixing: Callable[[int], np.ndarray]  # round -> W(t) of the communication graph (n, n)
    make_batch: MakeBatch  # (round, step, slice of the clients held) -> collated batch
    clients: range  # global ids of the clients held
    seed: int
    local: train.LocalSpec
    online: OnlineEstimate | None = None  # switch_interval=online: the held clients' estimate
    rho_segments: tuple[tuple[int, float], ...] = ()  # (first round, Monte Carlo rho): records
    departures: Departures = ()  # clients that left with a lost peer (core/membership.py)

    @property
    def n_clients(self) -> int:
        return len(self.clients)

    def departed(self, t: int) -> frozenset[int]:
        return membership.departed(self.departures, t)

    def weights(self, t: int) -> np.ndarray:
        """The method's mixing weights for round t, without the departed clients."""
        return membership.without(self.policy.weights(self.mixing(t)), self.departed(t))

    def departed_rows(self, t: int) -> list[int]:
        """The departed clients held, as rows of the held clients' tensors."""
        return [c - self.clients.start for c in sorted(self.departed(t)) if c in self.clients]

    def frozen(self, t: int):
        """A context in which round t may run: the departed clients held come out unchanged."""
        return membership.frozen(self.model, self.optimizer, self.departed_rows(t))

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Checkpoint form: every per-client tensor, and the AdamW state as named tensors."""
        state = lora.state(self.model)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        moments = {}
        for name, p in state.items():
            for key, value in self.optimizer.state.get(p, {}).items():
                moments[f"{name}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        return tensors, moments

    def load(self, tensors: dict[str, torch.Tensor], moments: dict[str, torch.Tensor]) -> None:
        """Put checkpoint-form tensors back in place; ValueError when they do not fit."""
        lora.load_state(self.model, tensors)
        params = lora.state(self.model)
        self.optimizer.state.clear()
        for key, value in moments.items():
            name, _, field = key.partition("::")
            if name not in params:
                raise ValueError(f"optimizer state for unknown tensor {name}")
            # AdamW keeps its step count on the CPU (non-capturable mode)
            device = "cpu" if field == "step" else params[name].device
            self.optimizer.state[params[name]][field] = value.to(device)


def trained_kinds(policy: Joint, t: int) -> frozenset[str]:
    """The method's factors, plus the classifier head when the model has a per-client one."""
    return policy.trainable(t) | {"head"}


def mixed_kinds(policy: Joint, t: int) -> frozenset[str]:
    """The method's mixed factors, plus a per-client head whenever the method communicates."""
    mixed = policy.mixed(t)
    return mixed | {"head"} if mixed else mixed


def dropout_seed(seed: int, t: int, first_client: int) -> int:
    """The seed of torch's RNG in round t, for dropout layers outside the clients' streams
    (models that run padded batches: their attention dropout): a pure function of (seed,
    round, the first client of the process); the simulator's when first_client is 0."""
    return seed * 1_000_003 + t + 7_919 * first_client


def prepare_round(fed: Federation, t: int) -> None:
    """Trainable flags, optimizer-state policy, the round's learning rate and dropout seed.
    A resumed run with an online estimate first replays it to round t (core/estimate.replay)."""
    if fed.online is not None:
        replay(fed.online, t, fed.weights, lambda r: sorted(fed.departed(r)))
    params = train.set_trainable(fed.model, trained_kinds(fed.policy, t))
    switched = t > 0 and fed.policy.trainable(t) != fed.policy.trainable(t - 1)
    if train.OPTIMIZER_STATES[fed.local.optimizer_state](switched):
        train.reset_state(fed.optimizer, params)
    train.set_lr(fed.optimizer, fed.local.lr_schedule, fed.local.lr, t, fed.local.rounds)
    torch.manual_seed(dropout_seed(fed.seed, t, fed.clients.start))


def local_training(fed: Federation, t: int) -> np.ndarray:
    """Round t's local steps for the clients held; each client's mean training loss (NaN for
    a departed client: not computed; run inside `fed.frozen(t)`, which undoes the optimizer's
    step on its rows)."""
    def batch(k: int, clients: slice) -> dict[str, torch.Tensor]:
        seeds = dropout.client_seeds(fed.seed, t, k, fed.clients[clients])
        return {**fed.make_batch(t, k, clients), "dropout_seeds": torch.tensor(seeds)}

    gone = fed.departed_rows(t)
    losses = train.local_round(fed.model, fed.optimizer, batch, fed.n_clients, fed.local, gone)
    losses[gone] = np.nan
    return losses


def applied_to_factors(w: torch.Tensor, kinds: frozenset[str]) -> tuple[torch.Tensor, ...]:
    """The matrices gossip applies to A and to B: w for a mixed factor, else the identity."""
    eye = torch.eye(len(w), dtype=w.dtype)
    return tuple(w if k in kinds else eye for k in ("A", "B"))


def round_record(fed: Federation, t: int, losses: np.ndarray) -> dict:
    """The start of round t's metrics record (both engines add the mixing's numbers); `losses`
    of every client, a departed one's loss null (and not in train_loss)."""
    gone = fed.departed(t)
    record = {"round": t, "phase": phase_name(fed.policy, t),
              "switch_interval": fed.policy.interval_at(t),
              "train_loss": float(losses[membership.present(len(losses), gone)].mean()),
              "client_loss": [None if c in gone else x
                              for c, x in enumerate(losses.round(5).tolist())]}
    if gone:
        record["departed"] = sorted(gone)
    if fed.rho_segments:
        record["rho_mc"] = next(rho for r, rho in reversed(fed.rho_segments) if r <= t)
    return record
