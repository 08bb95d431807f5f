"""The public SyncNet (Chung & Zisserman 2016, ``syncnet_v2.model``) and its input features, for LSE-C / LSE-D.

This is the network that the LSE metrics of the lip-sync literature are computed with: a 3-D convolutional lip
tower on five 224x224 colour face crops and a 2-D convolutional audio tower on 13 MFCCs x 20 steps (0.2 s), each
ending in a 1024-d embedding compared by Euclidean distance. The layer layout (and so the state-dict keys
``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``, ``netfclip.*``) matches the published weights file, which users
download themselves; nothing here downloads anything.

Inputs exactly as the public evaluation feeds them:

* lip tower: (N, 3, 5, 224, 224) float32, **BGR, raw 0..255** (no scaling, no mean subtraction): the frames of the
  face-track crop as OpenCV reads them;
* audio tower: (N, 1, 13, 20) float32 MFCCs computed by :func:`mfcc` (python_speech_features defaults) from
  16 kHz mono audio at **int16 scale** (the evaluation reads the wav with ``scipy.io.wavfile``, so sample values
  run to +-32768, which shifts the log-energy coefficient).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

MFCC_RATE = 100  # MFCC steps per second (10 ms hop)
MFCC_PER_FRAME = 4  # at the protocol's 25 fps
MFCC_WINDOW = 20  # MFCC steps per 5-frame window
LIP_FRAMES = 5
CROP_SIZE = 224
PROTOCOL_FPS = 25.0
EMBED_DIM = 1024


# --------------------------------------------------------------------------------------------- MFCC (numpy)
def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank_psf(n_filters: int = 26, n_fft: int = 512, sample_rate: int = 16000,
                       low_hz: float = 0.0, high_hz: float | None = None) -> np.ndarray:
    """Triangular mel filters as python_speech_features builds them: (n_filters, n_fft//2+1), peaks of 1 on FFT bins."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    points = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), n_filters + 2)
    bins = np.floor((n_fft + 1) * _mel_to_hz(points) / sample_rate)
    fb = np.zeros((n_filters, n_fft // 2 + 1))
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)
    for j in range(n_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        rise = (k >= lo) & (k < mid)
        fall = (k >= mid) & (k < hi)
        fb[j, rise] = (k[rise] - lo) / (mid - lo)
        fb[j, fall] = (hi - k[fall]) / (hi - mid)
    return fb


def mfcc(wav: np.ndarray, sample_rate: int = 16000, n_cep: int = 13, n_filters: int = 26, n_fft: int = 512,
         win_s: float = 0.025, hop_s: float = 0.01, preemph: float = 0.97, lifter: int = 22,
         int16_scale: bool = True) -> np.ndarray:
    """(L,) mono audio -> (n_cep, T) MFCCs exactly as ``python_speech_features.mfcc`` with its defaults computes them.

    25 ms rectangular frames every 10 ms (the last one zero-padded), pre-emphasis 0.97, power spectrum |rfft(512)|^2/512,
    26 mel filters 0..8000 Hz, log, orthonormal DCT-II, lifter 22, coefficient 0 replaced by log frame energy.
    ``int16_scale``: the input is float in [-1, 1] and is first multiplied by 32768 (the evaluation reads int16 wavs).
    T = 1 + ceil((L - 400) / 160) (1 when L <= 400).
    """
    from scipy.fft import dct

    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("mfcc: empty audio")
    if int16_scale:
        x = x * 32768.0
    x = np.append(x[0], x[1:] - preemph * x[:-1])
    flen = int(math.floor(win_s * sample_rate + 0.5))
    fstep = int(math.floor(hop_s * sample_rate + 0.5))
    n = 1 if len(x) <= flen else 1 + int(math.ceil((len(x) - flen) / fstep))
    x = np.concatenate([x, np.zeros((n - 1) * fstep + flen - len(x))])
    idx = np.arange(flen)[None, :] + fstep * np.arange(n)[:, None]
    frames = x[idx]
    pspec = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    eps = np.finfo(float).eps
    energy = pspec.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ mel_filterbank_psf(n_filters, n_fft, sample_rate).T
    feat = np.where(feat == 0, eps, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :n_cep]
    if lifter > 0:
        cep = cep * (1.0 + (lifter / 2.0) * np.sin(np.pi * np.arange(n_cep) / lifter))
    cep[:, 0] = np.log(energy)
    return cep.T.astype(np.float32)


# --------------------------------------------------------------------------------------------- face crop
def protocol_crop_params(boxes: np.ndarray, crop_scale: float = 0.4, kernel: int = 13) -> np.ndarray:
    """Face-track boxes (N,4) x1,y1,x2,y2 -> (N,3) [centre x, centre y, half size], median-filtered as the protocol does.

    half size = max(box width, box height) / 2; each of the three series goes through ``scipy.signal.medfilt``
    with a 13-frame kernel (zero padded at the ends, as in the public pipeline).
    """
    from scipy.signal import medfilt

    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2.0
    cy = (b[:, 1] + b[:, 3]) / 2.0
    cx = (b[:, 0] + b[:, 2]) / 2.0
    k = kernel if len(b) >= kernel else (len(b) if len(b) % 2 else max(1, len(b) - 1))
    return np.stack([medfilt(cx, k), medfilt(cy, k), medfilt(s, k)], axis=1)


def protocol_crop(frame: np.ndarray, cx: float, cy: float, half: float, crop_scale: float = 0.4,
                  size: int = CROP_SIZE) -> np.ndarray:
    """The protocol's face crop of one BGR frame: square, 2.8 x half-size wide, face at the top, resized to 224.

    The frame is padded by int(half * (1 + 2*crop_scale)) pixels of value 110; rows run from cy - half to
    cy + half*(1 + 2*crop_scale), columns from cx - half*(1 + crop_scale) to cx + half*(1 + crop_scale)
    (so the crop reaches below the chin), then ``cv2.resize`` (bilinear) to 224x224.
    """
    import cv2

    pad = int(half * (1 + 2 * crop_scale))
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(110, 110, 110))
    my, mx = cy + pad, cx + pad
    y0, y1 = int(my - half), int(my + half * (1 + 2 * crop_scale))
    x0, x1 = int(mx - half * (1 + crop_scale)), int(mx + half * (1 + crop_scale))
    face = padded[max(0, y0) : max(y0 + 1, y1), max(0, x0) : max(x0 + 1, x1)]
    return cv2.resize(face, (size, size))


# --------------------------------------------------------------------------------------------- network
def _build():
    import torch.nn as nn

    def conv2(cin, cout, k, s=1, p=1):
        return [nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    def conv3(cin, cout, k, s=(1, 1, 1), p=0):
        return [nn.Conv3d(cin, cout, k, s, p), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]

    # audio: (N,1,13,20) -> (N,512,1,1); index layout = the published state-dict keys
    aud = [
        *conv2(1, 64, 3), nn.MaxPool2d(1, 1),                                   # 0-3: 64x13x20
        *conv2(64, 192, 3), nn.MaxPool2d(3, (1, 2)),                             # 4-7: 192x11x9
        *conv2(192, 384, 3),                                                     # 8-10
        *conv2(384, 256, 3),                                                     # 11-13
        *conv2(256, 256, 3), nn.MaxPool2d(3, 2),                                 # 14-17: 256x5x4
        *conv2(256, 512, (5, 4), 1, 0),                                          # 18-20: 512x1x1
    ]
    # lips: (N,3,5,224,224) -> (N,512,1,1,1)
    lip = [
        *conv3(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),             # 0-3: 96x1x54x54
        *conv3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),  # 4-7: 13x13
        *conv3(256, 256, (1, 3, 3), 1, (0, 1, 1)),                                              # 8-10
        *conv3(256, 256, (1, 3, 3), 1, (0, 1, 1)),                                              # 11-13
        *conv3(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),          # 14-17: 6x6
        *conv3(256, 512, (1, 6, 6), 1, 0),                                                      # 18-20: 1x1
    ]

    def head():
        return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBED_DIM))

    return nn.Sequential(*aud), nn.Sequential(*lip), head(), head()


def _module_class():
    import torch.nn as nn

    class PublicSyncNet(nn.Module):
        """The public SyncNet ``S`` model: audio and lip towers with 1024-d outputs (not normalised)."""

        def __init__(self) -> None:
            super().__init__()
            self.netcnnaud, self.netcnnlip, self.netfcaud, self.netfclip = _build()

        def forward_aud(self, mfcc_windows):
            # mfcc_windows (N,1,13,20) -> (N,1024)
            return self.netfcaud(self.netcnnaud(mfcc_windows).flatten(1))

        def forward_lip(self, frames):
            # frames (N,3,5,224,224) BGR 0..255 -> (N,1024)
            return self.netfclip(self.netcnnlip(frames).flatten(1))

    return PublicSyncNet


_CLS = None


def PublicSyncNet():  # noqa: N802 - a class factory that keeps torch out of module import time
    """Build the (randomly initialised) public SyncNet; see :func:`load_public_syncnet` for the weights."""
    global _CLS
    if _CLS is None:
        _CLS = _module_class()
    return _CLS()


def load_public_syncnet(path: str | os.PathLike | None, device="cpu"):
    """The public SyncNet with the weights of ``syncnet_v2.model`` at ``path``, in eval mode.

    Raises :class:`CheckpointError` (a one-line user error) when no path is given, the file is missing, or its
    tensors do not fit the network. The file is a plain state dict (as the public repository distributes it); a
    ``{"state_dict": ...}`` wrapper and ``module.`` prefixes are accepted too.
    """
    from ..models.checkpoint import read_tensors

    if path is None:
        raise CheckpointError(
            "LSE-C/LSE-D need the public SyncNet weights: download syncnet_v2.model (from the joonson/syncnet_python "
            "repository's download_model.sh) and pass it with --syncnet PATH")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"SyncNet weights not found: {p} (pass the path of syncnet_v2.model with --syncnet)")
    try:  # says what the file is when it holds no tensors (empty, text, damaged, pickled objects)
        state = read_tensors(p, expected="syncnet_v2.model, the public SyncNet's PyTorch state dict")
    except CheckpointError as e:
        raise CheckpointError(f"cannot read SyncNet weights: {e}") from None
    net = PublicSyncNet()
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unknown = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unknown or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unknown:
            parts.append(f"{len(unknown)} unexpected tensors (e.g. {unknown[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(f"{p} does not hold the public SyncNet (syncnet_v2.model) weights: {'; '.join(parts)}")
    net.load_state_dict(state, strict=False)
    return net.to(device).eval()
