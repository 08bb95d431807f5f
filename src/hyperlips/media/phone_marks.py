"""Phoneme timings given with the speech: what a speech synthesiser or a forced aligner says was spoken, and when.

A speech synthesiser knows every phoneme it speaks and when (espeak-ng's phoneme events, a cloud voice's speech
marks); a forced aligner finds them in a recording from its transcript. Given with the speech, they say more than any
reading of the sound: ``sync --phonemes FILE`` closes the lips on every /p b m/ (:func:`closure`) and gives a network
that reads phones these instead of the recogniser's (``media.phones``).

Files (:func:`read_marks`), times in seconds from the start of the speech:

- text, one phoneme a line: ``START PHONE`` or ``START END PHONE`` (spaces or tabs; ``#`` starts a comment), as
  Audacity's label files have them too; CSV (``start,end,phone``);
- JSON: a list of ``{"start": s, "end": s, "phone": "B"}`` (``end`` optional; ``time`` and ``phoneme`` are read too)
  or of ``[start, end, phone]``, or ``{"alphabet": ..., "phonemes": [...]}``, or the Montreal Forced Aligner's JSON
  (its "phones" tier);
- a Praat TextGrid (long or short text format; UTF-8, UTF-16 or Latin-1): its phone tier.

Phones are ARPAbet, espeak-ng mnemonics or IPA, of any language (``media.phone_symbols``); the alphabet is told
apart per file (``alphabet`` to choose it). A phone without an end (or a point label's, its end at its start) lasts
until the next one starts (the last, until the speech ends).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import UserError, near_name_hint, warn
from .phone_symbols import READERS, SILENT, looks_like_words
from .phones import FRAME_RATE, PHONES, SILENCE

ALPHABETS = ("auto", "arpabet", "espeak", "ipa")
BILABIALS = frozenset({"P", "B", "M"})
CLOSE_RAMP = 0.04  # seconds over which the lips close before a bilabial and open after it


@dataclass(frozen=True)
class PhoneMark:
    start: float  # seconds from the start of the speech
    end: float
    phone: str  # an ARPAbet phone of media.phones.PHONES, stress digits dropped ("SIL" for a pause)


def which_alphabet(symbols: Iterable[str]) -> str:
    """The alphabet of a file's phone symbols: the one that knows the most of them, ARPAbet first, then espeak-ng's
    mnemonics, then IPA, on a tie (an upper-case ``S`` is ARPAbet's /s/ unless lower-case espeak-ng symbols are
    around it)."""
    symbols = [s for s in symbols if s.upper() not in SILENT]
    known = {name: sum(read(s) is not None for s in symbols) for name, read in READERS.items()}
    return max(READERS, key=lambda name: known[name])  # max keeps the first of equals


def refuse_other_units(starts: Sequence[float]) -> None:
    """Phonemes starting 5 s or more apart (the median) are no speech: their times are milliseconds or samples
    (TIMIT's), refused with a :class:`UserError`."""
    steps = np.diff(np.asarray(starts, np.float64))
    typical = float(np.median(steps)) if len(steps) else 0.0
    if typical >= 5:
        raise UserError(f"the phonemes start {typical:g} apart (the median): they look like milliseconds or samples; "
                        "give seconds")


def to_marks(entries: Sequence, duration: float | None = None, alphabet: str = "auto",
             where: Sequence[str] | None = None) -> list[PhoneMark]:
    """Phoneme timings as :class:`PhoneMark` marks, in order: ``entries`` of ``(start, phone)`` or ``(start, end,
    phone)`` (seconds; a phone without an end, or with an end equal to its start as a point label has, lasts until
    the next starts, the last until ``duration``, or 0.1 s without one). A :class:`UserError` for times that are not
    numbers, negative or out of order, an end before its start, phones the alphabet does not know (all of them are
    named), or times that are milliseconds; a warning where intervals overlap. ``where``: how errors name each entry
    (``"line 4"``; default ``"phoneme K"``)."""
    if alphabet not in ALPHABETS:
        raise UserError(f"phoneme alphabet must be one of {', '.join(ALPHABETS)} (got {alphabet!r})")
    entries = list(entries)
    name = (lambda k: where[k]) if where is not None else (lambda k: f"phoneme {k + 1}")
    rows = []
    for k, e in enumerate(entries):
        if isinstance(e, (str, bytes, Mapping)) or not hasattr(e, "__len__") or len(e) not in (2, 3):
            raise UserError(f"{name(k)}: expected (start, phone) or (start, end, phone), got {e!r}")
        try:
            times = [float(x) for x in e[:-1]]
        except (TypeError, ValueError):
            raise UserError(f"{name(k)}: times must be numbers of seconds, got {list(e[:-1])!r}") from None
        if not all(math.isfinite(t) and t >= 0 for t in times):
            raise UserError(f"{name(k)}: times must be finite and not negative, got {times}")
        if len(times) == 2 and times[1] < times[0]:
            raise UserError(f"{name(k)}: it ends ({times[1]} s) before it starts ({times[0]} s)")
        end = times[1] if len(times) == 2 and times[1] > times[0] else None  # a point label: no end
        rows.append((times[0], end, str(e[-1]).strip()))
    for k in range(1, len(rows)):
        if rows[k][0] < rows[k - 1][0]:
            raise UserError(f"{name(k)} starts at {rows[k][0]} s, before {name(k - 1)} ({rows[k - 1][0]} s): "
                            f"phonemes must be in time order")
    if alphabet == "auto":
        alphabet = which_alphabet(r[2] for r in rows)
    read = READERS[alphabet]
    phones = [read(r[2]) for r in rows]
    unknown = sorted({r[2] for r, p in zip(rows, phones) if p is None})
    if unknown:
        if looks_like_words(r[2] for r in rows):
            raise UserError(f"these look like words, not phones ({', '.join(map(repr, unknown[:5]))}): give the "
                            "aligner's phone tier, not its word tier")
        raise UserError(f"phonemes not in the {alphabet} alphabet: {', '.join(map(repr, unknown[:20]))}"
                        f"{' ...' if len(unknown) > 20 else ''} (the {alphabet} alphabet knows the most of the file's "
                        "phones; '# alphabet: arpabet|espeak|ipa' in a text file, or \"alphabet\" in JSON, chooses "
                        "another)")
    last = max((r[1] if r[1] is not None else r[0]) for r in rows) if rows else 0.0
    steps = np.diff([r[0] for r in rows])
    typical = float(np.median(steps)) if len(steps) else 0.0  # a phone lasts 0.03-0.3 s; in milliseconds, 30-300
    if (duration is not None and duration > 0 and last > 10 * duration + 1 and last / 1000 <= duration + 0.5
            and typical >= 5):
        raise UserError(f"the times run to {last:g} for {duration:.2f} s of speech: they look like milliseconds; "
                        "give seconds")
    if duration is None:  # a stream's (its length unknown yet)
        refuse_other_units([r[0] for r in rows])
    out = []
    for k, ((start, end, _), phone) in enumerate(zip(rows, phones)):
        if end is None:
            end = rows[k + 1][0] if k + 1 < len(rows) else (duration if duration is not None else start + 0.1)
        out.append(PhoneMark(start, max(float(end), start), phone))
    overlaps = [k for k in range(1, len(out)) if out[k].start < out[k - 1].end - 1e-6]
    if overlaps:
        k = overlaps[0]
        warn(f"{len(overlaps)} phoneme(s) start before the one before them ends (first: {name(k)} at "
             f"{out[k].start:g} s, inside {out[k - 1].start:g}-{out[k - 1].end:g} s); where they overlap, the later "
             "one is read")
    return out


def _decoded(data: bytes) -> str:
    """A phoneme file's text: UTF-8 (with or without a byte-order mark), UTF-16 with its mark (Praat's choice for
    text that is not ASCII), else Latin-1 (older Praat and Windows editors)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_marks(path: str | os.PathLike, duration: float | None = None, alphabet: str = "auto") -> list[PhoneMark]:
    """Phoneme timings from a text or JSON file (the module's formats); a :class:`UserError` naming the file and
    line for anything it cannot read."""
    path = Path(path)
    try:
        text = _decoded(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"phoneme file not found: {path}{near_name_hint(str(path))}") from None
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
        entries = _textgrid_entries(text)
        return to_marks(entries, duration, alphabet, [f"interval {k + 1}" for k in range(len(entries))])
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"not valid JSON ({e})") from None
        return marks_from_json(data, duration, alphabet)
    entries, lines, alphabet = _text_entries(text, alphabet)
    if not entries:
        raise UserError("it lists no phonemes")
    return to_marks(entries, duration, alphabet, [f"line {n}" for n in lines])


def marks_from_json(data, duration: float | None = None, alphabet: str = "auto") -> list[PhoneMark]:
    """Phoneme timings from parsed JSON (the module's JSON form: a list of objects, or an object with
    ``alphabet`` and ``phonemes``); a :class:`UserError` for anything else."""
    entries, alphabet = _json_entries(data, alphabet)
    if not entries:
        raise UserError("it lists no phonemes")
    return to_marks(entries, duration, alphabet)


def _phone_tier(names: Sequence[str], what: str) -> int | None:
    """The index of the phone tier among tiers ``names``: one named "phones" (or "phone", "phonemes"), or a
    speaker's ("spk1 - phones", as the Montreal Forced Aligner names them for several speakers; the first, with a
    warning naming the others)."""
    bare = [n.strip().lower() for n in names]
    exact = [k for k, n in enumerate(bare) if n in ("phones", "phone", "phonemes")]
    if exact:
        return exact[0]
    speakers = [k for k, n in enumerate(bare) if re.search(r"(^|[\s\-_:/])(phones|phonemes)$", n)]
    if len(speakers) > 1:
        warn(f"the {what} has the phone tiers of {len(speakers)} speakers; the first ({names[speakers[0]]!r}) is "
             f"read (others: {', '.join(repr(names[k]) for k in speakers[1:])})")
    return speakers[0] if speakers else None


def _json_entries(data, alphabet: str) -> tuple[list, str]:
    if isinstance(data, dict) and isinstance(data.get("tiers"), dict):  # Montreal Forced Aligner's JSON
        names = list(data["tiers"])
        k = _phone_tier(names, "aligner's JSON")
        tier = data["tiers"][names[k]] if k is not None else None
        if not isinstance(tier, dict) or not isinstance(tier.get("entries"), list):
            raise UserError(f'an aligner\'s JSON without a "phones" tier of entries (its tiers: '
                            f'{", ".join(map(repr, names)) or "none"})')
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
        if isinstance(item, (list, tuple)) and len(item) in (2, 3):  # [start, phone] or [start, end, phone]
            entries.append(tuple(item))
            continue
        if not isinstance(item, dict):
            raise UserError(f"phoneme {k + 1}: expected an object with start and phone (or [start, end, phone]), "
                            f"got {item!r}")
        start = item.get("start", item.get("time"))
        phone = item.get("phone", item.get("phoneme"))
        if start is None or phone is None:
            raise UserError(f"phoneme {k + 1}: needs a start (or time) and a phone (or phoneme): {item!r}")
        entries.append((start, item["end"], phone) if item.get("end") is not None else (start, phone))
    return entries, alphabet


_PRAAT_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w\]])|(<exists>)')


def _textgrid_entries(text: str) -> list:
    """The intervals of a Praat TextGrid's phone tier (see :func:`_phone_tier`; or its only tier), empty
    intervals read as pauses. Long or short text format: both are read as Praat reads them, as a sequence of
    numbers and quoted strings (the long format's ``name =`` and ``item [1]:`` are comments to Praat)."""
    body = re.sub(r"\[\s*\d*\s*\]", "", text)  # "item [1]:", "intervals [3]:": the index is no value
    tokens = [(m.group(1).replace('""', '"') if m.group(1) is not None else None,
               float(m.group(2)) if m.group(2) is not None else None)
              for m in _PRAAT_TOKEN.finditer(body) if m.group(3) is None]
    strings = [t for t, _ in tokens]
    try:
        k = strings.index("TextGrid") + 1
        k += 2  # the grid's xmin and xmax
        n_tiers = int(tokens[k][1])
        k += 1
        tiers = []
        for _ in range(n_tiers):
            kind, name = tokens[k][0], tokens[k + 1][0]
            n = int(tokens[k + 4][1])
            k += 5
            if kind == "IntervalTier":
                cells = [(tokens[k + 3 * j][1], tokens[k + 3 * j + 1][1], tokens[k + 3 * j + 2][0]) for j in range(n)]
                k += 3 * n
            else:  # a TextTier of points: time and mark
                cells = [(tokens[k + 2 * j][1], tokens[k + 2 * j][1], tokens[k + 2 * j + 1][0]) for j in range(n)]
                k += 2 * n
            if any(c is None for cell in cells for c in cell) or kind is None or name is None:
                raise ValueError
            tiers.append((name, cells))
    except (ValueError, IndexError, TypeError):
        raise UserError("not a TextGrid Praat can read (its tiers could not be followed)") from None
    k = _phone_tier([n for n, _ in tiers], "TextGrid")
    if k is None and len(tiers) == 1:
        k = 0
    if k is None:
        names = ", ".join(repr(n) for n, _ in tiers) or "none"
        raise UserError(f'a TextGrid needs a tier named "phones" (its tiers: {names})')
    return [(a, b, t.strip() or "sil") for a, b, t in tiers[k][1]]


_COMMA_DECIMAL = re.compile(r"^\d+,\d+$")
_COMMENT = re.compile(r"^\s*#|\s#\s")  # "# ..." and "... AA1  # note"; not TIMIT's "h#", nor a pause "#" ending a line
_DECIMAL = re.compile(r"^\d*[.,]\d+$")


def _fields(body: str) -> list[str] | None:
    """A line's fields: split at spaces or tabs (times with decimal commas read), or as CSV when that gives none."""
    parts = [x.replace(",", ".") if _COMMA_DECIMAL.match(x) else x for x in body.split()]
    if len(parts) in (2, 3) and all(_number(x) for x in parts[:-1]):
        return parts  # (a phone may hold a comma: espeak-ng's secondary stress, ",e")
    if "," in body:
        fields = [x.strip() for x in body.split(",")]
        return [x for x in fields[:-1] if x] + fields[-1:]
    return parts


def _text_entries(text: str, alphabet: str) -> tuple[list, list, str]:
    """The entries of a text file, the line number of each, and the alphabet its ``# alphabet:`` line names.
    Audacity's label files are read too (its spectral-selection lines, which start with a backslash, skipped), and
    CSV (``start,end,phone``, a header line skipped) or times with decimal commas. ``#`` starts a comment at the
    start of a line or after a space when a space follows it (``h#`` and a lone ``#`` are phones)."""
    entries, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        m = _COMMENT.search(line)
        body, comment = (line[:m.start()], line[m.end():]) if m else (line, "")
        key, _, value = comment.partition(":")
        if key.strip().lower() == "alphabet" and alphabet == "auto":
            alphabet = value.strip().lower()
        if body.lstrip().startswith("\\"):  # Audacity: the frequencies of the label above
            continue
        parts = _fields(body)
        if not parts or parts == [""]:
            continue
        if "," in body and not entries and not _number(parts[0]):  # a CSV header ("start,end,phone")
            continue
        if len(parts) not in (2, 3):
            raise UserError(f"line {n}: expected START PHONE or START END PHONE, got {line.strip()!r}")
        if _DECIMAL.match(parts[-1]) and all(_number(x) for x in parts[:-1]):
            raise UserError(f"line {n}: no phone after its times ({line.strip()!r})")
        entries.append(tuple(parts))
        lines.append(n)
    return entries, lines, alphabet


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
