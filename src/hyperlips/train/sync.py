"""``train sync``: the lip-sync expert (SyncNet, reference §6.1), trained on in-sync and shifted windows.

Fixes against the original: windows are mirrored at random instead of always (its expert only ever saw mirrored
faces and then judged unmirrored ones); off-sync pairs are shifted by at least ``min_shift`` frames (the original's
"negatives" could be one frame off, i.e. nearly in sync); validation runs every ``val_every`` steps on a fixed set
of held-out windows (the original validated after every single step), alternating in-sync pairs and pairs shifted
by ``val_min_shift`` (5) frames or more, and picks ``best.pt`` by its loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.datasets import Manifest, SyncDataset
from .loop import Stage
from .runlog import image_grid
from .losses import expert_loss, sync_probability


class SyncValDataset(SyncDataset):
    """Held-out pairs: even sample numbers in sync, odd ones shifted by ``min_shift`` frames or more; unmirrored."""

    def __getitem__(self, g: int):
        return self.sample(int(g), label=1 - int(g) % 2)


def ranking_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Probability that a random in-sync pair scores above a random off-sync pair (ties count half)."""
    pos, neg = score[label > 0.5], score[label <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


class SyncStage(Stage):
    name = "sync"
    model_name = "syncnet"
    best_metric = "val/loss"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        from ..models import create_model, load_checkpoint

        self.manifest = Manifest.load(cfg.data)
        if cfg.init:
            self.net, _ = load_checkpoint(cfg.init, name="syncnet", device=ctx.device)
        else:
            self.net = create_model("syncnet")
        self.net.to(ctx.device)
        self.ddp = ctx.wrap(self.net)
        self.opt = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=cfg.lr,
                                    betas=tuple(cfg.betas))

    def modules(self):
        return {"syncnet": self.net}

    def optimizers(self):
        return {"syncnet": self.opt}

    def exported(self):
        return self.net

    def train_dataset(self):
        return SyncDataset(self.manifest.open_clips("train"), seed=self.cfg.seed, min_shift=self.cfg.min_shift,
                           flip=self.cfg.flip)

    def val_dataset(self):
        clips = self.manifest.open_clips("val")
        if not clips:
            self.ctx.say("no validation clips in the dataset: validation is skipped")
            return None
        return SyncValDataset(clips, seed=self.cfg.seed + 7919, min_shift=self.cfg.val_min_shift, flip=0.0)

    def _forward(self, net, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        faces = batch["faces"].float() / 255.0  # (B, 15, 64, 128)
        audio = batch["audio"].float()  # (B, 1, 80, 16)
        return net(audio, faces)

    def bn_module(self):
        return self.net

    def bn_forward(self, batch):
        self._forward(self.net, batch)

    def train_step(self, batch, step):
        with self.ctx.autocast():
            a, v = self._forward(self.ddp, batch)
        loss = expert_loss(a.float(), v.float(), batch["label"])
        self.ctx.check_finite("sync expert", {"loss": loss}, step)
        norm = self.ctx.backward_step(loss, self.opt, self.net.parameters())
        with torch.no_grad():
            p = sync_probability(a.float(), v.float())
            acc = ((p > 0.5).float() == batch["label"]).float().mean()
        return {"loss": float(loss.detach()), "acc": float(acc), "grad_norm": norm}

    def val_batch(self, batch):
        a, v = self._forward(self.net, batch)
        p = sync_probability(a.float(), v.float())
        y = batch["label"].float()
        loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
        return {"p": p, "label": y, "loss": loss}

    def val_metrics(self, values):
        p, y = values["p"], values["label"]
        pos, neg = p[y > 0.5], p[y <= 0.5]
        return {
            "val/loss": float(values["loss"].mean()),
            "val/acc": float(((p > 0.5) == (y > 0.5)).mean()),
            "val/auc": ranking_auc(p, y),
            "val/p_in_sync": float(pos.mean()) if len(pos) else float("nan"),
            "val/p_off_sync": float(neg.mean()) if len(neg) else float("nan"),
        }

    def images(self, batch):
        faces = batch["faces"][:4].float().cpu().numpy()  # (n, 15, 64, 128) uint8 values
        rows = []
        for f, y in zip(faces, batch["label"][:4].cpu().numpy()):
            frames = [np.ascontiguousarray(f[3 * k : 3 * k + 3].transpose(1, 2, 0)).astype(np.uint8) for k in range(5)]
            if y < 0.5:  # mark off-sync windows with a red bar
                for fr in frames:
                    fr[:3] = (0, 0, 255)
            rows.append(frames)
        return image_grid(rows)
