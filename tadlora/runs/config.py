"""Run configuration: frozen dataclasses, TOML files, `section.key=value` overrides, validation.

This is the only module that knows the keys users type; runs/build.py turns a Config into the
library's objects. The valid values of every choice come from that concept's registry.
"""

from __future__ import annotations

import functools
import json
import math
import tomllib
import types
import typing
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.graph_files import MAX_NODES
from ..core.lora import HEADS
from ..core.methods import DEFAULT_C, METHODS
from ..core.precision import PRECISIONS
from ..core.topology import GRAPHS, schedule_problem
from ..core.train import OPTIMIZER_STATES, SCHEDULES
from ..data.partition import PARTITIONS
from ..data.sources import SOURCES
from ..data.synthetic import TaskSpec
from ..engines.liveness import ON_PEER_LOSS
from ..engines.net import BACKENDS, EXCHANGES, MAX_NORM_RATIO, distributed_problem


@dataclass(frozen=True)
class Run:
    seed: int = 0
    rounds: int = 60
    eval_every: int = 20  # 0 = only at the end
    out_dir: str = "runs"
    name: str = ""  # run directory name under out_dir; "" = <method>-<topology>-s<seed>-<time>
    checkpoint_every: int = 1  # rounds between checkpoints (the last round is always saved)
    progress: bool = True


@dataclass(frozen=True)
class Clients:
    n: int = 10


@dataclass(frozen=True)
class Model:
    path: str = "minilm"  # "minilm" = the packaged all-MiniLM-L6-v2; or a local dir / hub id
    num_layers: int = 0  # keep only the first k transformer layers; 0 = all
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "value")
    head: str = "frozen"
    head_modules: tuple[str, ...] = ("classifier", "score")


@dataclass(frozen=True)
class Data:
    source: str = "rotten_tomatoes"
    path: str = ""  # directory for source=files; optional file for the packaged sources
    task: str = ""  # GLUE task for source=hf; validation file stem for source=files
    max_length: int = 64
    partition: str = "label_skew"
    alpha: float = 0.5  # Dirichlet concentration (partition=dirichlet)
    examples_per_client: int = 256  # 0 = split the whole train set over the clients
    val_size: int = 500  # validation examples (held out of the packaged sources; 0 = all)


@dataclass(frozen=True)
class Topology:
    kind: str = "er"
    p: float = 0.5
    path: str = ""  # graph file for kind=file
    rho_samples: int = 2000  # Monte Carlo samples for the contraction rho
    schedule: str = ""  # "ROUND:P,ROUND:P": p from each round on (er, pairs); "" = topology.p


@dataclass(frozen=True)
class Method:
    name: str = "tad"
    switch_interval: int | str = "auto"  # rounds per phase; "auto" = from rho; "online" = estimated
    c: float = DEFAULT_C  # constant of auto: T = max(1, round(c / sqrt(1 - rho)))


@dataclass(frozen=True)
class Train:
    local_steps: int = 2
    batch_size: int = 16
    lr: float = 5e-3
    lr_schedule: str = "cosine"  # cosine (decay to 0 over run.rounds) | constant
    weight_decay: float = 0.01
    clip_norm: float = 1.0  # per-client gradient norm clip; 0 = off
    optimizer_state: str = "reset_round"  # reset_round | reset_phase | keep
    precision: str = "auto"  # bf16 autocast (fp32 factors and optimizer) | fp32 | auto: bf16
    # where the device has native bf16 (train.native_bf16), else fp32
    device: str = "cpu"
    clients_per_forward: int = 0  # clients batched into one forward pass; 0 = all


@dataclass(frozen=True)
class Distributed:
    """Real peers on torch.distributed (`tadlora launch` / `tadlora peer`); unused by `run`."""

    mode: str = "all_gather"  # all_gather | p2p (neighbour-only send/recv)
    backend: str = "auto"  # auto = nccl when train.device is cuda, else gloo
    timeout_s: float = 300.0  # a peer silent this long (no heartbeat, stuck transfer) is lost
    on_peer_loss: str = "stop"  # stop | continue (launch restarts survivors without the lost)
    diagnostics: bool = True  # send rank 0 what consensus / cross-term error need (else null)
    keep_slices: bool = False  # keep every saved round's checkpoint slices (audits, parity)
    max_norm_ratio: float = MAX_NORM_RATIO  # leave out received rows > k x own median norm; 0 off
    secret_file: str = ""  # shared secret: HMAC-SHA256 on every payload; "" = off


@dataclass(frozen=True)
class Config:
    run: Run = field(default_factory=Run)
    clients: Clients = field(default_factory=Clients)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    topology: Topology = field(default_factory=Topology)
    method: Method = field(default_factory=Method)
    train: Train = field(default_factory=Train)
    distributed: Distributed = field(default_factory=Distributed)
    synthetic: TaskSpec = field(default_factory=TaskSpec)  # the task of data.source=synthetic


CHOICES: dict[str, Collection[str]] = {  # key -> its registry (read at each check)
    "model.head": HEADS,
    "data.source": SOURCES,
    "data.partition": PARTITIONS,
    "topology.kind": GRAPHS,
    "method.name": METHODS,
    "train.optimizer_state": OPTIMIZER_STATES,
    "train.precision": PRECISIONS,
    "train.lr_schedule": SCHEDULES,
    "distributed.mode": EXCHANGES,
    "distributed.backend": BACKENDS,
    "distributed.on_peer_loss": ON_PEER_LOSS,
}
POSITIVE = {"run.rounds", "clients.n", "model.lora_r", "model.lora_alpha", "data.alpha",
            "data.max_length", "train.local_steps", "train.batch_size", "topology.rho_samples",
            "run.checkpoint_every", "distributed.timeout_s", "synthetic.dim", "synthetic.hidden",
            "synthetic.rank", "synthetic.val_per_client", "method.c"}
NON_NEGATIVE = {"run.seed", "run.eval_every", "model.num_layers", "data.examples_per_client",
                "data.val_size", "train.clip_norm", "train.weight_decay", "train.lr",
                "train.clients_per_forward", "synthetic.scale", "synthetic.heterogeneity",
                "synthetic.temperature", "synthetic.task_seed"}
MOST = {"run.seed": 2**32 - 1, "clients.n": MAX_NODES}  # torch's seeds fit; dense n x n mixing


class ConfigError(ValueError):
    """A config key or value that is wrong; the message says which and what is allowed."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A config dataclass's field types, resolved once (slow; the classes are fixed)."""
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check `value` against the field type, converting where it is unambiguous."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for t in typing.get_args(typ):
            try:
                return _coerce(key, value, t)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r}: expected one of {typing.get_args(typ)}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{key}={value!r}: expected a list of names, e.g. query,value")
        return tuple(i.strip() for i in items if i.strip())
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r}: expected {typ.__name__}")
    if typ is float and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: expected a finite number")
    return value


def _check(cfg: Config) -> None:
    flat = {f"{s}.{k}": v for s, values in to_dict(cfg).items() for k, v in values.items()}
    for key, choices in CHOICES.items():
        if (value := flat[key]) not in choices:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(choices)}")
    for key in POSITIVE | NON_NEGATIVE:
        if not 0 <= (value := flat[key]) <= MOST.get(key, value) or (key in POSITIVE and not value):
            raise ConfigError(f"{key}={value!r}: must be {'> 0' if key in POSITIVE else '>= 0'}"
                              + (f" and at most {MOST[key]}" if key in MOST else ""))
    si, t = cfg.method.switch_interval, cfg.topology
    if si not in ("auto", "online") and not (isinstance(si, int) and si >= 1):
        raise ConfigError(f"method.switch_interval={si!r}: use an integer >= 1, auto or online")
    if not 0 < t.p <= 1:
        raise ConfigError(f"topology.p={t.p}: must be in (0, 1]")
    if problem := t.schedule and schedule_problem(t.schedule, t.kind):
        raise ConfigError(f"topology.schedule={t.schedule!r}: {problem}")
    if not 0 <= cfg.model.lora_dropout < 1:
        raise ConfigError(f"model.lora_dropout={cfg.model.lora_dropout}: must be in [0, 1)")
    if cfg.data.source == "files" and not cfg.data.path:
        raise ConfigError("data.source=files needs data.path=<dir with train/validation files>")
    if cfg.data.source == "hf" and not cfg.data.task:
        raise ConfigError("data.source=hf needs data.task=<GLUE task, e.g. sst2 or mnli>")
    if cfg.synthetic.classes < 2:
        raise ConfigError(f"synthetic.classes={cfg.synthetic.classes}: must be >= 2")
    if problem := distributed_problem(cfg.distributed.max_norm_ratio, cfg.distributed.secret_file):
        raise ConfigError(problem)
    if cfg.topology.kind == "file" and not cfg.topology.path:
        raise ConfigError("topology.kind=file needs topology.path=<graph file>")


def from_dict(raw: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from nested {section: {key: value}}, on top of `base` (or the defaults)."""
    cfg = base or Config()
    sections = _hints(Config)  # section name -> its dataclass
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown config section [{section}]; valid: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {values!r}")
        hints = _hints(sections[section])
        changes = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"unknown config key {section}.{key}; valid keys of [{section}]: "
                                  f"{', '.join(hints)}")
            changes[key] = _coerce(f"{section}.{key}", value, hints[key])
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **changes)})
    _check(cfg)
    return cfg


def _parse_value(text: str) -> Any:
    """A command-line value: TOML syntax when it parses (5, 1e-3, true, "x"), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """["train.lr=1e-3", ...] -> {"train": {"lr": 0.001}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value, "
                              "e.g. train.lr=1e-3")
        out.setdefault(section, {})[name] = _parse_value(value.strip())
    return out


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} {'is a directory' if p.is_dir() else 'does not exist'}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8-sig"))  # -sig: a BOM is dropped
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {p} is not valid TOML (UTF-8 text): {e}") from e


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- TOML file <- command-line overrides, validated."""
    cfg = Config()
    if path:
        cfg = from_dict(read_toml(path), cfg)
    return from_dict(parse_overrides(list(overrides)), cfg)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
            for k, v in asdict(cfg).items()}


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (read back by `load`)."""
    sections = (f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
                for name, values in to_dict(cfg).items())
    return "\n".join(sections)


def toml_value(v: Any) -> str:
    """A value in TOML syntax (strings as JSON strings, which are valid TOML basic strings)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(i) for i in v) + "]"
    return repr(v)
