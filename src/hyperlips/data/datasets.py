"""The preprocessed dataset on disk, and the training datasets that read it.

Layout written by :mod:`hyperlips.data.preprocess`::

    DST/manifest.json                 every clip: id, speaker, split, frame count, fps (+ the skipped clips)
    DST/clips/<clip id>/meta.json     written last: a clip folder with meta.json is complete
    DST/clips/<clip id>/mel.npy       (80, T) float32 mel spectrogram of the clip's own audio (computed once)
    DST/clips/<clip id>/times.npy     (N,) float64 frame timestamps in seconds (container pts)
    DST/clips/<clip id>/valid.npy     (N,) bool: the frame has a tracked face (crops of other frames are black)
    DST/clips/<clip id>/boxes.npy     (N, 4) float32 crop boxes in frame pixels (NaN where no face)
    DST/clips/<clip id>/landmarks.npy (N, 478, 3) float16 FaceMesh points in crop coordinates / crop size (NaN: none)
    DST/clips/<clip id>/face128.*     128 px face crops (JPEG q95), one per frame, made with pipeline.face_crop
    DST/clips/<clip id>/face256.*     the HR-size crops, when preprocessing was asked for them
    DST/clips/<clip id>/sketch128.*   landmark sketches (PNG, the inference style of face.landmarks.draw_sketch)
    DST/clips/<clip id>/mask128.*     lip masks (PNG, face.landmarks.lip_mask)

Images of one kind are packed per clip in an :class:`ImageStack` (``<name>.bin`` + ``<name>.idx.npy``) rather than
one file per frame, so a dataset has a few files per clip instead of millions.

Sampling is a pure function of ``(seed, sample number)``: item ``g`` of a dataset is always the same sample,
whichever process or worker reads it. Resuming a run exactly therefore only needs the number of samples consumed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from ..config import AudioConfig
from ..errors import UserError, near_name_hint

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLIPS_DIR = "clips"
META = "meta.json"
BASE_SIZE = 128
WINDOW = 5  # frames per training window (generator and sync expert)
# A mouth box (x1, y1, x2, y2 as fractions of the crop) for frames without landmarks: the mean lip box of the
# default crop geometry (face.blend measurements: mouth corners x 0.37/0.71, upper lip y 0.70, lower lip 0.83).
DEFAULT_LIP_BOX = (0.30, 0.64, 0.78, 0.90)


# ---------------------------------------------------------------------------------------------- image stacks
class ImageStack:
    """The encoded images of one clip packed into ``<prefix>.bin``, with byte offsets in ``<prefix>.idx.npy``.

    Opened lazily (memory-mapped), so a stack can be pickled to DataLoader workers by its path alone.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        self._data: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    @staticmethod
    def write(prefix: str | os.PathLike, encoded: Sequence[bytes]) -> None:
        """Write encoded images (PNG/JPEG bytes) as a stack."""
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in encoded])
        with open(f"{prefix}.bin", "wb") as f:
            for b in encoded:
                f.write(b)
        np.save(f"{prefix}.idx.npy", offsets)

    @staticmethod
    def exists(prefix: str | os.PathLike) -> bool:
        return os.path.isfile(f"{prefix}.bin") and os.path.isfile(f"{prefix}.idx.npy")

    def _open(self) -> None:
        offsets = load_array(f"{self.prefix}.idx.npy")
        size = int(offsets[-1]) if len(offsets) else 0
        try:
            self._data = np.memmap(f"{self.prefix}.bin", dtype=np.uint8, mode="r", shape=(size,)) if size else np.zeros(0, np.uint8)
        except (OSError, ValueError) as e:  # missing, or shorter than its index says (a truncated copy)
            raise UserError(f"{self.prefix}.bin is missing or truncated ({' '.join(str(e).split())}); delete its "
                            "clip folder and preprocess again") from None
        self._offsets = offsets

    def __len__(self) -> int:
        if self._offsets is None:
            self._open()
        return len(self._offsets) - 1

    def raw(self, i: int) -> bytes:
        if self._offsets is None:
            self._open()
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return bytes(self._data[a:b])

    def read(self, i: int, color: bool = True) -> np.ndarray:
        """Image ``i``: (H, W, 3) uint8 BGR, or (H, W) uint8 with ``color=False``."""
        if self._offsets is None:
            self._open()
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        img = cv2.imdecode(np.asarray(self._data[a:b]), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise UserError(f"{self.prefix}.bin: image {i} is corrupt; delete the clip folder and preprocess again")
        return img

    def read_many(self, indices: Sequence[int], color: bool = True) -> np.ndarray:
        return np.stack([self.read(int(i), color) for i in indices])

    def __getstate__(self):
        return {"prefix": self.prefix, "_data": None, "_offsets": None}


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def load_array(path: str | os.PathLike, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` for dataset files: a missing or corrupt file is a :class:`UserError` naming it."""
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; delete its clip folder and preprocess again") from None
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path} is corrupt ({' '.join(str(e).split())[:120]}); delete its clip folder and "
                        "preprocess again") from None


# ---------------------------------------------------------------------------------------------- clips and manifest
class Clip:
    """One preprocessed clip. Arrays are loaded on first use; images are read from stacks on demand."""

    def __init__(self, folder: str | os.PathLike, frames: Sequence[int] | None = None):
        self.dir = Path(folder)
        meta_path = self.dir / META
        if not meta_path.is_file():
            raise UserError(f"{self.dir}: not a finished preprocessed clip (no {META}); run hyperlips preprocess again")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        self.id: str = self.meta["id"]
        self.fps: float = float(self.meta["fps"])
        self.n_frames: int = int(self.meta["n_frames"])
        lo, hi = (0, self.n_frames) if frames is None else (int(frames[0]), int(frames[1]))
        self.frame_range = (max(0, lo), min(self.n_frames, hi))

    def __repr__(self) -> str:
        return f"Clip({self.id!r}, frames {self.frame_range[0]}..{self.frame_range[1]} of {self.n_frames})"

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("times", "valid", "mel", "phones", "landmarks", "_stacks"):
            state.pop(k, None)
        return state

    @cached_property
    def times(self) -> np.ndarray:
        return load_array(self.dir / "times.npy")

    @cached_property
    def valid(self) -> np.ndarray:
        return load_array(self.dir / "valid.npy")

    @cached_property
    def mel(self) -> np.ndarray:
        return load_array(self.dir / "mel.npy", mmap_mode="r")

    @cached_property
    def phones(self) -> np.ndarray:
        """The phone of every 10 ms of the clip's speech (``media.phones.read_phones``)."""
        from ..media import phones

        path = self.dir / "phones.npy"
        if not path.is_file():
            need = "" if phones.available() else f"install the phone recogniser ({phones.INSTALL_HINT}), then "
            raise UserError(f"{self.dir}: has no phones (phones.npy; a network that reads phones needs them): {need}"
                            "run `hyperlips preprocess` again on its source (it adds them to finished clips)")
        return load_array(path)

    @cached_property
    def landmarks(self) -> np.ndarray:
        return load_array(self.dir / "landmarks.npy", mmap_mode="r")

    def with_landmarks(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Which frames of ``lo``..``hi`` (default: all) have a face with its landmarks: bool (hi - lo,)."""
        hi = self.n_frames if hi is None else hi
        lm = np.asarray(self.landmarks[lo:hi], dtype=np.float32)
        return np.asarray(self.valid[lo:hi], bool) & np.isfinite(lm).all(axis=(1, 2))

    @cached_property
    def _stacks(self) -> dict[str, ImageStack]:
        return {}

    def stack(self, name: str) -> ImageStack:
        """The image stack ``name`` (face128, face256, sketch128, mask128, ...) of this clip."""
        if name not in self._stacks:
            if not ImageStack.exists(self.dir / name):
                raise UserError(f"{self.dir}: has no {name} images; preprocess with the matching options")
            self._stacks[name] = ImageStack(self.dir / name)
        return self._stacks[name]

    def time_of(self, index: int) -> float:
        """Timestamp of frame ``index``; beyond the clip's ends, extrapolated at the clip's frame rate."""
        n = len(self.times)
        if 0 <= index < n:
            return float(self.times[index])
        if index < 0:
            return float(self.times[0]) + index / self.fps
        return float(self.times[-1]) + (index - n + 1) / self.fps

    def window_starts(self, length: int = WINDOW, audio: str = "generator", cfg: AudioConfig = AudioConfig()) -> np.ndarray:
        """Starts t of windows t..t+length-1 inside the frame range whose frames all have a face and whose mel
        windows (``audio``: "generator" per-frame windows, "sync" the expert's window, "both") lie inside the mel."""
        lo, hi = self.frame_range
        if hi - lo < length:
            return np.zeros(0, np.int64)
        ok = self.valid[lo:hi].astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(ok)])
        starts = np.arange(lo, hi - length + 1)
        full = (csum[starts - lo + length] - csum[starts - lo]) == length
        t_mel = self.mel.shape[1]
        steps = cfg.window_steps
        times = self.times
        if audio in ("generator", "both"):
            first = np.floor((times[starts] + cfg.frame_offset / self.fps) * cfg.mel_fps + 1e-6)
            last = np.floor((times[starts + length - 1] + cfg.frame_offset / self.fps) * cfg.mel_fps + 1e-6)
            full &= (first >= 0) & (last + steps <= t_mel)
        if audio in ("sync", "both"):
            s = np.floor(times[starts] * cfg.mel_fps + 1e-6)
            full &= (s >= 0) & (s + steps <= t_mel)
        return starts[full]

    def lip_boxes(self, indices: Sequence[int]) -> np.ndarray:
        """(len, 4) float32 lip boxes (x1, y1, x2, y2) as fractions of the crop, from the landmarks (x2/y2
        exclusive); :data:`DEFAULT_LIP_BOX` where a frame has no landmarks."""
        from ..face.landmarks import LIP_RING

        out = np.tile(np.asarray(DEFAULT_LIP_BOX, np.float32), (len(indices), 1))
        lm = np.asarray(self.landmarks[np.asarray(indices, dtype=np.int64)], dtype=np.float32)  # (n, 478, 3)
        ring = lm[:, list(LIP_RING), :2]
        good = np.isfinite(ring).all(axis=(1, 2))
        if good.any():
            r = ring[good]
            box = np.concatenate([r.min(axis=1), r.max(axis=1)], axis=1)
            box = np.clip(box, 0.0, 1.0)
            ok = (box[:, 2] - box[:, 0] > 0.02) & (box[:, 3] - box[:, 1] > 0.02)
            idx = np.flatnonzero(good)[ok]
            out[idx] = box[ok]
        return out


@dataclass
class Manifest:
    """The dataset index: ``clips`` (dicts with id, speaker, split, n_frames, fps, optional frames [a, b])."""

    root: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, root: str | os.PathLike) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST
        if not root.exists():
            raise UserError(f"dataset folder not found: {root}{near_name_hint(str(root))}; make one with: hyperlips "
                            f"preprocess VIDEOS {root}")
        if not path.is_file():
            raise UserError(f"{root} is not a preprocessed dataset (no {MANIFEST}); make one with: "
                            f"hyperlips preprocess VIDEOS {root}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: unreadable manifest ({e}); run hyperlips preprocess again") from None
        if data.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path}: dataset format {data.get('format_version')!r} is not {FORMAT_VERSION}; "
                            "preprocess the videos again")
        stored = data.get("audio")
        if stored is not None:  # every network reads the one mel of AudioConfig: a dataset made otherwise misleads
            from dataclasses import asdict

            from ..config import AudioConfig

            want = asdict(AudioConfig())
            differ = sorted(k for k in set(want) & set(stored) if stored[k] != want[k])  # keys both know
            if differ:
                k = differ[0]
                raise UserError(f"{path}: its mel spectrogram was made with other settings than the networks read "
                                f"({', '.join(differ[:4])}; {k} {stored.get(k)!r} instead of {want.get(k)!r}); "
                                "preprocess the videos again")
        missing = [c.get("id") for c in data.get("clips", []) if not (root / CLIPS_DIR / str(c.get("id")) / META).is_file()]
        if missing:  # found now, not when validation first opens a held-out clip
            raise UserError(f"{root}: {len(missing)} clip(s) in the manifest are missing or unfinished, the first "
                            f"{root / CLIPS_DIR / str(missing[0])}; run hyperlips preprocess again")
        return cls(root, data)

    @property
    def clips(self) -> list[dict[str, Any]]:
        return list(self.data.get("clips", []))

    @property
    def sizes(self) -> list[int]:
        return [int(s) for s in self.data.get("sizes", [BASE_SIZE])]

    def entries(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        return [c for c in self.clips if split == "all" or c.get("split") == split]

    def open_clips(self, split: str) -> list[Clip]:
        return [Clip(self.root / CLIPS_DIR / c["id"], c.get("frames")) for c in self.entries(split)]


# ---------------------------------------------------------------------------------------------- datasets
def _rng(seed: int, stream: int, g: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(stream), int(g)])


class WindowIndex:
    """All training windows of a list of clips; sample number -> (clip, start) uniformly over windows."""

    def __init__(self, clips: Sequence[Clip], length: int, audio: str, what: str):
        self.clips = list(clips)
        self.starts = [c.window_starts(length, audio) for c in self.clips]
        counts = np.array([len(s) for s in self.starts], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(counts)])
        if self.cum[-1] == 0:
            names = ", ".join(c.id for c in self.clips[:3]) or "none"
            raise UserError(f"no usable {length}-frame windows for {what} (clips: {names}): the clips are too short, "
                            "have too few frames with a face, or are missing")

    def __len__(self) -> int:
        return int(self.cum[-1])

    def pick(self, rng: np.random.Generator) -> tuple[int, int]:
        k = int(rng.integers(len(self)))
        ci = int(np.searchsorted(self.cum, k, side="right") - 1)
        return ci, int(self.starts[ci][k - self.cum[ci]])


def _chw(images: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (3, T, H, W) uint8."""
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2))


class _Base:
    """Sample ``g`` is drawn from ``rng(seed, stream, g)``; ``len`` is nominal (samplers run past it freely)."""

    stream = 0

    def __init__(self, clips: Sequence[Clip], seed: int = 0, length: int = 1 << 30):
        self.clips = list(clips)
        self.seed = int(seed)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length


class SyncDataset(_Base):
    """Sync-expert samples: 5 face frames (lower halves) + one mel window, labelled in sync (1) or not (0).

    Positives pair frames t..t+4 with the expert's window at t (``media.audio.sync_mel_windows``); negatives take
    the window at t+s with ``min_shift <= |s|`` frames (same clip, same speaker). With ``flip`` > 0 the whole
    window is mirrored with that probability (the original mirrored every sample, so its expert never saw the
    unflipped faces it later judged).

    Item: ``faces`` (15, 64, 128) uint8 (5 frames x BGR, frame-major), ``audio`` (1, 80, 16) float32, ``label`` ().

    With ``candidates`` K > 1 every item is a multiple choice instead: ``audio`` (K, 1, 80, 16) holds the in-sync
    window first, then K - 1 windows of the same clip shifted by ``min_shift`` frames or more (``shift`` (K,)),
    and with ``with_opening`` the five frames' inner-lip opening, standardised over their clip (``opening`` (5,)).
    """

    stream = 1

    def __init__(self, clips: Sequence[Clip], seed: int = 0, min_shift: int = 3, flip: float = 0.5,
                 positive_rate: float = 0.5, length: int = 1 << 30, cfg: AudioConfig = AudioConfig(),
                 candidates: int = 1, with_opening: bool = False):
        super().__init__(clips, seed, length)
        self.index = WindowIndex(self.clips, WINDOW, "sync", "the sync expert")
        self.min_shift = int(min_shift)
        self.flip = float(flip)
        self.positive_rate = float(positive_rate)
        self.cfg = cfg
        self.candidates = int(candidates)
        self.openings: list[np.ndarray] | None = None
        if with_opening:  # each clip's inner-lip opening per frame, standardised over the clip (0 without landmarks)
            from ..face.mouth_shape import mouth_opening

            self.openings = []
            for c in self.clips:
                o = mouth_opening(np.asarray(c.landmarks, dtype=np.float64))
                ok = np.isfinite(o)
                mu, sd = (float(o[ok].mean()), float(o[ok].std()) + 1e-6) if ok.sum() > 1 else (0.0, 1.0)
                self.openings.append(np.where(ok, (o - mu) / sd, 0.0).astype(np.float32))

    def sample(self, g: int, label: int | None = None, shift: int | None = None) -> dict[str, Any]:
        from ..media.audio import sync_mel_windows

        rng = _rng(self.seed, self.stream, g)
        ci, t0 = self.index.pick(rng)
        clip = self.clips[ci]
        y = int(rng.random() < self.positive_rate) if label is None else int(label)
        s = 0
        if not y:
            if shift is None:
                s = self._negative_shift(rng, clip, t0)
            else:
                s = int(shift)
        faces = clip.stack("face128").read_many(range(t0, t0 + WINDOW))  # (5, 128, 128, 3)
        flip = self.flip > 0 and rng.random() < self.flip
        if flip:
            faces = faces[:, :, ::-1]
        lower = faces[:, BASE_SIZE // 2 :]  # (5, 64, 128, 3)
        faces15 = np.ascontiguousarray(lower.transpose(0, 3, 1, 2).reshape(3 * WINDOW, BASE_SIZE // 2, BASE_SIZE))
        if self.candidates > 1 and label is None:
            shifts = [0] + [self._negative_shift(rng, clip, t0) for _ in range(self.candidates - 1)]
            audio = sync_mel_windows(np.asarray(clip.mel), [clip.time_of(t0 + k) for k in shifts], self.cfg)
            item = {"faces": faces15, "audio": audio, "label": np.float32(1), "shift": np.asarray(shifts, np.int64)}
            if self.openings is not None:
                item["opening"] = self.openings[ci][t0:t0 + WINDOW].copy()
            return item
        audio = sync_mel_windows(np.asarray(clip.mel), [clip.time_of(t0 + s)], self.cfg)[0]
        return {"faces": faces15, "audio": audio, "label": np.float32(y), "shift": np.int64(s)}

    def _negative_shift(self, rng: np.random.Generator, clip: Clip, t0: int) -> int:
        """A shift s (frames) with |s| >= min_shift whose window still lies inside the clip's audio."""
        lo, hi = clip.frame_range
        n_mel = clip.mel.shape[1]
        cands = [s for s in range(lo - t0, hi - WINDOW - t0 + 1) if abs(s) >= self.min_shift]
        if not cands:  # a clip shorter than the shift: use the far end anyway
            cands = [hi - WINDOW - t0] if hi - WINDOW - t0 != 0 else [lo - t0 + 1]
        for _ in range(8):
            s = int(cands[int(rng.integers(len(cands)))])
            start = np.floor(clip.time_of(t0 + s) * self.cfg.mel_fps + 1e-6)
            if 0 <= start <= n_mel - self.cfg.window_steps:
                return s
        return s

    def __getitem__(self, g: int) -> dict[str, Any]:
        return self.sample(int(g))


class BaseDataset(_Base):
    """HyperLips-Base samples: a 5-frame target window, a reference window from elsewhere in the same clip
    (never overlapping the target, so its mouth cannot leak), per-frame mel windows and the expert's window.

    Item: ``target`` (3, 5, 128, 128) uint8 BGR, ``reference`` (3, 5, 128, 128) uint8, ``mels`` (5, 1, 80, 16),
    ``sync_mel`` (1, 80, 16) float32, ``lip_boxes`` (5, 4) float32 fractions of the crop.
    """

    stream = 2

    def __init__(self, clips: Sequence[Clip], seed: int = 0, length: int = 1 << 30, cfg: AudioConfig = AudioConfig()):
        super().__init__(clips, seed, length)
        self.index = WindowIndex(self.clips, WINDOW, "both", "HyperLips-Base")
        self.cfg = cfg

    def __getitem__(self, g: int) -> dict[str, Any]:
        from ..media.audio import mel_windows, sync_mel_windows

        rng = _rng(self.seed, self.stream, int(g))
        ci, t0 = self.index.pick(rng)
        clip = self.clips[ci]
        ref0 = self._reference_start(rng, clip, ci, t0)
        stack = clip.stack("face128")
        target = stack.read_many(range(t0, t0 + WINDOW))
        reference = stack.read_many(range(ref0, ref0 + WINDOW))
        mel = np.asarray(clip.mel)
        times = [clip.time_of(t) for t in range(t0, t0 + WINDOW)]
        return {
            "target": _chw(target),
            "reference": _chw(reference),
            "mels": mel_windows(mel, times, clip.fps, self.cfg),
            "sync_mel": sync_mel_windows(mel, times[:1], self.cfg)[0],
            "lip_boxes": clip.lip_boxes(range(t0, t0 + WINDOW)),
        }

    def _reference_start(self, rng: np.random.Generator, clip: Clip, ci: int, t0: int) -> int:
        lo, hi = clip.frame_range
        ok = clip.valid[lo:hi].astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(ok)])
        starts = np.arange(lo, max(lo, hi - WINDOW + 1))
        full = (csum[starts - lo + WINDOW] - csum[starts - lo]) == WINDOW if len(starts) else np.zeros(0, bool)
        far = np.abs(starts - t0) >= WINDOW
        cands = starts[full & far]
        if len(cands) == 0:
            cands = starts[full & (starts != t0)]
        if len(cands) == 0:
            return t0
        return int(cands[int(rng.integers(len(cands)))])


class HRDataset(_Base):
    """HR-decoder samples, one frame each: the base model's output and its sketch (as inference makes them, from
    a cache built by ``train hr``) in, the original face at the HR size out.

    ``inputs``: a folder of per-clip caches (``<clip id>/base128`` and ``<clip id>/basesketch128`` stacks).
    Item: ``input`` (6, 128, 128) uint8 = [base output BGR, sketch x3], ``target`` (3, S, S) uint8, ``lip_box`` (4,).
    """

    stream = 3

    def __init__(self, clips: Sequence[Clip], inputs: str | os.PathLike, size: int, seed: int = 0,
                 length: int = 1 << 30):
        super().__init__(clips, seed, length)
        self.inputs = Path(inputs)
        self.size = int(size)
        self.index = WindowIndex(self.clips, 1, "none", "the HR decoder")
        self._stacks: dict[str, ImageStack] = {}

    def __getstate__(self):
        return {**self.__dict__, "_stacks": {}}

    def _cached(self, clip: Clip, name: str) -> ImageStack:
        key = f"{clip.id}/{name}"
        if key not in self._stacks:
            prefix = self.inputs / clip.id / name
            if not ImageStack.exists(prefix):
                raise UserError(f"{prefix}: missing HR input renders; run `hyperlips train hr` with --base again")
            self._stacks[key] = ImageStack(prefix)
        return self._stacks[key]

    def __getitem__(self, g: int) -> dict[str, Any]:
        rng = _rng(self.seed, self.stream, int(g))
        ci, t = self.index.pick(rng)
        clip = self.clips[ci]
        base = self._cached(clip, "base128").read(t)
        sketch = self._cached(clip, "basesketch128").read(t, color=False)
        target_name = f"face{self.size}"
        if self.size == BASE_SIZE or ImageStack.exists(clip.dir / target_name):
            target = clip.stack(target_name).read(t)
        else:
            raise UserError(f"{clip.dir}: has no {self.size} px crops; preprocess with --hr-size {self.size}")
        x = np.concatenate([base, np.repeat(sketch[:, :, None], 3, axis=2)], axis=2)
        return {
            "input": np.ascontiguousarray(x.transpose(2, 0, 1)),
            "target": np.ascontiguousarray(target.transpose(2, 0, 1)),
            "lip_box": clip.lip_boxes([t])[0],
        }


class SampleSampler:
    """Yields sample numbers ``start, start + world, ...`` offset by ``rank``: each rank reads its own disjoint,
    endless share; ``start`` = samples already consumed by this rank x world, so a resumed run continues exactly."""

    def __init__(self, start: int = 0, rank: int = 0, world: int = 1):
        self.start, self.rank, self.world = int(start), int(rank), int(world)

    def __iter__(self) -> Iterator[int]:
        g = self.start * self.world + self.rank
        while True:
            yield g
            g += self.world

    def __len__(self) -> int:  # nominal: the loop decides when to stop
        return 1 << 30
