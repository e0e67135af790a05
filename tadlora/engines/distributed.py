"""The distributed engine: one process per peer, each owning a contiguous slice of the clients.

A round on a peer: core.federation's `prepare_round` and `local_training` on its clients, then
W(t) from (seed, round) as every peer computes it (no coordinator), a barrier, an exchange of
exactly the tensors the method mixes this round (all_gather, or neighbour-only send/recv), and
the mixing of its own clients' rows. Rank 0 receives small per-round reports and returns the
same record as engines.local.run_round (other ranks return None), with these differences and extras:
  bytes_sent        per client, the bytes its row actually cost on the wire: to every other
                    peer (all_gather) or once to each peer that mixes it (p2p); a client's
                    neighbours on its own peer cost nothing (the simulator counts one process
                    per client: its row once per neighbour)
  peer_bytes_sent   per peer, everything it sent in the exchange: headers and padding too
  diagnostic_bytes  per peer, what it sent rank 0 for the diagnostics, never in bytes_sent
  compute_s, wait_s, transfer_s   per peer: local training, the barrier before the exchange
                    (waiting for the slowest peer), the exchange and the mixing
  peers, mode; excluded (only when something was left out: client -> peers that did)
Departed clients (distributed.on_peer_loss=continue, core/membership.py) are out of W(t)
(`Federation.weights`) and come out of the round unchanged (`Federation.frozen`), as in the
simulator.
Diagnostics need every client's factors: rank 0 has the mixed ones from an all_gather and is
sent the others (the unmixed factor for ffa/rolora/local; in p2p mode both A and B) each round;
with distributed.diagnostics=false nothing is sent and consensus_A/B and cross_term_error are
null.

Rows that fail the checks (shape, dtype, HMAC tag with distributed.secret_file, finiteness,
and a norm more than distributed.max_norm_ratio x the median of the peer's own rows:
robust_mixing.outliers) are left out of the round's mixing: their
column of W(t) is zeroed and every row renormalised to sum to 1 over the rest
(robust_mixing.mix_held).
So a client whose row was bad takes its healthy neighbours' average, and a client left with no
weight at all keeps its own factors. The peer that left a row out logs a warning, and rank 0's
record lists which peer left out which client ("excluded"). A peer never excludes its own rows
unless they are non-finite: only what arrives over the wire can be malformed.

Parity with the simulator: a peer mixes with the simulator's own einsum over all n clients
(rows it did not receive are zeros, with zero weight), and trains its clients in one forward
group. Without dropout, a run on P peers is therefore bit for bit the simulator's run with
train.clients_per_forward = clients per peer, and within float rounding (~1e-7 after a few
rounds, growing slowly with training) of the simulator's default of one group for all clients.
Dropout: the simulator draws one dropout stream per forward group, so a peer cannot reproduce
its masks; a peer seeds dropout from (seed, round, its first client): reproducible for a given
peer layout and identical to the simulator for one peer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..core import estimate, evaluate, gossip, lora
from ..core.evaluate import EvalSet
from ..core.federation import Federation, local_training, mixed_kinds, prepare_round
from ..core.membership import applied, present
from . import exchange, faults, records
from .base import State
from .exchange import Received, Stamp
from .net import EXCHANGES, Net, mixed_keys
from .robust_mixing import held_factors, mix_held, outliers

log = logging.getLogger("tadlora.distributed")


def run_round(fed: Federation, net: Net, t: int) -> dict | None:
    """One round on this peer; rank 0 returns the round's record, the others None."""
    net.live.at(t)
    prepare_round(fed, t)
    with fed.frozen(t):
        t0 = time.perf_counter()
        losses = local_training(fed, t)
        compute = time.perf_counter() - t0
        faults.maybe_die(net.rank, t)
        kinds = mixed_kinds(fed.policy, t)
        w = fed.weights(t) if kinds else np.eye(net.n)
        fac = lora.factors(fed.model)
        wait = net.live.guard(lambda: net.live.barrier(f"x{t}"))
        t1 = time.perf_counter()
        got = _exchange(fed, net, t, kinds, w, fac)
        pre = records.diagnostic_rows(net, fac, kinds)
        decided = _apply(fed, net, t, fac, kinds, w, got)
        transfer = time.perf_counter() - t1
    times = [compute, wait, transfer]
    record = records.report(fed, net, t, losses, times, got, pre, kinds, w)
    return record if fed.online is None else _online_record(fed, net, t, record, got, decided)


def _exchange(fed: Federation, net: Net, t: int, kinds: frozenset[str],
              w: np.ndarray, fac: dict) -> Received:
    if not kinds:
        return Received(torch.zeros(len(net.clients), 0), list(net.clients))
    tensors = [fac[k][name] for k, name in mixed_keys(fac, kinds)]
    if fed.online is not None:  # the estimate's values ride in the same row
        tensors.append(torch.from_numpy(fed.online.payload()).to(tensors[0].dtype))
    own = exchange.pack(tensors).to(net.device)
    wire = faults.wire(own, net.rank, t)
    stamp = Stamp(t, net.rank, wire.shape[0], wire.shape[1], own.dtype,
                  exchange.kinds_mask(kinds))
    fn, _ = EXCHANGES[net.mode]
    got = net.live.guard(
        lambda: fn(net.slices, net.rank, own, wire, stamp, w, net.cap(own.shape[1]), net.key))
    got.excluded.update(outliers(got.rows, got.clients, net.clients, net.owners,
                                 net.max_norm_ratio, got.excluded))
    for c, why in sorted(got.excluded.items()):
        log.warning("round %d: client %d left out of the mixing: %s", t, c, why)
    return got


def _apply(fed: Federation, net: Net, t: int, fac: dict, kinds: frozenset[str],
           w: np.ndarray, got: Received) -> bool:
    """Overwrite this peer's clients' mixed tensors with their mixed rows; advance the online
    estimate (returns whether it took a decision this round)."""
    if not kinds:
        return False
    keys = mixed_keys(fac, kinds)
    params = [fac[k][name] for k, name in keys]
    probes = [] if fed.online is None else [torch.zeros(net.n, estimate.WIDTH)]
    every = _every_client(net, got, params + probes)
    decided = bool(probes) and estimate.online_round(
        fed.online, t, applied(w, got.excluded)[net.clients.start:net.clients.stop],
        every.pop().double().cpu().numpy(), lambda proposals: _share(net, proposals),
        fed.departed_rows(t))
    new = mix_held(w, net.clients, every, got.excluded)
    if fed.policy.mixes_products:
        new = _products(net, keys, every, new, w, got)
    with torch.no_grad():
        for p, x in zip(params, new, strict=True):
            p.copy_(x)
    return decided


def _share(net: Net, proposals: np.ndarray) -> np.ndarray:
    """Every client's proposal (n,) on every peer: an all-reduce of each peer's own slots."""
    x = torch.zeros(net.n, dtype=torch.int64)
    x[net.clients.start:net.clients.stop] = torch.from_numpy(proposals.astype(np.int64))
    x = x.to(net.device)
    net.live.guard(lambda: dist.all_reduce(x))
    return x.cpu().numpy()


def _online_record(fed: Federation, net: Net, t: int, record: dict | None, got: Received,
                   decided: bool) -> dict | None:
    """Rank 0's record with every client's estimate (mean, spread) and the bytes the estimate
    cost: its share of each client's row, and the proposals of a decision round."""
    mine = torch.as_tensor(fed.online.estimates(), dtype=torch.float64)[:, None]
    full, _ = net.gather(torch.nan_to_num(mine, nan=-1.0), t)
    if record is None:
        return None
    est = full[:, 0].numpy()
    extra = estimate.decision_bytes(net.n) if decided else 0
    width = got.rows.shape[1]
    online = [b * estimate.WIDTH // width + extra for b in record["bytes_sent"]]
    record["bytes_sent"] = [b + extra for b in record["bytes_sent"]]
    return {**record, **estimate.summary(np.where(est < 0, np.nan, est)), "online_bytes": online}


def _products(net: Net, keys: list[tuple[str, str]], every: list[torch.Tensor],
              new: list[torch.Tensor], w: np.ndarray, got: Received) -> list[torch.Tensor]:
    """`new` with this peer's A and B rows replaced by the product consensus of every client's
    (the excluded clients' weights go to the rest, as in mix_held)."""
    held = held_factors(keys, every, got.excluded)
    wa = torch.as_tensor(applied(w, got.excluded))
    new_a, new_b, _ = gossip.product_consensus(held["A"], held["B"], wa, net.clients)
    out = {"A": new_a, "B": new_b}
    return [out[k][name] if k in out else x for (k, name), x in zip(keys, new, strict=True)]


def _every_client(net: Net, got: Received, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """The received rows as (n, ...) tensors shaped like `like`, zeros for the clients not
    received (all_gather: none; p2p: those whose weight is zero)."""
    if got.clients == list(range(net.n)):
        rows = got.rows
    else:
        rows = got.rows.new_zeros(net.n, got.rows.shape[1])
        rows[got.clients] = got.rows
    return [x.contiguous() for x in exchange.unpack(rows, like)]


def gather_named(net: Net, tensors: dict[str, torch.Tensor], t: int
                 ) -> dict[str, torch.Tensor] | None:
    """Every client's rows of each named per-client tensor, on rank 0 (None elsewhere)."""
    names = sorted(tensors)
    full, _ = net.gather(exchange.pack([tensors[k] for k in names]), t)
    if full is None:
        return None
    every = exchange.unpack(full, [tensors[k] for k in names])
    return {k: x.contiguous() for k, x in zip(names, every, strict=True)}


def evaluation(fed: Federation, net: Net, t: int, val: EvalSet) -> dict | None:
    """Every client's own accuracy (each peer its own clients) and, on rank 0, the averaged
    adapter's; rank 0 returns the simulator's evaluation record, the others None."""
    spec = fed.local
    acc, loss = evaluate.scores(fed.model, val, fed.n_clients, spec.precision, spec.device,
                                spec.per_forward)
    net.live.guard(lambda: net.live.barrier(f"e{t}"))
    mine = torch.stack([torch.as_tensor(acc, dtype=torch.float64), torch.as_tensor(loss)], 1)
    both, _ = net.gather(mine, t)
    every = gather_named(net, lora.state(fed.model), t)
    if every is None:
        return None
    gone = fed.departed(t)
    here = present(net.n, gone)
    with evaluate.in_slot(fed.model, {k: x[here].mean(0) for k, x in every.items()}):
        avg = evaluate.accuracies(fed.model, val, 1, spec.precision, spec.device)
    a = both[:, 0].numpy().astype(acc.dtype)  # float32, as the simulator reports it
    return evaluate.report(a, avg[0], both[:, 1].numpy(), gone)


@dataclass
class DistributedEngine:
    """One peer: the clients of its slice, the exchange and liveness (see base.Engine)."""

    fed: Federation
    val: EvalSet
    net: Net

    @property
    def rank(self) -> int:
        return self.net.rank

    @property
    def world(self) -> int:
        return self.net.world

    def round(self, t: int) -> dict | None:
        return run_round(self.fed, self.net, t)

    def evaluate(self, t: int) -> dict | None:
        return evaluation(self.fed, self.net, t, self.val)

    def gather_state(self, rnd: int) -> State | None:
        tensors, moments = self.fed.state()
        rows = {k: v for k, v in moments.items() if v.dim()}
        full = gather_named(self.net, tensors, rnd)
        full_moments = gather_named(self.net, rows, rnd) if rows else {}
        if full is None:
            return None
        return full, {**{k: v for k, v in moments.items() if not v.dim()}, **full_moments}

    def agree(self, value: int) -> int:
        x = torch.tensor([value], dtype=torch.int64, device=self.net.device)
        self.net.live.guard(lambda: dist.all_reduce(x, op=dist.ReduceOp.MIN))
        return int(x.item())

    def barrier(self, tag: str) -> None:
        self.net.live.guard(lambda: self.net.live.barrier(tag))
