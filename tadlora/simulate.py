"""The in-process engine: all clients in one process, one round at a time.

A round: set the method's trainable factors, K local steps for every client, draw W(t), mix the
method's factors with it, and measure what the mixing did. The distributed engine produces the
same record from the same objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import gossip, lora, train
from .methods import Joint, phase_name

MakeBatch = Callable[[int, int, slice], dict[str, torch.Tensor]]  # (round, step, clients)


@dataclass
class Federation:
    """Everything a round needs, as plain objects (runner.py builds it from a Config)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    policy: Joint
    mixing: Callable[[int], np.ndarray]  # round -> W(t) of the communication graph
    make_batch: MakeBatch
    n_clients: int
    seed: int
    steps: int
    clip_norm: float = 1.0
    precision: str = "fp32"
    device: torch.device = torch.device("cpu")
    per_forward: int = 0
    optimizer_state: str = "keep"  # keep | reset_phase | reset_round
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (over `rounds`)
    rounds: int = 1


def trained_kinds(policy: Joint, t: int) -> frozenset[str]:
    """The method's factors, plus the classifier head when the model has a per-client one."""
    return policy.trainable(t) | {"head"}


def mixed_kinds(policy: Joint, t: int) -> frozenset[str]:
    """The method's mixed factors, plus a per-client head whenever the method communicates."""
    mixed = policy.mixed(t)
    return mixed | {"head"} if mixed else mixed


def prepare_round(fed: Federation, t: int) -> None:
    """Trainable flags, optimizer-state policy, the round's learning rate and dropout seed."""
    params = train.set_trainable(fed.model, trained_kinds(fed.policy, t))
    switched = t > 0 and fed.policy.trainable(t) != fed.policy.trainable(t - 1)
    if fed.optimizer_state == "reset_round" or (fed.optimizer_state == "reset_phase" and switched):
        train.reset_state(fed.optimizer, params)
    train.set_lr(fed.optimizer, fed.lr_schedule, fed.lr, t, fed.rounds)
    torch.manual_seed(fed.seed * 1_000_003 + t)  # dropout: a pure function of (seed, round)


def local_training(fed: Federation, t: int) -> np.ndarray:
    def batch(k: int, clients: slice) -> dict[str, torch.Tensor]:
        return fed.make_batch(t, k, clients)

    return train.local_round(fed.model, fed.optimizer, batch, fed.n_clients, fed.steps,
                             fed.clip_norm, fed.precision, fed.device, fed.per_forward)


def mix_and_measure(model: nn.Module, policy: Joint, w_graph: np.ndarray, t: int) -> dict:
    """Mix the round's factors with the method's weights; consensus, cross-term error, bytes."""
    fac = lora.factors(model)
    kinds = mixed_kinds(policy, t)
    tensors = {f"{k}/{n}": p for k in kinds for n, p in fac[k].items()}
    w = torch.as_tensor(policy.weights(w_graph) if tensors else np.eye(len(w_graph)))
    cross = gossip.cross_term_error(fac["A"], fac["B"], w, *applied_to_factors(w, kinds))
    gossip.mix(tensors, w)
    return {
        "consensus_A": gossip.consensus_distance(fac["A"]),
        "consensus_B": gossip.consensus_distance(fac["B"]),
        "cross_term_error": cross,
        "bytes_sent": gossip.bytes_sent(w.numpy(), tensors),
    }


def applied_to_factors(w: torch.Tensor, kinds: frozenset[str]) -> tuple[torch.Tensor, ...]:
    """The matrices gossip applies to A and to B: w for a mixed factor, else the identity."""
    eye = torch.eye(len(w), dtype=w.dtype)
    return tuple(w if k in kinds else eye for k in ("A", "B"))


def run_round(fed: Federation, t: int) -> dict:
    """One round of decentralized training; returns its metrics record."""
    prepare_round(fed, t)
    losses = local_training(fed, t)
    record = {"round": t, "phase": phase_name(fed.policy, t),
              "switch_interval": fed.policy.interval,
              "train_loss": float(losses.mean()), "client_loss": losses.round(5).tolist()}
    record.update(mix_and_measure(fed.model, fed.policy, fed.mixing(t), t))
    return record
