"""The weights shipped in the package (``models.shipped``): found without a path, fp16, at most 20 MB, with a card;
what every command does with them by default, and without them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import own_and_late_offsets

MAX_BYTES = 20 * 1024 * 1024


def _safetensors_dtypes(path) -> set[str]:
    """The floating-point dtypes stored (BatchNorm's integer batch counters are left out)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"].startswith(("F", "BF"))}


NAMES = {"starter": "hyperlips-lite", "expert": "syncnet-lite", "reader": "mouth-reader", "judge": "sync-judge"}
LABELS = {"reader": "mouth reader", "judge": "sync judge"}


@pytest.mark.parametrize("kind", list(NAMES))
def test_the_package_ships_its_weights(kind):
    from hyperlips.models import load_checkpoint, shipped

    found = getattr(shipped, kind)()
    assert found is not None, f"no shipped {kind} in {shipped.WEIGHTS_DIR}"
    assert found.path.parent == shipped.WEIGHTS_DIR
    assert found.path.stat().st_size <= MAX_BYTES
    assert _safetensors_dtypes(found.path) == {"F16"}
    assert found.name == NAMES[kind]
    assert {"version", "data", "steps", "cpu_hours", "held_out"} <= set(found.card), found.card
    assert found.label.startswith(f"shipped {LABELS.get(kind, kind)} v{found.card['version']}")
    net, info = load_checkpoint(found.path)
    assert info.name == found.name and all(p.dtype == torch.float32 for p in net.parameters())


def test_write_shipped_halves_the_weights_and_keeps_the_card(tmp_path, monkeypatch):
    from hyperlips.models import create_model, load_checkpoint, save_checkpoint, shipped
    from hyperlips.models.metadata import read_metadata

    torch.manual_seed(3)
    net = create_model("syncnet-lite", {"face_widths": [8, 16, 32], "audio_widths": [8, 16, 32], "embed": 32}).eval()
    src = save_checkpoint(net, tmp_path / "run_model.safetensors", "syncnet-lite", step=123,
                          config={"training": {"stage": "sync", "data": "my/data", "run": "my/run"}})
    dst = shipped.write_shipped(src, tmp_path / shipped.EXPERT_FILE, {"version": 7, "data": "a test"})
    assert _safetensors_dtypes(dst) == {"F16"} and _safetensors_dtypes(src) == {"F32"}
    meta = read_metadata(dst)
    assert meta["card"] == {"version": 7, "data": "a test"} and meta["name"] == "syncnet-lite" and meta["step"] == 123
    assert "training" in read_metadata(src) and "training" not in meta  # where it was trained stays out
    found = shipped.expert(tmp_path)
    assert found is not None and found.card["version"] == 7 and found.label.startswith("shipped expert v7")
    half, _ = load_checkpoint(dst)
    audio, faces = torch.randn(4, 1, 80, 16), torch.rand(4, 15, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(half.similarity(audio, faces), net.similarity(audio, faces), atol=5e-3, rtol=0)
    assert shipped.starter(tmp_path) is None  # only what is there is found
    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", "1")
    assert shipped.expert(tmp_path) is None


def test_without_shipped_weights_sync_says_what_to_pass(monkeypatch, tmp_path):
    from hyperlips.cli import main
    from hyperlips.errors import UserError
    from hyperlips.models import shipped
    from hyperlips.pipeline import LipSync

    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", "1")
    with pytest.raises(UserError, match="the shipped starter is hidden by HYPERLIPS_NO_SHIPPED=1 in the environment: "
                                        "pass --checkpoint"):  # ("this build ships none" sent users to reinstall)
        LipSync()
    assert LipSync(untrained=True, model="lite").weights == "untrained (random) weights"
    import argparse

    from hyperlips.eval.commands import _need_weights

    with pytest.raises(UserError, match=r"pass --checkpoint MODEL \(the shipped starter is hidden by HYPERLIPS_NO"):
        _need_weights(argparse.Namespace(checkpoint=None, untrained=False), "eval: pass --checkpoint MODEL")
    monkeypatch.delenv("HYPERLIPS_NO_SHIPPED")
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)  # a build without weights
    with pytest.raises(UserError, match="this build ships no starter: pass --checkpoint"):
        LipSync()


@pytest.mark.parametrize("value", ["", "0", " 0 ", "false", "No", "OFF"])
def test_the_shipped_weights_are_hidden_only_by_a_value_that_means_on(monkeypatch, value):
    """HYPERLIPS_NO_SHIPPED=false hid the weights (anything but "" and 0 did), where HYPERLIPS_DEBUG=false is off."""
    from hyperlips.models import shipped

    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", value)
    assert not shipped.hidden()
    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", "yes")
    assert shipped.hidden() and shipped.starter() is None


def test_lipsync_uses_the_starter_by_default():
    from hyperlips.models import shipped
    from hyperlips.pipeline import LipSync

    ls = LipSync(device="cpu")
    starter = shipped.starter()
    assert ls.model_name == "hyperlips-lite" and ls.weights == f"the {starter.label}"
    from hyperlips.models import load_checkpoint
    from hyperlips.models.inference import fold_batchnorm

    ref, _ = load_checkpoint(starter.path)
    fold_batchnorm(ref.eval())  # as sync runs it: its batch norms folded into the convolutions
    assert ref.state_dict().keys() == ls.base.state_dict().keys()
    for k, v in ref.state_dict().items():  # the starter's weights, in the precision sync runs (auto: bf16 or fp32)
        got = ls.base.state_dict()[k].contiguous()
        assert torch.equal(v.to(got.dtype), got), k


def test_eval_scores_with_the_shipped_judge_by_default(real_data, tmp_path, capsys):
    """``eval`` on a real clip with its own speech and no --expert: the shipped sync judge's offset and confidence
    are reported (the report names it); ``--expert off`` leaves them out."""
    from hyperlips.cli import main

    clip = real_data / "retalking" / "face2.mp4"
    assert main(["eval", str(clip), "-o", str(tmp_path / "a"), "--quiet"]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    found = report["sync"]["expert"]["generated"]
    assert abs(found["offset"]) <= 1 and found["windows"] > 90 and found["confidence"] > 0
    assert found["scorer"] == "judge" and found["window"] == 25
    assert "Our sync judge (mouth shapes, 25-frame windows)" in (tmp_path / "a" / "report.md").read_text()
    assert main(["eval", str(clip), "-o", str(tmp_path / "b"), "--quiet", "--expert", "off"]) == 0
    off = json.loads((tmp_path / "b" / "report.json").read_text())
    assert "generated" not in off["sync"]["expert"] and "unavailable" in off["sync"]["expert"]["status"]
    capsys.readouterr()


def test_shipped_expert_finds_a_three_frame_delay_on_people_it_never_saw(real_data, tmp_path):
    """The shipped expert on held-out speakers (no clip of ``real/`` was in its training data): each clip with its
    own speech is reported within a frame of offset 0, and with that speech 3 frames late (120 ms of silence in
    front) exactly 3 frames later."""
    from hyperlips.eval.sync_score import load_expert
    from hyperlips.models import shipped

    expert = load_expert(shipped.expert().path)
    for clip in (real_data / "retalking" / "face2.mp4", real_data / "hyperlips" / "video2.mp4"):
        on_time, delayed = own_and_late_offsets(clip, expert, tmp_path)
        print(clip.name, "offsets", on_time.offset, delayed.offset, "confidence", round(on_time.confidence, 3))
        assert abs(on_time.offset) <= 1 and delayed.offset - on_time.offset == 3, (clip.name, on_time.offset,
                                                                                    delayed.offset)


def test_finding_the_shipped_weights_does_not_import_torch():
    """The web server lists the starter without loading a network: finding the weights and reading their cards
    reads the files' headers only (before, it pulled in torch: the server's memory went from 94 to 268 MB)."""
    import subprocess
    import sys

    code = ("import sys; from hyperlips.models import shipped; s = shipped.starter(); e = shipped.expert(); "
            "j = shipped.judge(); assert s is not None and e is not None and j is not None; "
            "assert s.card and e.card and j.card; "
            "from hyperlips.serve import catalog; catalog.shipped_starter(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_reader_loss_uses_the_shipped_reader_by_default():
    from types import SimpleNamespace

    from hyperlips.models import MouthReader, shipped
    from hyperlips.train.config import build_config
    from hyperlips.train.lite import LiteStage

    said: list[str] = []
    cfg = build_config("base", overrides={"model": "hyperlips-lite", "reader_weight": 0.05})
    net = LiteStage._load_reader(cfg, SimpleNamespace(device="cpu", say=said.append))
    assert isinstance(net, MouthReader) and not net.training and not any(p.requires_grad for p in net.parameters())
    assert str(shipped.reader().path) in said[0]
