"""Single-frame samples for HyperLips-Lite, with every crop decoded once and kept in memory.

Lite learns from frames, not windows: the masked frame, a reference frame of the same clip, the mel window
centred on the frame (``media.audio.centred_mel_windows``) and the frame's mouth shape
(``face.mouth_shape.mouth_shapes``, the target of the audio encoder and the conditioning of the renderer).
One person's footage (a few thousand 128 px crops, ~50 KB each) fits in memory, so a training step never
touches the disk; decoding happens once, when the dataset is built.

Mouth shapes are measured against each clip's own average mouth over its training frames, so shapes mean the
same thing for every person; a clip that only appears in validation uses its own average.

Sampling is a pure function of ``(seed, sample number)`` (as in :mod:`.datasets`), so runs resume exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import AudioConfig
from ..errors import UserError
from .datasets import BASE_SIZE, Clip, _Base, _rng

MIN_REFERENCE_GAP = 25  # frames between a training target and its reference, when the clip allows it
SOURCE_GAP = (4, 12)  # frames between a target and the frame whose upper half it is shown with (``source_shift``)


@dataclass
class _ClipFrames:
    """The usable frames of one clip range, decoded."""

    clip: Clip
    index: np.ndarray  # (n,) frame numbers in the clip
    faces: np.ndarray  # (n, 128, 128, 3) uint8 BGR
    shapes: np.ndarray  # (n, N_SHAPE) float32 (zeros where has_shape is False)
    has_shape: np.ndarray  # (n,) bool
    lip_boxes: np.ndarray  # (n, 4) float32
    opening: np.ndarray  # (n,) mouth opening of the real frame (NaN without landmarks)
    points: np.ndarray  # (n, 53, 2) float32 lip and jaw points (mouth_shape.MOVING) in crop units 0..1 (NaN without)


def shape_reference(clip: Clip, frames: tuple[int, int]):
    """(stable-point template, mean aligned mouth points) of a clip over a frame range: what shapes are measured against."""
    from ..face.mouth_shape import aligned_moving_points, stable_template

    lo, hi = frames
    lm = np.asarray(clip.landmarks[lo:hi], dtype=np.float64)
    ok = clip.with_landmarks(lo, hi)
    if ok.sum() < 2:
        raise UserError(f"{clip.dir}: fewer than 2 frames with face landmarks in frames {lo}..{hi}; "
                        "the clip cannot train HyperLips-Lite")
    tpl = stable_template(lm[ok])
    pts = aligned_moving_points(lm[ok], tpl)
    return tpl, pts.mean(axis=0)


def _load(clip: Clip, frames: tuple[int, int], reference) -> _ClipFrames:
    from ..face.mouth_shape import MOVING, SCALE, aligned_moving_points, mouth_opening

    lo, hi = frames
    idx = np.arange(lo, hi)
    idx = idx[clip.valid[lo:hi]]
    tpl, mean = reference
    lm = np.asarray(clip.landmarks[idx], dtype=np.float64) if len(idx) else np.zeros((0, 478, 3))
    pts = aligned_moving_points(lm, tpl) if len(idx) else np.zeros((0, 53, 2))
    shapes = ((pts - mean) * SCALE).reshape(len(idx), len(MOVING) * 2)
    has = np.isfinite(shapes).all(axis=1)
    faces = clip.stack("face128").read_many(idx) if len(idx) else np.zeros((0, BASE_SIZE, BASE_SIZE, 3), np.uint8)
    return _ClipFrames(clip, idx, faces, np.where(has[:, None], shapes, 0).astype(np.float32), has,
                       clip.lip_boxes(idx).astype(np.float32),
                       mouth_opening(lm).astype(np.float32) if len(idx) else np.zeros(0, np.float32),
                       lm[:, list(MOVING), :2].astype(np.float32))


class FrameDataset(_Base):
    """HyperLips-Lite samples from clip ranges (``Clip.frame_range``).

    Training (``ordered=False``): sample ``g`` is a random frame with landmarks and a random reference frame of the
    same clip range at least :data:`MIN_REFERENCE_GAP` frames away. Validation (``ordered=True``): item ``g`` is the
    ``g``-th frame in order (clip by clip) and the reference is the clip's fixed ``references[clip id]`` frame
    (the inference rule: one reference for every frame), taken from the training part.

    Item: ``target`` (3, 128, 128) uint8 BGR, ``reference`` (3, 128, 128) uint8, ``mel`` (1, 80, steps) float32,
    ``shape`` (N_SHAPE,) float32, ``has_shape`` () bool, ``lip_box`` (4,) float32, ``opening`` () float32,
    ``points`` (53, 2) float32 (the lip and jaw points in crop units; NaN without landmarks), ``frame`` () int64 (frame number in its clip), ``clip`` () int64 (clip position in the list).

    With ``other_moment`` (validation only) an item also holds ``other_source`` (3, 128, 128) uint8: the frame of
    the same clip range half its length away (wrapping round), for a rendering from another moment's upper half, as
    `sync` and `eval` render (the frame spoken with other words).

    With ``source_shift`` > 0 (training only) an item also holds ``source`` (3, 128, 128) uint8, the frame whose upper
    half the renderer is shown, and ``shifted`` () bool: with that probability a frame of the same clip range
    :data:`SOURCE_GAP` frames away (the face barely moves in that time, the mouth does), else the target itself.
    The upper face moves a little with speech (cheeks, nostrils, chin line): shown it from the target's own
    frame, a renderer learns to read the mouth from it, which `sync` never gives it (the video's frame was spoken
    with other words).

    With ``pairs`` (training only) an item also holds the frame after its target, for a loss on the change from
    frame to frame: ``next_target``, ``next_mel``, ``next_shape``, ``next_has_shape``, ``next_lip_box`` as above, and
    ``has_next`` () bool, False where the next frame is not in the clip range or has no face (the target's own
    fields are repeated then); with ``source_shift`` also ``next_source`` and ``next_shifted``: the frame after
    the source, so a pair keeps its shift (the next target itself where the source has no next frame).
    """

    stream = 4

    def __init__(self, clips: Sequence[Clip], steps: int, *, seed: int = 0, ordered: bool = False,
                 shape_refs: dict[str, Any] | None = None, references: dict[str, np.ndarray] | None = None,
                 mel_norm: str | None = "utterance", mel_smooth: int = 0, length: int = 1 << 30,
                 cfg: AudioConfig = AudioConfig(), pairs: bool = False, phones: bool = False,
                 source_shift: float = 0.0, other_moment: bool = False):
        super().__init__(clips, seed, length)
        if pairs and ordered:
            raise ValueError("FrameDataset: pairs are for training (ordered=False)")
        if source_shift and ordered:
            raise ValueError("FrameDataset: source_shift is for training (ordered=False)")
        if other_moment and not ordered:
            raise ValueError("FrameDataset: other_moment is for validation (ordered=True)")
        if not 0.0 <= source_shift <= 1.0:
            raise UserError(f"source_shift must be between 0 and 1, not {source_shift}")
        self.pairs = bool(pairs)
        self.source_shift = float(source_shift)
        self.other_moment = bool(other_moment)
        self.steps = int(steps)
        self.mel_norm = mel_norm
        self.mel_smooth = int(mel_smooth)
        self._mels: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.phones = bool(phones)  # the phones' one-hot rows below the mel (Clip.phones; media.phones)
        if self.phones:
            import dataclasses

            from ..media.phones import N_PHONES

            cfg = dataclasses.replace(cfg, n_mels=cfg.n_mels + N_PHONES)
        self.cfg = cfg
        self.ordered = ordered
        refs = dict(shape_refs or {})
        self.parts: list[_ClipFrames] = []
        for c in self.clips:
            if c.id not in refs:
                refs[c.id] = shape_reference(c, c.frame_range)
            self.parts.append(_load(c, c.frame_range, refs[c.id]))
        self.shape_refs = refs
        counts = np.array([len(p.index) if ordered else int(p.has_shape.sum()) for p in self.parts], np.int64)
        self.cum = np.concatenate([[0], np.cumsum(counts)])
        if self.cum[-1] == 0:
            raise UserError("no usable frames (a tracked face with landmarks) in: "
                            + ", ".join(c.id for c in self.clips[:3]))
        if ordered:
            self.length = int(self.cum[-1])
            self.references = {}
            for c in self.clips:
                ref = (references or {}).get(c.id)
                if ref is None:
                    raise UserError(f"validation clip {c.id} needs a reference frame from its training part")
                self.references[c.id] = np.asarray(ref, np.uint8)
        self._usable = [np.flatnonzero(p.has_shape) for p in self.parts]

    def __len__(self) -> int:
        return self.length

    def clip_mel(self, ci: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(the clip's whole mel as the network takes it, per-row silence value or None) of clip ``ci``; with
        ``phones``, the phones' one-hot rows below the mel."""
        from ..media.audio import normalise_utterance
        from ..media.phones import below_mel

        if ci not in self._mels:
            clip = self.parts[ci].clip
            mel = np.asarray(clip.mel, dtype=np.float32)
            utterance = self.mel_norm == "utterance"
            if utterance:
                mel = normalise_utterance(mel, self.mel_smooth)
            if self.phones:
                mel = below_mel(mel, clip.phones, self.cfg.mel_fps)
            self._mels[ci] = (mel, mel.min(axis=1) if utterance and mel.shape[1] else None)
        return self._mels[ci]

    def __getstate__(self):
        return {**self.__dict__, "_mels": {}}

    def _mel(self, ci: int, k: int) -> np.ndarray:
        from ..media.audio import centred_mel_windows

        part = self.parts[ci]
        mel, fill = self.clip_mel(ci)
        return centred_mel_windows(mel, [part.clip.time_of(int(part.index[k]))], self.steps, self.cfg, fill)[0]

    def __getitem__(self, g: int) -> dict[str, Any]:
        g = int(g)
        if self.ordered:
            ci = int(np.searchsorted(self.cum, g % self.length, side="right") - 1)
            part = self.parts[ci]
            k = g % self.length - int(self.cum[ci])
            ref = self.references[part.clip.id]
        else:
            rng = _rng(self.seed, self.stream, g)
            pick = int(rng.integers(int(self.cum[-1])))
            ci = int(np.searchsorted(self.cum, pick, side="right") - 1)
            part = self.parts[ci]
            k = int(self._usable[ci][pick - int(self.cum[ci])])
            far = np.flatnonzero(np.abs(part.index - part.index[k]) >= MIN_REFERENCE_GAP)
            if len(far) == 0:
                far = np.flatnonzero(np.arange(len(part.index)) != k) if len(part.index) > 1 else np.array([k])
            ref = part.faces[int(far[int(rng.integers(len(far)))])]
        source = k
        if self.source_shift > 0 and rng.random() < self.source_shift:  # training only (checked above)
            gap = np.abs(part.index - part.index[k])
            near = np.flatnonzero((gap >= SOURCE_GAP[0]) & (gap <= SOURCE_GAP[1]))
            if len(near):
                source = int(near[int(rng.integers(len(near)))])
        item = {
            "target": np.ascontiguousarray(part.faces[k].transpose(2, 0, 1)),
            "reference": np.ascontiguousarray(ref.transpose(2, 0, 1)),
            "mel": self._mel(ci, k),
            "shape": part.shapes[k],
            "has_shape": np.bool_(part.has_shape[k]),
            "lip_box": part.lip_boxes[k],
            "opening": np.float32(part.opening[k]),
            "points": part.points[k],
            "frame": np.int64(part.index[k]),
            "clip": np.int64(ci),
        }
        if self.other_moment:
            n = len(part.index)
            item["other_source"] = np.ascontiguousarray(part.faces[(k + n // 2) % n].transpose(2, 0, 1))
        if self.source_shift > 0:
            item["source"] = np.ascontiguousarray(part.faces[source].transpose(2, 0, 1))
            item["shifted"] = np.bool_(source != k)
        if self.pairs:
            item.update(self._next(ci, k, item))
            if "source" in item:
                j = source + 1
                nxt = j < len(part.index) and int(part.index[j]) == int(part.index[source]) + 1
                shifted = bool(nxt and source != k)
                item["next_source"] = (np.ascontiguousarray(part.faces[j].transpose(2, 0, 1)) if shifted
                                       else item["next_target"])
                item["next_shifted"] = np.bool_(shifted)
        return item

    def _next(self, ci: int, k: int, item: dict[str, Any]) -> dict[str, Any]:
        """The fields of the frame after item ``k`` of clip ``ci`` (its own fields again where there is none)."""
        part = self.parts[ci]
        j = k + 1
        ok = j < len(part.index) and int(part.index[j]) == int(part.index[k]) + 1 and bool(part.has_shape[j])
        if not ok:
            return {"next_target": item["target"], "next_mel": item["mel"], "next_shape": item["shape"],
                    "next_has_shape": item["has_shape"], "next_lip_box": item["lip_box"], "has_next": np.bool_(False)}
        return {"next_target": np.ascontiguousarray(part.faces[j].transpose(2, 0, 1)), "next_mel": self._mel(ci, j),
                "next_shape": part.shapes[j], "next_has_shape": np.bool_(True), "next_lip_box": part.lip_boxes[j],
                "has_next": np.bool_(True)}


def reference_frame(clip: Clip, frames: tuple[int, int]) -> np.ndarray:
    """The reference crop for a clip's validation: its best-detected frame if inside ``frames`` (the training
    part), else the training part's middle usable frame. (128, 128, 3) uint8."""
    lo, hi = frames
    best = clip.meta.get("best_index")
    if not (isinstance(best, int) and lo <= best < hi and clip.valid[best]):
        usable = np.flatnonzero(clip.valid[lo:hi]) + lo
        if len(usable) == 0:
            raise UserError(f"{clip.dir}: no frame with a face in frames {lo}..{hi} to use as the reference")
        best = int(usable[len(usable) // 2])
    return clip.stack("face128").read(int(best))
