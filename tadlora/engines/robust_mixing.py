"""Fault-tolerant mixing for the distributed engine: clients whose rows were left out (bad or
missing payloads) lose their weight, and the rest of each row is renormalised."""

from __future__ import annotations

import numpy as np
import torch


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


def mix_held(w: np.ndarray, targets: range, tensors: list[torch.Tensor],
             excluded: set[int] | dict[int, str]) -> list[torch.Tensor]:
    """Rows `targets` of W x for every stacked tensor x (n, ...), computed as `mix` computes
    them (the same einsum over all n clients: bit for bit the same numbers), with the clients
    in `excluded` left out as `renormalised` says; a target row left with no weight keeps its
    own value. The distributed engine's mixing: a peer holds its own rows and the rows it
    received; the others may be anything finite (zeros), as their weights are zero."""
    w = renormalised(w, excluded)
    wt = torch.as_tensor(w)
    bad = sorted(excluded)
    alone = [i for i in targets if w[i].sum() == 0]
    out = []
    with torch.no_grad():
        for x in tensors:
            clean = x.clone() if bad else x
            clean[bad] = 0  # NaN * 0 would still be NaN
            y = torch.einsum("ij,j...->i...", wt.to(x.device, x.dtype), clean)
            y = y[targets.start:targets.stop].clone()
            for i in alone:
                y[i - targets.start] = x[i]
            out.append(y)
    return out


def held_factors(keys: list[tuple[str, str]], every: list[torch.Tensor],
                 excluded: set[int] | dict[int, str]) -> dict[str, dict[str, torch.Tensor]]:
    """Every client's A and B rows by layer, the excluded clients' rows zeroed (their weight
    is zero; NaN * 0 would still be NaN)."""
    held: dict[str, dict[str, torch.Tensor]] = {"A": {}, "B": {}}
    for (k, name), x in zip(keys, every, strict=True):
        if k in held:
            x = x.clone()
            x[sorted(excluded)] = 0
            held[k][name] = x
    return held
