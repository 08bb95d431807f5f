"""Phoneme timings given with the speech (``media.phone_marks``): files read, alphabets told apart, bad files
refused with the reason, and the lips' closure on /p b m/ timed from them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperlips.errors import UserError
from hyperlips.media.phone_marks import PhoneMark, closure, phone_ids, read_marks, to_marks, which_alphabet, write_marks
from hyperlips.media.phones import PHONES, SILENCE


def _phones(marks):
    return [m.phone for m in marks]


def test_text_file_with_and_without_ends(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("# from an aligner\n0.00 0.10 sil\n0.10 0.22 B\n\n0.22\t0.40\tAA1  # stressed\n0.40 M\n0.55 AH0\n")
    marks = read_marks(p, duration=0.8)
    assert _phones(marks) == ["SIL", "B", "AA", "M", "AH"]
    assert [(m.start, m.end) for m in marks] == [(0.0, 0.1), (0.1, 0.22), (0.22, 0.4), (0.4, 0.55), (0.55, 0.8)]


def test_json_forms(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"start": 0.1, "phone": "m"}, {"time": 0.2, "end": 0.3, "phoneme": "'a"}]))
    assert _phones(read_marks(p, 1.0)) == ["M", "AE"]  # espeak-ng's mnemonics: lower case, stress marks
    p.write_text(json.dumps({"alphabet": "ipa", "phonemes": [{"start": 0, "phone": "b"}, {"start": 0.1, "phone": "ɑː"}]}))
    assert _phones(read_marks(p, 1.0)) == ["B", "AA"]


@pytest.mark.parametrize("symbols,alphabet,phones", [
    (["S", "IY1", "T"], "arpabet", ["S", "IY", "T"]),  # ARPAbet S, not espeak-ng's S (/ʃ/)
    (["S", "i:", "t"], "espeak", ["SH", "IY", "T"]),
    (["ʃ", "iː", "t"], "ipa", ["SH", "IY", "T"]),
    (["_:", "tS", "'aI", "t2", "@L"], "espeak", ["SIL", "CH", "AY", "T", "L"]),  # pauses and variants
])
def test_alphabets_are_told_apart(symbols, alphabet, phones):
    assert which_alphabet(symbols) == alphabet
    marks = to_marks([(0.1 * k, s) for k, s in enumerate(symbols)], 1.0)
    assert _phones(marks) == phones


@pytest.mark.parametrize("text,reason", [
    ("", "lists no phonemes"),
    ("0.1 B extra words\n", "line 1: expected START PHONE"),
    ("0.1 B\n\n0.05 AA\n", "line 3 starts at 0.05 s, before line 1"),  # errors name the file's lines
    ("-0.1 B\n", "not negative"),
    ("0.3 0.2 B\n", "ends (0.2 s) before it starts"),
    ("zero B\n", "must be numbers"),
    ("0.1 B\n0.2 QQ\n0.3 XX\n", "'QQ', 'XX'"),
    ("[{\"start\": 0.1}]", "needs a start (or time) and a phone"),
    ("[1, 2", "not valid JSON"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path, text, reason):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        read_marks(p, 1.0)
    assert reason in str(e.value) and "bad.txt" in str(e.value)
    assert "'B'" not in str(e.value)  # the alphabet is the one that knows the most of the file's phones


def test_missing_file_and_unknown_alphabet(tmp_path):
    with pytest.raises(UserError, match="phoneme file not found"):
        read_marks(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="alphabet must be one of"):
        to_marks([(0.0, "B")], alphabet="klingon")
    for entry in (0.5, "B", (0.5,), (0.1, 0.2, 0.3, "B")):
        with pytest.raises(UserError, match=r"expected \(start, phone\) or \(start, end, phone\)"):
            to_marks([entry])


def test_written_marks_read_back(tmp_path):
    marks = [PhoneMark(0.0, 0.125, "SIL"), PhoneMark(0.125, 0.2, "P"), PhoneMark(0.2, 0.5, "AA")]
    write_marks(tmp_path / "m.txt", marks)
    assert read_marks(tmp_path / "m.txt") == marks


def test_phone_ids_as_the_recogniser_gives_them():
    ids = phone_ids([PhoneMark(0.05, 0.1, "B"), PhoneMark(0.1, 0.3, "AA")], 0.35)
    assert len(ids) == 35 and ids.dtype == np.int8
    assert (ids[:5] == SILENCE).all() and (ids[5:10] == PHONES.index("B")).all()
    assert (ids[10:30] == PHONES.index("AA")).all() and (ids[30:] == SILENCE).all()


def test_closure_is_full_through_a_bilabial_and_ramps_around_it():
    marks = [PhoneMark(0.0, 0.2, "AA"), PhoneMark(0.2, 0.28, "M"), PhoneMark(0.28, 0.6, "IY")]
    t = np.array([0.1, 0.17, 0.2, 0.24, 0.28, 0.30, 0.32, 0.5])
    c = closure(marks, t, ramp=0.04)
    np.testing.assert_allclose(c, [0.0, 0.25, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    assert closure([PhoneMark(0.0, 1.0, "F")], t).max() == 0.0  # only /p b m/ close the lips


def test_the_synthesisers_phonemes_are_all_known():
    """Every phoneme espeak-ng speaks in the demo's sentences maps to a phone (none is refused as unknown)."""
    from hyperlips.demo import DEMO_TEXT, synthesize_with_phonemes
    from hyperlips.eval.phonemes import PHONEME_TEXT

    for text in (DEMO_TEXT, PHONEME_TEXT):
        pcm, sr, ph = synthesize_with_phonemes(text)
        marks = to_marks([(p.start, p.name) for p in ph], len(pcm) / sr, "espeak")
        bilabial = [p.name.strip("',%=") in ("p", "b", "m") for p in ph]
        assert [m.phone in ("P", "B", "M") for m in marks] == bilabial
        assert sum(bilabial) >= 8


@pytest.mark.parametrize("voice, text", [("fr", "Maman a bu un peu de vin blanc, mon ami."),
                                         ("cmn", "妈妈骂马，爸爸不怕。"), ("es", "Buenos días, mamá, un poco más."),
                                         ("ja", "ママ、ありがとう。ぶんぽう。"), ("de", "Pfeffer und Äpfel, bitte."),
                                         ("ru", "Мама мыла раму."),
                                         ("es", "Mamá, el perro de Ramón corre por la carretera."),
                                         ("ca", "Mama, Barcelona és inferior, amb pa."), ("nl", "Mama, dag, goed, uit, deur."),
                                         ("hr", "Mama, prst i vrt, dobro jutro."), ("mi", "Kia ora, e mama, pūrongo.")])
def test_other_languages_phonemes_are_read(voice, text):
    """espeak-ng's phonemes in other languages (French nasal vowels, Mandarin's aspirated ``ph``, ...) are all read,
    every /p b m/ as a bilabial (German /pf/ too: its lips close) and no other phoneme as one."""
    from hyperlips.demo import synthesize_with_phonemes

    pcm, sr, ph = synthesize_with_phonemes(text, voice)
    marks = to_marks([(p.start, p.name) for p in ph], len(pcm) / sr)
    bare = [p.name.lstrip("',%=") for p in ph]
    assert [m.phone in ("P", "B", "M") for m in marks] == [b in ("p", "b", "m", "ph", "pF") for b in bare], bare
    assert sum(m.phone in ("P", "B", "M") for m in marks) >= 2
    vowels = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
    assert sum(m.phone in vowels for m in marks) >= 4


@pytest.mark.parametrize("symbols, alphabet, phones", [
    # IPA of other languages; precomposed and decomposed nasal vowels; aspiration, length, tone; MFA's glides
    (["b", "ɔ̃", "ʒ", "u", "ʁ"], "ipa", ["B", "AO", "ZH", "UW", "HH"]),
    (["m", "õ", "y", "ø", "œ̃"], "ipa", ["M", "OW", "UW", "OW", "AO"]),
    (["pʰ", "a˥˩", "tɕʰ", "i˧˥", "ʂ", "ɤ"], "ipa", ["P", "AA", "CH", "IY", "SH", "AH"]),
    (["β", "ɣ", "ɲ", "x", "ʝ"], "ipa", ["V", "G", "N", "HH", "Y"]),
    (["m", "ej", "b", "iː", "ʉː", "cʰ", "ɟ", "ʎ", "ç"], "ipa", ["M", "EY", "B", "IY", "UW", "K", "G", "L", "HH"]),
    (["t͡s", "ɯ", "ɸ", "ɴ", "i̯a"], "ipa", ["S", "UH", "F", "NG", "AA"]),
    # lower-case ARPAbet (Kaldi, Gentle) and TIMIT's labels
    (["m", "ey1", "b", "iy0", "th", "sh"], "arpabet", ["M", "EY", "B", "IY", "TH", "SH"]),
    (["h#", "pcl", "p", "ix", "dx", "ax"], "arpabet", ["SIL", "P", "P", "IH", "T", "AH"]),
    # pauses are pauses in every alphabet
    (["sil", "m", "ɑ", "sp", "spn"], "ipa", ["SIL", "M", "AA", "SIL", "SIL"]),
    (["pau", "m", "'a", "sil"], "espeak", ["SIL", "M", "AE", "SIL"]),
])
def test_symbols_of_other_languages_and_labellers(symbols, alphabet, phones):
    assert which_alphabet(symbols) == alphabet
    assert _phones(to_marks([(0.1 * k, s) for k, s in enumerate(symbols)], 1.0)) == phones


def test_words_are_not_read_as_phones(tmp_path):
    """A word tier (Audacity labels of words, or a TextGrid's only tier) is refused as words, not read as each
    word's first letter."""
    p = tmp_path / "words.txt"
    p.write_text("0.2 0.7 bonjour\n0.7 1.2 maman\n1.3 1.8 parle\n1.8 2.4 français\n")
    with pytest.raises(UserError, match="look like words, not phones"):
        read_marks(p, 3.0)


def test_point_labels_last_until_the_next(tmp_path):
    """Audacity's point labels (start = end) last until the next starts, as START-only lines do."""
    p = tmp_path / "points.txt"
    p.write_text("0.1\t0.1\tM\n0.3\t0.3\tAA\n0.6\t0.6\tB\n")
    marks = read_marks(p, 1.0)
    assert [(m.start, m.end, m.phone) for m in marks] == [(0.1, 0.3, "M"), (0.3, 0.6, "AA"), (0.6, 1.0, "B")]
    assert (phone_ids(marks, 1.0)[10:30] == PHONES.index("M")).all()


@pytest.mark.parametrize("text", [
    "start,end,phone\n0.1,0.3,M\n0.3,0.6,AA\n",  # CSV with a header
    "0,1 0,3 M\n0,3 0,6 AA\n",  # decimal commas
    "0.1\t0.3\tM\n\\\t100.0\t2000.0\n0.3\t0.6\tAA\n",  # Audacity with a spectral selection line
    "[[0.1, 0.3, \"M\"], [0.3, 0.6, \"AA\"]]",  # JSON lists
])
def test_other_text_forms(tmp_path, text):
    p = tmp_path / "p.txt"
    p.write_text(text)
    assert [(m.start, m.end, m.phone) for m in read_marks(p, 1.0)] == [(0.1, 0.3, "M"), (0.3, 0.6, "AA")]


@pytest.mark.parametrize("text, phones", [
    ("0.00 0.10 _\n0.10 0.20 m\n0.20 0.30 ,e\n0.30 0.40 'a\n", ["SIL", "M", "EY", "AE"]),  # a stressed phone: no CSV
    ("0 0.119 h#\n0.119 0.156 sh\n0.156 0.206 ix\n", ["SIL", "SH", "IH"]),  # TIMIT's labels (its times in seconds)
    ("0.00 0.10 #\n0.10 0.20 M\n0.20 0.30 AA1  # a note\n", ["SIL", "M", "AA"]),  # "#" a pause, "  # " a comment
])
def test_phones_that_look_like_punctuation(tmp_path, text, phones):
    p = tmp_path / "p.txt"
    p.write_text(text)
    assert _phones(read_marks(p)) == phones


def test_a_seconds_file_longer_than_its_speech_is_not_taken_for_milliseconds(tmp_path):
    """Timings of a 40 s recording given with 3 s of it: seconds (phones 0.1 s apart), warned of as running past
    the speech, not refused as milliseconds."""
    p = tmp_path / "long.txt"
    p.write_text("".join(f"{k / 10:.1f} {'M' if k % 2 else 'AA'}\n" for k in range(400)))
    assert len(read_marks(p, 3.0)) == 400
    p.write_text("0.1 0.2\n")
    with pytest.raises(UserError, match="line 1: no phone after its times"):
        read_marks(p, 3.0)


def test_milliseconds_are_refused_and_overlaps_warned(tmp_path):
    p = tmp_path / "ms.txt"
    p.write_text("100 300 M\n300 1500 AA\n")
    with pytest.raises(UserError, match="look like milliseconds"):
        read_marks(p, 2.0)
    p.write_text("0.1 0.4 M\n0.3 0.6 AA\n")
    with pytest.warns(UserWarning, match="1 phoneme\\(s\\) start before the one before them ends \\(first: line 2"):
        read_marks(p, 1.0)
    # a stream's timings (its speech's length not known yet): a speech synthesiser's milliseconds were read as
    # seconds, the whole stream as its first phoneme (the lips shut)
    from hyperlips.media.phone_marks import to_marks

    ms = [(0, 300, "M"), (300, 900, "AA1"), (900, 1300, "IY1"), (1300, 2000, "AE1")]
    with pytest.raises(UserError, match="the phonemes start 400 apart \\(the median\\): they look like milliseconds"):
        to_marks(ms, None)
    assert [m.start for m in to_marks([(a / 1000, b / 1000, c) for a, b, c in ms], None)] == [0, 0.3, 0.9, 1.3]
    timit = tmp_path / "si1027.phn"  # TIMIT's own times: samples at 16 kHz
    timit.write_text("0 1900 h#\n1900 2500 sh\n2500 3300 ix\n")
    with pytest.raises(UserError, match="they look like milliseconds or samples"):
        read_marks(timit)
    from hyperlips.media.phone_marks import PhoneMark
    from hyperlips.pipeline import LipSync

    ls = LipSync(untrained=True, model="lite", progress=False, phones=False)
    with pytest.raises(UserError, match="they look like milliseconds"):  # marks made by the caller, for a stream
        ls.phoneme_marks([PhoneMark(a, b, "M") for a, b, _ in ms], None)
    assert len(ls.phoneme_marks([PhoneMark(a / 1000, b / 1000, "M") for a, b, _ in ms], None)) == 4


def test_praat_variants_are_read(tmp_path):
    """A TextGrid in UTF-16 (Praat's choice for text that is not ASCII) or Latin-1, in Praat's short text format,
    or with the Montreal Forced Aligner's per-speaker tiers ("spk1 - phones")."""
    tg = TEXTGRID.replace('text = "AA1"', 'text = "ɑː"').replace('text = "B"', 'text = "b"')
    p = tmp_path / "a.TextGrid"
    p.write_bytes(tg.encode("utf-16"))
    assert _phones(read_marks(p)) == ["SIL", "B", "AA", "B"]
    p.write_bytes(TEXTGRID.replace('"bob"', '"Beyoncé"').encode("latin-1"))
    assert _phones(read_marks(p)) == ["SIL", "B", "AA", "B"]
    short = ('File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n0.6\n<exists>\n1\n"IntervalTier"\n"phones"\n'
             '0\n0.6\n3\n0\n0.1\n""\n0.1\n0.2\n"M"\n0.2\n0.6\n"AA1"\n')
    p.write_text(short)
    assert [(m.start, m.end, m.phone) for m in read_marks(p)] == [(0, 0.1, "SIL"), (0.1, 0.2, "M"), (0.2, 0.6, "AA")]
    two = (TEXTGRID.replace('name = "words"', 'name = "spk1 - phones"').replace('text = "bob"', 'text = "M"')
           .replace('name = "phones"', 'name = "spk2 - phones"'))
    p.write_text(two)
    with pytest.warns(UserWarning, match="phone tiers of 2 speakers; the first \\('spk1 - phones'\\) is read"):
        assert _phones(read_marks(p)) == ["M"]


@pytest.fixture(scope="module")
def photo_and_speech(tmp_path_factory):
    """The demo photo and a short synthesised sentence with its phoneme timings written as a file."""
    import cv2
    import soundfile as sf

    from hyperlips.demo import demo_face, synthesize_with_phonemes

    folder = tmp_path_factory.mktemp("phonemes")
    cv2.imwrite(str(folder / "face.png"), demo_face())
    pcm, sr, ph = synthesize_with_phonemes("Bob made a map.")
    sf.write(str(folder / "speech.wav"), pcm, sr)
    write_marks(folder / "speech.txt", to_marks([(p.start, p.name) for p in ph], len(pcm) / sr, "espeak"))
    return folder


def test_sync_refuses_a_bad_phoneme_file_before_writing(photo_and_speech, tmp_path, capfd):
    from hyperlips.cli import main

    bad = tmp_path / "bad.txt"
    bad.write_text("0.0 B\n0.1 QQ\n")
    out = tmp_path / "out.mp4"
    code = main(["sync", str(photo_and_speech / "face.png"), str(photo_and_speech / "speech.wav"), "-o", str(out),
                 "--phonemes", str(bad), "--quiet", "--device", "cpu"])
    err = capfd.readouterr().err
    assert code != 0 and "bad.txt" in err and "'QQ'" in err
    assert not out.exists()


def test_sync_passes_the_timings_to_the_network_and_says_when_they_are_not_used(photo_and_speech, tmp_path,
                                                                                 monkeypatch):
    """The timings reach the network stage and, as phones, the network's input (the recogniser is not asked);
    HyperLips-Base, which reads the sound alone, says it does not use them."""
    import warnings

    from hyperlips.errors import InputWarning
    from hyperlips.media import phones
    from hyperlips.pipeline import LipSync

    def no_recogniser(*a, **k):
        raise AssertionError("the recogniser read the speech although its phonemes were given")

    monkeypatch.setattr(phones, "read_phones", no_recogniser)
    face, speech = photo_and_speech / "face.png", photo_and_speech / "speech.wav"
    seen = []
    ls = LipSync(progress=False, mouth="render", device="cpu")
    real = ls._render
    ls._render = lambda jobs, ref, mel, fps, marks=None: (seen.append(marks), real(jobs, ref, mel, fps, marks))[1]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", InputWarning)
        ls.sync(face, speech, tmp_path / "out.mp4", phonemes=photo_and_speech / "speech.txt")
    assert not [w for w in said if "phoneme" in str(w.message)]  # a rendered Lite mouth uses them
    assert seen and all(m is not None and _phones(m)[:2] == ["B", "AA"] for m in seen)
    with pytest.raises(UserError, match="list no phonemes"):
        ls.sync(face, speech, tmp_path / "out3.mp4", phonemes=[])
    assert not (tmp_path / "out3.mp4").exists()
    with pytest.warns(InputWarning) as said:
        ls.sync(face, speech, tmp_path / "out2.mp4", phonemes=[(5.0, "B")])
    assert any("past the end of the speech" in str(w.message) for w in said)
    base = LipSync(progress=False, untrained=True, device="cpu")
    with pytest.warns(InputWarning, match="not used by .*HyperLips-Base reads the sound alone"):
        base.sync(face, speech, tmp_path / "out4.mp4", phonemes=photo_and_speech / "speech.txt")


TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 0.6
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 0.6
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 0.6
            text = "bob"
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 0.6
        intervals: size = 4
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.2
            text = "B"
        intervals [3]:
            xmin = 0.2
            xmax = 0.45
            text = "AA1"
        intervals [4]:
            xmin = 0.45
            xmax = 0.6
            text = "B"
'''


def test_aligner_outputs_textgrid_and_json(tmp_path):
    """What the Montreal Forced Aligner writes: a TextGrid (its phones tier) or its JSON; a byte-order mark too."""
    p = tmp_path / "a.TextGrid"
    p.write_text(TEXTGRID)
    marks = read_marks(p)
    assert _phones(marks) == ["SIL", "B", "AA", "B"] and (marks[2].start, marks[2].end) == (0.2, 0.45)
    p.write_text(TEXTGRID.replace('name = "phones"', 'name = "syllables"'))
    with pytest.raises(UserError, match="tier named \"phones\" \\(its tiers: 'words', 'syllables'\\)"):
        read_marks(p)
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"start": 0, "end": 0.6, "tiers": {"words": {"type": "words", "entries": [[0, 0.6, "bob"]]},
                                                               "phones": {"type": "phones", "entries": [
                                                                   [0.1, 0.2, "B"], [0.2, 0.45, "AA1"]]}}}))
    assert _phones(read_marks(p)) == ["B", "AA"]
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"start": 0, "phone": "M"}]).encode())
    assert _phones(read_marks(p, 0.2)) == ["M"]


@pytest.mark.parametrize("mouth", ["warp", "hybrid", "render"])
def test_given_bilabials_close_a_real_talking_mouth(real_data, tmp_path, mouth):
    """A real talking clip driven by its speech with an /m/ given over 0.6-1.2 s: FaceMesh reads the mouth nearly
    closed there, and as open as without the timings elsewhere. The hybrid's and the rendered network draw it closed
    (the shape closed on the clip's average mouth), not only the detail the hybrid borrows from the warped frame."""
    from helpers import cut_audio, cut_video
    from spies import spy_on_sync

    from hyperlips.face.detect import FaceDetector
    from hyperlips.face.landmarks import FaceMesh
    from hyperlips.face.mouth_shape import mouth_opening
    from hyperlips.pipeline import LipSync

    speech = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "speech.wav", 2.0)
    video = cut_video(real_data / "retalking" / "face2.mp4", tmp_path / "idle.mp4", 50, size=360, lossless=True)
    marks = [PhoneMark(0.0, 0.6, "AA"), PhoneMark(0.6, 1.2, "M"), PhoneMark(1.2, 2.0, "AA")]
    ls = LipSync(progress=False, mouth=mouth)

    def run(**kw):
        with spy_on_sync() as spy:
            ls.sync(video, speech, tmp_path / "out.mp4", **kw)
        faces = np.concatenate([c.output for c in spy.generator_calls])  # (N, 3, 128, 128) RGB in 0..1
        return spy.frames, (np.clip(faces, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)[..., ::-1]

    def openings(frames, box=True):
        with FaceDetector() as det, FaceMesh(static=True) as fm:
            b = det.detect(frames[0])[0] if box else None
            crop = (lambda f: f[int(max(b.y1, 0)):int(b.y2), int(b.x1):int(b.x2)]) if box else (lambda f: f)
            found = [fm.landmarks(np.ascontiguousarray(crop(f))) for f in frames]
        return np.array([np.nan if lm is None else mouth_opening(lm[None, :, :2])[0] for lm in found])

    (given, given_net), (plain, plain_net) = run(phonemes=marks), run()
    a, b = openings(given), openings(plain)
    span, rest = slice(17, 29), np.r_[0:14, 33:50]  # 0.68-1.12 s; away from the /m/ and its ramps
    # measured 0.023 against 0.076 warped (0.30), 0.030 against 0.040 hybrid (0.75), 0.024 against 0.033 rendered
    # (0.73): the starter's renderer draws the shapes it is given loosely, and the hybrid's frames follow its faces
    # (0.66, below). The fixture is lossless: over lossy encodings of it (CRF 17-18, one or three encoder threads)
    # the hybrid's ratio read 0.51-0.82 and the warp's 0.30-0.34.
    less = 0.5 if mouth == "warp" else 0.8
    assert np.nanmean(a[span]) < less * np.nanmean(b[span]), (np.nanmean(a[span]), np.nanmean(b[span]))
    assert np.nanmean(a[rest]) > 0.85 * np.nanmean(b[rest])
    if mouth != "warp":  # the network's own faces (hybrid): measured 0.0094 against 0.0141 (0.0173 unclosed, the same
        # phones)
        an, bn = openings(given_net, box=False), openings(plain_net, box=False)
        assert np.nanmean(an[span]) < 0.8 * np.nanmean(bn[span]), (np.nanmean(an[span]), np.nanmean(bn[span]))
