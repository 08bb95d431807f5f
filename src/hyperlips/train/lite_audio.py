"""Fitting HyperLips-Lite's audio encoder: mel stream -> mouth shapes, on chunks of consecutive frames.

The encoder (:mod:`hyperlips.models.lite_audio`) is fully convolutional over the mel stream, so it learns from
chunks: ``chunk`` consecutive video frames with 0.3 s of audio on either side, their mouth shapes read from the
encoder's output (one value every 50 ms) by linear interpolation at each frame's time. A minute of footage is a
few thousand frames; what keeps the encoder from learning them by heart (training r 0.99, held-out 0.5):

- augmentation: the chunk's audio and its frame times stretched together by up to 10% (speaking rate), shifted
  by up to a mel step, mel bins shifted by up to 2 (voice pitch), a band of up to 10 mel bins and short spans
  of time masked (SpecAugment), a random gain and noise;
- an ensemble of ``members`` nets (grouped convolutions) that see different chunks;
- the exponential moving average of the weights (0.995) is the fitted encoder;
- AdamW (weight decay 0.01) with a one-cycle learning rate.

Loss: MSE on the per-dimension standardised shape plus ``w_open`` x MSE on the standardised inner-lip opening
(the part of the shape lip sync is judged by). Measured on four people's held-out tails (one minute of footage
each, GRID: 4 minutes), the held-out mouth-opening correlation of the predicted shapes went from 0.50-0.58
(a single 1-D CNN on one window per frame, batch 64, 3000 steps) to 0.60-0.69 (0.86 for GRID), in 15-80 s.

An encoder with a phone head (``phone_mix``) has it fitted last, in closed form on every training frame
(:func:`fit_phone_head`), once the ensemble is fitted.

Every random draw comes from a generator seeded by ``seed``: a fit is reproducible. With a time limit
(``max_seconds``) the speed of the first ``PROBE_STEPS`` sets how many steps fit in it, and the learning-rate cycle
is laid over those instead (what ``finetune`` does with a short budget on a busy machine).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..face.mouth_shape import LOWER_INNER, MOVING, UPPER_INNER
from ..models.lite_audio import PHONE_REACH, RADIUS, STRIDE, sample_at

MEL_FPS = 80.0
PROBE_STEPS = 20  # steps timed before a time limit cuts a fit short


@dataclass
class AudioFitReport:
    steps: int
    seconds: float
    frames: int  # training frames with a mouth shape
    loss: float  # last step's
    asked: int = 0  # the steps asked for (more than ``steps`` when a time limit cut the fit short)


class ChunkSampler:
    """Chunks of consecutive frames of one clip range each, with their (normalised) mel around them.

    ``tracks``: per clip range, (mel (n_mels, T) normalised, frame times in seconds (n,), shapes (n, S) in
    shape units, ok (n,) bool). Shapes are standardised by ``std`` here."""

    def __init__(self, tracks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], std: np.ndarray,
                 chunk: int = 32):
        mels, pos, lo, hi, ys, oks, owner = [], [], [], [], [], [], []
        offset = 0
        for k, (mel, times, shapes, ok) in enumerate(tracks):
            n, t = len(times), mel.shape[1]
            if n == 0 or t < 2:
                continue
            mels.append(torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)))
            pos.append(np.asarray(times, np.float64) * MEL_FPS + offset)
            lo.append(np.full(n, offset))
            hi.append(np.full(n, offset + t - 1))
            ys.append(np.where(ok[:, None], shapes, 0.0) / std)
            oks.append(ok)
            owner.append(np.full(n, k))
            offset += t
        if not mels:
            raise ValueError("no frames to fit the audio encoder on")
        self.mel = torch.cat(mels, dim=1)  # (n_mels, sum T)
        self.pos = np.concatenate(pos)
        self.lo, self.hi = np.concatenate(lo), np.concatenate(hi)
        self.y = torch.from_numpy(np.concatenate(ys).astype(np.float32))
        self.ok = torch.from_numpy(np.concatenate(oks))
        owner = np.concatenate(owner)
        self.chunk = min(int(chunk), len(self.pos))
        first = np.arange(len(self.pos) - self.chunk + 1)
        self.starts = first[owner[first] == owner[first + self.chunk - 1]]
        if len(self.starts) == 0:  # every clip range shorter than a chunk: use shorter chunks
            self.chunk = int(min(np.bincount(owner)))
            first = np.arange(len(self.pos) - self.chunk + 1)
            self.starts = first[owner[first] == owner[first + self.chunk - 1]]
        self.span = float((self.pos[self.starts + self.chunk - 1] - self.pos[self.starts]).max())

    def draw(self, batch: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> mel (B, n_mels, L), frame positions in output steps (B, K), standardised shapes (B, K, S), ok (B, K)."""
        k = self.chunk
        pick = torch.randint(0, len(self.starts), (batch,), generator=g).numpy()
        f0 = self.starts[pick]
        fi = f0[:, None] + np.arange(k)[None]
        length = int(math.ceil((self.span * 1.25 + 2 * RADIUS + 8) / STRIDE)) * STRIDE
        rate = torch.exp(torch.empty(batch, 1).uniform_(-0.1, 0.1, generator=g))  # speaking rate
        jitter = torch.empty(batch, 1).uniform_(-1, 1, generator=g)
        pos = torch.from_numpy(self.pos[fi]).float()
        start = pos[:, :1] + jitter - RADIUS * rate - 2
        lo = torch.from_numpy(self.lo[f0]).float()[:, None]
        hi = torch.from_numpy(self.hi[f0]).float()[:, None]
        p = torch.maximum(torch.minimum(start + torch.arange(length)[None] * rate, hi), lo)
        i0 = torch.minimum(p.floor(), hi - 1).long()
        frac = (p - i0).clamp(0, 1)[:, None, :]
        mel = self.mel[:, i0].permute(1, 0, 2) * (1 - frac) + self.mel[:, i0 + 1].permute(1, 0, 2) * frac
        return mel, (pos + jitter - start) / rate / STRIDE, self.y[fi], self.ok[fi]


def augment(mel: Tensor, g: torch.Generator, n_mels: int = 80) -> Tensor:
    """Pitch-like bin shift (+-2), one frequency mask (<= 10 bins), time masks (<= 3 steps every 24), gain, noise;
    on the first ``n_mels`` rows. Rows below them (the phones' one-hot rows, ``models.lite.LiteConfig.phones``)
    are kept as they are, or all zeroed for a sample with probability ``PHONE_DROP``: the encoder learns to read
    the sound alone too (speech whose phones are not read)."""
    if mel.shape[1] > n_mels:
        sound = augment(mel[:, :n_mels], g, n_mels)
        keep = (torch.rand(mel.shape[0], 1, 1, generator=g) >= PHONE_DROP).to(mel.dtype)
        return torch.cat([sound, mel[:, n_mels:] * keep], 1)
    b, c, n = mel.shape
    shift = torch.randint(-2, 3, (b, 1, 1), generator=g)
    bins = torch.arange(c).view(1, c, 1)
    mel = torch.gather(mel, 1, (bins - shift).clamp(0, c - 1).expand(b, c, n))
    f0 = torch.randint(0, c - 10, (b, 1, 1), generator=g)
    fw = torch.randint(0, 11, (b, 1, 1), generator=g)
    nt = max(1, n // 24)
    t0 = torch.randint(0, max(1, n - 3), (b, nt, 1), generator=g)
    tw = torch.randint(0, 4, (b, nt, 1), generator=g)
    steps = torch.arange(n).view(1, 1, n)
    keep = ~((bins >= f0) & (bins < f0 + fw)) & ~((steps >= t0) & (steps < t0 + tw)).any(1, keepdim=True)
    gain = 0.2 * torch.randn(b, 1, 1, generator=g)
    return (mel + gain) * keep + 0.05 * torch.randn(mel.shape, generator=g)


PHONE_DROP = 0.5  # the share of samples fitted without their phones (measured: on 9 unseen speakers, the shapes'
# opening r 0.477 with phones and 0.456 without, against 0.456 for an encoder of the sound alone; never dropped: 0.483
# and 0.375)


def opening_of(shapes: Tensor) -> Tensor:
    """Inner-lip gap of shapes (..., S) (as ``face.mouth_shape.shape_opening``)."""
    return shapes[..., 2 * MOVING.index(LOWER_INNER) + 1] - shapes[..., 2 * MOVING.index(UPPER_INNER) + 1]


def one_cycle(opt, lr: float, steps: int):
    """The learning-rate cycle over ``steps``: a tenth warming up (at least a step and a half: torch's cycle divides
    by zero when its warm-up ends on step 0, as at 10 steps), the rest annealing."""
    total = max(2, int(steps))
    return torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=total, pct_start=max(0.1, 1.5 / total))


def fit_audio_encoder(encoder, tracks, *, steps: int = 600, batch: int = 8, chunk: int = 32, lr: float = 2e-3,
                      w_open: float = 1.0, seed: int = 0, max_seconds: float | None = None,
                      on_step: Callable[[int, float], None] | None = None) -> AudioFitReport:
    """Fit ``encoder`` (an :class:`~hyperlips.models.lite_audio.AudioShapeEncoder`, fresh or pretrained) to
    ``tracks`` (see :class:`ChunkSampler`) in place; sets its ``shape_std``. Each member draws its own chunks.
    ``max_seconds``: fewer steps (at least ``PROBE_STEPS``) when the first ones say ``steps`` would take longer."""
    t_start = time.perf_counter()
    shapes = np.concatenate([s[o] for _, _, s, o in tracks if len(s)])
    if len(shapes) < 3:
        raise ValueError("fewer than 3 frames with a mouth shape to fit the audio encoder on")
    std = shapes.std(axis=0) + 1e-3
    sampler = ChunkSampler(tracks, std, chunk)
    g = torch.Generator().manual_seed(int(seed))
    std_t = torch.from_numpy(std.astype(np.float32))
    open_std = float(opening_of(torch.from_numpy(shapes)).std()) + 1e-6
    e = encoder.members
    encoder.train()
    opt = torch.optim.AdamW(encoder.parameters(), lr, weight_decay=1e-2)
    sched = one_cycle(opt, lr, steps)
    ema = torch.optim.swa_utils.AveragedModel(encoder, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.995),
                                              use_buffers=True)
    loss_v = float("nan")
    total, step = steps, 0
    while step < total:
        draws = [sampler.draw(batch, g) for _ in range(e)]
        mel = torch.stack([augment(d[0], g) for d in draws], 1)  # (B, E, n_mels, L)
        y = encoder.head(encoder.drop(encoder.body(mel.flatten(1, 2))))
        y = y.view(len(y), e, encoder.n_shape, -1)
        out = torch.stack([sample_at(y[:, m], draws[m][1]) for m in range(e)], 1)  # (B, E, K, S)
        target = torch.stack([d[2] for d in draws], 1)
        ok = torch.stack([d[3] for d in draws], 1)[..., None].float()
        n_ok = ok.sum().clamp_min(1)
        loss = (((out - target) ** 2) * ok).sum() / (n_ok * encoder.n_shape)
        if w_open:
            po, yo = opening_of(out * std_t) / open_std, opening_of(target * std_t) / open_std
            loss = loss + w_open * (((po - yo) ** 2) * ok[..., 0]).sum() / n_ok
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update_parameters(encoder)
        loss_v = float(loss.detach())
        step += 1
        if on_step is not None:
            on_step(step, loss_v)
        if max_seconds is not None and step == PROBE_STEPS and total > step:
            fits = max(step, int(max_seconds / ((time.perf_counter() - t_start) / step)))
            if fits < total:  # the same cycle over fewer steps, continued from where it is
                total = fits
                sched = one_cycle(opt, lr, total)
                for _ in range(step):
                    sched.step()
    encoder.load_state_dict(ema.module.state_dict())
    with torch.no_grad():
        encoder.shape_std.copy_(std_t)
    encoder.eval()
    if getattr(encoder, "phone_mix", 0):
        fit_phone_head(encoder, tracks, std)
    return AudioFitReport(total, time.perf_counter() - t_start, int(len(shapes)), loss_v, steps)


RIDGE = 0.01  # the phone head's ridge penalty per training frame (its inputs are phone shares in [0, 1]). Measured
# with v4's ensemble on the starter's 9 held-out speakers (opening r 0.478 alone): mixed 0.4, 0.001 / 0.003 / 0.01 gave
# 0.500 / 0.501 / 0.502; at 0.01, mixed 0.3 / 0.4 / 0.5: 0.499 / 0.502 / 0.502


def fit_phone_head(encoder, tracks, std: np.ndarray, ridge: float = RIDGE) -> int:
    """Fit ``encoder.phone_head`` in closed form (ridge regression): every training frame with phones, its
    standardised shape against the head's inputs as the encoder reads them (the taps round the frame, each
    interpolated between output steps). Deterministic, a second or two. Returns the frames it was fitted on."""
    k = 2 * PHONE_REACH + 1
    xs, ys = [], []
    with torch.no_grad():
        for mel, times, shapes, ok in tracks:
            m = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None]
            p = encoder.phone_steps(m)[0].double()  # (P, L')
            n_out = p.shape[1]
            # (1, P * k + 1, L'): what the head reads at each output step, then whether phones were read there
            feats = F.pad(p, (PHONE_REACH, PHONE_REACH)).unfold(1, k, 1).permute(1, 0, 2).reshape(n_out, -1)
            stream = torch.cat([feats.T, (p.sum(dim=0, keepdim=True) > 0.5).double()])[None]
            pos = torch.from_numpy(np.asarray(times, np.float64) * MEL_FPS)[None]
            x, has = 0, torch.from_numpy(np.asarray(ok, bool)).clone()
            for offset, weight in encoder.taps:  # read as the encoder reads its stream
                got = sample_at(stream, (pos + offset) / STRIDE)[0]  # (n, P * k + 1)
                x = x + weight * got[:, :-1]
                has &= got[:, -1] > 1 - 1e-9  # no step without phones in the reading
            if has.any():
                xs.append(x[has])
                ys.append(torch.from_numpy(np.asarray(shapes, np.float64)[has.numpy()] / std))
        if not xs:
            raise ValueError("no training frames with phones to fit the phone head on")
        x, y = torch.cat(xs), torch.cat(ys)
        mu, y_mean = x.mean(dim=0), y.mean(dim=0)
        xc = x - mu
        gram = xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
        w = torch.linalg.solve(gram, xc.T @ (y - y_mean))  # (P * k, S)
        head = encoder.phone_head
        head.weight.copy_(w.T.reshape(head.weight.shape).to(head.weight.dtype))
        head.bias.copy_((y_mean - mu @ w).to(head.bias.dtype))
    return len(x)
