"""Which clients a round's mixing counts: W renormalised without some clients (rows left out
of one round, `renormalised` / `applied`), and the departures of a federation that lost peers.

A distributed run with distributed.on_peer_loss=continue goes on without the clients of a lost
peer (engines/launch.py restarts the survivors). From the round it resumes at, those clients
are departed: their columns leave W(t) and every row is renormalised over the clients still
present, their own rows of W become the identity's, and their adapters, head and AdamW moments
stay exactly as they were (they do not train). A departed client rejoins, at the round a later
resume starts from, with the state it left with (`tadlora launch --resume RUN_DIR --rejoin`).

The departures are events (first round, the clients departed from that round on), saved with
every checkpoint, so the departed set is a pure function of the round and a resume (with any
engine) reproduces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import lora

Departures = tuple[tuple[int, tuple[int, ...]], ...]  # (first round, departed clients), sorted


def departed(events: Departures, t: int) -> frozenset[int]:
    """The clients departed in round t."""
    return frozenset(next((gone for r, gone in reversed(events) if r <= t), ()))


@dataclass(frozen=True)
class Change:
    """What a resume changes from its first round on: clients that depart (the lost peer's),
    or every departed client back (`rejoin`)."""

    depart: tuple[int, ...] = ()
    rejoin: bool = False


NO_CHANGE = Change()


def changed(events: Departures, t: int, change: Change, n: int) -> Departures:
    """`events` up to round t, then `change` from round t on. Later events are dropped (the
    rounds after a resume's first round are run again). ValueError when the change names a
    client outside 0..n-1 or would leave no client."""
    kept = tuple(e for e in events if e[0] < t)
    before = departed(kept, t)
    if any(not 0 <= c < n for c in change.depart):
        raise ValueError(f"cannot depart clients {list(change.depart)}: the run has 0..{n - 1}")
    gone = frozenset() if change.rejoin else before | set(change.depart)
    if len(gone) >= n:
        raise ValueError("every client would have departed: nothing is left to train")
    return kept if gone == before else (*kept, (t, tuple(sorted(gone))))


def to_json(events: Departures) -> list:
    return [[r, list(gone)] for r, gone in events]


def from_json(value: list | None, n: int) -> Departures:
    """Departures as a checkpoint's state.json holds them (ValueError when malformed)."""
    try:
        events = tuple((int(r), tuple(sorted(int(c) for c in gone))) for r, gone in value or [])
    except (TypeError, ValueError) as e:
        raise ValueError(f"malformed departures {value!r}: {e}") from e
    if any(not 0 <= c < n for _, gone in events for c in gone):
        raise ValueError(f"departures {value!r} name clients outside 0..{n - 1}")
    return events


def renormalised(w: np.ndarray, excluded: set[int] | dict[int, str]) -> np.ndarray:
    """W with the columns of `excluded` zeroed and each row rescaled to sum to 1 (a row with no
    weight left stays zero: its client keeps its own value)."""
    if not excluded:
        return w
    w = w.copy()
    w[:, sorted(excluded)] = 0.0
    s = w.sum(axis=1, keepdims=True)
    return np.divide(w, s, out=np.zeros_like(w), where=s > 0)


def applied(w: np.ndarray, excluded: set[int] | dict[int, str]) -> np.ndarray:
    """The matrix `mix_held` applies: `renormalised` W, with a row left with no weight
    replaced by the identity's (that client keeps its own value)."""
    w = renormalised(w, excluded).copy()
    alone = w.sum(axis=1) == 0
    w[alone, alone] = 1.0
    return w


def present(n: int, gone: frozenset[int]) -> list[int]:
    """The clients of 0..n-1 that have not departed."""
    return [c for c in range(n) if c not in gone]


def without(w: np.ndarray, gone: frozenset[int]) -> np.ndarray:
    """W with the departed clients' columns out and every other row renormalised to sum to 1
    (a row left with no weight keeps its own value); a departed client's row is the identity's."""
    if not gone:
        return w
    w = w.copy()
    w[sorted(gone), :] = 0.0
    return applied(w, gone)


@contextmanager
def frozen(model: nn.Module, optimizer: torch.optim.Optimizer, rows: list[int]
           ) -> Iterator[None]:
    """Inside: anything may change the held clients' tensors; on leaving, rows `rows` (indices
    among the held clients) of every per-client tensor and of its AdamW moments are put back
    as they were (moments that did not exist before are zeroed in those rows)."""
    if not rows:
        yield
        return
    params = list(lora.state(model).values())
    saved = [p.detach()[rows].clone() for p in params]
    moments = [{k: v[rows].clone() for k, v in optimizer.state.get(p, {}).items() if v.dim()}
               for p in params]
    yield
    with torch.no_grad():
        for p, value, before in zip(params, saved, moments, strict=True):
            p[rows] = value
            for k, v in optimizer.state.get(p, {}).items():
                if v.dim():
                    v[rows] = before[k] if k in before else 0
