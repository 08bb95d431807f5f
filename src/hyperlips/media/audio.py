"""Audio front end: decoding any audio (or a video's audio track) to mono float32, and the 80-bin mel spectrogram.

Decoding uses PyAV (FFmpeg). Channels are averaged (as ``librosa.to_mono`` does; FFmpeg's own stereo->mono
downmix is 3 dB quieter), then the signal is resampled with a polyphase Kaiser-windowed FIR
(``media.resample``: ``scipy.signal.resample_poly``'s filter, without scipy's import time). On real speech this
lands within 0.006 (mean absolute difference, normalised mel units in [-4, 4]) of the original's ``librosa.load``
resampler (resampy ``kaiser_best``) and runs at several hundred times real time.

The mel spectrogram reproduces the original numerics (reference §3) in numpy: pre-emphasis, a centred STFT with
zero padding (librosa 0.9 ``pad_mode='constant'``), magnitude, Slaney mel filterbank, dB and symmetric
normalisation to [-4, 4]. ``T = 1 + floor(N / hop)`` mel frames; mel frame ``k`` is centred at ``k / 80`` s.

Frame -> mel window convention (one convention, used by training and inference alike)
---------------------------------------------------------------------------------------
A video frame is located by its timestamp ``t`` in seconds (from the container's pts, never ``i / 25``).
Its 16-step window (0.2 s) starts at mel index::

    mel_window_start(t, fps) = floor((t + frame_offset / fps) * 80)        # frame_offset = -1

i.e. the window begins one frame period before the frame, as the official checkpoints were trained
(reference §3 "generator training"; for 25 fps this is ``floor(3.2 * (i - 1))``). Window steps that fall
before the first or after the last mel frame hold the silence value ``-max_abs_value`` (-4): never wrapped,
never clamped to the edge.

The sync expert uses a different window: the one covering exactly the 5 frames ``t0 .. t0+4``, which starts at
``sync_window_start(t0) = floor(t0 * 80)``. With ``frame_offset = -1`` that is the generator's window for the
frame after ``t0``: ``sync_window_start(t) == mel_window_start(t + 1 / fps, fps)``.

HyperLips-Lite uses a longer window centred on the frame (:func:`centred_mel_windows`): ``steps`` mel frames
starting at ``round(t * 80) - steps // 2``, so mel frame ``round(t * 80)`` (the one centred nearest to ``t``)
sits in the middle; the audio just after the frame (which the mouth anticipates) is seen as well as before.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np

from ..config import AudioConfig
from ..errors import MediaError, decoder_reason, require_file, warn

__all__ = [
    "load_audio",
    "write_wav",
    "stereo_mix",
    "melspectrogram",
    "mel_filterbank",
    "mel_window_start",
    "sync_window_start",
    "mel_windows",
    "sync_mel_windows",
    "centred_window_starts",
    "centred_mel_windows",
    "normalise_utterance",
    "smooth_across_frequency",
    "speech_problems",
    "mel_of_frames",
    "windows_from_starts",
    "mel_window_starts",
]

_EPS = 1e-6  # guards floor() against float error when t * 80 is a whole number


# --------------------------------------------------------------------------------------------- decoding
def _planes(frame) -> np.ndarray:
    """A decoded ``av.AudioFrame`` as float32 (channels, samples) in [-1, 1]."""
    x = frame.to_ndarray()
    fmt = frame.format
    n_ch = len(frame.layout.channels)
    if not fmt.is_planar:  # packed: (1, samples * channels), interleaved
        x = x.reshape(-1, n_ch).T
    name = fmt.name.rstrip("p")
    if name == "u8":
        return (x.astype(np.float32) - 128.0) / 128.0
    if name == "s16":
        return x.astype(np.float32) / 32768.0
    if name == "s32":
        return (x.astype(np.float64) / 2147483648.0).astype(np.float32)
    if name == "s64":
        return (x.astype(np.float64) / 9223372036854775808.0).astype(np.float32)
    return x.astype(np.float32)  # flt, dbl


# a decoded peak above this (over +6 dBFS: only a float file can hold it) scales the track down instead of clipping
# it; lossy decoders' small overshoots of full scale (up to about 1.2) are clipped as before
LOUD_PEAK = 2.0


# the weights of each named channel in a stereo mix-down of a track with more than two channels (ITU-R BS.775:
# centre and surrounds at -3 dB, the low-frequency channel left out); a channel not named here goes to both sides
_TO_LEFT = {"FL": 1.0, "FLC": 1.0, "SL": 0.7071, "BL": 0.7071, "TFL": 0.7071, "TBL": 0.7071, "WL": 1.0}
_TO_RIGHT = {"FR": 1.0, "FRC": 1.0, "SR": 0.7071, "BR": 0.7071, "TFR": 0.7071, "TBR": 0.7071, "WR": 1.0}
_NOT_MIXED = {"LFE", "LFE2"}


def stereo_mix(planes: np.ndarray, names: list[str]) -> np.ndarray:
    """(channels, samples) of a track with more than two channels, named as FFmpeg names them ("FL", "FC", "LFE"),
    mixed down to (2, samples): left from the left-side channels, right from the right, centre and unnamed channels
    to both at -3 dB, the low-frequency channel left out; each side scaled by the sum of its weights, as FFmpeg's
    own mix-down does, so a full-scale track cannot clip."""
    c = planes.shape[0]
    weights = np.zeros((2, c), np.float32)
    for k, name in enumerate(list(names)[:c] + [""] * max(0, c - len(names))):
        if name in _NOT_MIXED:
            continue
        if name in _TO_LEFT:
            weights[0, k] = _TO_LEFT[name]
        elif name in _TO_RIGHT:
            weights[1, k] = _TO_RIGHT[name]
        else:  # the centre, a top or back centre, or a channel of an unnamed layout
            weights[:, k] = 0.7071
    sums = weights.sum(axis=1, keepdims=True)
    weights /= np.where(sums > 0, sums, 1.0)
    return weights @ planes


def _as_rows(planes: np.ndarray, names: list[str], rows: int) -> np.ndarray:
    """A decoded chunk as ``rows`` channels (1: mono, 2: stereo), whatever its own channel count."""
    c = planes.shape[0]
    if rows == 1:
        return planes.mean(axis=0)[None]
    if c == 1:  # a mono stretch of a stereo track: on both sides
        return np.repeat(planes, 2, axis=0)
    return planes if c == 2 else stereo_mix(planes, names)


AUDIO_HOLE = 0.02  # seconds: a gap in an audio track's timestamps at least this long is filled with silence
# channels that cancel when mixed to mono (one is the other inverted: a microphone wired with its polarity swapped,
# a "wide" stereo effect): the mix's energy below this share of the channels' own, while they are louder than
# CANCEL_LEVEL (rms): the speech is read from the first channel instead (the mix was silence: a mouth that never moved)
CANCEL_SHARE = 0.01
CANCEL_LEVEL = 1e-3
MAX_AUDIO_HOLE = 30.0  # seconds: a longer jump is a restart of the timestamps (joined segments), not a gap


def _audio_stream(container):
    """The audio track a player plays: the one flagged default, else the first."""
    from av.stream import Disposition

    for s in container.streams.audio:
        if s.disposition & Disposition.default:
            return s
    return container.streams.audio[0]


class _Lost(float):
    """A packet the decoder could not read, standing for its length in seconds (0 where unknown)."""


def _decoded_frames(container, stream):
    """The stream's decoded frames; a :class:`_Lost` for each packet the decoder could not read (a damaged one),
    which is then skipped instead of ending the decoding. An error of the demuxer itself after some audio ends the
    track there."""
    import av

    got = False
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as e:
            if not got or isinstance(e, MemoryError):  # (the machine out of memory: not a damaged packet)
                raise
            yield _Lost(0.0)
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            if isinstance(e, MemoryError):
                raise
            known = packet.duration and packet.time_base
            yield _Lost(float(packet.duration * packet.time_base) if known else 0.0)
            continue
        for frame in frames:
            got = True
            yield frame


CUT_SHORT_S = 0.25  # a sound this much shorter than its file declares (and CUT_SHORT_SHARE of it) is said to be cut
CUT_SHORT_SHARE = 0.02


EXACT_LENGTH_FORMATS = ("mov", "mp4", "m4a", "3gp", "matroska", "webm", "flac")  # their header gives the length


def _declared_seconds(path: str, container, stream) -> float | None:
    """How long the file says its sound lasts: a WAV header's data size, an MP3's Xing/Info/VBRI header, the track
    length a container of :data:`EXACT_LENGTH_FORMATS` keeps; None where the file says nothing exact (FFmpeg
    otherwise guesses it from the first packets' bit rate: an ADTS AAC or an MP3 without such a header, far off for
    speech that starts quietly)."""
    name = container.format.name
    if name == "wav":  # FFmpeg caps the header's length at the file's size
        return _wav_data_seconds(path)
    if name == "mp3" and not _mp3_length_header(path):
        return None
    if name != "mp3" and not set(name.split(",")) & set(EXACT_LENGTH_FORMATS):
        return None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if not any(s.type == "video" for s in container.streams) and container.duration:
        import av

        return container.duration / av.time_base
    return None


def _mp3_length_header(path: str) -> bool:
    """Whether an MP3's first frame is a Xing, Info or VBRI header (which gives the stream's length in frames)."""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
            start = 0
            if head[:3] == b"ID3" and len(head) == 10:  # a tag first: its size, 7 bits a byte
                start = 10 + int.from_bytes(bytes(b & 0x7F for b in head[6:10]), "big")
            f.seek(start)
            first = f.read(256)
    except OSError:
        return False
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))


PCM_WAV_TAGS = (1, 3, 6, 7, 0xFFFE)  # WAV formats of one block per sample frame: PCM, float, A-law, mu-law, extensible


def _wav_data_seconds(path: str) -> float | None:
    """The length a RIFF/WAVE file's header gives its samples (the data chunk's size); None where it gives none (a
    file written as a stream leaves 0 or 0xFFFFFFFF there) or cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, align, rate, tag, frames = 12, 0, 0, 1, None
            for _ in range(64):  # chunks before the samples: fmt, fact, LIST, bext, JUNK...
                f.seek(pos)
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                size = int.from_bytes(chunk[4:], "little")
                if chunk[:4] == b"fmt ":
                    fmt = f.read(16)
                    tag = int.from_bytes(fmt[0:2], "little")
                    rate, align = int.from_bytes(fmt[4:8], "little"), int.from_bytes(fmt[12:14], "little")
                elif chunk[:4] == b"fact":  # a compressed format's length in samples (ADPCM, MP3 in WAV, ...)
                    frames = int.from_bytes(f.read(4), "little")
                elif chunk[:4] == b"data":
                    if tag not in PCM_WAV_TAGS:  # a block of these holds many samples: the data size says nothing
                        return frames / rate if frames and rate else None  # of the length without "fact"
                    return size / align / rate if align and rate and size not in (0, 0xFFFFFFFF) else None
                pos += 8 + size + (size & 1)
    except OSError:
        return None
    return None


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, *, align_to_video: bool = True,
               keep_stereo: bool = False, quiet: bool = False, channel: int | None = None) -> np.ndarray:
    """Decode an audio file or a video's audio track to mono float32 in [-1, 1] at ``sample_rate``.

    Any container/codec FFmpeg reads (wav, mp3, m4a, flac, ogg, mp4, mkv, mov, mpg, avi...), any rate and channel
    count. For a file that also has a video stream and ``align_to_video``, sample 0 is at the presentation time
    of the first video frame (the track is trimmed or padded with silence by the streams' start offset), so the
    frame times given by :class:`~hyperlips.media.video.FrameReader` index straight into the result.
    Samples that are not numbers (NaN or infinite, possible in float files) become silence, with an
    :class:`~hyperlips.errors.InputWarning`; a float file louder than twice full scale is scaled down to full scale
    (with a warning) instead of being clipped.

    ``keep_stereo``: (channels, samples) instead, the channels as they are for a mono or stereo track (1 or 2 rows),
    a track of more channels mixed down to stereo (:func:`stereo_mix`): what an output carries. The mono samples
    are the mean of the channels (what the networks hear), or ``channel`` alone where given; channels that cancel
    in the mean (one inverted: :data:`CANCEL_SHARE`) are read from the first, with a warning.
    ``quiet``: say nothing of what was found (a second reading of a file already read, whose problems were said).
    Raises :class:`MediaError` for a missing, unreadable or corrupt file, no audio track, or no samples.
    """
    import av

    from .video import shown_video_stream  # (the track frames are read from)

    require_file(path, "audio file")
    say = (lambda message: None) if quiet else warn
    p = os.fspath(path)
    chunks: list[np.ndarray] = []
    native_rate = 0
    first_time = None
    video_start = None
    end_time = None
    rows = 1
    base = None  # the time of sample 0, as the frames' timestamps count it (moved where they restart)
    drift = 0  # samples between where the last frame's timestamp put it and where the samples before it ended
    holes = damaged = damaged_last = 0
    damaged_at = None
    n = 0  # samples so far, at the first frame's rate
    own_sq = mix_sq = 0.0  # the channels' energy and their mean's (mono, of several channels)
    try:
        with av.open(p) as container:
            if not container.streams.audio:
                raise MediaError(f"{p} has no audio track")
            stream = _audio_stream(container)
            v = shown_video_stream(container) if align_to_video else None
            if v is not None:
                if v.start_time is not None and v.time_base is not None:
                    video_start = float(v.start_time * v.time_base)
            end_time = None  # mp4/mov give the track's exact length (edit list); AAC decoders pad the last frame
            if stream.duration and stream.time_base and any(k in container.format.name for k in ("mp4", "mov")):
                end_time = float(((stream.start_time or 0) + stream.duration) * stream.time_base)
            declared = _declared_seconds(p, container, stream)
            for frame in _decoded_frames(container, stream):
                if isinstance(frame, _Lost):  # a packet the decoder could not read: silence as long as it was
                    damaged += 1
                    damaged_at = damaged_at if damaged_at is not None else n / max(native_rate, 1)
                    damaged_last = n
                    if native_rate and 0 < frame <= MAX_AUDIO_HOLE:  # (its timestamps may show the hole too: the
                        lost = int(round(frame * native_rate))  # next frame's gap is then the rest, if any)
                        chunks.append(np.zeros((rows, lost) if keep_stereo else (lost,), np.float32))
                        n += lost
                    continue
                if frame.samples == 0:
                    continue
                planes = _planes(frame)
                if not native_rate:
                    native_rate = int(frame.sample_rate)
                    if frame.pts is not None and frame.time_base is not None:
                        first_time = base = float(frame.pts * frame.time_base)
                    rows = 2 if keep_stereo and planes.shape[0] > 1 else 1
                elif int(frame.sample_rate) != native_rate:  # the rate changes midway (joined recordings)
                    from .resample import resample_poly

                    g = math.gcd(native_rate, int(frame.sample_rate))
                    planes = np.stack([resample_poly(row, native_rate // g, int(frame.sample_rate) // g)
                                       for row in planes])
                if keep_stereo:
                    chunk = _as_rows(planes, [ch.name for ch in frame.layout.channels], rows)
                elif channel is not None:
                    chunk = planes[min(channel, planes.shape[0] - 1)]
                else:
                    chunk = planes.mean(axis=0)
                    if planes.shape[0] > 1:
                        own_sq += float(np.square(planes, dtype=np.float64).mean(axis=0).sum())
                        mix_sq += float(np.square(chunk, dtype=np.float64).sum())
                if first_time is not None and frame.pts is not None and frame.time_base is not None:
                    # where the frame's time says it goes: a hole in the timestamps (a recorder that dropped audio,
                    # a damaged packet) is silence, so what follows stays in step with the picture
                    at = int(round((float(frame.pts * frame.time_base) - base) * native_rate))
                    gap = at - n
                    # silence for a hole, up to MAX_AUDIO_HOLE, and in all no more than the sound itself (or that
                    # much): a file of a few packets stamped far apart is no hour of silence to hold in memory
                    room = native_rate * max(MAX_AUDIO_HOLE, (n - holes) / native_rate) - holes
                    if (gap - drift >= native_rate * AUDIO_HOLE  # a jump since the frame before, not a slow drift
                            and gap <= min(native_rate * MAX_AUDIO_HOLE, room)):
                        chunks.append(np.zeros(chunk.shape[:-1] + (gap,), np.float32))
                        n += gap
                        holes += gap
                        gap = 0
                    elif abs(gap) > native_rate * AUDIO_HOLE:  # a jump back, too far, or the clocks' drift grown
                        base += gap / native_rate  # large: the times restart here (this frame where the samples end)
                        gap = 0
                    drift = gap
                chunks.append(chunk)
                n += chunk.shape[-1]
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        if isinstance(e, MemoryError):
            raise
        reason = decoder_reason(e)
        raise MediaError(f"cannot decode audio from {p} (unreadable or corrupt file: {reason})") from None
    n = sum(c.shape[-1] for c in chunks)
    if n == 0 or not native_rate:
        raise MediaError(f"{p} holds no audio samples (zero-length audio track)")
    short = declared is not None and n / native_rate < declared - max(CUT_SHORT_S, CUT_SHORT_SHARE * declared)
    at_end = n - damaged_last < native_rate // 2  # the last damaged packet, at the end: where the file was cut
    real = damaged - (1 if short and at_end and damaged else 0)  # (a file cut short is said once, as cut short: the
    if real:  # packet the cut went through is not damage of its own)
        say(f"{p}: {real} damaged audio packet(s) could not be decoded (first near {damaged_at:.2f} s); silence is "
            "in their place")
    if holes and not real:
        say(f"{p}: its audio has gaps in its timestamps ({holes / native_rate:.2f} s in all); silence is put in "
             "them, so the sound stays in step with the picture")
    if short and damaged and not at_end:  # the decoder found its way past damage the timestamps do not show
        say(f"{p}: about {declared - n / native_rate:.2f} s of its sound could not be read past the damage near "
            f"{damaged_at:.2f} s (it lasts {declared:.2f} s, {n / native_rate:.2f} s were read): the speech after it "
            "comes that much early; repair or re-encode the file for speech in step")
    elif short:
        say(f"{p}: its sound ends at {n / native_rate:.2f} s, though the file says it lasts {declared:.2f} s (cut "
            "short: an interrupted copy, download or recording?); the speech is used as far as it goes")
    wav = np.concatenate(chunks, axis=-1)  # (samples,) or (rows, samples)
    del chunks
    bad = ~np.isfinite(wav)
    if bad.any():  # a float file may hold NaN or infinite samples: the resampler and encoders would spread them
        wav[bad] = 0.0
        first = int(np.flatnonzero(bad.reshape(-1, n).any(axis=0))[0])
        say(f"{p}: {int(bad.reshape(-1, n).any(axis=0).sum())} audio sample(s) are not numbers (NaN or infinite), "
             f"first at {first / native_rate:.2f} s; they are replaced by silence")
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak > LOUD_PEAK:  # a float file far beyond full scale: clipping it would leave a square wave
        wav /= peak
        say(f"{p}: its samples reach {peak:.3g} times full scale (a float file louder than it can be played); "
             "the speech is scaled down to full scale rather than clipped")
    if end_time is not None and first_time is not None:
        keep = int(round((end_time - first_time) * native_rate))
        if 0 < keep < n <= keep + native_rate // 10:  # only trim encoder padding, never real audio
            wav = wav[..., :keep]

    if video_start is not None and first_time is not None:
        shift = int(round((video_start - first_time) * native_rate))
        if shift > 0:
            wav = wav[..., shift:]
        elif shift < 0:
            wav = np.concatenate([np.zeros(wav.shape[:-1] + (-shift,), np.float32), wav], axis=-1)
        if wav.shape[-1] == 0:
            raise MediaError(f"{p}: the audio track ends before the first video frame")

    if own_sq > n * CANCEL_LEVEL ** 2 and mix_sq < CANCEL_SHARE * own_sq:
        say(f"{p}: its channels cancel when mixed to mono (one is the other inverted: a microphone wired with its "
            f"polarity swapped?), leaving {10 * math.log10(max(mix_sq, 1e-30) / own_sq):.0f} dB of the sound; the "
            "speech is read from its first channel")
        return load_audio(path, sample_rate, align_to_video=align_to_video, quiet=True, channel=0)
    if native_rate != sample_rate:
        from .resample import resample_poly

        g = math.gcd(int(sample_rate), native_rate)
        up, down = int(sample_rate) // g, native_rate // g
        wav = (np.stack([resample_poly(row, up, down) for row in wav]) if wav.ndim == 2
               else resample_poly(wav, up, down))
    return np.clip(wav, -1.0, 1.0).astype(np.float32, copy=False)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write ``samples`` (float in [-1, 1], or int16) as a 16-bit PCM WAV file. The bytes are written through a file
    Python opened: soundfile encodes a path given as text as UTF-8, and failed on a folder name that is not."""
    import soundfile as sf

    with open(os.fspath(path), "wb") as f:
        sf.write(f, samples, int(sample_rate), format="WAV", subtype="PCM_16")


# --------------------------------------------------------------------------------------------- mel
def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    lin = f / f_sp
    with np.errstate(divide="ignore"):
        log = min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=8)
def _filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney area normalisation
    weights.setflags(write=False)
    return weights


def mel_filterbank(cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Slaney mel filterbank (n_mels, n_fft // 2 + 1) float64, as ``librosa.filters.mel`` with its defaults."""
    return _filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.fmin), float(cfg.fmax))


def _window(cfg: AudioConfig) -> np.ndarray:
    n = np.arange(cfg.win_length)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.win_length)  # periodic Hann (scipy get_window fftbins=True)
    if cfg.win_length < cfg.n_fft:  # centred in the FFT frame, as librosa pads it
        left = (cfg.n_fft - cfg.win_length) // 2
        w = np.pad(w, (left, cfg.n_fft - cfg.win_length - left))
    return w


def melspectrogram(wav: np.ndarray, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Normalised mel spectrogram (n_mels, T) float32 in [-max_abs, max_abs], T = 1 + len(wav) // hop_length.

    ``wav``: 1-D mono samples at ``cfg.sample_rate``. (``media.mel_stream.MelStream`` computes the same frames as
    the samples arrive.)
    """
    x = np.asarray(wav, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"melspectrogram expects a 1-D mono signal, got shape {x.shape}")
    y = x.copy()
    if len(x) > 1 and cfg.preemphasis:
        y[1:] -= cfg.preemphasis * x[:-1]
    pad = cfg.n_fft // 2
    y = np.pad(y, (pad, pad))  # centre=True, zero padding
    n_frames = 1 + (len(y) - cfg.n_fft) // cfg.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(y, cfg.n_fft)[:: cfg.hop_length][:n_frames]
    mel = np.empty((cfg.n_mels, n_frames), dtype=np.float32)
    block = 4096  # bounded temporary memory for long audio
    for b in range(0, n_frames, block):
        mel[:, b : b + block] = mel_of_frames(frames[b : b + block], cfg)
    return mel


def mel_of_frames(frames: np.ndarray, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """(B, n_fft) pre-emphasised, padded signal frames (hop apart) -> their normalised mel columns (n_mels, B)
    float32: Hann window, |rFFT|, Slaney mel, dB, scaled and clipped to [-max_abs, max_abs]."""
    spec = np.abs(np.fft.rfft(frames * _window(cfg), axis=1))  # (B, n_fft//2+1)
    mel = mel_filterbank(cfg) @ spec.T
    min_level = 10.0 ** (cfg.min_level_db / 20.0)
    s_db = 20.0 * np.log10(np.maximum(min_level, mel)) - cfg.ref_level_db
    m = cfg.max_abs_value
    s = 2.0 * m * (s_db - cfg.min_level_db) / (-cfg.min_level_db) - m
    return np.clip(s, -m, m).astype(np.float32)


# --------------------------------------------------------------------------------------------- windows
def mel_window_start(t_seconds: float, fps: float, cfg: AudioConfig = AudioConfig()) -> int:
    """First mel index of the window for the video frame shown at ``t_seconds`` (see the module docstring)."""
    return int(math.floor((float(t_seconds) + cfg.frame_offset / float(fps)) * cfg.mel_fps + _EPS))


def sync_window_start(t0_seconds: float, fps: float, cfg: AudioConfig = AudioConfig()) -> int:
    """First mel index of the sync expert's window covering the 5 frames from ``t0_seconds`` on.

    ``fps`` is not needed by this convention (kept for symmetry with :func:`mel_window_start`).
    """
    del fps
    return int(math.floor(float(t0_seconds) * cfg.mel_fps + _EPS))


def windows_from_starts(mel: np.ndarray, starts: np.ndarray, cfg: AudioConfig, steps: int | None = None,
                        fill=None) -> np.ndarray:
    """Windows (N, 1, n_mels, steps) of ``mel`` starting at mel indices ``starts``; steps outside ``mel`` hold
    silence (``-max_abs_value``) or ``fill`` (one value per mel bin)."""
    if mel.ndim != 2 or mel.shape[0] != cfg.n_mels:
        raise ValueError(f"mel must be ({cfg.n_mels}, T), got {mel.shape}")
    steps = cfg.window_steps if steps is None else int(steps)
    silence = np.float32(-cfg.max_abs_value) if fill is None else np.asarray(fill, np.float32).reshape(-1, 1, 1)
    idx = starts[:, None] + np.arange(steps)[None, :]  # (N, steps)
    inside = (idx >= 0) & (idx < mel.shape[1])
    if mel.shape[1] == 0:
        out = np.broadcast_to(silence, (cfg.n_mels, len(starts), steps)).transpose(1, 0, 2).astype(np.float32)
    else:
        got = mel[:, np.clip(idx, 0, mel.shape[1] - 1)]  # (n_mels, N, steps)
        out = np.where(inside[None], got, silence).transpose(1, 0, 2)
    return np.ascontiguousarray(out, dtype=np.float32)[:, None]  # (N, 1, n_mels, steps)


def mel_windows(mel: np.ndarray, times, fps: float, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Generator mel windows (N, 1, n_mels, window_steps) float32 for frames shown at ``times`` (seconds).

    ``mel``: (n_mels, T) from :func:`melspectrogram`. Steps outside the spectrogram hold ``-max_abs_value``.
    """
    return windows_from_starts(np.asarray(mel), mel_window_starts(times, fps, cfg), cfg)


def mel_window_starts(times, fps: float, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """:func:`mel_window_start` of every time in ``times`` (seconds), (N,) int64."""
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    return np.floor((times + cfg.frame_offset / float(fps)) * cfg.mel_fps + _EPS).astype(np.int64)


def sync_mel_windows(mel: np.ndarray, times, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Sync-expert windows (N, 1, n_mels, window_steps) for 5-frame blocks starting at ``times`` (seconds)."""
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    starts = np.floor(times * cfg.mel_fps + _EPS).astype(np.int64)
    return windows_from_starts(np.asarray(mel), starts, cfg)


def centred_window_starts(times, steps: int, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """First mel index of the ``steps``-long window centred on each time (seconds): ``round(t * 80) - steps // 2``."""
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    return np.floor(times * cfg.mel_fps + 0.5).astype(np.int64) - int(steps) // 2


def centred_mel_windows(mel: np.ndarray, times, steps: int, cfg: AudioConfig = AudioConfig(), fill=None) -> np.ndarray:
    """Centred windows (N, 1, n_mels, steps) float32 for frames shown at ``times`` (HyperLips-Lite's input).

    Steps outside the spectrogram hold silence: ``-max_abs_value``, or ``fill`` (a value per mel bin; for a mel
    normalised per utterance, its per-bin minimum)."""
    return windows_from_starts(np.asarray(mel), centred_window_starts(times, steps, cfg), cfg, steps, fill)


SILENT_DBFS = -60.0  # a track whose loudest sample is below this holds no speech to follow


def is_silent(wav: np.ndarray) -> bool:
    """No sample of ``wav`` (float in [-1, 1]) reaches ``SILENT_DBFS``."""
    return len(wav) == 0 or float(np.max(np.abs(wav))) < 10 ** (SILENT_DBFS / 20)


def speech_problems(wav: np.ndarray, sample_rate: int, fps: float = 25.0) -> list[str]:
    """Why a speech track gives the mouth nothing to follow, in words (none: an empty list): shorter than one video
    frame, or silent."""
    out = []
    if len(wav) < sample_rate / fps:
        out.append(f"the speech lasts {len(wav) / sample_rate * 1000:.1f} ms, less than one frame: the output is one "
                   "frame long")
    if is_silent(wav):
        out.append(f"the speech is silent (no sample above {SILENT_DBFS:g} dBFS): the mouth has nothing to follow")
    return out


@lru_cache(maxsize=4)
def _low_quefrency_projection(n_mels: int, keep: int) -> np.ndarray:
    # (n_mels, n_mels): D_k^T D_k with D_k the first `keep` rows of the orthonormal DCT-II over the bins
    n, k = np.arange(n_mels), np.arange(keep)[:, None]
    d = np.cos(np.pi * (n + 0.5) * k / n_mels) * np.sqrt(2.0 / n_mels)
    d[0] /= np.sqrt(2.0)
    return (d.T @ d).astype(np.float32)


def smooth_across_frequency(mel: np.ndarray, keep: int) -> np.ndarray:
    """Each frame of a log-mel (n_mels, T) smoothed across its bins: only the first ``keep`` coefficients of its
    DCT over the bins are kept (a cepstral lifter). The voice's pitch harmonics (fine ripples along the bins) go,
    the formants (the broad envelope, which the mouth shapes) stay. ``keep`` 0 or >= n_mels: the mel as it is."""
    mel = np.asarray(mel, dtype=np.float32)
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if keep == 0 or keep >= mel.shape[0]:
        return mel
    return _low_quefrency_projection(mel.shape[0], int(keep)) @ mel


def normalise_utterance(mel: np.ndarray, smooth: int = 0) -> np.ndarray:
    """Each mel bin to zero mean and unit variance over the whole utterance (cepstral mean and variance
    normalisation on the mel): removes the loudness and colour of a recording, keeps what is said. (n_mels, T).
    ``smooth`` > 0: each frame is first smoothed across frequency (:func:`smooth_across_frequency`)."""
    mel = smooth_across_frequency(mel, smooth)
    if mel.shape[1] == 0:
        return mel.copy()
    return ((mel - mel.mean(axis=1, keepdims=True)) / (mel.std(axis=1, keepdims=True) + 1e-3)).astype(np.float32)
