"""Audio decoding, mel spectrogram numerics (against librosa-computed golden numbers) and the frame->mel convention."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from hyperlips.config import AudioConfig
from hyperlips.errors import InputWarning, MediaError
from hyperlips.media.audio import (
    load_audio,
    mel_filterbank,
    mel_window_start,
    mel_windows,
    melspectrogram,
    sync_mel_windows,
    sync_window_start,
)

GOLDEN = Path(__file__).parent / "data" / "mel_golden.npz"
CFG = AudioConfig()


def golden_signal() -> np.ndarray:
    """The deterministic input of tests/data/mel_golden.npz (4321 samples at 16 kHz).

    The golden file holds librosa 0.11.0's numbers for it: ``mel`` = the reference §3 pipeline
    (``scipy.signal.lfilter([1, -0.97], [1], x)``, ``librosa.stft(n_fft=800, hop_length=200, win_length=800)``
    (centre, zero padding), ``librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)`` applied to
    the magnitude, ``20 log10(max(1e-5, M)) - 20``, ``clip(8 (S + 100) / 100 - 4, -4, 4)``), and the filterbank's
    non-zero entries (``fb_rows``, ``fb_cols``, ``fb_vals``).
    """
    n = 4321
    t = np.arange(n) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    x += 0.2 * np.sin(2 * np.pi * (200.0 + 0.5 * 11000.0 * t) * t)  # chirp 200 Hz -> ~3 kHz
    x += 0.05 * np.sin(2 * np.pi * 7000.0 * t) * (t > 0.1)
    x[t < 0.02] = 0.0  # leading silence
    x[-300:] *= 1e-4  # very quiet tail (reaches the -100 dB floor)
    return x.astype(np.float32)


def tone_power(x: np.ndarray, sr: int, freq: float) -> float:
    """Amplitude of the sinusoid at ``freq`` (Hann-windowed DFT, window gain corrected)."""
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w)) / (w.sum() / 2)
    k = int(round(freq * len(x) / sr))
    return float(spec[max(0, k - 2) : k + 3].max())


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize(
    "name", ["hyperlips/audio1.wav", "hyperlips/audio3.wav", "hyperlips/audio4.wav", "retalking/audio2.wav", "speech/fayu.wav"]
)
def test_load_real_wavs_any_rate_and_channels(real_data, name):
    import soundfile as sf

    path = real_data / name
    info = sf.info(str(path))
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) / 16000 - info.duration) <= 1 / 80  # within one mel frame
    assert np.abs(wav).max() <= 1.0
    assert np.sqrt(np.mean(wav**2)) > 1e-3  # speech, not silence
    # same content as the file: the mono mix of the source, resampled, correlates with a naive resample
    src, sr = sf.read(str(path), dtype="float32", always_2d=True)
    naive = np.interp(np.arange(len(wav)) / 16000, np.arange(len(src)) / sr, src.mean(axis=1))
    assert np.corrcoef(naive, wav)[0, 1] > 0.9


def test_downmix_is_mean_and_resampler_removes_aliases(tmp_path):
    import soundfile as sf

    sr = 44100
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 10000 * t)  # 10 kHz is above 8 kHz Nyquist
    right = 0.3 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "stereo44k.wav"
    sf.write(str(path), np.stack([left, right], 1).astype(np.float32), sr, subtype="FLOAT")
    wav = load_audio(path, 16000)
    assert abs(len(wav) - 16000) <= 1
    assert tone_power(wav, 16000, 440) == pytest.approx(0.25, abs=0.01)  # (L + R) / 2, not FFmpeg's -3 dB mix
    assert tone_power(wav, 16000, 1000) == pytest.approx(0.15, abs=0.01)
    assert tone_power(wav, 16000, 6000) < 1e-3  # 10 kHz would alias to 6 kHz without a good low-pass
    # another output rate from the same file
    wav48 = load_audio(path, 48000)
    assert abs(len(wav48) - 48000) <= 1
    assert tone_power(wav48, 48000, 10000) == pytest.approx(0.1, abs=0.01)


def test_channels_that_cancel_in_the_mix_are_read_from_the_first(real_data, tmp_path):
    """Stereo speech with one channel inverted (a microphone wired with its polarity swapped): the mean of the
    channels was silence, so the mouth never moved and the run said "the speech is silent", while the output
    played the speech on both sides. The first channel is read instead, said; a stereo file whose sides differ
    (speech on one, nothing on the other) is mixed as ever."""
    import soundfile as sf

    from hyperlips.errors import InputWarning

    speech = load_audio(real_data / "hyperlips" / "audio2.wav", 16000)[:32000]
    inverted = tmp_path / "inverted.wav"
    sf.write(str(inverted), np.stack([speech, -speech], 1), 16000, subtype="FLOAT")
    with pytest.warns(InputWarning, match="its channels cancel when mixed to mono .* read from its first channel"):
        wav = load_audio(inverted, 16000)
    assert np.allclose(wav, speech, atol=1e-6)
    one_side = tmp_path / "one_side.wav"
    sf.write(str(one_side), np.stack([speech, np.zeros_like(speech)], 1), 16000, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.allclose(load_audio(one_side, 16000), speech / 2, atol=1e-6)
    kept = load_audio(inverted, 16000, keep_stereo=True, quiet=True)  # what the output carries: as it is
    assert np.allclose(kept, [speech, -speech], atol=1e-6)


def test_int16_stereo_16k_is_not_resampled(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(1)
    pcm = rng.integers(-20000, 20000, size=(8000, 2)).astype(np.int16)
    path = tmp_path / "s16.wav"
    sf.write(str(path), pcm, 16000, subtype="PCM_16")
    wav = load_audio(path, 16000)
    np.testing.assert_allclose(wav, pcm.astype(np.float32).mean(1) / 32768.0, atol=1e-6)


def test_keep_stereo_keeps_each_side_and_mixes_more_channels_down(tmp_path):
    """``keep_stereo`` (what an output carries): a stereo track's two sides as they are, a mono track one row, a
    5.1 track mixed down to stereo (centre and surrounds at -3 dB, the low-frequency channel left out, each side
    scaled so it cannot clip); the mono samples stay the mean of every channel."""
    import av
    import soundfile as sf

    sr = 48000
    t = np.arange(sr) / sr
    tone = {f: 0.4 * np.sin(2 * np.pi * f * t).astype(np.float32) for f in (60, 300, 500, 700, 900, 1100)}
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([tone[300], tone[500]], 1), sr, subtype="FLOAT")
    sides = load_audio(path, 16000, keep_stereo=True)
    assert sides.shape == (2, 16000) and sides.dtype == np.float32
    assert tone_power(sides[0], 16000, 300) == pytest.approx(0.4, abs=0.01) and tone_power(sides[0], 16000, 500) < 1e-3
    assert tone_power(sides[1], 16000, 500) == pytest.approx(0.4, abs=0.01) and tone_power(sides[1], 16000, 300) < 1e-3
    np.testing.assert_allclose(load_audio(path, 16000), sides.mean(axis=0), atol=1e-6)

    mono_path = tmp_path / "mono.wav"
    sf.write(str(mono_path), tone[700], sr, subtype="FLOAT")
    one = load_audio(mono_path, 48000, keep_stereo=True)
    assert one.shape == (1, sr)
    np.testing.assert_array_equal(one[0], load_audio(mono_path, 48000))

    surround = tmp_path / "surround.flac"  # FFmpeg's 5.1: FL FR FC LFE BL BR
    planes = np.stack([tone[300], tone[500], tone[700], tone[60], tone[900], tone[1100]])
    with av.open(str(surround), "w") as c:
        s = c.add_stream("flac", rate=sr, layout="5.1")
        resampler = av.AudioResampler(format=s.codec_context.format.name, layout="5.1", rate=sr)
        for pos in range(0, sr, 4096):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes[:, pos:pos + 4096]), format="fltp", layout="5.1")
            af.sample_rate, af.pts = sr, pos
            for rf in resampler.resample(af):
                for p in s.encode(rf):
                    c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    mix = load_audio(surround, sr, keep_stereo=True)
    assert mix.shape == (2, sr)
    side, other = 0.4 / (1 + 2 * 0.7071), 0.4 * 0.7071 / (1 + 2 * 0.7071)
    for row, own, back, away in ((mix[0], 300, 900, (500, 1100)), (mix[1], 500, 1100, (300, 900))):
        assert tone_power(row, sr, own) == pytest.approx(side, abs=0.01)
        assert tone_power(row, sr, 700) == pytest.approx(other, abs=0.01)  # the centre on both sides
        assert tone_power(row, sr, back) == pytest.approx(other, abs=0.01)
        assert all(tone_power(row, sr, f) < 1e-3 for f in away)
        assert tone_power(row, sr, 60) < 1e-3  # no low-frequency channel
    assert np.abs(mix).max() <= 0.4 + 1e-3  # a side's weights sum to one


def _pcm_frames(path, samples: np.ndarray, rate: int, skip=(), codec: str = "pcm_s16le", streams: int = 1,
                default: int | None = None, pts_of=None, container: str | None = None, size: int | None = None):
    """Write mono ``samples`` in frames (of ``size``, else the codec's, else 800) with their own timestamps: frame
    ``k`` at ``pts_of(k)`` samples (default: where it starts), those starting in a ``skip`` range of seconds left out
    (a recorder that dropped audio); ``streams`` copies of the track, the ``default``-th flagged default (the others
    silent). A codec with frames of a fixed size gets whole frames only."""
    import av
    from av.stream import Disposition

    with av.open(str(path), "w", format=container) as c:
        tracks = [c.add_stream(codec, rate=rate, layout="mono") for _ in range(streams)]
        for k, st in enumerate(tracks):  # (before the first packet: the header is written then)
            if default is not None:
                st.disposition = Disposition.default if k == default else Disposition(0)
        for k, st in enumerate(tracks):
            sig = samples if default is None or k == default else np.zeros_like(samples)
            fmt, n = st.codec_context.format.name, size or st.codec_context.frame_size or 800
            whole = size is not None or bool(st.codec_context.frame_size)
            for j, pos in enumerate(range(0, len(sig) - (n - 1 if whole else 0), n)):
                if any(a * rate <= pos < b * rate for a, b in skip):
                    continue
                chunk = sig[None, pos:pos + n]
                data = (chunk * 32767).astype(np.int16) if fmt.startswith("s16") else chunk.astype(np.float32)
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout="mono")
                f.sample_rate, f.pts = rate, int(pts_of(j)) if pts_of is not None else pos
                for pkt in st.encode(f):
                    c.mux(pkt)
            for pkt in st.encode(None):
                c.mux(pkt)
    return path


def _tone_at(seconds: float, start: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.where((t >= start) & (t < start + 0.1), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0).astype(np.float32)


def test_a_hole_in_the_audio_timestamps_is_silence_in_its_place(tmp_path):
    """A track whose recorder dropped 0.5 s of audio (its timestamps jump): the sound after the hole stays at its
    time (a beep at 2.0 s is at 2.0 s, not 1.5 s), with a warning."""
    path = _pcm_frames(tmp_path / "gap.mkv", _tone_at(3.0, 2.0), 16000, skip=[(0.5, 1.0)])
    with pytest.warns(InputWarning, match=r"gaps in its timestamps \(0.50 s in all\)"):
        wav = load_audio(path, 16000)
    assert abs(len(wav) - 48000) <= 1
    assert np.argmax(np.abs(wav) > 0.1) / 16000 == pytest.approx(2.0, abs=0.002)


def _ts_recording(path, samples: np.ndarray, rate: int, skip=()) -> Path:
    """An MPEG-TS recording (MP2 audio) whose timestamps start at 0, as a recorder writes it (two of them joined with
    ``cat``: timestamps that restart)."""
    return _pcm_frames(path, samples, rate, skip=skip, codec="mp2", container="mpegts", size=1152)


def test_timestamps_that_restart_or_drift_are_read_as_they_run(tmp_path):
    """Two recordings joined (``cat``: the second's timestamps start again), and a clock whose timestamps run 0.1 %
    slow: every sample read once, in order, without a warning (a wrong sign once made these crash); a hole in the
    second recording still filled with silence."""
    import warnings

    rate = 24000
    first, second = _tone_at(2.0, 10.0, rate), _tone_at(3.0, 1.5, rate)  # a beep 1.5 s into the second
    a, b = _ts_recording(tmp_path / "a.ts", first, rate), _ts_recording(tmp_path / "b.ts", second, rate)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        wav = load_audio(joined, 16000)
        slow = load_audio(_pcm_frames(tmp_path / "slow.mkv", _tone_at(6.0, 4.0), 16000, pts_of=lambda k: k * 799),
                          16000)
    assert not [str(w.message) for w in said if issubclass(w.category, InputWarning)]
    assert np.argmax(np.abs(wav) > 0.1) / 16000 == pytest.approx(3.5, abs=0.08)  # after the whole first recording
    assert abs(len(slow) - 96000) <= 800 and np.argmax(np.abs(slow) > 0.1) / 16000 == pytest.approx(4.0, abs=0.03)
    c = _ts_recording(tmp_path / "c.ts", second, rate, skip=[(0.5, 1.0)])  # a hole in the second recording
    holed = tmp_path / "holed.ts"
    holed.write_bytes(a.read_bytes() + c.read_bytes())
    with pytest.warns(InputWarning, match="gaps in its timestamps"):
        wav = load_audio(holed, 16000)
    assert np.argmax(np.abs(wav) > 0.1) / 16000 == pytest.approx(3.5, abs=0.08)  # still 1.5 s into the second


def test_holes_are_filled_only_as_far_as_the_sound_goes(tmp_path):
    """A file of a few packets stamped far apart (a tiny upload) is not made into minutes of silence in memory: the
    silence put in holes is at most 30 s, or as long as the sound itself."""
    wav = load_audio(_pcm_frames(tmp_path / "far.mkv", np.full(16000, 0.2, np.float32), 16000,
                                 pts_of=lambda k: k * 16000 * 20), 16000)
    assert len(wav) <= 16000 * 31


def test_the_sound_is_aligned_with_the_video_track_that_is_shown(tmp_path):
    """Sample 0 is at the first frame of the video track a player shows (the default one, as frames are read), not
    of the first track: here it starts 1 s later, so 3 of the 4 s of sound are its."""
    import av
    from av.stream import Disposition

    from media_builders import encode_frames

    path = tmp_path / "two_pictures.mkv"
    with av.open(str(path), "w") as c:
        first, shown = c.add_stream("mpeg4", rate=25), c.add_stream("mpeg4", rate=25)
        for st in (first, shown):
            st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        first.disposition, shown.disposition = Disposition(0), Disposition.default
        audio = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        for st, start in ((first, 0), (shown, 25)):
            encode_frames(c, st, [np.zeros((48, 64, 3), np.uint8)] * 75, start)
        sig = (0.3 * np.sin(np.arange(64000) * 0.2) * 32767).astype(np.int16)
        for pos in range(0, 64000, 800):
            f = av.AudioFrame.from_ndarray(sig[None, pos:pos + 800].copy(), format="s16", layout="mono")
            f.sample_rate, f.pts = 16000, pos
            for pkt in audio.encode(f):
                c.mux(pkt)
        for pkt in audio.encode(None):
            c.mux(pkt)
    assert len(load_audio(path, 16000)) / 16000 == pytest.approx(3.0, abs=0.05)


def test_the_default_audio_track_is_read(tmp_path):
    """Of several audio tracks, the one flagged default (the one a player plays), not simply the first."""
    path = _pcm_frames(tmp_path / "two.mp4", _tone_at(1.0, 0.2), 16000, codec="aac", streams=2, default=1)
    assert np.abs(load_audio(path, 16000)).max() > 0.4


def test_a_damaged_audio_packet_is_silence_not_a_refusal(tmp_path):
    """A few damaged bytes in an AAC track (what ffmpeg decodes past): the track is read, silence where the packet
    could not be, with a warning naming where."""
    from media_builders import write_audio

    path = write_audio(tmp_path / "a.m4a", 0.3 * np.sin(np.arange(48000) * 0.2).astype(np.float32), 16000, codec="aac")
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.warns(InputWarning, match="damaged audio packet"):
        wav = load_audio(path, 16000)
    assert abs(len(wav) - 48000) <= 0.05 * 16000


@pytest.mark.parametrize("name, codec", [("a.wav", None), ("a.mp3", "mp3")])
def test_a_speech_file_cut_short_is_said(tmp_path, name, codec):
    """A speech file cut short (an interrupted copy: its header still gives the whole length) gave a shorter output
    without a word; the whole file, or one cut only in its last few milliseconds, says nothing."""
    from media_builders import write_audio

    whole = write_audio(tmp_path / name, 0.3 * np.sin(np.arange(32000) * 0.2).astype(np.float32), 16000, codec=codec)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        assert abs(len(load_audio(whole, 16000)) - 32000) < 1600
    data = whole.read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(data[:len(data) * 45 // 100])
    with pytest.warns(InputWarning, match=rf"cut_{name}: its sound ends at 0\.[6-9]\d s, though the file says it lasts "
                                          r"2\.0\d s \(cut short"):
        wav = load_audio(cut, 16000)
    assert 0.6 * 16000 < len(wav) < 1.0 * 16000
    tail = tmp_path / f"tail_{name}"
    tail.write_bytes(data[:len(data) - 300])  # a few ms: not a file cut short to anyone
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        load_audio(tail, 16000)


def test_a_length_guessed_from_the_bit_rate_is_no_length_and_a_cut_flac_is_a_cut(tmp_path):
    """An ADTS AAC (and an MP3 without a Xing header) has no length but the one FFmpeg guesses from its first packets'
    bit rate, far too long for speech that starts quietly: whole files were said to be cut short. A FLAC cut short
    (its last packet broken where the file ends) was said to be damaged in the middle, the speech after it early."""
    from media_builders import write_audio

    quiet_start = np.concatenate([np.zeros(24000, np.float32), 0.3 * np.sin(np.arange(48000) * 0.2).astype(np.float32)])
    for name in ("a.aac", "b.flac"):
        whole = write_audio(tmp_path / name, quiet_start, 16000, codec="aac" if name.endswith("aac") else None)
        with warnings.catch_warnings():
            warnings.simplefilter("error", InputWarning)
            assert abs(len(load_audio(whole, 16000)) - 72000) < 2400, name
    data = (tmp_path / "b.flac").read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_audio(cut, 16000)
    said = " ".join(str(w.message) for w in caught)
    assert "cut short" in said and "past the damage" not in said, said
    assert "damaged audio packet" not in said, said  # one cause, said once: the packet the cut went through
    # damage in its middle too (a gap the decoder fills with silence): said beside the cut (the cut's packet, counted
    # as damage, hid it)
    sig = (0.3 * np.sin(np.arange(6 * 16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    data = bytearray(write_audio(tmp_path / "c.flac", sig, 16000).read_bytes())
    data[len(data) // 3:len(data) // 3 + 400] = bytes(400)
    (tmp_path / "both.flac").write_bytes(bytes(data[: len(data) * 3 // 4]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_audio(tmp_path / "both.flac", 16000)
    said = [str(w.message) for w in caught]
    assert len(said) == 2 and "cut short" in said[1], said
    assert "its audio has gaps in its timestamps" in said[0] or "damaged audio packet" in said[0], said


def test_damage_the_decoder_skips_past_is_said_as_damage_not_as_a_file_cut_short(tmp_path):
    """Zeros amid an MP3: the decoder finds its way again further on and the timestamps run on as if nothing was
    lost. Said as a file cut short (it was not), and as "silence in their place" (there was none): now the lost
    packet is silence as long as it was, and the rest said as lost past the damage, the speech after it early."""
    from media_builders import write_audio

    path = write_audio(tmp_path / "a.mp3", 0.3 * np.sin(np.arange(32000) * 0.2).astype(np.float32), 16000, codec="mp3")
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + len(data) // 8] = bytes(len(data) // 8)
    hurt = tmp_path / "hurt.mp3"
    hurt.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wav = load_audio(hurt, 16000)
    said = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    assert any("damaged audio packet(s) could not be decoded" in m for m in said), said
    assert any(re.search(r"about 0\.\d\d s of its sound could not be read past the damage near 0\.\d\d s \(it lasts "
                         r"2\.0\d s, 1\.\d\d s were read\): the speech after it comes that much early", m)
               for m in said), said
    assert not any("cut short" in m for m in said), said
    assert 1.2 * 16000 < len(wav) < 1.95 * 16000


def test_a_float_file_far_beyond_full_scale_is_scaled_down_not_clipped(tmp_path):
    """A float WAV at 300x full scale keeps its waveform (at full scale, with a warning); one just over full scale
    (lossy decoders overshoot by up to about 1.2) is clipped as before, quietly."""
    import warnings

    import soundfile as sf

    t = np.arange(8000) / 16000
    y = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    sf.write(str(tmp_path / "loud.wav"), 600 * y, 16000, subtype="FLOAT")
    sf.write(str(tmp_path / "over.wav"), 2.2 * y, 16000, subtype="FLOAT")
    with pytest.warns(InputWarning, match=r"loud.wav: its samples reach 300 times full scale .* scaled down"):
        loud = load_audio(tmp_path / "loud.wav", 16000)
    np.testing.assert_allclose(loud, 2 * y, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        over = load_audio(tmp_path / "over.wav", 16000)
    np.testing.assert_allclose(over, np.clip(2.2 * y, -1, 1), atol=1e-6)


def test_video_audio_tracks(real_data, more_data):
    import av

    for path in [real_data / "hyperlips" / "video1.mp4", more_data / "grid_lipnet" / "bbaf2n.mpg"]:
        with av.open(str(path)) as c:
            a = c.streams.audio[0]
            seconds = float(a.duration * a.time_base) if a.duration else c.duration / 1e6
        wav = load_audio(path)
        assert abs(len(wav) / 16000 - seconds) <= 1 / 25, path.name
        assert np.sqrt(np.mean(wav**2)) > 1e-3


@pytest.mark.parametrize("rel", ["dfrf/cnn2_25fps.mp4"])
def test_mp3_audio_track_in_mp4(more_data, rel):
    wav = load_audio(more_data / rel)
    assert abs(len(wav) / 16000 - 71.18) < 0.05
    assert np.sqrt(np.mean(wav**2)) > 1e-3


def test_audio_aligned_to_first_video_frame(real_data):
    """face1.mp4's video starts 33 ms after its audio: sample 0 must be the audio at the first frame."""
    import av

    path = real_data / "retalking" / "face1.mp4"
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        offset = float(v.start_time * v.time_base)
    assert offset > 0.03
    # at the track's own rate (44.1 kHz) the shift is a whole number of samples and nothing is resampled
    raw = load_audio(path, 44100, align_to_video=False)
    aligned = load_audio(path, 44100)
    shift = len(raw) - len(aligned)
    assert shift == round(offset * 44100)
    np.testing.assert_array_equal(aligned, raw[shift:])
    assert abs(len(load_audio(path)) - len(aligned) * 16000 / 44100) <= 1


def test_errors_name_the_file(tmp_path, more_data):
    import soundfile as sf

    missing = tmp_path / "nope.wav"
    with pytest.raises(MediaError, match="nope.wav"):
        load_audio(missing)

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="garbage.wav"):
        load_audio(garbage)

    silent_video = more_data / "edtalk" / "mouth_source.mp4"
    with pytest.raises(MediaError, match="has no audio track") as e:
        load_audio(silent_video)
    assert "mouth_source.mp4" in str(e.value) and "\n" not in str(e.value)

    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0,), np.float32), 16000)
    assert empty.stat().st_size > 0  # a valid header with no samples
    with pytest.raises(MediaError, match="empty.wav"):
        load_audio(empty)

    with pytest.raises(MediaError, match="folder"):
        load_audio(tmp_path)


def test_image_is_not_audio(tmp_path):
    import cv2

    png = tmp_path / "face.png"
    cv2.imwrite(str(png), np.full((16, 16, 3), 128, np.uint8))
    with pytest.raises(MediaError, match="has no audio track"):
        load_audio(png)


# ------------------------------------------------------------------------------------------------ mel
def test_filterbank_matches_librosa_golden():
    g = np.load(GOLDEN)
    ref = np.zeros((80, 401))
    ref[g["fb_rows"], g["fb_cols"]] = g["fb_vals"]
    fb = mel_filterbank(CFG)
    assert fb.shape == (80, 401)
    assert np.array_equal(fb > 0, ref > 0)  # identical support (triangle edges)
    np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-9)


def test_mel_matches_librosa_golden():
    g = np.load(GOLDEN)
    mel = melspectrogram(golden_signal(), CFG)
    assert mel.dtype == np.float32 and mel.shape == g["mel"].shape == (80, 1 + 4321 // 200)
    np.testing.assert_allclose(mel, g["mel"], atol=1e-4)
    assert (mel == -4).sum() == (g["mel"] == -4).sum() > 0  # the floor is reached in the same places


@pytest.mark.parametrize("n", [1, 199, 200, 201, 799, 800, 16000, 16001])
def test_mel_length(n):
    wav = np.sin(np.arange(n) * 0.1).astype(np.float32) * 0.5
    mel = melspectrogram(wav)
    assert mel.shape == (80, 1 + n // 200)
    assert mel.min() >= -4 and mel.max() <= 4


def test_mel_of_silence_is_floor_and_real_speech_in_range(real_data):
    assert np.all(melspectrogram(np.zeros(3200, np.float32)) == -4)
    wav = load_audio(real_data / "speech" / "RD_Radio31_000.wav")
    mel = melspectrogram(wav)
    assert mel.shape == (80, 1 + len(wav) // 200)
    assert -4 <= mel.min() and mel.max() <= 4 and mel.std() > 0.5


# ------------------------------------------------------------------------------------------------ frame -> mel
def test_window_start_matches_official_training_at_25fps():
    for i in range(0, 400):
        assert mel_window_start(i / 25, 25.0) == math.floor(3.2 * (i - 1)), i  # reference §3, frame t gets t-1


def test_window_start_30fps_and_sync_relation():
    assert mel_window_start(1.0, 30.0) == math.floor((1.0 - 1 / 30) * 80) == 77
    assert sync_window_start(1.0, 30.0) == 80
    for fps in (25.0, 30.0, 30000 / 1001):
        for k in range(200):
            t = k / fps
            assert sync_window_start(t, fps) == mel_window_start(t + 1 / fps, fps)


def test_vfr_timestamps_map_by_time_not_index(real_data):
    """face1.mp4 drops frames (pts gaps): the window follows the frame's time, not index / fps."""
    from hyperlips.media.video import FrameReader

    with FrameReader(real_data / "retalking" / "face1.mp4") as r:
        times = [f.time for f in r.iter_range(0, 20)]
    gaps = [i for i in range(1, 20) if times[i] - times[i - 1] > 1.5 / 30]
    assert gaps, "expected a dropped frame in the first 20 frames"
    i = gaps[0]
    assert mel_window_start(times[i], 30.0) == math.floor((times[i] - 1 / 30) * 80 + 1e-6)
    assert mel_window_start(times[i], 30.0) != mel_window_start(i / 30, 30.0)


def test_mel_windows_edges_are_silence():
    rng = np.random.default_rng(0)
    mel = rng.uniform(-3.9, 3.9, size=(80, 100)).astype(np.float32)
    fps = 25.0
    times = np.array([0.0, 0.5, 99 / 80])
    w = mel_windows(mel, times, fps)
    assert w.shape == (3, 1, 80, 16) and w.dtype == np.float32
    # t = 0: start = floor(-3.2) = -4 -> 4 silent steps, then mel[:, 0:12]
    assert np.all(w[0, 0, :, :4] == -4)
    np.testing.assert_array_equal(w[0, 0, :, 4:], mel[:, 0:12])
    s = mel_window_start(0.5, fps)
    np.testing.assert_array_equal(w[1, 0], mel[:, s : s + 16])
    s = mel_window_start(99 / 80, fps)  # runs past the end: the tail is silence, never wrapped or clamped
    inside = 100 - s
    np.testing.assert_array_equal(w[2, 0, :, :inside], mel[:, s:])
    assert np.all(w[2, 0, :, inside:] == -4)
    # one call for many times equals one call per time
    many = np.linspace(-0.1, 1.4, 37)
    batch = mel_windows(mel, many, fps)
    for k, t in enumerate(many):
        np.testing.assert_array_equal(batch[k], mel_windows(mel, [t], fps)[0])


def test_sync_windows_cover_five_frames():
    mel = np.arange(80 * 64, dtype=np.float32).reshape(80, 64) / 5120 * 7 - 3.5
    w = sync_mel_windows(mel, [0.2])
    s = sync_window_start(0.2, 25.0)
    assert s == 16
    np.testing.assert_array_equal(w[0, 0], mel[:, 16:32])


def _encode(pcm: np.ndarray, sr: int, path, codec: str) -> None:
    """Write stereo float32 ``pcm`` (samples, 2) with PyAV's ``codec`` into ``path`` (container by extension)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=sr, layout="stereo")
        s.codec_context.options = {"strict": "experimental"}  # FFmpeg's own vorbis encoder
        fmt = s.codec_context.codec.audio_formats[0].name
        size = s.codec_context.frame_size or 1024
        for k in range(0, len(pcm), size):
            chunk = pcm[k : k + size]
            if fmt.startswith("s16"):
                data = np.round(np.clip(chunk, -1, 1) * 32767.0).astype(np.int16)
            elif fmt.startswith("s32"):
                data = np.round(np.clip(chunk.astype(np.float64), -1, 1) * 2147483647.0).astype(np.int32)
            else:
                data = chunk.astype(np.float32)
            data = data.T.copy() if fmt.endswith("p") else data.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
            frame.sample_rate, frame.pts = sr, k
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)


@pytest.mark.parametrize("suffix, codec, sr", [("flac", "flac", 44100), ("ogg", "vorbis", 22050),
                                               ("m4a", "aac", 48000), ("mp3", "libmp3lame", 44100)])
def test_every_promised_audio_format_gives_the_same_speech(real_data, tmp_path, suffix, codec, sr):
    """README: "The audio may be wav, mp3, m4a, flac or ogg ... any sample rate or channel count": 2 s of real
    speech written in each (stereo, another rate) decodes to that speech at 16 kHz, within the codec's loss."""
    import av
    from scipy.signal import resample_poly

    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder to make the test file")
    speech = load_audio(real_data / "speech" / "RD_Radio31_000.wav", 16000)[:32000]
    g = np.gcd(sr, 16000)
    up = resample_poly(speech, sr // g, 16000 // g).astype(np.float32)
    path = tmp_path / f"speech.{suffix}"
    _encode(np.stack([up, up], axis=1), sr, path, codec)
    got = load_audio(path, 16000)
    assert abs(len(got) - len(speech)) <= 0.06 * 16000, len(got)  # encoder priming/padding, at most a frame or two
    n = min(len(got), len(speech)) - 800
    best = max(np.corrcoef(got[max(lag, 0) : max(lag, 0) + n], speech[max(-lag, 0) : max(-lag, 0) + n])[0, 1]
               for lag in range(-800, 801, 8))  # up to 50 ms of codec delay
    assert best > 0.95, best


def test_centred_windows_put_the_frame_time_in_the_middle():
    from hyperlips.media.audio import centred_mel_windows, centred_window_starts

    # t = 1.0 s is mel frame 80; a 24-step window runs 68..91, so frame 80 is step 12 (the middle)
    assert centred_window_starts([1.0, 1.004, 1.01], 24).tolist() == [68, 68, 69]
    mel = np.tile(np.arange(200, dtype=np.float32), (80, 1))
    w = centred_mel_windows(mel, [1.0, 0.05], 24)
    assert w.shape == (2, 1, 80, 24)
    assert w[0, 0, 0, 12] == 80 and w[0, 0, 0, 0] == 68
    # before the first mel frame: silence (-4), never wrapped or clamped
    assert (w[1, 0, 0, :8] == -4).all() and w[1, 0, 0, 8] == 0


def test_smoothing_across_frequency_keeps_the_envelope_and_drops_the_pitch_ripple(real_data):
    """The first ``keep`` DCT coefficients over the bins, per frame: a broad envelope passes, a ripple along the bins
    (a voice's harmonics) goes; 0 or >= the bins leaves the mel alone; normalising with it smooths first."""
    from scipy.fft import dct, idct

    from hyperlips.media.audio import load_audio, melspectrogram, normalise_utterance, smooth_across_frequency

    mel = melspectrogram(load_audio(real_data / "hyperlips" / "audio1.wav", 16000))[:, :200]
    coef = dct(mel, type=2, norm="ortho", axis=0)
    coef[12:] = 0
    assert np.allclose(smooth_across_frequency(mel, 12), idct(coef, type=2, norm="ortho", axis=0), atol=1e-4)
    bins = np.arange(80, dtype=np.float32)[:, None]
    envelope = -((bins - 30) / 25) ** 2  # one broad formant-like hump
    ripple = 0.5 * np.cos(np.pi * bins / 2.5)  # fine ripple: a period of 5 bins
    out = smooth_across_frequency(np.repeat(envelope + ripple, 3, axis=1), 12)
    assert np.abs(out - envelope).max() < 0.05 * np.ptp(envelope) and np.abs(out - envelope - ripple).max() > 0.4
    for keep in (0, 80, 100):
        assert np.array_equal(smooth_across_frequency(mel, keep), mel)
    assert np.array_equal(normalise_utterance(mel, 12), normalise_utterance(smooth_across_frequency(mel, 12)))
    assert not np.allclose(normalise_utterance(mel, 12), normalise_utterance(mel), atol=0.05)
    with pytest.raises(ValueError, match="keep"):
        smooth_across_frequency(mel, -1)


def test_speech_problems_name_a_track_shorter_than_a_frame_or_silent(real_data):
    from hyperlips.media.audio import speech_problems

    speech = load_audio(real_data / "hyperlips" / "audio1.wav", 16000)
    assert speech_problems(speech, 16000) == []
    assert speech_problems(speech * 0.005, 16000) == []  # quiet (-46 dBFS peak or so) is still speech
    short = speech_problems(speech[8000:8320], 16000)  # 20 ms of speech
    assert len(short) == 1 and "20.0 ms, less than one frame" in short[0]
    assert speech_problems(speech[8000:8320], 16000, fps=60.0) == []  # one frame at 60 fps lasts 16.7 ms
    silent = speech_problems(np.zeros(16000, np.float32), 16000)
    assert len(silent) == 1 and "silent" in silent[0]
    assert len(speech_problems(np.zeros(10, np.float32), 16000)) == 2


def test_a_compressed_wav_cut_short_is_said(real_data, tmp_path):
    """An ADPCM (or MP3-in-WAV) file cut in half loaded 2 s of its 4 s without a word: its length was taken from the
    data size as if each block held one sample frame; it is in its "fact" chunk."""
    import warnings

    import av

    from hyperlips.media.audio import load_audio

    whole = tmp_path / "adpcm.wav"
    src = av.open(str(real_data / "retalking" / "audio1.wav"))
    out = av.open(str(whole), "w", format="wav")
    stream = out.add_stream("adpcm_ima_wav", rate=16000)
    stream.layout = "mono"
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    for frame in src.decode(audio=0):
        for f in resampler.resample(frame):
            f.pts = None
            for p in stream.encode(f):
                out.mux(p)
    for p in stream.encode():
        out.mux(p)
    out.close()
    src.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # the whole file: nothing to say
        full = load_audio(whole, 16000)
    cut = tmp_path / "adpcm_cut.wav"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.warns(InputWarning, match=r"adpcm_cut.wav: its sound ends at .* though the file says it lasts "
                                          rf"{len(full) / 16000:.2f} s \(cut short"):
        load_audio(cut, 16000)


def test_speech_is_written_into_a_folder_whose_name_is_not_utf8(tmp_path):
    """soundfile encodes a path given as text as UTF-8: `demo -o` into a Latin-1 folder wrote its picture, then
    failed writing its speech (a traceback), and eval's and bench's speech files the same. Written through a file
    Python opens, it is the same 16-bit WAV file, read back as written."""
    import os

    import soundfile as sf

    from hyperlips.media.audio import write_wav

    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")  # Latin-1, as an old archive's names are
    os.mkdir(folder)
    path = os.path.join(os.fsdecode(folder), "speech.wav")
    wav = (0.5 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    write_wav(path, wav, 16000)
    back = load_audio(path, 16000)
    assert np.abs(back - wav).max() < 1e-4
    sf.write(str(tmp_path / "plain.wav"), wav, 16000)  # what sf.write made of a plain path: the same bytes
    assert open(path, "rb").read() == (tmp_path / "plain.wav").read_bytes()
