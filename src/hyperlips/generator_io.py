"""What the generators take and give: face crops, the masked + reference input, mel windows, uint8 faces.

Inference (``pipeline``, ``streaming``), preprocessing and training all cut faces and build network inputs with
these functions, so a crop made for training is the crop inference makes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .config import AudioConfig
from .errors import UserError, require_file

BASE_SIZE = 128  # the generators' face size


def face_crop(frame: np.ndarray, box, size: int) -> np.ndarray:
    """The box's region of ``frame`` (``face.track.pixel_extent``, the region paste-back resizes the face to) as
    ``size``x``size``. Where the box reaches past the frame's edge (a face the edge cuts), the rows and columns
    outside repeat the nearest ones inside, so the face keeps its proportions and its place in the crop.

    Area interpolation when shrinking, bilinear when enlarging. Training crops are made with this same function.
    """
    from .face.track import pixel_extent

    fh, fw = frame.shape[:2]
    x1, y1, x2, y2 = pixel_extent(box)
    if x1 >= 0 and y1 >= 0 and x2 <= fw and y2 <= fh:
        crop = frame[y1:y2, x1:x2]
    else:
        crop = frame[np.clip(np.arange(y1, y2), 0, fh - 1)][:, np.clip(np.arange(x1, x2), 0, fw - 1)]
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def reference_crop(path: Path) -> np.ndarray:
    """The reference face from an image file (or a video's first frame): its largest face, cropped as ``sync``
    crops video frames. (128, 128, 3) uint8 BGR."""
    from .face.detect import FaceDetector
    from .face.track import track_faces
    from .media.video import FrameReader, probe

    require_file(path, "reference image")
    info = probe(path)
    with FrameReader(path) as reader:
        frame = next(iter(reader.iter_range(0, 1))).image
    with FaceDetector() as detector:
        dets = detector.detect(frame)
    if not dets:
        raise UserError(f"--reference {path}: no face found in that image")
    track = track_faces([dets], fps=float(info.fps or 25.0), source=str(path), frame_size=(info.width, info.height))
    return face_crop(frame, track.boxes[0], BASE_SIZE)


def network_input(crops: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,S,S,3) uint8 BGR crops + (S,S,3) reference -> (N,6,S,S) float32: [lower half zeroed, reference] / 255."""
    s = crops.shape[1]
    masked = crops.copy()
    masked[:, s // 2 :] = 0
    ref = np.broadcast_to(reference, crops.shape)
    x = np.concatenate([masked, ref], axis=3).astype(np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def network_mel_windows(network, mel: np.ndarray, times, fps: float, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """The mel windows a generator takes for frames shown at ``times``: HyperLips-Lite's centred windows of its
    own length (``network.mel_steps``) of the mel normalised over the whole utterance (``network.mel_norm``), or
    Base's 16-step windows (``media.audio.mel_windows``). ``mel`` is the whole track's (a normalised one may be
    passed with ``network.mel_norm`` already applied: see :func:`network_mel`)."""
    import dataclasses

    from .media.audio import centred_mel_windows, mel_windows

    steps = getattr(network, "mel_steps", None)
    if steps is not None:
        fill = mel.min(axis=1) if getattr(network, "mel_norm", None) == "utterance" and mel.shape[1] else None
        if mel.shape[0] != cfg.n_mels:  # the phones' rows below the mel (network_mel)
            cfg = dataclasses.replace(cfg, n_mels=mel.shape[0])
        return centred_mel_windows(mel, times, int(steps), cfg, fill)
    return mel_windows(mel, times, fps, cfg)


def network_mel(network, mel: np.ndarray, phones: np.ndarray | None = None) -> np.ndarray:
    """The whole track's mel as ``network`` wants it: for HyperLips-Lite normalised per utterance (smoothed across
    frequency first where its ``mel_smooth`` says so), for Base as it is. A Lite network that reads phones gets
    their one-hot rows below the mel (``phones``: the speech's, ``media.phones.read_phones``; None: all zero, the
    sound alone)."""
    from .media.audio import normalise_utterance

    if getattr(network, "mel_norm", None) != "utterance":
        return mel
    out = normalise_utterance(mel, int(getattr(network, "mel_smooth", 0)))
    return with_phone_rows(network, out, phones)


def with_phone_rows(network, mel: np.ndarray, phones: np.ndarray | None) -> np.ndarray:
    """``mel`` (80, T) with the phones' one-hot rows below it where ``network`` reads phones (all zero for
    ``phones`` None: ``media.phones.below_mel``); as it is otherwise."""
    from .media.phones import below_mel

    return below_mel(mel, phones) if getattr(network, "phones", False) else mel


def to_uint8_images(t) -> np.ndarray:
    """(N,3,H,W) float tensor in [0,1] -> (N,H,W,3) uint8, rounded (not truncated). ``t`` is left as it is."""
    a = t.detach().float().clamp(0, 1).mul_(255).round_().to("cpu").numpy().astype(np.uint8)  # clamp copies
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))
