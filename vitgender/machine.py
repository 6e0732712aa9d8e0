"""The machine a measurement ran on: CPU model, usable cores, the ISA flags that decide which kernels run.

Its own module because benchmarks, parity reports and baselines all record it, and a number
measured on one machine kind (AMD with VNNI, Intel with AMX) is compared only with one from the same kind.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def available_cores() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity API
        return os.cpu_count() or 1


ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
)


def machine() -> dict:
    """CPU model, usable cores and the ISA flags that decide which kernels run (printed with every bench)."""
    info = {"cpu": platform.processor() or "unknown", "cores": available_cores(), "isa": [], "mhz": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^(?:model name|Model)\s*:\s*(.+)$", text, re.M)
        flags = set((re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M) or [None, ""])[1].split())
        mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
        info["cpu"] = model[1].strip() if model else info["cpu"]
        info["isa"] = [f for f in ISA_FLAGS if f in flags]
        info["mhz"] = float(mhz[1]) if mhz else None
    except OSError:
        pass
    return info


BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def has_bf16_arithmetic(isa: list[str] | None = None) -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16): without either, a
    bf16 inference precision is emulated, slower than fp32 and no more faithful."""
    flags = machine()["isa"] if isa is None else isa
    return any(flag in flags for flag in BF16_FLAGS)
