"""The phoneme protocol: espeak-ng's phoneme timings, the bilabial/vowel scoring, and a run on a real clip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hyperlips.demo import Phoneme, synthesize_with_phonemes
from hyperlips.errors import UserError
from hyperlips.eval.phonemes import (
    phoneme_class,
    phoneme_frames,
    score_openings,
    separation_auc,
)


def test_espeak_reports_phonemes_in_order_within_the_audio():
    pcm, sr, phonemes = synthesize_with_phonemes("Bob made a map.")
    names = [p.name.lstrip("',") for p in phonemes]
    assert [n for n in names if n in ("b", "m", "p")] == ["b", "b", "m", "m", "p"], names
    starts = [p.start for p in phonemes]
    assert starts == sorted(starts) and 0 <= starts[0] < 0.1 and starts[-1] <= len(pcm) / sr + 0.02
    # the first /m/ of "made" starts after "Bob" (two bilabials and a vowel: at least 0.15 s in)
    first_m = next(p.start for p in phonemes if p.name == "m")
    assert 0.15 < first_m < len(pcm) / sr / 2


def test_the_bilabial_closure_is_quieter_than_the_vowel_after_it():
    """The timings are those of the samples: the lips-closed stretch of /b/ in "Bob" is quieter than its vowel."""
    pcm, sr, phonemes = synthesize_with_phonemes("Bob.")
    b = [p for p in phonemes if p.name == "b"][1]  # the closing /b/
    vowel = next(p for p in phonemes if phoneme_class(p.name) == "vowel")
    nxt = phonemes[phonemes.index(vowel) + 1]

    def rms(t0, t1):
        seg = pcm[int(t0 * sr):int(t1 * sr)]
        return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))

    assert rms(b.start, b.start + 0.04) < 0.5 * rms(vowel.start, nxt.start)


@pytest.mark.parametrize("name, cls", [("m", "bilabial"), ("p", "bilabial"), ("b", "bilabial"), ("'a", "vowel"),
                                       (",eI", "vowel"), ("@", "vowel"), ("0", "vowel"), ("3:", "vowel"),
                                       ("n", None), ("_:", None), ("s", None), ("d", None)])
def test_phoneme_classes(name, cls):
    assert phoneme_class(name) == cls


def test_frames_sit_at_the_middle_of_each_phoneme():
    ph = [Phoneme(0.0, "b"), Phoneme(0.1, "'a"), Phoneme(0.3, "n"), Phoneme(0.4, "m")]
    assert phoneme_frames(ph, 0.6, 25.0) == [(1, "bilabial", "b"), (5, "vowel", "'a"), (12, "bilabial", "m")]


def test_scores_separate_a_mouth_that_follows_the_phonemes_from_one_that_does_not():
    marks = [(2, "bilabial", "b"), (5, "vowel", "a"), (8, "bilabial", "m"), (11, "vowel", "@"), (14, "bilabial", "p")]
    follows = np.full(16, 0.1)
    follows[[2, 8, 14]] = 0.01
    follows[[5, 11]] = 0.3
    s = score_openings(follows, marks)
    assert s["auc"] == 1.0 and s["closed_share"] == 1.0 and (s["bilabials"], s["vowels"]) == (3, 2)
    assert s["open_bilabial"] == pytest.approx(0.01) and s["open_vowel"] == pytest.approx(0.3)
    assert score_openings(0.31 - follows, marks)["auc"] == 0.0  # opens on /p b m/, closes on vowels
    assert score_openings(np.full(16, 0.2), marks)["auc"] == 0.5  # still: no relation
    # frames past the end of the video and undetected frames are left out
    s = score_openings(np.r_[follows[:10], np.nan], marks + [(40, "vowel", "a")])
    assert (s["bilabials"], s["vowels"]) == (2, 1)
    assert math.isnan(separation_auc([], [0.1]))


def test_recogniser_phones_read_as_espeak_ngs_classes():
    from hyperlips.eval.phonemes import phoneme_class, recogniser_mnemonic

    got = {p: phoneme_class(recogniser_mnemonic(p)) for p in ("B", "P", "M", "AA", "IY", "UW", "V", "SIL", "+NSN+", "N")}
    assert got == {"B": "bilabial", "P": "bilabial", "M": "bilabial", "AA": "vowel", "IY": "vowel", "UW": "vowel",
                   "V": None, "SIL": None, "+NSN+": None, "N": None}  # ARPAbet's V is a consonant


def test_recorded_speech_is_timed_by_the_recogniser_across_recordings(real_data, tmp_path):
    """Real recordings one after another: their phonemes where the recogniser hears them, the second's after the
    first and the gap; the lips are closed at the middle of a /p b m/ (quiet) far more than at a vowel's."""
    import soundfile as sf

    from hyperlips.eval.phonemes import RECORDING_GAP, phoneme_frames, recorded_speech
    from hyperlips.media.audio import load_audio
    from hyperlips.media.phones import PHONES, read_phones

    a, b = real_data / "retalking" / "audio1.wav", real_data / "hyperlips" / "audio1.wav"
    wa, wb = load_audio(a), load_audio(b)
    pcm, sr, marks = recorded_speech([a, b])
    assert sr == 16000 and len(pcm) == len(wa) + int(RECORDING_GAP * sr) + len(wb)
    starts = [m.start for m in marks]
    assert starts == sorted(starts) and starts[-1] == pytest.approx(len(pcm) / sr)  # the end
    second = len(wa) / sr + RECORDING_GAP
    lips = [PHONES.index(n) for n in ("B", "M", "P")]
    heard = [int(((p[1:] != p[:-1]) & np.isin(p[1:], lips)).sum() + (p[0] in lips))
             for p in (read_phones(wa), read_phones(wb))]  # runs of B, M and P
    bil = [m.start for m in marks if m.name in ("p", "b", "m")]
    assert [sum(t < second for t in bil), sum(t >= second for t in bil)] == heard and min(heard) > 0
    frames = phoneme_frames(marks, len(pcm) / sr, 100.0)

    def loudness(k):
        c = int(k * sr / 100)
        return float(np.sqrt(np.mean(pcm[max(0, c - 160):c + 160] ** 2)))

    closed = np.mean([loudness(k) for k, c, _ in frames if c == "bilabial"])
    open_ = np.mean([loudness(k) for k, c, _ in frames if c == "vowel"])
    assert closed < 0.4 * open_, (closed, open_)
    silent = tmp_path / "silence.wav"
    sf.write(str(silent), np.zeros(16000, np.float32), 16000)
    with pytest.raises(UserError, match="no /p b m/"):
        recorded_speech([silent])


def test_phoneme_protocol_with_recorded_speech(more_data, real_data, tmp_path, capsys):
    """``--speech``: a real recording instead of espeak-ng's; its /p b m/ and vowels as the recogniser hears them.
    With --text too, or with another protocol, it is refused."""
    from hyperlips.cli import main

    clip, rec = more_data / "grid_lipnet" / "sbwe5n.mpg", real_data / "retalking" / "audio1.wav"
    out = tmp_path / "ph"
    code = main(["eval", "--clips", str(clip), "--protocol", "phonemes", "--untrained", "--model", "lite",
                 "--speech", str(rec), "--device", "cpu", "--quiet", "-o", str(out)])
    assert code == 0
    data = json.loads((out / "phonemes.json").read_text())
    assert data["recordings"] == [str(rec)] and data["text"] == ""
    assert data["rows"]["hold"]["bilabials"] == sum(n in ("p", "b", "m") for _, n in data["phonemes"]) > 0
    assert 5.0 < data["seconds"] < 5.5 and "phone recogniser" in (out / "phonemes.md").read_text()
    capsys.readouterr()
    code = main(["eval", "--clips", str(clip), "--protocol", "phonemes", "--untrained", "--speech", str(rec),
                 "--text", "Bob", "-o", str(tmp_path / "both")])
    assert code == 2 and "give one of them" in capsys.readouterr().err
    code = main(["eval", "--clips", str(clip), "--protocol", "tail", "--untrained", "--speech", str(rec),
                 "-o", str(tmp_path / "tail")])
    assert code == 2 and "--speech is for --protocol phonemes" in capsys.readouterr().err
    code = main(["eval", "--clips", str(clip), "--protocol", "phonemes", "--untrained", "--speech",
                 str(tmp_path / "none.wav"), "-o", str(tmp_path / "none")])
    assert code == 2 and "none.wav" in capsys.readouterr().err


def test_phoneme_protocol_on_a_real_clip(more_data, tmp_path):
    """End to end with random Lite weights on a GRID clip: speech synthesised, both methods synced and scored, the
    held mouth scored as no relation, report and preview written."""
    from hyperlips.cli import main

    out = tmp_path / "ph"
    code = main(["eval", "--clips", str(more_data / "grid_lipnet" / "sbwe5n.mpg"), "--protocol", "phonemes",
                 "--untrained", "--model", "lite", "--text", "Bob made a map.", "--voice", "en-gb", "--device", "cpu",
                 "--quiet", "-o", str(out)])
    assert code == 0
    data = json.loads((out / "phonemes.json").read_text())
    assert data["voice"] == "en-gb" and "espeak-ng (en-gb)" in (out / "phonemes.md").read_text()
    assert data["weights"] == "untrained (random) weights; mouth render"  # what made it, in the report
    from hyperlips.demo import synthesize_with_phonemes

    assert [name for _, name in data["phonemes"]] == [p.name for p in synthesize_with_phonemes("Bob made a map.",
                                                                                               "en-gb")[2]]
    assert set(data["rows"]) == {"model", "hold"}
    hold = data["rows"]["hold"]
    assert hold["bilabials"] == 5 and hold["vowels"] >= 3
    assert abs(hold["auc"] - 0.5) <= 0.35  # one still mouth: only detection noise separates the frames
    assert len(data["series"]["model"]) == round(data["seconds"] * 25)
    assert (out / "phonemes.md").read_text().count("|") > 20 and (out / "phonemes_preview.png").stat().st_size > 1000


def test_an_empty_sentence_is_refused_not_replaced(more_data, tmp_path, capsys):
    from hyperlips.cli import main

    code = main(["eval", "--clips", str(more_data / "grid_lipnet" / "sbwe5n.mpg"), "--protocol", "phonemes",
                 "--untrained", "--text", "  ", "-o", str(tmp_path / "ph")])
    assert code == 2 and "--text is empty" in capsys.readouterr().err and not (tmp_path / "ph").exists()


@pytest.mark.parametrize("args, reason", [(["--voice", "klingon", "--text", "Qapla'"], "espeak-ng has no voice 'klingon'"),
                                          (["--voice", "fr-xx", "--text", "Bonjour"], "(near it: fr, fr-be, fr-ch, fr-fr)"),
                                          (["--voice", "fr"], "--voice fr: give --text, a sentence in that language")])
def test_a_voice_espeak_ng_lacks_or_without_its_text_is_refused(more_data, tmp_path, capsys, args, reason):
    from hyperlips.cli import main

    code = main(["eval", "--clips", str(more_data / "grid_lipnet" / "sbwe5n.mpg"), "--protocol", "phonemes",
                 "--untrained", *args, "-o", str(tmp_path / "ph")])
    assert code == 2 and reason in capsys.readouterr().err and not (tmp_path / "ph").exists()


def test_an_english_voice_reads_the_default_sentence(more_data, tmp_path, monkeypatch):
    """``--voice en-gb`` (or a variant, ``en-us+f3``) without --text: the default English sentence in that voice."""
    from hyperlips.cli import main
    from hyperlips.eval import phonemes

    asked = {}

    def fake(footage, out, **kw):
        asked.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(phonemes, "run_phoneme_protocol", fake)
    with pytest.raises(SystemExit):
        main(["eval", "--clips", str(more_data / "grid_lipnet" / "sbwe5n.mpg"), "--protocol", "phonemes",
              "--untrained", "--voice", "en-us+f3", "-o", str(tmp_path / "ph")])
    assert asked["voice"] == "en-us+f3" and asked["text"] == phonemes.PHONEME_TEXT
