"""The compact lip-sync expert (``syncnet-lite``): the network, its checkpoints, and how ``train sync --model lite``
teaches it (multiple choice among shifted windows, augmented windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_train_data import make_view, small_dataset  # noqa: F401  (session fixture)


def test_compact_expert_embeddings_and_cost():
    from torch.utils.flop_counter import FlopCounterMode

    from hyperlips.models import create_model

    torch.manual_seed(0)
    net = create_model("syncnet-lite").eval()
    audio, faces = torch.randn(3, 1, 80, 16), torch.rand(3, 15, 64, 128)
    with torch.no_grad():
        a, v = net(audio, faces)
        sim = net.similarity(audio, faces)
    assert a.shape == (3, 256) and v.shape == (3, 256)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    assert (a >= 0).all() and (v >= 0).all()
    torch.testing.assert_close(sim, (a * v).sum(1))
    with pytest.raises(ValueError, match="faces must be"):
        net(audio, torch.rand(3, 15, 128, 128))
    with pytest.raises(ValueError, match="audio must be"):
        net(torch.randn(2, 1, 80, 16), faces)

    def macs(model):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(audio[:1], faces[:1])
        return fc.get_total_flops() / 2

    official = create_model("syncnet").eval()
    assert macs(net) < macs(official) / 10  # 0.15 G multiply-adds per window against 2.16 G


def test_compact_expert_architecture_travels_in_its_checkpoint(tmp_path):
    from hyperlips.errors import CheckpointError
    from hyperlips.models import create_model, save_checkpoint
    from hyperlips.models.checkpoint import load_expert_checkpoint

    torch.manual_seed(1)
    small = {"face_widths": [8, 16, 32], "audio_widths": [8, 16, 32], "embed": 48}
    net = create_model("syncnet-lite", small).eval()
    path = save_checkpoint(net, tmp_path / "e.safetensors", "syncnet-lite")
    loaded, info = load_expert_checkpoint(path)
    assert info.name == "syncnet-lite" and info.config["extra"]["face_widths"] == [8, 16, 32]
    audio, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 15, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio, faces), net(audio, faces))
    # the official expert loads through the same door; a generator does not
    save_checkpoint(create_model("syncnet"), tmp_path / "o.safetensors", "syncnet")
    assert load_expert_checkpoint(tmp_path / "o.safetensors")[1].name == "syncnet"
    save_checkpoint(create_model("hyperlips-lite"), tmp_path / "g.safetensors", "hyperlips-lite")
    with pytest.raises(CheckpointError, match="not a lip-sync expert"):
        load_expert_checkpoint(tmp_path / "g.safetensors")


def test_augmented_windows_vary_but_keep_their_sense():
    from hyperlips.train.sync import augment_windows

    torch.manual_seed(2)
    faces = torch.rand(16, 15, 64, 128) * 0.5 + 0.25
    audio = torch.randn(16 * 3, 1, 80, 16)
    f1, a1 = augment_windows(faces, audio, torch.Generator().manual_seed(5))
    f2, a2 = augment_windows(faces, audio, torch.Generator().manual_seed(5))
    assert torch.equal(f1, f2) and torch.equal(a1, a2)  # a function of the generator: runs resume exactly
    f3, _ = augment_windows(faces, audio, torch.Generator().manual_seed(6))
    assert not torch.equal(f1, f3)
    assert f1.shape == faces.shape and a1.shape == audio.shape
    assert f1.min() >= 0 and f1.max() <= 1
    assert (f1 - faces).abs().mean() > 0.01 and (a1 - audio).abs().mean() > 0.01
    # the five frames of a window move together: five identical frames stay identical
    identical = faces[:1].view(5, 3, 64, 128)[:1].repeat(5, 1, 1, 1).view(1, 15, 64, 128)
    out = augment_windows(identical, audio[:1], torch.Generator().manual_seed(8))[0].view(5, 3, 64, 128)
    assert all(torch.allclose(out[0], out[k]) for k in range(1, 5))


def test_multiple_choice_samples_put_the_in_sync_window_first(small_dataset):  # noqa: F811
    from hyperlips.data.datasets import Manifest, SyncDataset
    clips = Manifest.load(small_dataset).open_clips("all")
    ds = SyncDataset(clips, seed=3, min_shift=4, candidates=5)
    item = ds[11]
    assert item["audio"].shape == (5, 1, 80, 16) and item["shift"].shape == (5,)
    assert item["shift"][0] == 0 and np.all(np.abs(item["shift"][1:]) >= 4)
    assert np.array_equal(ds[11]["audio"], item["audio"])
    # the first window is exactly what a plain in-sync sample pairs with the same faces
    plain = SyncDataset(clips, seed=3, min_shift=4).sample(11, label=1)
    assert np.array_equal(plain["faces"], item["faces"])
    assert np.array_equal(plain["audio"], item["audio"][0])
    assert not np.array_equal(item["audio"][0], item["audio"][1])
    assert "opening" not in item
    # with the opening: the five frames' inner-lip gap, standardised over the clip
    from hyperlips.face.mouth_shape import mouth_opening

    ds = SyncDataset(clips, seed=3, min_shift=4, candidates=5, with_opening=True)
    item = ds[11]
    assert np.array_equal(item["faces"], plain["faces"])
    ci = next(i for i, o in enumerate(ds.openings) if len(o) == len(clips[i].valid))
    raw = mouth_opening(np.asarray(clips[ci].landmarks, dtype=np.float64))
    ok = np.isfinite(raw)
    np.testing.assert_allclose(ds.openings[ci][ok], (raw[ok] - raw[ok].mean()) / (raw[ok].std() + 1e-6), rtol=1e-4,
                               atol=1e-4)
    hits = [o for o in ds.openings if len(o) and np.isfinite(o).all()]
    assert len(hits) == len(clips)
    assert item["opening"].shape == (5,) and np.isfinite(item["opening"]).all() and np.abs(item["opening"]).max() > 0


def test_train_sync_model_lite_learns_by_multiple_choice_and_exports_an_expert(small_dataset, tmp_path, capsys):  # noqa: F811
    import json

    from hyperlips.cli import main
    from hyperlips.eval.sync_score import load_expert
    from hyperlips.models import SyncNetLite

    view = make_view(small_dataset, tmp_path / "view", ["lrs2/00002"], val_frames=16)
    out = tmp_path / "run"
    code = main(["train", "sync", str(view), "-o", str(out), "--model", "lite", "--max-steps", "2", "--batch-size", "2",
                 "--workers", "0", "--threads", "1", "--quiet", "--set", "val_every=2", "--set", "val_samples=4",
                 "--set", "sync_candidates=3", "--set", "bn_batches=1", "--set", "log_every=1", "--set", "augment=true"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "scalars.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/choice" in r]
    assert [r["step"] for r in train] == [1, 2]
    # the loss: the choice among 3 windows, the BCE, and both embeddings' mouth-opening MSE (weight 1 by default)
    for r in train:
        assert abs(r["train/loss"] - r["train/choice"] - r["train/bce"] - 2 * r["train/opening_mse"]) < 1e-4, r
    # untrained, the choice is near log(3)
    assert 0.5 < train[0]["train/choice"] < 2.5
    assert any("val/auc" in r for r in rows)
    expert = load_expert(out / "model.safetensors")
    assert isinstance(expert, SyncNetLite)
