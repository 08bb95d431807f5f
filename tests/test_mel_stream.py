"""``media.mel_stream.MelStream``: the mel spectrogram of speech arriving in pieces is the offline one, frame for
frame, each frame as soon as its samples are in."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hyperlips.media.audio import load_audio, melspectrogram
from hyperlips.media.mel_stream import MelStream


@pytest.fixture(scope="module")
def speech(real_data):
    return load_audio(real_data / "retalking" / "audio1.wav")[: 3 * 16000]


@pytest.mark.parametrize("chunk", [1, 320, 640, 777, 1600, 100_000])
def test_chunks_of_any_size_give_the_offline_frames(speech, chunk):
    want = melspectrogram(speech)
    ms = MelStream()
    for i in range(0, len(speech), chunk):
        ms.push(speech[i : i + chunk])
    ms.finish()
    got = ms.frames(0, ms.n_frames)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_a_frame_is_ready_once_its_samples_are_in(speech):
    """Frame k spans samples up to k * 200 + 400: it exists exactly when those have arrived, and does not change."""
    want = melspectrogram(speech)
    ms = MelStream()
    ms.push(speech[:399])
    assert ms.n_frames == 0
    ms.push(speech[399:400])
    assert ms.n_frames == 1
    ms.push(speech[400:4400])
    assert ms.n_frames == 21  # frames 0..20: frame 20 ends at sample 4400
    np.testing.assert_allclose(ms.frames(0, 21), want[:, :21], atol=1e-5)


def test_old_frames_are_dropped_and_waiters_wake(speech):
    ms = MelStream()
    woke = []
    t = threading.Thread(target=lambda: woke.append(ms.wait_for(30, timeout=20)))
    t.start()
    ms.push(speech[:8000])  # 39 frames
    t.join(timeout=20)
    assert woke == [True]
    ms.drop_before(10)
    with pytest.raises(IndexError):
        ms.frames(5, 12)
    assert ms.frames(10, 12).shape == (80, 2)
    ms.finish()
    assert not ms.wait_for(10_000, timeout=1)  # finished: no more frames will come
    with pytest.raises(RuntimeError):
        ms.push(speech[:10])
