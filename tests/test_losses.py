"""Training losses and perceptual networks: the reference §6 formulas with its bugs fixed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------- sync
def test_sync_loss_uses_a_frozen_eval_mode_expert():
    from hyperlips.models import SyncNet
    from hyperlips.train.losses import freeze, lower_half_stack, sync_loss

    expert = SyncNet()
    expert.train()
    for m in expert.modules():  # give BatchNorm running stats that differ from any batch's own statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    freeze(expert)
    expert.train()  # a parent's .train() must not switch it back
    assert not expert.training and not any(p.requires_grad for p in expert.parameters())
    stats = {k: v.clone() for k, v in expert.state_dict().items()}
    mel = torch.randn(3, 1, 80, 16)
    frames = torch.rand(3, 3, 5, 128, 128, requires_grad=True)
    loss = sync_loss(expert, mel, frames)
    loss.backward()
    assert all(torch.equal(v, expert.state_dict()[k]) for k, v in stats.items())  # running stats unchanged
    assert all(p.grad is None for p in expert.parameters())
    assert frames.grad is not None and frames.grad[:, :, :, 64:].abs().sum() > 0
    assert frames.grad[:, :, :, :64].abs().sum() == 0  # only the lower half is judged
    # eval mode: a sample's loss does not depend on the rest of the batch
    one = sync_loss(expert, mel[:1], frames[:1].detach())
    two = sync_loss(expert, mel[:2], frames[:2].detach())
    a, v = expert(mel[:2], lower_half_stack(frames[:2].detach()))
    per = -torch.log(F.cosine_similarity(a, v).clamp(1e-6, 1 - 1e-6))
    assert torch.allclose(one, per[0], atol=1e-6) and torch.allclose(two, per.mean(), atol=1e-6)


def test_losses_run_under_autocast():
    """AMP runs the networks in half precision; the losses must accept that (BCE on probabilities does not)."""
    from hyperlips.models import SyncNet
    from hyperlips.train.losses import expert_loss, freeze, gan_generator_loss, sync_loss

    expert = freeze(SyncNet())
    frames = torch.rand(2, 3, 5, 128, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sync_loss(expert, torch.randn(2, 1, 80, 16), frames)
        a, v = expert(torch.randn(2, 1, 80, 16), torch.rand(2, 15, 64, 128))
        e = expert_loss(a, v, torch.tensor([1.0, 0.0]))
        g = gan_generator_loss(torch.randn(4, 1, dtype=torch.bfloat16))
    loss.backward()
    assert loss.dtype == e.dtype == torch.float32 and torch.isfinite(loss + e + g)
    assert frames.grad.abs().sum() > 0


def test_lower_half_stack_matches_the_dataset_channel_order():
    from hyperlips.train.losses import lower_half_stack

    frames = torch.rand(2, 3, 5, 128, 128)
    x = lower_half_stack(frames)
    assert x.shape == (2, 15, 64, 128)
    # the dataset stacks (5, 64, 128, 3) frames as transpose(0, 3, 1, 2).reshape(15, 64, 128): frame-major
    np_frames = frames[0].permute(1, 2, 3, 0)[:, 64:].numpy()  # (5, 64, 128, 3)
    want = np_frames.transpose(0, 3, 1, 2).reshape(15, 64, 128)
    assert np.array_equal(x[0].numpy(), want)


def test_expert_loss_labels():
    from hyperlips.train.losses import expert_loss

    a = F.normalize(torch.rand(4, 512), dim=1)
    same = expert_loss(a, a, torch.ones(4))
    assert same < 1e-4
    assert expert_loss(a, a, torch.zeros(4)) > 10  # in-sync embeddings labelled off-sync: large loss
    b = torch.zeros(4, 512)
    b[:, 0] = 1
    c = torch.zeros(4, 512)
    c[:, 1] = 1
    assert expert_loss(b, c, torch.zeros(4)) < 1e-4  # orthogonal = off-sync


# ---------------------------------------------------------------------------------------------- GAN
def test_relativistic_losses_work_on_logits_without_a_double_sigmoid():
    from hyperlips.train.losses import relativistic_discriminator_loss, relativistic_generator_loss

    real = torch.tensor([[3.0], [2.0], [4.0]])
    fake = torch.tensor([[-2.0], [-1.0], [-3.0], [0.0]], requires_grad=True)
    g = relativistic_generator_loss(real, fake)
    d_rf, d_fr = real - fake.mean(), fake - real.mean()
    want = 0.5 * (F.softplus(d_rf).mean() + F.softplus(-d_fr).mean())
    assert torch.allclose(g, want)
    d = relativistic_discriminator_loss(real, fake.detach())
    assert torch.allclose(d, 0.5 * (F.softplus(-d_rf).mean() + F.softplus(d_fr.detach()).mean()))
    # with the original's double sigmoid, logits this confident barely move the loss; on logits the generator
    # still gets a strong gradient
    g.backward()
    assert fake.grad.abs().mean() > 0.1
    double = relativistic_generator_loss(torch.sigmoid(real), torch.sigmoid(fake.detach()))
    assert double > 0.6  # ~log 2: saturated, nearly uninformative


def test_standard_gan_losses():
    from hyperlips.train.losses import gan_discriminator_loss, gan_generator_loss

    good_d = gan_discriminator_loss(torch.full((4, 1), 8.0), torch.full((4, 1), -8.0))
    assert good_d < 1e-3
    assert math.isclose(float(gan_discriminator_loss(torch.zeros(4, 1), torch.zeros(4, 1))), 2 * math.log(2), rel_tol=1e-6)
    assert gan_generator_loss(torch.full((4, 1), -8.0)) > 7.9


def test_feature_matching_uses_the_discriminator_blocks():
    from hyperlips.models import HRQualityDiscriminator
    from hyperlips.train.losses import discriminator_features, feature_matching_loss

    d = HRQualityDiscriminator()
    x = torch.rand(2, 3, 128, 128)
    feats = discriminator_features(d, x)
    assert [f.shape[-1] for f in feats] == [128, 64, 32, 16, 8]
    assert feature_matching_loss(d, x, x) == 0
    y = x.clone().requires_grad_(True)
    loss = feature_matching_loss(d, x, (y + 0.1).clamp(0, 1))
    loss.backward()
    assert loss > 0 and y.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- regions
def test_box_mask_and_masked_l1():
    from hyperlips.train.losses import box_mask, masked_l1

    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.001, 0.001]])
    m = box_mask(boxes, 8, 8)
    assert m.shape == (2, 1, 8, 8)
    assert m[0, 0].sum() == 16 and m[0, 0, 4:, 2:6].sum() == 16
    assert m[1].sum() == 1  # a sub-pixel box still covers one pixel
    x = torch.zeros(2, 3, 8, 8)
    y = torch.zeros(2, 3, 8, 8)
    y[0, :, 4:, 2:6] = 0.5  # differs only inside box 0
    y[0, :, :2] = 1.0  # and far outside it
    l1 = masked_l1(x, y, m)
    assert torch.allclose(l1, torch.tensor([0.5, 0.0]))


def test_crop_resize_matches_slicing_on_the_pixel_grid():
    from hyperlips.train.losses import crop_resize

    img = torch.rand(1, 3, 32, 32)
    full = crop_resize(img, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (32, 32))
    assert torch.allclose(full, img, atol=1e-5)
    part = crop_resize(img, torch.tensor([[8 / 32, 16 / 32, 24 / 32, 28 / 32]]), (12, 16))
    assert torch.allclose(part, img[:, :, 16:28, 8:24], atol=1e-5)
    x = img.clone().requires_grad_(True)
    crop_resize(x, torch.tensor([[0.1, 0.2, 0.6, 0.9]]), (8, 8)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_psnr():
    from hyperlips.train.losses import psnr

    x = torch.zeros(1, 3, 4, 4)
    y = torch.full((1, 3, 4, 4), 0.1)
    assert torch.allclose(psnr(x, y), torch.tensor([20.0]), atol=1e-4)


# ---------------------------------------------------------------------------------------------- perceptual
def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    from hyperlips.train.perceptual import ssim, ssim_loss

    rng = np.random.default_rng(0)
    a = rng.random((48, 64)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    want = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    # scikit-image averages over the valid area only (it crops (win-1)/2 = 5 px on each side, as we do)
    assert float(ssim(ta, tb)) == pytest.approx(want, abs=2e-3)
    assert float(ssim(ta, ta)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim_loss(ta, tb)) == pytest.approx(1 - want, abs=2e-3)
    small = torch.rand(2, 3, 6, 9)
    assert ssim(small, small).shape == (2,)  # the window shrinks for tiny crops


def _fake_torchvision_vgg(path, cfg):
    """A randomly initialised VGG state dict in torchvision's key layout (features.<i>.weight/bias)."""
    from hyperlips.train.perceptual import _vgg_features

    feats = _vgg_features(cfg)
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files also hold the classifier
    torch.save(state, path)
    return path


def test_vgg19_loss_loads_the_torchvision_layout_from_the_hub_cache(tmp_path, monkeypatch):
    from hyperlips.train import perceptual as P

    expected_convs = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]  # torchvision vgg19.features
    feats = P._vgg_features(P._VGG19_CFG)
    convs = [i for i, m in enumerate(feats) if isinstance(m, torch.nn.Conv2d)]
    assert convs == expected_convs
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert P.find_file(P.VGG19_FILE) is None  # nothing there yet: the caller falls back
    hub = tmp_path / "th" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    _fake_torchvision_vgg(hub / P.VGG19_FILE, P._VGG19_CFG)
    path = P.find_file(P.VGG19_FILE)
    assert path == hub / P.VGG19_FILE
    loss = P.VGG19Loss(path)
    assert len(loss.features) == 35 and isinstance(loss.features[34], torch.nn.Conv2d)  # conv5_4, before its ReLU
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    assert float(loss(x, x.detach()).detach()) == 0
    out = loss(x, torch.rand(1, 3, 64, 64))
    out.backward()
    assert out > 0 and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    # the network gets RGB with ImageNet normalisation (the original fed raw [0, 1] BGR)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    want = (x.detach()[:, [2, 1, 0]] - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(loss._prep(x.detach()), want)
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="VGG19"):
        P.VGG19Loss(tmp_path / "bad.pth")


def test_lpips_with_local_heads_and_backbone(tmp_path):
    from hyperlips.train import perceptual as P

    backbone = _fake_torchvision_vgg(tmp_path / P.VGG16_FILE, P._VGG16_CFG)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(P._LPIPS_CHANNELS)}
    torch.save(heads, tmp_path / "vgg.pth")
    lp = P.LPIPS(tmp_path / "vgg.pth", backbone)
    x, y = torch.rand(2, 3, 32, 64), torch.rand(2, 3, 32, 64)
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(lp(x, x), torch.zeros(2))
    assert P.find_lpips_heads(tmp_path / "vgg.pth") == tmp_path / "vgg.pth"
    assert P.find_lpips_heads(tmp_path / "none.pth") is None
    torch.save({"lin0.model.1.weight": torch.rand(1, 3, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="LPIPS"):
        P.LPIPS(tmp_path / "bad.pth", backbone)
