"""One client's adapter in peft's format: export (loadable with `PeftModel.from_pretrained`) and
import back into a client's slice of the stacked model."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .lora import LoRALinear, LoRASpec, StackedLinear, in_head


def _peft_tensors(model: nn.Module, client: int, head_modules: tuple[str, ...]
                  ) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Client `client`'s tensors under peft's key names, and which of those keys are per-client
    (the rest belong to the shared frozen head). Values are views into the model."""
    prefix, out, own = "base_model.model.", {}, set()
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[f"{prefix}{name}.lora_A.weight"] = m.A[client]  # (r, d_in)
            out[f"{prefix}{name}.lora_B.weight"] = m.B[client]  # (d_out, r)
        elif isinstance(m, StackedLinear):
            out[f"{prefix}{name}.weight"] = m.weight[client]
            out[f"{prefix}{name}.bias"] = m.bias[client]
        elif isinstance(m, nn.Linear) and in_head(name, head_modules):
            out.update({f"{prefix}{name}.{k}": v for k, v in m.named_parameters()})
            continue
        else:
            continue
        own.update(k for k in out if k.startswith(f"{prefix}{name}."))
    return out, own


def export_peft(model: nn.Module, client: int, out_dir: str | Path, spec: LoRASpec,
                base_model_path: str | None = None) -> Path:
    """Write client `client`'s adapter and classifier head in peft's format, loadable with
    `PeftModel.from_pretrained(base_model, out_dir)` (the head goes in as modules_to_save)."""
    from peft import LoraConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, _ = _peft_tensors(model, client, spec.head_modules)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()},
              str(out / "adapter_model.safetensors"))
    LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
               target_modules=list(spec.targets), task_type="SEQ_CLS",
               modules_to_save=list(spec.head_modules),
               base_model_name_or_path=base_model_path).save_pretrained(str(out))
    return out


def import_peft(model: nn.Module, client: int, adapter_dir: str | Path,
                head_modules: tuple[str, ...]) -> None:
    """Load a peft LoRA adapter (as written by `export_peft`) into client `client`'s slice.
    A shared frozen head is not overwritten: it must already equal the adapter's."""
    path = Path(adapter_dir)
    saved = load_file(str(path / "adapter_model.safetensors"))
    views, own = _peft_tensors(model, client, head_modules)
    missing = sorted(set(views) - set(saved))
    if missing:
        raise ValueError(f"{path} lacks {missing[:3]}: not an adapter for this model/targets")
    with torch.no_grad():
        for key, view in views.items():
            if view.shape != saved[key].shape:
                raise ValueError(f"{path}: {key} has shape {tuple(saved[key].shape)}, "
                                 f"model expects {tuple(view.shape)} (other lora_r?)")
            if key in own:
                view.copy_(saved[key])
            elif not torch.allclose(view.float(), saved[key].float()):
                raise ValueError(f"{path}: frozen head tensor {key} differs from this model's "
                                 "(use model.head=trained, or the same seed and base model)")
