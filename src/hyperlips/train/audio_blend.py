"""How much of a one-person fit of the audio encoder to keep, the rest staying the starting weights'.

An audio encoder fitted on a minute of one person's speech learns that voice, and forgets some of what the starter
learned from many voices. Which of the two reads the person's unheard speech better depends on the person: the
starter follows some people's mouths well (edtalk/pose_source2: r 0.67 before any fit) and others barely (french:
0.33). Interpolating the weights between the fit and its start (the fit's share 1.0, 0.8 or 0.6) measured on the
held-out tails of three one-minute people (shapes' opening r, two seeds each; docs/lite.md): pose_source2 0.69 ->
0.74 at 0.6, cnn2 0.59 -> 0.59, french 0.66 -> 0.63. So the share is chosen per person, on their own footage: a
probe fit on the first 85% of the training frames, scored on the last 15% at each share, before the real fit on all
of them. The held-out part that validation and the tail's figures use is never looked at.

A fit can also learn one speaker's habit so well that it reads other voices the wrong way round: edtalk/pose_source2's
opens wider on other people's /p b m/ than on their vowels (its encoder's AUC 0.43 on six real recordings, the
starter's 0.65; docs/lite.md), and a person model is driven by other people's speech. So each share must also tell
espeak-ng's bilabials from its vowels, in a few of its voices (:data:`OTHER_VOICES`), nearly as well as the starting
weights do (within :data:`VOICE_MARGIN` of their AUC); when none of :data:`SHARES` does, the largest of
:data:`FALLBACK_SHARES` that does is kept.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .lite_audio import MEL_FPS, opening_of

SHARES = (1.0, 0.8, 0.6)  # the fitted weights' share tried, the rest the starting weights'
FALLBACK_SHARES = (0.4, 0.2, 0.0)  # tried in turn when every one of SHARES reads other voices badly
OTHER_VOICES = ("en-us", "en-us+f3", "en-us+m3")  # espeak-ng voices: a man's, a woman's, another man's
VOICE_MARGIN = 0.1  # how far below the starting weights' AUC on OTHER_VOICES a share may read them
# what they say: bilabials beside open vowels, not eval.phonemes' sentence (so that its protocol stays a fresh check)
VOICE_TEXT = ("Maybe Bob's mom paid a bit more for the boat. Pick up a map, Pam, and bring the big blue bag. "
              "Mary bakes a peach pie by the pool, and Pop mops the floor.")
CHECK_SHARE = 0.15  # the last part of the training frames the probe fit is scored on
MIN_CHECK = 25  # frames with a mouth shape needed to score (fewer: the fit is kept whole)

Track = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (mel, frame times, shapes, has shape)
Voice = tuple[np.ndarray, np.ndarray, np.ndarray]  # (mel, phoneme middles in mel steps, is a bilabial (else a vowel))


def split_tracks(tracks: Sequence[Track], share: float = CHECK_SHARE) -> tuple[list[Track], list[Track]]:
    """(the first ``1 - share`` of the frames, the last ``share``), over the tracks in order as one recording: the
    tracks before the cut go to the first, those after it to the second, the one across it is cut in time."""
    total = sum(len(t[1]) for t in tracks)
    cut = int(round(total * (1.0 - share)))
    first, last, seen = [], [], 0
    for mel, times, shapes, ok in tracks:
        k = int(np.clip(cut - seen, 0, len(times)))
        if k:
            first.append((mel, times[:k], shapes[:k], ok[:k]))
        if k < len(times):
            last.append((mel, times[k:], shapes[k:], ok[k:]))
        seen += len(times)
    return first, last


def blend_states(fitted: Mapping[str, Tensor], start: Mapping[str, Tensor], share: float) -> dict[str, Tensor]:
    """``share`` x the fitted weights + (1 - ``share``) x the starting ones (buffers too; integer ones as fitted)."""
    return {k: (share * v + (1.0 - share) * start[k].to(v.dtype)) if v.is_floating_point() else v.clone()
            for k, v in fitted.items()}


def _openings(encoder, mel: np.ndarray, positions) -> np.ndarray:
    """The encoder's inner-lip opening at ``positions`` (mel steps) of ``mel`` (n_mels, L), read in eval mode."""
    was = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            m = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None]
            pos = torch.from_numpy(np.asarray(positions, np.float64)).float()[None]
            return opening_of(encoder.shapes_at(m, pos)[0]).double().numpy()
    finally:
        encoder.train(was)


def opening_r(encoder, tracks: Sequence[Track]) -> float:
    """The Pearson r of the encoder's inner-lip opening against the real one over the tracks' frames with a shape
    (each track's openings centred on its own mean first); nan with fewer than ``MIN_CHECK`` of them."""
    preds, reals = [], []
    for mel, times, shapes, ok in tracks:
        ok = np.asarray(ok, bool)
        if ok.sum() < 2:
            continue
        p = _openings(encoder, mel, np.asarray(times, np.float64) * MEL_FPS)[ok]
        r = opening_of(torch.from_numpy(np.asarray(shapes, np.float64))).numpy()[ok]
        preds.append(p - p.mean())
        reals.append(r - r.mean())
    if not preds or sum(len(p) for p in preds) < MIN_CHECK:
        return float("nan")
    p, r = np.concatenate(preds), np.concatenate(reals)
    if p.std() == 0 or r.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, r)[0, 1])


def other_voices(network, cfg=None, voices: Sequence[str] = OTHER_VOICES) -> list[Voice]:
    """espeak-ng speaking :data:`VOICE_TEXT` in each of ``voices``, as ``network`` (a HyperLips-Lite generator) reads
    speech whose mel is made at ``cfg`` (``config.AudioConfig``, the default's when None, as ``preprocess`` makes
    the clips'): normalised per utterance, with the recogniser's phones below it where it reads them. Empty where
    espeak-ng cannot speak."""
    from ..config import AudioConfig
    from ..demo import synthesize_with_phonemes
    from ..errors import UserError
    from ..eval.phonemes import phoneme_frames
    from ..generator_io import network_mel
    from ..media import phones
    from ..media.audio import melspectrogram
    from ..media.resample import resample_poly

    cfg = cfg or AudioConfig()
    out = []
    for voice in voices:
        try:
            pcm, rate, marks = synthesize_with_phonemes(VOICE_TEXT, voice)
        except (UserError, OSError):
            return []
        g = math.gcd(int(cfg.sample_rate), int(rate))
        wav = resample_poly(pcm, int(cfg.sample_rate) // g, int(rate) // g)
        ids = None
        if getattr(network, "phones", False) and phones.available() and cfg.sample_rate == phones.SAMPLE_RATE:
            ids = phones.read_phones(wav, cfg.sample_rate)
        mel = network_mel(network, melspectrogram(wav, cfg), ids)
        frames = phoneme_frames(marks, len(wav) / cfg.sample_rate, MEL_FPS)  # each middle, in mel steps
        keep = [(k, cls) for k, cls, _ in frames if k < mel.shape[1]]
        out.append((mel, np.asarray([k for k, _ in keep], np.float64), np.asarray([c == "bilabial" for _, c in keep])))
    return out


def voice_separation(encoder, voices: Sequence[Voice]) -> float:
    """How well the encoder tells bilabials from vowels in ``voices`` (:func:`other_voices`): the mean over them of
    P(a vowel reads more open than a bilabial) (``eval.phonemes.separation_auc``); nan without voices."""
    from ..eval.phonemes import separation_auc

    aucs = []
    for mel, positions, bilabial in voices:
        opening = _openings(encoder, mel, positions)
        aucs.append(separation_auc(opening[~bilabial], opening[bilabial]))
    aucs = [a for a in aucs if math.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def choose_share(encoder, tracks: Sequence[Track], fit: Callable[[object, Sequence[Track]], object],
                 shares: Sequence[float] = SHARES, voices: Sequence[Voice] = (), margin: float = VOICE_MARGIN,
                 fallback: Sequence[float] = FALLBACK_SHARES) -> tuple[float, dict[float, float], dict[float, float]]:
    """The share of the fit to keep, each share's score and each share's reading of other voices: a copy of
    ``encoder`` (holding the starting weights) is fitted by ``fit(copy, tracks)`` on the first part of ``tracks``
    (:func:`split_tracks`) and scored on the rest (:func:`opening_r`). With ``voices`` (:func:`other_voices`), a
    share counts only if it tells their bilabials from their vowels (:func:`voice_separation`) no worse than
    ``margin`` below the starting weights (share 0.0, always measured then); of :data:`SHARES` that count, the best
    score wins, the larger on a tie; when none counts, the largest of ``fallback`` that does. 1.0 when the rest is
    too short to score (no probe: both dicts empty). ``encoder`` itself is left as it is."""
    first, last = split_tracks(tracks)
    if not first or sum(int(np.asarray(t[3], bool).sum()) for t in last) < MIN_CHECK:
        return 1.0, {}, {}
    probe = copy.deepcopy(encoder)
    start = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    heard = {0.0: voice_separation(probe, voices)} if voices else {}
    fit(probe, first)
    fitted = {k: v.detach().clone() for k, v in probe.state_dict().items()}
    scores = {}

    def score(s: float) -> None:
        probe.load_state_dict(blend_states(fitted, start, s))
        scores[float(s)] = opening_r(probe, last)
        if heard:
            heard[float(s)] = voice_separation(probe, voices)

    def reads_others(s: float) -> bool:
        floor = heard.get(0.0, float("nan")) - margin
        return not math.isfinite(floor) or not math.isfinite(heard[s]) or heard[s] >= floor

    for s in shares:
        score(s)
    ranked = [s for s in scores if np.isfinite(scores[s]) and reads_others(s)]
    if ranked:
        return max(ranked, key=lambda s: (round(scores[s], 6), s)), scores, heard
    if any(np.isfinite(scores[s]) for s in scores):  # every share reads other voices worse than the start
        for s in fallback:
            score(s)
            if reads_others(s):
                return float(s), scores, heard
        return 0.0, scores, heard
    return 1.0, scores, heard
