"""The ``hyperlips`` command: one program, one subcommand per job, each a thin shell over the Python API.

A mistake in the input (a missing file, a video with no face, a checkpoint for another network...) ends with
one line on stderr and exit code 2. Ctrl-C ends with exit code 130 and leaves no partial output.

Subcommands that live with their job (training, evaluation, ...) register themselves through a module that
offers ``add_parser(subparsers)``; the modules are listed in ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import threading
from pathlib import Path

from . import __version__
from .errors import UserError

# modules that add subcommands: each has add_parser(subparsers) and sets a `func(args) -> int` default
_COMMAND_MODULES = (
    "hyperlips.data.commands",
    "hyperlips.train.commands",
    "hyperlips.eval.commands",
    "hyperlips.serve.commands",
)


# start-up chatter that mediapipe's native threads (TFLite, absl, glog) print on stderr at any moment
_NATIVE_NOISE = re.compile(
    rb"^(?:INFO: Created TensorFlow Lite[^\n]*|WARNING: All log messages before absl::InitializeLog\(\)[^\n]*"
    rb"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\][^\n]*)\n",
    re.MULTILINE,
)
# an unfinished last line that may still become one of those lines: held back until it is complete
_NOISE_START = re.compile(rb"(?:I(?:N(?:F(?:O(?::.*)?)?)?)?|W(?:A(?:R(?:N(?:I(?:N(?:G.*)?)?)?)?)?)?|[IW]\d[^\n]*)\Z", re.S)
_real_stderr_fd: int | None = None  # the terminal's stderr while the filter runs (for our own one-line errors)


@contextlib.contextmanager
def _filtered_stderr():
    """Route file descriptor 2 through a pipe that drops native log noise and passes everything else at once.

    Errors must reach the user as one line; mediapipe's graph threads print INFO/WARNING lines that Python
    cannot switch off, at times no wrapper around the calls can catch, sometimes in several pieces. Complete
    noise lines are dropped; an unfinished line that may become one is held back (and dropped if the stream ends
    on it); everything else, progress bars (``\r`` updates) included, passes through unchanged.
    """
    global _real_stderr_fd
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        r, w = os.pipe()
    except (OSError, ValueError):
        yield
        return
    os.dup2(w, 2)
    os.close(w)
    _real_stderr_fd = saved

    def pump() -> None:
        pending = b""  # the start of a possible noise line, kept apart from what other threads write meanwhile
        while True:
            try:
                chunk = os.read(r, 65536)
            except OSError:
                break
            if not chunk:
                break
            if pending:
                joined = pending + chunk
                m = _NATIVE_NOISE.match(joined)
                if m:  # the held piece was completed into a noise line: drop it, keep what followed
                    pending, chunk = b"", joined[m.end():]
                elif _NOISE_START.match(joined):
                    pending = joined
                    continue
                else:  # another thread's text: pass it on and keep waiting for the noise line's end
                    m = re.match(rb"[^\n]*\n", chunk)
                    if m and _NATIVE_NOISE.match(pending + m.group(0)):
                        pending, chunk = b"", chunk[m.end():]
            data = _NATIVE_NOISE.sub(b"", chunk)
            cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            tail = data[cut:]
            if not pending and tail and _NOISE_START.match(tail):
                pending, data = tail, data[:cut]
            if data:
                os.write(saved, data)
        if pending and not _NOISE_START.match(pending):
            os.write(saved, pending)
        os.close(r)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        _real_stderr_fd = None
        os.dup2(saved, 2)  # closes the pipe's last writer: the pump sees EOF, forwards the rest and stops
        thread.join(timeout=2.0)
        os.close(saved)


def _error_line(text: str) -> None:
    """Print ``hyperlips: error: TEXT`` as one line, straight to the terminal (never interleaved with native logs)."""
    line = ("hyperlips: error: " + " ".join(text.split()) + "\n").encode(errors="replace")
    sys.stderr.flush()
    if _real_stderr_fd is not None:
        os.write(_real_stderr_fd, line)
    else:
        sys.stderr.write(line.decode())
        sys.stderr.flush()


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or vals[2] <= vals[0] or vals[3] <= vals[1]:
        raise argparse.ArgumentTypeError(f"a box is x1,y1,x2,y2 in pixels with x2>x1 and y2>y1 (got {text!r})")
    return vals  # type: ignore[return-value]


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, help="generator weights: HyperLips-Base (an official .pth or a hyperlips "
                   ".safetensors) or HyperLips-Lite (from `hyperlips finetune`)")
    p.add_argument("--hr-checkpoint", type=Path, help="HR decoder weights (128, 256 or 512 px) for a sharper mouth")
    p.add_argument("--size", type=int, choices=(128, 256, 512), help="render size of the mouth; 256/512 need an HR checkpoint")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=16, help="frames per network batch (default 16)")
    p.add_argument("--untrained", action="store_true", help="use randomly initialised weights (to try the pipeline without a checkpoint)")
    p.add_argument("--model", choices=("base", "lite"), default="base", help="with --untrained: which generator (base)")


def add_sync_options(p: argparse.ArgumentParser) -> None:
    face = p.add_mutually_exclusive_group()
    face.add_argument("--face", type=int, metavar="N", help="which face to follow when several are visible: 0 = leftmost (default: the largest)")
    face.add_argument("--face-box", type=_box, metavar="X1,Y1,X2,Y2", help="follow the face overlapping this box (pixels, first frame with faces)")
    p.add_argument("--loop", choices=("pingpong", "hold"), default="pingpong",
                   help="audio longer than the video: play it forward and backward (default) or hold the last frame")
    p.add_argument("--reference", default="best",
                   help="reference face: best (most confident detection, default), first, a frame number, or an image "
                        "file of the same person's face")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--timings", action="store_true", help="print seconds and frames per second for each stage at the end")


def _make_lipsync(args):
    from .pipeline import LipSync

    return LipSync(
        args.checkpoint,
        args.hr_checkpoint,
        size=args.size,
        device=args.device,
        batch_size=args.batch_size,
        untrained=args.untrained,
        model=args.model,
        progress=not args.quiet,
    )


def _run_sync(args) -> int:
    ls = _make_lipsync(args)
    report = ls.sync(args.video, args.audio, args.output, face_index=args.face, face_box=args.face_box,
                     loop=args.loop, reference=args.reference)
    print(report.summary() if args.timings else f"wrote {report.output} ({report.frames} frames, {report.audio_seconds:.2f} s)")
    return 0


def _run_demo(args) -> int:
    from .demo import make_demo_inputs

    folder = args.output.parent if str(args.output.parent) else Path(".")
    image, speech = make_demo_inputs(folder / "hyperlips_demo_inputs")
    if args.checkpoint is None:
        args.untrained = True
        print("hyperlips demo: no trained weights are shipped yet, so this run uses UNTRAINED (random) weights: "
              "the pipeline runs end to end but the generated mouth is meaningless. Pass --checkpoint for real results.",
              file=sys.stderr)
    print(f"demo inputs: {image} (a photo bundled with scikit-image) and {speech} (speech synthesised by espeak-ng)")
    args.video, args.audio = image, speech
    return _run_sync(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperlips", description="HyperLips lip-sync: re-sync the mouth of a talking-face video to new speech.")
    parser.add_argument("--version", action="version", version=f"hyperlips {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("sync", help="lip-sync VIDEO to AUDIO and write OUTPUT", description="Lip-sync a video (or a still image) to a speech track.")
    p.add_argument("video", type=Path, help="talking-face video (mp4, mov, mkv, ...) or a still image (png, jpg)")
    p.add_argument("audio", type=Path, help="speech: wav, mp3, m4a, flac, ogg, or a video file whose audio track to use")
    p.add_argument("-o", "--output", type=Path, required=True, help="output video (.mp4)")
    add_model_options(p)
    add_sync_options(p)
    p.set_defaults(func=_run_sync)

    p = sub.add_parser("demo", help="run sync on a built-in example (a photo and synthesised speech), offline",
                       description="Make an example input offline and lip-sync it.")
    p.add_argument("-o", "--output", type=Path, default=Path("hyperlips_demo.mp4"), help="output video (default hyperlips_demo.mp4)")
    add_model_options(p)
    add_sync_options(p)
    p.set_defaults(func=_run_demo)

    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(name).add_parser(sub)
        except ImportError as e:
            if getattr(e, "name", None) == name:
                continue  # that job is not part of this build
            # a missing optional dependency must not take sync/demo down with it
            _broken = f"the {name.rsplit('.', 2)[-2]} commands are unavailable: {e}"
            parser.set_defaults(_broken_commands=[*parser.get_default("_broken_commands"), _broken]
                                if parser.get_default("_broken_commands") else [_broken])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        for msg in parser.get_default("_broken_commands") or ():
            print(f"hyperlips: note: {msg}", file=sys.stderr)
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with _filtered_stderr():
        return _dispatch(args)


def _dispatch(args) -> int:
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        _error_line(str(e))
        return e.exit_code
    except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        # file-system problems with paths the user gave (an unwritable output folder, say): not bugs
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        _error_line(f"{e.strerror or e}{where}")
        return 2
    except KeyboardInterrupt:
        print("hyperlips: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
