"""Partitions of a training set across clients: the paper's label skew (generalised to any
number of clients and classes), Dirichlet(alpha) and iid. All disjoint and seeded."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _even_sizes(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts)]  # earlier parts get the extra


def label_skew_proportions(n_clients: int, n_classes: int) -> np.ndarray:
    """Paper label skew, generalised; (n_clients, n_classes), rows sum to 1.

    k >= 3: client groups dominated by class c (0.9, others 0.1/(k-1)), group sizes split
    n_clients evenly with earlier classes getting the extra (10 clients, 3 classes: 4,3,3).
    k == 2: groups [0.9,0.1], [0.1,0.9], [0.5,0.5]; a single leftover client goes to the
    balanced group, two leftovers to the dominated ones (10 clients: 3,3,4; 2 clients: 1,1,0).
    """
    if n_classes < 2 or n_clients < 1:
        raise ValueError(f"need n_classes >= 2 and n_clients >= 1, got {n_classes}, {n_clients}")
    if n_classes == 2:
        balanced = n_clients // 3 + (n_clients % 3 == 1)
        dominated = (n_clients - balanced) // 2
        rows = [[0.9, 0.1]] * dominated + [[0.1, 0.9]] * dominated + [[0.5, 0.5]] * balanced
        return np.asarray(rows, dtype=np.float64)
    props = np.full((n_clients, n_classes), 0.1 / (n_classes - 1))
    groups = np.repeat(np.arange(n_classes), _even_sizes(n_clients, n_classes))  # (n_clients,)
    props[np.arange(n_clients), groups] = 0.9
    return props


def _round_counts(props: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to `total` closest to props * total (largest remainder)."""
    raw = props * total
    counts = np.floor(raw + 1e-9).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _need(props: np.ndarray, per_client: int) -> np.ndarray:
    """Examples of each class that label skew takes over all clients, (k,)."""
    return sum(_round_counts(p, per_client) for p in props)


def _max_per_client(class_sizes: np.ndarray, props: np.ndarray) -> int:
    """Largest per-client size for which no class runs out (and clients stay disjoint)."""
    per = min(int(class_sizes.sum()) // len(props),
              int(np.min(class_sizes / np.maximum(props.sum(0), 1e-12))))
    while per > 0 and np.any(_need(props, per) > class_sizes):
        per -= 1
    return per


def _draw(labels: np.ndarray, props: np.ndarray, per_client: int, rng: np.random.Generator,
          fill: bool) -> list[np.ndarray]:
    """Disjoint client index sets following per-client class proportions props (n, k)."""
    k = props.shape[1]
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(k)]
    parts = []
    for client, p in enumerate(props):
        want = _round_counts(p, per_client)  # (k,)
        have = np.array([len(pool) for pool in pools])
        take = np.minimum(want, have)
        short = per_client - int(take.sum())
        if short > have.sum() - take.sum():
            raise ValueError(f"not enough examples for client {client}: set a smaller "
                             "data.examples_per_client")
        if short:  # uniform draw from what is left of the other classes
            take += rng.multivariate_hypergeometric(have - take, short)
        chunks = [pool[:t] for pool, t in zip(pools, take, strict=True)]
        pools = [pool[t:] for pool, t in zip(pools, take, strict=True)]
        parts.append(np.sort(np.concatenate(chunks)))
    return parts


def _n_classes(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if len(labels) else 0


def _skewed(labels: np.ndarray, props: np.ndarray, rng: np.random.Generator,
            per_client: int | None, fill: bool) -> list[np.ndarray]:
    sizes = np.bincount(labels, minlength=props.shape[1])
    if per_client is None:
        per_client = len(labels) // len(props) if fill else _max_per_client(sizes, props)
        if per_client < 1:
            raise ValueError(f"too few examples per class ({sizes.tolist()}) for {len(props)} "
                             "clients under label skew")
    elif not fill:
        _check_fits(sizes, props, per_client)
    return _draw(labels, props, per_client, rng, fill)


def _check_fits(sizes: np.ndarray, props: np.ndarray, per_client: int) -> None:
    """Label skew takes each class's share exactly: say which class is short and what fits."""
    need = _need(props, per_client)
    if np.all(need <= sizes):
        return
    c = int(np.argmax(need > sizes))
    most = _max_per_client(sizes, props)
    fix = (f"set data.examples_per_client to {most} or less, or use fewer clients" if most
           else "use fewer clients or more data")
    raise ValueError(f"label skew over {len(props)} clients x {per_client} examples needs "
                     f"{need[c]} of class {c}, and the training set has {sizes[c]}: {fix}")


def _label_skew(labels: np.ndarray, n_clients: int, rng: np.random.Generator, alpha: float,
                per_client: int | None) -> list[np.ndarray]:
    props = label_skew_proportions(n_clients, _n_classes(labels))
    return _skewed(labels, props, rng, per_client, fill=False)


def dirichlet_proportions(n_clients: int, n_classes: int, rng: np.random.Generator,
                          alpha: float) -> np.ndarray:
    """Each client's class proportions ~ Dir(alpha), (n_clients, n_classes)."""
    return rng.dirichlet(np.full(n_classes, alpha), size=n_clients)


def _dirichlet(labels: np.ndarray, n_clients: int, rng: np.random.Generator, alpha: float,
               per_client: int | None) -> list[np.ndarray]:
    """Proportions ~ Dir(alpha); an exhausted class is made up from the rest (never fails)."""
    props = dirichlet_proportions(n_clients, _n_classes(labels), rng, alpha)
    return _skewed(labels, props, rng, per_client, fill=True)


def _iid(labels: np.ndarray, n_clients: int, rng: np.random.Generator, alpha: float,
         per_client: int | None) -> list[np.ndarray]:
    per_client = len(labels) // n_clients if per_client is None else per_client
    if per_client * n_clients > len(labels):
        raise ValueError(f"{n_clients} x {per_client} examples exceed the {len(labels)} "
                         "available: set a smaller data.examples_per_client")
    perm = rng.permutation(len(labels))
    return [np.sort(perm[i * per_client:(i + 1) * per_client]) for i in range(n_clients)]


Partitioner = Callable[[np.ndarray, int, np.random.Generator, float, int | None],
                       list[np.ndarray]]
PARTITIONS: dict[str, Partitioner] = {"label_skew": _label_skew, "dirichlet": _dirichlet,
                                      "iid": _iid}


def partition(labels: np.ndarray, n_clients: int, scheme: str, seed: int, alpha: float = 0.5,
              examples_per_client: int | None = None) -> list[np.ndarray]:
    """Disjoint, sorted train-set indices per client.

    examples_per_client=None takes as many as possible: len(labels) // n_clients for iid and
    dirichlet, and for label_skew the largest size for which no class runs out.
    """
    if scheme not in PARTITIONS:
        raise ValueError(f"unknown partition scheme {scheme!r}; valid: {sorted(PARTITIONS)}")
    if n_clients < 1 or (examples_per_client is not None and examples_per_client < 1):
        raise ValueError(f"need n_clients >= 1 and examples_per_client >= 1, got "
                         f"{n_clients}, {examples_per_client}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return PARTITIONS[scheme](labels, n_clients, rng, alpha, examples_per_client)


def label_counts(labels: np.ndarray, parts: list[np.ndarray]) -> list[list[int]]:
    """Per-client label counts, (n_clients, n_classes) as lists (for logging)."""
    labels = np.asarray(labels)
    k = _n_classes(labels)
    return [np.bincount(labels[p], minlength=k).tolist() for p in parts]
