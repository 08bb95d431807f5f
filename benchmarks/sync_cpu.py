"""Where the CPU goes in ``LipSync.sync``: CPU time per thread (grouped by name), per output frame.

``sync`` runs its stages in threads; `--timings` gives each stage's busy time, which on a machine whose cores are all
busy says little about what each costs. This reads the kernel's count of each thread's CPU time
(``/proc/self/task``, Linux only), sampled every 10 ms while a ``sync`` runs (threads end with the run), and prints
the CPU milliseconds per frame of each group of threads: ``hyperlips-network`` (with Base, which renders two
batches at a time, ``hyperlips-render``), ``MainThread`` (the encoder), ``hyperlips-decode`` and libavcodec's
``av:*`` threads, MediaPipe's graphs, paste-back, and ``python``: the threads Python does not know (the pools of
OpenMP, OpenCV and the like). The first ``sync`` of the process warms up; the next ``--runs`` are reported.

    python benchmarks/sync_cpu.py                                   # the bench's synthetic 6 s 720p clip, Base
    python benchmarks/sync_cpu.py --model starter --video V.mp4 --audio A.wav --runs 3
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_times() -> dict[str, tuple[str, float, bool]]:
    """Thread id -> (name, CPU seconds so far, whether the name is a Python thread's) for every thread of this
    process; a thread Python does not know (yet) has its system name (``comm``: ``python`` for most)."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[tid] = (names.get(tid, comm), (int(fields[11]) + int(fields[12])) / TICK, tid in names)
    return out


def group(name: str) -> str:
    """A thread's group: its name without the numbers that tell threads of one pool apart."""
    return name.split("/")[0].split(" (")[0].rstrip("0123456789-_")


def measured_sync(ls, video: Path, audio: Path, output: Path) -> tuple[object, float, float, dict[str, float]]:
    """(report, wall seconds, process CPU seconds, CPU seconds per thread group) of one ``ls.sync``."""
    seen: dict[str, tuple[str, float]] = {}
    before = thread_times()
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            for tid, (name, cpu, named) in thread_times().items():
                old = seen.get(tid)
                # a Python thread's name once seen stays (pools rename nothing); one first seen before Python
                # listed it (its system name then, "python") takes its Python name when it appears
                if old is not None and (old[2] or not named):
                    name, named = old[0], old[2]
                seen[tid] = (name, cpu, named)
            time.sleep(0.01)

    sampler = threading.Thread(target=poll, name="sampler", daemon=True)
    sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        rep = ls.sync(video, audio, output)
    finally:
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        stop.set()
        sampler.join()
    groups: dict[str, float] = collections.Counter()
    for tid, (name, total, _) in seen.items():
        groups[group(name)] += total - before.get(tid, (name, 0.0, False))[1]
    return rep, wall, cpu, groups


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, help="talking-face clip (default: the bench's synthetic 6 s 720p clip)")
    p.add_argument("--audio", type=Path, help="speech (needed with --video)")
    p.add_argument("--model", choices=("base", "lite", "starter"), default="base",
                   help="random Base or Lite weights, or the shipped starter as sync runs it (default base)")
    p.add_argument("--runs", type=int, default=2, help="runs reported after the warm-up run (default 2)")
    args = p.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        print("sync_cpu: needs Linux's /proc/self/task", file=sys.stderr)
        return 2
    if (args.video is None) != (args.audio is None):
        p.error("give --video and --audio together")
    for path in (args.video, args.audio):
        if path is not None and not path.is_file():
            p.error(f"no such file: {path}")

    from hyperlips.eval.bench_stages import machine_words, synthetic_clip
    from hyperlips.pipeline import LipSync

    with tempfile.TemporaryDirectory(prefix="sync_cpu_") as tmp:
        folder = Path(tmp)
        video, audio = (args.video, args.audio) if args.video else synthetic_clip(folder, seconds=6)
        if args.model == "starter":
            ls = LipSync(progress=False)
        else:
            ls = LipSync(untrained=True, model=args.model, device="cpu", progress=False)
        print(f"{machine_words()}; {args.model} on {video.name}", flush=True)
        ls.sync(video, audio, folder / "out.mp4")  # warm-up
        for i in range(args.runs):
            rep, wall, cpu, groups = measured_sync(ls, video, audio, folder / "out.mp4")
            n = rep.frames
            parts = ", ".join(f"{k} {1e3 * v / n:.1f}" for k, v in groups.most_common() if v * 1e3 / n >= 0.05)
            print(f"run {i + 1}: {n / wall:.1f} fps, {1e3 * cpu / n:.1f} ms of CPU per frame ({cpu / wall:.2f} cores; "
                  f"the sampler's own share included): {parts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
