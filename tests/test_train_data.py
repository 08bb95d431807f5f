"""Training datasets on real preprocessed clips, and the shared small dataset the training tests use.

``small_dataset`` preprocesses a few short real clips once per test session (a re-run of ``preprocess`` on the
same folder does no work, so every test module can ask for it): two GRID s1 clips (360x288, 25 fps, one
speaker), two LRS2 crops (160x160) and a VideoReTalking close-up at 30 fps, plus a corrupt file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

SMALL_CLIPS = {
    "grid_s1/bbaf3s.mpg": ("more", "grid_s1/bbaf3s.mpg"),
    "grid_s1/bbas3a.mpg": ("more", "grid_s1/bbas3a.mpg"),
    "lrs2/00001.mp4": ("more", "lrs2_deep_avsr/00001.mp4"),
    "lrs2/00002.mp4": ("more", "lrs2_deep_avsr/00002.mp4"),
    "retalking/face1.mp4": ("real", "retalking/face1.mp4"),
}


def build_small_dataset(base: Path, more: Path, real: Path) -> tuple[Path, Path]:
    """(source folder of symlinks to the shared clips, preprocessed dataset folder) under ``base``."""
    from hyperlips.data.preprocess import PreprocessOptions, preprocess

    src, ds = base / "src", base / "ds"
    for rel, (root, path) in SMALL_CLIPS.items():
        link = src / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink((more if root == "more" else real) / path, link)
    bad = src / "broken" / "bad.mp4"
    bad.parent.mkdir(parents=True, exist_ok=True)
    if not bad.exists():
        bad.write_bytes(b"this is not a video\n" * 10)
    preprocess(src, ds, PreprocessOptions(), workers=2, progress=False)
    return src, ds


def make_view(ds: Path, dst: Path, clip_ids: list[str], val_frames: int | None = None,
              val_fraction: float = 0.2) -> Path:
    """A second dataset root over the same clips (``clips`` is a symlink) split in time, limited to ``clip_ids``."""
    from hyperlips.data.preprocess import write_time_split_manifest

    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "clips").exists():
        os.symlink(ds / "clips", dst / "clips")
    write_time_split_manifest(dst, val_frames=val_frames, val_fraction=val_fraction, clip_ids=clip_ids)
    return dst


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, more_data, real_data) -> Path:
    return build_small_dataset(tmp_path_factory.getbasetemp() / "hl_small", more_data, real_data)[1]


# ---------------------------------------------------------------------------------------------- tests
def test_sync_samples_are_deterministic_and_labelled(small_dataset):
    from hyperlips.data.datasets import Manifest, SyncDataset

    clips = Manifest.load(small_dataset).open_clips("all")
    ds = SyncDataset(clips, seed=3, min_shift=5)
    a, b = ds[17], ds[17]
    assert np.array_equal(a["faces"], b["faces"]) and np.array_equal(a["audio"], b["audio"])
    assert a["faces"].shape == (15, 64, 128) and a["faces"].dtype == np.uint8
    assert a["audio"].shape == (1, 80, 16)
    labels = np.array([float(ds[g]["label"]) for g in range(60)])
    shifts = np.array([int(ds[g]["shift"]) for g in range(60)])
    assert 0.25 < labels.mean() < 0.75  # both kinds are drawn
    assert np.all(shifts[labels == 1] == 0)
    assert np.all(np.abs(shifts[labels == 0]) >= 5)
    # a different seed gives different samples
    assert not np.array_equal(SyncDataset(clips, seed=4)[17]["faces"], a["faces"])


def test_sync_flip_is_random_not_always(small_dataset):
    from hyperlips.data.datasets import Manifest, SyncDataset

    clips = Manifest.load(small_dataset).open_clips("all")
    plain = SyncDataset(clips, seed=0, flip=0.0)
    flipping = SyncDataset(clips, seed=0, flip=0.5)
    flipped = [not np.array_equal(plain[g]["faces"], flipping[g]["faces"]) for g in range(40)]
    mirrored = [np.array_equal(plain[g]["faces"][:, :, ::-1], flipping[g]["faces"]) for g in range(40)]
    assert all(f == m for f, m in zip(flipped, mirrored))  # a changed sample is exactly the mirror image
    assert 8 < sum(flipped) < 32


def test_base_sample_reference_never_overlaps_and_mels_follow_the_convention(small_dataset):
    from hyperlips.data.datasets import BaseDataset, Clip, Manifest
    from hyperlips.media.audio import mel_windows, sync_mel_windows

    m = Manifest.load(small_dataset)
    clips = m.open_clips("all")
    ds = BaseDataset(clips, seed=1)
    for g in range(12):
        item = ds[g]
        rng = np.random.default_rng([1, ds.stream, g])
        ci, t0 = ds.index.pick(rng)
        clip = clips[ci]
        faces = clip.stack("face128").read_many(range(t0, t0 + 5))
        assert np.array_equal(item["target"], faces.transpose(3, 0, 1, 2))
        times = clip.times[t0 : t0 + 5]
        assert np.array_equal(item["mels"], mel_windows(np.asarray(clip.mel), times, clip.fps))
        assert np.array_equal(item["sync_mel"], sync_mel_windows(np.asarray(clip.mel), times[:1])[0])
        # the reference window is another part of the clip, never overlapping the target
        ref_frames = item["reference"].transpose(1, 2, 3, 0)
        stack = clip.stack("face128")
        starts = [s for s in range(clip.n_frames - 4)
                  if np.array_equal(stack.read_many(range(s, s + 5)), ref_frames)]
        assert starts and all(abs(s - t0) >= 5 for s in starts)
        assert item["lip_boxes"].shape == (5, 4)
        assert np.all((item["lip_boxes"] >= 0) & (item["lip_boxes"] <= 1))
    assert isinstance(clips[0], Clip)


def test_time_split_keeps_training_windows_out_of_the_tail(small_dataset, tmp_path):
    from hyperlips.data.datasets import Manifest

    view = make_view(small_dataset, tmp_path / "view", ["lrs2/00001"], val_frames=30)
    m = Manifest.load(view)
    (train,), (val,) = m.open_clips("train"), m.open_clips("val")
    assert train.frame_range == (0, 90) and val.frame_range == (90, 120)
    assert train.window_starts().max() + 5 <= 90
    assert val.window_starts().min() >= 90
    from hyperlips.data.datasets import BaseDataset

    ds = BaseDataset([train], seed=0)
    for g in range(10):
        rng = np.random.default_rng([0, ds.stream, g])
        _, t0 = ds.index.pick(rng)
        assert ds._reference_start(rng, train, 0, t0) + 5 <= 90


def test_sample_sampler_splits_ranks_and_resumes():
    from itertools import islice

    from hyperlips.data.datasets import SampleSampler

    r0 = list(islice(iter(SampleSampler(0, 0, 2)), 6))
    r1 = list(islice(iter(SampleSampler(0, 1, 2)), 6))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(12))
    # resuming after 4 samples per rank continues exactly where the first run was
    assert list(islice(iter(SampleSampler(4, 0, 2)), 2)) == r0[4:6]


def test_manifest_errors_are_user_errors(tmp_path):
    from hyperlips.data.datasets import Manifest
    from hyperlips.errors import UserError

    with pytest.raises(UserError, match="not found"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(UserError, match="hyperlips preprocess"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(UserError, match="format"):
        Manifest.load(tmp_path)


def test_a_dataset_made_with_other_mel_settings_is_refused(small_dataset, tmp_path):
    import json

    from hyperlips.data.datasets import Manifest
    from hyperlips.errors import UserError

    view = make_view(small_dataset, tmp_path / "view", ["grid_s1/bbaf3s"], val_frames=20)
    Manifest.load(view)  # as made: taken
    m = json.loads((view / "manifest.json").read_text())
    m["audio"]["n_mels"], m["audio"]["hop_length"] = 64, 160
    (view / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"other settings .*hop_length, n_mels; hop_length 160 instead of 200.*preprocess"):
        Manifest.load(view)
