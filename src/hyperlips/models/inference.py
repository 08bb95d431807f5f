"""Inference-only rewrites of a network: every batch norm folded into the convolution before it
(:func:`fold_batchnorm`), the activations after them computed in place (:func:`activations_in_place`), the
kernel taps that only ever meet zero padding left out, and on a CPU a convolution, the residual added to it and
the activation after them computed in one pass (:mod:`.cpu_convs`); :func:`prepare_for_inference` does all four,
as ``sync`` and ``bench`` run the networks.

In eval mode a BatchNorm2d is a per-channel affine map, y = s * x + t with s = gamma / sqrt(var + eps) and
t = beta - mean * s, so a convolution followed by it is one convolution with its output channels scaled by s and
its bias moved by t. For the hypernetwork's generated convolutions (``BatchConv2d``) the same scaling goes into
the linear layers that generate the kernels and biases. The outputs are the same up to float rounding (about
1e-7 in fp32); a 3x3 convolution and a separate batch-norm pass become one pass over the feature map, which on a
CPU saves about an eighth of HyperLips-Base's time. The folded network cannot be trained or saved as a checkpoint
(its batch norms are gone): use it for inference only.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, ConvTransposeBlock
from .cpu_convs import fused_activations, live_taps
from .hyper import BatchConv2d

# modules whose output is a new tensor that nothing else holds (inside an nn.Sequential, only the next module sees
# it), and the activations that can overwrite such a tensor instead of allocating another
_FRESH = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.Linear, BatchConv2d)
_IN_PLACE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid)


def _f64(t: torch.Tensor) -> torch.Tensor:
    # the fold is computed in float64 on the CPU (some devices, Apple's MPS among them, have no float64)
    return t.detach().to("cpu", torch.float64)


def _like(value: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return value.to(device=ref.device, dtype=ref.dtype)


def _affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    # the eval-mode batch norm as y = s * x + t
    var, mean = _f64(bn.running_var), _f64(bn.running_mean)
    gamma = _f64(bn.weight) if bn.weight is not None else torch.ones_like(var)
    beta = _f64(bn.bias) if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - mean * s


def _fold_conv(conv: nn.Conv2d, s: torch.Tensor, t: torch.Tensor) -> None:
    w = conv.weight
    conv.weight.data = _like(_f64(w) * s.view(-1, 1, 1, 1), w)
    b = _f64(conv.bias) if conv.bias is not None else torch.zeros_like(s)
    conv.bias = nn.Parameter(_like(b * s + t, w), requires_grad=False)


def _fold_generated(conv: BatchConv2d, s: torch.Tensor, t: torch.Tensor) -> None:
    # kernel rows are laid out (cout, cin, k, k) row-major: each output channel owns cin * k * k consecutive rows
    rows = s.repeat_interleave(conv.in_channels * conv.kernel_size * conv.kernel_size)
    k, b = conv.hyperkernel, conv.hyperbias
    k.weight.data = _like(_f64(k.weight) * rows[:, None], k.weight)
    k.bias.data = _like(_f64(k.bias) * rows, k.bias)
    b.weight.data = _like(_f64(b.weight) * s[:, None], b.weight)
    b.bias.data = _like(_f64(b.bias) * s + t, b.bias)


def fold_batchnorm(net: nn.Module) -> int:
    """Fold, in place, each eval-mode BatchNorm2d that directly follows a Conv2d (or a generated ``BatchConv2d``)
    in an ``nn.Sequential`` into that convolution, replacing the norm by ``nn.Identity``. Returns how many were
    folded. Raises if ``net`` is in training mode (its batch norms would use batch statistics)."""
    if net.training:
        raise ValueError("fold_batchnorm: the network is in training mode; call .eval() first (inference only)")
    folded = 0
    with torch.no_grad():
        for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
            for i in range(len(seq) - 1):
                conv, bn = seq[i], seq[i + 1]
                if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
                    continue
                if isinstance(conv, nn.Conv2d):
                    _fold_conv(conv, *_affine(bn))
                elif isinstance(conv, BatchConv2d):
                    _fold_generated(conv, *_affine(bn))
                else:
                    continue
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


def activations_in_place(net: nn.Module) -> int:
    """Make, in place, every activation that only ever sees a fresh tensor overwrite it instead of allocating a new
    one: in an ``nn.Sequential``, those right after a convolution, a norm or a linear layer (``nn.Identity``, a
    folded norm, in between changes nothing); the ReLU of a :class:`ConvBlock` (after its residual add, which then
    adds in place too) and of a :class:`ConvTransposeBlock`. Returns how many were changed.

    It assumes every ``nn.Sequential`` runs as a chain (nothing keeps an output from inside it), as in this
    package's networks, whose outputs stay bit for bit the same (tested). On a CPU, where a large new tensor costs
    page faults, it saves about a fifth of HyperLips-Base's time. For inference: autograd refuses in-place changes
    to tensors it needs."""
    changed = 0
    for m in net.modules():
        if isinstance(m, nn.Sequential):
            fresh = False
            for child in m:
                if isinstance(child, _IN_PLACE) and fresh:
                    child.inplace = True
                    changed += 1
                elif not isinstance(child, nn.Identity):
                    fresh = isinstance(child, _FRESH)
        elif isinstance(m, (ConvBlock, ConvTransposeBlock)):
            m.act.inplace = True
            if isinstance(m, ConvBlock):
                m.add_in_place = True
            changed += 1
    return changed


def prepare_for_inference(net: nn.Module) -> nn.Module:
    """``net`` (in eval mode) as ``sync`` runs it: batch norms folded, activations in place, dead taps left out,
    convolutions fused with their residual and activation on a CPU. Returns ``net``."""
    fold_batchnorm(net)
    activations_in_place(net)
    live_taps(net)
    fused_activations(net)
    return net
