"""The distributed engine: one process per peer, each owning a contiguous slice of the clients.

A round on a peer: the simulator's own `prepare_round` and `local_training` on its clients, then
W(t) from (seed, round) as every peer computes it (no coordinator), a barrier, an exchange of
exactly the tensors the method mixes this round (all_gather, or neighbour-only send/recv), and
the mixing of its own clients' rows. Rank 0 receives small per-round reports and returns the
same record as simulate.run_round (other ranks return None), with these differences and extras:
  bytes_sent        per client, the bytes its row actually cost on the wire: to every other
                    peer (all_gather) or once to each peer that mixes it (p2p); a client's
                    neighbours on its own peer cost nothing (the simulator counts one process
                    per client: its row once per neighbour)
  peer_bytes_sent   per peer, everything it sent in the exchange: headers and padding too
  diagnostic_bytes  per peer, what it sent rank 0 for the diagnostics, never in bytes_sent
  compute_s, wait_s, transfer_s   per peer: local training, the barrier before the exchange
                    (waiting for the slowest peer), the exchange and the mixing
  peers, mode; excluded (only when something was left out: client -> peers that did)
Diagnostics need every client's factors: rank 0 has the mixed ones from an all_gather and is
sent the others (the unmixed factor for ffa/rolora/local; in p2p mode both A and B) each round;
with distributed.diagnostics=false nothing is sent and consensus_A/B and cross_term_error are
null.

Rows that fail the checks (shape, dtype, finiteness) are left out of the round's mixing: their
column of W(t) is zeroed and every row renormalised to sum to 1 over the rest (gossip.mix_held).
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
import os
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from . import evaluate, exchange, gossip, lora, simulate
from .exchange import Received, Stamp
from .gossip import mix_held, renormalised
from .liveness import Liveness
from .methods import phase_name

log = logging.getLogger("tadlora.distributed")
FAULT_ENV = "TADLORA_FAULT"  # test hook, "kind:rank:round,...": nan, shape, kill, hang
Exchange = Callable[..., Received]
EXCHANGES: dict[str, tuple[Exchange, bool]] = {  # mode -> (exchange, rank 0 gets every row)
    "all_gather": (exchange.all_gather_rows, True),
    "p2p": (exchange.p2p_rows, False),
}


@dataclass
class Net:
    """This peer's place among the peers."""

    rank: int
    slices: list[range]  # every rank's clients
    live: Liveness
    mode: str = "all_gather"
    diagnostics: bool = True
    device: torch.device = torch.device("cpu")  # where transfers happen (the GPU for nccl)

    @property
    def world(self) -> int:
        return len(self.slices)

    @property
    def clients(self) -> range:
        return self.slices[self.rank]

    @property
    def n(self) -> int:
        return self.slices[-1].stop

    def cap(self, width: int) -> int:
        """Most values any payload may announce (a guard against absurd headers)."""
        return 4 * max(len(s) for s in self.slices) * max(width, 1) + 4096

    def gather(self, rows: torch.Tensor, t: int, per_client: bool = True
               ) -> tuple[torch.Tensor | None, dict[int, str]]:
        """Rows of every rank to rank 0 (per_client: one row per client, else one per rank)."""
        counts = [len(s) if per_client else 1 for s in self.slices]
        stamp = Stamp(t, self.rank, counts[self.rank], rows.shape[1], rows.dtype, 0)
        cap, rows = self.cap(rows.shape[1]), rows.to(self.device)
        full, bad = self.live.guard(
            lambda: exchange.gather_to_first(counts, self.rank, rows, stamp, cap))
        return (None if full is None else full.cpu()), bad


def dropout_seed(seed: int, t: int, first_client: int) -> int:
    """The simulator's per-round dropout seed when first_client is 0."""
    return seed * 1_000_003 + t + 7_919 * first_client


def _fault(kind: str, rank: int, t: int) -> bool:
    return f"{kind}:{rank}:{t}" in os.environ.get(FAULT_ENV, "").split(",")


def _wire(buf: torch.Tensor, rank: int, t: int) -> torch.Tensor:
    """What goes on the wire: the rows themselves, or a corrupted copy under fault injection."""
    if _fault("nan", rank, t):
        bad = buf.clone()
        bad[0, 0] = float("nan")
        return bad
    if _fault("shape", rank, t):
        return torch.cat([buf, buf[:, :1]], dim=1)
    return buf


def _maybe_die(rank: int, t: int) -> None:
    if _fault("kill", rank, t):
        os.kill(os.getpid(), signal.SIGKILL)
    if _fault("hang", rank, t):
        os.kill(os.getpid(), signal.SIGSTOP)


def _mixed(fac: dict, kinds: frozenset[str]) -> list[tuple[str, str]]:
    """(kind, layer) of every mixed tensor, in the same order on every peer (sorted kinds: a
    frozenset's order differs between processes)."""
    return [(k, name) for k in sorted(kinds) for name in fac[k]]


def run_round(fed: simulate.Federation, net: Net, t: int) -> dict | None:
    """One round on this peer; rank 0 returns the round's record, the others None."""
    simulate.prepare_round(fed, t)
    torch.manual_seed(dropout_seed(fed.seed, t, net.clients.start))
    t0 = time.perf_counter()
    losses = simulate.local_training(fed, t)
    compute = time.perf_counter() - t0
    _maybe_die(net.rank, t)
    kinds = simulate.mixed_kinds(fed.policy, t)
    w = fed.policy.weights(fed.mixing(t)) if kinds else np.eye(net.n)
    fac = lora.factors(fed.model)
    wait = net.live.guard(lambda: net.live.barrier(f"x{t}"))
    t1 = time.perf_counter()
    got = _exchange(fed, net, t, kinds, w, fac)
    pre = _diagnostic_rows(net, fac, kinds)
    _apply(net, fac, kinds, w, got)
    transfer = time.perf_counter() - t1
    times = [compute, wait, transfer]
    return _report(fed, net, t, losses, times, got, pre, kinds, w)


def _exchange(fed: simulate.Federation, net: Net, t: int, kinds: frozenset[str],
              w: np.ndarray, fac: dict) -> Received:
    if not kinds:
        return Received(torch.zeros(len(net.clients), 0), list(net.clients))
    own = exchange.pack([fac[k][name] for k, name in _mixed(fac, kinds)]).to(net.device)
    wire = _wire(own, net.rank, t)
    stamp = Stamp(t, net.rank, wire.shape[0], wire.shape[1], own.dtype,
                  exchange.kinds_mask(kinds))
    fn, _ = EXCHANGES[net.mode]
    got = net.live.guard(
        lambda: fn(net.slices, net.rank, own, wire, stamp, w, net.cap(own.shape[1])))
    for c, why in sorted(got.excluded.items()):
        log.warning("round %d: client %d left out of the mixing: %s", t, c, why)
    return got


def _apply(net: Net, fac: dict, kinds: frozenset[str], w: np.ndarray, got: Received) -> None:
    """Overwrite this peer's clients' mixed tensors with their mixed rows."""
    if not kinds:
        return
    params = [fac[k][name] for k, name in _mixed(fac, kinds)]
    new = mix_held(w, net.clients, _every_client(net, got, params), got.excluded)
    with torch.no_grad():
        for p, x in zip(params, new, strict=True):
            p.copy_(x)


def _every_client(net: Net, got: Received, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """The received rows as (n, ...) tensors shaped like `like`, zeros for the clients not
    received (all_gather: none; p2p: those whose weight is zero)."""
    if got.clients == list(range(net.n)):
        rows = got.rows
    else:
        rows = got.rows.new_zeros(net.n, got.rows.shape[1])
        rows[got.clients] = got.rows
    return [x.contiguous() for x in exchange.unpack(rows, like)]


def _rank0_lacks(net: Net, kinds: frozenset[str]) -> list[str]:
    """The factor kinds whose every-client values rank 0 does not get from the exchange."""
    return [k for k in ("A", "B") if not (k in kinds and EXCHANGES[net.mode][1])]


def _diagnostic_rows(net: Net, fac: dict, kinds: frozenset[str]) -> torch.Tensor | None:
    """Before mixing: this peer's factors that rank 0 needs for the diagnostics and lacks."""
    if not net.diagnostics:
        return None
    tensors = [fac[k][name] for k in _rank0_lacks(net, kinds) for name in fac[k]]
    return exchange.pack(tensors) if tensors else None


PER_PEER = ("compute_s", "wait_s", "transfer_s", "peer_bytes_sent", "diagnostic_bytes")


def _report_row(net: Net, losses: np.ndarray, times: list[float], got: Received,
                pre: torch.Tensor | None) -> torch.Tensor:
    """This peer's numbers for rank 0, one float64 row: PER_PEER, then (padded to the largest
    slice) its clients' losses and bytes, then a 0/1 mask of the clients it left out."""
    m = max(len(s) for s in net.slices)
    sent_diag = 0 if pre is None or net.rank == 0 else (
        exchange.HEADER_BYTES + pre.numel() * pre.element_size())
    row = np.full(len(PER_PEER) + 2 * m + net.n, np.nan)
    row[:len(PER_PEER)] = [*times, got.sent, sent_diag]
    mine = np.full((2, m), np.nan)
    mine[0, :len(losses)] = losses
    mine[1, :len(losses)] = [got.client_sent.get(c, 0) for c in net.clients]
    row[len(PER_PEER):len(PER_PEER) + 2 * m] = mine.reshape(-1)
    row[len(PER_PEER) + 2 * m:] = [c in got.excluded for c in range(net.n)]
    return torch.as_tensor(row)[None]


def _report(fed: simulate.Federation, net: Net, t: int, losses: np.ndarray,
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
    record = {"round": t, "phase": phase_name(fed.policy, t),
              "switch_interval": fed.policy.interval, "train_loss": float(losses.mean()),
              "client_loss": losses.round(5).tolist()}
    record.update(_diagnostics(net, fed, kinds, w, got, full))
    record.update(bytes_sent=per_client[1].astype(int).tolist(), peers=net.world, mode=net.mode)
    record.update({key: (r[:, i].astype(int) if "bytes" in key else r[:, i].round(4)).tolist()
                   for i, key in enumerate(PER_PEER)})
    left_out = r[:, p + 2 * m:] == 1  # (world, n): which peer left which client out
    if left_out.any():
        record["excluded"] = {str(c): np.flatnonzero(left_out[:, c]).tolist()
                              for c in range(net.n) if left_out[:, c].any()}
    return record


def _diagnostics(net: Net, fed: simulate.Federation, kinds: frozenset[str], w: np.ndarray,
                 got: Received, gathered: torch.Tensor | None) -> dict:
    """Consensus distances and cross-term error from every client's factors (rank 0), as
    simulate.mix_and_measure computes them; None where they cannot be had."""
    out = dict.fromkeys(("consensus_A", "consensus_B", "cross_term_error"))
    if not net.diagnostics:
        return out
    fac = lora.factors(fed.model)
    need = _rank0_lacks(net, kinds)
    pre: dict[str, dict[str, torch.Tensor]] = {k: {} for k in ("A", "B")}
    sources = [(gathered, [(k, name) for k in need for name in fac[k]])]
    if len(need) < 2:  # the rest came with the exchange (all_gather: every client's rows)
        sources.append((got.rows.cpu(), _mixed(fac, kinds)))
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
    post = {k: {name: mix_held(w, range(net.n), [x], bad)[0] if k in kinds else x
                for name, x in ps.items()} for k, ps in pre.items()}
    wu = torch.as_tensor(renormalised(w, bad))
    done = simulate.applied_to_factors(torch.as_tensor(gossip.applied(w, bad)), kinds)
    values = {"consensus_A": gossip.consensus_distance(post["A"]),
              "consensus_B": gossip.consensus_distance(post["B"]),
              "cross_term_error": gossip.cross_term_error(pre["A"], pre["B"], wu, *done)}
    return {k: (v if np.isfinite(v) else None) for k, v in values.items()}


# ------------------------------------------------------------------ evaluation


@contextmanager
def _in_slot(model: torch.nn.Module, values: dict[str, torch.Tensor]):
    """Temporarily put `values` (one client's tensors) into client slot 0."""
    tensors = lora.state(model)
    saved = {k: tensors[k][0].detach().clone() for k in values}
    with torch.no_grad():
        for k, v in values.items():
            tensors[k][0] = v
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                tensors[k][0] = v


def evaluation(fed: simulate.Federation, net: Net, t: int, val, pad_id: int,
               batch_size: int) -> dict | None:
    """Every client's own accuracy (each peer its own clients) and, on rank 0, the averaged
    adapter's; rank 0 returns runner.evaluation's dict, the others None."""
    acc = evaluate.accuracies(fed.model, val, pad_id, fed.n_clients, batch_size,
                              fed.precision, fed.device, fed.per_forward)
    state = lora.state(fed.model)
    names = sorted(state)
    net.live.guard(lambda: net.live.barrier(f"e{t}"))
    accs, _ = net.gather(torch.as_tensor(acc, dtype=torch.float64)[:, None], t)
    full, _ = net.gather(exchange.pack([state[k] for k in names]), t)
    if net.rank != 0:
        return None
    every = exchange.unpack(full, [state[k] for k in names])
    mean = {k: x.contiguous().mean(0) for k, x in zip(names, every, strict=True)}
    with _in_slot(fed.model, mean):
        avg = evaluate.accuracies(fed.model, val, pad_id, 1, batch_size, fed.precision,
                                  fed.device)
    a = accs[:, 0].numpy().astype(acc.dtype)  # float32, as the simulator reports it
    return {"client_acc": a.round(5).tolist(), **evaluate.summarize(a),
            "averaged_adapter_acc": float(avg[0])}
