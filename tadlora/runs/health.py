"""A run's health: questionable settings at the start, and after every round non-finite
values (an error naming the round and the clients) and divergence (a warning and a record).

The rule for divergence: a round whose mean training loss exceeds DIVERGED times the first
round's (a learning rate far too high drives it there within a few rounds, while a run that
learns stays below its start) is reported once per run, as a RunWarning and as the round
record's "warning"; the run continues.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..core import lora, methods
from .config import Config, ConfigError

DIVERGED = 3.0  # loss / first-round loss that counts as divergence


class RunWarning(UserWarning):
    """Something about a run the user should know; it does not stop the run."""


class NonFiniteError(ValueError):
    """A loss or a factor became NaN or infinite: the run stops, its last checkpoint is kept."""


def warn(message: str) -> None:
    warnings.warn(message, RunWarning, stacklevel=2)


def check_device(cfg: Config) -> None:
    """train.device names a torch device (cpu, cuda, cuda:1, mps, ...)."""
    try:
        torch.device(cfg.train.device)
    except RuntimeError as e:
        raise ConfigError(f"train.device={cfg.train.device!r} is not a torch device ({e}); "
                          "use cpu, cuda or cuda:<index>") from e


def check_usable(cfg: Config, dev: torch.device) -> None:
    """The device can hold tensors here (not: mps in a build without it, a GPU index that is
    not there, meta, which holds no data)."""
    try:
        torch.zeros(1, device=dev).item()
    except RuntimeError as e:
        raise ConfigError(f"train.device={cfg.train.device!r} cannot hold tensors here "
                          f"({str(e).splitlines()[0][:200]}); use cpu, or cuda / "
                          "cuda:<index> of a visible GPU") from e


def check_max_length(cfg: Config, model: torch.nn.Module) -> None:
    """data.max_length fits the model's position embeddings (longer inputs cannot run)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.data.max_length > limit:
        raise ConfigError(f"data.max_length={cfg.data.max_length}: model.path="
                          f"{cfg.model.path!r} takes at most {limit} tokens "
                          f"(max_position_embeddings); set data.max_length={limit} or less")


def uses_interval(method: str) -> bool:
    """Whether a fixed method.switch_interval changes what `method` does."""
    two, three = (methods.make(method, t, lambda: 1).interval for t in (2, 3))
    return two != three


def questionable(cfg: Config) -> list[str]:
    """Settings that are valid but probably not what was meant."""
    out = []
    if cfg.clients.n == 1:
        out.append("clients.n=1: one client has no peers, so this is plain local fine-tuning "
                   "(no federation); use clients.n >= 2 to federate")
    si = cfg.method.switch_interval
    if si == "online" and not methods.uses_auto_interval(cfg.method.name, si):
        out.append(f"method.switch_interval=online has no effect on method.name="
                   f"{cfg.method.name}: only tad takes its T from the topology; remove it")
    elif si not in ("auto", "online") and not uses_interval(cfg.method.name):
        out.append(f"method.switch_interval={cfg.method.switch_interval} has no effect on "
                   f"method.name={cfg.method.name} (it does not switch on a chosen interval; "
                   "only tad and adf do): remove it")
    return out


def nonfinite_clients(model: torch.nn.Module, clients: range) -> list[int]:
    """The (global) ids of the clients held whose factors or head hold a NaN or infinity."""
    bad = torch.zeros(len(clients), dtype=torch.bool)
    for p in lora.state(model).values():
        rows = p.detach().reshape(p.shape[0], -1)
        bad |= ~torch.isfinite(rows).all(dim=1).cpu()
    return [clients.start + i for i in torch.nonzero(bad).flatten().tolist()]


def nonfinite_losses(record: dict | None) -> list[int]:
    if record is None:
        return []
    return [i for i, x in enumerate(record.get("client_loss") or [])
            if x is not None and not math.isfinite(x)]  # None: a departed client


def nonfinite_message(t: int, losses: list[int], factors: list[int], kept: int) -> str:
    parts = [f"client(s) {losses} got a non-finite training loss"] if losses else []
    parts += [f"client(s) {factors} hold non-finite factors"] if factors else []
    return (f"round {t}: {' and '.join(parts) or 'another process saw non-finite values'}; "
            f"the run stops and keeps its last checkpoint (after {kept} rounds). Lower "
            "train.lr, set train.clip_norm > 0 or use train.precision=fp32, then start again "
            "(or resume: it would reach the same values)")


def divergence(record: dict | None, first_loss: float | None, warned: bool) -> bool:
    """Mark and warn about the first diverged round (see DIVERGED); returns `warned` now."""
    loss = None if record is None else record.get("train_loss")
    if warned or not first_loss or loss is None or loss <= DIVERGED * first_loss:
        return warned
    record["warning"] = (f"diverging: training loss {loss:.4g} is {loss / first_loss:.1f}x "
                         f"the first round's {first_loss:.4g}; train.lr is probably too high")
    warn(f"round {record['round']}: {record['warning']}")
    return True
