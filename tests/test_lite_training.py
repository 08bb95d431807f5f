"""HyperLips-Lite training on real clips: its frame dataset, the time budget and schedule of the loop, exact
resume, `train base --model lite`, `finetune` (folders, held-out tail, progress file, preview) and `sync`."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import run_cli, wait_for_logged_steps, write_wav
from test_train_data import make_view, small_dataset  # noqa: F401  (session fixture)

TINY = dict(model="hyperlips-lite", batch_size=4, workers=0, threads=1, log_every=1, image_every=0, val_every=3,
            seed=5, lite={"widths": [8, 16, 16, 32], "out_width": 8, "audio_width": 16, "audio_members": 2},
            warmup_steps=0, lr=5e-4, betas=(0.9, 0.99), audio_steps=3)


@pytest.fixture(scope="module")
def grid_view(small_dataset, tmp_path_factory):  # noqa: F811
    """The two GRID s1 clips, the last 20 frames of each held out."""
    return make_view(small_dataset, tmp_path_factory.mktemp("lite_grid"), ["grid_s1/bbaf3s", "grid_s1/bbas3a"],
                     val_frames=20)


def _trainer(data: Path, out: Path, resume: bool = False, **kw):
    from hyperlips.train.commands import stage_class
    from hyperlips.train.config import build_config
    from hyperlips.train.loop import Trainer

    cfg = build_config("base", overrides={"data": str(data), "out": str(out), **TINY, **kw})
    return Trainer(stage_class("base", cfg.model), cfg, resume=resume, quiet=True)


# ---------------------------------------------------------------------------------------------- data
def test_frame_samples_are_deterministic_with_far_references(grid_view):
    from hyperlips.data.datasets import Manifest
    from hyperlips.data.frames import MIN_REFERENCE_GAP, FrameDataset
    from hyperlips.face.mouth_shape import N_SHAPE

    clips = Manifest.load(grid_view).open_clips("train")
    ds = FrameDataset(clips, steps=24, seed=1)
    a, b = ds[11], ds[11]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["target"].shape == (3, 128, 128) and a["reference"].shape == (3, 128, 128)
    assert a["mel"].shape == (1, 80, 24) and a["shape"].shape == (N_SHAPE,) and bool(a["has_shape"])
    # the reference is another frame of the same clip, far from the target
    part = ds.parts[int(a["clip"])]
    frames = {int(part.index[i]): part.faces[i] for i in range(len(part.index))}
    ref_at = [f for f, img in frames.items() if np.array_equal(img.transpose(2, 0, 1), a["reference"])]
    assert ref_at and all(abs(f - int(a["frame"])) >= MIN_REFERENCE_GAP for f in ref_at)
    # training frames stay inside the training part of each clip
    for g in range(40):
        s = ds[g]
        lo, hi = clips[int(s["clip"])].frame_range
        assert lo <= int(s["frame"]) < hi
    # the mel window is centred on the frame's time, cut from the clip's mel normalised over the utterance
    from hyperlips.media.audio import centred_mel_windows, normalise_utterance

    clip = clips[int(a["clip"])]
    mel = normalise_utterance(np.asarray(clip.mel))
    at = [clip.time_of(int(a["frame"]))]
    assert np.array_equal(a["mel"], centred_mel_windows(mel, at, 24, fill=mel.min(axis=1))[0])
    raw = FrameDataset(clips, steps=24, seed=1, mel_norm=None)[11]["mel"]
    assert np.array_equal(raw, centred_mel_windows(np.asarray(clip.mel), at, 24)[0])


def test_validation_frames_come_in_order_with_one_reference(grid_view):
    from hyperlips.data.datasets import Manifest
    from hyperlips.data.frames import FrameDataset, reference_frame

    m = Manifest.load(grid_view)
    val = m.open_clips("val")
    train = {c.id: c.frame_range for c in m.open_clips("train")}
    refs = {c.id: reference_frame(c, train[c.id]) for c in val}
    ds = FrameDataset(val, steps=24, ordered=True, references=refs)
    assert len(ds) == sum(int(c.valid[c.frame_range[0]:c.frame_range[1]].sum()) for c in val)
    frames = [(int(ds[g]["clip"]), int(ds[g]["frame"])) for g in range(len(ds))]
    assert frames == sorted(frames)
    assert all(np.array_equal(ds[g]["reference"], refs[val[int(ds[g]["clip"])].id].transpose(2, 0, 1))
               for g in (0, len(ds) - 1))
    # with the frame half its clip range away, for a rendering from another moment's upper half (as sync renders)
    other = FrameDataset(val, steps=24, ordered=True, references=refs, other_moment=True)
    part = other.parts[0]
    n = len(part.index)
    for g in (0, n // 2, n - 1):
        item = other[g]
        assert all(np.array_equal(item[k], ds[g][k]) for k in ds[g])
        assert np.array_equal(item["other_source"], part.faces[(g + n // 2) % n].transpose(2, 0, 1))
    with pytest.raises(ValueError, match="other_moment"):
        FrameDataset(val, steps=24, other_moment=True)


def test_footage_tail_is_held_out_across_clips(small_dataset, tmp_path):  # noqa: F811
    from hyperlips.data.preprocess import write_footage_tail_manifest

    view = make_view(small_dataset, tmp_path / "v", ["grid_s1/bbaf3s", "grid_s1/bbas3a"], val_frames=1)
    m = write_footage_tail_manifest(view, ["grid_s1/bbaf3s", "grid_s1/bbas3a"], val_seconds=4.0)
    by = {(c["id"], c["split"]): c["frames"] for c in m["clips"]}
    # 75 frames each: the whole second clip and the last 25 frames of the first are held out
    assert by[("grid_s1/bbas3a", "val")] == [0, 75] and ("grid_s1/bbas3a", "train") not in by
    assert by[("grid_s1/bbaf3s", "val")] == [50, 75] and by[("grid_s1/bbaf3s", "train")] == [0, 50]
    assert m["held_out"]["frames"] == 100 and m["held_out"]["seconds"] == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------- training
def test_lite_trains_validates_and_exports(grid_view, tmp_path):
    from hyperlips.models import HyperLipsLite, load_checkpoint

    res = _trainer(grid_view, tmp_path / "run", max_steps=6).fit()
    assert res.step == 6 and all(np.isfinite(v) for r in res.losses for v in r.values())
    assert {"l1", "edge", "shape"} <= set(res.losses[0])
    assert res.losses[-1]["l1"] < res.losses[0]["l1"]
    assert {"val/mouth_l1", "val/opening_r", "val/shape_r", "val/opening_err", "val/sharpness"} <= set(res.metrics)
    assert 0.0 <= res.metrics["val/sharpness"] < 1.0  # six steps from random weights: blurrier than the real lips
    model, info = load_checkpoint(res.model)
    assert isinstance(model, HyperLipsLite) and info.config["extra"]["widths"] == [8, 16, 16, 32]
    # trained, validated and exported with the gain that spreads its held-out shapes like the real ones
    from hyperlips.train.lite import calibrate_shape_gain

    assert model.config.shape_gain == pytest.approx(calibrate_shape_gain(model, grid_view), abs=2e-3)
    assert model.config.shape_gain > 1.0
    assert (tmp_path / "run/preview.png").is_file() and list((tmp_path / "run/images").glob("*preview*.png"))


def test_validation_also_renders_from_another_moments_frame(grid_view, tmp_path, monkeypatch):
    """``val/opening_r_other``: the held-out faces rendered from the upper half of the frame half the clip away, the
    opening FaceMesh reads on them against the real one (what `sync` and `eval --protocol tail` measure)."""
    import hyperlips.train.lite as lite
    from hyperlips.models import HyperLipsLite

    real_render, real_mesh = HyperLipsLite.render, lite.LiteStage.mesh_opening
    shown, read = [], []
    monkeypatch.setattr(HyperLipsLite, "render", lambda self, f, s: shown.append(f.detach()) or real_render(self, f, s))
    monkeypatch.setattr(lite.LiteStage, "mesh_opening",  # a reading that depends on the rendered faces
                        lambda self, imgs: read.append(imgs) or imgs[:, 80:110, 40:90].mean(axis=(1, 2, 3)).astype(np.float32))
    trainer = _trainer(grid_view, tmp_path / "run", max_steps=1, val_every=1)
    res = trainer.fit()
    ds = trainer.stage.val_dataset()
    upper = lambda t: t[:, :3, :64]  # noqa: E731
    others = np.stack([ds[g]["other_source"] for g in range(len(ds))])
    assert any(torch.equal(upper(f), torch.from_numpy(others[:len(f)])[:, :, :64].float() / 255) for f in shown)
    assert np.isfinite(res.metrics["val/opening_r_other"]) and np.isfinite(res.metrics["val/opening_r"])
    assert res.metrics["val/opening_r_other"] != res.metrics["val/opening_r"]
    assert res.metrics["val/opening_err_other"] == pytest.approx(1 - res.metrics["val/opening_r_other"])
    assert len(read) % 2 == 0 and len(read) >= 2  # each batch read twice: from its own frames, from the others


def test_validation_sharpness_is_the_lip_box_laplacian_of_generated_over_real():
    import cv2

    from hyperlips.train.lite_batch import lip_box_laplacian

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    blurred = np.stack([cv2.GaussianBlur(x, (5, 5), 1.5) for x in sharp])
    boxes = np.array([[0.25, 0.6, 0.75, 0.9], [0.3, 0.5, 0.302, 0.9]])  # the second box is under a pixel wide
    s, b = lip_box_laplacian(sharp, boxes), lip_box_laplacian(blurred, boxes)
    assert s[0] > 10 * b[0] > 0 and np.isnan(s[1]) and np.isnan(b[1])
    # only the pixels inside the box count: texture outside it changes nothing
    outside = sharp.copy()
    outside[:, :64] = 0
    assert lip_box_laplacian(outside, boxes)[0] == s[0]
    grey = cv2.cvtColor(sharp[0, 77:115, 32:96], cv2.COLOR_BGR2GRAY).astype(np.float64)
    assert s[0] == pytest.approx(cv2.Laplacian(grey, cv2.CV_64F, ksize=3).var())


def test_mouth_gan_joins_after_its_start_and_is_checkpointed(grid_view, tmp_path):
    res = _trainer(grid_view, tmp_path / "run", max_steps=4, val_every=0, mouth_gan_weight=0.1,
                   mouth_gan_start=3).fit()
    assert "adv" not in res.losses[1] and {"adv", "disc"} <= set(res.losses[2]) <= set(res.losses[3])
    assert all(np.isfinite(v) for r in res.losses for v in r.values())
    ck = torch.load(tmp_path / "run/checkpoints/step_000000004.pt", weights_only=True)
    assert set(ck["models"]) == {"generator", "discriminator"} and "discriminator" in ck["optimizers"]


def test_mouth_reader_loss_trains_the_renderer_only(grid_view, tmp_path, monkeypatch):
    from hyperlips.models import save_checkpoint
    from hyperlips.models.mouth_reader import MouthReader

    torch.manual_seed(0)
    reader = MouthReader({"widths": [8, 8, 16, 16]}).eval()
    path = save_checkpoint(reader, tmp_path / "reader.safetensors", "mouth-reader")
    before = {k: v.clone() for k, v in reader.state_dict().items()}
    trainer = _trainer(grid_view, tmp_path / "run", max_steps=3, val_every=0, reader_weight=0.05, reader=str(path))
    res = trainer.fit()
    assert all("read" in r and np.isfinite(r["read"]) and r["read"] > 0 for r in res.losses)
    # the reader judges, it does not learn: unchanged, and not part of the run's checkpoints
    assert all(torch.equal(before[k], v) for k, v in trainer.stage.reader.state_dict().items())
    ck = torch.load(tmp_path / "run/checkpoints/step_000000003.pt", weights_only=True)
    assert set(ck["models"]) == {"generator"}
    # and it moves the renderer: the same run with a negligible weight ends elsewhere (same seed, same batches)
    plain = _trainer(grid_view, tmp_path / "plain", max_steps=3, val_every=0, reader_weight=1e-12, reader=str(path))
    plain.fit()
    gen_a, gen_b = trainer.stage.gen.state_dict(), plain.stage.gen.state_dict()
    assert torch.equal(gen_a["audio_encoder.head.weight"], gen_b["audio_encoder.head.weight"])  # frozen in both
    assert not torch.equal(gen_a["decoder.head.weight"], gen_b["decoder.head.weight"])
    # without one (no path, none shipped) the setting is refused before any training
    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", "1")
    from hyperlips.errors import UserError

    with pytest.raises(UserError, match="reader_weight needs a mouth reader"):
        _trainer(grid_view, tmp_path / "run2", max_steps=1, reader_weight=0.05).fit()


def test_reader_trains_on_the_lip_points_and_exports(grid_view, tmp_path):
    from hyperlips.models import MouthReader, load_checkpoint
    from hyperlips.train.commands import stage_class
    from hyperlips.train.config import build_config
    from hyperlips.train.loop import Trainer

    cfg = build_config("reader", overrides={"data": str(grid_view), "out": str(tmp_path / "run"), "max_steps": 4,
                                            "batch_size": 8, "val_every": 4, "log_every": 1, "image_every": 4,
                                            "threads": 1, "warmup_steps": 0})
    res = Trainer(stage_class("reader"), cfg, quiet=True).fit()
    assert res.step == 4 and all(np.isfinite(r["points"]) for r in res.losses)
    assert res.metrics["val/point_px"] > 0 and "val/opening_r" in res.metrics
    model, info = load_checkpoint(res.model)
    assert isinstance(model, MouthReader) and info.name == "mouth-reader"
    assert list((tmp_path / "run/images").glob("*.png"))


def test_reader_augmentation_moves_the_points_with_the_pixels():
    from hyperlips.train.reader import augment_crops

    faces = torch.zeros(16, 3, 128, 128)
    faces[:, :, 80:84, 50:54] = 1.0  # a white dot centred at x 52, y 82 (pixel centres)
    points = torch.tensor([[52 / 128, 82 / 128]]).expand(16, 1, 2).clone()
    out, moved = augment_crops(faces, points, torch.Generator().manual_seed(3))
    assert not torch.allclose(moved, points)  # it did move them
    for img, (x, y) in zip(out.mean(1), moved[:, 0] * 128):
        ys, xs = torch.nonzero(img > img.max() * 0.5, as_tuple=True)
        assert abs(float(xs.float().mean()) + 0.5 - float(x)) < 1.0 and abs(float(ys.float().mean()) + 0.5 - float(y)) < 1.0


def test_mouth_crops_are_square_around_the_lips():
    from hyperlips.train.lite_batch import mouth_crops

    img = torch.zeros(1, 3, 128, 128)
    img[:, :, 80:100, 40:88] = 1.0  # a bright "mouth"
    crop = mouth_crops(img, torch.tensor([[40 / 128, 80 / 128, 88 / 128, 100 / 128]]))
    assert crop.shape == (1, 3, 64, 64)
    assert crop[0, 0, 32, 32] > 0.99 and crop[0, 0, 2, 2] < 0.01  # centred on it, with a margin round it


def test_mirrored_samples_flip_faces_boxes_and_shapes_together():
    from hyperlips.face.mouth_shape import N_SHAPE, mirror_shapes
    from hyperlips.train.lite_batch import mirrored, mouth_crops

    g = torch.Generator().manual_seed(0)
    faces, target = torch.rand(3, 6, 128, 128, generator=g), torch.rand(3, 3, 128, 128, generator=g)
    shapes = torch.randn(3, N_SHAPE, generator=g)
    box = torch.tensor([[0.20, 0.6, 0.45, 0.8]] * 3)
    which = torch.tensor([True, False, True])
    f2, t2, s2, b2 = mirrored(faces, target, shapes, box, which)
    assert torch.equal(f2[0], faces[0].flip(2)) and torch.equal(t2[2], target[2].flip(2))
    assert torch.equal(f2[1], faces[1]) and torch.equal(t2[1], target[1]) and torch.equal(s2[1], shapes[1])
    assert torch.equal(s2[0], mirror_shapes(shapes[0])) and not torch.equal(s2[0], shapes[0])
    assert torch.allclose(b2[0], torch.tensor([0.55, 0.6, 0.80, 0.8])) and torch.equal(b2[1], box[1])
    # the box still frames the same pixels: the mouth crop of the flipped face is the flipped crop
    assert torch.allclose(mouth_crops(t2[:1], b2[:1]), mouth_crops(target[:1], box[:1]).flip(3), atol=1e-5)
    # twice is no change
    back = mirrored(f2, t2, s2, b2, which)
    assert all(torch.allclose(a, b) for a, b in zip(back, (faces, target, shapes, box)))


def test_mirror_setting_trains_on_mirrored_samples(grid_view, tmp_path, monkeypatch):
    import hyperlips.train.lite as lite

    seen = []
    real = lite.mirrored
    monkeypatch.setattr(lite, "mirrored", lambda *a: seen.append(int(a[-1].sum())) or real(*a))
    res = _trainer(grid_view, tmp_path / "run", max_steps=3, val_every=0, mirror=1.0).fit()
    assert seen == [4, 4, 4] and all(np.isfinite(v) for r in res.losses for v in r.values())
    _trainer(grid_view, tmp_path / "off", max_steps=2, val_every=0).fit()  # the default: never mirrored
    assert seen == [4, 4, 4]


def test_frame_pairs_bring_the_next_frame_of_the_same_clip(grid_view):
    from hyperlips.data.datasets import Manifest
    from hyperlips.data.frames import FrameDataset

    clips = Manifest.load(grid_view).open_clips("train")
    plain, paired = FrameDataset(clips, steps=24, seed=1), FrameDataset(clips, steps=24, seed=1, pairs=True)
    assert "has_next" not in plain[3]
    found = 0
    for g in range(60):
        a, b = plain[g], paired[g]
        assert all(np.array_equal(a[k], b[k]) for k in a)  # the sample itself is unchanged
        part = paired.parts[int(b["clip"])]
        k = int(np.flatnonzero(part.index == int(b["frame"]))[0])
        if bool(b["has_next"]):
            found += 1
            assert int(part.index[k + 1]) == int(b["frame"]) + 1  # the very next frame, of the same clip
            assert np.array_equal(b["next_target"], part.faces[k + 1].transpose(2, 0, 1))
            assert np.array_equal(b["next_shape"], part.shapes[k + 1]) and bool(b["next_has_shape"])
            assert np.array_equal(b["next_lip_box"], part.lip_boxes[k + 1])
            assert np.array_equal(b["next_mel"], paired._mel(int(b["clip"]), k + 1))
            assert not np.array_equal(b["next_mel"], b["mel"])
        else:  # the last frame of its range: its own fields again, marked
            assert k + 1 == len(part.index) or int(part.index[k + 1]) != int(b["frame"]) + 1
            assert np.array_equal(b["next_target"], b["target"])
    assert found >= 55
    # the last frame of a range has no next one
    ds = FrameDataset(clips[:1], steps=24, seed=1, pairs=True)
    last = len(ds.parts[0].index) - 1
    assert not bool(ds._next(0, last, {"target": 0, "mel": 0, "shape": 0, "has_shape": 0, "lip_box": 0})["has_next"])
    with pytest.raises(ValueError, match="pairs"):
        FrameDataset(clips, steps=24, ordered=True, references={}, pairs=True)


def test_source_shift_shows_the_upper_half_of_a_nearby_frame(grid_view):
    from hyperlips.data.datasets import Manifest
    from hyperlips.data.frames import MIN_REFERENCE_GAP, SOURCE_GAP, FrameDataset
    from hyperlips.errors import UserError

    clips = Manifest.load(grid_view).open_clips("train")
    plain, shifted = FrameDataset(clips, steps=24, seed=1), FrameDataset(clips, steps=24, seed=1, source_shift=0.5)
    assert "source" not in plain[3] and "shifted" not in plain[3]
    gaps = []
    for g in range(80):
        a, b = plain[g], shifted[g]
        assert all(np.array_equal(a[k], b[k]) for k in a)  # the sample itself is drawn as before
        if not bool(b["shifted"]):
            assert np.array_equal(b["source"], b["target"])
            continue
        part = shifted.parts[int(b["clip"])]
        at = [int(part.index[i]) for i in range(len(part.index))
              if np.array_equal(part.faces[i].transpose(2, 0, 1), b["source"])]
        assert at, "the source is a frame of the sample's own clip range"
        gaps.append(min(abs(f - int(b["frame"])) for f in at))
    assert 25 <= len(gaps) <= 55  # about half of them
    assert all(SOURCE_GAP[0] <= d <= SOURCE_GAP[1] for d in gaps) and len(set(gaps)) > 3
    assert min(gaps) >= 3 and max(gaps) < MIN_REFERENCE_GAP  # a mouth moved on, a face that has not
    # pairs keep their shift: the frame after the source, beside the frame after the target
    paired = FrameDataset(clips, steps=24, seed=1, source_shift=1.0, pairs=True)
    kept = 0
    for g in range(20):
        b = paired[g]
        part = paired.parts[int(b["clip"])]
        s = [i for i in range(len(part.index)) if np.array_equal(part.faces[i].transpose(2, 0, 1), b["source"])][0]
        if bool(b["next_shifted"]):
            kept += 1
            assert int(part.index[s + 1]) == int(part.index[s]) + 1
            assert np.array_equal(b["next_source"], part.faces[s + 1].transpose(2, 0, 1))
        else:
            assert np.array_equal(b["next_source"], b["next_target"])
    assert kept >= 15
    with pytest.raises(ValueError, match="source_shift"):
        FrameDataset(clips, steps=24, ordered=True, references={}, source_shift=0.5)
    with pytest.raises(UserError, match="between 0 and 1"):
        FrameDataset(clips, steps=24, source_shift=1.5)


def test_a_shifted_sample_shows_its_source_and_is_not_scored_above_the_mask():
    from types import SimpleNamespace

    from hyperlips.train.lite import LiteStage
    from hyperlips.train.lite_batch import masked_faces

    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(4, 3, 128, 128, generator=g) * 255).round().to(torch.uint8)
    batch = {"target": frames[:2], "source": frames[2:], "reference": frames[:2]}
    faces, target = masked_faces(batch)
    assert torch.equal(faces[:, :3, :64], frames[2:, :, :64].float() / 255) and not faces[:, :3, 64:].any()
    assert torch.equal(target, frames[:2].float() / 255) and torch.equal(faces[:, 3:], target)
    plain, _ = masked_faces({"target": frames[:2], "reference": frames[:2]})
    assert torch.equal(plain[:, :3, :64], target[:, :, :64])
    stage = SimpleNamespace(gen=SimpleNamespace(decoder_rows=lambda h: h - 48), cfg=SimpleNamespace(mouth_weight=4.0))
    box = torch.tensor([[0.3, 0.6, 0.7, 0.8]]).repeat(2, 1)
    loss = lambda fake, which: [float(v) for v in LiteStage._image_loss(stage, fake, target, box, which)]
    both, first = torch.tensor([True, True]), torch.tensor([True, False])
    above = target.clone()
    above[:, :, 48:64] += 0.3  # generated rows above the mask: what a shifted sample was shown, not its target
    assert min(loss(above, None)) > 0 and loss(above, both) == [0.0, 0.0]
    assert 0 < loss(above, first)[0] < loss(above, None)[0]
    below = target.clone()
    below[:, :, 80:100] += 0.3  # inside the mask: scored either way
    assert loss(below, both)[0] == pytest.approx(loss(below, None)[0]) and loss(below, both)[0] > 0


def test_source_shift_setting_trains_on_shifted_samples(grid_view, tmp_path, monkeypatch):
    import hyperlips.train.lite as lite

    shown = []
    real = lite.masked_faces
    monkeypatch.setattr(lite, "masked_faces", lambda b: shown.append(dict(b)) or real(b))
    res = _trainer(grid_view, tmp_path / "run", max_steps=2, val_every=0, source_shift=1.0).fit()
    assert len(shown) == 2 and all(np.isfinite(v) for r in res.losses for v in r.values())
    assert all(bool(b["shifted"].all()) and not torch.equal(b["source"], b["target"]) for b in shown)
    shown.clear()
    _trainer(grid_view, tmp_path / "off", max_steps=1, val_every=0).fit()  # the default: the target's own frame
    assert "source" not in shown[0]
    shown.clear()  # pairs keep their shift: the frame after the source beside the frame after the target
    rows, real_change = [], lite.change_loss
    monkeypatch.setattr(lite, "change_loss", lambda *a: rows.append(a[4]) or real_change(*a))
    res = _trainer(grid_view, tmp_path / "pairs", max_steps=1, val_every=0, source_shift=1.0, temporal_weight=1.0).fit()
    b, n = shown[0], len(shown[0]["target"]) // 2  # the targets, then the frames after them
    later = b["shifted"][n:]
    assert later.any() and np.isfinite(res.losses[0]["change"])
    assert all(not torch.equal(s, t) for s, t in zip(b["source"][n:][later], b["target"][n:][later]))
    assert rows == [64]  # the change is compared below the mask only (the rows above show the source's)


def test_change_loss_compares_the_generated_change_with_the_real_one():
    from hyperlips.train.lite_batch import change_loss, paired_batch

    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 128, 128, generator=g)  # two pairs: frames 0, 1 then the frames after them 2, 3
    box = torch.tensor([[0.3, 0.6, 0.7, 0.8]]).repeat(4, 1)
    both = torch.tensor([True, True])
    loss = lambda fake, real, use=both: float(change_loss(fake, real, box, use, 48, 4.0))
    # a generated face off by the same error on both frames changes as the real one does
    assert loss(target + 0.2, target) == pytest.approx(0.0, abs=1e-6)
    assert loss(target.flip(0), target) > 0.1
    # a mouth that flickers where the real one stays still: seen, four times over inside the lip box
    still = target.clone()
    still[2:] = still[:2]
    flick = still.clone()
    flick[2:, :, 90:100, 50:70] += 0.1  # inside the box
    aside = still.clone()
    aside[2:, :, 50:60, 0:20] += 0.1  # generated rows, outside the box
    assert loss(flick, still) > 0 and loss(flick, still) == pytest.approx(4.0 * loss(aside, still), rel=1e-4)
    above = still.clone()
    above[2:, :, 0:48] += 0.5  # rows above the generated ones: not counted
    assert loss(above, still) == pytest.approx(0.0, abs=1e-7)
    # pairs left out count for nothing
    assert loss(flick, still, torch.tensor([False, False])) == 0.0
    assert loss(flick, still, torch.tensor([True, False])) == pytest.approx(loss(flick, still), rel=1e-5)
    batch = {k: torch.arange(2) for k in ("target", "mel", "shape", "has_shape", "lip_box", "reference")}
    batch.update({k: torch.arange(2) + 10 for k in ("next_target", "next_mel", "next_shape", "next_has_shape",
                                                     "next_lip_box")}, has_next=torch.tensor([1, 0]))
    out = paired_batch(batch)
    assert out["target"].tolist() == [0, 1, 10, 11] and out["reference"].tolist() == [0, 1, 0, 1]
    assert out["has_next"].tolist() == [True, False]


def test_temporal_setting_renders_pairs_with_the_same_draws(grid_view, tmp_path, monkeypatch):
    import hyperlips.train.lite as lite
    from hyperlips.face.mouth_shape import mirror_shapes
    from hyperlips.models import HyperLipsLite

    seen, batches = [], []
    real_forward, real_step = HyperLipsLite.forward, lite.LiteStage.train_step
    monkeypatch.setattr(HyperLipsLite, "forward", lambda self, a, f, s=None: seen.append(s.detach()) or real_forward(self, a, f, s))
    monkeypatch.setattr(lite.LiteStage, "train_step", lambda self, b, step: batches.append(b) or real_step(self, b, step))
    settings = dict(max_steps=2, val_every=0, teacher_forcing=1.0, shape_noise=0.5, mirror=0.5)
    trainer = _trainer(grid_view, tmp_path / "run", temporal_weight=1.0, **settings)
    res = trainer.fit()
    assert all("change" in r and np.isfinite(r["change"]) and r["change"] > 0 for r in res.losses)
    assert len(seen) == len(batches) == 2
    pairs = 0
    for shown, b in zip(seen, batches):
        n = len(b["has_next"])
        assert shown.shape[0] == 2 * n  # every sample rendered with the frame after it
        # one noise draw and one mirror draw per pair: the shapes shown differ by the real change alone
        for i in np.flatnonzero(b["has_next"].numpy()):
            d_shown, d_real = shown[n + i] - shown[i], (b["next_shape"][i] - b["shape"][i]).float()
            assert (torch.allclose(d_shown, d_real, atol=1e-4)
                    or torch.allclose(d_shown, mirror_shapes(d_real), atol=1e-4))
            pairs += 1
    assert pairs >= 6
    # and the loss moves the renderer: the same run with a negligible weight ends elsewhere (same batches)
    faint = _trainer(grid_view, tmp_path / "faint", temporal_weight=1e-12, **settings)
    faint.fit()
    a, b = trainer.stage.gen.state_dict(), faint.stage.gen.state_dict()
    assert torch.equal(batches[0]["target"], batches[2]["target"])
    assert not torch.equal(a["decoder.head.weight"], b["decoder.head.weight"])
    # the default trains on single frames, with no such loss
    seen.clear()
    plain = _trainer(grid_view, tmp_path / "plain", max_steps=1, val_every=0).fit()
    assert "change" not in plain.losses[0] and seen[-1].shape[0] == 4


def test_lite_resumes_exactly_with_a_decaying_learning_rate(grid_view, tmp_path):
    kw = dict(max_steps=5, val_every=0, lr_schedule="cosine", ckpt_every=3)
    full = _trainer(grid_view, tmp_path / "full", **kw).fit()
    part = _trainer(grid_view, tmp_path / "part", **kw)

    def crash(step, losses):
        if step == 4:
            raise KeyboardInterrupt  # killed after the checkpoint of step 3

    part.on_step = crash
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    cont = _trainer(grid_view, tmp_path / "part", resume=True, **kw).fit()
    assert [r["step"] for r in cont.losses] == [4, 5]
    assert cont.losses == full.losses[3:]  # bit for bit on CPU


def test_lr_schedule_warms_up_and_decays(tmp_path):
    from hyperlips.train.config import build_config
    from hyperlips.train.progress import LRSchedule

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = LRSchedule({"o": opt}, build_config("base", overrides={"lr_schedule": "cosine", "warmup_steps": 10,
                                                                     "max_steps": 110}))
    lrs = []
    for step in range(110):
        sched.apply(step, None)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55) and lrs[109] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    # with a time budget the decay waits for the plan, then spans it
    sched = LRSchedule({"o": opt}, build_config("base", overrides={"lr_schedule": "cosine", "max_minutes": 1,
                                                                     "max_steps": 10**6}))
    sched.apply(50, None)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    sched.apply(100, 100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_time_budget_stops_the_run_and_is_counted_across_resumes(grid_view, tmp_path, monkeypatch, capfd):
    import hyperlips.train.loop as loop

    clock = {"t": 1000.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    trainer = _trainer(grid_view, tmp_path / "run", max_steps=1000, max_minutes=1.0, val_every=4, ckpt_every=1000)
    trainer.on_step = lambda step, losses: clock.__setitem__("t", clock["t"] + 5.0)  # 5 s a step
    trainer.quiet = False  # a line per logged step (no bar): where it stands in the budget, not in max_steps
    res = trainer.fit()
    err = capfd.readouterr().err
    assert "step 4 (0.3 of 1.0 min, about 0.7 min left) " in err and "step 4/1000" not in err, err[-2000:]
    # 60 s at 5 s a step: planned at the first validation (step 4) with a small margin, within the budget
    assert trainer.planned_steps is not None and 10 <= res.step == trainer.planned_steps <= 12
    ck = torch.load(sorted((tmp_path / "run/checkpoints").glob("step_*.pt"))[-1], weights_only=True)
    assert 50.0 <= ck["clock"]["elapsed_s"] <= 60.0 and ck["clock"]["planned_steps"] == trainer.planned_steps
    again = _trainer(grid_view, tmp_path / "run", resume=True, max_steps=1000, max_minutes=1.0, val_every=4)
    assert again.fit().step == res.step  # the budget is spent: nothing more to do
    # more minutes continue it: the old plan is dropped, the new one spends the 60 s added
    more = _trainer(grid_view, tmp_path / "run", resume=True, max_steps=1000, max_minutes=2.0, val_every=4)
    more.on_step = trainer.on_step
    assert res.step + 8 <= more.fit().step == more.planned_steps <= res.step + 13


def test_a_resumed_run_that_ended_has_nothing_left_to_do(grid_view, tmp_path, monkeypatch):
    """A run stopped and resumed, whose resumed part ran faster than the part that planned it: it ends at its plan,
    and running it again trains nothing (its last validation's plan, made as it ended, had the next re-run train on
    and change the kept model)."""
    import hyperlips.train.loop as loop

    clock = {"t": 1000.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    kw = dict(max_steps=1000, max_minutes=1.0, val_every=4, ckpt_every=1)
    first = _trainer(grid_view, tmp_path / "run", **kw)  # 5 s a step: planned at step 4 to end at about 11

    def stop_at_10(step, losses):
        clock["t"] += 5.0
        if step == 10:  # a step before the plan's end, after its first validation (step 4) and its second (8)
            raise KeyboardInterrupt

    first.on_step = stop_at_10
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = _trainer(grid_view, tmp_path / "run", resume=True, **kw)
    resumed.on_step = lambda step, losses: clock.__setitem__("t", clock["t"] + 1.0)  # 1 s a step now
    end = resumed.fit().step
    again = _trainer(grid_view, tmp_path / "run", resume=True, **kw)
    again.on_step = resumed.on_step
    assert again.fit().step == end  # nothing to do


def test_a_budget_is_planned_early_when_the_first_validation_is_far(grid_view, tmp_path, monkeypatch):
    """A short budget whose first validation would come after its end: the plan (and the learning rate's decay over
    it) comes from the first 20 steps' speed."""
    import hyperlips.train.loop as loop

    clock = {"t": 1000.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    trainer = _trainer(grid_view, tmp_path / "run", max_steps=100000, max_minutes=1.0, val_every=1000,
                       ckpt_every=1000, lr_schedule="cosine")
    trainer.on_step = lambda step, losses: clock.__setitem__("t", clock["t"] + 1.0)  # 1 s a step
    res = trainer.fit()
    # at step 20: 40 s left at 1 s/step, 98% planned
    assert trainer.planned_steps == 20 + int(0.98 * 40) == res.step


def test_a_second_run_into_a_run_folder_in_use_is_refused(grid_view, tmp_path):
    """Two `train` runs into one --out at once (a --resume in a second terminal, thinking the first had died) both
    ran, interleaving their checkpoints, model.safetensors and scalars.jsonl."""
    from hyperlips.data.preprocess import dataset_lock
    from hyperlips.errors import UserError

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    half = run / "checkpoints" / ".step_000000002.pt.tmp-1234"
    half.write_bytes(b"being written by the run going on")
    with dataset_lock(run):  # the run going on
        with pytest.raises(UserError, match="is being written by another run"):
            _trainer(grid_view, run, max_steps=1).fit()
    assert half.exists()  # its half-written checkpoint is its own
    assert _trainer(grid_view, run, max_steps=1).fit().step == 1  # once it has ended


def test_a_run_ended_by_max_steps_within_its_budget_continues_with_a_larger_one(grid_view, tmp_path, monkeypatch):
    """Its end was kept as the budget's plan, as for a run the budget ended: "already at step 8 (max_steps 8) (the
    plan for its time budget ...): nothing to do" with --max-steps 16 and most of the minutes left."""
    import hyperlips.train.loop as loop

    clock = {"t": 1000.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    kw = dict(max_minutes=1.0, val_every=4, ckpt_every=4)
    first = _trainer(grid_view, tmp_path / "run", max_steps=8, **kw)
    first.on_step = lambda step, losses: clock.__setitem__("t", clock["t"] + 1.0)  # 1 s a step: 8 s of 60
    assert first.fit().step == 8
    more = _trainer(grid_view, tmp_path / "run", resume=True, max_steps=16, **kw)
    more.on_step = first.on_step
    assert more.fit().step == 16


def test_a_budget_planned_after_a_long_validation_counts_it_once(grid_view, tmp_path, monkeypatch):
    """The plan made after a validation took the time before it as the time so far, less the validation: Base's
    validations, longer than its steps on a CPU, read as 0.00 s/step, and the run planned twice the steps it had."""
    import hyperlips.train.loop as loop

    clock = {"t": 1000.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    validate = loop.held_out_metrics

    def slow_validation(*a, **k):
        clock["t"] += 20.0
        return validate(*a, **k)

    monkeypatch.setattr(loop, "held_out_metrics", slow_validation)
    said = []
    trainer = _trainer(grid_view, tmp_path / "run", max_steps=1000, max_minutes=1.0, val_every=4, ckpt_every=1000)
    trainer.say = said.append
    trainer.on_step = lambda step, losses: clock.__setitem__("t", clock["t"] + 1.0)  # 1 s a step
    trainer.fit()
    # at step 4: 24 s spent, 36 s left, 1 s a step and 20 s a validation every 4: 6 steps, 98% of them planned
    assert any("1.00 s/step, 20.0 s/validation -> planning 9 steps" in m for m in said), said


def test_a_stages_preparation_is_spent_from_the_budget_but_left_out_of_its_speed(grid_view, tmp_path, monkeypatch):
    """HyperLips-Lite fits its audio encoder before the first step: given at most a quarter of the budget, counted
    in the elapsed time, not in the seconds per step the plan is made from."""
    import hyperlips.train.loop as loop
    from hyperlips.train.lite import LiteStage

    clock = {"t": 1000.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    given = []

    def slow_prepare(self, seconds):
        given.append(seconds)
        clock["t"] += 30.0

    monkeypatch.setattr(LiteStage, "prepare", slow_prepare)
    trainer = _trainer(grid_view, tmp_path / "run", max_steps=1000, max_minutes=1.0, val_every=4, ckpt_every=1000)
    trainer.on_step = lambda step, losses: clock.__setitem__("t", clock["t"] + 5.0)
    res = trainer.fit()
    # 30 s + 4 steps of 5 s = 50 s at the first validation: 10 s left, 2 steps at 5 s/step (98%: 1); had the 30 s
    # counted in the speed (12.5 s/step), none
    assert given == [15.0] and res.step == trainer.planned_steps == 5
    # a resumed run does not prepare again
    again = _trainer(grid_view, tmp_path / "run", resume=True, max_steps=1000, max_minutes=2.0, val_every=4)
    again.on_step = trainer.on_step
    assert again.fit().step > res.step and given == [15.0]


def _endless_training(data: Path, run: Path, ctrl_c, *extra: str):
    """A tiny `train base --model lite` run of no end in a process of its own, Ctrl-C handled as ``ctrl_c`` there
    (SIG_DFL, or SIG_IGN as a background job's), once it has logged three steps."""
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "hyperlips.cli", "train", "base", str(data), "--model", "lite", "--out", str(run),
           "--max-steps", "100000", "--batch-size", "2", "--threads", "1", "--set", "audio_steps=3",
           "--set", "image_every=0", "--set", "val_every=100000", "--set", "ckpt_every=100000", "--set", "log_every=1",
           "--set", "lite={widths: [8, 16, 16, 32], out_width: 8, audio_width: 16, audio_members: 2}", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, ctrl_c))
    wait_for_logged_steps(proc, run)
    return proc


@pytest.mark.parametrize("sig, rc, words", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped by SIGTERM"),
                                            ("SIGHUP", 129, "stopped by SIGHUP")])
def test_a_stop_signal_stops_after_the_step_with_a_checkpoint_to_resume_from(grid_view, tmp_path, sig, rc, words):
    """Ctrl-C, SIGTERM (a job scheduler, ``kill``) or SIGHUP (the terminal closed) in the middle of a run (no
    checkpoint due for a long while) writes one at the step it stops after, exits with the signal's code, and
    --resume continues from it (SIGTERM and SIGHUP lost everything since the last checkpoint)."""
    import signal

    from hyperlips.train.checkpoints import latest_checkpoint

    run = tmp_path / "run"
    # (a test run started in the background ignores Ctrl-C, and a command started with it ignored keeps it so: below)
    proc = _endless_training(grid_view, run, signal.SIG_DFL, "--set", f"progress_file={tmp_path / 'progress.json'}")
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == rc, err[-2000:]
    assert "stopping after this step" in err and words in err
    found = latest_checkpoint(run)
    assert found is not None, "no checkpoint written on Ctrl-C"
    stopped = int(found[1]["step"])
    assert stopped >= 3 and f"stopped at step {stopped}" in err and "`train`: with --resume; `finetune` as it was" in err
    status = json.loads((tmp_path / "progress.json").read_text())
    assert status["step"] == stopped and not status["done"] and status["fraction"] < 1  # to be resumed, not done
    res = run_cli("train", "base", grid_view, "--out", run, "--resume", "--max-steps", stopped + 2, "--quiet", timeout=300)
    assert res.returncode == 0 and f"to step {stopped + 2}" in res.stdout, res.stderr[-2000:]


def test_a_ctrl_c_ignored_when_training_starts_stays_ignored(grid_view, tmp_path):
    """`hyperlips finetune ... &` in a script: the shell has the background job ignore Ctrl-C so that it outlives the
    script's own; training armed its handler anyway once its steps began, and the script's Ctrl-C stopped it there
    (while preparing, it was ignored). Ignored when the command starts, it stays ignored throughout."""
    import signal
    import time

    run = tmp_path / "run"
    proc = _endless_training(grid_view, run, signal.SIG_IGN)
    try:
        scalars = run / "scalars.jsonl"
        steps = len(scalars.read_text().splitlines())
        proc.send_signal(signal.SIGINT)
        time.sleep(3.0)
        assert proc.poll() is None, proc.communicate()[1][-2000:]  # still training
        assert len(scalars.read_text().splitlines()) > steps
        proc.send_signal(signal.SIGTERM)  # (not ignored: it stops after its step, as ever)
        err = proc.communicate(timeout=120)[1]
        assert proc.returncode == 143 and "stopped by SIGTERM: stopping after this step" in err, err[-2000:]
        assert "interrupted: stopping after this step" not in err, err[-2000:]  # the Ctrl-C went unheard
    finally:
        proc.kill()


def test_a_stop_while_the_audio_encoder_is_fitted_says_nothing_was_kept(grid_view, tmp_path):
    """SIGTERM before the first step (the encoder's fit: minutes on real footage) has no step to checkpoint: the run
    stops with the signal's code and says that running it again starts over (it said only "stopped")."""
    import signal
    import subprocess
    import sys
    import time

    run, log = tmp_path / "run", tmp_path / "err.txt"
    cmd = [sys.executable, "-m", "hyperlips.cli", "train", "base", str(grid_view), "--model", "lite", "--out", str(run),
           "--max-steps", "5", "--batch-size", "2", "--threads", "1", "--set", "audio_steps=100000",
           "--set", "lite={widths: [8, 16, 16, 32], out_width: 8, audio_width: 16, audio_members: 2}"]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and "before the renderer trains" not in log.read_text():
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 143, text[-2000:]
    assert "stopped before the first step" in text and "starts the run over" in text, text[-2000:]
    assert not list(run.glob("checkpoints/*"))


def test_lite_trains_under_torchrun_with_two_processes(grid_view, tmp_path):
    """The frozen audio encoder is left out of DDP's gradient reduction (it stopped the second step: "parameters
    that were not used"), and every process renders with the same fitted encoder."""
    import os
    import subprocess
    import sys

    from hyperlips.models import load_checkpoint

    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(30500 + os.getpid() % 1000), "-m",
           "hyperlips.cli", "train", "base", str(grid_view), "--model", "lite", "--out", str(tmp_path / "run"),
           "--max-steps", "3", "--batch-size", "2", "--workers", "0", "--val-every", "3", "--threads", "1",
           "--set", "audio_steps=3", "--set", "image_every=0",
           "--set", "lite={widths: [8, 16, 16, 32], out_width: 8, audio_width: 16, audio_members: 2}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "over 2 process(es)" in res.stdout
    model, info = load_checkpoint(tmp_path / "run/model.safetensors")
    assert info.name == "hyperlips-lite" and info.step == 3


# ---------------------------------------------------------------------------------------------- commands
def test_finetune_lite_writes_a_model_that_syncs(more_data, tmp_path):
    import shutil

    video = Path(shutil.copy(more_data / "lrs2_deep_avsr/00001.mp4", tmp_path / "00001.mp4"))
    out = tmp_path / "me.safetensors"
    res = run_cli("finetune", video, "-o", out, "--steps", "2", "--batch-size", "2", "--device", "cpu",
                  "--threads", "1", "--from-scratch", "--set", "val_every=2", "--set", "audio_steps=5", "--set", "lite={widths: [8, 16, 16, 32], out_width: 8}",
                  timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.is_file() and f"--checkpoint {out}" in res.stdout and "held-out mouth-opening r" in res.stdout
    assert "from other moments' frames, as sync renders:" in res.stdout
    assert "a minute or more of the person speaking" in res.stderr  # a few seconds of footage: warned
    # stderr is no terminal here (a log file, a pipe): lines for the steps and validations, no bar redrawn with \r
    assert "\r" not in res.stderr and "step 2/2 (about 0.0 min left) " in res.stderr  # where it stands, in time too
    assert "validation at step 2: " in res.stderr
    assert "fit audio encoder: step 5/5" in res.stderr
    assert "preprocess: 100%" in res.stderr  # the preprocessing's bar as lines too
    from hyperlips.models import load_checkpoint

    model, info = load_checkpoint(out)
    assert 1.0 <= model.config.shape_gain <= 3.0 and f"mouth-shape gain {model.config.shape_gain:.2f}" in res.stdout
    assert info.config["extra"]["widths"] == [8, 16, 16, 32]
    work_state = json.loads((tmp_path / "me.work/finetune.json").read_text())
    assert info.config["held_out"] == work_state["held_out"]  # what eval's tail protocol scores
    from hyperlips.media import phones

    assert model.phones == phones.available()  # as the starter, where the recogniser is installed, with --set's widths
    status = json.loads((tmp_path / "me.work/progress.json").read_text())
    assert status["done"] and status["step"] == 2 and Path(status["preview"]).is_file()
    assert _run_config(tmp_path / "me.work")["mouth_gan_weight"] == 0.0  # from scratch: no discriminator
    assert _run_config(tmp_path / "me.work")["patience"] == 0  # nor an early stop (it learns for the hour)
    assert _run_config(tmp_path / "me.work")["threads"] == 1  # --threads reaches the run
    assert "val/opening_r" in status["val"]
    wav = write_wav(tmp_path / "speech.wav", 0.6)
    r = run_cli("sync", video, wav, "-o", tmp_path / "out.mp4", "--checkpoint", out, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    # a re-run continues: nothing to preprocess, training already at its last step
    again = run_cli("finetune", video, "-o", out, "--steps", "2", "--device", "cpu", "--quiet", timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    short = run_cli("finetune", video, "-o", out, "--minutes", "0.5", "--quiet")  # what is the least budget?
    assert short.returncode == 2 and "--minutes 0.5 leaves" in short.stderr, short.stderr[-2000:]
    least = float(short.stderr.split("give at least --minutes ")[1].split()[0])
    assert 0.8 < least < 2  # 30 s of training, 20 s kept for the end, and the preprocessing's few seconds
    # a re-run that would move the held-out part, or on other footage, is refused: it would continue this run
    moved = run_cli("finetune", video, "-o", out, "--steps", "4", "--val-seconds", "2", "--quiet", timeout=900)
    assert moved.returncode == 2 and "would hold out another part" in moved.stderr, moved.stderr[-2000:]
    other = run_cli("finetune", more_data / "lrs2_deep_avsr/00002.mp4", "-o", out, "--steps", "4", "--quiet")
    assert other.returncode == 2 and "holds a run on other footage" in other.stderr, other.stderr[-2000:]
    assert "00002" not in {p.name for p in (tmp_path / "me.work/data/clips").iterdir()}  # refused before preprocessing
    face = run_cli("finetune", video, "-o", out, "--steps", "4", "--face", "1", "--quiet")  # another person in it
    assert face.returncode == 2 and "learnt the largest face (no --face or --face-box); this command asks for face 1 " \
        "from the left (--face 1)" in face.stderr, face.stderr[-2000:]
    # the same clip copied elsewhere (other file times) continues; another recording under its name is refused
    (tmp_path / "copy").mkdir()
    copied = Path(shutil.copy(video, tmp_path / "copy" / video.name))
    assert run_cli("finetune", copied, "-o", out, "--steps", "2", "--quiet", timeout=900).returncode == 0
    shutil.copy(more_data / "lrs2_deep_avsr/00002.mp4", video)
    made = (tmp_path / "me.work/data/clips/00001/meta.json").stat().st_mtime_ns
    swapped = run_cli("finetune", video, "-o", out, "--steps", "4", "--quiet")
    assert swapped.returncode == 2 and "00001 changed since (replaced or edited)" in swapped.stderr, swapped.stderr
    assert (tmp_path / "me.work/data/clips/00001/meta.json").stat().st_mtime_ns == made  # refused before remaking it


def test_finetune_says_which_clips_it_left_out_even_when_quiet(more_data, tmp_path):
    """`finetune --quiet` on a folder said nothing of the clips preprocessing skipped (half the footage, here): the
    model learnt from less than was given without a word."""
    import shutil

    folder = tmp_path / "me"
    folder.mkdir()
    shutil.copy(more_data / "lrs2_deep_avsr/00001.mp4", folder / "talk.mp4")
    from hyperlips.media.writer import VideoWriter

    tone = (0.3 * np.sin(np.arange(32000) * 0.1)).astype(np.float32)
    with VideoWriter(folder / "wall.mp4", 320, 240, 25, audio=tone, sample_rate=16000) as w:  # no face in it
        for _ in range(50):
            w.write(np.full((240, 320, 3), 128, np.uint8))
    out = tmp_path / "me.safetensors"
    res = run_cli("finetune", folder, "-o", out, "--steps", "1", "--batch-size", "2", "--device", "cpu", "--threads", "1",
                  "--from-scratch", "--quiet", "--set", "audio_steps=1", "--set", "val_every=1",
                  "--set", "lite={widths: [8, 16, 16, 32], out_width: 8}", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "wall.mp4 is left out of the footage: no face" in res.stderr, res.stderr[-2000:]
    # the model records the clips it learnt from, and eval's tail takes those: it counted the wall in, so the footage
    # was no longer the model's (its held-out part unused) and the tail could fall on the wall
    from hyperlips.errors import InputWarning
    from hyperlips.eval.tail import footage_videos
    from hyperlips.models import load_checkpoint

    assert load_checkpoint(out)[1].config["held_out"]["clips"] == ["talk"]
    with pytest.warns(InputWarning, match=r"wall.mp4 is left out of the footage, as finetune left it out: .* never "
                                          "learnt from it"):
        assert footage_videos(folder, out) == [folder / "talk.mp4"]
    assert footage_videos(folder) == [folder / "talk.mp4", folder / "wall.mp4"]  # (no model: its sound is footage)
    # the file it left out mended (a face now): the run goes on with the footage it learnt, saying so, and no clip is
    # made of it (it was made a clip, then the run refused as "other footage", naming no file)
    shutil.copy(more_data / "lrs2_deep_avsr/00002.mp4", folder / "wall.mp4")
    mended = run_cli("finetune", folder, "-o", out, "--steps", "2", "--quiet", timeout=900)
    assert mended.returncode == 0, mended.stderr[-2000:]
    assert re.search(r"wall: left out of the footage of the run in \S*me\.work \(unusable then\) and changed since; "
                     r"the run goes on without it", mended.stderr), mended.stderr[-2000:]
    assert not (tmp_path / "me.work/data/clips/wall").exists()
    # the file it left out removed, the run continues (it was refused as other footage: the run lost)
    (folder / "wall.mp4").unlink()
    again = run_cli("finetune", folder, "-o", out, "--steps", "3", "--quiet", timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    (folder / "new.mp4").write_bytes((folder / "talk.mp4").read_bytes())  # a clip added is still refused
    added = run_cli("finetune", folder, "-o", out, "--steps", "4", "--quiet")
    assert added.returncode == 2 and "holds a run on other footage" in added.stderr, added.stderr[-2000:]
    assert "new, talk hold the same video" in added.stderr  # (a copy: trained on in one, held out in the other)


def _run_config(work: Path) -> dict:
    from hyperlips.train.checkpoints import latest_checkpoint

    return latest_checkpoint(work / "lite")[1]["config"]


def test_finetune_from_weights_adds_the_mouth_discriminator(more_data, tmp_path):
    """From the starter (or --checkpoint) the mouth discriminator judges the mouths from the first step."""
    from hyperlips.models import shipped

    if shipped.starter() is None:
        pytest.skip("no starter weights in this build")
    video = more_data / "lrs2_deep_avsr/00001.mp4"
    res = run_cli("finetune", video, "-o", tmp_path / "a.safetensors", "--steps", "1", "--batch-size", "2",
                  "--device", "cpu", "--quiet", "--set", "audio_steps=2", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = _run_config(tmp_path / "a.work")
    assert (cfg["mouth_gan_weight"], cfg["mouth_gan_start"]) == (0.01, 0)
    assert (cfg["val_every"], cfg["patience"]) == (250, 8)  # validated often, stopped once it stops improving
    assert cfg["init"]  # it did start from weights


def test_finetune_says_it_starts_from_random_weights_without_a_starter(more_data, tmp_path, monkeypatch):
    """A build without shipped weights trained from scratch without a word (with them it names the starter)."""
    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", "1")
    res = run_cli("finetune", more_data / "lrs2_deep_avsr/00001.mp4", "-o", tmp_path / "me.safetensors", "--steps",
                  "1", "--batch-size", "2", "--threads", "1", "--set", "val_every=1", "--set", "audio_steps=2",
                  "--set", "lite={widths: [8, 16, 16, 32], out_width: 8}", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "starting from random weights: the shipped starter is hidden by HYPERLIPS_NO_SHIPPED=1" in res.stderr
    assert _run_config(tmp_path / "me.work")["init"] is None


def test_finetune_lite_errors(more_data, tmp_path):
    clip = more_data / "lrs2_deep_avsr/00001.mp4"
    res = run_cli("finetune", clip, "-o", tmp_path / "me.pth")
    assert res.returncode == 2 and ".safetensors" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("finetune", clip, "-o", tmp_path / "me.safetensors", "--hr-size", "256")
    assert res.returncode == 2 and "--model base" in res.stderr
    res = run_cli("finetune", clip, "-o", tmp_path / "me.safetensors", "--model", "base", "--hr-checkpoint",
                  tmp_path / "hr.safetensors")  # without --hr-size the HR decoder was left out, silently
    assert res.returncode == 2 and "give --hr-size" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = run_cli("finetune", clip, "-o", tmp_path / "me.safetensors", "--minutes", "0")
    assert res.returncode == 2 and "--minutes" in res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("finetune", empty, "-o", tmp_path / "me.safetensors")
    assert res.returncode == 2 and "no video" in res.stderr


def test_the_audio_encoders_fit_reports_its_progress_without_a_bar(grid_view, tmp_path, capfd):
    """`train` writes lines, not a bar (a log file): the encoder's fit says how far it is every tenth of it, so a
    long fit (3,000 steps, minutes) is not silent."""
    tr = _trainer(grid_view, tmp_path / "run", max_steps=1, audio_steps=20)
    tr.quiet = False
    tr.fit()
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if "fit audio encoder: step" in ln]
    assert [ln.split("step ")[1].split(",")[0] for ln in lines] == [f"{k}/20" for k in range(2, 21, 2)], err[-2000:]
    assert "audio encoder fitted on" in err


def test_settings_changed_on_a_loaded_network_keep_its_weights_where_they_still_fit(tmp_path):
    """``--init`` with ``--set lite=...``: the mel's smoothing changes the audio encoder's input, so the encoder
    starts afresh and the renderer keeps its weights; a setting that changes the layers, an unknown one, or a new
    input without an encoder fit is refused."""
    from hyperlips.errors import UserError
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.train.lite_settings import with_settings

    torch.manual_seed(0)
    gen = HyperLipsLite(LiteConfig.from_dict(TINY["lite"]))
    said = []
    new = with_settings(gen, {"mel_smooth": 12}, "v.safetensors", said.append)
    assert new.config.mel_smooth == 12 and new.mel_smooth == 12 and gen.config.mel_smooth == 0
    old_sd, new_sd = gen.state_dict(), new.state_dict()
    enc = [k for k in old_sd if k.startswith("audio_encoder.") and old_sd[k].dim() > 1]  # its convolutions
    assert enc and all(not torch.equal(old_sd[k], new_sd[k]) for k in enc)
    assert all(torch.equal(v, new_sd[k]) for k, v in old_sd.items() if not k.startswith("audio_encoder."))
    assert "mel_smooth 0 -> 12" in said[0] and "afresh" in said[0]
    kept = with_settings(gen, {"shape_smooth_ms": 120}, "v.safetensors", said.append)
    assert kept.config.shape_smooth_ms == 120 and all(torch.equal(v, kept.state_dict()[k]) for k, v in old_sd.items())
    assert with_settings(gen, {"mel_smooth": 0}, "v.safetensors", said.append) is gen  # nothing changes
    with pytest.raises(UserError, match="change the network's layers"):
        with_settings(gen, {"widths": [8, 16, 32, 32]}, "v.safetensors", said.append)
    with pytest.raises(UserError, match="not known: mel_smoth"):
        with_settings(gen, {"mel_smoth": 12}, "v.safetensors", said.append)
    with pytest.raises(UserError, match="audio_steps must be at least 1"):
        with_settings(gen, {"mel_smooth": 12}, "v.safetensors", said.append, audio_steps=0)


def test_a_smoothed_mel_network_trains_and_syncs_on_the_mel_it_reads(grid_view, tmp_path):
    """A network with ``mel_smooth`` (set on a loaded one): its training frames, held-out frames and ``sync``'s
    windows all read the log-mel smoothed across frequency, then normalised, and the file keeps the setting."""
    from hyperlips.generator_io import network_mel
    from hyperlips.media.audio import normalise_utterance
    from hyperlips.models import HyperLipsLite, LiteConfig, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_checkpoint(HyperLipsLite(LiteConfig.from_dict(TINY["lite"])), init, name="hyperlips-lite")
    tr = _trainer(grid_view, tmp_path / "run", max_steps=2, init=str(init), lite={"mel_smooth": 12})
    res = tr.fit()
    model, _ = load_checkpoint(res.model)
    assert model.config.mel_smooth == 12
    for ds in (tr.stage.train_dataset(), tr.stage.val_dataset()):
        mel, _ = ds.clip_mel(0)
        want = normalise_utterance(np.asarray(ds.parts[0].clip.mel, np.float32), 12)
        assert np.array_equal(mel, want)
        assert not np.allclose(mel, normalise_utterance(np.asarray(ds.parts[0].clip.mel, np.float32)), atol=0.05)
    raw = np.asarray(tr.stage.train_clips[0].mel, np.float32)
    assert np.array_equal(network_mel(model, raw), normalise_utterance(raw, 12))


def test_finetune_says_when_it_stopped_early_and_which_step_it_kept(tmp_path, capsys):
    """The summary names the kept step (the best held-out r) and, when patience ended the run, how many steps had
    brought no better one."""
    import argparse

    from hyperlips.train.finetune import _report
    from hyperlips.train.loop import TrainResult

    (tmp_path / "lite").mkdir()
    rows = [{"step": s, "val/opening_r": r, "val/opening_err": 1 - r, "val/other": o}
            for s, r, o in ((250, 0.5, 0.4), (500, 0.6, 0.5), (750, 0.55, 0.3), (1000, 0.58, 0.6))]
    (tmp_path / "lite/scalars.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = argparse.Namespace(output=tmp_path / "me.safetensors")
    for early in (True, False):
        res = TrainResult(tmp_path / "lite", 1000, tmp_path / "m", None, [], {}, 600.0, 1.0, early)
        _report(args, tmp_path, res)
        out = capsys.readouterr().out
        assert "kept step 500: held-out mouth-opening r 0.600" in out
        assert ("stopped early: 500 steps without a better held-out r" in out) == early
    _report(args, tmp_path, res, "val/other")  # the step the run's own metric chose
    assert "kept step 750" in capsys.readouterr().out


def test_a_finetune_rerun_keeps_the_weights_its_run_started_from(tmp_path):
    """A re-run continues the run in its work folder: asking it to start from other weights (--checkpoint, or
    --from-scratch after a run from weights) is refused, not ignored; a changed --lr or --batch-size applies from
    the step it resumes at, and is said."""
    import argparse

    from hyperlips.errors import InputWarning, UserError
    from hyperlips.train.finetune import _check_rerun

    start = tmp_path / "start.safetensors"
    start.write_bytes(b"x")

    def rerun(stored, **given):
        args = argparse.Namespace(**{"from_scratch": False, "checkpoint": None, "batch_size": None, "lr": None,
                                     **given})
        _check_rerun(args, tmp_path / "me.work", {"batch_size": 8, "lr": 1e-4, **stored}, 250)

    with pytest.raises(UserError, match=r"started from random weights \(at step 250 now\).*cannot start from .*other"):
        rerun({"init": None}, checkpoint=tmp_path / "other.safetensors")
    with pytest.raises(UserError, match=r"started from .*start\.safetensors.*cannot start from random weights"):
        rerun({"init": str(start)}, from_scratch=True)
    with pytest.raises(UserError, match="cannot start from .*other"):
        rerun({"init": str(start)}, checkpoint=tmp_path / "other.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rerun({"init": None}, from_scratch=True)  # as it started
        rerun({"init": str(start)}, checkpoint=tmp_path / "." / "start.safetensors")  # the same file
        rerun({"init": str(start)}, lr=1e-4, batch_size=8)  # the same settings
    with pytest.warns(InputWarning, match="continues at step 250 with --lr 0.001 instead of the 0.0001"):
        rerun({"init": None}, lr=1e-3)
    with pytest.warns(InputWarning, match="with --batch-size 4 instead of the 8"):
        rerun({"init": None}, batch_size=4)


def test_finetune_validates_long_footage_less_often():
    """Every 250 steps up to 1,200 held-out frames (a minute of footage holds out about 230, GRID's four minutes
    1,125), then in proportion: validation keeps to a bounded share of the time."""
    from hyperlips.train.finetune import validation_interval

    assert [validation_interval(n) for n in (1, 230, 1125, 1200, 1201, 2400, 2401, 9000)] == [
        250, 250, 250, 250, 500, 500, 750, 2000]


def test_a_val_seconds_too_long_is_said_as_the_option_and_keeps_the_clips_made(more_data, tmp_path):
    """A new finetune refused for its --val-seconds after preprocessing deleted the clips it had made (on an hour of
    footage, an hour of work), and blamed the footage ("too short to fine-tune on")."""
    import shutil

    clip = Path(shutil.copy(more_data / "grid_s1/bbaf3s.mpg", tmp_path / "take.mpg"))  # 3 s
    out = tmp_path / "me.safetensors"
    r = run_cli("finetune", clip, "-o", out, "--steps", "1", "--val-seconds", "2.8", "--quiet")
    assert r.returncode == 2 and "--val-seconds 2.8 holds out 2.8 s of the 3.0 s of footage" in r.stderr, r.stderr
    assert "give --val-seconds 1 or less" in r.stderr  # (48 frames of the 75 left to train on)
    assert list((tmp_path / "me.work/data/clips").rglob("meta.json"))  # kept for the next run


@pytest.mark.slow
def test_steps_given_on_a_rerun_decide_over_an_earlier_time_budget(more_data, tmp_path):
    """A run given --minutes, then run again with --steps 100 alone, trained nothing: "already at step 54
    (max_steps 54)", the earlier run's time budget still binding."""
    import shutil

    clip = Path(shutil.copy(more_data / "grid_s1/bbaf3s.mpg", tmp_path / "take.mpg"))
    out = tmp_path / "me.safetensors"
    common = ["--threads", "1", "--quiet", "--set", "lite={widths: [8, 16, 16, 32], out_width: 8}", "--from-scratch",
              "--set", "audio_steps=5", "--set", "val_every=10"]
    first = run_cli("finetune", clip, "-o", out, "--minutes", "1.2", *common, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    from hyperlips.train.checkpoints import latest_checkpoint

    reached = int(latest_checkpoint(tmp_path / "me.work/lite")[1]["step"])
    again = run_cli("finetune", clip, "-o", out, "--steps", reached + 5, *common[:2], timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert int(latest_checkpoint(tmp_path / "me.work/lite")[1]["step"]) == reached + 5


def test_a_pipe_in_the_footage_is_left_out_not_waited_on(tmp_path):
    """A named pipe given as the footage (or lying among the clips) made finetune wait for ever: its first bytes
    were read for the clip's fingerprint."""
    import os

    from hyperlips.train.finetune import _fingerprint

    fifo = tmp_path / "b.mp4"
    os.mkfifo(fifo)
    r = run_cli("finetune", fifo, "-o", tmp_path / "p.safetensors", "--steps", "1", "--quiet", timeout=120)
    assert r.returncode == 2 and "is a pipe or a device, not a file" in r.stderr, r.stderr
    assert _fingerprint(fifo).startswith("not a file")
    # two pipes of one name in two folders are no video held twice (they were warned of as "the same video")
    for day in ("day1", "day2"):
        (tmp_path / "feet" / day).mkdir(parents=True)
        os.mkfifo(tmp_path / "feet" / day / "b.mp4")
    r = run_cli("finetune", tmp_path / "feet", "-o", tmp_path / "q.safetensors", "--steps", "1", "--quiet",
                timeout=120)
    assert r.returncode == 2 and "is a pipe or a device, not a file" in r.stderr, r.stderr
    assert "hold the same video" not in r.stderr, r.stderr


def test_a_run_resumes_without_the_weights_it_started_from(more_data, tmp_path, monkeypatch):
    """A run started from --checkpoint FILE could not be continued once FILE was moved or deleted (its network was
    built from FILE again, then its own checkpoint loaded over it): "checkpoint not found"; run from another folder,
    the same FILE given by a relative path was refused as other weights."""
    import shutil

    from hyperlips.models import HyperLipsLite, LiteConfig, save_checkpoint

    clip = Path(shutil.copy(more_data / "grid_s1/bbaf3s.mpg", tmp_path / "take.mpg"))
    torch.manual_seed(0)
    start = save_checkpoint(HyperLipsLite(LiteConfig.from_dict({"widths": [8, 16, 16, 32], "out_width": 8})),
                            tmp_path / "start.safetensors", "hyperlips-lite")
    out = tmp_path / "me.safetensors"
    common = ["--threads", "1", "--quiet", "--set", "audio_steps=2", "--set", "val_every=2"]
    monkeypatch.chdir(tmp_path)
    first = run_cli("finetune", clip, "-o", out, "--steps", "2", "--checkpoint", "start.safetensors", *common,
                    cwd=tmp_path, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    (tmp_path / "elsewhere").mkdir()
    again = run_cli("finetune", clip, "-o", out, "--steps", "3", "--checkpoint", "../start.safetensors", *common,
                    cwd=tmp_path / "elsewhere", timeout=900)  # the same file, named from another folder
    assert again.returncode == 0, again.stderr[-2000:]
    Path(start).unlink()
    last = run_cli("finetune", clip, "-o", out, "--steps", "4", *common, timeout=900)
    assert last.returncode == 0, last.stderr[-2000:]
    from hyperlips.train.checkpoints import latest_checkpoint

    assert int(latest_checkpoint(tmp_path / "me.work/lite")[1]["step"]) == 4
    # the same command as before, --checkpoint and all: it continues too, saying so (it failed "checkpoint not found")
    same = run_cli("finetune", clip, "-o", out, "--steps", "5", "--checkpoint", "start.safetensors", *common,
                   timeout=900)
    assert same.returncode == 0, same.stderr[-2000:]
    assert re.search(r"start\.safetensors is gone; the run in \S*me\.work started from it and continues without it",
                     same.stderr), same.stderr
    assert int(latest_checkpoint(tmp_path / "me.work/lite")[1]["step"]) == 5
    other = run_cli("finetune", clip, "-o", out, "--steps", "6", "--checkpoint", "other.safetensors", *common,
                    timeout=900)  # weights it did not start from, and not there: still not found
    assert other.returncode == 2 and "not found" in other.stderr, other.stderr[-2000:]


def test_a_model_named_in_capitals_is_a_safetensors_file(tmp_path):
    """`finetune -o ME.SAFETENSORS` was refused ("-o must end in .safetensors"), though every command reads such a
    file: the suffix is read in any case (here the next check, the footage, is what fails)."""
    r = run_cli("finetune", tmp_path / "nope.mp4", "-o", tmp_path / "ME.SAFETENSORS", "--quiet", timeout=120)
    assert r.returncode == 2 and "video not found" in r.stderr and "must end in" not in r.stderr, r.stderr
    r = run_cli("finetune", tmp_path / "nope.mp4", "-o", tmp_path / "ME.PTH", "--quiet", timeout=120)
    assert r.returncode == 2 and "HyperLips-Lite models are written as .safetensors" in r.stderr, r.stderr
    r = run_cli("finetune", tmp_path / "nope.mp4", "-o", tmp_path / ".safetensors", "--quiet", timeout=120)
    assert r.returncode == 2 and ".safetensors has a suffix but no name: give one, such as" in r.stderr, r.stderr
    (tmp_path / "empty").mkdir()  # a 250-byte name passes the write check (refused "File name too long"): the
    r = run_cli("finetune", tmp_path / "empty", "-o", tmp_path / ("m" * 238 + ".safetensors"), "--quiet", timeout=120)
    assert r.returncode == 2 and "too long" not in r.stderr and "no video files" in r.stderr, r.stderr  # footage fails


def _footage_whose_end_shows_no_face(more_data, path: Path, faces: int = 75, blank: int = 35) -> Path:
    """A GRID clip's first ``faces`` frames, then ``blank`` grey frames (the speaker gone), with real speech."""
    from media_builders import face_frames, write_video

    from hyperlips.media.audio import load_audio

    frames = face_frames(more_data / "grid_s1" / "bbaf3s.mpg", faces, size=(360, 288), stamped=False)
    frames += [np.full_like(frames[0], 128) for _ in range(blank)]
    wav = load_audio(more_data / "grid_s1" / "bbaf3s.mpg", 16000)
    wav = np.resize(wav, int((faces + blank) / 25 * 16000))
    return write_video(path, frames, 25, audio=wav)


def test_a_held_out_end_without_a_face_is_moved_to_where_the_face_is(more_data, tmp_path):
    """finetune's held-out part (the last 15%) showed no face (the speaker walked out of the shot): the run
    preprocessed, fitted its audio encoder for minutes, then ended in a traceback ("cannot reshape array of size 0").
    The held-out part now reaches back to the shortest end showing the face on 16 frames, said; with --val-seconds
    given, the option is refused before any training, naming the length that would do."""
    from hyperlips.cli import build_parser
    from hyperlips.errors import InputWarning, UserError
    from hyperlips.train.finetune import MIN_VAL_FACES, _held_out_faces, _prepare

    video = _footage_whose_end_shows_no_face(more_data, tmp_path / "walks out.mp4")
    args = build_parser().parse_args(["finetune", str(video), "-o", str(tmp_path / "m.safetensors"), "--quiet"])
    work = tmp_path / "m.work"
    with pytest.warns(InputWarning, match="held out instead") as said:
        data, state = _prepare(args, work)
    manifest = json.loads((data / "manifest.json").read_text())
    assert _held_out_faces(data, manifest) >= MIN_VAL_FACES
    held = state["held_out"]
    assert 35 + MIN_VAL_FACES <= held["frames"] <= 35 + MIN_VAL_FACES + 2, held  # the blank end and 16 faces
    moved = [str(w.message) for w in said if "held out instead" in str(w.message)]
    assert len(moved) == 1 and "show the face on 0 of its 17 frames" in moved[0], moved
    args = build_parser().parse_args(["finetune", str(video), "-o", str(tmp_path / "n.safetensors"), "--quiet",
                                      "--val-seconds", "1"])
    with pytest.raises(UserError, match=r"on 0 of its 25 frames .*give --val-seconds (\d\.\d) or more") as e:
        _prepare(args, tmp_path / "n.work")
    assert (35 + MIN_VAL_FACES) / 25 <= float(e.value.args[0].split("--val-seconds ")[-1].split()[0]) <= 2.2


def test_the_time_left_counts_the_steps_not_the_preparation():
    """`finetune --steps 120`: 'step 10/120 (about 17.1 min left)' with a minute left: the audio encoder's fit
    before the first step (90 s here) was taken for the first ten steps' time and spread over the other 110."""
    from types import SimpleNamespace

    from hyperlips.train.budget import BudgetPlan
    from hyperlips.train.progress import Progress

    budget = BudgetPlan(0, 50, 120)
    budget.start(0, 90.0)  # the fit done: training starts at 90 s
    trainer = SimpleNamespace(elapsed=100.0, budget=budget, max_steps=lambda: 120,
                              dist=SimpleNamespace(main=False), cfg=SimpleNamespace(progress=False))
    progress = Progress(trainer, 0.0)
    assert progress.eta(10) == pytest.approx(110.0)  # 1 s a step, 110 steps left
    assert progress.eta(0) is None
    timed = Progress(trainer, 150.0)  # a 2.5-minute budget: no more than it leaves
    assert timed.eta(10) == pytest.approx(50.0)
    # a validation of 20 s at step 50 (the plan made there, as the loop makes it): the step after it was taken for
    # the pace (3440 s left at step 50 of a 60-minute budget, 1449 at step 51); the pace since the start counts it once
    planned = BudgetPlan(60, 50, 120)
    planned.start(0, 90.0)
    planned.plan(50, 140.0, 20.0)
    trainer = SimpleNamespace(elapsed=160.0, budget=planned, max_steps=lambda: 120,
                              dist=SimpleNamespace(main=False), cfg=SimpleNamespace(progress=False))
    for step, elapsed, left in ((50, 160.0, 70 * 70 / 50), (51, 161.0, 69 * 71 / 51)):
        trainer.elapsed = elapsed
        assert Progress(trainer, 3600.0).eta(step) == pytest.approx(left)


def test_finetune_numbers_are_checked_before_any_work(tmp_path):
    """--val-seconds inf ended in a traceback after the preprocessing (OverflowError), --minutes inf was refused
    after it in an internal setting's words (max_minutes=inf: must be at least 0)."""
    from hyperlips.cli import build_parser
    from hyperlips.errors import UserError
    from hyperlips.train.finetune import _check_args

    (tmp_path / "clip.mp4").write_bytes(b"x")
    for flag, value in (("--val-seconds", "inf"), ("--minutes", "inf"), ("--val-seconds", "nan"), ("--minutes", "0")):
        args = build_parser().parse_args(["finetune", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "a.safetensors"),
                                          flag, value])
        with pytest.raises(UserError, match=f"{flag} must be a number more than 0 \\(got {value}\\)"):
            _check_args(args)


def test_finetune_says_which_take_it_holds_out(more_data, tmp_path, capsys):
    """A folder of takes is one recording in name order and its end is held out: which take that was was never
    said (in a folder of 'Take 1', 'take 2' and 'corrupt', byte order put 'corrupt' and 'take 2' last)."""
    import shutil

    from hyperlips.cli import build_parser
    from hyperlips.train.finetune import _prepare

    folder = tmp_path / "takes"
    folder.mkdir()
    for name, clip in (("b_take.mpg", "bbaf3s"), ("a_take.mpg", "bbas3a")):
        shutil.copy(more_data / "grid_s1" / f"{clip}.mpg", folder / name)
    args = build_parser().parse_args(["finetune", str(folder), "-o", str(tmp_path / "m.safetensors")])
    _prepare(args, tmp_path / "m.work")
    said = capsys.readouterr().err
    assert "held out for validation: the last 0.9 s (23 frames, of b_take)" in said, said


def test_the_kept_steps_preview_is_kept_beside_the_newest(grid_view, tmp_path):
    """finetune's closing line named RUN/preview.png, the newest validation's, whatever step it kept: after 'kept
    step 140' it showed step 160's mouths, of weights it did not write. The best step's is kept as preview_best.png."""
    import json as _json

    from hyperlips.train.budget import higher_is_better

    trainer = _trainer(grid_view, tmp_path / "run", max_steps=6, val_every=2, patience=0)
    trainer.fit()
    key = trainer.cfg.best_metric or trainer.stage.best_metric
    rows = [_json.loads(line) for line in (tmp_path / "run/scalars.jsonl").read_text().splitlines()]
    vals = [(r["step"], r[key]) for r in rows if key in r]
    assert [s for s, _ in vals] == [2, 4, 6], vals
    pick = max if higher_is_better(key) else min
    best = pick(vals, key=lambda sv: sv[1])[0]
    images = tmp_path / "run/images"
    assert (tmp_path / "run/preview_best.png").read_bytes() == (images / f"step_{best:09d}_preview.png").read_bytes()
    assert (tmp_path / "run/preview.png").read_bytes() == (images / f"step_{6:09d}_preview.png").read_bytes()


def test_a_training_message_starts_its_own_line_under_a_bar(monkeypatch):
    """On a terminal, 'mouth-shape gain 1.50 ...' ran on after the training bar's text ('0/175 step
    [00:00<?]hyperlips train: mouth-shape gain ...'): it is written above the bar, from the line's start."""
    import io
    import sys
    from types import SimpleNamespace

    from tqdm import tqdm

    from hyperlips.train.loop import Trainer

    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    bar = tqdm(total=175, file=sys.stderr, desc="train lite")
    try:
        bar.update(1)
        Trainer.say(SimpleNamespace(dist=SimpleNamespace(main=True), quiet=False), "mouth-shape gain 1.50")
    finally:
        bar.close()
    out = screen.getvalue()
    before = out[:out.index("hyperlips train: mouth-shape gain 1.50")]
    assert before.endswith(("\r", "\n")), repr(out[-300:])
