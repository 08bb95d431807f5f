"""``--reference IMAGE``: the reference face taken from a photo of the same person, and a Lite model in ``sync``."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from helpers import cut_audio, read_frames, run_cli


def _spy_reference(monkeypatch):
    """Record the reference half of every network input."""
    from hyperlips import pipeline

    seen = []
    real = pipeline.network_input

    def spy(crops, reference):
        seen.append(np.array(reference))
        return real(crops, reference)

    monkeypatch.setattr(pipeline, "network_input", spy)
    return seen


def test_reference_image_is_the_face_of_that_photo(real_data, tmp_path, monkeypatch):
    from hyperlips.pipeline import LipSync, reference_crop

    video = real_data / "retalking/face2.mp4"
    audio = cut_audio(video, tmp_path / "a.wav", 0.6)
    frame = read_frames(video, 40)[-1]
    photo = tmp_path / "me.png"
    cv2.imwrite(str(photo), frame)
    expect = reference_crop(photo)
    assert expect.shape == (128, 128, 3)
    seen = _spy_reference(monkeypatch)
    torch.manual_seed(0)
    LipSync(untrained=True, model="lite", device="cpu", progress=False).sync(video, audio, tmp_path / "o.mp4",
                                                                             reference=str(photo))
    assert seen and all(np.array_equal(r, expect) for r in seen)
    # and it is not what the default rule picks
    seen.clear()
    LipSync(untrained=True, model="lite", device="cpu", progress=False).sync(video, audio, tmp_path / "p.mp4")
    assert not np.array_equal(seen[0], expect)


def test_reference_image_without_a_face_is_one_line(real_data, tmp_path):
    video = real_data / "retalking/face2.mp4"
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    r = run_cli("sync", video, video, "-o", tmp_path / "o.mp4", "--untrained", "--reference", blank, "--quiet")
    assert r.returncode == 2 and "no face" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("sync", video, video, "-o", tmp_path / "o.mp4", "--untrained", "--reference", tmp_path / "no.png",
                "--quiet")
    assert r.returncode == 2 and "no.png" in r.stderr


def test_a_lite_checkpoint_syncs_and_a_wrong_network_is_refused(real_data, tmp_path):
    from hyperlips.models import create_model, save_checkpoint

    torch.manual_seed(0)
    lite = save_checkpoint(create_model("hyperlips-lite"), tmp_path / "lite.safetensors", "hyperlips-lite")
    expert = save_checkpoint(create_model("syncnet"), tmp_path / "expert.safetensors", "syncnet")
    video = real_data / "retalking/face2.mp4"
    audio = cut_audio(video, tmp_path / "a.wav", 0.5)
    r = run_cli("sync", video, audio, "-o", tmp_path / "o.mp4", "--checkpoint", lite, "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("sync", video, audio, "-o", tmp_path / "x.mp4", "--checkpoint", expert, "--quiet")
    assert r.returncode == 2 and "syncnet" in r.stderr and "not a lip-sync generator" in r.stderr
    assert not (tmp_path / "x.mp4").exists()
