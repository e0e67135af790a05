"""Padding out of the hot path: a padded batch runs through the model as one row of real tokens.

`logits(model, batch, groups)` is the one way a batch goes through a model. For a transformers
encoder that `prepare` has checked, the batch's real tokens are packed into one row (1, T),
T = sum of the lengths, not B x L: every linear layer (frozen and LoRA), LayerNorm, activation
and dropout touches real tokens only. Attention, the one operation that needs the sequences
apart, runs per client on its sequences padded to its longest one (SDPA without dropout;
matmul, softmax and the client's dropout stream with it). A hook on the encoder hands the
classifier every sequence's first token, what BERT-style heads pool. Batches keep their examples.

`prepare` registers this attention with transformers' AttentionInterface and keeps it if the
packed model reproduces its padded logits on a sample batch (with BERT's position ids 0.. or
RoBERTa's padding_idx + 1..); other models run padded batches."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import dropout
from .dropout import streams as _streams

__all__ = ["IMPLEMENTATION", "Layout", "current", "layout", "logits", "packed", "prepare",
           "tokens_executed"]

IMPLEMENTATION = "tadlora_packed"
OFFSET_ATTR = "tadlora_position_offset"  # set on a prepared model: its position-id offset
TOLERANCE = 1e-4  # packed vs padded logits of the check in prepare (fp32)


@dataclass
class Layout:
    """Where sequences and clients sit in one packed row: sequence s starts at token
    starts[s]; client c holds sequences c*b:(c+1)*b and tokens
    token_starts[c]:token_starts[c + 1]."""

    starts: torch.Tensor  # (B,) int64
    groups: int
    token_starts: list[int]  # (g + 1,)
    gather: torch.Tensor  # (g * t_max,) token of each client-padded slot (pads repeat a token)
    scatter: torch.Tensor  # (T,) slot of each token in the client-padded block
    t_max: int
    blocks: list[Block]  # per client: its sequences padded to its longest (dropout's blocks)
    whole: Block  # every sequence padded to the longest: attention without dropout

    @property
    def tokens(self) -> list[int]:
        return np.diff(self.token_starts).tolist()

    @property
    def even(self) -> bool:
        """Every client has the same number of tokens (evaluation: the same batch for all)."""
        return self.t_max * self.groups == self.token_starts[-1]

    def to_clients(self, x: torch.Tensor) -> torch.Tensor:
        """(T, d) -> (g, t_max, d): each client's tokens, padded to the longest client."""
        rows = x if self.even else x.index_select(0, self.gather)
        return rows.view(self.groups, self.t_max, x.shape[-1])

    def from_clients(self, x: torch.Tensor) -> torch.Tensor:
        """(g, t_max, d) -> (T, d)."""
        rows = x.reshape(-1, x.shape[-1])
        return rows if self.even else rows.index_select(0, self.scatter)

    def to(self, device: torch.device) -> Layout:
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return Layout(**{**vars(self), **moved, "blocks": [b.to(device) for b in self.blocks],
                         "whole": self.whole.to(device)})


@dataclass
class Block:
    """Sequences padded to the longest of them (L): where each token goes in the (b, L) block,
    and the additive key mask (b, 1, 1, L): 0 for a real key, -inf for padding."""

    slots: torch.Tensor
    key_bias: torch.Tensor
    width: int

    @classmethod
    def of(cls, lengths: torch.Tensor) -> Block:
        width = int(lengths.max())
        seq = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        pos = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths)
        keys = torch.arange(width)[None, :] < lengths[:, None]  # (b, L)
        bias = torch.zeros(keys.shape).masked_fill(~keys, float("-inf"))[:, None, None, :]
        return cls(seq * width + pos, bias, width)

    def to(self, device: torch.device) -> Block:
        return Block(self.slots.to(device), self.key_bias.to(device), self.width)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(t, H, dh) of the block's tokens -> (b, H, L, dh), zeros in the padding (a view of
        a (b, L, H, dh) tensor: tokens stay rows, as the linear layers wrote them)."""
        _, h, dh = x.shape
        out = x.new_zeros(len(self.key_bias) * self.width, h, dh).index_copy(0, self.slots, x)
        return out.view(-1, self.width, h, dh).transpose(1, 2)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(b, H, L, dh) -> (t, H, dh)."""
        return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3]).index_select(0, self.slots)


def layout(lengths: torch.Tensor, groups: int) -> Layout:
    """The packed layout of sequences of `lengths`, in `groups` equal client chunks."""
    lengths = lengths.to(torch.int64).cpu()
    if len(lengths) % groups:
        raise ValueError(f"{len(lengths)} sequences do not split into {groups} client groups")
    b = len(lengths) // groups
    starts = torch.cumsum(lengths, 0) - lengths
    counts = lengths.view(groups, b).sum(1).tolist()
    token_starts = [0, *np.cumsum(counts).tolist()]
    t_max = max(counts)
    slot = torch.arange(t_max)
    gather = torch.cat([torch.clamp(slot, max=n - 1) + s
                        for s, n in zip(token_starts, counts, strict=False)])
    scatter = torch.cat([torch.arange(n) + c * t_max for c, n in enumerate(counts)])
    return Layout(starts, groups, token_starts, gather, scatter, t_max,
                  [Block.of(lengths[c * b:(c + 1) * b]) for c in range(groups)],
                  Block.of(lengths))


_current: ContextVar[Layout | None] = ContextVar("tadlora_layout", default=None)


def current() -> Layout | None:  # the packed forward's layout, or None (a padded forward)
    return _current.get()


@contextmanager
def packed(lay: Layout) -> Iterator[Layout]:  # forwards in this block run `lay`
    token = _current.set(lay)
    try:
        yield lay
    finally:
        _current.reset(token)


def _block_attention(q, k, v, block: Block, st: dropout.Streams | None, p: float,
                      scale: float | None) -> torch.Tensor:
    """Attention of a block of sequences: q, k, v are their tokens (t, H, dh). With streams
    (one client's), dropout draws the client's mask (b, H, L_c, L_c) from its stream; without,
    dropout is SDPA's own (torch's RNG)."""
    q, k, v = block.pad(q), block.pad(k), block.pad(v)  # (b, H, L, dh)
    if p > 0 and st is not None:
        scale = scale if scale is not None else q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale + block.key_bias
        probs = dropout.apply(torch.softmax(scores, -1), st, [scores.numel() // block.width], p)
        out = torch.matmul(probs.to(v.dtype), v)
    else:
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=block.key_bias.to(q.dtype), scale=scale, dropout_p=p)
    return block.unpad(out)


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: per client for packed forwards, else SDPA's.
    Returns (1, T, H, dh) for packed forwards."""
    lay = current()
    if lay is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    st = _streams()
    tokens = [x[0].transpose(0, 1) for x in (query, key, value)]  # (T, H, dh), contiguous
    if dropout == 0 or st is None:  # no masks to draw per client: one batched attention
        out = _block_attention(*tokens, lay.whole, None, dropout, scaling)
        return out.unsqueeze(0), None
    parts = zip(*(x.split(lay.tokens) for x in tokens), strict=True)
    out = torch.cat([_block_attention(q, k, v, lay.blocks[c], st.client(c), dropout, scaling)
                     for c, (q, k, v) in enumerate(parts)])
    return out.unsqueeze(0), None  # (T, H, dh) -> (1, T, H, dh)


def _mask(*args, **kwargs):  # transformers mask function: none for packed forwards
    if current() is not None:
        return None
    from transformers.masking_utils import sdpa_mask
    return sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    AttentionInterface.register(IMPLEMENTATION, attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _mask)


def _first_tokens(module, args, output):
    """Encoder hook: in a packed forward, each sequence's first token, (B, 1, d), for the
    classifier's `[:, 0]` pooling; the layout ends: what follows (a pooler) runs as if padded."""
    lay = current()
    if lay is None:
        return output
    _current.set(None)
    first = output[0][0].index_select(0, lay.starts.to(output[0].device)).unsqueeze(1)
    if isinstance(output, tuple):
        return (first, *output[1:])
    output.last_hidden_state = first
    return output


def _encoder(model: nn.Module) -> nn.Module | None:
    base = getattr(model, "base_model", None)
    return next((getattr(base, n) for n in ("encoder", "transformer")
                 if isinstance(getattr(base, n, None), nn.Module)), None)


def pack(batch: dict[str, torch.Tensor], groups: int, offset: int
         ) -> tuple[dict[str, torch.Tensor], Layout]:
    """A padded batch (input_ids, attention_mask, maybe token_type_ids) -> packed inputs."""
    mask = batch["attention_mask"].bool()
    lay = layout(mask.sum(1), groups).to(mask.device)
    inputs = {k: v[mask][None] for k, v in batch.items() if k != "attention_mask"}
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)[mask][None]
    inputs["position_ids"] = pos + offset
    return inputs, lay


def logits(model: nn.Module, batch: dict[str, torch.Tensor], groups: int,
           seeds: Sequence[int] | None = None, min_padding: float = 0.0) -> torch.Tensor:
    """The model's logits for a batch of `groups` equal client chunks, packed if the model was
    prepared for it and more than `min_padding` of the batch is padding; dropout draws from
    the clients' streams when `seeds` are given."""
    streams = None if seeds is None else dropout.Streams.from_seeds(seeds)
    if not _packs(model, batch, min_padding):
        with dropout.using(streams):
            return model(**batch).logits
    inputs, lay = pack(batch, groups, getattr(model, OFFSET_ATTR))
    with packed(lay), dropout.using(streams, lay.tokens):
        return model(**inputs).logits


def _packs(model: nn.Module, batch: dict[str, torch.Tensor], min_padding: float) -> bool:
    if getattr(model, OFFSET_ATTR, None) is None or "attention_mask" not in batch:
        return False
    mask = batch["attention_mask"]
    return min_padding <= 0 or float(mask.sum()) < (1 - min_padding) * mask.numel()


def tokens_executed(model: nn.Module, batch: dict[str, torch.Tensor],
                    min_padding: float = 0.0) -> int:
    """Token rows a forward of `batch` sends through the model's linear layers."""
    if _packs(model, batch, min_padding):
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


@torch.no_grad()
def _reproduces(model: nn.Module, sample: dict[str, torch.Tensor], offset: int) -> bool:
    setattr(model, OFFSET_ATTR, offset)
    try:
        got = logits(model, sample, 1)
    except Exception:  # a model whose code does not take packed rows: it stays padded
        return False
    finally:
        delattr(model, OFFSET_ATTR)
    with dropout.using(None):
        want = model(**sample).logits
    return got.shape == want.shape and bool(torch.allclose(got, want, atol=TOLERANCE, rtol=0))


def prepare(model: nn.Module, sample: dict[str, torch.Tensor]) -> bool:
    """Give `model` per-client dropout streams and, if it reproduces its padded logits on
    `sample` (a padded batch of a few sequences) when packed, packed forwards. Returns whether
    it packs."""
    dropout.replace_dropouts(model)
    encoder = _encoder(model)
    config = getattr(model, "config", None)
    if encoder is None or config is None or not hasattr(model, "set_attn_implementation"):
        return False
    previous = config._attn_implementation
    _register()
    try:
        model.set_attn_implementation(IMPLEMENTATION)
    except (ValueError, ImportError, NotImplementedError):  # this model cannot take it
        return False
    hook = encoder.register_forward_hook(_first_tokens)
    training = model.training
    model.eval()
    pad_id = getattr(config, "pad_token_id", None)
    offsets = [0] + ([pad_id + 1] if pad_id is not None else [])
    found = next((o for o in offsets if _reproduces(model, sample, o)), None)
    model.train(training)
    if found is None:
        hook.remove()
        model.set_attn_implementation(previous)
        warnings.warn(f"{type(model).__name__} does not give its padded logits when packed "
                      "(core/packing.py); it runs padded batches, correct but slower",
                      RuntimeWarning, stacklevel=2)
        return False
    setattr(model, OFFSET_ATTR, found)
    return True
