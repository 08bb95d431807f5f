"""Which mouth a lip-synced frame shows, and the step that makes a warped one.

``render`` shows the network's face; ``warp`` (HyperLips-Lite) moves the frame's own lips and jaw to the mouth shape
the network's audio encoder reads (``face.mouth_warp``), the inside of a new opening drawn dark; ``hybrid``
shows the network's face with the fine detail of that warped frame. ``auto`` picks one (:func:`choose_mouth`).
:class:`MouthStep` does the warp of one clip's frames, in order, in the pipeline's network stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

MOUTH_MODES = ("render", "warp", "hybrid")  # and "auto", which picks one of them
MOUTH_OPTIONS = ("auto",) + MOUTH_MODES  # what --mouth (and a server job's mouth) takes
WARP_GAIN = 1.5  # mouth="warp": the audio encoder's shapes times this (they spread less than real mouths)
WARP_MESH_SIZE = 256  # the face region is looked at by FaceMesh at this size for mouth="warp"


def is_generic_starter(checkpoint: str | os.PathLike | None) -> bool:
    """Whether ``checkpoint`` holds a generic starter: the file shipped in the package, a copy of it, or an earlier
    version kept (a HyperLips-Lite safetensors file whose metadata carries a shipped card,
    ``models.shipped.write_shipped``: the shipped file carries one too). The models ``finetune`` and ``train`` make
    carry none."""
    if checkpoint is None:
        return False
    from .errors import CheckpointError
    from .models.metadata import read_metadata

    path = Path(checkpoint)
    if not path.is_file():  # (its content decides, not its name: a copy named .SAFETENSORS, or with no suffix)
        return False
    try:
        meta = read_metadata(path)
    except CheckpointError:
        return False
    card = meta.get("card")
    return meta.get("name") == "hyperlips-lite" and isinstance(card, dict) and "version" in card


def choose_mouth(mouth: str, network, weights: str, *, fixed: bool, checkpoint=None) -> str:
    """The mouth ``network`` shows for the option ``mouth``: ``auto`` is ``warp`` with a generic starter (the
    shipped one or a copy: :func:`is_generic_starter`; a generic renderer draws a face it never saw soft),
    ``hybrid`` with other HyperLips-Lite weights (a person model draws its person's mouth closer to the speech than
    the warp places it) and ``render`` for HyperLips-Base or ``fixed`` networks (random weights, or one given
    directly). A :class:`UserError` for an unknown mode, or a warp asked of a network without mouth shapes
    (``weights`` names it)."""
    shapes = hasattr(network, "predict_shape")
    if mouth == "auto":
        if not shapes or fixed:
            mouth = "render"
        else:
            mouth = "warp" if is_generic_starter(checkpoint) else "hybrid"
    if mouth not in MOUTH_MODES:
        raise UserError(f"--mouth (mouth) must be one of {', '.join(MOUTH_OPTIONS)} (got {mouth!r})")
    if mouth != "render" and not shapes:
        raise UserError(f"--mouth {mouth} moves the frame's mouth to the shape a HyperLips-Lite reads from the "
                        f"speech; {weights} has no mouth shapes (use --mouth render)")
    return mouth


class MouthStep:
    """The warped mouth of one clip's frames (``mode`` ``warp`` or ``hybrid``), called once per frame in order: it
    learns the clip's average mouth and steadies the head's pose as frames pass (``face.mouth_warp.MouthWarp``), and
    looks at each face region with a FaceMesh tracker of its own (the HR decoder's sees generated faces). ``gain``:
    the audio encoder's shapes are taken this many times to place the moved points (``WARP_GAIN`` for the warp; for
    the hybrid the network's own ``shape_gain``, so that the detail lands on the mouth the network draws)."""

    def __init__(self, mode: str, fps: float = 25.0, gain: float = WARP_GAIN) -> None:
        if mode not in ("warp", "hybrid"):
            raise ValueError(f"MouthStep: mode must be warp or hybrid, got {mode!r}")
        self.mode, self.fps = mode, float(fps)
        self.gain = float(gain)
        self._warp = None  # made at the first frame
        self._mesh = None
        self.looked = self.missed = 0  # face regions looked at, and those FaceMesh found no face in (shown rendered)

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def new_shot(self) -> None:
        """The clip cut to another shot: the average mouth, the pose and the face tracked start afresh."""
        self._warp = None
        self.close()

    def __call__(self, image: np.ndarray, box, face: np.ndarray, shape: np.ndarray, close: float = 0.0) -> np.ndarray:
        """The face region of ``image`` (H, W, 3) uint8 BGR at the crop ``box``, at its own resolution (a square of
        the region's larger side), with the lips and jaw moved to ``shape`` (the audio encoder's, before the
        network's gain) times ``gain`` and the inside of the new opening drawn (``warp``), or the network's face
        enlarged with the fine detail of that frame warped so, its new opening filled from the network's face
        (``hybrid``); the network's ``face`` as it is when FaceMesh finds no face in the region. ``close``: how far
        the lips are then brought together (``face.mouth_warp.close_lips``; 1 on a /p b m/ of given phoneme timings;
        the hybrid's network draws them closed when its shape was closed too, :meth:`closed_shapes`)."""
        return self.finish(self.look(image, box), face, shape, close)

    def look(self, image: np.ndarray, box, observe: bool = False) -> "Look | None":
        """FaceMesh on the face region of ``image`` at ``box``: the region at its own resolution and the points
        in its pixels, or None where no face is found. ``observe``: the frame is counted in the clip's average mouth
        now (before :meth:`closed_shapes`), not when it is warped."""
        from .face.blend import first_row_read
        from .face.mouth_warp import MouthWarp
        from .face.track import pixel_extent
        from .generator_io import BASE_SIZE, face_crop

        x1, y1, x2, y2 = pixel_extent(box)
        side = max(x2 - x1, y2 - y1, BASE_SIZE)
        if self._warp is None:
            from .face.landmarks import FaceMesh

            self._warp = MouthWarp(fps=self.fps)
            self._mesh = FaceMesh(static=False)
        lm = self._mesh.landmarks(face_crop(image, box, WARP_MESH_SIZE))
        self.looked += 1
        if lm is None:
            self.missed += 1
            self._warp.lost()
            return None
        points = lm[:, :2] * (side / WARP_MESH_SIZE)
        if observe:
            self._warp.observe(points)
        from .face.mouth_inside import frame_black

        return Look(face_crop(image, box, side), points, first_row_read(side), observe, frame_black(image))

    def closed_shapes(self, shapes: np.ndarray, close: np.ndarray, gain: float) -> np.ndarray:
        """The audio encoder's ``shapes`` (N, n_shape) changed so that, times the network's ``gain``, they put the
        lips of the clip's average mouth ``close`` (N,) of the way together (``face.mouth_warp.close_lips`` in the
        aligned space the shapes are measured in): what the hybrid's network draws on a given /p b m/. As they are
        before any frame of the clip was counted (:meth:`look` with ``observe``)."""
        from .face import mouth_shape as ms
        from .face.mouth_warp import close_lips

        out = np.array(shapes, np.float64)
        if self._warp is None or self._warp.template is None or gain == 0:
            return out.astype(np.asarray(shapes).dtype)
        mean = self._warp.mean
        for i, c in enumerate(np.asarray(close, np.float64)):
            if c > 0:
                points = mean + gain * out[i].reshape(len(ms.MOVING), 2) / ms.SCALE
                out[i] = ((close_lips(points, c) - mean) * ms.SCALE / gain).reshape(-1)
        return out.astype(np.asarray(shapes).dtype)

    def finish(self, look: "Look | None", face: np.ndarray, shape: np.ndarray, close: float = 0.0) -> np.ndarray:
        """:meth:`__call__` for a frame :meth:`look` has looked at."""
        import cv2

        from .face.mouth_warp import with_detail

        if look is None:
            return face
        args = dict(first_row=look.top, close=close, observed=look.observed, black=look.black)
        if self.mode == "warp":
            return self._warp.apply(look.region, look.points, shape * self.gain, **args)
        side = look.region.shape[0]
        rendered = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        return with_detail(rendered, self._warp.apply(look.region, look.points, shape * self.gain, fill=rendered,
                                                      **args), look.top)


@dataclass
class Look:
    """One frame's face region as :class:`MouthStep` looked at it."""

    region: np.ndarray  # (side, side, 3) uint8 BGR: the face region at its own resolution
    points: np.ndarray  # (468+, 2) FaceMesh's points in its pixels
    top: int  # the first row paste-back reads
    observed: bool  # counted in the clip's average mouth already
    black: np.ndarray | None = None  # the frame's lifted black (``face.mouth_inside.frame_black``; zeros: none)
