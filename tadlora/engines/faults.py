"""Fault injection for tests of the distributed engine: TADLORA_FAULT="kind:rank:round,..."
with kind nan (a NaN in what the rank sends), big (what it sends times 1e6), shape (a payload
one column too wide), kill (SIGKILL before the exchange), hang (SIGSTOP before the exchange)
or raise (an exception with 100 lines of C++-like frames, before the exchange). Faults fire in
a group's first start only, so a restarted group (on_peer_loss=continue, torchrun
--max-restarts) runs clean."""

from __future__ import annotations

import os
import signal

import torch

FAULT_ENV = "TADLORA_FAULT"


def _fault(kind: str, rank: int, t: int) -> bool:
    """Whether the fault is due; only in a group's first start (not after a restart)."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return False
    return f"{kind}:{rank}:{t}" in os.environ.get(FAULT_ENV, "").split(",")


def wire(buf: torch.Tensor, rank: int, t: int) -> torch.Tensor:
    """What goes on the wire: the rows themselves, or a corrupted copy under fault injection."""
    if _fault("nan", rank, t):
        bad = buf.clone()
        bad[0, 0] = float("nan")
        return bad
    if _fault("big", rank, t):  # finite but far too large: a poisoned payload
        return buf * 1e6
    if _fault("shape", rank, t):
        return torch.cat([buf, buf[:, :1]], dim=1)
    return buf


def maybe_die(rank: int, t: int) -> None:
    if _fault("raise", rank, t):  # an error whose message drags C++ frames along, as torch's do
        raise RuntimeError("injected failure\n" + "".join(
            f"frame #{i}: 0x{i:012x} in c10::something() from libtorch.so\n" for i in range(100)))
    if _fault("kill", rank, t):
        os.kill(os.getpid(), signal.SIGKILL)
    if _fault("hang", rank, t):
        os.kill(os.getpid(), signal.SIGSTOP)
