import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from tadlora.core import lora

TARGETS = ["query", "value"]


def spec(r=4, alpha=8.0, dropout=0.0, train_head=False, targets=TARGETS):
    return lora.LoRASpec(r=r, alpha=alpha, dropout=dropout, targets=tuple(targets),
                         head="trained" if train_head else "frozen", head_modules=("classifier",))


def stacked(model, n=3, r=4, alpha=8.0, dropout=0.0, seed=0, train_head=False):
    return lora.inject(model, n, spec(r, alpha, dropout, train_head), seed)


def randomize(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ps in lora.factors(model).values():
            for p in ps.values():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def batch(n_rows=4, length=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n_rows, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def peft_model_for(base, model, client, r=4, alpha=8.0):
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha,
                                                        target_modules=TARGETS, lora_dropout=0.0,
                                                        task_type="SEQ_CLS"))
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, lora.LoRALinear):
                pl = pm.base_model.model.get_submodule(name)
                pl.lora_A["default"].weight.copy_(m.A[client])
                pl.lora_B["default"].weight.copy_(m.B[client])
    return pm.eval()


def test_same_seeded_init_on_every_client_and_b_zero(tiny_model):
    model = stacked(tiny_model)
    for a in lora.factors(model)["A"].values():
        assert torch.equal(a[0], a[1]) and torch.equal(a[0], a[2]) and a.abs().sum() > 0
    for b in lora.factors(model)["B"].values():
        assert b.abs().sum() == 0
    other = stacked(copy.deepcopy(tiny_model).__class__(tiny_model.config), seed=1)
    a0 = next(iter(lora.factors(model)["A"].values()))
    a1 = next(iter(lora.factors(other)["A"].values()))
    assert not torch.equal(a0, a1)


def test_only_factors_trainable(tiny_model):
    model = stacked(tiny_model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable)


def test_unknown_target_fails_with_names(tiny_model):
    with pytest.raises(ValueError, match="matches no linear layer"):
        lora.inject(tiny_model, 2, spec(targets=["nope"]), 0)


@pytest.mark.parametrize("client", [0, 2])
def test_matches_peft_logits(tiny_model, client):
    base = copy.deepcopy(tiny_model)
    model = stacked(tiny_model).eval()
    randomize(model)
    x = batch()
    with lora.select(model, slice(client, client + 1)), torch.no_grad():
        ours = model(**x).logits
    ref = peft_model_for(base, model, client)(**x).logits
    assert (ours - ref).abs().max().item() <= 1e-5


def test_group_forward_equals_per_client_forward(tiny_model):
    model = stacked(tiny_model, train_head=True).eval()
    randomize(model)
    x = batch(n_rows=6)  # 2 rows per client
    with lora.select(model, slice(0, 3)), torch.no_grad():
        grouped = model(**x).logits
    for c in range(3):
        rows = {k: v[2 * c:2 * c + 2] for k, v in x.items()}
        with lora.select(model, slice(c, c + 1)), torch.no_grad():
            alone = model(**rows).logits
        assert torch.allclose(grouped[2 * c:2 * c + 2], alone, atol=1e-6)


def test_index_tensor_selection_and_gradients_land_in_own_slice(tiny_model):
    model = stacked(tiny_model)
    randomize(model)
    x = batch(n_rows=4)
    with lora.select(model, torch.tensor([2, 0])):
        model(**x).logits.sum().backward()
    for b in lora.factors(model)["B"].values():
        assert b.grad[1].abs().sum() == 0 and b.grad[0].abs().sum() > 0
        assert b.grad[2].abs().sum() > 0


def test_trained_head_is_per_client(tiny_model):
    model = stacked(tiny_model, train_head=True)
    head = lora.factors(model)["head"]
    assert set(head) == {"classifier.weight", "classifier.bias"}
    assert head["classifier.weight"].shape == (3, 2, 32)
    assert isinstance(model.classifier, lora.StackedLinear)


def test_bad_group_size_is_reported(tiny_model):
    model = stacked(tiny_model)
    with lora.select(model, slice(0, 3)), pytest.raises(ValueError, match="client groups"):
        model(**batch(n_rows=4))


def test_state_roundtrip_and_mismatch(tiny_model):
    model = stacked(tiny_model, train_head=True)
    randomize(model)
    saved = {k: v.detach().clone() for k, v in lora.state(model).items()}
    other = stacked(tiny_bert_like(tiny_model), train_head=True)
    lora.load_state(other, saved)
    assert all(torch.equal(lora.state(other)[k], v) for k, v in saved.items())
    with pytest.raises(ValueError, match="saved shape"):
        lora.load_state(stacked(tiny_bert_like(tiny_model), n=2, train_head=True), saved)
    with pytest.raises(ValueError, match="missing"):
        lora.load_state(stacked(tiny_bert_like(tiny_model)), saved)


def tiny_bert_like(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).__class__(model.config)
