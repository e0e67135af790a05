"""The steps of a round that both engines share: trainable and mixed kinds, the dropout seed,
and the optimizer-state policies through real rounds (prepare_round + local_training)."""

import numpy as np
import pytest
import torch

from tadlora.core import lora, methods, train
from tadlora.core.federation import (
    Federation,
    dropout_seed,
    local_training,
    mixed_kinds,
    prepare_round,
    trained_kinds,
)
from tests.core.test_train import batch_fn, no_dropout_model

NONE = frozenset()


def test_head_is_trained_always_and_mixed_when_the_method_communicates():
    tad = methods.make("tad", 1, lambda: 1)
    assert trained_kinds(tad, 1) == {"A", "head"} and mixed_kinds(tad, 1) == {"A", "B", "head"}
    local = methods.make("local", None, lambda: 1)
    assert mixed_kinds(local, 0) == NONE


def test_one_peer_draws_the_simulators_dropout():
    assert dropout_seed(7, 3, 0) == 7 * 1_000_003 + 3  # the in-process engine's seed
    assert dropout_seed(7, 3, 4) != dropout_seed(7, 3, 0)  # a peer starting at client 4


def federation(optimizer_state: str, steps: int = 2) -> Federation:
    """3 clients of tad with T = 2 (phases B B A A B ...), no head, no mixing."""
    model = no_dropout_model(train_head=False)
    make = batch_fn()
    return Federation(model=model, optimizer=train.make_optimizer(model, 1e-2, 0.01),
                      policy=methods.make("tad", 2, lambda: 1), mixing=lambda t: np.eye(3),
                      make_batch=lambda t, k, clients: make(t * steps + k, clients),
                      clients=range(3), seed=0,
                      local=train.LocalSpec(steps=steps, lr=1e-2, rounds=5,
                                            optimizer_state=optimizer_state))


def steps_taken(fed: Federation, kind: str) -> int | None:
    """AdamW's step count of the `kind` factors (the same for every layer), None if none."""
    counts = {int(fed.optimizer.state[p]["step"]) if p in fed.optimizer.state else None
              for p in lora.factors(fed.model)[kind].values()}
    assert len(counts) == 1
    return counts.pop()


@pytest.mark.parametrize("policy, steps_b, steps_a", [
    # 2 AdamW steps a round; phases B B A A B. None: the factor has no moments yet.
    ("reset_round", [2, 2, 2, 2, 2], [None, None, 2, 2, 2]),  # forgotten every round
    ("reset_phase", [2, 4, 4, 4, 2], [None, None, 2, 4, 4]),  # when the trained factor switches
    ("keep", [2, 4, 4, 4, 6], [None, None, 2, 4, 4]),  # never
])
def test_optimizer_state_policies_through_real_rounds(policy, steps_b, steps_a):
    fed = federation(policy)
    got_b, got_a, frozen_moments = [], [], []
    for t in range(5):
        prepare_round(fed, t)
        losses = local_training(fed, t)
        assert losses.shape == (3,) and np.isfinite(losses).all()
        got_b.append(steps_taken(fed, "B"))
        got_a.append(steps_taken(fed, "A"))
        if t >= 2:  # A's moments after rounds 2, 3 (trained) and 4 (frozen)
            frozen_moments.append({k: fed.optimizer.state[p]["exp_avg"].clone()
                                   for k, p in lora.factors(fed.model)["A"].items()})
    assert (got_b, got_a) == (steps_b, steps_a)
    # a frozen factor's moments are neither updated nor decayed (round 4 trains B only)
    assert all(torch.equal(frozen_moments[2][k], v) for k, v in frozen_moments[1].items())
    assert not all(torch.equal(frozen_moments[0][k], v) for k, v in frozen_moments[1].items())
