"""Faces: detection on frames, a smoothed track per video, landmarks/sketches/lip masks on crops, paste-back.

Submodules import mediapipe only when a detector or mesh is built, so ``hyperlips.face`` imports without it.
"""

from hyperlips.face.blend import MaskParams, landmark_face_mask, lower_face_mask, match_color, paste_face
from hyperlips.face.detect import Box, FaceDetector, MissingDependencyError
from hyperlips.face.landmarks import FaceMesh, draw_sketch, lip_box, lip_mask, roi_edges, smooth_landmarks
from hyperlips.face.track import DEFAULT_PAD, FaceTrack, crop_box, pixel_extent, pixel_region, track_faces

__all__ = [
    "Box",
    "FaceDetector",
    "MissingDependencyError",
    "FaceTrack",
    "track_faces",
    "crop_box",
    "pixel_extent",
    "pixel_region",
    "DEFAULT_PAD",
    "FaceMesh",
    "roi_edges",
    "draw_sketch",
    "lip_mask",
    "lip_box",
    "smooth_landmarks",
    "MaskParams",
    "lower_face_mask",
    "landmark_face_mask",
    "match_color",
    "paste_face",
]
