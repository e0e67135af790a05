"""`tadlora export`: one client of a run as a peft adapter."""

import torch
from peft import PeftModel

from tadlora import cli
from tadlora.core import lora
from tadlora.runs import checkpoint, config, loop
from tadlora.runs.build import load_model, stack_adapters
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
