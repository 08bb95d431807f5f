"""Training settings: :class:`TrainConfig`, every stage's defaults, YAML files and ``--set NAME=VALUE`` overrides.

Precedence: built-in defaults < the stage's defaults < ``--config FILE.yaml`` < ``--set`` < named options.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError


@dataclass
class TrainConfig:
    """Every training setting. Stage defaults (``STAGE_DEFAULTS``) override these; a YAML file overrides those;
    command-line options override everything. Stored in every checkpoint and in ``RUN/config.yaml``."""

    stage: str = "base"  # sync | base | hr | reader
    data: str = ""  # preprocessed dataset folder (hyperlips preprocess)
    out: str = ""  # run folder: checkpoints, logs, exported model
    # starting points
    init: str | None = None  # weights to start the trained network from (any checkpoint hyperlips loads)
    expert: str | None = None  # base: the sync expert checkpoint (default: the shipped compact expert; "off": no
    # sync loss)
    base: str | None = None  # hr: the trained HyperLips-Base checkpoint that renders the HR inputs
    hr_size: int = 128  # hr: output size 128, 256 or 512
    # optimisation
    batch_size: int = 8  # windows (sync/base) or frames (hr) per process per step
    lr: float = 1e-4
    disc_lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    max_steps: int = 100_000
    grad_clip: float = 1.0  # max gradient norm per network; 0 = off
    bn_batches: int = 0  # re-estimate BatchNorm running statistics on this many training batches before every
    # validation and checkpoint (0 = off; the sync stage's default is 8, see train/validation.recalibrate_bn)
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | on (fp16, CUDA) | bf16 (CPU or CUDA) | off
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: the local rank's GPU)
    seed: int = 0
    workers: int = 2  # DataLoader worker processes per training process
    threads: int = 0  # CPU threads for torch (0: torch's default)
    # losses
    sync_weight: float = 0.03  # base: weight of the sync-expert loss (reference §6.2)
    disc_weight: float = 0.2  # base: weight of the adversarial loss; L1 gets 1 - sync - disc
    adv_weight: float = 1.0  # hr: relativistic GAN
    perceptual_weight: float = 1.0  # hr: VGG19 (fallback: discriminator feature matching + SSIM)
    l1_weight: float = 1.0  # hr: whole-image L1
    lip_l1_weight: float = 1.0  # hr: L1 on the lip box
    lip_lpips_weight: float = 1.0  # hr: LPIPS on the lip box (fallback: SSIM)
    vgg19_weights: str | None = None  # path to vgg19-dcbb9e9d.pth (default: the torch hub cache)
    lpips_heads: str | None = None  # path to LPIPS vgg.pth v0.1 heads (default: lpips package / hub cache)
    vgg16_weights: str | None = None  # path to vgg16-397923af.pth for LPIPS (default: the torch hub cache)
    # sync expert sampling
    min_shift: int = 3  # sync: off-sync training pairs are shifted by at least this many frames
    val_min_shift: int = 5  # sync: off-sync validation pairs are shifted by at least this many frames
    flip: float = 0.5  # sync: probability of mirroring a training window
    sync_candidates: int = 1  # sync: audio windows per face stack; above 1 the expert learns to pick the in-sync one
    # among sync_candidates - 1 shifted ones (cross-entropy over similarity / sync_temperature, plus the BCE)
    sync_temperature: float = 0.1
    sync_aux_weight: float = 0.0  # sync, multiple choice: weight of the mouth-opening MSE of both embeddings
    augment: bool = False  # sync: random shift/zoom, colour, grey and blur of the faces; gain, noise and a band
    # mask on the mel (train/sync.py augment_windows)
    # HyperLips-Lite (`train base --model lite`, `finetune`)
    model: str = "hyperlips-base"  # base stage: the generator trained (hyperlips-base | hyperlips-lite); sync stage:
    # the expert (syncnet | syncnet-lite; anything else means syncnet)
    lite: dict = dataclasses.field(default_factory=dict)  # LiteConfig fields of a new Lite network (widths, ...)
    mouth_weight: float = 4.0  # lite: L1 weight inside the lip box (1 elsewhere in the generated rows)
    edge_weight: float = 0.5  # lite: L1 between image gradients (sharp lips and teeth), generated rows
    teacher_forcing: float = 0.8  # lite: share of samples rendered from the real mouth shape (else the predicted)
    auto_shape_gain: bool = True  # lite: predicted shapes scaled to the real shapes' spread on the held-out frames
    shape_noise: float = 0.1  # lite: noise added to the real shapes the renderer sees (standard deviation)
    mirror: float = 0.0  # lite: share of renderer samples mirrored left-right (faces, lip box and mouth shape)
    source_shift: float = 0.0  # lite: share of renderer samples shown the upper half of a frame 4-12 frames away
    # (data.frames.SOURCE_GAP), so the renderer draws the mouth from the shape, not from the upper face's movement
    temporal_weight: float = 0.0  # lite: > 0: each sample comes with the frame after it (a step renders twice
    # batch_size faces) and this weighs the L1 between the generated and the real change from one to the other
    audio_steps: int = 600  # lite: steps fitting the audio encoder before the renderer trains (train/lite_audio.py)
    audio_lr: float = 2e-3  # lite: its peak learning rate (one cycle)
    audio_w_open: float = 1.0  # lite: weight of the inner-lip opening in its loss
    audio_blend: bool = False  # lite, from --init weights: keep the share of the fitted audio encoder (1, 0.8 or
    # 0.6; the rest its starting weights') that reads the last 15% of the training frames best (train/audio_blend.py),
    # less where those shares read other voices badly (audio_voice_margin)
    audio_voice_margin: float = 0.1  # lite, with audio_blend: a share must tell espeak-ng voices' /p b m/ from their
    # vowels (AUC) at most this far below the starting weights, else less of the fit is kept (1 or more: no check)
    mouth_gan_weight: float = 0.0  # lite: adversarial loss of a PatchGAN on 64 px mouth crops (sharper lips, teeth)
    mouth_gan_start: int = 500  # lite: the step it starts at (the renderer first learns the face from L1)
    reader_weight: float = 0.0  # lite: weight of the mouth reader's loss (its lip and jaw points on the generated
    # face against those on the real face, in pixels; models/mouth_reader.py); 0 = off
    reader: str | None = None  # lite: the mouth reader's weights (default: the shipped one)
    # schedule and budget
    lr_schedule: str = "constant"  # constant | cosine (to 10% over the planned steps, after warmup_steps)
    warmup_steps: int = 0
    max_minutes: float = 0.0  # wall-clock budget of the run (validation included; 0 = none); the run stops,
    # validates and saves when it is spent. Counted across resumes.
    patience: int = 0  # stop once this many validations in a row bring no new best (0 = never; the best checkpoint
    # is kept either way; train/budget.patience_spent)
    progress: bool = False  # a progress bar with ETA instead of a line per logged step
    progress_file: str | None = None  # JSON status (step, elapsed, eta, last validation, preview) for other tools
    # bookkeeping
    log_every: int = 10
    image_every: int = 500
    val_every: int = 1000
    val_samples: int = 256
    val_at_start: bool = False  # also validate before the first step of a fresh run (the starting point)
    ckpt_every: int = 1000
    keep_last: int = 3
    best_metric: str = ""  # metric that picks best.pt ("" = the stage's default; loop.higher_is_better: which way)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cls()
        for k, v in d.items():
            setattr(cfg, k, _coerce(k, v))
        _check_ranges(cfg)
        return cfg

    def replace(self, **kw) -> "TrainConfig":
        d = self.to_dict()
        d.update(kw)
        return TrainConfig.from_dict(d)


STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sync": {"batch_size": 64, "lr": 1e-4, "betas": (0.9, 0.999), "val_every": 1000, "bn_batches": 8},
    "base": {"batch_size": 28, "lr": 1e-4, "disc_lr": 5e-4, "betas": (0.5, 0.999), "val_every": 1000},
    "hr": {"batch_size": 28, "lr": 1e-4, "disc_lr": 5e-4, "betas": (0.5, 0.999), "ckpt_every": 3000,
           "val_every": 3000},
    "reader": {"batch_size": 64, "lr": 2e-3, "betas": (0.9, 0.999), "lr_schedule": "cosine", "warmup_steps": 150,
               "max_steps": 3000, "val_every": 500, "ckpt_every": 500, "workers": 0},
}


# a model's defaults come after its stage's (then --config, --set and the options, as for every stage)
LITE_DEFAULTS: dict[str, Any] = {"batch_size": 16, "lr": 5e-4, "betas": (0.9, 0.99),
                                 "lr_schedule": "cosine", "warmup_steps": 100, "val_every": 1000, "ckpt_every": 1000,
                                 "workers": 0, "amp": "auto"}  # HyperLips-Lite (`train base --model lite`, finetune)
# the compact expert (`train sync --model lite`): a faster schedule, multiple choice among 8 windows and the mouth
# opening as a second target (the recipe of the shipped expert; docs/training.md)
SYNC_LITE_DEFAULTS: dict[str, Any] = {"batch_size": 32, "lr": 1e-3, "betas": (0.9, 0.999), "lr_schedule": "cosine",
                                      "warmup_steps": 200, "sync_candidates": 8, "sync_aux_weight": 1.0, "val_every": 500,
                                      "ckpt_every": 500}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"hyperlips-lite": LITE_DEFAULTS, "syncnet-lite": SYNC_LITE_DEFAULTS}


# settings that make no sense below a bound (a batch of 0 frames, a negative learning rate): refused with one line
# instead of failing deep inside torch or the loop
_AT_LEAST = {"batch_size": 1, "max_steps": 0, "workers": 0, "threads": 0, "log_every": 1, "image_every": 0,
             "val_every": 0, "val_samples": 1, "ckpt_every": 1, "keep_last": 1, "warmup_steps": 0, "patience": 0,
             "audio_steps": 0, "bn_batches": 0, "sync_candidates": 1, "min_shift": 1, "val_min_shift": 1}
_ABOVE_ZERO = ("lr", "disc_lr", "audio_lr")
_NOT_NEGATIVE = ("max_minutes", "grad_clip")
_SHARES = ("flip", "teacher_forcing", "mirror", "source_shift")  # probabilities: between 0 and 1


def _check_ranges(cfg: "TrainConfig") -> None:
    for name, low in _AT_LEAST.items():
        v = getattr(cfg, name)
        if v < low:
            raise UserError(f"training setting {name}={v!r}: must be at least {low}")
    for name in _ABOVE_ZERO:
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v > 0):
            raise UserError(f"training setting {name}={v!r}: must be a number above 0")
    for name in _NOT_NEGATIVE:
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"training setting {name}={v!r}: must be a number of at least 0")
    for name in _SHARES:
        v = getattr(cfg, name)
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise UserError(f"training setting {name}={v!r}: a share of the samples, between 0 and 1")


# settings only some runs read (stage, or the base stage's model): given to another run they change nothing, which
# is said (`train sync --set mouth_weight=8` trained as before, silently)
_READ_ONLY_BY: dict[str, frozenset[str]] = {
    "train sync": frozenset({"min_shift", "val_min_shift", "flip", "sync_candidates", "sync_temperature",
                             "sync_aux_weight", "augment"}),
    "train hr": frozenset({"base", "hr_size", "adv_weight", "perceptual_weight", "l1_weight", "lip_l1_weight",
                           "lip_lpips_weight", "vgg19_weights", "lpips_heads", "vgg16_weights"}),
    "train base --model base": frozenset({"expert", "sync_weight", "disc_weight"}),
    "train base --model lite": frozenset({"mouth_weight", "edge_weight", "teacher_forcing", "auto_shape_gain",
                                          "shape_noise", "mirror", "source_shift", "temporal_weight", "audio_steps",
                                          "audio_lr", "audio_w_open", "audio_blend", "audio_voice_margin",
                                          "mouth_gan_weight", "mouth_gan_start", "reader_weight", "reader"}),
}


def _run_name(stage: str, model: str | None) -> str:
    if stage == "base":
        return "train base --model lite" if model == "hyperlips-lite" else "train base --model base"
    return f"train {stage}"


def ignored_settings(names, runs) -> list[str]:
    """Of the settings ``names`` (given with --set or in a --config file), those that none of ``runs`` ((stage,
    model) pairs: the runs one command makes) reads, each as "NAME (read by RUN)"."""
    reading = {_run_name(stage, model) for stage, model in runs}
    out = []
    for name in sorted(set(names)):
        owners = [run for run, read in _READ_ONLY_BY.items() if name in read]
        if owners and not reading.intersection(owners):
            out.append(f"{name} (read by {' and '.join(owners)})")
    return out


def warn_ignored(names, runs, what: str) -> None:
    """Say the settings of ``names`` that the command's runs do not read (``what``: the command, as typed)."""
    from ..errors import warn

    ignored = ignored_settings(names, runs)
    if ignored:
        warn(f"{what} does not read {', '.join(ignored)}: {'it changes' if len(ignored) == 1 else 'they change'} "
             "nothing here")


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's type (strings like '1e-4' become numbers), or raise UserError."""
    kind = str(_field_types()[name])
    try:
        if value is None:
            if "None" in kind:
                return None
            raise ValueError("may not be empty")
        if name == "betas":
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            try:
                b = tuple(float(v) for v in value if not isinstance(v, bool))
            except (TypeError, ValueError):
                b = ()
            if len(b) != 2 or isinstance(value, (int, float)) or len(value) != 2:
                raise ValueError("needs two numbers, e.g. betas=0.5,0.999")
            return b
        if isinstance(value, bool) and kind.startswith(("int", "float")):  # YAML's yes/no/on/off: flip=yes was 1.0
            raise ValueError(f"must be a {'whole number' if kind.startswith('int') else 'number'}, not {value}")
        if kind.startswith("int"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError("must be a whole number") from None
            if not number.is_integer():
                raise ValueError("must be a whole number")
            return int(number)
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError("must be true or false")
            if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
                return bool(value)
            raise ValueError("must be true or false")  # (0.5 or 2 turned it on: a share was meant, or a level)
        if kind.startswith("float"):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ValueError("must be a number") from None
        if kind.startswith("str"):
            return None if ("None" in kind and str(value).lower() in ("", "none", "null")) else str(value)
        return value
    except (TypeError, ValueError) as e:
        raise UserError(f"training setting {name}={value!r}: {e}") from None


BUILT_IN_CONFIGS = Path(__file__).resolve().parent / "configs"  # sync, base, hr (the original's values), small-cpu


def built_in_config(path: str | os.PathLike) -> Path | None:
    """The packaged config a name stands for (``small-cpu``, ``base.yaml``, or ``configs/base.yaml`` as a source
    checkout once had it), where no such file exists; else None."""
    p = Path(path)
    if p.is_file() or str(p.parent) not in (".", "configs") or p.suffix not in ("", ".yaml"):
        return None
    found = BUILT_IN_CONFIGS / f"{p.stem}.yaml"
    return found if found.is_file() else None


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file of settings (a mapping), checked against :class:`TrainConfig`'s fields; a built-in config's name
    (:func:`built_in_config`) stands for its file."""
    import yaml

    p = built_in_config(path) or Path(path)
    if not p.is_file():
        names = ", ".join(sorted(f.stem for f in BUILT_IN_CONFIGS.glob("*.yaml")))
        raise UserError(f"config file not found: {p} (the built-in ones: {names})")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: a training config must be a mapping of setting: value")
    TrainConfig.from_dict(d)  # unknown names fail here, with the file named by the caller
    return d


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "amp=off"]`` -> dict (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--set expects NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        name = k.strip().replace("-", "_")
        if not v.strip():  # (an unset shell variable: the default was kept without a word)
            raise UserError(f"--set {it.strip()} gives no value: give one ({k.strip()}=VALUE; none where the setting "
                            "takes none), or leave it out for its default")
        value = yaml.safe_load(v)
        kind = str(_field_types().get(name, ""))
        if value is None and kind and "None" not in kind:  # null, ~: dropped as "not given", the default kept
            raise UserError(f"--set {it.strip()}: {name} takes a value, not none (leave it out for its default)")
        out[name] = value
    return out


def build_config(stage: str, file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                 model_defaults: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the stage's defaults, then the model's (``model_defaults``: HyperLips-Lite's or the compact
    expert's), then the YAML file, then ``overrides`` (None values are ignored)."""
    d: dict[str, Any] = {"stage": stage, **STAGE_DEFAULTS.get(stage, {}), **(model_defaults or {})}
    if file is not None:
        d.update(load_config(file))
        d["stage"] = stage
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(d)


