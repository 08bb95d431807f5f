"""Progress bars that suit where stderr goes: on a terminal a bar redrawn in place; in a log file or a pipe
(``nohup hyperlips ... > log 2>&1``) a line now and then, as a log wants it, instead of a bar redrawn every few
tenths of a second with carriage returns (one endless line, hundreds of kB over a long job)."""

from __future__ import annotations

import io
import sys

LOG_EVERY_S = 30.0  # seconds between a bar's lines in a log file (its last state is written too when it ends)


class LineStream(io.TextIOBase):
    """A stream for tqdm that writes each state of a bar as a line of its own (no carriage returns, no padding;
    the blank redraw that clears a finished bar writes nothing)."""

    def __init__(self, out) -> None:
        super().__init__()
        self.out = out

    def write(self, s: str) -> int:
        text = s.replace("\r", "\n")
        for line in text.split("\n"):
            line = line.rstrip()
            if line:
                self.out.write(line + "\n")
        return len(s)

    def flush(self) -> None:
        self.out.flush()


def to_terminal(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal; False for a file, a pipe, or a closed or replaced stream."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


FALLBACK_COLUMNS = 80  # a bar's width on a terminal that reports none


def _columns(stream) -> int | None:
    """The width the terminal behind ``stream`` reports (0 for some pseudo-terminals), or None where it cannot say."""
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None


def width_options(stream) -> dict:
    """tqdm's width options for a bar on the terminal behind ``stream``: its width followed as it is resized, or
    :data:`FALLBACK_COLUMNS` where it says it has none (`script`, some docker and CI pseudo-terminals, until resized:
    following that, tqdm drew blank lines)."""
    return {"ncols": FALLBACK_COLUMNS} if _columns(stream) == 0 else {"dynamic_ncols": True}


def bar(iterable=None, *, stream=None, **kw):
    """``tqdm(iterable, **kw)`` on ``stream`` (default stderr): redrawn in place on a terminal, written as a line at
    most every :data:`LOG_EVERY_S` seconds elsewhere. ``disable=True`` hides it as tqdm does."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if to_terminal(stream):
        return tqdm(iterable, file=stream, **width_options(stream), **kw)
    kw.setdefault("mininterval", LOG_EVERY_S)
    kw.setdefault("maxinterval", kw["mininterval"])  # tqdm's monitor would otherwise redraw it every 10 s
    kw.setdefault("ncols", 100)
    return tqdm(iterable, file=LineStream(stream), **kw)


def redraw(bar) -> None:
    """Show a tqdm ``bar``'s new state now where it is redrawn in place (a terminal); in a log, where every state is
    a line, its closing line shows it (a refresh there wrote the same state twice, a moment apart)."""
    if not isinstance(getattr(bar.fp, "_wrapped", bar.fp), LineStream):
        bar.refresh()
