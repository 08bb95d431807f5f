"""LipSync: video + speech -> the same video with the mouth re-synced, in one streaming pass.

The video is read as frames at a constant rate, each the source frame shown at its time (``media.timing``: a
variable-frame-rate file is read at its average rate, or at ``fps``), and the mel window of frame ``j`` is taken at
``j / fps``. The frames are decoded once, in output order (ping-pong or hold when the audio is longer), and flow
through stages that run at the same time (``streaming``): faces (detection and the smoothed face track, computed
as frames arrive), the network (HyperLips-Base or -Lite on the masked + reference inputs, and the HR decoder),
paste-back (soft mask, colour and detail matching), and H.264 + AAC encoding to a temporary file that is renamed at
the very end. Memory is bounded and does not grow with the video's length.

The reference face (the unmasked half of the network input, which carries identity and teeth) is the crop of
the frame whose detection was the most confident (ties: the earliest) among the followed face's first
``streaming.REFERENCE_SECONDS``, the same for every output frame, so the mouth of the current frame never leaks into
the input. ``reference=N`` picks frame N instead, ``reference="first"`` the first tracked face, and a path the face
in that image.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
import time
import weakref
from typing import Callable, Iterator, ParamSpec, TypeVar

import cv2
import numpy as np

from .config import AudioConfig
from .errors import MediaError, NoFaceError, UserError, collect_warnings, warn
from .face.blend import first_row_read
from .face.steady import DEFAULT_WEIGHT as DEFAULT_BLEND, check_weight
from .generator_io import (  # noqa: F401  (re-exported: the crop and input helpers' historical home)
    BASE_SIZE,
    face_crop,
    network_input,
    network_mel,
    network_mel_windows,
    reference_crop,
    to_uint8_images,
)
from .live import LiveFrame
from .media.timing import check_fps, open_timeline
from .media.writer import DEFAULT_CRF, DEFAULT_PIX_FMT, DEFAULT_PRESET
from .mouth import WARP_GAIN, MouthStep, choose_mouth
from .runtime import DTYPES, in_precision, resolve_device, resolve_precision
from .schedule import LOOP_MODES
from .streaming import (  # noqa: F401  (re-exported)
    MUX_SAMPLE_RATE,
    OUTPUT_SUFFIXES,
    FaceGaps,
    check_face_box,
    check_face_index,
    check_paths,
    make_output_folder,
    path_argument,
    remove_made_folders,
    whole_number,
)
from .sync_report import (  # noqa: F401  (SyncReport and ProgressCallback re-exported: their historical home)
    ProgressCallback,
    StageTimer,
    SyncReport,
    complete_bar,
    progress_bar,
)


# Paste-back never reads a generated face above ``blend.first_row_read`` (for sync's mask, the geometric one: row 69
# of 128, 140 of 256), so the last network of the chain computes only the rows from there down: HyperLips-Base its
# full-resolution layers (as HyperLips-Lite always does from row 48), about 1.7x faster on a CPU than all rows, the
# rows that reach the frame unchanged. With an HR decoder (which sketches the whole base face) Base computes every
# row and the HR decoder skips its own rows above that bound.
BASE_FIRST_ROW = first_row_read(BASE_SIZE)
INPUT_BLEND = 0.25  # HyperLips-Lite's default input_blend: the neighbours' weight in the upper face it reads


def _close_all(natives: dict) -> None:
    """Close every native face tracker in ``natives`` (a LipSync's) and forget them."""
    for obj in list(natives.values()):
        if obj is not None:
            with contextlib.suppress(Exception):  # a graph already gone, or closing at interpreter exit
                obj.close()
    natives.clear()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _one_at_a_time(fn: "Callable[_P, _R]") -> "Callable[_P, _R]":
    """``LipSync.sync`` under :meth:`LipSync.one_call`, its report given the call's own warnings (its signature kept
    for type checkers)."""
    @functools.wraps(fn)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0].one_call("sync"), collect_warnings() as said:  # type: ignore[attr-defined]
            report = fn(*args, **kwargs)
        report.warnings = list(said)  # type: ignore[attr-defined]
        return report
    return call


def row_skipping_kwargs(base, hr) -> tuple[dict, dict]:
    """Keyword arguments for the generator's and the HR decoder's calls that skip the rows paste-back never reads:
    Base's when it renders alone, the HR decoder's when there is one (it sketches the whole base face)."""
    from .models.base import HyperLipsBase
    from .models.hr import HRDecoder

    base_kw = {"first_row": BASE_FIRST_ROW} if isinstance(base, HyperLipsBase) and hr is None else {}
    hr_kw = {"first_row": first_row_read(BASE_SIZE * hr.rescaling)} if isinstance(hr, HRDecoder) else {}
    return base_kw, hr_kw


MISSED_MOUTH_SHARE = 0.05  # face crops without FaceMesh's mouth (shown rendered) from which sync says so


class LipSync:
    """Lip-sync a video to a speech track.

    >>> ls = LipSync("hyperlipsbase_lrs2.pth")                                   # doctest: +SKIP
    >>> ls.sync("talk.mp4", "speech.wav", "out.mp4")                             # doctest: +SKIP

    ``checkpoint``: HyperLips-Base weights (official ``.pth`` or our safetensors); ``hr_checkpoint``: an HR
    decoder (128/256/512) that sharpens the mouth. Without a checkpoint the starter shipped in the package renders
    (a generic HyperLips-Lite, ``models.shipped``); ``untrained=True`` builds a randomly initialised ``model``
    (``base``, the default, or ``lite``; only with ``untrained``) instead (for tests: the mouth is then
    meaningless). ``weights`` says which, in words.
    ``temporal_blend``: each generated face is blended with those of the frames before and after it with this
    weight (0.25: 1/4, 1/2, 1/4; 0 turns it off; at most 1/3), which steadies the lips (``face.steady``).
    ``input_blend``: the upper face the network reads is each frame's crop blended with those of the frames before
    and after it with this weight (``streaming.blended_inputs``); steadier lips without averaging the rendered face.
    None: 0.25 for HyperLips-Lite (measured on the starter), 0 for HyperLips-Base and networks given directly.
    ``phones``: a HyperLips-Lite that reads phones (``LiteConfig.phones``) gets them read from the speech
    (``media.phones``; needs the ``pocketsphinx`` package); False, or without the package (said once), it reads the
    sound alone, as it was also trained to. ``reads_phones`` says which.
    ``mouth``: ``render`` shows the network's face; ``warp`` (HyperLips-Lite) moves the frame's own lips and jaw to
    the mouth shape the network reads from the speech (``face.mouth_warp``), the inside of a new opening drawn dark:
    the person's own lips, skin and detail at full resolution; ``hybrid`` (HyperLips-Lite) shows the network's face
    with the fine detail of that warped frame (``face.mouth_warp.with_detail``); ``auto`` (default): ``warp`` with
    the shipped starter or a copy (a generic renderer draws a face it never saw soft; ``mouth.is_generic_starter``),
    ``hybrid`` with other HyperLips-Lite weights (a person model draws its person's mouth closer to the speech than
    the warp places it), ``render`` with HyperLips-Base, random weights or a network given directly. ``mouth`` (the
    attribute) says which was chosen.

    One ``sync`` or ``stream`` at a time per LipSync (they track one clip's mouth): another started meanwhile, from
    another thread or as a second stream, is refused with the reason; use one LipSync per thread. ``close()`` (or
    ``with LipSync(...) as ls:``) releases its native face trackers at once; they are released when it is freed
    too. Messages are Python warnings (``errors.InputWarning``), shown as Python's filters say (by default once per
    place, though a library that changes the filters as it loads can let one show again); a service gets every
    warning of each call, each once, in its report (``SyncReport.warnings``), also with several calls at once in
    several threads (where ``warnings.catch_warnings()``, process-wide, would mix them up).
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
        model: str | None = None,
        network=None,
        seed: int = 0,
        progress: bool = True,
        overlap: bool = True,
        precision: str = "auto",
        temporal_blend: float = DEFAULT_BLEND,
        input_blend: float | None = None,
        phones: bool = True,
        mouth: str = "auto",
        detect_every_frame: bool = False,
    ) -> None:
        import torch

        from .face.detect import preload_mediapipe
        from .models import GENERATORS, create_model, load_checkpoint
        from .models.inference import prepare_for_inference

        preload_mediapipe()  # the face detector's library loads while the networks do
        if not whole_number(batch_size) or batch_size < 1:
            raise UserError(f"--batch-size (batch_size) must be a whole number, at least 1 (got {batch_size!r})")
        batch_size = int(batch_size)
        if size is not None and (not whole_number(size) or size not in (128, 256, 512)):
            raise UserError(f"--size (size) must be 128, 256 or 512 (got {size!r})")
        size = None if size is None else int(size)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size
        try:  # each generated face blended with its neighbours in time with this weight (face.steady)
            self.temporal_blend = check_weight(temporal_blend)
        except ValueError as e:
            raise UserError(f"--temporal-blend (temporal_blend): {e}") from None
        self.progress = progress
        self.overlap = overlap  # stages at the same time in threads (False: one after another, the same frames)
        self.detect_every_frame = detect_every_frame  # False: a frame between two agreeing ones takes their mean box
        self.audio_cfg = AudioConfig()
        self.untrained = untrained
        self.weights = "untrained (random) weights" if untrained else None  # what renders the mouth, in words
        if model is not None and not untrained and network is None:
            raise UserError("--model picks the network that --untrained builds; trained weights say which network "
                            "they are (without --checkpoint: the starter shipped in the package, a HyperLips-Lite)")
        model = model or "base"
        if checkpoint is None and not untrained and network is None:
            from .models import shipped

            starter = shipped.starter()
            if starter is None:
                raise UserError(f"no model weights given and {shipped.absent('starter')}: pass --checkpoint PATH "
                                "(an official HyperLips .pth, a hyperlips checkpoint or a model from `hyperlips "
                                "finetune`)")
            checkpoint, self.weights = starter.path, f"the {starter.label}"
        if network is not None:  # a generator module given directly (its forward takes (mel windows, faces)): a copy
            network = copy.deepcopy(network)  # is made ready for inference, the caller's (training?) left as it is
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
        if input_blend is None:
            input_blend = INPUT_BLEND if self.model_name == "hyperlips-lite" else 0.0
        try:
            self.input_blend = check_weight(input_blend)
        except ValueError as e:
            raise UserError(f"--input-blend (input_blend): {e}") from None
        self.mouth = choose_mouth(mouth, self.base, self.weights, fixed=untrained or network is not None,
                                  checkpoint=checkpoint)
        self._mouth_step = None  # mouth warp or hybrid: the clip's MouthStep (new_clip; render: given timings')
        self._mouth_shot = 0  # the shot of the last job the mouth step saw (``streaming.FrameJob.shot``)
        self._clip_fps = 25.0
        # the native face trackers it holds (MediaPipe graphs: threads and tens of MB each), closed by close() or when
        # the LipSync is freed (they outlive it otherwise: the graphs' callbacks keep them alive)
        self._natives: dict = {}
        weakref.finalize(self, _close_all, self._natives)
        self._busy = threading.Lock()  # one sync or stream at a time: they share the clip's mouth tracking
        self._busy_with = "call"  # which holds it: "sync" or "stream"
        self.reads_phones = bool(phones) and bool(getattr(self.base, "phones", False))
        # given phoneme timings are read as the network's phones without the recogniser too (sync and stream)
        self.given_phones = self.reads_phones
        self._no_recogniser = False  # reads phones, but the recogniser is not installed: said where it would run
        if self.reads_phones:
            from .media import phones as phone_reader

            if not phone_reader.available():
                self.reads_phones, self._no_recogniser = False, True
        if hr_checkpoint is None and size not in (None, BASE_SIZE) and not untrained:  # said first: the advice of
            raise UserError(f"--size {size} needs an HR decoder checkpoint (--hr-checkpoint; none is shipped: "  # the
                            "they are trained for HyperLips-Base, docs/training.md)")  # next one led here
        if self.mouth == "warp" and (hr_checkpoint is not None or size not in (None, BASE_SIZE)):
            why = f"the default with {self.weights}" if mouth == "auto" else "--mouth warp"
            raise UserError(f"an HR decoder (--hr-checkpoint, --size) sharpens a rendered mouth, and the mouth is "
                            f"warped here ({why}): it would go unused. Give --mouth render or hybrid to use it, or "
                            "leave it out")
        self.hr = None
        self.hr_size = None
        self.hr_weights = None  # the HR decoder, in words (None without one)
        if hr_checkpoint is not None:
            self.hr, info = load_checkpoint(hr_checkpoint, device=self.device)
            if not info.name.startswith("hyperlips-hr-"):
                raise UserError(f"{hr_checkpoint} holds a {info.name} network, not an HR decoder (--hr-checkpoint)")
            self.hr_size = int(info.name.rsplit("-", 1)[1])
            self.hr_weights = f"{hr_checkpoint} ({info.name})"
            if size is not None and size != self.hr_size:
                raise UserError(f"--size {size} does not match the HR checkpoint {hr_checkpoint}, which renders {self.hr_size} px")
        elif size not in (None, BASE_SIZE):
            if not untrained:
                raise UserError(f"--size {size} needs an HR decoder checkpoint (--hr-checkpoint)")
            self.hr = create_model(f"hyperlips-hr-{size}")
            self.hr_size = size
            self.hr_weights = f"with untrained (random) weights ({size} px)"  # (after "and the HR decoder")
        dtype = DTYPES[self.precision]
        torch_dtype = torch.float32 if dtype is None else getattr(torch, dtype)
        # channels-last runs the convolutions about 25 % faster on CPU (oneDNN) with the same results
        self._memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        for m in (self.base, self.hr):
            if m is not None:
                m.eval()
                if m is not network:  # our own copy: batch norms folded into the convolutions, activations in
                    prepare_for_inference(m)  # place (the same outputs, less memory traffic)
                m.to(self.device, dtype=torch_dtype, memory_format=self._memory_format)
                for p in m.parameters():
                    p.requires_grad_(False)
        # keyword arguments of each generator call: the last network skips the rows paste-back never reads (Base
        # alone; with an HR decoder, which sketches the whole base face, the HR decoder)
        self._base_kwargs, self._hr_kwargs = row_skipping_kwargs(self.base, self.hr)
        # the networks take float32 inputs and compute in their precision: a top-level call sees what sync gives
        self._base_call = self.base if dtype is None else in_precision(self.base, dtype)
        self._hr_call = self.hr if self.hr is None or dtype is None else in_precision(self.hr, dtype)

    # ------------------------------------------------------------------ public
    @_one_at_a_time
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
        phonemes=None,
    ) -> SyncReport:
        """Write ``output``: ``video`` re-synced to ``audio``, at a constant frame rate (``fps``, default the video's
        own: its nominal rate, or its average rate when the frame rate varies; see ``media.timing``).
        ``on_progress(stage, done, total)`` is called as frames pass ("faces" while the reference face is searched,
        then "lip-sync").

        The output is H.264 ``pix_fmt`` (``yuv420p``: plays everywhere; an odd width or height gains one repeated
        column or row, see ``media.writer.coded_size``; ``yuv444p``: the exact size, full colour resolution, but
        Safari, phones and TVs cannot play it) at quality ``crf`` (0-51, lower is better and larger) with
        libx264's ``preset``, plus AAC audio starting with the first frame. The report's ``width``/``height``
        are the file's.

        ``phonemes``: what the speech says and when, as a speech synthesiser or a forced aligner gives it (a file
        ``media.phone_marks.read_marks`` reads, or a list of ``PhoneMark``): a HyperLips-Lite mouth closes on
        every /p b m/ (warped, hybrid or rendered), and a network that reads phones reads these instead of the
        recogniser's."""
        from .face.detect import FaceDetectors
        from .media.audio import load_audio, melspectrogram, speech_problems
        from .media.writer import VideoWriter, check_encoding, too_large_to_play
        from .streaming import (find_reference, frame_chain, reference_request, reference_search_length,
                                track_factory)

        t_start = time.perf_counter()
        video, audio, output = (path_argument(p, what) for p, what in (
            (video, "video"), (audio, "audio"), (output, "output")))
        check_face_index(face_index)
        if loop not in LOOP_MODES:
            raise UserError(f"--loop (loop) must be one of {', '.join(LOOP_MODES)} (got {loop!r})")
        check_fps(fps)
        check_encoding(crf, preset, pix_fmt)
        request = reference_request(reference)
        check_paths(video, audio, output, [(request, "reference (--reference)")])
        timer = StageTimer()

        with open_timeline(video, fps, keep_source=True, warn_slow=True) as timeline, FaceDetectors() as detector:
            info = timeline.info
            with timer("decode"):
                wav = load_audio(audio, self.audio_cfg.sample_rate)
            seconds = len(wav) / self.audio_cfg.sample_rate
            if seconds <= 0:
                raise MediaError(f"audio is empty (zero length): {audio}")
            for problem in speech_problems(wav, self.audio_cfg.sample_rate, timeline.fps):
                warn(f"{audio}: {problem}")
            marks = self.phoneme_marks(phonemes, seconds)
            mel = network_mel(self.base, melspectrogram(wav, self.audio_cfg), self.speech_phones(wav, timer, marks))
            rate = timeline.rate
            fps_out = float(rate)
            self.new_clip(fps_out)
            n_out = max(1, int(round(seconds * fps_out)))
            face_box = check_face_box(face_box, info.width, info.height)
            n_src = 1 if info.is_image else min(timeline.n_frames, n_out)

            new_track = track_factory(timeline, face_index, face_box)

            def detect(image):
                with timer("faces"):
                    return detector.detect(image)

            # the reference face: the first frames, decoded and searched once (their detections are kept)
            with self._bar(reference_search_length(request, n_src, timeline.fps), "faces", on_progress) as bar:
                try:
                    found = find_reference(timeline, n_src, request, new_track, detect, bar, timer, self.overlap,
                                           detector.workers, self.detect_every_frame)
                except NoFaceError as e:
                    if n_src < timeline.n_frames and str(e).startswith("no face found"):  # the speech reaches only
                        raise NoFaceError(f"{e} (the speech, {seconds:.2f} s, covers only the first {n_src} of its "
                                          f"{timeline.n_frames} frames, the only ones searched: if the face shows "
                                          "later, start the video there or give longer speech)") from None
                    raise
                complete_bar(bar)  # the search ends when the face is sure, often before the estimate
            ref_crop = found.crop

            mux_audio = load_audio(audio, MUX_SAMPLE_RATE, keep_stereo=True, quiet=True)  # its own channels (said: above)

            def render(jobs):
                self._render(jobs, ref_crop, mel, fps_out, marks)

            network, gate = self._network_stage(render, marks)
            chain = frame_chain(timeline, n_src=n_src, n_out=n_out, loop=loop, found=found, new_track=new_track,
                                detect=detector.detect, network=network,
                                batch_size=self.batch_size, timings=timer, overlap=self.overlap,
                                steady=self.temporal_blend, input_blend=self.input_blend, workers=detector.workers,
                                every_frame=self.detect_every_frame)
            faces_done, writer, first_frame = 0, None, None
            made = make_output_folder(output)  # the folders it makes are removed below where the run does not end
            try:  # the writer is made inside: an interruption at any point leaves no temporary file
                writer = VideoWriter(output, info.width, info.height, rate, audio=mux_audio,
                                     sample_rate=MUX_SAMPLE_RATE, crf=crf, preset=preset, pix_fmt=pix_fmt,
                                     sample_aspect=info.sample_aspect)
                large = too_large_to_play(writer.coded_width, writer.coded_height, float(rate))
                if large:  # (a phone's 12 MP photo: "plays anywhere" is not true of it)
                    warn(large)
                gaps = FaceGaps()
                with self._bar(n_out, "lip-sync", on_progress) as bar:
                    for k, job in enumerate(chain):
                        faces_done += job.box is not None
                        gaps.add(k, job)
                        if first_frame is None:
                            first_frame = time.perf_counter() - t_start
                        with timer("encode"):
                            writer.write(job.image, job.source, job.changed)
                        gate.done()
                        bar.update(1)
                with timer("encode"):
                    writer.close()  # flush, mux and rename the temporary file to the output name
            except BaseException:
                gate.open()  # a render thread waiting for room stops with the others
                chain.close()
                if writer is not None:
                    writer.abort()  # no half-written file is left under the output name
                remove_made_folders(made)  # nor the folders made for it
                raise
        gap = gaps.warning(str(video), n_out, fps_out)
        if gap:
            warn(gap)
        step = self._mouth_step
        if step is not None and step.missed >= max(1, MISSED_MOUTH_SHARE * step.looked):  # the frame's own mouth
            warn(f"{video}: FaceMesh found no mouth in {step.missed} of the {step.looked} face crops (a face turned "  # moved
                 f"away, covered, or mostly outside the frame): there the network's rendered face is shown instead of "  # only
                 f"the frame's own mouth moved (--mouth {self.mouth}), softer")  # where FaceMesh found it: said
        return SyncReport(output, n_out, fps_out, writer.coded_width, writer.coded_height, seconds, faces_done,
                          dict(timer.totals), time.perf_counter() - t_start, first_frame)

    def stream(
        self,
        video: str | os.PathLike,
        speech,
        *,
        sample_rate: int = 16000,
        loop: str = "pingpong",
        face_index: int | None = None,
        face_box: tuple[float, float, float, float] | None = None,
        reference: str | int = "best",
        fps: float | None = None,
        speech_stats=None,
        batch_size: int | None = None,
        phonemes=None,
    ) -> "Iterator[LiveFrame]":
        """Lip-synced frames of ``video`` (an idle clip, played in a loop) driven by ``speech`` while it arrives.

        ``speech``: an iterable of PCM chunks (1-D, float in [-1, 1] or int16, mono at ``sample_rate``, 16000 by
        default: other rates are resampled as they come, with the filter a file is read with; e.g. 20-100 ms each,
        as a microphone or a speech synthesiser gives them); it is read in a thread of its own, so it may block
        until the next chunk exists (a stream closed meanwhile leaves that thread waiting in the iterable until it
        gives a chunk or ends: end it, e.g. close your queue, when you close the stream).
        One sync or stream at a time per LipSync (another one meanwhile is refused: use one LipSync per thread);
        ``close()`` a stream you stop reading, or let it end. Yields ``live.LiveFrame`` (index, time, image) in order, each
        as soon as the speech its mel window needs has arrived (a fixed look-ahead: about 0.19 s for Base, 0.37 s
        for HyperLips-Lite), until the speech ends (``round(seconds * fps)`` frames, as ``sync``). Frames are
        rendered in batches of the frames that are ready together, at most ``batch_size`` (default: the
        LipSync's). ``speech_stats``: ``live.SpeechStats`` for HyperLips-Lite's per-utterance mel normalisation
        (:meth:`speech_stats` of a recording of the voice; default: the statistics of the speech so far). ``phonemes``:
        the speech's phoneme timings, known in advance (a speech synthesiser's): a HyperLips-Lite mouth closes on
        every /p b m/ and a network that reads phones reads these, as in ``sync`` (without them it reads none in a
        stream; a stream does not know when the speech will end, so a last phoneme without an end lasts 0.1 s: give
        it one). The other options are ``sync``'s. See ``live``."""
        from .live import run_stream

        return run_stream(self, video, speech, sample_rate=sample_rate, loop=loop, face_index=face_index,
                          face_box=face_box, reference=reference, fps=fps, stats=speech_stats, batch_size=batch_size,
                          phonemes=phonemes)

    # ------------------------------------------------------------------ stages
    def speech_phones(self, wav: np.ndarray, timer=None, marks=None):
        """The phones of speech ``wav`` where the network reads them, else None: ``marks``' (given phoneme timings,
        ``media.phone_marks``) where given, else the recogniser's (``media.phones.read_phones``)."""
        if marks is not None and self.given_phones:
            from .media.phone_marks import phone_ids

            return phone_ids(marks, len(wav) / self.audio_cfg.sample_rate)
        if self._no_recogniser:  # (not when phoneme timings are given, nor in a stream: no recogniser runs there)
            from .media.phones import INSTALL_HINT

            warn(f"{self.weights} reads phones, but the pocketsphinx package is not installed: the mouth is read "
                 f"from the sound alone, following new voices less closely ({INSTALL_HINT})")
        if not self.reads_phones:
            return None
        from .media.phones import read_phones

        with timer("phones") if timer is not None else contextlib.nullcontext():
            return read_phones(wav, self.audio_cfg.sample_rate)

    def speech_stats(self, voice, sample_rate: int | None = None):
        """A voice's statistics for :meth:`stream`'s ``speech_stats``, measured as this LipSync's network reads its
        mel: ``voice`` a recording of the voice speaking (a file of any format and rate; at least half a second), or
        its samples as a stream takes them (1-D, float in [-1, 1] or int16, at ``sample_rate`` in Hz, 16000 by default,
        checked as :meth:`stream` checks its own)."""
        from .live import SpeechStats
        from .media.audio import load_audio, melspectrogram

        rate = self.audio_cfg.sample_rate
        if isinstance(voice, (str, os.PathLike, bytes)):
            wav = load_audio(path_argument(voice, "voice sample"), rate)
        else:
            from .live import checked_rate, pcm_samples

            # the rate first, checked as a stream checks it (48 for 48 kHz was resampled x333, then called silent)
            given = rate if sample_rate is None else checked_rate(sample_rate, "the samples'")
            wav = pcm_samples(voice)  # as a stream reads its chunks (int16 scaled, NaN silenced: said)
            if given != rate:
                from .media.resample import resample_poly

                wav = resample_poly(wav, rate, int(given))
        return SpeechStats.of(melspectrogram(wav, self.audio_cfg), int(getattr(self.base, "mel_smooth", 0)))

    def phoneme_marks(self, phonemes, seconds: float | None):
        """``sync``'s ``phonemes`` (None, a file, ``PhoneMark`` marks, ``(start, [end,] phone)`` entries, or a JSON
        file's content: ``{"start": s, "end": s, "phone": p}`` entries or ``{"alphabet": ..., "phonemes": [...]}``) as
        ``PhoneMark`` marks for ``seconds`` of speech (None: a stream's, not known yet), or None; says what they
        cannot do with this LipSync."""
        if phonemes is None:
            return None
        from .media.phone_marks import PhoneMark, marks_from_json, read_marks, refuse_other_units, to_marks

        if isinstance(phonemes, bytes):
            phonemes = path_argument(phonemes, "phonemes")
        if not isinstance(phonemes, (str, os.PathLike, dict)):
            phonemes = list(phonemes)  # (a generator is read once, below)
        if isinstance(phonemes, (str, os.PathLike)):
            marks = read_marks(phonemes, seconds)
        elif isinstance(phonemes, dict) or any(isinstance(m, dict) for m in phonemes):  # a JSON file's, read
            marks = marks_from_json(phonemes, seconds)
        elif all(isinstance(m, PhoneMark) for m in phonemes):
            marks = list(phonemes)
            refuse_other_units([m.start for m in marks])  # (a caller's own marks: milliseconds, samples)
        else:
            marks = to_marks(list(phonemes), seconds)
        if not marks:
            raise UserError("the phoneme timings list no phonemes")
        if seconds is not None and marks[-1].start > seconds + 0.5:
            warn(f"the phoneme timings run to {marks[-1].start:.2f} s, past the end of the speech ({seconds:.2f} s): "
                 f"are they this speech's?")
        if not hasattr(self.base, "predict_shape"):
            warn(f"phoneme timings are not used by {self.weights}: HyperLips-Base reads the sound alone (the lips "
                 f"close on them with HyperLips-Lite)")
        return marks

    def _network_stage(self, render, marks=None):
        """``sync``'s network stage (``streaming.network_stage``) and the gate its consumer frees a place in per frame
        written (``stages.Gate``): for HyperLips-Base with the stages overlapped on a CPU, two batches at a time on
        half the torch threads each (``runtime.render_workers``) where rendering a batch keeps no state (the mouth
        rendered, no HR decoder), at most ``streaming.render_gate`` frames ahead of the encoder; else one batch at a
        time, no gate. (Lite's network is a small share of ``sync``'s work: two at a time made it 4% slower.)"""
        import torch

        from .runtime import render_workers
        from .stages import Gate
        from .streaming import network_stage, render_gate

        pure = self.mouth == "render" and self.hr is None and (marks is None or not hasattr(self.base, "predict_shape"))
        base = self.model_name == "hyperlips-base"
        workers, each = render_workers(self.device) if pure and base and self.overlap else (1, 0)
        if workers <= 1:
            return network_stage(self.batch_size, render), Gate()
        default = torch.get_num_threads()
        gate = render_gate(self.batch_size, workers)
        # torch's thread count is kept per thread (OpenMP): each worker sets its own; the process's default, which
        # that also sets, is put back once the workers are done
        return network_stage(self.batch_size, render, workers, start_worker=lambda: torch.set_num_threads(each),
                             end=lambda: torch.set_num_threads(default), gate=gate), gate

    def _bar(self, total: int, desc: str, on_progress: ProgressCallback | None = None):
        """A progress bar (``sync_report.progress_bar``), shown when this LipSync shows progress."""
        return progress_bar(total, desc, self.progress, on_progress)

    def _render(self, jobs, ref_crop: np.ndarray, mel: np.ndarray, fps: float, marks=None) -> None:
        """Set each job's generated face, its mel window cut from the whole speech's ``mel`` (the lips closed where
        phoneme timings ``marks`` say so)."""
        from .media.phone_marks import closure

        times = np.array([job.j / fps for job in jobs], dtype=np.float64)
        closed = None if marks is None else closure(marks, times)
        self.render_jobs(jobs, ref_crop, network_mel_windows(self.base, mel, times, fps, self.audio_cfg), closed)

    def new_clip(self, fps: float = 25.0) -> None:
        """Forget what was learned of the last clip (``mouth="warp"`` or ``hybrid``: its average mouth, the head's
        steadied pose and the face its FaceMesh tracked); a new one begins, at ``fps`` frames per second."""
        if self._mouth_step is not None:
            self._mouth_step.close()
        # the hybrid's detail is warped to the mouth its network draws: the encoder's shape times the network's gain
        gain = float(self.base.config.shape_gain) if self.mouth == "hybrid" else WARP_GAIN
        self._mouth_step = None if self.mouth == "render" else MouthStep(self.mouth, fps, gain)
        self._natives["mouth"] = self._mouth_step
        self._clip_fps = float(fps)
        self._mouth_shot = 0

    def close(self) -> None:
        """Release the native face trackers this LipSync holds (MediaPipe graphs: two threads and about 30 MB each);
        also done when it is freed, or at the end of a ``with LipSync(...) as ls:`` block. It stays usable: the next
        call makes them again."""
        _close_all(self._natives)
        self._mouth_step = None
        self._face_mesh = None

    def __enter__(self) -> "LipSync":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def one_call(self, what: str):
        """Held by each ``sync`` and ``stream`` (a stream: until it ends or is closed): a second one started on this
        LipSync meanwhile, from another thread or as a second stream, is refused with the reason. They would share
        (and close under each other) the clip's mouth tracking."""
        if not self._busy.acquire(blocking=False):
            raise UserError(f"this LipSync is busy with a {self._busy_with}: it runs one sync or "
                            "stream at a time (they track one clip's mouth); use one LipSync per thread, or finish "
                            "(or close()) the stream first")
        self._busy_with = what
        try:
            yield
        finally:
            self._busy.release()

    def render_jobs(self, jobs, ref_crop: np.ndarray, windows: np.ndarray, closed: np.ndarray | None = None) -> None:
        """Crop the jobs' faces, build the network inputs and set each job's generated face (``windows``: the
        jobs' mel windows, in order; ``closed``: how far the lips are brought together, per job, where phoneme
        timings were given)."""
        crops = [job.crop if job.crop is not None else face_crop(job.image, job.box, BASE_SIZE) for job in jobs]
        own_refs = [getattr(job, "reference", None) for job in jobs]  # a later shot's own reference face
        if any(r is not None for r in own_refs):
            ref_crop = np.stack([ref_crop if r is None else r for r in own_refs])
        x = network_input(np.stack(crops), ref_crop)
        if self.mouth != "render":
            if self._mouth_step is None:  # render_jobs called without new_clip (a caller of its own)
                self.new_clip()
            step = self._mouth_step
            if closed is None:
                closed = np.zeros(len(jobs), np.float32)
            if self.mouth == "hybrid" and np.any(closed > 0):  # the network draws the lips closed too
                looks, faces, shapes = self._generate_closed(step, jobs, windows, x, closed)
                for job, face, shape, close, look in zip(jobs, faces, shapes, closed, looks):
                    job.face = step.finish(look, face, shape, float(close))
                    job.own_face = False
                return
            faces, shapes = self.generate(windows, x, shapes=True)
            for job, face, shape, close in zip(jobs, faces, shapes, closed):
                self._in_shot(step, job)
                job.face = step(job.image, job.box, face, shape, float(close))
                job.own_face = self.mouth == "warp" and job.face is not face  # not where FaceMesh found no face
            return
        if closed is not None and hasattr(self.base, "predict_shape"):  # given timings: a rendered Lite mouth
            # closes on them too, its shape closed on the clip's average mouth, which FaceMesh learns from every frame
            if self._mouth_step is None:
                self._mouth_step = MouthStep("hybrid", self._clip_fps)  # it only looks
            _, faces, _ = self._generate_closed(self._mouth_step, jobs, windows, x, closed)
            for job, face in zip(jobs, faces):
                job.face = face
            return
        for job, face in zip(jobs, self.generate(windows, x)):
            job.face = face

    def _in_shot(self, step: MouthStep, job) -> MouthStep:
        """``step``, made to start afresh where ``job`` begins another shot than the last job's (the average mouth
        and the pose it learned are another face's, or another view's)."""
        shot = getattr(job, "shot", 0)
        if shot != self._mouth_shot:
            step.new_shot()
            self._mouth_shot = shot
        return step

    def _generate_closed(self, step: MouthStep, jobs, windows: np.ndarray, x: np.ndarray, closed: np.ndarray):
        """The jobs' faces with the shapes a Lite network draws closed ``closed`` of the way (given phoneme
        timings): ``step`` looks at the frames first, so the clip's average mouth the shapes close on counts them.
        -> (the looks, faces, shapes)."""
        looks = [self._in_shot(step, job).look(job.image, job.box, observe=True) for job in jobs]
        gain = float(self.base.config.shape_gain)
        faces, shapes = self.generate(windows, x, shapes=True, edit=lambda read: step.closed_shapes(read, closed, gain))
        return looks, faces, shapes

    def generate(self, windows: np.ndarray, x: np.ndarray, shapes: bool = False, edit=None):
        """Mel windows (N, 1, 80, steps) and network inputs (N, 6, 128, 128) float32 -> faces (N, S, S, 3) uint8 BGR
        (S: 128, or the HR decoder's size); with ``shapes`` (HyperLips-Lite), also the mouth shapes the audio
        encoder read, before the network's ``shape_gain`` (N, n_shape) float32, changed by ``edit`` (numpy (N,
        n_shape) -> the same) before the network renders them where given."""
        import torch

        with torch.inference_mode():
            faces_t = torch.from_numpy(x).to(self.device).contiguous(memory_format=self._memory_format)
            audio_t = torch.from_numpy(windows).to(self.device)
            if shapes:
                dtype = next(self.base.parameters()).dtype
                read = self.base.audio_encoder(audio_t.to(dtype))
                if edit is not None:
                    read = torch.from_numpy(np.asarray(edit(read.float().cpu().numpy()), np.float32)).to(read)
                pred = self._base_call(audio_t, faces_t, shape=self.base.gained(read), **self._base_kwargs)
            else:
                pred = self._base_call(audio_t, faces_t, **self._base_kwargs)
            if self.hr is not None:
                pred = self._hr(pred)
            faces = to_uint8_images(pred)
            return (faces, read.float().cpu().numpy()) if shapes else faces

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
        return self._hr_call(torch.cat([base_out, sk], dim=1).contiguous(memory_format=self._memory_format),
                             **self._hr_kwargs)

    def _mesh(self):
        if getattr(self, "_face_mesh", None) is None:
            from .face.landmarks import FaceMesh

            self._face_mesh = self._natives["mesh"] = FaceMesh(static=False)
            self._last_landmarks = None
        return self._face_mesh
