"""One client of a finished (or checkpointed) run as a peft adapter."""

from __future__ import annotations

from pathlib import Path

from ..core import lora
from ..core.peft_io import export_peft
from . import checkpoint
from .build import lora_spec, stack_adapters
from .config import ConfigError, load
from .model import load_model, model_path
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
    model = stack_adapters(load_model(cfg, len(_label_names(run)))[0], cfg)
    lora.load_state(model, tensors)
    path = export_peft(model, client, out, lora_spec(cfg), model_path(cfg.model.path))
    return path, int(meta["round"])


def _label_names(run: RunDir) -> list:
    """The run's label names (the size of its classifier), from clients.json."""
    file = run.path / CLIENTS
    names = run.read_json(CLIENTS).get("label_names") if file.is_file() else None
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{file} is missing or lists no label_names, which the export needs "
                          "(the size of the classifier); restore it from a copy of the run")
    return names
