"""Numeric precision: the registry of `train.precision` values, native-bf16 detection, autocast."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

CPU_BF16 = {"avx512_bf16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}


def cpu_bf16() -> list[str]:
    """This CPU's native bf16 features, as torch.cpu reports them (private checks)."""
    return [name for name, check in CPU_BF16.items() if getattr(torch.cpu, check, lambda: False)()]


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: a CUDA card that supports it, or a CPU with
    avx512_bf16 or AMX. Elsewhere (e.g. an AVX2-only CPU) bf16 autocast is emulated: training
    measured 18x slower than fp32 (benchmarks/bench_throughput.py)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_bf16())


def _bf16(device: torch.device) -> str:
    if not native_bf16(device):
        warnings.warn(f"train.precision=bf16 on a {device.type} device without native bf16 (a "
                      "CPU without avx512_bf16 or AMX, or a CUDA card without bf16): bf16 is "
                      "emulated and several times slower than fp32; set train.precision=fp32 "
                      "or auto", RuntimeWarning, stacklevel=3)
    return "bf16"


# train.precision -> the precision used on a device
PRECISIONS: dict[str, Callable[[torch.device], str]] = {
    "auto": lambda device: "bf16" if native_bf16(device) else "fp32",
    "fp32": lambda device: "fp32",
    "bf16": _bf16,
}


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision -> the precision used: auto is bf16 where the device has native bf16,
    else fp32; an explicit bf16 without native support is kept, with a warning."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision](device)


def cast_frozen(model: torch.nn.Module, precision: str) -> int:
    """For bf16: store the frozen weights and biases of every linear layer in bf16. bf16
    autocast casts them at every call (and does not cache casts of tensors without grad); the
    stored copy holds the same values, so results do not change and the casts are gone.
    Returns how many layers were cast; fp32 leaves the model as it is."""
    if precision != "bf16":
        return 0
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)
              and not any(p.requires_grad for p in m.parameters(recurse=False))]
    for m in layers:
        for p in m.parameters(recurse=False):
            p.data = p.data.to(torch.bfloat16)
    return len(layers)


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in the active autocast dtype, as autocast would cast it for each matmul that reads it:
    a layer whose input feeds two matmuls casts it once."""
    dev = x.device.type
    if x.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        return x.to(torch.get_autocast_dtype(dev))
    return x


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when precision is bf16 (factors and optimizer stay fp32), else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
