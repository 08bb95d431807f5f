"""The held-out tail protocol on real footage: segments, the reference from the training part, the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli


def test_tail_segments_span_clips_in_order(more_data):
    from hyperlips.eval.tail import footage_videos, tail_segments

    videos = footage_videos(more_data / "grid_s1")
    assert len(videos) == 100 and videos == sorted(videos)
    segs, train = tail_segments(videos, seconds=4.0)  # 3 s clips of 75 frames at 25 fps
    assert [(s.video.name, s.start, s.stop) for s in segs] == [(videos[-2].name, 50, 75), (videos[-1].name, 0, 75)]
    assert train == (videos[-2], 0, 50)
    with pytest.raises(Exception, match="shorter than the footage"):
        tail_segments(videos[:1], seconds=10.0)
    with pytest.raises(Exception, match=r"the held-out tail \(0.04 s\) is too short to measure: it takes at least 2 s"):
        tail_segments(videos[:1], seconds=0.04)  # one frame: the 5-frame-late baseline scored a perfect match
    with pytest.raises(Exception, match=r"\(0.45 s\) is too short"):
        tail_segments(videos[:1])  # 15% of 3 s


def test_the_tail_is_the_one_finetune_held_out(more_data, tmp_path):
    """Clips in finetune's order (by clip name as the dataset spells it: ``talk`` before ``talk-2``, although
    ``talk-2.mpg`` sorts first as a path) and without the clips it cannot use (no sound, unreadable), each said: the
    tail scored is the one finetune's validation held out, never frames it trained on."""
    import shutil

    from hyperlips.errors import InputWarning
    from hyperlips.eval.tail import footage_videos, tail_segments
    from media_builders import write_video

    src = sorted((more_data / "grid_s1").glob("*.mpg"))
    folder = tmp_path / "takes"
    folder.mkdir()
    shutil.copy(src[0], folder / "talk.mpg")
    shutil.copy(src[1], folder / "talk-2.mpg")
    write_video(folder / "silent.mp4", [np.zeros((64, 64, 3), np.uint8)] * 3)  # no audio track
    (folder / "broken.mp4").write_bytes(b"not a video")
    with pytest.warns(InputWarning) as said:
        videos = footage_videos(folder)
    assert [v.name for v in videos] == ["talk.mpg", "talk-2.mpg"]
    left_out = sorted(str(w.message).split(" is left out")[0].rsplit("/", 1)[-1] for w in said)
    assert left_out == ["broken.mp4", "silent.mp4"]
    segs, _ = tail_segments(videos, seconds=2.0)
    assert [(s.video.name, s.start, s.stop) for s in segs] == [("talk-2.mpg", 25, 75)]


def test_the_tail_leaves_out_what_finetune_leaves_out(more_data, tmp_path):
    """As finetune: a clip whose sound is silent is not footage, and one whose sound stops well before its picture
    ends at its sound (the held-out tail once was that soundless end, and its audio an empty file)."""
    from hyperlips.errors import InputWarning
    from hyperlips.eval.tail import footage_videos, tail_segments
    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    clip = sorted((more_data / "grid_s1").glob("*.mpg"))[0]
    with FrameReader(clip) as r:
        frames = [fr.image for fr in r.iter_range(0, 75)]
    speech = load_audio(clip, 16000)
    folder = tmp_path / "takes"
    folder.mkdir()
    h, w = frames[0].shape[:2]
    for name, sound in (("a.mp4", speech), ("b.mp4", speech[:24000]), ("c.mp4", np.zeros(48000, np.float32))):
        with VideoWriter(folder / name, w, h, 25, audio=sound, sample_rate=16000) as vw:
            for f in frames:
                vw.write(f)
    with pytest.warns(InputWarning, match="c.mp4 is left out of the footage, as finetune leaves it out: its audio track "
                                          "is silent"):
        videos = footage_videos(folder)
    assert [v.name for v in videos] == ["a.mp4", "b.mp4"]
    segs, train = tail_segments(videos, seconds=2.0)
    assert [(s.video.name, s.start, s.stop) for s in segs] == [("a.mp4", 63, 75), ("b.mp4", 0, 38)]


def test_the_tail_of_a_fine_tuned_model_is_the_part_it_never_trained_on(more_data, tmp_path):
    """A model fine-tuned with ``--val-seconds 2.4`` on two GRID clips (6 s) was scored on the default 15% (0.9 s,
    refused) or on whatever tail was asked for, frames it trained on included, without a word: the tail is now the
    part finetune held out, as the model file (or, for older models, its run's state beside it) records it; a
    longer one asked for is scored with a warning; other footage is not affected."""
    import warnings

    import torch

    from hyperlips.errors import InputWarning, UserError
    from hyperlips.eval.tail import _unseen_tail, held_out_by
    from hyperlips.models import HyperLipsLite, LiteConfig, save_checkpoint

    videos = sorted((more_data / "grid_s1").glob("*.mpg"))[:2]  # 75 frames each at 25 fps
    held = {"frames": 60, "seconds": 2.4, "of_seconds": 6.0}
    torch.manual_seed(0)
    tiny = HyperLipsLite(LiteConfig.from_dict({"widths": [8, 16, 16, 32], "out_width": 8}))
    model = save_checkpoint(tiny, tmp_path / "me.safetensors", "hyperlips-lite", config={"held_out": held})
    assert held_out_by(model) == held
    import shutil

    assert held_out_by(shutil.copy(model, tmp_path / "ME.SAFETENSORS")) == held  # a copy named in capitals (it was
    # not read: its tail scored frames it trained on without a word)
    old = tmp_path / "old.safetensors"  # written before models recorded it: finetune's state beside it says
    save_checkpoint(tiny, old, "hyperlips-lite")
    (tmp_path / "old.work").mkdir()
    (tmp_path / "old.work/finetune.json").write_text(json.dumps({"held_out": held, "clips": ["a", "b"]}))
    assert held_out_by(old) == {**held, "clips": ["a", "b"]} and held_out_by(tmp_path / "other.safetensors") is None
    # a longer tail, scored as asked: its report says how much of it the model trained on (it said "held out")
    from hyperlips.eval.tail import TailResult, _trained_within, tail_markdown

    assert _trained_within(videos, model, 5.0) == 2.6 and _trained_within(videos, model, 2.4) == 0.0
    assert _trained_within(videos[:1], model, 2.0) == 0.0  # other footage: none of it trained on
    text = tail_markdown(TailResult("foot", [{}], 5.0, "ref.png", trained_seconds=2.6))
    assert "5.0 s scored in 1 segment(s), **2.6 s of them frames the model trained on**" in text
    assert "2.4 s held out in 1 segment(s)" in tail_markdown(TailResult("foot", [{}], 2.4, "ref.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for m in (model, old):
            assert _unseen_tail(videos, m, 0.15, None) == 2.4  # the default: what finetune held out
        assert _unseen_tail(videos, model, 0.15, 2.0) == 2.0  # shorter: all of it unseen
        assert _unseen_tail(videos, model, 0.15, 30.0) == 30.0  # longer than the footage: refused later, not said
        # to score "27.6 s of frames it trained on" of 6 s of footage
        assert _unseen_tail(videos, None, 0.15, None) is None  # no model file: as asked
        assert _unseen_tail(videos[:1], model, 0.15, None) is None  # other footage (3 s, not 6)
    with pytest.warns(InputWarning, match=r"all but the last 2.4 s of this footage: a 4.0 s tail scores 1.6 s"):
        assert _unseen_tail(videos, model, 0.15, 4.0) == 4.0
    with pytest.warns(InputWarning, match="a 3.0 s tail scores 0.6 s of frames it trained on"):
        _unseen_tail(videos, model, 0.5, None)
    short = save_checkpoint(tiny, tmp_path / "short.safetensors", "hyperlips-lite",
                            config={"held_out": {**held, "seconds": 1.0}})
    with pytest.raises(UserError, match=r"validated on the last 1.00 s of this footage only \(finetune holds out 15% "
                                        r"of the footage, or --val-seconds\); .*give --tail-seconds 2 to score a tail "
                                        r"holding 1.00 s of frames it trained on .* --val-seconds 2 or more"):
        _unseen_tail(videos, short, 0.15, None)  # (it blamed a --val-seconds the user never gave, and had no way on)


def test_tail_protocol_measures_the_model_and_both_baselines(more_data, tmp_path):
    out = tmp_path / "report"
    res = run_cli("eval", "--clips", more_data / "edtalk/pose_source2.mp4", "--protocol", "tail", "--untrained",
                  "--model", "lite", "--tail-seconds", "3", "-o", out, "--device", "cpu", "--quiet", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((out / "tail.json").read_text())
    rows = data["rows"]
    assert set(rows) == {"model", "hold", "delayed"}
    assert all(74 <= r["frames"] <= 75 for r in rows.values())  # the generated ones end with the (AAC) audio
    # the real mouth 5 frames late: its best match with the real mouth is 5 frames late, almost perfectly
    assert rows["delayed"]["opening_lag"] == 5 and rows["delayed"]["opening_r_peak"] > 0.8
    # the held reference mouth barely moves; the real one does
    assert rows["hold"]["opening_amplitude"] < 0.5 * rows["delayed"]["opening_amplitude"]
    assert (tmp_path / "report/tail/reference.png").is_file() and (tmp_path / "report/tail_preview.png").is_file()
    assert "reference mouth held" in (out / "tail.md").read_text()
    assert data["weights"] == "untrained (random) weights; mouth render"  # what made it, kept with the figures
    assert "Model: untrained (random) weights; mouth render" in (out / "tail.md").read_text()
    assert "delayed: opening r" in res.stdout


def test_tail_protocol_errors(more_data, tmp_path, monkeypatch):
    res = run_cli("eval", "--protocol", "tail", "--checkpoint", tmp_path / "x.safetensors")
    assert res.returncode == 2 and "--clips" in res.stderr
    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", "1")  # no weights given and none shipped
    res = run_cli("eval", "--clips", more_data / "grid_s1/bbaf3s.mpg", "--protocol", "tail")
    assert res.returncode == 2 and "--checkpoint" in res.stderr
    monkeypatch.delenv("HYPERLIPS_NO_SHIPPED")
    res = run_cli("eval", "--clips", more_data / "grid_s1/bbaf3s.mpg", "--protocol", "tail", "--untrained",
                  "--tail-fraction", "1.5")
    assert res.returncode == 2 and "--tail-fraction" in res.stderr
    for protocol in ("tail", "phonemes"):  # the HR decoder asked for is used (it was left out without a word)
        res = run_cli("eval", "--clips", more_data / "grid_s1/bbaf3s.mpg", "--protocol", protocol, "--tail-seconds", "2",
                      "--mouth", "render", "--hr-checkpoint", tmp_path / "nope_hr.pth", "--size", "256",
                      "-o", tmp_path / protocol)
        assert res.returncode == 2 and "checkpoint not found" in res.stderr and "nope_hr.pth" in res.stderr, res.stderr


def test_a_warped_tail_is_driven_from_shifted_frames(more_data, tmp_path, monkeypatch):
    """With the mouth warped, the tail protocol drives the model from the tail's frames shifted by half its length
    (the warp moves the input's own mouth, the answer here); the baselines keep the real tail."""
    from helpers import psnr, read_frames

    from hyperlips import pipeline
    from hyperlips.eval.tail import run_tail_protocol
    from hyperlips.models import shipped

    starter = shipped.starter()
    if starter is None:
        pytest.skip("this build ships no starter")
    driven = []
    real_sync = pipeline.LipSync.sync

    def spy(self, video, audio, output, **kw):
        driven.append((self.mouth, Path(video).name, Path(audio).name))
        from hyperlips.errors import warn

        warn(f"the video cuts to another shot 1 time (at 1.00 s): ... ({Path(video).name})")  # as the shifted copy's
        return real_sync(self, video, audio, output, **kw)  # wrap-round makes sync say of moving footage

    monkeypatch.setattr(pipeline.LipSync, "sync", spy)
    import warnings

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        res = run_tail_protocol(more_data / "edtalk/pose_source2.mp4", tmp_path / "r", checkpoint=starter.path,
                                seconds=2.0, device="cpu", mouth="warp")
    cuts = [str(w.message) for w in said if "cuts to another shot" in str(w.message)]
    assert cuts and all("real_000.mp4" in c for c in cuts), cuts  # the copy's seam is not the user's video cutting
    assert driven[0] == ("warp", "shifted_000.mp4", "real_000.mp4")
    assert [d[1] for d in driven[1:]] == ["real_000.mp4"]  # the held reference mouth, from the real tail
    work = tmp_path / "r" / "tail"
    real, shifted = read_frames(work / "real_000.mp4"), read_frames(work / "shifted_000.mp4")
    half = len(real) // 2
    assert len(shifted) == len(real) and psnr(shifted[0], real[half]) > 35
    assert set(res.rows) == {"model", "hold", "delayed"} and res.shifted
    # measures of the picture would compare other moments of the footage: left out for the model alone, but its
    # colour shift is measured against the shifted frames it was made from
    assert all(res.rows["model"][k] is None for k in ("lmd", "psnr_mouth", "ssim_mouth"))
    assert 0 <= res.rows["model"]["delta_e"] < 1.0
    assert res.rows["hold"]["lmd"] is not None and res.rows["model"]["sharpness_ratio"] > 0
    assert "shifted by half its length" in (tmp_path / "r" / "tail.md").read_text()


def test_the_tail_of_one_of_two_people_is_that_persons(more_data, tmp_path):
    """Footage of two people (an interviewer beside the speaker), a model of the one `finetune --face 1` learnt:
    `eval --protocol tail --face 1` regenerated and scored the largest face, the other person, and took its
    reference from the whole frame. Now the person picked is the one regenerated, measured and referenced."""
    import cv2

    from hyperlips.eval.tail import run_tail_protocol
    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    frames, sound = [], []
    for name in ("bbaf3s", "bbas3a"):
        clip = more_data / f"grid_s1/{name}.mpg"
        with FrameReader(clip) as r:  # the speaker on the right and smaller, a copy of them larger on the left
            for fr in r.iter_range(0, 75):
                small = cv2.resize(fr.image, None, fx=0.7, fy=0.7)
                right = np.full_like(fr.image, 90)
                y, x = (right.shape[0] - small.shape[0]) // 2, (right.shape[1] - small.shape[1]) // 2
                right[y:y + small.shape[0], x:x + small.shape[1]] = small
                frames.append(np.hstack([cv2.flip(fr.image, 1) // 2 + 40, right]))
        sound.append(load_audio(clip, 16000)[:48000])
    footage = tmp_path / "interview.mp4"
    h, w = frames[0].shape[:2]
    with VideoWriter(footage, w, h, 25, audio=np.concatenate(sound), sample_rate=16000) as vw:
        for f in frames:
            vw.write(f)
    res = run_tail_protocol(footage, tmp_path / "r", untrained=True, model="lite", seconds=2.0, device="cpu",
                            baselines=False, face_index=1)
    ref = cv2.imread(str(tmp_path / "r/tail/reference.png"))
    assert ref.shape[1] < w / 2  # the picked person's face alone, not the whole frame
    with FrameReader(tmp_path / "r/tail/model_000.mp4") as g, FrameReader(tmp_path / "r/tail/real_000.mp4") as r:
        changed = np.sum([(np.abs(a.image.astype(int) - b.image.astype(int)).max(axis=2) > 30).sum(axis=0)
                          for a, b in zip(g.iter_range(0, 20), r.iter_range(0, 20))], axis=0)  # past coding noise
    assert changed[w // 2:].sum() > 100 * max(1, changed[: w // 2].sum()), (changed[: w // 2].sum(),
                                                                            changed[w // 2:].sum())
    assert res.rows["model"]["frames"] >= 45  # measured on that person: a face on every frame


def test_a_person_models_tail_is_scored_on_the_person_it_learnt(more_data, tmp_path):
    """`eval --protocol tail` without --face on the footage a model was fine-tuned on with `--face 1` scored the other
    person: the choice its run recorded is used there (and only there: an index may be anyone in other footage)."""
    from hyperlips.data.sources import FINETUNE_STATE, default_work
    from hyperlips.eval.tail import _frames_used, _probed, trained_face

    clip = more_data / "grid_s1/bbaf3s.mpg"
    total = _frames_used(clip, _probed(clip)) / float(_probed(clip).fps)
    model = tmp_path / "me.safetensors"  # a model file without the record: its run's state beside it
    work = default_work(model)
    work.mkdir()
    held = {"seconds": 0.5, "frames": 12, "of_seconds": total, "face": {"face": 1}}
    (work / FINETUNE_STATE).write_text(json.dumps({"held_out": held}))
    assert trained_face([clip], model) == (1, None)
    held["face"] = {"face_box": [10, 20, 300, 400]}
    (work / FINETUNE_STATE).write_text(json.dumps({"held_out": held}))
    assert trained_face([clip], model) == (None, [10, 20, 300, 400])
    assert trained_face([more_data / "grid_s1/bbas3a.mpg", clip], model) == (None, None)  # other footage
    held.pop("face")
    (work / FINETUNE_STATE).write_text(json.dumps({"held_out": held}))
    assert trained_face([clip], model) == (None, None)


def test_the_models_record_applies_to_the_clips_it_learnt_from(tmp_path):
    """eval took a folder for the model's footage by its length alone: its clips renamed (the same length), the
    frames it trained on were scored as unseen; a clip added (longer), the held-out part was no longer used."""
    import torch

    from hyperlips.errors import InputWarning
    from hyperlips.eval.tail import footage_videos, models_record
    from hyperlips.models import HyperLipsLite, LiteConfig, save_checkpoint

    torch.manual_seed(0)
    tiny = HyperLipsLite(LiteConfig.from_dict({"widths": [8, 16, 16, 32], "out_width": 8}))
    held = {"frames": 50, "seconds": 2.0, "of_seconds": 6.0, "clips": ["a", "b"]}
    model = save_checkpoint(tiny, tmp_path / "me.safetensors", "hyperlips-lite", config={"held_out": held})
    folder = tmp_path / "takes"
    folder.mkdir()
    for name in ("a", "b", "0new"):  # (read by nothing: the record names the clips)
        (folder / f"{name}.mp4").write_bytes(b"not read")
    assert models_record(folder, model) == model
    with pytest.warns(InputWarning, match="0new.mp4 is left out of the footage, as finetune left it out"):
        assert footage_videos(folder, model) == [folder / "a.mp4", folder / "b.mp4"]
    (folder / "a.mp4").rename(folder / "zz.mp4")
    with pytest.warns(InputWarning, match=r"takes is not the footage .*me.safetensors was fine-tuned on \(it lacks a\)"):
        assert models_record(folder, model) is None
    assert models_record(folder / "b.mp4", model) == model  # one file: its length decides, as before
