"""Errors a user can act on.

A :class:`UserError` means the input (a file, an option, a checkpoint) is wrong, not the program. The command
line prints its message as one line and exits with code 2; Python callers can catch it. Anything else that
escapes is a bug and keeps its traceback. An :class:`InputWarning` reports something unusual that was handled.
A stop asked for by a signal (:class:`Terminated`, :func:`check_stop`) ends a run like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import contextvars
import signal


DEBUG_ENV = "HYPERLIPS_DEBUG"  # set to 1 to keep library messages (FFmpeg, MediaPipe, Python warnings)


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set on: to anything but nothing, 0, false, no or off (in any
    case), as every switch of this tool reads it."""
    import os

    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def debug_wanted() -> bool:
    """HYPERLIPS_DEBUG on (:func:`env_flag`): the libraries underneath say what they have to say."""
    return env_flag(DEBUG_ENV)


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the file and what to do."""

    exit_code = 2


class NoFaceError(UserError):
    """No face was found anywhere in the input video."""


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, or holds weights for another network."""


class MediaError(UserError):
    """A media file is missing, unreadable, or lacks the stream that is needed."""


def require_file(path, what: str = "file") -> None:
    """Raise :class:`UserError` unless ``path`` names an existing, readable regular file."""
    import os

    import re

    p = os.fspath(path)
    if not os.path.exists(p):
        if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+:/", p):  # a URL (a path type folds its "//" into "/")
            raise MediaError(f"{what} not found: {p}: web addresses are not read; download the file first")
        if p == "-":
            raise MediaError(f"{what} '-': standard input is not read; give a file (save the stream to one first)")
        if unexpanded_home(p):
            raise MediaError(f"{what} not found: {p} (its '~' was not made your home folder, as a shell does when it "
                             f"is not quoted: give {os.path.expanduser(p)})")
        raise MediaError(f"{what} not found: {shown_path(p)}{near_name_hint(p)}")
    if os.path.isdir(p):
        raise MediaError(f"{what} is a folder, not a file: {p}")
    if not os.access(p, os.R_OK):
        raise MediaError(f"{what} is not readable (check its permissions): {p}")
    import stat

    if not stat.S_ISREG(os.stat(p).st_mode):  # a pipe (<(command), /dev/stdin), a device: read once, with no length
        raise MediaError(f"{what} {p} is a pipe or a device, not a file: streams are not read; save the stream to a "
                         "file first")
    if os.path.getsize(p) == 0:
        raise MediaError(f"{what} is empty (0 bytes): {p}")


def shown_path(path) -> str:
    """``path`` as a message shows it: as it is, or quoted with its odd characters escaped where it holds any (a
    line break, a tab, a byte that is no UTF-8) or begins or ends with a space, which a message would hide: "video not
    found: take 1.mp4" beside an existing take 1.mp4, for a name holding a line break."""
    import os

    p = os.fspath(path)
    if p.isprintable() and p == p.strip():
        return p
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in p):  # bytes that are no UTF-8, as the file system holds them
        return "'" + os.fsencode(p).decode("utf-8", "backslashreplace").replace("'", "\\'") + "'"
    return repr(p)


def near_name_hint(path: str) -> str:
    """Where ``path`` is not found but its folder holds a name that differs from it only by its Unicode form (a Mac's
    decomposed "José.mp4" copied here, the name typed composed) or only by letter case: the hint that names it, else
    "". Such names look the same in every message, so "not found" alone read as a fault of the tool."""
    import os
    import unicodedata

    folder, name = os.path.split(path)
    if not name:
        return ""
    try:
        with os.scandir(folder or ".") as entries:
            names = [e.name for e in entries]
    except OSError:
        return ""
    form = unicodedata.normalize("NFC", name)
    same_form = [n for n in names if n != name and unicodedata.normalize("NFC", n) == form]
    if same_form:
        return (f" (this folder holds {shown_path(same_form[0])}, which looks the same but spells its accented letters "
                "in another Unicode form: give the name as stored, e.g. by tab completion or a wildcard)")
    same_case = [n for n in names if n != name and unicodedata.normalize("NFC", n).casefold() == form.casefold()]
    if len(same_case) == 1:
        return f" (did you mean {shown_path(os.path.join(folder, same_case[0]))}? names differ in letter case here)"
    return ""


def storage_advice(errno_value: int | None) -> str:
    """What to do when a write failed for want of room: a full disk or quota (free some space), or a file larger than
    this process may write (``ulimit -f``) or the file system takes (FAT32's 4 GB): EFBIG, which a disk with room
    gives too."""
    import errno

    if errno_value == errno.EFBIG:
        return ("the file would be larger than this process may write (a file-size limit, ulimit -f) or than the "
                "disk's file system takes (FAT32: 4 GB): raise the limit or choose another disk")
    return "free some space or choose another folder"


def refuse_unexpanded_home(path, what: str) -> None:
    """A :class:`UserError` where ``path`` (a place to write: an output, a folder) begins with a ``~`` no shell made
    the home folder (:func:`unexpanded_home`): a folder named "~" would be made where the command runs. ``what``
    names it in the message (``the output``, ``-o``)."""
    import os

    if unexpanded_home(path):
        raise UserError(f"{what} {path} begins with a '~' that was not made your home folder (as a shell does when it "
                        f"is not quoted): give {os.path.expanduser(path)}")


def unexpanded_home(path) -> bool:
    """Whether ``path`` begins with a ``~`` a shell would have made the home folder (``~`` or ``~user``; quoted, or
    from a script or a settings file, it was not), where no such folder exists here."""
    import os

    p = os.fspath(path)
    first = p.split(os.sep, 1)[0]
    return first.startswith("~") and not os.path.exists(first) and os.path.expanduser(first) != first


class InputWarning(UserWarning):
    """Something unusual in the input that was handled (a variable frame rate, damaged frames, non-finite audio
    samples). Issued with :func:`warnings.warn`; the command line prints it as one ``hyperlips: warning:`` line."""


# the messages of the call under way (``collect_warnings``): a context variable, so each thread's call (and the
# threads it starts in a copy of its context, stages.py) keeps its own, where warnings.catch_warnings swaps one
# process-wide list (two calls at once in two threads had each other's warnings)
_collected: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("hyperlips_warnings", default=None)


def warn(message: str) -> None:
    """Issue an :class:`InputWarning` (shown once per message), and note it for the call that collects them
    (:func:`collect_warnings`)."""
    import warnings

    said = _collected.get()
    if said is not None and message not in said:
        said.append(message)
    warnings.warn(message, InputWarning, stacklevel=2)


@contextlib.contextmanager
def collect_warnings():
    """The :class:`InputWarning` messages issued by this thread (and the threads it starts through
    :mod:`hyperlips.stages`) while the block runs, each once, in order: a list filled as they come. Blocks nest:
    an enclosing block gets the inner one's messages too."""
    said: list[str] = []
    outer = _collected.get()
    token = _collected.set(said)
    try:
        yield said
    finally:
        _collected.reset(token)
        if outer is not None:  # a call within a call: the outer one was warned of these too
            outer.extend(m for m in said if m not in outer)


def decoder_reason(e: BaseException) -> str:
    """A decoding error in FFmpeg's own words ("Invalid data found when processing input"), without PyAV's
    "[Errno 1094995529] ...: 'path'" around them (the message names the file already)."""
    text = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else "")
    return text or type(e).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: raised like Ctrl-C, so every clean-up path that handles Ctrl-C handles them too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The signal a command was asked to stop by (SIGINT, SIGTERM, SIGHUP), set by the command line's handlers. The
# handler raises at once, but an exception raised inside a native library's call can be lost there: PyAV's audio
# encoder (pulling frames from its filter graph) lost 7 of 800 signals sent during a loop of AAC encoding, and a
# ``sync`` went on to the end and exited 0. Where work goes on (``FrameReader`` per frame, ``VideoWriter`` per frame
# and before naming its file, the training loop per step) :func:`check_stop` raises it again.
_stop_signal: list[int] = []


def request_stop(signum: int) -> None:
    """Remember that the process was asked to stop by ``signum`` (called by a signal handler)."""
    if not _stop_signal:
        _stop_signal.append(int(signum))


def clear_stop() -> None:
    """Forget a stop request (a command line run starts and ends with none)."""
    _stop_signal.clear()


def check_stop() -> None:
    """Raise the interruption a stop request asked for (:class:`Terminated`, or ``KeyboardInterrupt`` for SIGINT),
    if one came: where its first raising was lost inside a native call, the run stops here instead."""
    if _stop_signal:
        signum = _stop_signal[0]
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is the machine running out of memory: Python's MemoryError (FFmpeg's too), OpenCV's and torch's
    allocation failures (a GPU's too: CUDA's and MPS's "out of memory"), a thread that could not be started; under a
    limit on the process's memory (:func:`memory_limit`), also the ways libraries fail when they cannot map more
    (:data:`MEMORY_LIMIT_SIGNS`)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    if any(words in text for words in ("Insufficient memory", "Failed to allocate", "can't allocate memory",
                                       "can't start new thread", "Cannot allocate memory", "out of memory")):
        return True
    limit = memory_limit()
    return limit is not None and limit < TIGHT_MEMORY_LIMIT and any(sign in text for sign in MEMORY_LIMIT_SIGNS)


# how libraries fail under a limit on the process's memory (ulimit -v), measured with `hyperlips sync` at 1.0-2.5 GB:
# a library loaded late (PyAV, torch, numpy.random) cannot be mapped; oneDNN cannot set up a convolution; FFmpeg's
# encoder fails without saying why. Only under a tight limit are they read as memory: under none, or a large one (a
# batch system's 16-64 GB), they are bugs, with their traceback.
MEMORY_LIMIT_SIGNS = ("failed to map segment from shared object", "could not create a primitive",
                      "Generic error in an external library")
# the least limit (ulimit -v) under which `hyperlips sync` ran (face2.mp4, 844x844, the starter): 2.5 GB failed one run
# of two, 3,000,000 KiB (3.1 GB) passed; below 1.3 GB MediaPipe ended the process without a word
MEMORY_LIMIT_FLOOR = 3_000_000 * 1024  # (ulimit -v counts KiB)
TIGHT_MEMORY_LIMIT = 2 * MEMORY_LIMIT_FLOOR  # under it, the signs above are read as memory (a larger video needs more)


def memory_limit() -> int | None:
    """The limit on this process's memory (its address space: ``ulimit -v``, as batch systems set) in bytes, or None
    where there is none. Libraries reserve far more address space than they use (torch, MediaPipe's threads)."""
    try:
        import resource
    except ImportError:  # (Windows)
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def gpu_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is a GPU running out of its own memory (CUDA's, MPS's), which closing programs on the machine
    does not free (another process may hold the card)."""
    text = str(e)
    return type(e).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text or "MPS backend out of memory" in text


def one_line(text) -> str:
    """``text`` on one line: its line breaks (and the spaces round them) made one space, other spaces kept (a file
    name it quotes may hold runs of them: folded, it would name a file that does not exist)."""
    import re

    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).strip()


def hidden_name(name: str, tail: str) -> str:
    """``.NAME`` + ``tail``: the name of a hidden working file beside ``name`` (its partial copy, a write check), the
    name cut (with a hash of the whole) where that would pass the 255 bytes a file name may have: a name the file
    system takes was refused as "too long" for its working file's."""
    import hashlib
    import os

    data = os.fsencode(name)
    if 1 + len(data) + len(os.fsencode(tail)) <= 255:
        return f".{name}{tail}"
    room = 255 - 1 - 9 - len(os.fsencode(tail))
    return f".{data[:room].decode('utf-8', 'ignore')}.{hashlib.sha1(data).hexdigest()[:8]}{tail}"
