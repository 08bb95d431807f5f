"""What the command line prints: native libraries silenced, Python's own lines kept, errors and warnings alone on
their lines, worker errors unwrapped, argument mistakes in one line (the corpus tests run it end to end)."""

from __future__ import annotations

import os
import sys
import warnings

import pytest

from hyperlips import cli
from hyperlips.errors import InputWarning, UserError


def test_native_output_is_silenced_and_python_output_kept(capfd):
    with cli._terminal_stderr():
        os.write(2, b"libpng error: PNG input buffer is incomplete\n")  # what a C library does
        sys.stderr.write("progress 50%")
        cli._error_line("something is wrong\n   with   spaces")
    err = capfd.readouterr().err
    assert "libpng" not in err
    assert err == "progress 50%\nhyperlips: error: something is wrong with spaces\n"  # its own line, one line
    os.write(2, b"after\n")  # descriptor 2 is back
    assert capfd.readouterr().err == "after\n"


def test_input_warnings_are_one_line_each_and_shown_once(capfd):
    with cli._terminal_stderr(), warnings.catch_warnings():
        warnings.showwarning = cli._show_warning
        warnings.simplefilter("default")
        for _ in range(2):
            warnings.warn("clip.mp4 has a variable\nframe rate", InputWarning)
            warnings.filterwarnings("ignore", "nothing")  # as libraries do: Python forgets what it has shown
        warnings.warn("a library's deprecation notice", DeprecationWarning)
    err = capfd.readouterr().err
    assert err == "hyperlips: warning: clip.mp4 has a variable frame rate\n"


def test_error_from_a_loader_process_is_unwrapped():
    wrapped = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\nhyperlips.errors.UserError: data/a/face128.bin: image "
                        "3 is corrupt; delete its clip folder and preprocess again\n")
    assert cli._user_text(wrapped) == ("data/a/face128.bin: image 3 is corrupt; delete its clip folder and "
                                       "preprocess again")
    assert cli._user_text(UserError("plain")) == "plain"


@pytest.mark.parametrize("argv, words", [
    (["sync", "a.mp4", "b.wav", "-o", "c.mp4", "--fps", "fast"], "--fps"),
    (["sync", "a.mp4"], "required"),
    (["nonsense"], "invalid choice"),
    (["train", "sync", "--bogus"], "--bogus"),
])
def test_argument_mistakes_are_one_line(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hyperlips: error:") and words in err[0], err


def test_signals_raise_like_ctrl_c():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with cli._signals_like_ctrl_c():
        with pytest.raises(KeyboardInterrupt) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between two bytecodes
                pass
        assert isinstance(e.value, cli.Terminated) and e.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before  # restored afterwards
