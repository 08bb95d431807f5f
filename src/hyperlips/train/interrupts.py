"""Stopping a training run from outside: Ctrl-C, SIGTERM or SIGHUP (a closed terminal) let the current step finish
and leave a checkpoint to resume from; a second signal stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from ..errors import Terminated


@contextlib.contextmanager
def deferred_interrupt(trainer):
    """While the steps run, Ctrl-C, SIGTERM or SIGHUP (a closed terminal) asks the loop to stop after the current step
    (the caller checks the list it gets, saves a checkpoint, then raises :func:`stopped`'s exception, so the exit
    code is still the signal's); a second one stops at once. A signal ignored when the loop starts (``nohup``) stays
    ignored. Only in a single process's main thread (signal handlers belong there; under torchrun every process
    would have to agree on the step); data-loader workers, which inherit the handler, leave it to that process."""
    interrupted: list[int] = []
    if trainer.dist.enabled or threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    owner = os.getpid()

    def on_signal(signum, frame):
        if os.getpid() != owner:  # a forked data-loader worker: the training process stops it
            return
        if interrupted:
            raise stopped(signum)
        interrupted.append(signum)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        trainer.say(f"{what}: stopping after this step with a checkpoint to resume from (again: stop at once)")

    olds = {}
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) != signal.SIG_IGN:  # (SIGINT too: a background job's, ignored
            olds[sig] = signal.signal(sig, on_signal)  # so that it outlives its script's Ctrl-C, was armed here)
    try:
        yield interrupted
    finally:
        for sig, old in olds.items():
            signal.signal(sig, old)


def stopped(signum: int) -> BaseException:
    """What a stop by ``signum`` raises: KeyboardInterrupt for Ctrl-C, :class:`~..errors.Terminated` otherwise."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
