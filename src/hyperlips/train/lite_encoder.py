"""The audio encoder of a HyperLips-Lite run (``train/lite.py``): its fit on the training footage before the
renderer trains, with the probe that chooses how much of a person's fit to keep (``train/audio_blend.py``), and
the gain that gives its shapes the real mouths' spread.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch


def fit_person_encoder(gen, tracks, cfg, ctx, seconds: float | None = None, blend: bool = False) -> None:
    """Fit ``gen``'s audio encoder on ``tracks`` (the training clips' mel, frame times and mouth shapes:
    ``train/lite_audio.py``) with ``cfg``'s audio settings, in at most ``seconds`` (fewer steps when the first ones
    say it would take longer), with a progress bar and ``ctx.say``'s account; with ``blend``, keep the share of the
    fit a probe chooses (``train/audio_blend.py``), the rest its starting weights."""
    from tqdm import tqdm

    from ..bars import width_options
    from .audio_blend import CHECK_SHARE, blend_states, choose_share, other_voices
    from .lite_audio import fit_audio_encoder

    fits = 2 if blend else 1  # a probe fit first chooses how much of the fit to keep
    limit = "" if seconds is None else f", at most {seconds:.0f} s of the time budget"
    probe = " and a probe fit choosing how much of it to keep" if blend else ""
    ctx.say(f"fitting the audio encoder ({cfg.audio_steps} steps{probe}{limit}) before the renderer trains")
    bar = tqdm(total=fits * cfg.audio_steps, desc="fit audio encoder", unit="step", leave=False,
               disable=not (cfg.progress and ctx.dist.main), **width_options(sys.stderr))
    every, t0 = max(1, cfg.audio_steps // 10), time.perf_counter()

    def on_step(done: int, loss: float) -> None:  # done: steps so far
        bar.update(1)
        if bar.disable and done % every == 0:  # no bar (a log file): a line every tenth of the fit
            ctx.say(f"fit audio encoder: step {done}/{cfg.audio_steps}, loss {loss:.4f}, "
                    f"{time.perf_counter() - t0:.0f} s")

    def fit(encoder, part):
        encoder.requires_grad_(True)
        try:
            return fit_audio_encoder(encoder, part, steps=cfg.audio_steps, lr=cfg.audio_lr, w_open=cfg.audio_w_open,
                                     seed=cfg.seed, max_seconds=None if seconds is None else seconds / fits,
                                     on_step=on_step)
        finally:
            encoder.requires_grad_(False)

    enc = gen.audio_encoder
    try:
        voices = other_voices(gen) if blend and cfg.audio_voice_margin < 1 else []
        share, scores, heard = choose_share(enc, tracks, fit, voices=voices, margin=cfg.audio_voice_margin) \
            if blend else (1.0, {}, {})
        start = {k: v.detach().clone() for k, v in enc.state_dict().items()}
        rep = fit(enc, tracks)
    finally:
        bar.close()
    if share < 1.0:
        enc.load_state_dict(blend_states(enc.state_dict(), start, share))
    if scores:
        read = ", ".join(f"{s:.1f} r {r:.3f}" for s, r in scores.items())
        kept = "the whole fit kept" if share == 1.0 else \
            f"{share:.1f} of the fit kept, {1 - share:.1f} of its starting weights"
        ctx.say(f"audio encoder: {kept} (a probe fitted on the first {1 - CHECK_SHARE:.0%} of the training "
                f"frames read the last {CHECK_SHARE:.0%} with each share of its fit: {read})")
        if heard:
            told = ", ".join(f"{s:.1f} {a:.2f}" for s, a in sorted(heard.items(), reverse=True))
            ctx.say(f"audio encoder: other voices' /p b m/ told from their vowels (espeak-ng, AUC) with each share "
                    f"of the fit: {told} (a share may read them at most {cfg.audio_voice_margin:.2f} below the "
                    f"starting weights, share 0.0)")
        elif blend and cfg.audio_voice_margin < 1:
            ctx.say("audio encoder: other voices not checked (espeak-ng could not speak)")
    elif blend:
        ctx.say("audio encoder: the whole fit kept (too few training frames left to check a probe fit on)")
    if ctx.dist.enabled:  # a time limit may have cut the processes' fits differently: all take the first's
        state = ctx.dist.broadcast({k: v.cpu() for k, v in gen.audio_encoder.state_dict().items()})
        gen.audio_encoder.load_state_dict(state)
    cut = f" of {rep.asked}: the time budget allowed no more" if rep.steps < rep.asked else ""
    ctx.say(f"audio encoder fitted on {rep.frames} frames in {rep.seconds:.0f} s ({rep.steps} steps{cut})")


def spread_gain(encoder, ds, max_gain: float = 3.0, batch_size: int = 64, device="cpu") -> float:
    """std(real shapes) / std(``encoder``'s shapes) over the frames of ``ds`` that have a shape, clipped to
    [1, max_gain] (1 when it cannot be measured)."""
    from torch.utils.data import default_collate

    preds, reals = [], []
    was = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(ds), batch_size):
                b = default_collate([ds[g] for g in range(i, min(len(ds), i + batch_size))])
                has = b["has_shape"].bool()
                preds.append(encoder(b["mel"].float().to(device)).float().cpu()[has])
                reals.append(b["shape"].float()[has])
    finally:
        encoder.train(was)
    p, r = torch.cat(preds), torch.cat(reals)
    if len(p) < 3 or float(p.std()) == 0:
        return 1.0
    return float(np.clip(float(r.std() / p.std()), 1.0, max_gain))
