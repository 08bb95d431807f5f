"""The sync judge (``models/sync_judge.py``, ``eval/sync_judge.py``, ``train judge``): mouth shapes read from the
speech against FaceMesh's, compared over windows of frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import own_and_late_offsets
from test_train_data import make_view, small_dataset  # noqa: F401  (session fixture)


def _direct_correlations(face, audio, valid_audio, window):
    m = len(face) - window + 1
    sim, valid = np.zeros((m, audio.shape[1])), np.zeros((m, audio.shape[1]), bool)
    for i in range(m):
        f = face[i:i + window]
        for k in range(audio.shape[1]):
            a = audio[i:i + window, k]
            valid[i, k] = np.isfinite(f).all() and valid_audio[i:i + window, k].all()
            if valid[i, k]:
                fc, ac = f - f.mean(0), a - a.mean(0)
                sim[i, k] = (fc * ac).sum() / np.sqrt((fc * fc).sum() * (ac * ac).sum())
    return sim, valid


def test_window_correlations_are_the_pearson_correlation_of_each_window():
    from hyperlips.eval.sync_judge import window_correlations

    rng = np.random.default_rng(0)
    face, audio = rng.normal(size=(40, 3)), rng.normal(size=(40, 5, 3))
    audio[:, 2] = 2.0 * face + 1.0  # offset 2 follows the face exactly (scaled and moved: correlation 1)
    face[17] = np.nan  # a frame without landmarks
    inside = np.ones((40, 5), bool)
    inside[:3, 0] = False  # audio before its start at one offset
    sim, valid = window_correlations(face, audio, inside, 6)
    want, want_valid = _direct_correlations(face, audio, inside, 6)
    assert sim.shape == (35, 5) and np.array_equal(valid, want_valid)
    np.testing.assert_allclose(sim[valid], want[valid], atol=1e-9)
    assert not valid[12:18].any() and valid[11].all() and valid[18].all()  # windows holding frame 17
    assert not valid[:3, 0].any() and valid[3, 0]
    np.testing.assert_allclose(sim[valid[:, 2], 2], 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="too short for the sync judge: 5 frames, at least 6"):
        window_correlations(face[:5], audio[:5], inside[:5], 6)


def test_the_basis_whitens_the_movement_of_the_mouth():
    from hyperlips.train.judge import fit_basis

    rng = np.random.default_rng(1)
    mix = rng.normal(size=(4, 106)) * np.array([5.0, 2.0, 1.0, 0.5])[:, None]
    tracks = []
    for k in range(3):  # each clip with its own mean, which the basis must not see
        s = (rng.normal(size=(300, 4)) @ mix + 10 * k).astype(np.float32)
        ok = np.ones(300, bool)
        ok[::7] = False
        s[~ok] = np.nan
        tracks.append((f"c{k}", None, None, s, ok))
    basis = fit_basis(tracks, 3)
    z = np.concatenate([(s[ok] - s[ok].mean(0)) @ basis.T for _, _, _, s, ok in tracks])
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(3), atol=1e-4)


def test_the_stream_reading_equals_the_window_reading():
    """``shapes_at`` over a whole stream gives what ``forward`` gives on the window centred on the same moment
    (a window starting on the encoder's stride), smoothing taps included."""
    from hyperlips.models.lite_audio import AudioShapeEncoder

    torch.manual_seed(0)
    enc = AudioShapeEncoder(80, 16, 106, 2, 0.0, smooth_ms=80.0).eval()
    mel = torch.randn(1, 80, 400)
    steps = enc.min_steps
    starts = [100, 148, 200]  # multiples of the stride (4)
    windows = torch.stack([mel[0, :, s:s + steps] for s in starts])[:, None]
    with torch.no_grad():
        want = enc(windows)
        got = enc.shapes_at(mel, torch.tensor([[s + steps // 2 for s in starts]], dtype=torch.float32))[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_train_judge_writes_a_judge_that_eval_takes_and_training_refuses(small_dataset, tmp_path):  # noqa: F811
    from hyperlips.errors import CheckpointError
    from hyperlips.eval.sync_score import load_expert
    from hyperlips.models import SyncJudge
    from hyperlips.models.checkpoint import load_expert_checkpoint
    from hyperlips.train.judge import fit_judge

    view = make_view(small_dataset, tmp_path / "view", ["grid_s1/bbaf3s", "grid_s1/bbas3a"], val_frames=20)
    torch.set_num_threads(1)
    rep = fit_judge(view, tmp_path / "run", steps=4, members=1, window=8, components=4, tune_steps=2, progress=False)
    assert set(rep["auc"]) == {"5", "8", "16"} and rep["auc"]["16"] is None  # 20 held-out frames: no 16 + 5
    assert rep["tune_steps"] == 2 and 0.0 <= rep["auc_before_tuning"] <= 1.0
    assert 0.0 <= rep["auc"]["8"] <= 1.0 and set(rep["offsets"]) == {"grid_s1/bbaf3s", "grid_s1/bbas3a"}
    assert json.loads((tmp_path / "run/report.json").read_text())["auc"] == rep["auc"]
    judge = load_expert(tmp_path / "run/judge.safetensors")
    assert isinstance(judge, SyncJudge) and judge.config.window == 8 and judge.basis.shape == (4, 106)
    with pytest.raises(CheckpointError, match="not a lip-sync expert"):
        load_expert_checkpoint(tmp_path / "run/judge.safetensors")  # the sync loss needs an expert


def test_a_judge_with_mel_smoothing_reads_the_smoothed_mel_wherever_it_scores(small_dataset, tmp_path):  # noqa: F811
    """``mel_smooth`` travels in the judge's file, and eval's offset search smooths the mel before normalising it
    as the fit did: the same weights with mel_smooth 0 given the smoothed mel score exactly the same."""
    from hyperlips.eval.sync_judge import judge_score
    from hyperlips.eval.sync_score import load_expert
    from hyperlips.media.audio import smooth_across_frequency
    from hyperlips.models import create_model
    from hyperlips.train.judge import fit_judge

    view = make_view(small_dataset, tmp_path / "view", ["grid_s1/bbaf3s", "grid_s1/bbas3a"], val_frames=20)
    torch.set_num_threads(1)
    rep = fit_judge(view, tmp_path / "run", steps=2, members=1, window=8, components=4, mel_smooth=12,
                    tune_steps=0, progress=False)
    judge = load_expert(tmp_path / "run/judge.safetensors")
    assert rep["mel_smooth"] == 12 and judge.config.mel_smooth == 12
    plain = create_model("sync-judge", {**judge.config.to_dict(), "mel_smooth": 0}).eval()
    plain.load_state_dict(judge.state_dict())
    rng = np.random.default_rng(0)
    face = rng.normal(size=(468, 2)) * 40 + 200
    landmarks = face + rng.normal(size=(60, 468, 2))  # a face whose points wander a little, 60 frames
    times, mel = np.arange(60) / 25.0, rng.normal(size=(80, 220)).astype(np.float32) - 2
    got = judge_score(judge, landmarks, times, mel, 25.0, vshift=4)
    same = judge_score(plain, landmarks, times, smooth_across_frequency(mel, 12), 25.0, vshift=4)
    unsmoothed = judge_score(plain, landmarks, times, mel, 25.0, vshift=4)
    np.testing.assert_allclose(got.curve, same.curve, atol=1e-5)
    assert np.abs(got.curve - unsmoothed.curve).max() > 1e-3


def test_tuning_ranks_in_sync_windows_above_those_out_of_sync(small_dataset, tmp_path):  # noqa: F811
    """``tune_judge`` trains on the judge's own ranking: on the clips it tuned on, in-sync windows score above
    windows 5-15 frames off more often than after the regression alone; clips too short for a window and its
    shifts leave the judge untouched."""
    from hyperlips.data.datasets import Manifest
    from hyperlips.models import create_model
    from hyperlips.train.judge import fit_basis, shape_tracks, window_auc
    from hyperlips.train.judge_tune import tune_judge
    from hyperlips.train.lite_audio import fit_audio_encoder

    view = make_view(small_dataset, tmp_path / "view", ["grid_s1/bbaf3s", "grid_s1/bbas3a", "grid_s1/bbaf2n"],
                     val_fraction=0.0)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tracks = shape_tracks(Manifest.load(view).open_clips("all"))
    judge = create_model("sync-judge", {"window": 8, "components": 4, "audio_members": 1, "audio_width": 32})
    plain = [(m, t, np.nan_to_num(s), ok) for _, m, t, s, ok in tracks]
    fit_audio_encoder(judge.audio_encoder, plain, steps=20, seed=0)
    judge.basis.copy_(torch.from_numpy(fit_basis(tracks, 4)))
    judge.eval()
    before = np.mean([window_auc(judge, tracks, 8, seed=s)[0] for s in range(3)])
    short = [(m, t[:37], s[:37], ok[:37]) for m, t, s, ok in plain]  # 37 < 8 + 2 x 15 frames
    state = {k: v.clone() for k, v in judge.state_dict().items()}
    assert tune_judge(judge, short, steps=5) == 0
    faceless = [(m, t, s, np.zeros_like(ok)) for m, t, s, ok in plain]  # long enough, but no frame has a shape
    assert tune_judge(judge, faceless, steps=5) == 0
    assert all(torch.equal(v, judge.state_dict()[k]) for k, v in state.items())
    assert tune_judge(judge, plain, steps=60, lr=3e-3, batch=16) == 60
    after = np.mean([window_auc(judge, tracks, 8, seed=s)[0] for s in range(3)])
    assert not judge.training and after > before + 0.05, (before, after)


def test_train_judge_command_refuses_bad_settings(tmp_path, capsys):
    from hyperlips.cli import main

    assert main(["train", "judge", str(tmp_path), "-o", str(tmp_path / "o"), "--window", "1"]) != 0
    assert "--window >= 2" in capsys.readouterr().err
    assert main(["train", "judge", str(tmp_path), "-o", str(tmp_path / "o"), "--tune-steps", "-1"]) != 0
    assert "--tune-steps >= 0" in capsys.readouterr().err
    # more directions than the mouth shape has numbers: a traceback after the whole fit
    assert main(["train", "judge", str(tmp_path), "-o", str(tmp_path / "o"), "--components", "107"]) == 2
    assert "--components must be at most 106" in capsys.readouterr().err
    # a folder holding a judge: it was replaced without a word, where the other stages refuse
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "judge.safetensors").write_bytes(b"the judge fitted before")
    assert main(["train", "judge", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "already holds a judge (judge.safetensors" in capsys.readouterr().err
    assert (tmp_path / "o" / "judge.safetensors").read_bytes() == b"the judge fitted before"


# ---------------------------------------------------------------------------------------------- the shipped judge
def _shipped_judge():
    from hyperlips.eval.sync_score import load_expert
    from hyperlips.models import shipped

    found = shipped.judge()
    if found is None:
        pytest.skip("this build ships no sync judge")
    return load_expert(found.path)


def test_shipped_judge_finds_a_three_frame_delay_on_people_it_never_saw(real_data, tmp_path):
    """On held-out speakers (no clip of ``real/`` was in its data): each clip with its own speech within a frame of
    offset 0, and with the speech 3 frames late (120 ms of silence in front) 3 frames later."""
    judge = _shipped_judge()
    for clip in (real_data / "retalking" / "face2.mp4", real_data / "hyperlips" / "video2.mp4"):
        on_time, delayed = own_and_late_offsets(clip, judge, tmp_path)
        assert on_time.extra == {"scorer": "judge", "window": judge.config.window}
        assert abs(on_time.offset) <= 1 and delayed.offset - on_time.offset == 3, (clip.name, on_time.offset,
                                                                                    delayed.offset)
        assert on_time.confidence > 0.05, (clip.name, on_time.confidence)


def test_silent_speech_gets_a_status_line_instead_of_an_offset(real_data, tmp_path):
    """Against silence any offset the search finds is noise: no score, the reason instead."""
    import soundfile as sf

    from hyperlips.eval.protocols import evaluate_pair

    judge = _shipped_judge()
    silence = tmp_path / "silence.wav"
    sf.write(str(silence), np.zeros(16000 * 2, np.float32), 16000)
    res = evaluate_pair(real_data / "retalking" / "face2.mp4", None, silence, expert_model=judge, perceptual=False,
                        max_seconds=1.2)
    assert res.sync["expert"] == {"status": "unavailable: the speech is silent (no sample above -60 dBFS)",
                                  "scorer": "judge"}
    spoken = evaluate_pair(real_data / "retalking" / "face2.mp4", None, None, expert_model=judge, perceptual=False,
                           max_seconds=1.2)
    assert spoken.sync["expert"]["generated"] is not None  # its own speech: scored


def test_a_clip_shorter_than_the_judges_window_is_reported_not_fatal(real_data, tmp_path):
    from hyperlips.eval.protocols import evaluate_pair

    judge = _shipped_judge()
    res = evaluate_pair(real_data / "retalking" / "face2.mp4", None, None, expert_model=judge, perceptual=False,
                        max_seconds=0.6)
    assert res.frames == 15 and res.sync["expert"]["status"].startswith("unavailable: too short for the sync judge")
    assert res.metrics["jitter_gen"] is not None  # the other measures stand
    from hyperlips.eval.report import write_clip_report

    text = (write_clip_report(res, tmp_path / "r")["markdown"]).read_text()
    assert "**Our sync judge (mouth shapes)**: unavailable: too short" in text  # was titled "Our SyncNet expert"


def test_a_report_that_cannot_be_written_leaves_the_one_before_whole(real_data, tmp_path, monkeypatch):
    """On a full disk `eval` left report.json cut short under its own name, beside the plots of the new run and the
    report.md of the old one, and the error named no file: the files of a report are written together or not at all,
    and the error names the file."""
    import errno
    import json
    from pathlib import Path

    from hyperlips.eval.protocols import evaluate_pair
    from hyperlips.eval.report import write_clip_report

    res = evaluate_pair(real_data / "retalking" / "face2.mp4", None, None, expert_model=_shipped_judge(),
                        perceptual=False, max_seconds=0.6)
    folder = tmp_path / "r"
    write_clip_report(res, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {"report.json", "report.md"} <= set(before)
    real = Path.write_text

    def full(self, text, *a, **k):
        if self.name.startswith(".report.md"):
            real(self, text[: len(text) // 2], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        write_clip_report(res, folder)
    assert caught.value.filename == str(folder / "report.md")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old report, whole; no partial file
    assert json.loads((folder / "report.json").read_text())


def test_a_validation_clip_without_a_full_window_gets_no_offset_instead_of_stopping_the_fit():
    from hyperlips.models import create_model
    from hyperlips.train.judge import clip_offsets

    torch.manual_seed(0)
    judge = create_model("sync-judge", {"window": 6, "components": 3, "audio_width": 8, "audio_members": 1}).eval()
    rng = np.random.default_rng(0)
    mel, times = rng.normal(size=(80, 200)).astype(np.float32), np.arange(50) / 25.0
    shapes = rng.normal(size=(50, 106)).astype(np.float32)
    holes = shapes.copy()
    holes[::5] = np.nan  # never 6 frames in a row with a shape
    got = clip_offsets(judge, [("a", mel, times, shapes, np.ones(50, bool)), ("b", mel, times, holes, np.ones(50, bool))])
    assert isinstance(got["a"], int) and -15 <= got["a"] <= 15 and got["b"] is None
