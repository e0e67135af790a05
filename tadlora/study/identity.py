"""When two runs are the same experiment: the config values that matter. A sweep skips a run
recorded elsewhere with the same identity (sweep_plan), and `tadlora keep` never writes one
run's record over another's of the same name (records)."""

from __future__ import annotations

from ..core.methods import uses_auto_interval
from ..runs import config
from ..runs.config import Config
from ..runs.rundir import RESUMABLE_KEYS
from .sweep_file import flat

# keys a finished or checkpointed run may differ in from the sweep (resume can change them)
RESUMABLE = {f"run.{k}" for k in RESUMABLE_KEYS} | {"run.out_dir"}
# and keys a run kept elsewhere may differ in (its name, and where it ran: the same experiment)
ELSEWHERE = RESUMABLE | {"run.name", "train.device"}


def mattering(cfg: Config, ignored: set[str]) -> dict:
    """The flat config values that matter: c and rho_samples only feed switch_interval=auto (so
    calibrating the default c does not invalidate the lora, ffa, ... runs)."""
    auto = uses_auto_interval(cfg.method.name, cfg.method.switch_interval)
    ignored = ignored | (set() if auto else {"method.c", "topology.rho_samples"})
    return {k: v for k, v in flat(config.to_dict(cfg)).items() if k not in ignored}


def differences(a: Config, b: Config, ignored: set[str] = RESUMABLE) -> list[str]:
    """"key: a's value -> b's" for each value that matters and differs."""
    fa, fb = mattering(a, ignored), flat(config.to_dict(b))
    return [f"{k}: {v!r} -> {fb.get(k)!r}" for k, v in fa.items() if v != fb.get(k)]


def identity(cfg: Config) -> str:
    """What a run kept elsewhere must share with a run of the sweep: all that matters, rounds
    included (a key for a set of the kept runs)."""
    return repr(sorted({**mattering(cfg, ELSEWHERE), "run.rounds": cfg.run.rounds}.items()))
