"""The in-process engine: mixing and what it measures."""

import numpy as np
import pytest
import torch

from tadlora.core import gossip, lora, membership, methods, topology
from tadlora.engines.local import mix_and_measure


def test_logged_cross_term_error_is_the_definition_on_the_factors_gossip_produced(tiny_model):
    """mix_and_measure computes the cross-term error before mixing, from the matrices gossip
    applies to A and to B; it must equal the definition on the factors before and after."""
    lora.inject(tiny_model, 5, lora.LoRASpec(r=4, alpha=8.0, dropout=0.0,
                                             targets=("query", "value")), 0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora.state(tiny_model).values():
            p.copy_(torch.randn(p.shape, generator=g))
    w_graph = topology.metropolis_hastings(topology.erdos_renyi(5, 0, 0, 0.6))
    for name, t in (("lora", 0), ("ffa", 0), ("rolora", 0), ("rolora", 1), ("local", 0)):
        policy = methods.make(name, None, lambda: 1)
        fac = lora.factors(tiny_model)
        before = {k: {n: p.detach().clone() for n, p in fac[k].items()} for k in ("A", "B")}
        logged = mix_and_measure(tiny_model, policy, policy.weights(w_graph), t)[
            "cross_term_error"]
        w = torch.as_tensor(policy.weights(w_graph) if policy.mixed(t) else np.eye(5))
        ideal_errors = []
        for n in before["A"]:
            ideal = torch.einsum("ij,jod->iod", w.float(),
                                 torch.bmm(before["B"][n], before["A"][n]))
            actual = torch.bmm(fac["B"][n].detach(), fac["A"][n].detach())
            ideal_errors.append((actual - ideal).flatten(1).norm(dim=1)
                                / ideal.flatten(1).norm(dim=1))
        expected = torch.cat(ideal_errors).mean().item()
        assert abs(logged - expected) < 1e-5 * max(1.0, expected), (name, t)
        if name == "local":
            assert logged == 0.0 and gossip.consensus_distance(fac["A"]) > 0


def test_diagnostics_leave_a_departed_client_out(tiny_model):
    """With client 2 departed (its factors far from everyone's), consensus and cross-term
    error are those of the federation of the other four: the same numbers as the 4-client
    problem (W restricted to them), for a factor-wise and a product-consensus method."""
    lora.inject(tiny_model, 5, lora.LoRASpec(r=4, alpha=8.0, dropout=0.0,
                                             targets=("query", "value")), 0)
    g = torch.Generator().manual_seed(3)
    w_graph = topology.metropolis_hastings(topology.erdos_renyi(5, 0, 0, 0.8))
    here = [0, 1, 3, 4]
    for name in ("lora", "decaf"):
        with torch.no_grad():
            for p in lora.state(tiny_model).values():
                p.copy_(torch.randn(p.shape, generator=g))
                p[2] *= 100
        policy = methods.make(name, None, lambda: 1)
        w = membership.without(policy.weights(w_graph), frozenset({2}))
        fac = lora.factors(tiny_model)
        sub = {k: {n: p.detach()[here].clone() for n, p in fac[k].items()} for k in "AB"}
        gone_before = {n: p.detach()[2].clone() for n, p in fac["A"].items()}
        rec = mix_and_measure(tiny_model, policy, w, 0, departed=[2])
        w_sub = torch.as_tensor(w[np.ix_(here, here)])
        if name == "lora":
            cross = gossip.cross_term_error(sub["A"], sub["B"], w_sub, w_sub, w_sub)
            gossip.mix({f"{k}/{n}": x for k in "AB" for n, x in sub[k].items()}, w_sub)
        else:
            new_a, new_b, cross = gossip.product_consensus(sub["A"], sub["B"], w_sub,
                                                           range(4))
            sub = {"A": new_a, "B": new_b}
        assert rec["cross_term_error"] == pytest.approx(cross, rel=1e-5), name
        for k in "AB":
            assert rec[f"consensus_{k}"] == pytest.approx(gossip.consensus_distance(sub[k]),
                                                          rel=1e-5), (name, k)
        assert all(torch.equal(fac["A"][n].detach()[2], x) for n, x in gone_before.items())
