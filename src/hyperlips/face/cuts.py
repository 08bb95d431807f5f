"""Where a video cuts from one shot to another, from the frames alone, as they arrive.

An edit joins shots: another camera, another person, a cutaway with no face. The face track must not follow a face
across a cut (the next shot's face at about the same place may be another person), nor bridge, smooth or blend
across it. A cut is a frame that differs from the one before it far more than the frames before it moved: the mean
absolute difference of two 64x36 colour thumbnails (grey levels) above ``LEVEL`` and above ``RATIO`` times the
largest of the few differences since the last cut before it (so steady fast motion, a pan or a shaking camera, is no
cut, while a cut after it still is). A fade is no cut (each step is small), nor is a dissolve (a mix of two shots
over several frames: the face followed goes on into the next shot); a flash frame is two (into it and out of it).
A whip pan that hides a cut in its blur is not recognised as one.

Measured (64x36 thumbnails): hard cuts between the shots of edits made from the shared clips 28-81; within the 176
shared clips, frame to frame 0-15 where the camera is still, up to 32 in a clip whose camera moves throughout (at
most 1.3 times the frames before it); their largest single jumps, a jump cut of one presenter (19.5, after 0.0-0.4)
and a damaged start of a GRID clip (34.5, after about 1), are cuts.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np

LEVEL = 15.0  # grey levels (mean absolute difference of the thumbnails) a cut must exceed
RATIO = 2.5  # ... and this many times the largest difference among the frames before it
HISTORY = 4  # frames before it whose differences count
THUMB = (64, 36)  # thumbnail size (width, height)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frame -> (36, 64, 3) float32: what cuts are judged on (the mean of 5x5 samples of a 320x180
    grid per pixel: 0.16 ms for a 720p frame, against 0.66 averaging every pixel)."""
    import cv2

    grid = cv2.resize(image, (5 * THUMB[0], 5 * THUMB[1]), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(grid, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)


class CutFinder:
    """Feed frames in order to :meth:`is_cut`; it says whether each one begins a new shot (never the first two).

    The motion a cut must outdo is that of the frames since the last cut (a cut's own jump is not motion), so a
    shot of two frames ends in a cut of its own. The frame right after a cut is one only where it returns to the
    picture before the cut (a flash frame, or a one-frame insert: it is a shot of its own); otherwise it starts the
    new shot's motion."""

    def __init__(self) -> None:
        self._prev: Optional[np.ndarray] = None
        self._before_cut: Optional[np.ndarray] = None  # the frame before the last cut, for the frame right after it
        self._recent: deque = deque(maxlen=HISTORY)  # differences of the frames since the last cut

    def is_cut(self, image: np.ndarray) -> bool:
        small = thumbnail(image)
        prev, self._prev = self._prev, small
        if prev is None or prev.shape != small.shape:
            self._recent.clear()
            return False
        diff = float(np.abs(small - prev).mean())
        back, self._before_cut = self._before_cut, None
        if not self._recent:  # the clip's second frame, or the frame right after a cut
            if back is not None and diff > LEVEL and float(np.abs(small - back).mean()) <= LEVEL:
                self._before_cut = prev  # back to the picture before the cut: the frame between was a shot
                return True
            self._recent.append(diff)
            return False
        if diff > LEVEL and diff > RATIO * max(self._recent):
            self._recent.clear()
            self._before_cut = prev
            return True
        self._recent.append(diff)
        return False


FLAT_STD = 4.0  # grey levels: a face region whose spread is below this shows no face (black, blank, a fade's end)


def is_flat(image: np.ndarray, box) -> bool:
    """Whether the pixel region of crop ``box`` in ``image`` is nearly uniform (a face never is): a box the track
    held over frames that faded to black, say, where a pasted mouth would float on nothing."""
    from hyperlips.face.track import pixel_region

    x1, y1, x2, y2 = pixel_region(box, image.shape[1], image.shape[0])
    region = image[y1:y2:4, x1:x2:4]
    return region.size == 0 or float(region.std()) < FLAT_STD
