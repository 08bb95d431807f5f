"""Phoneme timings given with the speech: what a speech synthesiser or a forced aligner says was spoken, and when.

A speech synthesiser knows every phoneme it speaks and when (espeak-ng's phoneme events, a cloud voice's speech
marks); a forced aligner finds them in a recording from its transcript. Given with the speech, they say more than any
reading of the sound: ``sync --phonemes FILE`` closes the lips on every /p b m/ (:func:`closure`) and gives a network
that reads phones these instead of the recogniser's (``media.phones``).

Files (:func:`read_marks`), times in seconds from the start of the speech:

- text, one phoneme a line: ``START PHONE`` or ``START END PHONE`` (spaces or tabs; ``#`` starts a comment);
- JSON: a list of ``{"start": s, "end": s, "phone": "B"}`` (``end`` optional; ``time`` and ``phoneme`` are read too),
  or ``{"alphabet": ..., "phonemes": [...]}``, or the Montreal Forced Aligner's JSON (its "phones" tier);
- a Praat TextGrid (long text format, the Montreal Forced Aligner's default): its "phones" tier.

Phones are ARPAbet (CMU dictionary and Montreal Forced Aligner style, stress digits allowed: ``AH0``), espeak-ng
mnemonics (``'a``, ``tS``, ``@``) or IPA (``æ``, ``tʃ``, ``ə``); the alphabet is told apart per file (``alphabet``
to choose it). A phone without an end lasts until the next one starts (the last, until the speech ends).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError
from .phones import FRAME_RATE, PHONES, SILENCE

ALPHABETS = ("auto", "arpabet", "espeak", "ipa")
BILABIALS = frozenset({"P", "B", "M"})
CLOSE_RAMP = 0.04  # seconds over which the lips close before a bilabial and open after it
_SILENT = frozenset({"", "SIL", "SP", "SPN", "PAU", "_"})
_ARPABET = frozenset(p for p in PHONES if not p.startswith("+")) - {"SIL"}

# espeak-ng's English mnemonics (stress marks stripped) -> ARPAbet
_ESPEAK = {
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "f": "F", "v": "V", "T": "TH", "D": "DH", "s": "S",
    "z": "Z", "S": "SH", "Z": "ZH", "h": "HH", "m": "M", "n": "N", "N": "NG", "l": "L", "r": "R", "w": "W", "j": "Y",
    "tS": "CH", "dZ": "JH", "t#": "T", "d#": "D", "?": "T", "x": "K", "n-": "N", "m-": "M", "l-": "L", "@L": "L",
    "r-": "R", "a": "AE", "a#": "AE", "aa": "AA", "A:": "AA", "A@": "AA", "0": "AA", "O": "AO", "O:": "AO",
    "O@": "AO", "o@": "AO", "V": "AH", "@": "AH", "@2": "AH", "@5": "AH", "3": "ER", "3:": "ER", "VR": "ER",
    "I": "IH", "I2": "IH", "I#": "IH", "i": "IY", "i:": "IY", "i@": "IY", "i@3": "IY", "IR": "IY", "E": "EH",
    "e": "EH", "e@": "EH", "eI": "EY", "aI": "AY", "aI@": "AY", "aI3": "AY", "aU": "AW", "aU@": "AW", "OI": "OY",
    "oU": "OW", "oU#": "OW", "U": "UH", "U@": "UH", "u:": "UW", "u@": "UW",
}
# IPA (stress and length marks stripped) -> ARPAbet
_IPA = {
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "ɡ": "G", "f": "F", "v": "V", "θ": "TH", "ð": "DH",
    "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "m": "M", "n": "N", "ŋ": "NG", "l": "L", "ɫ": "L",
    "ɹ": "R", "r": "R", "ɾ": "T", "ʔ": "T", "w": "W", "j": "Y", "tʃ": "CH", "dʒ": "JH", "i": "IY", "ɪ": "IH",
    "ᵻ": "IH", "e": "EY", "eɪ": "EY", "ɛ": "EH", "æ": "AE", "a": "AA", "aɪ": "AY", "aʊ": "AW", "ɑ": "AA",
    "ɒ": "AA", "ɔ": "AO", "ɔɪ": "OY", "o": "OW", "oʊ": "OW", "əʊ": "OW", "ʊ": "UH", "u": "UW", "ʌ": "AH",
    "ə": "AH", "ɐ": "AH", "ɚ": "ER", "ɜ": "ER", "ɝ": "ER", "m̩": "M", "n̩": "N", "l̩": "L",
}
_ESPEAK_STRESS = "',%=_!"
_IPA_MARKS = "ˈˌːˑ.‿"


@dataclass(frozen=True)
class PhoneMark:
    start: float  # seconds from the start of the speech
    end: float
    phone: str  # an ARPAbet phone of media.phones.PHONES, stress digits dropped ("SIL" for a pause)


def _arpabet(symbol: str) -> str | None:
    bare = symbol.rstrip("012").upper()
    if bare in _SILENT:
        return "SIL"
    return bare if bare in _ARPABET and symbol.rstrip("012") == bare else None


def _espeak(symbol: str) -> str | None:
    bare = symbol.strip(_ESPEAK_STRESS)
    if symbol.startswith("_") or not any(c.isalnum() or c == "@" for c in bare):  # pauses ("_", "_:") and marks
        return "SIL"
    if bare in _ESPEAK:
        return _ESPEAK[bare]
    for n in range(len(bare) - 1, 0, -1):  # a variant the table lacks ("t2", "@r"): its longest known start
        if bare[:n] in _ESPEAK:
            return _ESPEAK[bare[:n]]
    return None


def _ipa(symbol: str) -> str | None:
    bare = "".join(c for c in symbol if c not in _IPA_MARKS)
    if not bare:
        return "SIL"
    if bare in _IPA:
        return _IPA[bare]
    return _IPA.get(bare[:2]) or _IPA.get(bare[:1])


_READERS = {"arpabet": _arpabet, "espeak": _espeak, "ipa": _ipa}


def which_alphabet(symbols: Iterable[str]) -> str:
    """The alphabet of a file's phone symbols: the one that knows the most of them, ARPAbet first, then espeak-ng's
    mnemonics, then IPA, on a tie (an upper-case ``S`` is ARPAbet's /s/ unless lower-case espeak-ng symbols are
    around it)."""
    symbols = [s for s in symbols if s.upper() not in _SILENT]
    known = {name: sum(read(s) is not None for s in symbols) for name, read in _READERS.items()}
    return max(_READERS, key=lambda name: known[name])  # max keeps the first of equals


def to_marks(entries: Sequence, duration: float | None = None, alphabet: str = "auto") -> list[PhoneMark]:
    """Phoneme timings as :class:`PhoneMark` marks, in order: ``entries`` of ``(start, phone)`` or ``(start, end,
    phone)`` (seconds; a phone without an end lasts until the next starts, the last until ``duration``, or 0.1 s
    without one). A :class:`UserError` for times that are not numbers, negative or out of order, an end before its
    start, or phones the alphabet does not know (all of them are named)."""
    if alphabet not in ALPHABETS:
        raise UserError(f"phoneme alphabet must be one of {', '.join(ALPHABETS)} (got {alphabet!r})")
    rows = []
    for k, e in enumerate(entries):
        if isinstance(e, (str, bytes)) or not hasattr(e, "__len__") or len(e) not in (2, 3):
            raise UserError(f"phoneme {k + 1}: expected (start, phone) or (start, end, phone), got {e!r}")
        try:
            times = [float(x) for x in e[:-1]]
        except (TypeError, ValueError):
            raise UserError(f"phoneme {k + 1}: times must be numbers of seconds, got {list(e[:-1])!r}") from None
        if not all(math.isfinite(t) and t >= 0 for t in times):
            raise UserError(f"phoneme {k + 1}: times must be finite and not negative, got {times}")
        if len(times) == 2 and times[1] < times[0]:
            raise UserError(f"phoneme {k + 1}: it ends ({times[1]} s) before it starts ({times[0]} s)")
        rows.append((times[0], times[1] if len(times) == 2 else None, str(e[-1]).strip()))
    for k in range(1, len(rows)):
        if rows[k][0] < rows[k - 1][0]:
            raise UserError(f"phoneme {k + 1} starts at {rows[k][0]} s, before phoneme {k} ({rows[k - 1][0]} s): "
                            f"phonemes must be in time order")
    if alphabet == "auto":
        alphabet = which_alphabet(r[2] for r in rows)
    read = _READERS[alphabet]
    phones = [read(r[2]) for r in rows]
    unknown = sorted({r[2] for r, p in zip(rows, phones) if p is None})
    if unknown:
        raise UserError(f"phonemes not in the {alphabet} alphabet: {', '.join(map(repr, unknown))}")
    out = []
    for k, ((start, end, _), phone) in enumerate(zip(rows, phones)):
        if end is None:
            end = rows[k + 1][0] if k + 1 < len(rows) else (duration if duration is not None else start + 0.1)
        out.append(PhoneMark(start, max(float(end), start), phone))
    return out


def read_marks(path: str | os.PathLike, duration: float | None = None, alphabet: str = "auto") -> list[PhoneMark]:
    """Phoneme timings from a text or JSON file (the module's formats); a :class:`UserError` naming the file and
    line for anything it cannot read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as some editors write, is not text
    except FileNotFoundError:
        raise UserError(f"phoneme file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the phoneme file {path}: {e}") from None
    try:
        return marks_from_text(text, duration, alphabet)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def marks_from_text(text: str, duration: float | None = None, alphabet: str = "auto") -> list[PhoneMark]:
    """Phoneme timings from the text of a file in any of the module's formats (a TextGrid, JSON, or lines)."""
    text = text.lstrip("\ufeff")
    if text.lstrip().startswith("File type") and "TextGrid" in text[:200]:
        return to_marks(_textgrid_entries(text), duration, alphabet)
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"not valid JSON ({e})") from None
        return marks_from_json(data, duration, alphabet)
    entries, alphabet = _text_entries(text, alphabet)
    if not entries:
        raise UserError("it lists no phonemes")
    return to_marks(entries, duration, alphabet)


def marks_from_json(data, duration: float | None = None, alphabet: str = "auto") -> list[PhoneMark]:
    """Phoneme timings from parsed JSON (the module's JSON form: a list of objects, or an object with
    ``alphabet`` and ``phonemes``); a :class:`UserError` for anything else."""
    entries, alphabet = _json_entries(data, alphabet)
    if not entries:
        raise UserError("it lists no phonemes")
    return to_marks(entries, duration, alphabet)


def _json_entries(data, alphabet: str) -> tuple[list, str]:
    if isinstance(data, dict) and isinstance(data.get("tiers"), dict):  # Montreal Forced Aligner's JSON
        tier = data["tiers"].get("phones")
        if not isinstance(tier, dict) or not isinstance(tier.get("entries"), list):
            raise UserError('an aligner\'s JSON without a "phones" tier of entries')
        rows = tier["entries"]
        if not all(isinstance(e, list) and len(e) == 3 for e in rows):
            raise UserError('the "phones" tier\'s entries must be [start, end, phone]')
        return [(a, b, p or "sil") for a, b, p in rows], alphabet
    if isinstance(data, dict):
        if alphabet == "auto":
            alphabet = str(data.get("alphabet", "auto")).lower()
        data = data.get("phonemes")
    if not isinstance(data, list):
        raise UserError('JSON phonemes must be a list of {"start": s, "phone": p} objects')
    entries = []
    for k, item in enumerate(data):
        if not isinstance(item, dict):
            raise UserError(f"phoneme {k + 1}: expected an object with start and phone, got {item!r}")
        start = item.get("start", item.get("time"))
        phone = item.get("phone", item.get("phoneme"))
        if start is None or phone is None:
            raise UserError(f"phoneme {k + 1}: needs a start (or time) and a phone (or phoneme): {item!r}")
        entries.append((start, item["end"], phone) if item.get("end") is not None else (start, phone))
    return entries, alphabet


def _textgrid_entries(text: str) -> list:
    """The intervals of a Praat TextGrid's (long text format, as the Montreal Forced Aligner writes it) phone
    tier: the tier named "phones" (or the only tier), empty intervals read as pauses."""
    tiers = []
    for item in re.split(r"\n\s*item \[\d+\]:", text)[1:]:
        name = re.search(r'name = "(.*)"', item)
        cells = re.findall(r'xmin = ([-\d.eE+]+)\s*\n\s*xmax = ([-\d.eE+]+)\s*\n\s*text = "(.*)"', item)
        tiers.append((name.group(1) if name else "", cells))
    phones = [cells for name, cells in tiers if name.strip().lower() == "phones"]
    if not phones and len(tiers) == 1:
        phones = [tiers[0][1]]
    if not phones:
        names = ", ".join(repr(n) for n, _ in tiers) or "none"
        raise UserError(f'a TextGrid needs a tier named "phones" (its tiers: {names})')
    return [(a, b, t.strip() or "sil") for a, b, t in phones[0]]


def _text_entries(text: str, alphabet: str) -> tuple[list, str]:
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        body, _, comment = line.partition("#")
        key, _, value = comment.partition(":")
        if key.strip().lower() == "alphabet" and alphabet == "auto":
            alphabet = value.strip().lower()
        parts = body.split()
        if not parts:
            continue
        if len(parts) not in (2, 3):
            raise UserError(f"line {n}: expected START PHONE or START END PHONE, got {line.strip()!r}")
        entries.append(tuple(parts))
    return entries, alphabet


def phone_ids(marks: Sequence[PhoneMark], seconds: float) -> np.ndarray:
    """The marks as ``media.phones.read_phones`` gives a recording's phones: the phone of every 10 ms frame, frame
    ``k`` taking the phone spoken at ``k / 100`` s (silence where none is)."""
    n = max(0, int(math.ceil(seconds * FRAME_RATE - 1e-9)))
    ids = np.full(n, SILENCE, dtype=np.int8)
    t = np.arange(n) / FRAME_RATE
    for m in marks:
        ids[(t >= m.start) & (t < m.end)] = PHONES.index(m.phone)
    return ids


def closure(marks: Sequence[PhoneMark], times, ramp: float = CLOSE_RAMP) -> np.ndarray:
    """How closed the lips are at each of ``times`` (seconds) by the marks: 1 through a /p b m/, falling to 0 over
    ``ramp`` seconds before and after it; 0 away from them. (n,) float32."""
    t = np.asarray(times, np.float64).reshape(-1)
    out = np.zeros(len(t))
    for m in marks:
        if m.phone in BILABIALS:
            before = (t - (m.start - ramp)) / ramp if ramp > 0 else (t >= m.start).astype(float)
            after = ((m.end + ramp) - t) / ramp if ramp > 0 else (t <= m.end).astype(float)
            out = np.maximum(out, np.clip(np.minimum(before, after), 0.0, 1.0))
    return out.astype(np.float32)


def write_marks(path: str | os.PathLike, marks: Sequence[PhoneMark]) -> None:
    """Write ``marks`` as a text phoneme file (``START END PHONE``, ARPAbet) that :func:`read_marks` reads back."""
    lines = ["# start end phone (seconds; ARPAbet)"] + [f"{m.start:.4f}\t{m.end:.4f}\t{m.phone}" for m in marks]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
