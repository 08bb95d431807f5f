"""``hyperlips preprocess``: layouts, speaker splits, per-frame outputs on real clips, resumability, skipped clips."""

from __future__ import annotations

import json
import os
import warnings
import time
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from test_train_data import build_small_dataset, small_dataset  # noqa: F401  (session fixture)

from hyperlips.errors import InputWarning


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


# ---------------------------------------------------------------------------------------------- layouts
def test_find_videos_walks_lrs2_and_mead_layouts(tmp_path):
    from hyperlips.data.preprocess import clip_id_of, find_videos, speaker_of

    lrs2 = _touch(tmp_path / "mvlrs_v1/main/5535415699068794046/00001.mp4")
    mead = _touch(tmp_path / "MEAD/M003/video/front/angry/level_1/001.mp4")
    vox = _touch(tmp_path / "vox/dev/mp4/id00012/21Uxsk56VDQ/00001.mp4")
    hdtf = _touch(tmp_path / "WDA_BarackObama_000.mp4")
    camcorder = [_touch(tmp_path / "cam" / name) for name in ("00001.MTS", "00002.m2ts", "old phone.3gp")]
    _touch(tmp_path / ".hidden/x.mp4")
    _touch(tmp_path / "hyperlips_eval/take1_tail/tail/model_000.mp4")  # eval's report, run in the footage's folder:
    _touch(tmp_path / "tail_report/tail/model_000.mp4")  # (the next finetune was refused as "other footage"), by
    from hyperlips.data.sources import mark_report  # default or named with -o (eval marks its report folders)

    mark_report(tmp_path / "tail_report")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "audio.wav")
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "moved_away.mp4")  # a link to nothing: left out, said
    with pytest.warns(InputWarning, match="gone.mp4 is left out: it links to .*moved_away.mp4, which does not exist"):
        found = find_videos(tmp_path)
    assert set(found) == {lrs2, mead, vox, hdtf, *camcorder}
    # a link to a folder above (a "latest" link) made each clip a clip 40 times over; a link to a clip, twice
    (tmp_path / "cam" / "again").symlink_to(tmp_path)
    (tmp_path / "best take.mp4").symlink_to(hdtf)
    with pytest.warns(InputWarning, match=r"best take.mp4 is left out: it is .*WDA_BarackObama_000.mp4 again"):
        assert set(find_videos(tmp_path)) == set(found)
    (tmp_path / "cam" / "again").unlink()
    (tmp_path / "best take.mp4").unlink()
    rel = {p: PurePosixPath(p.relative_to(tmp_path).as_posix()) for p in found}
    assert speaker_of(rel[lrs2]) == "5535415699068794046"
    assert speaker_of(rel[mead]) == "M003"
    assert speaker_of(rel[vox]) == "id00012"
    assert speaker_of(rel[hdtf]) == "WDA_BarackObama"
    assert speaker_of(rel[mead], "one") == speaker_of(rel[lrs2], "one")
    # MEAD and VoxCeleb clips gathered in one folder, named by their people: one speaker per id, not one folder
    flat = [PurePosixPath(p) for p in ("MEAD/W023_level_2_surprised_010.mp4", "MEAD/M003_level_1_happy_024.mp4",
                                       "vox/id00012-21Uxsk56VDQ-00001.mp4", "talks/M0031_interview.mp4")]
    assert [speaker_of(r) for r in flat] == ["W023", "M003", "id00012", "talks"]
    assert clip_id_of(rel[lrs2]) == "mvlrs_v1/main/5535415699068794046/00001"
    assert clip_id_of(PurePosixPath("a b/c (1).mp4")) == "a_b/c__1_"


def test_clip_names_stay_distinct():
    """Names in any script are kept (they were all "_" once, so 会議 and 講演 were one clip), and clips whose names
    still meet (another file type, a space against an underscore, letter case) get their file type added."""
    from hyperlips.data.sources import clip_ids

    rels = [PurePosixPath(p) for p in ("talk.mp4", "talk.mov", "会議.mp4", "講演.mp4", "лекция01.mp4", "доклад01.mp4",
                                       "a b.mp4", "a_b.mp4", "A_B.mkv", "clip é.mp4", "clip e\u0301.mov", "x/talk.mp4",
                                       "नमस्ते.mp4", "สวัสดี.mp4")]
    ids = clip_ids(rels)
    assert ids == ["talk", "talk_mov", "会議", "講演", "лекция01", "доклад01", "a_b", "a_b_mp4", "A_B_mkv", "clip_é",
                   "clip_é_mov", "x/talk", "नमस्ते", "สวัสดี"]  # (an é typed as e + accent is the same name: NFC;
    # the vowel signs of Indic and Thai scripts are kept with their letters)
    assert len({i.casefold() for i in ids}) == len(ids)


def test_clips_whose_names_meet_are_all_preprocessed(tmp_path, more_data):
    """A folder with talk.mpg, talk.mpeg and 会議.mpg: three clips, each its own (a clip skipped as "the same name"
    once, and finetune then counted it twice and trained on its held-out part)."""
    import shutil

    from hyperlips.data import preprocess as pp

    src = tmp_path / "src"
    src.mkdir()
    for name, clip in (("talk.mpg", "bbaf3s"), ("talk.mpeg", "bbas3a"), ("会議.mpg", "bbbm1s")):
        shutil.copy(more_data / "grid_s1" / f"{clip}.mpg", src / name)
    report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
    assert report.done == 3 and not report.skipped, report.skipped
    assert sorted(p.name for p in (tmp_path / "ds" / "clips").iterdir()) == sorted(["talk", "talk_mpg", "会議"])


def test_a_folder_name_that_is_not_utf8_is_preprocessed(tmp_path, more_data):
    """A speaker's folder named in Latin-1 bytes (an old archive, a Windows share; or any accented name under a
    locale that is not UTF-8): every clip was made, then the split's hash of the speaker's name failed (a traceback,
    exit 1, no manifest), and again on every run after."""
    import shutil

    from hyperlips.data import preprocess as pp

    src = tmp_path / "src"
    latin = os.fsdecode(os.fsencode(src) + b"/caf\xe9")  # (its undecodable byte kept as Python keeps it)
    os.makedirs(latin)
    (src / "bob").mkdir()
    shutil.copy(more_data / "grid_s1" / "bbaf3s.mpg", Path(latin) / "a1.mpg")
    shutil.copy(more_data / "grid_s1" / "bbas3a.mpg", src / "bob" / "b1.mpg")
    for _ in range(2):
        report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
        assert not report.skipped, report.skipped
    assert report.existing == 2
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(c["split"] for c in manifest["clips"]) == ["train", "val"]  # two speakers, one held out


def test_folders_of_the_users_under_the_dataset_are_never_deleted(tmp_path, more_data):
    """An editor's project folder as the dataset (its clips/interview holding takes), or the footage's own folder:
    the folder of a clip's name was deleted, takes and footage with it, and every empty folder below clips/ too. A
    folder preprocess did not make is refused before any work; empty folders of others are kept."""
    import shutil

    from hyperlips.data import preprocess as pp
    from hyperlips.errors import UserError

    proj = tmp_path / "proj"
    (proj / "clips" / "interview").mkdir(parents=True)
    (proj / "clips" / "interview" / "take_raw.mov").write_bytes(b"the editor's own take")
    (proj / "clips" / "empty_for_later").mkdir()
    take = Path(shutil.copy(more_data / "grid_s1" / "bbaf3s.mpg", tmp_path / "interview.mpg"))
    with pytest.raises(UserError, match=r"interview holds files preprocess did not make \(no meta.json\)"):
        pp.preprocess(take, proj, pp.PreprocessOptions(), workers=1, progress=False)
    assert (proj / "clips" / "interview" / "take_raw.mov").read_bytes() == b"the editor's own take"
    (proj / "clips" / "interview" / "take_raw.mov").unlink()  # an empty folder of that name: used
    report = pp.preprocess(take, proj, pp.PreprocessOptions(), workers=1, progress=False)
    assert report.done == 1 and (proj / "clips" / "empty_for_later").is_dir()
    # the dataset written into the footage's own folder: the footage under clips/ is not deleted
    footage = tmp_path / "footage"
    (footage / "clips" / "take1").mkdir(parents=True)
    shutil.copy(more_data / "grid_s1" / "bbas3a.mpg", footage / "take1.mpg")
    shutil.copy(more_data / "grid_s1" / "bbbm1s.mpg", footage / "clips" / "take1" / "cam_a.mpg")
    with pytest.raises(UserError, match="take1 holds files preprocess did not make"):
        pp.preprocess(footage, footage, pp.PreprocessOptions(), workers=1, progress=False)
    assert (footage / "clips" / "take1" / "cam_a.mpg").is_file()


def test_a_video_named_with_nearly_255_bytes_is_preprocessed(tmp_path, more_data):
    """A legal name of 249 bytes: the clip's temporary folder (its name and ".partial-PID") passed the 255 bytes a
    name may have, and preprocess (and finetune) ended in a traceback."""
    import shutil

    from hyperlips.data import preprocess as pp

    src = tmp_path / "v"
    src.mkdir()
    shutil.copy(more_data / "grid_s1" / "bbaf3s.mpg", src / ("p" * 245 + ".mpg"))
    report = pp.preprocess(src, tmp_path / "d", pp.PreprocessOptions(), workers=1, progress=False)
    assert report.done == 1 and [p.name for p in (tmp_path / "d" / "clips").iterdir()] == ["p" * 245]


def test_a_second_footage_folder_does_not_replace_the_clips_of_the_first(tmp_path, more_data):
    """`preprocess day1 data`, then `preprocess day2 data`, both holding a take1: day1's clip was replaced by day2's
    without a word. Refused before any work; the same folder again (or moved) keeps its clips."""
    import shutil

    from hyperlips.data import preprocess as pp
    from hyperlips.errors import UserError

    for day, clip in (("day1", "bbaf3s"), ("day2", "bbas3a")):
        (tmp_path / day).mkdir()
        shutil.copy(more_data / "grid_s1" / f"{clip}.mpg", tmp_path / day / "take1.mpg")
    data = tmp_path / "data"
    assert pp.preprocess(tmp_path / "day1", data, pp.PreprocessOptions(), workers=1, progress=False).done == 1
    made = (data / "clips" / "take1" / "meta.json").read_bytes()
    with pytest.raises(UserError, match=r"holds clips made from .*day1; preprocessing .*day2 into it would replace 1 "
                                        r"of them made from other files \(take1\)"):
        pp.preprocess(tmp_path / "day2", data, pp.PreprocessOptions(), workers=1, progress=False)
    assert (data / "clips" / "take1" / "meta.json").read_bytes() == made
    again = pp.preprocess(tmp_path / "day1", data, pp.PreprocessOptions(), workers=1, progress=False)
    assert again.existing == 1 and again.done == 0
    # given relatively, then from another folder; and with day1 gone (deleted once preprocessed): refused too (the
    # folder was recorded as typed, "day1", and compared only where that path existed from the working folder)
    import os

    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert pp.preprocess(Path("day1"), Path("data"), pp.PreprocessOptions(), workers=1, progress=False).existing == 1
        os.chdir(tmp_path / "day2")
        with pytest.raises(UserError, match=r"holds clips made from .*day1; preprocessing .*day2 into it"):
            pp.preprocess(tmp_path / "day2", data, pp.PreprocessOptions(), workers=1, progress=False)
    finally:
        os.chdir(here)
    (tmp_path / "day1").rename(tmp_path / "archived")
    with pytest.raises(UserError, match=r"holds clips made from .*day1; preprocessing .*day2 into it"):
        pp.preprocess(tmp_path / "day2", data, pp.PreprocessOptions(), workers=1, progress=False)
    assert (data / "clips" / "take1" / "meta.json").read_bytes() == made
    (tmp_path / "moved").mkdir()  # the same folder moved elsewhere keeps its clips
    (tmp_path / "archived").rename(tmp_path / "moved" / "day1")
    assert pp.preprocess(tmp_path / "moved" / "day1", data, pp.PreprocessOptions(), workers=1,
                         progress=False).existing == 1


def test_footage_added_later_never_moves_a_trained_speaker_into_validation():
    """Preprocessing again after adding speakers (a run may have trained on the first ones): the speakers already
    split keep their side, new ones make up the held-out share (the split was drawn afresh, and a trained speaker
    could be held out)."""
    from hyperlips.data.sources import assign_splits

    first = [{"id": f"s{k}/0", "speaker": f"s{k}"} for k in range(10)]
    assign_splits(first, 0.1)
    sides = {e["speaker"]: e["split"] for e in first}
    more = [dict(e) for e in first] + [{"id": f"t{k}/0", "speaker": f"t{k}"} for k in range(12)]
    assign_splits(more, 0.1, sides)
    assert all(e["split"] == sides[e["speaker"]] for e in more if e["speaker"] in sides)
    assert sum(e["split"] == "val" for e in more) == 3  # ceil(0.1 * 22)
    fresh = [dict(e) for e in more]
    assign_splits(fresh, 0.1)  # drawn afresh, as before: some speaker trained on would have moved
    assert any(e["split"] != sides[e["speaker"]] for e in fresh if e["speaker"] in sides)


def test_the_manifest_keeps_its_split_when_clips_are_added(tmp_path):
    """``preprocess`` run again on a dataset whose footage grew: its manifest keeps the sides it gave before."""
    from hyperlips.data.manifests import write_manifest
    from hyperlips.data.preprocess import PreprocessOptions

    def add(speaker):
        d = tmp_path / "clips" / speaker / "0"
        d.mkdir(parents=True)
        (d / "meta.json").write_text(json.dumps({"id": f"{speaker}/0", "source": f"{speaker}/0.mp4", "speaker": speaker,
                                                 "n_frames": 50, "n_valid": 50, "fps": 25.0, "seconds": 2.0}))

    for k in range(10):
        add(f"s{k}")
    opts = PreprocessOptions(val_fraction=0.1)
    before = {c["speaker"]: c["split"] for c in write_manifest(tmp_path, opts)["clips"]}
    for k in range(12):
        add(f"t{k}")
    after = {c["speaker"]: c["split"] for c in write_manifest(tmp_path, opts)["clips"]}
    assert all(after[sp] == side for sp, side in before.items())


def test_split_holds_out_whole_speakers_deterministically():
    from hyperlips.data.preprocess import assign_splits

    entries = [{"id": f"{s}/{k}", "speaker": s} for s in ("M003", "M005", "W009", "W011", "M030") for k in range(4)]
    by = assign_splits(entries, 0.2)
    assert by == "speaker"
    val_speakers = {e["speaker"] for e in entries if e["split"] == "val"}
    train_speakers = {e["speaker"] for e in entries if e["split"] == "train"}
    assert len(val_speakers) == 1 and not val_speakers & train_speakers
    again = [dict(e) for e in reversed(entries)]  # order does not matter
    assign_splits(again, 0.2)
    assert {e["id"]: e["split"] for e in again} == {e["id"]: e["split"] for e in entries}
    one = [{"id": f"clip{k}", "speaker": "me"} for k in range(10)]
    assert assign_splits(one, 0.2) == "clip"
    assert sum(e["split"] == "val" for e in one) == 2
    lone = [{"id": "only", "speaker": "me"}]
    assign_splits(lone, 0.2)
    assert lone[0]["split"] == "train"  # never hold out the only clip


# ---------------------------------------------------------------------------------------------- real clips
def test_real_clips_give_one_crop_sketch_mask_and_landmarks_per_frame(small_dataset):  # noqa: F811
    from hyperlips.data.datasets import Clip, Manifest
    from hyperlips.data.preprocess import check_dataset
    from hyperlips.media.video import probe

    assert check_dataset(small_dataset) == []
    m = Manifest.load(small_dataset)
    ids = {c["id"] for c in m.clips}
    assert ids == {"grid_s1/bbaf3s", "grid_s1/bbas3a", "lrs2/00001", "lrs2/00002", "retalking/face1"}
    assert [s["source"] for s in m.data["skipped"]] == ["broken/bad.mp4"]
    assert m.data["skipped"][0]["reason"].startswith("unreadable")
    splits = {}
    for e in m.clips:
        splits.setdefault(e["speaker"], set()).add(e["split"])
    assert all(len(v) == 1 for v in splits.values())  # no speaker on both sides
    assert {e["split"] for e in m.clips} == {"train", "val"}
    for e in m.clips:
        clip = Clip(m.root / "clips" / e["id"])
        src = Path(m.data["source_root"]) / e["source"]
        info = probe(src)
        assert clip.n_frames == info.n_frames == len(clip.times) == len(clip.stack("face128"))
        assert len(clip.stack("sketch128")) == len(clip.stack("mask128")) == clip.n_frames
        assert clip.valid.mean() > 0.95 and clip.meta["n_landmarks"] >= 0.9 * clip.n_frames
        # frames at a constant rate, each the source frame of its time: the nominal rate, or the average one for a
        # variable-rate clip (retalking/face1: tagged 30 fps, 135 frames over 6.1 s)
        assert abs(clip.fps - (info.n_frames / info.duration if e["id"] == "retalking/face1" else info.fps)) < 1e-3
        assert np.allclose(clip.times, np.arange(clip.n_frames) / clip.fps)
        # the mel covers the last frame's window: T = 1 + samples // 200
        assert clip.mel.shape[0] == 80 and clip.mel.shape[1] >= int(clip.times[-1] * 80) + 1
        i = int(np.flatnonzero(clip.valid)[len(clip.times) // 2])
        mask = clip.stack("mask128").read(i, color=False)
        sketch = clip.stack("sketch128").read(i, color=False)
        ys, xs = np.nonzero(mask > 127)
        assert len(ys) > 50 and 0.55 < ys.mean() / 128 < 0.95 and 0.3 < xs.mean() / 128 < 0.7  # lips: lower middle
        assert (sketch > 127).mean() > 0.03  # lines were drawn
    assert Clip(m.root / "clips/retalking/face1").fps == pytest.approx(22.13, abs=0.01)


def test_crops_are_the_inference_crops(small_dataset):  # noqa: F811
    from hyperlips.data.datasets import Clip, Manifest
    from hyperlips.face.detect import Box
    from hyperlips.media.video import FrameReader
    from hyperlips.pipeline import face_crop

    m = Manifest.load(small_dataset)
    clip = Clip(m.root / "clips/grid_s1/bbaf3s")
    src = Path(m.data["source_root"]) / clip.meta["source"]
    boxes = np.load(clip.dir / "boxes.npy")
    with FrameReader(src) as r:
        for fr in r.iter_range(30, 33):
            want = face_crop(fr.image, Box.from_array(boxes[fr.index]), 128)
            got = clip.stack("face128").read(fr.index)
            mse = np.mean((want.astype(float) - got.astype(float)) ** 2)
            assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 38  # only the JPEG (q95) differs
            assert abs(fr.time - clip.times[fr.index]) < 1e-9


def test_second_run_does_no_work(small_dataset, more_data, real_data, tmp_path_factory):  # noqa: F811
    from hyperlips.data.preprocess import PreprocessOptions, preprocess

    src = tmp_path_factory.getbasetemp() / "hl_small" / "src"
    metas = sorted((small_dataset / "clips").rglob("meta.json"))
    before = {p: p.stat().st_mtime_ns for p in metas}
    t0 = time.perf_counter()
    report = preprocess(src, small_dataset, PreprocessOptions(), workers=2, progress=False)
    assert report.done == 0 and report.existing == 5 and len(report.skipped) == 1
    speakers = {c["speaker"] for c in json.loads((small_dataset / "manifest.json").read_text())["clips"]}
    assert report.split_by == "speaker" and report.speakers == len(speakers) > 1
    assert f"split by speaker ({len(speakers)} speakers as read from the paths; for clips of one person: --speaker " \
           "one --split time)" in report.summary()
    assert time.perf_counter() - t0 < 5
    assert {p: p.stat().st_mtime_ns for p in metas} == before


def test_skip_reasons_and_no_partial_clip_left(tmp_path, more_data):
    from hyperlips.data import preprocess as pp
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    src = tmp_path / "src"
    src.mkdir()
    frames = []
    with FrameReader(more_data / "grid_s1/bbaf3s.mpg") as r:
        for fr in r.iter_range(0, 10):
            frames.append(fr.image)
    h, w = frames[0].shape[:2]
    tone = (0.1 * np.sin(np.arange(6400) * 0.2)).astype(np.float32)  # a sound (a silent one is skipped for that)
    with VideoWriter(src / "short.mp4", w, h, 25, audio=tone, sample_rate=16000) as vw:
        for f in frames:
            vw.write(f)
    (src / "carol").mkdir()  # a speaker's folder whose only clip is skipped left an empty clips/carol behind
    with VideoWriter(src / "carol" / "silent.mp4", w, h, 25) as vw:
        for f in frames * 3:
            vw.write(f)
    blank = np.full_like(frames[0], 90)
    with VideoWriter(src / "noface.mp4", w, h, 25, audio=np.tile(tone, 3), sample_rate=16000) as vw:
        for _ in range(25):
            vw.write(blank)
    report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
    reasons = {r.source: r.reason for r in report.skipped}
    assert reasons["short.mp4"].startswith("too short")
    assert reasons["carol/silent.mp4"].startswith("no audio")
    assert reasons["noface.mp4"].startswith("no face")
    assert report.done == 0
    assert not [p for p in (tmp_path / "ds" / "clips").iterdir()]  # nothing half-written
    # skipped clips are remembered: the re-run does not try them again ...
    report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
    assert len(report.skipped) == 3 and report.seconds < 1.0
    # ... and "no usable clips" is an error from the command line
    from helpers import run_cli

    res = run_cli("preprocess", src, tmp_path / "ds", "--quiet")
    assert res.returncode == 2 and "no usable clips" in res.stderr
    # ... unless a clip too short was judged by another --min-frames (a run of preprocess with its own was reused
    # by finetune: "too short: 10 frames (at least 76 are needed)", finetune needing 16)
    tried = []
    real = pp._run_one
    pp._run_one = lambda job: tried.append(job[2]) or real(job)
    try:
        report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(min_frames=8), workers=1, progress=False)
    finally:
        pp._run_one = real
    assert tried == ["short.mp4"] and report.done == 1


def test_a_silent_track_is_skipped_and_a_short_one_cuts_the_clip(tmp_path, more_data):  # and odd pixels are said
    """A clip whose audio track is silent is skipped (its mouth would be learnt against nothing); one whose sound
    stops well before its picture keeps only the frames shown before the sound ends, and says so."""
    from fractions import Fraction

    from hyperlips.data import preprocess as pp
    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    src = tmp_path / "src"
    src.mkdir()
    with FrameReader(more_data / "grid_s1/bbaf3s.mpg") as r:
        frames = [fr.image for fr in r.iter_range(0, 75)]
    speech = load_audio(more_data / "grid_s1/bbaf3s.mpg", 16000)
    h, w = frames[0].shape[:2]
    with VideoWriter(src / "silent.mp4", w, h, 25, audio=np.zeros(48000, np.float32), sample_rate=16000) as vw:
        for f in frames:
            vw.write(f)
    with VideoWriter(src / "short.mp4", w, h, 25, audio=speech[:24000], sample_rate=16000) as vw:  # 1.5 s of 3
        for f in frames:
            vw.write(f)
    with VideoWriter(src / "wide.mp4", w, h, 25, audio=speech, sample_rate=16000, sample_aspect=Fraction(4, 3)) as vw:
        for f in frames:
            vw.write(f)
    with pytest.warns(InputWarning) as said:
        report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
    said = [str(w.message) for w in said]
    assert any("its sound ends at 1.5 s, its picture at 3.0 s: the 37 frames after" in m for m in said), said
    assert any("wide.mp4: its pixels are not square (stored 360x288, shown 480x288)" in m for m in said), said
    assert {r.source: r.reason for r in report.skipped} == {
        "silent.mp4": "no speech: its audio track is silent (only the first audio track of a video is read)"}
    assert len(np.load(tmp_path / "ds" / "clips" / "short" / "times.npy")) == 38  # frames 0..37 start before 1.5 s


def test_a_clip_of_two_people_is_warned_of(tmp_path, more_data):
    """A split-screen interview was preprocessed as the larger face's speech without a word (its voice may be the
    other person's)."""
    from hyperlips.data import preprocess as pp
    from hyperlips.errors import InputWarning
    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    src = tmp_path / "src"
    src.mkdir()
    clip = more_data / "grid_s1/bbaf3s.mpg"
    with FrameReader(clip) as r:
        frames = [np.hstack([fr.image, fr.image[:, ::-1]]) for fr in r.iter_range(0, 30)]
    h, w = frames[0].shape[:2]
    with VideoWriter(src / "interview.mp4", w, h, 25, audio=load_audio(clip, 16000)[:19200], sample_rate=16000) as vw:
        for f in frames:
            vw.write(f)
    with pytest.warns(InputWarning, match=r"interview.mp4: 30 of its 30 frames show more than one face; the largest "
                                          r"one at the start is taken as the one speaking"):
        report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
    assert report.done == 1
    # the speaker picked (`--face N`, `--face-box`): learnt, not warned of; another choice makes the clip again
    boxes = tmp_path / "ds" / "clips" / "interview" / "boxes.npy"
    for face, box, side in [(1, None, "right"), (0, None, "left"), (None, (w * 0.6, 0, w, h), "right")]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", InputWarning)
            report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(face=face, face_box=box), workers=1,
                                   progress=False)
        assert report.done == 1, (face, box)
        centre = np.nanmean(np.load(boxes)[:, [0, 2]])
        assert (centre > w / 2) == (side == "right"), (face, box, centre)
    report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(face=None, face_box=(w * 0.6, 0, w, h)),
                           workers=1, progress=False)
    assert (report.done, report.existing) == (0, 1)  # the same choice: kept
    report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(face_box=(2000, 0, 2100, 60)), workers=1,
                           progress=False)  # outside the frame: said at once, as sync says it
    assert [r.reason for r in report.skipped] == [f"--face-box 2000,0,2100,60 lies outside the {w}x{h} frame; give "
                                                  "pixel coordinates inside it"]
    report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(face=2), workers=1, progress=False)
    assert [r.reason for r in report.skipped] == [
        f"no face: --face 2: {src / 'interview.mp4'} shows 2 faces at most (in any of its 30 frames), so the faces to "
        "choose from are 0..1, counted left to right"]


def test_interrupted_clip_leaves_nothing_and_is_redone(tmp_path, more_data, monkeypatch):
    from hyperlips.data import preprocess as pp
    from hyperlips.data.datasets import ImageStack

    src = tmp_path / "src"
    src.mkdir()
    os.symlink(more_data / "lrs2_deep_avsr/00002.mp4", src / "a.mp4")
    real_write = ImageStack.write
    calls = {"n": 0}

    def failing_write(prefix, encoded):
        calls["n"] += 1
        real_write(prefix, encoded)
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of a clip

    monkeypatch.setattr(ImageStack, "write", staticmethod(failing_write))
    with pytest.raises(KeyboardInterrupt):
        pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
    clips = tmp_path / "ds" / "clips"
    assert not list(clips.rglob("meta.json")) and not list(clips.iterdir())
    monkeypatch.setattr(ImageStack, "write", staticmethod(real_write))
    report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
    assert report.done == 1
    assert pp.check_dataset(tmp_path / "ds") == []


def test_ctrl_c_with_workers_leaves_no_partial_clip_folder(tmp_path, more_data, monkeypatch):
    """Ctrl-C from a terminal reaches the workers too: one stopped midway (or killed before it cleaned up) left its
    hidden `.CLIP.partial-PID` folder, which only the next run removed. The run's own stop removes them."""
    import concurrent.futures

    from hyperlips.data import preprocess as pp

    src = tmp_path / "src"
    src.mkdir()
    import shutil

    for name in ("a", "b"):  # (copies: two links to one file are one clip)
        shutil.copy(more_data / "lrs2_deep_avsr/00002.mp4", src / f"{name}.mp4")
    clips = tmp_path / "ds" / "clips"

    def interrupted(futures):  # a worker's folder half made, then Ctrl-C in the parent
        (clips / ".a.partial-99999").mkdir(parents=True)
        (clips / ".a.partial-99999" / "frames.bin").write_bytes(b"x")
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(concurrent.futures, "as_completed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=2, progress=False)
    assert not [p.name for p in clips.rglob("*partial*")]


def _spawned_workers(pid: int) -> list[int]:
    """Pids of the multiprocessing workers (not the resource tracker) whose parent is ``pid`` (Linux /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"spawn_main" in cmd:
            found.append(int(d.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc")
def test_a_killed_worker_stops_the_run_with_a_message_instead_of_hanging(tmp_path, more_data):
    import signal
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((more_data / "grid_s1").glob("*.mpg"))[:6]:
        os.symlink(p, src / p.name)
    proc = subprocess.Popen([sys.executable, "-m", "hyperlips.cli", "preprocess", str(src), str(tmp_path / "ds"),
                             "--workers", "2", "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # a loaded machine takes long to start the workers and read a first clip
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _spawned_workers(proc.pid)
            if len(workers) == 2 and list((tmp_path / "ds" / "clips").glob("*/meta.json")):
                break
            time.sleep(0.05)
        assert workers and proc.poll() is None, "the run ended before a worker could be killed"
        os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
        _, err = proc.communicate(timeout=120)  # multiprocessing.Pool would wait here forever
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    assert "worker process died" in err and "re-run continues" in err
    again = subprocess.run([sys.executable, "-m", "hyperlips.cli", "preprocess", str(src), str(tmp_path / "ds"),
                            "--workers", "2", "--quiet"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    from hyperlips.data.preprocess import check_dataset

    assert len(list((tmp_path / "ds" / "clips").glob("*/meta.json"))) == 6
    assert check_dataset(tmp_path / "ds") == []


def test_hr_size_and_time_split(tmp_path, more_data):
    from hyperlips.data import preprocess as pp
    from hyperlips.data.datasets import Manifest

    src = tmp_path / "src"
    src.mkdir()
    os.symlink(more_data / "lrs2_deep_avsr/00002.mp4", src / "a.mp4")
    opts = pp.PreprocessOptions(hr_size=256, split="time", val_fraction=0.3)
    report = pp.preprocess(src, tmp_path / "ds", opts, workers=1, progress=False)
    assert "split by time;" in report.summary()
    m = Manifest.load(tmp_path / "ds")
    (train,), (val,) = m.open_clips("train"), m.open_clips("val")
    assert m.sizes == [128, 256] and m.data["split_by"] == "time"
    assert train.frame_range == (0, 35 - 16) and val.frame_range == (35 - 16, 35)
    big = train.stack("face256").read(5)
    small = train.stack("face128").read(5)
    assert big.shape == (256, 256, 3)
    down = cv2.resize(big, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(down.astype(float) - small.astype(float)).mean() < 6  # the same crop, at two sizes
    assert pp.check_dataset(tmp_path / "ds") == []


def test_a_dataset_made_again_keeps_how_it_was_split(tmp_path, more_data):
    """Footage added to a dataset split by time (one person's clips, `--speaker one --split time`) and preprocess
    run again without those flags: it was split by speaker anew, every clip a run had trained on moved into
    validation whole, without a word. The dataset's own split, share and speaker rule are kept unless given."""
    from helpers import run_cli

    src = tmp_path / "src"
    src.mkdir()
    os.symlink(more_data / "lrs2_deep_avsr/00002.mp4", src / "take1.mp4")
    res = run_cli("preprocess", src, tmp_path / "ds", "--split", "time", "--speaker", "one", "--val-fraction", "0.3",
                  "--workers", "1", "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    os.symlink(more_data / "lrs2_deep_avsr/00004.mp4", src / "take2.mp4")
    res = run_cli("preprocess", src, tmp_path / "ds", "--workers", "1", "--quiet")
    assert res.returncode == 0 and "split by time, as when it was made" in res.stderr, res.stderr[-2000:]
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["split_by"] == "time" and m["val_fraction"] == 0.3 and m["speaker_rule"] == "one"
    assert {c["speaker"] for c in m["clips"]} == {"speaker"} and len(m["clips"]) == 4  # two clips, each both sides
    res = run_cli("preprocess", src, tmp_path / "ds", "--split", "speaker", "--workers", "1", "--quiet")  # asked
    assert res.returncode == 0 and json.loads((tmp_path / "ds" / "manifest.json").read_text())["split_by"] != "time"
    # a take deleted from the footage (a wrong one) stayed in the dataset, trained on, without a word
    (src / "take2.mp4").unlink()
    res = run_cli("preprocess", src, tmp_path / "ds", "--workers", "1", "--quiet")
    assert res.returncode == 0 and "1 clip(s) of this dataset have no video in" in res.stderr, res.stderr[-2000:]
    assert "(take2)" in res.stderr
    # clips of another footage folder added to the dataset: the first folder's clips are not gone (deleting them was
    # advised)
    day2 = tmp_path / "day2"
    day2.mkdir()
    os.symlink(more_data / "lrs2_deep_avsr/00006.mp4", day2 / "take3.mp4")
    res = run_cli("preprocess", day2, tmp_path / "ds", "--workers", "1", "--quiet")
    assert res.returncode == 0 and "have no video in" not in res.stderr, res.stderr[-2000:]


def test_cli_errors(tmp_path):
    from helpers import run_cli

    res = run_cli("preprocess", tmp_path / "missing", tmp_path / "ds")
    assert res.returncode == 2 and "not found" in res.stderr
    (tmp_path / "empty").mkdir()
    res = run_cli("preprocess", tmp_path / "empty", tmp_path / "ds")
    assert res.returncode == 2 and "no video files" in res.stderr
    (tmp_path / "file").write_text("x")
    res = run_cli("preprocess", tmp_path / "empty", tmp_path / "file")
    assert res.returncode == 2


@pytest.mark.slow
def test_preprocess_shared_real_folder(real_data, tmp_path):
    """The issue's check: every clip of shared/data/real gives per-frame outputs, and a second run does no work."""
    from hyperlips.data.datasets import Manifest
    from hyperlips.data.preprocess import PreprocessOptions, check_dataset, find_videos, preprocess

    report = preprocess(real_data, tmp_path / "ds", PreprocessOptions(), workers=2, progress=False)
    assert report.skipped == [], report.summary()
    assert report.done == len(find_videos(real_data))
    assert check_dataset(tmp_path / "ds") == []
    assert len(Manifest.load(tmp_path / "ds").clips) == report.done
    again = preprocess(real_data, tmp_path / "ds", PreprocessOptions(), workers=2, progress=False)
    assert again.done == 0 and again.existing == report.done
    summary = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert summary["split_by"] == "speaker"


def _stubborn_worker(ready) -> None:
    """A pool worker that, told to stop, presses Ctrl-C on its parent (a second Ctrl-C, or ``timeout``'s signal to
    the whole process group) and then carries on."""
    import signal as sig

    def on_term(signum, frame):
        os.kill(os.getppid(), sig.SIGINT)

    sig.signal(sig.SIGTERM, on_term)
    ready.set()
    while True:
        time.sleep(0.05)


def test_ending_the_workers_is_not_cut_short_by_another_ctrl_c():
    """Preprocessing with --workers 2 hung at its exit in about one Ctrl-C of four: a second SIGINT arrived while it
    was ending its workers, so one was left blocked for ever and the program waited for it. Now the workers end
    whatever arrives meanwhile: the stubborn one is killed, and no KeyboardInterrupt comes out."""
    import multiprocessing as mp

    from hyperlips.data.preprocess import _end_workers

    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_stubborn_worker, args=(ready,))
    proc.start()
    assert ready.wait(10)
    t0 = time.monotonic()
    try:
        _end_workers([proc], grace=0.5)
        time.sleep(0.2)  # the Ctrl-C it sent was ignored while the workers ended, not left pending
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C stopped the ending of the workers half-way")
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode == -9 and time.monotonic() - t0 < 5


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, more_data):
    """Two preprocess runs into one folder: the second removed the first one's half-made clips ("No such file or
    directory: .../clips/.single.partial-13073/face128.bin"); two finetunes into one -o, likewise. The second is
    refused at once, naming the run that holds it, and removes nothing of it."""
    import os
    import shutil

    from helpers import run_cli
    from hyperlips.data.preprocess import dataset_lock

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(more_data / "grid_s1/bbaf3s.mpg", src / "a.mpg")
    dst = tmp_path / "data"
    dst.mkdir()
    partial = dst / "clips" / ".a.partial-99999"
    with dataset_lock(dst):  # a run writing it (its lock is this process's)
        partial.mkdir(parents=True)
        r = run_cli("preprocess", src, dst, "--quiet")
        assert r.returncode == 2 and f"{dst} is being written by another run (process {os.getpid()})" in r.stderr, \
            r.stderr
        assert partial.is_dir()  # its half-made clip is left alone
        work = tmp_path / "me.work"
        work.mkdir()
        with dataset_lock(work):
            f = run_cli("finetune", src / "a.mpg", "-o", tmp_path / "me.safetensors", "--steps", "1", "--quiet")
            assert f.returncode == 2 and "me.work is being written by another run" in f.stderr, f.stderr
            assert work.is_dir()
    r = run_cli("preprocess", src, dst, "--quiet")  # once it is done, the folder is free again
    assert r.returncode == 0, r.stderr
    # a file system without locks (flock fails with ENOLCK or ENOSYS) is no other run: every run was refused there
    import errno
    import fcntl

    def no_locks(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    real = fcntl.flock
    fcntl.flock = no_locks
    try:
        with dataset_lock(dst):
            pass
    finally:
        fcntl.flock = real


def test_workers_end_with_the_command_even_when_it_is_killed(more_data, tmp_path):
    """kill -9 of preprocess (or the OS ending it out of memory) left its worker processes running: the one making a
    clip went on with it (a core busy, a half-written clip folder), the idle one waited for a task for ever (the
    pool's pipes stay open in the other workers). Linux: both end with it, the unfinished clip folder removed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    video = more_data / "dfrf" / "cnn2_25fps.mp4"  # a minute: far from done when the command is killed
    out = tmp_path / "clips" / "cnn2"
    code = ("import multiprocessing as mp, os, sys, time\n"
            "from concurrent.futures import ProcessPoolExecutor\n"
            "from hyperlips.data.clip_writer import PreprocessOptions\n"
            "from hyperlips.data.preprocess import _run_one, _worker_init\n"
            "if __name__ == '__main__':\n"
            "    pool = ProcessPoolExecutor(2, mp_context=mp.get_context('spawn'), initializer=_worker_init,\n"
            "                               initargs=(os.getpid(),))\n"
            "    idle = pool.submit(os.getpid)\n"
            "    job = pool.submit(_run_one, (sys.argv[1], sys.argv[2], 'cnn2.mp4', PreprocessOptions(), 'cnn2'))\n"
            "    idle.result()\n"
            "    print(' '.join(str(p) for p in pool._processes), flush=True)\n"
            "    time.sleep(300)\n")
    script = tmp_path / "pool.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script), str(video), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2, pids
        deadline = time.monotonic() + 60
        while not list(out.parent.glob(".cnn2.partial-*")) and time.monotonic() < deadline:
            time.sleep(0.1)  # the clip under way
        assert list(out.parent.glob(".cnn2.partial-*")), "the clip was never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in pids if _running(p)]
        assert not alive, f"workers {alive} still running after their command was killed"
        assert not out.exists() and not list(out.parent.glob(".cnn2.partial-*")), list(out.parent.iterdir())
        said = proc.stderr.read()  # the workers' too: nothing on the terminal the command was killed from
        assert "Traceback" not in said, said
    finally:
        proc.kill()
        for p in pids:
            if _running(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("stop", ["crashes", "is lost", "is lost, then skipped"])
def test_a_worker_whose_stop_goes_wrong_still_ends_cleanly(tmp_path, stop):
    """The command killed, its workers stop their clips. Were a worker to die on the way out (a native library torn
    down mid-frame crashes it: seen once in a CI run, the workers gone and the half-made clip folder left), its
    clean-up never ran: the folder goes first, before the stop unwinds. Were the stop lost (raised inside a
    library's callback, where Python only prints it), the worker finished its clip and then waited for a next task
    for ever (two workers hold each other's pipes open): its folder gone, the clip's next write fails and it ends;
    a clip skipped after that (too short, no face: nothing more to write) ends it too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not read: the clip's making is replaced")
    clips = tmp_path / "clips"
    code = ("import multiprocessing as mp, os, signal, sys, time\n"
            "from concurrent.futures import ProcessPoolExecutor\n"
            "from hyperlips.data import clip_writer\n"
            "from hyperlips.data.clip_writer import PreprocessOptions\n"
            "from hyperlips.data.preprocess import _run_one, _worker_init\n"
            "def stopped_write(path, tmp, *rest):\n"
            "    (tmp / 'frames.bin').write_bytes(b'x')\n"
            "    try:\n"
            "        while True:\n"
            "            time.sleep(0.05)\n"
            "    except KeyboardInterrupt:\n"
            "        if sys.argv[3] == 'is lost':  # swallowed: the clip goes on to its end\n"
            "            (tmp / 'meta.json').write_text('{}')\n"
            "            return 1, 0.04\n"
            "        if sys.argv[3] == 'is lost, then skipped':\n"
            "            raise clip_writer._Skip('too short: 3 frames with a face')\n"
            "        raise\n"
            "    finally:\n"
            "        if sys.argv[3] == 'crashes':\n"
            "            os.kill(os.getpid(), signal.SIGKILL)  # dies while the stop unwinds\n"
            "def init(parent):\n"
            "    clip_writer._write_clip = stopped_write\n"
            "    _worker_init(parent)\n"
            "if __name__ == '__main__':\n"
            "    pool = ProcessPoolExecutor(2, mp_context=mp.get_context('spawn'), initializer=init,\n"
            "                               initargs=(os.getpid(),))\n"
            "    for name in ('v1', 'v2'):\n"
            "        pool.submit(_run_one, (sys.argv[1], os.path.join(sys.argv[2], name), 'v.mp4', PreprocessOptions(),\n"
            "                               name))\n"
            "    time.sleep(300)\n")
    script = tmp_path / "pool.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script), str(video), str(clips), stop], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 90
        partial = []
        while len(partial) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # both clips under way, one in each worker
            partial = list(clips.glob(".v*.partial-*"))
        assert len(partial) == 2, "the clips were never started"
        pids = [int(p.name.rsplit("-", 1)[1]) for p in partial]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _running(p)], "a worker went on after its command was killed"
        assert not list(clips.iterdir()), list(clips.iterdir())  # nothing half-made
    finally:
        proc.kill()
        for p in pids:
            if _running(p):
                os.kill(p, signal.SIGKILL)


def test_a_worker_keeps_a_hang_up_ignored_under_nohup():
    """`nohup hyperlips preprocess --workers 2`: the command keeps SIGHUP ignored, but each worker armed its own
    handler, so a closed terminal stopped the clip under way and with it the whole run."""
    import subprocess
    import sys

    code = ("import signal\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "from hyperlips.data.preprocess import _stop, _worker_init\n"
            "_worker_init()\n"
            "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is _stop)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["True", "True"], res.stdout + res.stderr[-2000:]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
