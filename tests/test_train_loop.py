"""The shared training loop: configuration, exact resume, atomic checkpoints, NaN stop, DDP with torchrun, CLI.

Runs use tiny settings (batch 2, a few steps, one thread) on real preprocessed clips.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import run_cli, wait_for_logged_steps
from test_train_data import make_view, small_dataset  # noqa: F401  (session fixture)

TINY = dict(batch_size=2, workers=0, threads=1, log_every=1, image_every=0, val_every=0, seed=5)


@pytest.fixture(scope="module")
def sync_view(small_dataset, tmp_path_factory):  # noqa: F811
    return make_view(small_dataset, tmp_path_factory.mktemp("sync_view"), ["grid_s1/bbaf3s", "lrs2/00001"])


def _trainer(stage: str, data: Path, out: Path, resume: bool = False, **kw):
    from hyperlips.train.commands import stage_class
    from hyperlips.train.config import build_config
    from hyperlips.train.loop import Trainer

    cfg = build_config(stage, overrides={"data": str(data), "out": str(out), **TINY, **kw})
    return Trainer(stage_class(stage), cfg, resume=resume, quiet=True)


# ---------------------------------------------------------------------------------------------- configuration
def test_config_precedence_and_errors(tmp_path):
    from hyperlips.errors import UserError
    from hyperlips.train.config import TrainConfig, build_config, parse_overrides

    f = tmp_path / "c.yaml"
    f.write_text("lr: 3.0e-4\nbatch_size: 12\ngrad_clip: 0.5\nbetas: [0.8, 0.99]\n")
    cfg = build_config("sync", f, {"batch_size": 4, "max_steps": None})
    assert cfg.lr == 3e-4 and cfg.batch_size == 4 and cfg.grad_clip == 0.5 and cfg.betas == (0.8, 0.99)
    assert cfg.max_steps == TrainConfig().max_steps  # None means "not given"
    assert build_config("sync").batch_size == 64 and build_config("base").batch_size == 28  # stage defaults
    assert build_config("base", overrides=parse_overrides(["lr=2e-5", "amp=off", "val_at_start=true"])).lr == 2e-5
    f.write_text("learning_rate: 1\n")
    with pytest.raises(UserError, match="learning_rate"):
        build_config("sync", f)
    with pytest.raises(UserError, match="batch_size"):
        build_config("sync", overrides={"batch_size": "many"})
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_overrides(["lr"])
    f.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        build_config("sync", f)
    # numbers out of their range: one line naming the setting, not an error deep inside torch or the loop
    for name, value, words in [("batch_size", 0, "at least 1"), ("lr", -1, "above 0"), ("lr", float("nan"), "above 0"),
                               ("threads", -2, "at least 0"), ("ckpt_every", 0, "at least 1"),
                               ("val_samples", 0, "at least 1"), ("max_minutes", -1, "at least 0")]:
        with pytest.raises(UserError, match=f"training setting {name}=.*: must be .*{words}"):
            build_config("sync", overrides={name: value})
    for name, value in [("flip", 2.5), ("mirror", -0.1), ("min_shift", -3), ("min_shift", 0)]:  # accepted once: an
        with pytest.raises(UserError, match=f"training setting {name}="):  # off-sync pair could be in sync
            build_config("sync", overrides={name: value})
    assert build_config("sync", overrides={"val_every": 0, "threads": 0, "workers": 0}).val_every == 0
    # values that meant something else, and errors in Python's words: an empty --set kept the default silently,
    # flip=yes mirrored every window (YAML's yes is true, float(True) 1.0), betas=0.9 was "'float' object is not
    # iterable", val_every=ten "could not convert string to float"
    with pytest.raises(UserError, match=r"--set lr= gives no value"):
        parse_overrides(["lr="])
    for item in ("lr=null", "flip=~"):
        with pytest.raises(UserError, match=r"takes a value, not none"):
            parse_overrides([item])
    assert parse_overrides(["progress_file=null"]) == {"progress_file": None}  # (a setting that takes none)
    for item, words in [("flip=yes", "flip=True: must be a number, not True"),
                        ("val_every=on", "must be a whole number, not True"),
                        ("betas=0.9", "needs two numbers, e.g. betas=0.5,0.999"),
                        ("betas=0.9,0.99,0.999", "needs two numbers"),
                        ("val_every=ten", "val_every='ten': must be a whole number$"),
                        ("lr=fast", "lr='fast': must be a number$"),
                        ("augment=0.5", "augment=0.5: must be true or false"),  # (0.5 and 2 turned it on)
                        ("augment=2", "augment=2: must be true or false")]:
        with pytest.raises(UserError, match=words):
            build_config("sync", overrides=parse_overrides([item]))
    assert build_config("sync", overrides=parse_overrides(["betas=0.8,0.9", "val_every=2e3"])).betas == (0.8, 0.9)
    assert [build_config("sync", overrides=parse_overrides([f"augment={v}"])).augment for v in ("1", "0", "on")] == [
        True, False, True]


@pytest.mark.parametrize("stage, model, name", [("base", "lite", "hyperlips-lite"), ("sync", "lite", "syncnet-lite")])
def test_a_models_defaults_yield_to_the_config_file(tmp_path, stage, model, name):
    """`train base|sync --model lite --config FILE`: the compact model's defaults (batch 16 or 32, its learning
    rate) come before the file, the file before --set and the options; a file naming the model brings them too."""
    from hyperlips.cli import build_parser
    from hyperlips.train.commands import config_from_args
    from hyperlips.train.config import LITE_DEFAULTS, SYNC_LITE_DEFAULTS

    lite = LITE_DEFAULTS if name == "hyperlips-lite" else SYNC_LITE_DEFAULTS
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 2\nval_every: 0\n")
    common = ["train", stage, str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--config", str(f)]
    cfg = config_from_args(build_parser().parse_args(common + ["--model", model]))
    assert cfg.model == name and (cfg.batch_size, cfg.val_every) == (2, 0)  # the file's
    assert cfg.lr == lite["lr"] and cfg.ckpt_every == lite["ckpt_every"]  # the model's, where the file is silent
    cfg = config_from_args(build_parser().parse_args(common + ["--model", model, "--set", "batch_size=3",
                                                               "--val-every", "7"]))
    assert (cfg.batch_size, cfg.val_every) == (3, 7)
    f.write_text(f"batch_size: 2\nmodel: {name}\n")
    cfg = config_from_args(build_parser().parse_args(common))
    assert cfg.model == name and cfg.batch_size == 2 and cfg.lr == lite["lr"]


def test_settings_the_stage_does_not_read_are_said(tmp_path, recwarn):
    """`train sync --set mouth_weight=8` trained exactly as without it, silently: a setting that only another stage
    (or the other base model) reads is said; one the run reads is not; a config file's settings are said only where
    they differ from the defaults (a run's own config.yaml lists every setting)."""
    import yaml

    from hyperlips.cli import build_parser
    from hyperlips.errors import InputWarning
    from hyperlips.train.commands import config_from_args
    from hyperlips.train.config import TrainConfig

    def said(*argv):
        recwarn.clear()
        config_from_args(build_parser().parse_args(["train", *argv, str(tmp_path / "data"), "-o", str(tmp_path / "r")]))
        return " ".join(str(w.message) for w in recwarn if issubclass(w.category, InputWarning))

    text = said("sync", "--set", "mouth_weight=8", "--set", "flip=0.3")
    assert "mouth_weight (read by train base --model lite)" in text and "flip" not in text
    text = said("base", "--set", "mouth_weight=8", "--set", "sync_weight=0.1")
    assert "mouth_weight" in text and "sync_weight" not in text
    text = said("base", "--model", "lite", "--set", "mouth_weight=8", "--set", "sync_weight=0.1",
                "--set", "perceptual_weight=2")
    assert "sync_weight (read by train base --model base)" in text and "perceptual_weight (read by train hr)" in text
    assert "mouth_weight" not in text
    assert said("hr", "--set", "lip_l1_weight=2", "--set", "lr=1e-3") == ""
    own = tmp_path / "config.yaml"  # every setting, as a run folder keeps them
    own.write_text(yaml.safe_dump({**TrainConfig(stage="base").to_dict(), "mouth_weight": 6.0}))
    text = said("base", "--model", "lite", "--config", str(own))
    assert text == ""
    text = said("hr", "--config", str(own))
    assert "mouth_weight" in text and "sync_weight" not in text and "edge_weight" not in text
    # `finetune --model base --hr-size 256` makes two runs: a setting either reads is not said
    from hyperlips.train.config import ignored_settings
    assert ignored_settings(["perceptual_weight", "sync_weight", "mouth_weight", "lr"],
                            [("base", "hyperlips-base"), ("hr", None)]) == ["mouth_weight (read by train base --model lite)"]


def test_the_originals_config_replacing_the_compact_models_defaults_is_said(tmp_path, recwarn):
    """`train base --model lite --config base` trained Lite at Base's learning rate (1e-4, its own 5e-4), batch and
    betas without a word; settings given on the command line, and configs that are not the original's, are not
    said."""
    from hyperlips.cli import build_parser
    from hyperlips.errors import InputWarning
    from hyperlips.train.commands import config_from_args

    def said(*argv):
        recwarn.clear()
        cfg = config_from_args(build_parser().parse_args(["train", *argv, str(tmp_path / "data"), "-o",
                                                          str(tmp_path / "r")]))
        return cfg, " ".join(str(w.message) for w in recwarn if issubclass(w.category, InputWarning))

    cfg, text = said("base", "--model", "lite", "--config", "base")
    assert cfg.lr == 1e-4  # the file still wins: it is said, not overruled
    assert "--config base holds the original network's settings" in text
    assert "lr 0.0001 (its own: 0.0005)" in text and "batch_size 28 (its own: 16)" in text
    assert "betas 0.5/0.999 (its own: 0.9/0.99)" in text
    _, text = said("base", "--model", "lite", "--config", "base", "--lr", "2e-4", "--set", "batch_size=8",
                   "--set", "betas=[0.9,0.99]", "--set", "workers=0")
    assert text == ""
    _, text = said("sync", "--model", "lite", "--config", "sync")
    assert "lr 0.0001 (its own: 0.001)" in text
    for argv in (("base", "--config", "base"), ("base", "--model", "lite", "--config", "small-cpu")):
        assert said(*argv)[1] == ""


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    from hyperlips.train.checkpoints import atomic_save

    path = tmp_path / "ck.pt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as failed:
        atomic_save({"step": 2}, path, save=dies_half_way)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temporary file left
    # the write names the file it was writing (a full disk was said as "No space left on device" alone)
    assert (failed.value.errno, failed.value.filename) == (28, str(path))

    def zip_writer_fails(obj, f):  # torch.save's zip writer turns the failed write into a RuntimeError
        try:
            dies_half_way(obj, f)
        except OSError as e:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from e

    with pytest.raises(OSError) as failed:
        atomic_save({"step": 2}, path, save=zip_writer_fails)
    assert (failed.value.errno, failed.value.filename) == (28, str(path))
    from hyperlips.cli import _os_error_text

    assert _os_error_text(failed.value) == f"No space left on device: {path}"


# ---------------------------------------------------------------------------------------------- resume
def test_exact_resume_and_a_failed_checkpoint_write(sync_view, tmp_path, monkeypatch):
    """k+m: 3 steps, then a resume whose first checkpoint write fails (the step-3 checkpoint survives), then a
    resume to step 5 gives the losses and weights of an uninterrupted 5-step run, bit for bit."""
    from hyperlips.train import loop

    full = _trainer("sync", sync_view, tmp_path / "full", max_steps=5, ckpt_every=5)
    res_full = full.fit()
    losses_full = {r["step"]: r["loss"] for r in res_full.losses}
    assert len(losses_full) == 5

    run = tmp_path / "split"
    _trainer("sync", sync_view, run, max_steps=3, ckpt_every=1, keep_last=2).fit()
    assert [p.name for _, p in loop.list_checkpoints(run)] == ["step_000000002.pt", "step_000000003.pt"]
    good = (run / "checkpoints" / "step_000000003.pt").read_bytes()
    model_before = (run / "model.safetensors").read_bytes()

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop, "atomic_save", functools.partial(loop.atomic_save, save=dies_half_way))
    with pytest.raises(OSError):
        _trainer("sync", sync_view, run, resume=True, max_steps=5, ckpt_every=1).fit()
    monkeypatch.undo()
    assert (run / "checkpoints" / "step_000000003.pt").read_bytes() == good
    assert not list((run / "checkpoints").glob(".*tmp*"))
    assert (run / "model.safetensors").read_bytes() == model_before

    resumed = _trainer("sync", sync_view, run, resume=True, max_steps=5, ckpt_every=5)
    res = resumed.fit()
    losses_resumed = {r["step"]: r["loss"] for r in res.losses}
    assert sorted(losses_resumed) == [4, 5]
    for k in (4, 5):
        assert losses_resumed[k] == losses_full[k], (k, losses_resumed[k], losses_full[k])
    a = torch.load(tmp_path / "full/checkpoints/step_000000005.pt", weights_only=True)
    b = torch.load(run / "checkpoints/step_000000005.pt", weights_only=True)
    for k, v in a["models"]["syncnet"].items():
        assert torch.equal(v, b["models"]["syncnet"][k]), k
    assert b["data"]["samples_per_rank"] == 5 * TINY["batch_size"]


def test_a_learning_rate_changed_on_resume_applies_and_other_changes_are_said(sync_view, tmp_path):
    """``--resume --lr X`` trained on at the checkpoint's rate (its optimiser state brought the old one back) while
    the log and config.yaml said X; ``--model`` was dropped without a word; other changes were not said."""
    run = tmp_path / "run"
    _trainer("sync", sync_view, run, max_steps=2, ckpt_every=2, lr=1e-4).fit()
    same, faster = tmp_path / "same", tmp_path / "faster"
    shutil.copytree(run, same)
    shutil.copytree(run, faster)
    _trainer("sync", sync_view, same, resume=True, max_steps=3, ckpt_every=3, lr=1e-4).fit()
    _trainer("sync", sync_view, faster, resume=True, max_steps=3, ckpt_every=3, lr=5e-4).fit()
    a = torch.load(same / "checkpoints/step_000000003.pt", weights_only=True)
    b = torch.load(faster / "checkpoints/step_000000003.pt", weights_only=True)
    assert [g["initial_lr"] for g in b["optimizers"]["syncnet"]["param_groups"]] == [5e-4] * len(
        b["optimizers"]["syncnet"]["param_groups"])
    assert any(not torch.equal(v, b["models"]["syncnet"][k]) for k, v in a["models"]["syncnet"].items())

    res = run_cli("train", "sync", sync_view, "--out", run, "--resume", "--max-steps", "3", "--lr", "3e-4",
                  "--seed", "5", "--workers", "0", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert "the run continues at step 2 with lr 0.0003 instead of 0.0001: it applies from here on" in res.stderr
    assert "with seed" not in res.stderr  # unchanged (TINY's seed): not said
    res = run_cli("train", "sync", sync_view, "--out", run, "--resume", "--max-steps", "4", "--model", "lite")
    assert res.returncode == 2, res.stderr  # named as typed, not as the registry names them ('syncnet-lite')
    assert "holds a run with --model official (at step 3); it cannot go on with --model lite:" in res.stderr, res.stderr
    # the run was started without --model (the official expert): naming it on resume is no change
    res = run_cli("train", "sync", sync_view, "--out", run, "--resume", "--max-steps", "4", "--model", "official",
                  "--workers", "0", "--threads", "1")
    assert res.returncode == 0 and "--model" not in res.stderr, res.stderr


def test_a_resume_on_other_held_out_clips_or_another_process_count_is_said(sync_view, tmp_path):
    """The dataset preprocessed again with its held-out clips changed, or a run of 2 processes resumed by 1: the run
    goes on, saying that it is no longer the run it was (both went on without a word)."""
    import json

    from hyperlips.errors import InputWarning

    data = tmp_path / "data"
    shutil.copytree(sync_view, data, symlinks=True)
    run = tmp_path / "run"
    _trainer("sync", data, run, max_steps=2, ckpt_every=2).fit()
    manifest = json.loads((data / "manifest.json").read_text())
    for c in manifest["clips"]:
        c["split"] = "val" if c["split"] == "train" else "train"
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(InputWarning, match="the dataset's held-out clips changed since this run was saved"):
        _trainer("sync", data, run, resume=True, max_steps=3, ckpt_every=3).fit()
    ck = run / "checkpoints/step_000000003.pt"
    saved = torch.load(ck, weights_only=False)
    saved["rng"] = saved["rng"] * 2  # as saved by two processes
    torch.save(saved, ck)
    with pytest.warns(InputWarning, match="saved by 2 processes and continues with 1: its batch of 4 samples a step "
                                          "becomes 2"):
        _trainer("sync", data, run, resume=True, max_steps=4, ckpt_every=4).fit()
    def own(path):  # a file of the copied dataset that may be written (not a link into the shared one)
        if path.is_symlink():
            real = path.resolve()
            path.unlink()
            shutil.copy(real, path)
        return path

    # a clip made again from the same file (only its time changed: a copy, a checkout): nothing to say (it was said to
    # be made "from other files")
    first = data / "clips" / manifest["clips"][0]["id"]
    meta = json.loads(own(first / "meta.json").read_text())
    meta["source_key"] = {**(meta.get("source_key") or {}), "mtime": 1}
    (first / "meta.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        _trainer("sync", data, run, resume=True, max_steps=5, ckpt_every=5).fit()
    # a clip made again from another file under its name (same length): it resumed without a word
    mel = np.load(own(first / "mel.npy"))
    np.save(first / "mel.npy", mel[:, ::-1].copy())
    with pytest.warns(InputWarning, match=r"1 of the dataset's clips were made again from other footage since this "
                                          r"run was saved \(" + manifest["clips"][0]["id"]):
        _trainer("sync", data, run, resume=True, max_steps=6, ckpt_every=6).fit()
    # a training clip taken out of the dataset (or one preprocessed into it): its batches changed without a word
    gone = next(c for c in manifest["clips"] if c["split"] == "train")
    manifest["clips"] = [c for c in manifest["clips"] if c["id"] != gone["id"]]  # (its ranges: a clip split in time)
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(InputWarning, match=r"the dataset's clips changed since this run was saved: 1 gone \("
                                          + gone["id"]):
        _trainer("sync", data, run, resume=True, max_steps=7, ckpt_every=7).fit()


def test_a_run_folder_holding_a_run_says_how_to_go_on(sync_view, tmp_path):
    """Another stage's run in the --out folder was met with "pass --resume to continue it", and --resume then said
    the folder holds another stage's run."""
    from hyperlips.errors import UserError

    run = tmp_path / "run"
    _trainer("sync", sync_view, run, max_steps=1, ckpt_every=1).fit()
    with pytest.raises(UserError, match="already holds checkpoints of a run: pass --resume to continue it"):
        _trainer("sync", sync_view, run, max_steps=2).fit()
    with pytest.raises(UserError, match=r"holds a `train sync` run: choose another --out folder for this `train hr` "
                                        r"run$"):
        _trainer("hr", sync_view, run, max_steps=2).fit()


def test_a_resumed_run_logs_each_step_once(sync_view, tmp_path):
    """Resumed from step 2 after it had trained to 3 (the third step lost with its process): scalars.jsonl holds
    each step once, as the resumed run trained it (the lost step's record stayed beside the new one)."""
    import json

    run = tmp_path / "run"
    _trainer("sync", sync_view, run, max_steps=3, ckpt_every=2).fit()
    (run / "checkpoints/step_000000003.pt").unlink()  # as if the process died before its last checkpoint
    with open(run / "scalars.jsonl", "a") as f:
        f.write('{"step": 3, "trunc')  # and its last line was cut short
    _trainer("sync", sync_view, run, resume=True, max_steps=4, ckpt_every=2).fit()
    steps = [json.loads(line)["step"] for line in (run / "scalars.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == 4, steps


def test_a_run_started_on_a_relative_dataset_resumes_from_another_folder(sync_view, tmp_path):
    """``train sync data -o RUN`` then ``--resume`` from elsewhere without naming the dataset: the run finds it (its
    settings held "data", looked for in the folder of the resume)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(sync_view)
    run = tmp_path / "run"
    args = ("--max-steps", "1", "--workers", "0", "--threads", "1", "--batch-size", "2", "--val-every", "0")
    first = run_cli("train", "sync", "data", "--out", run, *args, cwd=work)
    assert first.returncode == 0, first.stderr
    res = run_cli("train", "sync", "--out", run, "--resume", "--max-steps", "2", "--workers", "0", "--threads", "1",
                  cwd=tmp_path)
    assert res.returncode == 0 and "resumed" in res.stderr, res.stderr


def test_unreadable_checkpoints_are_said_once_in_plain_words_and_best_is_the_last_resort(sync_view, tmp_path):
    """Each unreadable checkpoint was reported twice, in torch's words cut mid-sentence ("...there is a high)"), and a
    run whose step checkpoints were all gone said "no checkpoint to resume from" beside its best.pt."""
    run = tmp_path / "run"
    _trainer("sync", sync_view, run, max_steps=2, ckpt_every=1, keep_last=2, val_every=1, val_samples=2).fit()
    ckpts = run / "checkpoints"
    assert (ckpts / "best.pt").is_file()
    for p in ckpts.glob("step_*.pt"):  # replaced, not written over: best.pt may be a hard link to one of them
        p.unlink()
    (ckpts / "step_000000002.pt").write_bytes(b"")
    (ckpts / "step_000000001.pt").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    res = run_cli("train", "sync", sync_view, "--out", run, "--resume", "--max-steps", "3")
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stderr.splitlines() if "skipping" in ln]
    assert len(said) == 2, res.stderr
    assert said[0].endswith("step_000000002.pt: unreadable training checkpoint (the file is empty)"), said
    assert said[1].endswith("step_000000001.pt: unreadable training checkpoint (cut short or damaged: its archive "
                            "cannot be read)"), said
    assert "resuming from the best one (best.pt, step" in res.stderr, res.stderr
    assert (ckpts / "step_000000003.pt").is_file()


def test_nan_loss_stops_before_writing(sync_view, tmp_path, monkeypatch):
    from hyperlips.train import loop, sync

    real = sync.expert_loss
    calls = {"n": 0}

    def poisoned(a, v, y):
        calls["n"] += 1
        out = real(a, v, y)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(sync, "expert_loss", poisoned)
    with pytest.raises(loop.TrainingDiverged, match="step 2"):
        _trainer("sync", sync_view, tmp_path / "run", max_steps=4, ckpt_every=1).fit()
    assert [s for s, _ in loop.list_checkpoints(tmp_path / "run")] == [1]
    ck = loop.read_checkpoint(tmp_path / "run/checkpoints/step_000000001.pt")
    assert all(torch.isfinite(v).all() for v in ck["models"]["syncnet"].values() if v.is_floating_point())


def test_a_stop_request_whose_exception_was_lost_stops_training_before_the_next_step(sync_view, tmp_path):
    """SIGTERM's exception swallowed inside a native call during step 2 (as PyAV did to one in about 100): the run
    stops before step 3 instead of training on."""
    import signal

    from hyperlips.errors import Terminated, clear_stop, request_stop

    trainer = _trainer("sync", sync_view, tmp_path / "run", max_steps=6, ckpt_every=100)
    trainer.on_step = lambda step, losses: request_stop(signal.SIGTERM) if step == 2 else None
    try:
        with pytest.raises(Terminated):
            trainer.fit()
    finally:
        clear_stop()
    assert [r["step"] for r in trainer.history] == [1, 2]


def test_best_checkpoint_is_the_lowest_validation_metric(sync_view, tmp_path, monkeypatch):
    """``best.pt`` / ``best.safetensors`` are the step whose validation metric (val/loss for the expert) was lowest,
    not the last or the first one."""
    from hyperlips.models import load_checkpoint, read_state_dict
    from hyperlips.train import loop, sync

    scripted = iter([0.9, 0.5, 0.7, 0.6])  # steps 1..4: the best is step 2

    def val_metrics(self, values):
        return {"val/loss": next(scripted), "val/auc": 0.5}

    monkeypatch.setattr(sync.SyncStage, "val_metrics", val_metrics)
    res = _trainer("sync", sync_view, tmp_path / "run", max_steps=4, val_every=1, val_samples=2, ckpt_every=100,
                   keep_last=10).fit()
    assert res.best == tmp_path / "run/best.safetensors"
    ck = loop.read_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert ck["step"] == 2 and ck["best"] == {"metric": "val/loss", "value": 0.5, "step": 2}
    _, info = load_checkpoint(res.best, name="syncnet")
    assert info.step == 2
    best, _ = read_state_dict(res.best, "syncnet")
    at2, _ = read_state_dict(tmp_path / "run/checkpoints/step_000000002.pt", "syncnet")
    last, _ = read_state_dict(res.model, "syncnet")
    assert all(torch.equal(best[k], at2[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best)


def test_a_figure_better_higher_picks_its_highest_and_an_unknown_one_is_said(sync_view, tmp_path, monkeypatch):
    """``--set best_metric=val/auc`` keeps the step of the highest AUC (the lowest was kept: the worst expert); a
    name no validation gives (a typo) is said once, not passed over in silence with no best checkpoint."""
    from hyperlips.errors import InputWarning
    from hyperlips.train import loop, sync

    scripted = iter([0.6, 0.8, 0.7, 0.5] + [0.5] * 4)  # the best AUC at step 2

    def val_metrics(self, values):
        return {"val/loss": 0.5, "val/auc": next(scripted)}

    monkeypatch.setattr(sync.SyncStage, "val_metrics", val_metrics)
    _trainer("sync", sync_view, tmp_path / "run", max_steps=4, val_every=1, val_samples=2, ckpt_every=100,
             best_metric="val/auc").fit()
    assert loop.read_checkpoint(tmp_path / "run/checkpoints/best.pt")["step"] == 2
    with pytest.warns(InputWarning, match="best_metric val/acuracy is none of this validation's figures "
                                          "\\(val/loss, val/auc\\)") as said:
        _trainer("sync", sync_view, tmp_path / "typo", max_steps=3, val_every=1, val_samples=2, ckpt_every=100,
                 best_metric="val/acuracy").fit()
    assert sum("best_metric" in str(w.message) for w in said) == 1


def test_patience_stops_a_run_whose_held_out_figure_stopped_improving_and_resume_keeps_the_rule(
        sync_view, tmp_path, monkeypatch):
    """``patience`` 2: validations at steps 1..8 score 0.9, 0.5, 0.45, 0.6, 0.4, 0.45, 0.41, ...: the best moves to
    step 5 (one validation without a new best before it does not stop it), and the run stops at step 7, two validations later, with its checkpoint (max_steps 20 not reached);
    the best stays step 5. A run cut at step 6 and resumed stops at the same step; resuming a stopped run trains
    nothing; patience 0 runs to max_steps."""
    from hyperlips.train import loop, sync

    scores = [0.9, 0.5, 0.45, 0.6, 0.4, 0.45, 0.41, 0.42, 0.43, 0.44, 0.3] + [0.5] * 20
    calls = {"n": 0}

    def val_metrics(self, values):
        calls["n"] += 1
        return {"val/loss": scores[calls["n"] - 1], "val/auc": 0.5}

    monkeypatch.setattr(sync.SyncStage, "val_metrics", val_metrics)
    common = dict(val_every=1, val_samples=2, ckpt_every=100, keep_last=10, patience=2)
    res = _trainer("sync", sync_view, tmp_path / "run", max_steps=20, **common).fit()
    assert res.step == 7 and calls["n"] == 7 and res.stopped_early
    ck = loop.read_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert ck["best"] == {"metric": "val/loss", "value": 0.4, "step": 5}
    assert loop.latest_checkpoint(tmp_path / "run")[1]["step"] == 7

    calls["n"] = 0
    again = _trainer("sync", sync_view, tmp_path / "run", resume=True, max_steps=20, **common).fit()
    assert again.step == 7 and calls["n"] == 0  # nothing to do

    calls["n"] = 0
    _trainer("sync", sync_view, tmp_path / "cut", max_steps=6, **common).fit()
    resumed = _trainer("sync", sync_view, tmp_path / "cut", resume=True, max_steps=20, **common).fit()
    assert resumed.step == 7 and calls["n"] == 7

    calls["n"] = 0
    off = _trainer("sync", sync_view, tmp_path / "off", max_steps=12, **{**common, "patience": 0}).fit()
    assert off.step == 12 and calls["n"] == 12 and not off.stopped_early


def test_the_progress_bar_says_when_it_validates(sync_view, tmp_path, capsys):
    """Validation holds the bar still for minutes with Base on a CPU: the bar counts its batches meanwhile."""
    from hyperlips.train.commands import stage_class
    from hyperlips.train.config import build_config
    from hyperlips.train.loop import Trainer

    cfg = build_config("sync", overrides={"data": str(sync_view), "out": str(tmp_path / "run"), **TINY,
                                          "max_steps": 2, "val_every": 2, "val_samples": 6, "progress": True})
    Trainer(stage_class("sync"), cfg).fit()
    err = capsys.readouterr().err
    assert "validating: batch 1/3" in err and "validating: batch 3/3" in err


def test_bf16_autocast_on_cpu_trains_in_bf16_and_keeps_fp32_weights(sync_view, tmp_path, monkeypatch):
    from hyperlips.errors import UserError
    from hyperlips.models import load_checkpoint
    from hyperlips.train import stage, sync

    seen = []
    real = sync.SyncStage._forward

    def spy(self, net, batch):
        a, v = real(self, net, batch)
        seen.append((a.dtype, v.dtype))
        return a, v

    monkeypatch.setattr(sync.SyncStage, "_forward", spy)
    res = _trainer("sync", sync_view, tmp_path / "run", max_steps=2, amp="bf16", bn_batches=1).fit()
    # two training steps and one BatchNorm re-estimation batch before the final checkpoint, all under bf16 autocast
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 3
    assert all(np.isfinite(r["loss"]) for r in res.losses)
    net, _ = load_checkpoint(res.model, name="syncnet")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with pytest.raises(UserError, match="CUDA"):
        stage.amp_settings("on", torch.device("cpu"))
    with pytest.raises(UserError, match="auto, on, bf16 or off"):
        stage.amp_settings("fp8", torch.device("cpu"))
    assert stage.amp_settings("auto", torch.device("cpu"))[0] is False


@pytest.mark.parametrize("stage", ["sync", "base"])
def test_bn_statistics_are_re_estimated_before_saving(sync_view, tmp_path, monkeypatch, stage):
    """With ``bn_batches`` N the saved running statistics of the trained network (the expert; the base stage's
    generator) are the plain average over N fresh training batches (not a lagging moving average), and the layers
    get their momentum back afterwards."""
    from hyperlips.models import load_checkpoint
    from hyperlips.train.commands import stage_class

    stats = []
    cls = stage_class(stage)
    real = cls.bn_forward

    def spy(self, batch):
        net = self.bn_module()
        assert net.training
        bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        hook = bn.register_forward_hook(
            lambda m, i, o: stats.append((i[0].float().mean((0, 2, 3)), i[0].float().var((0, 2, 3)))))
        try:
            real(self, batch)
        finally:
            hook.remove()

    monkeypatch.setattr(cls, "bn_forward", spy)
    extra = {"disc_weight": 0.0, "batch_size": 1} if stage == "base" else {}
    trainer = _trainer(stage, sync_view, tmp_path / "run", max_steps=1, bn_batches=3, **extra)
    res = trainer.fit()
    assert len(stats) == 3
    net, _ = load_checkpoint(res.model, name=cls.model_name)
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.allclose(bn.running_mean, torch.stack([m for m, _ in stats]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([v for _, v in stats]).mean(0), rtol=1e-4, atol=1e-6)
    assert not torch.equal(stats[0][0], stats[1][0])  # different batches, not one batch three times
    from hyperlips.models import create_model

    momenta = [m.momentum for m in create_model(cls.model_name).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m.momentum for m in trainer.stage.bn_module().modules() if isinstance(m, torch.nn.BatchNorm2d)] == momenta


def test_a_training_checkpoint_loads_as_its_network(sync_view, tmp_path):
    """``RUN/checkpoints/step_N.pt`` (weights + optimiser + RNG state) loads wherever a model file does."""
    from hyperlips.errors import CheckpointError
    from hyperlips.models import load_checkpoint, read_state_dict
    from hyperlips.train import loop

    res = _trainer("sync", sync_view, tmp_path / "run", max_steps=1, bn_batches=1).fit()
    step_file = tmp_path / "run/checkpoints/step_000000001.pt"
    a, info = read_state_dict(step_file, "syncnet")
    b, _ = read_state_dict(res.model, "syncnet")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    net, _ = load_checkpoint(step_file, name="syncnet")
    assert sum(p.numel() for p in net.parameters()) > 0
    ck = loop.read_checkpoint(step_file)
    ck["models"] = {"discriminator": ck["models"]["syncnet"]}
    torch.save(ck, tmp_path / "disc_only.pt")
    with pytest.raises(CheckpointError, match="without a sync expert or generator"):
        read_state_dict(tmp_path / "disc_only.pt", "syncnet")


# ---------------------------------------------------------------------------------------------- torchrun
def test_torchrun_two_processes_on_cpu(sync_view, tmp_path):
    from hyperlips.models import load_checkpoint
    from hyperlips.train.checkpoints import read_checkpoint

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
           "-m", "hyperlips.cli", "train", "sync", str(sync_view), "--out", str(tmp_path / "run"),
           "--max-steps", "2", "--batch-size", "2", "--workers", "0", "--val-every", "2", "--val-samples", "4",
           "--threads", "1", "--image-every", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "over 2 process(es)" in res.stdout
    model, info = load_checkpoint(tmp_path / "run/model.safetensors")
    assert info.name == "syncnet" and info.step == 2
    ck = read_checkpoint(tmp_path / "run/checkpoints/step_000000002.pt")
    assert len(ck["rng"]) == 2 and ck["data"]["world"] == 2
    assert not any(k.startswith("module.") for k in ck["models"]["syncnet"])
    scalars = [json.loads(line) for line in (tmp_path / "run/scalars.jsonl").read_text().splitlines()]
    assert any("val/auc" in r for r in scalars)


def test_ctrl_c_under_torchrun_stops_every_process_after_one_step_with_a_checkpoint(sync_view, tmp_path):
    """Ctrl-C at a terminal running torchrun: the signal reaches every process of the foreground group, and torchrun
    passes it on again. The processes stopped at once, the steps since the last checkpoint lost; now they agree on a
    step, stop after it together and write its checkpoint, which --resume continues."""
    import signal

    from hyperlips.train.checkpoints import latest_checkpoint

    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(30500 + os.getpid() % 1000),
           "-m", "hyperlips.cli", "train", "sync", str(sync_view), "--out", str(run), "--max-steps", "100000",
           "--batch-size", "2", "--workers", "0", "--val-every", "100000", "--threads", "1", "--image-every", "0",
           "--set", "ckpt_every=100000", "--set", "log_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_logged_steps(proc, run)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to torchrun and both processes
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    found = latest_checkpoint(run)
    assert found is not None, err[-3000:]  # a checkpoint at the step they stopped after, of both processes
    stopped = int(found[1]["step"])
    assert stopped >= 3 and f"stopped at step {stopped}" in err, err[-3000:]
    assert len(found[1]["rng"]) == 2 and found[1]["data"]["world"] == 2
    res = subprocess.run([*cmd[:-4], "--resume", "--max-steps", str(stopped + 1)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert int(latest_checkpoint(run)[1]["step"]) == stopped + 1


def test_one_stop_request_reaching_a_process_twice_under_a_launcher_is_one(monkeypatch):
    """Under torchrun (or a scheduler) the same signal can reach a process from two senders a moment apart: that is
    one request, to stop after the step; another signal, or the same one later, stops at once, as alone."""
    import signal
    from types import SimpleNamespace

    from hyperlips.train import interrupts

    said = []
    trainer = SimpleNamespace(dist=SimpleNamespace(enabled=True), say=said.append)
    alone = SimpleNamespace(dist=SimpleNamespace(enabled=False), say=said.append)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # (a run in the background ignores Ctrl-C)
    try:
        with interrupts.deferred_interrupt(trainer) as interrupted:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # passed on by the launcher
            assert interrupted == [signal.SIGINT] and len(said) == 1
            with pytest.raises(interrupts.Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
            monkeypatch.setattr(interrupts, "REPEAT_SECONDS", 0.0)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        monkeypatch.undo()
        with interrupts.deferred_interrupt(alone) as interrupted:
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)


def test_exchanges_between_processes_go_through_the_store_and_leave_nothing_there():
    """broadcast, gather, all_true and barrier between two ranks (threads here, sharing one store as torchrun's
    processes share the group's store): the right values on each rank, and every key cleared once all have read."""
    import threading

    from torch.distributed import HashStore

    from hyperlips.train.distributed import Dist

    store = HashStore()
    store.set_timeout(__import__("datetime").timedelta(seconds=30))
    results: dict[int, list] = {}

    def rank(r: int) -> None:
        d = Dist(rank=r, world=2, enabled=True, store=store)
        got = [d.broadcast({"from": r, "t": torch.arange(3) * (r + 1)}), d.gather(("rank", r)), d.all_true(r == 0),
               d.all_true(True)]
        d.barrier()
        results[r] = got

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1]
    for r in (0, 1):
        sent, gathered, one_false, all_true = results[r]
        assert sent["from"] == 0 and sent["t"].tolist() == [0, 1, 2]  # rank 0's object on both
        assert gathered == [("rank", 0), ("rank", 1)] and one_false is False and all_true is True
    assert store.num_keys() == 0  # the last reader of each call cleared its keys


# ---------------------------------------------------------------------------------------------- command line
def test_train_cli_errors(sync_view, tmp_path):
    res = run_cli("train", "base")
    assert res.returncode == 2 and "no dataset" in res.stderr
    res = run_cli("train", "sync", tmp_path / "nothing", "--out", tmp_path / "run", "--max-steps", "1")
    assert res.returncode == 2 and "not found" in res.stderr
    res = run_cli("train", "sync", sync_view, "--out", tmp_path / "run", "--resume")
    assert res.returncode == 2 and "no checkpoint" in res.stderr
    res = run_cli("train", "hr", sync_view, "--out", tmp_path / "hr")
    assert res.returncode == 2 and "--base" in res.stderr
    res = run_cli("train", "sync", sync_view, "--out", tmp_path / "run", "--set", "lr=fast")
    assert res.returncode == 2 and "lr" in res.stderr
    (tmp_path / "busy" / "checkpoints").mkdir(parents=True)
    shutil.copy(__file__, tmp_path / "busy" / "checkpoints" / "step_000000001.pt")
    res = run_cli("train", "sync", sync_view, "--out", tmp_path / "busy", "--max-steps", "1")
    assert res.returncode == 2 and "--resume" in res.stderr
    # nothing to train is refused before anything is written (it used to name a model that was never written)
    res = run_cli("train", "sync", sync_view, "--out", tmp_path / "zero", "--max-steps", "0")
    assert res.returncode == 2 and "--max-steps must be at least 1" in res.stderr and not (tmp_path / "zero").exists()
    res = run_cli("train", "sync", sync_view, "--out", tmp_path / "zero", "--max-steps", "-3")  # said alike
    assert res.returncode == 2 and "--max-steps must be at least 1 (got -3)" in res.stderr, res.stderr
    for stage in ("base", "sync", "hr", "reader"):  # every stage has the time budget by name (only base had)
        res = run_cli("train", stage, sync_view, "--out", tmp_path / "neg", "--minutes", "-1")
        assert res.returncode == 2 and "--minutes must be more than 0" in res.stderr, (stage, res.stderr)
    (tmp_path / "afile").write_text("x")
    res = run_cli("train", "sync", sync_view, "--out", tmp_path / "afile", "--max-steps", "1")
    assert res.returncode == 2 and "is a file" in res.stderr
    # a folder that is not a dataset leaves no empty run folder behind (one that was there stays)
    res = run_cli("train", "sync", tmp_path / "afile", "--out", tmp_path / "new_run", "--max-steps", "1")
    assert res.returncode == 2 and not (tmp_path / "new_run").exists()
    # a quoted '~' (a script, a settings file) made a run folder named "~" where the command ran
    for cmd in (("train", "sync", sync_view, "--out", "~/run", "--max-steps", "1"),
                ("train", "judge", sync_view, "-o", "~/judge")):
        res = run_cli(*cmd, cwd=tmp_path)
        assert res.returncode == 2 and "begins with a '~' that was not made your home folder" in res.stderr, res.stderr
        assert not (tmp_path / "~").exists()


def test_kill_during_checkpoint_write_keeps_the_previous_one(sync_view, tmp_path):
    """A real SIGKILL while the step-2 checkpoint is being written: step 1 survives and the run resumes."""
    from hyperlips.train.checkpoints import list_checkpoints

    script = tmp_path / "killer.py"
    script.write_text(
        "import os, signal, sys, torch\n"
        "from hyperlips.train import loop\n"
        "real = torch.save\n"
        "def save(obj, f):\n"
        "    if obj.get('step') == 2:\n"
        "        f.write(b'PK\\x03\\x04 half a checkpoint'); f.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(obj, f)\n"
        "loop.atomic_save.__defaults__ = (save,)\n"
        "from hyperlips.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["train", "sync", str(sync_view), "--out", str(tmp_path / "run"), "--max-steps", "3", "--batch-size", "2",
            "--workers", "0", "--threads", "1", "--ckpt-every", "1", "--val-every", "0", "--image-every", "0",
            "--quiet"]
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1]
    assert list((tmp_path / "run/checkpoints").glob(".step_000000002.pt.tmp-*"))  # the half-written file
    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1, 2, 3]
    assert not list((tmp_path / "run/checkpoints").glob(".*tmp*"))
    assert "to step 3" in res.stdout


def test_shipped_configs_load_by_name_from_the_installed_package(tmp_path, monkeypatch):
    """The configs lived in the source checkout only: an installed package's `train --help` and docs named files
    it did not have. They are in the package, and a name (or the old `configs/NAME.yaml`) finds them."""
    from hyperlips.errors import UserError
    from hyperlips.train.config import BUILT_IN_CONFIGS, build_config, load_config

    files = sorted(BUILT_IN_CONFIGS.glob("*.yaml"))
    assert {f.stem for f in files} >= {"sync", "base", "hr", "small-cpu"}
    for f in files:
        stage = f.stem if f.stem in ("sync", "base", "hr") else "base"
        cfg = build_config(stage, f)
        assert cfg.stage == stage and cfg.batch_size >= 1
    monkeypatch.chdir(tmp_path)
    assert load_config("small-cpu") == load_config("configs/small-cpu.yaml") == load_config(
        BUILT_IN_CONFIGS / "small-cpu.yaml")
    assert load_config("base")["batch_size"] != load_config("small-cpu")["batch_size"]
    (tmp_path / "small-cpu.yaml").write_text("batch_size: 7\n")  # a file of the user's own comes first
    assert load_config("small-cpu.yaml") == {"batch_size": 7}
    with pytest.raises(UserError, match=r"config file not found: nope.yaml \(the built-in ones: base, hr, "
                                        r"small-cpu, sync\)"):
        load_config("nope.yaml")


def test_the_printed_command_quotes_paths_for_a_shell():
    """A model named with a space pastes into a shell as it is printed."""
    from hyperlips.train.commands import usage_hint

    hint = usage_hint("base", Path("my runs/model.safetensors"))
    assert hint.endswith("--checkpoint 'my runs/model.safetensors'"), hint
    assert usage_hint("hr", Path("hr.safetensors"), "a b.safetensors").endswith(
        "--checkpoint 'a b.safetensors' --hr-checkpoint hr.safetensors")
