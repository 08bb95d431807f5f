"""Audio-visual sync scores: LSE-C / LSE-D (public SyncNet protocol) and our own SyncNet expert's confidence.

Offset convention (both scores): ``offset = d`` means the audio is **d frames late** relative to the video (the
sound of video frame i is at frame i + d of the audio): delaying a clip's audio by 3 frames gives offset +3.
The public ``syncnet_python`` prints the opposite sign (its "AV offset" = -d); it is kept as ``syncnet_av_offset``.

**LSE (public SyncNet protocol, as ``SyncNetInstance.evaluate`` computes it)**

1. Video at 25 fps (other rates: the frame nearest to each 40 ms tick), face-track crops of 224x224 BGR
   (:func:`~hyperlips.eval.syncnet_v2.protocol_crop`); audio 16 kHz mono -> 13 MFCCs at 100 Hz.
2. ``n = min(frames, floor(samples / 640))``; windows ``i = 0 .. n-6``: lip input = frames i..i+4, audio input =
   MFCC steps 4i .. 4i+19 (0.2 s).
3. For each window i and each shift k in -15..15, distance(i, k) = Euclidean distance between lip feature i and
   audio feature i+k; audio features outside 0..n-6 are zero vectors (the protocol's zero padding).
4. mean over i per shift -> curve; **LSE-D** = min of the curve, **LSE-C** = median of the curve - min,
   offset = the shift at the minimum.

**Expert confidence (our SyncNet, the network ``train sync`` makes)**: the same offset search with our lip-sync
expert: lower halves of five 128x128 face-track crops (BGR / 255, frame-major channels) against the 16-step mel
window that starts at the first frame's time (``media.audio.sync_mel_windows``); score = cosine similarity of the
two embeddings; windows whose shifted mel window leaves the audio are left out of that shift's mean. Reported:
the offset with the highest mean similarity, that similarity, the similarity at offset 0, and
confidence = max - median of the curve (the expert's analogue of LSE-C).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .syncnet_v2 import CROP_SIZE, LIP_FRAMES, MFCC_PER_FRAME, MFCC_WINDOW, PROTOCOL_FPS, mfcc

DEFAULT_VSHIFT = 15


@dataclass
class SyncResult:
    """The outcome of an offset search.

    ``offsets``: the candidate audio delays in frames (-vshift..vshift); ``curve``: the mean score per offset
    (distance for LSE, cosine similarity for the expert); ``per_window``: each window's score at the best offset.
    """

    method: str  # "lse" or "expert"
    offset: int
    confidence: float
    best: float  # LSE: min distance (LSE-D); expert: max mean similarity
    at_zero: float  # the curve at offset 0
    offsets: np.ndarray
    curve: np.ndarray
    per_window: np.ndarray
    windows: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "offset": int(self.offset),
            "confidence": float(self.confidence),
            "windows": int(self.windows),
            "offsets": [int(v) for v in self.offsets],
            "curve": [float(v) for v in self.curve],
        }
        if self.method == "lse":
            d.update({"lse_d": float(self.best), "lse_c": float(self.confidence), "distance_at_zero": float(self.at_zero),
                      "syncnet_av_offset": int(-self.offset)})
        else:
            d.update({"similarity": float(self.best), "similarity_at_zero": float(self.at_zero)})
        d.update(self.extra)
        return d


# --------------------------------------------------------------------------------------------- offset search
def lse_offset_search(video_feat: np.ndarray, audio_feat: np.ndarray, vshift: int = DEFAULT_VSHIFT) -> SyncResult:
    """The protocol's distance search: (N, D) lip features and (N, D) audio features of the same windows."""
    v = np.asarray(video_feat, dtype=np.float64)
    a = np.asarray(audio_feat, dtype=np.float64)
    if v.ndim != 2 or v.shape != a.shape or len(v) == 0:
        raise ValueError(f"lip and audio features must be two (N, D) arrays of one shape, got {v.shape} and {a.shape}")
    n = len(v)
    offsets = np.arange(-vshift, vshift + 1)
    a_pad = np.concatenate([np.zeros((vshift, a.shape[1])), a, np.zeros((vshift, a.shape[1]))])
    # dist[i, k] = |v_i - a_{i + offsets[k]} + eps| (torch.pairwise_distance adds eps = 1e-6 to the difference)
    dist = np.empty((n, len(offsets)))
    for k, d in enumerate(offsets):
        dist[:, k] = np.linalg.norm(v - a_pad[vshift + d : vshift + d + n] + 1e-6, axis=1)
    curve = dist.mean(axis=0)
    kmin = int(np.argmin(curve))
    med = float(np.median(curve))
    return SyncResult("lse", int(offsets[kmin]), med - float(curve[kmin]), float(curve[kmin]), float(curve[vshift]),
                      offsets, curve, dist[:, kmin], n)


def similarity_offset_search(sim: np.ndarray, valid: np.ndarray, vshift: int = DEFAULT_VSHIFT) -> SyncResult:
    """Offset search on similarities: ``sim[i, k]`` = score of window i with the audio shifted by offsets[k]
    (k = 0..2*vshift), ``valid[i, k]`` whether that audio window exists. Higher is better. ``windows``: those scored
    at the offset found (a window without a face in every frame, or without its audio there, is not one: a report
    said 51 where 8 were)."""
    sim = np.asarray(sim, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    offsets = np.arange(-vshift, vshift + 1)
    if sim.shape != valid.shape or sim.ndim != 2 or sim.shape[1] != len(offsets) or sim.shape[0] == 0:
        raise ValueError(f"sim and valid must be (N, {len(offsets)}), got {sim.shape} and {valid.shape}")
    counts = valid.sum(axis=0)
    curve = np.where(counts > 0, np.where(valid, sim, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan)
    if not np.isfinite(curve).any():
        raise ValueError("no window has audio at any offset")
    kmax = int(np.nanargmax(curve))
    med = float(np.nanmedian(curve))
    return SyncResult("expert", int(offsets[kmax]), float(curve[kmax]) - med, float(curve[kmax]), float(curve[vshift]),
                      offsets, curve, np.where(valid[:, kmax], sim[:, kmax], np.nan), int(valid[:, kmax].sum()))


# --------------------------------------------------------------------------------------------- LSE
def resample_indices(times: Sequence[float], fps_out: float = PROTOCOL_FPS) -> np.ndarray:
    """For frames shown at ``times`` (seconds, increasing), the source frame for each tick k / fps_out: the last
    frame shown at or before it (what a constant-rate re-timing by dropping/duplicating frames does)."""
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0:
        return np.zeros(0, np.int64)
    t = t - t[0]
    n_out = int(np.floor(t[-1] * fps_out + 1e-6)) + 1
    ticks = np.arange(n_out) / fps_out
    return np.clip(np.searchsorted(t, ticks + 1e-6, side="right") - 1, 0, len(t) - 1)


def lse_features(model, crops: np.ndarray, wav: np.ndarray, *, batch_size: int = 20, device="cpu"):
    """Lip and audio features of every protocol window: crops (N, 224, 224, 3) uint8 BGR at 25 fps, 16 kHz audio.

    Returns (lip (W, 1024), audio (W, 1024)) with W = min(N, floor(len(wav) / 640)) - 5 windows. ``model`` has
    ``forward_lip((B,3,5,224,224))`` and ``forward_aud((B,1,13,20))``.
    """
    import torch

    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"LSE crops must be (N, {CROP_SIZE}, {CROP_SIZE}, 3) uint8, got {crops.shape}")
    cep = mfcc(wav)  # (13, T)
    n = min(len(crops), len(wav) // (16000 // int(PROTOCOL_FPS)))
    n_win = n - LIP_FRAMES
    if n_win < 1:
        raise ValueError(f"too short for LSE: {n} frames of video with audio; at least {LIP_FRAMES + 1} are needed")
    lip_out, aud_out = [], []
    with torch.inference_mode():
        for s in range(0, n_win, batch_size):
            idx = range(s, min(n_win, s + batch_size))
            lip = np.stack([crops[i : i + LIP_FRAMES] for i in idx])  # (B,5,H,W,3)
            lip_t = torch.from_numpy(lip).to(device=device, dtype=torch.float32).permute(0, 4, 1, 2, 3)
            aud = np.stack([cep[:, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + MFCC_WINDOW] for i in idx])[:, None]
            aud_t = torch.from_numpy(np.ascontiguousarray(aud)).to(device=device, dtype=torch.float32)
            lip_out.append(model.forward_lip(lip_t).float().cpu().numpy())
            aud_out.append(model.forward_aud(aud_t).float().cpu().numpy())
    return np.concatenate(lip_out), np.concatenate(aud_out)


def lse_score(model, crops: np.ndarray, wav: np.ndarray, *, vshift: int = DEFAULT_VSHIFT, batch_size: int = 20,
              device="cpu") -> SyncResult:
    """LSE-C / LSE-D / offset of 25 fps protocol crops against 16 kHz audio (see the module doc)."""
    v, a = lse_features(model, crops, wav, batch_size=batch_size, device=device)
    return lse_offset_search(v, a, vshift)


# --------------------------------------------------------------------------------------------- our expert
def expert_face_windows(crops: np.ndarray) -> np.ndarray:
    """(N, 128, 128, 3) uint8 BGR face crops -> (N-4, 15, 64, 128) float32: 5 consecutive lower halves / 255,
    channels frame-major (frame 0's B, G, R, then frame 1's...)."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (128, 128, 3):
        raise ValueError(f"expert crops must be (N, 128, 128, 3) uint8, got {crops.shape}")
    lower = crops[:, 64:].astype(np.float32) / 255.0  # (N,64,128,3)
    lower = lower.transpose(0, 3, 1, 2)  # (N,3,64,128)
    n = len(crops) - LIP_FRAMES + 1
    if n < 1:
        return np.zeros((0, 15, 64, 128), np.float32)
    return np.ascontiguousarray(np.stack([lower[i : i + LIP_FRAMES].reshape(15, 64, 128) for i in range(n)]))


def expert_score(model, crops: np.ndarray, times: Sequence[float], mel: np.ndarray, fps: float, *,
                 vshift: int = DEFAULT_VSHIFT, batch_size: int = 32, device="cpu", cfg=None) -> SyncResult:
    """Our expert's offset search: crops (N,128,128,3) of frames shown at ``times`` (s), mel (80, T) of the audio.

    ``model(audio (B,1,80,16), faces (B,15,64,128)) -> (audio_emb, face_emb)`` unit vectors (``models.SyncNet``).
    """
    import torch

    from ..config import AudioConfig
    from ..media.audio import sync_mel_windows

    cfg = cfg or AudioConfig()
    faces = expert_face_windows(crops)
    n = len(faces)
    if n < 1:
        raise ValueError(f"too short for the sync expert: {len(crops)} frames, at least {LIP_FRAMES} are needed")
    t0 = np.asarray(times, dtype=np.float64)[:n]
    offsets = np.arange(-vshift, vshift + 1)
    shifted = t0[:, None] + offsets[None, :] / float(fps)  # (n, K): audio time paired with window i at offset k
    starts = np.floor(shifted * cfg.mel_fps + 1e-6).astype(np.int64)
    valid = (starts >= 0) & (starts + cfg.window_steps <= mel.shape[1])
    # embed each distinct audio window once
    uniq, inv = np.unique(starts, return_inverse=True)
    inv = inv.reshape(starts.shape)
    mels = sync_mel_windows(mel, uniq / cfg.mel_fps + 1e-9, cfg)  # (U,1,80,16)
    with torch.inference_mode():
        a = torch.cat([_embed(model, "audio", torch.from_numpy(mels[s : s + batch_size]).to(device))
                       for s in range(0, len(mels), batch_size)]).numpy()
        v = torch.cat([_embed(model, "face", torch.from_numpy(faces[s : s + batch_size]).to(device))
                       for s in range(0, n, batch_size)]).numpy()
    sim = np.einsum("nd,nkd->nk", v, a[inv])
    return similarity_offset_search(sim, valid, vshift)


def _embed(model, tower: str, x):
    """Unit-length embeddings of one tower: the encoder alone when the model exposes it (``models.SyncNet`` does),
    else the full forward with zeros for the other input."""
    import torch
    import torch.nn.functional as F

    enc = getattr(model, f"{tower}_encoder", None)
    if enc is not None:
        out = enc(x).flatten(1)
    elif tower == "audio":
        out = model(x, torch.zeros((len(x), 15, 64, 128), device=x.device, dtype=x.dtype))[0]
    else:
        out = model(torch.zeros((len(x), 1, 80, 16), device=x.device, dtype=x.dtype), x)[1]
    return F.normalize(out.float(), p=2, dim=1).cpu()


def load_expert(path, device="cpu"):
    """A lip-sync expert from a checkpoint made by ``hyperlips train sync`` (the compact one or the official SyncNet;
    the official sync expert .pth loads too), or a sync judge made by ``hyperlips train judge``."""
    from ..models.checkpoint import load_expert_checkpoint
    from ..models.registry import JUDGES

    return load_expert_checkpoint(path, device=device, kinds=JUDGES)[0]
