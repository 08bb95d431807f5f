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


# --------------------------------------------------------------------------------------------- sync --precision
def test_precision_choice_for_inference(monkeypatch):
    """``auto`` follows the CPU's flags; fp16 on a CPU and bf16 on a CPU without bf16 instructions are one-line
    user errors (emulated, they would be many times slower than fp32), never silently slow."""
    import torch

    from hyperlips.errors import UserError
    from hyperlips.runtime import resolve_precision

    cpu = torch.device("cpu")
    for flags, want in ((X86_AVX512 + " avx512_bf16", "bf16"), (X86_AVX2, "fp32")):
        monkeypatch.setattr(P, "cpu_flags", lambda flags=flags: frozenset(flags.split()))
        assert resolve_precision("auto", cpu) == want
        assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(UserError, match="no bf16 instructions"):
        resolve_precision("bf16", cpu)  # the flags are AVX2's here
    with pytest.raises(UserError, match="fp16 runs only on a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(UserError, match=r"--precision \(precision\) must be one of"):
        resolve_precision("int8", cpu)


@pytest.mark.skipif(not P.cpu_has_native_bf16(), reason="this CPU has no bf16 instructions: bf16 inference is refused")
def test_bf16_faces_are_within_two_grey_levels_of_fp32(tmp_path):
    """The networks in bf16 against fp32 on the same inputs (a real face, random speech windows): Lite and Base with
    random weights, and a Base that renders its reference face (a full range of real pixel values), alone and
    followed by a random HR decoder. Measured: at most 1 grey level apart (0.07-0.53 on average); with the HR decoder
    up to 5 at a few pixels (0.3 on average)."""
    import cv2
    import numpy as np
    import torch

    from helpers import copying_base_checkpoint, random_hr_checkpoint
    from hyperlips.demo import demo_face
    from hyperlips.pipeline import LipSync

    face = cv2.resize(demo_face()[60:200, 160:300], (128, 128), interpolation=cv2.INTER_AREA)
    x = np.concatenate([face, face], 2).transpose(2, 0, 1)[None].repeat(4, 0).astype(np.float32) / 255
    x[:, :3, 64:] = 0
    copying = copying_base_checkpoint(tmp_path / "copying.pth")
    hr = random_hr_checkpoint(tmp_path / "hr128.pth", 128)
    cases = {"lite": dict(untrained=True, model="lite"), "base": dict(untrained=True, model="base"),
             "copying base": dict(checkpoint=copying), "copying base + HR": dict(checkpoint=copying, hr_checkpoint=hr)}
    for name, kw in cases.items():
        out = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            ls = LipSync(device="cpu", precision=precision, progress=False, **kw)
            assert ls.precision == precision
            steps = getattr(ls.base, "mel_steps", 16)
            windows = np.random.default_rng(1).standard_normal((4, 1, 80, steps)).astype(np.float32)
            out[precision] = ls.generate(windows, x).astype(int)
        d = np.abs(out["fp32"] - out["bf16"])
        if name in ("lite", "copying base"):  # random Base (and HR) render flat faces; these a full range
            assert out["fp32"].max() - out["fp32"].min() > 40, name
        # the HR decoder is driven by a face mesh drawn on the base output: bf16 may move a line of it by a pixel
        assert d.max() <= (8 if "HR" in name else 2) and d.mean() <= 0.6, (name, d.max(), d.mean())
