"""Rank 0's record of a distributed round, and what the diagnostics cost (real peers)."""

import torch

from tests.engines.peers import elsewhere, merged, records, slices_of_round, tadlora

TRAINING = ("round", "phase", "switch_interval", "train_loss", "client_loss", "eval")


def test_without_diagnostics_nothing_is_gathered_and_training_is_the_same(two_peers, tmp_path):
    """distributed.diagnostics=false in p2p mode (where rank 0 would otherwise be sent every
    client's factors): consensus and cross-term error are null, no diagnostic bytes, and the
    training is bit for bit, every round, the 2-peer all_gather run's with diagnostics, itself
    the simulator's (decaf: the peers re-factorise products of the factors they received, so
    this is also decaf's p2p parity)."""
    argv, with_diag = two_peers
    off_dir = tmp_path / "off"
    rc, _, err = tadlora("launch", "--peers", "2", *elsewhere(argv, tmp_path, "off"),
                         "distributed.mode=p2p", "distributed.diagnostics=false")
    assert rc == 0, err
    off, on = records(off_dir), records(with_diag)
    assert len(off) == len(on) == 4
    for r in off:
        assert (r["consensus_A"], r["consensus_B"], r["cross_term_error"]) == (None, None, None)
        assert r["diagnostic_bytes"] == [0, 0] and r["mode"] == "p2p"
    for r in on:  # the run it is compared with did measure them
        assert None not in (r["consensus_A"], r["consensus_B"], r["cross_term_error"])
    assert [{k: r.get(k) for k in TRAINING} for r in off] == [
        {k: r.get(k) for k in TRAINING} for r in on]
    for t in range(1, 5):
        a, b = slices_of_round(off_dir, t), slices_of_round(with_diag, t)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), t
    a, b = merged(off_dir), merged(with_diag)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
