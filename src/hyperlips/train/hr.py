"""``train hr``: the stage-2 HR decoder (reference §6.3), with its inputs rendered from a trained base checkpoint.

The original made its HR training inputs in three lossy, mismatched steps (§7.6-7.7, §9.13): it rendered whole
stage-1 videos (pasted back, DIVX-encoded, re-encoded by ffmpeg), re-detected faces on the renders with unpadded
boxes, cropped and JPEG-saved them, and drew sketches at the native crop size with blur and threshold, while
inference feeds the raw network output of the padded crop and a 128-px canvas sketch. Here
:func:`build_hr_inputs` runs the base model directly on the preprocessed crops, exactly as ``pipeline.LipSync``
does at inference:

- same crop (``pipeline.face_crop`` at preprocessing), same reference rule (the best-detection frame of the clip),
  same per-frame mel windows (``media.audio.mel_windows``), base model in eval mode;
- the output is stored losslessly (PNG) after rounding to uint8, never pasted, re-encoded or re-detected;
- its sketch is made as the pipeline makes it: FaceMesh (RGB) on the output resized to 256, landmarks scaled to
  128, ``face.landmarks.draw_sketch`` (128 canvas, thickness 6, no blur/threshold), the last good landmarks reused
  when FaceMesh finds no face;
- the decoder is always fed 128-px inputs and outputs ``hr_size`` (the original fed hr_size inputs at inference);
- the target is the same crop at ``hr_size`` (``face<size>`` from ``preprocess --hr-size``), and the lip box comes
  from the target's landmarks, not a JPEG mask tested for exact 255.

Losses (all weights 1 as the original, configurable): relativistic average GAN on logits (no double sigmoid),
VGG19 perceptual (RGB, ImageNet-normalised), whole-image L1, lip-box L1 and lip-box LPIPS ([-1, 1] RGB). Without
local ImageNet weights the perceptual term is discriminator feature matching + SSIM and the lip LPIPS term is lip
SSIM (said once at start).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.datasets import BASE_SIZE, CLIPS_DIR, Clip, HRDataset, ImageStack, Manifest, encode_png
from ..errors import UserError, hidden_name
from .base import LogitsOf
from .budget import clip_key
from .stage import Stage
from .runlog import image_grid, to_images
from .losses import (
    box_mask,
    crop_resize,
    feature_matching_loss,
    masked_l1,
    psnr,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
)
from .perceptual import LPIPS, VGG16_FILE, VGG19_FILE, VGG19Loss, find_file, find_lpips_heads, ssim, ssim_loss

MESH_SIZE = 256  # the pipeline runs FaceMesh on base outputs resized to 256


def content_key(path: str | os.PathLike) -> str:
    """A key of the file's content (the same Base written again, as every ``finetune`` re-run writes it, keeps its
    key: its HR inputs are not rendered again; a Base trained further gets a new one)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def build_hr_inputs(manifest: Manifest, base_checkpoint: str | os.PathLike, out: str | os.PathLike, device,
                    rank: int = 0, world: int = 1, batch_size: int = 16, say=print) -> Path:
    """Render every clip's base-model outputs and their sketches into ``out/<clip id>/`` (this rank's share of the
    clips). A clip already rendered with the same base checkpoint is not rendered again, unless the clip was made
    again since (``preprocess`` of another file under its name: its face track or sound changed)."""
    from ..face.landmarks import FaceMesh, draw_sketch
    from ..media.audio import mel_windows
    from ..models import load_checkpoint
    from ..pipeline import network_input

    out = Path(out)
    key = content_key(base_checkpoint)
    base, _ = load_checkpoint(base_checkpoint, name="hyperlips-base", device=device)
    base.to(device).eval()
    ids = sorted({c["id"] for c in manifest.clips})
    mine = ids[rank::world]
    done_clips = 0
    rendered = no_mesh = 0  # frames rendered, and those of them on which FaceMesh found no face (a blank sketch)
    for cid in mine:
        dst = out / cid
        marker = dst / "done.json"
        made_from = clip_key(manifest.root / CLIPS_DIR / cid)  # a clip made again from other footage: rendered again
        clip = Clip(manifest.root / CLIPS_DIR / cid)
        if marker.is_file():
            try:
                done = json.loads(marker.read_text(encoding="utf-8"))
                if done.get("base") == key and done.get("clip") == made_from:
                    continue
                if done.get("base") == key and "clip" not in done and done.get("frames") == clip.n_frames:
                    # rendered before markers held the clip's key (hours of Base on a CPU to render them again): the
                    # same length taken as the same clip, the key added
                    marker.write_text(json.dumps({**done, "clip": made_from}) + "\n", encoding="utf-8")
                    continue
            except (OSError, json.JSONDecodeError):
                pass
        faces = clip.stack("face128")
        n = clip.n_frames
        ref_index = int(clip.meta.get("best_index", int(np.argmax(clip.valid))))
        reference = faces.read(ref_index)
        valid = np.flatnonzero(clip.valid)
        outputs: list[bytes] = []
        sketches: list[bytes] = []
        blank = encode_png(np.zeros((BASE_SIZE, BASE_SIZE, 3), np.uint8))
        blank_gray = encode_png(np.zeros((BASE_SIZE, BASE_SIZE), np.uint8))
        last = None
        n_missing = 0
        with FaceMesh(static=False) as mesh:
            for a in range(0, len(valid), batch_size):
                idx = valid[a : a + batch_size]
                crops = faces.read_many(idx)
                x = torch.from_numpy(network_input(crops, reference)).to(device)
                mels = mel_windows(np.asarray(clip.mel), clip.times[idx], clip.fps)
                with torch.no_grad():
                    y = base(torch.from_numpy(mels).to(device), x)
                imgs = to_images(y)
                for i, img in zip(idx, imgs):
                    big = cv2.resize(img, (MESH_SIZE, MESH_SIZE), interpolation=cv2.INTER_LINEAR)
                    lm = mesh.landmarks(big)
                    if lm is None:
                        n_missing += 1
                    else:
                        last = lm[:, :2] * (BASE_SIZE / MESH_SIZE)
                    sk = draw_sketch(last, BASE_SIZE) if last is not None else np.zeros((BASE_SIZE, BASE_SIZE), np.uint8)
                    while len(outputs) < i:  # frames without a face
                        outputs.append(blank)
                        sketches.append(blank_gray)
                    outputs.append(encode_png(img))
                    sketches.append(encode_png(sk))
        while len(outputs) < n:
            outputs.append(blank)
            sketches.append(blank_gray)
        tmp = dst.parent / hidden_name(dst.name, f".partial-{os.getpid()}")  # (cut to fit a name of 255 bytes)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        ImageStack.write(tmp / "base128", outputs)
        ImageStack.write(tmp / "basesketch128", sketches)
        (tmp / "done.json").write_text(json.dumps({"base": key, "clip": made_from, "frames": n,
                                                   "no_landmarks": n_missing}) + "\n", encoding="utf-8")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        done_clips += 1
        rendered += len(valid)
        no_mesh += n_missing
    if done_clips:
        say(f"rendered HR inputs for {done_clips} clip(s) with {base_checkpoint}")
    if rendered and no_mesh > 0.5 * rendered:
        say(f"warning: FaceMesh found no face in {no_mesh} of the {rendered} faces the Base rendered, so their sketches "
            "(half of the HR decoder's input) are blank or held from an earlier frame: the Base draws no face yet "
            "(a few steps of training from scratch); train it further, or start it from trained weights")
    return out


class HRStage(Stage):
    name = "hr"
    best_metric = "val/l1"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        from ..models import HRDecoder, create_model, load_checkpoint

        if cfg.hr_size not in (128, 256, 512):
            raise UserError(f"--size must be 128, 256 or 512 (got {cfg.hr_size})")
        self.size = int(cfg.hr_size)
        self.model_name = f"hyperlips-hr-{self.size}"
        if not cfg.base:
            raise UserError("train hr needs the trained HyperLips-Base checkpoint that renders its inputs: --base PATH")
        self.manifest = Manifest.load(cfg.data)
        if self.size != BASE_SIZE and self.size not in self.manifest.sizes:
            raise UserError(f"{cfg.data} has no {self.size} px crops: preprocess again with --hr-size {self.size}")
        # the weights to start from before the inputs, which can take hours to render: a wrong file fails now
        self.gen = (load_checkpoint(cfg.init, name=self.model_name, device=ctx.device)[0] if cfg.init
                    else HRDecoder.for_size(self.size))
        self.inputs = Path(cfg.out) / "hr_inputs"
        self._check_same_base(cfg)
        build_hr_inputs(self.manifest, cfg.base, self.inputs, ctx.device, ctx.dist.rank, ctx.dist.world,
                        say=ctx.say)
        ctx.dist.barrier()
        self.gen.to(ctx.device)
        self.disc = create_model("hr-disc").to(ctx.device)
        self.gen_ddp = ctx.wrap(self.gen)
        self.disc_ddp = ctx.wrap(LogitsOf(self.disc))
        betas = tuple(cfg.betas)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=betas)
        self.vgg, self.lpips = self._perceptual(cfg, ctx)

    def _check_same_base(self, cfg) -> None:
        """A resumed run whose Base file was trained further in place: refused (its inputs would be rendered again
        from a Base the decoder never saw, and the run go on as if nothing changed)."""
        from .checkpoints import list_checkpoints

        if not list_checkpoints(Path(cfg.out)):
            return
        rendered = set()
        for marker in self.inputs.glob("**/done.json"):
            try:
                rendered.add(json.loads(marker.read_text(encoding="utf-8")).get("base"))
            except (OSError, json.JSONDecodeError):
                continue
        rendered.discard(None)
        if rendered and content_key(cfg.base) not in rendered:
            raise UserError(f"{cfg.base} has changed since the HR run in {cfg.out} started (its inputs were rendered "
                            "from another Base): the decoder would go on learning from a Base it never saw; train it "
                            "into a new --out folder")

    @staticmethod
    def _perceptual(cfg, ctx):
        vgg = lp = None
        missing = []
        w19 = find_file(VGG19_FILE, cfg.vgg19_weights)
        if w19 is not None:
            vgg = VGG19Loss(w19).to(ctx.device)
        else:
            missing.append(f"VGG19 ({cfg.vgg19_weights or VGG19_FILE})")
        heads, w16 = find_lpips_heads(cfg.lpips_heads), find_file(VGG16_FILE, cfg.vgg16_weights)
        if heads is not None and w16 is not None:
            lp = LPIPS(heads, w16).to(ctx.device)
        else:
            missing.append("LPIPS (" + ", ".join(n for n, f in (("lpips heads vgg.pth", heads), (VGG16_FILE, w16))
                                                  if f is None) + ")")
        if missing:
            from .perceptual import hub_checkpoints

            ctx.say(f"no local ImageNet weights for {' and '.join(missing)} (looked in {hub_checkpoints()}); using "
                    "the fallback: discriminator feature matching + SSIM instead of VGG, lip SSIM instead of LPIPS")
        return vgg, lp

    def modules(self):
        return {"generator": self.gen, "discriminator": self.disc}

    def optimizers(self):
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def exported(self):
        return self.gen

    def train_dataset(self):
        return HRDataset(self.manifest.open_clips("train"), self.inputs, self.size, seed=self.cfg.seed)

    def val_dataset(self):
        clips = self.manifest.open_clips("val")
        if not clips:
            self.ctx.say("no validation clips in the dataset: validation is skipped")
            return None
        return HRDataset(clips, self.inputs, self.size, seed=self.cfg.seed + 7919)

    def _lip_size(self) -> tuple[int, int]:
        return max(8, self.size // 4), max(16, self.size // 2)

    def train_step(self, batch, step):
        cfg = self.cfg
        x = batch["input"].float() / 255.0  # (N, 6, 128, 128)
        target = batch["target"].float() / 255.0  # (N, 3, S, S)
        lip = batch["lip_box"].float()
        with self.ctx.autocast():
            fake = self.gen_ddp(x)
        fake = fake.float()
        self.disc.requires_grad_(False)
        with self.ctx.autocast():
            with torch.no_grad():
                real_logits = self.disc.logits(target).float()
            fake_logits = self.disc.logits(fake).float()
        parts = {"adv": relativistic_generator_loss(real_logits, fake_logits)}
        if self.vgg is not None:
            parts["vgg"] = self.vgg(fake, target)
        else:
            parts["feat_match"] = feature_matching_loss(self.disc, target, fake)
            parts["ssim"] = ssim_loss(fake, target)
        self.disc.requires_grad_(True)
        parts["l1"] = (fake - target).abs().mean()
        lf, lt = crop_resize(fake, lip, self._lip_size()), crop_resize(target, lip, self._lip_size())
        parts["lip_l1"] = (lf - lt).abs().mean()
        parts["lip_lpips" if self.lpips is not None else "lip_ssim"] = (
            self.lpips(lf, lt).mean() if self.lpips is not None else ssim_loss(lf, lt))
        weights = {"adv": cfg.adv_weight, "vgg": cfg.perceptual_weight, "feat_match": cfg.perceptual_weight,
                   "ssim": cfg.perceptual_weight, "l1": cfg.l1_weight, "lip_l1": cfg.lip_l1_weight,
                   "lip_lpips": cfg.lip_lpips_weight, "lip_ssim": cfg.lip_lpips_weight}
        loss = sum(weights[k] * v for k, v in parts.items())
        self.ctx.check_finite("generator", {"total": loss, **parts}, step)
        out = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
        out["grad_norm"] = self.ctx.backward_step(loss, self.opt_g, self.gen.parameters())
        with self.ctx.autocast():
            logits = self.disc_ddp(torch.cat([target, fake.detach()], dim=0)).float()
        loss_d = relativistic_discriminator_loss(logits[: len(target)], logits[len(target):])
        self.ctx.check_finite("discriminator", {"disc": loss_d}, step)
        out["disc"] = float(loss_d.detach())
        out["disc_grad_norm"] = self.ctx.backward_step(loss_d, self.opt_d, self.disc.parameters())
        return out

    def val_batch(self, batch):
        x = batch["input"].float() / 255.0
        target = batch["target"].float() / 255.0
        fake = self.gen(x).float()
        s = fake.shape[-1]
        lip = batch["lip_box"].float()
        return {
            "l1": (fake - target).abs().flatten(1).mean(1),
            "lip_l1": masked_l1(fake, target, box_mask(lip, s, s)),
            "psnr": psnr(fake, target),
            "ssim": ssim(fake, target),
        }

    def images(self, batch):
        """Rows: base output, its sketch, HR output, ground truth (up to 4 frames)."""
        was = self.gen.training
        self.gen.eval()
        try:
            x = batch["input"][:4].float() / 255.0
            fake = self.gen(x).float()
        finally:
            self.gen.train(was)
        target = batch["target"][:4].float() / 255.0
        return image_grid([to_images(x[:, :3]), to_images(x[:, 3:]), to_images(fake), to_images(target)])
