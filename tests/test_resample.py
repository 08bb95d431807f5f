"""media.resample: scipy.signal.resample_poly's numbers without importing scipy.signal (which takes ~1 s)."""
import subprocess
import sys

import numpy as np
import pytest

from hyperlips.media.resample import resample_poly

RATIOS = [(3, 1), (1, 3), (160, 441), (441, 160), (320, 147), (2, 3), (6, 1), (48000, 22050), (7, 7)]


@pytest.mark.parametrize("up, down", RATIOS)
@pytest.mark.parametrize("n", [1, 2, 5, 997, 20011])
def test_matches_scipy(up, down, n):
    from scipy.signal import resample_poly as scipy_resample

    x = np.random.default_rng(n + up).standard_normal(n).astype(np.float32) * 0.3
    ours, theirs = resample_poly(x, up, down), scipy_resample(x, up, down)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=0)


def test_real_speech_to_the_output_rate(real_data):
    """A real speech file to the 48 kHz of the output's audio track and to the 16 kHz of the mel, against scipy."""
    import soundfile as sf
    from scipy.signal import resample_poly as scipy_resample

    speech, sr = sf.read(str(real_data / "hyperlips" / "audio1.wav"), dtype="float32")
    assert sr not in (16000, 48000)
    for rate in (48000, 16000):
        np.testing.assert_allclose(resample_poly(speech, rate, sr), scipy_resample(speech, rate, sr), atol=2e-6, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="1-D"):
        resample_poly(np.zeros((2, 3)), 3, 1)
    for up, down in [(0, 1), (1, 0), (-3, 1), (1.5, 1)]:
        with pytest.raises(ValueError, match="positive integers"):
            resample_poly(np.zeros(10), up, down)


def test_loading_and_writing_audio_do_not_import_scipy_signal(tmp_path):
    """The point of the module: `sync` on 16 kHz speech resamples it to 48 kHz without the second of importing
    scipy.signal."""
    code = f"""
import sys, numpy as np, soundfile as sf
from hyperlips.media.audio import load_audio
from hyperlips.media.writer import VideoWriter
sf.write({str(tmp_path / 'a.wav')!r}, np.zeros(16000, np.float32), 16000)
a = load_audio({str(tmp_path / 'a.wav')!r}, 48000)
w = VideoWriter({str(tmp_path / 'o.mp4')!r}, 64, 64, 25, audio=np.zeros(16000, np.float32), sample_rate=16000)
w.write(np.zeros((64, 64, 3), np.uint8)); w.close()
assert len(a) == 48000, len(a)
print("scipy.signal" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 24000, 8000, 16000])
def test_a_signal_resampled_in_chunks_is_the_whole_signal_resampled(rate):
    """`live` streams at a microphone's or a synthesiser's rate: chunks of any size, one sample included, resampled
    as they come are the whole signal's samples (to float32 rounding) and as many, the end read as zeros."""
    from hyperlips.media.resample import StreamResampler, resample_poly

    x = np.random.default_rng(rate).standard_normal(rate // 3).astype(np.float32)
    whole = resample_poly(x, 16000, rate)
    rng = np.random.default_rng(1)
    for sizes in ([1] * 200 + [0, 7], list(rng.integers(0, 3000, 50)), [len(x)]):
        r, out, i = StreamResampler(16000, rate), [], 0
        for n in sizes * 2000:
            if i >= len(x):
                break
            out.append(r.push(x[i: i + n]))
            i += n
        out += [r.push(x[i:]), r.finish()]
        got = np.concatenate(out)
        assert len(got) == len(whole) and np.abs(got - whole).max() < 1e-5
