"""Convolutions as a CPU runs them fastest, for inference (``models.inference.prepare_for_inference`` applies
both): the kernel taps that only ever meet zero padding left out (:func:`live_taps`), and a convolution, the
residual added to it and the activation after them computed in one oneDNN pass (:func:`fused_activations`). Both
keep a network's parameters and state dict and its outputs to float rounding (tested)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBlock


@functools.lru_cache(maxsize=4096)  # called on every convolution of every batch: the arithmetic once per shape
def _live_span(n: int, k: int, s: int, p: int, d: int) -> tuple[int, int, int, int] | None:
    """One axis of a convolution (``k`` taps, stride ``s``, zero padding ``p``, dilation ``d``) over ``n`` input
    pixels: ``(first, last, padding, dilation)`` of the taps that ever meet an input pixel, with the padding that
    keeps every output where it was; None when all taps do, when none does, or when the cut would move the output."""
    m = (n + 2 * p - d * (k - 1) - 1) // s + 1  # output pixels
    if m < 1:
        return None
    # tap t reads pixel j * s - p + t * d of output j: live if some output j in [0, m) lands it inside [0, n)
    live = [t for t in range(k) if max(0, -((t * d - p) // s)) <= min(m - 1, (n - 1 + p - t * d) // s)]
    if not live or len(live) == k or live != list(range(live[0], live[-1] + 1)):
        return None
    first, last = live[0], live[-1]
    pad, k2 = p - first * d, last - first + 1
    if pad < 0 or (n + 2 * pad - d * (k2 - 1) - 1) // s + 1 != m:
        return None
    return first, last, pad, d if k2 > 1 else 1


class LiveTapsConv2d(nn.Conv2d):
    """A ``Conv2d`` (the same parameters) that leaves out the taps of its kernel which, on an input of this size,
    only ever meet the zero padding. HyperLips-Base's audio encoder ends in dilated 5x5 depthwise convolutions over
    a 5x1 map, where only the kernel's middle column can reach the map: oneDNN runs that shape through a slow
    general path (about 17 ms for a batch of 16 on one core), the middle column alone in 0.05 ms."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        spans = [_live_span(x.shape[-2 + i], self.kernel_size[i], self.stride[i], self.padding[i], self.dilation[i])
                 for i in (0, 1)]
        if spans == [None, None]:
            return super()._conv_forward(x, weight, bias)
        (h0, h1, ph, dh), (w0, w1, pw, dw) = [
            span or (0, self.kernel_size[i] - 1, self.padding[i], self.dilation[i]) for i, span in enumerate(spans)]
        return F.conv2d(x, weight[:, :, h0:h1 + 1, w0:w1 + 1], bias, self.stride, (ph, pw), (dh, dw), self.groups)


def live_taps(net: nn.Module) -> int:
    """Make, in place, every zero-padded ``nn.Conv2d`` of ``net`` a :class:`LiveTapsConv2d` (the same parameters
    and state dict; on each input it leaves out the taps that only meet padding). Returns how many. The outputs are
    the same up to float rounding (the sums skip terms that are zero)."""
    changed = 0
    for m in net.modules():
        if (type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)
                and max(m.kernel_size) > 1):
            m.__class__ = LiveTapsConv2d
            changed += 1
    return changed


# the fused kernels pay where each frame's output is large (the passes they save grow with it, their own cost per
# call does not): below this many output values per frame (channels x height x width; Base's 128-px maps: 483,328,
# Lite's: 163,840) the steps run. Measured on an Intel Xeon with AMX, fusing every convolution made Base 6-9% slower
# at batch 1 in fp32 and Lite 6%. Per frame, not per batch, so the batch size never decides which path a value takes
MIN_FUSED = 1 << 17

# activations a convolution can apply as it writes its output (oneDNN post-ops), by the name the fused kernel takes
_ACTS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardswish: "hardswish"}
_STEPS = {"relu": torch.relu_, "sigmoid": torch.sigmoid_, "tanh": torch.tanh_,
          "hardswish": lambda t: F.hardswish(t, inplace=True)}


def _conv_act(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor | None = None,
              act: str = "relu") -> torch.Tensor | None:
    """act(conv(x) [+ residual]) in one oneDNN pass (a convolution with its add and activation as post-ops, the fused
    kernels PyTorch's own compiler uses on CPUs), or None where that does not apply (an output under
    :data:`MIN_FUSED` values per frame, not a channels-last float32/bfloat16 input on a CPU, or taps this input
    leaves to :class:`LiveTapsConv2d`): the caller then computes it step by step."""
    if x.dim() != 4 or conv.out_channels * x.shape[2] * x.shape[3] < MIN_FUSED * conv.stride[0] * conv.stride[1]:
        return None  # a small output per frame: the steps are cheaper
    if any(_live_span(x.shape[2 + i], conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i])
           for i in (0, 1)):
        return None  # LiveTapsConv2d's cut kernel runs instead
    return _fused(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, residual, act)


def _fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding, stride, dilation, groups: int,
           residual: torch.Tensor | None, act: str) -> torch.Tensor | None:
    cl = torch.channels_last  # the layout sync runs in on a CPU (in NCHW, bfloat16 has no fused add)
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or x.dtype != weight.dtype or \
            x.dim() != 4 or x.shape[1] < 2 or not x.is_contiguous(memory_format=cl) or (residual is not None and (
                residual.shape != x.shape[:1] + (weight.shape[0],) + x.shape[2:]
                or not residual.is_contiguous(memory_format=cl))):
        return None
    geometry = (list(padding), list(stride), list(dilation), groups)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, act, [], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, *geometry, "add", 1.0, act, [], "")


class ConvAct2d(LiveTapsConv2d):
    """A convolution that also applies the activation that followed it (``act``, the name in :data:`_ACTS`; that
    module becomes ``nn.Identity``): one pass where :func:`_conv_act` applies, the convolution then the activation
    in place elsewhere. The same parameters."""

    act = "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _conv_act(self, x, act=self.act)
        return out if out is not None else _STEPS[self.act](super().forward(x))


class _FusedBlock:
    """A :class:`ConvBlock`'s convolution, residual add and ReLU as one pass (a plain callable, not a submodule:
    the state dict stays the same); None where :func:`_conv_act` does not apply."""

    def __init__(self, conv: nn.Conv2d, residual: bool):
        self.conv, self.residual = conv, residual

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        return _conv_act(self.conv, x, x if self.residual else None)


@functools.lru_cache(maxsize=None)
def _fusable() -> frozenset[str]:
    """The activations this PyTorch's fused CPU kernels apply as the steps do (ReLU with and without a residual
    added; checked once, on a tiny convolution in float32 and bfloat16, with plain tensors, no module calls);
    empty where it has no such kernels."""
    works = set()
    gen = torch.Generator().manual_seed(0)
    for act in _ACTS.values():
        try:
            for dtype in (torch.float32, torch.bfloat16):
                w = (0.2 * torch.randn(4, 4, 3, 3, generator=gen)).to(dtype)
                w = w.contiguous(memory_format=torch.channels_last)
                b = torch.randn(4, generator=gen).to(dtype)
                x = torch.randn(1, 4, 5, 5, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    for res in ((x, None) if act == "relu" else (None,)):  # a residual: ConvBlock's ReLU alone
                        y = F.conv2d(x, w, b, 1, 1).float() + (0 if res is None else res.float())
                        got = _fused(x, w, b, (1, 1), (1, 1), (1, 1), 1, res, act)
                        if got is None or not torch.allclose(got.float(), _STEPS[act](y), rtol=0.02, atol=0.02):
                            raise ValueError(act)
            works.add(act)
        except (RuntimeError, AttributeError, TypeError, ValueError):
            continue
    return frozenset(works)


def fused_activations(net: nn.Module) -> int:
    """On a CPU, compute each plain convolution followed by a ReLU, sigmoid, tanh or hardswish (in an
    ``nn.Sequential``, batch norms folded away before), and each :class:`ConvBlock`'s convolution, residual add and
    ReLU, as one pass (:func:`_conv_act`): the sum and the activation no longer read and write the whole feature map
    again. Returns how many were fused (none where this PyTorch lacks the fused kernels). Elsewhere (CUDA, an input
    they do not take) the steps run as before. In float32 the outputs are the same; in bfloat16 the residual is
    added before the result is rounded, not after."""
    works = _fusable()
    fused = 0
    for m in list(net.modules()):
        if isinstance(m, ConvBlock):
            convs = [c for c in m.conv_block if not isinstance(c, nn.Identity)]
            if "relu" in works and len(convs) == 1 and type(convs[0]) in (nn.Conv2d, LiveTapsConv2d) and \
                    type(m.act) is nn.ReLU:
                m.fused = _FusedBlock(convs[0], m.residual)
                fused += 1
        elif isinstance(m, nn.Sequential):
            for i, child in enumerate(m):
                if type(child) not in (nn.Conv2d, LiveTapsConv2d) or child.padding_mode != "zeros" or \
                        isinstance(child.padding, str):
                    continue
                j = i + 1
                while j < len(m) and isinstance(m[j], nn.Identity):
                    j += 1
                act = _ACTS.get(type(m[j])) if j < len(m) else None
                if act in works:
                    child.__class__ = ConvAct2d
                    child.act = act
                    m[j] = nn.Identity()
                    fused += 1
    return fused
