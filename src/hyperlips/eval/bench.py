"""``hyperlips bench``: frames per second and peak memory of each stage, the networks side by side, and end to end.

One run reports, most important first (what is left when the ``--budget`` runs out is listed as skipped, with the
reason):

* the stages alone on a synthetic 720p clip: **decode**, **faces** (detection and face mesh), **paste**, **encode**;
* the **networks** at 128 px, per precision (fp32, bf16, fp16; those the device would only emulate are skipped, with
  the reason) and batch size: the **reference**, HyperLips-Base in the original implementation's layout (NCHW,
  fp32: what the original runs; also in the original inference's own batch of 128), then Base and HyperLips-Lite
  as ``sync`` runs them (channels-last, batch norms folded, Base's rows above the pasted ones skipped); at 256/512 px
  Base + the HR decoder as the original feeds it (render-size input: 2x/4x larger outputs, reference §4.5) and as
  the pipeline does (128 px input);
* **end to end** (``LipSync.sync`` with random weights, precision ``auto``, or each of ``--precisions`` where it is
  given): by default Lite and Base at 720p,
  Lite at 1080p and Lite + HR 256 at 720p, each with its wall time and every stage's busy time (the stages run at
  the same time, so the busy times add up to more than the wall time);
* **memory**: the peak memory of ``sync`` on a short and a long synthetic 720p input, each in a fresh process.

Weights are random: only speed and memory mean anything. The summary at the end compares: Lite end to end at 720p
against real time, Base end to end against the reference network, and the long run's peak memory against the
short one's. Measurements on a busy machine are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError, refuse_unexpanded_home
from ..options import at_least
from ..precision import cpu_has_native_bf16, usable_cpus
from .bench_stages import (  # noqa: F401  (the measurements, re-exported for callers of eval.bench)
    CLIP_SECONDS,
    DEFAULT_FRAMES,
    NETWORK_MIN_SECONDS,
    NETWORK_ROUNDS,
    SIZES,
    BenchRow,
    E2E_NAMES,
    FACE_SEARCH_SECONDS,
    PeakMemory,
    bench_decode,
    bench_encode,
    bench_end_to_end,
    bench_faces,
    bench_memory,
    bench_network,
    bench_paste,
    cpu_name,
    cpus_words,
    first_face_frame,
    format_generators,
    generator_costs,
    load_average,
    precision_support,
    synthetic_clip,
    _load_frames,
)

PRECISIONS = ("fp32", "fp16", "bf16")
MODELS = ("base", "lite")
DEFAULT_BATCHES = (1, 16)
ORIGINAL_BATCH = 128  # the batch the original's inference runs its network in (hyper_batch_size)
MAX_MEMORY_SECONDS = 1800.0  # the longest synthetic input of the memory comparison (its clip is made first)
DEFAULT_BUDGET = 420.0  # seconds; what is left after it is listed as skipped (the default run stays under 8 min)
DEFAULT_E2E = ("starter:720:128", "lite:720:128", "base:720:128", "lite:1080:128", "lite:720:256")
E2E_MODELS = MODELS + ("starter",)  # starter: the shipped weights with sync's defaults (the mouth warped)
DEFAULT_MEMORY = (8.0, 40.0)  # seconds of the short and the long input
HEIGHTS = {720: (1280, 720), 1080: (1920, 1080)}


@dataclass(frozen=True)
class E2ESpec:
    """One end-to-end run: ``model`` (base or lite with random weights, or the shipped starter as ``sync`` runs it
    by default) on a ``height``p clip, mouth rendered at ``size`` px."""

    model: str
    height: int
    size: int

    @classmethod
    def parse(cls, text: str) -> "E2ESpec":
        parts = str(text).split(":")
        try:
            model, height, size = parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 128
        except (IndexError, ValueError):
            model, height, size = "", 0, 0
        if (model not in E2E_MODELS or height not in HEIGHTS or size not in SIZES or len(parts) > 3
                or (model == "starter" and size != 128)):
            raise UserError(f"--end-to-end takes MODEL:HEIGHT[:SIZE] with MODEL base, lite or starter (128 px only), "
                            f"HEIGHT 720 or 1080 and SIZE 128, 256 or 512 (got {text!r})")
        return cls(model, height, size)

    def __str__(self) -> str:
        return f"{self.model}:{self.height}:{self.size}"


MAX_E2E_SECONDS = 600.0  # --seconds: ten minutes of synthetic 720p video at most


def _from_frame(video: Path, start: int, dst: Path, seconds: float) -> Path:
    """``seconds`` of ``video`` from frame ``start`` on, with its sound from the same moment, as a new H.264 file
    (``dst``, an MP4; a clip that opens on a title card is timed from its first face), copied frame by frame."""
    from ..media.audio import load_audio
    from ..media.video import FrameReader
    from ..media.writer import VideoWriter

    with FrameReader(video) as r:
        fps, info = r.fps, r.info
        count = max(1, min(int(round(seconds * fps)) + 1, info.n_frames - start))
        sound = load_audio(video, 16000)[int(start / fps * 16000):] if info.has_audio else None
        with VideoWriter(dst, info.width, info.height, fps, sample_rate=16000,
                         audio=sound[: int(count / fps * 16000)] if sound is not None else None) as out:
            for fr in r.iter_range(start, start + count):
                out.write(fr.image)
    return dst


def _cut_audio(src: Path, dst: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``src``'s audio as a 16 kHz wav (end-to-end runs stay short on any input)."""
    from ..media.audio import load_audio, write_wav

    write_wav(dst, load_audio(src, 16000)[: int(seconds * 16000)], 16000)
    return dst


def _check_clip(video: Optional[Path], audio: Optional[Path], speech: bool = True) -> None:
    """--video and --audio, before minutes of measuring: files, the video one with pictures, and (``speech``: where
    end-to-end runs need it) speech for it, its own sound without --audio. The audio file is read in full later,
    where a damaged one would fail."""
    from ..errors import require_file
    from ..media.video import probe

    if audio is not None:
        require_file(audio, "audio")
    if video is None:
        if audio is not None:
            raise UserError("--audio goes with --video (the synthetic clips bring their own speech)")
        return
    require_file(video, "video")
    info = probe(video)  # MediaError (a file without pictures, or not a media file) in one line
    if audio is None and not info.has_audio and not info.is_image and speech:
        raise UserError(f"--video {video} has no sound: give --audio with speech for it (or --end-to-end none to time "
                        "the stages alone)")
    if audio is None and info.is_image and speech:
        raise UserError(f"--video {video} is an image: give --audio with speech for it")


def _fps(video: Path) -> float:
    from ..media.video import probe

    return float(probe(video).fps)


def _frame_size(video: Path) -> tuple[int, int]:
    """The width and height of ``video``'s pictures (as shown: after rotation)."""
    from ..media.video import probe

    info = probe(video)
    return int(info.width), int(info.height)


def _e2e_too_long(rows: list, spec: E2ESpec, device: str, n_frames: int, budget: float, elapsed: float,
                  precision: str = "auto") -> Optional[str]:
    """A skip reason when the end-to-end run, estimated from the network rows measured for its model (in its
    precision where it has one and they were measured in it), would end past the time budget."""
    if not budget:
        return None
    name = "Base" if spec.model == "base" else "Lite"  # the starter is a HyperLips-Lite
    rates = [r for r in rows if r.stage == "network" and r.size == 128 and r.device == device
             and r.status == "ok" and r.variant.startswith(name)]
    rates = [r.fps for r in ([r for r in rates if r.precision == precision] or rates)]
    if not rates:
        return None
    estimate = n_frames / max(rates) * (1.3 if spec.size == 128 else 3.0) + 10.0
    if elapsed + estimate > budget:
        return (f"skipped: would take about {estimate:.0f} s and end past the {budget:g} s time budget "
                "(raise --budget)")
    return None


# --------------------------------------------------------------------------------------------- driver
def run_bench(*, sizes=SIZES, devices=None, precisions=None, batches=DEFAULT_BATCHES, frames=DEFAULT_FRAMES,
              models=MODELS, video: Optional[Path] = None, audio: Optional[Path] = None, end_to_end=DEFAULT_E2E,
              memory_seconds=DEFAULT_MEMORY, original_max_size: int = 256, budget: float = DEFAULT_BUDGET,
              threads: Optional[int] = None, log=None, generator_table: bool = True,
              original_batch: int = ORIGINAL_BATCH, seconds: float = CLIP_SECONDS) -> dict:
    """Run the benchmark and return its JSON-ready result (``rows``, ``summary`` and machine facts).

    Measurements run most important first (the stages, the fp32 networks at 128 px with the reference, Lite and Base
    end to end at 720p, the other precisions, the other end-to-end runs, the HR flows, memory); once ``budget``
    seconds have passed, the remaining ones are listed as skipped with that reason instead of being run.
    ``original_batch`` (0: none): the reference is also timed at the batch the original's inference uses, after
    the end-to-end runs at 720p (a batch of 128 takes about 55 s on two cores, in its rounds). ``seconds``: the end-to-end runs'
    length (their synthetic clips', or the first seconds of ``audio``). ``precisions``: those of the network rows (None:
    all of them); given, the end-to-end runs are made in each of them too (None: in ``sync``'s ``auto``).
    The arguments are checked first (a :class:`UserError` naming the one that is wrong). ``threads``: torch's CPU
    threads during the run (put back as they were afterwards).
    """
    import torch

    check_bench_arguments(sizes=sizes, devices=devices, precisions=precisions, batches=batches, frames=frames,
                          models=models, original_batch=original_batch, budget=budget, seconds=seconds,
                          threads=threads)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run_bench(sizes=sizes, devices=devices, precisions=precisions, batches=batches, frames=frames,
                          models=models, video=video, audio=audio, end_to_end=end_to_end, memory_seconds=memory_seconds,
                          original_max_size=original_max_size, budget=budget, threads=threads, log=log,
                          generator_table=generator_table, original_batch=original_batch, seconds=seconds)
    finally:
        torch.set_num_threads(before)


def check_bench_arguments(*, sizes, devices, precisions, batches, frames, models, original_batch, budget, seconds,
                          threads) -> None:
    """A :class:`UserError` for the first :func:`run_bench` argument that cannot be run, in the command's words."""
    from ..streaming import whole_number as whole

    if not all(whole(b) and b >= 1 for b in batches):
        raise UserError(f"--batch-sizes must be whole numbers of at least 1 (got {list(batches)})")
    if not whole(frames) or frames < 1:
        raise UserError(f"--frames must be a whole number of at least 1 (got {frames!r})")
    if not whole(original_batch) or original_batch < 0:
        raise UserError(f"--original-batch must be 0 (none) or a batch size (got {original_batch!r})")
    if threads is not None and (not whole(threads) or threads < 0):
        raise UserError(f"--threads must be 0 (torch's default) or a number of threads (got {threads!r})")
    for name, given, known in (("--sizes", sizes, SIZES), ("--precisions", precisions or (), PRECISIONS),
                               ("--models", models, MODELS)):
        wrong = [v for v in given if v not in known]
        if wrong:
            raise UserError(f"{name} takes {', '.join(map(str, known))} (got {', '.join(map(repr, wrong))})")
    for d in devices or ():
        if not (isinstance(d, str) and (d == "cpu" or d.startswith("cuda"))):
            raise UserError(f"--devices takes cpu and cuda (or cuda:N), got {d!r}")
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        raise UserError(f"--budget must be 0 (no limit) or a number of seconds, got {budget!r}")
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and 1 <= seconds <= MAX_E2E_SECONDS):
        raise UserError(f"--seconds must be 1 to {MAX_E2E_SECONDS:g} (the end-to-end runs' length), got {seconds!r}")


def _run_bench(*, sizes, devices, precisions, batches, frames, models, video, audio, end_to_end, memory_seconds,
               original_max_size, budget, threads, log, generator_table, original_batch, seconds) -> dict:
    """:func:`run_bench`'s measurements, its arguments checked."""
    import torch

    devices = list(devices) if devices else ["cpu", "cuda"]
    # --precisions given: the end-to-end runs in each of them (fp32 asked, they ran in auto's bf16); else in auto
    e2e_precisions = list(dict.fromkeys(precisions)) if precisions else ["auto"]
    precisions = list(precisions) if precisions else list(PRECISIONS)
    specs = [s if isinstance(s, E2ESpec) else E2ESpec.parse(s) for s in end_to_end]
    log = log or (lambda msg: None)
    own = _frame_size(video) if video is not None else None
    other = sorted({s.height for s in specs} - {own[1]}) if own else []  # heights asked that the video is not
    if other:  # not applied: said (lite:1080 on a 720p clip ran at 720p without a word)
        log(f"warning: --video {Path(video).name} is {own[0]}x{own[1]}: the end-to-end runs use it at its own size, "
            f"not at {' or '.join(f'{h}p' for h in other)} (the heights in --end-to-end choose the synthetic clips)")
    if own and len({s.height for s in specs}) > 1:  # the heights choose synthetic clips; one video is one size:
        specs = list({(s.model, s.size): s for s in specs}.values())  # the same run once
    rows: list[BenchRow] = []
    shown_name = Path(video).name if video is not None else ""  # (the user's file, also when a copy of it is timed)
    load_start = load_average()  # before this run adds its own
    t_all = time.perf_counter()

    def over_budget() -> Optional[str]:
        if budget and time.perf_counter() - t_all > budget:
            return f"skipped: the {budget:g} s time budget was used up (raise --budget)"
        return None

    def add(r):
        for x in r if isinstance(r, list) else [r]:
            if x.status == "ok" and not math.isfinite(x.load):
                x.load = load_average()
            rows.append(x)
            log(format_row(x))

    with tempfile.TemporaryDirectory(prefix="hyperlips_bench_") as tmp:
        tmp = Path(tmp)
        clips: dict = {}

        def clip(height: int) -> tuple[Path, Path]:
            if video is not None:
                return video, audio or video
            if height not in clips:
                clips[height] = synthetic_clip(tmp / f"{height}p", seconds=seconds, size=HEIGHTS[height])
            return clips[height]

        # (the user's file: a copy of it may be timed)
        clip_desc = "" if own is None else f"{video} ({own[0]}x{own[1]}, its own size)"
        e2e_heights: list[int] = []  # the synthetic clips' heights an end-to-end run was made on
        io_video, io_audio = clip(720)
        e2e_audio = _cut_audio(io_audio, tmp / "bench_e2e_speech.wav", seconds) if specs else None  # (speech: for
        # the end-to-end runs alone)
        generators = (generator_costs("cpu", batches=tuple(sorted(set(batches))),
                                      names=[f"hyperlips-{m}" for m in models]) if generator_table else [])
        if generators:
            log("generators at 128 px (fp32, cpu):\n" + format_generators(generators))
        e2e_frames = int(round(seconds * _fps(io_video)))
        n_io = max(frames, 25)
        add(bench_decode(io_video, n_io))
        images = _load_frames(io_video, n_io)
        if not images:
            raise UserError(f"no frames could be decoded from {io_video}")
        row, boxes = bench_faces(images)
        if video is not None and specs and all(b is None for b in boxes):  # before minutes of network rows
            start = first_face_frame(video)
            if start is None:
                raise UserError(f"no face found in the first {FACE_SEARCH_SECONDS:g} s of {video}: the end-to-end "
                                "runs need a talking face (--end-to-end none to time the stages alone)")
            log(f"note: no face in the first {len(images)} frames of {Path(video).name}; the stages and the "
                f"end-to-end runs are timed from frame {start}, where one shows")
            images = _load_frames(io_video, n_io, start=start)
            row, boxes = bench_faces(images)
            video = io_video = _from_frame(video, start, tmp / "from_face.mp4", seconds)
            if audio is None:  # its own sound, from the same moment
                e2e_audio = _cut_audio(io_video, tmp / "bench_e2e_speech.wav", seconds)
        add(row)
        for s in sizes:
            add(bench_paste(images, boxes, s))
        add(bench_encode(images, tmp))

        jobs: list[tuple] = []  # (priority, order, kind, args)
        for dev in devices:
            if dev.startswith("cuda") and not torch.cuda.is_available():
                add([BenchRow("network", "", s, dev, None, None, status="skipped: no CUDA GPU on this machine") for s in sizes])
                add(BenchRow("end-to-end", "", None, dev, None, None, status="skipped: no CUDA GPU on this machine"))
                continue
            if 128 in sizes:
                jobs.append((0, len(jobs), "network", (128, dev, "fp32", "", "hyperlips-base", "original")))
                if original_batch and original_batch not in batches:
                    jobs.append((2, len(jobs), "network", (128, dev, "fp32", "", "hyperlips-base", "original",
                                                           (original_batch,))))
                for prec in precisions:
                    for m in models:
                        jobs.append((0 if prec == "fp32" else 3, len(jobs), "network",
                                     (128, dev, prec, "", f"hyperlips-{m}", "channels-last")))
            for s in sizes:
                if s == 128:
                    continue
                for prec in precisions:
                    jobs.append((5 if prec == "fp32" else 6, len(jobs), "network",
                                 (s, dev, prec, "pipeline", "hyperlips-base", "channels-last")))
                jobs.append((5, len(jobs), "network", (s, dev, "fp32", "original layers", "hyperlips-base", "original")))
            # the 720p runs in the first precision the device has come early, the others after the other precisions
            main = next((p for p in e2e_precisions if p == "auto" or precision_support(dev, p) is None), None)
            for spec in specs:
                for prec in e2e_precisions:
                    first = spec.height == 720 and spec.size == 128 and prec == main
                    jobs.append((1 if first else 4, len(jobs), "e2e", (spec, dev, prec)))
        if memory_seconds and "cpu" in devices:
            jobs.append((7, len(jobs), "memory", tuple(memory_seconds)))
        elif memory_seconds:  # the memory runs are sync on the CPU: said, not dropped
            add([BenchRow("memory", f"sync, {s:g} s synthetic 720p input", 128,
                          status="skipped: peak memory is measured on the CPU (add cpu to --devices)")
                 for s in memory_seconds])
        for _, _, kind, a in sorted(jobs):
            if kind == "network":
                s, dev, prec, flow, model, layout, *own = a
                run_batches = own[0] if own else batches
                if flow == "original layers" and s > original_max_size and not dev.startswith("cuda"):
                    add([BenchRow("network", "reference: original layers (Base + HR, NCHW)", s, dev, prec, b,
                                  status=f"skipped on CPU by default (the HR decoder on a {s}-px input renders "
                                         f"{s * s // 128}-px faces: minutes); use --original-max-size {s}")
                         for b in run_batches])
                    continue
                add(bench_network(s, dev, prec, run_batches, flow, frames, over_budget, model, layout))
            elif kind == "e2e":
                spec, dev, prec = a
                name = f"{E2E_NAMES[spec.model]}{' + HR' if spec.size != 128 else ''}"
                reason = ((prec != "auto" and precision_support(dev, prec)) or over_budget()
                          or _e2e_too_long(rows, spec, dev, e2e_frames, budget, time.perf_counter() - t_all, prec))
                if reason:
                    add(BenchRow("end-to-end", f"{name}, {spec.height}p", spec.size, dev, prec, max(batches),
                                 status=reason))
                    continue
                v, _ = clip(spec.height)
                e2e_heights += [spec.height] if spec.height not in e2e_heights else []
                try:
                    rows_e2e = bench_end_to_end(v, e2e_audio, spec.size, dev, max(batches), tmp, spec.model,
                                                label=f"{spec.height}p" if video is None else shown_name,
                                                precision=prec)
                except UserError as e:  # this run could not be made: said in its row, the rows measured are kept
                    rows_e2e = [BenchRow("end-to-end", f"{name}, {spec.height}p", spec.size, dev, prec,
                                         max(batches), status=f"failed: {e}")]
                add(rows_e2e)
            else:
                reason = over_budget()
                if reason:
                    add([BenchRow("memory", f"sync, {s:g} s synthetic 720p input", 128, status=reason) for s in a])
                else:
                    add(bench_memory(tmp, a, log=log, threads=threads))
    result = {
        "machine": {"platform": platform.platform(), "processor": cpu_name(), "bf16_native": cpu_has_native_bf16(),
                    "cpu_count": usable_cpus(), "cpu_count_machine": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_start": load_start, "load_end": load_average()},
        "clip": clip_desc or _synthetic_words(len(images), seconds, e2e_heights),
        "generators": generators,
        "budget_seconds": budget,
        "seconds": round(time.perf_counter() - t_all, 1),
        "rows": [asdict(r) for r in rows],
    }
    result["summary"] = summarise(result["rows"], original_batch, result["machine"])
    return result


def _synthetic_words(stage_frames: int, seconds: float, e2e_heights: list[int]) -> str:
    """The synthetic clips this run used, each with what it was used for: the 720p one's first frames for the
    stages, and those an end-to-end run was made on (it named a 6 s 1080p clip in runs limited to 720p)."""
    parts = []
    for h in sorted({720, *e2e_heights}):
        did = ([f"the stages on its first {stage_frames} frames"] if h == 720 else []) + (
            [f"{seconds:g} s end to end"] if h in e2e_heights else [])
        parts.append(f"{'x'.join(map(str, HEIGHTS[h]))} ({', '.join(did)})")
    return f"synthetic 25 fps clip{'s' if len(parts) > 1 else ''} (astronaut photo drifting): {', '.join(parts)}"


def _pace(r: dict, before: str = " (", after: str = ")") -> str:
    """How an end-to-end run started: the seconds to its first frame and its pace from there (frames per second
    once the speech, the reference search and the first batch are done); empty where not measured."""
    from ..sync_report import pace_after_first_frame

    first, secs = r.get("first_frame"), r.get("seconds")
    pace = None if secs is None else pace_after_first_frame(r.get("frames") or 0, secs, first)
    if pace is None:
        return ""  # not measured (NaN in a row, None once written to JSON)
    return f"{before}the first frame after {first:.2f} s, then {pace:.1f} fps{after}"


def _has_range(r: dict) -> bool:
    lo, hi = r.get("fps_low"), r.get("fps_high")
    return lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi) and lo > 0


def _rounds(r: dict) -> str:
    """``, its rounds 13.6-15.6`` for a row timed in rounds (its fps is their median); empty otherwise."""
    return f", its rounds {r['fps_low']:.1f}-{r['fps_high']:.1f}" if _has_range(r) else ""


def _ratio_range(fast: dict, ref: dict) -> str:
    """`` (2.6-3.0x over the reference's rounds)``: how far the reference's spread moves a ratio to it."""
    if not _has_range(ref):
        return ""
    return f" ({fast['fps'] / ref['fps_high']:.1f}-{fast['fps'] / ref['fps_low']:.1f}x over its rounds)"


def _e2e_name_and_clip(variant: str) -> tuple[str, str]:
    """An end-to-end row's model and clip from its variant ("Lite, talk, take2.mp4, random weights"): the clip is all
    between the model and the weights, commas in its name included."""
    name, _, rest = variant.partition(", ")
    for weights in (", random weights", ", shipped weights"):
        if weights in rest:
            rest = rest[: rest.rindex(weights)]
    return name, rest.strip()


def _real_time(row: dict) -> str:
    """``0.93x real time for 30 fps video``: against the frame rate of the video the run made (25 fps where the row
    does not say: a 30 fps clip given with --video was compared with 25)."""
    rate = row.get("video_fps")
    rate = 25.0 if rate is None or not math.isfinite(rate) or rate <= 0 else float(rate)
    return f"{row['fps'] / rate:.2f}x real time for {rate:.4g} fps video"


def summarise(rows: list[dict], original_batch: int = ORIGINAL_BATCH, machine: Optional[dict] = None) -> list[str]:
    """The comparisons the benchmark exists for, in words (only those whose rows were measured). The main
    end-to-end runs are those at 720p with a 128 px mouth, or on a clip given with ``--video`` (one per model and
    precision)."""
    ok = [r for r in rows if r["status"] == "ok"]
    # (the precision in the key: with --precisions given, a run is made in each, and each is said)
    e2e = {(*_e2e_name_and_clip(r["variant"]), r["size"], r["precision"]): r for r in ok if r["stage"] == "end-to-end"}

    def main_runs(name: str) -> tuple[list[dict], str]:
        keys = [k for k in e2e if k[:3] == (name, "720p", 128)]
        if not keys:
            keys = [k for k in e2e if k[0] == name and k[2] == 128 and k[1] not in ("720p", "1080p")]
            if len({k[1] for k in keys}) != 1:
                return [], ""
        return [e2e[k] for k in keys], keys[0][1]

    lines = []
    shown = []
    starters, where = main_runs("Starter")
    for starter in starters:
        shown.append(starter)
        mouth = starter["variant"].split(", ")[-1]
        lines.append(f"the shipped starter end to end at {where}, its mouth as sync makes it by default ({mouth}): "
                     f"{starter['fps']:.1f} fps ({_real_time(starter)}, precision {starter['precision']}"
                     f"{_pace(starter, '; ', '')})")
    lites, where = main_runs("Lite")
    for lite in lites:
        shown.append(lite)
        lines.append(f"Lite end to end at {where}: {lite['fps']:.1f} fps ({_real_time(lite)}, precision "
                     f"{lite['precision']}{_pace(lite, '; ', '')})")
    bases, where = main_runs("Base")
    refs = [r for r in ok if r["stage"] == "network" and r["variant"].startswith("reference: original layout")
            and r["device"] == "cpu"]
    for base in bases if refs else []:
        shown.append(base)
        ref = max(refs, key=lambda r: r["fps"])
        line = (f"Base ({base['precision']}) end to end at {where}: {base['fps']:.1f} fps{_pace(base)} = "
                f"{base['fps'] / ref['fps']:.1f}x{_ratio_range(base, ref)} the reference network alone "
                f"({ref['fps']:.1f} fps{_rounds(ref)}: original layout, fp32, batch {ref['batch']})")
        own = [r for r in refs if r["batch"] == original_batch and r is not ref]
        if own:
            line += (f"; {base['fps'] / own[0]['fps']:.1f}x{_ratio_range(base, own[0])} it in the original's own "
                     f"inference batch of {original_batch} ({own[0]['fps']:.1f} fps{_rounds(own[0])})")
        lines.append(line)
    for key, r in sorted(e2e.items(), key=lambda kv: str(kv[0])):
        if not any(r is x for x in shown):
            lines.append(f"{key[0]} ({key[3]}) end to end at {key[1]}, mouth at {key[2]} px: {r['fps']:.1f} fps"
                         f"{_pace(r)}")
    mem = [r for r in ok if r["stage"] == "memory"]
    if len(mem) == 2:
        who = mem[0]["variant"].split(", ")[1] if mem[0]["variant"].count(", ") >= 2 else "sync"
        lines.append(f"peak memory ({who}): {mem[1]['peak_mb']:.0f} MB on the long input against {mem[0]['peak_mb']:.0f} MB "
                     f"on the short one ({mem[1]['peak_mb'] / mem[0]['peak_mb']:.2f}x for "
                     f"{mem[1]['frames'] / max(mem[0]['frames'], 1):.0f}x the length)")
    busy = _busy(ok, machine or {})
    if busy:
        lines.append(busy)
    return lines


def _cpus(machine: dict) -> str:
    """A result's CPUs in words; one saved before the machine's count was kept beside the usable one is said as it
    was (not with this machine's count)."""
    return cpus_words(machine.get("cpu_count"), machine.get("cpu_count_machine", machine.get("cpu_count")))


def _busy(rows: list[dict], machine: dict) -> str:
    """A note when other programs ran beside the measurements: the load average above what this run makes (its
    threads) before it started or while a row was timed. They take an unequal share from each row (the reference
    network, timed at another moment, may lose more than Base), so ratios between rows are off too."""
    threads = machine.get("threads") or 1
    start = machine.get("load_start")
    loads = [r["load"] for r in rows if isinstance(r.get("load"), (int, float)) and math.isfinite(r["load"])]
    before = start is not None and math.isfinite(start) and start >= 1.0
    during = bool(loads) and max(loads) > threads + 1.0
    if not (before or during):
        return ""
    seen = max(([start] if before else []) + loads)
    return (f"note: the machine was busy (load average up to {seen:.1f} with {threads} threads measuring, "
            f"{_cpus(machine)}): other programs took time from each measurement, each by a different share, so the "
            "figures are lower bounds and the ratios between rows are unreliable; measure on an idle machine")


# --------------------------------------------------------------------------------------------- output
COLUMNS = ("stage", "variant", "size", "device", "precision", "batch", "frames", "fps", "ms/frame", "peak MB", "+MB")


def _cells(r: BenchRow | dict) -> list[str]:
    d = asdict(r) if isinstance(r, BenchRow) else r
    # an end-to-end run's stages are indented under it in the table only (the JSON's names carry no layout)
    stage = "  " + d["stage"] if d["stage"].startswith("e2e: ") else d["stage"]
    if d["status"] != "ok":
        return [stage, d["variant"], _s(d["size"]), d["device"], _s(d["precision"]), _s(d["batch"]), "", d["status"]]
    fps = d["fps"]
    ms = 1000.0 / fps if fps and fps > 0 else float("nan")
    spread = f" ({d['fps_low']:.1f}-{d['fps_high']:.1f})" if _has_range(d) else ""
    return [stage, d["variant"], _s(d["size"]), d["device"], _s(d["precision"]), _s(d["batch"]), str(d["frames"]),
            f"{fps:.2f}{spread}", f"{ms:.1f}", _s(d["peak_mb"], "{:.0f}"), _s(d["delta_mb"], "{:+.0f}")]


def _s(v, fmt="{}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def format_row(r) -> str:
    return " | ".join(_cells(r))


def format_table(result: dict) -> str:
    """The printed table: one line per row, columns aligned; skipped rows carry their reason."""
    body = [_cells(r) for r in result["rows"]]
    # a skipped row's first six cells count too ("end-to-end" skipped beside "decode" measured pushed its cells right)
    widths = [max([len(COLUMNS[i]), *(len(c[i]) for c in body if i < len(c) and (len(c) == len(COLUMNS) or i < 6))])
              for i in range(len(COLUMNS))]  # (a list: with every row skipped, max of one int failed)
    lines = [" ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)), " ".join("-" * w for w in widths)]
    for c in body:
        if len(c) == len(COLUMNS):
            lines.append(" ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
        else:  # skipped: first six columns, then the reason
            lines.append(" ".join(v.ljust(w) for v, w in zip(c[:6], widths)) + "  " + c[-1])
    if result.get("generators"):
        lines.insert(0, "generators at 128 px (fp32, cpu):\n" + format_generators(result["generators"]) + "\n")
    if result.get("summary"):
        lines.append("\n" + "\n".join(result["summary"]))
    m = result["machine"]
    bf16 = {True: ", bf16 native", False: ", bf16 emulated (not used)"}.get(m.get("bf16_native"), "")
    lines.append(f"\n{m['processor']}, {_cpus(m)}{bf16}, torch {m['torch']} ({m['threads']} threads)"
                 f"{', ' + m['cuda'] if m['cuda'] else ''}; clip: {result['clip']}; {result['seconds']} s in all")
    return "\n".join(lines)


def add_bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=SIZES, help="render sizes (default 128 256 512)")
    p.add_argument("--devices", nargs="+", help="cpu and/or cuda (default: both; cuda rows are skipped without a GPU)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS,
                   help="fp32 fp16 bf16: those of the network rows, and, given, of the end-to-end runs too, each run "
                        "made in each one (default: all for the networks, the end-to-end runs in sync's auto "
                        "precision); those a device lacks are skipped with the reason")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                   help="generators measured at 128 px beside the reference (default base lite)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCHES),
                   help="network batch sizes (default 1 16; the largest is also the end-to-end batch)")
    p.add_argument("--original-batch", type=int, default=ORIGINAL_BATCH,
                   help=f"also time the reference at the batch the original's inference uses (default "
                        f"{ORIGINAL_BATCH}, about 55 s on two cores; 0 = no)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"frames timed per network measurement, after one warm-up batch (default {DEFAULT_FRAMES}; "
                        f"each is timed for at least {NETWORK_MIN_SECONDS:g} s, in {NETWORK_ROUNDS} rounds: the "
                        "table gives their median and range)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help=f"seconds after which the remaining measurements are skipped (default {DEFAULT_BUDGET:g}; 0 = no limit)")
    p.add_argument("--video", type=Path, help="a talking-face clip to use, at its own size: the heights of --end-to-end "
                   "do not apply to it (a warning says so where they differ from it; default: synthetic 720p and "
                   "1080p clips, which those heights choose)")
    p.add_argument("--audio", type=Path, help="speech for the end-to-end run (default: the clip's own audio)")
    p.add_argument("--seconds", type=float, default=CLIP_SECONDS,
                   help=f"length of the end-to-end runs (default {CLIP_SECONDS:g}: twice the reference face's search; "
                        f"a longer run shows more of the pace after the start-up)")
    p.add_argument("--end-to-end", nargs="*", default=list(DEFAULT_E2E), metavar="MODEL:HEIGHT[:SIZE]",
                   help=f"end-to-end runs: model base or lite (random weights) or starter (the shipped weights, "
                        f"the mouth as sync shows it by default), clip height 720 or 1080, mouth size 128/256/512 "
                        f"(default {' '.join(DEFAULT_E2E)}; none, or the flag alone, to skip)")
    p.add_argument("--memory-seconds", nargs="*", default=[str(s) for s in DEFAULT_MEMORY], metavar="SECONDS",
                   help=f"lengths of the short and the long synthetic 720p input whose peak memory is compared "
                        f"(default {DEFAULT_MEMORY[0]:g} {DEFAULT_MEMORY[1]:g}; e.g. 30 600; none, or the flag alone, to skip)")
    p.add_argument("--original-max-size", type=int, default=256, choices=SIZES,
                   help="on CPU, run the original HR flow only up to this size (default 256: at 512 it renders 2048-px faces)")
    p.add_argument("--threads", type=at_least(0), help="torch CPU threads (default: torch's choice)")
    p.add_argument("-o", "--output", type=Path, default=Path("hyperlips_bench.json"), help="JSON output (default hyperlips_bench.json)")


def _check_writable(path: Path) -> None:
    """UserError now if ``path`` (and its folder) cannot be written; nothing is left behind by the check, the folders
    it made included (the results make them again when they are written)."""
    from ..streaming import missing_folders, remove_made_folders

    refuse_unexpanded_home(path, "--output")
    existed = path.exists()
    made = missing_folders(path.parent)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a"):
                pass
        except OSError as e:
            raise UserError(f"cannot write --output {path}: {e.strerror or e}") from None
        if not existed:
            path.unlink()
    finally:
        remove_made_folders(made)


def run_bench_command(args) -> int:
    check_bench_arguments(sizes=args.sizes, devices=args.devices, precisions=args.precisions, batches=args.batch_sizes,
                          frames=args.frames, models=args.models, original_batch=args.original_batch,
                          budget=args.budget, seconds=args.seconds, threads=args.threads)
    memory = [] if _skipped(args.memory_seconds) else _memory_lengths(args.memory_seconds)
    specs = [] if _skipped(args.end_to_end) else [E2ESpec.parse(s) for s in args.end_to_end]
    _check_clip(args.video, args.audio, speech=bool(specs))
    devices = args.devices
    if args.output.suffix.lower() != ".json":
        raise UserError(f"--output is a JSON file (ending in .json): {args.output}")
    _check_writable(args.output)  # before minutes of measuring, not after
    print("stage | variant | size | device | precision | batch | frames | fps | ms/frame | peak MB | +MB", file=sys.stderr)
    result = run_bench(sizes=args.sizes, devices=devices, precisions=args.precisions, batches=args.batch_sizes,
                       frames=args.frames, models=args.models, video=args.video, audio=args.audio, end_to_end=specs,
                       memory_seconds=tuple(memory), original_max_size=args.original_max_size,
                       budget=args.budget, threads=args.threads, log=lambda s: print(s, file=sys.stderr, flush=True),
                       original_batch=args.original_batch, seconds=args.seconds)
    print(format_table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(_json_safe(result), indent=1))
    print(f"wrote {args.output}")
    return 0


def _memory_lengths(values: list[str]) -> list[float]:
    """``--memory-seconds``: the short and the long length, in seconds."""
    try:
        short, long = (float(v) for v in values)
        if 1 <= short < long <= MAX_MEMORY_SECONDS:
            return [short, long]
    except ValueError:  # not numbers, or not two of them
        pass
    raise UserError(f"--memory-seconds takes two lengths in seconds, the short one first (at least 1, at most "
                    f"{MAX_MEMORY_SECONDS:g}), e.g. 30 600; or none (got {' '.join(values)})")


def _skipped(values) -> bool:
    """A list option given as ``none`` (or with no value at all): skip what it lists."""
    return not values or [str(v).lower() for v in values] == ["none"]


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
