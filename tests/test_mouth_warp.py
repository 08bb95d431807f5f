"""``--mouth warp``: the frame's own lips and jaw moved to the mouth shape read from the speech."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import cut_audio, psnr, read_frames, run_cli
from hyperlips.face import mouth_shape as ms
from hyperlips.face.mouth_warp import MouthWarp, PiecewiseAffine, PoseFilter

SIDE = 256


@pytest.fixture(scope="module")
def face2(real_data):
    """40 frames of a real close-up, each cut to one fixed square around the face (SIDE px), with FaceMesh points."""
    import cv2

    from hyperlips.face.detect import FaceDetector
    from hyperlips.face.landmarks import FaceMesh

    frames = read_frames(real_data / "retalking" / "face2.mp4", 40)
    with FaceDetector() as det:
        b = det.detect(frames[0])[0]
    cx, cy, half = (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2, 0.7 * max(b.x2 - b.x1, b.y2 - b.y1)
    x1, y1 = int(max(cx - half, 0)), int(max(cy - half * 0.9, 0))
    x2, y2 = int(x1 + 2 * half), int(y1 + 2 * half)
    crops = [cv2.resize(f[y1:y2, x1:x2], (SIDE, SIDE), interpolation=cv2.INTER_AREA) for f in frames]
    with FaceMesh(static=True) as fm:
        lms = [fm.landmarks(c) for c in crops]
    keep = [i for i, lm in enumerate(lms) if lm is not None]
    assert len(keep) >= 30
    return [crops[i] for i in keep], np.stack([lms[i][:, :2] for i in keep]).astype(np.float64)


def _opening(lm) -> float:
    return float(ms.mouth_opening(lm[None])[0])


def _own_shapes(lm):
    """A clip's points (N, 468+, 2) -> its template, average mouth and each frame's shape against them."""
    tpl = ms.stable_template(lm)
    pts = ms.aligned_moving_points(lm, tpl)
    mean = pts.mean(axis=0)
    return tpl, mean, (pts - mean).reshape(len(lm), -1) * ms.SCALE


def test_moving_points_undo_the_alignment(face2):
    _, lm = face2
    tpl, mean, shapes = _own_shapes(lm)
    for i in range(0, len(lm), 7):
        got = ms.moving_points(shapes[i], lm[i], tpl, mean)
        assert np.abs(got - lm[i][list(ms.MOVING)]).max() < 1e-6
    # a shape that opens the mouth puts the lower inner lip lower in the frame, by the shape's amount
    wider = shapes[0].reshape(-1, 2).copy()
    wider[ms.MOVING.index(ms.LOWER_INNER), 1] += 5.0
    moved = ms.moving_points(wider.ravel(), lm[0], tpl, mean)
    dy = moved[ms.MOVING.index(ms.LOWER_INNER), 1] - lm[0][ms.LOWER_INNER, 1]
    eyes = np.linalg.norm(lm[0][ms.EYE_OUTER[0]] - lm[0][ms.EYE_OUTER[1]])
    assert dy == pytest.approx(5.0 / ms.SCALE * eyes, rel=0.1)


def test_piecewise_affine_lands_the_points_and_keeps_an_affine_map():
    rng = np.random.default_rng(1)
    dst = np.vstack([rng.uniform(0, 200, (40, 2)), [[0, 0], [200, 0], [0, 200], [200, 200]]])
    src = dst + rng.normal(0, 4, dst.shape)
    f = PiecewiseAffine(src, dst)
    assert f.n_fallback > 0  # points shaken 4 px turn triangles over: read through the moved points' own there
    assert np.abs(f(dst) - src).max() < 1e-6
    (x0, y0, x1, y1), mx, my = f.grid(201, 201)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    err = np.abs(np.stack([mx.ravel(), my.ravel()], 1) - f(np.stack([xs.ravel(), ys.ravel()], 1).astype(float)))
    assert np.quantile(err.max(axis=1), 0.98) < 0.5  # the rasterised block and locating agree but at shared edges
    lin = np.array([[1.1, 0.2], [-0.1, 0.9]])
    g = PiecewiseAffine(dst @ lin + [3, -7], dst)
    q = rng.uniform(0, 200, (100, 2))
    assert np.abs(g(q) - (q @ lin + [3, -7])).max() < 1e-6
    assert np.array_equal(g(np.array([[-5.0, 3.0]])), [[-5.0, 3.0]])  # outside: where it is
    # the rasterised block gives each pixel what locating it gives (on a smooth map: triangles of a jittered grid)
    gy, gx = np.mgrid[0:201:25, 0:201:25]
    even = np.stack([gx.ravel(), gy.ravel()], 1).astype(float)
    even[(even > 0).all(1) & (even < 200).all(1)] += rng.uniform(-5, 5, (len(even), 2))[(even > 0).all(1) & (even < 200).all(1)]
    f = PiecewiseAffine(even + rng.normal(0, 2, even.shape), even)
    (x0, y0, x1, y1), mx, my = f.grid(201, 201)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    want = f(np.stack([xs.ravel(), ys.ravel()], 1).astype(float))
    err = np.abs(np.stack([mx.ravel(), my.ravel()], 1) - want).max(axis=1)
    assert err.max() < 0.5 and np.quantile(err, 0.95) < 0.01  # a pixel on an edge may take its neighbour's map
    assert PiecewiseAffine(dst, dst).grid(201, 201) is None  # nothing moves
    # two points that meet (a mouth closing) fold nothing: each output point is read from one place
    pts = np.array([[0, 0], [100, 0], [0, 100], [100, 100], [50, 49.9], [50, 50.1]])
    wide = pts.copy()
    wide[4, 1], wide[5, 1] = 30, 70
    h = PiecewiseAffine(wide, pts)
    ys = h(np.stack([np.full(101, 50.0), np.linspace(0, 100, 101)], 1))[:, 1]
    assert (np.diff(ys) >= -1e-9).all()


def test_the_warped_face_shows_the_shape_it_is_given(face2):
    """Frame i's face given frame j's mouth: FaceMesh reads j's opening on it, and the frame's own shape leaves it as
    it was."""
    from hyperlips.face.landmarks import FaceMesh

    crops, lm = face2
    tpl = ms.stable_template(lm)
    pts = ms.aligned_moving_points(lm, tpl)
    shapes = (pts - pts.mean(axis=0)).reshape(len(lm), -1) * ms.SCALE
    openings = ms.mouth_opening(lm)
    closed, wide = int(np.argmin(openings)), int(np.argmax(openings))
    assert openings[wide] - openings[closed] > 0.03  # the clip opens and closes its mouth
    warp = MouthWarp(frames=len(lm), steady=False)  # frames out of order: no pose to steady between them
    for frame in lm:
        warp.observe(frame)
    top = 100
    same = warp.apply(crops[closed], lm[closed], shapes[closed], first_row=top)
    assert np.array_equal(same[:top], crops[closed][:top])
    assert np.abs(same.astype(float) - crops[closed]).mean() < 1.0
    opened = warp.apply(crops[closed], lm[closed], shapes[wide], first_row=top)
    closed_again = warp.apply(crops[wide], lm[wide], shapes[closed], first_row=top)
    assert np.array_equal(opened[:top], crops[closed][:top])
    with FaceMesh(static=True) as fm:
        got_open, got_closed = _opening(fm.landmarks(opened)), _opening(fm.landmarks(closed_again))
    span = openings[wide] - openings[closed]
    assert got_open > openings[closed] + 0.6 * span, (got_open, openings[closed], openings[wide])
    assert got_closed < openings[wide] - 0.6 * span, (got_closed, openings[closed], openings[wide])
    # the hybrid's warp: the new opening filled from the network's face, not drawn dark
    grey = np.full_like(crops[0], 128)
    filled = MouthWarp(frames=len(lm), steady=False)
    for frame in lm:
        filled.observe(frame)
    filled = filled.apply(crops[closed], lm[closed], shapes[wide], first_row=top, fill=grey)
    cx, cy = np.round((lm[closed][13] + lm[closed][14]) / 2).astype(int)
    middle = (slice(cy - 1, cy + 2), slice(cx - 3, cx + 4))
    assert np.abs(filled[middle].astype(float) - 128).mean() < 20 and opened[middle].mean() < 60


def test_facemesh_reads_the_opening_the_warp_is_given(real_data):
    """Each frame of a real clip given the mouth of the frame half the clip away: the opening FaceMesh reads on the
    warped faces follows the one they were given. Where the inner lips meet, the new points' triangulation must
    not join an upper lip point to a lower one across the frame's own opening (it carried the teeth between closed
    lips, and FaceMesh read them open: r 0.64 on this clip); the inside of a new opening is drawn dark."""
    import cv2

    from hyperlips.face.detect import FaceDetector
    from hyperlips.face.landmarks import FaceMesh

    frames = read_frames(real_data / "retalking" / "face5.mp4", 120)
    with FaceDetector() as det:
        b = det.detect(frames[0])[0]
    cx, cy, half = (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2, 0.75 * max(b.x2 - b.x1, b.y2 - b.y1)
    x1, y1, side = int(max(cx - half, 0)), int(max(cy - 0.8 * half, 0)), int(2 * half)
    crops = [cv2.resize(f[y1:y1 + side, x1:x1 + side], (320, 320), interpolation=cv2.INTER_AREA) for f in frames]
    with FaceMesh(static=False) as fm:
        found = [fm.landmarks(c) for c in crops]
    keep = [i for i, p in enumerate(found) if p is not None]
    assert len(keep) > 100
    crops, lm = [crops[i] for i in keep], np.stack([found[i][:, :2] for i in keep]).astype(np.float64)
    tpl = ms.stable_template(lm)
    pts = ms.aligned_moving_points(lm, tpl)
    shapes = (pts - pts.mean(axis=0)).reshape(len(lm), -1) * ms.SCALE
    openings = ms.mouth_opening(lm)
    n = len(lm)
    warp = MouthWarp(fps=25.0)
    given, got = [], []
    with FaceMesh(static=False) as fm:
        for i in range(n):
            j = (i + n // 2) % n
            read = fm.landmarks(warp.apply(crops[i], lm[i], shapes[j], first_row=120))
            if read is not None:
                got.append(_opening(read))
                given.append(openings[j])
    assert len(got) > 0.9 * n
    r = float(np.corrcoef(given, got)[0, 1])
    assert r > 0.85, r  # measured 0.90
    # the closed frame given the widest mouth: a dark opening at its middle (the frame's own lips were there)
    wide, closed = int(np.argmax(openings)), int(np.argmin(openings))
    cx, cy = np.round((lm[closed][13] + lm[closed][14]) / 2).astype(int)
    opened = MouthWarp(fps=25.0).apply(crops[closed], lm[closed], shapes[wide], first_row=120)
    middle = (slice(cy - 1, cy + 2), slice(cx - 4, cx + 5))
    luma = np.array([0.114, 0.587, 0.299])  # BGR
    assert (opened[middle] @ luma).mean() < 0.8 * (crops[closed][middle] @ luma).mean()  # measured 51 against 70


def test_the_inner_lips_are_kept_apart_and_the_inside_drawn():
    from hyperlips.face.mouth_inside import cavity_colour, draw_inside, fill_from, paint_inside
    from hyperlips.face.mouth_warp import INNER, keep_apart

    # a mouth 100 px wide: its inner ring with the lips 20 px apart, then closed (the lips crossed by 2 px)
    n = len(ms.INNER_LIP)
    x = 100 + 100 * (1 - np.cos(np.pi * np.arange(n // 2 + 1) / (n // 2))) / 2  # corner, lower lip, corner
    lower = np.stack([x, 200 + 10 * np.sin(np.pi * np.arange(n // 2 + 1) / (n // 2))], 1)
    upper = np.stack([x, 200 - 10 * np.sin(np.pi * np.arange(n // 2 + 1) / (n // 2))], 1)[::-1][1:-1]
    ring = np.vstack([lower, upper])
    points = np.zeros((len(ms.MOVING), 2))
    points[INNER] = ring
    assert np.array_equal(keep_apart(points, 1.0), points)  # apart already: unchanged
    crossed = points.copy()
    crossed[INNER, 1] = 200 + (crossed[INNER, 1] - 200) * -0.1
    kept = keep_apart(crossed, 1.5)[INNER]
    facing = kept[1:n // 2, 1] - kept[n - 1:n // 2:-1, 1]  # each lower point against the upper one above it
    assert facing.min() == pytest.approx(1.5) and np.abs(kept[:, 0] - ring[:, 0]).max() == 0
    assert np.allclose(kept[1:n // 2, 1] + kept[n - 1:n // 2:-1, 1], 400)  # each pair moved by half of it

    # the frame's inside painted dark; a new opening drawn dark where the frame's own did not fit, and the frame's
    # own inside where it does
    rng = np.random.default_rng(0)
    region = np.full((400, 400, 3), 180, np.uint8)
    region[190:211, 100:201] = rng.integers(200, 256, (21, 101, 3))  # teeth
    painted = paint_inside(region, ring)
    assert np.abs(painted[200, 150] - cavity_colour(region, ring)).max() < 1  # dark (grey round grey lips)
    assert painted[200, 150].max() < 0.5 * 180 and np.array_equal(painted[:185], region[:185])
    out = region.copy()
    draw_inside(out, region, ring, ring, 20.0, 20.0, sigma=1.0)  # the same opening: the frame's own inside
    assert np.abs(out[195:206, 120:181].astype(float) - region[195:206, 120:181]).mean() < 2
    closed = ring.copy()
    closed[:, 1] = 200 + (closed[:, 1] - 200) * 0.05
    out = region.copy()
    draw_inside(out, region, closed, ring, 1.0, 20.0, sigma=1.0)  # opening from closed: dark, 1/20 of it own
    assert np.abs(out[196:205, 130:171] - cavity_colour(region, ring)).max() < 1  # dark
    assert np.array_equal(out[:185], region[:185])
    # the hybrid's opening: filled from the network's face, as far as the two openings differ
    face = np.full_like(region, 60)
    out = region.copy()
    fill_from(out, face, ring, 1.0, 20.0, sigma=1.0)
    assert np.abs(out[198:203, 140:161].astype(float) - (60 * 0.95 + region[198:203, 140:161] * 0.05)).max() < 2
    out = region.copy()
    assert np.array_equal(fill_from(out, face, ring, 20.0, 20.0, sigma=1.0), region)  # the same opening: its own


def _starter_mouth(real_data, tmp_path, picture: np.ndarray, mouth: str = "auto") -> np.ndarray:
    """The mouth region (int16 frames) of ``picture`` (face2's frame 10, changed) synced by the shipped starter to
    1.2 s of real speech (``mouth``: ``sync --mouth``)."""
    import cv2

    from hyperlips import LipSync

    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), picture)
    speech = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "speech.wav", 1.2)
    with LipSync(progress=False, phones=False, mouth=mouth) as ls:
        ls.sync(photo, speech, tmp_path / "out.mp4")
    return np.stack(read_frames(tmp_path / "out.mp4")).astype(np.int16)[:, 450:600, 250:520]


def test_the_inside_is_dark_red_round_coloured_lips_and_grey_round_grey_ones(real_data, tmp_path):
    """A new opening's inside is dark red round the lips of colour footage (the colour of real mouths' insides,
    measured), and as grey as the lips round them in a black-and-white one: a greyscale photo synced with the starter
    stays grey in every pixel (the inside was drawn dark red: up to 7 levels between its channels)."""
    import cv2

    from hyperlips.face.mouth_inside import CAVITY, cavity_colour

    n = len(ms.INNER_LIP)
    t = np.arange(n // 2 + 1) / (n // 2)
    x = 100 + 100 * (1 - np.cos(np.pi * t)) / 2
    lower, upper = (np.stack([x, 200 + side * 10 * np.sin(np.pi * t)], 1) for side in (1, -1))
    ring = np.vstack([lower, upper[::-1][1:-1]])
    skin = np.array([120, 140, 190], np.uint8)  # BGR
    assert np.allclose(cavity_colour(np.full((400, 400, 3), skin), ring), CAVITY * skin)
    grey = cavity_colour(np.full((400, 400, 3), 150, np.uint8), ring)
    assert np.ptp(grey) < 1e-3 and 0.1 * 150 < grey[0] < 0.3 * 150
    faint = cavity_colour(np.full((400, 400, 3), [145, 150, 155], np.uint8), ring)  # a little colour: a little red
    assert 0 < faint[2] - faint[0] < (CAVITY[2] - CAVITY[0]) * 150

    frame = read_frames(real_data / "retalking" / "face2.mp4", 11)[10]
    mouth = _starter_mouth(real_data, tmp_path,
                           cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR))
    assert np.abs(mouth - mouth[:1]).mean() > 1.0  # the mouth moves
    assert (mouth.max(axis=3) - mouth.min(axis=3)).max() <= 1


def test_the_inside_moves_with_the_lips_unstretched():
    """Opened wider, the frame's upper teeth stay under the upper lip and its lower teeth go down with the lower lip,
    each as tall as before, dark between them; closing, the upper teeth stay in front and the lower ones go behind
    the lower lip. Both shaded towards dark by the share the openings agree. (The inside was stretched to the new
    ring before: tall grey teeth.)"""
    from hyperlips.face.mouth_inside import cavity_colour, draw_inside

    n = len(ms.INNER_LIP)
    t = np.arange(n // 2 + 1) / (n // 2)
    x = 100 + 100 * (1 - np.cos(np.pi * t)) / 2  # corner, the lower lip's points, corner

    def ring(up: float, down: float) -> np.ndarray:  # the upper lip ``up`` px above y 200 at its middle, the lower below
        lower = np.stack([x, 200 + down * np.sin(np.pi * t)], 1)
        upper = np.stack([x, 200 - up * np.sin(np.pi * t)], 1)[::-1][1:-1]
        return np.vstack([lower, upper])

    teeth_up, teeth_low = np.array([250, 250, 250]), np.array([60, 200, 60])
    region = np.full((400, 400, 3), 180, np.uint8)
    region[185:200, 90:211] = teeth_up  # the frame's inside: upper teeth above y 200, lower ones below
    region[200:215, 90:211] = teeth_low
    own = ring(10, 10)
    cols = slice(145, 156)  # the middle of the mouth, where the lips are 10 px from y 200
    def shaded(colour, share, dst):  # the colour shaded towards the dark of a mouth's inside
        dark = cavity_colour(region, dst)
        return dark + share * (colour - dark)

    out, wide = region.copy(), ring(10, 30)
    draw_inside(out, region, own, wide, 20.0, 40.0, sigma=1.0)  # the lower lip 20 px lower: twice as open
    col = out[:, cols].astype(float).mean(axis=1)  # (rows, 3)
    assert np.abs(col[192:199] - shaded(teeth_up, 0.5, wide)).max() < 2  # the upper teeth where they were
    assert np.abs(col[222:229] - shaded(teeth_low, 0.5, wide)).max() < 2  # the lower ones 20 px lower, as tall
    assert np.abs(col[202:219] - shaded(teeth_low, 0.0, wide)).max() < 2  # a dark gap between them
    out, narrow = region.copy(), ring(10, 0)
    draw_inside(out, region, own, narrow, 20.0, 10.0, sigma=1.0)  # the lower lip up to y 200: half as open
    col = out[:, cols].astype(float).mean(axis=1)
    assert np.abs(col[192:199] - shaded(teeth_up, 0.5, narrow)).max() < 2  # the upper teeth in front
    inside = out[191:200, 110:191].reshape(-1, 3).astype(float)
    assert (inside[:, 1] - inside[:, 0]).max() < 5  # nothing of the lower (green) teeth shows


def _synthetic_mouth(gap: float = 20.0, thickness: float = 12.0):
    """MOVING points of a mouth 100 px wide at (100..200, 200): the inner ring ``gap`` px open at its middle, its
    lower arc's points half a step aside from the upper arc's (as FaceMesh places them), the outer ring
    ``thickness`` px further out, the jaw an arc below."""
    n = len(ms.INNER_LIP)
    k = n // 2
    arc = lambda t: np.sin(np.pi * t / k)  # noqa: E731
    t_low = np.r_[0, np.arange(1, k) + 0.4, k]  # corner, the lower arc's points (aside), corner
    t_up = np.arange(k - 1, 0, -1)  # the upper arc, back from the far corner
    x = lambda t: 100 + 100 * (1 - np.cos(np.pi * t / k)) / 2  # noqa: E731
    inner = np.vstack([np.stack([x(t_low), 200 + gap / 2 * arc(t_low)], 1), np.stack([x(t_up), 200 - gap / 2 * arc(t_up)], 1)])
    outer = inner.copy()
    outer[1:k, 1] += thickness
    outer[k + 1:, 1] -= thickness
    outer[0, 0] -= 4
    outer[k, 0] += 4
    jaw_t = np.linspace(-0.3, 1.3, len(ms.JAW))
    jaw = np.stack([100 + 100 * jaw_t, 250 + 30 * np.sin(np.pi * np.clip(jaw_t, 0, 1))], 1)
    return np.vstack([outer, inner, jaw])


def test_close_lips_brings_the_lips_together_with_the_jaw():
    from hyperlips.face.mouth_warp import INNER, close_lips

    pts = _synthetic_mouth()
    n, k = len(ms.INNER_LIP), len(ms.INNER_LIP) // 2
    assert np.array_equal(close_lips(pts, 0.0), pts)

    def facing(p):  # each lower inner point's height below the upper one facing it
        inner = p[INNER]
        return inner[1:k, 1] - inner[n - 1:k:-1, 1]

    for amount in (0.5, 1.0):
        got = close_lips(pts, amount)
        np.testing.assert_allclose(facing(got), (1 - amount) * facing(pts), atol=1e-9)
        np.testing.assert_allclose(got[:, 0], pts[:, 0])  # only up and down
        outer = slice(0, len(ms.OUTER_LIP))
        np.testing.assert_allclose(got[outer, 1] - got[INNER, 1], pts[outer, 1] - pts[INNER, 1])  # lips as thick
        for corner in (0, k):
            assert np.array_equal(got[INNER][corner], pts[INNER][corner])
    jaw = slice(len(ms.OUTER_LIP) + n, len(ms.MOVING))
    lift = pts[jaw, 1] - close_lips(pts, 1.0)[jaw, 1]
    middle = int(np.argmin(np.abs(pts[jaw, 0] - 150)))
    assert lift[middle] == pytest.approx(facing(pts).max() / 2, rel=0.05)  # the chin rises with the lower lip
    outside = (pts[jaw, 0] < 100) | (pts[jaw, 0] > 200)
    assert outside.any() and np.all(lift[outside] == 0)  # nothing beyond the corners


def test_closed_lips_meet_without_the_inside_over_the_lower_lip():
    """The lips of a synthetic open mouth closed: the lower lip shows lip, not the dark inside. Triangles of the
    moved points joined the upper inner lip to the lower lip's outer edge and carried the inside there."""
    import cv2

    from hyperlips.face.mouth_warp import INNER, close_lips, keep_apart

    pts = _synthetic_mouth()
    image = np.full((400, 400, 3), 180, np.uint8)
    outer = pts[:len(ms.OUTER_LIP)]
    cv2.fillPoly(image, [np.round(outer).astype(np.int32)], (60, 60, 200))  # lips
    cv2.fillPoly(image, [np.round(pts[INNER]).astype(np.int32)], (20, 20, 20))  # the inside
    border = np.array([[0, 0], [399, 0], [0, 399], [399, 399], [200, 0], [0, 200], [399, 200], [200, 399]], float)
    dst = keep_apart(close_lips(pts, 1.0), 1.0)
    f = PiecewiseAffine(np.vstack([pts, border]), np.vstack([dst, border]))
    (x0, y0, x1, y1), mx, my = f.grid(400, 400)
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.remap(image, mx, my, cv2.INTER_LINEAR)
    k = len(ms.INNER_LIP) // 2
    low_inner, low_outer = dst[INNER][1:k], dst[:len(ms.OUTER_LIP)][1:k]
    dark = 0
    for (xa, ya), (_, yb) in zip(low_inner, low_outer):  # the lower lip's band under each of its inner points
        band = out[int(np.ceil(ya)) + 2:int(np.floor(yb)) - 1, int(xa)]
        dark += int((band.max(axis=1) < 100).sum())
    assert dark == 0
    line = out[195:206, 140:161].min(axis=(0, 2))
    assert line.max() < 100  # where they meet: a dark line


def test_given_bilabials_close_a_real_open_mouth(face2):
    """``close`` brings a real frame's open lips together: FaceMesh reads the mouth closed, half closed at 0.5."""
    from hyperlips.face.landmarks import FaceMesh

    crops, lm = face2
    tpl, mean, shapes = _own_shapes(lm)
    openings = ms.mouth_opening(lm)
    wide = int(np.argmax(openings))
    read = {}
    with FaceMesh(static=True) as fm:
        for amount in (0.0, 0.5, 1.0):
            warp = MouthWarp(fps=25.0, steady=False)
            warp.template, warp._sum, warp._n = tpl, mean.copy(), 1  # the clip's average mouth, learnt already
            got = fm.landmarks(warp.apply(crops[wide], lm[wide], shapes[wide], close=amount))
            read[amount] = _opening(got)
    assert read[0.0] > 0.8 * openings[wide]  # its own shape: as it was
    assert read[1.0] < 0.3 * read[0.0], read
    assert read[1.0] < read[0.5] < read[0.0], read


def test_pose_filter_steadies_a_still_head_and_follows_a_moving_one():
    rng = np.random.default_rng(0)
    still = np.full((60, 20, 2), 0.5) + rng.normal(0, 0.004, (60, 1, 2))  # FaceMesh's shake: the whole mesh moves
    f = PoseFilter(25.0)
    out = np.stack([f(p) for p in still])
    shake = lambda x: np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).mean()  # noqa: E731 (the jitter measure's second difference)
    assert shake(out[10:]) < 0.3 * shake(still[10:])
    # a head turning at a steady speed (a tenth of the region a second), then stopping: followed within two
    # frames' motion, and caught up within a few frames of the stop
    step = 0.1 / 25
    path = np.concatenate([0.3 + step * np.arange(50), np.full(25, 0.3 + step * 49)])
    f.reset()
    got = np.array([f(np.full((20, 2), x))[0, 0] for x in path])
    assert got[0] == path[0]  # a reset filter starts at the first reading
    assert np.abs(got[:50] - path[:50]).max() < 2 * step
    assert abs(got[-1] - path[-1]) < 0.05 * step
    with pytest.raises(ValueError):
        PoseFilter(0.0)


def test_the_mouth_is_placed_without_the_readings_shake(face2):
    """FaceMesh's shake of the whole mesh (added here to a real clip's readings) moves the placed mouth far less
    with the pose steadied, which still puts it where the frame's own reading does, within 1% of the region."""
    from hyperlips.eval.metrics import second_difference

    _, lm = face2
    tpl = ms.stable_template(lm)
    pts = ms.aligned_moving_points(lm, tpl)
    shapes = (pts - pts.mean(axis=0)).reshape(len(lm), -1) * ms.SCALE  # each frame's own mouth
    shaken = lm + np.random.default_rng(1).normal(0, 1.0, (len(lm), 1, 2))
    iod = np.linalg.norm(lm[:, ms.EYE_OUTER[0]] - lm[:, ms.EYE_OUTER[1]], axis=1)
    placed = {}
    for steady in (True, False):
        for name, readings in (("real", lm), ("shaken", shaken)):
            warp = MouthWarp(frames=len(lm), steady=steady)
            for frame in lm:  # the clip's average mouth, learned first
                warp.observe(frame)
            placed[steady, name] = np.stack([warp.place(r, s, SIDE) for r, s in zip(readings, shapes)])
    jitter = {k: np.nanmean(second_difference(v, iod)) for k, v in placed.items()}
    assert jitter[True, "shaken"] < 0.7 * jitter[False, "shaken"], jitter
    own = lm[:, list(ms.MOVING)]
    assert np.abs(placed[False, "real"] - own).max() < 0.25  # unsteadied, the frame's own mouth lands on its points
    assert np.abs(placed[True, "real"] - own).mean() < 0.01 * SIDE
    # steady is the default (what sync and live use); a frame without a face starts the pose afresh: the next is
    # placed by its own reading
    warp = MouthWarp(frames=len(lm))
    assert warp.pose is not None
    for frame in lm:
        warp.observe(frame)
    for r, s in zip(lm[:10], shapes[:10]):
        warp.place(r, s, SIDE)
    warp.lost()
    assert np.abs(warp.place(lm[10], shapes[10], SIDE) - own[10]).max() < 0.25


def test_a_region_without_a_face_gets_the_network_face(real_data):
    """The warp step on a frame where FaceMesh finds no face: the network's face as it is, and the pose starts
    afresh (a cut or a lost face must not pull the next frames' mouths towards the old place)."""
    from hyperlips.face.detect import FaceDetector
    from hyperlips.mouth import MouthStep

    with pytest.raises(ValueError):
        MouthStep("render")
    frame = read_frames(real_data / "retalking" / "face2.mp4", 1)[0]
    with FaceDetector() as det:
        box = det.detect(frame)[0]
    face = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    shape = np.zeros(ms.N_SHAPE, np.float32)
    step = MouthStep("warp", fps=30.0)
    try:
        warped = step(frame, box, face, shape)
        assert warped.shape[0] > 128 and step._warp.pose.fps == 30.0 and step._warp.pose._x is not None
        out = step(np.full_like(frame, 90), box, face, shape)  # the same place, no face in it
        assert out is face
        assert step._warp.pose._x is None
        assert (step.looked, step.missed) == (2, 1)  # counted: sync says how often the rendered face stood in
    finally:
        step.close()
    # the hybrid fills the warped frame's new opening from the network's face, the warp draws it
    for mode, filled in (("hybrid", True), ("warp", False)):
        step, seen = MouthStep(mode), []
        real_apply = MouthWarp.apply
        try:
            MouthWarp.apply = lambda self, *a, **kw: seen.append(kw.get("fill")) or real_apply(self, *a, **kw)
            step(frame, box, face, shape)
        finally:
            MouthWarp.apply = real_apply
            step.close()
        assert len(seen) == 1 and (seen[0] is not None) == filled
        if filled:
            assert seen[0].shape[:2] == (warped.shape[0],) * 2 and abs(float(seen[0].mean()) - float(face.mean())) < 2


def test_warped_faces_are_pasted_back_as_the_frames_own(real_data):
    """A warped face is the frame's own pixels: paste-back skips the colour matching a drawn face gets (the hybrid's
    face is the network's, and keeps it)."""
    from hyperlips.face.detect import FaceDetector
    from hyperlips.generator_io import face_crop
    from hyperlips.pipeline import LipSync
    from hyperlips.streaming import FrameJob, paste_stage

    frames = read_frames(real_data / "retalking" / "face2.mp4", 2)
    with FaceDetector() as det:
        box = det.detect(frames[0])[0]
    for mode, own in (("warp", {"color": "none"}), ("hybrid", {})):
        ls = LipSync(progress=False, mouth=mode, precision="fp32")
        ls.new_clip(25.0)
        jobs = [FrameJob(j=i, s=i, image=f.copy(), box=box) for i, f in enumerate(frames)]
        windows = np.zeros((len(jobs), 1, ls.base.audio_rows, ls.base.mel_steps), np.float32)
        ls.render_jobs(jobs, face_crop(frames[0], box, 128), windows)
        assert [job.own_face for job in jobs] == [mode == "warp"] * len(jobs)
        calls = []
        stage = paste_stage(lambda image, face, box, inplace, **kw: calls.append(kw) or image)
        assert len(list(stage(iter([jobs])))) == len(jobs)
        assert calls == [own] * len(jobs)


def test_the_hybrid_warps_its_detail_to_the_mouth_its_network_draws(real_data):
    """The hybrid's detail is the frame warped to the shape its network renders (the encoder's shape times the
    network's own gain), so the footage's lips land on the drawn ones; the warp takes the shapes WARP_GAIN times."""
    import torch

    from hyperlips.face.detect import FaceDetector
    from hyperlips.generator_io import face_crop
    from hyperlips.models.lite import HyperLipsLite, LiteConfig
    from hyperlips.mouth import WARP_GAIN
    from hyperlips.pipeline import LipSync
    from hyperlips.streaming import FrameJob

    frames = read_frames(real_data / "retalking" / "face2.mp4", 2)
    with FaceDetector() as det:
        box = det.detect(frames[0])[0]
    torch.manual_seed(0)
    net = HyperLipsLite(LiteConfig(shape_gain=2.4)).eval()
    windows = np.random.default_rng(1).normal(size=(len(frames), 1, net.audio_rows, net.mel_steps)).astype(np.float32)
    with torch.no_grad():
        read = net.audio_encoder(torch.from_numpy(windows)).numpy()
        drawn = net.gained(torch.from_numpy(read)).numpy()
    assert np.abs(read).max() > 0.05  # shapes that tell the gains apart
    for mode, expect in (("hybrid", drawn), ("warp", read * WARP_GAIN)):
        ls = LipSync(network=net, device="cpu", progress=False, mouth=mode, precision="fp32")
        ls.new_clip(25.0)
        jobs = [FrameJob(j=i, s=i, image=f.copy(), box=box) for i, f in enumerate(frames)]
        seen, real_apply = [], MouthWarp.apply
        try:
            MouthWarp.apply = lambda self, region, points, shape, **kw: (
                seen.append(np.array(shape)) or real_apply(self, region, points, shape, **kw))
            ls.render_jobs(jobs, face_crop(frames[0], box, 128), windows)
        finally:
            MouthWarp.apply = real_apply
        assert len(seen) == len(frames), mode
        np.testing.assert_allclose(np.stack(seen), expect, rtol=1e-4, atol=1e-5, err_msg=mode)


def _lower_face_sharpness(frames, box) -> float:
    import cv2

    x1, y1, x2, y2 = box
    return float(np.mean([cv2.Laplacian(cv2.cvtColor(f[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
                          for f in frames]))


def test_sync_warp_and_hybrid_keep_the_frame_and_its_detail(real_data, tmp_path):
    """The shipped starter on a real clip: with --mouth warp and hybrid everything above the face is the input's,
    and the mouth keeps the footage's detail that the rendered mouth loses."""
    from hyperlips.face.detect import FaceDetector

    video = real_data / "retalking" / "face2.mp4"
    audio = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "a.wav", 1.2)
    frames = {}
    for mode in ("render", "warp", "hybrid"):
        out = tmp_path / f"{mode}.mp4"
        r = run_cli("sync", video, audio, "-o", out, "--quiet", "--mouth", mode)
        assert r.returncode == 0, r.stderr
        assert "(HyperLips-Lite, generic)" in r.stdout
        frames[mode] = read_frames(out, 30)
    src = read_frames(video, 30)
    assert all(len(f) == 30 for f in frames.values())
    with FaceDetector() as det:
        b = det.detect(src[0])[0]
    h = b.y2 - b.y1
    mouth = (int(b.x1 + 0.25 * (b.x2 - b.x1)), int(b.y1 + 0.62 * h), int(b.x2 - 0.25 * (b.x2 - b.x1)), int(b.y2))
    real, rendered = _lower_face_sharpness(src, mouth), _lower_face_sharpness(frames["render"], mouth)
    for mode, gain in (("warp", 1.5), ("hybrid", 1.2)):  # measured: 1.6x and 1.36x the rendered mouth's
        for a, w in zip(src, frames[mode]):
            assert psnr(a[: int(b.y1)], w[: int(b.y1)]) > 40
        got = _lower_face_sharpness(frames[mode], mouth)
        assert got > 0.5 * real and got > gain * rendered, (mode, real, got, rendered)
    # the hybrid's mouth is the network's, not the warped frame's: closer to the rendered frames than the warp's
    diff = {m: np.mean([np.abs(x[mouth[1]:mouth[3], mouth[0]:mouth[2]].astype(float) - y[mouth[1]:mouth[3], mouth[0]:mouth[2]]).mean()
                        for x, y in zip(frames[m], frames["render"])]) for m in ("warp", "hybrid")}
    assert diff["hybrid"] < diff["warp"], diff


def test_auto_warps_a_starters_mouth_and_details_a_person_models(tmp_path):
    import shutil

    from hyperlips.models import load_checkpoint, save_checkpoint, shipped
    from hyperlips.models.metadata import read_metadata
    from hyperlips.mouth import is_generic_starter
    from hyperlips.pipeline import LipSync

    starter = shipped.starter()
    if starter is None:
        pytest.skip("this build ships no starter")
    assert LipSync(progress=False).mouth == "warp"  # no weights given: the shipped starter
    assert LipSync(starter.path, progress=False).mouth == "warp"  # the same file, named (as the server does)
    copy = shutil.copy(starter.path, tmp_path / "starter-copy.safetensors")  # a copy of it is still the starter
    assert LipSync(copy, progress=False).mouth == "warp"
    for name in ("STARTER.SAFETENSORS", "starter_no_suffix"):  # whatever its name (a copy from another system was
        assert is_generic_starter(shutil.copy(starter.path, tmp_path / name)), name  # given the hybrid, silently)
    net, info = load_checkpoint(starter.path)  # the same weights without the starter's card: as finetune writes
    config = {k: v for k, v in info.config.items() if k not in ("card", "extra", "name", "step", "format_version")}
    other = save_checkpoint(net, tmp_path / "person.safetensors", info.name, config=config, step=1)
    assert "card" not in read_metadata(other) and LipSync(other, progress=False).mouth == "hybrid"
    assert LipSync(other, progress=False, mouth="warp").mouth == "warp"
    (tmp_path / "notes.safetensors").write_bytes(b"not weights")  # unreadable: not a starter (loading says why)
    assert not is_generic_starter(tmp_path / "notes.safetensors") and not is_generic_starter(None)
    assert LipSync(untrained=True, model="lite", progress=False).mouth == "render"
    assert LipSync(untrained=True, progress=False).mouth == "render"  # HyperLips-Base has no mouth shapes
    assert LipSync(progress=False, mouth="render").mouth == "render"


def test_warp_needs_mouth_shapes(real_data, tmp_path):
    audio = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "a.wav", 0.4)
    r = run_cli("sync", real_data / "retalking" / "face2.mp4", audio, "-o", tmp_path / "o.mp4", "--untrained",
                "--model", "base", "--mouth", "warp", "--quiet")
    assert r.returncode != 0
    assert "--mouth warp" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_a_face_the_frames_edge_cuts_through_the_mouth_gets_its_own_mouth_moved(real_data, tmp_path):
    """A photo whose face the frame's edge cuts through the mouth: its crop reaches past the edge, FaceMesh finds the
    mouth, and the frame shows what the whole photo shows there. Clipped to the frame, the crop squeezed the face,
    FaceMesh found no mouth, and every frame showed the starter's soft rendered face beside the real mouth (a mean
    difference of 7.7 grey levels from the whole photo's output over the lower face; now 1.1)."""
    import cv2

    from hyperlips import LipSync

    frame = read_frames(real_data / "retalking" / "face2.mp4", 11)[10]
    photo, whole = tmp_path / "cut.png", tmp_path / "whole.png"
    cv2.imwrite(str(photo), frame[:, 330:])  # the left edge through the mouth
    cv2.imwrite(str(whole), frame)
    speech = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "speech.wav", 0.6)
    with LipSync(progress=False, phones=False) as ls:
        report = ls.sync(photo, speech, tmp_path / "out.mp4")
        assert not any("FaceMesh found no mouth" in w for w in report.warnings), report.warnings
        ls.sync(whole, speech, tmp_path / "whole.mp4")
    got = np.stack(read_frames(tmp_path / "out.mp4")).astype(np.float32)[:, 450:600, :190]  # the lower face
    want = np.stack(read_frames(tmp_path / "whole.mp4")).astype(np.float32)[:, 450:600, 330:520]
    assert np.abs(want - want[:1]).mean() > 1.5  # the mouth moves
    assert np.abs(got - want).mean() < 3.0


def test_sync_says_where_the_mouth_could_not_be_found_to_move(real_data, tmp_path, monkeypatch):
    """Where FaceMesh finds no mouth in the face region (a face turned away or covered), the frame shows the network's
    rendered face instead of its own mouth moved: said, with how many of the crops it was."""
    import cv2

    from hyperlips import LipSync
    from hyperlips.face.landmarks import FaceMesh

    frame = read_frames(real_data / "retalking" / "face2.mp4", 11)[10]
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), frame)
    speech = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "speech.wav", 0.6)
    with LipSync(progress=False, phones=False) as ls:
        report = ls.sync(photo, speech, tmp_path / "out.mp4")
        assert not any("FaceMesh found no mouth" in w for w in report.warnings), report.warnings
        monkeypatch.setattr(FaceMesh, "landmarks", lambda self, image: None)
        report = ls.sync(photo, speech, tmp_path / "out2.mp4")
        assert any("FaceMesh found no mouth in 15 of the 15 face crops" in w for w in report.warnings), report.warnings


@pytest.mark.parametrize("mouth", ["warp", "render", "hybrid"])
def test_a_faded_pictures_mouth_is_no_darker_than_its_darkest(real_data, tmp_path, mouth):
    """A washed-out picture (its darkest pixel 80-84, 0.3 of its contrast: faded film, a bad transfer): the new
    opening was drawn near-black (2-11), a hole cut in it; the network's face (render, hybrid) had its inside at
    51-53. Over a lifted black the inside is drawn above that black, and the network's face eased onto it; a real
    clip's frame (black 18-53 in every clip here) is not taken as lifted."""
    from hyperlips.face.mouth_inside import frame_black

    frame = read_frames(real_data / "retalking" / "face2.mp4", 11)[10]
    assert not frame_black(frame).any()
    faded = np.clip(128 + (frame.astype(np.float32) - 128) * 0.3, 0, 255).astype(np.uint8)
    assert frame_black(faded).max() > 85
    region = _starter_mouth(real_data, tmp_path, faded, mouth)
    assert np.abs(region - region[:1]).mean() > 0.3  # the mouth moves
    assert region.min() >= int(faded.min()) - 8, (region.min(), faded.min())
