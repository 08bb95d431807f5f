"""``hyperlips preprocess``: the dataset subcommand."""

from __future__ import annotations

import argparse
import sys
import shlex
from pathlib import Path

from ..options import add_face_choice
from ..precision import usable_cpus


def add_parser(sub) -> None:
    p = sub.add_parser(
        "preprocess",
        help="turn a folder of talking-face videos into a training dataset",
        description="Walk SRC for videos (any nesting; LRS2, MEAD, HDTF and VoxCeleb layouts work as shipped) and "
                    "write face crops, cached mel spectrograms, landmarks, sketches, lip masks and a manifest to DST. "
                    "A re-run skips finished clips.",
    )
    p.add_argument("src", type=Path, help="folder of videos (or one video)")
    p.add_argument("dst", type=Path, help="dataset folder to write (created if needed)")
    p.add_argument("--hr-size", type=int, choices=(256, 512), help="also store face crops at this size, for `train hr`")
    p.add_argument("--workers", type=int, default=max(1, min(4, usable_cpus())),
                   help="parallel worker processes (default: the CPUs it may use, up to 4)")
    p.add_argument("--speaker", choices=("auto", "parent", "stem", "one"),
                   help="how to read the speaker from a clip's path, for the train/val split (default auto: MEAD actor "
                        "or VoxCeleb id folders, else the parent folder, else the file name without a trailing number; "
                        "for a dataset made before: as it was made)")
    p.add_argument("--split", choices=("speaker", "time"),
                   help="validation set: whole speakers held out (default), or the last part of every clip (time; "
                        "for one person's footage or a single-speaker corpus); for a dataset made before: as it was "
                        "split")
    p.add_argument("--val-fraction", type=float,
                   help="share of speakers (or, with --split time, of every clip) held out for validation (0.1; for a "
                        "dataset made before: as it was made)")
    p.add_argument("--min-frames", type=int, default=16, help="skip clips with fewer frames with a face (16)")
    add_face_choice(p, "learn")
    p.add_argument("--retry-skipped", action="store_true", help="try again the clips a previous run skipped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..errors import Terminated, UserError
    from .manifests import dataset_choices
    from .preprocess import PreprocessOptions, preprocess

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    made = dataset_choices(args.dst)  # a dataset made before keeps its split unless told otherwise: footage added
    kept = {k: made[k] for k in ("split", "val_fraction", "speaker")  # later never moves what a run trained on
            if getattr(args, k) is None and k in made}
    if kept.get("split") == "time":
        print(f"the dataset {args.dst} is split by time, as when it was made (--split speaker to hold out whole "
              "speakers instead)", file=sys.stderr)
    choice = {"split": "speaker", "val_fraction": 0.1, "speaker": "auto", **kept,
              **{k: getattr(args, k) for k in ("split", "val_fraction", "speaker") if getattr(args, k) is not None}}
    opts = PreprocessOptions(hr_size=args.hr_size, min_frames=args.min_frames, speaker=choice["speaker"],
                             split=choice["split"], val_fraction=choice["val_fraction"], face=args.face,
                             face_box=args.face_box)
    try:
        report = preprocess(args.src, args.dst, opts, workers=args.workers, progress=not args.quiet,
                            retry_skipped=args.retry_skipped)
    except (KeyboardInterrupt, Terminated):
        print(f"hyperlips preprocess: the clips finished so far are kept in {args.dst}; run the same command again "
              "to go on with the rest", file=sys.stderr)
        raise
    if report.n_train == 0:
        first = report.skipped[0] if report.skipped else None
        why = f"; the first, {first.source}: {first.reason}" if first is not None else ""
        raise UserError(f"no usable clips in {args.src}: all {len(report.skipped)} were skipped{why} "
                        f"(every reason: {Path(args.dst) / 'skipped.json'})")
    print(report.summary())
    data = shlex.quote(str(args.dst))
    hr = f"; then hyperlips train hr {data} --out runs/hr --base runs/base/best.safetensors --size {args.hr_size}" \
        if args.hr_size else ""
    print(f"next: hyperlips train base {data} --out runs/base (the generator; --model lite for HyperLips-Lite; "
          f"or your own lip-sync expert first, hyperlips train sync {data} --out runs/sync, then --expert "
          f"runs/sync/best.safetensors){hr}; docs/training.md")
    return 0
