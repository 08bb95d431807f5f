"""Mouth shapes: pose taken out, speech kept; the opening measure the evaluation uses."""

from __future__ import annotations

import numpy as np
import pytest

from hyperlips.face.mouth_shape import (
    INNER_LIP,
    MIRROR,
    MOVING,
    N_SHAPE,
    aligned_moving_points,
    mirror_shapes,
    mouth_opening,
    mouth_shapes,
    shape_opening,
    similarity_to,
)


@pytest.fixture(scope="module")
def grid_clip(more_data, tmp_path_factory):
    """A real GRID clip, preprocessed once."""
    from hyperlips.data.datasets import Clip
    from hyperlips.data.preprocess import PreprocessOptions, preprocess

    out = tmp_path_factory.mktemp("mouth") / "ds"
    preprocess(more_data / "grid_s1" / "bbaf3s.mpg", out, PreprocessOptions(speaker="one", val_fraction=0.0),
               workers=1, progress=False)
    return Clip(next((out / "clips").iterdir()))


@pytest.fixture(scope="module")
def clip_landmarks(grid_clip):
    """FaceMesh points of 40 frames of the clip."""
    lm = np.asarray(grid_clip.landmarks, np.float64)
    return lm[np.isfinite(lm).all(axis=(1, 2))][:40]


def _move(lm, angle, scale, shift):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    out = lm.copy()
    out[:, :, :2] = (lm[:, :, :2] - 0.5) @ rot.T * scale + 0.5 + np.asarray(shift)
    return out


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.random((20, 2))
    c, s = np.cos(0.3), np.sin(0.3)
    dst = 1.7 * src @ np.array([[c, s], [-s, c]]) + [0.2, -0.1]
    a, rot, mu_s, mu_d = similarity_to(src, dst)
    assert np.allclose(a * (src - mu_s) @ rot + mu_d, dst, atol=1e-9)
    assert a == pytest.approx(1.7)


def test_head_pose_does_not_change_the_shape(clip_landmarks):
    lm = clip_landmarks
    ref, _ = mouth_shapes(lm)
    assert ref.shape == (len(lm), N_SHAPE) and np.isfinite(ref).all()
    # every frame moved differently: rotated, scaled and shifted within the crop
    moved = np.stack([_move(lm[i:i + 1], 0.2 * np.sin(i), 1 + 0.2 * np.cos(i), (0.05 * np.sin(3 * i), 0.03))[0]
                      for i in range(len(lm))])
    got, _ = mouth_shapes(moved)
    assert np.abs(got - ref).max() < 1e-6 * 50
    # and the shapes vary over the clip (speech), far more than that
    assert ref.std(axis=0).mean() > 0.1


def test_opening_follows_the_inner_lips(clip_landmarks):
    lm = clip_landmarks.copy()
    shapes, mean = mouth_shapes(lm)
    base = mouth_opening(lm)
    assert np.isfinite(base).all() and (base >= 0).all() and base.max() < 0.3
    wider = lm.copy()
    wider[:, 14, 1] += 0.02  # lower inner lip 2% of the crop further down
    assert (mouth_opening(wider) > base).all()
    s2, _ = mouth_shapes(wider, mean)
    assert (shape_opening(s2) > shape_opening(shapes)).all()
    assert 14 in INNER_LIP and MOVING.index(14) < len(MOVING)


def test_missing_landmarks_give_nan_rows(clip_landmarks):
    lm = clip_landmarks[:5].copy()
    lm[2] = np.nan
    shapes, _ = mouth_shapes(lm)
    assert np.isnan(shapes[2]).all() and np.isfinite(np.delete(shapes, 2, axis=0)).all()
    assert np.isnan(mouth_opening(lm)[2])
    with pytest.raises(ValueError, match="landmarks"):
        mouth_shapes(np.zeros((3, 10, 2)))


def test_mirror_pairs_each_point_with_its_counterpart(clip_landmarks):
    """On a real speaker's average mouth, every point mirrored across the face's centre line lands on the point
    ``MIRROR`` pairs it with; the mirror of the mirror is the shape itself, numpy or torch."""
    import torch

    mean = aligned_moving_points(clip_landmarks).mean(axis=0)  # (53, 2), eye-corner distance 1
    centre = mean[[MOVING.index(i) for i in (0, 13, 14, 17, 152)], 0].mean()  # lip and chin centres
    pts = mean - [centre, 0.0]
    assert np.abs(pts[list(MIRROR)] * [-1.0, 1.0] - pts).max() < 0.15
    assert np.abs(pts * [-1.0, 1.0] - pts).max() > 1.0  # unpaired: the corners are an eye distance apart
    assert np.abs(pts[::-1] * [-1.0, 1.0] - pts).max() > 0.3  # the lists merely reversed: wrong
    shapes, _ = mouth_shapes(clip_landmarks)
    assert np.allclose(mirror_shapes(mirror_shapes(shapes)), shapes)
    assert not np.allclose(mirror_shapes(shapes), shapes)
    assert np.allclose(shape_opening(mirror_shapes(shapes)), shape_opening(shapes))  # a centre line's gap
    t = torch.from_numpy(shapes)
    assert np.allclose(mirror_shapes(t).numpy(), mirror_shapes(shapes))


def test_mirrored_face_gives_the_mirrored_shape(grid_clip):
    """FaceMesh on the clip's faces flipped left-right: the shapes it reads are the mirrored ones, within its own
    noise (what a 1 px shift of the crop changes)."""
    import cv2

    from hyperlips.face.landmarks import FaceMesh

    mesh = FaceMesh(static=True)
    faces = grid_clip.stack("face128").read_many(range(0, 75, 3))

    def shapes_of(images):
        lm = np.stack([mesh.landmarks(np.ascontiguousarray(f)) for f in images]).astype(np.float64)
        assert np.isfinite(lm).all()
        return mouth_shapes(lm)[0]

    shapes = shapes_of(faces)
    flipped = shapes_of([f[:, ::-1] for f in faces])
    shift = np.float32([[1, 0, 1], [0, 1, 1]])
    noise = np.abs(shapes_of([cv2.warpAffine(f, shift, (128, 128), borderMode=cv2.BORDER_REPLICATE) for f in faces])
                   - shapes).mean()
    err = np.abs(mirror_shapes(shapes) - flipped).mean()
    assert err < 3 * noise, (err, noise)
    only_x = (shapes.reshape(len(shapes), -1, 2) * [-1.0, 1.0]).reshape(shapes.shape)  # sides not swapped
    assert np.abs(only_x - flipped).mean() > 1.3 * err
    assert np.corrcoef(shape_opening(flipped), shape_opening(shapes))[0, 1] > 0.9
