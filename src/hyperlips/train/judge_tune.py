"""Tuning the sync judge on what it is for: windows in sync ranked above windows out of sync.

The judge's audio encoder is first fitted as a regression (``train/lite_audio.py``: the mouth shape from the
speech). A shape that is right on average is not yet the best for telling sync from its absence, so a short tuning
follows on the judge's own measure: chunks of ``window + 2 * max_shift`` consecutive frames of a training clip; the
face's window in the middle of the chunk against the audio's window at each shift 0 and +-``min_shift`` to
+-``max_shift`` frames, each scored as the judge scores (the correlation of the two projected trajectories); the
loss is the mean over every (in sync, out of sync) pair of windows in the batch of softplus((s_off - s_sync) / tau),
a smooth count of the pairs in the wrong order, which is what 1 - AUC counts. The chunks are augmented as in the
fit, the face side (FaceMesh's shapes, the basis) stays as it is, and the moving average of the weights is kept.

Short on purpose: it gains in the first hundred or two steps and then learns the training speakers (measured on
held-out speakers, ``docs/starter.md``: held-out AUC up by 0.01-0.02 at 100-300 steps, below where it started by
1,000).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

TUNE_STEPS = 150  # of the cycles measured (100, 150, 200, 300), the best on 8 training speakers held back to choose it


def tune_judge(judge, tracks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], *,
               steps: int = TUNE_STEPS, lr: float = 5e-4, batch: int = 32, tau: float = 0.1, min_shift: int = 5,
               max_shift: int = 15, seed: int = 0, on_step: Callable[[int, float], None] | None = None) -> int:
    """Tune ``judge``'s audio encoder in place (its basis must be fitted) on ``tracks``: per clip range (mel
    (80, T) as the judge reads it, frame times (n,) s, shapes (n, n_shape) with 0 where ``ok`` (n,) is False).
    Returns the steps taken: 0 when no clip has ``window + 2 * max_shift`` consecutive frames (nothing to tune on);
    a batch without a window whose every frame has a face shape is drawn again, at most ``steps`` times in all."""
    import torch
    import torch.nn.functional as F

    from ..models.lite_audio import STRIDE
    from .lite_audio import ChunkSampler, augment, one_cycle

    enc, window = judge.audio_encoder, judge.config.window
    need = window + 2 * max_shift
    sampler = ChunkSampler(tracks, np.ones(enc.n_shape, np.float32), need)  # shapes as they are (unit "std")
    if sampler.chunk < need or steps < 1:
        return 0
    shifts = [0] + [d for d in range(-max_shift, max_shift + 1) if abs(d) >= min_shift]
    basis = judge.basis.detach().clone()
    g = torch.Generator().manual_seed(int(seed))
    enc.train()
    opt = torch.optim.AdamW(enc.parameters(), lr, weight_decay=1e-2)
    sched = one_cycle(opt, lr, steps)
    ema = torch.optim.swa_utils.AveragedModel(enc, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99),
                                              use_buffers=True)
    done = 0
    for _ in range(2 * steps):
        if done == steps:
            break
        mel, pos, shapes, ok = sampler.draw(batch, g)  # positions in output steps; read() takes mel steps
        whole = ok[:, max_shift:max_shift + window].all(dim=1)  # windows whose every frame has a face shape
        if not whole.any():  # (before the forward pass: BatchNorm's statistics would move)
            continue
        audio = enc.read(enc.sequence(augment(mel, g)).mean(dim=1), pos * STRIDE) @ basis.T  # (B, need, C)
        face = (shapes @ basis.T)[:, max_shift:max_shift + window]  # (B, window, C)
        scores = torch.stack([judge.window_score(audio[:, max_shift + d:max_shift + d + window], face)
                              for d in shifts], 1)[whole]  # (B', shifts): in sync first
        loss = F.softplus((scores[:, 1:].reshape(1, -1) - scores[:, :1]) / tau).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update_parameters(enc)
        done += 1
        if on_step is not None:
            on_step(done, float(loss.detach()))
    if done:
        enc.load_state_dict(ema.module.state_dict())
    enc.eval()
    return done
