"""Media I/O: audio decoding and the mel front end (``audio``), video probing and reading (``video``) and writing (``writer``)."""

from .audio import (
    load_audio,
    mel_filterbank,
    mel_window_start,
    mel_windows,
    melspectrogram,
    sync_mel_windows,
    sync_window_start,
)
from .video import Frame, FrameReader, VideoInfo, probe
from .writer import VideoWriter

__all__ = [
    "Frame",
    "FrameReader",
    "VideoInfo",
    "VideoWriter",
    "load_audio",
    "mel_filterbank",
    "mel_window_start",
    "mel_windows",
    "melspectrogram",
    "probe",
    "sync_mel_windows",
    "sync_window_start",
]
