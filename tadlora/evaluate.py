"""Evaluation: each client's own model on the validation set, and the averaged adapter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from . import lora
from .data import Encoded, collate, eval_batches
from .train import autocast, groups


@torch.no_grad()
def accuracies(model: nn.Module, val: Encoded, pad_id: int, n_clients: int, batch_size: int,
               precision: str, device: torch.device, per_forward: int = 0) -> np.ndarray:
    """Validation accuracy of every client's own model, (n_clients,). A group of clients runs
    the same length-bucketed batch in one forward pass (the batch repeated once per client)."""
    model.eval()
    correct = torch.zeros(n_clients)
    lengths = [len(ids) for ids in val.input_ids]
    for idx in eval_batches(len(lengths), batch_size, lengths):
        batch = collate(val, idx, pad_id)
        labels = batch.pop("labels").to(device)
        for group in groups(n_clients, per_forward):
            g = group.stop - group.start
            inputs = {k: v.to(device).repeat(g, *([1] * (v.dim() - 1))) for k, v in batch.items()}
            with lora.select(model, group), autocast(device, precision):
                pred = model(**inputs).logits.argmax(-1).view(g, -1)  # (g, batch)
            correct[group] += (pred == labels).sum(1).float().cpu()
    return (correct / len(val.labels)).numpy()


@contextmanager
def averaged(model: nn.Module, slot: int = 0) -> Iterator[int]:
    """Temporarily put the client-average of every per-client tensor into client `slot`
    (restored afterwards), so the averaged adapter can be evaluated like a client."""
    tensors = lora.state(model)
    saved = {k: t[slot].detach().clone() for k, t in tensors.items()}
    with torch.no_grad():
        for t in tensors.values():
            t[slot] = t.mean(0)
    try:
        yield slot
    finally:
        with torch.no_grad():
            for k, t in tensors.items():
                t[slot] = saved[k]


def summarize(acc: np.ndarray) -> dict[str, float]:
    """mean, std, min and max of the per-client accuracies."""
    return {"mean": float(acc.mean()), "std": float(acc.std()),
            "min": float(acc.min()), "max": float(acc.max())}
