"""Checkpoints: the per-client tensors and the AdamW state in safetensors, plus a small JSON.

Nothing is pickled. A checkpoint is written into a temporary directory and renamed into place,
so a crash while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import lora

ADAPTERS, OPTIMIZER, META = "adapters.safetensors", "optimizer.safetensors", "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit the run."""


def _optimizer_tensors(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in lora.state(model).items():
        for key, value in opt.state.get(p, {}).items():
            out[f"{name}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def save(directory: str | Path, model: nn.Module, opt: torch.optim.Optimizer,
         meta: dict) -> Path:
    """Write the checkpoint for the rounds finished so far (meta["round"] = next round)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in lora.state(model).items()}
    return save_tensors(directory, tensors, _optimizer_tensors(model, opt), meta)


def save_tensors(directory: str | Path, tensors: dict[str, torch.Tensor],
                 opt_tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """`save` for tensors already in checkpoint form (as `state` and the optimizer give them)."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / ADAPTERS))
    save_file(opt_tensors, str(tmp / OPTIMIZER))
    (tmp / META).write_text(json.dumps(meta, indent=1))
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read(directory: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    if not (directory / META).is_file():
        old = directory.with_name(directory.name + ".old")
        hint = f" (an older one is at {old})" if old.exists() else ""
        raise CheckpointError(f"no checkpoint in {directory}{hint}: nothing to resume from")
    try:
        meta = json.loads((directory / META).read_text())
        return meta, load_file(str(directory / ADAPTERS)), load_file(str(directory / OPTIMIZER))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint in {directory} is corrupt or incomplete ({e}); "
                              "restart the run without --resume, or restore the files") from e


def load(directory: str | Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore the per-client tensors and AdamW state in place; returns the saved meta."""
    meta, tensors, opt_tensors = read(Path(directory))
    restore(model, opt, tensors, opt_tensors, str(directory))
    return meta


def restore(model: nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
            opt_tensors: dict[str, torch.Tensor], where: str) -> None:
    """Put checkpoint-form tensors back into the model and the optimizer, in place."""
    try:
        lora.load_state(model, tensors)
    except ValueError as e:
        raise CheckpointError(f"checkpoint in {where} does not fit this model: {e}") from e
    params = lora.state(model)
    opt.state.clear()
    for key, value in opt_tensors.items():
        name, _, field = key.partition("::")
        if name not in params:
            raise CheckpointError(f"optimizer state for unknown tensor {name} in {where}")
        # AdamW keeps its step count on the CPU (non-capturable mode)
        device = "cpu" if field == "step" else params[name].device
        opt.state[params[name]][field] = value.to(device)
