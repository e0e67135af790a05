"""Rank 0's record of a distributed round: every peer sends one row of numbers (times, bytes,
its clients' losses, which clients it left out) and, for the diagnostics, the factors rank 0
lacks; rank 0 assembles the record the simulator writes, plus the per-peer fields."""

from __future__ import annotations

import numpy as np
import torch

from ..core import gossip, lora
from ..core.federation import Federation, applied_to_factors, round_record
from ..core.membership import applied, present, renormalised
from . import auth, exchange
from .exchange import Received
from .net import EXCHANGES, Net, mixed_keys
from .robust_mixing import held_factors, mix_held


def rank0_lacks(net: Net, kinds: frozenset[str]) -> list[str]:
    """The factor kinds whose every-client values rank 0 does not get from the exchange."""
    return [k for k in ("A", "B") if not (k in kinds and EXCHANGES[net.mode][1])]


def diagnostic_rows(net: Net, fac: dict, kinds: frozenset[str]) -> torch.Tensor | None:
    """Before mixing: this peer's factors that rank 0 needs for the diagnostics and lacks."""
    if not net.diagnostics:
        return None
    tensors = [fac[k][name] for k in rank0_lacks(net, kinds) for name in fac[k]]
    return exchange.pack(tensors) if tensors else None


PER_PEER = ("compute_s", "wait_s", "transfer_s", "peer_bytes_sent", "diagnostic_bytes")
# why a row was left out, as the record's "excluded_reason" names it: non-finite values, a
# payload of the wrong shape or dtype, a failed HMAC tag, a norm over the bound
REASONS = ("non-finite", "payload", "auth", "norm")


def reason(why: str) -> str:
    """The REASONS entry of an exclusion message (exchange.py, auth.py, robust_mixing.py)."""
    if auth.UNAUTHENTIC in why:
        return "auth"
    if "distributed.max_norm_ratio" in why:
        return "norm"
    return "non-finite" if why.startswith("non-finite") else "payload"


def _report_row(net: Net, losses: np.ndarray, times: list[float], got: Received,
                pre: torch.Tensor | None) -> torch.Tensor:
    """This peer's numbers for rank 0, one float64 row: PER_PEER, then (padded to the largest
    slice) its clients' losses and bytes, then per client 0 (mixed) or 1 + the index in
    REASONS of why it left the client out."""
    m = max(len(s) for s in net.slices)
    sent_diag = 0 if pre is None or net.rank == 0 else (
        exchange.HEADER_BYTES + pre.numel() * pre.element_size())
    row = np.full(len(PER_PEER) + 2 * m + net.n, np.nan)
    row[:len(PER_PEER)] = [*times, got.sent, sent_diag]
    mine = np.full((2, m), np.nan)
    mine[0, :len(losses)] = losses
    mine[1, :len(losses)] = [got.client_sent.get(c, 0) for c in net.clients]
    row[len(PER_PEER):len(PER_PEER) + 2 * m] = mine.reshape(-1)
    row[len(PER_PEER) + 2 * m:] = [1 + REASONS.index(reason(got.excluded[c]))
                                   if c in got.excluded else 0 for c in range(net.n)]
    return torch.as_tensor(row)[None]


def report(fed: Federation, net: Net, t: int, losses: np.ndarray,
            times: list[float], got: Received, pre: torch.Tensor | None,
            kinds: frozenset[str], w: np.ndarray) -> dict | None:
    """Every peer's report row (and diagnostic rows) to rank 0, which returns the record."""
    rows, _ = net.gather(_report_row(net, losses, times, got, pre), t, per_client=False)
    full = None if pre is None else net.gather(pre, t)[0]
    if net.rank != 0:
        return None
    r, m, p = rows.numpy(), max(len(s) for s in net.slices), len(PER_PEER)
    mine = r[:, p:p + 2 * m].reshape(net.world, 2, m)
    per_client = [np.concatenate([mine[k, i, :len(s)] for k, s in enumerate(net.slices)])
                  for i in (0, 1)]
    losses = per_client[0].astype(np.float32)  # as the simulator has them
    record = round_record(fed, t, losses)
    record.update(_diagnostics(net, fed, kinds, w, got, full, present(net.n, fed.departed(t))))
    record.update(bytes_sent=per_client[1].astype(int).tolist(), peers=net.world, mode=net.mode)
    record.update({key: (r[:, i].astype(int) if "bytes" in key else r[:, i].round(4)).tolist()
                   for i, key in enumerate(PER_PEER)})
    record.update(_exclusions(r[:, p + 2 * m:], net.n))
    return record


def _exclusions(codes: np.ndarray, n: int) -> dict:
    """From the (world, n) reason codes: "excluded" (client -> the peers that left it out)
    and "excluded_reason" (client -> why, REASONS), or nothing when nothing was left out."""
    left_out = codes >= 1
    if not left_out.any():
        return {}
    out = [c for c in range(n) if left_out[:, c].any()]
    return {"excluded": {str(c): np.flatnonzero(left_out[:, c]).tolist() for c in out},
            "excluded_reason": {str(c): sorted({REASONS[int(x) - 1] for x in codes[:, c]
                                                if x >= 1}) for c in out}}


def _diagnostics(net: Net, fed: Federation, kinds: frozenset[str], w: np.ndarray,
                 got: Received, gathered: torch.Tensor | None, here: list[int]) -> dict:
    """Consensus distances and cross-term error over the clients `here` (those not departed)
    from every client's factors (rank 0), as engines.local.mix_and_measure computes them;
    None where they cannot be had."""
    out = dict.fromkeys(("consensus_A", "consensus_B", "cross_term_error"))
    if not net.diagnostics:
        return out
    fac = lora.factors(fed.model)
    need = rank0_lacks(net, kinds)
    pre: dict[str, dict[str, torch.Tensor]] = {k: {} for k in ("A", "B")}
    sources = [(gathered, [(k, name) for k in need for name in fac[k]])]
    if len(need) < 2:  # the rest came with the exchange (all_gather: every client's rows)
        sources.append((got.rows.cpu(), mixed_keys(fac, kinds)))
    for rows, keys in sources:
        if rows is None or not keys:
            continue
        views = exchange.unpack(rows, [fac[k][name] for k, name in keys])
        for (k, name), x in zip(keys, views, strict=True):
            if k in pre:
                pre[k][name] = x.contiguous()
    bad = set(got.excluded)
    for x in (x for ps in pre.values() for x in ps.values()):
        bad |= set(np.flatnonzero(~torch.isfinite(x.reshape(net.n, -1)).all(1).numpy()))
    if fed.policy.mixes_products:
        keys = [(k, name) for k, ps in pre.items() for name in ps]
        held = held_factors(keys, [pre[k][name] for k, name in keys], bad)
        post_a, post_b, cross = gossip.product_consensus(
            held["A"], held["B"], torch.as_tensor(applied(w, bad)), here)
        post = {"A": post_a, "B": post_b}
    else:
        post = {k: {name: (mix_held(w, range(net.n), [x], bad)[0] if k in kinds else x)[here]
                    for name, x in ps.items()} for k, ps in pre.items()}
        wu = torch.as_tensor(renormalised(w, bad))
        done = applied_to_factors(torch.as_tensor(applied(w, bad)), kinds)
        cross = gossip.cross_term_error(pre["A"], pre["B"], wu, *done, clients=here)
    values = {"consensus_A": gossip.consensus_distance(post["A"]),
              "consensus_B": gossip.consensus_distance(post["B"]), "cross_term_error": cross}
    return {k: (v if np.isfinite(v) else None) for k, v in values.items()}
