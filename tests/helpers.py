"""Small builders shared by the end-to-end tests (media written on the fly, random-weight checkpoints)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def run_cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``hyperlips ARGS`` in a fresh interpreter (so exit codes and stderr are the real ones)."""
    return subprocess.run([sys.executable, "-m", "hyperlips.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def write_wav(path: Path, seconds: float, sr: int = 16000, channels: int = 1, freq: float = 220.0) -> Path:
    import soundfile as sf

    t = np.arange(int(round(seconds * sr))) / sr
    # a syllable-like signal: a tone with a 4 Hz amplitude envelope, so the mel changes over time
    y = (0.3 * np.sin(2 * np.pi * freq * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    if channels > 1:
        y = np.stack([y] * channels, axis=1)
    sf.write(str(path), y, sr)
    return path


def cut_audio(src: Path, dst: Path, seconds: float, repeat: int = 1) -> Path:
    """The first ``seconds`` of ``src`` (any format), repeated ``repeat`` times, written as 16 kHz wav."""
    import soundfile as sf

    from hyperlips.media.audio import load_audio

    wav = load_audio(src, 16000)
    if seconds:
        wav = wav[: int(seconds * 16000)]
    sf.write(str(dst), np.tile(wav, repeat), 16000)
    return dst


def random_base_checkpoint(path: Path, seed: int = 0, official: bool = True) -> Path:
    """Randomly initialised HyperLips-Base saved like the official training scripts save it."""
    import torch

    from hyperlips.models import create_model

    torch.manual_seed(seed)
    model = create_model("hyperlips-base")
    if official:
        torch.save({"state_dict": model.state_dict(), "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    else:
        from hyperlips.models import save_checkpoint

        save_checkpoint(model, path, "hyperlips-base")
    return path


def random_hr_checkpoint(path: Path, size: int, seed: int = 0) -> Path:
    import torch

    from hyperlips.models import create_model

    torch.manual_seed(seed)
    model = create_model(f"hyperlips-hr-{size}")
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "global_epoch": 0}, path)
    return path


def probe_streams(path: Path) -> dict:
    """Facts about a written file, read back with PyAV: size, fps, frames, codecs, durations."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        n = sum(1 for _ in c.decode(video=0))
        info = {
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "fps": float(v.average_rate),
            "frames": n,
            "video_codec": v.codec_context.name,
            "audio_codec": a.codec_context.name if a else None,
            "audio_seconds": float(a.duration * a.time_base) if a is not None and a.duration else None,
        }
    return info


def read_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """Decoded BGR frames (through our reader, which converts colours exactly), at most ``limit``."""
    from hyperlips.media.video import FrameReader

    out = []
    with FrameReader(path) as r:
        for f in r:
            out.append(f.image)
            if limit and len(out) >= limit:
                break
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, default=str)


def frames_at(path: Path, indices) -> list[np.ndarray]:
    """The BGR frames at ``indices`` (in increasing order of index), decoded in one forward pass."""
    from hyperlips.media.video import FrameReader

    want = set(indices)
    out = []
    with FrameReader(path) as r:
        for f in r.iter_range(0, max(want) + 1):
            if f.index in want:
                out.append(f.image)
    assert len(out) == len(want), f"could not decode frames {sorted(want)} of {path}"
    return out
