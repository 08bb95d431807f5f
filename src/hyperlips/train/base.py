"""``train base``: HyperLips-Base, the stage-1 generator (reference §6.2).

Generator loss: ``sync_weight * L_sync + disc_weight * L_adv + (1 - sync_weight - disc_weight) * L1`` (0.03, 0.2,
0.77 as the original), where L_sync is judged by a **frozen, eval-mode** expert on the expert's own audio window and
L_adv is the non-saturating GAN loss of the lower-half discriminator on logits. Discriminator loss:
``BCE(D(real), 1) + BCE(D(fake), 0)``.

Inputs match inference exactly: crops made by ``pipeline.face_crop`` at preprocessing, the lower half zeroed as
``pipeline.network_input`` does, per-frame mel windows from ``media.audio.mel_windows``. The reference window
comes from elsewhere in the same clip and never overlaps the target (the original's could, leaking the mouth).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..data.datasets import BASE_SIZE, BaseDataset, Manifest
from .stage import Stage, init_source
from .runlog import image_grid, to_images
from .losses import (
    box_mask,
    freeze,
    gan_discriminator_loss,
    gan_generator_loss,
    lower_half_stack,
    masked_l1,
    psnr,
    sync_loss,
    sync_probability,
)


class LogitsOf(nn.Module):
    """A quality discriminator whose ``forward`` returns logits (what DDP calls)."""

    def __init__(self, disc: nn.Module):
        super().__init__()
        self.disc = disc

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, 1)
        return self.disc.logits(x)


def frames_of(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), batch-major."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def generator_inputs(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """-> (mels (B,T,1,80,16), faces (B,6,T,128,128) = [target with lower half zeroed, reference], target)."""
    target = batch["target"].float() / 255.0
    reference = batch["reference"].float() / 255.0
    masked = target.clone()
    masked[:, :, :, BASE_SIZE // 2 :] = 0.0
    return batch["mels"].float(), torch.cat([masked, reference], dim=1), target


def load_expert(path, device) -> nn.Module:
    from ..models.checkpoint import load_expert_checkpoint

    expert, _ = load_expert_checkpoint(path, device=device)
    return freeze(expert.to(device))


class BaseStage(Stage):
    name = "base"
    model_name = "hyperlips-base"
    best_metric = "val/mouth_l1"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        from ..models import create_model, load_checkpoint

        self.manifest = Manifest.load(cfg.data)
        if cfg.init:
            self.gen, _ = load_checkpoint(init_source(cfg), name="hyperlips-base", device=ctx.device)
        else:
            self.gen = create_model("hyperlips-base")
        self.gen.to(ctx.device)
        self.w_sync = float(cfg.sync_weight)
        self.w_disc = float(cfg.disc_weight)
        if not 0 <= self.w_sync + self.w_disc < 1 or self.w_sync < 0 or self.w_disc < 0:
            from ..errors import UserError

            raise UserError(f"sync_weight ({self.w_sync}) and disc_weight ({self.w_disc}) must be >= 0 and sum to "
                            "less than 1 (L1 gets the rest)")
        self.expert = None
        expert = cfg.expert
        if expert is None and self.w_sync > 0:
            from ..models import shipped

            found = shipped.expert()
            if found is not None:
                expert = str(found.path)
                ctx.say(f"sync loss judged by the {found.label} (--expert PATH for another, --expert off for none)")
        if expert and expert.lower() != "off":
            self.expert = load_expert(expert, ctx.device)
        elif self.w_sync > 0 and expert is None:
            ctx.say(f"no sync expert given (--expert) and {shipped.absent('expert')}: training without the sync loss; "
                    "lip sync will be weaker. Train one with `hyperlips train sync` and pass it with --expert")
        self.disc = create_model("base-disc").to(ctx.device) if self.w_disc > 0 else None
        self.gen_ddp = ctx.wrap(self.gen)
        self.disc_ddp = ctx.wrap(LogitsOf(self.disc)) if self.disc is not None else None
        betas = tuple(cfg.betas)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=betas) if self.disc is not None else None

    def modules(self):
        m = {"generator": self.gen}
        if self.disc is not None:
            m["discriminator"] = self.disc
        return m

    def optimizers(self):
        o = {"generator": self.opt_g}
        if self.opt_d is not None:
            o["discriminator"] = self.opt_d
        return o

    def exported(self):
        return self.gen

    def train_dataset(self):
        return BaseDataset(self.manifest.open_clips("train"), seed=self.cfg.seed)

    def val_dataset(self):
        clips = self.manifest.open_clips("val")
        if not clips:
            self.ctx.say("no validation clips in the dataset: validation is skipped")
            return None
        return BaseDataset(clips, seed=self.cfg.seed + 7919)

    def bn_module(self):
        return self.gen

    def bn_forward(self, batch):
        mels, faces, _ = generator_inputs(batch)
        self.gen(mels, faces)

    def train_step(self, batch, step):
        mels, faces, target = generator_inputs(batch)
        with self.ctx.autocast():
            fake = self.gen_ddp(mels, faces)  # (B, 3, T, 128, 128)
        fake = fake.float()
        l1 = (fake - target).abs().mean()
        parts = {"l1": l1}
        loss = (1.0 - self.w_sync - self.w_disc) * l1
        if self.expert is not None and self.w_sync > 0:
            with self.ctx.autocast():
                ls = sync_loss(self.expert, batch["sync_mel"], fake)
            parts["sync"] = ls.float()
            loss = loss + self.w_sync * parts["sync"]
        if self.disc is not None:
            self.disc.requires_grad_(False)
            with self.ctx.autocast():
                adv = gan_generator_loss(self.disc.logits(frames_of(fake)).float())
            self.disc.requires_grad_(True)
            parts["adv"] = adv
            loss = loss + self.w_disc * adv
        self.ctx.check_finite("generator", {"total": loss, **parts}, step)
        out = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
        out["grad_norm"] = self.ctx.backward_step(loss, self.opt_g, self.gen.parameters())
        if self.disc is not None:
            real, fk = frames_of(target), frames_of(fake.detach())
            with self.ctx.autocast():
                logits = self.disc_ddp(torch.cat([real, fk], dim=0)).float()
            loss_d = gan_discriminator_loss(logits[: len(real)], logits[len(real):])
            self.ctx.check_finite("discriminator", {"disc": loss_d}, step)
            out["disc"] = float(loss_d.detach())
            out["disc_grad_norm"] = self.ctx.backward_step(loss_d, self.opt_d, self.disc.parameters())
        return out

    def val_batch(self, batch):
        mels, faces, target = generator_inputs(batch)
        fake = self.gen(mels, faces).float()
        b, _, t, h, w = fake.shape
        ff, tf = frames_of(fake), frames_of(target)
        boxes = batch["lip_boxes"].reshape(b * t, 4)
        mouth = masked_l1(ff, tf, box_mask(boxes, h, w)).view(b, t).mean(1)
        out = {
            "l1": (fake - target).abs().flatten(1).mean(1),
            "mouth_l1": mouth,
            "lower_psnr": psnr(ff[:, :, h // 2 :], tf[:, :, h // 2 :]).view(b, t).mean(1),
        }
        if self.expert is not None:
            a, v = self.expert(batch["sync_mel"].float(), lower_half_stack(fake))
            out["sync_p"] = sync_probability(a.float(), v.float())
        return out

    def val_metrics(self, values):
        out = super().val_metrics(values)
        if "sync_p" in values:  # the reference's validation sync loss: BCE(expert similarity, 1)
            out["val/sync"] = float(-np.log(np.clip(values["sync_p"], 1e-6, 1.0)).mean())
        return out

    def images(self, batch):
        """Per sample (up to 2): rows input (masked), reference, generated, ground truth; 5 frames each."""
        was = self.gen.training
        self.gen.eval()
        try:
            small = {k: v[:2] for k, v in batch.items()}
            mels, faces, target = generator_inputs(small)
            fake = self.gen(mels, faces).float()
        finally:
            self.gen.train(was)
        rows = []
        for i in range(fake.shape[0]):
            def frames(x: Tensor) -> list[np.ndarray]:
                return to_images(x[i].permute(1, 0, 2, 3))
            rows += [frames(faces[:, :3]), frames(faces[:, 3:]), frames(fake), frames(target)]
        return image_grid(rows)
