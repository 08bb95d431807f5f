"""LSE (public SyncNet protocol) and our expert's sync score: features, network, weights loading, offset search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperlips.errors import CheckpointError
from hyperlips.eval.sync_score import (
    expert_face_windows,
    expert_score,
    lse_offset_search,
    lse_score,
    resample_indices,
    similarity_offset_search,
)
from hyperlips.eval.syncnet_v2 import (
    PublicSyncNet,
    load_public_syncnet,
    mfcc,
    protocol_crop,
    protocol_crop_params,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- MFCC
def _test_signal():
    t = np.arange(1600) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * (200 + 3000 * t) * t)
    return np.round(x * 32767).astype(np.int16)


def test_mfcc_matches_python_speech_features():
    # frames 0, 4, 8 of python_speech_features.mfcc(int16 signal, 16000) (version 0.6, defaults), computed offline
    expected = np.array([
        [19.5421067796, 21.6871219721, 6.1865270376, -8.7460379756, -21.8466809046, -29.4557641389, -27.9229049768,
         -19.6215746069, -7.0101234881, 4.410523832, 11.6593036838, 12.1040329237, 7.4450150344],
        [19.5559428733, 20.6787934811, 2.8611577398, -14.1020207426, -26.8576358062, -31.0428778606, -24.18180079,
         -11.2807694439, 3.0937870971, 12.6951998391, 16.3104392883, 13.2247244474, 7.1077641241],
        [19.4999517138, 21.9475703285, 0.1433233733, -19.1738898713, -27.9479478898, -23.6145455102, -10.9272917844,
         -1.0795274038, 2.462991661, 1.7289603541, 3.4079750345, 7.8004861699, 11.7421087056],
    ])
    got = mfcc(_test_signal() / 32768.0)
    assert got.shape == (13, 9)  # 1 + ceil((1600 - 400) / 160)
    np.testing.assert_allclose(got[:, [0, 4, 8]].T, expected, rtol=0, atol=1e-5)  # as docs/evaluation.md states


def test_mfcc_frame_count_and_scale():
    assert mfcc(np.zeros(100)).shape == (13, 1)
    assert mfcc(np.zeros(16000)).shape == (13, 99)
    # int16 scaling moves the log-energy coefficient by log(32768^2) and leaves the others alone
    x = _test_signal() / 32768.0
    a, b = mfcc(x), mfcc(x, int16_scale=False)
    np.testing.assert_allclose(a[0] - b[0], 2 * np.log(32768.0), atol=1e-3)
    np.testing.assert_allclose(a[2:], b[2:], atol=1e-2)
    with pytest.raises(ValueError):
        mfcc(np.zeros(0))


# --------------------------------------------------------------------------------------------- network
def test_public_syncnet_layout_and_shapes():
    net = PublicSyncNet().eval()
    sd = net.state_dict()
    expect = {
        "netcnnaud.0.weight": (64, 1, 3, 3),
        "netcnnaud.18.weight": (512, 256, 5, 4),
        "netfcaud.0.weight": (512, 512),
        "netfcaud.3.weight": (1024, 512),
        "netcnnlip.0.weight": (96, 3, 5, 7, 7),
        "netcnnlip.4.weight": (256, 96, 1, 5, 5),
        "netcnnlip.18.weight": (512, 256, 1, 6, 6),
        "netfclip.3.bias": (1024,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert sum(p.numel() for p in net.parameters()) == 13_631_616
    with torch.inference_mode():
        assert net.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        assert net.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)


def test_load_public_syncnet_refuses_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="--syncnet"):
        load_public_syncnet(None)
    with pytest.raises(CheckpointError, match="not found"):
        load_public_syncnet(tmp_path / "syncnet_v2.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_public_syncnet(junk)
    other = tmp_path / "other.model"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="does not hold the public SyncNet"):
        load_public_syncnet(other)
    # files that hold no tensors at all: each says what it is (an empty file was a traceback, IndexError)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cannot read SyncNet weights: .*empty \(0 bytes\)"):
        load_public_syncnet(empty)
    with pytest.raises(CheckpointError, match=r"a text/JSON file\); expected syncnet_v2.model"):
        load_public_syncnet(junk)
    noise = tmp_path / "noise.model"
    noise.write_bytes(bytes(range(7, 107)))
    with pytest.raises(CheckpointError, match=r"an unknown binary file\); expected syncnet_v2.model"):
        load_public_syncnet(noise)
    tensor = tmp_path / "tensor.model"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="it holds Tensor"):
        load_public_syncnet(tensor)


def test_load_public_syncnet_round_trip(tmp_path):
    torch.manual_seed(0)
    src = PublicSyncNet().eval()
    # the 2017 file has no num_batches_tracked entries: leave them out, as it does
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = torch.randn(3, 1, 13, 20)
    for legacy in (False, True):  # the 2017 file is in torch's old (not zip) format
        path = tmp_path / f"syncnet_v2_{legacy}.model"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        net = load_public_syncnet(path)
        assert not net.training
        with torch.inference_mode():
            np.testing.assert_array_equal(net.forward_aud(x).numpy(), src.forward_aud(x).numpy())


# --------------------------------------------------------------------------------------------- crops
def test_protocol_crop_geometry():
    frame = np.zeros((600, 800, 3), np.uint8)
    # box 100x100 at (300, 200): half size 50, crop rows 200..340, columns 280..420 (crop scale 0.4)
    frame[200:340, 280:420] = 255
    cx, cy, half = protocol_crop_params(np.tile([300, 200, 400, 300], (20, 1)))[0]
    assert (cx, cy, half) == (350, 250, 50)
    crop = protocol_crop(frame, cx, cy, half)
    assert crop.shape == (224, 224, 3)
    assert crop[2:-2, 2:-2].min() == 255
    # a face at the frame corner: the outside is the protocol's grey 110
    crop = protocol_crop(np.zeros((200, 200, 3), np.uint8), 10, 10, 40)
    assert crop[0, 0, 0] == 110 and crop[-1, -1, 0] == 0


def test_protocol_crop_params_median_filter():
    boxes = np.tile([100.0, 100, 200, 200], (30, 1))
    boxes[15] += 80  # one wild detection
    p = protocol_crop_params(boxes)
    assert np.allclose(p[10:20], [150, 150, 50])


def test_resample_indices():
    t25 = np.arange(50) / 25
    np.testing.assert_array_equal(resample_indices(t25), np.arange(50))
    t30 = np.arange(60) / 30
    idx = resample_indices(t30)
    assert len(idx) == 50  # 0 .. 1.96 s at 25 fps
    assert np.all(np.abs(t30[idx] - np.arange(50) / 25) < 1 / 30)


# --------------------------------------------------------------------------------------------- offset search
def test_lse_offset_search_finds_constructed_shift():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((60, 16))
    for d in (-4, 0, 3, 15):
        # audio late by d: the sound of window i sits at audio window i + d
        audio = np.roll(feats, d, axis=0)
        r = lse_offset_search(feats, audio)
        assert r.offset == d
        assert r.to_dict()["syncnet_av_offset"] == -d
        assert r.best < 0.01 + np.linalg.norm(feats, axis=1).mean() * abs(d) / 60 * 2
        assert r.confidence == pytest.approx(np.median(r.curve) - r.curve.min())
        assert len(r.curve) == 31 and r.offsets[0] == -15


def test_similarity_offset_search():
    sim = np.full((10, 31), 0.2)
    sim[:, 15 + 3] = 0.9
    valid = np.ones_like(sim, bool)
    valid[:, 0] = False
    r = similarity_offset_search(sim, valid)
    assert r.offset == 3 and r.best == pytest.approx(0.9) and r.confidence == pytest.approx(0.7)
    assert r.windows == 10
    valid[7:] = False  # three windows without a face in every frame: not scored, not counted (the report said 10)
    assert similarity_offset_search(sim, valid).windows == 7
    with pytest.raises(ValueError):
        similarity_offset_search(sim, np.zeros_like(valid))


class ProbeSyncNet:
    """A see-through stand-in for the public SyncNet: lip feature = which of the 5 frames are bright, audio
    feature = which of the 5 frame periods are loud (MFCC log-energy of the first 25 ms of each period)."""

    def forward_lip(self, x):  # (B,3,5,224,224)
        return (x.mean(dim=(1, 3, 4)) > 100).float() * 10

    def forward_aud(self, x):  # (B,1,13,20)
        return (x[:, 0, 0, 0:20:4] > 15).float() * 10


def _pattern_case(n=80, delay=3, seed=1):
    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, 2, n)
    wav = (rng.standard_normal(n * 640) * 1e-4).astype(np.float32)
    for j in range(n):
        if 0 <= j - delay < n and pattern[j - delay]:
            wav[j * 640 : (j + 1) * 640] += 0.3 * np.sin(np.arange(640) * 0.3)
    return pattern, wav


@pytest.mark.parametrize("delay", [3, -2])
def test_lse_score_recovers_known_shift(delay):
    pattern, wav = _pattern_case(delay=delay)
    crops = np.zeros((len(pattern), 224, 224, 3), np.uint8) + (pattern * 200 + 20).astype(np.uint8)[:, None, None, None]
    r = lse_score(ProbeSyncNet(), crops, wav)
    assert r.offset == delay
    assert r.windows == len(pattern) - 5
    assert r.confidence > 5


def test_lse_score_with_random_public_weights():
    torch.manual_seed(0)
    net = PublicSyncNet().eval()
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (11, 224, 224, 3), dtype=np.uint8)
    wav = (rng.standard_normal(11 * 640) * 0.1).astype(np.float32)
    r = lse_score(net, crops, wav, batch_size=4)
    assert r.windows == 6 and r.curve.shape == (31,) and list(r.offsets) == list(range(-15, 16))
    assert np.isfinite(r.curve).all() and r.best > 0
    # the protocol's definitions: LSE-D = min of the curve, LSE-C = median - min, offset = where the min is
    assert r.best == r.curve.min() and r.offset == r.offsets[int(np.argmin(r.curve))]
    assert r.confidence == pytest.approx(float(np.median(r.curve) - r.curve.min()))
    assert r.at_zero == r.curve[15]
    with pytest.raises(ValueError, match="too short"):
        lse_score(net, crops[:5], wav)


# --------------------------------------------------------------------------------------------- our expert
class ProbeExpert:
    """See-through stand-in for our SyncNet: the brightness of the 5 frames and the loudest mel bin at the centre of the 5
    frame periods, each minus its mean over the window (so the cosine similarity is their correlation)."""

    @staticmethod
    def face_encoder(x):  # (B,15,64,128)
        b = x.view(len(x), 5, 3, 64, 128).mean(dim=(2, 3, 4))
        return b - b.mean(dim=1, keepdim=True)

    @staticmethod
    def audio_encoder(x):  # (B,1,80,16); frame k of the window is centred on mel step 3.2 k + 1.6
        e = x.amax(dim=(1, 2))[:, [2, 5, 8, 11, 14]]
        return e - e.mean(dim=1, keepdim=True)


def test_expert_score_recovers_known_shift():
    from hyperlips.media.audio import melspectrogram

    pattern, wav = _pattern_case(delay=3)
    crops = np.zeros((len(pattern), 128, 128, 3), np.uint8)
    crops[:, 64:] = (pattern * 200 + 20).astype(np.uint8)[:, None, None, None]
    times = np.arange(len(pattern)) / 25
    r = expert_score(ProbeExpert(), crops, times, melspectrogram(wav), 25.0)
    assert r.offset == 3
    assert r.best > r.at_zero + 0.3 and r.confidence > 0.3


def test_expert_windows_and_real_network_shapes():
    from hyperlips.media.audio import melspectrogram
    from hyperlips.models import SyncNet

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (9, 128, 128, 3), dtype=np.uint8)
    w = expert_face_windows(crops)
    assert w.shape == (5, 15, 64, 128)
    np.testing.assert_allclose(w[1, 3:6], crops[2, 64:].transpose(2, 0, 1) / 255.0, atol=1e-6)  # frame-major BGR
    torch.manual_seed(0)
    net = SyncNet().eval()
    wav = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    r = expert_score(net, crops, np.arange(9) / 25, melspectrogram(wav), 25.0, vshift=3)
    assert r.curve.shape == (7,) and r.windows == 5 and 0 <= r.best <= 1


def test_load_expert_refuses_other_networks(tmp_path):
    from hyperlips.eval.sync_score import load_expert
    from hyperlips.models import create_model, save_checkpoint

    path = save_checkpoint(create_model("hyperlips-hr-128"), tmp_path / "hr.safetensors", "hyperlips-hr-128")
    with pytest.raises(CheckpointError, match="not a lip-sync expert"):
        load_expert(path)
    expert = save_checkpoint(create_model("syncnet"), tmp_path / "expert.safetensors", "syncnet")
    assert not load_expert(expert).training
