"""The machine a run ran on, in words, for its summary: timings mean little without it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ..core import precision


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16() -> str:
    """Which native bf16 the CPU has (what train.precision=auto looks at), or 'no native bf16'."""
    return " + ".join(precision.cpu_bf16()) or "no native bf16"


def describe(device: torch.device) -> str:
    """e.g. 'AMD EPYC (2 cores, avx512_bf16; 1 torch thread)', or the CUDA card's name."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    threads = torch.get_num_threads()
    return (f"{cpu_name()} ({os.cpu_count()} cores, {cpu_bf16()}; "
            f"{threads} torch thread{'s' if threads != 1 else ''})")
