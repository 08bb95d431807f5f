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


def cut_video(src: Path, dst: Path, frames: int, size: int | None = None, lossless: bool = False) -> Path:
    """The first ``frames`` frames of ``src`` re-encoded (H.264, the source's rate), optionally scaled to a square
    ``size``; ``lossless``: exactly these pixels (4:2:0 kept). On one encoder thread either way: lossy H.264's
    output depends on the encoder's threads, whose default depends on the machine's cores, so a test measuring a
    small effect on the frames would read a different clip on another machine."""
    import cv2

    from hyperlips.media.video import FrameReader

    from hyperlips.media.writer import VideoWriter

    with FrameReader(src) as r:
        images = [f.image for f in r.iter_range(0, frames)]
        fps = r.fps
    if size:
        images = [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]
    h, w = images[0].shape[:2]
    with VideoWriter(dst, w, h, fps, threads=1, **(dict(crf=0) if lossless else {})) as wr:
        for im in images:
            wr.write(im)
    return dst


def spied_frames(run) -> list:
    """The frames ``run()`` hands to the video encoder (copies, before H.264)."""
    from spies import spy_on_sync

    with spy_on_sync() as spy:
        run()
    return spy.frames


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
            "pix_fmt": v.codec_context.pix_fmt,
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



def copying_base_checkpoint(path: Path, gain: float = 4.0) -> Path:
    """A hand-made HyperLips-Base whose output is its reference face: ``sigmoid(gain * (reference - 0.5))`` per
    colour channel, through the decoder's last block, which sees the network input directly (the rest of the
    network is cut off by zero weights).

    Random weights render an almost flat face (a colour per channel), which colour matching turns into flat skin
    whatever came after it; this one renders a real face with a mouth, so an HR decoder after it visibly changes
    the pasted mouth.
    """
    import torch

    from hyperlips.models import create_model

    model = create_model("hyperlips-base")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running mean 0, running variance 1: identity in eval mode
        last = model.decoder.decode0.conv  # Conv3x3 over [decoder features (32), network input (6)] -> 64, ...
        n_feat = last[0].weight.shape[1] - 6
        for c in range(3):
            last[0].weight[c, n_feat + 3 + c, 1, 1] = 1.0  # the reference face's channel c
            last[3].weight[c, c, 1, 1] = 1.0
            model.output_block[0].conv_block[0].weight[c, c, 1, 1] = 1.0  # residual blocks between add zero
            model.output_block[1].weight[c, c, 0, 0] = gain
        model.output_block[1].bias.fill_(-0.5 * gain)
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "global_epoch": 0}, path)
    return path


def own_and_late_offsets(clip: Path, model, tmp_path: Path, seconds: float = 6.0):
    """Score ``clip`` (no reference) with its own first ``seconds`` of speech, then with that speech 3 frames late
    (120 ms of silence in front), by a sync expert or judge: (on-time, delayed) ``SyncResult``."""
    import soundfile as sf

    from hyperlips.eval.protocols import evaluate_pair
    from hyperlips.media.audio import load_audio

    wav = load_audio(clip, 16000)[: int(16000 * seconds)]
    own, late = tmp_path / f"{clip.stem}_own.wav", tmp_path / f"{clip.stem}_late.wav"
    sf.write(str(own), wav, 16000)
    sf.write(str(late), np.concatenate([np.zeros(3 * 640, np.float32), wav]), 16000)
    return tuple(evaluate_pair(clip, None, a, expert_model=model, perceptual=False).sync["expert"]["generated"]
                 for a in (own, late))


def wait_for_logged_steps(proc, run: Path, steps: int = 3, seconds: float = 240.0) -> None:
    """Wait until training process ``proc`` has logged ``steps`` steps in ``run``'s scalars.jsonl (or has ended,
    or ``seconds`` have passed)."""
    import time

    scalars = run / "scalars.jsonl"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if scalars.is_file() and len(scalars.read_text().splitlines()) >= steps:
            return
        time.sleep(0.2)
