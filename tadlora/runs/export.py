"""One client of a finished (or checkpointed) run as a peft adapter."""

from __future__ import annotations

from pathlib import Path

from ..core import lora
from ..core.peft_io import export_peft
from . import checkpoint
from .build import load_model, lora_spec, model_path, stack_adapters
from .config import ConfigError, load
from .rundir import CLIENTS, RunDir


def export(run_dir: str | Path, client: int, out: str | Path) -> tuple[Path, int]:
    """Write client `client`'s adapter (and head) from the run's checkpoint in peft's format;
    returns the folder and the rounds the checkpoint holds."""
    run = RunDir(Path(run_dir))
    if not run.config.is_file():
        raise ConfigError(f"{run.path} is not a run directory (no {run.config.name})")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a directory (new, or an "
                          "adapter folder to overwrite)")
    cfg = load(run.config)
    if not 0 <= client < cfg.clients.n:
        raise ConfigError(f"--client {client}: the run has clients 0..{cfg.clients.n - 1}")
    meta, tensors, _ = checkpoint.read(run.checkpoint)
    labels = run.read_json(CLIENTS)["label_names"]
    model = stack_adapters(load_model(cfg, len(labels))[0], cfg)
    lora.load_state(model, tensors)
    path = export_peft(model, client, out, lora_spec(cfg), model_path(cfg.model.path))
    return path, int(meta["round"])
