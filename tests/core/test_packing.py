"""Packed forwards (real tokens only) give the padded model's logits and gradients; per-client
dropout streams make a client's masks independent of its forward group."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from tadlora.core import dropout, lora, packing
from tadlora.core.precision import autocast, cast_frozen
from tests.conftest import tiny_bert
from tests.core.test_lora import randomize, spec

N = 3  # clients


def ragged(rows=6, seed=0, pad_id=0):
    """A padded batch of `rows` sequences of different lengths (2..11 tokens)."""
    gen = np.random.default_rng(seed)
    lengths = gen.integers(2, 12, rows)
    lengths[0] = 11
    ids = torch.full((rows, 11), pad_id)
    mask = torch.zeros(rows, 11, dtype=torch.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.as_tensor(gen.integers(1000, 2000, n))
        mask[i, :n] = 1
    types = (torch.arange(11)[None] >= 4).long() * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@contextmanager
def patched(module, **values):
    old = {k: getattr(module, k) for k in values}
    vars(module).update(values)
    try:
        yield
    finally:
        vars(module).update(old)


def stacked_bert(dropout_p=0.0, prepare=True, **spec_kw):
    model = tiny_bert()
    if not dropout_p:
        model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    lora.inject(model, N, spec(dropout=dropout_p, **spec_kw), seed=0)
    randomize(model)
    if prepare:
        assert packing.prepare(model, ragged(4, seed=9))
    return model


def grads(model):
    return torch.cat([p.grad.flatten() for ps in lora.factors(model).values()
                      for p in ps.values() if p.grad is not None])


def assert_packed_equals_padded(packed, padded):
    """The same batch through both models: equal logits and factor gradients."""
    batch, out = ragged(2 * N), {}
    for name, model in (("packed", packed), ("padded", padded)):
        with lora.select(model, slice(0, N)):
            logits = packing.logits(model, batch, N)
        logits.pow(2).sum().backward()
        out[name] = logits, grads(model)
    torch.testing.assert_close(out["packed"][0], out["padded"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["packed"][1], out["padded"][1], atol=1e-5, rtol=1e-4)


def test_packed_logits_and_gradients_equal_padded():
    assert_packed_equals_padded(stacked_bert(), stacked_bert(prepare=False))


def test_packing_executes_only_real_tokens():
    model, batch = stacked_bert(), ragged(2 * N)
    assert packing.tokens_executed(model, batch) == int(batch["attention_mask"].sum())
    assert packing.tokens_executed(stacked_bert(prepare=False), batch) == batch["input_ids"].numel()
    lay = packing.layout(batch["attention_mask"].sum(1), N)
    assert lay.tokens == batch["attention_mask"].view(N, -1).sum(1).tolist()
    x = torch.randn(sum(lay.tokens), 5)
    torch.testing.assert_close(lay.from_clients(lay.to_clients(x)), x, atol=0, rtol=0)


def test_a_model_that_does_not_pack_stays_padded():
    model = stacked_bert(prepare=False)
    model.base_model.encoder = None  # no encoder to hook: packing cannot pool
    assert not packing.prepare(model, ragged(4))
    assert getattr(model, packing.OFFSET_ATTR, None) is None


def test_a_clients_dropout_does_not_depend_on_its_forward_group():
    """Client c's logits are the same whether it runs alone or with the others (packed: a
    padded model's attention dropout is torch's, drawn for the whole batch)."""
    model = stacked_bert(dropout_p=0.1).train()
    batch = ragged(2 * N)
    seeds = dropout.client_seeds(7, 3, 1, range(N))
    with lora.select(model, slice(0, N)):
        together = packing.logits(model, batch, N, seeds)
    for c in range(N):
        rows = {k: v[2 * c:2 * c + 2] for k, v in batch.items()}
        with lora.select(model, slice(c, c + 1)):
            alone = packing.logits(model, rows, 1, seeds[c:c + 1])
        torch.testing.assert_close(alone, together[2 * c:2 * c + 2], atol=1e-5, rtol=1e-4)
    with lora.select(model, slice(0, N)):  # a new draw differs: dropout is on
        other = packing.logits(model, batch, N, dropout.client_seeds(7, 3, 2, range(N)))
    assert not torch.allclose(other, together)


def test_stream_dropout_keeps_1_minus_p_and_the_mean():
    st = dropout.Streams.from_seeds([1, 2])
    x = torch.ones(2000, 300)
    with dropout.using(st):
        y = dropout.dropout(x, 0.1, True)
    assert abs(float((y == 0).float().mean()) - 0.1) < 0.003
    assert abs(float(y.mean()) - 1.0) < 0.005
    with dropout.using(dropout.Streams.from_seeds([1, 2])):
        torch.testing.assert_close(dropout.dropout(x, 0.1, True), y, atol=0, rtol=0)
    assert torch.equal(dropout.dropout(x, 0.1, False), x)


def test_client_seeds_are_pure_and_distinct():
    a = dropout.client_seeds(0, 5, 1, range(4))
    assert a == dropout.client_seeds(0, 5, 1, range(4))
    assert dropout.client_seeds(0, 5, 1, range(2, 4)) == a[2:]
    assert len(set(a + dropout.client_seeds(0, 6, 1, range(4)))) == 8


def test_frozen_weights_in_bf16_give_the_same_logits_under_autocast():
    model, batch = stacked_bert(), ragged(2 * N)
    dev = torch.device("cpu")
    with torch.no_grad(), lora.select(model, slice(0, N)), autocast(dev, "bf16"):
        before = packing.logits(model, batch, N)
        assert cast_frozen(model, "bf16") > 0
        after = packing.logits(model, batch, N)
    assert model.base_model.encoder.layer[0].attention.self.key.weight.dtype == torch.bfloat16
    assert lora.factors(model)["A"]["bert.encoder.layer.0.attention.self.query"].dtype == \
        torch.float32
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert cast_frozen(stacked_bert(), "fp32") == 0


def test_evaluation_packed_and_in_token_sized_groups_equals_the_padded_one():
    """The evaluation as it was (padded batches, all clients in one forward) and as it is
    (packed, clients grouped to EVAL_TOKENS rows) give the same accuracies and losses."""
    from tadlora.core import evaluate
    from tadlora.data.text import Encoded

    batch = ragged(40, seed=3)
    ids = [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"],
                                                   strict=True)]
    enc = Encoded(ids, [[0] * len(i) for i in ids], torch.arange(40) % 2)
    val = evaluate.EvalSet(enc, 0, 16)
    dev = torch.device("cpu")
    before = evaluate.scores(stacked_bert(prepare=False), val, N, "fp32", dev, per_forward=N)
    for tokens, padding in ((100, 0.0), (evaluate.EVAL_TOKENS, evaluate.EVAL_MIN_PADDING)):
        # 16 sentences of ~7 tokens: one client per forward, every batch packed; the defaults
        with patched(evaluate, EVAL_TOKENS=tokens, EVAL_MIN_PADDING=padding):
            now = evaluate.scores(stacked_bert(), val, N, "fp32", dev)
        np.testing.assert_array_equal(now[0], before[0])
        np.testing.assert_allclose(now[1], before[1], atol=1e-6)
    assert len(set(before[0].round(6))) > 1  # the clients differ: a real comparison


def test_off_the_cpu_each_client_draws_on_the_device_from_its_own_generator():
    """The device path (a GPU's), exercised on the CPU: per-client torch Generators give a
    client the same mask alone or in a group, drop rate p and the exact 1 / (1 - p) scale."""
    cpu = torch.device("cpu")
    both, scale = dropout.Streams.from_seeds([5, 6]).device_keep([3000, 2000], 100, 0.25, cpu)
    alone, _ = dropout.Streams.from_seeds([6]).device_keep([2000], 100, 0.25, cpu)
    assert torch.equal(alone, both[3000:]) and not torch.equal(both[:2000], alone)
    assert abs(float(both.float().mean()) - 0.75) < 0.005 and scale == 1 / 0.75


def test_a_model_whose_packed_logits_differ_is_warned_and_stays_padded(monkeypatch):
    monkeypatch.setattr(packing, "_reproduces", lambda model, sample, offset: False)
    model = stacked_bert(prepare=False)
    with pytest.warns(RuntimeWarning, match="runs padded batches"):
        assert not packing.prepare(model, ragged(4))
    assert model.config._attn_implementation != packing.IMPLEMENTATION


def test_lora_on_the_pooler_packs_and_gives_the_padded_logits_and_gradients():
    """`dense` also names BERT's pooler, which sees one row per sequence after the encoder."""
    targets = ("query", "value", "dense")
    packed = stacked_bert(targets=targets)  # asserts that it packs
    assert isinstance(packed.bert.pooler.dense, lora.LoRALinear)
    assert_packed_equals_padded(packed, stacked_bert(prepare=False, targets=targets))
