"""Stopping a training run from outside: Ctrl-C, SIGTERM or SIGHUP (a closed terminal) let the current step finish
and leave a checkpoint to resume from; a second signal stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from ..errors import Terminated


# Under a launcher of several processes one stop request can reach a process twice: sent to every process (a kill of
# the process group, a job scheduler's SIGTERM to every task) and passed on by the launcher (torchrun passes on the
# signals it gets). The same signal again within this many seconds is that one request, not a second one.
REPEAT_SECONDS = 2.0


@contextlib.contextmanager
def deferred_interrupt(trainer):
    """While the steps run, Ctrl-C, SIGTERM or SIGHUP (a closed terminal) asks the loop to stop after the current step
    (the caller checks the list it gets, saves a checkpoint, then raises :func:`stopped`'s exception, so the exit
    code is still the signal's); a second one stops at once. A signal ignored when the loop starts (``nohup``) stays
    ignored. Only in a process's main thread (signal handlers belong there); data-loader workers, which inherit the
    handler, leave it to that process. Under torchrun each process has its own request (the loop makes them agree on
    the step: ``Trainer._agreed_stop``), and the same signal repeated within :data:`REPEAT_SECONDS` is not a second
    one (torchrun passes on the signals it gets)."""
    interrupted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    owner = os.getpid()
    first = [0.0]  # when the request came

    def on_signal(signum, frame):
        if os.getpid() != owner:  # a forked data-loader worker: the training process stops it
            return
        if interrupted:
            if (trainer.dist.enabled and signum == interrupted[0]
                    and time.monotonic() - first[0] < REPEAT_SECONDS):  # the same request, passed on
                return
            raise stopped(signum)
        interrupted.append(signum)
        first[0] = time.monotonic()
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        again = f"again after {REPEAT_SECONDS:g} s" if trainer.dist.enabled else "again"
        trainer.say(f"{what}: stopping after this step with a checkpoint to resume from ({again}: stop at once)")

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
