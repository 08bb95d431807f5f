"""The one-pass flow of ``LipSync.sync``: frames stream through decode, faces, network and paste-back stages that
run at the same time (``stages.run_chain``), and the caller encodes them in order.

1. **reference** (:func:`find_reference`): the reference face (the unmasked half of every network input) must be
   known before the first frame is rendered. The default, ``best``, is the crop of the most confident detection
   among the first :data:`REFERENCE_SECONDS` of the followed face; the frames up to it are decoded and searched
   once here (their detections are kept, so they are not searched again).
2. **decode** (:func:`scheduled_frames`): the video is decoded once, in output order (forward, then backward or
   holding when the audio is longer).
3. **faces** (:class:`FaceStage`): detection on every new frame (a frame between two whose faces agree takes their
   mean box instead, :func:`sparse_detections`), and the face track computed as frames arrive
   (``face.track_online``; it goes on from the reference search's track): a frame waits only until no later frame
   can change its box (at most about half a second plus two frames).
4. **network** (:func:`network_stage`): frames grouped in batches of ``batch_size`` consecutive output frames, those
   with a face cropped (with ``input_blend``, each crop blended with its neighbours', :func:`blended_inputs`; a frame
   waits for the next one) and rendered (``render``, given by ``LipSync``), on a CPU two batches at a time where
   rendering keeps no state.
5. **paste**: the generated face steadied over time (blended with the faces of the frames before and after it,
   ``face.steady``; a frame waits for the next one's face), then blended back into its frame (in place when
   nothing else uses that frame).

Memory is flat in the video's length: the queues between stages are bounded, and per frame only its box is kept.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .errors import MediaError, UserError, refuse_unexpanded_home, require_file
from .face.cuts import is_flat
from .generator_io import BASE_SIZE, face_crop, reference_crop
from .schedule import runs
from .stages import Gate, Step, Timings, mapped_ahead, run_chain

OUTPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")
MUX_SAMPLE_RATE = 48000  # the output's audio rate
REFERENCE_SECONDS = 3.0  # the default reference is the best detection among the followed face's first seconds
REFERENCE_DECODE_AHEAD = 4  # frames decoded ahead of the detection during the reference search


@dataclass
class FrameJob:
    """One output frame on its way through the stages."""

    j: int  # output frame index (shown at j / fps)
    s: int  # timeline frame it shows
    image: np.ndarray  # (H, W, 3) uint8 BGR; becomes the output frame
    last_use: bool = True  # no later job shows this same array (so paste-back may write into it)
    box: object = None  # crop box of the followed face (None: the frame passes through unchanged)
    face: Optional[np.ndarray] = None  # the generated face (S, S, 3) uint8 BGR
    crop: Optional[np.ndarray] = None  # the network's input crop (128, 128, 3) float32 when blended over time
    # (:func:`blended_inputs`); None: the box's crop of ``image``
    own_face: bool = False  # ``face`` is the frame's own pixels, moved (mouth="warp"): pasted back without the colour
    # matching a drawn face needs (it would measure the frame against itself); the detail matching stays (it restores
    # what the warp's resampling and the temporal blend soften)
    source: object = None  # the decoded picture ``image`` came from (``Frame.source``; None: not kept)
    changed: Optional[tuple] = None  # the pixel region paste-back wrote (x1, y1, x2, y2); elsewhere ``image`` is
    # still the decoded picture, which the writer then copies as it is
    shot: int = 0  # the shot of the timeline frame (``face.cuts``): nothing is blended across shots
    reference: Optional[np.ndarray] = None  # the network's reference face for this shot (None: the run's reference)


# --------------------------------------------------------------------------------------------- checks
def check_paths(video: Path, audio: Path, output: Path, others: Sequence[tuple[object, str]] = ()) -> None:
    """Fail early, before any work, on paths that cannot give a result. ``others``: (path, what) of the other files
    read (a reference picture, a voice sample), which the output must not replace either (entries that are not a
    Path, a frame number say, are passed over)."""
    require_file(video, "video")
    require_file(audio, "audio")
    out_real = os.path.realpath(output)
    read = [(video, "input video"), (audio, "input audio")] + [(p, w) for p, w in others if isinstance(p, Path)]
    for p, what in read:  # (before the output's own checks: an input is often write-protected, and "cannot replace
        # it: write-protected" hid that it is the input; a voice sample or a reference picture was replaced unsaid)
        if out_real == os.path.realpath(p) or _same_existing_file(output, p):  # (also: the same file by another
            raise UserError(f"the output path is the same file as the {what} ({p}); choose another output name")
        # path: a folder mounted twice, a name in another case on a case-insensitive disk, another Unicode form)
    check_output(output)


def _same_existing_file(a: Path, b: Path) -> bool:
    try:
        return os.path.exists(a) and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(output: Path) -> None:
    """The output path's own checks (its suffix, its folder), before any input exists (``demo`` makes its own)."""
    if output.name.lower() in OUTPUT_SUFFIXES:  # (".mp4" is a name without a suffix to pathlib: a hidden file)
        raise UserError(f"the output {output} has a suffix but no name: give one, such as {output.parent / 'out.mp4'}")
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"output must be a video file ending in {', '.join(OUTPUT_SUFFIXES)}: {output}")
    refuse_unexpanded_home(output, "the output")  # (a folder named "~" here, and a success line that reads as home)
    parent = output.parent if str(output.parent) else Path(".")
    try:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"output folder is not a folder: {parent}")
        if output.exists() and output.is_dir():
            raise UserError(f"output path is a folder: {output}")
        there = parent  # (as the user gave it: messages quote it so)
        while not there.exists() and there != there.parent:  # the folder made for it is made in the nearest one
            if there.is_symlink():  # a link to what is not there (a drive not mounted) or to itself: not to be made
                raise UserError(f"the output folder {there} is a link to {os.readlink(there)}, which does not exist "
                                "or cannot be reached (is its drive mounted?)")
            there = there.parent
    except OSError as e:  # a name longer than the file system takes (255 bytes), a loop of links, ...
        raise UserError(f"cannot write the output {output}: {e.strerror or e}") from None
    if not there.is_dir():
        raise UserError(f"the output folder {parent} cannot be made: {there} is not a folder")
    if not os.access(there, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the output in {there}: "
                        f"{'it is on a read-only disk' if _read_only(there) else 'no permission to write there'}")
    if output.is_file() and (not os.access(output, os.W_OK) or not os.stat(output).st_mode & 0o222):  # (a render
        # protected on purpose, chmod a-w: by its mode too, as root may write any file and os.access says so)
        raise UserError(f"cannot replace {output}: it is write-protected (read-only); remove the protection "
                        "(chmod u+w) or choose another output name")
    if not _may_replace(output, there):
        raise UserError(f"cannot replace {output}: it belongs to another user in a shared folder where only a file's "
                        "owner may replace it (a sticky folder, as /tmp is); choose another output name")


def _read_only(folder: Path) -> bool:
    """Whether ``folder`` is on a file system mounted read-only (a camera card, a disk image): said as such, not as
    a want of permission."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # (no statvfs: Windows)
        return False


def _may_replace(output: Path, folder: Path) -> bool:
    """Whether an existing ``output`` may be replaced by renaming the finished file over it: not in a sticky folder
    (a shared one) where neither the file nor the folder is this user's (the whole run was done, then the rename
    failed, naming a hidden file)."""
    import stat

    try:
        mine = os.geteuid()
        if not output.exists() or (mine == 0 and _may_own_any_file()):
            return True
        here = os.stat(folder)
        return not here.st_mode & stat.S_ISVTX or mine in (here.st_uid, os.stat(output).st_uid)
    except (AttributeError, OSError):  # (no user ids here: Windows)
        return True


def _may_own_any_file() -> bool:
    """Whether this process holds CAP_FOWNER (root's right to act as any file's owner; a root with its capabilities
    dropped, in a container, has not); True where that cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            caps = next((ln.split()[1] for ln in f if ln.startswith("CapEff:")), None)
    except OSError:
        return True
    return caps is None or bool(int(caps, 16) & (1 << 3))


def make_output_folder(output: Path) -> list[Path]:
    """The output's folder, made once the inputs have proved usable; a :class:`UserError` where it cannot be.
    Returns the folders it made, outermost first (:func:`remove_made_folders` takes them away again where the run
    stops before its output is written)."""
    made = missing_folders(output.parent)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"the output folder {output.parent} cannot be made: {e.strerror or e}") from None
    return made


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and the folders above it that do not exist yet, outermost first (what making it makes)."""
    missing = []
    while str(folder) and not folder.exists() and folder != folder.parent:
        missing.insert(0, folder)
        folder = folder.parent
    return missing


def remove_made_folders(made: list[Path]) -> None:
    """The folders :func:`make_output_folder` made, removed where they are still empty (a run stopped or failed):
    nothing is left of it, an empty folder tree included."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            return


def check_face_box(box, width: int, height: int) -> tuple[float, float, float, float] | None:
    """``--face-box`` clipped to the ``width`` x ``height`` frame (a box reaching past an edge means up to that
    edge); :class:`UserError` when it is not four finite numbers with x2 > x1 and y2 > y1 or lies outside the frame."""
    if box is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise UserError(f"--face-box (face_box) must be four numbers x1,y1,x2,y2 in pixels (got {box!r})") from None
    plain = ",".join(f"{v:g}" for v in (x1, y1, x2, y2))
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise UserError(f"--face-box (face_box) must be x1,y1,x2,y2 in pixels, finite, with x2 > x1 and y2 > y1 "
                        f"(got {plain})")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise UserError(f"--face-box {plain} lies outside the {width}x{height} frame; give pixel coordinates inside it")
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))


# --------------------------------------------------------------------------------------------- arguments
def whole_number(value) -> bool:
    """Whether ``value`` is a whole number as Python code passes one (an int or numpy integer; not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_face_index(face_index) -> None:
    """``face_index`` (``--face``): None, or a whole number from 0 (counted from the left); a :class:`UserError`
    otherwise, before any frame is read (a string or a float failed deep in the tracking, after the search)."""
    if face_index is not None and (not whole_number(face_index) or face_index < 0):
        raise UserError(f"--face (face_index) must be a whole number from 0, counted from the left (got "
                        f"{face_index!r})")


def path_argument(value, what: str) -> Path:
    """A path argument as a Path: str, os.PathLike or bytes (a file system's own name); a :class:`UserError` for
    anything else (an array, a file object)."""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, (str, os.PathLike)):
        raise UserError(f"{what} must be a path (str or pathlib.Path), not {type(value).__name__}")
    return Path(value)


# --------------------------------------------------------------------------------------------- reference
def reference_request(reference) -> str | int | Path:
    """``reference`` as ``"best"``, ``"first"``, a frame number or an image path; :class:`UserError` otherwise."""
    if whole_number(reference) or (isinstance(reference, str) and reference.strip().isdecimal()):
        return int(reference)
    if isinstance(reference, np.ndarray):
        raise UserError("--reference (reference) takes a picture's path, not an array of pixels: save it first (e.g. "
                        "cv2.imwrite) and give its path")
    if reference in ("best", "first"):
        return reference
    if isinstance(reference, (str, Path)) and (Path(reference).suffix or Path(reference).is_file()):
        return Path(reference)  # (a picture saved without a suffix, or named "./10", is a picture)
    raise UserError(f"--reference (reference) must be best, first, a frame number or an image of the face "
                    f"(got {reference!r})")


@dataclass
class ReferenceSearch:
    """What :func:`find_reference` found: the reference crop, the frame it came from (None for an image) and, for the
    main pass to go on from, the detections of the frames it searched (frame 0 on), its face track (those frames
    pushed; None for an image) and the boxes that track made final (frame 0 on)."""

    crop: np.ndarray
    frame: Optional[int]
    detections: list
    track: object = None
    boxes: list = field(default_factory=list)

    def take_track(self) -> tuple[object, list]:
        """``(track, boxes)`` for one main pass to go on from (the pass pushes more frames into the track); later
        calls, and an image reference, give ``(None, [])``: a fresh track is fed the detections again."""
        track, boxes = self.track, self.boxes
        self.track, self.boxes = None, []
        return track, boxes


def reference_search_length(request, n_src: int, fps: float) -> int:
    """About how many frames :func:`find_reference` decodes when the face is seen from the first frame on."""
    ahead = max(1, int(round(0.5 * fps))) + 3  # the face track's look-ahead
    if isinstance(request, Path):
        return 0
    if request == "best":
        return min(n_src, int(round(REFERENCE_SECONDS * fps)) + ahead)
    return min(n_src, (0 if request == "first" else int(request)) + ahead)


def sparse_detections(items, frame_of: Callable, detect: Callable, workers: int = 1, before: Optional[tuple] = None,
                      every_frame: bool = False) -> Iterator[tuple]:
    """``(item, faces)`` for each item, in order. ``frame_of(item)``: ``(s, image)`` for a frame to detect (``s`` its
    timeline index), or None for an item passed through (faces None). ``before``: ``(s, faces)`` of the frame before
    the first one, when known (found by the reference search).

    A frame at an odd index whose neighbours' faces agree (``face.detect.midway``: one face each, little moved) is
    not detected but gets their mean box: it waits for the next frame's detection, and is detected then if they do
    not agree (or when no detected neighbour comes). That spares most of the odd frames' detections (about 5 ms of
    CPU each at 720p, of about 34 per frame for the whole of ``sync`` with Base), and the boxes of a steady face
    move less from frame to frame. The
    choice depends only on the detections, never on timing. ``every_frame``: detect every frame. Even frames are
    detected by ``workers`` threads ahead of the one given out (``stages.mapped_ahead``); an odd frame that must be
    detected, in the caller's thread."""
    from .face.detect import midway

    def key(item):
        f = frame_of(item)
        return None if f is None or (f[0] % 2 and not every_frame) else f[1]

    inner = mapped_ahead(lambda item: detect(frame_of(item)[1]), items, key, workers)
    last = before  # (s, faces) of the latest frame whose faces are known
    held = None  # (item, s): an odd frame waiting for the next frame's faces
    try:
        for item, found in inner:
            f = frame_of(item)
            if held is not None:
                h_item, h = held
                held = None
                mid = None
                if f is not None and f[0] == h + 1 and found is not None and last is not None and last[0] == h - 1:
                    mid = midway(last[1], found)
                faces = mid if mid is not None else detect(frame_of(h_item)[1])
                last = (h, faces)
                yield h_item, faces
            if f is None:
                yield item, None
                continue
            if f[0] % 2 and not every_frame:  # odd: wait for the next frame, when the one before is known
                if last is not None and last[0] == f[0] - 1:
                    held = (item, f[0])
                    continue
                found = detect(f[1])
            last = (f[0], found)
            yield item, found
        if held is not None:
            yield held[0], detect(frame_of(held[0])[1])
    finally:
        inner.close()


def find_reference(timeline, n_src: int, request, new_track: Callable, detect: Callable, bar,
                   timings: Optional[Timings] = None, overlap: bool = True, workers: int = 1,
                   every_frame: bool = False) -> ReferenceSearch:
    """Decode and search frames from the start until the reference frame's box is final; crop it there.

    ``request``: from :func:`reference_request`. ``new_track()``: an ``OnlineTrack`` with the run's options;
    ``detect(image)``: faces in a frame; ``bar``: progress (``update(n)``). Frames are held only while their box
    is not final (a few), and of the candidates only the best crop so far. With ``overlap`` the frames are
    decoded in a thread a few frames ahead of the detection (its busy time goes to ``timings["decode"]``); with
    ``workers`` > 1 that many frames are detected at the same time (``detect`` is then called from as many threads:
    a ``face.detect.FaceDetectors``' ``detect``), a few frames ahead of the search. The frames are detected as
    :func:`sparse_detections` does (every one with ``every_frame``)."""
    if isinstance(request, Path):
        return ReferenceSearch(reference_crop(request), None, [])
    track = new_track()
    window = max(1, int(round(REFERENCE_SECONDS * timeline.fps)))
    detections: list = []
    boxes: list = []  # the track's final boxes, frame 0 on
    images: deque = deque()  # (frame, image) of frames whose box is not final yet
    best: Optional[tuple] = None  # ((score, -frame), frame, crop)
    found: Optional[tuple[int, np.ndarray]] = None

    def settle(finals) -> None:
        nonlocal best, found
        for t, box in finals:
            boxes.append(box)
            while images[0][0] < t:
                images.popleft()
            image = images.popleft()[1]
            if found is not None:
                continue
            if request == "first":
                if box is not None:
                    found = (t, face_crop(image, box, BASE_SIZE))
            elif request == "best":
                raw = track.raw[t]
                if (box is not None and raw is not None and t < track.anchor + window
                        and (best is None or (raw.score, -t) > best[0])):
                    best = ((raw.score, -t), t, face_crop(image, box, BASE_SIZE))
            elif t == request:
                if box is None:
                    raise _no_face_at(request, n_src, timeline.info.n_frames)
                found = (t, face_crop(image, box, BASE_SIZE))

    if isinstance(request, int) and not 0 <= request < n_src:
        raise _no_face_at(request, n_src, timeline.info.n_frames)
    frames = run_chain(Step("decode", lambda _: timeline.iter_range(0, n_src), maxsize=REFERENCE_DECODE_AHEAD), [],
                       timings if timings is not None else Timings(), overlap=overlap)
    detected = sparse_detections(frames, lambda fr: (fr.index, fr.image), detect, workers if overlap else 1,
                                 every_frame=every_frame)
    try:
        for fr, dets in detected:
            detections.append(dets)
            images.append((fr.index, fr.image))
            settle(track.push(dets, fr.image))
            if fr.index == n_src - 1:
                settle(track.finish())
            bar.update(1)
            if found is not None:
                break
            if request == "best" and track.anchor is not None and track.done >= min(track.anchor + window, n_src):
                break
    finally:
        detected.close()  # waits for the detections running
        frames.close()  # stops and joins the decoding thread before the timeline is read again
    if not detections:
        raise MediaError(f"no frames could be decoded from {timeline.info.path}")
    if request == "best" and best is not None:
        found = best[1:]
    if found is None:  # the face never had a box ("first", or "best" when every crop left the frame)
        if track.anchor is None and not track.finished:
            track.finish()  # raises NoFaceError naming the video
        raise UserError(f"--reference {request}: no frame of {timeline.info.path} has a tracked face to take the "
                        "reference from; use --reference IMAGE")
    return ReferenceSearch(found[1], found[0], detections, track, boxes)


def _no_face_at(index: int, n_src: int, n_video: int) -> UserError:
    """Why frame ``index`` cannot be the reference: outside the ``n_src`` frames of the video's ``n_video`` this run
    shows (a video longer than the speech is cut to it), or without a tracked face."""
    if 0 <= index < n_src:
        return UserError(f"--reference {index}: that frame has no tracked face; use best, first or another frame "
                         "number")
    if n_src < n_video:
        return UserError(f"--reference {index}: this run shows only the first {n_src} of the video's {n_video} "
                         f"frames (the output is as long as the speech); give a frame number below {n_src} "
                         "(numbered from 0), best or first")
    return UserError(f"--reference {index}: the video has {n_src} frames, numbered from 0; give a frame number "
                     f"below {n_src}, best or first")


# --------------------------------------------------------------------------------------------- stages
def scheduled_frames(timeline, n_src: int, n_out: int, loop: str) -> Iterator[FrameJob]:
    """Output frames in order, each the timeline frame it shows (``schedule.runs``): decoded forward, or backward in
    chunks, a held frame repeated. ``last_use`` tells whether a later job shows the same array."""
    prev: Optional[FrameJob] = None
    j = 0
    held = None
    for run in runs(n_src, n_out, loop):
        if len(run) == 1 and held is not None and held[0] == run.start:
            frames = [held]
        else:
            frames = ((fr.index, fr.image, fr.source)
                      for fr in timeline.iter_range(run.start, run.stop, reverse=run.reverse))
        for s, image, source in frames:
            job = FrameJob(j, s, image, source=source)
            held = (s, image, source)
            j += 1
            if prev is not None:
                prev.last_use = prev.image is not image
                yield prev
            prev = job
    if prev is not None:
        yield prev


class FaceStage:
    """Gives each job its box: faces detected on the new frames of the first pass over the video
    (:func:`sparse_detections`; detections found by the reference search are reused), the track computed as frames
    arrive; later passes (ping-pong, hold) reuse the boxes. ``boxes`` keeps one box per timeline frame;
    ``on_first_pass_end()`` is called once the first pass is done (the damage report).

    ``track`` may go on from the reference search (its ``track.n`` frames pushed, the search's ``cached`` detections,
    and ``boxes`` the ones it made final): the first frames then have their boxes at once instead of waiting for the
    track to look ahead again, and the boxes are the same."""

    def __init__(self, n_src: int, track, detect: Callable, cached: list, on_first_pass_end: Callable = lambda: None,
                 workers: int = 1, every_frame: bool = False, boxes: Optional[list] = None,
                 reference_frame: Optional[int] = None, fps: float = 25.0):
        self.n_src, self.track, self.detect, self.cached = n_src, track, detect, cached
        # the reference face's shot (None: an image given as the reference, used in every shot)
        shots = track.shot_of
        self.reference_shot = None if reference_frame is None else (
            shots[reference_frame] if reference_frame < len(shots) else 0)
        self.shot_references: dict = {}
        self.fps = fps
        self.workers = workers  # frames detected at the same time (``detect`` called from as many threads)
        self.every_frame = every_frame  # detect every frame (False: :func:`sparse_detections`)
        self.on_first_pass_end = on_first_pass_end
        self.boxes: list = list(boxes or [])
        if not self.track.finished and (self.track.n > len(cached) or len(self.boxes) > self.track.n):
            raise ValueError(f"a track with {self.track.n} frames pushed cannot go on from {len(cached)} "
                             f"detections and {len(self.boxes)} boxes")
        self._reported = False

    def __call__(self, jobs: Iterator[FrameJob]) -> Iterator[FrameJob]:
        def marked() -> Iterator[tuple[FrameJob, bool]]:  # (job, whether to detect): a frame new to the first pass
            new = 0  # (and not searched already)
            for job in jobs:
                first = job.s == new
                new += first
                yield job, first and job.s >= len(self.cached)

        def frame_of(item):  # a frame to detect
            job, detect = item
            return (job.s, job.image) if detect else None

        before = (len(self.cached) - 1, self.cached[-1]) if self.cached else None
        detected = sparse_detections(marked(), frame_of, self.detect, self.workers, before, self.every_frame)
        try:
            yield from self._tracked(detected)
        finally:
            detected.close()

    def _tracked(self, detected: Iterator[tuple]) -> Iterator[FrameJob]:
        waiting: deque = deque()
        boxes = self.boxes
        for (job, _), found in detected:
            if job.s < len(boxes) or self.track.finished:
                job.box = self._unless_flat(job)
                if job.s == self.n_src - 1:
                    self._first_pass_ended()
                yield self._shot(job)
                continue
            waiting.append(job)
            if job.s < self.track.n:  # pushed by the reference search: its box comes with a later frame's push
                continue
            if job.s != self.track.n:
                raise RuntimeError(f"frame {job.s} reached the face track out of order (expected {self.track.n})")
            boxes.extend(b for _, b in self.track.push(self.cached[job.s] if job.s < len(self.cached) else found,
                                                       job.image))
            if self.track.n == self.n_src:
                boxes.extend(b for _, b in self.track.finish())
                self._first_pass_ended()
            while waiting and waiting[0].s < len(boxes):
                done = waiting.popleft()
                done.box = self._unless_flat(done)
                yield self._shot(done)
        if waiting:  # pragma: no cover (the first pass always ends with finish())
            raise RuntimeError("frames left without a box")

    def _unless_flat(self, job: FrameJob):
        """The job's final box, or None (from then on) where the region shows nothing: a box bridged or held over
        black or blank frames (a fade out), where a pasted mouth would float on nothing."""
        box = self.boxes[job.s]
        if box is not None and is_flat(job.image, box):
            self.boxes[job.s] = box = None
        return box

    def _shot(self, job: FrameJob) -> FrameJob:
        """The job with its shot and, in a shot other than the reference's, that shot's reference face: its first
        frame with a box, cropped (the run's reference shows whoever the first shot followed)."""
        shots = self.track.shot_of
        job.shot = shots[job.s] if job.s < len(shots) else 0
        if job.box is not None and self.reference_shot is not None and job.shot != self.reference_shot:
            if job.shot not in self.shot_references:
                self.shot_references[job.shot] = face_crop(job.image, job.box, BASE_SIZE)
            job.reference = self.shot_references[job.shot]
        return job

    def _first_pass_ended(self) -> None:
        if not self._reported:
            self._reported = True
            self.on_first_pass_end()
            report_shots(self.track, self.boxes, self.fps)
            report_several_faces(self.track)


def report_several_faces(track, use: str = "followed") -> None:
    """A warning where another face shows beside the one ``track`` followed (``OnlineTrack.several_faces``): the
    largest was taken, unasked, and the speech may be the other person's."""
    from .errors import warn

    if track.several_faces():
        warn(f"{track.source}: {track.frames_with_several} of its {track.frames_with_face} frames with a face show "
             f"more than one; the largest at the start is {use} (--face N, counted from the left from 0, or --face-box "
             "X1,Y1,X2,Y2 picks another)")


def report_shots(track, boxes: list, fps: float) -> None:
    """A warning for a video made of shots (``face.cuts``): where it cuts, that the face was chosen anew in each,
    and which shots have no face to follow (left as they are)."""
    from .errors import warn

    starts = track.shot_starts
    if len(starts) < 2:
        return
    ends = starts[1:] + [len(boxes)]
    bare = [(a, b) for a, b in zip(starts, ends) if b > a and all(x is None for x in boxes[a:b])]
    at = ", ".join(f"{t / fps:.2f} s" for t in starts[1:6]) + (", ..." if len(starts) > 6 else "")
    text = (f"the video cuts to another shot {len(starts) - 1} time{'s' if len(starts) > 2 else ''} (at {at}): the "
            f"face is chosen anew in each shot, by the same rule as in the first (the largest, or as --face or "
            f"--face-box say), and nothing is carried across a cut")
    if bare:
        spans = ", ".join(f"{a / fps:.2f}-{b / fps:.2f} s" for a, b in bare[:5]) + (", ..." if len(bare) > 5 else "")
        text += f"; {len(bare)} shot{'s' if len(bare) > 1 else ''} without the face to follow " \
                f"{'are' if len(bare) > 1 else 'is'} left as {'they are' if len(bare) > 1 else 'it is'} ({spans})"
    warn(text + ". To dub one speaker in an edit with others, cut it into shots and sync the speaker's.")


class FaceGaps:
    """The output frames written without a face (left as they are), as spans, for the warning that says so: a face
    that left the shot, turned away or that the detector lost (old film, a tight crop) left most of a video undubbed
    without a word. Frames of shots with no face at all are left out (:func:`report_shots` names those)."""

    SHARE = 0.05  # of the output's frames, from which it is said
    LONGEST_S = 1.0  # or where one span lasts this long

    def __init__(self) -> None:
        self.spans: list[list[int]] = []  # [first, stop, shot] of output frames without a face
        self.shots_with_face: set[int] = set()

    def add(self, k: int, job: FrameJob) -> None:
        if job.box is not None:
            self.shots_with_face.add(job.shot)
        elif self.spans and self.spans[-1][1] == k and self.spans[-1][2] == job.shot:
            self.spans[-1][1] = k + 1
        else:
            self.spans.append([k, k + 1, job.shot])

    def warning(self, name: str, n_out: int, fps: float) -> str | None:
        spans = [(a, b) for a, b, shot in self.spans if shot in self.shots_with_face]
        missing = sum(b - a for a, b in spans)
        if not spans or (missing < self.SHARE * n_out and max(b - a for a, b in spans) < self.LONGEST_S * fps):
            return None
        at = ", ".join(f"{a / fps:.2f}-{b / fps:.2f} s" for a, b in spans[:5]) + (", ..." if len(spans) > 5 else "")
        return (f"{name}: no face was found on {missing} of the {n_out} frames written ({at}): they are left as they "
                "are, undubbed (the face out of the shot, turned away, covered, or too small or faint for the face "
                "detector)")


def batches(jobs: Iterator[FrameJob], size: int) -> Iterator[list[FrameJob]]:
    """Consecutive output frames in groups of ``size`` (the last may be shorter)."""
    batch: list[FrameJob] = []
    for job in jobs:
        batch.append(job)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def blended_inputs(jobs: Iterator[FrameJob], weight: float) -> Iterator[FrameJob]:
    """Each job's network input (``job.crop``) as its face crop blended with the frames before and after it, each cut
    in the job's own box, weights ``weight``, 1 - 2 ``weight``, ``weight``: the upper face the renderer reads then
    changes smoothly from frame to frame (the rendered face itself is not averaged, so it keeps its sharpness). A
    neighbour without a face, or whose box is not near the job's (a cut, a jump of the track: ``face.steady``),
    gives its weight to the job's own crop. Jobs come out one later than they arrive; both neighbours are cut
    before either is rendered or pasted back into its frame."""
    if weight <= 0:
        yield from jobs
        return
    from .face.steady import is_near
    from .face.track import pixel_extent

    def region(job):
        return pixel_extent(job.box)

    def mix(own, before, after):
        out = own * np.float32(1.0 - 2.0 * weight)
        for other in (before, after):
            out += np.float32(weight) * (own if other is None else other)
        return out

    pending = None  # (job, its own crop, the previous frame cut in its box or None)
    for job in jobs:
        own = None if job.box is None else face_crop(job.image, job.box, BASE_SIZE).astype(np.float32)
        before = None
        if pending is not None:
            last, last_own, last_before = pending
            after = None
            if (own is not None and last_own is not None and last.shot == job.shot
                    and is_near(region(last), region(job))):
                after = face_crop(job.image, last.box, BASE_SIZE).astype(np.float32)
                before = face_crop(last.image, job.box, BASE_SIZE).astype(np.float32)
            if last_own is not None:
                last.crop = mix(last_own, last_before, after)
            yield last
        pending = (job, own, before)
    if pending is not None:
        last, last_own, last_before = pending
        if last_own is not None:
            last.crop = mix(last_own, last_before, None)
        yield last


def network_stage(size: int, render: Callable[[list[FrameJob]], None], workers: int = 1,
                  start_worker: Callable[[], None] = lambda: None, end: Callable[[], None] = lambda: None,
                  gate: Optional[Gate] = None) -> Callable:
    """The network stage: batches of ``size`` consecutive frames; ``render(jobs)`` sets ``face`` on the jobs that
    have a box. Yields the batches, in order.

    With ``workers`` > 1, that many batches are rendered at the same time, each in a thread of its own that first
    calls ``start_worker()`` (``render`` must be safe to call from them at once: it keeps no state between batches);
    ``end()`` is called once the threads have stopped; ``gate`` (``stages.Gate``), entered by each batch before it
    is rendered, in order, bounds how far the rendering runs ahead of the consumer (:func:`render_gate`). (Splitting
    the first batch so the first frames come out sooner cost a command 3% of its speed: oneDNN prepares its kernels
    again for each new batch size.)"""

    def work(batch: list[FrameJob]) -> None:
        todo = [job for job in batch if job.box is not None]
        if todo:
            render(todo)

    def entered(jobs: Iterator[FrameJob]) -> Iterator[list[FrameJob]]:  # batches, each through the gate in order
        for batch in batches(jobs, size):
            if gate is not None:
                gate.enter(len(batch))
            yield batch

    def stage(jobs: Iterator[FrameJob]) -> Iterator[list[FrameJob]]:
        # with several workers: the oldest batch is given out once as many are rendering as there are workers, or
        # as soon as it is done
        rendered = mapped_ahead(work, entered(jobs), lambda batch: batch, workers, ahead=workers - 1,
                                name="hyperlips-render", initializer=start_worker)
        try:
            for batch, _ in rendered:
                yield batch
        finally:
            rendered.close()  # waits for the batches rendering
            end()

    return stage


def render_gate(size: int, workers: int) -> Gate:
    """The gate for a network stage rendering ``workers`` batches of ``size`` at a time: frames between a batch's
    rendering and their encoding at most ``size * workers + max(2, size // 2)`` (40 for two batches of 16). The
    encoder (one thread) otherwise falls behind the two render threads and encodes its backlog alone at the end:
    measured with Base on ``real/hyperlips/video2.mp4`` (three pairs of two runs, runs-only script), 40 frames 47.0-50.1
    fps, 48 44.9-48.7, no bound 44.9-49.0. Never below what must pass for the stages to go on: the batch being
    rendered, the next, and a frame the paste stage holds back (``2 * size + 1``; less would deadlock)."""
    return Gate(size * workers + max(2, size // 2))


def steady_batches(batches_in: Iterator[list[FrameJob]], weight: float) -> Iterator[list[FrameJob]]:
    """Each generated face blended with those of the output frames before and after it (``face.steady``). The
    jobs come out one later than they arrive (a job waits for the next one's face; the last is flushed at the end)."""
    from .face.steady import blend_neighbours
    from .face.track import pixel_extent

    if weight <= 0:
        yield from batches_in
        return

    def rendered(job):  # (face as rendered, crop region, shot), or None for a frame without a face
        if job is None or job.face is None:
            return None
        return job.face, pixel_extent(job.box), job.shot

    def same_shot(other, mine):  # a neighbour's (face, region) where it is of the same shot, else None
        return other[:2] if other is not None and other[2] == mine[2] else None

    def ended():  # the batches, then a last one holding None: the final job has no successor
        yield from batches_in
        yield [None]

    before = None  # the previous job's (face, region) as rendered, before its own blend
    pending = None  # (job, its (face, region) as rendered) waiting for its successor
    for batch in ended():
        done = []
        for job in batch:
            mine = rendered(job)
            if pending is not None:
                waiting, theirs = pending
                if theirs is not None:
                    waiting.face = blend_neighbours(theirs[0], theirs[1], same_shot(before, theirs),
                                                    same_shot(mine, theirs), weight)
                before = theirs
                done.append(waiting)
            pending = None if job is None else (job, mine)
        if done:
            yield done


def paste_stage(paste: Callable, steady: float = 0.0) -> Callable:
    """The paste-back stage: the faces steadied over time (``steady``: the neighbours' weight, :func:`steady_batches`),
    then ``paste(frame, face, box, inplace)`` for every job with a face (``face.blend.paste_face``; a job's own face
    with ``color="none"``), which writes only inside the box's pixel region (``job.changed``); yields the jobs,
    ``image`` now the output frame."""
    from .face.track import pixel_region

    def stage(batches_in: Iterator[list[FrameJob]]) -> Iterator[FrameJob]:
        for batch in steady_batches(batches_in, steady):
            for job in batch:
                if job.face is not None:
                    own = {"color": "none"} if job.own_face else {}
                    job.image = paste(job.image, job.face, job.box, inplace=job.last_use, **own)
                    job.changed = pixel_region(job.box, job.image.shape[1], job.image.shape[0])
                    job.face = None
                yield job

    return stage


# --------------------------------------------------------------------------------------------- the chain
def track_factory(timeline, face_index=None, face_box=None) -> Callable:
    """A function making a fresh face track (``face.track_online.OnlineTrack``) with a run's options."""
    from .face.track_online import OnlineTrack

    return lambda: OnlineTrack(timeline.fps, face_index=face_index, box=face_box, source=str(timeline.info.path),
                               frame_size=(timeline.width, timeline.height))


def frame_chain(timeline, *, n_src: int, n_out: int, loop: str, found: ReferenceSearch, new_track: Callable,
                detect: Callable, network: Callable, batch_size: int, timings, overlap: bool = True,
                steady: float = 0.0, input_blend: float = 0.0, workers: int = 1,
                every_frame: bool = False, on_stop: Optional[Callable[[], None]] = None) -> Iterator[FrameJob]:
    """decode -> faces -> ``network`` (a stage taking jobs, giving lists of them; its inputs first blended over time
    with weight ``input_blend``, :func:`blended_inputs`) -> paste (the faces first steadied over time with weight
    ``steady``), the stages at the same time (``stages.run_chain``); yields the finished jobs in output order. Close
    it to stop the threads. ``workers``: frames detected at the same time (see :func:`find_reference`);
    ``every_frame``: detect every frame (see :func:`sparse_detections`); ``on_stop``: see ``stages.run_chain``."""
    from .face.blend import paste_face
    from .media.timing import report_damage

    track, boxes = found.take_track()
    faces = FaceStage(n_src, track if track is not None else new_track(), detect, found.detections,
                      on_first_pass_end=lambda: report_damage(timeline, n_src), workers=workers if overlap else 1,
                      every_frame=every_frame, boxes=boxes, reference_frame=found.frame, fps=timeline.fps)
    return run_chain(
        Step("decode", lambda _: scheduled_frames(timeline, n_src, n_out, loop), maxsize=4),
        [Step("faces", faces, maxsize=batch_size),
         Step("network", (lambda jobs: network(blended_inputs(jobs, input_blend))) if input_blend > 0 else network,
              maxsize=1),
         Step("paste", paste_stage(paste_face, steady), maxsize=4)],
        timings, overlap=overlap, on_stop=on_stop)
