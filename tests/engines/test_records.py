"""Rank 0's record of a distributed round, and what the diagnostics cost (real peers)."""

import torch

from tests.engines.peers import elsewhere, merged, records, tadlora

TRAINING = ("round", "phase", "switch_interval", "train_loss", "client_loss", "eval")


def test_without_diagnostics_nothing_is_gathered_and_training_is_the_same(two_peers, tmp_path):
    """distributed.diagnostics=false (p2p, where rank 0 would otherwise be sent every
    client's factors): consensus and cross-term error are null, no diagnostic bytes, and the
    training is bit for bit the 2-peer all_gather run's with diagnostics."""
    argv, with_diag = two_peers
    rc, _, err = tadlora("launch", "--peers", "2", *elsewhere(argv, tmp_path, "off"),
                         "distributed.mode=p2p", "distributed.diagnostics=false")
    assert rc == 0, err
    off, on = records(tmp_path / "off"), records(with_diag)
    assert len(off) == len(on) == 4
    for r in off:
        assert (r["consensus_A"], r["consensus_B"], r["cross_term_error"]) == (None, None, None)
        assert r["diagnostic_bytes"] == [0, 0] and r["mode"] == "p2p"
    for r in on:  # the run it is compared with did measure them
        assert None not in (r["consensus_A"], r["consensus_B"], r["cross_term_error"])
    assert [{k: r.get(k) for k in TRAINING} for r in off] == [
        {k: r.get(k) for k in TRAINING} for r in on]
    a, b = merged(tmp_path / "off"), merged(with_diag)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
