"""``hyperlips bench``: frames per second and peak memory of each stage, and end to end.

Stages (as the pipeline runs them): **decode** (video frames to BGR arrays), **faces** (face detection and
face-mesh landmarks on the face crop), **network** (per render size, device, precision and batch size),
**paste** (blending the generated face back into the frame), **encode** (H.264 + AAC writing) and **end-to-end**
(``LipSync.sync`` on the same clip with random weights).

Network variants, side by side:

* ``original layers``: HyperLips-Base (plus the HR decoder for 256/512) exactly as the original defines the layers,
  with random weights, fed as the original inference feeds it: for 256/512 the 6-channel input is resized to 128 for
  the base model, the base output is resized to the render size, face-meshed and sketched, and the HR decoder gets
  that render-size input (so its output is 2x / 4x larger than asked, reference §4.5);
* ``pipeline``: the same networks as our pipeline runs them: base at 128, face-mesh sketch at 128, HR decoder on
  the 128-px input, output at the render size.

At 128 px the two are the same network call (only the base model runs). Weights are random: only speed and
memory mean anything. Peak memory is the process's peak resident set size during the stage (CPU) or the peak
CUDA memory allocated by torch (CUDA), and its rise above the level at the stage's start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UserError

SIZES = (128, 256, 512)
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_BATCHES = (1, 4)
DEFAULT_FRAMES = 4
DEFAULT_BUDGET = 180.0  # seconds; what is left after it is listed as skipped (the default run stays under 5 min)
CLIP_SECONDS = 2.0


@dataclass
class BenchRow:
    """One measurement (or a skipped one, with the reason in ``status``)."""

    stage: str
    variant: str = ""
    size: Optional[int] = None
    device: str = "cpu"
    precision: str = "fp32"
    batch: Optional[int] = None
    frames: int = 0
    seconds: float = float("nan")
    fps: float = float("nan")
    peak_mb: float = float("nan")
    delta_mb: float = float("nan")
    status: str = "ok"


# --------------------------------------------------------------------------------------------- memory
def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux; the platform's word for it elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakMemory:
    """Context manager measuring peak memory: CPU RSS polled every 5 ms, or CUDA peak allocated bytes."""

    def __init__(self, device: str = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self.start = self.peak = float("nan")

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
        else:
            self.start = self.peak = _rss_mb()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_mb())
        return False

    @property
    def delta(self) -> float:
        return self.peak - self.start


# --------------------------------------------------------------------------------------------- inputs
def synthetic_clip(folder: Path, seconds: float = CLIP_SECONDS, fps: float = 25.0, size=(1280, 720)) -> tuple[Path, Path]:
    """A 720p talking-head stand-in: the scikit-image astronaut photo drifting slowly on a grey frame, H.264,
    with a syllable-like tone as its audio. Returns (video, wav)."""
    import cv2
    import soundfile as sf

    from ..demo import demo_face
    from ..media.video import VideoWriter

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    face = cv2.resize(demo_face(), (400, 400), interpolation=cv2.INTER_AREA)
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    video, audio = folder / "bench_clip.mp4", folder / "bench_speech.wav"
    sf.write(str(audio), wav, sr)
    n = int(round(seconds * fps))
    with VideoWriter(video, w, h, fps, audio=wav, sample_rate=sr) as vw:
        for i in range(n):
            frame = np.full((h, w, 3), 96, np.uint8)
            dx = int(round(20 * math.sin(2 * math.pi * i / n)))
            dy = int(round(8 * math.cos(2 * math.pi * i / n)))
            x0, y0 = (w - 400) // 2 + dx, (h - 400) // 2 + dy
            frame[y0 : y0 + 400, x0 : x0 + 400] = face
            vw.write(frame)
    return video, audio


# --------------------------------------------------------------------------------------------- timing
def _timed(fn: Callable[[], int], device: str, warmup: int = 1, min_frames: int = DEFAULT_FRAMES,
           min_runs: int = 1) -> tuple[int, float, PeakMemory]:
    """Run ``fn`` (returns frames done) ``warmup`` times, then until ``min_frames`` frames and ``min_runs`` runs;
    returns (frames, seconds, memory) of the timed runs."""
    sync = _syncer(device)
    for _ in range(warmup):
        fn()
    sync()
    frames, runs = 0, 0
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        while frames < min_frames or runs < min_runs:
            frames += fn()
            runs += 1
        sync()
        secs = time.perf_counter() - t0
    return frames, secs, mem


def _syncer(device: str):
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def _row(stage, frames, secs, mem, **kw) -> BenchRow:
    return BenchRow(stage=stage, frames=frames, seconds=secs, fps=frames / secs if secs > 0 else float("inf"),
                    peak_mb=mem.peak, delta_mb=mem.delta, **kw)


def precision_support(device: str, precision: str) -> Optional[str]:
    """None when ``precision`` can be measured on ``device``, else the reason it is skipped."""
    import torch

    if precision == "fp32":
        return None
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    if str(device).startswith("cuda"):
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "skipped: this GPU has no bf16 support"
        return None
    if precision == "fp16":
        return "skipped: fp16 is not a native compute type on CPU (emulated, not representative); measured on CUDA"
    from ..precision import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        return "skipped: this CPU has no bf16 instructions (AVX512-BF16/AMX; emulated bf16 is slower than fp32)"
    try:
        conv = torch.nn.Conv2d(3, 4, 3).to(dtype)
        with torch.inference_mode():
            conv(torch.zeros(1, 3, 8, 8, dtype=dtype))
    except (RuntimeError, NotImplementedError) as e:
        return f"skipped: bf16 convolution unsupported on this CPU ({str(e).splitlines()[0][:80]})"
    return None


# --------------------------------------------------------------------------------------------- stages
def bench_decode(video: Path, frames: int) -> BenchRow:
    from ..media.video import FrameReader

    def run():
        with FrameReader(video) as r:
            return sum(1 for _ in r.iter_range(0, frames))

    n, secs, mem = _timed(run, "cpu", min_frames=frames)
    return _row("decode", n, secs, mem, variant="PyAV, 720p H.264")


def _load_frames(video: Path, frames: int) -> list[np.ndarray]:
    from ..media.video import FrameReader

    with FrameReader(video) as r:
        return [fr.image for fr in r.iter_range(0, frames)]


def bench_faces(images: list[np.ndarray]) -> tuple[BenchRow, list]:
    """Detection on the full frame and FaceMesh on the detected crop, per frame; also returns the boxes found."""
    from ..face.detect import FaceDetector
    from ..face.landmarks import FaceMesh
    from ..face.track import crop_box
    from ..pipeline import face_crop

    boxes: list = []
    with FaceDetector() as det, FaceMesh(static=False) as mesh:
        def run():
            boxes.clear()
            for img in images:
                found = det.detect(img)
                if found:
                    b = crop_box(found[0], img.shape[1], img.shape[0])
                    boxes.append(b)
                    mesh.landmarks(face_crop(img, b, 256))
                else:
                    boxes.append(None)
            return len(images)

        n, secs, mem = _timed(run, "cpu", min_frames=len(images))
    return _row("faces", n, secs, mem, variant="mediapipe detection + face mesh"), boxes


def bench_paste(images: list[np.ndarray], boxes: list, size: int) -> BenchRow:
    from ..face.blend import paste_face

    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pairs = [(img, b) for img, b in zip(images, boxes) if b is not None]
    if not pairs:
        return BenchRow("paste", size=size, status="skipped: no face found in the clip")

    def run():
        for img, b in pairs:
            paste_face(img, face, b)
        return len(pairs)

    n, secs, mem = _timed(run, "cpu", min_frames=len(pairs))
    return _row("paste", n, secs, mem, size=size, variant="soft mask + Lab colour match")


def bench_encode(images: list[np.ndarray], folder: Path) -> BenchRow:
    from ..media.video import VideoWriter

    h, w = images[0].shape[:2]
    wav = np.zeros(int(16000 * len(images) / 25), np.float32)

    def run():
        with VideoWriter(folder / "bench_encode.mp4", w, h, 25, audio=wav, sample_rate=16000) as vw:
            for img in images:
                vw.write(img)
        return len(images)

    n, secs, mem = _timed(run, "cpu", min_frames=len(images))
    return _row("encode", n, secs, mem, variant="libx264 veryfast crf 18 + AAC")


class _NetworkFlow:
    """Random-weight networks for one render size, run as the original or as our pipeline feeds them."""

    def __init__(self, size: int, device: str, precision: str, flow: str):
        import torch

        from ..models import create_model

        self.size, self.device, self.flow = size, device, flow
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        torch.manual_seed(0)
        self.base = create_model("hyperlips-base").eval().to(device=device, dtype=self.dtype)
        self.hr = create_model(f"hyperlips-hr-{size}").eval().to(device=device, dtype=self.dtype) if size != 128 else None
        self.mesh = None
        if self.hr is not None:
            from ..face.landmarks import FaceMesh

            self.mesh = FaceMesh(static=False)
        self.face = (np.asarray(_face_128(), dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def close(self):
        if self.mesh is not None:
            self.mesh.close()

    def inputs(self, batch: int):
        import torch

        s_in = self.size if self.flow == "original layers" else 128
        face = torch.from_numpy(self.face)
        if s_in != 128:
            face = torch.nn.functional.interpolate(face[None], size=(s_in, s_in), mode="bilinear", align_corners=False)[0]
        x = torch.cat([face, face], 0)[None].repeat(batch, 1, 1, 1)
        x[:, :3, s_in // 2 :] = 0
        mel = torch.randn(batch, 1, 80, 16, generator=torch.Generator().manual_seed(0))
        return mel.to(self.device, self.dtype), x.to(self.device, self.dtype)

    def __call__(self, mel, x) -> int:
        import cv2
        import torch
        import torch.nn.functional as F

        from ..face.landmarks import draw_sketch

        with torch.inference_mode():
            if x.shape[-1] != 128:
                x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
            out = self.base(mel, x)
            if self.hr is None:
                return len(out)
            original = self.flow == "original layers"
            mesh_size = self.size if original else 256  # the original meshes the render-size image, we mesh at 256
            sk_size = self.size if original else 128  # and the HR decoder gets a render-size (original) or 128 input
            imgs = out.float().clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            sketches = []
            for img in imgs:
                lm = self.mesh.landmarks(np.ascontiguousarray(cv2.resize(img, (mesh_size, mesh_size))))
                sketches.append(np.zeros((sk_size, sk_size), np.uint8) if lm is None
                                else draw_sketch(lm[:, :2], mesh_size, sk_size))
            sk = torch.from_numpy(np.stack(sketches)).to(self.device, self.dtype).div(255)[:, None].expand(-1, 3, -1, -1)
            hr_in = out if sk_size == 128 else F.interpolate(out, size=(sk_size, sk_size), mode="bilinear", align_corners=False)
            self.hr(torch.cat([hr_in, sk], 1))
            return len(out)


def _face_128() -> np.ndarray:
    import cv2

    from ..demo import demo_face

    face = demo_face()[60:200, 160:300]  # the astronaut's face, roughly the crop the tracker makes
    return cv2.resize(face, (128, 128), interpolation=cv2.INTER_AREA)


def bench_network(size: int, device: str, precision: str, batches, flow: str, frames: int,
                  over_budget: Callable[[], Optional[str]] = lambda: None) -> list[BenchRow]:
    """One row per batch size for a network flow (the networks are built once for all batch sizes).
    ``over_budget()`` returns a reason to skip the remaining measurements, or None."""
    skip = precision_support(device, precision) or over_budget()
    label = flow if size != 128 else "original layers = pipeline (base only)"
    if skip:
        return [BenchRow("network", label, size, device, precision, b, status=skip) for b in batches]
    rows = []
    net = _NetworkFlow(size, device, precision, flow)
    try:
        for b in batches:
            reason = over_budget()
            if reason:
                rows.append(BenchRow("network", label, size, device, precision, b, status=reason))
                continue
            try:
                mel, x = net.inputs(b)
                n, secs, mem = _timed(lambda mel=mel, x=x: net(mel, x), device, min_frames=frames)
            except (RuntimeError, NotImplementedError) as e:
                rows.append(BenchRow("network", label, size, device, precision, b,
                                     status=f"failed: {str(e).splitlines()[0][:100]}"))
                continue
            rows.append(_row("network", n, secs, mem, variant=label, size=size, device=device, precision=precision, batch=b))
    finally:
        net.close()
    return rows


def generator_costs(device: str = "cpu", batches=(1, 16), frames: int = 16) -> list[dict]:
    """Size and speed of each generator at 128 px, side by side: parameters, GFLOP per frame (2 x multiply-adds,
    counted by torch's FLOP counter), and milliseconds per frame in fp32 at each batch size (random weights)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import GENERATORS, create_model

    out = []
    face = (np.asarray(_face_128(), dtype=np.float32) / 255.0).transpose(2, 0, 1)
    for name in GENERATORS:
        torch.manual_seed(0)
        net = create_model(name).eval().to(device)
        steps = int(getattr(net, "mel_steps", 16))

        def inputs(b, steps=steps):
            x = torch.from_numpy(np.concatenate([face, face], 0))[None].repeat(b, 1, 1, 1)
            x[:, :3, 64:] = 0
            mel = torch.randn(b, 1, 80, steps, generator=torch.Generator().manual_seed(0))
            return mel.to(device), x.to(device)

        with torch.inference_mode():
            with FlopCounterMode(display=False) as fc:
                net(*inputs(1))
            row = {"model": name, "params": sum(p.numel() for p in net.parameters()),
                   "gflop_per_frame": fc.get_total_flops() / 1e9}
            for b in batches:
                mel, x = inputs(b)
                n, secs, _ = _timed(lambda mel=mel, x=x: len(net(mel, x)), device, min_frames=frames)
                row[f"ms_per_frame_b{b}"] = 1000.0 * secs / max(n, 1)
        out.append(row)
    return out


def format_generators(rows: list[dict]) -> str:
    if not rows:
        return ""
    bs = sorted(int(k.rsplit("b", 1)[1]) for k in rows[0] if k.startswith("ms_per_frame_b"))
    head = ["model", "params", "GFLOP/frame"] + [f"ms/frame b{b}" for b in bs]
    body = [[r["model"], f"{r['params'] / 1e6:.2f} M", f"{r['gflop_per_frame']:.3f}"]
            + [f"{r[f'ms_per_frame_b{b}']:.1f}" for b in bs] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(head)]
    lines = [" ".join(h.ljust(w) for h, w in zip(head, widths)), " ".join("-" * w for w in widths)]
    lines += [" ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() for c in body]
    return "\n".join(lines)


def bench_end_to_end(video: Path, audio: Path, size: int, device: str, batch: int, folder: Path) -> list[BenchRow]:
    """``LipSync.sync`` with random weights: one row for the whole run and one per stage it reports."""
    from ..pipeline import LipSync

    ls = LipSync(None, None, size=size, device=device, batch_size=batch, untrained=True, progress=False)
    with PeakMemory(device if device.startswith("cuda") else "cpu") as mem:
        t0 = time.perf_counter()
        rep = ls.sync(video, audio, folder / f"bench_e2e_{size}.mp4")
        secs = time.perf_counter() - t0
    rows = [_row("end-to-end", rep.frames, secs, mem, variant="LipSync.sync, random weights", size=size, device=device,
                 batch=batch)]
    for stage, s in rep.timings.items():
        rows.append(BenchRow(f"  e2e: {stage}", "inside LipSync.sync", size, device, "fp32", batch, rep.frames, s,
                             rep.frames / s if s > 0 else float("inf")))
    return rows


def _cut_audio(src: Path, dst: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``src``'s audio as a 16 kHz wav (end-to-end runs stay short on any input)."""
    import soundfile as sf

    from ..media.audio import load_audio

    sf.write(str(dst), load_audio(src, 16000)[: int(seconds * 16000)], 16000)
    return dst


def _fps(video: Path) -> float:
    from ..media.video import probe

    return float(probe(video).fps)


def _e2e_too_long(rows: list, size: int, device: str, n_frames: int, budget: float, elapsed: float) -> Optional[str]:
    """A skip reason when the end-to-end run, estimated from the network rows measured at ``size``, would end past
    the time budget."""
    if not budget:
        return None
    rates = [r.fps for r in rows if r.stage == "network" and r.size == size and r.device == device
             and r.precision == "fp32" and r.status == "ok" and r.variant != "original layers"]
    if not rates:
        return None
    estimate = n_frames / max(rates) * 1.3 + 5.0
    if elapsed + estimate > budget:
        return (f"skipped: would take about {estimate:.0f} s and end past the {budget:g} s time budget "
                "(raise --budget)")
    return None


# --------------------------------------------------------------------------------------------- driver
def run_bench(*, sizes=SIZES, devices=None, precisions=PRECISIONS, batches=DEFAULT_BATCHES, frames=DEFAULT_FRAMES,
              video: Optional[Path] = None, audio: Optional[Path] = None, end_to_end_sizes=(128, 256),
              original_max_size: int = 256, budget: float = DEFAULT_BUDGET, threads: Optional[int] = None,
              log=None, generator_table: bool = True) -> dict:
    """Run the benchmark and return its JSON-ready result (``rows`` plus machine facts).

    Measurements run most important first (the I/O and face stages, fp32 networks, end to end at the smallest
    size, then the original flow, other precisions and larger end-to-end runs); once ``budget`` seconds have
    passed, the remaining ones are listed as skipped with that reason instead of being run.
    """
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    devices = list(devices) if devices else ["cpu", "cuda"]
    log = log or (lambda msg: None)
    rows: list[BenchRow] = []
    t_all = time.perf_counter()

    def over_budget() -> Optional[str]:
        if budget and time.perf_counter() - t_all > budget:
            return f"skipped: the {budget:g} s time budget was used up (raise --budget)"
        return None

    def add(r):
        for x in r if isinstance(r, list) else [r]:
            rows.append(x)
            log(format_row(x))

    with tempfile.TemporaryDirectory(prefix="hyperlips_bench_") as tmp:
        tmp = Path(tmp)
        if video is None:
            video, audio = synthetic_clip(tmp)
            clip_desc = f"synthetic 1280x720 25 fps clip, {CLIP_SECONDS:g} s (astronaut photo drifting)"
        else:
            clip_desc = str(video)
            if audio is None:
                audio = video
        e2e_audio = _cut_audio(audio, tmp / "bench_e2e_speech.wav", CLIP_SECONDS)
        generators = generator_costs("cpu", batches=(1, 16)) if generator_table else []
        if generators:
            log("generators at 128 px (fp32, cpu):\n" + format_generators(generators))
        e2e_frames = int(round(CLIP_SECONDS * _fps(video)))
        n_io = max(frames, 25)
        add(bench_decode(video, n_io))
        images = _load_frames(video, n_io)
        if not images:
            raise UserError(f"no frames could be decoded from {video}")
        row, boxes = bench_faces(images)
        add(row)
        for s in sizes:
            add(bench_paste(images, boxes, s))
        add(bench_encode(images, tmp))

        jobs: list[tuple] = []  # (priority, order, kind, args)
        for dev in devices:
            if dev.startswith("cuda") and not torch.cuda.is_available():
                add([BenchRow("network", "", s, dev, "-", None, status="skipped: no CUDA GPU on this machine") for s in sizes])
                add(BenchRow("end-to-end", "", None, dev, "-", None, status="skipped: no CUDA GPU on this machine"))
                continue
            for s in sizes:
                for flow in (["original layers"] if s == 128 else ["pipeline", "original layers"]):
                    for prec in precisions:
                        pri = (0 if prec == "fp32" else 2) + (1 if flow == "original layers" and s != 128 else 0)
                        jobs.append((pri, len(jobs), "network", (s, dev, prec, flow)))
            for i, s in enumerate(end_to_end_sizes):
                jobs.append((1 if i == 0 else 3, len(jobs), "e2e", (s, dev)))
        for _, _, kind, a in sorted(jobs):
            if kind == "network":
                s, dev, prec, flow = a
                if flow == "original layers" and s > original_max_size and not dev.startswith("cuda"):
                    add([BenchRow("network", flow, s, dev, prec, b,
                                  status=f"skipped on CPU by default (the HR decoder on a {s}-px input renders "
                                         f"{s * s // 128}-px faces: minutes); use --original-max-size {s}")
                         for b in batches])
                    continue
                add(bench_network(s, dev, prec, batches, flow, frames, over_budget))
            else:
                s, dev = a
                reason = over_budget() or _e2e_too_long(rows, s, dev, e2e_frames, budget, time.perf_counter() - t_all)
                if reason:
                    add(BenchRow("end-to-end", "LipSync.sync, random weights", s, dev, "fp32", max(batches), status=reason))
                else:
                    add(bench_end_to_end(video, e2e_audio, s, dev, max(batches), tmp))
    return {
        "machine": {"platform": platform.platform(), "processor": cpu_name(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "clip": clip_desc,
        "generators": generators,
        "budget_seconds": budget,
        "seconds": round(time.perf_counter() - t_all, 1),
        "rows": [asdict(r) for r in rows],
    }


# --------------------------------------------------------------------------------------------- output
COLUMNS = ("stage", "variant", "size", "device", "precision", "batch", "frames", "fps", "ms/frame", "peak MB", "+MB")


def _cells(r: BenchRow | dict) -> list[str]:
    d = asdict(r) if isinstance(r, BenchRow) else r
    if d["status"] != "ok":
        return [d["stage"], d["variant"], _s(d["size"]), d["device"], d["precision"], _s(d["batch"]), "", d["status"]]
    fps = d["fps"]
    ms = 1000.0 / fps if fps and fps > 0 else float("nan")
    return [d["stage"], d["variant"], _s(d["size"]), d["device"], d["precision"], _s(d["batch"]), str(d["frames"]),
            f"{fps:.2f}", f"{ms:.1f}", _s(d["peak_mb"], "{:.0f}"), _s(d["delta_mb"], "{:+.0f}")]


def _s(v, fmt="{}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def format_row(r) -> str:
    return " | ".join(_cells(r))


def format_table(result: dict) -> str:
    """The printed table: one line per row, columns aligned; skipped rows carry their reason."""
    body = [_cells(r) for r in result["rows"]]
    widths = [max(len(COLUMNS[i]), *(len(c[i]) for c in body if i < len(c) and len(c) == len(COLUMNS)))
              for i in range(len(COLUMNS))]
    lines = [" ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)), " ".join("-" * w for w in widths)]
    for c in body:
        if len(c) == len(COLUMNS):
            lines.append(" ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
        else:  # skipped: first six columns, then the reason
            lines.append(" ".join(v.ljust(w) for v, w in zip(c[:6], widths)) + "  " + c[-1])
    if result.get("generators"):
        lines.insert(0, "generators at 128 px (fp32, cpu):\n" + format_generators(result["generators"]) + "\n")
    m = result["machine"]
    lines.append(f"\n{m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['threads']} threads)"
                 f"{', ' + m['cuda'] if m['cuda'] else ''}; clip: {result['clip']}; {result['seconds']} s in all")
    return "\n".join(lines)


def add_bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=SIZES, help="render sizes (default 128 256 512)")
    p.add_argument("--devices", nargs="+", help="cpu and/or cuda (default: both; cuda rows are skipped without a GPU)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                   help="fp32 fp16 bf16 (default all; those a device lacks are skipped with the reason)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCHES), help="network batch sizes (default 1 4)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"frames timed per network measurement, after one warm-up batch (default {DEFAULT_FRAMES})")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help=f"seconds after which the remaining measurements are skipped (default {DEFAULT_BUDGET:g}; 0 = no limit)")
    p.add_argument("--video", type=Path, help="a talking-face clip to use (default: a synthetic 2 s 720p clip)")
    p.add_argument("--audio", type=Path, help="speech for the end-to-end run (default: the clip's own audio)")
    p.add_argument("--end-to-end-sizes", type=int, nargs="*", default=[128, 256], choices=SIZES,
                   help="render sizes of the end-to-end runs (default 128 256; none to skip)")
    p.add_argument("--original-max-size", type=int, default=256, choices=SIZES,
                   help="on CPU, run the original HR flow only up to this size (default 256: at 512 it renders 2048-px faces)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("-o", "--output", type=Path, default=Path("hyperlips_bench.json"), help="JSON output (default hyperlips_bench.json)")


def run_bench_command(args) -> int:
    if any(b < 1 for b in args.batch_sizes):
        raise UserError("--batch-sizes must be at least 1")
    if args.frames < 1:
        raise UserError("--frames must be at least 1")
    if args.video is not None:
        from ..errors import require_file

        require_file(args.video, "video")
    if args.audio is not None:
        from ..errors import require_file

        require_file(args.audio, "audio")
    devices = args.devices
    for d in devices or ():
        if not (d == "cpu" or d.startswith("cuda")):
            raise UserError(f"--devices takes cpu and cuda (or cuda:N), got {d!r}")
    if args.output.suffix.lower() != ".json":
        raise UserError(f"--output is a JSON file (ending in .json): {args.output}")
    print("stage | variant | size | device | precision | batch | frames | fps | ms/frame | peak MB | +MB", file=sys.stderr)
    result = run_bench(sizes=args.sizes, devices=devices, precisions=args.precisions, batches=args.batch_sizes,
                       frames=args.frames, video=args.video, audio=args.audio, end_to_end_sizes=args.end_to_end_sizes,
                       original_max_size=args.original_max_size, budget=args.budget, threads=args.threads,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(_json_safe(result), indent=1))
    print(f"wrote {args.output}")
    return 0


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
