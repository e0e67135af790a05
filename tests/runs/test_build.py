"""Config -> the library's objects: the method's policy (and its auto T) and the graph
process, through a whole run where it matters."""

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tadlora.core import topology
from tadlora.runs import build, config, loop, model
from tadlora.runs.build import mixing, policy
from tadlora.runs.health import RunWarning
from tests.conftest import tiny_run_args
from tests.runs.test_loop import records


def test_auto_interval_is_the_same_for_every_run_seed():
    # rho belongs to the topology, not to one run's graphs: seeds 0 and 1 used to estimate it on
    # their own graph streams and at p=0.02 landed on either side of a rounding edge (T = 3 or 4).
    def auto(seed):
        cfg = config.load(None, ["method.name=tad", "topology.p=0.02", "topology.rho_samples=200",
                                 f"run.seed={seed}"])
        pol, rho = policy(cfg)
        return pol.interval, rho

    assert auto(0) == auto(1) == auto(7)
    assert auto(0)[1] == topology.process_rho("er", 10, 0.02, samples=200)


def test_a_run_on_a_graph_file(tiny_model_dir, tmp_path):
    """topology.kind=file: the run uses the file's static graph every round, so each client
    sends its factors to exactly its neighbours in the file (client 3 is isolated)."""
    graph = tmp_path / "star.txt"
    graph.write_text("# a path 1-0-2 and an isolated client\nn 4\n0 1\n0 2\n")
    cfg = config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "g", "method.name=lora",
                                          "topology.kind=file", f"topology.path={graph}"))
    with pytest.warns(UserWarning, match="2 separate components"):
        w = mixing(cfg)(0)
        d, summary = loop.run(cfg)
    assert np.array_equal(w != 0, np.eye(4, dtype=bool) | [[0, 1, 1, 0], [1, 0, 0, 0],
                                                           [1, 0, 0, 0], [0, 0, 0, 0]])
    assert summary["rounds"] == 4 and summary["topology"] == "file"
    tensors = load_file(str(d / "checkpoint" / "adapters.safetensors"))
    row = sum(4 * v[0].numel() for k, v in tensors.items() if k.startswith(("A/", "B/")))
    rows = records(d)
    assert [r["bytes_sent"] for r in rows] == [[2 * row, row, row, 0]] * 4
    # the isolated client is never mixed: it ends exactly as it would have trained alone
    with pytest.warns(UserWarning, match="2 separate components"):
        alone, _ = loop.run(config.load(None, tiny_run_args(
            tiny_model_dir, tmp_path, "alone", "method.name=local", "topology.kind=file",
            f"topology.path={graph}")))
    by_itself = load_file(str(alone / "checkpoint" / "adapters.safetensors"))
    assert all(torch.equal(tensors[k][3], v[3]) for k, v in by_itself.items())
    assert not all(torch.equal(tensors[k][0], v[0]) for k, v in by_itself.items())


def _trained_state(model_dir, tmp_path, *extra):
    from tadlora.core import federation, lora
    from tadlora.runs.build import build

    cfg = config.load(None, tiny_run_args(model_dir, tmp_path, "g", "model.lora_dropout=0.1",
                                          "train.precision=fp32", *extra))
    exp = build(cfg)
    for t in range(2):
        federation.prepare_round(exp.fed, t)
        federation.local_training(exp.fed, t)
    return exp, {k: v.detach().clone() for k, v in lora.state(exp.fed.model).items()}


def test_dropout_on_the_clients_train_the_same_in_any_forward_grouping(tiny_model_dir, tmp_path):
    """Every client draws its batches and dropout masks from its own streams, and its tokens
    run packed: one forward for all clients or one per client trains the same models."""
    from tadlora.core import packing

    exp, together = _trained_state(tiny_model_dir, tmp_path, "train.clients_per_forward=0")
    assert getattr(exp.fed.model, packing.OFFSET_ATTR, None) == 0  # BERT: packed
    assert exp.fed.model.config.hidden_dropout_prob > 0
    _, alone = _trained_state(tiny_model_dir, tmp_path, "train.clients_per_forward=1")
    _, pairs = _trained_state(tiny_model_dir, tmp_path, "train.clients_per_forward=3")
    for name, value in together.items():
        torch.testing.assert_close(alone[name], value, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(pairs[name], value, atol=1e-6, rtol=1e-5)
    _, other = _trained_state(tiny_model_dir, tmp_path, "run.seed=1")
    assert not all(torch.allclose(other[k], v) for k, v in together.items())


def test_auto_with_a_topology_schedule_takes_each_pieces_t_and_online_builds_an_estimate():
    cfg = config.load(None, ["topology.schedule=0:0.5,30:0.02"])
    pol, rho = policy(cfg)
    assert pol.schedule.segments == [(0, 1), (30, 3)] and rho < 0.3
    assert mixing(cfg)(40).diagonal().mean() > mixing(cfg)(10).diagonal().mean()
    cfg = config.load(None, ["method.switch_interval=online", "topology.rho_samples=100"])
    pol, rho = policy(cfg)
    assert pol.schedule.segments == [(0, 1)] and rho is not None
    assert build.online(cfg, pol, range(2, 5)).held == range(2, 5)
    assert build.online(config.load(None, ["method.switch_interval=auto"]), pol, range(3)) is None


def test_a_max_length_that_cuts_many_training_examples_is_warned(tiny_model_dir, tmp_path):
    def task(max_length):
        cfg = config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "c",
                                              f"data.max_length={max_length}"))
        return build.text_task(cfg, range(cfg.clients.n))

    with pytest.warns(RunWarning, match=r"^\d+% of the training examples fill "
                                        r"data.max_length=8 tokens, so most of those are cut"):
        task(8)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        task(128)
    assert not [w for w in got if "data.max_length" in str(w.message)]


def test_a_model_directory_without_tokenizer_files_is_an_error(tiny_model_dir, tmp_path):
    """transformers builds a tokenizer from config.json alone, knowing only [UNK] and the other
    special tokens: the run would train on inputs that are all [UNK]."""
    import shutil

    bare = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dir, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    cfg = config.load(None, tiny_run_args(bare, tmp_path, "t"))
    with pytest.raises(config.ConfigError, match=r"no-tokenizer has no tokenizer files .*"
                                                 r"tokenizer\.save_pretrained"):
        model.load_model(cfg, 2)


def test_a_max_length_beyond_the_models_positions_is_an_error(tiny_model_dir, tmp_path):
    """The tiny model has 128 positions: a longer input would fail inside its embeddings."""
    cfg = config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "p", "data.max_length=200"))
    with pytest.raises(config.ConfigError, match=r"data.max_length=200: .* takes at most 128 "
                                                 r"tokens .*data.max_length=128 or less"):
        build.text_task(cfg, range(cfg.clients.n))


@pytest.mark.parametrize("name", ["meta", "cuda:99"] + ([] if torch.backends.mps.is_built()
                                                        else ["mps"]))
def test_a_device_that_cannot_hold_tensors_is_an_error(name):
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(config.ConfigError, match=rf"train.device='{name}' cannot hold tensors "
                                                 r"here .*use cpu"):
        build.device(config.load(None, [f"train.device={name}"]))
