"""``train base --model lite`` and ``finetune``: HyperLips-Lite.

Two parts learn side by side, each with its own optimiser:

- the **audio encoder** learns the mouth shape of each frame from the mel window around it (MSE against the
  shape measured on the real frame, ``face.mouth_shape``): a direct, low-dimensional target that a few minutes
  of footage can teach;
- the **renderer** (shape code -> hypernetwork edits -> U-Net) learns to draw the face from the masked frame, a
  reference frame and a mouth shape: the real one on most samples (``teacher_forcing``, with a little noise),
  the audio encoder's prediction (detached) on the others, so it also renders predicted shapes well. Its loss
  is L1 on the generated rows, ``mouth_weight`` times inside the lip box, plus L1 between image gradients
  (``edge_weight``), which keeps lips and teeth sharp.

Validation runs what inference runs (the mouth shape predicted from audio, one reference frame from the
training part) on the held-out frames in order, and measures the mouth opening on the generated faces with
FaceMesh: ``val/opening_r`` is its correlation with the real frames' opening (``val/opening_err`` = 1 - r picks
``best``); ``val/opening_r_other`` the same rendered from the upper half of a frame of another moment, as ``sync``
renders a video with new speech (``best_metric: val/opening_err_other``, 1 - that r, keeps the best by it);
``val/shape_r`` the same for the predicted shapes alone, before rendering; ``val/sharpness`` the
variance of the Laplacian inside the lip boxes of the generated faces over that of the real ones (the sharpness
ratio ``eval`` reports, here on the 128 px faces before any paste-back: below 1 = blurrier).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.datasets import BASE_SIZE, Manifest
from ..errors import UserError
from .stage import Stage, init_source
from .losses import box_mask, freeze, gan_discriminator_loss, gan_generator_loss, psnr
from .lite_batch import (change_loss, image_gradients, lip_box_laplacian, masked_faces, mirrored, mouth_crops,
                         paired_batch)
from .lite_encoder import spread_gain
from .lite_settings import BLEND_KEEPS, needs_phone_head, new_network, with_settings
from .runlog import image_grid, to_images

PREVIEW_FRAMES = 8


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def held_out_frames(val_clips, train_ds, references, steps: int, mel_norm: str | None = "utterance",
                    mel_smooth: int = 0, phones: bool = False, other_moment: bool = False):
    """The validation frames in order: a clip split in time is measured against its training part (shapes and
    reference frame), a held-out clip against itself. The mel as the network reads it (``mel_norm``,
    ``mel_smooth``, ``phones``: ``data.frames.FrameDataset``'s); ``other_moment``: each with the frame half its
    clip range away too."""
    from ..data.frames import FrameDataset, shape_reference

    refs = {c.id: train_ds.shape_refs[c.id] for c in val_clips if c.id in train_ds.shape_refs}
    for c in val_clips:
        if c.id not in refs:
            refs[c.id] = shape_reference(c, c.frame_range)
    return FrameDataset(val_clips, steps, ordered=True, shape_refs=refs, references=references, mel_norm=mel_norm,
                        mel_smooth=mel_smooth, phones=phones, other_moment=other_moment)


def calibrate_shape_gain(model, data, max_gain: float = 3.0, batch_size: int = 64) -> float:
    """The gain that gives the audio encoder's shapes on the held-out frames of dataset ``data`` the spread of
    the real ones (a regression on unseen speech shrinks towards the average mouth; rendered, that is a mouth
    that barely moves). Clipped to [1, max_gain]."""
    from ..data.frames import FrameDataset, reference_frame

    m = Manifest.load(data)
    train, val = m.open_clips("train"), m.open_clips("val")
    if not val:
        return 1.0
    ranges = {c.id: c.frame_range for c in train}
    train_ds = FrameDataset(train, model.mel_steps, mel_norm=model.mel_norm, mel_smooth=model.mel_smooth,
                            phones=model.phones)
    refs = {c.id: reference_frame(c, ranges.get(c.id, c.frame_range)) for c in val}
    ds = held_out_frames(val, train_ds, refs, model.mel_steps, model.mel_norm, model.mel_smooth, model.phones)
    return spread_gain(model.audio_encoder, ds, max_gain, batch_size)


class LiteStage(Stage):
    name = "lite"
    model_name = "hyperlips-lite"
    best_metric = "val/opening_err"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        from ..data.frames import reference_frame
        from ..models import load_checkpoint

        self.manifest = Manifest.load(cfg.data)
        self._fit_head = False
        self._blend = False  # the audio encoder's fit may be blended with its starting weights (audio_blend)
        if cfg.init:
            self.gen, info = load_checkpoint(init_source(cfg), name="hyperlips-lite", device=ctx.device)
            loaded = self.gen
            if cfg.lite:
                self.gen = with_settings(loaded, cfg.lite, cfg.init, ctx.say, cfg.audio_steps)
                self._fit_head = needs_phone_head(loaded, self.gen)
            same = all(getattr(self.gen.config, k) == getattr(loaded.config, k) for k in BLEND_KEEPS)
            self._blend = bool(cfg.audio_blend) and same  # not onto a re-initialised encoder or a new phone head
        else:
            self.gen = new_network(cfg.lite or {})
        self.gen.to(ctx.device)
        # the audio encoder is fitted on its own (fit_audio) and frozen: DDP must not wait for gradients it never
        # gets in the renderer's steps (under torchrun the second step stopped with "parameters not used")
        self.gen.audio_encoder.requires_grad_(False)
        self.gen_ddp = ctx.wrap(self.gen)
        ids = {id(p) for p in self.gen.audio_encoder.parameters()}
        self.renderer_params = [p for p in self.gen.parameters() if id(p) not in ids]
        self.opt_r = torch.optim.Adam(self.renderer_params, lr=cfg.lr, betas=tuple(cfg.betas))
        self.disc = self.opt_d = None
        if cfg.mouth_gan_weight > 0:
            from ..models.lite_disc import MouthDiscriminator

            self.disc = MouthDiscriminator().to(ctx.device)
            self.disc_ddp = ctx.wrap(self.disc)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))
        self.reader = self._load_reader(cfg, ctx) if cfg.reader_weight > 0 else None
        # the training part of each clip measures every clip's shapes and gives validation its reference frame
        self.train_clips = self.manifest.open_clips("train")
        self.val_clips = self.manifest.open_clips("val")
        self._train_ds = None
        self._val_ds = None
        train_ranges = {c.id: c.frame_range for c in self.train_clips}
        self.references = {c.id: reference_frame(c, train_ranges.get(c.id, c.frame_range)) for c in self.val_clips}
        self._mesh = None
        self._gain_ready = False

    @staticmethod
    def _load_reader(cfg, ctx):
        """The frozen mouth reader of ``reader_weight`` (``cfg.reader``, else the shipped one)."""
        from ..models import load_checkpoint
        from ..models.shipped import absent
        from ..models.shipped import reader as shipped_reader

        path = cfg.reader
        if not path:
            found = shipped_reader()
            if found is None:
                raise UserError(f"reader_weight needs a mouth reader: --set reader=PATH ({absent('mouth reader')})")
            path = str(found.path)
        net = freeze(load_checkpoint(path, name="mouth-reader", device=ctx.device)[0])
        ctx.say(f"mouth reader loss (weight {cfg.reader_weight:g}): {path}")
        return net

    def modules(self):
        m = {"generator": self.gen}
        if self.disc is not None:
            m["discriminator"] = self.disc
        return m

    def optimizers(self):
        o = {"renderer": self.opt_r}
        if self.opt_d is not None:
            o["discriminator"] = self.opt_d
        return o

    def exported(self):
        return self.gen

    def train_dataset(self):
        from ..data.frames import FrameDataset

        if self._train_ds is None:
            self._train_ds = FrameDataset(self.train_clips, self.gen.mel_steps, seed=self.cfg.seed,
                                          mel_norm=self.gen.mel_norm, mel_smooth=self.gen.mel_smooth,
                                          pairs=self.cfg.temporal_weight > 0, phones=self.gen.phones,
                                          source_shift=self.cfg.source_shift)
        return self._train_ds

    def val_dataset(self):
        if not self.val_clips:
            return None
        if self._val_ds is None:
            self._val_ds = held_out_frames(self.val_clips, self.train_dataset(), self.references, self.gen.mel_steps,
                                           self.gen.mel_norm, self.gen.mel_smooth, self.gen.phones, other_moment=True)
        return self._val_ds

    # ------------------------------------------------------------------ training
    def _image_loss(self, fake: Tensor, target: Tensor, lip_box: Tensor,
                    shifted: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(L1, gradient L1) over the generated rows, weighted ``mouth_weight`` inside the lip box. Samples
        ``shifted`` (N,) bool were shown another frame's upper half: the generated rows above the mask, which
        copy what they were shown, are not compared with the target's."""
        r0 = target.shape[2] - self.gen.decoder_rows(target.shape[2])
        w = 1.0 + (self.cfg.mouth_weight - 1.0) * box_mask(lip_box, target.shape[2], target.shape[3])
        wy = w[:, :, 1:]  # a vertical difference's weight: its lower row's
        if shifted is not None and bool(shifted.any()):
            rows = torch.arange(target.shape[2], device=w.device).view(1, 1, -1, 1) < target.shape[2] // 2
            keep = ~(shifted.view(-1, 1, 1, 1) & rows)
            w, wy = w * keep, wy * keep[:, :, :-1]  # and no difference that reaches above the mask
        fake, target, w, wy = fake[:, :, r0:].float(), target[:, :, r0:], w[:, :, r0:], wy[:, :, r0:]
        l1 = ((fake - target).abs() * w).mean()
        (fx, fy), (tx, ty) = image_gradients(fake), image_gradients(target)
        edge = ((fx - tx).abs() * w[:, :, :, 1:]).mean() + ((fy - ty).abs() * wy).mean()
        return l1, edge

    def prepare(self, seconds: float | None) -> None:
        if self.cfg.audio_steps > 0:  # a fresh run; a resumed one restores the fitted encoder
            self.fit_audio(seconds)
        elif self._fit_head:  # the ensemble kept from --init, a phone head added: only the head is fitted
            from .lite_audio import fit_phone_head

            enc = self.gen.audio_encoder
            n = fit_phone_head(enc, self._audio_tracks(), enc.shape_std.detach().cpu().double().numpy())
            self.ctx.say(f"phone head fitted on {n} frames (the audio encoder's ensemble kept)")
            self._gain_ready = False

    def _audio_tracks(self):
        # per training clip range: (mel as the network reads it, frame times, shapes, has shape)
        ds = self.train_dataset()
        tracks = []
        for ci, part in enumerate(ds.parts):
            mel, _ = ds.clip_mel(ci)
            times = np.asarray([part.clip.time_of(int(i)) for i in part.index])
            tracks.append((mel, times, part.shapes, part.has_shape))
        return tracks

    def fit_audio(self, seconds: float | None = None) -> None:
        """Fit the audio encoder on the training frames, in at most ``seconds``, keeping the share of the fit
        ``audio_blend`` chooses (``train/lite_encoder.py``); it is frozen afterwards."""
        from .lite_encoder import fit_person_encoder

        fit_person_encoder(self.gen, self._audio_tracks(), self.cfg, self.ctx, seconds, self._blend)
        self._gain_ready = False

    def ensure_shape_gain(self) -> float:
        """With ``auto_shape_gain``, once the audio encoder is fitted (or restored): scale its shapes so that on the
        held-out frames they spread as much as the real ones (what ``finetune`` also stores in the model). The
        renderer then trains, is validated and is chosen with the shapes it will be given."""
        if self._gain_ready or not self.cfg.auto_shape_gain:
            return float(self.gen.config.shape_gain)
        import dataclasses

        ds = self.val_dataset()
        gain = 1.0 if ds is None else round(spread_gain(self.gen.audio_encoder, ds, device=self.ctx.device), 3)
        self.gen.config = dataclasses.replace(self.gen.config, shape_gain=gain)
        self._gain_ready = True
        self.ctx.say(f"mouth-shape gain {gain:.2f} (the audio encoder's held-out shapes matched to the real spread)")
        return gain

    def train_step(self, batch, step):
        ctx, cfg = self.ctx, self.cfg
        self.gen.audio_encoder.eval()  # frozen: its dropout stays off while the renderer trains
        self.ensure_shape_gain()
        pairs = "has_next" in batch  # each target with the frame after it: one batch of both, drawn alike
        if pairs:
            batch = paired_batch(batch)
        faces, target = masked_faces(batch)
        real = batch["shape"].float()
        has = batch["has_shape"].bool()
        with torch.no_grad(), ctx.autocast():
            pred = self.gen.predict_shape(batch["mel"].float())
        l_shape = F.mse_loss(pred.float()[has], real[has]) if bool(has.any()) else pred.float().sum() * 0
        n = real.shape[0]
        half = n // 2 if pairs else n
        twice = (lambda t: torch.cat([t, t])) if pairs else (lambda t: t)  # a pair shares its draws
        forced = twice(torch.rand(half, 1, device=real.device) < cfg.teacher_forcing) & has[:, None]
        noise = twice(torch.randn(half, real.shape[1], device=real.device))
        shown = torch.where(forced, real + cfg.shape_noise * noise, pred.detach().float())
        lip_box = batch["lip_box"]
        if cfg.mirror > 0:  # another face for the renderer: the sample seen in a mirror, its shape mirrored too
            faces, target, shown, lip_box = mirrored(faces, target, shown, lip_box,
                                                     twice(torch.rand(half, device=real.device) < cfg.mirror))
        with ctx.autocast():
            fake = self.gen_ddp(None, faces, shown)
        l1, edge = self._image_loss(fake, target, lip_box, batch.get("shifted"))
        l_img = l1 + cfg.edge_weight * edge
        losses = {"l1": l1, "edge": edge}
        if pairs:  # the mouth changes from frame to frame as the real one does: no change the shapes do not make
            both = forced[:half, 0] & forced[half:, 0] & batch["has_next"]
            r0 = target.shape[2] - self.gen.decoder_rows(target.shape[2])
            if "shifted" in batch:  # rows above the mask show the source's change, not the target's
                r0 = max(r0, target.shape[2] // 2)
            change = change_loss(fake, target, lip_box, both, r0, cfg.mouth_weight)
            l_img = l_img + cfg.temporal_weight * change
            losses["change"] = change
        if self.reader is not None:  # the lips and jaw where the real face has them, as the reader sees both
            with torch.no_grad():
                want = self.reader(target)
            read = (self.reader(fake.float()) - want).abs().mean() * BASE_SIZE  # pixels of the 128 px crop
            l_img = l_img + cfg.reader_weight * read
            losses["read"] = read
        gan = self.disc is not None and step >= cfg.mouth_gan_start
        if gan:
            fake_mouth = mouth_crops(fake, lip_box)
            with ctx.autocast():
                adv = gan_generator_loss(self.disc_ddp(fake_mouth).float())
            l_img = l_img + cfg.mouth_gan_weight * adv
            losses["adv"] = adv
        ctx.check_finite("generator", losses, step)
        if gan:
            self.disc.requires_grad_(False)  # the generator's step leaves the judge alone
        ctx.backward_step(l_img, self.opt_r, self.renderer_params)
        out = {k: v.item() for k, v in losses.items()}
        out["shape"] = l_shape.item()  # the frozen encoder on these training frames (for the logs)
        if gan:
            self.disc.requires_grad_(True)
            real_mouth = mouth_crops(target, lip_box)
            with ctx.autocast():
                l_d = gan_discriminator_loss(self.disc_ddp(real_mouth).float(), self.disc_ddp(fake_mouth.detach()).float())
            ctx.check_finite("discriminator", {"disc": l_d}, step)
            ctx.backward_step(l_d, self.opt_d, self.disc.parameters())
            out["disc"] = l_d.item()
        return out

    # ------------------------------------------------------------------ validation
    def _face_mesh(self):
        if self._mesh is None:
            from ..face.landmarks import FaceMesh

            self._mesh = FaceMesh(static=True)
        return self._mesh

    def mesh_opening(self, faces_uint8: np.ndarray) -> np.ndarray:
        """Mouth opening measured by FaceMesh on generated 128 px faces (upscaled to 256 as preprocessing does)."""
        import cv2

        from ..face.mouth_shape import mouth_opening

        mesh = self._face_mesh()
        out = np.full(len(faces_uint8), np.nan, np.float32)
        for i, img in enumerate(faces_uint8):
            lm = mesh.landmarks(cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR))
            if lm is not None:
                out[i] = mouth_opening(lm[None])[0]
        return out

    def val_batch(self, batch):
        from ..face.mouth_shape import shape_opening

        self.ensure_shape_gain()
        faces, target = masked_faces(batch)
        pred = self.gen.predict_shape(batch["mel"].float()).float()
        fake = self.gen.render(faces, pred).float()
        box = box_mask(batch["lip_box"], target.shape[2], target.shape[3])
        r0 = target.shape[2] - self.gen.decoder_rows(target.shape[2])
        mouth_l1 = ((fake - target).abs() * box).flatten(1).sum(1) / (box.flatten(1).sum(1) * 3).clamp_min(1)
        imgs = np.stack(to_images(fake))
        boxes = batch["lip_box"].float().numpy()
        real = batch["shape"].float()
        has = batch["has_shape"].float()
        other = {}
        if "other_source" in batch:  # as sync renders: the upper half of a frame spoken with other words
            shown, _ = masked_faces({"target": batch["target"], "source": batch["other_source"],
                                     "reference": batch["reference"]})
            moved = np.stack(to_images(self.gen.render(shown, pred).float()))
            other["opening_gen_other"] = torch.from_numpy(self.mesh_opening(moved))
        return {
            **other,
            "mouth_l1": mouth_l1,
            "lower_psnr": psnr(fake[:, :, r0:], target[:, :, r0:]),
            "shape_mse": torch.where(has > 0, ((pred - real) ** 2).mean(1), torch.full_like(has, float("nan"))),
            "opening_pred": torch.from_numpy(shape_opening(pred.numpy())),
            "opening_real": batch["opening"].float(),
            "opening_gen": torch.from_numpy(self.mesh_opening(imgs)),
            "sharp_gen": torch.from_numpy(lip_box_laplacian(imgs, boxes)),
            "sharp_real": torch.from_numpy(lip_box_laplacian(np.stack(to_images(target)), boxes)),
        }

    def val_metrics(self, values):
        out = {f"val/{k}": float(np.nanmean(values[k])) for k in ("mouth_l1", "lower_psnr", "shape_mse") if k in values}
        r_gen = pearson(values["opening_gen"], values["opening_real"])
        out["val/opening_r"] = r_gen
        out["val/opening_err"] = 1.0 - r_gen if np.isfinite(r_gen) else 2.0
        out["val/shape_r"] = pearson(values["opening_pred"], values["opening_real"])
        if "opening_gen_other" in values:
            r_other = pearson(values["opening_gen_other"], values["opening_real"])
            out["val/opening_r_other"] = r_other
            out["val/opening_err_other"] = 1.0 - r_other if np.isfinite(r_other) else 2.0
        out["val/faces_found"] = float(np.isfinite(values["opening_gen"]).mean())
        gen, real = values.get("sharp_gen"), values.get("sharp_real")
        if real is not None and np.isfinite(real).any() and np.nanmean(real) > 0:
            out["val/sharpness"] = float(np.nanmean(gen) / np.nanmean(real))
        return out

    def images(self, batch):
        """Rows: masked input, reference, generated (predicted shape), generated (real shape), real; 4 samples."""
        was = self.gen.training
        self.gen.eval()
        try:
            small = {k: v[:4] for k, v in batch.items()}
            faces, target = masked_faces(small)
            with torch.no_grad():
                pred = self.gen(small["mel"].float(), faces).float()
                real = self.gen.render(faces, small["shape"].float()).float()
        finally:
            self.gen.train(was)
        return image_grid([to_images(faces[:, :3]), to_images(faces[:, 3:]), to_images(pred), to_images(real),
                           to_images(target)])

    def preview(self):
        """Held-out frames spread over the validation set: real (top) and generated from audio (bottom)."""
        ds = self.val_dataset()
        if ds is None:
            return None
        from torch.utils.data import default_collate

        picks = np.linspace(0, len(ds) - 1, min(PREVIEW_FRAMES, len(ds))).round().astype(int)
        batch = default_collate([ds[int(i)] for i in picks])
        batch = {k: (v.to(self.ctx.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        was = self.gen.training
        self.gen.eval()
        try:
            faces, target = masked_faces(batch)
            with torch.no_grad():
                fake = self.gen(batch["mel"].float(), faces).float()
        finally:
            self.gen.train(was)
        return image_grid([to_images(target), to_images(fake)])

    def bn_module(self):
        return self.gen

    def bn_forward(self, batch):
        faces, _ = masked_faces(batch)
        self.gen(batch["mel"].float(), faces)
