"""The networks: state dicts identical to the original's, parameter counts, shapes, and the numerics that are not
stored in a checkpoint (BatchNorm settings, activations, pooling, upsampling, hyper-convolutions, the zero-state GRU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hyperlips.errors import UserError
from hyperlips.models import (
    MODEL_NAMES,
    OFFICIAL_NAMES,
    BaseQualityDiscriminator,
    HRDecoder,
    HRQualityDiscriminator,
    HyperLipsBase,
    SyncNet,
    create_model,
)
from hyperlips.models.blocks import ConvBlock, ConvTransposeBlock, flatten_time, unflatten_time
from hyperlips.models.decoder import ConvGRU, RecurrentDecoder, UpsamplingBlock
from hyperlips.models.hyper import BatchConv2d, HyperDoubleConv
from hyperlips.models.mobilenetv3 import MobileNetV3LargeEncoder, SqueezeExcitation

MANIFESTS = {
    "hyperlips-base": "hyperlips_base",
    "hyperlips-hr-128": "hr_decoder_128",
    "hyperlips-hr-256": "hr_decoder_256",
    "hyperlips-hr-512": "hr_decoder_512",
    "syncnet": "sync_expert",
    "base-disc": "base_quality_discriminator",
    "hr-disc": "hr_quality_discriminator",
}

# reference §8.3 (measured on the original classes)
PARAMS = {
    "hyperlips-base": 29_716_503,
    "hyperlips-hr-128": 133_443,
    "hyperlips-hr-256": 170_499,
    "hyperlips-hr-512": 281_667,
    "syncnet": 22_991_744,
    "base-disc": 14_113_793,
    "hr-disc": 1_887_873,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base() -> HyperLipsBase:
    torch.manual_seed(0)
    return create_model("hyperlips-base").eval()


@pytest.fixture(scope="module")
def models(base) -> dict[str, nn.Module]:
    torch.manual_seed(1)
    out = {"hyperlips-base": base}
    out.update({n: create_model(n).eval() for n in OFFICIAL_NAMES if n != "hyperlips-base"})
    return out


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------------- state dicts


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_state_dict_matches_original_manifest(name, models, compat_dir):
    manifest = json.loads((compat_dir / f"{MANIFESTS[name]}.state_dict.json").read_text())
    ours = {k: list(v.shape) for k, v in models[name].state_dict().items()}
    missing = sorted(set(manifest) - set(ours))
    extra = sorted(set(ours) - set(manifest))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    wrong = {k: (ours[k], manifest[k]) for k in manifest if ours[k] != manifest[k]}
    assert not wrong
    assert list(ours) == list(manifest)  # same order too (not needed for loading, but it shows the same layout)


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_parameter_counts(name, models):
    assert _n_params(models[name]) == PARAMS[name]


def test_base_parameter_breakdown(base):
    # reference §5.7
    assert _n_params(base.face_encoder) == 2_972_384
    assert _n_params(base.hyper_control_net.audio_encoder) == 2_971_664
    assert _n_params(base.aspp) == 246_016
    assert _n_params(base.hyper_control_net) == 25_819_888
    assert _n_params(base.decoder) == 585_476
    assert _n_params(base.up_conv) == 74_112
    assert _n_params(base.output_block) == 18_627
    assert [_n_params(getattr(base.hyper_control_net, f"dconv_down{i}")) for i in range(4)] == [
        301_664, 677_136, 1_877_360, 19_186_432]


def test_registry_names_and_errors():
    assert set(OFFICIAL_NAMES) == set(MANIFESTS)
    assert set(MODEL_NAMES) == set(MANIFESTS) | {"hyperlips-lite", "syncnet-lite", "mouth-reader", "sync-judge"}
    assert isinstance(create_model("HR_DISC"), HRQualityDiscriminator)
    assert isinstance(create_model("hyperlips-hr-256"), HRDecoder)
    with pytest.raises(UserError, match="hyperlips-hr-1024.*hyperlips-base"):
        create_model("hyperlips-hr-1024")


def test_mouth_reader_reads_points_in_crop_units_and_checks_its_input():
    from hyperlips.models.mouth_reader import N_POINTS, MouthReader

    reader = create_model("mouth-reader").eval()
    assert isinstance(reader, MouthReader)
    with torch.no_grad():
        pts = reader(torch.rand(2, 3, 128, 128))
    assert pts.shape == (2, N_POINTS, 2) and torch.isfinite(pts).all()
    # rows above `top` are not read
    a, b = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    b[:, :, reader.config.top:] = a[:, :, reader.config.top:]
    with torch.no_grad():
        assert torch.equal(reader(a), reader(b))
    with pytest.raises(ValueError, match=r"\(N,3,128,128\)"):
        reader(torch.rand(1, 3, 96, 96))


def test_import_hyperlips_does_not_import_torch():
    code = "import sys, hyperlips; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------- forward shapes


def test_base_forward_4d(base):
    torch.manual_seed(2)
    audio, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 6, 128, 128)
    with torch.no_grad():
        y = base(audio, faces)
        y1 = base(audio[1:], faces[1:])
    assert y.shape == (2, 3, 128, 128)
    assert torch.isfinite(y).all() and y.min() > 0 and y.max() < 1  # sigmoid output
    torch.testing.assert_close(y[1:], y1, rtol=1e-4, atol=1e-5)  # frames are independent in eval mode


def test_base_forward_5d_is_time_major(base):
    torch.manual_seed(3)
    b, t = 2, 2
    audio, faces = torch.randn(b, t, 1, 80, 16), torch.rand(b, 6, t, 128, 128)
    with torch.no_grad():
        y = base(audio, faces)
        flat = base(flatten_time(audio, 1), flatten_time(faces, 2))
    assert y.shape == (b, 3, t, 128, 128)
    for bi in range(b):
        for ti in range(t):
            torch.testing.assert_close(y[bi, :, ti], flat[ti * b + bi])  # time-major: frame t of item b at t*B+b
    # and the flattening itself is time-major (what train-mode BatchNorm sees as one batch)
    x = torch.arange(2 * 3 * 4).view(2, 3, 4)  # (B=2, C=3, T=4)
    f = flatten_time(x, 2)
    assert f.shape == (8, 3) and torch.equal(f[1 * 2 + 1], x[1, :, 1]) and torch.equal(f[3 * 2 + 0], x[0, :, 3])
    assert torch.equal(unflatten_time(f, 2, 2), x)


def test_base_rejects_bad_shapes(base):
    with pytest.raises(ValueError, match="faces"):
        base(torch.randn(1, 1, 80, 16), torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match="audio"):
        base(torch.randn(1, 1, 80, 20), torch.rand(1, 6, 128, 128))
    with pytest.raises(ValueError, match="audio"):
        base(torch.randn(2, 1, 80, 16), torch.rand(1, 6, 128, 128))
    with pytest.raises(ValueError, match="does not match"):
        base(torch.randn(1, 3, 1, 80, 16), torch.rand(1, 6, 2, 128, 128))


def _with_random_batchnorm_stats(net: nn.Module, seed: int) -> nn.Module:
    # fresh networks have mean 0, var 1, gamma 1, beta 0: batch norms that change nothing would hide a bad fold
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return net.eval()


def test_output_block_first_row_enlarges_only_what_it_needs():
    """Base's full-resolution block from ``first_row`` (even and odd): past the two rows its convolutions pad, the
    full block's rows exactly (it enlarges only the input rows those read)."""
    from hyperlips.models.decoder import OutputBlock

    torch.manual_seed(3)
    block = OutputBlock(32, 6, 16).eval()
    x, src = torch.randn(2, 32, 64, 64), torch.randn(2, 6, 128, 128)
    with torch.no_grad():
        full = block(x, src)
        for first in (1, 2, 3, 42, 43, 64, 69, 125):
            part = block(x, src, first)
            assert part.shape[2] == 128 - first
            assert torch.equal(part[:, :, 2:], full[:, :, first + 2 :]), first


def test_base_first_row_computes_the_full_networks_rows_from_there():
    torch.manual_seed(4)
    net = _with_random_batchnorm_stats(create_model("hyperlips-base"), 0)
    audio, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 6, 128, 128)
    with torch.no_grad():
        full = net(audio, faces)
        for first in (48, 64, 1):
            part = net(audio, faces, first_row=first)
            assert part.shape == full.shape
            torch.testing.assert_close(part[:, :, first:], full[:, :, first:], rtol=0, atol=1e-6)
            assert torch.equal(part[:, :, :first], faces[:, :3, :first])  # above: the input's own rows
        assert (net(audio, faces, first_row=48)[:, :, 47] - full[:, :, 47]).abs().max() > 1e-3
        five = net(audio[None], faces.transpose(0, 1)[None], first_row=48)  # B=1, T=2 -> (1,3,2,128,128)
        torch.testing.assert_close(five[0].transpose(0, 1), net(audio, faces, first_row=48))
    for bad in (-1, 128):
        with pytest.raises(ValueError, match="first_row"):
            net(audio, faces, first_row=bad)


@pytest.mark.parametrize("rescaling", [1, 2, 4])
def test_hr_first_row_computes_the_full_networks_rows_from_there(rescaling):
    torch.manual_seed(6)
    net = _with_random_batchnorm_stats(HRDecoder(rescaling), 2)
    x = torch.rand(2, 6, 128, 128)
    size = 128 * rescaling
    with torch.no_grad():
        full = net(x)
        for first in (48 * rescaling, 7, size - 1):
            part = net(x, first_row=first)
            assert part.shape == full.shape
            torch.testing.assert_close(part[:, :, first:], full[:, :, first:], rtol=0, atol=1e-6)
        part = net(x, first_row=48 * rescaling)
        up = F.interpolate(x[:, :3], scale_factor=float(rescaling), mode="bilinear", align_corners=False)
        torch.testing.assert_close(part[:, :, : 48 * rescaling], up[:, :, : 48 * rescaling])  # above: the input, enlarged
        five = net(x.transpose(0, 1)[None], first_row=48 * rescaling)  # B=1, T=2 (channels second)
        torch.testing.assert_close(five[0].transpose(0, 1), part)
    for bad in (-1, size):
        with pytest.raises(ValueError, match="first_row"):
            net(x, first_row=bad)


@pytest.mark.parametrize("name", ["hyperlips-base", "hyperlips-lite", "hyperlips-hr-256"])
def test_folding_the_batch_norms_keeps_the_outputs(name):
    import copy

    from hyperlips.models.inference import fold_batchnorm

    torch.manual_seed(5)
    net = _with_random_batchnorm_stats(create_model(name), 1)
    folded = copy.deepcopy(net)
    n = fold_batchnorm(folded)
    left = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert n > 0 and len(left) == sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) - n
    if name == "hyperlips-base":  # every 2-D batch norm follows a convolution, the generated ones included
        assert not left and n == 110
    if name.startswith("hyperlips-hr"):
        x = (torch.rand(2, 6, 128, 128),)
    else:
        x = (torch.randn(2, 1, 80, getattr(net, "mel_steps", 16)), torch.rand(2, 6, 128, 128))
    with torch.no_grad():
        torch.testing.assert_close(folded(*x), net(*x), rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(create_model(name))
    low = create_model(name).eval().to(torch.bfloat16)  # computed in float64 on the CPU, stored as the network was
    fold_batchnorm(low)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name", ["hyperlips-base", "hyperlips-lite", "hyperlips-hr-256"])
def test_activations_in_place_keep_the_outputs_and_the_inputs(name):
    """As sync runs them (folded, activations in place): bit for bit the folded network's outputs, first_row
    too, and the caller's tensors untouched."""
    import copy

    from hyperlips.models.inference import activations_in_place, fold_batchnorm

    torch.manual_seed(6)
    net = _with_random_batchnorm_stats(create_model(name), 2)
    fold_batchnorm(net)
    fast = copy.deepcopy(net)
    n = activations_in_place(fast)
    assert n > 0
    if name.startswith("hyperlips-hr"):
        x, kw = (torch.rand(2, 6, 128, 128),), {"first_row": 140}
    else:
        x, kw = (torch.randn(2, 1, 80, getattr(net, "mel_steps", 16)), torch.rand(2, 6, 128, 128)), {}
    if name == "hyperlips-base":
        kw = {"first_row": 69}
    kept = [t.clone() for t in x]
    with torch.no_grad():
        for args in ({}, kw):
            assert torch.equal(fast(*x, **args), net(*x, **args))
    assert all(torch.equal(a, b) for a, b in zip(x, kept))


def test_activations_in_place_only_where_nothing_else_holds_the_tensor():
    from hyperlips.models.blocks import ConvBlock
    from hyperlips.models.inference import activations_in_place

    after_conv = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Identity(), nn.ReLU())
    at_start = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Conv2d(3, 3, 1))  # would overwrite the caller's input
    after_other = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Dropout(), nn.ReLU())  # an unknown module may pass its input
    block = ConvBlock(3, 3, 3, 1, 1, residual=True)
    net = nn.ModuleList([after_conv, at_start, after_other, block]).eval()
    assert activations_in_place(net) == 2
    assert after_conv[2].inplace and not at_start[1].inplace and not after_other[2].inplace
    assert block.act.inplace and block.add_in_place
    x = torch.randn(1, 3, 4, 4)
    kept = x.clone()
    with torch.no_grad():
        at_start(x), block(x)
    assert torch.equal(x, kept)


@pytest.mark.parametrize("name", ["hyperlips-base", "hyperlips-hr-256"])
def test_live_taps_keep_the_outputs_and_cut_base_audio_encoder(name, monkeypatch):
    """As sync runs them: the taps that only meet zero padding left out, the outputs the same to float rounding,
    the parameters and state dict untouched. In Base the dilated 5x5 depthwise convolutions at the end of the audio
    encoder (a 5x1 map) are the ones cut, to their kernel's middle column."""
    import copy

    from hyperlips.models import cpu_convs
    from hyperlips.models.cpu_convs import LiveTapsConv2d, live_taps
    from hyperlips.models.inference import fold_batchnorm, prepare_for_inference

    torch.manual_seed(7)
    net = _with_random_batchnorm_stats(create_model(name), 3)
    as_sync = prepare_for_inference(copy.deepcopy(net))
    fold_batchnorm(net)
    cut = copy.deepcopy(net)
    n = live_taps(cut)
    assert n > 0 and sum(isinstance(m, LiveTapsConv2d) for m in cut.modules()) == n
    assert sum(isinstance(m, LiveTapsConv2d) and max(m.kernel_size) > 1 for m in as_sync.modules()) == n
    assert cut.state_dict().keys() == net.state_dict().keys()
    spans = []
    real = cpu_convs._live_span
    monkeypatch.setattr(cpu_convs, "_live_span", lambda *a: spans.append((a, real(*a))) or spans[-1][1])
    if name == "hyperlips-hr-256":
        x, kw = (torch.rand(2, 6, 128, 128),), {"first_row": 140}
    else:
        x, kw = (torch.randn(2, 1, 80, 16), torch.rand(2, 6, 128, 128)), {"first_row": 69}
    with torch.no_grad():
        for args in ({}, kw):
            torch.testing.assert_close(cut(*x, **args), net(*x, **args), rtol=0, atol=2e-6)
    taken = {a: s for a, s in spans if s is not None}
    if name == "hyperlips-base":  # the width axis of a 5x1 map: tap 2 of 5 alone, dilation 2, padding 4
        assert taken[(1, 5, 1, 4, 2)] == (2, 2, 0, 1)


@pytest.mark.parametrize("name", ["hyperlips-base", "hyperlips-lite", "hyperlips-hr-256"])
def test_fused_activations_keep_the_outputs(name, monkeypatch):
    """As sync runs them on a CPU (channels-last): each convolution with the residual added to it and the
    activation after it in one fused pass gives the step-by-step outputs (float32: to float rounding; bfloat16:
    within one step of its rounding, the sum now rounded once); the state dict is the same; NCHW inputs, which the
    fused kernels take only where a map is 1x1, give the same to float rounding. (Every convolution is fused here,
    however small its output: the size below which sync keeps the steps is set to 0.)"""
    import copy

    from hyperlips.models import cpu_convs
    from hyperlips.models.blocks import ConvBlock
    from hyperlips.models.cpu_convs import ConvAct2d, _fusable, fused_activations, live_taps
    from hyperlips.models.inference import activations_in_place, fold_batchnorm, prepare_for_inference

    if "relu" not in _fusable():
        pytest.skip("this PyTorch has no fused CPU convolution kernels")
    monkeypatch.setattr(cpu_convs, "MIN_FUSED", 0)
    def count(network):
        return sum(getattr(m, "fused", None) is not None for m in network.modules() if isinstance(m, ConvBlock)) + \
            sum(isinstance(m, ConvAct2d) for m in network.modules())

    torch.manual_seed(8)
    net = _with_random_batchnorm_stats(create_model(name), 4)
    as_sync = prepare_for_inference(copy.deepcopy(net))
    for step in (fold_batchnorm, activations_in_place, live_taps):
        step(net)
    fused = copy.deepcopy(net)
    n = fused_activations(fused)
    blocks = [m for m in fused.modules() if isinstance(m, ConvBlock)]
    assert n == count(fused) == count(as_sync)
    if name == "hyperlips-base":  # up_conv's and the head's blocks, the decoder's and encoders' conv + activation
        assert all(m.fused is not None for m in blocks) and len(blocks) == 3 and n == 83
    assert n > 0 and fused.state_dict().keys() == net.state_dict().keys()
    if name.startswith("hyperlips-hr"):
        x, kw = (torch.rand(2, 6, 128, 128),), {"first_row": 140}
    else:
        x = (torch.randn(2, 1, 80, getattr(net, "mel_steps", 16)), torch.rand(2, 6, 128, 128))
        kw = {"first_row": 69} if name == "hyperlips-base" else {}
    cl = torch.channels_last
    with torch.no_grad():
        torch.testing.assert_close(fused(*x, **kw), net(*x, **kw), rtol=0, atol=1e-6)  # NCHW
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 4e-3)):
            a = copy.deepcopy(net).to(dtype, memory_format=cl)
            b = copy.deepcopy(fused).to(dtype, memory_format=cl)
            xs = tuple(t.to(dtype).contiguous(memory_format=cl) for t in x)
            torch.testing.assert_close(b(*xs, **kw).float(), a(*xs, **kw).float(), rtol=0, atol=tol)


def test_fused_activations_leave_small_outputs_to_the_steps():
    """The fused kernels cost more than they save on small outputs: below ``MIN_FUSED`` output values per frame,
    whatever the batch, or with taps the input leaves out, the convolution runs step by step; at or above it, fused
    (so a batch size never changes which path a frame's values take)."""
    from hyperlips.models.cpu_convs import MIN_FUSED, _conv_act, _fusable

    if "relu" not in _fusable():
        pytest.skip("this PyTorch has no fused CPU convolution kernels")
    conv = nn.Conv2d(16, 16, 3, 1, 1).eval().to(memory_format=torch.channels_last)
    side = math.ceil((MIN_FUSED / 16) ** 0.5)  # 16 x side x side >= MIN_FUSED
    cl = torch.channels_last
    with torch.no_grad():
        big = torch.randn(2, 16, side, side).contiguous(memory_format=cl)
        small = torch.randn(64, 16, side // 2, side).contiguous(memory_format=cl)  # more in all, less per frame
        assert small.numel() > big.numel() and _conv_act(conv, small) is None
        torch.testing.assert_close(_conv_act(conv, big), torch.relu(conv(big)), rtol=0, atol=1e-5)
        wide = nn.Conv2d(16, 16, 5, 1, 4, dilation=2).eval().to(memory_format=cl)
        one_row = torch.randn(1, 16, 1, MIN_FUSED // 16).contiguous(memory_format=cl)  # large, but taps cut
        assert _conv_act(wide, one_row) is None


def test_live_taps_give_the_convolution_on_every_geometry():
    """Against nn.Conv2d on random kernels, strides, paddings, dilations, groups and small inputs (where taps
    meet only padding): the same output shape and values; the taps cut are exactly those no output reads."""
    import random

    from hyperlips.models.cpu_convs import LiveTapsConv2d, _live_span

    rng = random.Random(0)
    torch.manual_seed(0)
    cut = 0
    for _ in range(400):
        k, s, d = [(rng.choice([1, 3, 5]), rng.choice([1, 3, 5])), (rng.choice([1, 2]), rng.choice([1, 2])),
                   (rng.choice([1, 2, 3]), rng.choice([1, 2]))]
        p, groups = (rng.randint(0, 5), rng.randint(0, 5)), rng.choice([1, 4])
        conv = nn.Conv2d(4, 4, k, s, p, d, groups=groups)
        x = torch.randn(2, 4, rng.randint(1, 7), rng.randint(1, 7))
        try:
            ref = conv(x)
        except RuntimeError:  # a kernel larger than the padded input
            continue
        for i in (0, 1):
            n, m = x.shape[2 + i], ref.shape[2 + i]
            span = _live_span(n, k[i], s[i], p[i], d[i])
            read = sorted({t for j in range(m) for t in range(k[i]) if 0 <= j * s[i] - p[i] + t * d[i] < n})
            if span is not None:
                cut += 1
                assert read == list(range(span[0], span[1] + 1))
        conv.__class__ = LiveTapsConv2d
        with torch.no_grad():
            out = conv(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert cut > 20  # the cut path was taken often (49 of the axes here)


def test_encoder_feature_shapes(base):
    with torch.no_grad():
        f = base.face_encoder(torch.rand(1, 6, 128, 128))
        a = base.hyper_control_net.audio_encoder(torch.randn(1, 1, 80, 16))
    assert [tuple(x.shape[1:]) for x in f] == [(16, 64, 64), (24, 32, 32), (40, 16, 16), (960, 8, 8)]
    assert [tuple(x.shape[1:]) for x in a] == [(16, 40, 8), (24, 20, 4), (40, 10, 2), (960, 5, 1)]


@pytest.mark.parametrize("rescaling", [1, 2])
def test_hr_forward(rescaling, models):
    m = models[f"hyperlips-hr-{128 * rescaling}"]
    with torch.no_grad():
        y = m(torch.rand(2, 6, 128, 128))
        y5 = m(torch.rand(1, 6, 2, 128, 128))
    assert y.shape == (2, 3, 128 * rescaling, 128 * rescaling)
    assert y5.shape == (1, 3, 2, 128 * rescaling, 128 * rescaling)
    assert y.min() > 0 and y.max() < 1


def test_hr_512_forward(models):
    with torch.no_grad():
        y = models["hyperlips-hr-512"](torch.rand(1, 6, 128, 128))
    assert y.shape == (1, 3, 512, 512) and torch.isfinite(y).all()


def test_hr_variants_layout():
    kinds = {r: ["T" if isinstance(m, ConvTransposeBlock) else "R" for m in HRDecoder(r).up_conv] for r in (1, 2, 4)}
    assert kinds == {1: ["R", "R"], 2: ["T", "R", "R"], 4: ["T", "R", "R", "T", "R", "R"]}
    assert all(m.residual for m in HRDecoder(4).up_conv if isinstance(m, ConvBlock))
    assert [HRDecoder.for_size(s).rescaling for s in (128, 256, 512)] == [1, 2, 4]
    assert HRDecoder.for_size(256).output_size == 256
    for bad in (64, 300, 1024):
        with pytest.raises(ValueError):
            HRDecoder.for_size(bad)
    with pytest.raises(ValueError):
        HRDecoder(3)


def test_syncnet_embeddings(models):
    net: SyncNet = models["syncnet"]
    torch.manual_seed(4)
    audio, faces = torch.randn(3, 1, 80, 16), torch.rand(3, 15, 64, 128)
    with torch.no_grad():
        a, v = net(audio, faces)
        sim = net.similarity(audio, faces)
    assert a.shape == (3, 512) and v.shape == (3, 512)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    assert (a >= 0).all() and (v >= 0).all()  # ReLU outputs, so the cosine is in [0, 1]
    torch.testing.assert_close(sim, (a * v).sum(1))
    assert ((sim >= 0) & (sim <= 1 + 1e-6)).all()
    with pytest.raises(ValueError):
        net(audio, torch.rand(3, 15, 128, 128))


def test_base_discriminator_sees_only_lower_half(models):
    d: BaseQualityDiscriminator = models["base-disc"]
    torch.manual_seed(5)
    x = torch.rand(2, 3, 128, 128)
    y = x.clone()
    y[:, :, :64] = torch.rand(2, 3, 64, 128)  # new upper half
    z = x.clone()
    z[:, :, 64:] = torch.rand(2, 3, 64, 128)  # new lower half
    with torch.no_grad():
        px, py, pz, lx = d(x), d(y), d(z), d.logits(x)
        p5 = d(torch.stack([x, z], dim=2))  # (B=2, 3, T=2, 128, 128)
    assert px.shape == (2, 1) and p5.shape == (4, 1)
    torch.testing.assert_close(px, py)
    assert not torch.allclose(lx, d.logits(z))
    torch.testing.assert_close(px, torch.sigmoid(lx))
    torch.testing.assert_close(p5, torch.cat([px, pz]))  # time-major: frame 0 of both items, then frame 1


def test_hr_discriminator_any_size(models):
    d: HRQualityDiscriminator = models["hr-disc"]
    with torch.no_grad():
        for size in (128, 256):
            x = torch.rand(2, 3, size, size)
            p, lg = d(x), d.logits(x)
            assert p.shape == (2, 1)
            torch.testing.assert_close(p, torch.sigmoid(lg))
        assert d(torch.rand(1, 3, 3, 128, 128)).shape == (3, 1)
    with pytest.raises(ValueError):
        d(torch.rand(2, 6, 128, 128))


# ------------------------------------------------------------------------------------------------- numerics


def test_batchconv2d_equals_per_sample_conv():
    torch.manual_seed(6)
    conv = BatchConv2d(5, 7, hyp_dim=8)
    x, h = torch.randn(4, 5, 9, 11), torch.randn(4, 8)
    y = conv(x, h)
    assert y.shape == (4, 7, 9, 11)
    wk, bk = conv.hyperkernel(h), conv.hyperbias(h)
    for n in range(4):
        w = wk[n].view(7, 5, 3, 3)  # row-major, out-major
        ref = F.conv2d(x[n:n + 1], w, bk[n], stride=1, padding=1)
        torch.testing.assert_close(y[n:n + 1], ref, rtol=1e-4, atol=1e-5)
    # every sample really gets its own kernel
    y_swapped = conv(x, h.flip(0))
    assert not torch.allclose(y_swapped[0], y[0])
    with pytest.raises(ValueError):
        conv(x, h[:3])


def test_hyper_double_conv_layout():
    block = HyperDoubleConv(4, hyp_dim=8)
    assert [type(m).__name__ for m in block] == ["BatchConv2d", "BatchNorm2d", "ReLU", "BatchConv2d", "BatchNorm2d",
                                                 "Sigmoid"]
    out = block.eval()(torch.randn(3, 4, 6, 6), torch.randn(3, 8))
    assert out.shape == (3, 4, 6, 6) and (out >= 0).all() and (out <= 1).all()


def test_convgru_zero_state_reduction():
    torch.manual_seed(7)
    c = 6
    gru = ConvGRU(c)
    x = torch.randn(2, c, 5, 7)
    fast = gru(x)  # h = None -> the reduced form
    full = gru(x, torch.zeros_like(x))  # the full GRU step from a zero state
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    # the formula of reference §5.6: h' = sigmoid(W_ih[z]·[x,0]) * tanh(W_hh·[x,0])
    xz = torch.cat([x, torch.zeros_like(x)], 1)
    z = torch.sigmoid(F.conv2d(xz, gru.ih[0].weight, gru.ih[0].bias, padding=1))[:, c:]
    cand = torch.tanh(F.conv2d(xz, gru.hh[0].weight, gru.hh[0].bias, padding=1))
    torch.testing.assert_close(fast, z * cand, rtol=1e-5, atol=1e-6)
    # gradients are the same as the full step's too (zero for the weights that act on h)
    g_fast = torch.autograd.grad(fast.square().sum(), [gru.ih[0].weight, gru.hh[0].weight])
    g_full = torch.autograd.grad(gru(x, torch.zeros_like(x)).square().sum(), [gru.ih[0].weight, gru.hh[0].weight])
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert torch.count_nonzero(g_fast[1][:, c:]) == 0
    # with a real state the h-weights matter (they stay loadable, just unused from zero)
    h = torch.randn_like(x)
    assert not torch.allclose(gru(x, h), fast)


def test_upsampling_is_bilinear_align_corners_false():
    torch.manual_seed(8)
    blk = UpsamplingBlock(4, 3, 2, 6).eval()
    x, skip, src = torch.randn(1, 4, 4, 5), torch.randn(1, 3, 8, 9), torch.randn(1, 2, 8, 9)
    up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)[:, :, :8, :9]  # crop to src
    y = blk.conv(torch.cat([up, skip, src], 1))
    ref = torch.cat([y[:, :3], blk.gru(y[:, 3:])], 1)
    torch.testing.assert_close(blk(x, skip, src), ref)


def test_decoder_average_pooling():
    dec = RecurrentDecoder()
    p = dec.avgpool
    assert isinstance(p, nn.AvgPool2d)
    assert (p.kernel_size, p.stride, p.ceil_mode, p.count_include_pad) == (2, 2, True, False)
    # ceil_mode + count_include_pad=False: an odd edge is averaged over the pixels that exist
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert p(x)[0, 0, 1, 1].item() == 8.0


def test_batchnorm_settings(base):
    seen = 0
    for enc in (base.face_encoder, base.hyper_control_net.audio_encoder):
        for name, m in enc.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                seen += 1
                expected = (1e-5, 0.1) if name == "features.0.1" else (1e-3, 0.01)  # the stem keeps the defaults
                assert (m.eps, m.momentum) == expected, name
    assert seen == 2 * 46  # stem, 2 in block 1, 3 in blocks 2..15, the last 1x1
    encoders = {id(m) for enc in (base.face_encoder, base.hyper_control_net.audio_encoder) for m in enc.modules()}
    others = [m for m in base.modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in encoders]
    assert len(others) == 18 and all((m.eps, m.momentum) == (1e-5, 0.1) for m in others)
    for name in ("hyperlips-hr-512", "syncnet"):
        bns = [m for m in create_model(name).modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all((m.eps, m.momentum) == (1e-5, 0.1) for m in bns)


def test_mobilenet_activations_and_dilation():
    enc = MobileNetV3LargeEncoder(6)
    f = enc.features
    assert isinstance(f[0][2], nn.Hardswish) and isinstance(f[16][2], nn.Hardswish)
    ses = [m for m in enc.modules() if isinstance(m, SqueezeExcitation)]
    assert len(ses) == 8 and all(isinstance(s.scale_activation, nn.Hardsigmoid) for s in ses)
    assert [isinstance(f[i].block[0][2], nn.Hardswish) for i in range(2, 16)] == [False] * 5 + [True] * 9
    for i in (13, 14, 15):
        dw = f[i].block[1][0]
        assert dw.dilation == (2, 2) and dw.padding == (4, 4) and dw.stride == (1, 1)
    assert f[13].use_res_connect is False and f[14].use_res_connect is True


def test_mobilenet_init():
    torch.manual_seed(9)
    enc = MobileNetV3LargeEncoder(6)
    w = enc.features[14].block[0][0].weight  # 1x1 conv 160 -> 960, kaiming normal fan_out
    std = (2.0 / (w.shape[0] * w.shape[2] * w.shape[3])) ** 0.5
    assert abs(w.std().item() / std - 1) < 0.05
    stem = enc.features[0][0].weight  # PyTorch default init: uniform within 1/sqrt(fan_in)
    assert stem.abs().max() <= 1 / (6 * 9) ** 0.5
    se = enc.features[4].block[2]
    assert torch.count_nonzero(se.fc1.bias) == 0
    bn = enc.features[5].block[1][1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.count_nonzero(bn.bias) == 0


def test_one_frame_sanity(base):
    """One frame through the base model in eval mode (timing printed, not asserted; ~0.1 s on 2 CPU cores)."""
    audio, faces = torch.randn(1, 1, 80, 16), torch.rand(1, 6, 128, 128)
    with torch.no_grad():
        base(audio, faces)
        t0 = time.perf_counter()
        y = base(audio, faces)
        dt = time.perf_counter() - t0
    print(f"HyperLipsBase one frame: {dt * 1000:.0f} ms")
    assert not base.training and y.shape == (1, 3, 128, 128) and torch.isfinite(y).all()
