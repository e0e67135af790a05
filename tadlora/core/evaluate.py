"""Evaluation: each client's own model on the validation set, and the averaged adapter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.text import Encoded, collate, eval_batches
from . import lora, membership, packing
from .precision import autocast
from .train import groups

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EvalSet:
    """The validation examples (tokenised once), the pad id and the evaluation batch size."""

    data: Encoded
    pad_id: int
    batch_size: int

    def __len__(self) -> int:
        return len(self.data.labels)

    def batches(self) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(model inputs, labels) of length-bucketed batches (little padding)."""
        lengths = [len(ids) for ids in self.data.input_ids]
        for idx in eval_batches(len(lengths), self.batch_size, lengths):
            batch = collate(self.data, idx, self.pad_id)
            yield batch, batch.pop("labels")


@dataclass(frozen=True)
class TensorEvalSet:
    """Validation examples that are already tensors: inputs[key] (N, ...) and labels (N,)."""

    inputs: Batch
    labels: torch.Tensor
    batch_size: int

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self) -> Iterator[tuple[Batch, torch.Tensor]]:
        for i in range(0, len(self.labels), self.batch_size):
            yield ({k: v[i:i + self.batch_size] for k, v in self.inputs.items()},
                   self.labels[i:i + self.batch_size])


# token rows of one evaluation forward when per_forward is 0: a forward whose activations fit
# the CPU's caches runs faster per example (measured with MiniLM on a 2-core Xeon: 64 sentences
# x 2 clients per forward evaluated 1.4x faster than x 10 clients; benchmarks/bench_engine.py)
EVAL_TOKENS = 4096
# evaluation batches are length-sorted, so they carry little padding, and packing one costs
# more than the padding it saves (measured as above): pack only batches with more padding
EVAL_MIN_PADDING = 0.2


def _clients_per_forward(batch: Batch) -> int:
    """How many clients share a forward of this batch: as many as fit EVAL_TOKENS (all when
    the batch has no token mask, e.g. the testbed's vectors)."""
    if "attention_mask" not in batch:
        return 0
    return max(1, EVAL_TOKENS // max(1, int(batch["attention_mask"].sum())))


@torch.inference_mode()
def scores(model: nn.Module, val: EvalSet | TensorEvalSet, n_clients: int, precision: str,
           device: torch.device, per_forward: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Validation accuracy and mean cross-entropy of every client's own model, (n_clients,)
    each. A group of clients runs the same batch in one forward pass (the batch repeated once
    per client): `per_forward` clients, or 0 = as many as EVAL_TOKENS allows."""
    model.eval()
    correct, loss = torch.zeros(n_clients), torch.zeros(n_clients, dtype=torch.float64)
    for batch, labels in val.batches():
        labels = labels.to(device)
        for group in groups(n_clients, per_forward or _clients_per_forward(batch)):
            g = group.stop - group.start
            inputs = {k: v.to(device).repeat(g, *([1] * (v.dim() - 1))) for k, v in batch.items()}
            with lora.select(model, group), autocast(device, precision):
                logits = packing.logits(model, inputs, g, min_padding=EVAL_MIN_PADDING).float()
            pred = logits.argmax(-1).view(g, -1)  # (g, batch)
            correct[group] += (pred == labels).sum(1).float().cpu()
            ce = nn.functional.cross_entropy(logits, labels.repeat(g), reduction="none")
            loss[group] += ce.view(g, -1).sum(1).double().cpu()
    return (correct / len(val)).numpy(), (loss / len(val)).numpy()


def accuracies(model: nn.Module, val: EvalSet | TensorEvalSet, n_clients: int,
               precision: str, device: torch.device, per_forward: int = 0) -> np.ndarray:
    """Validation accuracy of every client's own model, (n_clients,)."""
    return scores(model, val, n_clients, precision, device, per_forward)[0]


@contextmanager
def in_slot(model: nn.Module, values: dict[str, torch.Tensor], slot: int = 0) -> Iterator[int]:
    """Temporarily put `values` (one client's tensors, named as lora.state names them) into
    client `slot`, restored afterwards, so they can be evaluated like a client."""
    tensors = lora.state(model)
    saved = {k: tensors[k][slot].detach().clone() for k in values}
    with torch.no_grad():
        for k, v in values.items():
            tensors[k][slot] = v
    try:
        yield slot
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                tensors[k][slot] = v


def averaged(model: nn.Module, slot: int = 0, present: list[int] | None = None):
    """`in_slot` with the client-average (over `present`, default all) of every per-client
    tensor: the averaged adapter."""
    with torch.no_grad():
        mean = {k: (t if present is None else t[present]).mean(0)
                for k, t in lora.state(model).items()}
    return in_slot(model, mean, slot)


def summarize(acc: np.ndarray) -> dict[str, float]:
    """mean, std, min and max of the per-client accuracies."""
    return {"mean": float(acc.mean()), "std": float(acc.std()),
            "min": float(acc.min()), "max": float(acc.max())}


def report(acc: np.ndarray, averaged_acc: float, loss: np.ndarray,
           gone: frozenset[int] = frozenset()) -> dict:
    """The evaluation record of a round: per-client accuracies, their aggregates, the averaged
    adapter's accuracy, and the clients' validation cross-entropy (each and mean). Departed
    clients (`gone`) are evaluated as they left, listed, and kept out of the aggregates."""
    here = membership.present(len(acc), gone)
    out = {"client_acc": acc.round(5).tolist(), **summarize(acc[here]),
           "averaged_adapter_acc": float(averaged_acc),
           "client_val_loss": loss.round(6).tolist(), "val_loss": float(loss[here].mean())}
    return {**out, "departed": sorted(gone)} if gone else out
