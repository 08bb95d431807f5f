"""Fitting HyperLips-Lite's audio encoder: it learns mouth shapes from speech it has not heard (GRID s1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def grid24(more_data, tmp_path_factory):
    """24 GRID s1 clips preprocessed: the first 20 (by name) to fit on, the last 4 held out."""
    from hyperlips.data.datasets import Clip
    from hyperlips.data.preprocess import PreprocessOptions, preprocess

    base = tmp_path_factory.mktemp("grid24")
    src = base / "src"
    src.mkdir()
    for p in sorted((more_data / "grid_s1").glob("*.mpg"))[:24]:
        os.symlink(p, src / p.name)
    preprocess(src, base / "ds", PreprocessOptions(speaker="one", val_fraction=0.0), workers=2, progress=False)
    clips = sorted((Clip(d) for d in (base / "ds" / "clips").iterdir()), key=lambda c: c.id)
    assert len(clips) == 24
    return clips[:20], clips[20:]


def _tracks(clips, tpl, mean):
    from hyperlips.face.mouth_shape import SCALE, aligned_moving_points, mouth_opening
    from hyperlips.media.audio import normalise_utterance

    out, openings = [], []
    for c in clips:
        lm = np.asarray(c.landmarks, np.float64)
        pts = aligned_moving_points(lm, tpl)
        shapes = ((pts - mean) * SCALE).reshape(len(lm), -1).astype(np.float32)
        ok = np.isfinite(shapes).all(axis=1) & c.valid
        out.append((normalise_utterance(np.asarray(c.mel)), np.asarray(c.times), np.where(ok[:, None], shapes, 0), ok))
        openings.append(mouth_opening(lm))
    return out, openings


def test_fitted_encoder_predicts_mouths_of_unheard_sentences(grid24):
    from hyperlips.face.mouth_shape import aligned_moving_points, shape_opening, stable_template
    from hyperlips.media.audio import centred_mel_windows
    from hyperlips.models.lite_audio import AudioShapeEncoder
    from hyperlips.train.lite_audio import fit_audio_encoder

    torch.set_num_threads(2)
    train, held = grid24
    lm = np.concatenate([np.asarray(c.landmarks, np.float64) for c in train])
    tpl = stable_template(lm)
    pts = aligned_moving_points(lm, tpl)
    mean = pts[np.isfinite(pts).all(axis=(1, 2))].mean(axis=0)
    tracks, _ = _tracks(train, tpl, mean)
    test, openings = _tracks(held, tpl, mean)

    def held_out_r(enc):
        enc.eval()
        preds, real = [], []
        with torch.no_grad():
            for (mel, times, _, ok), op in zip(test, openings):
                w = centred_mel_windows(mel, times, 56, fill=mel.min(axis=1))
                preds.append(shape_opening(enc(torch.from_numpy(w)).numpy())[ok])
                real.append(op[ok])
        return float(np.corrcoef(np.concatenate(preds), np.concatenate(real))[0, 1])

    torch.manual_seed(0)
    enc = AudioShapeEncoder(members=2)
    before = held_out_r(enc)
    rep = fit_audio_encoder(enc, tracks, steps=300, seed=1)
    after = held_out_r(enc)
    assert rep.frames > 1400 and np.isfinite(rep.loss)
    # an untrained net already follows loudness a little (r about 0.4 here); fitted, it follows the mouth
    assert after > 0.6 and after > before + 0.15, (before, after)
    assert (enc.shape_std != 1).all()  # shape units restored from the training shapes' spread
    # the same seed fits the same encoder
    torch.manual_seed(0)
    again = AudioShapeEncoder(members=2)
    fit_audio_encoder(again, tracks, steps=3, seed=1)
    torch.manual_seed(0)
    third = AudioShapeEncoder(members=2)
    fit_audio_encoder(third, tracks, steps=3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), third.state_dict().values()))


def test_a_time_limit_cuts_the_fit_short_and_lays_the_learning_rate_cycle_over_what_fits(grid24, monkeypatch):
    """With ``max_seconds``, the first PROBE_STEPS steps are timed and the fit stops where the limit says, its
    learning rate having come down through a whole cycle; without one (or with room) all steps are taken."""
    from hyperlips.face.mouth_shape import aligned_moving_points, stable_template
    from hyperlips.models.lite_audio import AudioShapeEncoder
    from hyperlips.train import lite_audio

    train, _ = grid24
    lm = np.concatenate([np.asarray(c.landmarks, np.float64) for c in train[:2]])
    tpl = stable_template(lm)
    pts = aligned_moving_points(lm, tpl)
    tracks, _ = _tracks(train[:2], tpl, pts[np.isfinite(pts).all(axis=(1, 2))].mean(axis=0))
    now = [0.0]  # a clock on which every optimiser step takes half a second
    monkeypatch.setattr(lite_audio.time, "perf_counter", lambda: now[0])
    lrs = []
    real_step = torch.optim.AdamW.step

    def spy(opt, *a, **k):
        lrs.append(opt.param_groups[0]["lr"])
        now[0] += 0.5
        return real_step(opt, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    torch.manual_seed(0)
    rep = lite_audio.fit_audio_encoder(AudioShapeEncoder(width=16, members=1), tracks, steps=200, batch=2,
                                       max_seconds=15.0, seed=0)
    # 20 timed steps of 0.5 s: 15 s hold 30 steps
    assert rep.steps == 30 and rep.asked == 200 and len(lrs) == rep.steps
    assert lrs[-1] < 0.01 * max(lrs)  # annealed by the last step, as a full cycle ends
    lrs.clear()
    rep = lite_audio.fit_audio_encoder(AudioShapeEncoder(width=16, members=1), tracks, steps=30, batch=2,
                                       max_seconds=1e4, seed=0)
    assert rep.steps == rep.asked == 30 == len(lrs)


def test_chunks_follow_the_frames_they_stretch(grid24):
    from hyperlips.face.mouth_shape import aligned_moving_points, stable_template
    from hyperlips.models.lite_audio import STRIDE
    from hyperlips.train.lite_audio import ChunkSampler

    train, _ = grid24
    lm = np.concatenate([np.asarray(c.landmarks, np.float64) for c in train[:2]])
    tpl = stable_template(lm)
    pts = aligned_moving_points(lm, tpl)
    tracks, _ = _tracks(train[:2], tpl, pts[np.isfinite(pts).all(axis=(1, 2))].mean(axis=0))
    sampler = ChunkSampler(tracks, np.ones(106), chunk=32)
    mel, q, y, ok = sampler.draw(4, torch.Generator().manual_seed(0))
    assert mel.shape[0] == 4 and mel.shape[1] == 80 and q.shape == (4, 32) and y.shape == (4, 32, 106)
    # frame positions stay inside the chunk's audio, in order, about 80 / 25 / 4 = 0.8 output steps apart
    assert (q >= 0).all() and (q < mel.shape[2] / STRIDE).all()
    gaps = (q[:, 1:] - q[:, :-1]).flatten()
    assert (gaps > 0.8 * 0.9 - 0.01).all() and (gaps < 0.8 * 1.11 + 0.01).all()


# ------------------------------------------------------------------------------------------------ smoothing in time
def test_smoothing_taps_are_a_triangle_read_inside_the_window():
    from hyperlips.models.lite_audio import AudioShapeEncoder, smoothing_taps, window_needed

    assert smoothing_taps(0) == smoothing_taps(40) == [(0.0, 1.0)]
    assert [(round(o, 6), w) for o, w in smoothing_taps(80)] == [(-3.2, 0.25), (0.0, 0.5), (3.2, 0.25)]
    five = smoothing_taps(120)
    assert len(five) == 5 and abs(sum(w for _, w in five) - 1) < 1e-12 and five[2][1] == max(w for _, w in five)
    with pytest.raises(ValueError, match="smooth_ms"):
        smoothing_taps(-1)

    # a window of window_needed() steps gives what a much longer window centred on the same frame gives (no reading
    # sees the zero padding beyond its ends; 24 more steps on each side keep the outputs' 4-step grid where it was);
    # one step shorter is refused
    torch.manual_seed(0)
    for ms in (0, 80, 120):
        enc = AudioShapeEncoder(members=2, smooth_ms=ms).eval()
        need = window_needed(ms)
        long = torch.randn(3, 1, 80, need + 48)
        short = long[..., 24: 24 + need]
        with torch.no_grad():
            assert torch.allclose(enc(short), enc(long), atol=1e-5), ms
            if ms:
                with pytest.raises(ValueError, match=f"reads {need} mel steps"):
                    enc(short[..., 1:])
    assert window_needed(0) == 49  # the encoder's own reach: +-24 steps around the centre output


def test_smoothing_steadies_the_shipped_starters_mouth_without_moving_it(real_data):
    """On real speech the starter's shapes with the default smoothing (80 ms) shake less from frame to frame, at the
    same timing, than the centre's reading alone."""
    from hyperlips.face.mouth_shape import shape_opening
    from hyperlips.generator_io import network_mel
    from hyperlips.media.audio import centred_mel_windows, load_audio, melspectrogram
    from hyperlips.media.phones import read_phones
    from hyperlips.models import load_checkpoint
    from hyperlips.models.lite_audio import AudioShapeEncoder
    from hyperlips.models.shipped import starter

    model = load_checkpoint(starter().path)[0].eval()
    assert model.config.shape_smooth_ms == 80.0 and model.mel_steps == 57  # a file from before the setting gets it
    plain = AudioShapeEncoder(model.audio_rows, model.config.audio_width, model.config.n_shape, model.config.audio_members)
    plain.load_state_dict(model.audio_encoder.state_dict())
    plain.eval()
    wav = load_audio(real_data / "hyperlips" / "audio1.wav", 16000)
    mel = network_mel(model, melspectrogram(wav), read_phones(wav) if model.phones else None)  # as sync reads it
    times = np.arange(int(mel.shape[1] / 80 * 25) - 1) / 25
    import dataclasses

    from hyperlips.config import AudioConfig

    cfg = dataclasses.replace(AudioConfig(), n_mels=mel.shape[0])
    w = torch.from_numpy(centred_mel_windows(mel, times, model.mel_steps, cfg, fill=mel.min(axis=1)))
    with torch.no_grad():
        smooth, raw = shape_opening(model.audio_encoder(w).numpy()), shape_opening(plain(w).numpy())

    def shake(x):
        return float(np.abs(np.diff(x, 2)).mean())

    assert shake(smooth) < 0.75 * shake(raw), (shake(smooth), shake(raw))
    xc = [float(np.corrcoef(smooth[5 + k: len(raw) - 5 + k], raw[5: len(raw) - 5])[0, 1]) for k in range(-2, 3)]
    assert int(np.argmax(xc)) == 2 and xc[2] > 0.9, xc  # no delay, the same movement


def test_the_learning_rate_cycle_takes_any_number_of_steps():
    """torch's one-cycle schedule divides by zero when its warm-up ends on step 0 (10 steps at a tenth): every count
    from 1 up works, and from 15 steps on the cycle is torch's own with a tenth of warm-up."""
    from hyperlips.train.lite_audio import one_cycle

    for n in range(1, 31):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], 1e-3)
        sched = one_cycle(opt, 1e-3, n)
        for _ in range(max(2, n)):
            opt.step()
            sched.step()
        assert sched.total_steps == max(2, n)
    assert one_cycle(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], 1e-3), 1e-3, 600).total_steps == 600
