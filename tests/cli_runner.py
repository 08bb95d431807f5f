"""Runs ``hyperlips`` command lines quickly: one warm interpreter forks a fresh process per command.

Started by the tests as ``python cli_runner.py``; reads one JSON request per line on stdin and answers one JSON line
on stdout. Importing torch, MediaPipe, OpenCV and PyAV takes seconds; the runner imports them once and never runs
them, then each request forks a child that runs the real entry point (``hyperlips.cli.run`` with ``sys.argv`` set)
with its own stdin, stdout and stderr (files, so native libraries' output is caught too), which ends the process as
the command does, and is reported with its real exit status. A request may send a signal to the child once its
stderr shows some text (``signal``, ``signal_after``) and may cap the size of files it writes (``fsize``).

Request: {"argv": [...], "cwd": str, "env": {...}, "timeout": s, "signal": "SIGTERM", "signal_after": "lip-sync",
          "signal_delay": s, "fsize": bytes, "ignore": ["SIGHUP", ...] (ignored when the command starts)}
Answer:  {"rc": int, "stdout": str, "stderr": str, "seconds": float, "cpu_seconds": float, "signalled": bool,
          "signal_at": s from the start or null, "timed_out": bool}
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True  # a child with a file size cap must not leave truncated .pyc files behind


class _ChildExit(Exception):
    def __init__(self, code: int):
        self.code = code


def _warm_up() -> None:
    import av  # noqa: F401
    import cv2  # noqa: F401
    import mediapipe  # noqa: F401
    import numpy  # noqa: F401
    import scipy.signal  # noqa: F401
    import soundfile  # noqa: F401
    import torch  # noqa: F401
    import tqdm  # noqa: F401

    import hyperlips.cli  # noqa: F401
    import hyperlips.data.commands  # noqa: F401
    import hyperlips.data.preprocess  # noqa: F401
    import hyperlips.eval.commands  # noqa: F401
    import hyperlips.face.detect  # noqa: F401
    import hyperlips.face.landmarks  # noqa: F401
    import hyperlips.media.audio  # noqa: F401
    import hyperlips.models  # noqa: F401
    import hyperlips.pipeline  # noqa: F401
    import hyperlips.train.commands  # noqa: F401


def _child(req: dict, out_path: str, err_path: str) -> None:
    """In the forked child: set up the process like a fresh command, run it, exit with its code."""
    code = 1
    try:
        os.chdir(req["cwd"])
        for fd, path in ((1, out_path), (2, err_path)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        for name in req.get("ignore") or ():  # ignored from the start, as ``nohup`` leaves SIGHUP
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        os.environ.update(req.get("env") or {})
        if req.get("fsize"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the cap fail with EFBIG, like a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(req["fsize"]), int(req["fsize"])))
        sys.argv = ["hyperlips", *req["argv"]]
        from hyperlips.cli import run

        run()  # ends the process itself
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    raise _ChildExit(int(code or 0))


def _run(req: dict) -> dict:
    fd_o, out_path = tempfile.mkstemp(prefix="cli_out_")
    fd_e, err_path = tempfile.mkstemp(prefix="cli_err_")
    os.close(fd_o)
    os.close(fd_e)
    sys.stdout.flush()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(req, out_path, err_path)
    timeout = float(req.get("timeout", 300))
    sig = getattr(signal, req["signal"]) if req.get("signal") else None
    signalled, signal_at = False, None
    status = None
    cpu = 0.0
    while status is None:
        done, st, usage = os.wait4(pid, os.WNOHANG)
        if done:
            status, cpu = st, usage.ru_utime + usage.ru_stime
            break
        now = time.monotonic()
        if sig is not None and not signalled:
            with open(err_path, errors="replace") as f:
                seen = req.get("signal_after", "") in f.read()
            if seen:
                time.sleep(float(req.get("signal_delay", 0.3)))
                os.kill(pid, sig)
                signalled, signal_at = True, time.monotonic() - t0
        if now - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(status) if status is not None else -9
    with open(out_path, errors="replace") as f:
        out = f.read()
    with open(err_path, errors="replace") as f:
        err = f.read()
    os.unlink(out_path)
    os.unlink(err_path)
    return {"rc": rc, "stdout": out, "stderr": err, "seconds": time.monotonic() - t0, "cpu_seconds": cpu,
            "signalled": signalled, "signal_at": signal_at, "timed_out": status is None}


def serve() -> None:
    _warm_up()
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # nothing else may write into the answer channel
    os.close(null)
    channel.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        channel.write(json.dumps(_run(json.loads(line))) + "\n")


if __name__ == "__main__":
    try:
        serve()
    except _ChildExit as e:  # the forked child leaves through the normal interpreter exit
        sys.exit(e.code)
