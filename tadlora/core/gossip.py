"""Gossip averaging of stacked client tensors, and the diagnostics logged every round."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def mix(tensors: dict[str, torch.Tensor], w: torch.Tensor) -> None:
    """x_i <- sum_j W[i, j] x_j for every stacked tensor (client axis first), in place."""
    with torch.no_grad():
        for x in tensors.values():
            x.copy_(torch.einsum("ij,j...->i...", w.to(x.device, x.dtype), x))


def consensus_distance(tensors: dict[str, torch.Tensor]) -> float:
    """sqrt( (1/n) sum_i sum_layers ||x_i - mean_j x_j||_F^2 ): 0 when all clients agree."""
    total = 0.0
    for x in tensors.values():
        x = x.detach().float()
        total += (x - x.mean(0, keepdim=True)).pow(2).sum().item() / x.shape[0]
    return total**0.5


def _mixed_products(w_rows: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum_j W[i, j] B_j A_j for the clients i of `w_rows` (c, n), without forming all n
    products: [W_i1 B_1 ... W_in B_n] @ [A_1; ...; A_n]. (c, d_out, d_in)."""
    c, (n, d_out, r) = w_rows.shape[0], b.shape
    left = (w_rows[:, :, None, None] * b[None]).permute(0, 2, 1, 3)  # (c, d_out, n, r)
    return left.reshape(c, d_out, n * r) @ a.reshape(n * r, -1)


def _chunk(n: int, d_out: int, width: int, budget: int = 1 << 22) -> int:
    """Clients per chunk so that the chunk's temporaries stay within `budget` floats."""
    return max(1, budget // (d_out * max(width, 1)))


def cross_term_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], w: torch.Tensor,
                     w_a: torch.Tensor, w_b: torch.Tensor, clients: Sequence[int] | None = None
                     ) -> float:
    """Mean over clients and layers of ||B'_i A'_i - sum_j W_ij B_j A_j||_F / ||sum_j W_ij
    B_j A_j||_F, where a, b are the factors before gossip, gossip will apply w_a to A and w_b
    to B (W for a mixed factor, the identity for a kept one: A' = w_a A, B' = w_b B) and w is
    the method's mixing matrix. For methods that mix both factors this is the topology-induced
    cross-term error. Computed before mixing (no copy of the factors) and in chunks of
    clients, so its memory does not grow with the number of clients. Clients whose mixed
    product is zero (B = 0 at the start) are left out; 0.0 if nothing is left. `clients`: the
    clients averaged over (default all; a departed client's row is left out)."""
    errors = []
    device = next(iter(a.values())).device if a else "cpu"
    w_, wa, wb = (_rows(m.to(device, torch.float32), clients) for m in (w, w_a, w_b))
    with torch.no_grad():
        for name in a:
            x, y = a[name].float(), b[name].float()  # (n, r, d_in), (n, d_out, r)
            n, d_out, r = y.shape
            step = _chunk(n, d_out, max(x.shape[2], n * r))
            for i in range(0, w_.shape[0], step):
                ideal = _mixed_products(w_[i:i + step], y, x)  # (c, d_out, d_in)
                mixed_b = torch.einsum("ij,jor->ior", wb[i:i + step], y)
                mixed_a = torch.einsum("ij,jrd->ird", wa[i:i + step], x)
                actual = torch.bmm(mixed_b, mixed_a)
                norm = ideal.flatten(1).norm(dim=1)
                keep = norm > 0
                errors.append((actual - ideal).flatten(1).norm(dim=1)[keep] / norm[keep])
    errors = torch.cat(errors) if errors else torch.zeros(0)
    return errors.mean().item() if errors.numel() else 0.0


def bytes_sent(w: np.ndarray, tensors: dict[str, torch.Tensor]) -> list[int]:
    """Bytes each client sends in point-to-point gossip: its slice of every mixed tensor to
    every neighbour with a nonzero weight."""
    per_client = sum(x[0].numel() * x.element_size() for x in tensors.values())
    off = (w != 0) & ~np.eye(w.shape[0], dtype=bool)
    return [int(k) * per_client for k in off.sum(axis=0)]


def _product_svd(w_rows: torch.Tensor, b: torch.Tensor, a: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD of P_i = sum_j W_ij B_j A_j for the clients i of `w_rows` (c, k): k
    neighbours each (W_ij != 0), `b` (c, k, d_out, r) and `a` (c, k, r, d_in) their factors.
    P is not formed: P = L R with L = [W_i1 B_1 ... W_ik B_k] (d_out, k r) and R = [A_1; ...;
    A_k] (k r, d_in); QR of L and of R^T leaves the SVD of a small (k r)-square core. Returns
    U (c, d_out, m), S (c, m), Vh (c, m, d_in) with m = min(d_out, d_in, k r)."""
    (c, k, d_out, r), d_in = b.shape, a.shape[-1]
    left = (w_rows[:, :, None, None] * b).permute(0, 2, 1, 3).reshape(c, d_out, k * r)
    q_l, r_l = torch.linalg.qr(left)  # (c, d_out, m1), (c, m1, k r)
    q_r, r_r = torch.linalg.qr(a.reshape(c, k * r, d_in).mT)  # (c, d_in, m2), (c, m2, k r)
    u, s, vh = torch.linalg.svd(r_l @ r_r.mT, full_matrices=False)
    return q_l @ u, s, vh @ q_r.mT


def _by_degree(w_rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of `w_rows` grouped by their number of nonzero weights: (rows, their nonzero
    columns in order (rows, k)) per group; a row of zeros is in none. A target's SVD then
    reads its neighbours only, so it is the same computation whichever other clients' rows a
    peer holds (p2p: zeros)."""
    nonzero = w_rows != 0
    degree = nonzero.sum(1)
    groups = []
    for k in [k for k in degree.unique().tolist() if k > 0]:
        rows = torch.nonzero(degree == k).flatten()
        cols = torch.nonzero(nonzero[rows])[:, 1].reshape(len(rows), k)
        groups.append((rows, cols))
    return groups


def _rows(w: torch.Tensor, clients: Sequence[int] | None) -> torch.Tensor:
    """The rows of W for `clients` (all rows when None)."""
    return w if clients is None else w[torch.as_tensor(list(clients), dtype=torch.long)]


def product_consensus(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], w: torch.Tensor,
                      targets: Sequence[int]) -> tuple[dict, dict, float]:
    """Product consensus (DeCAF-style): target client i gets the rank-r truncated SVD of its
    mixed product P_i = sum_j W_ij B_j A_j, as B_i = U_r S_r and A_i = V_r^T (orthonormal rows,
    so no direction of A dies when P_i has rank < r). A client whose P_i is zero (B = 0 at the
    start) gets the factor-wise mix instead (A stays at its common initialisation). Returns the
    targets' new A and B rows per layer, and the mean over clients and layers of the relative
    truncation error ||B'_i A'_i - P_i||_F / ||P_i||_F (its cross-term error; clients with
    P_i = 0 left out)."""
    new_a, new_b, errors = {}, {}, []
    device = next(iter(a.values())).device if a else "cpu"
    w_ = _rows(w.to(device, torch.float32), targets)
    groups = _by_degree(w_)  # the same W for every layer
    with torch.no_grad():
        for name in a:
            x, y = a[name].float(), b[name].float()  # (n, r, d_in), (n, d_out, r)
            r = x.shape[1]
            na, nb = torch.einsum("ij,jrd->ird", w_, x), torch.einsum("ij,jor->ior", w_, y)
            for rows, cols in groups:
                u, s, vh = _product_svd(torch.gather(w_[rows], 1, cols), y[cols], x[cols])
                total = s.pow(2).sum(1)
                zero = total == 0  # P_i = 0: the factor-wise mix stays
                keep = ~zero[:, None, None]
                na[rows] = torch.where(keep, vh[:, :r], na[rows])
                nb[rows] = torch.where(keep, u[:, :, :r] * s[:, None, :r], nb[rows])
                errors.append((s[:, r:].pow(2).sum(1)[~zero] / total[~zero]).sqrt())
            new_a[name], new_b[name] = na.to(a[name].dtype), nb.to(b[name].dtype)
    errors = torch.cat(errors) if errors else torch.zeros(0)
    return new_a, new_b, errors.mean().item() if errors.numel() else 0.0
