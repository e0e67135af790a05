import numpy as np
import torch

from tadlora.core import lora, train
from tests.conftest import tiny_bert

CPU = torch.device("cpu")


def no_dropout_model(n=3, seed=0, train_head=True):
    m = tiny_bert(seed=seed)
    m.config.hidden_dropout_prob = 0.0
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    spec = lora.LoRASpec(r=4, alpha=8.0, dropout=0.0, targets=("query", "value"),
                         head="trained" if train_head else "frozen", head_modules=("classifier",))
    return lora.inject(m, n, spec, 0)


def local(steps, clip=1.0, precision="fp32", per_forward=0):
    return train.LocalSpec(steps=steps, lr=1e-2, clip_norm=clip, precision=precision,
                           device=CPU, per_forward=per_forward)


def batch_fn(rows_per_client=4, length=6):
    def make(k, clients):
        g = torch.Generator().manual_seed(k)
        n = rows_per_client * 3
        ids = torch.randint(1000, 3000, (n, length), generator=g)
        labels = torch.randint(0, 2, (n,), generator=g)
        sl = slice(clients.start * rows_per_client, clients.stop * rows_per_client)
        return {"input_ids": ids[sl], "attention_mask": torch.ones_like(ids[sl]),
                "labels": labels[sl]}
    return make


def run(model, per_forward, kinds=("A", "B", "head"), steps=3, clip=1.0):
    train.set_trainable(model, kinds)
    opt = train.make_optimizer(model, 1e-2, 0.01)
    loss = train.local_round(model, opt, batch_fn(), 3,
                             local(steps, clip, per_forward=per_forward))
    return loss, opt


def test_grouped_forward_trains_exactly_like_one_client_at_a_time():
    m1, m2 = no_dropout_model(), no_dropout_model()
    l1, _ = run(m1, per_forward=0)
    l2, _ = run(m2, per_forward=1)
    assert np.allclose(l1, l2, atol=1e-6)
    for k, v in lora.state(m1).items():
        assert torch.allclose(v, lora.state(m2)[k], atol=1e-6), k


def test_skipped_clients_are_not_computed_and_the_others_train_as_before():
    """Rows `skip` (departed clients) get no batch and no gradient; the others end exactly as
    in a round that computes everyone, with any forward grouping."""
    full, make = no_dropout_model(), batch_fn()
    run(full, per_forward=0)
    for per_forward in (0, 1, 2):
        m, asked = no_dropout_model(), []
        train.set_trainable(m, ("A", "B", "head"))
        train.local_round(m, train.make_optimizer(m, 1e-2, 0.01),
                          lambda k, c, asked=asked: asked.append(c) or make(k, c), 3,
                          local(3, per_forward=per_forward), [1])
        assert all(1 not in range(c.start, c.stop) for c in asked) and asked
        for key, v in lora.state(m).items():
            assert torch.allclose(v[[0, 2]], lora.state(full)[key][[0, 2]], atol=1e-6), key
    assert train.groups(5, 2, [1, 2]) == [slice(0, 1), slice(3, 5)]
    assert train.groups(3, 0, [0, 1, 2]) == []
    m = no_dropout_model()
    before = {k: v.clone() for k, v in lora.state(m).items()}
    train.set_trainable(m, ("A",))
    assert train.local_round(m, train.make_optimizer(m, 1e-2, 0.0), batch_fn(), 3, local(2),
                             [0, 1, 2]).tolist() == [0, 0, 0]
    assert all(torch.equal(v, before[k]) for k, v in lora.state(m).items())


def test_client_training_is_independent_of_other_clients():
    """Client 0 in a federation of 3 trains exactly like client 0 alone would (its slice of
    the stacked AdamW is its own AdamW)."""
    m1, m2 = no_dropout_model(), no_dropout_model()
    run(m1, per_forward=0)
    train.set_trainable(m2, ("A", "B", "head"))
    opt = train.make_optimizer(m2, 1e-2, 0.01)
    make = batch_fn()
    train.local_round(m2, opt, lambda k, c: make(k, slice(0, 1)), 1, local(3))
    for k, v in lora.state(m1).items():
        assert torch.allclose(v[0], lora.state(m2)[k][0], atol=1e-6), k


def test_frozen_factor_does_not_move_even_with_weight_decay_or_old_moments():
    m = no_dropout_model()
    with torch.no_grad():
        for b in lora.factors(m)["B"].values():
            b.normal_(0, 0.1)
    _, opt = run(m, 0, kinds=("A", "B"))  # moments for A and B exist now
    before = {k: v.clone() for k, v in lora.factors(m)["A"].items()}
    train.set_trainable(m, ("B",))
    train.local_round(m, opt, batch_fn(), 3, local(2))
    for k, v in lora.factors(m)["A"].items():
        assert torch.equal(v, before[k])


def test_per_client_clipping():
    p = torch.nn.Parameter(torch.zeros(3, 2, 2))
    p.grad = torch.stack([torch.full((2, 2), 10.0), torch.full((2, 2), 0.1), torch.zeros(2, 2)])
    norms = train.clip_per_client([p], 1.0)
    assert torch.allclose(norms, torch.tensor([20.0, 0.2, 0.0]))
    after = p.grad.flatten(1).norm(dim=1)
    assert torch.allclose(after, torch.tensor([1.0, 0.2, 0.0]), atol=1e-5)


def test_reset_state_forgets_moments():
    m = no_dropout_model()
    _, opt = run(m, 0)
    params = train.set_trainable(m, ("A",))
    assert all(p in opt.state for p in params)
    train.reset_state(opt, params)
    assert not any(p in opt.state for p in params)


def test_training_reduces_loss_on_a_fixed_batch():
    m = no_dropout_model()
    make = batch_fn()
    fixed = lambda k, c: make(0, c)  # noqa: E731
    train.set_trainable(m, ("A", "B", "head"))
    opt = train.make_optimizer(m, 1e-2, 0.0)
    first = train.local_round(m, opt, fixed, 3, local(1, clip=0.0))
    train.local_round(m, opt, fixed, 3, local(30, clip=0.0))
    last = train.local_round(m, opt, fixed, 3, local(1, clip=0.0))
    assert (last < first - 0.1).all()


def test_lr_schedules():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert train.set_lr(opt, "constant", 0.1, 7, 10) == 0.1
    assert train.set_lr(opt, "cosine", 0.1, 0, 10) == 0.1
    assert abs(train.set_lr(opt, "cosine", 0.1, 5, 10) - 0.05) < 1e-12
    last = train.set_lr(opt, "cosine", 0.1, 9, 10)
    assert 0 < last < 0.003 and opt.param_groups[0]["lr"] == last
