"""The ``hyperlips eval`` and ``hyperlips bench`` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError, refuse_unexpanded_home, require_file, warn
from ..options import add_face_choice

EVAL_HELP = """Measure a lip-synced video against its original.

  hyperlips eval OUT.mp4 --reference ORIGINAL.mp4 [--audio SPEECH.wav]       one clip
  hyperlips eval OUT_DIR --reference ORIGINALS_DIR [--audio SPEECH_DIR]      pairs by file name
  hyperlips eval --clips DIR --protocol self|cross --checkpoint BASE.pth     generate, then evaluate
  hyperlips eval --clips FOOTAGE --protocol tail --checkpoint PERSON.safetensors
        the held-out tail of one person's footage (a video or a folder of clips, as `finetune` splits it)
        regenerated from its own audio, beside two baselines: the reference mouth held still, and the real
        frames 5 frames late
  hyperlips eval --clips FOOTAGE --protocol phonemes --checkpoint PERSON.safetensors
        that tail re-synced to synthesised speech: is the mouth closed on /p b m/ and open on vowels?
        (--speech A.wav [B.wav ...]: other people's recorded speech instead, timed by the phone recogniser)

Writes report.json, report.md and PNG plots into --output. LSE-C/LSE-D need the public SyncNet weights
(--syncnet syncnet_v2.model); our sync score uses the sync judge shipped in the package (mouth shapes from the
speech against FaceMesh's, one-second windows; --expert PATH for another from `hyperlips train judge`, or an
expert from `hyperlips train sync`; --expert off for none).
"""


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def add_parser(subparsers) -> None:
    from ..options import add_model_options

    p = subparsers.add_parser("eval", help="measure lip sync, image quality, colour and stability of a result",
                              description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generated", nargs="?", type=Path, help="the generated video, or a folder of them")
    p.add_argument("--reference", type=Path, help="the original video (or folder): ground truth and face track")
    p.add_argument("--audio", type=Path, help="the driving speech (or folder; default: the generated video's audio track)")
    p.add_argument("--clips", type=Path, help="a folder of talking-face clips to generate and evaluate (with --protocol self|cross; self also takes one video)")
    p.add_argument("--protocol", choices=("auto", "self", "cross", "tail", "phonemes"), default="auto",
                   help="self-reconstruction or cross-audio (default auto: self when the audio is the reference's own); "
                        "tail: the held-out tail of one person's footage (--clips); phonemes: that tail re-synced to "
                        "synthesised speech, the mouth timed against its /p b m/ and vowels")
    p.add_argument("--tail-fraction", type=float, default=0.15, help="tail protocol: share of the footage held out (0.15)")
    p.add_argument("--tail-seconds", type=_positive, help="tail protocol: seconds held out (instead of a share; at least 2)")
    p.add_argument("--text", help="phonemes protocol: the sentence espeak-ng speaks (default: one rich in /p b m/)")
    p.add_argument("--voice", default="en-us",
                   help="phonemes protocol: the language espeak-ng speaks --text in (default en-us; fr, de, es, cmn, "
                        "ja, ...: any of its voices)")
    p.add_argument("--speech", type=Path, nargs="+", metavar="AUDIO",
                   help="phonemes protocol: recordings of real speech instead of espeak-ng's (other people's voices), "
                        "played one after another, their phonemes as the phone recogniser hears them")
    p.add_argument("--syncnet", type=Path, help="public SyncNet weights (syncnet_v2.model) for LSE-C / LSE-D")
    p.add_argument("--expert", type=Path, help="our lip-sync judge or expert, for its sync confidence and offset "
                   "(default: the sync judge shipped in the package; a `train judge` or `train sync` checkpoint; "
                   "off: none)")
    p.add_argument("-o", "--output", type=Path,
                   help="report folder (default: hyperlips_eval/NAME for one clip, hyperlips_eval for a batch)")
    p.add_argument("--max-seconds", type=_positive, help="evaluate only the first S seconds of each clip")
    add_face_choice(p)  # the person generated and measured where several are visible (as finetune --face chose)
    p.add_argument("--no-per-frame", action="store_true", help="leave the per-frame curves out of report.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--shift-source", action="store_true",
                   help="self and tail protocols: drive the model from the clip's frames shifted by half its length, "
                        "so the input shows none of the mouth to be predicted (always so when the input's own mouth is "
                        "used: --mouth warp or hybrid, and auto with HyperLips-Lite weights)")
    add_model_options(p, input_blend=False, phones=False)  # eval's runs use each network's default
    p.set_defaults(func=run_eval)

    b = subparsers.add_parser("bench", help="frames per second and peak memory of each stage",
                              description="Benchmark decode, face detection + landmarks, network, paste-back, encode "
                                          "and end to end, per size, device, precision and batch size.")
    from .bench import add_bench_options

    add_bench_options(b)
    b.set_defaults(func=run_bench)


def _eval_device(name: str) -> str:
    from ..runtime import resolve_device

    return str(resolve_device(name))


def _check_report_folder(folder: Path) -> None:
    """UserError now, not after minutes of measuring, if the report cannot be written into ``folder`` (nothing is
    made: a folder that does not exist yet is judged by the nearest one above it that does)."""
    import os
    import tempfile

    def refuse(why: str):
        raise UserError(f"cannot write the report into -o {folder}: {why}; choose a folder you can write to")

    refuse_unexpanded_home(folder, "-o")  # (it would make a folder named "~" here)

    if folder.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as e:
            refuse(e.strerror or str(e))
        return
    above = folder
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        refuse(f"{above} is a file")
    if not os.access(above, os.W_OK | os.X_OK):
        refuse(f"{above} cannot be written")


def run_eval(args) -> int:
    """``hyperlips eval``; a run that fails or is stopped leaves none of the report folders it made where nothing was
    written in them (a mistyped footage name left a folder that looks empty, holding only the report mark)."""
    made: list[tuple[Path, bool]] = []
    try:
        return _run_eval(args, made)
    except BaseException:
        _remove_unused(made)
        raise


def _remove_unused(made: list[tuple[Path, bool]]) -> None:
    """Of ``made`` (:func:`_not_there`'s), innermost first: the report mark where it is all a folder holds, and the
    folder where it is then empty when the run made it (an existing folder, marked False, stays)."""
    from ..data.sources import REPORT_MARK

    for folder, new in reversed(made):
        try:
            if [p.name for p in folder.iterdir()] == [REPORT_MARK]:
                (folder / REPORT_MARK).unlink()
            if new:
                folder.rmdir()
        except OSError:  # (it holds what the run wrote, or was never made)
            return


def _not_there(folder: Path) -> list[tuple[Path, bool]]:
    """``folder`` and the folders above it that do not exist yet, outermost first, each with True; or ``folder``
    with False where it exists without a report mark (the run's mark is taken away again if nothing else comes)."""
    from ..data.sources import REPORT_MARK
    from ..streaming import missing_folders

    if folder.is_dir():
        return [] if (folder / REPORT_MARK).exists() else [(folder, False)]
    return [(f, True) for f in missing_folders(folder)]


def _run_eval(args, made: list[tuple[Path, bool]]) -> int:
    from .pair import evaluate_pair
    from .protocols import pair_folders, run_protocol
    from .report import summary_row, write_batch_report, write_clip_report

    progress = not args.quiet
    if args.speech and args.protocol != "phonemes":
        raise UserError("--speech is for --protocol phonemes (the speech a result was made with: --audio)")
    if args.clips is None and args.protocol not in ("tail", "phonemes"):
        given = _generation_options(args)
        if given:  # a finished video is measured as it is: these would have been dropped without a word
            raise UserError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for the videos eval makes itself "
                            "(--clips with a protocol); a finished result is measured as it is: leave "
                            f"{'it' if len(given) == 1 else 'them'} out, or pass {'it' if len(given) == 1 else 'them'} "
                            "to the `sync` that made it")
    if args.output is None:
        one = args.generated is not None and not args.generated.is_dir() and args.clips is None
        args.output = Path("hyperlips_eval") / args.generated.stem if one else Path("hyperlips_eval")
    if args.protocol not in ("tail", "phonemes"):  # those name their own folder below
        _check_report_folder(args.output)
        made += _not_there(args.output)
    device = _eval_device(args.device)
    from ..options import apply_threads

    apply_threads(args)
    off = args.expert is not None and str(args.expert).lower() == "off"
    common = dict(syncnet=args.syncnet, expert=None if off else args.expert, face_index=args.face,
                  face_box=args.face_box, device=device)
    models = _load_models(args, device)
    common.update(models)
    if args.protocol in ("tail", "phonemes"):
        return _run_tail(args, device, progress, made)
    if args.clips is not None:
        if args.generated is not None or args.reference is not None:
            raise UserError("--clips generates its own results: give either --clips DIR or GENERATED --reference REF, not both")
        if args.protocol == "auto":
            raise UserError("--clips needs --protocol: self (each clip with its own audio), cross (with the next clip's "
                            "audio), tail (the held-out tail of one person's footage, as finetune splits it) or "
                            "phonemes (that tail re-synced to synthesised speech)")
        _need_weights(args, "--clips generates videos first: pass --checkpoint PATH (or --untrained to try the protocol)")
        left_out: list = []
        results = run_protocol(args.clips, args.output, args.protocol, checkpoint=args.checkpoint,
                               hr_checkpoint=args.hr_checkpoint, size=args.size, untrained=args.untrained,
                               batch_size=args.batch_size, max_seconds=args.max_seconds, progress=progress,
                               temporal_blend=args.temporal_blend, mouth=args.mouth,
                               shift_source=args.shift_source, left_out=left_out, **common)
        paths = write_batch_report(results, args.output, f"{args.protocol} protocol on {args.clips}",
                                   per_frame=not args.no_per_frame, left_out=left_out)
        _print_rows([summary_row(r) for r in results], paths)
        return 0
    if args.generated is None:
        raise UserError("give the generated video (or folder) to evaluate, or --clips DIR with --protocol")
    if args.generated.is_dir():
        if args.reference is None:
            raise UserError("a folder of generated videos needs --reference FOLDER with the originals (same file names)")
        pairs = pair_folders(args.generated, args.reference, args.audio)
        results, left_out = [], []
        for g, r, a in pairs:
            try:
                results.append(evaluate_pair(g, r, a, protocol=args.protocol, max_seconds=args.max_seconds,
                                             progress=progress, **common))
            except UserError as e:  # one pair that cannot be measured (no face, no sound): the others still are
                warn(f"{g} is left out of the evaluation: {e}")
                left_out.append((Path(g).stem, str(e)))
        if not results:
            raise UserError(f"no pair of {args.generated} and {args.reference} could be evaluated (each said above)")
        paths = write_batch_report(results, args.output, f"Evaluation of {args.generated}",
                                   per_frame=not args.no_per_frame, left_out=left_out)
        _print_rows([summary_row(r) for r in results], paths)
        return 0
    if args.reference is not None and args.reference.is_dir():
        raise UserError(f"--reference {args.reference} is a folder but {args.generated} is one video; give the original video")
    res = evaluate_pair(args.generated, args.reference, args.audio, protocol=args.protocol,
                        max_seconds=args.max_seconds, progress=progress, **common)
    paths = write_clip_report(res, args.output, per_frame=not args.no_per_frame)
    _print_rows([summary_row(res)], {"json": paths["json"], "markdown": paths["markdown"]})
    return 0


def footage_report(clips: Path, protocol: str) -> Path:
    """The default report folder of a protocol run on footage: ``hyperlips_eval/NAME_PROTOCOL``, named after the
    footage: a video by its name less its suffix, a folder by its whole name, ``.`` and ``..`` by the folder's own
    name (they were ``_tail`` and a hidden ``.._tail``; ``take.v2`` was ``take``)."""
    p = Path(clips)
    name = p.resolve().name if p.is_dir() or p.name in ("", ".", "..") else p.stem
    return Path("hyperlips_eval") / f"{name or 'footage'}_{protocol}"


def _run_tail(args, device: str, progress: bool, made: list[tuple[Path, bool]]) -> int:
    from .tail import run_tail_protocol

    name = args.protocol
    if args.clips is None:
        raise UserError(f"--protocol {name} needs --clips FOOTAGE (a video, or a folder of clips of one person)")
    _need_weights(args, f"--protocol {name} regenerates the tail: pass --checkpoint MODEL (from `hyperlips finetune`)")
    if not 0 < args.tail_fraction < 1:
        raise UserError(f"--tail-fraction must be between 0 and 1 (got {args.tail_fraction:g})")
    if args.output is None or args.output == Path("hyperlips_eval"):
        args.output = footage_report(args.clips, name)
    _check_report_folder(args.output)
    made += _not_there(args.output)
    if name == "phonemes":
        return _run_phonemes(args, device, progress)
    res = run_tail_protocol(args.clips, args.output, checkpoint=args.checkpoint, fraction=args.tail_fraction,
                            seconds=args.tail_seconds, device=device, batch_size=args.batch_size,
                            untrained=args.untrained, model=args.model, progress=progress,
                            temporal_blend=args.temporal_blend, mouth=args.mouth, shift_source=args.shift_source,
                            hr_checkpoint=args.hr_checkpoint, size=args.size, face_index=args.face,
                            face_box=args.face_box)
    from .report import _fmt

    for m, row in res.rows.items():
        lag = row.get("opening_lag")
        peak = "no peak" if lag is None else f"peak lag {lag:+d}"
        print(f"{m}: opening r {_fmt(row['opening_r'])} ({peak}), LMD {_fmt(row['lmd'])}, "
              f"mouth PSNR {_fmt(row['psnr_mouth'])}, SSIM {_fmt(row['ssim_mouth'])}, delta E {_fmt(row['delta_e'])}, "
              f"sharpness {_fmt(row['sharpness_ratio'])}, jitter {_fmt(row['jitter_ratio'])}")
    if res.shifted:
        print("the model was driven from the tail shifted by half its length (--shift-source; always with --mouth warp "
              "or hybrid, which keep the frames' own mouth): its LMD, PSNR and SSIM left out (they would compare "
              "other moments), its delta E measured against the shifted frames it was made from")
    print(f"report: {args.output / 'tail.md'}  data: {args.output / 'tail.json'}")
    return 0


def _run_phonemes(args, device: str, progress: bool) -> int:
    from .phonemes import PHONEME_TEXT, run_phoneme_protocol
    from .report import _fmt

    if args.text is not None and not args.text.strip():
        raise UserError("--text is empty: give the sentence to synthesise (or leave --text out for the default one, "
                        "rich in /p b m/)")
    if args.speech and args.text is not None:
        raise UserError("--speech and --text both say what is spoken: give one of them")
    if args.voice != "en-us":
        from ..demo import check_voice

        check_voice(args.voice)
    if not args.voice.lower().startswith("en") and args.text is None:  # (an English voice reads the default)
        raise UserError(f"--voice {args.voice}: give --text, a sentence in that language (the default sentence is "
                        "English)")
    for path in args.speech or ():
        require_file(path, "speech")
    res = run_phoneme_protocol(args.clips, args.output, checkpoint=args.checkpoint, text=args.text or PHONEME_TEXT,
                               voice=args.voice, speech=args.speech,
                               fraction=args.tail_fraction, seconds=args.tail_seconds, device=device,
                               batch_size=args.batch_size, untrained=args.untrained, model=args.model,
                               progress=progress, temporal_blend=args.temporal_blend, mouth=args.mouth,
                               hr_checkpoint=args.hr_checkpoint, size=args.size, face_index=args.face,
                               face_box=args.face_box)
    for m, r in res.rows.items():
        print(f"{m}: opening at /p b m/ {_fmt(r['open_bilabial'])} ({r['bilabials']}), at vowels "
              f"{_fmt(r['open_vowel'])} ({r['vowels']}), bilabials below the vowels' median {_fmt(r['closed_share'])}, "
              f"AUC {_fmt(r['auc'])}")
    print(f"report: {args.output / 'phonemes.md'}  preview: {args.output / 'phonemes_preview.png'}")
    return 0


def _need_weights(args, message: str) -> None:
    """Generating needs weights: --checkpoint, --untrained, or the starter shipped in the package."""
    from ..models import shipped

    if args.checkpoint is None and not args.untrained and shipped.starter() is None:
        raise UserError(f"{message} ({shipped.absent('starter')})")


def _generation_options(args) -> list[str]:
    """The options given that only make or choose the videos eval generates (``--clips``), not a finished one."""
    from ..face.steady import DEFAULT_WEIGHT

    given = [("--checkpoint", args.checkpoint is not None), ("--hr-checkpoint", args.hr_checkpoint is not None),
             ("--size", args.size is not None), ("--batch-size", args.batch_size != 16),
             ("--precision", args.precision != "auto"), ("--temporal-blend", args.temporal_blend != DEFAULT_WEIGHT),
             ("--mouth", args.mouth != "auto"), ("--untrained", args.untrained), ("--model", args.model is not None),
             ("--shift-source", args.shift_source), ("--tail-fraction", args.tail_fraction != 0.15),
             ("--tail-seconds", args.tail_seconds is not None), ("--text", args.text is not None),
             ("--voice", args.voice != "en-us")]
    return [flag for flag, yes in given if yes]


def _load_models(args, device) -> dict:
    """Load the sync networks once (a batch reuses them); bad paths fail before any video is read."""
    from .sync_score import load_expert
    from .syncnet_v2 import load_public_syncnet

    out = {}
    if args.syncnet is not None:
        out["syncnet_model"] = load_public_syncnet(args.syncnet, device)
    expert = args.expert
    if expert is None:
        from ..models import shipped

        found = shipped.judge() or shipped.expert()  # the judge scores sync more surely (docs/starter.md)
        expert = found.path if found is not None else None
    if expert is not None and str(expert).lower() != "off":
        out["expert_model"] = load_expert(expert, device)
    return out


def _print_rows(rows: list[dict], paths: dict) -> None:
    from .report import _fmt

    keys = ("lse_d", "lse_c", "lse_offset", "expert_similarity", "expert_offset", "lmd", "opening_r",
            "opening_r_recording", "delta_e",
            "jitter_ratio", "flicker_ratio", "sharpness_ratio", "mouth_audio_correlation")

    def show(k, row):
        v = row[k]
        if k == "opening_r":  # with the lag of the correlation's peak, when there is one
            lag = row.get("opening_lag")
            return f"opening_r {_fmt(v)}" + ("" if lag is None else f" (peak lag {lag:+d})")
        if k.endswith("_offset"):  # spell the sign out: + = audio late
            frames = "frame" if abs(v) == 1 else "frames"
            return f"{k} {v:+d} ({'in sync' if v == 0 else f'audio {abs(v)} {frames} ' + ('late' if v > 0 else 'early')})"
        return f"{k} {_fmt(v)}"

    for r in rows:
        ks = keys if r.get("jitter_ratio") is not None else keys + ("jitter_gen", "sharpness_gen")
        shown = ", ".join(show(k, r) for k in ks if r.get(k) is not None)
        print(f"{r['clip']} ({r['protocol']}, {r['frames']} frame{'' if r['frames'] == 1 else 's'}): "
              f"{shown or 'no numbers (see the report)'}")
    print(f"report: {paths['markdown']}  data: {paths['json']}")


def run_bench(args) -> int:
    from .bench import run_bench_command

    return run_bench_command(args)


