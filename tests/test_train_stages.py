"""The base and HR stages end to end on real clips (tiny settings), and their models in ``hyperlips sync``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import probe_streams, run_cli, write_wav
from test_train_data import make_view, small_dataset  # noqa: F401  (session fixture)

TINY = dict(batch_size=1, workers=0, threads=1, log_every=1, image_every=1, val_every=2, val_samples=2, seed=2)


@pytest.fixture(scope="module")
def one_clip(small_dataset, tmp_path_factory):  # noqa: F811
    """lrs2/00002 (35 frames), the last 16 held out."""
    return make_view(small_dataset, tmp_path_factory.mktemp("one_clip"), ["lrs2/00002"], val_frames=16)


def _random_checkpoint(path: Path, name: str, seed: int = 0) -> Path:
    from hyperlips.models import create_model, save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(create_model(name), path, name)
    return path


def _trainer(stage: str, data: Path, out: Path, **kw):
    from hyperlips.train.commands import stage_class
    from hyperlips.train.config import build_config
    from hyperlips.train.loop import Trainer

    cfg = build_config(stage, overrides={"data": str(data), "out": str(out), **TINY, **kw})
    return Trainer(stage_class(stage), cfg, quiet=False)


def test_base_trains_with_a_frozen_expert_and_its_model_runs_in_sync(one_clip, tmp_path, capsys):
    from hyperlips.models import load_checkpoint

    expert_path = _random_checkpoint(tmp_path / "expert.safetensors", "syncnet")
    trainer = _trainer("base", one_clip, tmp_path / "run", expert=str(expert_path), max_steps=2, bn_batches=1)
    res = trainer.fit()
    err = capsys.readouterr().err
    assert res.step == 2 and set(res.losses[0]) >= {"l1", "sync", "adv", "disc", "loss"}
    assert all(np.isfinite(v) for r in res.losses for v in r.values())
    # the generator loss is 0.03 sync + 0.2 adversarial + 0.77 L1 (the original's weights, the stage defaults)
    for r in res.losses:
        assert r["loss"] == pytest.approx(0.03 * r["sync"] + 0.2 * r["adv"] + 0.77 * r["l1"], rel=1e-6)
    assert "no sync expert" not in err
    assert {"val/l1", "val/mouth_l1", "val/sync_p"} <= set(res.metrics)
    # the expert judged the generator in eval mode and was not changed by it (weights and BatchNorm statistics)
    expert = trainer.stage.expert
    assert not expert.training
    stored, _ = load_checkpoint(expert_path, name="syncnet")
    for k, v in stored.state_dict().items():
        assert torch.equal(v, expert.state_dict()[k]), k
    # logs: scalars, a validation record and image grids (input / reference / generated / ground truth)
    scalars = [json.loads(line) for line in (tmp_path / "run/scalars.jsonl").read_text().splitlines()]
    assert any("train/sync" in r for r in scalars) and any("val/mouth_l1" in r for r in scalars)
    grids = sorted((tmp_path / "run/images").glob("*.png"))
    assert grids
    import cv2

    grid = cv2.imread(str(grids[0]))
    assert grid.shape[0] >= 4 * 128 and grid.shape[1] >= 5 * 128
    if "tensorboard is not installed" in err:
        assert err.count("tensorboard is not installed") == 1
    # the exported model loads in `hyperlips sync` as it is
    model, info = load_checkpoint(res.model)
    assert info.name == "hyperlips-base" and info.step == 2
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), one_clip_frame(one_clip))
    wav = write_wav(tmp_path / "speech.wav", 0.4)
    out = tmp_path / "out.mp4"
    # and so does the full training checkpoint (weights + optimisers + RNG states) of the same step
    step_file = tmp_path / "run/checkpoints/step_000000002.pt"
    r = run_cli("sync", face, wav, "-o", out, "--checkpoint", step_file, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert probe_streams(out)["frames"] == 10


def one_clip_frame(view: Path) -> np.ndarray:
    """A full source frame of the clip (the crop is upscaled into a frame with a margin round it)."""
    import cv2

    from hyperlips.data.datasets import Manifest

    clip = Manifest.load(view).open_clips("train")[0]
    crop = clip.stack("face128").read(3)
    big = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(big, 96, 96, 96, 96, cv2.BORDER_CONSTANT, value=(40, 40, 40))


def test_hr_inputs_of_a_clip_with_the_longest_name_a_file_may_have(small_dataset, tmp_path):  # noqa: F811
    """preprocess takes videos whose names fill the 255 bytes a file name may have (its working folder's name is cut
    to fit); the HR stage's working folder beside the clip's rendered inputs was named in full, and `train hr`
    ended in "File name too long". And a clip made again is rendered again."""
    from hyperlips.data.datasets import Manifest
    from hyperlips.train.hr import build_hr_inputs

    from hyperlips.data.preprocess import write_time_split_manifest

    view = tmp_path / "view"
    long_id = "long/" + "\u00e9" * 125  # 250 bytes
    shutil.copytree(small_dataset / "clips" / "lrs2" / "00002", view / "clips" / long_id)
    meta = view / "clips" / long_id / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text(encoding="utf-8")), "id": long_id}), encoding="utf-8")
    write_time_split_manifest(view, val_frames=16, clip_ids=[long_id])
    base = _random_checkpoint(tmp_path / "base.safetensors", "hyperlips-base", seed=1)
    out = build_hr_inputs(Manifest.load(view), base, tmp_path / "hr_inputs", torch.device("cpu"), say=lambda m: None)
    done = out / long_id / "done.json"
    assert done.is_file()
    assert [p.name for p in (out / "long").iterdir()] == [long_id.split("/")[1]]  # no working folder left
    # rendered once for a Base; a clip made again since (another file under its name, preprocessed again) is
    # rendered again: a resumed `train hr` paired the old clip's Base renders with the new clip's faces
    stamp = done.stat().st_mtime_ns
    build_hr_inputs(Manifest.load(view), base, out, torch.device("cpu"), say=lambda m: None)
    assert done.stat().st_mtime_ns == stamp
    # a marker written before markers held the clip's key: the same length is taken as the same clip (not hours of
    # rendering again after an upgrade), the key added
    folder = (out / long_id).stat().st_ino
    marker = json.loads(done.read_text())
    done.write_text(json.dumps({k: v for k, v in marker.items() if k != "clip"}))
    build_hr_inputs(Manifest.load(view), base, out, torch.device("cpu"), say=lambda m: None)
    assert (out / long_id).stat().st_ino == folder and json.loads(done.read_text()) == marker
    mel = view / "clips" / long_id / "mel.npy"
    np.save(mel, np.load(mel)[:, ::-1].copy())
    build_hr_inputs(Manifest.load(view), base, out, torch.device("cpu"), say=lambda m: None)
    assert (out / long_id).stat().st_ino != folder


def test_hr_renders_its_inputs_like_inference_and_trains(one_clip, tmp_path, capsys, monkeypatch):
    from hyperlips.data.datasets import Clip, ImageStack, Manifest
    from hyperlips.media.audio import mel_windows
    from hyperlips.models import load_checkpoint
    from hyperlips.pipeline import network_input, to_uint8_images

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_weights_here"))
    base_path = _random_checkpoint(tmp_path / "base.safetensors", "hyperlips-base", seed=1)
    res = _trainer("hr", one_clip, tmp_path / "run", base=str(base_path), max_steps=2, batch_size=2).fit()
    err = capsys.readouterr().err
    assert err.count("using the fallback") == 1  # said once
    done = json.loads((tmp_path / "run/hr_inputs/lrs2/00002/done.json").read_text())
    assert done["no_landmarks"] > 0.5 * done["frames"]  # random weights draw no face ...
    assert "FaceMesh found no face in" in err and "the Base draws no face yet" in err  # ... and that is said
    assert {"feat_match", "ssim", "lip_ssim", "adv", "l1", "lip_l1"} <= set(res.losses[-1])
    parts = ("feat_match", "ssim", "lip_ssim", "adv", "l1", "lip_l1")  # every weight 1, as the original
    assert all(r["loss"] == pytest.approx(sum(r[k] for k in parts), rel=1e-6) for r in res.losses)
    assert {"val/l1", "val/lip_l1", "val/psnr", "val/ssim"} <= set(res.metrics)
    model, info = load_checkpoint(res.model)
    assert info.name == "hyperlips-hr-128"

    # the cached input of a frame is exactly the base model's output for the inference input of that frame
    clip = Clip(Manifest.load(one_clip).root / "clips" / "lrs2/00002")
    cache = tmp_path / "run/hr_inputs/lrs2/00002"
    assert len(ImageStack(cache / "base128")) == len(ImageStack(cache / "basesketch128")) == clip.n_frames
    base, _ = load_checkpoint(base_path, name="hyperlips-base")
    base.eval()
    faces = clip.stack("face128")
    i = 7
    x = network_input(faces.read_many([i]), faces.read(int(clip.meta["best_index"])))
    mel = mel_windows(np.asarray(clip.mel), clip.times[[i]], clip.fps)
    with torch.no_grad():
        want = to_uint8_images(base(torch.from_numpy(mel), torch.from_numpy(x)))[0]
    got = ImageStack(cache / "base128").read(i)
    assert np.abs(want.astype(int) - got.astype(int)).max() <= 1  # lossless (PNG); at most float rounding

    # a second run with the same base does not render again
    stamp = (cache / "done.json").stat().st_mtime_ns
    _trainer("hr", one_clip, tmp_path / "run2", base=str(base_path), max_steps=1, batch_size=2).fit()
    assert (tmp_path / "run2/hr_inputs/lrs2/00002/done.json").is_file()
    assert (cache / "done.json").stat().st_mtime_ns == stamp


def test_hr_weights_of_another_size_are_refused_before_the_inputs_are_rendered(one_clip, tmp_path):
    """``train hr --size 128 --init`` a 256 px decoder failed only after rendering every HR input (hours on a real
    dataset)."""
    from hyperlips.errors import UserError

    base_path = _random_checkpoint(tmp_path / "base.safetensors", "hyperlips-base", seed=1)
    wrong = _random_checkpoint(tmp_path / "hr256.safetensors", "hyperlips-hr-256", seed=2)
    with pytest.raises(UserError, match="hr256.safetensors"):
        _trainer("hr", one_clip, tmp_path / "run", base=str(base_path), init=str(wrong), max_steps=1).fit()
    assert not (tmp_path / "run/hr_inputs").exists() or not any((tmp_path / "run/hr_inputs").rglob("done.json"))


def test_base_without_an_expert_warns_once_and_leaves_the_sync_term_out(one_clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", "1")  # a build without the shipped expert
    res = _trainer("base", one_clip, tmp_path / "run", max_steps=1, val_every=0, image_every=0).fit()
    err = capsys.readouterr().err
    assert err.count("no sync expert given (--expert)") == 1
    r = res.losses[0]
    assert "sync" not in r and r["loss"] == pytest.approx(0.2 * r["adv"] + 0.77 * r["l1"], rel=1e-6)
    # --expert off: no sync term and no warning either
    monkeypatch.delenv("HYPERLIPS_NO_SHIPPED")
    res = _trainer("base", one_clip, tmp_path / "off", max_steps=1, val_every=0, image_every=0, expert="off").fit()
    err = capsys.readouterr().err
    assert "sync" not in res.losses[0] and "expert" not in err


def test_base_is_judged_by_the_shipped_expert_by_default(one_clip, tmp_path, capsys):
    from hyperlips.models import SyncNetLite, shipped

    trainer = _trainer("base", one_clip, tmp_path / "run", max_steps=1, val_every=0, image_every=0)
    res = trainer.fit()
    err = capsys.readouterr().err
    assert f"sync loss judged by the {shipped.expert().label}" in err
    assert isinstance(trainer.stage.expert, SyncNetLite) and "sync" in res.losses[0]


@pytest.mark.parametrize("stage", ["base", "hr"])
def test_exact_resume_of_the_base_and_hr_stages(one_clip, tmp_path, stage):
    """Stopped after 2 steps and resumed, a run gives the losses and weights of an uninterrupted 3-step run, bit
    for bit (generator and discriminator, with the sync expert in the base stage)."""
    from hyperlips.train import loop

    if stage == "base":
        kw = {"expert": str(_random_checkpoint(tmp_path / "expert.safetensors", "syncnet"))}
    else:
        kw = {"base": str(_random_checkpoint(tmp_path / "base.safetensors", "hyperlips-base", seed=1)), "batch_size": 2}
    common = dict(val_every=0, image_every=0, ckpt_every=1, **kw)
    full = _trainer(stage, one_clip, tmp_path / "full", max_steps=3, **common).fit()
    _trainer(stage, one_clip, tmp_path / "split", max_steps=2, **common).fit()
    from hyperlips.train.commands import stage_class
    from hyperlips.train.config import build_config
    from hyperlips.train.loop import Trainer

    cfg = build_config(stage, overrides={"data": str(one_clip), "out": str(tmp_path / "split"), **TINY, **common,
                                         "max_steps": 3})
    resumed = Trainer(stage_class(stage), cfg, resume=True, quiet=True).fit()
    assert [r["step"] for r in resumed.losses] == [3]
    assert resumed.losses[0] == {k: v for k, v in full.losses[2].items() if k in resumed.losses[0]}
    a = loop.read_checkpoint(tmp_path / "full/checkpoints/step_000000003.pt")
    b = loop.read_checkpoint(tmp_path / "split/checkpoints/step_000000003.pt")
    assert set(a["models"]) == set(b["models"]) and len(a["models"]) == 2
    for name, weights in a["models"].items():
        for k, v in weights.items():
            assert torch.equal(v, b["models"][name][k]), (name, k)
    if stage == "hr":  # the Base trained further in place: resuming on it is refused (it re-rendered without a word)
        from hyperlips.errors import UserError

        _random_checkpoint(Path(kw["base"]), "hyperlips-base", seed=2)
        cfg = build_config(stage, overrides={"data": str(one_clip), "out": str(tmp_path / "split"), **TINY, **common,
                                             "max_steps": 4})
        with pytest.raises(UserError, match="has changed since the HR run in .* started"):
            Trainer(stage_class(stage), cfg, resume=True, quiet=True).fit()


def test_finetune_with_one_step(more_data, tmp_path):
    """The fast variant of the slow test below: one base step and one HR step on a 3-second GRID clip; the models
    are written with their step."""
    from hyperlips.cli import main
    from hyperlips.models import load_checkpoint

    video = more_data / "grid_lipnet/sbwe5n.mpg"
    out = tmp_path / "me.safetensors"
    code = main(["finetune", str(video), "-o", str(out), "--model", "base", "--steps", "1", "--hr-size", "128", "--hr-steps", "1",
                 "--batch-size", "1", "--workers", "0", "--device", "cpu", "--quiet", "--set", "val_samples=2"])
    assert code == 0
    base, info = load_checkpoint(out)
    assert info.name == "hyperlips-base" and info.step == 1
    hr, info = load_checkpoint(tmp_path / "me.hr128.safetensors")
    assert info.name == "hyperlips-hr-128" and info.step == 1
    # the Base trained further: the HR decoder trained on the old one is moved aside, a new one trained on this Base
    args = ["finetune", str(video), "-o", str(out), "--model", "base", "--steps", "2", "--hr-size", "128",
            "--hr-steps", "1", "--batch-size", "1", "--workers", "0", "--device", "cpu", "--quiet",
            "--set", "val_samples=2"]
    assert main(args) == 0
    from hyperlips.train.hr import content_key

    moved = tmp_path / "me.work/hr128.other-base"
    assert moved.is_dir() and load_checkpoint(out)[1].step == 2
    assert (tmp_path / "me.work/hr128/trained_on_base.txt").read_text() == content_key(out)
    stamp = moved.stat().st_mtime_ns
    assert main(args) == 0  # the same again: the same Base (written again), the same HR decoder, nothing moved
    assert moved.stat().st_mtime_ns == stamp and (tmp_path / "me.work/hr128").is_dir()


def test_finetune_base_and_hr_share_the_budget_and_an_interrupted_hr_run_continues(more_data, tmp_path, monkeypatch):
    """``finetune --model base --hr-size N --minutes M``: the whole command keeps to M (the HR stage had no budget:
    3 hours planned after a 3-minute Base), and the HR run says which Base it trains on before it starts (an
    interrupted one was taken for another Base's and trained again from its first step)."""
    import types

    from hyperlips.cli import main
    from hyperlips.models import create_model, save_checkpoint
    from hyperlips.train import finetune as ft

    from helpers import random_base_checkpoint

    base_file = random_base_checkpoint(tmp_path / "b.safetensors", official=False)
    hr_file = save_checkpoint(create_model("hyperlips-hr-128"), tmp_path / "h.safetensors", "hyperlips-hr-128")
    calls = []

    def fake_train(stage_cls, cfg, quiet):
        key = Path(cfg.out) / ft.BASE_KEY
        calls.append((stage_cls.__name__, cfg.max_minutes, key.is_file() and key.read_text()))
        model = hr_file if stage_cls.__name__ == "HRStage" else base_file
        return types.SimpleNamespace(best=None, model=model, step=1, metrics={})

    monkeypatch.setattr(ft, "_train", fake_train)
    out = tmp_path / "me.safetensors"
    args = ["finetune", str(more_data / "grid_lipnet/sbwe5n.mpg"), "-o", str(out), "--model", "base", "--hr-size", "128",
            "--minutes", "4", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    prep = json.loads((tmp_path / "me.work" / "finetune.json").read_text())["prep_seconds"]
    (base, base_minutes, _), (hr, hr_minutes, key) = calls
    budget = 4 * 60 - prep - 2 * ft.RESERVE_S
    assert (base, hr) == ("BaseStage", "HRStage")
    assert base_minutes == pytest.approx(budget * ft.BASE_SHARE / 60, abs=1e-6)
    assert budget * (1 - ft.BASE_SHARE) / 60 <= hr_minutes <= budget / 60  # what the Base left (here, all)
    from hyperlips.train.hr import content_key

    assert key == content_key(out)  # written before the HR stage ran, so a re-run after Ctrl-C continues it


@pytest.mark.slow
def test_finetune_one_video_end_to_end(more_data, tmp_path):
    """`hyperlips finetune` on one real clip: base and HR models written, and `sync` uses them."""
    video = more_data / "lrs2_deep_avsr/00001.mp4"
    out = tmp_path / "me.safetensors"
    res = run_cli("finetune", video, "-o", out, "--model", "base", "--steps", "2", "--hr-size", "128", "--hr-steps", "2",
                  "--batch-size", "1", "--workers", "0", "--device", "cpu", "--quiet", timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    hr = tmp_path / "me.hr128.safetensors"
    assert out.is_file() and hr.is_file()
    assert f"--checkpoint {out}" in res.stdout and f"--hr-checkpoint {hr}" in res.stdout
    wav = write_wav(tmp_path / "speech.wav", 0.6)
    r = run_cli("sync", video, wav, "-o", tmp_path / "out.mp4", "--checkpoint", out, "--hr-checkpoint", hr,
                "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    # a re-run continues: nothing to preprocess, training already at its last step
    again = run_cli("finetune", video, "-o", out, "--model", "base", "--steps", "2", "--batch-size", "1", "--workers", "0",
                    "--device", "cpu", "--quiet", timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]


def test_finetune_cli_errors(tmp_path, more_data):
    res = run_cli("finetune", tmp_path / "missing.mp4", "-o", tmp_path / "me.safetensors")
    assert res.returncode == 2 and "not found" in res.stderr
    res = run_cli("finetune", more_data / "lrs2_deep_avsr/00002.mp4", "-o", tmp_path / "me.onnx")
    assert res.returncode == 2 and ".safetensors" in res.stderr
    # 35 frames: too short to hold out a tail and still train; nothing is left behind
    res = run_cli("finetune", more_data / "lrs2_deep_avsr/00002.mp4", "-o", tmp_path / "me.safetensors", "--quiet")
    assert res.returncode == 2 and "too short" in res.stderr
    assert not (tmp_path / "me.work").exists()
    # a working folder that was there before (an earlier run's) stays
    (tmp_path / "mine.work").mkdir()
    (tmp_path / "mine.work" / "keep.txt").write_text("earlier run")
    res = run_cli("finetune", more_data / "lrs2_deep_avsr/00002.mp4", "-o", tmp_path / "mine.safetensors", "--quiet")
    assert res.returncode == 2 and (tmp_path / "mine.work" / "keep.txt").is_file()
