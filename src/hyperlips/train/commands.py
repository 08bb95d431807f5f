"""``hyperlips train sync|base|hr|reader`` and ``hyperlips finetune``: thin shells over :class:`~hyperlips.train.loop.Trainer`
(``train judge``, a short fit outside the loop, is ``train/judge.py``).

The same command runs on one device or, under ``torchrun --nproc_per_node N``, on N processes (DDP).
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

STAGES = ("sync", "base", "hr", "reader")
MODELS = ("base", "lite")  # `train base --model`: HyperLips-Base (the original's) or HyperLips-Lite
EXPERT_MODELS = {"official": "syncnet", "lite": "syncnet-lite"}  # `train sync --model`


def _model_name(model: str) -> str:
    from ..errors import UserError

    key = str(model).strip().lower()
    key = key if key.startswith("hyperlips-") else f"hyperlips-{key}"
    if key not in ("hyperlips-base", "hyperlips-lite"):
        raise UserError(f"--model must be base or lite (got {model!r})")
    return key
_HELP = {
    "sync": "train the lip-sync expert (SyncNet) that supervises HyperLips-Base",
    "base": "train HyperLips-Base, the stage-1 generator",
    "hr": "train the HR decoder (stage 2) on inputs rendered by a trained base checkpoint",
    "reader": "train the mouth reader (lip and jaw points of a face crop) that HyperLips-Lite's reader_weight uses",
}


def stage_class(name: str, model: str = "hyperlips-base"):
    """The Stage class of ``train NAME`` (``base`` with ``model`` hyperlips-lite trains HyperLips-Lite)."""
    if name == "base" and _model_name(model) == "hyperlips-lite":
        from .lite import LiteStage

        return LiteStage
    if name == "sync":
        from .sync import SyncStage

        return SyncStage
    if name == "base":
        from .base import BaseStage

        return BaseStage
    if name == "hr":
        from .hr import HRStage

        return HRStage
    if name == "reader":
        from .reader import ReaderStage

        return ReaderStage
    raise ValueError(f"unknown stage {name!r}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="preprocessed dataset folder (from hyperlips preprocess)")
    p.add_argument("-o", "--out", help="run folder for checkpoints, logs and the trained model")
    p.add_argument("--config", type=Path, help="YAML file of training settings, or a built-in one: sync, base, hr (the original's values) or "
                   "small-cpu (docs/training.md)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override any setting, e.g. --set lr=2e-4 --set val_every=500 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--init", help="start from these weights (any checkpoint hyperlips loads) instead of random ones")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (counted from the run's start)")
    p.add_argument("--batch-size", type=int, help="samples per process per step")
    p.add_argument("--lr", type=float, help="learning rate of the trained network")
    p.add_argument("--grad-clip", type=float, help="max gradient norm (0: off)")
    p.add_argument("--amp", choices=("auto", "on", "bf16", "off"),
                   help="mixed precision: auto (fp16 on CUDA, off on CPU), on (fp16, CUDA), bf16 (CPU or CUDA), off")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, help="data loader processes per training process")
    p.add_argument("--threads", type=int, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--seed", type=int)
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    p.add_argument("--keep-last", type=int, help="checkpoints kept besides best.pt")
    p.add_argument("--val-every", type=int, help="steps between validations (0: never)")
    p.add_argument("--val-samples", type=int, help="validation samples")
    p.add_argument("--log-every", type=int, help="steps between logged losses")
    p.add_argument("--image-every", type=int, help="steps between image grids (0: never)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the sync expert, HyperLips-Base or -Lite, the HR decoder, the mouth reader "
                       "or the sync judge",
                       description="Train one stage. Run under `torchrun --nproc_per_node N` for N GPUs (or CPU processes).")
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    for name in STAGES:
        sp = stages.add_parser(name, help=_HELP[name], description=_HELP[name])
        _add_common(sp)
        if name == "sync":
            sp.add_argument("--model", choices=tuple(EXPERT_MODELS), help="the expert: official (SyncNet as the "
                            "original, default) or lite (compact, trains on a CPU; its recipe: docs/training.md)")
        if name == "base":
            sp.add_argument("--model", choices=MODELS, help="the generator: base (HyperLips-Base, default) or lite "
                            "(HyperLips-Lite, compact, trains on a CPU)")
            sp.add_argument("--expert", help="sync expert checkpoint for the sync loss (default: the expert shipped in "
                            "the package; off: no sync loss)")
        sp.add_argument("--minutes", type=float, dest="max_minutes",
                        help="wall-clock budget: stop, validate and save when it is spent")
        if name == "hr":
            sp.add_argument("--base", help="trained HyperLips-Base checkpoint that renders the HR inputs")
            sp.add_argument("--size", type=int, choices=(128, 256, 512), dest="hr_size", help="HR output size (128)")
        sp.set_defaults(func=run_train)
    from .judge import add_parser as add_judge

    add_judge(stages)
    p.set_defaults(func=lambda a: _no_stage(p))

    from .finetune import add_parser as add_finetune

    add_finetune(sub)


_OPTION_FIELDS = ("data", "out", "init", "max_steps", "batch_size", "lr", "grad_clip", "amp", "device", "workers",
                  "threads", "seed", "ckpt_every", "keep_last", "val_every", "val_samples", "log_every", "image_every",
                  "expert", "base", "hr_size", "max_minutes")


def _no_stage(p: argparse.ArgumentParser) -> int:
    """`hyperlips train` alone: its help and an error line on stderr (stdout holds a command's results only)."""
    import sys

    p.print_help(sys.stderr)
    print("hyperlips: error: train needs a stage (sync, base, hr, reader or judge, listed above)", file=sys.stderr)
    return 2


def config_from_args(args: argparse.Namespace):
    """The run's TrainConfig: stored config (when resuming) or defaults + --config, then --set, then options."""
    from ..errors import UserError, refuse_unexpanded_home
    from .checkpoints import latest_checkpoint
    from .config import MODEL_DEFAULTS, TrainConfig, build_config, load_config, parse_overrides

    minutes = getattr(args, "max_minutes", None)
    if minutes is not None and not minutes > 0:  # said with the option's name, before the settings' range checks
        raise UserError(f"--minutes must be more than 0 (got {minutes:g}; leave it out for no time budget)")
    overrides: dict[str, Any] = {}
    overrides.update(parse_overrides(args.set))
    for k in _OPTION_FIELDS:
        v = getattr(args, k, None)
        if v is not None:
            overrides[k] = str(v) if isinstance(v, Path) else v
    if args.resume:
        out = overrides.get("out")
        if out is None and args.config is not None:
            out = load_config(args.config).get("out")
        if not out:
            raise UserError("--resume needs the run folder: --out RUN")
        found = latest_checkpoint(Path(out))
        if found is None:
            raise UserError(f"--resume: no checkpoint in {Path(out) / 'checkpoints'} to resume from")
        stored = dict(found[1]["config"])
        if stored.get("stage") != args.stage:
            raise UserError(f"{out} holds a `train {stored.get('stage')}` run, not `train {args.stage}`")
        asked = dict(load_config(args.config)) if args.config is not None else {}
        asked.update(overrides)
        if getattr(args, "model", None):
            asked["model"] = EXPERT_MODELS[args.model] if args.stage == "sync" else _model_name(args.model)
        check_resume_changes(Path(out), stored, asked, int(found[1].get("step", 0)))
        stored.update(asked)
        cfg = TrainConfig.from_dict(stored)
        _say_ignored(args, cfg)
        return cfg
    if getattr(args, "model", None):
        overrides["model"] = EXPERT_MODELS[args.model] if args.stage == "sync" else _model_name(args.model)
    model = overrides.get("model")
    if model is None and args.config is not None:  # the model named in the file brings its defaults too
        model = load_config(args.config).get("model")
    defaults = MODEL_DEFAULTS.get(model, {})
    cfg = build_config(args.stage, args.config, overrides, model_defaults=defaults)
    if not cfg.data:
        raise UserError("no dataset given: hyperlips train %s DATA --out RUN (DATA from hyperlips preprocess)" % args.stage)
    if not cfg.out:
        raise UserError("no run folder given: --out RUN")
    refuse_unexpanded_home(cfg.out, "--out")
    # the dataset as an absolute path in the run's settings: `--resume` from another folder finds it (it looked for
    # "data" there, and would have trained on another folder of that name)
    cfg.data = os.path.abspath(os.path.expanduser(cfg.data))
    _say_ignored(args, cfg)
    return cfg


def _say_ignored(args: argparse.Namespace, cfg) -> None:
    """Warn of the --set and --config settings this stage (and model) does not read."""
    from .config import TrainConfig, load_config, parse_overrides, warn_ignored

    names = set(parse_overrides(args.set))
    if args.config is not None:  # a file's settings where they differ from the defaults (a run's own config.yaml
        default = TrainConfig()  # lists every setting)
        names |= {k for k, v in load_config(args.config).items()
                  if getattr(TrainConfig.from_dict({k: v}), k) != getattr(default, k)}
    model = " --model lite" if cfg.model in ("hyperlips-lite", "syncnet-lite") else ""
    warn_ignored(names, [(args.stage, cfg.model)], f"train {args.stage}{model}")
    if args.config is not None:
        _say_replaced_defaults(args, cfg, f"train {args.stage}{model}")


ORIGINAL_CONFIGS = ("base", "hr", "sync")  # the built-in configs of the original's settings (not small-cpu)


def _say_replaced_defaults(args: argparse.Namespace, cfg, what: str) -> None:
    """Warn where a built-in config (the original networks' settings) replaces the compact model's own defaults:
    `--config base --model lite` trained Lite at Base's learning rate and batch, without a word."""
    from ..errors import warn
    from .config import MODEL_DEFAULTS, TrainConfig, built_in_config, load_config, parse_overrides

    own = MODEL_DEFAULTS.get(cfg.model)
    found = built_in_config(args.config)
    if own is None or found is None or found.stem not in ORIGINAL_CONFIGS:
        return
    given = set(parse_overrides(args.set)) | {k for k in _OPTION_FIELDS if getattr(args, k, None) is not None}
    file = TrainConfig.from_dict(load_config(args.config))
    mine = TrainConfig.from_dict(own)
    replaced = [k for k in own if k in load_config(args.config) and k not in given
                and getattr(file, k) != getattr(mine, k)]
    if replaced:
        def show(v):
            return "/".join(f"{x:g}" for x in v) if isinstance(v, (tuple, list)) else f"{v:g}" if isinstance(
                v, float) else str(v)

        pairs = ", ".join(f"{k} {show(getattr(file, k))} (its own: {show(getattr(mine, k))})" for k in replaced)
        warn(f"{what}: --config {Path(args.config).stem} holds the original network's settings, which replace this "
             f"model's own defaults: {pairs}; leave --config out for the compact model's, or --set them")


# settings a resumed run cannot change (the network, its size, what renders its inputs), and those that change nothing
# of what it learns (where and how often it writes, how it runs, when it stops); any other change is said
RESUME_FIXED = {"model": "--model", "lite": "--set lite=", "hr_size": "--size", "base": "--base", "init": "--init"}
RESUME_FREE = {"out", "threads", "workers", "device", "progress", "progress_file", "log_every", "image_every",
               "val_every", "val_samples", "val_at_start", "ckpt_every", "keep_last", "max_steps", "max_minutes",
               "patience"}


def _as_typed(key: str, value: Any) -> str:
    """A fixed setting as the command line gives it: ``--model lite``, not the registry's ``'hyperlips-lite'``."""
    if key == "model":
        value = {v: k for k, v in EXPERT_MODELS.items()}.get(value, str(value).removeprefix("hyperlips-"))
    flag = RESUME_FIXED[key]
    text = shlex.quote(str(value))
    return flag + text if flag.endswith("=") else f"{flag} {text}"


def check_resume_changes(run: Path, stored: dict, asked: dict, step: int) -> None:
    """A resumed run (at ``step``, started with the settings ``stored``) given ``asked``: a change of network or of
    what renders its inputs is refused (it would go on as the run it was, or train on inputs of another network);
    any other change that alters what it learns (learning rates, batch size, seed, data, loss weights) applies from
    ``step`` on, with a warning that the run is no longer the one an uninterrupted run would have been."""
    from ..errors import UserError, warn

    def same(a, b) -> bool:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return list(a) == list(b)
        if a == b or str(a) == str(b):
            return True
        if isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(b).exists():
            return Path(a).resolve() == Path(b).resolve()  # one file named two ways (relative, absolute)
        return False

    if stored.get("stage") == "sync":  # an expert run's model: syncnet-lite, or anything else (the default) syncnet
        stored = {**stored, "model": "syncnet-lite" if stored.get("model") == "syncnet-lite" else "syncnet"}
        if "model" in asked:
            asked = {**asked, "model": "syncnet-lite" if asked["model"] == "syncnet-lite" else "syncnet"}
    for key, value in asked.items():
        if key in RESUME_FREE or key not in stored or same(value, stored[key]):
            continue
        if key in RESUME_FIXED:
            raise UserError(f"{run} holds a run with {_as_typed(key, stored[key])} (at step {step}); it cannot go on "
                            f"with {_as_typed(key, value)}: leave it out, or train into a new --out folder")
        warn(f"{run}: the run continues at step {step} with {key} {value!r} instead of {stored[key]!r}: it applies "
             f"from here on (the run is no longer what it would have been uninterrupted)")


def usage_hint(stage: str, model: Path, base: str | None = None) -> str:
    """The command that uses a trained ``model``, its paths quoted for a shell (a name with spaces pastes as is)."""
    model = shlex.quote(str(model))
    base = shlex.quote(str(base)) if base else None
    if stage == "sync":
        return f"use it as the sync expert: hyperlips train base DATA --out RUN --expert {model}"
    if stage == "base":
        return f"use it with: hyperlips sync VIDEO AUDIO -o out.mp4 --checkpoint {model}"
    if stage == "reader":
        return f"use it in training: hyperlips train base DATA --model lite --set reader_weight=0.05 --set reader={model}"
    return f"use it with: hyperlips sync VIDEO AUDIO -o out.mp4 --checkpoint {base or 'BASE'} --hr-checkpoint {model}"


def run_train(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from .distributed import setup_distributed, teardown_distributed
    from .loop import Trainer

    if getattr(args, "max_steps", None) is not None and args.max_steps < 1:  # before the settings' own check
        raise UserError(f"--max-steps must be at least 1 (got {args.max_steps})")
    cfg = config_from_args(args)
    if cfg.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1 (got {cfg.max_steps})")
    if cfg.max_minutes < 0:
        raise UserError(f"--minutes must be more than 0 (got {cfg.max_minutes:g}; leave it out for no time budget)")
    dist = setup_distributed(cfg.device)
    try:
        trainer = Trainer(stage_class(args.stage, cfg.model), cfg, resume=args.resume, quiet=args.quiet, dist=dist)
        res = trainer.fit()
        dist.barrier()  # every process done before any closes the group
    finally:
        teardown_distributed(dist)
    if dist.main:
        best = f" (best on validation: {res.best})" if res.best else ""
        what = {"hyperlips-lite": "HyperLips-Lite", "syncnet-lite": "the compact sync expert"}.get(cfg.model, args.stage)
        print(f"trained {what} to step {res.step} in {res.seconds:.1f} s "
              f"({res.samples_per_second:.2f} samples/s over {dist.world} process(es))")
        if not res.model.is_file():  # nothing was trained (the budget was already spent, say)
            print(f"no model was written: {res.run} holds no trained step")
            return 0
        print(f"model: {res.model}{best}")
        print(usage_hint(args.stage, res.best or res.model, cfg.base))
    return 0

