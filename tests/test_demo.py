"""``hyperlips demo``: the built-in example (a bundled photo and speech synthesised offline) runs end to end."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import probe_streams, run_cli
from spies import spy_on_sync


def _check_demo(out, inputs, n_generated=None):
    from hyperlips.media.audio import load_audio

    image, speech = inputs / "demo_face.png", inputs / "demo_speech.wav"
    assert image.is_file() and speech.is_file() and (inputs / "demo_phonemes.txt").is_file()
    seconds = len(load_audio(speech, 16000)) / 16000
    got = probe_streams(out)
    assert (got["width"], got["height"], got["fps"]) == (512, 512, 25.0)
    assert got["frames"] == max(1, round(seconds * 25)) and got["audio_codec"] == "aac"
    if n_generated is not None:
        assert n_generated == got["frames"]  # the face in the photo is found: every frame gets a mouth


def _openings(frames) -> np.ndarray:
    """FaceMesh's mouth opening on each frame of the photo (the face where the first frame has it)."""
    from hyperlips.face.detect import FaceDetector
    from hyperlips.face.landmarks import FaceMesh
    from hyperlips.face.mouth_shape import mouth_opening

    with FaceDetector() as det, FaceMesh(static=True) as fm:
        b = det.detect(frames[0])[0]
        x1, y1, x2, y2 = int(b.x1), int(b.y1), int(b.x2), int(b.y2)
        found = [fm.landmarks(f[y1:y2, x1:x2]) for f in frames]
    return np.array([np.nan if lm is None else mouth_opening(lm[None, :, :2])[0] for lm in found])


def test_demo_command_with_a_short_sentence(tmp_path, monkeypatch, capfd):
    """The demo command in this process, with one short sentence instead of the built-in text (the fast variant of
    the slow test below): inputs written beside the output, the shipped starter named, a mouth on every frame, and
    the lips closed on every /p b m/ at the times the synthesiser spoke them (its phoneme timings are given to
    sync), open on the vowels."""
    from hyperlips import demo
    from hyperlips.cli import main
    from hyperlips.eval.phonemes import separation_auc
    from hyperlips.media.phone_marks import read_marks

    real = demo.synthesize_with_phonemes
    monkeypatch.setattr(demo, "synthesize_with_phonemes", lambda *a, **k: real("Bob made a map for Pam, my mom."))
    out = tmp_path / "demo.mp4"
    with spy_on_sync() as spy:
        code = main(["demo", "-o", str(out), "--quiet", "--device", "cpu"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "with the shipped starter v" in captured.out and "demo inputs:" in captured.out
    assert "untrained" not in (captured.err + captured.out).lower()
    inputs = tmp_path / "hyperlips_demo_inputs"
    _check_demo(out, inputs, sum(len(c.inputs[0]) for c in spy.generator_calls))
    opening = _openings(spy.frames)
    marks = read_marks(inputs / "demo_phonemes.txt")
    at = lambda m: opening[min(int(round((m.start + m.end) / 2 * 25)), len(opening) - 1)]  # noqa: E731
    bilabials = [at(m) for m in marks if m.phone in ("P", "B", "M")]
    vowels = [at(m) for m in marks if m.phone[0] in "AEIOU"]
    assert len(bilabials) >= 6 and len(vowels) >= 6
    assert separation_auc(vowels, bilabials) > 0.9  # measured 1.0 (without the timings: 0.78)
    # nothing else in the frame changes: every pixel that differs from the photo lies in the lower face
    import cv2

    from hyperlips.face.detect import FaceDetector

    photo = cv2.imread(str(inputs / "demo_face.png"))
    with FaceDetector() as det:
        b = det.detect(photo)[0]
    changed = np.zeros(photo.shape[:2], bool)
    for frame in spy.frames:
        changed |= (frame != photo).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert len(ys) > 0
    height = b.y2 - b.y1
    assert ys.min() >= b.y1 + 0.35 * height and ys.max() <= b.y2 + 0.25 * height, (ys.min(), ys.max(), b)
    assert xs.min() >= b.x1 - 0.1 * height and xs.max() <= b.x2 + 0.1 * height, (xs.min(), xs.max(), b)


@pytest.mark.slow
def test_demo_command_as_shipped(tmp_path):
    """``hyperlips demo`` exactly as README's quick start runs it (about 8 s of speech)."""
    r = run_cli("demo", "--quiet", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "with the shipped starter v" in r.stdout
    _check_demo(tmp_path / "hyperlips_demo.mp4", tmp_path / "hyperlips_demo_inputs")


@pytest.mark.parametrize("args, words", [(("-o", "out.txt"), "output must be a video file"),
                                         (("--checkpoint", "nowhere.pth"), "checkpoint not found"),
                                         (("--fps", "0"), "--fps"), (("--crf", "99"), "--crf")])
def test_a_demo_mistake_writes_no_inputs(tmp_path, args, words):
    """The output path and the weights are checked before the demo makes its inputs: a mistake leaves nothing."""
    r = run_cli("demo", "--quiet", *args, cwd=tmp_path)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_demo_with_base_weights_is_not_warned_of_its_own_timings(tmp_path, monkeypatch, capfd):
    """`demo --untrained` (HyperLips-Base) warned "phoneme timings are not used by ...": timings the user never
    gave, the demo's own."""
    from hyperlips import demo
    from hyperlips.cli import main

    real = demo.synthesize_with_phonemes
    monkeypatch.setattr(demo, "synthesize_with_phonemes", lambda *a, **k: real("Bob made a map."))
    code = main(["demo", "-o", str(tmp_path / "demo.mp4"), "--quiet", "--device", "cpu", "--untrained"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "phoneme timings are not used" not in captured.err
