"""``train sync``: the lip-sync expert (SyncNet, reference §6.1), trained on in-sync and shifted windows.

Fixes against the original: windows are mirrored at random instead of always (its expert only ever saw mirrored
faces and then judged unmirrored ones); off-sync pairs are shifted by at least ``min_shift`` frames (the original's
"negatives" could be one frame off, i.e. nearly in sync); validation runs every ``val_every`` steps on a fixed set
of held-out windows (the original validated after every single step), alternating in-sync pairs and pairs shifted
by ``val_min_shift`` (5) frames or more, and picks ``best.pt`` by its loss.

``model: syncnet-lite`` (``train sync --model lite``) trains the compact expert instead; with ``augment`` every
training window is varied the way footage of unseen people differs (:func:`augment_windows`), since a few dozen
speakers are all a CPU-trained expert gets to learn from.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import Manifest, SyncDataset
from .stage import Stage
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


def augment_windows(faces: Tensor, audio: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Vary a batch of expert windows as unseen footage varies; the same change for all five frames of a window.

    faces (B, 15, 64, 128) in [0, 1]: a shift of up to 6% and a zoom of 0.9-1.1 (bilinear, edges repeated),
    brightness x0.7-1.3, contrast x0.7-1.3, per-channel colour x0.9-1.1, grey on 20%, a blur on 20%.
    audio (N, 1, 80, 16) mel (log scale, about [-4, 4]): a level shift of +-0.6 (about +-6 dB), noise 0.05 and
    one band of up to 10 mel bins set to the window's mean on half of the windows.
    """
    b, dev = faces.shape[0], faces.device

    def u(lo, hi, *shape):
        return torch.rand(b, *shape, generator=gen).to(dev) * (hi - lo) + lo

    zoom = u(0.9, 1.1)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / zoom, 1 / zoom
    theta[:, 0, 2], theta[:, 1, 2] = u(-0.06, 0.06), u(-0.06, 0.06)
    grid = F.affine_grid(theta, list(faces.shape), align_corners=False)
    x = F.grid_sample(faces, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x.view(b, 5, 3, *x.shape[2:])
    mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
    x = (x - mean) * u(0.7, 1.3, 1, 1, 1, 1) + mean * u(0.7, 1.3, 1, 1, 1, 1)
    x = x * u(0.9, 1.1, 1, 3, 1, 1)
    grey = (torch.rand(b, generator=gen) < 0.2).to(dev)
    x = torch.where(grey.view(b, 1, 1, 1, 1), x.mean(dim=2, keepdim=True).expand_as(x), x)
    x = x.reshape(b, 15, *x.shape[3:])
    blur = (torch.rand(b, generator=gen) < 0.2).to(dev)
    if bool(blur.any()):
        soft = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        x = torch.where(blur.view(b, 1, 1, 1), soft, x)
    x = x.clamp(0, 1)

    n = audio.shape[0]  # B, or B*K candidate windows (each varied on its own)
    a = audio + (torch.rand(n, 1, 1, 1, generator=gen).to(dev) * 1.2 - 0.6)
    a = a + 0.05 * torch.randn(audio.shape, generator=gen).to(dev)
    width = torch.randint(0, 11, (n,), generator=gen)
    start = (torch.rand(n, generator=gen) * (80 - width)).long()
    masked = torch.rand(n, generator=gen) < 0.5
    rows = torch.arange(80).view(1, 80)
    band = ((rows >= start.view(n, 1)) & (rows < (start + width).view(n, 1)) & masked.view(n, 1)).to(dev)
    a = torch.where(band.view(n, 1, 80, 1), a.mean(dim=(1, 2, 3), keepdim=True).expand_as(a), a)
    return x, a


class Embeddings(nn.Module):
    """An expert's embeddings of B face stacks and of B*K audio windows (each face stack encoded once)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, audio: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        # audio (B*K, 1, 80, 16), faces (B, 15, 64, 128) -> (B*K, E), (B, E), unit length
        a = self.net.audio_encoder(audio).flatten(1)
        v = self.net.face_encoder(faces).flatten(1)
        return F.normalize(a, p=2, dim=1), F.normalize(v, p=2, dim=1)


class SyncStage(Stage):
    name = "sync"
    model_name = "syncnet"  # the official expert; ``model: syncnet-lite`` sets the compact one per run
    best_metric = "val/loss"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        from ..models import EXPERTS, create_model, load_checkpoint

        self.model_name = cfg.model if cfg.model in EXPERTS else "syncnet"
        self.manifest = Manifest.load(cfg.data)
        if cfg.init:
            self.net, _ = load_checkpoint(cfg.init, name=self.model_name, device=ctx.device)
        else:
            self.net = create_model(self.model_name, cfg.lite if self.model_name == "syncnet-lite" else None)
        self.net.to(ctx.device)
        # multiple choice trains through Embeddings (each face stack encoded once); else the network as it is
        self.ddp = ctx.wrap(Embeddings(self.net) if cfg.sync_candidates > 1 else self.net)
        # multiple choice with sync_aux_weight: both embeddings also predict the five frames' mouth opening
        self.heads = None
        params = [p for p in self.net.parameters() if p.requires_grad]
        if cfg.sync_candidates > 1 and cfg.sync_aux_weight > 0:
            width = self.net.config.embed if hasattr(self.net, "config") else 512
            self.heads = nn.ModuleDict({"face": nn.Linear(width, 5), "audio": nn.Linear(width, 5)}).to(ctx.device)
            params += list(self.heads.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))

    def modules(self):
        return {"syncnet": self.net, **({"opening_heads": self.heads} if self.heads is not None else {})}

    def optimizers(self):
        return {"syncnet": self.opt}

    def exported(self):
        return self.net

    def train_dataset(self):
        return SyncDataset(self.manifest.open_clips("train"), seed=self.cfg.seed, min_shift=self.cfg.min_shift,
                           flip=self.cfg.flip, candidates=self.cfg.sync_candidates,
                           with_opening=self.cfg.sync_aux_weight > 0)

    def val_dataset(self):
        clips = self.manifest.open_clips("val")
        if not clips:
            self.ctx.say("no validation clips in the dataset: validation is skipped")
            return None
        return SyncValDataset(clips, seed=self.cfg.seed + 7919, min_shift=self.cfg.val_min_shift, flip=0.0)

    def _forward(self, net, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        faces = batch["faces"].float() / 255.0  # (B, 15, 64, 128)
        audio = batch["audio"].float()  # (B, 1, 80, 16); of a multiple-choice batch (B, K, 1, 80, 16): the in-sync one
        if audio.dim() == 5:
            audio = audio[:, 0]
        return net(audio, faces)

    def bn_module(self):
        return self.net

    def bn_forward(self, batch):
        self._forward(self.net, batch)

    def train_step(self, batch, step):
        audio = batch["audio"].float().to(self.ctx.device)
        k = audio.shape[1] if audio.dim() == 5 else 1  # multiple choice: (B, K, 1, 80, 16), in-sync first
        if self.cfg.augment:
            gen = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + int(step))
            faces, aug = augment_windows(batch["faces"].float().to(self.ctx.device) / 255.0,
                                         audio.reshape(-1, 1, *audio.shape[-2:]) if k > 1 else audio, gen)
            audio = aug.reshape(audio.shape)
            batch = {**batch, "faces": faces * 255.0}
        if k > 1:
            return self._choice_step(batch["faces"], audio, step, batch.get("opening"))
        with self.ctx.autocast():
            a, v = self._forward(self.ddp, {**batch, "audio": audio})
        loss = expert_loss(a.float(), v.float(), batch["label"])
        self.ctx.check_finite("sync expert", {"loss": loss}, step)
        norm = self.ctx.backward_step(loss, self.opt, self.net.parameters())
        with torch.no_grad():
            p = sync_probability(a.float(), v.float())
            acc = ((p > 0.5).float() == batch["label"]).float().mean()
        return {"loss": float(loss.detach()), "acc": float(acc), "grad_norm": norm}

    def _choice_step(self, faces: Tensor, audio: Tensor, step: int, opening: Tensor | None = None):
        """Which of K audio windows goes with the faces? Cross-entropy over their similarities / temperature, plus
        the original's BCE on the in-sync window and one shifted one (so the similarity stays a probability), plus
        (``sync_aux_weight``) the MSE of the five frames' standardised mouth opening predicted from each embedding:
        a direct target that teaches both encoders where the mouth is long before the choice alone would."""
        b, k = audio.shape[:2]
        faces = faces.float() / 255.0
        # the K windows of each face stack ride along as one batch: (B*K, 1, 80, 16) audio, faces repeated
        with self.ctx.autocast():
            a, v = self.ddp(audio.reshape(b * k, 1, *audio.shape[-2:]), faces)
        sim = (a.float().view(b, k, -1) * v.float().unsqueeze(1)).sum(dim=2)  # (B, K) cosines
        target = torch.zeros(b, dtype=torch.long, device=sim.device)
        choice = F.cross_entropy(sim / self.cfg.sync_temperature, target)
        pair = torch.stack([sim[:, 0], sim[:, 1]], dim=1).clamp(1e-6, 1 - 1e-6)
        bce = -(torch.log(pair[:, 0]) + torch.log1p(-pair[:, 1])).mean() / 2
        loss = choice + bce
        out = {}
        if self.heads is not None and opening is not None:
            target = opening.float().to(sim.device)
            aux = (F.mse_loss(self.heads["face"](v.float()), target)
                   + F.mse_loss(self.heads["audio"](a.float().view(b, k, -1)[:, 0]), target))
            loss = loss + self.cfg.sync_aux_weight * aux
            out["opening_mse"] = float(aux.detach()) / 2
        self.ctx.check_finite("sync expert", {"loss": loss}, step)
        params = list(self.net.parameters()) + (list(self.heads.parameters()) if self.heads is not None else [])
        norm = self.ctx.backward_step(loss, self.opt, params)
        acc = (sim.detach().argmax(dim=1) == 0).float().mean()
        return {"loss": float(loss.detach()), "choice": float(choice.detach()), "bce": float(bce.detach()), **out,
                "acc": float(acc), "grad_norm": norm}

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
            "val/auc_err": 1.0 - ranking_auc(p, y),  # best_metric: val/auc_err picks the best-ranking expert
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
