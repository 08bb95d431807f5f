"""Phones of speech: which sound is being made, read by a recogniser trained on many voices.

HyperLips-Lite's audio encoder learns the mouth from about 50 voices; on a voice it never heard, the log-mel alone
carries that voice as much as what it says. A phone recogniser trained on hundreds of speakers says what is said
whatever the voice, so a Lite network with ``phones`` reads both: the log-mel and, per mel frame, a one-hot vector
of the phone being spoken (``docs/lite.md``). The recogniser is PocketSphinx's English acoustic model with its
phone-loop search (``allphone``), shipped inside the ``pocketsphinx`` wheel: nothing is downloaded. It runs at
3-6% of real time on one core. Other languages are read as the nearest English phones, which still says
where the lips close and the mouth opens.

- :data:`PHONES`: the recogniser's 42 phones (39 English phones, silence and two noise classes), in a fixed order
  that a network's input channels follow.
- :func:`read_phones`: the phone of every 10 ms frame of a whole recording (one utterance: the most accurate).
- :func:`phone_track`: those phones as one-hot rows at the mel's frame rate; :func:`below_mel` puts them below it.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError

PHONES: tuple[str, ...] = (
    "+NSN+", "+SPN+", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
    "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "SIL", "T", "TH", "UH", "UW", "V",
    "W", "Y", "Z", "ZH",
)
N_PHONES = len(PHONES)
SILENCE = PHONES.index("SIL")
SAMPLE_RATE = 16000  # the acoustic model's
FRAME_RATE = 100  # the recogniser's frames per second (10 ms)
INSTALL_HINT = "pip install pocketsphinx"
_INDEX = {p: i for i, p in enumerate(PHONES)}


def available() -> bool:
    """Whether the phone recogniser can be loaded (the ``pocketsphinx`` package is installed)."""
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return False
    return True


def _new_decoder():
    """A fresh recogniser (0.1 s to load). One per recording: a decoder carries its cepstral-mean estimate from
    one utterance to the next, so reusing it would make a recording's phones depend on what it read before."""
    try:
        from pocketsphinx import Decoder, get_model_path
    except ImportError as e:
        raise UserError(f"reading phones needs the pocketsphinx package ({INSTALL_HINT}): {e}") from None
    # allphone: a phone loop weighted by a phone trigram, no words; the beams of its documentation
    return Decoder(allphone=get_model_path("en-us/en-us-phone.lm.bin"), lw=2.0, pip=0.3, beam=1e-200, pbeam=1e-20,
                   loglevel="FATAL")


def read_phones(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The phone (an index into :data:`PHONES`) of every 10 ms frame of mono speech ``wav`` (float in [-1, 1]) at
    ``sample_rate`` (16 kHz: the acoustic model's), decoded as one utterance: (ceil(seconds * 100),) int8, frame
    ``k`` covering ``[k, k + 2.5) * 10 ms``; silence where the recogniser found none. The same speech always gives
    the same phones."""
    if int(sample_rate) != SAMPLE_RATE:
        raise ValueError(f"read_phones: speech must be at {SAMPLE_RATE} Hz, got {sample_rate}")
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    n = -(-len(wav) // (SAMPLE_RATE // FRAME_RATE))
    ids = np.full(n, SILENCE, dtype=np.int8)
    if n == 0:
        return ids
    pcm = np.clip(np.nan_to_num(wav), -1.0, 1.0) * 32767.0
    # a fixed +-1 step of noise: digital silence (exact zeros) otherwise reads as a hiss phone (its log energy is
    # undefined); the same noise every time, so the same speech keeps its phones
    pcm = np.clip(np.round(pcm) + np.random.default_rng(0).integers(-1, 2, len(pcm)), -32768, 32767).astype(np.int16)
    d = _new_decoder()
    d.start_utt()
    d.process_raw(pcm.tobytes(), full_utt=True)
    d.end_utt()
    # d.seg() is None when the recogniser found no segment at all (speech shorter than about 30 ms)
    segments = [(s.word, s.start_frame, s.end_frame) for s in (d.seg() or ())]
    for phone, start, end in segments:
        ids[max(start, 0):min(end + 1, n)] = _INDEX.get(phone, SILENCE)
    return ids


def phone_track(ids: np.ndarray, n_frames: int, frame_rate: float = 80.0) -> np.ndarray:
    """Phones ``ids`` (10 ms frames, :func:`read_phones`) as one-hot rows (N_PHONES, n_frames) float32 at
    ``frame_rate`` frames per second (the mel's: 80), frame ``j`` taking the phone at ``j / frame_rate`` s; beyond
    the recording, silence."""
    padded = np.append(np.asarray(ids, dtype=np.int64).reshape(-1), SILENCE)  # the last entry: past the end
    at = np.floor(np.arange(int(n_frames)) * (FRAME_RATE / float(frame_rate)) + 1e-6).astype(np.int64)
    out = np.zeros((N_PHONES, int(n_frames)), dtype=np.float32)
    out[padded[np.minimum(at, len(padded) - 1)], np.arange(int(n_frames))] = 1.0
    return out


def below_mel(mel: np.ndarray, ids: np.ndarray | None, frame_rate: float = 80.0) -> np.ndarray:
    """``mel`` (n_mels, T) with the one-hot rows of phones ``ids`` (:func:`read_phones`) below it, as a network
    that reads phones takes it; all-zero rows for ``ids`` None (the sound alone)."""
    mel = np.asarray(mel, dtype=np.float32)
    rows = np.zeros((N_PHONES, mel.shape[1]), np.float32) if ids is None else phone_track(ids, mel.shape[1], frame_rate)
    return np.concatenate([mel, rows])
