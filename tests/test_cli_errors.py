"""Bad input ends with one line on stderr, exit code 2, and no output file: never a traceback, nothing lost."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers import random_base_checkpoint, random_hr_checkpoint, run_cli, write_wav


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_base_checkpoint(tmp_path_factory.mktemp("ckpt") / "base.pth")


@pytest.fixture(scope="module")
def face_video(real_data, tmp_path_factory):
    return real_data / "retalking" / "face2.mp4"


def assert_clean_failure(result, out_path, *words):
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hyperlips: error:"), lines[0]
    assert "Traceback" not in result.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    assert not out_path.exists()
    leftovers = [p for p in out_path.parent.iterdir() if p.name.startswith(".") and p.suffix == out_path.suffix]
    assert not leftovers, leftovers


def test_missing_video(tmp_path, ckpt):
    out = tmp_path / "out.mp4"
    r = run_cli("sync", tmp_path / "nope.mp4", write_wav(tmp_path / "a.wav", 1.0), "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, "not found", "nope.mp4")


@pytest.mark.parametrize("video, reason", [("https://example.com/talk.mp4", "web addresses are not read"),
                                           ("-", "standard input is not read")])
def test_a_url_or_stdin_is_told_apart_from_a_missing_file(tmp_path, ckpt, video, reason):
    out = tmp_path / "out.mp4"
    r = run_cli("sync", video, write_wav(tmp_path / "a.wav", 1.0), "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, reason)


def test_a_pipe_or_an_unknown_device_is_said_for_what_it_is(tmp_path, ckpt, face_video):
    """A pipe (`<(cat speech.wav)`, /dev/stdin) was said to be an empty file; `--device mps` (or xpu, meta) on a
    machine without it ended in a traceback and the exit code of a bug."""
    import os

    fifo = tmp_path / "speech.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.mp4"
    r = run_cli("sync", face_video, fifo, "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, "is a pipe or a device, not a file")
    wav = write_wav(tmp_path / "a.wav", 0.5)
    for device, words in (("mps", "has no Apple MPS GPU"), ("xpu", "--device xpu is not supported"),
                          ("meta", "--device meta is not supported")):
        r = run_cli("sync", face_video, wav, "-o", out, "--checkpoint", ckpt, "--quiet", "--device", device)
        assert_clean_failure(r, out, words)


@pytest.mark.parametrize("shape", [(1, 1), (300, 1), (1, 300)])
def test_a_picture_one_pixel_wide_is_a_one_line_error(tmp_path, ckpt, face_video, shape):
    """A 1x1 (or 1-pixel-wide) photo ended in a traceback from the face detector ("frame is too small"), exit 1."""
    import cv2

    img = tmp_path / "dot.png"
    cv2.imwrite(str(img), np.full((*shape, 3), 200, np.uint8))
    out = tmp_path / "out.mp4"
    r = run_cli("sync", img, write_wav(tmp_path / "a.wav", 0.5), "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, f"dot.png is {shape[1]}x{shape[0]} pixels: too small to show a face")
    r = run_cli("sync", face_video, write_wav(tmp_path / "a.wav", 0.5), "-o", out, "--checkpoint", ckpt, "--quiet",
                "--reference", img)
    assert_clean_failure(r, out, "too small to show a face")


def test_a_file_name_quoted_in_an_error_keeps_its_spaces(tmp_path, ckpt):
    """Runs of spaces in a file name were folded into one in the error line: a name that does not exist."""
    out = tmp_path / "out.mp4"
    r = run_cli("sync", tmp_path / "two  spaces.mp4", write_wav(tmp_path / "a.wav", 0.5), "-o", out, "--checkpoint",
                ckpt, "--quiet")
    assert_clean_failure(r, out, "two  spaces.mp4")


def test_a_file_name_quoted_in_a_warning_or_a_usage_error_keeps_its_spaces(capsys):
    """Warning lines (and argparse's errors) still folded runs of spaces into one; line breaks are still joined."""
    import argparse

    from hyperlips import cli
    from hyperlips.errors import InputWarning, one_line

    assert one_line("a  b.wav:\n  its sound\r\nends") == "a  b.wav: its sound ends"
    cli._shown_warnings.discard("my  speech.wav: its sound ends at 1.00 s")
    cli._show_warning("my  speech.wav: its sound\n ends at 1.00 s", InputWarning, "x.py", 1)
    assert "hyperlips: warning: my  speech.wav: its sound ends at 1.00 s\n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli._Parser(prog="hyperlips").error("unrecognized arguments: my  clip.mp4")
    assert "unrecognized arguments: my  clip.mp4 (see:" in capsys.readouterr().err
    del argparse


def test_missing_audio(tmp_path, ckpt, face_video):
    out = tmp_path / "out.mp4"
    r = run_cli("sync", face_video, tmp_path / "nope.wav", "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, "nope.wav")


def test_garbage_video(tmp_path, ckpt):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(50_000))
    out = tmp_path / "out.mp4"
    r = run_cli("sync", bad, write_wav(tmp_path / "a.wav", 1.0), "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, "bad.mp4")


def test_video_argument_without_video_stream(tmp_path, ckpt):
    wav = write_wav(tmp_path / "a.wav", 1.0)
    out = tmp_path / "out.mp4"
    r = run_cli("sync", wav, wav, "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, "video")


def test_audio_argument_without_audio_stream(tmp_path, ckpt, face_video, more_data):
    silent = more_data / "edtalk" / "mouth_source.mp4"  # a video file with no audio track
    out = tmp_path / "out.mp4"
    r = run_cli("sync", face_video, silent, "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, "audio")


def test_zero_length_audio(tmp_path, ckpt, face_video):
    import soundfile as sf

    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    out = tmp_path / "out.mp4"
    r = run_cli("sync", face_video, empty, "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, "empty.wav")


def test_corrupt_checkpoint(tmp_path, ckpt, face_video):
    broken = tmp_path / "broken.pth"
    data = ckpt.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out.mp4"
    r = run_cli("sync", face_video, write_wav(tmp_path / "a.wav", 1.0), "-o", out, "--checkpoint", broken, "--quiet")
    assert_clean_failure(r, out, "broken.pth")


def test_checkpoint_for_another_network(tmp_path, face_video):
    hr = random_hr_checkpoint(tmp_path / "hr128.pth", 128)
    out = tmp_path / "out.mp4"
    r = run_cli("sync", face_video, write_wav(tmp_path / "a.wav", 1.0), "-o", out, "--checkpoint", hr, "--quiet")
    assert_clean_failure(r, out, "hr128.pth")


def test_output_equal_to_input(tmp_path, ckpt, face_video):
    video = tmp_path / "v.mp4"
    shutil.copy(face_video, video)
    before = video.read_bytes()
    r = run_cli("sync", video, write_wav(tmp_path / "a.wav", 1.0), "-o", video, "--checkpoint", ckpt, "--quiet")
    assert r.returncode == 2 and "same file" in r.stderr and "Traceback" not in r.stderr
    assert video.read_bytes() == before  # the input is untouched


def test_an_output_folder_that_cannot_be_made_is_a_user_error(tmp_path, ckpt, face_video):
    """Called as a library, an output folder under a file (or where the system makes none) escaped as a bare
    NotADirectoryError / FileNotFoundError, after the faces were searched: a UserError, before any work where it
    can be told (the nearest folder there is)."""
    import sys

    from hyperlips import LipSync, UserError

    wav = write_wav(tmp_path / "a.wav", 0.5)
    note = tmp_path / "notes.txt"
    note.write_text("x")
    ls = LipSync(ckpt, progress=False, phones=False)
    with pytest.raises(UserError, match=f"the output folder {note / 'sub'} cannot be made: {note} is not a folder"):
        ls.sync(face_video, wav, note / "sub" / "out.mp4")
    with pytest.raises(UserError, match="cannot write the output .*e.mp4: File name too long"):  # (a traceback)
        ls.sync(face_video, wav, tmp_path / ("e" * 252 + ".mp4"))  # 256 bytes: more than a name may hold
    if sys.platform.startswith("linux"):  # /proc takes no new folders (checked only when made)
        with pytest.raises(UserError, match="the output folder /proc/hyperlips-test cannot be made: No such file"):
            ls.sync(face_video, wav, "/proc/hyperlips-test/out.mp4")


def test_no_face_anywhere(tmp_path, ckpt):
    import cv2

    img = tmp_path / "wall.png"
    cv2.imwrite(str(img), np.full((240, 320, 3), 128, np.uint8))
    out = tmp_path / "out.mp4"
    r = run_cli("sync", img, write_wav(tmp_path / "a.wav", 0.5), "-o", out, "--checkpoint", ckpt, "--quiet")
    assert_clean_failure(r, out, "face")
    assert "not too small in the picture" in r.stderr  # (a small face in a wide shot: crop round it)


def test_no_checkpoint_given_and_none_shipped(tmp_path, face_video, monkeypatch):
    monkeypatch.setenv("HYPERLIPS_NO_SHIPPED", "1")  # run_cli's interpreter inherits it
    out = tmp_path / "out.mp4"
    r = run_cli("sync", face_video, write_wav(tmp_path / "a.wav", 0.5), "-o", out, "--quiet")
    assert_clean_failure(r, out, "--checkpoint")


def test_size_without_hr_checkpoint(tmp_path, ckpt, face_video):
    out = tmp_path / "out.mp4"
    r = run_cli("sync", face_video, write_wav(tmp_path / "a.wav", 0.5), "-o", out, "--checkpoint", ckpt, "--size", "256", "--quiet")
    assert_clean_failure(r, out, "--hr-checkpoint")
    # with the starter (its mouth warped) the first refusal said "give --mouth render", which the second refused
    r = run_cli("sync", face_video, write_wav(tmp_path / "a.wav", 0.5), "-o", out, "--size", "256", "--quiet")
    assert_clean_failure(r, out, "--size 256 needs an HR decoder checkpoint (--hr-checkpoint; none is shipped")


def test_crash_midway_leaves_no_partial_output(tmp_path, ckpt, face_video, monkeypatch):
    """A failure after some frames were encoded removes the temporary file and writes nothing at the output name."""
    from hyperlips.pipeline import LipSync

    ls = LipSync(ckpt, batch_size=4, progress=False)
    calls = {"n": 0}
    real_forward = ls.base.forward

    def failing_forward(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real_forward(*a, **k)

    monkeypatch.setattr(ls.base, "forward", failing_forward)
    out = tmp_path / "renders" / "day 1" / "out.mp4"  # into folders made for it: they go too (an editor's project
    existing = tmp_path / "kept"  # tree collected empty folders from runs stopped)
    existing.mkdir()
    for target in (out, existing / "out.mp4"):
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="simulated crash"):
            ls.sync(face_video, write_wav(tmp_path / "a.wav", 1.0), target)
        assert calls["n"] == 3
        assert not target.exists()
    assert [p.name for p in tmp_path.rglob("*") if p.suffix == ".mp4"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "kept"]  # a folder that was there stays


def test_the_command_ends_without_the_interpreter_teardown_but_flushes_and_runs_the_exit_handlers(tmp_path):
    """``hyperlips`` (``cli.run``) ends the process at once after the command: its output is all there (unflushed
    text on both streams too), the exit handlers ran (one of them a temporary folder's finalizer), its exit code is
    the command's, and the teardown that unloads torch and MediaPipe (objects' ``__del__`` at shutdown) did not run."""
    import os
    import subprocess
    import sys

    code = (
        "import atexit, pathlib, sys, tempfile\n"
        "class Late:\n"
        "    def __del__(self): print('TEARDOWN', flush=True)\n"
        "keep = Late()\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "tmp = tempfile.TemporaryDirectory(dir=out / 'temp')\n"
        "atexit.register(lambda: (out / 'handler').write_text('ran'))\n"
        "sys.stdout.write('UNFLUSHED OUT')\n"
        "sys.stderr.write('UNFLUSHED ERR')\n"
        "sys.argv = ['hyperlips', 'sync', ARG]\n"
        "from hyperlips.cli import run\n"
        "run()\n"
    )
    for arg, rc in (("--help", 0), ("--bogus", 2)):
        (tmp_path / "temp").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the streams buffered, as usual
        r = subprocess.run([sys.executable, "-c", code.replace("ARG", repr(arg)), str(tmp_path)], capture_output=True,
                           text=True, timeout=120, env=env)
        assert r.returncode == rc, r.stderr
        assert "UNFLUSHED OUT" in r.stdout and "UNFLUSHED ERR" in r.stderr
        assert ("--detect-every-frame" in r.stdout) if rc == 0 else ("hyperlips: error:" in r.stderr)
        assert "TEARDOWN" not in r.stdout
        assert (tmp_path / "handler").read_text() == "ran" and list((tmp_path / "temp").iterdir()) == []
        (tmp_path / "handler").unlink()


def _closing(*fds):
    import os

    def close():
        for fd in fds:
            os.close(fd)
    return close


def test_a_command_run_with_its_output_or_error_stream_closed_does_its_job(tmp_path):
    """Run as a service without standard output or error (``>&-``), Python has them as None: the error line, and
    after a whole ``demo`` its closing "wrote ..." line, raised AttributeError and ended in exit 1 (a bug's code)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "hyperlips.cli"]
    res = subprocess.run(cmd + ["sync", str(tmp_path / "nope.mp4"), str(tmp_path / "nope.wav"), "-o",
                                str(tmp_path / "o.mp4")], stdout=subprocess.PIPE, preexec_fn=_closing(2), timeout=120)
    assert res.returncode == 2, res.stdout  # the user's mistake, said to no one, not a crash
    out = tmp_path / "demo.mp4"
    res = subprocess.run(cmd + ["demo", "-o", str(out)], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         preexec_fn=_closing(1), timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert out.stat().st_size > 0


def test_without_torch_installed_a_command_says_what_to_install(tmp_path, face_video):
    """Installed from the wheel alone (torch is not a declared dependency: its build depends on the machine),
    ``sync`` and ``demo`` ended in a ModuleNotFoundError traceback and exit 1."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"  # import torch now fails as on a machine without it
            "from hyperlips.cli import main\n"
            f"sys.exit(main(['sync', {str(face_video)!r}, {str(face_video)!r}, '-o', {str(tmp_path / 'o.mp4')!r}]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        res.stderr.strip()] and "this command needs PyTorch, which is not installed: pip install torch" in res.stderr


def test_serve_without_torch_says_what_to_install_before_it_serves(tmp_path):
    """`serve` never imports torch itself: without it, it started, took jobs, and every job died with "the job's
    worker process stopped unexpectedly" (a ModuleNotFoundError traceback in its log)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from hyperlips.cli import main\n"
            f"sys.exit(main(['serve', '--port', '0', '--data', {str(tmp_path / 'data')!r}]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "this command needs PyTorch, which is not installed: pip install torch" in res.stderr
    assert "http://" not in res.stdout + res.stderr  # it never served


@pytest.mark.parametrize("argv, words", [((), "no command given"), (("train",), "train needs a stage")])
def test_a_missing_command_is_an_error_line_and_leaves_stdout_empty(argv, words):
    """`hyperlips` (or `hyperlips train`) alone printed its help on stdout, exit 2, and no error line: a script
    reading stdout as the result got the help."""
    r = run_cli(*argv)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == f"hyperlips: error: {words}" + (
        " (the commands are listed above)" if not argv else " (sync, base, hr, reader or judge, listed above)")
    assert "usage: hyperlips" in r.stderr


def test_sync_takes_threads_as_finetune_does(tmp_path, ckpt, face_video):
    """Two syncs at once on a 2-core machine could not be given a core each (`--threads` was finetune's, bench's
    and serve's only; docs/serving.md said serve's was "as for hyperlips sync")."""
    import subprocess
    import sys

    code = ("import sys, torch; from hyperlips.cli import main; rc = main(sys.argv[1:]); "
            "print('threads', torch.get_num_threads()); sys.exit(rc)")
    out = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-c", code, "sync", str(face_video), str(write_wav(tmp_path / "a.wav", 0.3)),
                        "-o", str(out), "--checkpoint", str(ckpt), "--quiet", "--threads", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "threads 1" in r.stdout, r.stderr[-2000:]
    r = run_cli("sync", face_video, tmp_path / "a.wav", "-o", out, "--checkpoint", ckpt, "--threads", "-1")
    assert r.returncode == 2 and "--threads" in r.stderr


@pytest.mark.parametrize("stream", ["stderr", "stdout"])
def test_a_log_on_a_full_disk_does_not_fail_the_job(tmp_path, ckpt, face_video, stream):
    """stderr on a full disk (`2>>/var/log/dub.log`, the log's volume full) ended every sync at its first progress
    line, exit 1 and no video; stdout there turned a finished sync into exit 2, its video written."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to stand for a full disk")
    out = tmp_path / "out.mp4"
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "hyperlips.cli", "sync", str(face_video),
                            str(write_wav(tmp_path / "a.wav", 0.3)), "-o", str(out), "--checkpoint", str(ckpt)],
                           **{stream: full}, stdin=subprocess.DEVNULL, timeout=600,
                           **({"stdout": subprocess.PIPE} if stream == "stderr" else {"stderr": subprocess.PIPE}))
    assert r.returncode == 0 and out.stat().st_size > 0


def test_ctrl_c_while_the_command_starts_is_an_interruption(tmp_path, face_video):
    """Ctrl-C in the first moments (while the command's modules load, before its own handling of it is set up)
    ended in a KeyboardInterrupt traceback and exit 1, a bug's code, or death by the signal."""
    import signal
    import subprocess
    import sys

    script = ("import sys, time, hyperlips.cli as c; real = c.main\n"
              "def slow(argv=None):\n"  # a start that takes a while, as loading torch and OpenCV does
              "    print('ready', flush=True); time.sleep(30)\n    return real(argv)\n"
              "c.main = slow; c.run()")
    p = subprocess.Popen([sys.executable, "-c", script, "sync", str(face_video), "a.wav", "-o", str(tmp_path / "o.mp4")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (a test worker may
    # ignore Ctrl-C, and a command started with it ignored keeps it so)
    assert p.stdout.readline().strip() == "ready"  # (a busy machine takes its time to get there)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130 and "Traceback" not in err and "interrupted" in err, err


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("OpenCV(4.14.0) error: (-4:Insufficient memory) Failed "
                                                                "to allocate 2137008 bytes"),
                                   RuntimeError("can't start new thread"), OSError(12, "Cannot allocate memory"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB "
                                                "total capacity)"),  # (torch.cuda.OutOfMemoryError's words)
                                   RuntimeError("MPS backend out of memory (MPS allocated: 8.1 GB)")])
def test_running_out_of_memory_is_said_as_such(capsys, error):
    """Under a memory limit a good clip was said to be damaged (FFmpeg's allocation failures counted as bad
    packets), or the run ended in a traceback with the exit code of a bug."""
    import argparse

    import av

    from hyperlips import cli

    def job(args):
        raise error

    assert cli._dispatch(argparse.Namespace(func=job)) == 3
    said = capsys.readouterr().err
    gpu = "CUDA" in str(error) or "MPS" in str(error)  # the card's memory: closing programs here frees none of it
    assert ("out of GPU memory:" in said and "--device cpu" in said) if gpu else "out of memory: this machine" in said
    with pytest.raises(ValueError):  # anything else is still a bug, with its traceback
        cli._dispatch(argparse.Namespace(func=lambda a: (_ for _ in ()).throw(ValueError("x"))))
    assert issubclass(av.error.MemoryError, MemoryError)  # (FFmpeg's: the reader lets it through as one)


@pytest.mark.parametrize("error", [
    ImportError("libxcb-xfixes-6de855b8.so.0.0.0: failed to map segment from shared object"),  # PyAV loaded late
    RuntimeError("could not create a primitive"),  # oneDNN setting up a convolution
    RuntimeError("[Errno 542398533] Generic error in an external library: 'avcodec_send_frame()'")])  # the encoder
def test_a_memory_limit_met_by_a_library_is_said_as_such(capsys, monkeypatch, error):
    """`ulimit -v` 1-2.5 GB (measured with `sync`): each of these ended in a traceback with the exit code of a bug.
    Under a tight limit they are out of memory, and the line names the limit and what to raise it to; without one,
    or under a large one, they are still bugs."""
    import argparse

    from hyperlips import cli, errors

    def job(args):
        raise error

    monkeypatch.setattr(errors, "memory_limit", lambda: 2_048_000 * 1024)
    assert cli._dispatch(argparse.Namespace(func=job)) == 3
    said = capsys.readouterr().err
    assert "out of memory: this process may use at most 2.1 GB of address space (ulimit -v)" in said, said
    assert "ulimit -v 3000000" in said and "Traceback" not in said, said
    for limit in (None, 64 << 30):  # no limit, or a batch system's large one: still a bug, with its traceback
        monkeypatch.setattr(errors, "memory_limit", lambda: limit)
        with pytest.raises(type(error)):
            cli._dispatch(argparse.Namespace(func=job))
    # running out under a large limit: the limit named, no floor to raise it to (it was told to go up to 3.1 GB)
    assert cli._dispatch(argparse.Namespace(func=lambda a: (_ for _ in ()).throw(MemoryError()))) == 3
    said = capsys.readouterr().err
    assert "at most 68.7 GB of address space (ulimit -v): raise the limit, or use a shorter" in said, said


def test_a_memory_limit_too_small_is_said_up_front(tmp_path):
    """Below 1.3 GB of address space MediaPipe's threads ended `sync` without a word (abort, exit 134): a limit under
    what the commands need is said as the command starts; a large enough one, or none, is not."""
    import resource
    import subprocess
    import sys

    def said(limit):
        code = ("import resource, sys\n"
                "limit = int(sys.argv[1])\n"
                "if limit:\n"
                "    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))\n"
                "from hyperlips.cli import main\n"
                "sys.exit(main(['sync', sys.argv[2], sys.argv[2], '-o', sys.argv[3]]))\n")
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        if hard != resource.RLIM_INFINITY and limit > hard:
            pytest.skip("this process's own memory limit is lower")
        run = subprocess.run([sys.executable, "-c", code, str(limit), str(tmp_path / "missing.mp4"),
                              str(tmp_path / "o.mp4")], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "missing.mp4" in run.stderr, run.stderr  # the command itself went on
        return run.stderr

    small = said(2 << 30)
    assert "warning: this process may use at most 2.1 GB of address space (ulimit -v); hyperlips needs about " \
        "3.1 GB" in small, small
    assert "address space" not in said(8 << 30) and "address space" not in said(0)


def test_ffmpeg_out_of_memory_is_not_a_damaged_file(real_data, monkeypatch):
    """FFmpeg failing to allocate while opening a file, or while decoding its sound, said "unreadable or corrupt media
    file" (exit 2: the input blamed) or put silence in place of "damaged" packets: it is the machine's memory."""
    import av

    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import probe

    real_open = av.open

    def opens_without_memory(*args, **kwargs):
        raise av.error.MemoryError(12, "Cannot allocate memory")

    monkeypatch.setattr(av, "open", opens_without_memory)
    with pytest.raises(MemoryError):
        probe(real_data / "retalking" / "face2.mp4")
    with pytest.raises(MemoryError):
        load_audio(real_data / "retalking" / "audio1.wav", 16000)
    monkeypatch.setattr(av, "open", real_open)

    real_decode = av.packet.Packet.decode
    count = {"n": 0}

    def decode(self):  # a decoder that runs out of memory after its first packets
        count["n"] += 1
        if count["n"] > 3:
            raise av.error.MemoryError(12, "Cannot allocate memory")
        return real_decode(self)

    monkeypatch.setattr(av.packet.Packet, "decode", decode)
    with pytest.raises(MemoryError):
        load_audio(real_data / "retalking" / "audio1.wav", 16000)


def test_a_serve_job_out_of_memory_says_so(tmp_path, monkeypatch):
    """A job whose network ran out of memory (torch's allocator: a RuntimeError) ended in the worker's traceback, and
    the job read "the job's worker process stopped unexpectedly": it says it ran out of memory."""
    import json

    from hyperlips.serve import worker

    (tmp_path / "job.json").write_text(json.dumps({"kind": "sync", "names": {}}))

    def starved(job, folder):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 2147483648 bytes")

    monkeypatch.setattr(worker, "run_sync", starved)
    assert worker.main([str(tmp_path)]) == 1
    assert (tmp_path / "error.txt").read_text() == "the job ran out of memory: try a shorter or smaller video\n"
    monkeypatch.setattr(worker, "run_sync", lambda job, folder: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError):  # anything else is still a bug, with its traceback
        worker.main([str(tmp_path)])


def test_a_file_named_with_a_leading_dash_is_said_to_be_read_as_an_option(tmp_path):
    """`sync -take1.mp4 -vo.wav -o out.mp4` said "the following arguments are required: video, audio", both given."""
    (tmp_path / "-take1.mp4").write_bytes(b"x")
    (tmp_path / "-vo.wav").write_bytes(b"x")
    r = run_cli("sync", "-take1.mp4", "-vo.wav", "-o", "out.mp4", cwd=tmp_path)
    assert r.returncode == 2 and "(-take1.mp4 is a file whose name begins with '-', read as an option: write it as " \
        "./-take1.mp4)" in r.stderr, r.stderr


def test_a_command_run_from_a_folder_that_no_longer_exists_says_so(tmp_path):
    """The terminal's folder deleted (or renamed on a share): exit 2 with nothing on the screen (torch could not be
    loaded, and its library ended the process silently)."""
    import subprocess
    import sys

    gone = tmp_path / "gone"
    gone.mkdir()
    code = ("import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); from hyperlips.cli import main; "
            "sys.exit(main(['sync', '/x.mp4', '/y.wav', '-o', '/z.mp4']))")
    r = subprocess.run([sys.executable, "-c", code, str(gone)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "the current folder no longer exists (deleted or renamed)" in r.stderr, r.stderr


def test_a_name_longer_than_the_file_system_takes_is_one_line(tmp_path):
    """A path holding a name of 300 bytes (generated, pasted) ended in a traceback, exit 1, in preprocess's DST,
    finetune --work and sync --checkpoint, where pathlib's checks raise rather than say it does not exist."""
    long = tmp_path / ("r" * 300)
    r = run_cli("preprocess", tmp_path, long)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "File name too long" in r.stderr and "choose a shorter one" in r.stderr, r.stderr


def test_a_name_not_found_is_shown_so_it_cannot_be_mistaken(tmp_path):
    """A path holding a line break (pasted from a wrapped mail) was said as "video not found: take 1.mp4" beside an
    existing take 1.mp4; a trailing space was dropped ("clip.mp4" not found, beside clip.mp4); a byte that is no UTF-8
    was shown as \\udce9. Such names are quoted with their odd characters escaped."""
    import os

    from hyperlips.errors import MediaError, require_file

    for name, shown in (("take\n1.mp4", "'take\\n1.mp4'"), ("clip.mp4 ", "'clip.mp4 '"),
                        (os.fsdecode(b"caf\xe9.wav"), "'caf\\xe9.wav'"), ("plain name.mp4", "plain name.mp4")):
        with pytest.raises(MediaError) as e:
            require_file(name, "video")
        assert str(e.value) == f"video not found: {shown}", str(e.value)


def test_a_name_not_found_names_its_twin_in_another_unicode_form_or_case(tmp_path):
    """A Mac's decomposed "José.mp4" copied here and the name typed composed: "video not found: José.mp4" beside a
    file that shows as José.mp4, with no hint. A name that differs only in letter case gets a "did you mean"."""
    import unicodedata

    from hyperlips.errors import MediaError, require_file

    stored = unicodedata.normalize("NFD", "José.mp4")
    (tmp_path / stored).write_bytes(b"x")
    with pytest.raises(MediaError) as e:
        require_file(tmp_path / unicodedata.normalize("NFC", "José.mp4"), "video")
    assert "another Unicode form" in str(e.value) and stored in str(e.value), str(e.value)
    (tmp_path / "Take1.MP4").write_bytes(b"x")
    with pytest.raises(MediaError) as e:
        require_file(tmp_path / "take1.mp4", "video")
    assert "did you mean" in str(e.value) and "Take1.MP4" in str(e.value), str(e.value)
    with pytest.raises(MediaError) as e:  # nothing near: the message as before
        require_file(tmp_path / "other.mp4", "video")
    assert str(e.value) == f"video not found: {tmp_path / 'other.mp4'}", str(e.value)
    # the same where other commands look for a named file or folder: eval's footage, preprocess's videos, phonemes
    from hyperlips.data.preprocess import preprocess
    from hyperlips.errors import UserError
    from hyperlips.eval.tail import footage_videos
    from hyperlips.media.phone_marks import read_marks

    (tmp_path / "Takes").mkdir()
    (tmp_path / "Words.txt").write_text("0.0 B\n")
    from hyperlips.data.datasets import Manifest
    from hyperlips.eval.protocols import run_protocol

    for call in (lambda: footage_videos(tmp_path / "takes"), lambda: preprocess(tmp_path / "takes", tmp_path / "o"),
                 lambda: read_marks(tmp_path / "words.txt"), lambda: Manifest.load(tmp_path / "takes"),
                 lambda: run_protocol(tmp_path / "takes", tmp_path / "o", "self", untrained=True)):
        with pytest.raises(UserError, match="did you mean"):
            call()


def test_a_name_stdout_cannot_spell_is_escaped_not_a_crash(monkeypatch):
    """stdout in an encoding without a letter of the output's name (PYTHONIOENCODING=ascii, as some CI systems and
    IDEs set; a locale of another script): a finished sync, its video written, ended in a traceback and exit 1 at
    its last line "wrote sortie_ü.mp4", and serve did not start. The letter is escaped, as stderr escapes it."""
    import io
    import sys

    from hyperlips import cli

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    with cli._messages_stdout():
        print("wrote sortie_\u00fc.mp4 (2 frames)")
        print("next line")
    assert raw.getvalue() == b"wrote sortie_\\xfc.mp4 (2 frames)\nnext line\n"


def test_one_blas_thread_under_a_memory_limit():
    """`ulimit -v` (a batch system's memory limit): OpenBLAS, loaded with scipy by a stage thread, retried its
    threads' buffers for ever holding Python's lock; the run hung and SIGTERM went unheard (2.5 GB: three runs of
    three; with one BLAS thread it ran). The command asks for one thread there, and leaves the setting alone
    elsewhere or where it is given."""
    import os
    import subprocess
    import sys

    code = ("import os, resource, sys\n"
            "if sys.argv[1] == 'limit':\n"
            "    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, resource.RLIM_INFINITY))\n"
            "from hyperlips.cli import _one_blas_thread_under_a_memory_limit\n"
            "_one_blas_thread_under_a_memory_limit()\n"
            "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    got = [subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env,
                          timeout=60).stdout.strip() for mode in ("limit", "none")]
    assert got == ["1", "None"], got
    given = subprocess.run([sys.executable, "-c", code, "limit"], capture_output=True, text=True, timeout=60,
                           env={**env, "OPENBLAS_NUM_THREADS": "4"}).stdout.strip()
    assert given == "4"
