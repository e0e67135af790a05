"""Fault-tolerant mixing: clients left out lose their weight, rows are renormalised, and a
peer's mixing of the rows it holds is the in-process mixing bit for bit."""

import numpy as np
import torch

from tadlora.core import gossip, topology
from tadlora.core.membership import applied, renormalised
from tadlora.engines.robust_mixing import mix_held


def test_mixing_leaves_out_bad_rows_and_renormalises():
    w = np.array([[0.5, 0.25, 0.25], [0.25, 0.75, 0.0], [0.25, 0.0, 0.75]])
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [float("nan"), 0.0]])
    out = mix_held(w, range(0, 3), [x], {2: "nan"})[0]
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], (0.5 * x[0] + 0.25 * x[1]) / 0.75)
    assert torch.allclose(out[1], 0.25 * x[0] + 0.75 * x[1])
    assert torch.equal(out[2], x[0])  # the bad client takes its healthy neighbours' average
    assert np.allclose(renormalised(w, {2})[:2].sum(1), 1.0)
    alone = mix_held(np.eye(3), range(2, 3), [x], {2: "nan"})[0]
    assert torch.isnan(alone[0, 0])  # no healthy neighbour: it keeps its own


def test_mixing_held_rows_is_the_simulators_mixing_bit_for_bit():
    """A peer holding only its rows and its neighbours' (zeros elsewhere) computes exactly
    what gossip.mix computes on every client's tensor."""
    w = topology.metropolis_hastings(topology.erdos_renyi(8, 0, 3, 0.3))
    x = torch.randn(8, 4, 16)
    everyone = x.clone()
    gossip.mix({"x": everyone}, torch.as_tensor(w))
    mine = range(2, 4)
    held = np.flatnonzero((w[mine.start:mine.stop] != 0).any(0))
    partial = torch.zeros_like(x)
    partial[held] = x[held]
    assert len(held) < 8
    assert torch.equal(mix_held(w, mine, [partial], {})[0], everyone[2:4])


def test_applied_matrix_keeps_a_client_left_with_no_weight():
    w = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    got = applied(w, {1, 2})  # client 2 hears only from excluded clients
    assert np.allclose(got, [[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    x = torch.arange(6.0).view(3, 2)
    held = mix_held(w, range(3), [x], {1, 2})[0]
    assert torch.allclose(held, torch.as_tensor(got, dtype=x.dtype) @ x)


