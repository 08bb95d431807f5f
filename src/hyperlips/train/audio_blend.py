"""How much of a one-person fit of the audio encoder to keep, the rest staying the starting weights'.

An audio encoder fitted on a minute of one person's speech learns that voice, and forgets some of what the starter
learned from many voices. Which of the two reads the person's unheard speech better depends on the person: the
starter follows some people's mouths well (edtalk/pose_source2: r 0.67 before any fit) and others barely (french:
0.33). Interpolating the weights between the fit and its start (the fit's share 1.0, 0.8 or 0.6) measured on the
held-out tails of three one-minute people (shapes' opening r, two seeds each; docs/lite.md): pose_source2 0.69 ->
0.74 at 0.6, cnn2 0.59 -> 0.59, french 0.66 -> 0.63. So the share is chosen per person, on their own footage: a
probe fit on the first 85% of the training frames, scored on the last 15% at each share, before the real fit on all
of them. The held-out part that validation and the tail's figures use is never looked at.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .lite_audio import MEL_FPS, opening_of

SHARES = (1.0, 0.8, 0.6)  # the fitted weights' share tried, the rest the starting weights'
CHECK_SHARE = 0.15  # the last part of the training frames the probe fit is scored on
MIN_CHECK = 25  # frames with a mouth shape needed to score (fewer: the fit is kept whole)

Track = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (mel, frame times, shapes, has shape)


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


def opening_r(encoder, tracks: Sequence[Track]) -> float:
    """The Pearson r of the encoder's inner-lip opening against the real one over the tracks' frames with a shape
    (each track's openings centred on its own mean first); nan with fewer than ``MIN_CHECK`` of them."""
    preds, reals = [], []
    was = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for mel, times, shapes, ok in tracks:
                ok = np.asarray(ok, bool)
                if ok.sum() < 2:
                    continue
                m = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None]
                pos = torch.from_numpy(np.asarray(times, np.float64) * MEL_FPS).float()[None]
                p = opening_of(encoder.shapes_at(m, pos)[0]).double().numpy()[ok]
                r = opening_of(torch.from_numpy(np.asarray(shapes, np.float64))).numpy()[ok]
                preds.append(p - p.mean())
                reals.append(r - r.mean())
    finally:
        encoder.train(was)
    if not preds or sum(len(p) for p in preds) < MIN_CHECK:
        return float("nan")
    p, r = np.concatenate(preds), np.concatenate(reals)
    if p.std() == 0 or r.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, r)[0, 1])


def choose_share(encoder, tracks: Sequence[Track], fit: Callable[[object, Sequence[Track]], object],
                 shares: Sequence[float] = SHARES) -> tuple[float, dict[float, float]]:
    """The share of the fit to keep (:data:`SHARES`), and each share's score: a copy of ``encoder`` (holding the
    starting weights) is fitted by ``fit(copy, tracks)`` on the first part of ``tracks`` (:func:`split_tracks`)
    and scored on the rest (:func:`opening_r`); the best share wins, the larger on a tie; 1.0 when the rest is
    too short to score. ``encoder`` itself is left as it is."""
    first, last = split_tracks(tracks)
    if not first or sum(int(np.asarray(t[3], bool).sum()) for t in last) < MIN_CHECK:
        return 1.0, {}
    probe = copy.deepcopy(encoder)
    start = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    fit(probe, first)
    fitted = {k: v.detach().clone() for k, v in probe.state_dict().items()}
    scores = {}
    for s in shares:
        probe.load_state_dict(blend_states(fitted, start, s))
        scores[float(s)] = opening_r(probe, last)
    ranked = [s for s in scores if np.isfinite(scores[s])]
    if not ranked:
        return 1.0, scores
    return max(ranked, key=lambda s: (round(scores[s], 6), s)), scores
