import numpy as np
import pytest
import torch

from tadlora.core import gossip, topology


def stacked(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ({"l": torch.randn(n, 2, 5, generator=g)},  # A (n, r, d_in)
            {"l": torch.randn(n, 3, 2, generator=g)})  # B (n, d_out, r)


def test_mix_is_weighted_average_per_client():
    a, _ = stacked()
    w = topology.metropolis_hastings(topology.ring(4, 0, 0))
    expected = torch.einsum("ij,jrd->ird", torch.as_tensor(w, dtype=torch.float32), a["l"])
    gossip.mix(a, torch.as_tensor(w))
    assert torch.allclose(a["l"], expected)


def test_complete_uniform_mixing_reaches_consensus():
    a, _ = stacked()
    assert gossip.consensus_distance(a) > 0.1
    gossip.mix(a, torch.full((4, 4), 0.25))
    assert gossip.consensus_distance(a) < 1e-6


def test_consensus_distance_value():
    x = {"l": torch.tensor([[1.0, 0.0], [-1.0, 0.0]])}
    assert abs(gossip.consensus_distance(x) - 1.0) < 1e-9  # sqrt((1 + 1) / 2)


def _manual_cross_term(a, b, w, w_a, w_b):
    """The definition, with every product formed: mean_i ||B'_i A'_i - sum_j W_ij B_j A_j||
    / ||sum_j W_ij B_j A_j|| with A' = w_a A, B' = w_b B."""
    a1 = torch.einsum("ij,jrd->ird", w_a.float(), a)
    b1 = torch.einsum("ij,jor->ior", w_b.float(), b)
    ideal = torch.einsum("ij,jod->iod", w.float(), torch.bmm(b, a))
    return ((torch.bmm(b1, a1) - ideal).flatten(1).norm(dim=1)
            / ideal.flatten(1).norm(dim=1)).mean().item()


def test_cross_term_error_zero_when_a_agrees_and_positive_otherwise():
    a, b = stacked()
    w = torch.as_tensor(topology.metropolis_hastings(topology.complete(4, 0, 0)))
    a_same = {"l": a["l"][:1].expand(4, -1, -1).clone()}
    assert gossip.cross_term_error(a_same, b, w, w, w) < 1e-6
    err = gossip.cross_term_error(a, b, w, w, w)
    assert err > 0.1 and abs(err - _manual_cross_term(a["l"], b["l"], w, w, w)) < 1e-6


def test_cross_term_error_of_one_mixed_factor_matches_the_definition():
    a, b = stacked(n=5, seed=1)
    w = torch.as_tensor(topology.metropolis_hastings(topology.erdos_renyi(5, 0, 0, 0.7)))
    eye = torch.eye(5, dtype=w.dtype)
    for w_a, w_b in ((w, eye), (eye, w)):
        err = gossip.cross_term_error(a, b, w, w_a, w_b)
        assert err > 0.05 and abs(err - _manual_cross_term(a["l"], b["l"], w, w_a, w_b)) < 1e-6
    # one factor shared by all clients: mixing the other alone is exact
    a_same = {"l": a["l"][:1].expand(5, -1, -1).clone()}
    assert gossip.cross_term_error(a_same, b, w, eye, w) < 1e-6


def test_cross_term_error_skips_zero_products():
    a, b = stacked()
    zero = {"l": torch.zeros_like(b["l"])}
    eye = torch.eye(4)
    assert gossip.cross_term_error(a, zero, eye, eye, eye) == 0.0


def test_bytes_sent_counts_neighbours_times_slice_bytes():
    a, b = stacked()
    w = topology.metropolis_hastings(topology.ring(4, 0, 0))
    per = (2 * 5 + 3 * 2) * 4
    assert gossip.bytes_sent(w, {"a": a["l"], "b": b["l"]}) == [2 * per] * 4
    assert gossip.bytes_sent(np.eye(4), {"a": a["l"]}) == [0] * 4


def test_cross_term_error_in_client_chunks_equals_all_at_once(monkeypatch):
    a, b = stacked(n=7)
    w = torch.as_tensor(topology.metropolis_hastings(topology.erdos_renyi(7, 0, 0, 0.6)))
    eye = torch.eye(7, dtype=w.dtype)
    whole = gossip.cross_term_error(a, b, w, w, eye)
    monkeypatch.setattr(gossip, "_chunk", lambda *args, **kw: 2)
    assert abs(gossip.cross_term_error(a, b, w, w, eye) - whole) < 1e-6
    assert abs(whole - _manual_cross_term(a["l"], b["l"], w, w, eye)) < 1e-6


def test_product_consensus_is_the_truncated_svd_of_the_mixed_product():
    torch.manual_seed(0)
    n, d_out, d_in, r = 5, 12, 10, 3
    a, b = {"l": torch.randn(n, r, d_in)}, {"l": torch.randn(n, d_out, r)}
    w = torch.rand(n, n, dtype=torch.float64)
    w = w / w.sum(1, keepdim=True)
    new_a, new_b, error = gossip.product_consensus(a, b, w, range(1, 4))
    errors = []
    for k, i in enumerate(range(1, 4)):
        p = sum(w[i, j].float() * b["l"][j] @ a["l"][j] for j in range(n))
        u, s, vh = torch.linalg.svd(p)
        best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
        assert torch.allclose(new_b["l"][k] @ new_a["l"][k], best, atol=1e-4)
        assert torch.allclose(new_a["l"][k] @ new_a["l"][k].T, torch.eye(r), atol=1e-5)
        errors.append(((s[r:] ** 2).sum() / (s ** 2).sum()).sqrt().item())
    assert error == pytest.approx(np.mean(errors), rel=1e-4)


def test_product_consensus_of_zero_products_mixes_the_factors():
    a = {"l": torch.randn(3, 2, 4)}
    b = {"l": torch.zeros(3, 5, 2)}  # B = 0: every product is zero (the first round)
    w = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    new_a, new_b, error = gossip.product_consensus(a, b, w, range(3))
    assert torch.allclose(new_a["l"], a["l"].mean(0).expand(3, -1, -1))
    assert not new_b["l"].any() and error == 0.0


def test_product_consensus_is_exact_when_the_product_has_rank_r():
    a, b = {"l": torch.randn(2, 2, 6)}, {"l": torch.randn(2, 4, 2)}
    new_a, new_b, error = gossip.product_consensus(a, b, torch.eye(2, dtype=torch.float64),
                                                   range(2))
    assert error < 1e-6
    assert torch.allclose(new_b["l"] @ new_a["l"], b["l"] @ a["l"], atol=1e-5)


def test_a_targets_product_consensus_reads_its_neighbours_only():
    """What a p2p peer needs: a target's result is bit-equal whatever the rows of clients it
    gives no weight have (a peer holds zeros there), whichever targets share the call, and
    with its neighbours in any degree group."""
    torch.manual_seed(1)
    n, d, r = 6, 8, 2
    a, b = {"l": torch.randn(n, r, d)}, {"l": torch.randn(n, d, r)}
    w = torch.as_tensor(topology.metropolis_hastings(topology.erdos_renyi(n, 0, 3, 0.4)))
    every = gossip.product_consensus(a, b, w, range(n))
    for i in range(n):
        far = (w[i] == 0).nonzero().flatten()
        a2, b2 = {"l": a["l"].clone()}, {"l": b["l"].clone()}
        a2["l"][far], b2["l"][far] = 0.0, 7.0
        alone = gossip.product_consensus(a2, b2, w, [i])
        assert torch.equal(alone[0]["l"][0], every[0]["l"][i])
        assert torch.equal(alone[1]["l"][0], every[1]["l"][i])
