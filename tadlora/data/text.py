"""Examples in memory (TextData), tokenisation once, and batching: padded collation, each
client's infinite seeded batch stream, and length-sorted evaluation batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class TextData:
    text_a: list[str]
    text_b: list[str] | None  # None for single-sentence tasks
    labels: np.ndarray  # int64 label ids, (N,)
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.text_a)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextData:
        idx = np.asarray(indices, dtype=np.int64)
        text_b = None if self.text_b is None else [self.text_b[i] for i in idx]
        return TextData([self.text_a[i] for i in idx], text_b, self.labels[idx], self.label_names)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[list[int]]  # unpadded, truncated to max_length, with special tokens
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor  # int64 (N,)


def encode(data: TextData, tokenizer: Any, max_length: int) -> Encoded:
    """Tokenise once, unpadded: padding happens per batch in `collate` (cost = token count)."""
    out = tokenizer(data.text_a, data.text_b, truncation=True, max_length=max_length)
    types = out.get("token_type_ids")
    return Encoded(list(out["input_ids"]), None if types is None else list(types),
                   torch.as_tensor(data.labels, dtype=torch.int64))


def share_at_limit(enc: Encoded, max_length: int) -> float:
    """The share of sequences that fill max_length: those truncation cut, and any that fit it
    exactly (an upper bound on the cut ones)."""
    if not enc.input_ids:
        return 0.0
    return float(np.mean([len(ids) >= max_length for ids in enc.input_ids]))


def _pad(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = np.full((len(seqs), width), value, dtype=np.int64)  # (B, T)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return torch.from_numpy(out)


def collate(enc: Encoded, indices: np.ndarray | list[int], pad_id: int,
            pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Batch padded to its longest sequence (or pad_to if larger): ids, mask, types, labels."""
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("collate needs at least one index")
    seqs = [enc.input_ids[i] for i in idx]
    width = max(max(len(s) for s in seqs), pad_to or 0)
    batch = {"input_ids": _pad(seqs, width, pad_id),  # (B, T)
             "attention_mask": _pad([[1] * len(s) for s in seqs], width, 0)}  # (B, T)
    if enc.token_type_ids is not None:
        batch["token_type_ids"] = _pad([enc.token_type_ids[i] for i in idx], width, 0)
    batch["labels"] = enc.labels[idx]  # (B,)
    return batch


def batch_indices(client_indices: np.ndarray, batch_size: int, seed: int, client: int,
                  step: int) -> np.ndarray:
    """The `step`-th batch of a client's infinite shuffled stream (pure, O(n) per call).

    Epoch e is the permutation default_rng([seed, client, e]) of the client's examples; a batch
    crossing an epoch boundary (or larger than the client's set) continues into the next epoch.
    """
    n = len(client_indices)
    if n == 0 or batch_size < 1 or step < 0:
        raise ValueError(f"need examples, batch_size >= 1, step >= 0; got {n}, {batch_size}, "
                         f"{step}")
    positions = step * batch_size + np.arange(batch_size)  # (B,) in the infinite stream
    epochs, offsets = positions // n, positions % n
    out = np.empty(batch_size, dtype=np.asarray(client_indices).dtype)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, client, int(e)]).permutation(n)
        sel = epochs == e
        out[sel] = np.asarray(client_indices)[perm[offsets[sel]]]
    return out


def eval_batches(n: int, batch_size: int, lengths: list[int]) -> list[np.ndarray]:
    """Validation indices sorted longest first (little padding), chunked into batches."""
    if len(lengths) != n or batch_size < 1:
        raise ValueError(f"need len(lengths) == n ({len(lengths)} vs {n}) and batch_size >= 1")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
