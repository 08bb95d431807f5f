"""``hyperlips sync`` on the input corpus (``corpus.SYNC_CASES``): every real or broken input gives its documented
behaviour. Good inputs: exit 0, only the expected warnings, an output of the input's size (an odd side one pixel
larger) at the expected rate, as long as the audio, whose frames are the source frames of their times. Mistakes:
exit 2, one ``hyperlips: error:`` line alone on the last line of the screen, no traceback, nothing under the output
name, no temporary file left. Signals: the exit code of the signal, nothing left behind."""

from __future__ import annotations

import pytest

from corpus import SYNC_CASES, Case, Materials, Result, assert_failure, assert_warnings, leftovers, run_case
from media_builders import stamps_of

from hyperlips.schedule import source_index


def assert_output(case: Case, res: Result, work, materials: Materials) -> None:
    from helpers import probe_streams
    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import probe

    assert res.rc == 0 and not res.timed_out, res.describe()
    assert "Traceback" not in res.stderr and not res.errors, res.describe()
    assert_warnings(case, res)
    if case.quiet:
        assert res.screen == res.warnings, res.describe()  # nothing else on stderr
    if case.signal:  # a signal the command ignores (``ignore``): sent, and the run went on to its output
        assert res.signalled and not any(ln.startswith("hyperlips: interrupted") for ln in res.screen), res.describe()
    out = work / case.output
    assert out.is_file() and not leftovers(work), list(work.rglob("*"))
    facts = materials.fact(case.video)
    fps = case.fps or facts.fps
    seconds = len(load_audio(materials[case.audio], 16000)) / 16000
    n_out = max(1, round(seconds * fps))
    got = probe_streams(out)
    # 4:2:0 H.264 codes even sides only: an odd side gains one repeated column / row (docs/inference.md)
    assert (got["width"], got["height"]) == (facts.width + facts.width % 2, facts.height + facts.height % 2), got
    assert got["fps"] == pytest.approx(fps, rel=2e-3), got
    assert got["frames"] == n_out, (got, seconds, fps)
    assert got["video_codec"] == "h264" and got["audio_codec"] == "aac", got
    if case.video:  # shown with the input's pixel shape (a still: square)
        assert probe(out).sample_aspect == probe(materials[case.video]).sample_aspect
    assert abs(got["frames"] / got["fps"] - seconds) <= 0.5 / fps + 1e-6, (got, seconds)  # as long as the audio
    assert got["audio_seconds"] == pytest.approx(seconds, abs=0.03), (got, seconds)
    if facts.stamped and case.stamps:  # sync: each output frame is the source frame of its time
        timeline = facts.timeline(fps)
        n_src = min(len(timeline), n_out)
        want = [timeline[source_index(j, n_src, case.loop)] for j in range(n_out)]
        assert stamps_of(out) == want


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.slow else c for c in SYNC_CASES],
                         ids=lambda c: c.id)
def test_sync_corpus(case: Case, cli_runner, corpus_materials, tmp_path):
    runner, materials = cli_runner, corpus_materials
    res = run_case(case, runner, materials, tmp_path)
    if case.rc == 0:
        assert_output(case, res, tmp_path, materials)
    else:
        assert_failure(case, res, tmp_path)
    assert not leftovers(materials.root)
    print(f"{case.id}: {res.cpu_seconds:.1f} s CPU")


def test_corpus_is_broad():
    """40 cases or more, over every family of input (the families are named in the case ids)."""
    ids = [c.id for c in SYNC_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    for family in ("webm", "avi", "mov", "mkv", "vfr", "fps", "rotated", "odd", ".png", ".jpg", "speech_8k",
                   "stereo", "float", "u8", "_51", "truncated", "garbage", "no-face", "face_lost", "two_faces",
                   "checkpoint-", "output-", "signal-sigterm", "signal-sighup", "disk-full", "nan"):
        assert any(family in i for i in ids), family
