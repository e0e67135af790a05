"""Methods as small policy objects, their registry, and the topology-aware switching interval.

A policy never loops and never touches tensors; the engines ask it, round by round:
  trainable(t) -> the factor kinds ("A", "B") that take optimizer steps in round t
  mixed(t)     -> the factor kinds averaged with the neighbours after round t
  weights(w)   -> the mixing matrix actually used, given the graph's W(t)
Adding a method is one policy class (or an instance of one) and one line in METHODS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .topology import uniform_weights

AB = frozenset({"A", "B"})
NONE: frozenset[str] = frozenset()

# Placeholder until calibrated by our own T sweeps: T = max(1, round(c / sqrt(1 - rho))).
DEFAULT_C: float = 1.0
ADF_INTERVAL = 5  # ADF-LoRA's fixed switching interval


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

    def interval_at(self, t: int) -> int | None:
        """The switching interval T in force in round t (None: the method does not switch)."""
        return self.interval

    @property
    def uses_graph(self) -> bool:
        """Whether the communication graph affects the method (local and fedavg: no)."""
        return bool(self.mixes)

    @property
    def mixes_products(self) -> bool:
        """Whether the engines mix the products B A (and re-factorise) instead of A and B."""
        return False


@dataclass(frozen=True)
class FrozenA(Joint):
    """FFA-LoRA: A stays at its common initialisation; only B trains and is mixed."""

    name: str = "ffa"
    mixes: frozenset[str] = frozenset({"B"})

    def trainable(self, t: int) -> frozenset[str]:
        return frozenset({"B"})


@dataclass
class PhaseSchedule:
    """T by round, as segments (start round, T), the first at round 0 (a topology.schedule, or
    the online estimate's decisions). The phase index continues across a change: from a
    segment's start s, index(t) = index(s) + (t - s) // T, with index(s) given by the segment
    before it, so a change of T never reorders phases, it only cuts or lengthens the current
    one."""

    segments: list[tuple[int, int]]
    _initial: list[tuple[int, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.segments or self.segments[0][0] != 0:
            raise ValueError(f"a phase schedule starts at round 0, got {self.segments}")
        self._initial = list(self.segments)

    def reset(self) -> None:
        self.segments[:] = self._initial

    def interval(self, t: int) -> int:
        return next(T for s, T in reversed(self.segments) if s <= t)

    def set_from(self, start: int, interval: int) -> None:
        """T = interval from round `start` on (a later decision replaces this one's future)."""
        self.segments[:] = [seg for seg in self.segments if seg[0] < start]
        if self.interval(start) != interval:
            self.segments.append((start, interval))

    def index(self, t: int) -> int:
        k = 0
        for (s, T), nxt in zip(self.segments, [*self.segments[1:], None], strict=True):
            if nxt is None or t < nxt[0]:
                return k + (t - s) // T
            k += (nxt[0] - s) // T
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Alternating(Joint):
    """One factor trains at a time, switching every `interval` rounds, B first (B = 0 at the
    start, so training A first would have zero gradient). mix_both: tad/adf mix both factors
    every round; rolora mixes only the active one. A `schedule` replaces the fixed interval
    by T per round (topology.schedule, switch_interval=online)."""

    name: str = "tad"
    interval: int = 1
    mix_both: bool = True
    schedule: PhaseSchedule | None = field(default=None, compare=False)

    def phase(self, t: int) -> str:
        k = self.schedule.index(t) if self.schedule else t // self.interval
        return "B" if k % 2 == 0 else "A"

    def interval_at(self, t: int) -> int:
        return self.schedule.interval(t) if self.schedule else self.interval

    def trainable(self, t: int) -> frozenset[str]:
        return frozenset({self.phase(t)})

    def mixed(self, t: int) -> frozenset[str]:
        return AB if self.mix_both else self.trainable(t)


@dataclass(frozen=True)
class FedAvg(Joint):
    """A central server's average: uniform weights over all clients, every round."""

    name: str = "fedavg"

    def weights(self, w: np.ndarray) -> np.ndarray:
        return uniform_weights(w.shape[0])

    @property
    def uses_graph(self) -> bool:
        return False


@dataclass(frozen=True)
class ProductConsensus(Joint):
    """DeCAF-style product consensus: both factors train; after each round a client receives
    its neighbours' A and B (what lora sends), forms sum_j W_ij B_j A_j and re-factorises it to
    rank r by truncated SVD (gossip.product_consensus)."""

    name: str = "decaf"

    @property
    def mixes_products(self) -> bool:
        return True


# name -> factory(fixed interval or None, callable giving the topology-aware interval). The
# order is the order of tables and plots.
Factory = Callable[[int | None, Callable[[], int]], Joint]
METHODS: dict[str, Factory] = {
    "lora": lambda fixed, auto: Joint(),
    "ffa": lambda fixed, auto: FrozenA(),
    "rolora": lambda fixed, auto: Alternating(name="rolora", interval=1, mix_both=False),
    "adf": lambda fixed, auto: Alternating(name="adf", interval=fixed or ADF_INTERVAL),
    "tad": lambda fixed, auto: Alternating(name="tad", interval=fixed or auto()),
    "decaf": lambda fixed, auto: ProductConsensus(),
    "local": lambda fixed, auto: Joint(name="local", mixes=NONE),
    "fedavg": lambda fixed, auto: FedAvg(),
}


def make(name: str, switch_interval: int | None, auto_interval: Callable[[], int]) -> Joint:
    """The policy for `name`. switch_interval fixes T (adf, tad); None lets tad use
    auto_interval() (topology-aware) and adf its paper value 5."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name](switch_interval, auto_interval)


def uses_auto_interval(name: str, switch_interval: int | str) -> bool:
    """Whether the method, so configured, takes its T from the topology (calls auto)."""
    called: list[bool] = []
    fixed = None if switch_interval in ("auto", "online") else int(switch_interval)
    make(name, fixed, lambda: called.append(True) or 1)
    return bool(called)


def uses_graph(name: str) -> bool:
    """Whether the communication graph affects the method `name`."""
    return make(name, 1, lambda: 1).uses_graph


def phase_name(policy: Joint, t: int) -> str:
    """'AB', 'A' or 'B': the factors trained in round t, for logs."""
    return "".join(sorted(policy.trainable(t)))


def switch_interval(rho: float, c: float) -> int:
    """Topology-aware switching interval T = max(1, round(c / sqrt(1 - rho)))."""
    if rho >= 1.0:
        raise ValueError(
            f"rho = {rho} >= 1: the graph process never mixes (some clients are never "
            "connected, e.g. a disconnected graph or p too small for the rounds sampled), so no "
            "switching interval can bring the frozen factor to consensus; use a connected "
            "topology or set a fixed integer interval"
        )
    if rho < 0.0 or c <= 0.0:
        raise ValueError(f"need 0 <= rho < 1 and c > 0, got rho = {rho}, c = {c}")
    return max(1, round(c / math.sqrt(1.0 - rho)))
