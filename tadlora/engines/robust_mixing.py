"""Fault-tolerant mixing for the distributed engine: clients whose rows were left out (bad or
missing payloads) lose their weight, and the rest of each row is renormalised (the matrices:
core/membership.py's `renormalised` and `applied`)."""

from __future__ import annotations

import numpy as np
import torch

from ..core.membership import renormalised


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


MAX_NORM_RATIO = 10.0  # distributed.max_norm_ratio's default


def outliers(rows: torch.Tensor, clients: list[int], own: range, owners: list[int],
             ratio: float, excluded: set[int] | dict[int, str]) -> dict[int, str]:
    """Received rows too large to be honest: a row (one client's mixed tensors, flattened)
    whose L2 norm exceeds `ratio` x the reference, the median norm of this peer's own rows
    (its own clients, which it trusts), or, where those are all zero, the median over every
    finite row it holds. Own rows and rows already in `excluded` are not judged; ratio 0 turns
    the check off. Returns client -> why, naming the sending rank (owners[client])."""
    if not ratio or not rows.numel():
        return {}
    norms = torch.linalg.vector_norm(rows.double(), dim=1)
    mine = [i for i, c in enumerate(clients) if c in own]
    ref = norms[mine].median().item() if mine else 0.0
    if ref == 0:
        finite = norms[torch.isfinite(norms)]
        ref = finite.median().item() if finite.numel() else 0.0
    return {c: f"norm {norms[i].item():.3g} from rank {owners[c]} is more than {ratio:g} x "
               f"the median norm {ref:.3g} of this peer's rows (distributed.max_norm_ratio)"
            for i, c in enumerate(clients)
            if c not in own and c not in excluded and norms[i].item() > ratio * ref}
