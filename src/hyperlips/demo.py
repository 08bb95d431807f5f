"""The built-in example: a real face photo shipped with scikit-image and speech synthesised offline with espeak-ng.

Nothing here downloads anything: ``skimage.data.astronaut()`` is bundled in the scikit-image wheel and the
espeak-ng library and voices come inside the ``espeakng-loader`` wheel.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

DEMO_TEXT = (
    "Hello! This is hyperlips. The mouth in this video was generated from the sound of my voice, "
    "frame by frame, and pasted back into the picture."
)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_AUTO = 0
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7


class _Event(ctypes.Structure):
    """espeak-ng's ``espeak_EVENT`` (speak_lib.h): the ``id`` union read as its 8-byte phoneme mnemonic."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


@dataclass(frozen=True)
class Phoneme:
    start: float  # seconds from the start of the audio
    name: str  # espeak-ng's mnemonic, stress marks included ("b", "'a", ",eI", "_" for a pause)


def synthesize_speech(text: str = DEMO_TEXT, voice: str = "en-us", rate_wpm: int = 150) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng; returns (float32 mono samples in [-1, 1], sample rate)."""
    pcm, sample_rate, _ = synthesize_with_phonemes(text, voice, rate_wpm)
    return pcm, sample_rate


def espeak_voices() -> list[str]:
    """The voices (languages) espeak-ng speaks, as ``voice`` names them ("en-us", "fr", "cmn"), lower case."""
    import os

    import espeakng_loader

    root = os.path.join(str(espeakng_loader.get_data_path()), "lang")
    names = set()
    for folder, _, files in os.walk(root):
        for name in files:
            names.add(name.lower())  # a voice file's name, and the languages it speaks ("language en-gb 2")
            try:
                with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                    names.update(line.split()[1].lower() for line in f if line.startswith("language ") and
                                 len(line.split()) > 1)
            except OSError:
                continue
    return sorted(names)


def check_voice(voice: str) -> None:
    """A :class:`UserError` for a voice espeak-ng does not have (it would speak its default voice without a word)."""
    voices = espeak_voices()
    language = voice.split("+")[0].lower()
    if language not in voices:
        near = [v for v in voices if v.split("-")[0] == language.split("-")[0]]
        raise UserError(f"espeak-ng has no voice {voice!r}" + (f" (near it: {', '.join(near[:8])})" if near else "")
                        + f"; it has {len(voices)}, e.g. en-us, fr, de, es, cmn, ja")


def synthesize_with_phonemes(text: str = DEMO_TEXT, voice: str = "en-us", rate_wpm: int = 150
                             ) -> tuple[np.ndarray, int, list[Phoneme]]:
    """Speak ``text`` with espeak-ng in ``voice`` (a language of :func:`espeak_voices`, optionally with a variant:
    "en-us+f3"); returns (float32 mono samples in [-1, 1], sample rate, the phonemes in order with their start times,
    as the synthesiser placed them: its mnemonics, ``media.phone_symbols``)."""
    try:
        import espeakng_loader
    except ImportError as e:  # pragma: no cover - installed with the package
        raise UserError("the demo needs espeakng-loader: pip install espeakng-loader") from e
    check_voice(voice)
    lib = ctypes.cdll.LoadLibrary(str(espeakng_loader.get_library_path()))
    data = str(espeakng_loader.get_data_path()).encode()
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_PHONEME_EVENTS)
    if sample_rate <= 0:
        raise UserError("espeak-ng failed to initialise (its voice data could not be read)")
    lib.espeak_SetVoiceByName(voice.encode())
    lib.espeak_SetParameter(1, rate_wpm, 0)  # espeakRATE = 1
    chunks: list[np.ndarray] = []
    phonemes: list[Phoneme] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                     ctypes.POINTER(_Event))

    def _collect(wav, n, events):
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        k = 0
        while events and events[k].type != _EVENT_LIST_TERMINATED:
            e = events[k]
            if e.type == _EVENT_PHONEME:
                phonemes.append(Phoneme(e.audio_position / 1000.0, e.id.decode("ascii", "replace")))
            k += 1
        return 0

    callback = callback_type(_collect)  # keep a reference while synthesising
    lib.espeak_SetSynthCallback(callback)
    encoded = text.encode()
    lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, _ESPEAK_CHARS_AUTO, None, None)
    lib.espeak_Synchronize()
    if not chunks:
        raise UserError("espeak-ng produced no audio")
    pcm = np.concatenate(chunks).astype(np.float32) / 32768.0
    return pcm, int(sample_rate), phonemes


def demo_face() -> np.ndarray:
    """The astronaut photo (Eileen Collins, public domain) as a BGR uint8 image, 512x512."""
    from skimage import data

    rgb = data.astronaut()
    return np.ascontiguousarray(rgb[:, :, ::-1])


def make_demo_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """Write ``demo_face.png``, ``demo_speech.wav`` and ``demo_phonemes.txt`` (when the synthesiser spoke each
    phoneme, ARPAbet: ``media.phone_marks``) into ``folder``; returns their paths."""
    from .media.audio import write_wav

    from .media.phone_marks import to_marks, write_marks
    from .media.video import write_image

    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / "demo_face.png"
    speech_path = folder / "demo_speech.wav"
    phonemes_path = folder / "demo_phonemes.txt"
    if not write_image(image_path, demo_face()):
        raise UserError(f"could not write {image_path}")
    wav, sr, phonemes = synthesize_with_phonemes()
    write_wav(speech_path, wav, sr)
    write_marks(phonemes_path, to_marks([(p.start, p.name) for p in phonemes], len(wav) / sr, "espeak"))
    return image_path, speech_path, phonemes_path
