"""Methods as small policy objects: which factors train and which are mixed in round t.

A policy never loops and never touches tensors; the engines ask it, round by round:
  trainable(t) -> the factor kinds ("A", "B") that take optimizer steps in round t
  mixed(t)     -> the factor kinds averaged with the neighbours after round t
  weights(w)   -> the mixing matrix actually used, given the graph's W(t)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

AB = frozenset({"A", "B"})
NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Joint:
    """Both factors train every round; `mixes` says which are averaged (lora: both)."""

    name: str = "lora"
    mixes: frozenset[str] = AB
    interval: int | None = None

    def trainable(self, t: int) -> frozenset[str]:
        return AB

    def mixed(self, t: int) -> frozenset[str]:
        return self.mixes

    def weights(self, w: np.ndarray) -> np.ndarray:
        return w


@dataclass(frozen=True)
class FrozenA(Joint):
    """FFA-LoRA: A stays at its common initialisation; only B trains and is mixed."""

    name: str = "ffa"
    mixes: frozenset[str] = frozenset({"B"})

    def trainable(self, t: int) -> frozenset[str]:
        return frozenset({"B"})


@dataclass(frozen=True)
class Alternating(Joint):
    """One factor trains at a time, switching every `interval` rounds, B first (B = 0 at the
    start, so training A first would have zero gradient). mix_both: tad/adf mix both factors
    every round; rolora mixes only the active one."""

    name: str = "tad"
    interval: int = 1
    mix_both: bool = True

    def phase(self, t: int) -> str:
        return "B" if (t // self.interval) % 2 == 0 else "A"

    def trainable(self, t: int) -> frozenset[str]:
        return frozenset({self.phase(t)})

    def mixed(self, t: int) -> frozenset[str]:
        return AB if self.mix_both else self.trainable(t)


@dataclass(frozen=True)
class FedAvg(Joint):
    """A central server's average: uniform weights over all clients, every round."""

    name: str = "fedavg"

    def weights(self, w: np.ndarray) -> np.ndarray:
        n = w.shape[0]
        return np.full((n, n), 1.0 / n)


ADF_INTERVAL = 5  # ADF-LoRA's fixed switching interval

# name -> factory(fixed interval or None, callable giving the topology-aware interval)
Factory = Callable[[int | None, Callable[[], int]], Joint]
METHODS: dict[str, Factory] = {
    "lora": lambda fixed, auto: Joint(),
    "local": lambda fixed, auto: Joint(name="local", mixes=NONE),
    "fedavg": lambda fixed, auto: FedAvg(),
    "ffa": lambda fixed, auto: FrozenA(),
    "rolora": lambda fixed, auto: Alternating(name="rolora", interval=1, mix_both=False),
    "adf": lambda fixed, auto: Alternating(name="adf", interval=fixed or ADF_INTERVAL),
    "tad": lambda fixed, auto: Alternating(name="tad", interval=fixed or auto()),
}


def make(name: str, switch_interval: int | None, auto_interval: Callable[[], int]) -> Joint:
    """The policy for `name`. switch_interval fixes T (adf, tad); None lets tad use
    auto_interval() (topology-aware) and adf its paper value 5."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name](switch_interval, auto_interval)


def phase_name(policy: Joint, t: int) -> str:
    """'AB', 'A' or 'B': the factors trained in round t, for logs."""
    return "".join(sorted(policy.trainable(t)))
