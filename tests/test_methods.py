import numpy as np
import pytest
import torch

from tadlora import methods
from tadlora.simulate import mixed_kinds, trained_kinds

A, B, AB, NONE = frozenset("A"), frozenset("B"), frozenset("AB"), frozenset()


def schedule(name, rounds=8, fixed=None, auto=3):
    pol = methods.make(name, fixed, lambda: auto)
    return [(pol.trainable(t), pol.mixed(t)) for t in range(rounds)]


def test_lora_trains_and_mixes_both():
    assert schedule("lora") == [(AB, AB)] * 8


def test_ffa_trains_and_mixes_b_only():
    assert schedule("ffa") == [(B, B)] * 8


def test_rolora_alternates_every_round_and_mixes_the_active_factor():
    assert schedule("rolora", 4) == [(B, B), (A, A), (B, B), (A, A)]


def test_adf_switches_every_5_rounds_mixing_both():
    s = schedule("adf", 12)
    assert [t for t, _ in s] == [B] * 5 + [A] * 5 + [B] * 2
    assert all(m == AB for _, m in s)


def test_tad_fixed_and_auto_interval():
    fixed = schedule("tad", 6, fixed=2)
    assert [t for t, _ in fixed] == [B, B, A, A, B, B] and all(m == AB for _, m in fixed)
    auto = schedule("tad", 7, auto=3)
    assert [t for t, _ in auto] == [B, B, B, A, A, A, B]
    assert methods.make("tad", None, lambda: 4).interval == 4


def test_auto_is_only_computed_when_needed():
    def boom():
        raise AssertionError("rho should not be computed")
    for name in ["lora", "ffa", "rolora", "local", "fedavg"]:
        methods.make(name, None, boom)
    methods.make("tad", 2, boom)
    assert methods.make("adf", None, boom).interval == 5


def test_local_mixes_nothing_and_fedavg_uses_uniform_weights():
    assert schedule("local", 3) == [(AB, NONE)] * 3
    w = np.eye(4)
    assert np.allclose(methods.make("fedavg", None, lambda: 1).weights(w), np.full((4, 4), 0.25))
    assert methods.make("lora", None, lambda: 1).weights(w) is w


def test_head_is_trained_always_and_mixed_when_the_method_communicates():
    tad = methods.make("tad", 1, lambda: 1)
    assert trained_kinds(tad, 1) == {"A", "head"} and mixed_kinds(tad, 1) == {"A", "B", "head"}
    local = methods.make("local", None, lambda: 1)
    assert mixed_kinds(local, 0) == NONE


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="valid: lora, local, fedavg, ffa, rolora, adf, tad"):
        methods.make("dora", None, lambda: 1)


def test_logged_cross_term_error_is_the_definition_on_the_factors_gossip_produced(tiny_model):
    """mix_and_measure computes the cross-term error before mixing, from the matrices gossip
    applies to A and to B; it must equal the definition on the factors before and after."""
    from tadlora import gossip, lora, simulate, topology

    lora.inject(tiny_model, 5, ["query", "value"], 4, 8.0, 0.0, 0, ["classifier"], False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora.state(tiny_model).values():
            p.copy_(torch.randn(p.shape, generator=g))
    w_graph = topology.metropolis_hastings(topology.erdos_renyi(5, 0, 0, 0.6))
    for name, t in (("lora", 0), ("ffa", 0), ("rolora", 0), ("rolora", 1), ("local", 0)):
        policy = methods.make(name, None, lambda: 1)
        fac = lora.factors(tiny_model)
        before = {k: {n: p.detach().clone() for n, p in fac[k].items()} for k in ("A", "B")}
        logged = simulate.mix_and_measure(tiny_model, policy, w_graph, t)["cross_term_error"]
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
