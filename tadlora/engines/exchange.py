"""Moving client rows between peers: the wire format, its checks, all_gather and neighbour-only
send/recv. No config and no training here; distributed.py decides what to send and mixes.

A payload is a (rows, width) tensor: one row per client, the client's mixed tensors flattened
and concatenated. Every payload travels behind a small float64 header (a "stamp": round,
sender, rows, width, dtype, kinds, tagged), so a receiver checks shape and dtype before using
a single value, then (with distributed.secret_file) the payload's HMAC tag (auth.py), then
finiteness row by row. A row that fails is left out of the round's mixing; nothing received is
ever unpickled (tensors only, no *_object collectives).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.distributed as dist

from . import auth

MAGIC = 7357.0  # first header value: "this is a tadlora payload header"
HEADER = 8  # float64 values: magic, round, rank, rows, width, dtype, kinds, tagged
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
KIND_BITS = {"A": 1, "B": 2, "head": 4}


class ProtocolError(Exception):
    """A peer sent something that cannot even be received safely (bad magic, unknown dtype,
    absurd size): the byte stream with it is lost, so this ends the run like a lost peer."""


@dataclass(frozen=True)
class Stamp:
    """What a payload claims to be; the receiver compares it with what it expects."""

    round: int
    rank: int
    rows: int
    width: int
    dtype: torch.dtype
    kinds: int
    tagged: int = 0  # 1: an HMAC tag (auth.TAG_BYTES) follows the payload

    def header(self) -> torch.Tensor:
        return torch.tensor([MAGIC, self.round, self.rank, self.rows, self.width,
                             DTYPES.index(self.dtype), self.kinds, self.tagged],
                            dtype=torch.float64)

    @staticmethod
    def parse(h: torch.Tensor, src: int, cap: int) -> Stamp:
        """Decode a received header; refuses what cannot be received safely."""
        v = h.double().cpu().tolist()
        ints = all(float(x).is_integer() for x in v[1:7]) and v[7] in (0, 1)
        if v[0] != MAGIC or not ints or not 0 <= v[5] < len(DTYPES) or v[3] < 0 or v[4] < 0:
            raise ProtocolError(f"rank {src} sent a malformed header {v}")
        if v[3] * v[4] > cap:
            raise ProtocolError(f"rank {src} announced {int(v[3])} x {int(v[4])} values, more "
                                f"than the {cap} any payload of this run can hold")
        return Stamp(int(v[1]), int(v[2]), int(v[3]), int(v[4]), DTYPES[int(v[5])], int(v[6]),
                     int(v[7]))

    def mismatch(self, expected: Stamp) -> str | None:
        """Why this stamp does not fit `expected`, or None."""
        for name in ("round", "rank", "rows", "width", "dtype", "kinds"):
            got, want = getattr(self, name), getattr(expected, name)
            if got != want:
                return f"wrong {name}: got {got}, expected {want}"
        return None


def kinds_mask(kinds: frozenset[str] | set[str]) -> int:
    return sum(KIND_BITS[k] for k in kinds)


def client_slices(n: int, world: int) -> list[range]:
    """Contiguous client ranges, one per rank, sizes differing by at most one (earlier ranks
    get the extra client)."""
    if not 1 <= world <= n:
        fix = "use at least 1 peer" if world < 1 else f"use at most {n} peers or more clients"
        raise ValueError(f"{world} peers for {n} clients: every peer needs at least one client "
                         f"({fix})")
    sizes = [n // world + (r < n % world) for r in range(world)]
    starts = np.cumsum([0, *sizes])
    return [range(int(starts[r]), int(starts[r + 1])) for r in range(world)]


def schedule(world: int) -> list[list[tuple[int, int]]]:
    """Stages of disjoint rank pairs (a < b) covering every pair exactly once: the circle
    method of round-robin tournaments. Every rank walks the same stages in the same order and
    talks to at most one partner per stage, so blocking send/recv cannot deadlock."""
    m = world + world % 2  # an odd world gets a dummy rank: its partner sits the stage out
    ranks = list(range(m))
    stages = []
    for _ in range(m - 1):
        pairs = [tuple(sorted((ranks[i], ranks[m - 1 - i]))) for i in range(m // 2)]
        stages.append([(a, b) for a, b in pairs if b < world])
        ranks = [ranks[0], ranks[-1], *ranks[1:-1]]
    return stages


def needed_rows(w: np.ndarray, src: range, dst: range) -> list[int]:
    """Clients of `src` whose row some client of `dst` mixes with a nonzero weight."""
    block = w[dst.start:dst.stop, src.start:src.stop] != 0  # (len(dst), len(src))
    return [src.start + j for j in np.flatnonzero(block.any(axis=0))]


def least_bytes(w: np.ndarray, slices: list[range], row_bytes: int) -> list[int]:
    """Per client, the fewest bytes any exchange can send for it: its row once to every other
    rank holding a client that mixes it (what p2p mode sends, headers aside)."""
    owner = np.repeat(np.arange(len(slices)), [len(s) for s in slices])
    return [row_bytes * sum(k != owner[j] and bool((w[s.start:s.stop, j] != 0).any())
                            for k, s in enumerate(slices)) for j in range(w.shape[0])]


@dataclass
class Received:
    """The rows a rank mixes with after an exchange, and what it cost."""

    rows: torch.Tensor  # (m, width): own rows and every received row
    clients: list[int]  # global client id of each row
    excluded: dict[int, str] = field(default_factory=dict)  # client -> why left out
    sent: int = 0  # bytes this rank put on the wire: headers, payloads, padding
    client_sent: dict[int, int] = field(default_factory=dict)  # own client -> its row's bytes


def _finite_check(rows: torch.Tensor, clients: list[int], src: int) -> dict[int, str]:
    bad = ~torch.isfinite(rows).all(dim=1) if rows.numel() else torch.zeros(0, dtype=torch.bool)
    return {clients[i]: f"non-finite values from rank {src}" for i in torch.nonzero(bad).flatten()}


def _nbytes(rows: int, width: int, dtype: torch.dtype) -> int:
    return rows * width * torch.empty((), dtype=dtype).element_size()


HEADER_BYTES = HEADER * 8


def all_gather_rows(slices: list[range], rank: int, own: torch.Tensor, wire: torch.Tensor,
                    stamp: Stamp, w: np.ndarray, cap: int, key: bytes | None = None
                    ) -> Received:
    """Every rank's rows to every rank, whatever W (unused here) says: one all_gather of
    headers, one of payloads (padded to the largest, as all_gather needs equal sizes), and
    one of HMAC tags when `key` is given. `own` are this rank's true rows, `wire` what it
    sends (the same except under fault injection)."""
    world, dev = len(slices), own.device
    stamp = replace(stamp, tagged=int(key is not None))
    headers = [torch.empty(HEADER, dtype=torch.float64, device=dev) for _ in range(world)]
    dist.all_gather(headers, stamp.header().to(dev))
    stamps = [Stamp.parse(h, k, cap) for k, h in enumerate(headers)]
    size = max(s.rows * s.width for s in stamps)  # every rank computes the same size
    flat = torch.zeros(size, dtype=own.dtype, device=dev)
    n_wire = min(wire.numel(), size)
    flat[:n_wire] = wire.reshape(-1)[:n_wire].to(own.dtype)
    chunks = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(chunks, flat)
    tags = auth.gather_tags(key, [s.tagged for s in stamps], stamp.header().to(dev), flat)
    rows, clients, excluded = [], [], {}
    for k, (s, chunk) in enumerate(zip(stamps, chunks, strict=True)):
        ids = list(slices[k])
        if k == rank:
            rows.append(own)
            excluded.update(_finite_check(own, ids, k))
        else:
            expect = Stamp(stamp.round, k, len(ids), own.shape[1], own.dtype, stamp.kinds)
            why = (s.mismatch(expect)
                   or auth.unverified(key, headers[k], s.tagged, chunk, tags[k]))
            if why:
                excluded.update({c: f"rank {k} sent a bad payload ({why})" for c in ids})
                rows.append(torch.zeros(len(ids), own.shape[1], dtype=own.dtype, device=dev))
            else:
                got = chunk[:len(ids) * own.shape[1]].view(len(ids), own.shape[1])
                rows.append(got)
                excluded.update(_finite_check(got, ids, k))
        clients += ids
    per_row = _nbytes(1, own.shape[1], own.dtype) * (world - 1)
    tag_bytes = 0 if tags[0] is None else auth.TAG_BYTES
    sent = (HEADER_BYTES + _nbytes(size, 1, own.dtype) + tag_bytes) * (world - 1)
    return Received(torch.cat(rows), clients, excluded, sent,
                    {c: per_row for c in slices[rank]})


def send_rows(dst: int, stamp: Stamp, payload: torch.Tensor, key: bytes | None = None) -> int:
    """Header, payload and (with `key`) its HMAC tag (blocking). Returns the bytes sent."""
    header = replace(stamp, tagged=int(key is not None)).header().to(payload.device)
    flat = payload.contiguous().reshape(-1)
    dist.send(header, dst)
    dist.send(flat, dst)
    if key is not None:
        dist.send(auth.tag(key, header, flat), dst)
    return (HEADER_BYTES + payload.numel() * payload.element_size()
            + (auth.TAG_BYTES if key is not None else 0))


def recv_rows(src: int, expect: Stamp, cap: int, device: torch.device, key: bytes | None = None
              ) -> tuple[torch.Tensor, str | None]:
    """Receive what `src` sends with send_rows; returns (rows, why it does not fit or None).
    The payload (and a tag the header announces) is received at its announced size either
    way, so the stream stays aligned; with `key`, a payload without a valid tag does not fit."""
    h = torch.empty(HEADER, dtype=torch.float64, device=device)
    dist.recv(h, src)
    got = Stamp.parse(h, src, cap)
    flat = torch.empty(got.rows * got.width, dtype=got.dtype, device=device)
    dist.recv(flat, src)
    tag = torch.empty(auth.TAG_BYTES, dtype=torch.uint8, device=device) if got.tagged else None
    if tag is not None:
        dist.recv(tag, src)
    why = got.mismatch(expect) or auth.unverified(key, h, got.tagged, flat, tag)
    return (flat.view(got.rows, got.width) if why is None else flat), why


def p2p_rows(slices: list[range], rank: int, own: torch.Tensor, wire: torch.Tensor,
             stamp: Stamp, w: np.ndarray, cap: int, key: bytes | None = None) -> Received:
    """Neighbour-only exchange: rank a sends rank b exactly the rows of its clients that some
    client of b mixes with (from W(t), which every rank computes itself). Blocking send/recv
    along `schedule`: in each pair the lower rank sends first. (batch_isend_irecv is avoided:
    it can hang on gloo.)"""
    lo, dev = slices[rank].start, own.device
    rows, clients = [own], list(slices[rank])
    excluded, sent = _finite_check(own, clients, rank), 0
    client_sent = dict.fromkeys(slices[rank], 0)
    per_row = _nbytes(1, own.shape[1], own.dtype)
    for stage in schedule(len(slices)):
        pair = next((p for p in stage if rank in p), None)
        if pair is None:
            continue
        other = pair[1] if pair[0] == rank else pair[0]
        out = needed_rows(w, slices[rank], slices[other])
        into = needed_rows(w, slices[other], slices[rank])
        steps = [("send", out), ("recv", into)]
        for what, ids in steps if rank < other else steps[::-1]:
            if not ids:
                continue
            if what == "send":
                local = [c - lo for c in ids]
                s = Stamp(stamp.round, rank, len(ids), wire.shape[1], wire.dtype, stamp.kinds)
                sent += send_rows(other, s, wire[local], key)
                for c in ids:
                    client_sent[c] += per_row
                continue
            expect = Stamp(stamp.round, other, len(ids), own.shape[1], own.dtype, stamp.kinds)
            got, why = recv_rows(other, expect, cap, dev, key)
            if why:
                excluded.update({c: f"rank {other} sent a bad payload ({why})" for c in ids})
                got = torch.zeros(len(ids), own.shape[1], dtype=own.dtype, device=dev)
            else:
                excluded.update(_finite_check(got, ids, other))
            rows.append(got)
            clients += ids
    return Received(torch.cat(rows), clients, excluded, sent, client_sent)


def gather_to_first(counts: list[int], rank: int, rows: torch.Tensor, stamp: Stamp,
                    cap: int, key: bytes | None = None
                    ) -> tuple[torch.Tensor | None, dict[int, str]]:
    """Every rank's rows (counts[k] of them) to rank 0, in rank order: the stacked rows there,
    None elsewhere, plus (rank 0) the ranks whose rows failed the checks, as NaN rows."""
    if rank != 0:
        send_rows(0, stamp, rows, key)
        return None, {}
    parts, bad = [rows], {}
    for k in range(1, len(counts)):
        got, why = recv_rows(k, replace(stamp, rank=k, rows=counts[k]), cap, rows.device, key)
        if why:
            bad[k] = why
            got = torch.full((counts[k], rows.shape[1]), float("nan"), dtype=rows.dtype,
                             device=rows.device)
        parts.append(got)
    return torch.cat(parts), bad


def pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[(c, ...), ...] -> (c, width): each client's tensors flattened and concatenated."""
    if not tensors:
        raise ValueError("pack needs at least one tensor")
    return torch.cat([t.detach().reshape(t.shape[0], -1) for t in tensors], dim=1)


def unpack(rows: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of pack: (c, width) -> tensors shaped like `like` but with c rows (views)."""
    out, at = [], 0
    for t in like:
        size = t[0].numel()
        out.append(rows[:, at:at + size].reshape(rows.shape[0], *t.shape[1:]))
        at += size
    return out
