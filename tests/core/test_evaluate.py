"""Evaluation: every client's accuracy, counted by hand one example at a time."""

import pytest
import torch

from tadlora.core import lora
from tadlora.core.evaluate import EvalSet, accuracies, averaged
from tadlora.data.text import Encoded
from tests.conftest import tiny_bert
from tests.core.test_lora import randomize, stacked

CPU = torch.device("cpu")


def model_of_3_clients():
    """The tiny BERT for 3 clients, each with its own random factors and head, its weights
    scaled up so that the predictions depend on the input (a random BERT's barely do)."""
    base = tiny_bert()
    with torch.no_grad():
        base.bert.embeddings.word_embeddings.weight.mul_(10)
        for m in base.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(10)
    model = stacked(base, n=3, train_head=True).eval()
    randomize(model, seed=2)
    return model


def examples(n=12, seed=0):
    """Token ids of varied lengths (so evaluation batches are padded), no labels yet."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 10, (n,), generator=g).tolist()
    return [[101, *torch.randint(1000, 3000, (k - 2,), generator=g).tolist(), 102]
            for k in lengths]


def by_hand(model, ids, labels, n_clients):
    """Each client's accuracy: one example at a time, unpadded, argmax of its own logits."""
    acc, margins = [], []
    with torch.no_grad():
        for c in range(n_clients):
            right = 0
            for seq, label in zip(ids, labels, strict=True):
                with lora.select(model, slice(c, c + 1)):
                    logits = model(input_ids=torch.tensor([seq])).logits[0]
                right += int(logits.argmax()) == label
                margins.append(float((logits[0] - logits[1]).abs()))
            acc.append(right / len(ids))
    return acc, min(margins)


@pytest.mark.parametrize("per_forward", [0, 1, 2])
def test_accuracies_equal_a_count_by_hand(per_forward):
    model = model_of_3_clients()
    ids = examples()
    labels = [1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1]
    want, margin = by_hand(model, ids, labels, 3)
    assert margin > 1e-3  # no near-tie that padding could flip
    assert len(set(want)) == 3  # the clients differ: a mix-up of clients would show
    assert 0 < min(want) and max(want) < 1  # and each is right on some examples, not all
    val = EvalSet(Encoded(ids, None, torch.tensor(labels)), pad_id=0, batch_size=4)
    got = accuracies(model, val, 3, "fp32", CPU, per_forward)
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_averaged_adapter_is_the_mean_of_the_clients_and_is_put_back():
    model = model_of_3_clients()
    before = {k: v.detach().clone() for k, v in lora.state(model).items()}
    ids = examples()
    labels = [1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1]
    with averaged(model):
        assert all(torch.allclose(v[0], before[k].mean(0)) for k, v in lora.state(model).items())
        want, _ = by_hand(model, ids, labels, 1)
        got = accuracies(model, EvalSet(Encoded(ids, None, torch.tensor(labels)), 0, 4), 1,
                         "fp32", CPU)
        assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in lora.state(model).items())
