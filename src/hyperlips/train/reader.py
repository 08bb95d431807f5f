"""``hyperlips train reader``: the mouth reader (``models/mouth_reader.py``) learns FaceMesh's lip and jaw points.

Data: the frames of a preprocessed dataset that have landmarks (the same clips and split as HyperLips-Lite). Each
training crop is moved, scaled and recoloured at random (its points moved with it), a tenth of them grey, so the
reader reads geometry rather than one camera's colours. Loss: L1 of the points in pixels of the 128 px crop, the
inner lip counted twice (lip sync is judged by it). Validation: the mean point error in pixels (``val/point_px``,
picks ``best``) and the correlation of the inner-lip gap it reads with FaceMesh's (``val/opening_r``, each clip's
mean removed: the reader is used to compare mouths of the same face).

Measured on the generic dataset (14,184 training frames, 9 held-out speakers; 3,000 steps of 64, 14 minutes on one
core): 1.9 px mean error, inner-lip gap r 0.90 averaged over the held-out clips.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.datasets import BASE_SIZE, Manifest
from .lite import held_out_frames, pearson
from .lite_audio import opening_of
from .stage import Stage
from .runlog import image_grid

INNER_WEIGHT = 2.0


def augment_crops(faces: Tensor, points: Tensor, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """faces (N, 3, H, W) in [0, 1], points (N, P, 2) in crop units -> the same, moved (+-5%), scaled (+-6%),
    recoloured (per-channel gain, brightness) and 10% grey; the points follow the move."""
    n = len(faces)
    dev = faces.device
    scale = torch.exp(torch.empty(n).uniform_(-0.06, 0.06, generator=g)).to(dev)
    shift = torch.empty(n, 2).uniform_(-0.05, 0.05, generator=g).to(dev)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(faces.shape), align_corners=False)
    faces = F.grid_sample(faces, grid, padding_mode="border", align_corners=False)
    points = ((points * 2 - 1) - shift[:, None]) / scale[:, None, None] * 0.5 + 0.5
    gain = torch.exp(torch.empty(n, 3, 1, 1).uniform_(-0.25, 0.25, generator=g)).to(dev)
    bias = torch.empty(n, 1, 1, 1).uniform_(-0.1, 0.1, generator=g).to(dev)
    faces = ((faces - 0.5) * gain + 0.5 + bias).clamp(0, 1)
    grey = (torch.rand(n, 1, 1, 1, generator=g) < 0.1).to(dev)
    faces = torch.where(grey, faces.mean(1, keepdim=True).expand_as(faces), faces)
    return faces, points


def point_weights(device=None) -> Tensor:
    """(53,) loss weight per point of ``mouth_shape.MOVING``: the inner lip's count ``INNER_WEIGHT`` times."""
    from ..face.mouth_shape import INNER_LIP, MOVING

    return torch.tensor([INNER_WEIGHT if p in INNER_LIP else 1.0 for p in MOVING], device=device)


class ReaderStage(Stage):
    name = "reader"
    model_name = "mouth-reader"
    best_metric = "val/point_px"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        from ..data.frames import reference_frame
        from ..models import MouthReader, load_checkpoint

        self.manifest = Manifest.load(cfg.data)
        if cfg.init:
            self.net = load_checkpoint(cfg.init, name="mouth-reader", device=ctx.device)[0]
        else:
            self.net = MouthReader()
        self.net.to(ctx.device)
        self.net_ddp = ctx.wrap(self.net)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=1e-4)
        self.train_clips = self.manifest.open_clips("train")
        self.val_clips = self.manifest.open_clips("val")
        ranges = {c.id: c.frame_range for c in self.train_clips}
        self.references = {c.id: reference_frame(c, ranges.get(c.id, c.frame_range)) for c in self.val_clips}
        self._train_ds = self._val_ds = None
        self._gen = torch.Generator().manual_seed(int(cfg.seed))

    def modules(self):
        return {"reader": self.net}

    def optimizers(self):
        return {"reader": self.opt}

    def exported(self):
        return self.net

    def train_dataset(self):
        from ..data.frames import FrameDataset

        if self._train_ds is None:
            self._train_ds = FrameDataset(self.train_clips, 16, seed=self.cfg.seed)
        return self._train_ds

    def val_dataset(self):
        if not self.val_clips:
            return None
        if self._val_ds is None:
            self._val_ds = held_out_frames(self.val_clips, self.train_dataset(), self.references, 16)
        return self._val_ds

    def train_step(self, batch, step):
        faces = batch["target"].float().to(self.ctx.device) / 255.0
        points = batch["points"].float().to(self.ctx.device)
        ok = torch.isfinite(points).all(dim=2).all(dim=1)
        faces, points = augment_crops(faces[ok], points[ok], self._gen)
        with self.ctx.autocast():
            pred = self.net_ddp(faces)
        err = (pred.float() - points).abs().sum(2) * BASE_SIZE  # (N, 53) pixels
        loss = (err * point_weights(err.device)).mean()
        self.ctx.check_finite("reader", {"points": loss}, step)
        self.ctx.backward_step(loss, self.opt, self.net.parameters())
        return {"points": loss.item()}

    def val_batch(self, batch):
        with torch.no_grad():
            pred = self.net(batch["target"].float().to(self.ctx.device) / 255.0).float().cpu()
        real = batch["points"].float()
        return {"point_px": (pred - real).norm(dim=2).mean(1) * BASE_SIZE,  # points laid out as shapes: (x, y) each
                "gap_pred": opening_of(pred.flatten(1)), "gap_real": opening_of(real.flatten(1)),
                "clip": batch["clip"].float()}

    def val_metrics(self, values):
        px = np.asarray(values["point_px"], np.float64)
        p, r, c = (np.asarray(values[k], np.float64) for k in ("gap_pred", "gap_real", "clip"))
        for k in np.unique(c):  # each clip's mean removed: how well it follows one face's mouth
            p[c == k] -= np.nanmean(p[c == k])
            r[c == k] -= np.nanmean(r[c == k])
        return {"val/point_px": float(np.nanmean(px)), "val/opening_r": pearson(p, r)}

    def images(self, batch):
        """Held-out faces with the points read (green) and FaceMesh's (red)."""
        import cv2

        faces = batch["target"][:8]
        with torch.no_grad():
            pred = self.net(faces.float().to(self.ctx.device) / 255.0).float().cpu().numpy()
        real = batch["points"][:8].numpy()
        tiles = []
        for img, pp, rr in zip(faces.permute(0, 2, 3, 1).numpy(), pred, real):
            img = np.ascontiguousarray(img)
            for pts, colour in ((rr, (0, 0, 255)), (pp, (0, 255, 0))):
                for x, y in pts * BASE_SIZE:
                    if np.isfinite(x) and np.isfinite(y):
                        cv2.circle(img, (int(round(x)), int(round(y))), 1, colour, -1)
            tiles.append(img)
        return image_grid([tiles])
