"""``LipSync.stream``: lip-synced frames of an idle video, made while the speech is still arriving.

The idle video plays in a loop (ping-pong or hold, as ``sync`` plays a video shorter than its audio) through the
same stages as ``sync`` (``streaming``): decode, faces (the same face track and reference face), network, paste.
The network stage renders frame ``j`` as soon as the speech its mel window covers has arrived: the window reaches
past the frame's time (Base: 0.16 s, HyperLips-Lite: 0.35 s, plus 25 ms of the spectrogram's own window), so that
much look-ahead is the least latency any frame can have. Frames come out in order; the stream ends with the
speech, after ``round(seconds * fps)`` frames, as many as ``sync`` writes.

The mel spectrogram is computed as samples arrive (``media.mel_stream``: the offline frames exactly). HyperLips-Lite
normalises the mel per utterance (each bin's mean and spread over the whole speech), which a stream cannot know
in advance: by default each frame uses the statistics of the speech heard up to the end of its window (running
statistics, noisier in the first second); :class:`SpeechStats` of a recording of the same voice (or of the whole
speech, known in advance) gives exactly the offline normalisation. Base's mel needs no statistics. With the same
statistics and batch size, the streamed frames are the frames ``sync`` hands to its encoder, byte for byte.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from .config import AudioConfig
from .errors import UserError, require_file, warn
from .media.audio import (
    LOUD_PEAK,
    centred_window_starts,
    mel_window_starts,
    smooth_across_frequency,
    windows_from_starts,
)
from .media.mel_stream import MelStream
from .media.phones import FRAME_RATE, N_PHONES, SILENCE
from .media.resample import StreamResampler

FOREVER = 10**15  # output frames scheduled for an idle loop whose end is the speech's
MIN_STATS_FRAMES = 40  # a voice sample's statistics: at least 0.5 s of mel frames (80 a second) ...
MIN_STATS_SPREAD = 0.05  # ... whose bins vary (speech: a median spread near 0.9; digital silence: 0)
MIN_RATE, MAX_RATE = 4000, 384000  # the chunks' sample rates taken (resampled to the mel's as they come)
MAX_CHANNELS = 8  # a 2-D chunk with a side this short or shorter holds channels (7.1 sound has 8)


@dataclass
class SpeechStats:
    """Per mel bin: mean, spread and the normalised minimum of a speech track (``media.audio.normalise_utterance``'s
    statistics), (n_mels,) each."""

    mean: np.ndarray
    std: np.ndarray
    floor: np.ndarray
    smooth: Optional[int] = None  # the mel's smoothing they were measured with (``of``'s); None: not known

    @classmethod
    def of(cls, mel: np.ndarray, smooth: int = 0) -> "SpeechStats":
        """The statistics of a whole (n_mels, T) mel spectrogram, computed as the offline normalisation computes them
        (``smooth``: the network's ``mel_smooth``, 0 for none; smoothed across frequency first, as it reads it)."""
        mel = smooth_across_frequency(np.asarray(mel, dtype=np.float32), smooth)
        if mel.ndim != 2 or mel.shape[1] < MIN_STATS_FRAMES:
            raise UserError(f"a voice sample must hold at least {MIN_STATS_FRAMES / 80:g} s of speech (its mel has "
                            f"{mel.shape[-1] if mel.ndim == 2 else 0} frames)")
        mean, std = mel.mean(axis=1, keepdims=True), mel.std(axis=1, keepdims=True)
        if float(np.median(std)) < MIN_STATS_SPREAD:  # the speech would be divided by about nothing
            raise UserError("the voice sample is silent (or nearly): its sound does not vary, so it cannot say how "
                            "this voice's speech varies; give a recording of the voice speaking")
        floor = ((mel.min(axis=1, keepdims=True) - mean) / (std + 1e-3)).astype(np.float32)
        return cls(mean[:, 0], std[:, 0], floor[:, 0], int(smooth))


def checked_stats(stats: SpeechStats, n_mels: int) -> SpeechStats:
    """``stats`` (built by hand, e.g. read back from JSON) as float32 arrays of ``n_mels`` finite numbers each, whose
    spread varies as a voice's (``SpeechStats.of``'s rule); a :class:`UserError` saying what is wrong otherwise (lists
    and a wrong bin count failed mid-stream as a bare TypeError or ValueError; NaN or zero spread went unsaid)."""
    got = {}
    for name in ("mean", "std", "floor"):
        try:
            a = np.asarray(getattr(stats, name), dtype=np.float32)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != (n_mels,):
            what = f"an array of shape {a.shape}" if a is not None else type(getattr(stats, name)).__name__
            raise UserError(f"speech_stats.{name} must hold {n_mels} numbers, one per mel bin (got {what}): make "
                            "them with ls.speech_stats(VOICE_SAMPLE), or SpeechStats.of(mel, ls.base.mel_smooth)")
        if not np.isfinite(a).all():
            raise UserError(f"speech_stats.{name} holds values that are not numbers (NaN or infinite) in "
                            f"{int((~np.isfinite(a)).sum())} of its {n_mels} bins: make them again with "
                            "ls.speech_stats(VOICE_SAMPLE)")
        got[name] = a
    if (got["std"] < 0).any() or float(np.median(got["std"])) < MIN_STATS_SPREAD:  # dividing by about nothing
        raise UserError(f"speech_stats.std must be a spread (at least 0) that varies as a voice's (a median of at "
                        f"least {MIN_STATS_SPREAD:g}; got a median of {float(np.median(got['std'])):g}, least "
                        f"{float(got['std'].min()):g}): make them with ls.speech_stats(VOICE_SAMPLE)")
    return SpeechStats(got["mean"], got["std"], got["floor"], stats.smooth)


@dataclass
class LiveFrame:
    """One streamed frame: ``index`` (shown at ``time`` = index / fps seconds of the speech) and ``image`` (H, W, 3)
    uint8 BGR; ``fps``: the stream's frame rate (the idle video's, or the one asked for); ``sample_aspect``: the
    shape of the idle video's pixels as shown (1 for square ones; a writer tags its output with it)."""

    index: int
    time: float
    image: np.ndarray
    fps: float
    sample_aspect: Fraction = Fraction(1)


def several_channels(shape, name: str) -> str:
    """What to pass instead of a 2-D array of ``shape`` holding several channels, for its layout: ``name[:, 0]`` was
    advised whatever the layout, which takes 2 samples of a (2, N) chunk (channels by sample)."""
    if shape[1] <= MAX_CHANNELS < shape[0]:
        return (f"several channels? pass one, e.g. {name}[:, 0] for these samples by channel, or their mean, "
                f"{name}.mean(axis=1), where they do not cancel")
    if shape[0] <= MAX_CHANNELS < shape[1]:
        return (f"several channels? pass one, e.g. {name}[0] for these channels by sample, or their mean, "
                f"{name}.mean(axis=0), where they do not cancel")
    return "several channels? pass the samples of one as a 1-D array"


def pcm_samples(chunk, say_once=None) -> np.ndarray:
    """Samples as a stream takes them (1-D PCM, float in [-1, 1] or int16) as float32 in [-1, 1]: those that are not
    numbers become silence and float samples beyond full scale are clipped, each said once through ``say_once(key,
    message)`` (default: a warning); other sample types, bytes, several channels and int16 values given as floats
    are refused with what to pass instead."""
    if say_once is None:
        def say_once(key, message):
            warn(message)
    raw = isinstance(chunk, (bytes, bytearray, memoryview))
    if not raw and not isinstance(chunk, (np.ndarray, list, tuple)):  # a sound library's buffer of PCM bytes
        try:
            raw = memoryview(chunk).format.lstrip("@=<>!") in ("B", "b", "c")
        except TypeError:
            pass
    if raw:
        raise UserError("speech chunks must be arrays of samples, not bytes: for 16-bit PCM bytes (a websocket's "
                        "payload, a sound device's raw buffer) pass np.frombuffer(chunk, np.int16)")
    if chunk is None or isinstance(chunk, str):
        raise UserError(f"speech chunks must be arrays of samples, got {'None' if chunk is None else 'a string'}")
    a = np.asarray(chunk)
    if a.dtype.kind not in "biuf" and a.dtype.kind != "c":
        raise UserError(f"speech chunks must be arrays of numbers (float samples in [-1, 1] or int16), got "
                        f"{type(chunk).__name__} holding {a.dtype}")
    if a.ndim == 0:
        raise UserError("speech chunks must be arrays of samples, got a single number (an iterable of samples "
                        "was given where an iterable of chunks is wanted: pass [speech] for one chunk)")
    if a.ndim == 2 and a.shape[0] == 1 and 1 < a.shape[1] <= MAX_CHANNELS:  # (1, 2): one stereo frame, or 2 samples?
        raise UserError(f"speech chunks must be 1-D mono PCM, got an array of shape {a.shape}: one frame of "
                        f"{a.shape[1]} channels, or {a.shape[1]} samples of one? pass the samples of one channel as a "
                        "1-D array")
    if a.ndim != 1 and not (a.ndim == 2 and 1 in a.shape):
        raise UserError(f"speech chunks must be 1-D mono PCM, got an array of shape {a.shape}"
                        + (f" ({several_channels(a.shape, 'chunk')})" if a.ndim == 2 else ""))
    a = a.reshape(-1)
    if a.dtype.kind == "i" and a.dtype.itemsize == 2:  # int16 in either byte order (RTP's L16 is big-endian: '>i2')
        return a.astype(np.float32) / 32768.0
    if a.dtype.kind == "c":
        raise UserError(f"speech chunks must be real samples, got complex ones ({a.dtype})")
    if a.dtype.kind != "f":
        raise UserError(f"speech chunks must be float samples in [-1, 1] or int16, got {a.dtype} (convert "
                        "other integer PCM to float first)")
    a = a.astype(np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        a[bad] = 0.0
        say_once("nan", "speech samples that are not numbers (NaN or infinite) are replaced by silence")
    peak = float(np.abs(a).max()) if len(a) else 0.0
    if peak > LOUD_PEAK:
        raise UserError(f"float speech samples must be in [-1, 1]; a chunk reaches {peak:.6g} (int16 values "
                        "given as floats? divide them by 32768, or give them as int16)")
    if peak > 1.0:
        np.clip(a, -1.0, 1.0, out=a)
        say_once("clip", "speech samples beyond full scale (1.0) are clipped")
    return a


def checked_rate(sample_rate, what: str = "the chunks'") -> int:
    """``sample_rate`` (of ``what``: samples as a stream takes them) as an int from MIN_RATE to MAX_RATE; a float
    holding a whole value is taken (16000.0); anything else is a :class:`UserError` (48 for 48 kHz was resampled
    x333 and then called silent, 1 asked for gigabytes)."""
    from .streaming import whole_number

    if isinstance(sample_rate, (float, np.floating)) and math.isfinite(sample_rate) and float(sample_rate).is_integer():
        sample_rate = int(sample_rate)
    if not whole_number(sample_rate) or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise UserError(f"sample_rate must be {what} sample rate in Hz, a whole number from {MIN_RATE} to "
                        f"{MAX_RATE} (got {sample_rate!r})")
    return int(sample_rate)


class MelFeed:
    """Mel windows for frames as the speech arrives (``network``'s kind: Base's windows or Lite's centred, normalised
    ones). :meth:`wait` blocks until frame ``j``'s window is complete; :meth:`windows` cuts it."""

    def __init__(self, network, fps: float, sample_rate: int, stats: Optional[SpeechStats] = None,
                 cfg: AudioConfig = AudioConfig(), phones: Optional[np.ndarray] = None) -> None:
        # ``sample_rate``: the chunks'; other than the mel's, they are resampled as they come, with the filter a file
        # is read with (``media.resample``), so the frames are those of the same speech read from a file
        self.cfg, self.fps, self.sample_rate = cfg, float(fps), cfg.sample_rate
        self._resampler = (StreamResampler(cfg.sample_rate, int(sample_rate)) if int(sample_rate) != cfg.sample_rate
                           else None)
        self.mel = MelStream(cfg)
        self.steps = getattr(network, "mel_steps", None)
        self.utterance = getattr(network, "mel_norm", None) == "utterance"
        self.smooth = int(getattr(network, "mel_smooth", 0)) if self.utterance else 0
        # a Lite network that reads phones reads none recognised here (they are read from a whole utterance): its
        # rows stay zero, as in `sync` with phones off (LipSync(phones=False)), which it was trained to read as
        # well; or ``phones`` known in advance (``media.phones.read_phones``'s form: given phoneme timings), as in
        # `sync` given them
        self.phone_rows = N_PHONES if self.utterance and getattr(network, "phones", False) else 0
        self.phones = None if phones is None else np.append(np.asarray(phones, np.int64).reshape(-1), SILENCE)
        self.stats = stats
        self.error: Optional[BaseException] = None
        self._said: set[str] = set()  # the warnings given on this speech
        self.cancelled = False
        # running statistics (Lite without given stats): sums over mel frames [0, _seen)
        self._seen, self._sum, self._sq = 0, np.zeros(cfg.n_mels), np.zeros(cfg.n_mels)
        self._min = np.full(cfg.n_mels, np.inf, np.float32)

    # -- speech in
    def feed(self, chunks: Iterable[np.ndarray]) -> None:
        """Push every chunk (1-D PCM: float in [-1, 1] or int16), then end the speech. Runs in its own thread.
        Samples that are not numbers become silence and float samples beyond full scale are clipped, as ``sync``
        reads a file (with a warning each, once); other sample types, and a stream without samples, are refused."""
        try:
            for c in chunks:
                if self.cancelled:
                    return
                self.mel.push(self._resampled(self._pcm(c)))
            if self._resampler is not None and not self.cancelled:
                self.mel.push(self._resampled(None))  # the filter's last outputs
            if self.mel.n_samples == 0 and not self.cancelled:
                raise UserError("the speech stream ended without a sample: there is no speech to lip-sync to")
        except BaseException as e:  # noqa: BLE001 (handed to the frame consumer)
            self.error = e
        finally:
            self.mel.finish()

    def _resampled(self, pcm: Optional[np.ndarray]) -> np.ndarray:
        """Samples at the chunks' rate as the mel's (None: the speech ended), clipped after the filter as a file's."""
        if self._resampler is None:
            return pcm
        out = self._resampler.finish() if pcm is None else self._resampler.push(pcm)
        return np.clip(out, -1.0, 1.0, out=out)

    def _pcm(self, chunk) -> np.ndarray:
        """One chunk as float32 samples in [-1, 1] (:func:`pcm_samples`)."""
        return pcm_samples(chunk, self._say_once)

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            warn(message)

    @property
    def n_out(self) -> Optional[int]:
        """Frames in the whole stream, once the speech has ended (as ``sync``: round(seconds * fps), at least one)."""
        if not self.mel.finished:
            return None
        return max(1, int(round(self.mel.n_samples / self.sample_rate * self.fps)))

    def cancel(self) -> None:
        self.cancelled = True
        self.mel.finish()

    # -- windows out
    def _starts(self, js) -> np.ndarray:
        times = np.asarray(js, dtype=np.float64) / self.fps
        if self.steps is not None:
            return centred_window_starts(times, int(self.steps), self.cfg)
        return mel_window_starts(times, self.fps, self.cfg)

    def needed(self, j: int) -> int:
        """Mel frames that must be computed before frame ``j`` can be rendered."""
        return int(self._starts([j])[0]) + int(self.steps or self.cfg.window_steps)

    def wait(self, j: int) -> bool:
        """Block until frame ``j`` can be rendered; False when the speech ended before it (or the stream stopped)."""
        while not self.cancelled:
            if self.mel.wait_for(self.needed(j), timeout=0.1) or self.mel.finished:
                break
        if self.error is not None:
            raise self.error
        if self.cancelled:
            return False
        n = self.n_out
        return n is None or j < n

    def ready(self, j: int) -> bool:
        """Frame ``j`` can be rendered now (without waiting)."""
        return self.mel.n_frames >= self.needed(j) or self.mel.finished

    def windows(self, js) -> np.ndarray:
        """(N, 1, n_mels, steps) float32 windows of frames ``js`` (ascending), as ``generator_io.network_mel_windows``
        cuts them from the whole speech's mel (frames past its end or before its start: silence, or Lite's floor)."""
        cfg = self.cfg
        steps = int(self.steps or cfg.window_steps)
        starts = self._starts(js)
        total = self.mel.n_frames  # all there is so far (the whole stream once finished)
        lo = min(max(0, int(starts.min())), total)
        seg = self.mel.frames(lo, max(lo, min(total, int(starts.max()) + steps)))
        if not self.utterance:
            out = windows_from_starts(seg, starts - lo, cfg, steps)
        else:
            seg = smooth_across_frequency(seg, self.smooth)
            out = np.stack([self._lite_window(seg, lo, int(s), steps) for s in starts])
            if self.phone_rows:
                out = np.concatenate([out, self._phone_windows(starts, steps, total)], axis=2)
            lo = min(lo, self._seen)  # running statistics still need the frames from _seen on
        self.mel.drop_before(lo)
        return out

    def _phone_windows(self, starts: np.ndarray, steps: int, total: int) -> np.ndarray:
        """The phones' one-hot rows of the windows (N, 1, phone_rows, steps), as ``media.phones.phone_track``
        lays them below the whole speech's mel: zero outside the speech so far, and without known phones."""
        out = np.zeros((len(starts), 1, self.phone_rows, steps), np.float32)
        if self.phones is None:
            return out
        idx = np.asarray(starts, np.int64)[:, None] + np.arange(steps)[None, :]  # (N, steps) mel frames
        inside = (idx >= 0) & (idx < total)
        at = np.floor(np.maximum(idx, 0) * (FRAME_RATE / (self.cfg.sample_rate / self.cfg.hop_length)) + 1e-6)
        ids = self.phones[np.minimum(at.astype(np.int64), len(self.phones) - 1)]
        n, k = np.nonzero(inside)
        out[n, 0, ids[n, k], k] = 1.0
        return out

    def _lite_window(self, seg: np.ndarray, lo: int, start: int, steps: int) -> np.ndarray:
        stats = self.stats or self._running(min(start + steps, self.mel.n_frames))
        norm = ((seg - stats.mean[:, None]) / (stats.std[:, None] + 1e-3)).astype(np.float32)
        return windows_from_starts(norm, np.array([start - lo]), self.cfg, steps, stats.floor)[0]

    def _running(self, end: int) -> SpeechStats:
        """The statistics of mel frames [0, end) (the speech heard up to the end of the frame's window)."""
        if end > self._seen:
            new = smooth_across_frequency(self.mel.frames(self._seen, end), self.smooth)
            self._sum += new.sum(axis=1, dtype=np.float64)
            self._sq += np.square(new, dtype=np.float64).sum(axis=1)
            self._min = np.minimum(self._min, new.min(axis=1))
            self._seen = end
        n = max(self._seen, 1)
        mean = self._sum / n
        std = np.sqrt(np.maximum(self._sq / n - mean * mean, 0.0))
        mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
        floor = ((self._min - mean32) / (std32 + 1e-3)).astype(np.float32)
        return SpeechStats(mean32, std32, floor)


def live_batches(feed: MelFeed, size: int, render) -> callable:
    """The network stage of a stream: frames rendered as soon as their speech is in, in batches of the frames that
    are ready together (at most ``size``); it ends after the speech's last frame."""

    def stage(jobs):
        it = iter(jobs)
        job = None
        while True:
            job = next(it, None) if job is None else job
            if job is None or not feed.wait(job.j):
                return
            batch = [job]
            job = None
            while len(batch) < size:
                nxt = next(it, None)
                if nxt is None:
                    break
                n_out = feed.n_out
                if (n_out is not None and nxt.j >= n_out) or not feed.ready(nxt.j):
                    job = nxt
                    break
                batch.append(nxt)
            todo = [b for b in batch if b.box is not None]
            if todo:
                render(todo)
            yield batch
            n_out = feed.n_out
            if n_out is not None and batch[-1].j >= n_out - 1:
                return

    return stage


def run_stream(ls, video, speech: Iterable[np.ndarray], *, sample_rate: int = 16000, loop: str = "pingpong",
               face_index=None, face_box=None, reference="best", fps=None, stats: Optional[SpeechStats] = None,
               batch_size: Optional[int] = None, phonemes=None,
               speech_seconds: Optional[float] = None) -> Iterator[LiveFrame]:
    """The body of ``LipSync.stream`` (``ls``: the LipSync whose networks render). ``speech_seconds``: the speech's
    length where known in advance (``live`` reads a file), to check the phoneme timings against it."""
    from .face.detect import FaceDetectors
    from .media.phone_marks import closure
    from .media.timing import check_fps, open_timeline
    from .schedule import LOOP_MODES
    from .stages import Timings
    from .streaming import (check_face_box, check_face_index, find_reference, frame_chain, path_argument,
                            reference_request, track_factory, whole_number)

    video = path_argument(video, "video")
    require_file(video, "video")
    check_face_index(face_index)
    if speech is None or isinstance(speech, (bytes, bytearray, memoryview, str)) or not isinstance(speech, Iterable):
        aio = " (an async iterable: feed its chunks from a thread, e.g. through a queue.Queue)" \
            if hasattr(speech, "__aiter__") else ""
        if isinstance(speech, (str, os.PathLike)):  # (speech_stats takes a path; a stream takes samples)
            aio = (": to stream a file, read it first, e.g. [hyperlips.media.audio.load_audio(path)] (16 kHz mono "
                   "samples, the default sample_rate), or run hyperlips live")
        raise UserError("speech must be an iterable of chunks of samples (arrays), e.g. a list or a generator of "
                        f"them (got {type(speech).__name__}){aio}")
    if stats is not None and not isinstance(stats, SpeechStats):
        raise UserError("speech_stats must be a hyperlips.live.SpeechStats, e.g. ls.speech_stats(VOICE_SAMPLE) (a "
                        f"recording of the voice, or its samples) (got {type(stats).__name__})")
    if stats is not None:
        stats = checked_stats(stats, ls.audio_cfg.n_mels)
    if stats is not None and stats.smooth is not None and getattr(ls.base, "mel_norm", None) == "utterance":
        reads = int(getattr(ls.base, "mel_smooth", 0))
        if stats.smooth != reads:  # (the mouth was off on every frame of the stream, without a word)
            raise UserError(f"speech_stats were measured on a mel smoothed with {stats.smooth}, and this network "
                            f"reads it smoothed with {reads}: make them with ls.speech_stats(VOICE_SAMPLE), or "
                            "SpeechStats.of(mel, ls.base.mel_smooth)")
    if stats is not None and getattr(ls.base, "mel_norm", None) != "utterance":  # (measured, then unused: unsaid)
        warn(f"a voice sample (--voice-sample, speech_stats) is not used by {ls.weights}: HyperLips-Base's mel needs "
             "no statistics (they normalise HyperLips-Lite's)")
    if loop not in LOOP_MODES:
        raise UserError(f"--loop (loop) must be one of {', '.join(LOOP_MODES)} (got {loop!r})")
    sample_rate = checked_rate(sample_rate)
    check_fps(fps)
    request = reference_request(reference)
    marks = ls.phoneme_marks(phonemes, speech_seconds)
    if batch_size is not None and (not whole_number(batch_size) or batch_size < 1):
        raise UserError(f"batch_size must be a whole number of at least 1, or None for the LipSync's (got {batch_size!r})")
    size = int(ls.batch_size if batch_size is None else batch_size)
    timings = Timings()
    with ls.one_call("stream"), open_timeline(video, fps, warn_slow=True) as timeline, FaceDetectors() as detector:
        ls.new_clip(timeline.fps)
        info = timeline.info
        n_src = 1 if info.is_image else timeline.n_frames
        face_box = check_face_box(face_box, info.width, info.height)

        new_track = track_factory(timeline, face_index, face_box)
        found = find_reference(timeline, n_src, request, new_track, detector.detect, _NoBar(), timings, ls.overlap,
                               detector.workers, ls.detect_every_frame)
        given = None
        if marks is not None and ls.given_phones:
            from .media.phone_marks import phone_ids

            given = phone_ids(marks, marks[-1].end if marks else 0.0)
        feed = MelFeed(ls.base, timeline.fps, sample_rate, stats, ls.audio_cfg, phones=given)
        feeder = threading.Thread(target=feed.feed, args=(speech,), name="hyperlips-speech", daemon=True)

        def render(jobs):
            closed = None if marks is None else closure(marks, [job.j / timeline.fps for job in jobs])
            ls.render_jobs(jobs, found.crop, feed.windows([job.j for job in jobs]), closed)

        chain = frame_chain(timeline, n_src=n_src, n_out=FOREVER, loop=loop, found=found, new_track=new_track,
                            detect=detector.detect, network=live_batches(feed, size, render), batch_size=size,
                            timings=timings, overlap=ls.overlap, steady=ls.temporal_blend,
                            input_blend=ls.input_blend, workers=detector.workers,
                            every_frame=ls.detect_every_frame, on_stop=feed.cancel)
        feeder.start()
        try:
            for job in chain:
                yield LiveFrame(job.j, job.j / timeline.fps, job.image, timeline.fps, timeline.info.sample_aspect)
            if feed.error is not None:
                raise feed.error
        finally:
            feed.cancel()
            chain.close()
            # a feeder waiting inside the caller's iterable for its next chunk (a microphone's queue) cannot be
            # stopped from here: it ends when the iterable gives a chunk or ends (a daemon thread meanwhile)
            feeder.join(timeout=0.2)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


# --------------------------------------------------------------------------------------------- a paced feed
class PacedSpeech:
    """A recording fed as if it were being spoken: chunks of ``chunk`` samples, each given once it has been fully
    spoken (``pace=False``: all at once). ``t0`` is when the speech started (time.perf_counter)."""

    def __init__(self, wav: np.ndarray, chunk: int, sample_rate: int = 16000, pace: bool = True) -> None:
        self.wav, self.chunk, self.sample_rate, self.pace = wav, max(1, int(chunk)), int(sample_rate), pace
        self.t0: Optional[float] = None

    def __iter__(self):
        self.t0 = time.perf_counter()
        for i in range(0, len(self.wav), self.chunk):
            piece = self.wav[i : i + self.chunk]
            if self.pace:
                wait = self.t0 + (i + len(piece)) / self.sample_rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            yield piece


# --------------------------------------------------------------------------------------------- the live command
BEHIND_S = 0.25  # a paced stream whose frames come this much later by the end than at its start (and BEHIND_SHARE of
BEHIND_SHARE = 0.05  # the speech's length) fell behind: latency that grows, not the fixed look-ahead of short speech


@dataclass
class LiveReport:
    """What ``hyperlips live`` measured. Latency of a frame: from the moment the speech reached its time (the
    speech started at t0, frame j's time is t0 + j / fps) to the moment the frame came out of the stream."""

    output: Path
    frames: int
    fps: float
    speech_seconds: float
    wall_seconds: float  # first chunk fed to last frame out
    latencies: np.ndarray  # seconds, per frame
    lookahead: float  # the least latency the network's mel window allows (seconds, mean over frames)
    chunk_ms: float
    paced: bool
    setup_seconds: float = float("nan")  # the call to the first chunk read (the idle clip opened, its face found)
    lite: bool = False  # the network was HyperLips-Lite (no use advising it)
    mouth: str = "render"  # how the mouth was made (--mouth, resolved): a warped one (FaceMesh and the warp each
    # frame) is the slower; rendered is the real-time setting, advised where the stream fell behind

    @property
    def fell_behind(self) -> float:
        """Seconds the frames came later by the end than at the start of a paced stream (0: it kept up): the last
        frame's latency against the least of the first quarter's, where the growth exceeds the jitter allowed."""
        lat = self.latencies
        if not self.paced or len(lat) < 2:
            return 0.0
        grown = float(lat[-1] - lat[: max(1, len(lat) // 4)].min())
        return grown if grown > max(BEHIND_S, BEHIND_SHARE * self.speech_seconds) else 0.0

    @property
    def real_time_factor(self) -> float:
        """Wall time / speech time: about 1 when fed in real time and keeping up (it cannot be less), above 1 when the
        stream falls behind; unpaced, below 1 means faster than real time."""
        return self.wall_seconds / self.speech_seconds if self.speech_seconds > 0 else float("inf")

    def summary(self) -> str:
        lat = self.latencies
        head = f"{self.output}: {self.frames} frame{'s' if self.frames != 1 else ''} @ {self.fps:g} fps from " \
               f"{self.speech_seconds:.2f} s of speech, "
        setup = (f"; before it, {self.setup_seconds:.2f} s to open the idle clip and find its face"
                 if math.isfinite(self.setup_seconds) else "")
        if not self.paced:  # the whole speech was there at once: a frame's delay after "its time" means nothing
            return (head + f"fed as fast as possible\n{self.frames / max(self.wall_seconds, 1e-9):.1f} frames/s, "
                    f"{1 / self.real_time_factor:.2f}x real time (timed from the first chunk read{setup}); latency is "
                    "measured when the speech is fed in real time (without --no-pace)")
        text = (head + f"fed in {self.chunk_ms:g} ms chunks in real time\nfirst frame latency {lat[0] * 1000:.0f} ms; "
                f"latency median {np.median(lat) * 1000:.0f} ms, 95th percentile {np.percentile(lat, 95) * 1000:.0f} "
                f"ms, max {lat.max() * 1000:.0f} ms (the mel window's look-ahead alone: {self.lookahead * 1000:.0f} "
                f"ms); real-time factor {self.real_time_factor:.2f} (timed from the first chunk read{setup})")
        if self.fell_behind:
            helps = ("--mouth render, " if self.mouth != "render" else "") + "a lower --fps" \
                + ("" if self.lite else ", HyperLips-Lite") + " or other programs stopped"
            text += (f"\nwarning: it fell behind the speech (its frames came {self.fell_behind:.1f} s later by the end "
                     f"than at the start: the last {lat[-1]:.1f} s late); this machine cannot render this stream in "
                     f"real time: {helps} would help")
        return text


def run_live(ls, video, speech_path, output, *, chunk_ms: float = 40.0, pace: bool = True, voice_sample=None,
             crf: int = 18, preset: str = "veryfast", pix_fmt: str = "yuv420p", **stream_options) -> LiveReport:
    """Feed ``speech_path`` to ``ls.stream`` in ``chunk_ms`` chunks as if it were being spoken (``pace``), write the
    frames and the speech to ``output`` and measure the latency of every frame. ``voice_sample``: a recording of the
    same voice whose statistics normalise HyperLips-Lite's mel (the speech file itself gives the frames of ``sync
    --no-phones``: a stream reads no phones; of ``sync --phonemes FILE`` where ``phonemes`` names the same FILE)."""
    from .media.audio import load_audio, speech_problems
    from .media.writer import VideoWriter, check_encoding
    from .streaming import MUX_SAMPLE_RATE, check_paths, make_output_folder, reference_request, remove_made_folders

    video, speech_path, output = Path(video), Path(speech_path), Path(output)
    check_encoding(crf, preset, pix_fmt)
    kept = [(Path(voice_sample) if voice_sample else None, "voice sample (--voice-sample)"),
            (reference_request(stream_options.get("reference", "best")), "reference (--reference)")]
    check_paths(video, speech_path, output, kept)
    if voice_sample:  # named as the option it is (it read as the speech argument: "audio file not found")
        require_file(voice_sample, "--voice-sample")
    if not 5.0 <= float(chunk_ms) <= 1000.0:
        raise UserError(f"--chunk-ms must be from 5 to 1000 milliseconds (got {chunk_ms:g})")
    sr = ls.audio_cfg.sample_rate
    wav = load_audio(speech_path, sr)
    if len(wav) == 0:
        raise UserError(f"the speech is empty: {speech_path}")
    for problem in speech_problems(wav, sr):
        warn(f"{speech_path}: {problem}")
    stats = ls.speech_stats(voice_sample) if voice_sample else None
    feed = PacedSpeech(wav, int(round(chunk_ms / 1000.0 * sr)), sr, pace)
    writer, out_times, n, made = None, [], 0, []
    t_call = time.perf_counter()
    stream = run_stream(ls, video, feed, stats=stats, speech_seconds=len(wav) / sr, **stream_options)
    try:
        for fr in stream:
            out_times.append(time.perf_counter())
            if writer is None:
                made = make_output_folder(output)  # once the inputs have proved usable
                h, w = fr.image.shape[:2]
                sound = load_audio(speech_path, MUX_SAMPLE_RATE, keep_stereo=True, quiet=True)  # its own channels
                writer = VideoWriter(output, w, h, fr.fps, audio=sound, sample_rate=MUX_SAMPLE_RATE,
                                     crf=crf, preset=preset, pix_fmt=pix_fmt, sample_aspect=fr.sample_aspect)
            writer.write(fr.image)
            n += 1
        if writer is None:  # pragma: no cover (a stream always gives at least one frame)
            raise UserError(f"no frame came out of {video}")
        writer.close()
    except BaseException:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        if writer is not None:
            writer.abort()
        remove_made_folders(made)  # nothing is left of the run, the folders made for its output included
        raise
    fps = float(writer.fps)
    times = np.arange(n) / fps
    lat = np.asarray(out_times) - feed.t0 - times
    mel_feed = MelFeed(ls.base, fps, sr)
    speech_end = len(wav) / sr  # a window reaching past the end is complete when the speech ends
    lookahead = float(np.mean([min(((mel_feed.needed(j) - 1) * ls.audio_cfg.hop_length + ls.audio_cfg.n_fft // 2) / sr,
                                   speech_end) - j / fps for j in range(n)]))
    return LiveReport(output, n, fps, len(wav) / sr, out_times[-1] - feed.t0, lat, lookahead, float(chunk_ms), pace,
                      feed.t0 - t_call, lite=ls.model_name == "hyperlips-lite", mouth=ls.mouth)

