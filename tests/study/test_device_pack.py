"""study/device/pack.py: the model packed for a GPU lease is, once unpacked, the same model for
a bf16 run on the packed task (the values every such run computes with), and far smaller."""

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from tadlora.core.precision import cast_frozen

SCRIPT = Path(__file__).resolve().parents[2] / "study" / "device" / "pack.py"
spec = importlib.util.spec_from_file_location("device_pack", SCRIPT)
device_pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_pack)


def test_the_unpacked_model_is_the_original_for_a_bf16_run_on_the_task(tiny_model_dir, tmp_path):
    task = tmp_path / "glue-lite" / "pairs"
    task.mkdir(parents=True)
    rows = [{"premise": "a cat sat", "hypothesis": "a dog ran", "label": 0},
            {"premise": "zebras graze", "hypothesis": "quietly", "label": 1}]
    for split in ("train", "validation", "validation_mismatched"):
        (task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows[1]["hypothesis"] = "xylophone"  # a token only the second validation file has
    (task / "validation_mismatched.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "device"
    device_pack.pack(task, out, Path(tiny_model_dir))
    assert (out / "shared" / "data" / "glue-lite" / "pairs" / "train.jsonl").is_file()
    model_dir = device_pack.unpack(out)
    assert model_dir == out / "site" / device_pack.PACKAGE / "model"
    packed = (model_dir / device_pack.PACKED).stat().st_size
    assert packed < (Path(tiny_model_dir) / device_pack.WEIGHTS).stat().st_size / 2

    original, unpacked = AutoModel.from_pretrained(tiny_model_dir), AutoModel.from_pretrained(
        model_dir)
    assert cast_frozen(original.requires_grad_(False), "bf16") > 0
    cast_frozen(unpacked.requires_grad_(False), "bf16")
    tok = AutoTokenizer.from_pretrained(model_dir)
    def ids(pairs):
        return {i for r in pairs for i in tok(r["premise"], r["hypothesis"])["input_ids"]}

    before = [rows[0], {"premise": "zebras graze", "hypothesis": "quietly"}]
    used = ids(rows + before) | set(tok.all_special_ids)
    assert ids(rows) - ids(before)  # tokens only validation_mismatched has: they travel too
    emb = "embeddings.word_embeddings.weight"
    theirs = dict(unpacked.named_parameters())
    for name, p in original.named_parameters():
        if name == emb:
            ids = sorted(used)
            assert torch.equal(theirs[name][ids], p[ids])
            rest = torch.ones(len(p), dtype=torch.bool)
            rest[ids] = False
            assert not theirs[name][rest].any()  # the rows no run reads travel as zeros
        else:
            assert theirs[name].dtype == p.dtype and torch.equal(theirs[name], p), name
