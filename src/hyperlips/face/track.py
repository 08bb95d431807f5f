"""One face box per frame for a whole video: choose a face, follow it, bridge short gaps, smooth, and crop geometry.

The pipeline detects faces in a first streaming pass (a few floats per frame) and calls :func:`track_faces` on the
whole list, so smoothing is centred and continuous however the frames are batched later.

Face choice (first frame with any detection = the *anchor* frame):
- default: the largest face of the anchor frame;
- ``face_index=N``: the N-th face counted **left to right** by box centre x (0 = leftmost), in the first frame that
  shows that many;
- ``box=(x1, y1, x2, y2)``: the face that overlaps the user's box most (IoU), in the first frame where any face
  overlaps it.
The chosen face is then followed frame to frame by overlap with its last known box (IoU, or centre distance when
the face moved fast), never re-picked by size, so the track does not jump between people. (The streaming track,
``face.track_online``, also ends a shot at a cut when given the frames, and chooses the face anew in the next.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from hyperlips.errors import NoFaceError
from hyperlips.face.detect import Box

# Expansion of a mediapipe full-range box to the crop the model was trained on (S3FD-like: forehead to chin,
# about 1.3 times as tall as wide). Fractions of the box (top, bottom: of its height; left, right: of its width),
# positive = outward. Measured on 43 real frames (14 clips, astronaut, flipped copies) against MTCNN, a WIDER-FACE
# detector with S3FD's box convention: MTCNN's top is 0.156 h above mediapipe's (sd 0.046), its bottom at the same
# row (+0.002, sd 0.03; both at the chin), its left side 0.05 w inside and its right side 0.085 w inside (mediapipe's
# box reaches further right, also on mirrored frames), h/w 1.33.
DEFAULT_PAD: tuple[float, float, float, float] = (0.15, 0.0, -0.05, -0.085)

BoxLike = Union[Box, Sequence[float]]


# what to do where no face is found: the detector needs the face visible, roughly frontal, and not too small (it finds
# faces down to about a twentieth of the picture's width: a small face in a wide shot is found once cropped round it)
NO_FACE_ADVICE = ("the face must be visible, roughly frontal and not too small in the picture (at least about a "
                  "twentieth of its width: crop a wide shot round the face)")


def _as_box(b) -> Box:
    return b if isinstance(b, Box) else Box.from_array(b)


def _matches(prev: Box, cand: Box, frames_since: int) -> float:
    """Score (> 0) that ``cand`` is the same face as ``prev`` seen ``frames_since`` frames ago; 0 = not the same."""
    iou = prev.iou(cand)
    if iou >= 0.3:
        return 1.0 + iou
    scale = max(prev.width, prev.height, 1.0)
    ratio = max(cand.width, cand.height, 1.0) / scale
    if not 0.6 <= ratio <= 1.6:
        return 0.0
    (px, py), (cx, cy) = prev.center, cand.center
    dist = math.hypot(px - cx, py - cy) / scale
    # up to 0.75 face sizes per frame, a little more after a miss, never a full face size (a neighbour's place)
    allowed = min(0.75 + 0.05 * max(frames_since - 1, 0), 1.0)
    return 1.0 - dist / allowed if dist < allowed else 0.0


def _plain(b: Box) -> str:
    """A box as ``x1,y1,x2,y2`` with plain numbers (as the user writes it)."""
    return ",".join(f"{float(v):g}" for v in b.as_array())


def pick_face(dets: Sequence[Box], face_index: Optional[int] = None, box: Optional[BoxLike] = None,
              frame_size: Optional[tuple[int, int]] = None) -> Optional[Box]:
    """Of one frame's detections, the face the rule picks: the one overlapping ``box`` most (intersection over union),
    else the ``face_index``-th counted left to right by box centre x, else the largest (as the frame of
    ``frame_size`` = (width, height) shows it, where given: a head the edge cuts, whose box reaches past it, is
    measured by what is seen of it); None where the frame shows none (fewer than ``face_index`` + 1 faces, or none
    overlapping the box)."""
    if box is not None:
        ub = _as_box(box)
        best = max(dets, key=ub.iou, default=None)
        return best if best is not None and ub.iou(best) > 0 else None
    if not dets:
        return None
    if face_index is None:
        if frame_size is None:
            return max(dets, key=lambda b: b.area)
        return max(dets, key=lambda b: b.clip(*frame_size).area)
    ordered = sorted(dets, key=lambda b: b.center[0])
    return ordered[face_index] if 0 <= face_index < len(ordered) else None


def select_faces(
    detections: Sequence[Sequence[Box]],
    *,
    face_index: Optional[int] = None,
    box: Optional[BoxLike] = None,
    frame_size: Optional[tuple[int, int]] = None,
) -> list[Optional[Box]]:
    """The chosen face's detection per frame (None where it is not found); see the module doc for the rule.

    Raises ``ValueError`` for a bad ``face_index``/``box`` and :class:`LookupError` when the rule finds no face
    (callers turn that into :class:`NoFaceError` with the file name).
    """
    if face_index is not None and box is not None:
        raise ValueError("give face_index or box, not both")
    n = len(detections)
    out: list[Optional[Box]] = [None] * n
    anchor_t, anchor = None, None
    ub = None if box is None else _as_box(box)
    if ub is not None and not (ub.width > 0 and ub.height > 0):
        raise ValueError(f"box must have x2 > x1 and y2 > y1, got {_plain(ub)}")
    most = 0  # the most faces a frame shows
    for t, dets in enumerate(detections):  # the first frame where the rule picks one (with --face N: shows that many)
        most = max(most, len(dets))
        anchor = pick_face(dets, face_index, ub, frame_size)
        if anchor is not None:
            anchor_t = t
            break
    if anchor is None and ub is not None:
        raise LookupError(f"no detected face overlaps the box {_plain(ub)} (--face-box X1,Y1,X2,Y2 in pixels)")
    if anchor is None and face_index is not None and most:
        raise LookupError(f"face_index {face_index} asked for (--face {face_index}), but no frame shows more than "
                          f"{most} face(s): use 0..{most - 1} (counted left to right)")
    if anchor is None:
        raise LookupError("no face detected in any frame")

    out[anchor_t] = anchor
    prev, prev_t = anchor, anchor_t
    for t in range(anchor_t + 1, n):
        scored = [(_matches(prev, c, t - prev_t), c) for c in detections[t]]
        scored = [sc for sc in scored if sc[0] > 0]
        if scored:
            out[t] = max(scored, key=lambda sc: sc[0])[1]
            prev, prev_t = out[t], t
    return out


def fill_gaps(boxes: Sequence[Optional[Box]], max_gap: int) -> list[Optional[Box]]:
    """Bridge runs of None no longer than ``max_gap`` frames.

    Inner runs are linearly interpolated between the boxes on either side; a leading/trailing run holds the nearest
    box. Longer runs (and all-None input) stay None, all or nothing.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    out = list(boxes)
    n = len(out)
    known = [t for t, b in enumerate(out) if b is not None]
    if not known:
        return out
    first, last = known[0], known[-1]
    if 0 < first <= max_gap:
        out[:first] = [out[first]] * first
    if 0 < n - 1 - last <= max_gap:
        out[last + 1 :] = [out[last]] * (n - 1 - last)
    for a, b in zip(known, known[1:]):
        gap = b - a - 1
        if 0 < gap <= max_gap:
            ba, bb = out[a].as_array(), out[b].as_array()
            for t in range(a + 1, b):
                w = (t - a) / (b - a)
                out[t] = Box.from_array((1 - w) * ba + w * bb, score=min(out[a].score, out[b].score))
    return out


def track_settings(fps: Optional[float], max_gap: Optional[int], pad: Sequence[float],
                   pad_px: Sequence[float]) -> int:
    """Check a track's padding and return its gap limit: ``max_gap``, or half a second of frames at ``fps``."""
    if len(pad) != 4 or len(pad_px) != 4:
        raise ValueError("pad and pad_px are (top, bottom, left, right)")
    if max_gap is None:
        return max(1, int(round(0.5 * (fps if fps and fps > 0 else 25.0))))
    return int(max_gap)


def smooth_boxes(boxes: Sequence[Optional[Box]], window: int = 5) -> list[Optional[Box]]:
    """Centred moving average of box corners over ``window`` frames (odd; 1 = off), within each run of boxes.

    Near the ends of a run the window shrinks symmetrically (radius = distance to the run's end), so there is no
    lag or lead anywhere; None frames stay None and are never averaged across. Floats, no rounding.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 1, got {window}")
    r = window // 2
    out = list(boxes)
    n = len(out)
    t = 0
    while t < n:
        if out[t] is None:
            t += 1
            continue
        s = t
        while t < n and boxes[t] is not None:
            t += 1
        seg = np.stack([boxes[i].as_array() for i in range(s, t)])  # (L, 4)
        csum = np.concatenate([np.zeros((1, 4)), np.cumsum(seg, axis=0)])
        for i in range(len(seg)):
            k = min(r, i, len(seg) - 1 - i)
            mean = (csum[i + k + 1] - csum[i - k]) / (2 * k + 1)
            out[s + i] = Box.from_array(mean, score=boxes[s + i].score)
    return out


@dataclass
class FaceTrack:
    """The face followed through a video.

    ``boxes[t]``: the region to crop in frame t (None = leave the frame unchanged). With ``frame_size`` given these
    are crop boxes (:func:`crop_box` of the smoothed detector box with ``pad``/``pad_px``; one may reach past the
    frame's edge where the edge cuts the face);
    without it they are the smoothed detector boxes themselves. ``face_boxes``: the smoothed detector boxes;
    ``raw``: the chosen detections before gap filling and smoothing; ``best_index``: the frame whose own detection
    scored highest (a good reference face).
    """

    boxes: list[Optional[Box]]
    face_boxes: list[Optional[Box]]
    raw: list[Optional[Box]]
    best_index: int
    max_gap: int
    window: int

    @classmethod
    def from_detections(
        cls,
        detections: Sequence[Sequence[Box]],
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
    ) -> "FaceTrack":
        """Choose, bridge (gaps up to ``max_gap`` frames, default half a second at ``fps``), smooth and crop.

        ``detections[t]``: the faces found in frame t. ``frame_size`` = (width, height). Raises
        :class:`NoFaceError` naming ``source`` when no frame has the chosen face.
        """
        max_gap = track_settings(fps, max_gap, pad, pad_px)
        try:
            raw = select_faces(detections, face_index=face_index, box=box, frame_size=frame_size)
        except LookupError as e:
            if face_index is None and box is None:
                raise NoFaceError(f"no face found in {source} ({len(detections)} frame(s) searched); "
                                  f"{NO_FACE_ADVICE}") from None
            raise NoFaceError(f"no face found in {source}: {e} ({len(detections)} frame(s) searched)") from None
        face_boxes = smooth_boxes(fill_gaps(raw, max_gap), window)
        if frame_size is None:
            boxes = list(face_boxes)
        else:
            fw, fh = (int(v) for v in frame_size)
            boxes = [None if b is None else _crop_or_none(b, fw, fh, pad, pad_px) for b in face_boxes]
        best = max((t for t, b in enumerate(raw) if b is not None), key=lambda t: (raw[t].score, -t))
        return cls(boxes=boxes, face_boxes=face_boxes, raw=raw, best_index=best, max_gap=max_gap, window=window)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, t: int) -> Optional[Box]:
        return self.boxes[t]

    @property
    def n_found(self) -> int:
        """Frames that have a box after gap filling."""
        return sum(b is not None for b in self.boxes)


def _crop_or_none(b: Box, fw: int, fh: int, pad, pad_px) -> Optional[Box]:
    try:
        return crop_box(b, fw, fh, pad, pad_px)
    except ValueError:  # the face left the frame: nothing to crop
        return None


def track_faces(detections: Sequence[Sequence[Box]], fps: Optional[float] = 25.0, **kw) -> FaceTrack:
    """Same as :meth:`FaceTrack.from_detections`."""
    return FaceTrack.from_detections(detections, fps, **kw)


def crop_box(
    box: BoxLike,
    frame_w: int,
    frame_h: int,
    pad: Sequence[float] = DEFAULT_PAD,
    pad_px: Sequence[float] = (0, 0, 0, 0),
) -> Box:
    """The crop to feed the model for a detector ``box``.

    ``pad`` = (top, bottom, left, right) as fractions of the box height (top, bottom) and width (left, right),
    ``pad_px`` the same in pixels, added after; positive grows the box outward. The default ``pad`` turns a mediapipe
    box into an S3FD-like one (the training crops, see :data:`DEFAULT_PAD`); the official inference adds
    ``pad_px=(0, 10, 0, 0)`` on top of that, which training never saw.

    The box is not clipped to the frame: where the frame's edge cuts the face, it reaches past the edge, so the face
    keeps its proportions in the crop (``generator_io.face_crop`` fills the part outside with the edge's pixels,
    paste-back writes only the part inside; the official code clipped it, and a face cut by the edge was squeezed into
    the square, its mouth out of place). Raises ``ValueError`` where less than 2 pixels of it across or down lie
    inside the frame.
    """
    b = _as_box(box)
    if len(pad) != 4 or len(pad_px) != 4:
        raise ValueError("pad and pad_px are (top, bottom, left, right)")
    w, h = b.width, b.height
    t, bo, le, ri = (float(v) for v in pad)
    tp, bp, lp, rp = (float(v) for v in pad_px)
    out = Box(b.x1 - le * w - lp, b.y1 - t * h - tp, b.x2 + ri * w + rp, b.y2 + bo * h + bp, b.score)
    inside = out.clip(frame_w, frame_h)
    if inside.width < 2 or inside.height < 2:
        raise ValueError(f"crop box {tuple(out.as_array())} lies outside the {frame_w}x{frame_h} frame")
    return out


def pixel_extent(box: BoxLike) -> tuple[int, int, int, int]:
    """Integer ``(x1, y1, x2, y2)`` (x2/y2 exclusive) of a float box, rounded to the nearest pixel edge, not clipped:
    the region a face crop is made from (``generator_io.face_crop``), which may reach past the frame's edges. Inside
    the frame it is :func:`pixel_region`."""
    b = _as_box(box)
    x1, y1 = int(math.floor(b.x1 + 0.5)), int(math.floor(b.y1 + 0.5))
    return x1, y1, max(int(math.floor(b.x2 + 0.5)), x1 + 1), max(int(math.floor(b.y2 + 0.5)), y1 + 1)


def pixel_region(box: BoxLike, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
    """Integer ``(x1, y1, x2, y2)`` (x2/y2 exclusive) of a float box, rounded to the nearest pixel edge and clipped:
    the part of :func:`pixel_extent` inside the frame.

    Index the frame with ``frame[y1:y2, x1:x2]``; paste-back writes only there, so crop and paste always agree.
    """
    b = _as_box(box)
    x1 = min(max(int(math.floor(b.x1 + 0.5)), 0), frame_w - 1)
    y1 = min(max(int(math.floor(b.y1 + 0.5)), 0), frame_h - 1)
    x2 = min(max(int(math.floor(b.x2 + 0.5)), x1 + 1), frame_w)
    y2 = min(max(int(math.floor(b.y2 + 0.5)), y1 + 1), frame_h)
    return x1, y1, x2, y2
