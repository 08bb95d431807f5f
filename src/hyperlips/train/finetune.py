"""``hyperlips finetune VIDEO -o MODEL``: the digital-human workflow in one command.

1. preprocess the one video (its own audio) into ``<work>/data``; the last part of the video (``--val-seconds``,
   default 15% of it, at least 16 frames) is held out for validation;
2. fine-tune HyperLips-Base from ``--checkpoint`` (or from scratch) for ``--steps`` steps, with the sync loss when
   a sync expert is given (``--expert``); the checkpoint that did best on the held-out tail is kept;
3. with ``--hr-size``, also train the HR decoder (from ``--hr-checkpoint`` or from scratch) on the fine-tuned
   base model's renders;
4. write MODEL (and ``<MODEL>.hr<size>.safetensors``) and print the ``hyperlips sync`` command that uses them.

Re-running the same command continues where it stopped: preprocessing is skipped, training resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path, PurePosixPath

from ..errors import UserError

MIN_TRAIN_FRAMES = 48


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune HyperLips on one person's footage and write a model for `sync`",
        description="Preprocess VIDEO, fine-tune HyperLips-Base (and the HR decoder) on it with a held-out tail for "
                    "validation, and write MODEL.",
    )
    p.add_argument("video", type=Path, help="footage of one person talking, with their own voice")
    p.add_argument("-o", "--output", type=Path, required=True, help="model to write (.safetensors, or .pth for the "
                   "original's format)")
    p.add_argument("--checkpoint", help="HyperLips-Base weights to start from (default: from scratch)")
    p.add_argument("--expert", help="sync expert checkpoint for the sync loss (from `train sync`)")
    p.add_argument("--hr-size", type=int, choices=(128, 256, 512), help="also train an HR decoder of this size")
    p.add_argument("--hr-checkpoint", help="HR decoder weights to start from (default: from scratch)")
    p.add_argument("--steps", type=int, default=2000, help="base training steps (2000)")
    p.add_argument("--hr-steps", type=int, default=2000, help="HR training steps (2000)")
    p.add_argument("--batch-size", type=int, default=8, help="windows (base) or frames (HR) per step (8)")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate (5e-5)")
    p.add_argument("--val-seconds", type=float, help="seconds at the end held out for validation (default 15%%)")
    p.add_argument("--work", type=Path, help="working folder (default: <output>.work beside the output)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=2, help="data loader processes (2)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="any training setting")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run_finetune)


def _hr_path(model: Path, size: int) -> Path:
    return model.with_name(f"{model.stem}.hr{size}{model.suffix}")


def _publish(src: Path, dst: Path, name: str) -> None:
    """Copy an exported model to ``dst``: as is for .safetensors, re-saved in the original's format for .pth."""
    from ..models import load_checkpoint, save_checkpoint

    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".pth":
        model, info = load_checkpoint(src, name=name, device="cpu")
        save_checkpoint(model, dst, name, step=info.step, official=True)
    else:
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def _train(stage: str, cfg, quiet: bool):
    from .commands import stage_class
    from .loop import Trainer, latest_checkpoint

    resume = latest_checkpoint(Path(cfg.out)) is not None
    return Trainer(stage_class(stage), cfg, resume=resume, quiet=quiet).fit()


def run_finetune(args: argparse.Namespace) -> int:
    from ..data.datasets import CLIPS_DIR, META, Manifest
    from ..data.preprocess import PreprocessOptions, clip_id_of, preprocess, write_time_split_manifest
    from .loop import build_config, parse_overrides

    out = args.output
    if out.suffix not in (".safetensors", ".pth"):
        raise UserError(f"-o must end in .safetensors (or .pth for the original's format): {out}")
    if not args.video.is_file():
        raise UserError(f"video not found: {args.video}")
    if args.steps < 1 or args.hr_steps < 1:
        raise UserError("--steps and --hr-steps must be at least 1")
    work = args.work or out.with_name(out.stem + ".work")
    data = work / "data"

    # 1. preprocess (skipped when done)
    opts = PreprocessOptions(hr_size=args.hr_size if args.hr_size and args.hr_size > 128 else None, speaker="one",
                             val_fraction=0.0)
    report = preprocess(args.video, data, opts, workers=1, progress=not args.quiet)
    if report.skipped:
        raise UserError(f"{args.video} cannot be used for fine-tuning: {report.skipped[0].reason}")
    cid = clip_id_of(PurePosixPath(args.video.name))
    meta = json.loads((data / CLIPS_DIR / cid / META).read_text(encoding="utf-8"))
    n, fps = int(meta["n_frames"]), float(meta["fps"])
    val = int(round(args.val_seconds * fps)) if args.val_seconds is not None else int(math.ceil(0.15 * n))
    val = max(16, val)
    if n - val < MIN_TRAIN_FRAMES:
        raise UserError(f"{args.video} is too short to fine-tune on: {n} frames ({n / fps:.1f} s), {val} held out for "
                        f"validation; at least {(MIN_TRAIN_FRAMES + val) / fps:.1f} s are needed")
    write_time_split_manifest(data, val_frames=val, clip_ids=[cid])
    Manifest.load(data)
    extra = parse_overrides(args.set)
    common = {"data": str(data), "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
              "workers": args.workers, **extra}
    every = max(1, min(500, args.steps // 4))

    # 2. base
    cfg = build_config("base", overrides={"val_samples": 32, **common, "out": str(work / "base"),
                                          "init": args.checkpoint, "expert": args.expert, "max_steps": args.steps,
                                          "val_every": every, "ckpt_every": every})
    res = _train("base", cfg, args.quiet)
    _publish(res.best or res.model, out, "hyperlips-base")
    print(f"fine-tuned HyperLips-Base ({res.step} steps, held-out mouth L1 "
          f"{res.metrics.get('val/mouth_l1', float('nan')):.4f}): {out}")
    hr_out = None
    if args.hr_size:
        hr_every = max(1, min(500, args.hr_steps // 4))
        cfg = build_config("hr", overrides={"val_samples": 32, **common, "out": str(work / f"hr{args.hr_size}"),
                                            "base": str(out), "init": args.hr_checkpoint, "hr_size": args.hr_size,
                                            "max_steps": args.hr_steps, "val_every": hr_every,
                                            "ckpt_every": hr_every})
        res = _train("hr", cfg, args.quiet)
        hr_out = _hr_path(out, args.hr_size)
        _publish(res.best or res.model, hr_out, f"hyperlips-hr-{args.hr_size}")
        print(f"trained the HR decoder ({args.hr_size} px, {res.step} steps): {hr_out}")
    cmd = f"hyperlips sync {args.video} AUDIO -o out.mp4 --checkpoint {out}"
    if hr_out is not None:
        cmd += f" --hr-checkpoint {hr_out}"
    print(f"use it with: {cmd}")
    return 0
