"""``hyperlips.precision``: bf16 is used where the CPU has it in hardware, detected from its flags, never assumed."""

from __future__ import annotations

import platform

import pytest

from hyperlips import precision as P

X86_AVX2 = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2"
X86_AVX512 = X86_AVX2 + " avx512f avx512dq avx512bw avx512vl avx512_vnni"


@pytest.mark.parametrize("flags, native", [
    (X86_AVX2, False),  # AVX2 only: bf16 is emulated
    (X86_AVX512, False),  # AVX-512 without its BF16 extension
    (X86_AVX512 + " avx512_bf16", True),  # Cooper Lake, Zen 4 and later
    (X86_AVX512 + " amx_bf16 amx_tile", True),  # Sapphire Rapids
    ("fp asimd evtstrm aes crc32 atomics fphp asimdhp", False),  # Arm without BF16
    ("fp asimd sve i8mm bf16 sve2", True),  # Arm with BF16
    ("", False),  # nothing known: never assume
])
def test_native_bf16_from_injected_flags(flags, native):
    assert P.cpu_has_native_bf16(flags.split()) is native
    assert P.auto_precision("cpu", flags.split()) == ("bf16" if native else "fp32")


@pytest.mark.parametrize("text, flags", [
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 AVX512_BF16\n\nprocessor\t: 1\nflags\t\t: fpu\n",
     {"fpu", "avx2", "avx512_bf16"}),
    ("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16\nCPU part\t: 0xd40\n", {"fp", "asimd", "bf16"}),
    ("processor\t: 0\nmodel name\t: something\n", None),
])
def test_cpuinfo_parsing(tmp_path, text, flags):
    f = tmp_path / "cpuinfo"
    f.write_text(text)
    got = P._read_cpuinfo(str(f))
    assert (None if got is None else {x.lower() for x in got}) == flags


def test_unreadable_cpuinfo_gives_none(tmp_path):
    assert P._read_cpuinfo(str(tmp_path / "missing")) is None


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="torch's bf16 probe is x86 only")
def test_this_machine_agrees_with_torch():
    """Two independent detectors agree on this machine: the operating system's flags and PyTorch's CPU probe."""
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is None:
        pytest.skip("this torch has no bf16 CPU probe")
    flags = P.cpu_flags()
    if not flags:
        pytest.skip("no CPU flags readable here")
    assert ("avx512_bf16" in flags) == bool(probe())
    if "amx_bf16" not in flags:
        assert P.cpu_has_native_bf16() == bool(probe())


def test_bench_skips_emulated_bf16(monkeypatch):
    """``hyperlips bench`` measures bf16 on CPU only where it is native, and says why it skipped it otherwise."""
    from hyperlips.eval import bench as B

    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(X86_AVX2.split()))
    reason = B.precision_support("cpu", "bf16")
    assert reason.startswith("skipped") and "bf16 instructions" in reason
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset((X86_AVX512 + " avx512_bf16").split()))
    assert B.precision_support("cpu", "bf16") is None  # bf16 convolutions run on every torch CPU build
    assert B.precision_support("cpu", "fp32") is None
    assert B.precision_support("cpu", "fp16").startswith("skipped")
