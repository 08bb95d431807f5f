"""Which floating-point precision this machine computes natively, detected, never assumed.

bfloat16 halves the time of a convolution step only where the CPU has bf16 instructions (x86: AVX512-BF16 or
AMX-BF16; Arm: the BF16 extension). Elsewhere PyTorch still runs bf16, but emulated through fp32 and several
times slower than plain fp32. So a choice of precision "auto" must look at the CPU.

This module sits at the bottom of the package (it imports nothing from hyperlips, and torch only as a fallback)
so anything can use it: the test suite picks the precision of its training runs with :func:`auto_precision`,
``hyperlips bench`` skips emulated bf16 with :func:`cpu_has_native_bf16`, and a ``--precision auto`` option of
``sync`` or ``train`` is meant to call :func:`auto_precision` as well.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from typing import Iterable

# CPU flags (Linux /proc/cpuinfo names) that mean bf16 arithmetic in hardware
X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ARM_BF16_FLAGS = frozenset({"bf16"})


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The feature flags of the first processor listed (``flags`` on x86, ``Features`` on Arm); None if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def _macos_flags() -> frozenset[str] | None:
    """Apple silicon reports FEAT_BF16 through sysctl."""
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return frozenset({"bf16"}) if out.stdout.strip() == "1" else frozenset()


def _torch_flags() -> frozenset[str] | None:
    """What PyTorch's own CPU probe says (x86 only), when the operating system tells nothing."""
    try:
        import torch
    except ImportError:
        return None
    probe = getattr(getattr(torch, "cpu", None), "_is_avx512_bf16_supported", None)
    if probe is None:
        return None
    try:
        return frozenset({"avx512_bf16"}) if probe() else frozenset()
    except RuntimeError:
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it: ``taskset``, a container's cpuset;
    else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags, lower case (empty when they cannot be read)."""
    flags = None
    if os.path.exists("/proc/cpuinfo"):
        flags = _read_cpuinfo()
    elif platform.system() == "Darwin":
        flags = _macos_flags()
    if flags is None:
        flags = _torch_flags()
    return frozenset(f.lower() for f in (flags or ()))


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True when the CPU computes bfloat16 in hardware. ``flags``: CPU flags to judge instead of this machine's
    (tests inject them)."""
    have = cpu_flags() if flags is None else frozenset(f.lower() for f in flags)
    return bool(have & (X86_BF16_FLAGS | ARM_BF16_FLAGS))


def auto_precision(device: str = "cpu", flags: Iterable[str] | None = None) -> str:
    """The fastest precision that is native on ``device``: "bf16" or "fp32" on a CPU (by its flags), "bf16" or
    "fp16" on a CUDA GPU (bf16 where the GPU supports it)."""
    if str(device).startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16(flags) else "fp32"
