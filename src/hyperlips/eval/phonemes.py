"""The phoneme protocol: does a model close the mouth on /p b m/ and open it on vowels, driven by speech it never heard?

Loudness says little about the mouth (an /m/ is loud with closed lips, a whispered /a/ quiet with open ones), so
this protocol times the mouth against phonemes instead. espeak-ng speaks sentences rich in bilabials and open
vowels and reports when each phoneme starts; the model re-syncs a stretch of the person's footage that training
never saw (the held-out tail, as ``--protocol tail`` splits it) to that speech, and FaceMesh measures the inner-lip
gap on every output frame. At the middle of each phoneme:

* **bilabials** (/p b m/): the lips touch, the gap should be near its smallest;
* **vowels**: the gap should be larger.

Real recordings can speak instead (``--speech``: other people's voices, as a person model meets them in use): their
phonemes are then the ones the phone recogniser hears (``media.phones``, PocketSphinx), a few recordings played one
after another.

The figures: the mean gap (divided by the inter-ocular distance) at bilabials and at vowels, and the separation
AUC, the chance that a random vowel frame shows a wider mouth than a random bilabial frame (0.5: the mouth ignores
the phonemes; 1.0: every vowel more open than every bilabial). The same is measured with the reference mouth held
still (AUC 0.5 up to detection noise), as a baseline.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.sources import mark_report
from ..errors import UserError
from ..face.steady import DEFAULT_WEIGHT as DEFAULT_BLEND
from ..media.phone_symbols import espeak as espeak_phone

# every word has a bilabial next to an open vowel; espeak-ng (en-us) speaks it in about 9 s
PHONEME_TEXT = ("Bob made a map for Pam. My mother bought a big bamboo boat. "
                "Papa palmed a maple apple, and Mom baked a pumpkin pie.")
_ARPABET_VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})
RECORDING_GAP = 0.3  # seconds of silence between recordings played one after another (--speech)


def phoneme_class(name: str) -> str | None:
    """"bilabial", "vowel" or None (other consonants and pauses) for an espeak-ng mnemonic, of any of its languages
    (Mandarin's aspirated ``ph`` is a /p/, French ``y`` a vowel), or :func:`recogniser_mnemonic`'s."""
    if name in _ARPABET_VOWELS:
        return "vowel"
    phone = espeak_phone(name)
    if phone in ("P", "B", "M"):
        return "bilabial"
    return "vowel" if phone in _ARPABET_VOWELS else None


def phoneme_frames(phonemes, duration: float, fps: float) -> list[tuple[int, str, str]]:
    """(output frame at the middle of the phoneme, class, name) for every bilabial and vowel."""
    out = []
    for k, p in enumerate(phonemes):
        cls = phoneme_class(p.name)
        if cls is None:
            continue
        end = phonemes[k + 1].start if k + 1 < len(phonemes) else duration
        frame = int(round(0.5 * (p.start + end) * fps))
        out.append((frame, cls, p.name))
    return out


def recogniser_mnemonic(phone: str) -> str:
    """A recogniser phone (``media.phones.PHONES``, ARPAbet) as :func:`phoneme_class` reads espeak-ng's: "p", "b",
    "m" for the bilabials, a vowel as it is (each starts with A, E, I, O or U), anything else "_" + it (a class of
    its own: ARPAbet's V is a consonant, espeak-ng's a vowel)."""
    if phone in ("P", "B", "M"):
        return phone.lower()
    return phone if phone[:1] in "AEIOU" else "_" + phone


def recorded_speech(paths, sample_rate: int = 16000, gap: float = RECORDING_GAP):
    """Recordings of speech played one after another, ``gap`` s of silence between them: (float32 mono samples at
    ``sample_rate``, the rate, their phonemes in order with start times, as the phone recogniser hears each
    recording). Raises :class:`UserError` without the recogniser or without a /p b m/ heard."""
    from ..demo import Phoneme
    from ..media import phones
    from ..media.audio import load_audio

    if not phones.available():
        raise UserError(f"timing real speech needs the phone recogniser ({phones.INSTALL_HINT})")
    if sample_rate != phones.SAMPLE_RATE:
        raise UserError(f"the phone recogniser reads {phones.SAMPLE_RATE} Hz speech, not {sample_rate}")
    parts, marks, at = [], [], 0.0
    silence = np.zeros(int(round(gap * sample_rate)), np.float32)
    for k, path in enumerate(paths):
        wav = load_audio(path, sample_rate)
        if not len(wav):
            raise UserError(f"{path} holds no audio")
        ids = phones.read_phones(wav, sample_rate)
        for i, p in enumerate(ids):
            if i == 0 or p != ids[i - 1]:
                marks.append(Phoneme(at + i / phones.FRAME_RATE, recogniser_mnemonic(phones.PHONES[int(p)])))
        parts += [silence, wav] if k else [wav]
        at += len(wav) / sample_rate
        marks.append(Phoneme(at, "_"))  # the gap (or the end)
        at += gap
    if not any(phoneme_class(m.name) == "bilabial" for m in marks):
        raise UserError("the recogniser hears no /p b m/ in " + ", ".join(str(p) for p in paths) +
                        ": give speech with some to check the closed mouth on")
    return np.concatenate(parts), sample_rate, marks


def separation_auc(open_vowels, open_bilabials) -> float:
    """P(a vowel frame is more open than a bilabial frame), ties counting half; NaN without both kinds."""
    v = np.asarray([x for x in open_vowels if math.isfinite(x)], np.float64)
    b = np.asarray([x for x in open_bilabials if math.isfinite(x)], np.float64)
    if not v.size or not b.size:
        return float("nan")
    diff = v[:, None] - b[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def score_openings(opening: np.ndarray, marks: list[tuple[int, str, str]]) -> dict:
    """The protocol's figures from a per-frame mouth-opening series and :func:`phoneme_frames`."""
    opening = np.asarray(opening, np.float64)
    got = {"bilabial": [], "vowel": []}
    for frame, cls, _ in marks:
        if 0 <= frame < len(opening):
            got[cls].append(float(opening[frame]))
    finite = lambda xs: [x for x in xs if math.isfinite(x)]
    bil, vow = finite(got["bilabial"]), finite(got["vowel"])
    return {"bilabials": len(bil), "vowels": len(vow),
            "open_bilabial": float(np.mean(bil)) if bil else float("nan"),
            "open_vowel": float(np.mean(vow)) if vow else float("nan"),
            "closed_share": float(np.mean(np.asarray(bil) < np.median(vow))) if bil and vow else float("nan"),
            "auc": separation_auc(vow, bil)}


@dataclass
class PhonemeResult:
    footage: str
    text: str
    seconds: float
    rows: dict = field(default_factory=dict)  # method -> figures
    phonemes: list = field(default_factory=list)  # [start, name] pairs
    series: dict = field(default_factory=dict)  # method -> per-frame opening
    recordings: list = field(default_factory=list)  # the real speech played instead of espeak-ng's (--speech)
    voice: str = "en-us"  # espeak-ng's voice (language) for the text
    weights: str = ""  # what rendered the model's mouth, in words


def run_phoneme_protocol(footage: str | os.PathLike, out_dir: str | os.PathLike, *, checkpoint=None,
                         text: str = PHONEME_TEXT, voice: str = "en-us", fraction: float = 0.15,
                         seconds: float | None = None, device: str = "auto", batch_size: int = 16,
                         untrained: bool = False, model: str | None = None, progress: bool = False,
                         baseline: bool = True, temporal_blend: float = DEFAULT_BLEND,
                         mouth: str = "auto", speech=None, hr_checkpoint=None, size: int | None = None,
                         face_index: int | None = None, face_box=None) -> PhonemeResult:
    """Re-sync the held-out tail of ``footage`` to synthesised speech (``text``, or the recordings ``speech``, timed
    by the phone recogniser: :func:`recorded_speech`) and time its mouth against the phonemes (``mouth``: the
    LipSync's; ``face_index`` / ``face_box``: the person, where the footage shows several)."""
    from ..media.audio import write_wav

    from ..demo import synthesize_with_phonemes
    from ..pipeline import LipSync
    from .pair import evaluate_pair
    from .tail import (
        model_footage,
        hold_reference_network,
        pick_reference,
        tail_segments,
        trained_face,
        weights_in_words,
        write_segment,
    )

    footage, out = Path(footage), Path(out_dir)
    mark_report(out)  # (the videos it writes there are no footage)
    videos, record = model_footage(footage, checkpoint)  # (record None: other footage than the model's)
    if face_index is None and face_box is None:  # the person its finetune learnt, on that footage
        face_index, face_box = trained_face(videos, record)
    segs, train_part = tail_segments(videos, fraction, seconds, min_seconds=0.0)  # a face to drive
    work = out / "phonemes"
    ref_png = pick_reference(train_part, work / "reference.png", face_index=face_index, face_box=face_box)
    face = {"face_index": face_index, "face_box": face_box}
    idle = write_segment(segs[0], work / "idle.mp4")
    recordings = [Path(p) for p in speech or ()]
    if recordings:
        pcm, sr, phonemes = recorded_speech(recordings)
        text = ""
    else:
        pcm, sr, phonemes = synthesize_with_phonemes(text, voice)
    if not any(phoneme_class(p.name) == "bilabial" for p in phonemes):
        raise UserError(f"the text has no /p b m/ to check: {text!r}")
    speech = work / "speech.wav"
    write_wav(speech, pcm, sr)
    duration = len(pcm) / sr
    methods = {"model": LipSync(checkpoint, hr_checkpoint, size=size, device=device, batch_size=batch_size,
                                untrained=untrained, model=model, progress=progress, temporal_blend=temporal_blend,
                                mouth=mouth)}
    if baseline:
        methods["hold"] = LipSync(network=hold_reference_network(), device=device, batch_size=batch_size,
                                  progress=progress)
    res = PhonemeResult(str(footage), text, round(duration, 3), phonemes=[[p.start, p.name] for p in phonemes],
                        recordings=[str(p) for p in recordings], voice="" if recordings else voice,
                        weights=weights_in_words(methods["model"]))
    videos = {}
    for name, sync in methods.items():
        video = work / f"{name}.mp4"
        report = sync.sync(idle, speech, video, reference=str(ref_png), **face)
        ev = evaluate_pair(video, None, speech, device=str(sync.device), perceptual=False, **face)
        opening = np.asarray(ev.series["mouth_open_gen"], np.float64)
        marks = phoneme_frames(phonemes, duration, report.fps)
        res.rows[name] = score_openings(opening, marks)
        res.series[name] = opening.tolist()
        videos[name] = (video, marks)
    write_phoneme_report(res, out)
    write_phoneme_preview(*videos["model"], out / "phonemes_preview.png", face_index=face_index, face_box=face_box)
    return res


def write_phoneme_preview(video: Path, marks, path: Path, columns: int = 8, face_index: int | None = None,
                          face_box=None):
    """The generated mouth at bilabials (top row) and at vowels (bottom row), spread over the sentence (the person
    ``face_index`` / ``face_box`` picks, where given; else the largest face)."""
    import cv2

    from ..face.detect import FaceDetector
    from ..face.track import pick_face
    from ..media.video import FrameReader, write_image
    from ..streaming import check_face_box

    rows = []
    for cls in ("bilabial", "vowel"):
        frames = [f for f, c, _ in marks if c == cls]
        if frames:
            rows.append(sorted(set(frames[i] for i in np.linspace(0, len(frames) - 1, min(columns, len(frames)))
                                   .round().astype(int))))
    want = {f for r in rows for f in r}
    crops: dict[int, np.ndarray] = {}
    with FaceDetector() as det, FrameReader(video) as reader:
        face_box = check_face_box(face_box, reader.info.width, reader.info.height)  # as sync: clipped
        for fr in reader.iter_range(0, max(want) + 1 if want else 0):
            if fr.index not in want:
                continue
            faces = det.detect(fr.image)
            picked = pick_face(faces, face_index, face_box,  # (the largest seen where none was picked)
                               (reader.info.width, reader.info.height))
            if picked is None:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in picked.as_array())
            h, w = fr.image.shape[:2]
            ym = (y1 + y2) // 2
            crop = fr.image[max(0, ym):min(h, y2 + (y2 - y1) // 8), max(0, x1):min(w, x2)]
            if crop.size:
                crops[fr.index] = cv2.resize(crop, (96, 64), interpolation=cv2.INTER_AREA)
    blank = np.zeros((64, 96, 3), np.uint8)
    width = max((len(r) for r in rows), default=0)
    if not width:
        return None
    lines = [np.concatenate([crops.get(f, blank) for f in r] + [blank] * (width - len(r)), axis=1) for r in rows]
    sep = np.full((4, lines[0].shape[1], 3), 255, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.concatenate([lines[0], sep, *lines[1:]], axis=0) if len(lines) > 1 else lines[0])
    return path


def phoneme_markdown(res: PhonemeResult) -> str:
    from .report import _fmt

    names = {"model": "model", "hold": "reference mouth held"}
    lines = [f"# Mouth against phonemes: {res.footage}", "",
             f"Speech: espeak-ng ({res.voice}), {res.seconds:.1f} s: \"{res.text}\"" if not res.recordings else
             f"Speech: {', '.join(f'`{r}`' for r in res.recordings)}, {res.seconds:.1f} s, its phonemes as the phone "
             "recogniser hears them", *([f"Model: {res.weights}"] if res.weights else []), "",
             "| method | bilabials | vowels | opening at /p b m/ | opening at vowels | bilabials below the vowels' median | AUC |",
             "|---|---|---|---|---|---|---|"]
    for m, r in res.rows.items():
        lines.append(f"| {names.get(m, m)} | {r['bilabials']} | {r['vowels']} | {_fmt(r['open_bilabial'])} | "
                     f"{_fmt(r['open_vowel'])} | {_fmt(r['closed_share'])} | {_fmt(r['auc'])} |")
    lines += ["", "Opening: inner-lip gap / inter-ocular distance at the middle of each phoneme. AUC: the chance that a "
              "vowel frame is more open than a bilabial frame (0.5: no relation)."]
    return "\n".join(lines) + "\n"


def write_phoneme_report(res: PhonemeResult, out_dir: Path) -> dict[str, Path]:
    from .report import _clean

    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / "phonemes.json"
    j.write_text(json.dumps(_clean(res.__dict__), indent=1), encoding="utf-8")
    md = out_dir / "phonemes.md"
    md.write_text(phoneme_markdown(res), encoding="utf-8")
    return {"json": j, "markdown": md}
