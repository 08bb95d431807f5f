"""A chain of stages that run at the same time: each in its own thread, joined by bounded queues.

A stage is a function from an iterator of items to an iterator of items (usually a generator). ``run_chain``
starts the source and every stage but the last consumer in threads and gives the last stage's items to the caller,
in order. The libraries doing the heavy work (FFmpeg through PyAV, OpenCV, MediaPipe, torch) release the GIL, so
the stages really overlap on several cores. Queues are bounded: no stage runs more than ``maxsize`` items ahead of
the next, so memory does not grow with the input's length.

Each stage's busy time is measured: the time spent producing its items, less the time spent waiting for its
input. An error in any stage stops the chain and is raised in the caller's thread; so is Ctrl-C, which reaches
the caller's thread (the main one) and stops the others. ``overlap=False`` runs the same chain in the caller's
thread, one item at a time (same items, same order: for debugging and for tests that compare the two).
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

_END = object()  # end of a stream
_WAKE = object()  # put in a queue when the chain stops: a thread waiting on it looks at the stop at once
_POLL = 0.1  # seconds between checks for a stop while waiting on a queue

Stage = Callable[[Iterator], Iterator]


@dataclass
class Step:
    """One stage of a chain: ``name`` (its timing key), ``fn`` (items in -> items out) and ``maxsize`` (the queue
    of its output: how far it may run ahead of the next stage)."""

    name: str
    fn: Stage
    maxsize: int = 8


class Timings:
    """Busy seconds per stage name, added to from any thread."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.totals[name] += seconds


class _Stopped(Exception):
    """The chain was stopped (by an error elsewhere or by the consumer)."""


class _Chain:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self.stop.set()

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=_POLL)
            except queue.Full:
                continue
            if self.stop.is_set():  # stopped while it waited: no more work for it
                raise _Stopped
            return

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                item = q.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is not _WAKE:
                return item

    def wake(self, queues: list) -> None:
        """After ``stop``: free the threads waiting on ``queues`` now rather than at their next poll (a reference
        search closing its decoding thread waited up to 0.1 s for it, half a second into every ``sync``)."""
        for q in queues:
            drained = 0
            try:
                while True:  # room for a thread waiting to put (only a full queue has one)
                    q.get_nowait()
                    drained += 1
            except queue.Empty:
                pass
            if not drained:  # an item for a thread waiting to get (only an empty queue has one)
                try:
                    q.put_nowait(_WAKE)
                except queue.Full:
                    pass


class _Waited:
    """An input iterator that counts the seconds spent waiting for it (upstream time, not this stage's)."""

    def __init__(self, it: Iterator) -> None:
        self.it, self.waited = it, 0.0

    def __iter__(self) -> "_Waited":
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.waited += time.perf_counter() - t0


def _timed(name: str, fn: Stage, source: Iterator, timings: Timings) -> Iterator:
    """``fn(source)``, its busy time (time inside it, less the time its input kept it waiting) added to ``name``."""
    inp = _Waited(source)
    out = iter(fn(inp))
    while True:
        t0, w0 = time.perf_counter(), inp.waited
        try:
            item = next(out)
        except StopIteration:
            timings.add(name, time.perf_counter() - t0 - (inp.waited - w0))
            return
        timings.add(name, time.perf_counter() - t0 - (inp.waited - w0))
        yield item


def run_chain(source: Step, steps: list[Step], timings: Timings, overlap: bool = True,
              on_stop: Optional[Callable[[], None]] = None) -> Iterator:
    """The items of ``source.fn(empty)`` passed through ``steps`` in turn; a generator for the caller to consume.

    ``source.fn`` takes an (empty) iterator too, so every stage has the same form. Close the generator (or let it
    end) to stop the threads; they are joined before it returns. ``on_stop`` is called first, when the chain stops
    for any reason (an exception in the consumer's thread, Ctrl-C, an early close): it releases what a stage may be
    waiting on outside the chain (a live stream's speech), which would otherwise hold the join for its 30 s.
    """
    if not overlap:
        it: Iterator = _timed(source.name, source.fn, iter(()), timings)
        for s in steps:
            it = _timed(s.name, s.fn, it, timings)
        yield from it
        return

    chain = _Chain()
    queues = [queue.Queue(maxsize=max(1, s.maxsize)) for s in [source, *steps]]

    def drain(q: queue.Queue) -> Iterator:
        while True:
            item = chain.get(q)
            if item is _END:
                return
            yield item

    def work(step: Step, inp: Iterator, out: queue.Queue) -> None:
        try:
            for item in _timed(step.name, step.fn, inp, timings):
                chain.put(out, item)
            chain.put(out, _END)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 (handed to the consumer's thread)
            chain.fail(e)

    # each thread in a copy of the caller's context: what it warns of is the caller's call's (errors.collect_warnings)
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work, source, iter(()), queues[0]),
                                name=f"hyperlips-{source.name}", daemon=True)]
    for i, s in enumerate(steps):
        threads.append(threading.Thread(target=contextvars.copy_context().run,
                                        args=(work, s, drain(queues[i]), queues[i + 1]),
                                        name=f"hyperlips-{s.name}", daemon=True))
    for t in threads:
        t.start()
    try:
        last = queues[-1]
        while True:
            try:
                item = chain.get(last)
            except _Stopped:
                break
            if item is _END:
                break
            yield item
        if chain.error is not None:
            raise chain.error
    finally:
        chain.stop.set()
        if on_stop is not None:
            on_stop()
        chain.wake(queues)
        for t in threads:
            t.join(timeout=30)


class Gate:
    """At most ``limit`` items between a stage and the chain's consumer: ``enter(n)`` waits until ``n`` more fit (call
    it from one thread, in the items' order, so a later item never takes the room an earlier one waits for),
    ``done(n)`` frees room as the consumer finishes items, ``open()`` lets everything through from then on (call it
    when the consumer stops early, so a stage waiting here can stop too). ``limit`` None: never waits. A stage far
    ahead of a slow consumer otherwise leaves it a backlog to finish alone at the end, one core idle."""

    def __init__(self, limit: int | None = None):
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._room = limit
        self._open = limit is None
        self._cond = threading.Condition()

    def enter(self, n: int = 1) -> None:
        if self._open:
            return
        if n > self.limit:
            raise ValueError(f"{n} items never fit in a gate of {self.limit}")
        with self._cond:
            self._cond.wait_for(lambda: self._open or self._room >= n)
            if not self._open:
                self._room -= n

    def done(self, n: int = 1) -> None:
        if self._open:
            return
        with self._cond:
            self._room += n
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()


def run_to_end(it: Iterable, consume: Callable[[object], None]) -> None:
    """Feed every item of ``it`` to ``consume`` (in the caller's thread), closing ``it`` whatever happens."""
    try:
        for item in it:
            consume(item)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def mapped_ahead(fn: Callable, items: Iterable, key: Callable, workers: int = 1, ahead: int | None = None,
                 name: str = "hyperlips-ahead", initializer: Callable[[], None] | None = None) -> Iterator[tuple]:
    """``(item, fn(item))`` for each item, in order; where ``key(item)`` is None, ``(item, None)`` and no call.

    Consecutive items whose keys are the same object share the first one's call (a frame shown twice is worked on
    once). With ``workers`` > 1, ``fn`` runs in that many threads (it must be safe to call from them at once; named
    ``name``, each first calling ``initializer``) on up to ``ahead`` items (default ``2 * workers``) ahead of the one
    given out, so calls that wait on something else overlap; an item already done is given out at once. Items are
    taken from ``items`` one at a time, in order, in the caller's thread. Closing the generator waits for the calls
    running then (the rest are dropped). With 1, everything happens in the caller's thread, one item at a time."""
    ahead = 2 * workers if ahead is None else ahead
    prev: tuple = (None, None)  # the last key called and its result (or its future)
    if workers <= 1:
        for item in items:
            k = key(item)
            if k is not None and k is not prev[0]:
                prev = (k, fn(item))
            yield item, (None if k is None else prev[1])
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=initializer)
    pending: deque = deque()  # (item, future or None), oldest first
    try:
        for item in items:
            k = key(item)
            if k is not None and k is not prev[0]:
                prev = (k, pool.submit(contextvars.copy_context().run, fn, item))
            pending.append((item, None if k is None else prev[1]))
            while pending and (len(pending) > ahead or pending[0][1] is None or pending[0][1].done()):
                head, fut = pending.popleft()
                yield head, (None if fut is None else fut.result())
        while pending:
            head, fut = pending.popleft()
            yield head, (None if fut is None else fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
