"""One client's adapter in peft's format: export loads with peft, import puts it back."""

import copy

import pytest
import torch
from peft import PeftModel

from tadlora.core import lora
from tadlora.core.peft_io import export_peft, import_peft
from tests.core.test_lora import batch, randomize, spec, stacked


@pytest.mark.parametrize("train_head", [False, True])
def test_peft_export_loads_with_peft_and_gives_same_logits(tiny_model, tmp_path, train_head):
    base = copy.deepcopy(tiny_model)
    model = stacked(tiny_model, train_head=train_head).eval()
    randomize(model)
    out = export_peft(model, 1, tmp_path / "c1", spec(train_head=train_head))
    x = batch()
    with lora.select(model, slice(1, 2)), torch.no_grad():
        ours = model(**x).logits
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(out)).eval()
    with torch.no_grad():
        ref = loaded(**x).logits
    assert (ours - ref).abs().max().item() <= 1e-5


def test_peft_import_roundtrip(tiny_model, tmp_path):
    model = stacked(tiny_model, train_head=True)
    randomize(model)
    export_peft(model, 0, tmp_path, spec(train_head=True))
    import_peft(model, 2, tmp_path, ("classifier",))
    for ps in lora.factors(model).values():
        for p in ps.values():
            assert torch.equal(p[0], p[2])
