"""Peak memory of ``hyperlips sync`` on a short and a long input of the same kind: does it grow with length?

Builds two 720p inputs from one real clip (played forward and backward to the wanted length, re-encoded) with
matching speech, runs ``hyperlips sync`` on each in a fresh process, and prints the peak resident memory
of each run and their ratio, plus the per-stage timings the command reports.

    python benchmarks/sync_memory.py --clip PATH/video1.mp4 --audio PATH/audio1.wav --short 30 --long 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_input(clip: Path, audio: Path, seconds: float, folder: Path) -> tuple[Path, Path]:
    import soundfile as sf

    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter
    from hyperlips.schedule import runs

    video_out, audio_out = folder / f"in_{int(seconds)}s.mp4", folder / f"in_{int(seconds)}s.wav"
    with FrameReader(clip) as r:
        n_out = int(round(seconds * r.fps))
        with VideoWriter(video_out, r.width, r.height, r.fps) as w:
            for run in runs(len(r), n_out, "pingpong"):
                for fr in r.iter_range(run.start, run.stop, reverse=run.reverse):
                    w.write(fr.image)
    wav = load_audio(audio)
    reps = int(np.ceil(seconds * 16000 / len(wav)))
    sf.write(str(audio_out), np.tile(wav, reps)[: int(seconds * 16000)], 16000)
    return video_out, audio_out


def run_sync(video: Path, audio: Path, out: Path, checkpoint: Path, batch_size: int) -> dict:
    from hyperlips.eval.bench_stages import PEAK_CHILD as code  # the process's own peak (VmHWM on Linux)

    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", code, "sync", str(video), str(audio), "-o", str(out), "--checkpoint", str(checkpoint),
         "--batch-size", str(batch_size), "--quiet", "--timings"],
        capture_output=True, text=True,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"sync failed: {r.stderr.strip()}")
    peak_kb = int(next(l.split()[1] for l in r.stderr.splitlines() if l.startswith("PEAK_KB")))
    return {"peak_mb": peak_kb / 1024, "wall_s": wall, "summary": r.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, required=True, help="a real 720p talking-face clip")
    ap.add_argument("--audio", type=Path, required=True, help="speech to drive it (looped to length)")
    ap.add_argument("--short", type=float, default=30.0, help="seconds of the short input (default 30)")
    ap.add_argument("--long", type=float, default=300.0, help="seconds of the long input (default 300)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import torch

    from hyperlips.errors import require_file
    from hyperlips.eval.bench_stages import machine_words
    from hyperlips.models import create_model

    for path, what in ((args.clip, "clip"), (args.audio, "speech")):
        try:
            require_file(path, what)
        except Exception as e:  # noqa: BLE001 - one line, not a traceback
            ap.error(str(e))
    print(machine_words(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = folder / "random_base.pth"
        torch.manual_seed(0)
        torch.save({"state_dict": create_model("hyperlips-base").state_dict()}, ckpt)
        results = {}
        for label, seconds in (("short", args.short), ("long", args.long)):
            video, audio = make_input(args.clip, args.audio, seconds, folder)
            results[label] = {"seconds": seconds, **run_sync(video, audio, folder / f"out_{label}.mp4", ckpt, args.batch_size)}
            print(f"{label}: {seconds:.0f} s input, peak RSS {results[label]['peak_mb']:.0f} MB, "
                  f"wall {results[label]['wall_s']:.0f} s\n  {results[label]['summary']}", flush=True)
    ratio = results["long"]["peak_mb"] / results["short"]["peak_mb"]
    results["peak_ratio"] = ratio
    print(f"peak memory ratio long/short: {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
