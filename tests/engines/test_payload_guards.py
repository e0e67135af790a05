"""Poisoned and unauthenticated payloads, through real exchanges: three gloo processes on
127.0.0.1 (no model), each running all_gather, p2p and gather-to-rank-0 on known rows. Rank 2
is the bad peer: its rows are finite but 1e4 times too large, or it does not know the secret.
And one `tadlora launch` run with a secret and a poisoned round."""

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tadlora.engines import auth, exchange
from tadlora.engines.exchange import Stamp
from tadlora.engines.robust_mixing import MAX_NORM_RATIO, mix_held, outliers
from tadlora.runs import config
from tests.engines.peers import args, records, slices_of_round, tadlora

WORLD, N, WIDTH = 3, 6, 5
SLICES = exchange.client_slices(N, WORLD)
OWNERS = [k for k, s in enumerate(SLICES) for _ in s]
W = np.full((N, N), 1.0 / N)  # the complete graph's Metropolis-Hastings weights
GOOD, BAD = b"the shared secret", b"a guess"


def rows():
    return torch.randn(N, WIDTH, generator=torch.Generator().manual_seed(0))


def exchange_and_mix(fn, rank, own, key=None):
    """One exchange of `own` (this rank's rows), the norm screening, the mixing of own rows."""
    stamp = Stamp(7, rank, len(SLICES[rank]), WIDTH, own.dtype, 3)
    got = fn(SLICES, rank, own, own, stamp, W, 10_000, key)
    got.excluded.update(outliers(got.rows, got.clients, SLICES[rank], OWNERS, MAX_NORM_RATIO,
                                 got.excluded))
    every = torch.zeros(N, WIDTH)
    every[got.clients] = got.rows
    return {"mixed": mix_held(W, SLICES[rank], [every], got.excluded)[0],
            "excluded": got.excluded, "sent": got.sent}


def worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    honest = rows()[SLICES[rank].start:SLICES[rank].stop]
    poisoned = honest * 1e4 if rank == 2 else honest
    key = BAD if rank == 2 else GOOD
    res = {}
    for mode, fn in (("all_gather", exchange.all_gather_rows), ("p2p", exchange.p2p_rows)):
        res[f"poison/{mode}"] = exchange_and_mix(fn, rank, poisoned)
        res[f"plain/{mode}"] = exchange_and_mix(fn, rank, honest)
        res[f"keyed/{mode}"] = exchange_and_mix(fn, rank, honest, GOOD)
        res[f"auth/{mode}"] = exchange_and_mix(fn, rank, honest, key)
    stamp = Stamp(7, rank, len(SLICES[rank]), WIDTH, honest.dtype, 0)
    res["gather"] = exchange.gather_to_first([2, 2, 2], rank, honest, stamp, 10_000, key)
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("guards")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, out), nprocs=WORLD, start_method="spawn")
    return [torch.load(out / f"rank{k}.pt", weights_only=False) for k in range(WORLD)]


@pytest.mark.parametrize("mode", ["all_gather", "p2p"])
def test_a_poisoned_peer_cannot_move_its_neighbours(results, mode):
    """Rank 2's rows, finite but 1e4 x too large, are left out by ranks 0 and 1: their mixed
    rows are exactly those of a round in which rank 2's clients were left out, and far from
    what an unguarded mixing gives."""
    x = rows()
    poisoned = x.clone()
    poisoned[4:] *= 1e4
    for rank in (0, 1):
        got = results[rank][f"poison/{mode}"]
        assert set(got["excluded"]) == {4, 5}
        assert "from rank 2 is more than 10 x the median norm" in got["excluded"][4]
        without = mix_held(W, SLICES[rank], [x], {4: "", 5: ""})[0]
        assert torch.equal(got["mixed"], without)
        unguarded = mix_held(W, SLICES[rank], [poisoned], {})[0]
        assert (unguarded - without).abs().max() > 100
        assert not results[rank][f"plain/{mode}"]["excluded"]  # honest rows pass the bound


def test_the_norm_bound_judges_received_rows_against_own_rows():
    x = torch.ones(4, 3)
    x[3] *= 11  # client 3 (rank 1) is more than 10 x the median of rank 0's rows
    assert set(outliers(x, [0, 1, 2, 3], range(0, 2), [0, 0, 1, 1], 10.0, {})) == {3}
    assert not outliers(x, [0, 1, 2, 3], range(0, 2), [0, 0, 1, 1], 12.0, {})
    assert not outliers(x, [0, 1, 2, 3], range(0, 2), [0, 0, 1, 1], 0.0, {})  # off
    assert not outliers(x, [0, 1, 2, 3], range(2, 4), [0, 0, 1, 1], 10.0, {})  # own: kept
    zero = torch.zeros(4, 3)
    zero[2] = 1.0  # own rows all zero: the median of every row held (0) is the reference
    assert set(outliers(zero, [0, 1, 2, 3], range(0, 2), [0, 0, 1, 1], 10.0, {})) == {2}


@pytest.mark.parametrize("mode", ["all_gather", "p2p"])
def test_payloads_without_the_secret_are_left_out(results, mode):
    for rank in (0, 1):
        got = results[rank][f"auth/{mode}"]
        assert set(got["excluded"]) == {4, 5}
        assert auth.UNAUTHENTIC in got["excluded"][4]
        x = rows()
        assert torch.equal(got["mixed"], mix_held(W, SLICES[rank], [x], {4: "", 5: ""})[0])
        keyed, plain = results[rank][f"keyed/{mode}"], results[rank][f"plain/{mode}"]
        assert not keyed["excluded"] and torch.equal(keyed["mixed"], plain["mixed"])
        messages = 2 if mode == "all_gather" else sum(1 for s in exchange.schedule(WORLD)
                                                      for p in s if rank in p)
        assert keyed["sent"] == plain["sent"] + auth.TAG_BYTES * messages  # the tags' bytes
    assert set(results[2][f"auth/{mode}"]["excluded"]) == {0, 1, 2, 3}  # and vice versa
    _, bad = results[0]["gather"]
    assert set(bad) == {2} and auth.UNAUTHENTIC in bad[2]  # reports to rank 0 too


def test_a_tag_binds_the_bytes_and_the_round():
    header = Stamp(3, 1, 2, 4, torch.float32, 3, 1).header()
    payload = torch.arange(8, dtype=torch.float32)
    tag = auth.tag(GOOD, header, payload)
    assert tag.dtype == torch.uint8 and tag.numel() == auth.TAG_BYTES
    assert auth.verify(GOOD, header, payload, tag)
    flipped = payload.clone()
    flipped[5] = 5.0000005
    assert not auth.verify(GOOD, header, flipped, tag)
    replayed = Stamp(4, 1, 2, 4, torch.float32, 3, 1).header()
    assert not auth.verify(GOOD, replayed, payload, tag)
    assert not auth.verify(BAD, header, payload, tag)
    assert auth.unverified(None, header, 0, payload, None) is None  # no secret: not checked
    assert auth.unverified(GOOD, header, 0, payload, None) == auth.UNAUTHENTIC  # no tag


def test_secret_file_and_norm_ratio_are_checked_at_load(tmp_path):
    for path, why in ((tmp_path / "missing", "does not exist"), (tmp_path, "cannot be read"),
                      (tmp_path / "empty", "is empty")):
        (tmp_path / "empty").write_text(" \n")
        with pytest.raises(config.ConfigError, match=f"distributed.secret_file=.*{why}"):
            config.load(None, [f"distributed.secret_file={path}"])
    (tmp_path / "s").write_text("abc\n")
    cfg = config.load(None, [f"distributed.secret_file={tmp_path / 's'}"])
    assert auth.secret(cfg.distributed.secret_file) == b"abc"
    assert config.load(None, []).distributed.max_norm_ratio == 10.0
    for bad in ("0.5", "1", "-2"):
        with pytest.raises(config.ConfigError, match="distributed.max_norm_ratio"):
            config.load(None, [f"distributed.max_norm_ratio={bad}"])
    assert config.load(None, ["distributed.max_norm_ratio=0"]).distributed.max_norm_ratio == 0


def test_a_run_with_a_secret_leaves_out_a_poisoned_round(nodrop_model_dir, tmp_path):
    """`tadlora launch` with distributed.secret_file: every payload is tagged and verifies (no
    exclusion, 32 bytes more per payload); rank 1's payload of round 1, 1e6 x too large, is
    left out by rank 0 with a warning and a record, and rank 0's clients stay where honest
    mixing puts them."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    argv = args(nodrop_model_dir, tmp_path, "p", "method.name=lora", "run.rounds=3",
                f"distributed.secret_file={secret}", "distributed.keep_slices=true")
    rc, _, err = tadlora("launch", "--peers", "2", *argv, env={"TADLORA_FAULT": "big:1:1"})
    assert rc == 0, err
    assert "round 1: client 4 left out of the mixing: norm" in err
    rows = records(tmp_path / "p")
    assert "excluded" not in rows[0] and "excluded" not in rows[2]  # honest rows pass
    assert rows[1]["excluded"] == {str(c): [0] for c in range(4, 8)}
    assert rows[1]["excluded_reason"] == {str(c): ["norm"] for c in range(4, 8)}
    for r in rows:  # header, 4 rows, tag: to the one other peer
        row = r["bytes_sent"][0]
        assert r["peer_bytes_sent"] == [exchange.HEADER_BYTES + 4 * row + auth.TAG_BYTES] * 2
    after = slices_of_round(tmp_path / "p", 2)
    assert all(v.abs().max() < 100 for v in after.values())
