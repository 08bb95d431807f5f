"""The ``hyperlips`` command: one program, one subcommand per job, each a thin shell over the Python API.

Exit codes: 0 done; 2 a mistake in the input (a missing file, a video with no face, a checkpoint for another
network, a full disk...), reported as one ``hyperlips: error:`` line on stderr; 130 / 143 / 129 stopped by Ctrl-C
(SIGINT) / SIGTERM / SIGHUP, with no partial output left; 1 a bug, with its traceback. Unusual input that was
handled (a variable frame rate, damaged frames, non-finite audio samples) is one ``hyperlips: warning:`` line each.

Subcommands that live with their job (training, evaluation, ...) register themselves through a module that
offers ``add_parser(subparsers)``; the modules are listed in ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from . import __version__
from .errors import (DEBUG_ENV, Terminated, UserError, clear_stop, debug_wanted, gpu_out_of_memory,  # noqa: F401
                     one_line, out_of_memory, request_stop)
from .options import add_model_options, add_sync_options

# modules that add subcommands: each has add_parser(subparsers) and sets a `func(args) -> int` default
_COMMAND_MODULES = (
    "hyperlips.data.commands",
    "hyperlips.train.commands",
    "hyperlips.eval.commands",
    "hyperlips.serve.commands",
)


EXIT_OK, EXIT_BUG, EXIT_USER = 0, 1, 2  # 1: a bug (with its traceback); 2: a mistake in the input, one line
EXIT_MEMORY = 3  # the machine ran out of memory (one line): neither the input's fault nor a bug
OUT_OF_MEMORY = ("out of memory: this machine (or this process's limit) has too little free memory for the job; close "
                 "other programs, use a shorter or smaller video, or a smaller --batch-size")
OUT_OF_GPU_MEMORY = ("out of GPU memory: the graphics card has too little free memory for the job (another program "
                     "may hold it: nvidia-smi lists them); use a smaller --batch-size, or --device cpu")
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}  # 128 + the signal's number
def _debug() -> bool:
    """HYPERLIPS_DEBUG set (``errors.debug_wanted``); FFmpeg's own messages are then on too (PyAV keeps them off)."""
    if not debug_wanted():
        return False
    with contextlib.suppress(ImportError):
        import av.logging

        av.logging.set_level(av.logging.WARNING)
    return True


class _Messages:
    """A text stream of messages whose reader may leave: once the pipe it writes to is closed (``hyperlips sync ...
    | head -1``, a log viewer quit) or it cannot be written (a log file on a full disk), what follows is dropped and
    the command goes on. Its output file is the job; these lines only report on it, and a closed pipe used to end a
    finished render with a traceback and exit 1 (a full log disk: every job failed at its first progress line)."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                try:
                    return self._stream.write(text)
                except UnicodeEncodeError:  # a name the stream's encoding cannot spell (PYTHONIOENCODING=ascii, a
                    # locale of another script): escaped as stderr escapes it (a finished sync ended in exit 1)
                    encoding = getattr(self._stream, "encoding", None) or "ascii"
                    self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
                    return len(text)
            except OSError:  # a closed pipe, or a log on a full disk (or a dead terminal): the job goes on
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except OSError:
                self._drop()

    def _drop(self) -> None:
        self.reader_gone = True
        try:  # the stream's descriptor goes to the null device: its buffered rest flushes there, quietly, at exit
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (AttributeError, OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _Terminal(_Messages):
    """Python's stderr while a command runs: writes to the terminal and remembers whether the cursor is at the
    start of a line, so that a warning or an error never lands after a progress bar on the bar's line."""

    def __init__(self, stream):
        super().__init__(stream)
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text[-1] in "\n\r"
        return super().write(text)


@contextlib.contextmanager
def _messages_stdout():
    """``sys.stdout`` as :class:`_Messages` while a command runs."""
    old = sys.stdout
    sys.stdout = _Messages(old)
    try:
        yield
    finally:
        sys.stdout = old


@contextlib.contextmanager
def _terminal_stderr(restore: bool = True):
    """Run a command with native libraries silenced and Python's own stderr going to the terminal.

    FFmpeg, libpng and MediaPipe's native threads (TFLite, absl, glog) print to file descriptor 2 at any moment,
    between our lines or in the middle of them; none of it is for the user. Descriptor 2 is pointed at the null
    device for the command's duration, and ``sys.stderr`` (progress bars, warnings, error lines, tracebacks of bugs)
    at a duplicate of the real stderr. ``HYPERLIPS_DEBUG=1`` keeps everything. ``restore=False`` (the program
    itself, which exits next) leaves descriptor 2 silenced, so native clean-up at exit stays quiet too.
    """
    old = sys.stderr
    saved = None
    if not _debug():
        try:
            old.flush()
            on_fd2 = old.fileno() == 2
        except (AttributeError, OSError, ValueError):
            on_fd2 = False
        try:
            saved = os.dup(2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        except OSError:
            if saved is not None:
                os.close(saved)
            saved = None
    stream = old
    if saved is not None and on_fd2:
        stream = open(saved, "w", buffering=1, closefd=False, encoding=getattr(old, "encoding", None) or "utf-8",
                      errors="backslashreplace")
    sys.stderr = _Terminal(stream)
    try:
        yield
    except BaseException:
        restore = True  # a bug's traceback is printed after this: it must reach the terminal
        raise
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stderr = old
        if stream is not old:
            with contextlib.suppress(OSError):  # lines a reader that left never took (its pipe closed)
                stream.close()
        if saved is not None:
            if restore:
                os.dup2(saved, 2)
            os.close(saved)


def _close_progress_bars() -> None:
    """Close every progress bar still open (one left by an exception would redraw itself after the error line)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def _line(kind: str, text: str) -> None:
    """``hyperlips: KIND: TEXT`` as one line of its own on stderr (after any progress output)."""
    err = sys.stderr
    with contextlib.suppress(Exception):
        err.flush()
    start = "" if getattr(err, "at_line_start", True) else "\n"
    one = one_line(text)  # (the spaces of a file name it quotes kept)
    err.write(f"{start}hyperlips: {kind}: {one}\n")
    with contextlib.suppress(Exception):
        err.flush()


def _error_line(text: str) -> None:
    _close_progress_bars()
    _line("error", text)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings during a command: an InputWarning is one ``hyperlips: warning:`` line above the progress bars;
    other libraries' warnings are not for the user (``HYPERLIPS_DEBUG=1`` shows them)."""
    from .errors import InputWarning

    if not issubclass(category, InputWarning):
        if _debug():
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    text = one_line(message)
    if text in _shown_warnings:  # libraries that change the warning filters make Python forget what it showed
        return
    _shown_warnings.add(text)
    try:
        from tqdm import tqdm

        if getattr(tqdm, "_instances", None):  # clears the bars, writes the line, redraws them
            tqdm.write(f"hyperlips: warning: {text}", file=sys.stderr)
            return
    except ImportError:
        pass
    _line("warning", text)


_shown_warnings: set[str] = set()


@contextlib.contextmanager
def _signals_like_ctrl_c():
    """SIGTERM (``timeout``, process managers, container stops) and SIGHUP (a closed terminal) raise
    :class:`Terminated`, so the run cleans up as after Ctrl-C. Later signals are ignored while it cleans up. Each of
    them and Ctrl-C (SIGINT) is also remembered (:func:`~hyperlips.errors.request_stop`), so a run whose exception
    was lost inside a native library still stops at its next frame read or written (or training step). A signal
    ignored when the command starts (SIGHUP under ``nohup``, SIGINT in a background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        request_stop(signum)
        raise Terminated(signum)

    def ctrl_c(signum, frame):
        request_stop(signum)
        raise KeyboardInterrupt

    clear_stop()
    old = {}
    for s, h in ((signal.SIGTERM, handler), (signal.SIGHUP, handler), (signal.SIGINT, ctrl_c)):
        if signal.getsignal(s) is not signal.SIG_IGN:  # ignored stays ignored (``nohup``, a background job)
            old[s] = signal.signal(s, h)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        clear_stop()


class _Parser(argparse.ArgumentParser):
    """argparse with the house error format: one ``hyperlips: error:`` line naming the help to read, exit code 2."""

    def error(self, message: str):
        dashed = [a for a in sys.argv[1:] if a.startswith("-") and len(a) > 1 and os.path.isfile(a)]
        if dashed:  # a file whose name begins with "-" was taken for an option ("the following arguments are
            message += (f" ({dashed[0]} is a file whose name begins with '-', read as an option: write it as "  # required")
                        f"./{dashed[0]})")
        self.exit(EXIT_USER, f"hyperlips: error: {one_line(message)} (see: {self.prog} --help)\n")


def _make_lipsync(args):
    from .options import apply_threads
    from .pipeline import LipSync

    apply_threads(args)
    return LipSync(
        args.checkpoint,
        args.hr_checkpoint,
        size=args.size,
        device=args.device,
        batch_size=args.batch_size,
        untrained=args.untrained,
        model=args.model,
        progress=not args.quiet,
        precision=args.precision,
        temporal_blend=args.temporal_blend,
        input_blend=args.input_blend,
        phones=not getattr(args, "no_phones", False),
        mouth=getattr(args, "mouth", "auto"),
        detect_every_frame=getattr(args, "detect_every_frame", False),
    )


def _run_sync(args, ls=None) -> int:
    ls = ls or _make_lipsync(args)
    report = ls.sync(args.video, args.audio, args.output, face_index=args.face, face_box=args.face_box,
                     loop=args.loop, reference=args.reference, fps=args.fps, crf=args.crf, preset=args.preset,
                     pix_fmt=args.pix_fmt, phonemes=args.phonemes)
    if args.timings:
        print(report.summary())
    frames = f"{report.frames} frame{'s' if report.frames != 1 else ''}"
    print(f"wrote {report.output} ({frames}, {report.audio_seconds:.2f} s) with {_weights_used(ls)}")
    return 0


def _run_live(args) -> int:
    from .live import run_live

    ls = _make_lipsync(args)
    ls.progress = False
    report = run_live(ls, args.video, args.audio, args.output, chunk_ms=args.chunk_ms, pace=not args.no_pace,
                      voice_sample=args.voice_sample, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt,
                      loop=args.loop, face_index=args.face, face_box=args.face_box, reference=args.reference,
                      fps=args.fps, phonemes=args.phonemes)
    print(report.summary())
    frames = f"{report.frames} frame{'s' if report.frames != 1 else ''}"
    print(f"wrote {report.output} ({frames}) with {_weights_used(ls)}, precision {ls.precision}")
    return 0


def _run_demo(args) -> int:
    from .demo import make_demo_inputs
    from .streaming import check_output

    from .media.timing import check_fps
    from .media.writer import check_encoding

    # the output, the options sync checks and the weights first: a mistake leaves no demo inputs behind
    check_output(args.output)
    check_fps(args.fps)
    check_encoding(args.crf, args.preset, args.pix_fmt)
    ls = _make_lipsync(args)
    folder = args.output.parent if str(args.output.parent) else Path(".")
    image, speech, phonemes = make_demo_inputs(folder / "hyperlips_demo_inputs")
    print(f"demo inputs: {image} (a photo bundled with scikit-image), {speech} (speech synthesised by espeak-ng) "
          f"and {phonemes} (when it spoke each phoneme)")
    reads = hasattr(ls.base, "predict_shape")  # the timings go to a network that reads them (HyperLips-Lite): a
    args.video, args.audio, args.phonemes = image, speech, phonemes if reads else None  # Base was warned of the
    return _run_sync(args, ls)  # demo's own timings, which the user never gave


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hyperlips", description="HyperLips lip-sync: re-sync the mouth of a talking-face video to new speech.")
    parser.add_argument("--version", action="version", version=f"hyperlips {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("sync", help="lip-sync VIDEO to AUDIO and write OUTPUT", description="Lip-sync a video (or a still image) to a speech track.")
    p.add_argument("video", type=Path, help="talking-face video (mp4, mov, mkv, ...) or a still image (png, jpg)")
    p.add_argument("audio", type=Path, help="speech: wav, mp3, m4a, flac, ogg, or a video file whose audio track to use")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output video (.mp4, .mov, .m4v or .mkv; folders missing on its path are made; a file of "
                        "that name is replaced once the new one is complete, and left as it was if the run fails)")
    p.add_argument("--phonemes", type=Path, metavar="FILE",
                   help="what the speech says and when, from a speech synthesiser or a forced aligner: lines of "
                        "START [END] PHONE in seconds (ARPAbet, espeak-ng or IPA), JSON or a TextGrid; a "
                        "HyperLips-Lite mouth then closes on every /p b m/ (see docs/inference.md)")
    add_model_options(p)
    add_sync_options(p)
    p.set_defaults(func=_run_sync)

    p = sub.add_parser("live", help="stream VIDEO (an idle clip, looped) lip-synced to AUDIO fed in as if spoken; "
                                    "reports latency", description="Feed a speech file in chunks in real time to the "
                       "live API (LipSync.stream) over an idle video, write the frames and report the latency of "
                       "every frame and the real-time factor.")
    p.add_argument("video", type=Path, help="idle talking-face video (played forward and backward while speech lasts)")
    p.add_argument("audio", type=Path, help="speech to feed (any format sync reads)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output video (.mp4): the streamed frames")
    p.add_argument("--chunk-ms", type=float, default=40.0,
                   help="milliseconds of speech per chunk, from 5 to 1000 (default 40)")
    p.add_argument("--no-pace", action="store_true", help="feed the speech as fast as possible instead of in real "
                                                          "time (the real-time factor is then the processing speed)")
    p.add_argument("--phonemes", type=Path, metavar="FILE",
                   help="the speech's phoneme timings, known in advance (as sync --phonemes): a HyperLips-Lite "
                        "mouth closes on every /p b m/, and the starter reads them as its phones")
    p.add_argument("--voice-sample", type=Path, help="HyperLips-Lite: normalise the mel with the statistics of this "
                   "recording of the same voice (the speech file itself gives the frames of sync --no-phones, as a "
                   "stream reads no phones: of sync --phonemes FILE where --phonemes FILE is given to both); default: "
                   "of the speech so far")
    add_model_options(p, phones=False)  # live recognises no phones (media.phones reads a whole recording)
    add_sync_options(p, timings=False)
    for action in p._actions:  # (live draws no progress bar: its --quiet is taken, as sync's, and changes nothing)
        if action.dest == "quiet":
            action.help = "taken as sync takes it; live draws no progress bars (its report lines still print)"
    p.set_defaults(func=_run_live)

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


def _weights_used(ls) -> str:
    """The networks a run used, in words: the generator's weights and, where there is one, the HR decoder's."""
    hr = getattr(ls, "hr_weights", None)
    return f"{ls.weights} and the HR decoder {hr}" if hr else ls.weights


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``argv`` names (``hyperlips train base ...``: train base's), for its errors."""
    tokens = list(argv)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = next((t for t in tokens if subs and t in subs[0].choices), None)
        if name is None:
            return parser
        parser, tokens = subs[0].choices[name], tokens[tokens.index(name) + 1:]


def _absent_streams_to_null() -> None:
    """A closed standard output or error (``>&-``; a service started without them) is None in Python: every message
    would raise. They are sent to the null device instead, as a reader that went away is."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))


def _one_blas_thread_under_a_memory_limit() -> None:
    """Under a limit on the process's memory (``ulimit -v``, as batch systems set), OpenBLAS, loaded with scipy by a
    stage thread, retried for ever the buffers its threads need, holding Python's lock: the run hung and SIGTERM
    went unheard (measured: 2.5 GB, three runs of three). With one thread (``OPENBLAS_NUM_THREADS``, unless set) it
    runs; the work here is torch's and OpenCV's, not BLAS's."""
    from .errors import memory_limit

    if memory_limit() is not None:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _out_of_memory_text() -> str:
    """The out-of-memory line; under a limit on the process's memory, it names the limit (and, below what the
    commands need, what to raise it to)."""
    from .errors import MEMORY_LIMIT_FLOOR, memory_limit

    limit = memory_limit()
    if limit is None:
        return OUT_OF_MEMORY
    if limit >= MEMORY_LIMIT_FLOOR:
        return (f"out of memory: this process may use at most {limit / 1e9:.1f} GB of address space (ulimit -v): "
                "raise the limit, or use a shorter or smaller video, or a smaller --batch-size")
    return (f"out of memory: this process may use at most {limit / 1e9:.1f} GB of address space (ulimit -v), and its "
            f"libraries reserve far more than they use: raise the limit to at least "
            f"{MEMORY_LIMIT_FLOOR / 1e9:.1f} GB (ulimit -v {MEMORY_LIMIT_FLOOR // 1024}), or limit the memory used "
            "instead (a cgroup's memory limit, as containers and batch systems set)")


def _warn_small_memory_limit() -> None:
    """A limit on the process's memory too small for any command: said up front, since below 1.3 GB MediaPipe's
    threads end the process without a message (abort, exit 134) and the user is left with nothing."""
    from .errors import MEMORY_LIMIT_FLOOR, memory_limit

    limit = memory_limit()
    if limit is not None and limit < MEMORY_LIMIT_FLOOR:
        _line("warning", f"this process may use at most {limit / 1e9:.1f} GB of address space (ulimit -v); "
                         f"hyperlips needs about {MEMORY_LIMIT_FLOOR / 1e9:.1f} GB of it (its libraries reserve far "
                         "more than they use), so the command may fail, or end without a message")


def main(argv: list[str] | None = None) -> int:
    _one_blas_thread_under_a_memory_limit()
    _absent_streams_to_null()
    try:
        os.getcwd()
    except FileNotFoundError:  # (torch then fails to load, and its library ends the process silently: exit 2)
        print("hyperlips: error: the current folder no longer exists (deleted or renamed): change to an existing "
              "folder first", file=sys.stderr)
        return EXIT_USER
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named with the help of the command given (argparse names the top level's)
            _command_parser(parser, sys.argv[1:] if argv is None else argv).error(
                f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        for msg in parser.get_default("_broken_commands") or ():
            print(f"hyperlips: note: {msg}", file=sys.stderr)
        return int(e.code or 0)
    if not getattr(args, "func", None):  # the help on stderr with an error line: stdout holds results only
        parser.print_help(sys.stderr)
        print("hyperlips: error: no command given (the commands are listed above)", file=sys.stderr)
        return EXIT_USER
    _warn_small_memory_limit()
    with _terminal_stderr(restore=argv is not None), _messages_stdout(), _signals_like_ctrl_c(), \
            warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("default")
        return _dispatch(args)


def run() -> None:
    """The ``hyperlips`` command: :func:`main`, then the process ends without Python's interpreter teardown.

    That teardown unloads torch, MediaPipe and their threads one by one and took 0.3-0.5 s at the end of every
    command (measured: ``hyperlips sync`` of a 9 s 720p clip, 8.4-8.6 -> 7.6-7.8 s from start to exit). By then the
    command has closed what it wrote; standard output and error are flushed and the exit handlers run (logging's,
    temporary folders' finalizers) before the process ends. An unexpected error still ends the normal way, with its
    traceback. Ctrl-C before a command's own handling of it is set up (while its modules load) ends as it does
    later: "interrupted", exit 130 (it was a traceback, exit 1, the code of a bug)."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("\nhyperlips: interrupted: stopped by Ctrl-C (SIGINT) while starting", file=sys.stderr)
        code = 130
    end_process(code)


def end_process(code: int) -> None:
    """Flush standard output and error, run the exit handlers, then end the process with ``code`` at once."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or absent: nothing to flush
            pass
    atexit._run_exitfuncs()
    os._exit(code)


# packages that installing hyperlips alone does not bring (scripts/install.sh does): what to install, in words
SEPARATE_INSTALLS = {
    "torch": "PyTorch, which is not installed: pip install torch (for a CPU-only machine, the CPU build: pip install "
             "torch --index-url https://download.pytorch.org/whl/cpu), or run scripts/install.sh from the source",
}


def _dispatch(args) -> int:
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        _error_line(_user_text(e))
        return e.exit_code
    except (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError) as e:
        # file-system problems with paths the user gave (an unwritable output folder, say): not bugs
        _error_line(_os_error_text(e))
        return EXIT_USER
    except OSError as e:
        if e.errno == errno.EROFS:  # a read-only disk: no space to free
            _error_line(f"{_os_error_text(e)}; choose a folder you can write to")
            return EXIT_USER
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):  # a full disk, or a file-size limit
            from .errors import storage_advice

            _error_line(f"{_os_error_text(e)}; {storage_advice(e.errno)}")
            return EXIT_USER
        if e.errno == errno.ENOMEM:
            _error_line(_out_of_memory_text())
            return EXIT_MEMORY
        if e.errno == errno.ENAMETOOLONG:  # a path the user gave (a name over 255 bytes): not a bug
            _error_line(f"{_os_error_text(e)} (a name in it is longer than the 255 bytes a file system takes, or "
                        "the whole path longer than the system's limit): choose a shorter one")
            return EXIT_USER
        raise
    except ModuleNotFoundError as e:
        hint = SEPARATE_INSTALLS.get((e.name or "").split(".")[0])
        if hint is None:
            raise
        _error_line(f"this command needs {hint}")
        return EXIT_USER
    except Exception as e:  # noqa: BLE001 - out of memory, from whichever library met it; anything else is a bug
        if not out_of_memory(e):
            raise
        _close_progress_bars()
        _error_line(OUT_OF_GPU_MEMORY if gpu_out_of_memory(e) else _out_of_memory_text())
        return EXIT_MEMORY
    except KeyboardInterrupt as e:
        _close_progress_bars()
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        _line("interrupted", f"stopped by {signal.Signals(signum).name}")
        return EXIT_SIGNAL[signum]


def _user_text(e: UserError) -> str:
    """The message of a UserError; one re-raised from a worker process (torch's DataLoader wraps it with the
    worker's traceback) gives back the original message, the last line of that traceback."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def _os_error_text(e: OSError) -> str:
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    return f"{e.strerror or e}{where}"


if __name__ == "__main__":
    sys.exit(main())
