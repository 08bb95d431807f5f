"""``hyperlips eval``: reports on real clips (single and batch), LSE with test-made weights, and user mistakes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from helpers import run_cli


def _strict_json(path):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=bad)


def _is_png(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    return img


@pytest.mark.parametrize("args, message", [
    ((), "give the generated video"),
    (("missing.mp4",), "generated video not found"),
    (("--clips", "."), "--protocol: self (each clip with its own audio), cross (with the next clip's audio), tail"),
])
def test_eval_user_mistakes(tmp_path, args, message):
    r = run_cli("eval", *args, "-o", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], r.stderr


def test_eval_refuses_missing_syncnet_weights(tmp_path, real_data):
    clip = real_data / "hyperlips" / "video1.mp4"
    r = run_cli("eval", clip, "--reference", clip, "--syncnet", tmp_path / "syncnet_v2.model", "-o", tmp_path / "o")
    assert r.returncode == 2
    assert "SyncNet weights not found" in r.stderr and "syncnet_v2.model" in r.stderr
    assert not (tmp_path / "o").exists()


def test_options_for_generating_are_refused_on_a_finished_result(tmp_path, real_data, capsys):
    """They were dropped without a word: even --checkpoint naming no file measured the result as it was."""
    from hyperlips.cli import main

    clip = real_data / "hyperlips" / "video1.mp4"
    code = main(["eval", str(clip), "--reference", str(clip), "--checkpoint", str(tmp_path / "none.safetensors"),
                 "-o", str(tmp_path / "o")])
    assert code == 2 and "--checkpoint is for the videos eval makes itself" in capsys.readouterr().err
    code = main(["eval", str(clip), "--reference", str(clip), "--mouth", "warp", "--voice", "fr", "--threads", "1",
                 "-o", str(tmp_path / "o")])
    assert code == 2 and "--mouth, --voice are for the videos eval makes itself" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_report_on_real_clip_with_test_weights(tmp_path, real_data):
    """A real clip against itself, with random public-SyncNet weights and a random expert written by the test:
    the whole report (JSON, Markdown, every plot) and the LSE / expert sections."""
    import torch

    from hyperlips.eval.syncnet_v2 import PublicSyncNet
    from hyperlips.models import SyncNet, save_checkpoint

    torch.manual_seed(0)
    syncnet = tmp_path / "syncnet_v2.model"
    torch.save({k: v for k, v in PublicSyncNet().state_dict().items() if "num_batches" not in k}, syncnet)
    expert = save_checkpoint(SyncNet(), tmp_path / "expert.safetensors", "syncnet")
    import soundfile as sf

    from hyperlips.media.audio import load_audio

    clip = real_data / "hyperlips" / "video2.mp4"
    delayed = tmp_path / "delayed.wav"  # the clip's own speech, 3 frames late: the driving audio of the "result"
    sf.write(str(delayed), np.concatenate([np.zeros(3 * 640, np.float32), load_audio(clip, 16000)]), 16000)
    out = tmp_path / "report"
    r = run_cli("eval", clip, "--reference", clip, "--audio", delayed, "--protocol", "self", "--syncnet", syncnet,
                "--expert", expert, "--max-seconds", "0.6", "--device", "cpu", "--quiet", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "report:" in r.stdout and "lse_d" in r.stdout
    data = _strict_json(out / "report.json")
    m = data["metrics"]
    assert data["protocol"] == "self-reconstruction" and data["frames"] == 15
    assert m["delta_e"] == 0.0 and m["jitter_ratio"] == 1.0 and m["lmd"] == 0.0 and m["psnr_mouth"] == 100.0
    lse = data["sync"]["lse"]
    # the result is scored against the driving audio (--audio), the reference against its own track: same frames,
    # different sound, different curves (a report that scored both with one audio would show equal curves)
    assert lse["generated"]["windows"] == lse["reference"]["windows"] == 10 and len(lse["generated"]["curve"]) == 31
    assert not np.allclose(lse["generated"]["curve"], lse["reference"]["curve"], rtol=1e-3)
    exp = data["sync"]["expert"]  # offsets whose windows leave the audio are null
    g, r = (np.array([np.nan if v is None else v for v in exp[k]["curve"]]) for k in ("generated", "reference"))
    assert np.isfinite(g).sum() >= 10 and not np.allclose(g, r, rtol=1e-3, equal_nan=True)
    assert data["perceptual"]["fid"]["status"].startswith("unavailable")
    assert len(data["per_frame"]["delta_e"]) == 15
    md = (out / "report.md").read_text()
    for name in ("per_frame.png", "mouth_audio.png", "mouth_sheet.png", "sync.png"):
        assert f"]({name})" in md
        _is_png(out / name)
    assert "LSE-D" in md and "FID" in md and "unavailable" in md
    for label in ("Mouth opening r", "Mouth opening lag", "Mouth opening amplitude"):  # (the report left them out)
        assert f"| {label} |" in md, md
    assert {"opening_r", "opening_lag", "opening_r_peak", "opening_amplitude"} <= set(data["definitions"])


def test_eval_batch_over_folders(tmp_path, real_data):
    src = real_data / "hyperlips"
    gen, ref, aud = (tmp_path / d for d in ("gen", "ref", "aud"))
    for d in (gen, ref, aud):
        d.mkdir()
    (gen / "one.mp4").symlink_to(src / "official_result1.mp4")
    (ref / "one.mp4").symlink_to(src / "video1.mp4")
    (aud / "one.wav").symlink_to(src / "audio1.wav")
    (gen / "two.mp4").symlink_to(src / "video2.mp4")
    (ref / "two.mp4").symlink_to(src / "video2.mp4")
    (gen / "unpaired.mp4").symlink_to(src / "video3.mp4")
    from hyperlips.media.writer import VideoWriter

    tone = (0.3 * np.sin(np.arange(16000) * 0.1)).astype(np.float32)
    with VideoWriter(gen / "wall.mp4", 64, 64, 25, audio=tone, sample_rate=16000) as w:  # no face: one pair that
        # cannot be measured
        for _ in range(20):
            w.write(np.full((64, 64, 3), 128, np.uint8))
    (ref / "wall.mp4").symlink_to(gen / "wall.mp4")
    out = tmp_path / "out"
    r = run_cli("eval", gen, "--reference", ref, "--audio", aud, "--max-seconds", "0.6", "--quiet", "-o", out,
                "--no-per-frame")
    assert r.returncode == 0, r.stderr
    summary = _strict_json(out / "summary.json")
    rows = {row["clip"]: row for row in summary["clips"]}
    assert set(rows) == {"one", "two"}  # (the wall stopped the batch, and no report was written at all)
    assert "wall.mp4 is left out of the evaluation: no face found" in r.stderr
    assert [c["clip"] for c in summary["left_out"]] == ["wall"] and "- wall: no face found" in \
        (out / "summary.md").read_text()
    assert "per_frame" not in _strict_json(out / "one" / "report.json")  # --no-per-frame reaches a batch too
    assert rows["one"]["protocol"] == "cross-audio" and rows["one"]["psnr_mouth"] is None
    assert rows["one"]["delta_e"] > 0.3  # the official result re-rendered the lower face
    assert rows["two"]["protocol"] == "self-reconstruction" and rows["two"]["delta_e"] == 0.0
    assert summary["aggregate"]["clips"] == 2
    assert summary["aggregate"]["delta_e"] == pytest.approx(np.mean([rows["one"]["delta_e"], 0.0]))
    # the mouth's opening against the reference's: a video against itself follows it exactly, at lag 0
    assert rows["two"]["opening_r"] == pytest.approx(1.0) and rows["two"]["opening_lag"] == 0
    assert summary["aggregate"]["opening_lag_within_1_share"] == 1.0
    # another speech's mouth has nothing to follow in the reference: not applicable, not a misleading figure
    assert rows["one"]["opening_r"] is None and rows["one"]["opening_lag"] is None and "opening_r" not in \
        r.stdout.split("one (cross-audio")[1].split("\n")[0]
    assert "two (self-reconstruction, 15 frames): " in r.stdout and "opening_r 1.000 (peak lag +0)" in r.stdout
    md = (out / "summary.md").read_text()
    assert rows["two"]["opening_r_peak"] == pytest.approx(1.0) and rows["one"]["opening_r_peak"] is None
    assert rows["two"]["opening_r_recording"] is None  # 15 frames: too short for the judge to place the recording
    assert summary["aggregate"]["opening_r_peak"] == pytest.approx(1.0)  # the clips that have it
    assert "[one](one/report.md)" in md and "**mean**" in md and "| opening_r | opening_lag | opening_r_peak |" in md
    assert "within 1 |" in md
    assert (out / "one" / "report.md").exists() and (out / "two" / "mouth_sheet.png").exists()


def test_opening_r_at_the_recordings_own_offset(tmp_path, real_data):
    """A recording whose sound is 3 frames late, and a result whose mouth follows that sound: at lag 0 the two
    mouths disagree, at the offset the sync judge finds in the recording itself they are the same mouth."""
    from hyperlips.eval.protocols import evaluate_pair
    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter
    from hyperlips.models import load_checkpoint, shipped

    found = shipped.judge()
    if found is None:
        pytest.skip("this build ships no sync judge")
    judge = load_checkpoint(found.path)[0].eval()
    clip = real_data / "hyperlips" / "video2.mp4"
    with FrameReader(clip) as reader:
        frames = [f.image for _, f in zip(range(150), reader)]
        fps = reader.fps
    late = np.concatenate([np.zeros(3 * 640, np.float32), load_audio(clip, 16000)[: 16000 * 6]])
    recording, result = tmp_path / "recording.mp4", tmp_path / "result.mp4"
    for path, shown in ((recording, frames), (result, frames[:1] * 3 + frames[:-3])):  # the result: 3 frames later
        with VideoWriter(path, frames[0].shape[1], frames[0].shape[0], fps, audio=late, crf=12) as w:
            for f in shown:
                w.write(f)
    res = evaluate_pair(result, recording, None, protocol="self", expert_model=judge, perceptual=False)
    m = res.metrics
    assert res.sync["expert"]["reference"].offset == 3  # the recording's own sound, 3 frames late
    assert m["opening_lag"] == 3 and m["opening_r_recording"] == pytest.approx(m["opening_r_peak"])
    assert m["opening_r_recording"] > 0.95 and m["opening_r"] < m["opening_r_recording"] - 0.2
    # without a sync score of the recording there is no such figure, and the report says why
    off = evaluate_pair(result, recording, None, protocol="self", perceptual=False)
    assert off.metrics["opening_r_recording"] is None and "sync score" in off.notes["opening_r_recording"]


def test_eval_batch_without_pairs(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "r").mkdir()
    (tmp_path / "g" / "a.mp4").write_bytes(b"x")
    r = run_cli("eval", tmp_path / "g", "--reference", tmp_path / "r", "-o", tmp_path / "o")
    assert r.returncode == 2 and "no videos of" in r.stderr


def test_default_report_folder_and_no_per_frame(tmp_path, more_data, monkeypatch, capfd):
    """Without ``-o`` one clip's report goes to ``hyperlips_eval/<name of the video>/``; ``--no-per-frame`` leaves
    the per-frame curves out of the JSON."""
    from hyperlips.cli import main

    monkeypatch.chdir(tmp_path)
    clip = more_data / "grid_lipnet" / "lbax4n.mpg"
    assert main(["eval", str(clip), "--max-seconds", "0.4", "--no-per-frame", "--quiet"]) == 0, capfd.readouterr().err
    data = _strict_json(tmp_path / "hyperlips_eval" / "lbax4n" / "report.json")
    assert data["protocol"] == "no reference" and data["frames"] == 10 and "per_frame" not in data


def test_self_protocol_generates_and_evaluates_two_short_clips(tmp_path, more_data, capfd):
    """The fast variant of the slow test below: ``eval --clips DIR --protocol self`` on two GRID clips (0.4 s each),
    in this process. Random weights change the mouth measurably and leave the rest of the face alone."""
    from hyperlips.cli import main

    from media_builders import write_video

    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("lbax4n.mpg", "sbia1a.mpg"):
        (clips / name).symlink_to(more_data / "grid_lipnet" / name)
    write_video(clips / "mute.mp4", [np.zeros((64, 64, 3), np.uint8)] * 5)  # no sound: left out, the others measured
    out = tmp_path / "self"
    code = main(["eval", "--clips", str(clips), "--protocol", "self", "--untrained", "--max-seconds", "0.4",
                 "--quiet", "--device", "cpu", "-o", str(out)])
    err = capfd.readouterr().err
    assert code == 0, err
    assert "mute.mp4 is left out of the evaluation" in err, err
    summary = _strict_json(out / "summary.json")
    rows = summary["clips"]
    assert [r["clip"] for r in rows] == ["lbax4n", "sbia1a"] and all(r["protocol"] == "self-reconstruction" for r in rows)
    # listed with its reason, as the folder-of-results mode lists them (the mean row was over fewer clips unseen)
    assert [c["clip"] for c in summary["left_out"]] == ["mute"], summary.get("left_out")
    assert "- mute: " in (out / "summary.md").read_text()
    for r in rows:  # the mouth changed much more than the face crop as a whole (which includes the mouth)
        m = _strict_json(out / r["clip"] / "report.json")["metrics"]
        assert r["psnr_mouth"] == m["psnr_mouth"] < 25 and m["psnr_mouth"] + 4 < m["psnr_face"], m
    assert sorted(p.name for p in (out / "generated").iterdir()) == ["lbax4n.mp4", "sbia1a.mp4"]  # no cut speech left


def test_results_pair_with_references_by_name_and_none_is_dropped_silently(tmp_path):
    """Two clips of one name (``a.mp4``, ``a.mpg``) would share one result: refused. A result with no reference of
    its name is left out with a warning, not silently."""
    from hyperlips.errors import InputWarning, UserError
    from hyperlips.eval.protocols import pair_folders, run_protocol

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    for f in (gen / "a.mp4", gen / "b.mp4", ref / "a.mp4"):
        f.write_bytes(b"x")
    with pytest.warns(InputWarning, match=r"1 of the videos in .*gen have no reference .* left out: b.mp4"):
        assert [(g.name, r.name) for g, r, _ in pair_folders(gen, ref)] == [("a.mp4", "a.mp4")]
    # pictures of one name that no result is named after are left alone (an evaluation was refused over them)
    for f in (ref / "poster.jpg", ref / "poster.png", ref / "b.mpg", ref / "b.mov"):
        f.write_bytes(b"x")
    (gen / "b.mp4").unlink()
    assert [(g.name, r.name) for g, r, _ in pair_folders(gen, ref)] == [("a.mp4", "a.mp4")]
    (ref / "a.png").write_bytes(b"x")  # a photo of the name beside its video: the video is the reference
    (ref / "a.jpg").write_bytes(b"x")
    assert [(g.name, r.name) for g, r, _ in pair_folders(gen, ref)] == [("a.mp4", "a.mp4")]
    (ref / "a.mpg").write_bytes(b"x")  # two references for the result a: which one is meant cannot be told
    with pytest.raises(UserError, match=r"holds two files named a \(a.mp4, a.mpg\) for the result a.mp4: rename"):
        pair_folders(gen, ref)
    (gen / "b.mp4").write_bytes(b"x")
    with pytest.raises(UserError, match=r"holds two files named a \(a.mp4, a.mpg\) for the result a.mp4"):
        pair_folders(gen, ref)
    with pytest.raises(UserError, match="holds two files named a"):  # results of one name still are refused
        run_protocol(ref, tmp_path / "out", "self", untrained=True)


def test_names_pair_in_either_unicode_form_and_hidden_files_are_left_alone(tmp_path):
    """A Mac writes "José.mp4" decomposed (NFD), Linux and Windows keep it as typed (NFC): "no videos have a
    reference of the same name", both folders listing José.mp4. A Mac's "._a.mp4" stubs on a shared disk were taken
    for videos (a failed clip in the report)."""
    import unicodedata

    from hyperlips.eval.protocols import pair_folders

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    name = "José.mp4"
    for f in (gen / unicodedata.normalize("NFC", name), ref / unicodedata.normalize("NFD", name), gen / "._a.mp4",
              ref / "._a.mp4"):
        f.write_bytes(b"x")
    pairs = pair_folders(gen, ref)
    assert [(g.name, r.name) for g, r, _ in pairs] == [(unicodedata.normalize("NFC", name),
                                                        unicodedata.normalize("NFD", name))]


def test_one_clip_for_the_self_protocol_and_a_clear_refusal_for_the_cross_one(tmp_path, more_data, capfd):
    from hyperlips.cli import main

    clip = more_data / "grid_lipnet" / "lbax4n.mpg"
    code = main(["eval", "--clips", str(clip), "--protocol", "cross", "--untrained", "-o", str(tmp_path / "x")])
    err = capfd.readouterr().err
    assert code == 2 and "is one video; the cross protocol" in err and "at least 2" in err, err
    out = tmp_path / "self"
    code = main(["eval", "--clips", str(clip), "--protocol", "self", "--untrained", "--max-seconds", "0.4", "--quiet",
                 "--device", "cpu", "-o", str(out)])
    assert code == 0, capfd.readouterr().err
    assert [r["clip"] for r in _strict_json(out / "summary.json")["clips"]] == ["lbax4n"]


def test_a_clip_named_with_nearly_255_bytes_is_evaluated(tmp_path, more_data, capfd):
    """`eval --clips` wrote its hidden working files as ".NAME_shifted.mp4" and ".NAME_audio.wav": past the 255 bytes
    a name may have for a legal name of 249 bytes (a traceback, exit 1). They are named by number."""
    import shutil

    from hyperlips.cli import main

    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(more_data / "grid_lipnet" / "lbax4n.mpg", clips / ("k" * 245 + ".mpg"))
    code = main(["eval", "--clips", str(clips), "--protocol", "self", "--untrained", "--max-seconds", "0.4", "--quiet",
                 "--device", "cpu", "-o", str(tmp_path / "rep")])
    assert code == 0, capfd.readouterr().err
    assert [r["clip"] for r in _strict_json(tmp_path / "rep" / "summary.json")["clips"]] == ["k" * 245]
    from hyperlips.data.sources import REPORT_MARK, find_videos

    assert (tmp_path / "rep" / REPORT_MARK).is_file()  # a report is no footage: its videos are not walked
    assert find_videos(tmp_path) == [clips / ("k" * 245 + ".mpg")]


def test_a_photo_as_the_reference_is_every_frames_reference(real_data, tmp_path, capfd):
    """A result made from a photo, evaluated against that photo: every frame is compared with it (it was 1 frame
    and no sync score); the measures of motion have nothing to compare with and say so."""
    import cv2
    import soundfile as sf

    from hyperlips.cli import main
    from hyperlips.media.video import FrameReader

    with FrameReader(real_data / "retalking" / "face2.mp4") as reader:
        cv2.imwrite(str(tmp_path / "face.png"), next(reader.iter_range(0, 1)).image)
    wav, rate = sf.read(str(real_data / "hyperlips" / "audio1.wav"))
    speech = tmp_path / "speech.wav"
    sf.write(str(speech), wav[:int(1.6 * rate)], rate)  # 40 frames at 25 fps
    out = tmp_path / "res.mp4"
    assert main(["sync", str(tmp_path / "face.png"), str(speech), "-o", str(out), "--untrained", "--model", "lite",
                 "--quiet", "--device", "cpu"]) == 0, capfd.readouterr().err
    code = main(["eval", str(out), "--reference", str(tmp_path / "face.png"), "--audio", str(speech), "--quiet",
                 "-o", str(tmp_path / "ev")])
    assert code == 0, capfd.readouterr().err
    rep = _strict_json(tmp_path / "ev" / "report.json")
    assert rep["frames"] == 40 and rep["metrics"]["frames_with_reference_landmarks"] == 40
    assert rep["sync"]["expert"]["generated"]["windows"] > 0  # 40 frames: the judge's 25-frame windows fit
    for k in ("jitter_ratio", "opening_r"):
        assert rep["metrics"][k] is None and rep["not_reported"][k] == "not applicable: the reference is a still image"
    assert rep["metrics"]["sharpness_ratio"] > 0
    # the same pair in folders: the photo was not found as a reference ("0 reference videos")
    (tmp_path / "gen").mkdir()
    (tmp_path / "refs").mkdir()
    (tmp_path / "gen" / "face.mp4").write_bytes(out.read_bytes())
    (tmp_path / "refs" / "face.png").write_bytes((tmp_path / "face.png").read_bytes())
    (tmp_path / "refs" / "other.jpg").write_bytes(b"a thumbnail beside videos is left alone")
    code = main(["eval", str(tmp_path / "gen"), "--reference", str(tmp_path / "refs"), "--quiet",
                 "-o", str(tmp_path / "ev2"), "--max-seconds", "1"])
    assert code == 0, capfd.readouterr().err
    assert [r["clip"] for r in _strict_json(tmp_path / "ev2" / "summary.json")["clips"]] == ["face"]


def test_a_folder_of_results_against_one_file_says_both_must_be_folders(tmp_path, capfd):
    from hyperlips.cli import main

    (tmp_path / "results").mkdir()
    one = tmp_path / "original.mp4"
    one.write_bytes(b"not read")
    code = main(["eval", str(tmp_path / "results"), "--reference", str(one), "-o", str(tmp_path / "r")])
    err = capfd.readouterr().err
    assert code == 2 and f"{one} is a file: with a folder of results" in err and "must be folders too" in err, err
    assert "folder not found" not in err  # what it said of an existing file


@pytest.mark.slow
def test_self_and_cross_protocols_generate_and_evaluate(tmp_path, real_data):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("face3.mp4", "face5.mp4"):
        (clips / name).symlink_to(real_data / "retalking" / name)
    for mode in ("self", "cross"):
        out = tmp_path / mode
        r = run_cli("eval", "--clips", clips, "--protocol", mode, "--untrained", "--max-seconds", "0.8", "--quiet",
                    "--device", "cpu", "-o", out)
        assert r.returncode == 0, r.stderr
        summary = _strict_json(out / "summary.json")
        assert [row["protocol"] for row in summary["clips"]] == [f"{'self-reconstruction' if mode == 'self' else 'cross-audio'}"] * 2
        assert (out / "generated" / "face3.mp4").exists()
        if mode == "self":  # random weights change the mouth: a measurable, non-zero difference
            assert all(row["psnr_mouth"] < 60 for row in summary["clips"])


def test_the_printed_line_counts_one_frame_as_one(capsys):
    from hyperlips.eval.commands import _print_rows

    _print_rows([{"clip": "a", "protocol": "self-reconstruction", "frames": 1, "expert_offset": -1},
                 {"clip": "b", "protocol": "cross-audio", "frames": 40, "expert_offset": 2}],
                {"markdown": "r.md", "json": "r.json"})
    out = capsys.readouterr().out
    assert "a (self-reconstruction, 1 frame): expert_offset -1 (audio 1 frame early)" in out
    assert "b (cross-audio, 40 frames): expert_offset +2 (audio 2 frames late)" in out


def test_self_protocol_forced_on_other_speech_warns(real_data, tmp_path):
    """``--protocol self`` on a pair whose speech is not the reference's own: the ground-truth figures compare
    mouths saying different things, which ``auto`` would have seen; now it says so."""
    import warnings

    import soundfile as sf

    from hyperlips.errors import InputWarning
    from hyperlips.eval.protocols import evaluate_pair

    clip = real_data / "retalking" / "face2.mp4"
    wav, rate = sf.read(str(real_data / "hyperlips" / "audio1.wav"))
    other = tmp_path / "other.wav"
    sf.write(str(other), wav[:int(2 * rate)], rate)
    with pytest.warns(InputWarning, match=r"--protocol self, but \S*other.wav is not \S*face2.mp4's own speech"):
        evaluate_pair(clip, clip, other, protocol="self", perceptual=False, max_seconds=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        warnings.filterwarnings("ignore", r"only \d+ frames", InputWarning)  # (0.4 s: too short to compare, said)
        res = evaluate_pair(clip, clip, None, protocol="self", perceptual=False, max_seconds=0.4)
    assert res.protocol == "self-reconstruction"


def test_a_sound_file_given_for_a_video_says_which_input_it_was(real_data):
    from hyperlips.errors import MediaError
    from hyperlips.eval.protocols import evaluate_pair

    clip, wav = real_data / "retalking" / "face2.mp4", real_data / "hyperlips" / "audio1.wav"
    with pytest.raises(MediaError, match=r"^the reference video \(--reference\): \S*audio1.wav has no video stream"):
        evaluate_pair(clip, wav, perceptual=False)
    with pytest.raises(MediaError, match=r"^the generated video: \S*audio1.wav has no video stream"):
        evaluate_pair(wav, clip, perceptual=False)


def test_a_generated_frame_is_compared_with_the_source_frame_sync_made_it_from(real_data):
    """A variable-rate reference (face1: tagged 30 fps, 22.1 on average) against an output at its average rate:
    each generated frame pairs with the reference frame on screen at its time, the one sync showed there."""
    from hyperlips.eval.pair import _frame_times, _pairing
    from hyperlips.media.timing import source_frames

    ref = real_data / "retalking/face1.mp4"
    times = _frame_times(ref, 10_000)
    fps = 1350 / 61  # its average rate, at which sync writes it (22.13 fps)
    n = int(times[-1] * fps)
    gen_times = np.arange(n) / fps
    pair = _pairing(gen_times, times, same_rate=False)
    assert len(pair) == n and np.array_equal(pair, source_frames(times, fps, n))
    assert (np.diff(times[pair]) > 0.05).any()  # the source holds some frames twice as long: not index pairing
    # constant rates that differ (25 fps against 30): the frame on screen, never one shown later (timestamps
    # rounded by up to a quarter frame count as on time)
    ref30 = np.arange(90) / 30.0
    gen25 = np.arange(75) / 25.0
    pair = _pairing(gen25, ref30, same_rate=False)
    assert np.array_equal(pair, source_frames(ref30, 25.0, 75)) and (ref30[pair] <= gen25 + 0.25 / 30).all()
    assert not np.array_equal(pair, np.rint(gen25 * 30).astype(int))  # nearest in time would differ


def test_shifted_copy_rolls_the_frames_by_half(more_data, tmp_path):
    from helpers import psnr, read_frames

    from hyperlips.eval.protocols import shifted_copy

    clip = more_data / "grid_lipnet" / "lbax4n.mpg"
    src = read_frames(clip)
    got = read_frames(shifted_copy(clip, tmp_path / "s.mp4", 10, 30))
    assert len(got) == 20
    for j in (0, 5, 9, 10, 19):
        want = src[10 + (j + 10) % 20]
        assert psnr(got[j], want) > 35, j
    assert psnr(got[0], src[20]) > psnr(got[0], src[10]) + 3  # not the unshifted frame


def test_a_clip_made_from_shifted_frames_is_scored_for_colour_against_them(more_data, tmp_path):
    """A clip whose first half is tinted: a method that changes nothing, given the copy shifted by half, returns
    that copy. Against the clip at the same moments it differs by the tint (and, on moving footage, the pose); its
    colour shift is measured against the frames it was made from (none), the rest that needs the same moment left out."""
    from helpers import read_frames

    from hyperlips.eval.protocols import SHIFT_BLIND, against_shifted_source, evaluate_pair, shifted_copy
    from hyperlips.media.writer import VideoWriter

    frames = read_frames(more_data / "grid_lipnet" / "lbax4n.mpg", 20)
    clip = tmp_path / "tinted.mp4"
    with VideoWriter(clip, frames[0].shape[1], frames[0].shape[0], 25.0, crf=10) as w:
        for k, f in enumerate(frames):
            w.write(np.clip(f.astype(np.int16) + ((0, 0, 24) if k < 10 else (0, 0, 0)), 0, 255).astype(np.uint8))
    made = shifted_copy(clip, tmp_path / "made.mp4")  # what the do-nothing method returns
    res = evaluate_pair(made, clip, None, protocol="self", perceptual=False)
    assert res.metrics["delta_e"] > 3 and res.metrics["psnr_mouth"] is not None  # the tint, read as colour shift
    res = against_shifted_source(res, made, None)
    assert res.metrics["delta_e"] < 0.5 and len(res.series["delta_e"]) == 20, res.metrics["delta_e"]
    assert all(res.metrics[k] is None and "shifted" in res.notes[k] for k in SHIFT_BLIND if k not in
               ("delta_e", "delta_e_pixel"))
    assert res.shifted_source and "delta_e" not in res.notes
    assert res.metrics["sharpness_ratio"] is not None  # measures of the clip as a whole stay


def test_shifted_copy_of_a_variable_rate_clip_lasts_as_long_as_the_clip(real_data, tmp_path):
    """face1 (tagged 30 fps, 22.1 on average): the copy holds the frames counted by timestamps, at the clip's average
    rate, so it lasts as long as the clip and its speech (written at the tagged rate it played 1.4 times too fast and
    its faces drifted away from the speech they were scored against)."""
    from helpers import psnr, read_frames

    from hyperlips.eval.protocols import shifted_copy
    from hyperlips.media.timing import RetimedReader
    from hyperlips.media.video import probe

    clip = real_data / "retalking" / "face1.mp4"
    with RetimedReader(clip) as reader:
        src, fps = [fr.image for fr in reader], reader.fps
    assert fps < 25  # the clip's rate varies
    out = shifted_copy(clip, tmp_path / "s.mp4")
    info = probe(out)
    assert abs(info.fps - fps) < 0.01 and abs(info.duration - probe(clip).duration) < 1.5 / fps
    got = read_frames(out)
    n = len(src)
    assert len(got) == n
    for j in (0, n // 3, n - 1):
        assert psnr(got[j], src[(j + n // 2) % n]) > 35, j


def test_warp_is_scored_from_frames_that_hold_no_trace_of_the_answer(tmp_path, more_data, monkeypatch, capfd):
    """``eval --clips --protocol self --mouth warp`` drives the model from the clip shifted by half its length (the
    warp moves the input's own mouth, which would be the answer), scores against the clip, and leaves no copy."""
    from helpers import psnr, read_frames

    from hyperlips import pipeline
    from hyperlips.cli import main

    clip = more_data / "grid_lipnet" / "lbax4n.mpg"
    driven = []
    real_sync = pipeline.LipSync.sync

    def spy(self, video, audio, output, **kw):
        driven.append((read_frames(video, 1)[0], self.mouth))
        return real_sync(self, video, audio, output, **kw)

    monkeypatch.setattr(pipeline.LipSync, "sync", spy)
    out = tmp_path / "self"
    code = main(["eval", "--clips", str(clip), "--protocol", "self", "--mouth", "warp", "--max-seconds", "0.4",
                 "--quiet", "--device", "cpu", "-o", str(out)])
    assert code == 0, capfd.readouterr().err
    src = read_frames(clip)
    (first, mouth), = driven
    assert mouth == "warp" and psnr(first, src[len(src) // 2]) > 35 > psnr(first, src[0])
    assert [r["clip"] for r in _strict_json(out / "summary.json")["clips"]] == ["lbax4n"]
    assert sorted(p.name for p in (out / "generated").iterdir()) == ["lbax4n.mp4"]  # the shifted copy is gone
    (got,) = _strict_json(out / "summary.json")["clips"]
    assert got["psnr_mouth"] is None and got["lmd"] is None and 0 <= got["delta_e"] < 1.5  # against its source
    report = out / "lbax4n"
    assert _strict_json(report / "report.json")["shifted_source"] is True
    assert "shifted by half their number" in (report / "report.md").read_text()


def test_an_unwritable_report_folder_is_refused_before_measuring(tmp_path, real_data):
    """-o a folder that cannot be made (a file stands where it should be) was found out after the whole evaluation."""
    clip = real_data / "retalking" / "face2.mp4"
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    for args in ((clip, "--reference", clip), ("--clips", clip, "--protocol", "tail", "--checkpoint", clip)):
        r = run_cli("eval", *args, "-o", blocker / "report", timeout=60)
        assert r.returncode == 2 and "cannot write the report into -o" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "faces" not in r.stderr, r.stderr


def test_a_face_box_outside_the_frame_is_said_at_once_as_sync_says_it(real_data, tmp_path):
    """eval detected every frame, then said "no face found ... no detected face overlaps the box"; and kept a box
    reaching past the frame unclipped, so it could pick another person than sync picked with the same box."""
    from hyperlips.errors import UserError
    from hyperlips.eval.pair import _track
    from hyperlips.eval.phonemes import write_phoneme_preview
    from hyperlips.eval.tail import pick_reference
    from hyperlips.media.video import probe

    video = real_data / "retalking" / "face3.mp4"
    info = probe(video)
    outside = (info.width + 100, 0, info.width + 200, 50)
    words = f"--face-box {info.width + 100:g},0,{info.width + 200:g},50 lies outside the {info.width}x{info.height} frame"
    with pytest.raises(UserError, match=words):
        _track(video, info, 10, None, False, face_box=outside)
    with pytest.raises(UserError, match=words):
        pick_reference((video, 0, 10), tmp_path / "ref.png", face_box=outside)
    with pytest.raises(UserError, match=words):
        write_phoneme_preview(video, [(0, "vowel", 0.0)], tmp_path / "p.png", face_box=outside)
    # reaching past the edges: clipped as sync clips it, the face inside found
    boxes = _track(video, info, 3, None, False, face_box=(-5000, -5000, info.width + 5000, info.height + 5000))
    assert all(b is not None for b in boxes)


def test_syncs_output_of_an_odd_sized_video_is_evaluated_against_it(real_data, tmp_path):
    """sync's default 4:2:0 output of a 211x209 video is 212x210 (its last column and row repeated, as documented):
    eval refused it against the very video it was made from ("evaluate the output of a run on that reference"), and
    `eval --clips` refused the videos it had generated itself. The repeated edge is left out."""
    from helpers import read_frames
    from media_builders import speech, write_video

    from hyperlips import LipSync
    from hyperlips.errors import UserError
    from hyperlips.eval.pair import evaluate_pair

    import cv2

    frames = [cv2.resize(f, (211, 209)) for f in read_frames(real_data / "retalking" / "face2.mp4", limit=25)]
    clip = write_video(tmp_path / "odd.mp4", frames, pix_fmt="yuv444p", audio=speech(real_data, 1.0))
    with LipSync(progress=False, phones=False) as ls:
        rep = ls.sync(clip, clip, tmp_path / "out.mp4")
    assert (rep.width, rep.height) == (212, 210)
    res = evaluate_pair(tmp_path / "out.mp4", clip, clip, protocol="self")
    assert (res.width, res.height) == (211, 209) and res.metrics["psnr_face"] > 20
    other = write_video(tmp_path / "other.mp4", [cv2.resize(f, (200, 200)) for f in frames[:5]])
    with pytest.raises(UserError, match="pixel comparisons need the same frame size"):  # another size: still refused
        evaluate_pair(tmp_path / "out.mp4", other, clip, protocol="self")


def test_a_footage_reports_default_folder_is_named_after_it(tmp_path, monkeypatch):
    """`eval --clips . --protocol tail` reported into hyperlips_eval/_tail (the stem of "." is empty)."""
    from pathlib import Path

    from hyperlips.eval.commands import footage_report

    (tmp_path / "anna").mkdir()
    monkeypatch.chdir(tmp_path / "anna")
    assert footage_report(Path("."), "tail") == Path("hyperlips_eval/anna_tail")
    assert footage_report(Path("take1.mp4"), "phonemes") == Path("hyperlips_eval/take1_phonemes")
    (tmp_path / "anna" / "take.v2").mkdir()  # a folder by its whole name; ".." by the folder's (a hidden ".._tail")
    assert footage_report(Path("take.v2"), "tail") == Path("hyperlips_eval/take.v2_tail")
    monkeypatch.chdir(tmp_path / "anna" / "take.v2")
    assert footage_report(Path(".."), "tail") == Path("hyperlips_eval/anna_tail")


def test_a_refused_eval_leaves_no_report_folder(tmp_path, monkeypatch):
    """`eval --clips nothere --protocol tail -o "my report"`: refused, yet "my report" was left, looking empty (it held
    only the hidden report mark). Folders that held something before are kept as they were."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "foot.mp4").write_bytes(b"x")
    for extra in (["--clips", "nothere", "--protocol", "tail", "-o", "my report/deep"],
                  ["--clips", "nothere", "--protocol", "phonemes", "-o", "my report"],
                  ["--clips", "nothere", "--protocol", "tail"]):
        r = run_cli("eval", *extra, "--checkpoint", "x.safetensors", "--quiet", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["foot.mp4"], (extra, list(tmp_path.rglob("*")))
    (tmp_path / "kept").mkdir()
    r = run_cli("eval", "--clips", "nothere", "--protocol", "tail", "-o", "kept", "--checkpoint", "x.safetensors",
                cwd=tmp_path)
    assert r.returncode == 2 and (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_file_names_are_escaped_in_the_reports_tables():
    """A name holding `|` or backticks ("take|2`final`.mp4") split the report's table cells and ended its code span."""
    from hyperlips.eval.report import _clip_link, md_code

    cell = md_code("take|2`final`.mp4")
    assert cell == "``take\\|2`final`.mp4``"
    row = f"| generated | {cell} |"
    assert len(re.split(r"(?<!\\)\|", row)) == 4  # three cells' borders: the name's own | escaped
    assert md_code("`x") == "`` `x ``" and md_code("plain.mp4") == "`plain.mp4`"
    assert _clip_link("a b|[x]") == "[a b\\|\\[x\\]](a%20b%7C%5Bx%5D/report.md)"


def test_a_result_whose_mouth_is_missing_on_some_frames_is_said(tmp_path, real_data):
    """A result with 8 of its 25 frames black scored LMD and mouth-opening r as well as a clean copy, without a word
    (only the report's last line counted the frames): it is warned, as speech shorter than the video is."""
    from helpers import cut_video

    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    ref = cut_video(real_data / "retalking" / "face2.mp4", tmp_path / "ref.mp4", 25, lossless=True)
    with FrameReader(ref) as r:
        images, fps = [f.image for f in r.iter_range(0, 25)], r.fps
    gap = tmp_path / "gap.mp4"
    h, w = images[0].shape[:2]
    with VideoWriter(gap, w, h, fps, threads=1, crf=0) as wr:
        for i, im in enumerate(images):
            wr.write(im * 0 if 10 <= i < 18 else im)
    said = run_cli("eval", gap, "--reference", ref, "--expert", "off", "--device", "cpu", "--quiet",
                   "-o", tmp_path / "report")
    assert said.returncode == 0, said.stderr
    assert "no mouth was found on 8 of the 25 frames where the reference shows one" in said.stderr, said.stderr
    clean = run_cli("eval", ref, "--reference", ref, "--expert", "off", "--device", "cpu", "--quiet",
                    "-o", tmp_path / "same")
    assert clean.returncode == 0 and "no mouth was found" not in clean.stderr, clean.stderr
    # speech shorter than the video: the frames after it were scored on silence (an exact copy read 15 frames off)
    from helpers import write_wav

    short = run_cli("eval", ref, "--reference", ref, "--audio", write_wav(tmp_path / "short.wav", 0.4), "--expert",
                    "off", "--device", "cpu", "--quiet", "-o", tmp_path / "short")
    assert short.returncode == 0 and "lasts 0.40 s, the video 1.00 s: the frames after" in short.stderr, short.stderr
    assert "the frames after" not in clean.stderr

