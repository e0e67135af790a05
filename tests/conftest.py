"""Shared fixtures: a tiny random BERT built in code, and the packaged tokenizer."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            vocab_size=30522, max_position_embeddings=128)


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(num_labels=num_labels, **TINY)).eval()


@pytest.fixture
def tiny_model():
    return tiny_bert()


def save_tiny(directory, dropout: bool = True) -> str:
    """The tiny random BERT (optionally without dropout) saved with the packaged tokenizer."""
    from transformers import AutoTokenizer

    from tadlora.runs.model import model_path

    m = tiny_bert()
    if not dropout:
        m.config.hidden_dropout_prob = m.config.attention_probs_dropout_prob = 0.0
    m.save_pretrained(directory)
    AutoTokenizer.from_pretrained(model_path("minilm")).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A model.path for fast runs."""
    return save_tiny(tmp_path_factory.mktemp("tiny-bert"))


def tiny_run_args(model_dir, out_dir, name, *extra):
    """Overrides for a fast run on the tiny model and a little packaged data."""
    return [f"model.path={model_dir}", f"run.out_dir={out_dir}", f"run.name={name}",
            "run.rounds=4", "run.eval_every=2", "run.progress=false", "clients.n=4",
            "data.examples_per_client=24", "data.val_size=40", "data.max_length=32",
            "train.local_steps=2", "train.batch_size=4", "topology.p=0.5",
            "topology.rho_samples=200", *extra]


@pytest.fixture(scope="session")
def nodrop_model_dir(tmp_path_factory):
    """The tiny random BERT without dropout (peer runs: parity across forward groupings)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=False)


@pytest.fixture(scope="session")
def two_peers(nodrop_model_dir, tmp_path_factory):
    """A 2-peer all_gather run of decaf (product consensus: the peers' hardest mixing) by
    `tadlora launch`, every round's slices kept: (its overrides, its run directory)."""
    from tests.engines.peers import args, tadlora

    out = tmp_path_factory.mktemp("two-peers")
    argv = args(nodrop_model_dir, out, "d", "method.name=decaf", "distributed.keep_slices=true")
    rc, stdout, err = tadlora("launch", "--peers", "2", *argv)
    assert rc == 0, err
    assert "averaged adapter" in stdout and f"run directory: {out / 'd'}" in stdout
    return argv, out / "d"


def is_adjacency(adj, n: int) -> bool:
    """A symmetric boolean (n, n) matrix with a zero diagonal."""
    import numpy as np

    return (adj.dtype == bool and adj.shape == (n, n) and np.array_equal(adj, adj.T)
            and not adj.diagonal().any())
