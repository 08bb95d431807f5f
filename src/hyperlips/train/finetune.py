"""``hyperlips finetune VIDEO_OR_FOLDER -o MODEL``: a model of one person, in one command.

1. preprocess the footage (one video, or a folder of clips of the same person, taken in name order as one
   recording) into ``<work>/data``; the last part of it (``--val-seconds``, default 15%) is held out;
2. train HyperLips-Lite (``--model lite``, the default) within a wall-clock budget (``--minutes``, default 60,
   preprocessing included), from ``--checkpoint`` (or from scratch): a progress bar with the time left (lines in a
   log file), and at
   every validation the held-out figures and ``<work>/lite/preview.png`` (real held-out frames above, generated
   from their audio below); ``<work>/progress.json`` says the same for other tools. The checkpoint that did best
   on the held-out part (mouth-opening correlation) is kept, and from weights the run ends early once 8
   validations bring no better one;
   ``--model base`` fine-tunes HyperLips-Base instead (and ``--hr-size`` trains an HR decoder on it);
3. write MODEL and print the ``hyperlips sync`` command that uses it.

Re-running the same command continues where it stopped: preprocessing is skipped, training resumes exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path, PurePosixPath

from ..data.sources import FINETUNE_STATE as STATE  # what the first run decided (split, time preprocessing)
from ..data.sources import default_work
from ..errors import UserError, hidden_name, near_name_hint, refuse_unexpanded_home, warn
from ..options import add_face_choice

MIN_TRAIN_FRAMES = 48
MIN_VAL_FACES = 16  # frames with a face the held-out part must show: fewer validate nothing (pearson needs spread)
DEFAULT_MINUTES = 60.0
SHORT_FOOTAGE_S = 30.0  # below this, warn: too little speech to learn one person's mouth from
RESERVE_S = 20.0  # of the budget, kept for the last validation, export and writing the model
MIN_TRAIN_S = 30.0  # the least training time a --minutes budget must leave
# a Lite model of one person started from weights (the starter, or --checkpoint): the mouth discriminator judges
# its mouths from the first step (the renderer already draws faces); sharper lips and teeth for a slightly lower
# mouth-opening correlation (docs/lite.md). Not from scratch (unmeasured there): --set mouth_gan_weight=... for it.
# From weights the held-out r often peaks early (one minute of footage: at the first validation, step 250, on two of
# the three clips measured), so it is validated every 250 steps (more apart for long footage: validation_interval),
# and the run ends once 8 validations bring no better one (patience; docs/lite.md).
FINETUNE_LITE_DEFAULTS = {"mouth_gan_weight": 0.01, "mouth_gan_start": 0, "audio_blend": True, "patience": 8}
VAL_EVERY = 250
VAL_FRAMES = 1200  # held-out frames validated in about a quarter of the time 250 steps take (one core); more are
# validated proportionally less often


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal; written to a log file or a pipe (``nohup ... > log``), a line at each logged step
    and each validation instead of a bar redrawn thousands of times; ``--quiet``: neither."""
    from ..bars import to_terminal

    return not args.quiet and to_terminal()


def validation_interval(held_out_frames: int) -> int:
    """Steps between validations of a run from weights: every 250 up to 1,200 held-out frames (the 4-minute GRID
    footage: 1,125), then less often in proportion, so validation keeps to about a fifth of the time."""
    return VAL_EVERY * max(1, math.ceil(int(held_out_frames) / VAL_FRAMES))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="train a model of one person from their footage and write it for `sync`",
        description="Preprocess VIDEO (or a FOLDER of clips of one person), train HyperLips-Lite on it within a time "
                    "budget with the last part held out for validation, and write MODEL.",
    )
    p.add_argument("video", type=Path, help="footage of one person talking with their own voice: a video, or a folder "
                   "of clips of the same person")
    p.add_argument("-o", "--output", type=Path, required=True, help="model to write (.safetensors; .pth for the "
                   "original's format, Base only)")
    p.add_argument("--model", choices=("lite", "base"), default="lite",
                   help="lite (HyperLips-Lite, default: compact, trains on a CPU) or base (HyperLips-Base)")
    p.add_argument("--minutes", type=float, help=f"wall-clock budget of the whole command, preprocessing included "
                   f"(Lite default {DEFAULT_MINUTES:g}; Base: none; with --hr-size, the Base gets half of what "
                   "preprocessing leaves, the HR decoder the rest)")
    p.add_argument("--steps", type=int, help="stop after this many steps at the latest (Base default 2000); Lite's "
                   "audio encoder is fitted first, on its own (600 steps, 15-80 s on two cores; --set audio_steps=N)")
    p.add_argument("--checkpoint", help="weights to start from (Lite default: the starter shipped in the package; "
                   "Base: from scratch)")
    p.add_argument("--from-scratch", action="store_true", help="Lite: start from random weights, not the starter")
    p.add_argument("--expert", help="Base: sync expert checkpoint for the sync loss (default: the shipped compact "
                   "expert; off: no sync loss)")
    p.add_argument("--hr-size", type=int, choices=(128, 256, 512), help="Base: also train an HR decoder of this size")
    p.add_argument("--hr-checkpoint", help="Base: HR decoder weights to start from (default: from scratch)")
    p.add_argument("--hr-steps", type=int, default=2000, help="Base: HR training steps (2000)")
    p.add_argument("--batch-size", type=int, help="frames (Lite, 16) or windows (Base, 8) per step")
    p.add_argument("--lr", type=float, help="learning rate (Lite 5e-4, Base 5e-5)")
    p.add_argument("--amp", choices=("auto", "bf16", "off", "on"), help="mixed precision (default auto: fp16 on CUDA, "
                   "off on CPU)")
    p.add_argument("--val-seconds", type=float, help="seconds at the end of the footage held out (default 15%%)")
    add_face_choice(p, "learn")
    p.add_argument("--work", type=Path, help="working folder (default: beside the output, its name without the "
                   "extension + .work: me.work for -o me.safetensors)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, help="data loader processes (Lite 0: frames are in memory; Base 2)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core). Two runs at once on "
                   "one machine: give each its share (--threads 1 on 2 cores), or both slow down several times")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="any training setting")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run_finetune)


def _hr_path(model: Path, size: int) -> Path:
    return model.with_name(f"{model.stem}.hr{size}{model.suffix}")


def _publish(src: Path, dst: Path, name: str) -> None:
    """Copy an exported model to ``dst``: as is for .safetensors, re-saved in the original's format for .pth."""
    from ..models import load_checkpoint, save_checkpoint

    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix.lower() == ".pth":
        model, info = load_checkpoint(src, name=name, device="cpu")
        save_checkpoint(model, dst, name, step=info.step, official=True)
    else:
        tmp = dst.with_name(hidden_name(dst.name, ".tmp"))
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def _check_output(out: Path) -> None:
    """UserError now, not after the training, when the model cannot be written where ``-o`` says (its folder made
    if missing; the check leaves nothing behind)."""
    import os
    import tempfile

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=hidden_name(out.name, ".XXXXXXXX.check")[:-len("XXXXXXXX.check")],
                                     suffix=".check", dir=out.parent)  # (as long as the writes' own working names)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write -o {out}: {e.strerror or e}; choose a folder you can write to") from None


def _check_weights(args: argparse.Namespace) -> None:
    """Read every checkpoint given once, so a wrong path fails now and not after minutes of preprocessing. A
    ``--checkpoint`` that is gone but is the one the run in the work folder started from is not needed any more: the
    run continues without it (said)."""
    from ..models.checkpoint import read_expert_state, read_state_dict

    if args.expert and args.expert.lower() != "off":
        read_expert_state(args.expert)
    for path, name in ((args.checkpoint, "hyperlips-base" if args.model == "base" else "hyperlips-lite"),
                       (args.hr_checkpoint, f"hyperlips-hr-{args.hr_size}" if args.hr_size else None)):
        if path and path is args.checkpoint and not Path(path).exists() and _started_from(args, path):
            warn(f"{path} is gone; the run in {args.work or default_work(args.output)} started from it and continues "
                 "without it (from its own checkpoints)")
        elif path:
            read_state_dict(path, name)


def _started_from(args: argparse.Namespace, path) -> bool:
    """Whether the run in the work folder (of ``--model``) has checkpoints and started from the weights ``path``."""
    from .checkpoints import latest_checkpoint

    found = latest_checkpoint((args.work or default_work(args.output)) / args.model)
    init = found[1].get("config", {}).get("init") if found is not None else None
    return bool(init) and os.path.abspath(init) == os.path.abspath(path)


def _publish_lite(src: Path, dst: Path, data: Path, held_out: dict | None = None) -> float:
    """Write the kept Lite model to ``dst`` with its mouth-shape gain calibrated on the held-out frames, and with
    ``held_out`` (what of the footage it never trained on: ``eval --protocol tail`` scores that part)."""
    import dataclasses

    from ..models import HyperLipsLite, load_checkpoint, save_checkpoint
    from .lite import calibrate_shape_gain

    model, info = load_checkpoint(src, name="hyperlips-lite", device="cpu")
    gain = calibrate_shape_gain(model, data)
    tuned = HyperLipsLite(dataclasses.replace(model.config, shape_gain=round(gain, 3)))
    tuned.load_state_dict(model.state_dict())
    cfg = {k: v for k, v in info.config.items() if k not in ("extra", "name", "step", "format_version")}
    if held_out is not None:
        cfg["held_out"] = held_out
    save_checkpoint(tuned, dst, "hyperlips-lite", config=cfg, step=info.step)
    return gain


def _train(stage_cls, cfg, quiet: bool):
    from .checkpoints import latest_checkpoint
    from .loop import Trainer

    resume = latest_checkpoint(Path(cfg.out)) is not None
    return Trainer(stage_cls, cfg, resume=resume, quiet=quiet).fit()


def _check_args(args: argparse.Namespace) -> None:
    out = args.output
    if out.name.lower() in (".safetensors", ".pth"):  # (a name that is all suffix: a hidden file to pathlib)
        raise UserError(f"-o {out} has a suffix but no name: give one, such as {out.parent / ('me' + out.name)}")
    if out.suffix.lower() not in (".safetensors", ".pth"):
        raise UserError(f"-o must end in .safetensors (or .pth for the original's format): {out}")
    if args.model == "lite" and out.suffix.lower() == ".pth":
        raise UserError(f"-o {out}: HyperLips-Lite models are written as .safetensors (the .pth format is the "
                        "original Base's)")
    for flag, path in (("-o", out), ("--work", args.work), ("the footage", args.video)):
        if path is not None:  # (a folder named "~" was made here, the run in it)
            refuse_unexpanded_home(path, flag)
    if not args.video.exists():
        raise UserError(f"video not found: {args.video}{near_name_hint(str(args.video))}")
    if args.steps is not None and args.steps < 1 or args.hr_steps < 1:
        raise UserError("--steps and --hr-steps must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a number above 0 (got {args.lr:g})")
    for flag, v in (("--threads", args.threads), ("--workers", args.workers)):
        if v is not None and v < 0:
            raise UserError(f"{flag} must be 0 or more (got {v})")
    if args.minutes is not None and not (args.minutes > 0 and math.isfinite(args.minutes)):  # (inf went through the
        raise UserError(f"--minutes must be a number more than 0 (got {args.minutes:g})")  # preprocessing first)
    if args.val_seconds is not None and not (args.val_seconds > 0 and math.isfinite(args.val_seconds)):
        raise UserError(f"--val-seconds must be a number more than 0 (got {args.val_seconds:g})")  # (inf: a traceback)
    if args.model == "lite" and (args.hr_size or args.hr_checkpoint or args.expert):
        raise UserError("--hr-size, --hr-checkpoint and --expert belong to --model base")
    if args.hr_checkpoint and not args.hr_size:  # the HR decoder is trained only with a size: it went unused
        raise UserError("--hr-checkpoint starts the HR decoder's training, which --hr-size asks for: give --hr-size "
                        "(128, 256 or 512, the size that checkpoint renders)")
    if args.from_scratch and (args.checkpoint or args.model != "lite"):
        raise UserError("--from-scratch starts HyperLips-Lite from random weights: it goes with neither --checkpoint "
                        "nor --model base")
    _check_output(out)
    _check_weights(args)


def _prepare(args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    """Preprocess the footage and split off its held-out tail. Once a run has trained, a re-run must give the same
    footage and the same split (it continues that run, validated on that part): anything else is refused."""
    from ..data.datasets import CLIPS_DIR, META, Manifest
    from ..data.manifests import write_footage_tail_manifest
    from ..data.preprocess import PreprocessOptions, preprocess
    from ..data.sources import clip_id_of, clip_ids, find_videos

    data = work / "data"
    state_path = work / STATE
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    if args.video.is_dir():
        videos = find_videos(args.video)
        rels = [PurePosixPath(v.relative_to(args.video).as_posix()) for v in videos]
        ids = clip_ids(rels)
    else:
        videos = [args.video]
        rels = [PurePosixPath(args.video.name)]
        ids = [clip_id_of(rels[0])]
    prints = {c: _fingerprint(v) for c, v in zip(ids, videos)}
    twins: dict[str, list[str]] = {}
    for c, f in prints.items():
        if not f.startswith(("not a file:", "unreadable:")):  # (no video to hold twice: said as left out)
            twins.setdefault(f, []).append(c)
    for same in (t for t in twins.values() if len(t) > 1):  # a copy: its frames trained on in one, held out in the
        warn(f"{', '.join(same)} hold the same video: its frames are learnt twice, and where one is held out for "  # other
             "validation the figures measure frames it trained on; keep one copy")
    trained = _has_training(work)
    if trained and "sources" in state:  # before its clips join the run's data: a clip added, or one it learnt from
        used = set(state.get("clips") or state["sources"])  # gone (a file it left out may go)
        if used - set(ids) or set(ids) - set(state["sources"]):
            raise UserError(_other_footage(args, work, state, sorted(ids)))
    learnt = set(state.get("clips") or ids)  # (a file it left out may change: mended, say)
    changed = sorted(c for c, f in prints.items()
                     if c in learnt and c in state.get("fingerprints", {}) and state["fingerprints"][c] != f)
    if trained and changed:  # before preprocess makes its clips again of what the file holds now
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise UserError(f"{work} holds a run trained on other footage: {shown} changed since (replaced or edited); "
                        "a re-run only continues a run on the same footage, its held-out part unchanged. Put the "
                        f"clip(s) back, or give this footage another -o (or --work), or delete {work} to start over")
    face = _face_choice(args)
    if trained and state.get("face", {}) != face:  # the clips would be made again of another face, and trained on
        raise UserError(f"the run in {work} learnt {_face_words(state.get('face', {}))}; this command asks for "
                        f"{_face_words(face)}: give the run's choice again, or another -o (or delete {work}) to "
                        "start over")
    only = None
    if trained and state.get("clips") and args.video.is_dir():  # the run goes on with the clips it learnt from: a
        only = [str(r) for r, c in zip(rels, ids) if c in learnt]  # file it left out is not made a clip now
        mended = [c for c in ids if c not in learnt and state.get("fingerprints", {}).get(c, prints[c]) != prints[c]]
        if mended:  # (mended since, say): the run's footage stays as it learnt it
            shown = ", ".join(mended[:3]) + (f" and {len(mended) - 3} more" if len(mended) > 3 else "")
            warn(f"{shown}: left out of the footage of the run in {work} (unusable then) and changed since; the run "
                 "goes on without it (give the footage another -o, or --work, to train on it too)")
    t0 = time.perf_counter()
    opts = PreprocessOptions(speaker="one", val_fraction=0.0, face=args.face, face_box=args.face_box,
                             hr_size=args.hr_size if args.hr_size and args.hr_size > 128 else None)
    report = preprocess(args.video, data, opts, workers=1, progress=not args.quiet,  # a bar, or lines in a log
                        only=only)
    done = [c for c in ids if (only is None or c in learnt) and (data / CLIPS_DIR / c / META).is_file()]
    if not done:
        reason = report.skipped[0].reason if report.skipped else "no usable clip"
        raise UserError(f"{args.video} cannot be used for fine-tuning: {reason}")
    for s in report.skipped:  # said with --quiet too: the model learns from less footage than was given
        warn(f"{s.source} is left out of the footage: {s.reason}")
    if trained and "clips" in state and sorted(done) != state["clips"]:
        raise UserError(_other_footage(args, work, state, sorted(done)))
    manifest = write_footage_tail_manifest(data, sorted(done), val_seconds=args.val_seconds)
    faces = _held_out_faces(data, manifest)
    if faces < MIN_VAL_FACES:  # nothing (or next to nothing) to validate on: a traceback after minutes of fitting
        need = _seconds_holding_faces(data, sorted(done), MIN_VAL_FACES)
        held = manifest["held_out"]
        where = (f"the held-out last {held['seconds']:.1f} s of the footage show the face on {faces} of its "
                 f"{held['frames']} frames")
        if need is None:
            raise UserError(f"{args.video}: {where}, and the whole footage on fewer than {MIN_VAL_FACES} frames "
                            "past its training part: too little face to fine-tune on")
        if args.val_seconds is not None:
            raise UserError(f"{where} (--val-seconds {args.val_seconds:g}): at least {MIN_VAL_FACES} are needed to "
                            f"validate on; give --val-seconds {math.ceil(need * 10) / 10:g} or more, or footage "
                            "whose end shows the face (the clips made are kept for the next run)")
        manifest = write_footage_tail_manifest(data, sorted(done), val_seconds=need)
        warn(f"{where}: the last {manifest['held_out']['seconds']:.1f} s are held out instead, the shortest end "
             f"that shows it on {MIN_VAL_FACES} (the face is scored where it is seen; cut the footage where the face "
             "leaves, or give --val-seconds, to choose otherwise)")
    if trained and "held_out" in state:  # the split the run was validated (and its best checkpoint chosen) on
        if manifest["held_out"] != state["held_out"]:  # (the manifest is written again by the next run that trains)
            asked = "the default 15%" if args.val_seconds is None else f"--val-seconds {args.val_seconds:g}"
            raise UserError(f"the run in {work} was validated on the last {state['held_out']['seconds']:.1f} s of its "
                            f"footage; {asked} would hold out another part, some of it "
                            "already trained on. Give the same --val-seconds as that run (the default: 15%), or "
                            f"another -o (or delete {work}) to start over")
    Manifest.load(data)
    held = manifest["held_out"]
    n_train = sum(c["frames"][1] - c["frames"][0] for c in manifest["clips"] if c["split"] == "train")
    if n_train < MIN_TRAIN_FRAMES:
        if args.val_seconds is not None:  # the option, not the footage, is what to change
            fps = held["frames"] / held["seconds"] if held["seconds"] else 25.0
            most = held["of_seconds"] - MIN_TRAIN_FRAMES / fps
            raise UserError(f"--val-seconds {args.val_seconds:g} holds out {held['seconds']:.1f} s of the "
                            f"{held['of_seconds']:.1f} s of footage, leaving {n_train} frames to train on; at least "
                            f"{MIN_TRAIN_FRAMES} are needed: give --val-seconds {math.floor(most * 10) / 10:g} or less "
                            "(the clips made are kept for the next run)" if most > 0 else
                            f"{args.video} is too short to fine-tune on: {held['of_seconds']:.1f} s of footage")
        raise UserError(f"{args.video} is too short to fine-tune on: {held['of_seconds']:.1f} s of footage, "
                        f"{held['seconds']:.1f} s held out for validation, {n_train} frames left to train on; "
                        f"at least {MIN_TRAIN_FRAMES} are needed")
    if "prep_seconds" not in state:
        state["prep_seconds"] = round(time.perf_counter() - t0, 1)
    if only is not None:  # a file left out keeps the fingerprint it had: a re-run says again that it is not used
        prints = {c: f if c in learnt else state.get("fingerprints", {}).get(c, f) for c, f in prints.items()}
    state.update(sources=sorted(ids), clips=sorted(done), held_out=held, face=face, fingerprints=prints)
    work.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state, indent=1), encoding="utf-8")
    if not args.quiet:
        of = [e["id"] for e in manifest["clips"] if e["split"] == "val"]  # which takes (the clips in name order)
        where = "" if len(done) < 2 else f", of {', '.join(of[:3])}{' and more' if len(of) > 3 else ''}"
        print(f"footage: {held['of_seconds']:.1f} s in {len(done)} clip(s); held out for validation: the last "
              f"{held['seconds']:.1f} s ({held['frames']} frames{where})", file=sys.stderr)
    if held["of_seconds"] < SHORT_FOOTAGE_S:
        warn(f"{args.video}: {held['of_seconds']:.0f} s of footage; a person model learns the mouth from a minute or "
             "more of the person speaking (less gives a weak, averaged mouth)")
    return data, state


def _held_out_faces(data: Path, manifest: dict) -> int:
    """Frames of the held-out part of ``manifest`` that show the face with its landmarks (what validation scores)."""
    from ..data.datasets import CLIPS_DIR, Clip

    return sum(int(Clip(data / CLIPS_DIR / e["id"]).with_landmarks(*e["frames"]).sum())
               for e in manifest["clips"] if e["split"] == "val")


def _seconds_holding_faces(data: Path, order: list[str], want: int) -> float | None:
    """The shortest end of the footage (clips in ``order`` as one recording) holding ``want`` frames with the face
    and its landmarks, in seconds; None where that leaves fewer than MIN_TRAIN_FRAMES frames before it."""
    from ..data.datasets import CLIPS_DIR, Clip

    clips = [Clip(data / CLIPS_DIR / c) for c in order]
    total = sum(c.n_frames for c in clips)
    seconds, frames, found = 0.0, 0, 0
    for clip in reversed(clips):
        ok = clip.with_landmarks()
        for k in range(clip.n_frames - 1, -1, -1):
            seconds += 1.0 / clip.fps
            frames += 1
            found += int(ok[k])
            if found >= want:
                return seconds if total - frames >= MIN_TRAIN_FRAMES else None
    return None


def _fingerprint(path: Path, part: int = 1 << 20) -> str:
    """What a clip's file holds, in brief: its size and a hash of its first and last MiB. A clip replaced or edited
    under the same name differs (its size or its bytes); a copy elsewhere, with other file times, does not."""
    import hashlib
    import stat

    h = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe would wait for a writer for ever: preprocessing says
            return f"not a file:{path.name}"  # what it is and leaves it out
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            h.update(str(size).encode())
            f.seek(0)
            h.update(f.read(part))
            f.seek(max(0, size - part))
            h.update(f.read(part))
    except OSError as e:  # unreadable: preprocessing says so, and leaves it out
        return f"unreadable:{path.name}:{e.errno}"
    return h.hexdigest()[:32]


def _face_choice(args: argparse.Namespace) -> dict:
    """The face asked for (``--face``/``--face-box``), as the run's state keeps it: {} for the largest."""
    if getattr(args, "face", None) is not None:
        return {"face": args.face}
    if getattr(args, "face_box", None) is not None:
        return {"face_box": [float(v) for v in args.face_box]}
    return {}


def _face_option(choice: dict) -> str:
    """The person learnt, as ``sync`` is told it again (a model keeps no choice of faces in new footage)."""
    if "face" in choice:
        return f" --face {choice['face']}"
    if "face_box" in choice:
        return f" --face-box={','.join(f'{v:g}' for v in choice['face_box'])}"
    return ""


def _face_words(choice: dict) -> str:
    if "face" in choice:
        return f"face {choice['face']} from the left ({_face_option(choice).strip()})"
    if "face_box" in choice:
        return f"the face in the box {','.join(f'{v:g}' for v in choice['face_box'])} (--face-box)"
    return "the largest face (no --face or --face-box)"


def _has_training(work: Path) -> bool:
    """Whether the work folder holds a training checkpoint (of any of the runs finetune makes)."""
    from .checkpoints import list_checkpoints

    return any(list_checkpoints(work / run) for run in ("lite", "base", "hr"))


def _other_footage(args: argparse.Namespace, work: Path, state: dict, ids: list[str]) -> str:
    old = state.get("clips") or state.get("sources") or []  # the clips it learnt from
    shown = ", ".join(old[:3]) + (f" and {len(old) - 3} more" if len(old) > 3 else "")
    now = f"{len(ids)} clip(s), {len(set(old) & set(ids))} of them the run's"
    return (f"{work} holds a run on other footage than {args.video} now gives (the run's: {len(old)} clip(s), {shown}; "
            f"now: {now}); a re-run only continues a run on the same footage, its held-out part unchanged. Give this "
            f"footage another -o (or --work), or delete {work} to start over")


def _lite(args: argparse.Namespace, work: Path, data: Path, state: dict) -> int:
    from .config import LITE_DEFAULTS, build_config, parse_overrides, warn_ignored
    from .lite import LiteStage

    from .checkpoints import latest_checkpoint
    from .config import TrainConfig

    minutes = args.minutes if args.minutes is not None else (None if args.steps else DEFAULT_MINUTES)
    run = work / "lite"
    found = latest_checkpoint(run)
    init = os.path.abspath(args.checkpoint) if args.checkpoint else None  # (a re-run from another folder finds it)
    if init is None and not args.from_scratch and found is None:
        from ..models import shipped

        starter = shipped.starter()
        if starter is not None:
            init = str(starter.path)
            if not args.quiet:
                print(f"starting from the {starter.label} (--from-scratch for random weights)", file=sys.stderr)
        elif not args.quiet:
            print(f"starting from random weights: {shipped.absent('starter')} (--checkpoint FILE to start from "
                  "other weights)", file=sys.stderr)
    # a re-run continues the run with the settings it started with; options given again still apply
    stored = dict(found[1]["config"]) if found is not None else {}
    if found is not None:
        _check_rerun(args, work, stored, int(found[1].get("step", 0)))
    from_weights = {**FINETUNE_LITE_DEFAULTS, "val_every": validation_interval(state["held_out"]["frames"])}
    overrides = {**LITE_DEFAULTS, **(from_weights if init else {}), "model": "hyperlips-lite",
                 "val_samples": 1 << 20, "max_steps": 10_000_000, "init": init, **stored,
                 "data": str(data), "out": str(run), "device": args.device, "progress": _bars(args),
                 "progress_file": str(work / "progress.json")}
    if minutes is not None:
        train_s = minutes * 60.0 - float(state.get("prep_seconds", 0.0)) - RESERVE_S
        if train_s < MIN_TRAIN_S:
            need = (float(state.get("prep_seconds", 0.0)) + RESERVE_S + MIN_TRAIN_S) / 60.0
            raise UserError(f"--minutes {minutes:g} leaves {max(train_s, 0.0):.0f} s to train (preprocessing took "
                            f"{state.get('prep_seconds', 0):.0f} s, and {RESERVE_S:.0f} s are kept for the last "
                            f"validation and writing the model); give at least --minutes {math.ceil(need * 10) / 10:g}")
        overrides["max_minutes"] = train_s / 60.0
    elif args.steps is not None:  # steps alone on a re-run: they decide, not a time budget an earlier run was given
        overrides["max_minutes"] = 0.0  # (none; it bound the run still: "already at step 54 (max_steps 54)")
    for key in ("steps", "batch_size", "lr", "amp", "workers", "threads"):
        v = getattr(args, key)
        if v is not None:
            overrides["max_steps" if key == "steps" else key] = v
    given = parse_overrides(args.set)
    warn_ignored(given, [("base", "hyperlips-lite")], "finetune --model lite")
    if init is None and not stored:  # a new network
        given["lite"] = scratch_settings(given.get("lite"))
    overrides.update(given)
    cfg = TrainConfig.from_dict(overrides) if stored else build_config("base", overrides=overrides)
    res = _train(LiteStage, cfg, args.quiet)
    held = state.get("held_out")
    if held is not None and state.get("face"):  # the person it learnt, where the footage shows several: eval's tail
        held = {**held, "face": state["face"]}  # scores that one
    if held is not None and args.video.is_dir() and state.get("clips"):  # the clips it learnt from (not those left
        held = {**held, "clips": state["clips"]}  # out for want of a face): eval's tail takes those
    gain = _publish_lite(res.best or res.model, args.output, data, held)
    _report(args, work, res, cfg.best_metric or LiteStage.best_metric)
    print(f"mouth-shape gain {gain:.2f} (the spread of predicted mouths on the held-out part matched to the real ones)")
    print(f"use it with: hyperlips sync VIDEO AUDIO -o out.mp4 --checkpoint {shlex.quote(str(args.output))}"
          f"{_face_option(state.get('face', {}))}")
    return 0


def _weights_name(init) -> str:
    if not init:
        return "random weights"
    from ..models import shipped

    starter = shipped.starter()
    if starter is not None and _same_file(init, starter.path):
        return f"the {starter.label}"
    return str(init)


def _same_file(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return str(a) == str(b)


def _check_rerun(args: argparse.Namespace, work: Path, stored: dict, step: int) -> None:
    """A re-run continues the run in ``work`` (at ``step``, started with the settings ``stored``): the weights it
    started from cannot change under it (refused), and a changed --batch-size or --lr applies from here on (said)."""
    init = stored.get("init")
    if args.from_scratch:
        asked = "random weights (--from-scratch)" if init else None
    elif args.checkpoint is not None and not (init and _same_file(args.checkpoint, init)):
        asked = str(args.checkpoint)
    else:
        asked = None
    if asked is not None:
        raise UserError(f"{work} holds a run that started from {_weights_name(init)} (at step {step} now); a re-run continues it, so "
                        f"it cannot start from {asked}. Give another -o (or --work), or delete {work} to start over")
    for key, flag in (("batch_size", "--batch-size"), ("lr", "--lr")):
        v, was = getattr(args, key), stored.get(key)
        if v is not None and was is not None and v != was:
            warn(f"{work}: the run continues at step {step} with {flag} {v:g} instead of the {was:g} it used so far")


def scratch_settings(given: dict | None = None) -> dict:
    """The ``lite`` settings of a person model trained from random weights (``--from-scratch``): the speech's phones
    too, as the starter reads them, where the recogniser is installed (an hour on the French clip: held-out tail r
    0.672 against 0.605 without; docs/lite.md); then what ``--set lite={...}`` gives (``given``), which wins."""
    from ..media import phones

    if given is not None and not isinstance(given, dict):
        raise UserError(f"--set lite= takes settings in braces, e.g. lite={{phones: false}}, got {given!r}")
    return {**({"phones": True} if phones.available() else {}), **(given or {})}


def held_out_curve(run: Path) -> list[dict]:
    """The run's validations (``scalars.jsonl`` rows with held-out figures), in order."""
    path = run / "scalars.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "val/opening_r" in row:
                rows.append(row)
    return rows


def _report(args: argparse.Namespace, work: Path, res, metric: str = "val/opening_err") -> None:
    """The held-out figures of the kept checkpoint (the lowest ``metric``)."""
    vals = held_out_curve(work / "lite")
    minutes = res.seconds / 60.0
    if not vals:
        print(f"trained HyperLips-Lite for {res.step} steps ({minutes:.1f} min this run): {args.output}")
        return
    best = min(vals, key=lambda r: r.get(metric, 2.0))
    why = ""
    if res.stopped_early:
        why = (f", stopped early: {res.step - best['step']} steps without a better held-out r (patience; "
               "--set patience=0 trains for the whole time)")
    print(f"trained HyperLips-Lite for {res.step} steps ({minutes:.1f} min this run{why}); kept step {best['step']}: "
          f"held-out mouth-opening r {best['val/opening_r']:.3f} (predicted shapes {best.get('val/shape_r', math.nan):.3f}; "
          f"from other moments' frames, as sync renders: {best.get('val/opening_r_other', math.nan):.3f}), "
          f"mouth sharpness {best.get('val/sharpness', math.nan):.2f} of the real, "
          f"mouth L1 {best.get('val/mouth_l1', math.nan):.4f}, lower-face PSNR {best.get('val/lower_psnr', math.nan):.2f} dB: "
          f"{args.output}")
    kept = work / "lite" / "preview_best.png"  # (the newest, preview.png, is of weights it may not have kept)
    if kept.is_file():
        print(f"held-out preview of the kept step {best['step']}: {kept} (the last step's: "
              f"{work / 'lite' / 'preview.png'})")
    else:
        print(f"held-out preview: {work / 'lite' / 'preview.png'}")


BASE_KEY = "trained_on_base.txt"  # in an HR run folder: the content key of the Base its decoder was trained on


def _hr_run_for(run: Path, base_key: str, quiet: bool) -> Path:
    """The HR run folder for the Base whose content key is ``base_key``: an HR decoder trained on another Base (this
    re-run trained the Base further) would be published beside a Base it never saw; its run is moved aside
    (``RUN.other-base``) and trained afresh."""
    from .checkpoints import list_checkpoints

    if list_checkpoints(run):
        key = run / BASE_KEY
        if not (key.is_file() and key.read_text(encoding="utf-8").strip() == base_key):
            old = run.with_name(run.name + ".other-base")
            shutil.rmtree(old, ignore_errors=True)
            run.rename(old)
            if not quiet:
                print(f"hyperlips finetune: the Base changed since the HR decoder was trained on it: the HR decoder "
                      f"trains again from the start ({old} keeps the earlier run)", file=sys.stderr)
    return run


BASE_SHARE = 0.5  # of a --minutes budget with --hr-size, the Base's; the HR decoder gets the rest


def _base(args: argparse.Namespace, work: Path, data: Path, state: dict) -> int:
    from .base import BaseStage
    from .config import build_config, parse_overrides, warn_ignored
    from .hr import HRStage
    from .hr import content_key as hr_content_key

    out = args.output
    steps = args.steps or 2000
    extra = parse_overrides(args.set)
    warn_ignored(extra, [("base", "hyperlips-base")] + ([("hr", None)] if args.hr_size else []),
                 f"finetune --model base{' --hr-size ' + str(args.hr_size) if args.hr_size else ''}")
    t_start = time.monotonic()
    budget_s = None  # the whole command's --minutes, less preprocessing and the reserve for writing the models
    if args.minutes:
        budget_s = args.minutes * 60.0 - float(state.get("prep_seconds", 0.0)) - RESERVE_S * (2 if args.hr_size else 1)
        if budget_s < MIN_TRAIN_S * (2 if args.hr_size else 1):
            raise UserError(f"--minutes {args.minutes:g} leaves {max(budget_s, 0.0):.0f} s to train (preprocessing "
                            f"took {state.get('prep_seconds', 0):.0f} s){' for the Base and the HR decoder' if args.hr_size else ''}; "
                            "give more minutes")
    base_minutes = 0.0 if budget_s is None else budget_s * (BASE_SHARE if args.hr_size else 1.0) / 60.0
    common = {"data": str(data), "batch_size": args.batch_size or 8, "lr": args.lr or 5e-5, "device": args.device,
              "workers": 2 if args.workers is None else args.workers, "amp": args.amp, "progress": _bars(args),
              **({} if args.threads is None else {"threads": args.threads}),
              "progress_file": str(work / "progress.json"),
              "max_minutes": base_minutes, **extra}
    every = max(1, min(500, steps // 4))
    cfg = build_config("base", overrides={"val_samples": 32, **common, "out": str(work / "base"),
                                          "init": args.checkpoint, "expert": args.expert, "max_steps": steps,
                                          "val_every": every, "ckpt_every": every})
    res = _train(BaseStage, cfg, args.quiet)
    _publish(res.best or res.model, out, "hyperlips-base")
    print(f"fine-tuned HyperLips-Base ({res.step} steps, held-out mouth L1 "
          f"{res.metrics.get('val/mouth_l1', float('nan')):.4f}): {out}")
    hr_out = None
    if args.hr_size:
        base_key = hr_content_key(out)
        hr_run = _hr_run_for(work / f"hr{args.hr_size}", base_key, args.quiet)
        hr_run.mkdir(parents=True, exist_ok=True)  # the Base it trains on, said before it starts: an interrupted
        (hr_run / BASE_KEY).write_text(base_key, encoding="utf-8")  # run then continues on the same Base
        hr_every = max(1, min(500, args.hr_steps // 4))
        hr_minutes = 0.0
        if budget_s is not None:  # what the Base left of the command's budget
            hr_minutes = max(MIN_TRAIN_S, budget_s - (time.monotonic() - t_start)) / 60.0
        cfg = build_config("hr", overrides={"val_samples": 32, **common, "out": str(hr_run),
                                            "base": str(out), "init": args.hr_checkpoint, "hr_size": args.hr_size,
                                            "max_steps": args.hr_steps, "val_every": hr_every,
                                            "max_minutes": hr_minutes, "ckpt_every": hr_every})
        res = _train(HRStage, cfg, args.quiet)
        hr_out = _hr_path(out, args.hr_size)
        _publish(res.best or res.model, hr_out, f"hyperlips-hr-{args.hr_size}")
        print(f"trained the HR decoder ({args.hr_size} px, {res.step} steps): {hr_out}")
    video = "VIDEO" if args.video.is_dir() else shlex.quote(str(args.video))  # (sync takes one video, not a folder)
    cmd = f"hyperlips sync {video} AUDIO -o out.mp4 --checkpoint {shlex.quote(str(out))}"
    if hr_out is not None:
        cmd += f" --hr-checkpoint {shlex.quote(str(hr_out))}"
    print(f"use it with: {cmd}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    _check_args(args)
    from ..data.preprocess import dataset_lock

    work = args.work or default_work(args.output)
    fresh = not work.exists()
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the work folder {work}: {e.strerror or e}") from None
    with dataset_lock(work):  # a second finetune into the same folder is refused, not run over this one
        try:
            data, state = _prepare(args, work)
        except UserError:
            made = (args.val_seconds is not None and (work / "data" / "clips").is_dir()
                    and any((work / "data" / "clips").rglob("meta.json")))  # (refused for the option given)
            if fresh and not made:  # the footage cannot be used: leave nothing behind (a folder of an earlier run
                shutil.rmtree(work, ignore_errors=True)  # stays, and so do clips made for a run refused for its
            raise  # --val-seconds: a mistyped option cost the whole preprocessing again)
        if args.model == "lite":
            return _lite(args, work, data, state)
        return _base(args, work, data, state)
