"""LipSync: the streaming inference flow (video + speech -> the same video with the mouth re-synced).

The video is read as frames at a constant rate, each the source frame shown at its time (``media.timing``: a
variable-frame-rate file is read at its average rate, or at ``fps``), and the mel window of frame ``j`` is taken at
``j / fps``. Two passes over the video, both streaming with bounded memory:

1. **faces**: decode every frame that will be used, detect faces, then choose, bridge and smooth one face
   track over the whole video (a few numbers per frame are kept, never the frames).
2. **generate**: decode the frames again in output order (ping-pong or hold when the audio is longer), build
   the masked + reference inputs, run HyperLips-Base (and the HR decoder), paste the mouth back with a soft
   mask and colour matching, and encode H.264 + AAC to a temporary file that is renamed at the very end.

The reference face (the unmasked half of the network input, which carries identity and teeth) is the crop of
the frame whose detection was the most confident (ties: the earliest), the same for every output frame, so the
mouth of the current frame never leaks into the input. ``reference=N`` picks frame N instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from .config import AudioConfig
from .errors import MediaError, UserError, require_file
from .media.timing import check_fps, open_timeline, report_damage
from .media.video import DEFAULT_CRF, DEFAULT_PIX_FMT, DEFAULT_PRESET
from .schedule import LOOP_MODES, runs

OUTPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")
BASE_SIZE = 128
MUX_SAMPLE_RATE = 48000

ProgressCallback = Callable[[str, int, int], None]  # (stage, frames done, frames in the stage)


@dataclass
class SyncReport:
    """What a run produced and where its time went (seconds per stage)."""

    output: Path
    frames: int
    fps: float
    width: int  # the written file's size (an odd side of the input is one larger in 4:2:0)
    height: int
    audio_seconds: float
    frames_with_face: int
    timings: dict[str, float] = field(default_factory=dict)

    def stage_fps(self) -> dict[str, float]:
        return {k: (self.frames / v if v > 0 else float("inf")) for k, v in self.timings.items()}

    def summary(self) -> str:
        total = sum(self.timings.values())
        parts = ", ".join(f"{k} {v:.1f}s ({self.frames / v:.1f} fps)" for k, v in self.timings.items() if v > 0)
        return (
            f"{self.output}: {self.frames} frames {self.width}x{self.height} @ {self.fps:g} fps, "
            f"mouth generated in {self.frames_with_face}; {total:.1f}s total: {parts}"
        )


class _Timer:
    """Accumulates wall time per named stage."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[stage] += time.perf_counter() - t0

    def timed_iter(self, stage: str, it: Iterable):
        it = iter(it)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.totals[stage] += time.perf_counter() - t0
                return
            self.totals[stage] += time.perf_counter() - t0
            yield item


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e


def check_paths(video: Path, audio: Path, output: Path) -> None:
    """Fail early, before any work, on paths that cannot give a result."""
    require_file(video, "video")
    require_file(audio, "audio")
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"output must be a video file ending in {', '.join(OUTPUT_SUFFIXES)}: {output}")
    out_real = os.path.realpath(output)
    for p, what in ((video, "video"), (audio, "audio")):
        if out_real == os.path.realpath(p):
            raise UserError(f"the output path is the same file as the input {what} ({p}); choose another output name")
    parent = output.parent if str(output.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"output folder is not a folder: {parent}")
    if output.exists() and output.is_dir():
        raise UserError(f"output path is a folder: {output}")


def check_face_box(box, width: int, height: int) -> None:
    """Raise :class:`UserError` when ``--face-box`` lies outside the ``width`` x ``height`` frame."""
    if box is None:
        return
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        plain = ",".join(f"{v:g}" for v in (x1, y1, x2, y2))
        raise UserError(f"--face-box {plain} lies outside the {width}x{height} frame; give pixel coordinates inside it")


def choose_reference(reference: str | int | os.PathLike, boxes: list, best: int) -> int | None:
    """The frame whose face crop is the reference: ``best`` (given), ``first`` (first tracked face) or a number;
    None when ``reference`` names an image of the face (a path with a suffix)."""
    if isinstance(reference, int) or (isinstance(reference, str) and reference.strip().isdigit()):
        index = int(reference)
        if not (0 <= index < len(boxes)) or boxes[index] is None:
            raise UserError(f"--reference {index}: that frame has no tracked face (the video has {len(boxes)} frames "
                            "here, numbered from 0); use best, first or another frame number")
        return index
    if reference == "first":
        return next(i for i, b in enumerate(boxes) if b is not None)
    if reference == "best":
        return best
    if isinstance(reference, (str, os.PathLike)) and Path(reference).suffix:
        return None
    raise UserError(f"--reference must be best, first, a frame number or an image of the face (got {reference})")


def face_crop(frame: np.ndarray, box, size: int) -> np.ndarray:
    """The box region of ``frame`` (``face.track.pixel_region``, the region paste-back uses) as ``size``x``size``.

    Area interpolation when shrinking, bilinear when enlarging. Training crops are made with this same function.
    """
    from .face.track import pixel_region

    x1, y1, x2, y2 = pixel_region(box, frame.shape[1], frame.shape[0])
    crop = frame[y1:y2, x1:x2]
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def reference_crop(path: Path) -> np.ndarray:
    """The reference face from an image file (or a video's first frame): its largest face, cropped as ``sync``
    crops video frames. (128, 128, 3) uint8 BGR."""
    from .face.detect import FaceDetector
    from .face.track import track_faces
    from .media.video import FrameReader, probe

    require_file(path, "reference image")
    info = probe(path)
    with FrameReader(path) as reader:
        frame = next(iter(reader.iter_range(0, 1))).image
    with FaceDetector() as detector:
        dets = detector.detect(frame)
    if not dets:
        raise UserError(f"--reference {path}: no face found in that image")
    track = track_faces([dets], fps=float(info.fps or 25.0), source=str(path), frame_size=(info.width, info.height))
    return face_crop(frame, track.boxes[0], BASE_SIZE)


def network_input(crops: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,S,S,3) uint8 BGR crops + (S,S,3) reference -> (N,6,S,S) float32: [lower half zeroed, reference] / 255."""
    n, s = crops.shape[0], crops.shape[1]
    masked = crops.copy()
    masked[:, s // 2 :] = 0
    ref = np.broadcast_to(reference, crops.shape)
    x = np.concatenate([masked, ref], axis=3).astype(np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def network_mel_windows(network, mel: np.ndarray, times, fps: float, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """The mel windows a generator takes for frames shown at ``times``: HyperLips-Lite's centred windows of its
    own length (``network.mel_steps``) of the mel normalised over the whole utterance (``network.mel_norm``), or
    Base's 16-step windows (``media.audio.mel_windows``). ``mel`` is the whole track's (a normalised one may be
    passed with ``network.mel_norm`` already applied: see :func:`network_mel`)."""
    from .media.audio import centred_mel_windows, mel_windows

    steps = getattr(network, "mel_steps", None)
    if steps is not None:
        fill = mel.min(axis=1) if getattr(network, "mel_norm", None) == "utterance" and mel.shape[1] else None
        return centred_mel_windows(mel, times, int(steps), cfg, fill)
    return mel_windows(mel, times, fps, cfg)


def network_mel(network, mel: np.ndarray) -> np.ndarray:
    """The whole track's mel as ``network`` wants it: normalised per utterance for HyperLips-Lite, as is for Base."""
    from .media.audio import normalise_utterance

    return normalise_utterance(mel) if getattr(network, "mel_norm", None) == "utterance" else mel


def to_uint8_images(t) -> np.ndarray:
    """(N,3,H,W) float tensor in [0,1] -> (N,H,W,3) uint8, rounded (not truncated). ``t`` is left as it is."""
    a = t.detach().float().clamp(0, 1).mul_(255).round_().to("cpu").numpy().astype(np.uint8)  # clamp copies
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


class LipSync:
    """Lip-sync a video to a speech track.

    >>> ls = LipSync("hyperlipsbase_lrs2.pth")                                   # doctest: +SKIP
    >>> ls.sync("talk.mp4", "speech.wav", "out.mp4")                             # doctest: +SKIP

    ``checkpoint``: HyperLips-Base weights (official ``.pth`` or our safetensors); ``hr_checkpoint``: an HR
    decoder (128/256/512) that sharpens the mouth. Without a checkpoint the starter shipped in the package renders
    (a generic HyperLips-Lite, ``models.shipped``); ``untrained=True`` builds a randomly initialised ``model``
    (``base`` or ``lite``) instead (for tests: the mouth is then meaningless). ``weights`` says which, in words.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        hr_checkpoint: str | os.PathLike | None = None,
        *,
        size: int | None = None,
        device: str = "auto",
        batch_size: int = 16,
        untrained: bool = False,
        model: str = "hyperlips-base",
        network=None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        import torch

        from .models import GENERATORS, create_model, load_checkpoint

        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
        if size is not None and size not in (128, 256, 512):
            raise UserError(f"--size must be 128, 256 or 512 (got {size})")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.audio_cfg = AudioConfig()
        self.untrained = untrained
        self.weights = "untrained (random) weights" if untrained else None  # what renders the mouth, in words
        if checkpoint is None and not untrained and network is None:
            from .models import shipped

            starter = shipped.starter()
            if starter is None:
                raise UserError("no model weights given and this build ships none: pass --checkpoint PATH (an "
                                "official HyperLips .pth, a hyperlips checkpoint or a model from `hyperlips finetune`)")
            checkpoint, self.weights = starter.path, f"the {starter.label}"
        if network is not None:  # a generator module given directly (its forward takes (mel windows, faces))
            self.base, self.model_name = network, type(network).__name__
            self.weights = f"the given {self.model_name} network"
        elif checkpoint is not None:
            self.base, info = load_checkpoint(checkpoint, device=self.device)
            if info.name not in GENERATORS:
                raise UserError(f"{checkpoint} holds a {info.name} network, not a lip-sync generator (HyperLips-Base or "
                                "HyperLips-Lite) for --checkpoint")
            self.model_name = info.name
            self.weights = self.weights or f"{checkpoint} ({info.name})"
        else:
            torch.manual_seed(seed)
            from .models.registry import canonical_name

            self.model_name = canonical_name(model if str(model).startswith("hyperlips-") else f"hyperlips-{model}")
            if self.model_name not in GENERATORS:
                raise UserError(f"model {model!r} is not a lip-sync generator; choose base or lite")
            self.base = create_model(self.model_name)
        self.hr = None
        self.hr_size = None
        if hr_checkpoint is not None:
            self.hr, info = load_checkpoint(hr_checkpoint, device=self.device)
            if not info.name.startswith("hyperlips-hr-"):
                raise UserError(f"{hr_checkpoint} holds a {info.name} network, not an HR decoder (--hr-checkpoint)")
            self.hr_size = int(info.name.rsplit("-", 1)[1])
            if size is not None and size != self.hr_size:
                raise UserError(f"--size {size} does not match the HR checkpoint {hr_checkpoint}, which renders {self.hr_size} px")
        elif size not in (None, BASE_SIZE):
            if not untrained:
                raise UserError(f"--size {size} needs an HR decoder checkpoint (--hr-checkpoint)")
            self.hr = create_model(f"hyperlips-hr-{size}")
            self.hr_size = size
        # channels-last runs the convolutions about 25 % faster on CPU (oneDNN) with the same results
        self._memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        for m in (self.base, self.hr):
            if m is not None:
                m.to(self.device, memory_format=self._memory_format).eval()
                for p in m.parameters():
                    p.requires_grad_(False)

    # ------------------------------------------------------------------ public
    def sync(
        self,
        video: str | os.PathLike,
        audio: str | os.PathLike,
        output: str | os.PathLike,
        *,
        face_index: int | None = None,
        face_box: tuple[float, float, float, float] | None = None,
        loop: str = "pingpong",
        reference: str | int = "best",
        fps: float | None = None,
        on_progress: ProgressCallback | None = None,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        pix_fmt: str = DEFAULT_PIX_FMT,
    ) -> SyncReport:
        """Write ``output``: ``video`` re-synced to ``audio``, at a constant frame rate (``fps``, default the video's
        own: its nominal rate, or its average rate when the frame rate varies; see ``media.timing``).
        ``on_progress(stage, done, total)`` is called as frames pass ("faces", then "lip-sync").

        The output is H.264 ``pix_fmt`` (``yuv420p``: plays everywhere; an odd width or height gains one repeated
        column or row, see ``media.video.coded_size``; ``yuv444p``: the exact size, full colour resolution, but
        Safari, phones and TVs cannot play it) at quality ``crf`` (0-51, lower is better and larger) with
        libx264's ``preset``, plus AAC audio starting with the first frame. The report's ``width``/``height``
        are the file's."""
        from .media.audio import load_audio, melspectrogram
        from .media.video import VideoWriter, check_encoding

        video, audio, output = Path(video), Path(audio), Path(output)
        if loop not in LOOP_MODES:
            raise UserError(f"--loop must be one of {', '.join(LOOP_MODES)} (got {loop!r})")
        check_fps(fps)
        check_encoding(crf, preset, pix_fmt)
        check_paths(video, audio, output)
        timer = _Timer()

        with open_timeline(video, fps) as timeline:
            info = timeline.info
            with timer("decode"):
                wav = load_audio(audio, self.audio_cfg.sample_rate)
            seconds = len(wav) / self.audio_cfg.sample_rate
            if seconds <= 0:
                raise MediaError(f"audio is empty (zero length): {audio}")
            mel = network_mel(self.base, melspectrogram(wav, self.audio_cfg))
            rate = timeline.rate
            fps_out = float(rate)
            n_out = max(1, int(round(seconds * fps_out)))

            # pass 1: faces
            check_face_box(face_box, info.width, info.height)
            n_needed = 1 if info.is_image else min(timeline.n_frames, n_out)
            boxes, n_src, ref_index = self._track_faces(timeline, n_needed, face_index, face_box, timer, on_progress)
            report_damage(timeline, n_src)
            ref_index = choose_reference(reference, boxes, ref_index)
            if ref_index is None:  # an image of the face
                ref_crop = reference_crop(Path(reference))
            else:
                ref_frame = next(iter(timeline.iter_range(ref_index, ref_index + 1))).image
                ref_crop = face_crop(ref_frame, boxes[ref_index], BASE_SIZE)

            # pass 2: generate
            output.parent.mkdir(parents=True, exist_ok=True)
            mux_audio = load_audio(audio, MUX_SAMPLE_RATE)
            faces_done = 0
            writer = VideoWriter(output, info.width, info.height, rate, audio=mux_audio, sample_rate=MUX_SAMPLE_RATE,
                                 crf=crf, preset=preset, pix_fmt=pix_fmt)
            try:
                with self._bar(n_out, "lip-sync", on_progress) as bar:
                    frames = timer.timed_iter("decode", self._scheduled_frames(timeline, n_src, n_out, loop))
                    for batch in _batched(frames, self.batch_size):
                        out_frames, n_face = self._process_batch(batch, boxes, ref_crop, mel, fps_out, timer)
                        faces_done += n_face
                        with timer("encode"):
                            for f in out_frames:
                                writer.write(f)
                        bar.update(len(batch))
                with timer("encode"):
                    writer.close()  # flush, mux and rename the temporary file to the output name
            except BaseException:
                writer.abort()  # no half-written file is left under the output name
                raise
        return SyncReport(output, n_out, fps_out, writer.coded_width, writer.coded_height, seconds, faces_done,
                          dict(timer.totals))

    # ------------------------------------------------------------------ stages
    def _bar(self, total: int, desc: str, on_progress: ProgressCallback | None = None):
        """A progress bar; use it as a context manager, so it is closed (and its line ended) before any error.
        With ``on_progress``, every update is also reported to it."""
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="frame", disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        return bar if on_progress is None else _ReportingBar(bar, desc, on_progress)

    def _track_faces(self, timeline, n_needed, face_index, face_box, timer, on_progress=None):
        """Detect faces on the frames that will be shown; returns (boxes per frame, n_src, best frame)."""
        from .face.detect import FaceDetector
        from .face.track import track_faces

        detections = []
        last = (None, None)  # a source frame repeated on the timeline is detected once
        with self._bar(n_needed, "faces", on_progress) as bar, FaceDetector() as detector:
            for fr in timer.timed_iter("decode", timeline.iter_range(0, n_needed)):
                if fr.image is not last[0]:
                    with timer("faces"):
                        last = (fr.image, detector.detect(fr.image))
                detections.append(last[1])
                bar.update(1)
        if not detections:
            raise MediaError(f"no frames could be decoded from {timeline.info.path}")
        with timer("faces"):
            track = track_faces(detections, fps=timeline.fps, face_index=face_index, box=face_box,
                                source=str(timeline.info.path), frame_size=(timeline.width, timeline.height))
        return track.boxes, len(detections), track.best_index

    def _scheduled_frames(self, reader, n_src: int, n_out: int, loop: str) -> Iterator[tuple[int, int, np.ndarray]]:
        """(output index, timeline index, frame) in output order, decoding runs forward or in reverse chunks."""
        j = 0
        held = None
        for run in runs(n_src, n_out, loop):
            if len(run) == 1 and held is not None and held[0] == run.start:
                yield j, run.start, held[1]
                j += 1
                continue
            for fr in reader.iter_range(run.start, run.stop, reverse=run.reverse):
                yield j, fr.index, fr.image
                held = (fr.index, fr.image)
                j += 1

    def _process_batch(self, batch, boxes, ref_crop, mel, fps, timer):
        import torch

        from .face.blend import paste_face

        out = [f for _, _, f in batch]
        todo = [(k, j, s) for k, (j, s, _) in enumerate(batch) if s < len(boxes) and boxes[s] is not None]
        if not todo:
            return out, 0
        with timer("paste"):
            crops = np.stack([face_crop(batch[k][2], boxes[s], BASE_SIZE) for k, _, s in todo])
            x = network_input(crops, ref_crop)
            times = np.array([j / fps for _, j, _ in todo], dtype=np.float64)
            windows = network_mel_windows(self.base, mel, times, fps, self.audio_cfg)
        with timer("network"), torch.inference_mode():
            faces_t = torch.from_numpy(x).to(self.device).contiguous(memory_format=self._memory_format)
            audio_t = torch.from_numpy(windows).to(self.device)
            pred = self.base(audio_t, faces_t)
            if self.hr is not None:
                pred = self._hr(pred)
            pred_img = to_uint8_images(pred)
        with timer("paste"):
            for (k, _, s), face in zip(todo, pred_img):
                out[k] = paste_face(batch[k][2], face, boxes[s])
        return out, len(todo)

    def _hr(self, base_out):
        """Base output (N,3,128,128) -> HR decoder output (N,3,S,S) driven by a face-mesh sketch of the base output."""
        import torch

        from .face.landmarks import draw_sketch

        mesh = self._mesh()
        imgs = to_uint8_images(base_out)
        sketches = []
        for img in imgs:
            big = cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR)
            lm = mesh.landmarks(big)
            if lm is None:
                lm = self._last_landmarks
            else:
                lm = lm[:, :2] * (BASE_SIZE / 256.0)
                self._last_landmarks = lm
            if lm is None:
                sketches.append(np.zeros((BASE_SIZE, BASE_SIZE), np.uint8))
            else:
                sk = draw_sketch(lm, BASE_SIZE)
                sketches.append(sk if sk.ndim == 2 else sk[:, :, 0])
        sk = torch.from_numpy(np.stack(sketches)).to(base_out.device, base_out.dtype).div_(255.0)
        sk = sk[:, None].expand(-1, 3, -1, -1)
        return self.hr(torch.cat([base_out, sk], dim=1).contiguous(memory_format=self._memory_format))

    def _mesh(self):
        if getattr(self, "_face_mesh", None) is None:
            from .face.landmarks import FaceMesh

            self._face_mesh = FaceMesh(static=False)
            self._last_landmarks = None
        return self._face_mesh


class _ReportingBar:
    """A progress bar that also tells a callback: ``on_progress(stage, done, total)`` after every update."""

    def __init__(self, bar, stage: str, on_progress: ProgressCallback) -> None:
        self.bar, self.stage, self.on_progress, self.done = bar, stage, on_progress, 0
        on_progress(stage, 0, int(bar.total))

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        self.on_progress(self.stage, self.done, int(self.bar.total))

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "_ReportingBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _batched(it: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in it:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
