"""HyperLips-Lite: shapes, cost, the copied upper rows, the mouth-shape path, and its config travelling in checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hyperlips.models import HyperLipsLite, LiteConfig, create_model, load_checkpoint, save_checkpoint
from hyperlips.models.checkpoint import read_state_dict
from hyperlips.errors import CheckpointError


@pytest.fixture(scope="module")
def lite(one_torch_thread) -> HyperLipsLite:
    torch.manual_seed(0)
    return create_model("hyperlips-lite").eval()


STEPS = 57  # the default window: 56 steps, one more for the shape's smoothing (80 ms) to read inside it


def _inputs(n: int, steps: int = STEPS, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 80, steps, generator=g), torch.rand(n, 6, 128, 128, generator=g)


def test_frames_and_windows_give_the_same_faces(lite):
    audio, faces = _inputs(6)
    with torch.no_grad():
        flat = lite(audio, faces)
        # (B=2, T=3) windows, frames flattened time-major as Base does
        win = lite(audio.view(3, 2, 1, 80, STEPS).transpose(0, 1), faces.view(3, 2, 6, 128, 128).permute(1, 2, 0, 3, 4))
    assert flat.shape == (6, 3, 128, 128)
    assert win.shape == (2, 3, 3, 128, 128)
    assert torch.allclose(win.permute(2, 0, 1, 3, 4).reshape(6, 3, 128, 128), flat, atol=1e-6)
    assert float(flat.min()) >= 0.0 and float(flat.max()) <= 1.0


def test_rows_above_top_are_the_input_and_the_mouth_follows_the_shape(lite):
    audio, faces = _inputs(2)
    with torch.no_grad():
        out = lite(audio, faces)
        r0 = int(round(lite.config.top * 32)) * 4  # 48 rows
        assert torch.equal(out[:, :, :r0], faces[:, :3, :r0])
        s = lite.audio_encoder(audio)
        assert torch.allclose(lite.render(faces, s), out)
        other = lite.render(faces, s + 3.0)
    assert (other[:, :, r0:] - out[:, :, r0:]).abs().max() > 1e-5  # the shape drives the generated rows (weakly at init)


def test_cost_is_within_the_lite_budget(lite):
    audio, faces = _inputs(1)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        lite(audio, faces)
    gflop = fc.get_total_flops() / 1e9  # 2 x multiply-adds
    assert 0.05 < gflop <= 0.4, gflop
    assert sum(p.numel() for p in lite.parameters()) < 5_000_000  # fp16 file far below 20 MB


def test_shape_gain_scales_the_predicted_mouth():
    torch.manual_seed(3)
    plain = HyperLipsLite().eval()
    loud = HyperLipsLite(LiteConfig(shape_gain=2.0)).eval()
    loud.load_state_dict(plain.state_dict())
    audio, faces = _inputs(2)
    with torch.no_grad():
        assert torch.allclose(loud.predict_shape(audio), 2 * plain.audio_encoder(audio))
        assert torch.allclose(loud(audio, faces), plain.render(faces, 2 * plain.audio_encoder(audio)))


def test_wrong_inputs_are_refused_with_the_expected_shapes(lite):
    audio, faces = _inputs(2)
    with pytest.raises(ValueError, match=r"\(2,1,80,57\)"):
        lite(audio[:, :, :, :16], faces)
    with pytest.raises(ValueError, match=r"\(N,6,128,128\)"):
        lite(audio, faces[:, :3])
    with pytest.raises(ValueError, match="shape must be"):
        lite.render(faces, torch.zeros(2, 5))


def test_config_travels_in_the_checkpoint(tmp_path):
    cfg = LiteConfig(widths=(8, 16, 32, 64), out_width=8, mel_steps=16, audio_width=32)
    torch.manual_seed(1)
    small = HyperLipsLite(cfg).eval()
    path = save_checkpoint(small, tmp_path / "small.safetensors", "hyperlips-lite", step=7)
    model, info = load_checkpoint(path)
    assert isinstance(model, HyperLipsLite) and model.config == cfg
    assert info.name == "hyperlips-lite" and info.step == 7 and info.config["extra"]["widths"] == [8, 16, 32, 64]
    assert model.mel_steps == 57  # 16 configured: lengthened for the shape's smoothing to read inside the window
    audio, faces = _inputs(2, steps=model.mel_steps)
    with torch.no_grad():
        assert torch.equal(model(audio, faces), small(audio, faces))
    # a default-size Lite is not this one, and Base is not Lite
    with pytest.raises(CheckpointError, match="hyperlips-lite"):
        read_state_dict(path, name="hyperlips-base")
    with pytest.raises(ValueError, match="safetensors"):
        save_checkpoint(small, tmp_path / "small.pth", "hyperlips-lite", official=True)
