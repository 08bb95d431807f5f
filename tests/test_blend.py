"""Paste-back: the soft lower-face mask, exact bytes outside it, colour matching, on real 720p frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hyperlips.face.blend import (
    MaskParams,
    landmark_face_mask,
    lower_face_mask,
    match_color,
    paste_face,
)
from hyperlips.face.detect import FaceDetector
from hyperlips.face.landmarks import FaceMesh
from hyperlips.face.track import crop_box, pixel_region
from helpers import frames_at as read_frames




@pytest.fixture(scope="module")
def scene(real_data):
    """(frame, other frame, crop box, integer region, landmarks of the crop) from a real 720p clip."""
    f0, f1 = read_frames(real_data / "hyperlips" / "video4.mp4", [0, 120])
    h, w = f0.shape[:2]
    with FaceDetector() as d:
        box = crop_box(d.detect(f0)[0], w, h)
    region = pixel_region(box, w, h)
    x1, y1, x2, y2 = region
    with FaceMesh(static=True) as m:
        lm = m.landmarks(f0[y1:y2, x1:x2])
    assert lm is not None
    return f0, f1, box, region, lm


def tinted(img, red=20):
    out = img.astype(np.int16)
    out[..., 2] += red
    return np.clip(out, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("hw", [(250, 190), (128, 128), (37, 29)])
def test_mask_is_zero_on_border_and_above_the_nose(hw):
    h, w = hw
    m = lower_face_mask(h, w)
    assert m.shape == (h, w) and m.dtype == np.float32
    assert m.min() == 0.0 and m.max() <= 1.0 and m.max() > 0.9
    assert not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()
    top = int(np.ceil(MaskParams().top * h))
    assert not m[: top - 1].any()
    cy, cx = int(0.76 * h), w // 2
    assert m[cy, cx] == pytest.approx(1.0)  # the mouth is fully replaced


def test_mask_cache_and_read_only():
    a = lower_face_mask(200, 160)
    assert lower_face_mask(200, 160) is a
    assert lower_face_mask(200, 160, MaskParams(top=0.6)) is not a
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    with pytest.raises(ValueError):
        lower_face_mask(1, 100)


def test_landmark_mask_follows_the_jaw(scene):
    f0, _, _, (x1, y1, x2, y2), lm = scene
    h, w = y2 - y1, x2 - x1
    m = landmark_face_mask(lm, h, w)
    assert not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()
    mx, my = ((lm[13, :2] + lm[14, :2]) / 2).astype(int)
    assert m[my, mx] > 0.95  # mouth centre
    for i in (33, 263, 168):  # eyes and nose bridge untouched
        x, y = lm[i, :2].astype(int)
        assert m[y, x] == 0.0, i
    # outside the jaw line (background beside the jaw) is 0
    jx, jy = lm[172, :2]
    assert m[int(jy), max(int(jx) - 15, 0)] == 0.0


# ---------------------------------------------------------------- paste-back


@pytest.mark.parametrize("use_landmarks", [False, True])
def test_pixels_outside_the_mask_are_identical(scene, use_landmarks):
    f0, f1, box, (x1, y1, x2, y2), lm = scene
    face = f1[y1:y2, x1:x2]  # another frame's crop as the "generated" face: differs almost everywhere
    before = f0.copy()
    out = paste_face(f0, face, box, landmarks=lm if use_landmarks else None)
    assert np.array_equal(f0, before)  # input untouched
    assert out.shape == f0.shape and out.dtype == np.uint8
    assert np.array_equal(out[:y1], f0[:y1]) and np.array_equal(out[y2:], f0[y2:])  # rows above/below the box
    assert np.array_equal(out[:, :x1], f0[:, :x1]) and np.array_equal(out[:, x2:], f0[:, x2:])
    h, w = y2 - y1, x2 - x1
    m = landmark_face_mask(lm, h, w) if use_landmarks else lower_face_mask(h, w)
    crop_out, crop_in = out[y1:y2, x1:x2], f0[y1:y2, x1:x2]
    assert np.array_equal(crop_out[m == 0], crop_in[m == 0])
    assert np.array_equal(crop_out[: h // 2], crop_in[: h // 2])  # the upper half of the face is the input's
    changed = np.any(crop_out != crop_in, axis=2)
    assert changed[m > 0.9].mean() > 0.5  # and the mouth region did change


@pytest.mark.parametrize("render", [128, 256, 512])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("use_landmarks", [False, True])
def test_paste_never_reads_a_generated_face_above_the_first_row(scene, use_landmarks, scale, render):
    """``first_row_read``: whatever a generated face holds above that row, the frame is the same, for crops smaller
    and larger than the face and (landmark mask) a nose drawn as high as the mask allows; a few rows lower, it
    is not (the bound is close, so the rows a generator skips for it are most of those it could)."""
    from hyperlips.face.blend import first_row_read

    first = first_row_read(render, landmarks=use_landmarks)
    f0, f1, _, (x1, y1, x2, y2), lm = scene
    pts = lm[:, :2].copy()
    if use_landmarks:
        pts[:, 1] *= 0.6  # every point, the nose line too, far up: the top cut clamps to blend.MIN_TOP
    size = round((y2 - y1) * scale)
    pts *= size / (y2 - y1)
    frame = cv2.resize(f0, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    box = (x1 * scale, y1 * scale, x1 * scale + size, y1 * scale + size)
    face = cv2.resize(f1[y1:y2, x1:x2], (render, render), interpolation=cv2.INTER_AREA)
    kw = dict(landmarks=pts) if use_landmarks else {}
    out = paste_face(frame, face, box, **kw)
    assert not np.array_equal(out, frame)  # the face was pasted

    def inverted_above(row):
        other = face.copy()
        other[:row] = 255 - other[:row]
        return paste_face(frame, other, box, **kw)

    assert np.array_equal(out, inverted_above(first))
    assert not np.array_equal(out, inverted_above(first + 8 * render // 128))


def test_first_row_read_follows_the_mask():
    from hyperlips.face.blend import MIN_TOP, MaskParams, first_row_read

    assert first_row_read(128) == 69  # the geometric mask's top, 0.56 of the face, less the resize's reach
    assert first_row_read(128, landmarks=True) == 55 == int(MIN_TOP * 128 - 0.5) - 2
    assert first_row_read(256) == 140 and first_row_read(512) == 284
    assert first_row_read(128, MaskParams(top=0.3)) == 35  # a taller mask reads more rows
    assert first_row_read(128, MaskParams(top=0.0)) == 0


@pytest.mark.parametrize("use_landmarks", [False, True])
def test_colour_matching_removes_a_red_tint(scene, use_landmarks):
    f0, _, box, (x1, y1, x2, y2), lm = scene
    h, w = y2 - y1, x2 - x1
    crop = f0[y1:y2, x1:x2]
    gen = cv2.resize(tinted(crop), (128, 128), interpolation=cv2.INTER_AREA)  # a network-sized output, +20 red
    kw = {"landmarks": lm} if use_landmarks else {}
    m = landmark_face_mask(lm, h, w) if use_landmarks else lower_face_mask(h, w)
    mouth = np.zeros((h, w), np.uint8)
    from hyperlips.face.landmarks import LIP_RING

    cv2.fillPoly(mouth, [np.round(lm[list(LIP_RING), :2]).astype(np.int32)], 1)
    skin = (m > 0.5) & (mouth == 0)
    diff = lambda out: (out[y1:y2, x1:x2].astype(np.float64) - crop)[skin].mean(0)  # noqa: E731  (B, G, R)
    plain = diff(paste_face(f0, gen, box, color="none", **kw))
    matched = diff(paste_face(f0, gen, box, **kw))
    assert plain[2] > 12  # without matching the tint shows
    assert np.abs(matched).max() < 2.0, matched  # with it, far below 20
    meanstd = diff(paste_face(f0, gen, box, color="meanstd", **kw))
    assert np.abs(meanstd).max() < 2.0


@pytest.mark.parametrize("use_landmarks", [False, True])
def test_a_drawn_face_in_a_black_and_white_frame_stays_grey(scene, use_landmarks, monkeypatch):
    """A black-and-white video got a coloured mouth from the network (`--mouth render`, and `hybrid`, every person
    model's default): the mean colour was matched, the face's own colours kept (a pink chin, bluish lips: channels 18
    apart). Round grey skin the drawn face is grey; round the colour skin of a real clip nothing changes."""
    from hyperlips.face import blend

    f0, _, box, (x1, y1, x2, y2), lm = scene
    kw = {"landmarks": lm} if use_landmarks else {}
    gen = cv2.resize(tinted(f0[y1:y2, x1:x2], 30), (128, 128), interpolation=cv2.INTER_AREA)  # colours of its own
    grey = cv2.cvtColor(cv2.cvtColor(f0, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    out = paste_face(grey, gen, box, **kw).astype(np.int16)
    spread = out.max(axis=2) - out.min(axis=2)
    assert spread.max() <= 2, spread.max()  # grey to the coding's rounding (it was 20 and more)
    colour = paste_face(f0, gen, box, **kw)
    monkeypatch.setattr(blend, "FULL_CHROMA", 0.0)  # the matching as it was
    assert np.array_equal(colour, paste_face(f0, gen, box, **kw))
    assert (np.ptp(paste_face(grey, gen, box, **kw).astype(np.int16), axis=2) > 2).any()


def test_black_bars_are_left_black(scene):
    """A letterboxed close-up, its mouth near the bar: the lower lip was warped into the bar (grey up to 255 in 38
    of 75 frames, its edge wavy). The bars (rows or columns black across the whole frame, from its edge) stay
    exactly as they were; the picture is pasted as before."""
    from hyperlips.face.blend import picture_region

    f0, _, box, (x1, y1, x2, y2), lm = scene
    gen = cv2.resize(tinted(f0[y1:y2, x1:x2], 60), (128, 128), interpolation=cv2.INTER_AREA)
    bar = y1 + (y2 - y1) * 9 // 10  # the bottom bar begins inside the face's region
    boxed = f0.copy()
    boxed[bar:] = 0
    boxed[:, :x1 + 8] = 0  # and a pillarbox on the left, into the region too
    out = paste_face(boxed, gen, box)
    assert np.array_equal(out[bar:], boxed[bar:]) and np.array_equal(out[:, :x1 + 8], boxed[:, :x1 + 8])
    assert not np.array_equal(out[y1:bar, x1 + 8:x2], boxed[y1:bar, x1 + 8:x2])  # the picture is pasted
    plain = paste_face(f0, gen, box)  # no bars: all of the region, as before
    assert not np.array_equal(plain[bar:y2, x1:x2], f0[bar:y2, x1:x2])
    assert picture_region(f0, (x1, y1, x2, y2)) == (x1, y1, x2, y2)
    dark = np.full_like(f0, 10)  # a black frame: nothing of it is picture
    r = picture_region(dark, (x1, y1, x2, y2))
    assert r[2] <= r[0] or r[3] <= r[1], r


def test_a_drawn_face_stays_above_a_faded_pictures_black(scene):
    """A washed-out picture (0.3 of its contrast, its darkest about 90): the network's mouth inside, drawn as dark
    as real ones (5 here; 51-53 from the starter on a faded photo), was a hole darker than anything in it. It is
    eased onto the picture's black, values above that black untouched; a real picture's mouth stays as drawn."""
    from hyperlips.face.blend import BLACK_KNEE, above_black
    from hyperlips.face.mouth_inside import frame_black

    f0, _, box, (x1, y1, x2, y2), lm = scene
    gen = cv2.resize(f0[y1:y2, x1:x2], (128, 128), interpolation=cv2.INTER_AREA)
    gen[92:104, 50:78] = 5  # an open mouth's inside
    faded = np.clip(128 + (f0.astype(np.float32) - 128) * 0.3, 0, 255).astype(np.uint8)
    black = frame_black(faded)
    assert black.min() > 85
    out = paste_face(faded, gen, box)
    assert out.min() >= black.min() - BLACK_KNEE - 1, (out.min(), black)
    assert (out[y1:y2, x1:x2] < black.min() + 10).any()  # the inside is as dark as the picture's black
    assert paste_face(f0, gen, box)[y1:y2, x1:x2].min() <= 10  # a real picture: as drawn
    boxed = faded.copy()  # a letterboxed transfer of the faded film: its bars read as its black (none lifted)
    boxed[:60], boxed[-60:] = 0, 0
    assert np.allclose(frame_black(boxed), black, atol=2)
    picture = boxed.max(axis=2) > 20
    assert paste_face(boxed, gen, box)[picture].min() >= black.min() - BLACK_KNEE - 1

    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    eased = above_black(ramp, np.full(3, 90, np.float32)).astype(np.int16)
    assert np.array_equal(eased[0, 90:], ramp[0, 90:])
    assert (np.diff(eased[0, :, 0]) >= 0).all() and eased.min() >= 90 - BLACK_KNEE


def test_match_color_unit():
    rng = np.random.default_rng(1)
    ref = rng.integers(60, 200, (64, 64, 3), dtype=np.uint8)
    face = tinted(ref, 25)
    region = np.ones((64, 64), bool)
    out = match_color(face, ref, region)
    # from 25 to under 3 (a Lab mean shift is not exact on colours this far apart; real skin: see above)
    assert np.abs(out.astype(float).mean((0, 1)) - ref.mean((0, 1))).max() < 3.0
    assert match_color(face, ref, region, "none") is face
    assert match_color(face, ref, np.zeros((64, 64), bool)) is face  # too few pixels: unchanged
    with pytest.raises(ValueError):
        match_color(face, ref, region, "histogram")


def test_paste_inplace_and_edge_cases(scene):
    f0, f1, box, (x1, y1, x2, y2), _ = scene
    frame = f0.copy()
    out = paste_face(frame, f1[y1:y2, x1:x2], box, inplace=True)
    assert out is frame and not np.array_equal(frame, f0)
    # a box hanging over the frame edge is not an error: only the part inside is written
    small = f0[:300, :300].copy()
    res = paste_face(small, f1[y1:y2, x1:x2], (250, 250, 400, 420))
    assert np.array_equal(res[:250], small[:250])
    with pytest.raises(ValueError):
        paste_face(f0, f1[y1:y2, x1:x2].astype(np.float32), box)


@pytest.mark.parametrize("use_landmarks", [False, True])
def test_a_face_past_the_frames_edge_is_pasted_as_in_the_whole_frame(scene, use_landmarks):
    """A face the frame's edge cuts: the generated face is laid over its whole region, as far as it reaches past the
    edge, and only the part inside is written, so the frame gets what the same face pasted into the whole (uncut)
    frame gives there (clipped to the frame, the face was squeezed into the part inside)."""
    f0, f1, box, (x1, y1, x2, y2), lm = scene
    face = cv2.resize(f1[y1:y2, x1:x2], (128, 128), interpolation=cv2.INTER_AREA)
    args = {"landmarks": lm if use_landmarks else None, "color": "none", "detail": False}
    whole = paste_face(f0, face, box, **args)
    cut_x, cut_y = (x1 + x2) // 2, y1 + (y2 - y1) * 3 // 4  # through the mouth, and below it
    cut = np.ascontiguousarray(f0[: cut_y, cut_x:])
    moved = (box.x1 - cut_x, box.y1, box.x2 - cut_x, box.y2)
    out = paste_face(cut, face, moved, **args)
    assert not np.array_equal(out, cut)
    np.testing.assert_array_equal(out, whole[: cut_y, cut_x:])


def test_match_detail_restores_lost_sharpness_and_never_blurs(real_data):
    import cv2

    from hyperlips.face.blend import _laplacian, match_detail

    frame = read_frames(real_data / "hyperlips" / "video1.mp4", [0])[0]
    ref = frame[200:456, 500:756].copy()
    region = np.ones(ref.shape[:2], bool)
    soft = cv2.resize(cv2.resize(ref, (160, 160), interpolation=cv2.INTER_AREA), ref.shape[1::-1],
                      interpolation=cv2.INTER_CUBIC)
    v = lambda img: float(_laplacian(img.astype(np.float32)).var())  # noqa: E731
    assert v(soft) < 0.7 * v(ref)  # a 128 px face enlarged to a ~200 px face loses about this much
    fixed = match_detail(soft, ref, region, strength=1.0)
    assert 0.85 * v(ref) < v(fixed) < 1.15 * v(ref)
    assert v(soft) < v(match_detail(soft, ref, region, strength=0.5)) < v(fixed)
    # an image already as sharp as the reference, or a tiny region: unchanged
    assert np.array_equal(match_detail(ref, soft, region), ref)
    tiny = np.zeros_like(region)
    tiny[:3, :3] = True
    assert np.array_equal(match_detail(soft, ref, tiny), soft)
