"""What the command line prints: native libraries silenced, Python's own lines kept, errors and warnings alone on
their lines, worker errors unwrapped, argument mistakes in one line (the corpus tests run it end to end)."""

from __future__ import annotations

import io
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
    # its own line, one line (the spaces within a line kept: a file name it quotes may hold several in a row)
    assert err == "progress 50%\nhyperlips: error: something is wrong with   spaces\n"
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


def _swallowed(signum):
    """Send ``signum`` to this process and swallow what its handler raises, as a native library did (PyAV's
    audio encoder lost 7 of 800 such exceptions)."""
    try:
        os.kill(os.getpid(), signum)
        for _ in range(1000):  # the handler runs between two bytecodes
            pass
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the handler raised nothing")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_whose_exception_was_swallowed_is_raised_again_by_check_stop(name):
    import signal

    from hyperlips.errors import check_stop

    signum = getattr(signal, name)
    # obeyed as in a terminal, even where the tests run under nohup or in a background job (which ignore it)
    old = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    try:
        with cli._signals_like_ctrl_c():
            check_stop()  # nothing asked for yet
            _swallowed(signum)
            with pytest.raises(KeyboardInterrupt) as e:
                check_stop()
            assert getattr(e.value, "signum", signal.SIGINT) == signum
        check_stop()  # a command that ended forgets it: the next one in this process is not stopped
    finally:
        signal.signal(signum, old)


def test_reading_a_video_stops_at_a_stop_request(real_data):
    """Decoding loops (eval, preprocess, the reference search) stop at the next frame once a stop was asked for."""
    import signal

    from hyperlips.errors import Terminated, clear_stop, request_stop
    from hyperlips.media.video import FrameReader

    with FrameReader(real_data / "retalking" / "face2.mp4") as reader:
        frames = reader.iter_range(0, 10)
        next(frames)
        request_stop(signal.SIGHUP)
        try:
            with pytest.raises(Terminated) as e:
                next(frames)
        finally:
            clear_stop()
        assert e.value.signum == signal.SIGHUP
        assert len(list(reader.iter_range(0, 10))) == 10  # and reads on once the request is forgotten


def test_a_writer_asked_to_stop_leaves_nothing_under_the_output_name(tmp_path):
    """A stop request that comes while the encoder flushes: ``close`` raises it and names no file."""
    import signal

    import numpy as np

    from hyperlips.errors import Terminated, clear_stop, request_stop
    from hyperlips.media.writer import VideoWriter

    out = tmp_path / "out.mp4"
    writer = VideoWriter(out, 64, 48, 25)
    for k in range(5):
        writer.write(np.full((48, 64, 3), 40 * k, np.uint8))
    request_stop(signal.SIGTERM)
    try:
        with pytest.raises(Terminated):
            writer.close()
    finally:
        clear_stop()
    assert list(tmp_path.iterdir()) == []


def test_ignored_signals_stay_ignored_while_a_command_runs():
    """Under ``nohup`` SIGHUP is ignored (and SIGINT in a background job): a command must not start obeying them."""
    import signal

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli._signals_like_ctrl_c():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGTERM))
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


@pytest.fixture(scope="module")
def photo_and_speech(real_data, tmp_path_factory):
    """A real close-up's first frame (png) and two seconds of real speech (50 frames at 25 fps)."""
    import cv2
    import soundfile as sf

    from hyperlips.media.video import FrameReader

    folder = tmp_path_factory.mktemp("photo_and_speech")
    with FrameReader(real_data / "retalking" / "face2.mp4") as reader:
        cv2.imwrite(str(folder / "face.png"), next(reader.iter_range(0, 1)).image)
    wav, rate = sf.read(str(real_data / "hyperlips" / "audio1.wav"))
    sf.write(str(folder / "speech.wav"), wav[: int(2.0 * rate)], rate)
    return folder / "face.png", folder / "speech.wav"


def test_sync_stops_when_the_encoder_swallows_the_interruption(photo_and_speech, tmp_path, capfd, monkeypatch):
    """SIGTERM arrives while the audio encoder runs and the encoder loses the exception: ``sync`` still stops
    (exit 143, nothing under the output's name) instead of running to the end and exiting 0."""
    import signal

    from hyperlips.media import writer as writer_mod

    face, speech = photo_and_speech
    real_audio = writer_mod.VideoWriter._write_audio_until
    calls = []

    def encoder_that_swallows(self, seconds):
        calls.append(seconds)
        real_audio(self, seconds)
        if len(calls) == 5:
            _swallowed(signal.SIGTERM)

    monkeypatch.setattr(writer_mod.VideoWriter, "_write_audio_until", encoder_that_swallows)
    out = tmp_path / "out.mp4"
    code = cli.main(["sync", str(face), str(speech), "-o", str(out), "--untrained",
                     "--model", "lite", "--quiet", "--device", "cpu", "--batch-size", "2"])
    err = capfd.readouterr().err
    assert code == 143, err
    assert err.strip().splitlines()[-1] == "hyperlips: interrupted: stopped by SIGTERM", err
    assert len(calls) == 5  # stopped at the frame the signal came in, not at the end
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".") or "out" in p.name]


def test_a_reader_that_leaves_does_not_end_the_command(photo_and_speech, tmp_path):
    """stdout and stderr piped to a reader that quits at once (``| head -1``): the render goes on to its output and
    exits 0; it used to end with a BrokenPipeError traceback and exit 1, a finished file left behind."""
    import subprocess

    face, speech = photo_and_speech
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "hyperlips.cli", "sync", str(face), str(speech), "-o", str(out),
                             "--untrained", "--model", "lite", "--device", "cpu", "--batch-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first progress bar and the final "wrote" line
    proc.stderr.close()
    assert proc.wait(timeout=600) == 0
    assert out.exists() and out.stat().st_size > 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_write_lines_to_a_log_file_and_redraw_on_a_terminal(monkeypatch):
    """``sync``, ``preprocess``, ``eval`` and ``train judge`` written to a log file (``nohup ... > log``) drew their
    bars there, redrawn with carriage returns about ten times a second into one endless line: a log now gets the
    bar's state as a line of its own, at most every 30 s and at its end; a terminal still gets a bar in place."""
    from hyperlips import bars

    clock = [0.0]
    monkeypatch.setattr("tqdm.std.time", lambda: clock[0])  # tqdm's clock: 1 s per update
    log = io.StringIO()
    with bars.bar(total=100, desc="lip-sync", unit="frame", stream=log) as b:
        for _ in range(100):
            clock[0] += 1.0
            b.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert lines[0].startswith("lip-sync:   0%") and "100/100" in lines[-1]
    assert 3 <= len(lines) <= 7, lines  # the start, about every 30 s of 100, the end
    hidden = io.StringIO()
    with bars.bar(total=10, stream=hidden, leave=False) as b:  # a bar that clears itself leaves no blank line
        b.update(10)
    assert "\n\n" not in hidden.getvalue() and all(ln.strip() for ln in hidden.getvalue().splitlines())
    tty = _Terminal()
    with bars.bar(total=100, desc="lip-sync", stream=tty) as b:
        for _ in range(100):
            clock[0] += 1.0
            b.update(1)
    assert tty.getvalue().count("\r") >= 50  # redrawn in place


def test_a_bar_that_ends_early_writes_its_last_state_once_to_a_log():
    """``sync``'s face search, done before its estimated total, wrote "faces: 100% 77/77" twice to a log."""
    from hyperlips import bars
    from hyperlips.sync_report import complete_bar

    log = io.StringIO()
    with bars.bar(total=90, desc="faces", unit="frame", stream=log) as b:
        b.update(77)
        complete_bar(b)
    assert [ln for ln in log.getvalue().splitlines() if "77/77" in ln] == [log.getvalue().splitlines()[-1]], log.getvalue()
    tty = _Terminal()
    with bars.bar(total=90, desc="faces", stream=tty) as b:
        b.update(77)
        complete_bar(b)
        assert "77/77" in tty.getvalue().split("\r")[-1]  # redrawn at once on a terminal


@pytest.mark.parametrize("value, on", [("", False), ("0", False), ("false", False), (" Off ", False), ("no", False),
                                       ("1", True), ("yes", True), ("true", True)])
def test_debug_output_is_off_for_zero_and_false(monkeypatch, value, on):
    """``HYPERLIPS_DEBUG=0`` turned the library messages on (any value did), unlike ``HYPERLIPS_NO_SHIPPED=0``."""
    import av.logging

    monkeypatch.setenv(cli.DEBUG_ENV, value)
    try:
        assert cli._debug() is on
        assert (av.logging.get_level() is not None) is on  # FFmpeg's own messages too (PyAV keeps them off)
    finally:
        av.logging.set_level(None)


def test_debug_output_shows_mediapipes_lines_too(tmp_path):
    """HYPERLIPS_DEBUG=1 showed no library message at all: PyAV keeps FFmpeg's off, and mediapipe's were filtered
    whatever the setting."""
    import subprocess
    import sys

    code = ("import os\n"
            "from hyperlips.face.detect import quiet_native_logs\n"
            "with quiet_native_logs():\n"
            "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n")
    import os

    for value, shown in (("1", True), ("0", False)):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                             env={**os.environ, cli.DEBUG_ENV: value})
        assert (b"XNNPACK" in res.stderr) is shown, (value, res.stderr)


def test_an_unknown_option_names_the_help_of_its_command(capsys):
    """argparse named the top level's help (``hyperlips --help``) for an option the command does not know."""
    for argv, prog in ((["sync", "a.mp4", "b.wav", "-o", "x.mp4", "--frob"], "hyperlips sync"),
                       (["train", "base", "data", "--out", "r", "--frob"], "hyperlips train base"),
                       (["--frob"], "hyperlips")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"unrecognized arguments: --frob (see: {prog} --help)" in err, err


def test_a_bar_with_nothing_to_count_is_not_shown(capfd):
    """eval's tail and phonemes protocols give sync a reference picture: its face search counts no frames, and its
    bar printed "faces: 0frame [00:00, ?frame/s]" twice a segment, as if no face had been found."""
    from hyperlips.sync_report import complete_bar, progress_bar

    with progress_bar(0, "faces") as b:
        complete_bar(b)
    with progress_bar(3, "lip-sync") as b:
        b.update(3)
    err = capfd.readouterr().err
    assert "faces" not in err and "lip-sync" in err, err


def test_a_bar_is_drawn_on_a_terminal_that_reports_no_width():
    """`script`, and some docker and CI pseudo-terminals, say they are 0 columns wide until resized: tqdm, asked to
    follow the width, drew nothing, and a run showed blank lines where its progress should be."""
    import os
    import pty
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("a pseudo-terminal of Linux")
    from hyperlips.bars import bar

    from tqdm import tqdm

    from hyperlips.bars import width_options

    master, slave = pty.openpty()  # (a new one reports 0 x 0)
    try:
        assert os.get_terminal_size(slave).columns == 0
        with os.fdopen(os.dup(slave), "w") as term:
            for _ in bar(range(3), stream=term, desc="faces", unit="frame"):
                pass
            # training's bars, made with tqdm itself (the run's, the audio encoder's fit)
            for _ in tqdm(range(3), desc="train lite", file=term, **width_options(term)):
                pass
        said = os.read(master, 65536).decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "faces" in said and "3/3" in said and "train lite" in said, repr(said)
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "hyperlips"
    made = {f.relative_to(src).as_posix(): f.read_text() for f in src.rglob("*.py") if f.name != "bars.py"}
    unguarded = [name for name, text in made.items() for call in re.findall(r"\btqdm\((?:[^()]|\([^()]*\))*\)", text)
                 if "width_options" not in call]
    assert not unguarded, f"bars made with tqdm without bars.width_options: {unguarded}"

