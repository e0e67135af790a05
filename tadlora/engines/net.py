"""A peer's place among the peers (`Net`), and the registries of exchange modes and backends."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import auth, exchange
from .exchange import Received, Stamp
from .liveness import Liveness
from .robust_mixing import MAX_NORM_RATIO

Exchange = Callable[..., Received]
EXCHANGES: dict[str, tuple[Exchange, bool]] = {  # mode -> (exchange, rank 0 gets every row)
    "all_gather": (exchange.all_gather_rows, True),
    "p2p": (exchange.p2p_rows, False),
}
BACKENDS = ("auto", "gloo", "nccl")  # auto: nccl when training on cuda, else gloo


def distributed_problem(max_norm_ratio: float, secret_file: str) -> str | None:
    """What is wrong with distributed.max_norm_ratio and distributed.secret_file, or None."""
    if max_norm_ratio != 0 and not max_norm_ratio > 1:
        return (f"distributed.max_norm_ratio={max_norm_ratio}: must be > 1 (a received row "
                f"whose norm is over this multiple of the median is left out), or 0 (off)")
    try:
        auth.secret(secret_file)
    except ValueError as e:
        return f"distributed.secret_file={secret_file!r}: {e}"
    return None


def backend(name: str, device: str) -> str:
    """The torch.distributed backend for distributed.backend=`name` and train.device."""
    return name if name != "auto" else ("nccl" if device.startswith("cuda") else "gloo")


@dataclass
class Net:
    """This peer's place among the peers."""

    rank: int
    slices: list[range]  # every rank's clients
    live: Liveness
    mode: str = "all_gather"
    diagnostics: bool = True
    device: torch.device = torch.device("cpu")  # where transfers happen (the GPU for nccl)
    max_norm_ratio: float = MAX_NORM_RATIO  # robust_mixing.outliers; 0 = off
    key: bytes | None = None  # the shared secret of distributed.secret_file (auth.py)

    @property
    def world(self) -> int:
        return len(self.slices)

    @property
    def owners(self) -> list[int]:
        """The rank that holds each client."""
        return [k for k, s in enumerate(self.slices) for _ in s]

    @property
    def clients(self) -> range:
        return self.slices[self.rank]

    @property
    def n(self) -> int:
        return self.slices[-1].stop

    def cap(self, width: int) -> int:
        """Most values any payload may announce (a guard against absurd headers)."""
        return 4 * max(len(s) for s in self.slices) * max(width, 1) + 4096

    def gather(self, rows: torch.Tensor, t: int, per_client: bool = True
               ) -> tuple[torch.Tensor | None, dict[int, str]]:
        """Rows of every rank to rank 0 (per_client: one row per client, else one per rank)."""
        counts = [len(s) if per_client else 1 for s in self.slices]
        stamp = Stamp(t, self.rank, counts[self.rank], rows.shape[1], rows.dtype, 0)
        cap, rows = self.cap(rows.shape[1]), rows.to(self.device)
        full, bad = self.live.guard(
            lambda: exchange.gather_to_first(counts, self.rank, rows, stamp, cap, self.key))
        return (None if full is None else full.cpu()), bad


def mixed_keys(fac: dict, kinds: frozenset[str]) -> list[tuple[str, str]]:
    """(kind, layer) of every mixed tensor, in the same order on every peer (sorted kinds: a
    frozenset's order differs between processes)."""
    return [(k, name) for k in sorted(kinds) for name in fac[k]]
