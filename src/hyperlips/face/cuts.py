"""Where a video cuts from one shot to another, from the frames alone, as they arrive.

An edit joins shots: another camera, another person, a cutaway with no face. The face track must not follow a face
across a cut (the next shot's face at about the same place may be another person), nor bridge, smooth or blend
across it. A cut is a frame that differs from the one before it far more than the frames before it moved: the mean
absolute difference of two 64x36 colour thumbnails (grey levels) above ``LEVEL`` and above ``RATIO`` times the
largest of the few differences before it (so steady fast motion, a pan or a shaking camera, is no cut, while a cut
after it still is). A fade is no cut (each step is small); a flash is two (into it and out of it).

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
    """(H, W, 3) uint8 frame -> (36, 64, 3) float32: what cuts are judged on."""
    import cv2

    return cv2.resize(image, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)


class CutFinder:
    """Feed frames in order to :meth:`is_cut`; it says whether each one begins a new shot (never the first)."""

    def __init__(self) -> None:
        self._prev: Optional[np.ndarray] = None
        self._recent: deque = deque(maxlen=HISTORY)

    def is_cut(self, image: np.ndarray) -> bool:
        small = thumbnail(image)
        prev, self._prev = self._prev, small
        if prev is None or prev.shape != small.shape:
            return False
        diff = float(np.abs(small - prev).mean())
        known = len(self._recent) >= 2  # the motion before it is known (a clip's second frame is never a cut)
        before = max(self._recent, default=0.0)
        self._recent.append(diff)  # a cut's own difference stays: a frame just after it must outdo it to be one
        return known and diff > LEVEL and diff > RATIO * before


FLAT_STD = 4.0  # grey levels: a face region whose spread is below this shows no face (black, blank, a fade's end)


def is_flat(image: np.ndarray, box) -> bool:
    """Whether the pixel region of crop ``box`` in ``image`` is nearly uniform (a face never is): a box the track
    held over frames that faded to black, say, where a pasted mouth would float on nothing."""
    from hyperlips.face.track import pixel_region

    x1, y1, x2, y2 = pixel_region(box, image.shape[1], image.shape[0])
    region = image[y1:y2:4, x1:x2:4]
    return region.size == 0 or float(region.std()) < FLAT_STD
