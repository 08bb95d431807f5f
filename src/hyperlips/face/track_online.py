"""The face track of :mod:`hyperlips.face.track`, computed as frames arrive: each frame's box is given out as soon
as no later frame can change it.

:func:`~hyperlips.face.track.track_faces` needs every frame's detections at once. A streaming pipeline cannot wait
for them, and need not: every step of the track looks ahead a bounded number of frames.

- choosing and following the face (``select_faces``) looks only back;
- bridging a gap of missed detections needs the gap's end: at most ``max_gap + 1`` frames ahead (a longer gap
  stays empty, known as soon as it has lasted ``max_gap + 1`` frames);
- the centred smoothing needs ``window // 2`` boxes ahead (or the end of the run of boxes).

:class:`OnlineTrack` gives exactly the boxes ``track_faces`` gives on the same detections (the same floating-point
operations in the same order, checked by the tests), frame by frame, at most ``max_gap + window // 2 + 1`` frames
behind the newest one. It also knows the best-scored detection among the first frames of the followed face.

Given each frame's image too, it finds the cuts of an edit (``face.cuts``) and starts afresh at each: the face
chosen anew by the same rule, nothing followed, bridged or smoothed across the cut (``track_faces``, which sees
detections only, knows no cuts; on a video without one the two agree).
"""

from __future__ import annotations

from collections import deque
from typing import Optional, Sequence

import numpy as np

from hyperlips.errors import NoFaceError
from hyperlips.face.detect import Box
from hyperlips.face.track import (DEFAULT_PAD, NO_FACE_ADVICE, BoxLike, _as_box, _crop_or_none, _matches, pick_face,
                                  _plain, track_settings)

MANY_FACES_SHARE = 0.25  # more than one face in more than this share of the frames with a face: another person in view


class OnlineTrack:
    """Feed :meth:`push` one frame's detections at a time (frame 0, 1, ...); it returns the frames whose box became
    final, as ``(frame, box)`` in frame order (``box`` None: leave the frame unchanged). :meth:`finish` ends the
    video and returns the rest. The arguments are those of :meth:`~hyperlips.face.track.FaceTrack.from_detections`
    (``frame_size`` given: crop boxes; without it: the smoothed detector boxes).

    ``raw[t]``: the chosen detection of frame t (before bridging and smoothing), known as soon as frame t is pushed.
    """

    def __init__(
        self,
        fps: Optional[float] = 25.0,
        *,
        face_index: Optional[int] = None,
        box: Optional[BoxLike] = None,
        max_gap: Optional[int] = None,
        window: int = 5,
        source: str = "<video>",
        frame_size: Optional[tuple[int, int]] = None,
        pad: Sequence[float] = DEFAULT_PAD,
        pad_px: Sequence[float] = (0, 0, 0, 0),
    ) -> None:
        if face_index is not None and box is not None:
            raise ValueError("give face_index or box, not both")
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 1, got {window}")
        self.max_gap = track_settings(fps, max_gap, pad, pad_px)
        if self.max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {self.max_gap}")
        self.window, self.radius = window, window // 2
        self.face_index, self.source = face_index, source
        self.user_box = None if box is None else _as_box(box)
        if self.user_box is not None and not (self.user_box.width > 0 and self.user_box.height > 0):
            raise ValueError(f"box must have x2 > x1 and y2 > y1, got {_plain(self.user_box)}")
        self.frame_size = None if frame_size is None else tuple(int(v) for v in frame_size)
        self.pad, self.pad_px = tuple(pad), tuple(pad_px)

        self.n = 0  # frames pushed
        self.raw: list[Optional[Box]] = []
        self.anchor: Optional[int] = None  # first frame of the followed face
        self._prev: Optional[tuple[Box, int]] = None  # last chosen detection and its frame
        self._gap: list[int] = []  # frames since the last chosen detection, their bridged box not decided yet
        self._last: Optional[tuple[int, Box]] = None  # the last chosen detection and its frame
        # smoothing: the current run of bridged boxes, from `t_out - radius` on, each with the running sum of the
        # run's boxes before it (the cumulative sum smooth_boxes takes differences of)
        self._run: deque = deque()  # (frame, Box, sum before it)
        self._run_start: Optional[int] = None
        self._csum = np.zeros(4)
        self._t_out = 0  # next frame to give out
        self.finished = False
        # shots (``face.cuts``): frames pushed with their image are checked for cuts; at one the track starts afresh
        self._cuts = None
        self.shot_of: list[int] = []  # each pushed frame's shot (0, 1, ...)
        self.shot_starts: list[int] = [0]  # each shot's first frame
        self._most_faces = 0  # the most faces a frame showed (for a --face N that none reached)
        self.frames_with_face = 0  # frames with at least one detection
        self.frames_with_several = 0  # frames with more than one (another person in view: ``several_faces``)

    # ------------------------------------------------------------------ public
    def push(self, detections: Sequence[Box], image: Optional[np.ndarray] = None) -> list[tuple[int, Optional[Box]]]:
        """Add the next frame's detections; returns the frames whose box is now final. With the frame's ``image``,
        a cut before it (``face.cuts``) ends the shot: what the track held is settled as at the end of a video, and
        the face is chosen anew by the same rule in the new shot (a shot where the rule finds none, ``--face N``
        beyond its faces say, is left unchanged): nothing is followed, bridged or smoothed across a cut."""
        if self.finished:
            raise RuntimeError("push() after finish()")
        t = self.n
        out: list[tuple[int, Optional[Box]]] = []
        if image is not None:
            if self._cuts is None:
                from hyperlips.face.cuts import CutFinder

                self._cuts = CutFinder()
            if self._cuts.is_cut(image) and t > 0:
                out = self._end_shot()
                self.shot_starts.append(t)
        self.n += 1
        self.frames_with_face += len(detections) > 0
        self.frames_with_several += len(detections) > 1
        self.shot_of.append(len(self.shot_starts) - 1)
        chosen = self._select(t, detections)
        self.raw.append(chosen)
        return out + self._bridge(t, chosen)

    def _end_shot(self) -> list[tuple[int, Optional[Box]]]:
        """A cut: the shot's undecided frames are settled (a trailing gap holds the last box, as at the end of a
        video) and given out; the next frame starts a new shot with nothing known of the face."""
        held = None if self._last is None else self._last[1]
        out = self._settle([held] * len(self._gap))
        out += self._emit(ended=True)
        self._prev = self._last = None
        return out

    def several_faces(self) -> bool:
        """Whether another face shows beside the followed one often enough to say so (more than
        :data:`MANY_FACES_SHARE` of the frames with a face) while nothing said which to follow (``face_index`` or
        ``box``): the largest is then taken, and the speech may be another's."""
        chose = self.face_index is not None or self.user_box is not None
        return not chose and self.frames_with_several > MANY_FACES_SHARE * max(1, self.frames_with_face)

    @property
    def shots(self) -> int:
        return len(self.shot_starts)

    def finish(self) -> list[tuple[int, Optional[Box]]]:
        """The video has ended: the remaining frames' boxes. Raises :class:`NoFaceError` when no frame had the face."""
        if self.finished:
            return []
        self.finished = True
        if self.anchor is None:
            if self.face_index is not None and self._most_faces:
                k = self._most_faces
                raise NoFaceError(f"--face {self.face_index}: {self.source} shows {k} face{'s' if k != 1 else ''} at "
                                  f"most (in any of its {self.n} frames), so the faces to choose from are 0..{k - 1}, "
                                  "counted left to right")
            if self.user_box is not None:
                e = f"no detected face overlaps the box {_plain(self.user_box)} (--face-box X1,Y1,X2,Y2 in pixels)"
                raise NoFaceError(f"no face found in {self.source}: {e} ({self.n} frame(s) searched)")
            raise NoFaceError(f"no face found in {self.source} ({self.n} frame(s) searched); {NO_FACE_ADVICE}")
        # a trailing gap still undecided is at most max_gap long: it holds the last box (none: the last shot had no
        # face at all)
        out = self._settle([None if self._last is None else self._last[1]] * len(self._gap))
        return out + self._emit(ended=True)

    def best(self, first: Optional[int] = None) -> Optional[int]:
        """The frame with the highest-scored chosen detection (ties: the earliest), among the followed face's first
        ``first`` frames (all when None); None before the face is found."""
        if self.anchor is None:
            return None
        stop = self.n if first is None else min(self.n, self.anchor + int(first))
        later = [u for u in self.shot_starts if u > self.anchor]
        if later:  # the reference is the followed face's own, not that of whoever the next shot shows
            stop = min(stop, later[0])
        found = [t for t in range(self.anchor, stop) if self.raw[t] is not None]
        return max(found, key=lambda t: (self.raw[t].score, -t)) if found else None

    @property
    def done(self) -> int:
        """Frames whose box is final (given out)."""
        return self._t_out

    # ------------------------------------------------------------------ choose and follow (track.select_faces)
    def _select(self, t: int, dets: Sequence[Box]) -> Optional[Box]:
        if self._prev is None:  # the start, or a new shot: the face chosen (anew), or none yet
            return self._choose(t, dets)
        prev, prev_t = self._prev
        scored = [(_matches(prev, c, t - prev_t), c) for c in dets]
        scored = [sc for sc in scored if sc[0] > 0]
        if not scored:
            return None
        chosen = max(scored, key=lambda sc: sc[0])[1]
        self._prev = (chosen, t)
        return chosen

    def _choose(self, t: int, dets: Sequence[Box]) -> Optional[Box]:
        """The face the rule picks in frame t, or None (``--face N`` beyond the faces it shows picks none: a later
        frame, or shot, may show that many; :meth:`finish` says so where none did)."""
        if self.user_box is None and self.face_index is not None:
            self._most_faces = max(self._most_faces, len(dets))
        anchor = pick_face(dets, self.face_index, self.user_box, self.frame_size)  # (face N not in this frame:
        # perhaps in a later one)
        if anchor is not None:
            if self.anchor is None:
                self.anchor = t
            self._prev = (anchor, t)
        return anchor

    # ------------------------------------------------------------------ bridge gaps (track.fill_gaps)
    def _bridge(self, t: int, chosen: Optional[Box]) -> list[tuple[int, Optional[Box]]]:
        """Frame t's chosen detection in; the bridged boxes now decided go on to smoothing, in frame order."""
        if chosen is None:
            self._gap.append(t)
            # frames without the face so far (since the shot began, where it has not been seen in it)
            since = t - self.shot_starts[-1] + 1 if self._last is None else t - self._last[0]
            if since > self.max_gap:  # leading: the face comes after frame max_gap; inner: too long to bridge
                return self._settle([None] * len(self._gap))
            return []
        out = []
        if self._gap:
            if self._last is None:  # leading frames (the face came by frame max_gap) hold its first box
                boxes = [chosen] * len(self._gap)
            else:
                a, box_a = self._last
                ba, bb, score = box_a.as_array(), chosen.as_array(), min(box_a.score, chosen.score)
                boxes = [Box.from_array((1 - (u - a) / (t - a)) * ba + ((u - a) / (t - a)) * bb, score=score)
                         for u in self._gap]
            out = self._settle(boxes)
        self._last = (t, chosen)
        return out + self._take(t, chosen)

    def _settle(self, boxes: list[Optional[Box]]) -> list[tuple[int, Optional[Box]]]:
        """The current gap's frames get ``boxes`` (bridged, or None) and go on to smoothing."""
        out = []
        for u, b in zip(self._gap, boxes):
            out += self._take(u, b)
        self._gap = []
        return out

    # ------------------------------------------------------------------ smooth (track.smooth_boxes) and crop
    def _take(self, t: int, b: Optional[Box]) -> list[tuple[int, Optional[Box]]]:
        """The next bridged box (frames in order): extend the run or end it; give out what became final."""
        if b is None:
            out = self._emit(ended=True)
            out.append((t, None))
            self._t_out = t + 1
            return out
        if self._run_start is None:
            self._run_start, self._csum = t, np.zeros(4)
        self._run.append((t, b, self._csum))
        self._csum = self._csum + b.as_array()
        return self._emit(ended=False)

    def _emit(self, ended: bool) -> list[tuple[int, Optional[Box]]]:
        """Give out the run's frames whose centred mean is known: ``radius`` boxes after them, or the run ended.
        The mean is smooth_boxes' own arithmetic: (csum[i + k + 1] - csum[i - k]) / (2k + 1)."""
        out = []
        run, r = self._run, self.radius
        while run and self._t_out <= run[-1][0]:
            i = self._t_out - run[0][0]  # index in `run` of the frame to give out
            t, b, _ = run[i]
            after = len(run) - 1 - i
            if after < r and not ended:
                break
            k = min(r, t - self._run_start, after)
            hi = run[i + k + 1][2] if i + k + 1 < len(run) else self._csum
            mean = (hi - run[i - k][2]) / (2 * k + 1)
            out.append((t, self._crop(Box.from_array(mean, score=b.score))))
            self._t_out = t + 1
            while run and run[0][0] < self._t_out - r:  # keep the left side the next frames' windows need
                run.popleft()
        if ended:
            run.clear()
            self._run_start = None
        return out

    def _crop(self, b: Box) -> Optional[Box]:
        if self.frame_size is None:
            return b
        fw, fh = self.frame_size
        return _crop_or_none(b, fw, fh, self.pad, self.pad_px)
