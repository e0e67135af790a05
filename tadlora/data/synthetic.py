"""The synthetic testbed task: a small frozen network, client-specific low-rank teachers, and
every client's data drawn from its own teacher (data.source=synthetic).

The network (`TinyNet`) maps x in R^dim through two adapted linear layers, `query`
(dim -> hidden) and `value` (hidden -> hidden), each followed by tanh, to a frozen linear
`classifier` (hidden -> classes): the names match the default model.target_modules and
model.head_modules, so the stacked LoRA and every method run on it unchanged. Client i's
teacher is the same network with low-rank changes to both adapted layers,

    W_i = W_0 + D_common + heterogeneity * D_i,   rank(D_common) = rank(D_i) = `rank`,

each D of Frobenius norm `scale` * ||W_0||_F. heterogeneity 0 gives every client the same
teacher (iid targets); the partition (label_skew, dirichlet, iid) sets each client's class
proportions, by rejection sampling x ~ N(0, I) under its own teacher. A label is the argmax of
the teacher's logits (temperature 0) or drawn from their softmax at `temperature`.

The task (the base network, the teachers and the validation sample) is a pure function of
`task_seed`, never of run.seed: seeds vary only the training (partition draws, batches, LoRA
init). The validation set is `val_per_client` examples from each client's distribution, so
scoring a client's model on all of it is scoring it on the global objective (the average of all
clients' distributions), on a large fixed sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .partition import dirichlet_proportions, label_skew_proportions

NAME = "synthetic"  # the data.source value


def not_text(path: str | None, task: str | None, val_size: int, seed: int):
    """data.source=synthetic in the text-source registry: its data are generated per client
    (tadlora.runs.build), not loaded as text."""
    raise ValueError("data.source=synthetic is a generated task, not a text corpus: build it "
                     "with tadlora.build(cfg) (its data depend on clients.n and [synthetic])")


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """[synthetic] in a config: the task's sizes, teachers and validation sample."""

    dim: int = 32
    hidden: int = 32
    classes: int = 4
    rank: int = 2
    scale: float = 1.0
    heterogeneity: float = 0.5
    temperature: float = 0.0
    val_per_client: int = 500
    task_seed: int = 0


@dataclass(frozen=True)
class Output:
    logits: torch.Tensor


class TinyNet(nn.Module):
    """x -> tanh(query x) -> tanh(value .) -> classifier: the frozen base the LoRA adapts."""

    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, hidden, bias=False)
        self.value = nn.Linear(hidden, hidden, bias=False)
        self.classifier = nn.Linear(hidden, classes, bias=False)

    def forward(self, x: torch.Tensor) -> Output:
        return Output(self.classifier(torch.tanh(self.value(torch.tanh(self.query(x))))))


def _gaussian(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return rng.normal(0.0, std, size=shape)


def _low_rank(rng: np.random.Generator, shape: tuple[int, int], rank: int,
              norm: float) -> np.ndarray:
    """A random rank-`rank` matrix of Frobenius norm `norm`."""
    d = _gaussian(rng, (shape[0], rank), 1.0) @ _gaussian(rng, (rank, shape[1]), 1.0)
    return d * (norm / max(np.linalg.norm(d), 1e-12))


@dataclass(frozen=True)
class Task:
    """The base network's weights and every client's teacher weights (numpy, float64)."""

    base: dict[str, np.ndarray]  # "query", "value", "classifier"
    teachers: list[dict[str, np.ndarray]]  # per client: "query", "value"
    spec: TaskSpec

    def logits(self, client: int, x: np.ndarray) -> np.ndarray:
        t = self.teachers[client]
        return np.tanh(np.tanh(x @ t["query"].T) @ t["value"].T) @ self.base["classifier"].T

    def labels(self, client: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = self.logits(client, x)
        if self.spec.temperature <= 0:
            return z.argmax(axis=1)
        p = np.exp((z - z.max(axis=1, keepdims=True)) / self.spec.temperature)
        p /= p.sum(axis=1, keepdims=True)
        return (p.cumsum(axis=1) > rng.random((len(z), 1))).argmax(axis=1)


def make_task(spec: TaskSpec, n_clients: int) -> Task:
    """The base network and the n clients' teachers, from spec.task_seed alone."""
    rng = np.random.default_rng([spec.task_seed, 7])
    shapes = {"query": (spec.hidden, spec.dim), "value": (spec.hidden, spec.hidden)}
    base = {k: _gaussian(rng, s, 1.0 / np.sqrt(s[1])) for k, s in shapes.items()}
    base["classifier"] = _gaussian(rng, (spec.classes, spec.hidden), 1.0 / np.sqrt(spec.hidden))
    size = {k: spec.scale * np.linalg.norm(base[k]) for k in shapes}
    common = {k: _low_rank(rng, s, spec.rank, size[k]) for k, s in shapes.items()}
    teachers = []
    for _ in range(n_clients):
        own = {k: _low_rank(rng, s, spec.rank, size[k]) for k, s in shapes.items()}
        teachers.append({k: base[k] + common[k] + spec.heterogeneity * own[k] for k in shapes})
    return Task(base, teachers, spec)


def base_model(task: Task) -> TinyNet:
    """The frozen base network (fp32) with the task's base weights."""
    s = task.spec
    net = TinyNet(s.dim, s.hidden, s.classes)
    with torch.no_grad():
        for name in ("query", "value", "classifier"):
            getattr(net, name).weight.copy_(torch.as_tensor(task.base[name]))
    return net


def draw(task: Task, client: int, counts: np.ndarray, rng: np.random.Generator,
         batch: int = 4096, tries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """`counts[c]` examples of each class c from client `client`'s teacher, by rejection
    sampling x ~ N(0, I); (x (m, dim), labels (m,)) in random order."""
    xs, ys = [], []
    left = np.asarray(counts, dtype=np.int64).copy()
    for _ in range(tries):
        if not left.any():
            break
        x = rng.standard_normal((batch, task.spec.dim))
        y = task.labels(client, x, rng)
        for c in np.flatnonzero(left):
            take = np.flatnonzero(y == c)[:left[c]]
            xs.append(x[take])
            ys.append(y[take])
            left[c] -= len(take)
    if left.any():
        raise ValueError(f"synthetic task: client {client}'s teacher gives class(es) "
                         f"{np.flatnonzero(left).tolist()} too rarely to draw {counts.tolist()}; "
                         "use data.partition=iid, fewer synthetic.classes or another "
                         "synthetic.task_seed")
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return x[order], y[order]


def class_frequencies(task: Task, client: int, samples: int = 20000) -> np.ndarray:
    """How often client `client`'s teacher gives each class for x ~ N(0, I) (fixed sample)."""
    rng = np.random.default_rng([task.spec.task_seed, 11, client])
    y = task.labels(client, rng.standard_normal((samples, task.spec.dim)), rng)
    return np.bincount(y, minlength=task.spec.classes) / samples


def class_proportions(scheme: str, n: int, classes: int, seed: int,
                      alpha: float) -> list[np.ndarray | None]:
    """Each client's class proportions under data.partition `scheme` (None: iid, the teacher's
    natural frequencies)."""
    if scheme == "label_skew":
        return list(label_skew_proportions(n, classes))
    if scheme == "dirichlet":
        return list(dirichlet_proportions(n, classes, np.random.default_rng(seed), alpha))
    if scheme == "iid":
        return [None] * n
    raise ValueError(f"data.partition={scheme!r} has no synthetic form yet; use label_skew, "
                     "dirichlet or iid with data.source=synthetic")


def counts_for(props: np.ndarray | None, natural: np.ndarray, total: int) -> np.ndarray:
    """Per-class counts summing to `total`: from `props` (a partition's class proportions), or
    the teacher's natural frequencies when props is None (iid)."""
    p = natural if props is None else np.asarray(props, dtype=float)
    raw = p / p.sum() * total
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[:total - counts.sum()]] += 1
    return counts


@dataclass(frozen=True)
class Split:
    """Every client's training examples (client-major) and the validation set."""

    x: torch.Tensor  # (n, m, dim) float32
    y: torch.Tensor  # (n, m) int64
    val_x: torch.Tensor  # (n * val_per_client, dim)
    val_y: torch.Tensor  # (n * val_per_client,)


def split(task: Task, props: list[np.ndarray | None], per_client: int, seed: int) -> Split:
    """Training data from run seed `seed`, validation data from the task seed: each client's
    examples follow its class proportions `props[i]` (None: its teacher's natural ones)."""
    n, v = len(task.teachers), task.spec.val_per_client
    natural = [class_frequencies(task, i) for i in range(n)]
    train = [draw(task, i, counts_for(props[i], natural[i], per_client),
                  np.random.default_rng([seed, 13, i])) for i in range(n)]
    val = [draw(task, i, counts_for(props[i], natural[i], v),
                np.random.default_rng([task.spec.task_seed, 17, i])) for i in range(n)]

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32)

    return Split(f32(np.stack([x for x, _ in train])),
                 torch.as_tensor(np.stack([y for _, y in train]), dtype=torch.int64),
                 f32(np.concatenate([x for x, _ in val])),
                 torch.as_tensor(np.concatenate([y for _, y in val]), dtype=torch.int64))
