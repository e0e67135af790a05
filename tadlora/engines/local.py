"""The in-process engine: all clients in one process, one round at a time, mixed by one einsum
per stacked tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core import estimate, evaluate, gossip, lora, membership
from ..core.estimate import OnlineEstimate
from ..core.evaluate import EvalSet
from ..core.federation import (
    Federation,
    applied_to_factors,
    local_training,
    mixed_kinds,
    prepare_round,
    round_record,
)
from ..core.methods import Joint
from .base import State


def mix_and_measure(model: nn.Module, policy: Joint, weights: np.ndarray, t: int,
                    online: OnlineEstimate | None = None, departed: list[int] | None = None
                    ) -> dict:
    """Mix the round's factors with the method's weights (`Federation.weights`: the method's
    W(t), without departed clients); consensus and cross-term error over the clients not
    `departed`, bytes; with an online estimate, its values ride along (bytes counted; the
    departed propose no T) and its record is added."""
    present = membership.present(len(weights), frozenset(departed)) if departed else None
    fac = lora.factors(model)
    kinds = mixed_kinds(policy, t)
    tensors = {f"{k}/{n}": p for k in kinds for n, p in fac[k].items()}
    w = torch.as_tensor(weights if tensors else np.eye(len(weights)))
    linear = tensors  # what is mixed as it is: everything, or for product consensus the head
    if policy.mixes_products:
        cross = mix_products(fac, w, present or range(len(w)))
        linear = {k: v for k, v in tensors.items() if k.startswith("head/")}
    else:
        cross = gossip.cross_term_error(fac["A"], fac["B"], w, *applied_to_factors(w, kinds),
                                        clients=present)
    gossip.mix(linear, w)
    record = {
        "consensus_A": gossip.consensus_distance(_rows(fac["A"], present)),
        "consensus_B": gossip.consensus_distance(_rows(fac["B"], present)),
        "cross_term_error": cross,
        "bytes_sent": gossip.bytes_sent(w.numpy(), tensors),
    }
    if online is not None:  # bytes_sent includes online_bytes
        record.update(online_step(online, t, w.numpy(), departed))
        record["bytes_sent"] = [a + b for a, b in zip(record["bytes_sent"],
                                                      record["online_bytes"], strict=True)]
    return record


def online_step(online: OnlineEstimate, t: int, w: np.ndarray,
                departed: list[int] | None = None) -> dict:
    """The estimate's round: its values mixed with the factors' W, the proposals of a
    decision round (none from the `departed`) shared with every client; its record and the
    bytes it sent."""
    every = online.payload()
    sent = gossip.bytes_sent(w, {"online": torch.from_numpy(every)})
    if estimate.online_round(online, t, w, every, lambda proposals: proposals, departed):
        sent = [b + estimate.decision_bytes(len(w)) for b in sent]
    return {**estimate.summary(online.estimates()), "online_bytes": sent}


def _rows(tensors: dict[str, torch.Tensor], clients: list[int] | None) -> dict:
    return tensors if clients is None else {k: x[clients] for k, x in tensors.items()}


def mix_products(fac: dict, w: torch.Tensor, targets: Sequence[int]) -> float:
    """A and B of the `targets` replaced by their product consensus; its truncation error."""
    new_a, new_b, error = gossip.product_consensus(fac["A"], fac["B"], w, targets)
    rows = list(targets)
    with torch.no_grad():
        for name in fac["A"]:
            fac["A"][name][rows] = new_a[name]
            fac["B"][name][rows] = new_b[name]
    return error


def run_round(fed: Federation, t: int) -> dict:
    """One round of decentralized training; returns its metrics record."""
    prepare_round(fed, t)
    with fed.frozen(t):
        record = round_record(fed, t, local_training(fed, t))
        record.update(mix_and_measure(fed.model, fed.policy, fed.weights(t), t, fed.online,
                                      fed.departed_rows(t)))
    return record


def evaluation(fed: Federation, val: EvalSet, t: int) -> dict:
    """Every client's own model on the validation set, and the averaged adapter (of the
    clients present in round t)."""
    spec = fed.local
    acc, loss = evaluate.scores(fed.model, val, fed.n_clients, spec.precision, spec.device,
                                spec.per_forward)
    gone = fed.departed(t)
    with evaluate.averaged(fed.model, present=membership.present(fed.n_clients, gone)):
        avg = evaluate.accuracies(fed.model, val, 1, spec.precision, spec.device)
    return evaluate.report(acc, avg[0], loss, gone)


@dataclass
class LocalEngine:
    """Every client in this process (see base.Engine)."""

    fed: Federation
    val: EvalSet
    rank: int = 0
    world: int = 1

    def round(self, t: int) -> dict:
        return run_round(self.fed, t)

    def evaluate(self, t: int) -> dict:
        return evaluation(self.fed, self.val, t)

    def gather_state(self, rnd: int) -> State:
        return self.fed.state()

    def agree(self, value: int) -> int:
        return value

    def barrier(self, tag: str) -> None:
        pass
