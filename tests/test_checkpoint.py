"""Checkpoints: the original .pth layouts and our safetensors format load to identical weights and outputs, the network
is recognised from its keys, and every bad file ends in a one-line CheckpointError."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from hyperlips.config import ModelConfig
from hyperlips.errors import CheckpointError, UserError
from hyperlips.models import (
    MODEL_NAMES,
    CheckpointInfo,
    HRDecoder,
    HyperLipsBase,
    create_model,
    identify_network,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base() -> HyperLipsBase:
    torch.manual_seed(10)
    m = create_model("hyperlips-base")
    _randomise_bn(m)
    return m.eval()


@pytest.fixture(scope="module")
def base_inputs():
    g = torch.Generator().manual_seed(11)
    return torch.randn(1, 1, 80, 16, generator=g), torch.rand(1, 6, 128, 128, generator=g)


@pytest.fixture()
def hr():
    torch.manual_seed(12)
    m = create_model("hyperlips-hr-128")
    _randomise_bn(m)
    return m.eval()


def _randomise_bn(model):
    """Non-trivial running statistics, so a load that skipped the buffers would show."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(123)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _hr_out(m):
    x = torch.rand(2, 6, 128, 128, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        return m(x)


# ------------------------------------------------------------------------------------------------- round trips


def test_base_official_pth_round_trip(base, base_inputs, tmp_path):
    path = save_checkpoint(base, tmp_path / "base.pth", "hyperlips-base", step=169000, official=True)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert raw["optimizer"] is None and raw["global_step"] == 169000
    model, info = load_checkpoint(path, name="hyperlips-base")
    assert isinstance(model, HyperLipsBase) and not model.training
    assert (info.name, info.format, info.step, info.path) == ("hyperlips-base", "pth", 169000, path)
    _assert_same_weights(base, model)
    with torch.no_grad():
        assert torch.equal(model(*base_inputs), base(*base_inputs))


def test_base_safetensors_round_trip(base, base_inputs, tmp_path):
    cfg = {"extra": {"dataset": "grid"}, "lr": 1e-4}
    path = save_checkpoint(base, tmp_path / "base.safetensors", "hyperlips-base", config=cfg, step=42)
    assert sorted(os.listdir(tmp_path)) == ["base.safetensors"]  # no temporary file left behind
    model, info = load_checkpoint(path)  # name from the metadata
    assert isinstance(info, CheckpointInfo)
    assert (info.name, info.format, info.step) == ("hyperlips-base", "safetensors", 42)
    assert info.config["extra"] == {"dataset": "grid"} and info.config["lr"] == 1e-4
    assert ModelConfig.from_dict(info.config) == ModelConfig(name="hyperlips-base", img_size=128,
                                                             extra={"dataset": "grid"})
    _assert_same_weights(base, model)
    with torch.no_grad():
        assert torch.equal(model(*base_inputs), base(*base_inputs))


def test_a_safetensors_path_that_is_not_utf8_saves_and_loads(hr, tmp_path):
    """A name in Latin-1 bytes (an old archive; or any accented name under another locale): the safetensors library
    takes only UTF-8 paths, so a good file read as "corrupt or truncated", and finetune trained for its whole budget
    and then failed to write its model."""
    from hyperlips.models.metadata import read_metadata

    for where in ("m\xe9.safetensors", "run\xe9"):  # a file, and a folder
        path = os.fsdecode(os.fsencode(tmp_path) + b"/" + where.encode("latin-1"))
        save_checkpoint(hr, path, "hyperlips-hr-128", config=ModelConfig(name="hyperlips-hr-128"), step=7)
        model, info = load_checkpoint(path)
        assert (info.name, info.step) == ("hyperlips-hr-128", 7)
        _assert_same_weights(hr, model)
    assert read_metadata(path + "/model.safetensors")["step"] == 7


@pytest.mark.parametrize("layout", ["dict", "bare", "module-dict", "module-bare"])
def test_official_layouts_load(layout, hr, tmp_path):
    sd = hr.state_dict()
    if layout.startswith("module"):
        sd = {f"module.{k}": v for k, v in sd.items()}  # DataParallel
    obj = {"state_dict": sd, "optimizer": {"state": {}, "param_groups": []}, "global_step": 3000,
           "global_epoch": 2} if layout.endswith("dict") else sd
    path = tmp_path / "hr.pth"
    torch.save(obj, path)
    model, info = load_checkpoint(path)  # recognised from the keys
    assert isinstance(model, HRDecoder) and model.rescaling == 1
    assert info.name == "hyperlips-hr-128" and info.format == "pth"
    assert info.step == (3000 if layout.endswith("dict") else None)
    _assert_same_weights(hr, model)
    assert torch.equal(_hr_out(model), _hr_out(hr))


def test_folder_round_trip(hr, tmp_path):
    folder = tmp_path / "run1"
    save_checkpoint(hr, folder, "hyperlips-hr-128", config=ModelConfig(name="hyperlips-hr-128"), step=5)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["step"] == 5
    model, info = load_checkpoint(folder, device="cpu")
    assert (info.name, info.format, info.step) == ("hyperlips-hr-128", "folder", 5)
    assert next(model.parameters()).device.type == "cpu"
    _assert_same_weights(hr, model)
    assert torch.equal(_hr_out(model), _hr_out(hr))


def test_overwrite_and_failed_write_keep_the_old_file(hr, tmp_path, monkeypatch):
    path = tmp_path / "hr.safetensors"
    save_checkpoint(hr, path, "hyperlips-hr-128", step=1)
    save_checkpoint(hr, path, "hyperlips-hr-128", step=2)
    assert read_state_dict(path)[1].step == 2
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(hr, path, "hyperlips-hr-128", step=3)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["hr.safetensors"]


def test_a_write_that_fails_names_the_file_it_was_writing(tmp_path):
    """The safetensors writer meeting a full disk (here a file size limit, the same failed write) raised its own
    error, "Error while serializing: I/O error: ... (os error 27)": a traceback from every command that exports
    weights. It is the OSError it was, naming the file, and no temporary file is left."""
    import subprocess
    import sys

    code = ("import os, resource, sys, torch\n"
            "from hyperlips.models import create_model, save_checkpoint\n"
            "model = create_model('hyperlips-lite')\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "try:\n"
            "    save_checkpoint(model, sys.argv[1], 'hyperlips-lite')\n"
            "except OSError as e:\n"
            "    print(e.errno, e.filename)\n")
    target = tmp_path / "model.safetensors"
    res = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["27", str(target)], res.stdout
    assert os.listdir(tmp_path) == []


def test_save_refuses_weights_of_another_network(hr, tmp_path):
    with pytest.raises(ValueError, match="hyperlips-hr-256"):
        save_checkpoint(hr, tmp_path / "x.safetensors", "hyperlips-hr-256")
    assert not (tmp_path / "x.safetensors").exists()


def test_identify_every_network(base):
    for name in MODEL_NAMES:
        model = base if name == "hyperlips-base" else create_model(name)
        assert identify_network(model.state_dict()) == name
    sd = create_model("hr-disc").state_dict()
    sd.pop("binary_pred.0.bias")
    assert identify_network(sd) is None


@pytest.mark.parametrize("name", ["hyperlips-hr-256", "hyperlips-hr-512", "hr-disc"])
def test_infer_network_from_file(name, tmp_path):
    model = create_model(name)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded, info = load_checkpoint(path)
    assert info.name == name and type(loaded) is type(model)
    _assert_same_weights(model, loaded)


# ------------------------------------------------------------------------------------------------- errors


def _error(path, name=None) -> str:
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, name=name)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    assert isinstance(exc.value, UserError)
    return msg


@pytest.fixture()
def hr_files(hr, tmp_path):
    pth = save_checkpoint(hr, tmp_path / "hr.pth", "hyperlips-hr-128", official=True)
    st = save_checkpoint(hr, tmp_path / "hr.safetensors", "hyperlips-hr-128")
    return pth, st


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.pth")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pth"
    p.touch()
    assert "empty" in _error(p)


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_checkpoint(which, keep, hr_files, tmp_path):
    src = hr_files[which]
    data = src.read_bytes()
    bad = tmp_path / f"cut{src.suffix}"
    bad.write_bytes(data[: int(len(data) * keep)])
    assert "truncated" in _error(bad)


def _flip_a_bit_midway(src, dst):
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the biggest tensor's bytes: torch.load reads a wrong number, no error
    dst.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_pth_is_reported_not_loaded(hr_files, tmp_path):
    bad = tmp_path / "flipped.pth"
    _flip_a_bit_midway(hr_files[0], bad)
    torch.load(bad, map_location="cpu", weights_only=True)  # torch itself takes it
    msg = _error(bad)
    assert "damaged" in msg and "does not match its checksum" in msg, msg


def test_a_training_checkpoint_with_a_flipped_bit_is_passed_over_for_the_one_before(tmp_path, capsys):
    from hyperlips.train.checkpoints import CKPT_FORMAT, atomic_save, latest_checkpoint

    run = tmp_path / "run"
    for step in (1, 2):
        atomic_save({"format": CKPT_FORMAT, "step": step, "optimizers": {"m": torch.full((512, 512), float(step))}},
                    run / f"checkpoints/step_{step:09d}.pt")
    newest = run / "checkpoints/step_000000002.pt"
    _flip_a_bit_midway(newest, newest)
    path, ck = latest_checkpoint(run)
    assert path.name == "step_000000001.pt" and ck["step"] == 1
    err = capsys.readouterr().err
    assert "skipping" in err and "step_000000002.pt: unreadable training checkpoint (damaged: its record" in err, err


def test_random_bytes(tmp_path):
    g = torch.Generator().manual_seed(14)
    data = bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist())
    for name in ("junk.pth", "junk.bin2"):
        p = tmp_path / name
        p.write_bytes(data)
        msg = _error(p)
        assert "not a" in msg and "checkpoint" in msg


def test_json_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"name": {"model": "hyperlips-base"}, "step": 1}))
    assert "not a checkpoint" in _error(p) and "JSON" in _error(p)


def test_hr_checkpoint_given_as_base(hr_files):
    for path in hr_files:
        msg = _error(path, name="hyperlips-base")
        assert "'hyperlips-hr-128'" in msg and "'hyperlips-base'" in msg and "expected" in msg


def test_hr_variant_mismatch(tmp_path):
    path = tmp_path / "hr256.pth"
    torch.save({"state_dict": create_model("hyperlips-hr-256").state_dict()}, path)
    msg = _error(path, name="hyperlips-hr-128")
    assert "holds 'hyperlips-hr-256'" in msg


def test_wrong_shape(hr, tmp_path):
    sd = hr.state_dict()
    sd["conv_base.0.conv_block.0.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, path)
    for name in (None, "hyperlips-hr-128"):
        msg = _error(path, name=name)
        assert "conv_base.0.conv_block.0.weight is [64, 3, 3, 3], expected [64, 6, 3, 3]" in msg


def test_weights_that_are_not_numbers_are_refused(hr, tmp_path):
    """A checkpoint whose weights hold NaN loaded and rendered a blank mouth without a word."""
    sd = {k: v.clone() for k, v in hr.state_dict().items()}
    sd["conv_base.0.conv_block.0.weight"][0, 0, 0, 0] = float("nan")
    sd["output_block.1.bias"][:] = float("inf")
    for path in (tmp_path / "nan.pth", tmp_path / "nan.safetensors"):
        save_checkpoint(sd, path, "hyperlips-hr-128", official=path.suffix == ".pth")
        msg = _error(path)
        assert "not numbers (NaN or infinite), in conv_base.0.conv_block.0.weight and 1 more" in msg, msg
    save_checkpoint(hr.state_dict(), tmp_path / "fine.safetensors", "hyperlips-hr-128")
    load_checkpoint(tmp_path / "fine.safetensors")  # finite weights load


def test_missing_and_unexpected_keys(hr, tmp_path):
    sd = hr.state_dict()
    for k in ("output_block.1.bias", "up_conv.1.conv_block.1.running_var"):
        del sd[k]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    msg = _error(path, name="hyperlips-hr-128")
    assert "2 missing key(s): up_conv.1.conv_block.1.running_var, output_block.1.bias" in msg
    assert "1 unexpected key(s): extra.weight" in msg


def test_foreign_state_dict(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(10)}, path)
    msg = _error(path)
    assert "not a HyperLips checkpoint" in msg and "conv1.weight" in msg


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    assert "holds list" in _error(path)
    path = tmp_path / "model.pth"
    torch.save(HRDecoder(1), path)  # a pickled module: refused by weights_only loading
    assert "cannot be loaded safely" in _error(path)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "model.safetensors" in _error(tmp_path)


def test_bad_metadata(hr, tmp_path):
    sd = {k: v.contiguous() for k, v in hr.state_dict().items()}
    path = tmp_path / "lying.safetensors"
    save_file(sd, str(path), metadata={"hyperlips": json.dumps({"name": "hyperlips-base"})})
    msg = _error(path)
    assert "metadata says 'hyperlips-base'" in msg and "'hyperlips-hr-128'" in msg
    path = tmp_path / "garbled.safetensors"
    save_file(sd, str(path), metadata={"hyperlips": "{not json"})
    assert "not valid JSON" in _error(path)
    # safetensors without our metadata still loads: the network is recognised from the keys
    path = tmp_path / "plain.safetensors"
    save_file(sd, str(path))
    assert load_checkpoint(path)[1].name == "hyperlips-hr-128"


def test_unknown_name(hr_files):
    assert "unknown model name" in _error(hr_files[0], name="hyperlips-hr-1024")


def test_weights_named_with_nearly_255_bytes_are_written(hr, tmp_path):
    """A model name the file system takes (250 bytes) was refused as "File name too long": the hidden working file
    beside it (its name and a dozen bytes more) was not; it is cut to fit, and nothing is left beside the file."""
    from hyperlips.errors import hidden_name

    path = tmp_path / ("m" * 238 + ".safetensors")
    save_checkpoint(hr, path, "hyperlips-hr-128", step=1)
    assert read_state_dict(path)[1].step == 1 and os.listdir(tmp_path) == [path.name]
    assert len(os.fsencode(hidden_name(path.name, ".12345.0a1b2c3d.tmp"))) == 255
    assert hidden_name("short.safetensors", ".tmp") == ".short.safetensors.tmp"
