"""The measurements of ``hyperlips bench`` (``eval.bench`` runs them and prints the table): each stage alone, the
networks per model, layout and precision, ``LipSync.sync`` end to end, and the peak memory of a short and a long run.

Peak memory is the process's peak resident set size during the measurement (CPU), or the peak CUDA memory
allocated by torch (CUDA), and its rise above the level at the start; the short/long comparison runs each input in
a fresh process and reads that process's peak.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

SIZES = (128, 256, 512)
DEFAULT_FRAMES = 4
# a network row is timed for at least this long (a few frames of a fast network take milliseconds: noise)
NETWORK_MIN_SECONDS = 1.0
STAGE_MIN_SECONDS = 1.0  # the stage rows too: in NETWORK_ROUNDS rounds, their median and range kept
# in as many rounds: a row's figure is their median, their range beside it (one process's rate moves by several
# percent from one half-second to the next on a shared 2-core machine)
NETWORK_ROUNDS = 3
FACE_SEARCH_SECONDS = 60.0  # --video: how far a face is looked for when the first frames show none
CLIP_SECONDS = 6.0  # end-to-end clips: twice the reference search (3 s), so the one-pass steady state shows
LAYOUTS = ("channels-last", "original")  # ours on CPU, and the original implementation's (NCHW, contiguous)


@dataclass
class BenchRow:
    """One measurement (or a skipped one, with the reason in ``status``)."""

    stage: str
    variant: str = ""
    size: Optional[int] = None
    device: str = "cpu"
    precision: Optional[str] = None  # the networks' (None: a stage without one, decode or paste: "-" in the table)
    batch: Optional[int] = None
    frames: int = 0
    seconds: float = float("nan")
    fps: float = float("nan")
    peak_mb: float = float("nan")
    delta_mb: float = float("nan")
    status: str = "ok"
    first_frame: float = float("nan")  # end to end: seconds to the first frame handed to the encoder
    fps_low: float = float("nan")  # networks: the slowest and the fastest of the timed rounds (``fps``: their median)
    fps_high: float = float("nan")
    load: float = float("nan")  # the machine's one-minute load average when the row was done (other programs' share)
    video_fps: float = float("nan")  # end to end: the output's frame rate (real time is that many frames a second)


def load_average() -> float:
    """The one-minute load average (runnable processes, this one included); NaN where the system has none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


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


def machine_words() -> str:
    """The CPU as a benchmark's figures need it said: its model, its cores, and whether it computes bf16 natively
    (where it does not, bf16 is emulated, many times slower than fp32)."""
    from ..precision import cpu_has_native_bf16

    return f"{cpu_name()}, {cpus_words()}, bf16 {'native' if cpu_has_native_bf16() else 'emulated (not used)'}"


def cpus_words(usable: int | None = None, machine: int | None = None) -> str:
    """``2 CPUs``, or ``1 of 2 CPUs`` where this process may run on fewer than the machine has (``taskset``, a
    container's cpuset): the figures are those of the cores it had."""
    from ..precision import usable_cpus

    usable = usable_cpus() if usable is None else usable
    machine = (os.cpu_count() or usable) if machine is None else machine
    return f"{usable} CPUs" if usable >= machine else f"{usable} of {machine} CPUs"


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
    """A talking-head stand-in (720p by default): the scikit-image astronaut photo, scaled with the frame (its side
    400/720 of the frame's height), drifting slowly on a grey frame, H.264, with a syllable-like tone as its audio.
    Returns (video, wav)."""
    import cv2
    from ..media.audio import write_wav

    from ..demo import demo_face
    from ..media.writer import VideoWriter

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    side = max(64, round(400 * h / 720))  # the same picture at every size (a 400 px face in a 1080p frame was found
    face = cv2.resize(demo_face(), (side, side), interpolation=cv2.INTER_AREA)  # by the detector in a third of them)
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    video, audio = folder / "bench_clip.mp4", folder / "bench_speech.wav"
    write_wav(audio, wav, sr)
    n = int(round(seconds * fps))
    with VideoWriter(video, w, h, fps, audio=wav, sample_rate=sr) as vw:
        for i in range(n):
            frame = np.full((h, w, 3), 96, np.uint8)
            dx = int(round(20 * h / 720 * math.sin(2 * math.pi * i / n)))
            dy = int(round(8 * h / 720 * math.cos(2 * math.pi * i / n)))
            x0, y0 = (w - side) // 2 + dx, (h - side) // 2 + dy
            frame[y0 : y0 + side, x0 : x0 + side] = face
            vw.write(frame)
    return video, audio


# --------------------------------------------------------------------------------------------- timing
def _timed(fn: Callable[[], int], device: str, warmup: int = 1, min_frames: int = DEFAULT_FRAMES,
           min_runs: int = 1, min_seconds: float = 0.0, rounds: int = 1) -> tuple[int, float, PeakMemory, list]:
    """Run ``fn`` (returns frames done) ``warmup`` times, then until ``min_frames`` frames, ``min_runs`` runs and
    ``min_seconds`` seconds, split into ``rounds`` rounds of at least one run and an equal share of each minimum;
    returns (frames, seconds, memory) of the timed runs and each round's frames per second."""
    sync = _syncer(device)
    for _ in range(warmup):
        fn()
    sync()
    frames, runs, rates = 0, 0, []
    share = (math.ceil(min_frames / rounds), math.ceil(min_runs / rounds), min_seconds / rounds)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        for _ in range(rounds):
            n, k, t_round = 0, 0, time.perf_counter()
            while n < share[0] or k < max(share[1], 1) or time.perf_counter() - t_round < share[2]:
                n += fn()
                k += 1
                if min_seconds:
                    sync()
            sync()
            rates.append(n / max(time.perf_counter() - t_round, 1e-9))
            frames, runs = frames + n, runs + k
        secs = time.perf_counter() - t0
    return frames, secs, mem, rates


def _syncer(device: str):
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def _row(stage, frames, secs, mem, rates=None, **kw) -> BenchRow:
    """A measured row; with ``rates`` (per round), its fps is their median and their range is kept."""
    fps = frames / secs if secs > 0 else float("inf")
    low = high = float("nan")
    if rates and len(rates) > 1:
        fps, low, high = float(np.median(rates)), min(rates), max(rates)
    return BenchRow(stage=stage, frames=frames, seconds=secs, fps=fps, peak_mb=mem.peak, delta_mb=mem.delta,
                    fps_low=low, fps_high=high, **kw)


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
_STAGE_ROUNDS = dict(min_seconds=STAGE_MIN_SECONDS, rounds=NETWORK_ROUNDS)


def bench_decode(video: Path, frames: int) -> BenchRow:
    from ..media.video import FrameReader

    def run():
        with FrameReader(video) as r:
            return sum(1 for _ in r.iter_range(0, frames))

    n, secs, mem, rates = _timed(run, "cpu", min_frames=frames, **_STAGE_ROUNDS)
    return _row("decode", n, secs, mem, rates, variant=f"PyAV, {_coded_as(video)}")


def _coded_as(video: Path) -> str:
    """``720p H.264``: the clip's height and codec, as the decode row names them."""
    from ..media.video import probe

    try:
        info = probe(video)
        return f"{info.height}p {CODEC_NAMES.get(info.codec, info.codec)}"
    except Exception:  # noqa: BLE001 - a label only; the clip was decoded above
        return Path(video).name


CODEC_NAMES = {"h264": "H.264", "hevc": "H.265", "mpeg1video": "MPEG-1", "mpeg2video": "MPEG-2", "mpeg4": "MPEG-4",
               "vp9": "VP9", "av1": "AV1"}


def _load_frames(video: Path, frames: int, start: int = 0) -> list[np.ndarray]:
    from ..media.video import FrameReader

    with FrameReader(video) as r:
        return [fr.image for fr in r.iter_range(start, start + frames)]


def first_face_frame(video: Path, seconds: float = FACE_SEARCH_SECONDS, step: int = 5) -> int | None:
    """The first frame (of every ``step``-th, in the first ``seconds``) where the detector finds a face; None if
    none does."""
    from ..face.detect import FaceDetector
    from ..media.video import FrameReader

    with FrameReader(video) as r, FaceDetector() as det:
        for fr in r.iter_range(0, int(math.ceil(seconds * r.fps))):
            if fr.index % step == 0 and det.detect(fr.image):
                return fr.index
    return None


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

        n, secs, mem, rates = _timed(run, "cpu", min_frames=len(images), **_STAGE_ROUNDS)
    found = sum(b is not None for b in boxes)
    # the frames column counts every pass over the frames (150 beside "a face in 21 of 25 frames" read as a mismatch)
    return _row("faces", n, secs, mem, rates, variant=f"mediapipe detection + face mesh (a face in {found} of "
                                               f"{len(images)} frames, each timed {n // len(images)} times)"), boxes


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

    n, secs, mem, rates = _timed(run, "cpu", min_frames=len(pairs), **_STAGE_ROUNDS)
    return _row("paste", n, secs, mem, rates, size=size, variant="soft mask + Lab colour match")


def bench_encode(images: list[np.ndarray], folder: Path) -> BenchRow:
    from ..media.writer import VideoWriter

    h, w = images[0].shape[:2]
    wav = np.zeros(int(16000 * len(images) / 25), np.float32)

    def run():
        with VideoWriter(folder / "bench_encode.mp4", w, h, 25, audio=wav, sample_rate=16000) as vw:
            for img in images:
                vw.write(img)
        return len(images)

    n, secs, mem, rates = _timed(run, "cpu", min_frames=len(images), **_STAGE_ROUNDS)
    return _row("encode", n, secs, mem, rates, variant="libx264 veryfast crf 18 + AAC")


class _NetworkFlow:
    """Random-weight networks for one render size, run as the original or as our pipeline runs them.

    ``model``: the generator (``hyperlips-base`` or ``hyperlips-lite``); ``layout``: ``channels-last`` (ours on a
    CPU: oneDNN's fast convolutions) or ``original`` (NCHW, contiguous, as the original implementation runs it);
    ``flow`` (256/512 only): ``original layers`` feeds the HR decoder as the original does (render-size input),
    ``pipeline`` as we do (128 px input)."""

    def __init__(self, size: int, device: str, precision: str, flow: str, model: str = "hyperlips-base",
                 layout: str = "channels-last"):
        import torch

        from ..models import create_model
        from ..pipeline import row_skipping_kwargs

        self.size, self.device, self.flow = size, device, flow
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        cl = layout == "channels-last" and not str(device).startswith("cuda")
        self.format = torch.channels_last if cl else torch.contiguous_format
        torch.manual_seed(0)
        ours = layout == "channels-last"  # as sync runs them: batch norms folded, Base's unread rows skipped
        self.base = self._ready(create_model(model), ours)
        self.steps = int(getattr(self.base, "mel_steps", 16))
        self.hr = None
        if size != 128:
            self.hr = self._ready(create_model(f"hyperlips-hr-{size}"), ours)
        self.kwargs, self.hr_kwargs = row_skipping_kwargs(self.base, self.hr) if ours else ({}, {})
        self.mesh = None
        if self.hr is not None:
            from ..face.landmarks import FaceMesh

            self.mesh = FaceMesh(static=False)
        self.face = (np.asarray(_face_128(), dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def _ready(self, net, ours: bool):
        from ..models.inference import prepare_for_inference

        net.eval()
        if ours:
            prepare_for_inference(net)
        return net.to(device=self.device, dtype=self.dtype, memory_format=self.format)

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
        mel = torch.randn(batch, 1, 80, self.steps, generator=torch.Generator().manual_seed(0))
        return mel.to(self.device, self.dtype), x.to(self.device, self.dtype).contiguous(memory_format=self.format)

    def __call__(self, mel, x) -> int:
        import cv2
        import torch
        import torch.nn.functional as F

        from ..face.landmarks import draw_sketch

        with torch.inference_mode():
            if x.shape[-1] != 128:
                x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
            out = self.base(mel, x, **self.kwargs)
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
            self.hr(torch.cat([hr_in, sk], 1).contiguous(memory_format=self.format), **self.hr_kwargs)
            return len(out)


def _face_128() -> np.ndarray:
    import cv2

    from ..demo import demo_face

    face = demo_face()[60:200, 160:300]  # the astronaut's face, roughly the crop the tracker makes
    return cv2.resize(face, (128, 128), interpolation=cv2.INTER_AREA)


def network_label(size: int, flow: str, model: str, layout: str) -> str:
    """The ``variant`` of a network row: the reference (the original's layout) or ours."""
    name = "Lite" if model.endswith("lite") else "Base"
    if layout == "original":
        return (f"reference: original layout ({name}, NCHW)" if size == 128
                else f"reference: original layers ({name} + HR, NCHW)")
    return f"{name}, channels-last" if size == 128 else f"pipeline: {name} + HR, channels-last"


def bench_network(size: int, device: str, precision: str, batches, flow: str, frames: int,
                  over_budget: Callable[[], Optional[str]] = lambda: None, model: str = "hyperlips-base",
                  layout: str = "channels-last") -> list[BenchRow]:
    """One row per batch size for a network flow (the networks are built once for all batch sizes).
    ``over_budget()`` returns a reason to skip the remaining measurements, or None."""
    skip = precision_support(device, precision) or over_budget()
    label = network_label(size, flow, model, layout)
    if skip:
        return [BenchRow("network", label, size, device, precision, b, status=skip) for b in batches]
    rows = []
    net = _NetworkFlow(size, device, precision, flow, model, layout)
    try:
        for b in batches:
            reason = over_budget()
            if reason:
                rows.append(BenchRow("network", label, size, device, precision, b, status=reason))
                continue
            try:
                mel, x = net.inputs(b)
                n, secs, mem, rates = _timed(lambda mel=mel, x=x: net(mel, x), device, min_frames=frames,
                                             min_seconds=NETWORK_MIN_SECONDS, rounds=NETWORK_ROUNDS)
            except (RuntimeError, NotImplementedError) as e:
                rows.append(BenchRow("network", label, size, device, precision, b,
                                     status=f"failed: {str(e).splitlines()[0][:100]}"))
                continue
            rows.append(_row("network", n, secs, mem, variant=label, size=size, device=device, precision=precision,
                             batch=b, rates=rates))
    finally:
        net.close()
    return rows


def generator_costs(device: str = "cpu", batches=(1, 16), frames: int = 16, names=None) -> list[dict]:
    """Size and speed of each generator at 128 px (``names``: those of the registry's ``GENERATORS`` to measure, all
    by default), side by side: parameters, GFLOP per frame (2 x multiply-adds, counted by torch's FLOP counter), and
    milliseconds per frame in fp32 at each batch size (random weights)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import GENERATORS, create_model

    out = []
    face = (np.asarray(_face_128(), dtype=np.float32) / 255.0).transpose(2, 0, 1)
    for name in (n for n in GENERATORS if names is None or n in names):
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
                n, secs, _, _ = _timed(lambda mel=mel, x=x: len(net(mel, x)), device, min_frames=frames)
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


E2E_NAMES = {"base": "Base", "lite": "Lite", "starter": "Starter"}  # end-to-end runs' models, as rows name them


def bench_end_to_end(video: Path, audio: Path, size: int, device: str, batch: int, folder: Path,
                     model: str = "lite", label: str = "", precision: str = "auto") -> list[BenchRow]:
    """``LipSync.sync`` with random weights (``model`` base or lite), or with ``model`` starter the shipped starter as
    ``sync`` runs it by default (its mouth warped), in ``precision`` (``auto``: sync's default; the rows say the one it
    chose): one row for the whole run (its wall time: the stages overlap) and one per stage with the stage's busy
    time."""
    from ..pipeline import LipSync

    if model == "starter":
        from ..models import shipped

        if shipped.starter() is None:
            return [BenchRow("end-to-end", f"Starter, {label or 'LipSync.sync'}", size, device, precision, batch,
                             status=f"skipped: {shipped.absent('starter')}")]
        ls = LipSync(None, None, device=device, batch_size=batch, progress=False, precision=precision)
        weights = f"shipped weights, mouth {ls.mouth}"
    else:
        ls = LipSync(None, None, size=size, device=device, batch_size=batch, untrained=True, model=model,
                     progress=False, precision=precision)
        weights = "random weights"
    with PeakMemory(device if device.startswith("cuda") else "cpu") as mem:
        t0 = time.perf_counter()
        rep = ls.sync(video, audio, folder / f"bench_e2e_{size}.mp4")
        secs = time.perf_counter() - t0
    name = E2E_NAMES[model]
    what = f"{name}{' + HR' if size != 128 else ''}, {label or 'LipSync.sync'}, {weights}"
    if rep.frames_with_face < rep.frames:  # (frames without a face skip the network and paste-back: faster)
        what += f", a mouth in {rep.frames_with_face} of {rep.frames} frames"
    rows = [_row("end-to-end", rep.frames, secs, mem, variant=what, size=size, device=device, batch=batch,
                 precision=ls.precision)]
    if rep.first_frame_seconds is not None:
        rows[0].first_frame = rep.first_frame_seconds
    rows[0].video_fps = float(rep.fps)
    for stage, s in rep.timings.items():  # (only the network stage has a precision)
        rows.append(BenchRow(f"e2e: {stage}", "busy time inside LipSync.sync", size, device,
                             ls.precision if stage == "network" else None, batch, rep.frames, s,
                             rep.frames / s if s > 0 else float("inf")))
    return rows


# run `hyperlips sync` and print the process's own peak resident memory: VmHWM (Linux) belongs to this program
# image only, while ru_maxrss is carried over from the parent through fork and exec
PEAK_CHILD = """import resource, sys
from hyperlips.cli import main
rc = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration, ValueError):
    pass
print("PEAK_KB", peak, file=sys.stderr)
sys.exit(rc)
"""


def bench_memory(folder: Path, seconds: tuple[float, float], model: str = "lite", batch: int = 16,
                 log=lambda msg: None, threads: Optional[int] = None) -> list[BenchRow]:
    """Peak memory of ``hyperlips sync`` on a short and a long synthetic 720p input (each made here, speech as long
    as the video), each run in a fresh process: the second row's ``delta_mb`` is its peak minus the short one's."""
    rows = []
    peaks = []
    for s in seconds:
        log(f"making a {s:g} s synthetic 720p input for the memory comparison")
        video, audio = synthetic_clip(folder / f"memory_{int(s)}s", seconds=s)
        code = PEAK_CHILD if not threads else f"import torch; torch.set_num_threads({int(threads)})\n" + PEAK_CHILD
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code, "sync", str(video), str(audio), "-o", str(folder / "memory.mp4"),
                            "--untrained", "--model", model, "--batch-size", str(batch), "--quiet"],
                           capture_output=True, text=True)
        secs = time.perf_counter() - t0
        peak = [ln.split()[1] for ln in r.stderr.splitlines() if ln.startswith("PEAK_KB")]
        if r.returncode != 0 or not peak:
            rows.append(BenchRow("memory", f"{s:g} s input", 128, status=f"failed: {r.stderr.strip()[-120:]}"))
            continue
        peaks.append(int(peak[0]) / 1024.0)
        frames = int(round(s * 25))
        rows.append(BenchRow("memory", f"sync, {E2E_NAMES.get(model, model)} (random weights), {s:g} s synthetic "
                             "720p input, fresh process (fps: start-up included)", 128, "cpu", "auto",
                             batch, frames, secs, frames / secs, peaks[-1],
                             peaks[-1] - peaks[0] if len(peaks) > 1 else 0.0))
    return rows
