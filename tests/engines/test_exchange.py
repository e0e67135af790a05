"""The wire format and its checks, client slices and the send/recv schedule (no processes)."""

import numpy as np
import pytest
import torch

from tadlora.engines import exchange


def test_client_slices_are_contiguous_and_balanced():
    s = exchange.client_slices(10, 4)
    assert s == [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    with pytest.raises(ValueError, match="at least one client"):
        exchange.client_slices(3, 4)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 8])
def test_schedule_meets_every_pair_once_one_partner_per_stage(world):
    seen = []
    for stage in exchange.schedule(world):
        ranks = [r for pair in stage for r in pair]
        assert len(ranks) == len(set(ranks))
        seen += stage
    assert sorted(seen) == [(a, b) for a in range(world) for b in range(a + 1, world)]


def test_neighbour_rows_follow_w():
    w = np.eye(4)
    w[0, 3] = w[3, 0] = 0.5
    s = exchange.client_slices(4, 2)
    assert exchange.needed_rows(w, s[1], s[0]) == [3]  # client 0 mixes with client 3
    assert exchange.needed_rows(w, s[0], s[1]) == [0]


def test_stamp_checks_shape_dtype_and_refuses_absurd_headers():
    s = exchange.Stamp(3, 1, 2, 10, torch.float32, 3)
    assert exchange.Stamp.parse(s.header(), 1, 100) == s
    assert "wrong width" in exchange.Stamp(3, 1, 2, 11, torch.float32, 3).mismatch(s)
    assert "wrong dtype" in exchange.Stamp(3, 1, 2, 10, torch.float64, 3).mismatch(s)
    with pytest.raises(exchange.ProtocolError, match="more than"):
        exchange.Stamp.parse(s.header(), 1, 19)
    bad = s.header()
    bad[0] = 1.0
    with pytest.raises(exchange.ProtocolError, match="malformed"):
        exchange.Stamp.parse(bad, 1, 100)


def test_pack_unpack_round_trip():
    a, b = torch.randn(3, 2, 5), torch.randn(3, 4)
    rows = exchange.pack([a, b])
    assert rows.shape == (3, 14)
    x, y = exchange.unpack(rows, [a, b])
    assert torch.equal(x, a) and torch.equal(y, b)
