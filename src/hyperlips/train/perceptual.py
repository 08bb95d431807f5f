"""Perceptual losses for the HR stage: VGG19 features, LPIPS, and SSIM (the fallback that needs no weights).

No weights are downloaded, ever. ImageNet weights are read from a local file:

- VGG19: ``vgg19-dcbb9e9d.pth`` (torchvision's file and key layout, ``features.<i>.weight``), looked up as the
  path given, then ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch/hub/checkpoints/``).
- LPIPS (VGG variant, v0.1): the linear heads ``vgg.pth`` (keys ``lin<k>.model.1.weight``; shipped inside the
  ``lpips`` pip package, found there without importing it, or ``$TORCH_HOME/hub/checkpoints/lpips_vgg_v0.1.pth``)
  plus the torchvision VGG16 backbone ``vgg16-397923af.pth`` from the same hub folder.

Inputs are the networks' images: BGR, [0, 1], NCHW. They are converted here to what the ImageNet networks
expect (RGB; ImageNet mean/std for VGG19, [-1, 1] for LPIPS), fixing the original's unnormalised BGR input.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG16_FILE = "vgg16-397923af.pth"
LPIPS_HEADS_FILE = "lpips_vgg_v0.1.pth"

_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_LPIPS_SLICES = (4, 9, 16, 23, 30)  # VGG16 features[:4] relu1_2, [4:9] relu2_2, [9:16] relu3_3, ... relu5_3


def hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's own default when TORCH_HOME is unset)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _vgg_features(cfg: list) -> nn.Sequential:
    """torchvision's ``vgg*.features`` layout (same module indices, so its state-dict keys load as they are)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers)


def _load_features(features: nn.Sequential, path: Path, what: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    own = features.state_dict()
    feats = {k: v for k, v in feats.items() if k in own}
    missing = [k for k in own if k not in feats]
    if missing or any(feats[k].shape != own[k].shape for k in own):
        raise ValueError(f"{path}: not torchvision {what} weights (missing or misshaped: {missing[:3]})")
    features.load_state_dict(feats)


def _bgr01_to_rgb(x: Tensor) -> Tensor:
    return x.flip(1)


def find_file(name: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit`` if it exists, else ``name`` in the torch hub checkpoints folder, else None."""
    if explicit:
        p = Path(explicit).expanduser()
        return p if p.is_file() else None
    p = hub_checkpoints() / name
    return p if p.is_file() else None


def find_lpips_heads(explicit: str | os.PathLike | None = None) -> Path | None:
    """The LPIPS VGG v0.1 linear heads: ``explicit``, the installed ``lpips`` package's file, or the hub folder."""
    if explicit:
        p = Path(explicit).expanduser()
        return p if p.is_file() else None
    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "weights" / "v0.1" / "vgg.pth"
            if p.is_file():
                return p
    p = hub_checkpoints() / LPIPS_HEADS_FILE
    return p if p.is_file() else None


class VGG19Loss(nn.Module):
    """L1 between VGG19 ``features[:35]`` maps (through conv5_4, before its ReLU; ESRGAN style) of two images.

    Frozen, eval mode. ``forward(x, y)``: BGR [0, 1] (N,3,H,W) each -> scalar.
    """

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        self.features = _vgg_features(_VGG19_CFG)
        _load_features(self.features, Path(weights), "VGG19")
        self.features = self.features[:35]
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Loss":
        return super().train(False)

    def _prep(self, x: Tensor) -> Tensor:
        return (_bgr01_to_rgb(x) - self.mean) / self.std

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx = self.features(self._prep(x.float()))
        with torch.no_grad():
            fy = self.features(self._prep(y.float()))
        return F.l1_loss(fx, fy)


class LPIPS(nn.Module):
    """LPIPS distance (VGG16 backbone, v0.1 linear heads), per image. Frozen, eval mode.

    ``forward(x, y)``: BGR [0, 1] (N,3,H,W) each -> (N,) distances.
    """

    def __init__(self, heads: str | os.PathLike, backbone: str | os.PathLike):
        super().__init__()
        features = _vgg_features(_VGG16_CFG)
        _load_features(features, Path(backbone), "VGG16")
        bounds = (0,) + _LPIPS_SLICES
        self.slices = nn.ModuleList([features[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS])
        state = torch.load(heads, map_location="cpu", weights_only=True)
        for k, lin in enumerate(self.lins):
            key = f"lin{k}.model.1.weight"
            if key not in state or state[key].shape != lin.weight.shape:
                raise ValueError(f"{heads}: not LPIPS VGG linear heads (no {key} of shape {tuple(lin.weight.shape)})")
            lin.weight.data.copy_(state[key])
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        hx = (_bgr01_to_rgb(x.float()) * 2 - 1 - self.shift) / self.scale
        hy = (_bgr01_to_rgb(y.float()) * 2 - 1 - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for sl, lin in zip(self.slices, self.lins):
            hx, hy = sl(hx), sl(hy)
            nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny).pow(2)).mean(dim=(1, 2, 3))
        return total


def _gaussian(size: int, sigma: float, device, dtype) -> Tensor:
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM per image (N,) of (N,C,H,W) images in [0, 1] (Gaussian window, C1 = 0.01², C2 = 0.03²).

    The window shrinks (odd) for images smaller than it.
    """
    x, y = x.float(), y.float()
    side = min(x.shape[-2:])
    if side < window:
        window = side if side % 2 else side - 1
    c = x.shape[1]
    g = _gaussian(window, sigma, x.device, x.dtype)
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, window)
    ky = g.view(1, 1, -1, 1).expand(c, 1, window, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


def ssim_loss(x: Tensor, y: Tensor) -> Tensor:
    """1 - SSIM, averaged over the batch."""
    return (1.0 - ssim(x, y)).mean()
