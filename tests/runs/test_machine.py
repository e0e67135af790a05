"""The machine a run names in its summary."""

import os

import torch

from tadlora.core.precision import native_bf16
from tadlora.runs import machine


def test_the_cpu_is_named_with_its_cores_bf16_and_threads(monkeypatch):
    cpu = torch.device("cpu")
    text = machine.describe(cpu)
    assert text.startswith(machine.cpu_name()) and f"({os.cpu_count()} cores, " in text
    assert ("no native bf16" in text) == (not native_bf16(cpu))  # what precision=auto saw
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert machine.describe(cpu).endswith("; 1 torch thread)")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert machine.cpu_bf16() == "avx512_bf16 + AMX"


def test_the_cpu_name_comes_from_cpuinfo_else_from_platform(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t: fpu\n")
    real = machine.Path
    monkeypatch.setattr(machine, "Path", lambda p: info if p == "/proc/cpuinfo" else real(p))
    assert machine.cpu_name() == "Some CPU 9000"
    info.unlink()  # no /proc/cpuinfo (macOS, Windows): what platform says
    monkeypatch.setattr(machine.platform, "processor", lambda: "arm")
    assert machine.cpu_name() == "arm"
