"""``hyperlips demo``: the built-in example (a bundled photo and speech synthesised offline) runs end to end."""

from __future__ import annotations

import pytest

from helpers import probe_streams, run_cli
from spies import spy_on_sync


def _check_demo(out, inputs, n_generated=None):
    from hyperlips.media.audio import load_audio

    image, speech = inputs / "demo_face.png", inputs / "demo_speech.wav"
    assert image.is_file() and speech.is_file()
    seconds = len(load_audio(speech, 16000)) / 16000
    got = probe_streams(out)
    assert (got["width"], got["height"], got["fps"]) == (512, 512, 25.0)
    assert got["frames"] == max(1, round(seconds * 25)) and got["audio_codec"] == "aac"
    if n_generated is not None:
        assert n_generated == got["frames"]  # the face in the photo is found: every frame gets a mouth


def test_demo_command_with_a_short_sentence(tmp_path, monkeypatch, capfd):
    """The demo command in this process, with one short sentence instead of the built-in text (the fast variant of
    the slow test below): inputs written beside the output, the shipped starter named, a mouth on every frame."""
    from hyperlips import demo
    from hyperlips.cli import main

    real = demo.synthesize_speech
    monkeypatch.setattr(demo, "synthesize_speech", lambda *a, **k: real("Hello, this is a test."))
    out = tmp_path / "demo.mp4"
    with spy_on_sync() as spy:
        code = main(["demo", "-o", str(out), "--quiet", "--device", "cpu"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "with the shipped starter v" in captured.out and "demo inputs:" in captured.out
    assert "untrained" not in (captured.err + captured.out).lower()
    _check_demo(out, tmp_path / "hyperlips_demo_inputs", sum(len(c.inputs[0]) for c in spy.generator_calls))


@pytest.mark.slow
def test_demo_command_as_shipped(tmp_path):
    """``hyperlips demo`` exactly as README's quick start runs it (about 8 s of speech)."""
    r = run_cli("demo", "--quiet", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "with the shipped starter v" in r.stdout
    _check_demo(tmp_path / "hyperlips_demo.mp4", tmp_path / "hyperlips_demo_inputs")
