"""The sync judge's offset search (``models.sync_judge``): mouth shapes read from the speech against FaceMesh's.

For every window of ``window`` consecutive frames (25: one second at 25 fps) whose frames all have landmarks and
every audio offset d in -15..15 frames (d > 0: the audio is d frames late, as for the other scores), the score is
the correlation of the two shape trajectories: the face's, and the audio encoder's read at the frames' times plus
d / fps. The offset search over those scores is the expert's (:func:`~.sync_score.similarity_offset_search`):
the offset with the highest mean score, that score, the score at offset 0 and confidence = max - median.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .sync_score import DEFAULT_VSHIFT, SyncResult, similarity_offset_search


def shape_trajectory(judge, shapes: np.ndarray) -> np.ndarray:
    """Mouth shapes (N, n_shape), NaN rows where a frame has none -> (N, components) projected (NaN rows kept)."""
    import torch

    shapes = np.asarray(shapes, dtype=np.float32)
    with torch.inference_mode():
        z = judge.project(torch.from_numpy(np.nan_to_num(shapes))).numpy().astype(np.float64)
    z[~np.isfinite(shapes).all(axis=1)] = np.nan
    return z


def face_trajectory(judge, landmarks: np.ndarray) -> np.ndarray:
    """(N, 468+, 2+) FaceMesh landmarks, NaN where a frame has none -> (N, components) projected shapes (NaN rows
    where no landmarks). ValueError when no frame has landmarks."""
    from ..face.mouth_shape import mouth_shapes

    return shape_trajectory(judge, mouth_shapes(np.asarray(landmarks, dtype=np.float64))[0])


def audio_trajectories(judge, mel_n: np.ndarray, times: Sequence[float], offsets: np.ndarray, fps: float):
    """mel (80, T) normalised per utterance, frame times (N,) s -> (projected audio shapes (N, K, components) at
    each time + offsets[k] / fps, inside (N, K): whether that moment lies within the audio)."""
    import torch

    t = np.asarray(times, dtype=np.float64)[:, None] + np.asarray(offsets)[None, :] / float(fps)
    pos = torch.from_numpy(t * 80.0).float()  # mel steps (80 per second)
    inside = ((pos >= 0) & (pos <= mel_n.shape[1] - 1)).numpy()
    enc = judge.audio_encoder
    z = np.zeros((*pos.shape, judge.config.components))
    with torch.inference_mode():
        y = enc.sequence(torch.from_numpy(np.ascontiguousarray(mel_n, dtype=np.float32))[None]).mean(dim=1)
        for k in range(pos.shape[1]):  # one offset at a time: memory stays (N, components) per offset
            z[:, k] = judge.project(enc.read(y, pos[None, :, k]))[0].numpy()
    return z, inside


def window_correlations(face: np.ndarray, audio: np.ndarray, valid_audio: np.ndarray, window: int):
    """face (N, C) (NaN rows: no landmarks), audio (N, K, C), valid_audio (N, K) -> (sim (M, K), valid (M, K)) for
    the M = N - window + 1 windows: the Pearson correlation of the two (window, C) trajectories, each component
    centred over the window."""
    n = len(face)
    m = n - window + 1
    if m < 1:
        raise ValueError(f"too short for the sync judge: {n} frames, at least {window} are needed")
    f_ok = np.isfinite(face).all(axis=1)
    f = np.where(f_ok[:, None], face, 0.0)

    def wsum(x):  # sums over each window along axis 0
        c = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)])
        return c[window:] - c[:-window]

    sf, sff = wsum(f), wsum((f * f).sum(axis=1))  # (M, C), (M,)
    f_full = wsum(f_ok.astype(np.float64)) == window
    sa = wsum(audio)  # (M, K, C)
    saa = wsum((audio * audio).sum(axis=2))  # (M, K)
    sfa = wsum((audio * f[:, None, :]).sum(axis=2))  # (M, K)
    cov = sfa - (sa * sf[:, None, :]).sum(axis=2) / window
    var_f = sff - (sf * sf).sum(axis=1) / window
    var_a = saa - (sa * sa).sum(axis=2) / window
    sim = cov / np.sqrt(np.clip(var_f[:, None] * var_a, 1e-18, None))
    valid = f_full[:, None] & (wsum(valid_audio.astype(np.float64)) == window)
    return sim, valid


def judge_score(judge, landmarks: np.ndarray, times: Sequence[float], mel: np.ndarray, fps: float, *,
                vshift: int = DEFAULT_VSHIFT) -> SyncResult:
    """The judge's offset search: landmarks (N, 468+, 2+) of frames shown at ``times`` (s; NaN rows where FaceMesh
    found no face), mel (80, T) of the audio. ValueError when too few consecutive frames have landmarks."""
    mel_n = judge.prepare_mel(np.asarray(mel, dtype=np.float32))
    return _search(judge, face_trajectory(judge, landmarks), mel_n, times, fps, vshift)


def judge_offsets_from_shapes(judge, shapes: np.ndarray, mel_n: np.ndarray, times: Sequence[float],
                              vshift: int = DEFAULT_VSHIFT) -> int:
    """The offset the judge finds from mouth shapes already measured (N, n_shape; NaN rows: none) and a mel as the
    judge reads it (``judge.prepare_mel``); the frame rate is the times' own."""
    t = np.asarray(times, np.float64)
    fps = (len(t) - 1) / max(t[-1] - t[0], 1e-9)
    return _search(judge, shape_trajectory(judge, shapes), mel_n, t, fps, vshift).offset


def _search(judge, face: np.ndarray, mel_n: np.ndarray, times, fps: float, vshift: int) -> SyncResult:
    window = int(judge.config.window)
    offsets = np.arange(-vshift, vshift + 1)
    audio, inside = audio_trajectories(judge, mel_n, times, offsets, fps)
    sim, valid = window_correlations(face, audio, inside, window)
    if not valid.any():
        raise ValueError(f"no {window} consecutive frames with a face and audio for the sync judge")
    res = similarity_offset_search(sim, valid, vshift)
    res.extra.update(scorer="judge", window=window)  # reported with the offset: what scored it
    return res
