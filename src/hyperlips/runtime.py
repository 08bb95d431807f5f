"""Where and in what precision the networks run: the device asked for, and a precision that device computes
natively (``precision`` detects what the CPU has)."""

from __future__ import annotations

from .errors import UserError


def resolve_device(device: str = "auto"):
    """The torch device for ``auto`` (a CUDA GPU, else Apple's MPS, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
    a :class:`UserError` for a GPU that is not there or a name torch does not know."""
    import torch

    if isinstance(device, torch.device):  # (as a torch user passes it)
        device = str(device)
    if not isinstance(device, str):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps (got {device!r})")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but no CUDA GPU is available; use --device cpu")
    try:
        found = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if found.type == "cuda" and found.index is not None and found.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 to "
                        f"cuda:{torch.cuda.device_count() - 1})")
    if found.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                    and torch.backends.mps.is_available()):
        raise UserError(f"--device {device} was asked for but this machine (or this PyTorch build) has no Apple MPS "
                        "GPU; use --device auto or cpu")
    if found.type not in ("cpu", "cuda", "mps"):  # xpu, meta, hpu, ...: names torch knows that these networks do
        raise UserError(f"--device {device} is not supported; use auto, cpu, cuda, cuda:N or mps")  # not run on
    return found


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}  # None: the networks' own float32


def resolve_precision(precision: str, device) -> str:
    """The precision the networks run in: ``auto`` is the fastest one native to ``device`` (``precision.
    auto_precision``: bf16 on a CPU with bf16 instructions, else fp32; bf16 or fp16 on CUDA; fp32 elsewhere).
    Asking for one the device would only emulate is a :class:`UserError` (emulated bf16 on a CPU was measured at
    17 s per frame against 0.12 s in fp32)."""
    import torch

    from .precision import auto_precision, cpu_has_native_bf16

    if precision not in PRECISIONS:
        raise UserError(f"--precision (precision) must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    kind = device.type
    if precision == "auto":
        return auto_precision(kind) if kind in ("cpu", "cuda") else "fp32"
    if precision == "fp16" and kind != "cuda":
        raise UserError("--precision fp16 runs only on a CUDA GPU (a CPU emulates fp16, far slower than fp32); use "
                        "auto, fp32, or bf16 on a CPU that has bf16 instructions")
    if precision == "bf16":
        if kind == "cpu" and not cpu_has_native_bf16():
            raise UserError("--precision bf16: this CPU has no bf16 instructions (AVX512-BF16, AMX or Arm BF16), so "
                            "bf16 would be emulated, many times slower than fp32; use auto or fp32")
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16: this GPU has no bf16 support; use fp16 or auto")
    return precision


def in_precision(net, dtype: str):
    """``net`` (its weights already in ``dtype``) as a module that takes float32 tensors and computes in ``dtype``."""
    import torch

    class InPrecision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.dtype = net, getattr(torch, dtype)

        def forward(self, *args, **kwargs):
            return self.net(*(a.to(self.dtype) for a in args), **kwargs)

    return InPrecision()


def render_workers(device) -> tuple[int, int]:
    """How ``sync`` renders on ``device``: ``(batches at the same time, torch threads for each)``; ``(1, 0)``: one
    batch at a time on the process's threads.

    On a CPU with two or more torch threads, two batches at a time on half the threads each. Alone, that renders no
    faster (HyperLips-Base in bf16 on a 2-core Xeon with AMX: 6.8 ms per frame against 6.7 on both threads), but in
    ``sync``, where the other stages share the cores, a layer that keeps one core busy in one batch leaves the other
    core to the second batch instead of idle (docs/inference.md §8)."""
    import torch

    if device.type != "cpu":
        return 1, 0
    n = torch.get_num_threads()
    return (2, n // 2) if n >= 2 else (1, 0)
