"""`tadlora export`: one client of a run (in one process, or on peers) as a peft adapter."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from tadlora import cli
from tadlora.core import lora
from tadlora.runs import checkpoint, config, loop
from tadlora.runs.build import load_model, stack_adapters
from tadlora.runs.export import export
from tests.conftest import tiny_run_args


def peft_logits(base, adapter, ids):
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_cli_export_loads_in_peft(tiny_model_dir, tmp_path):
    d, _ = loop.run(config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "e",
                                                    "model.head=trained")))
    assert cli.main(["export", str(d), "--client", "2", "--out", str(tmp_path / "a")]) == 0
    cfg = config.load(d / "config.toml")
    base, _ = load_model(cfg, 2)
    ours = stack_adapters(load_model(cfg, 2)[0], cfg).eval()
    lora.load_state(ours, checkpoint.read(d / "checkpoint")[1])
    ids = torch.randint(1000, 2000, (2, 5))
    with lora.select(ours, slice(2, 3)), torch.no_grad():
        expected = ours(input_ids=ids).logits
    assert (peft_logits(base, tmp_path / "a", ids) - expected).abs().max() <= 1e-5
    assert cli.main(["export", str(d), "--client", "9", "--out", str(tmp_path / "b")]) == 2


def test_export_from_a_distributed_run(two_peers, tmp_path):
    """A run by `tadlora launch --peers 2`: client 5 lives on rank 1; its exported adapter
    gives the logits of rank 1's own slice of the last round."""
    _, d = two_peers
    out, rounds = export(d, 5, tmp_path / "c5")
    assert rounds == 4
    cfg = config.load(d / "config.toml")
    part = d / "peers" / "rank-1" / "round-000004"
    assert json.loads((part / "state.json").read_text())["clients"] == [4, 8]
    ours = stack_adapters(load_model(cfg, 2)[0], cfg, 4).eval()  # rank 1's 4 clients
    lora.load_state(ours, load_file(str(part / "adapters.safetensors")))
    ids = torch.randint(1000, 2000, (3, 6))
    with lora.select(ours, slice(1, 2)), torch.no_grad():  # client 5 = rank 1's second
        expected = ours(input_ids=ids).logits
    with lora.select(ours, slice(0, 1)), torch.no_grad():
        other = ours(input_ids=ids).logits
    assert (other - expected).abs().max() > 1e-4  # the clients differ: the right one matters
    assert (peft_logits(load_model(cfg, 2)[0], out, ids) - expected).abs().max() <= 1e-5
    assert cli.main(["export", str(d), "--client", "5", "--out", str(tmp_path / "cli")]) == 0


def test_a_missing_or_damaged_clients_json_is_named(tiny_model_dir, tmp_path):
    d, _ = loop.run(config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "e")))
    for damaged in ("{}", '{"label_names": 5}', None):
        if damaged is None:
            (d / "clients.json").unlink()
        else:
            (d / "clients.json").write_text(damaged)
        with pytest.raises(config.ConfigError, match=r"clients.json is missing or lists no "
                                                     r"label_names.*restore it"):
            export(d, 0, tmp_path / "a")
