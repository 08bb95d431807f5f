"""Video probing, streaming decode (forward, seek, reverse), still images, and the atomic H.264 + AAC writer."""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from hyperlips.errors import InputWarning, MediaError, UserError
from hyperlips.media.audio import load_audio
from hyperlips.media.video import FrameReader, probe, rotate_image
from hyperlips.media.writer import VideoWriter, coded_size


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def decode_all(path: Path) -> dict:
    """Independent read-back with plain PyAV: stream facts and frame count."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        facts = {
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "rate": Fraction(v.average_rate),
            "codec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "profile": v.codec_context.profile,
            "video_seconds": float(v.duration * v.time_base),
            "audio_codec": a.codec_context.name if a else None,
            "audio_seconds": float(a.duration * a.time_base) if a is not None else None,
        }
        facts["frames"] = sum(1 for _ in c.decode(video=0))
    return facts


def no_partials(folder: Path) -> bool:
    return not [p for p in os.listdir(folder) if ".partial" in p]


# ------------------------------------------------------------------------------------------------ probe
def test_probe_real_clips(real_data, more_data):
    v1 = probe(real_data / "hyperlips" / "video1.mp4")
    assert (v1.width, v1.height, v1.fps, v1.n_frames) == (1278, 720, 25.0, 272)
    assert v1.duration == pytest.approx(10.88) and v1.has_audio and not v1.is_image and v1.rotation == 0

    f1 = probe(real_data / "retalking" / "face1.mp4")  # 30 fps with dropped frames (variable frame rate)
    assert (f1.width, f1.height, f1.rate, f1.n_frames) == (700, 700, Fraction(30), 135)
    assert f1.duration == pytest.approx(6.1, abs=0.01)

    grid = probe(more_data / "grid_lipnet" / "bbaf2n.mpg")  # MPEG-PS: the container declares no frame count
    assert (grid.width, grid.height, grid.fps, grid.n_frames, grid.codec) == (360, 288, 25.0, 75, "mpeg1video")

    silent = probe(more_data / "edtalk" / "mouth_source.mp4")
    assert not silent.has_audio and silent.n_frames == 250


def test_probe_errors(tmp_path, real_data):
    with pytest.raises(MediaError, match="missing.mp4"):
        probe(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 500)
    with pytest.raises(MediaError, match="bad.mp4"):
        probe(bad)
    with pytest.raises(MediaError, match="has no video stream"):
        probe(real_data / "hyperlips" / "audio1.wav")
    with pytest.raises(MediaError, match="bad.mp4"):
        FrameReader(bad)


@pytest.mark.parametrize(
    "rel",
    ["real/hyperlips/video1.mp4", "real/retalking/face1.mp4", "more/grid_lipnet/bbaf2n.mpg",
     "more/vexpress/RD_Radio10_0_clip_0.mp4", "more/dfrf/french.mp4"],
)
def test_forward_count_equals_probe(shared_dir, rel):
    path = shared_dir / "data" / rel
    if not path.exists():
        pytest.skip(f"{rel} absent")
    info = probe(path)
    with FrameReader(path) as r:
        frames = [(f.index, f.time, f.image.shape) for f in r]
    assert len(frames) == info.n_frames == decode_all(path)["frames"]
    assert [i for i, _, _ in frames] == list(range(info.n_frames))
    assert frames[0][1] == 0.0 and all(b[1] > a[1] for a, b in zip(frames, frames[1:]))
    assert {s for _, _, s in frames} == {(info.height, info.width, 3)}
    # the last frame's time plus one frame period is the duration (for variable rates too)
    assert frames[-1][1] < info.duration <= frames[-1][1] + 2.5 / info.fps


# ------------------------------------------------------------------------------------------------ seeking
@pytest.mark.parametrize(
    "rel, starts",
    [
        ("real/hyperlips/video1.mp4", [1, 40, 149, 150, 151, 200]),  # keyframes at 0 and 150
        ("real/retalking/face1.mp4", [3, 57, 99, 100, 130]),  # VFR, keyframes at 0 and 100
        ("more/dfrf/french.mp4", [1, 59, 60, 61, 100]),  # first pts is 0.08 s, keyframe every 60
        ("more/vexpress/RD_Radio10_0_clip_0.mp4", [1, 30, 58]),  # B-frames and an edit-list-discarded packet
        ("more/grid_lipnet/bbaf2n.mpg", [1, 11, 12, 13, 70]),  # MPEG-1, GOP 12
    ],
)
def test_seek_gives_the_same_frames_as_forward(shared_dir, rel, starts):
    path = shared_dir / "data" / rel
    if not path.exists():
        pytest.skip(f"{rel} absent")
    top = max(starts) + 3
    with FrameReader(path) as r:
        fwd = {f.index: f for f in r.iter_range(0, top)}
        assert sorted(fwd) == list(range(min(top, r.n_frames)))
        for s in starts:
            got = list(r.iter_range(s, s + 3))
            assert [f.index for f in got] == [i for i in range(s, s + 3) if i < r.n_frames]
            for f in got:
                assert f.time == pytest.approx(fwd[f.index].time, abs=1e-9)
                assert np.array_equal(f.image, fwd[f.index].image), (s, f.index)


def test_reverse_equals_reversed_forward(real_data):
    path = real_data / "hyperlips" / "video1.mp4"
    with FrameReader(path, chunk=8) as r:  # small chunks: several seeks inside the range
        fwd = list(r.iter_range(140, 165))
        rev = list(r.iter_range(140, 165, reverse=True))
    assert [f.index for f in rev] == list(range(164, 139, -1))
    for a, b in zip(reversed(fwd), rev):
        assert a.index == b.index and np.array_equal(a.image, b.image)


def test_reverse_on_vfr_clip_and_range_clamping(real_data):
    path = real_data / "retalking" / "face1.mp4"
    with FrameReader(path, chunk=16) as r:
        n = r.n_frames
        fwd = list(r.iter_range(n - 40, n + 10))  # stop past the end is clamped
        rev = list(r.iter_range(n - 40, n + 10, reverse=True))
        assert list(r.iter_range(n, n + 5)) == [] and list(r.iter_range(5, 5, reverse=True)) == []
    assert [f.index for f in fwd] == list(range(n - 40, n))
    assert [f.index for f in rev] == list(range(n - 1, n - 41, -1))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(reversed(fwd), rev))


def test_avi_with_b_frames_keeps_display_order(tmp_path):
    """AVI stores decode-order counters, not presentation times: frames must still come out in display order."""
    import av

    path = tmp_path / "bframes.avi"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"g": "10", "bf": "3"}
        for i in range(40):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 + i * 5, np.uint8), format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert probe(path).n_frames == 40
    with FrameReader(path, chunk=7) as r:
        fwd = list(r)
        rev = list(r.iter_range(0, 40, reverse=True))
        mid = list(r.iter_range(23, 26))
    level = [int(f.image[0, 0, 1]) for f in fwd]
    assert [f.index for f in fwd] == list(range(40)) and all(b > a for a, b in zip(level, level[1:]))
    assert [f.index for f in rev] == list(range(39, -1, -1))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(reversed(fwd), rev))
    assert [f.index for f in mid] == [23, 24, 25] and np.array_equal(mid[0].image, fwd[23].image)
    assert fwd[10].time == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------------ rotation
def test_rotate_helper():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert rotate_image(img, 0) is img
    r90 = rotate_image(img, 90)  # counter-clockwise: the top-right pixel goes to the top-left
    assert r90.shape == (3, 2, 3) and np.array_equal(r90[0, 0], img[0, 2])
    assert np.array_equal(rotate_image(img, 180), img[::-1, ::-1])
    assert np.array_equal(rotate_image(img, 270), rotate_image(img, -90))
    assert r90.flags["C_CONTIGUOUS"]


def test_non_square_pixels_are_read_turned_with_the_picture_and_written_back(tmp_path):
    """An anamorphic video (each pixel shown 4/3 as wide as high) keeps that shape through probe and the writer; a
    picture shown turned a quarter has its pixels turned too (3/4); square or untagged pixels are 1 and stay
    untagged."""
    import av
    from media_builders import write_video

    img = np.full((32, 24, 3), 90, np.uint8)
    write_video(tmp_path / "wide.mp4", [img] * 2, sample_aspect=Fraction(4, 3))
    write_video(tmp_path / "turned.mp4", [img] * 2, sample_aspect=Fraction(4, 3), rotation=90)
    write_video(tmp_path / "square.mp4", [img] * 2)
    assert probe(tmp_path / "wide.mp4").sample_aspect == Fraction(4, 3)
    assert probe(tmp_path / "turned.mp4").sample_aspect == Fraction(3, 4)
    assert probe(tmp_path / "square.mp4").sample_aspect == 1
    for sar in (Fraction(4, 3), None, Fraction(1)):
        out = tmp_path / f"out{sar}.mp4".replace("/", "_")
        with VideoWriter(out, 24, 32, 25, sample_aspect=sar) as w:
            w.write(img)
        assert probe(out).sample_aspect == (sar or 1)
        with av.open(str(out)) as c:
            tagged = c.streams.video[0].sample_aspect_ratio or Fraction(0)
        assert tagged == (Fraction(0) if sar in (None, 1) else sar)  # square pixels: no tag written


def test_display_rotation_is_applied(tmp_path):
    import av

    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:  # 64x48 coded, a white block top-left, tagged "rotate 90° counter-clockwise"
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.colorspace, s.codec_context.color_range = 1, 1  # BT.709, limited: as the writer codes
        s.set_display_rotation(90)
        img = np.zeros((48, 64, 3), np.uint8)
        img[:8, :16] = 255
        for _ in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    with FrameReader(path) as r:
        frames = list(r)
    assert len(frames) == 3 and frames[0].image.shape == (64, 48, 3)
    bright = np.argwhere(frames[0].image[..., 1] > 128)
    assert bright[:, 0].min() >= 46 and bright[:, 1].max() <= 9  # the block is now bottom-left
    from hyperlips.media.video import writer_coded

    with av.open(str(path)) as c:
        assert writer_coded(next(c.decode(video=0)))
    with FrameReader(path, keep_source=True) as r:
        assert next(iter(r)).source is None  # shown turned: the coded picture is not the frame, nothing to copy


# ------------------------------------------------------------------------------------------------ still images
def test_still_image_is_a_one_frame_video(tmp_path):
    import cv2

    img = np.random.default_rng(0).integers(0, 256, (75, 61, 3), dtype=np.uint8)
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), img)
    info = probe(path)
    assert info.is_image and (info.width, info.height, info.fps, info.n_frames) == (61, 75, 25.0, 1)
    with FrameReader(path) as r:
        frames = list(r)
        assert len(frames) == 1 and frames[0].index == 0 and frames[0].time == 0.0
        assert np.array_equal(frames[0].image, img)
        assert len(list(r.iter_range(0, 1, reverse=True))) == 1 and list(r.iter_range(1, 5)) == []
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all" * 10)
    with pytest.raises(MediaError, match="broken.jpg"):
        probe(bad)


# ------------------------------------------------------------------------------------------------ writer
def test_writer_round_trip_720p_odd_width_with_audio(real_data, tmp_path):
    src = real_data / "hyperlips" / "video1.mp4"  # 1278 x 720: even, but not a multiple of 16
    with FrameReader(src) as r:
        frames = [f.image for f in r.iter_range(0, 20)]
    audio = load_audio(src, 48000)[: int(0.8 * 48000)]
    out = tmp_path / "rt.mp4"
    with VideoWriter(out, 1278, 720, 25.0, audio=audio, sample_rate=48000) as w:
        for f in frames:
            w.write(f)
    assert no_partials(tmp_path)
    got = decode_all(out)
    assert (got["width"], got["height"], got["rate"], got["frames"]) == (1278, 720, Fraction(25), 20)
    assert got["codec"] == "h264" and got["pix_fmt"] == "yuv420p" and got["audio_codec"] == "aac"
    assert got["video_seconds"] == pytest.approx(0.8, abs=1e-6)
    assert got["audio_seconds"] == pytest.approx(0.8, abs=1 / 25)
    with FrameReader(out) as r:
        back = [f.image for f in r]
    assert min(psnr(a, b) for a, b in zip(back, frames)) > 38
    back_audio = load_audio(out, 48000)
    assert abs(len(back_audio) - len(audio)) <= 48000 / 25
    assert np.corrcoef(back_audio[: len(audio)], audio[: len(back_audio)])[0, 1] > 0.99


def test_colours_survive_a_round_trip(tmp_path):
    """BGR -> BT.709 YUV -> BGR with exact rounding: no level shift (swscale's fast paths lose 1-2 levels)."""
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))  # 192x320
    out = tmp_path / "colours.mp4"
    with VideoWriter(out, 320, 192, 25, crf=0) as w:  # crf 0: lossless H.264, only the colour conversion is left
        w.write(img)
    with FrameReader(out) as r:
        back = next(iter(r)).image
    d = (back.astype(int) - img).reshape(12, 16, 20, 16, 3)[:, 4:12, :, 4:12]  # block interiors (chroma is 4:2:0)
    assert abs(d.mean()) < 0.1 and np.abs(d).mean() < 0.6 and np.abs(d).max() <= 3


@pytest.mark.parametrize("size", [(130, 96), (129, 95)])
def test_the_reader_converts_every_picture_format_as_swscale_does_to_packed_bgr(real_data, size):
    """The reader converts through planar RGB where that gives the same pixels as swscale's packed BGR output (half
    the CPU); elsewhere (odd sides) through packed BGR itself. Every format it takes the planar way, at both."""
    import av
    import cv2
    from av.video.reformatter import Interpolation, VideoReformatter

    from hyperlips.media.video import PLANAR_RGB_SAME

    flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    rf = VideoReformatter()
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), (0, 0), 1.5)
    img[8:40, 8:60] = (0, 0, 255)  # saturated edges, where chroma interpolation shows
    with FrameReader(real_data / "hyperlips" / "video2.mp4") as reader:
        for fmt in sorted(PLANAR_RGB_SAME):
            for space, levels in (("ITU601", "MPEG"), ("ITU709", "MPEG"), ("ITU709", "JPEG")):
                src = av.VideoFrame.from_ndarray(img, format="bgr24")
                picture = rf.reformat(src, format=fmt, dst_colorspace=space, dst_color_range=levels)
                want = rf.reformat(picture, format="bgr24", interpolation=flags).to_ndarray()
                got = reader._to_bgr(picture)
                assert got.shape == want.shape and np.array_equal(got, want), (fmt, space, levels, size)


def _planes(picture) -> list[np.ndarray]:
    """Y, U and V of a decoded 4:2:0 picture."""
    from hyperlips.media.video import plane_views

    return [v.copy() for v in plane_views(picture)]


def test_writer_copies_the_decoded_picture_where_the_frame_is_unchanged(real_data, tmp_path):
    """Given each frame's decoded picture and the region that changed, the file holds exactly the decoded picture
    outside that region (and its margin) and, inside, the frame as a whole-frame conversion codes it. Converting the
    whole frame back instead moves the untouched chroma a little (4:2:0 -> BGR -> 4:2:0 is not exact)."""
    src = real_data / "hyperlips" / "video2.mp4"  # BT.709, limited range, 4:2:0: coded as the writer codes
    with FrameReader(src, keep_source=True) as r:
        frames = [f for _, f in zip(range(3), r)]
    with FrameReader(src) as r:
        assert next(iter(r)).source is None  # kept only when asked for
    box = (541, 331, 761, 601)  # odd edges: the copied part starts on whole chroma samples
    written = {}
    for mode in ("copied", "converted"):
        out = tmp_path / f"{mode}.mp4"
        with VideoWriter(out, 1280, 720, 25, crf=0) as w:  # crf 0: lossless, the file holds what the encoder got
            for f in frames:
                img = f.image.copy()
                img[box[1] : box[3], box[0] : box[2]] //= 2
                w.write(img, f.source, box) if mode == "copied" else w.write(img)
        with FrameReader(out, keep_source=True) as r:
            written[mode] = [_planes(fr.source) for fr in r]
    far = np.ones((720, 1280), bool)
    far[box[1] - 10 : box[3] + 10, box[0] - 10 : box[2] + 10] = False
    inside = np.zeros((720, 1280), bool)
    inside[box[1] + 1 : box[3] - 1, box[0] + 1 : box[2] - 1] = True
    chroma_moved = 0
    for f, copied, converted in zip(frames, written["copied"], written["converted"]):
        for k, (a, b, s) in enumerate(zip(copied, converted, _planes(f.source))):
            step = 1 if k == 0 else 2
            assert np.array_equal(a[far[::step, ::step]], s[far[::step, ::step]])
            assert np.array_equal(a[inside[::step, ::step]], b[inside[::step, ::step]])
            chroma_moved += k > 0 and not np.array_equal(b[far[::2, ::2]], s[far[::2, ::2]])
    assert chroma_moved  # what copying avoids


def test_writer_converts_when_the_decoded_picture_cannot_be_copied(real_data, tmp_path):
    """An untagged clip (read as BT.601) keeps no picture; a 4:4:4 writer, or a picture of another size, is given
    one and converts the frame instead (a deliberately wrong picture would otherwise show)."""
    with FrameReader(real_data / "retalking" / "face2.mp4", keep_source=True) as r:
        assert next(iter(r)).source is None
    with FrameReader(real_data / "hyperlips" / "video2.mp4", keep_source=True) as r:
        pics = [f for _, f in zip(range(2), r)]
    wrong = pics[1].source  # not the frame's own picture
    for pix_fmt, size in (("yuv444p", (1280, 720)), ("yuv420p", (640, 360))):
        img = np.ascontiguousarray(pics[0].image[: size[1], : size[0]])
        outs = []
        for source in (None, wrong):
            out = tmp_path / f"{pix_fmt}_{source is None}.mp4"
            with VideoWriter(out, *size, 25, crf=0, pix_fmt=pix_fmt) as w:
                w.write(img, source, None)
            with FrameReader(out) as r:
                outs.append(next(iter(r)).image)
        assert np.array_equal(outs[0], outs[1]), pix_fmt


def real_crop(real_data, w: int, h: int, n: int = 5) -> list[np.ndarray]:
    """``n`` frames of a real close-up, cut to ``w`` x ``h`` (the face in the middle)."""
    with FrameReader(real_data / "retalking" / "face1.mp4") as r:  # 700 x 700
        frames = [f.image for f in r.iter_range(0, n)]
    y, x = (700 - h) // 2, (700 - w) // 2
    return [np.ascontiguousarray(f[y : y + h, x : x + w]) for f in frames]


@pytest.mark.parametrize("size", [(321, 241), (320, 241), (321, 240), (320, 240)])
def test_writer_is_420_at_every_size_odd_sides_padded(real_data, tmp_path, size):
    """4:2:0 (what browsers and phones play) for odd sizes too: an odd side gains one column / row that repeats
    the last one; the picture itself keeps its place and its pixels."""
    w_, h_ = size
    frames = real_crop(real_data, w_, h_)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, w_, h_, 25) as w:
        for f in frames:
            w.write(f)
    assert (w.coded_width, w.coded_height) == (w_ + w_ % 2, h_ + h_ % 2) == coded_size(w_, h_)
    got = decode_all(out)
    assert (got["width"], got["height"], got["frames"], got["audio_codec"]) == (w_ + w_ % 2, h_ + h_ % 2, 5, None)
    assert got["pix_fmt"] == "yuv420p" and got["profile"] == "High", got
    info = probe(out)
    assert (info.width, info.height) == (w_ + w_ % 2, h_ + h_ % 2)
    with FrameReader(out) as r:
        back = [f.image for f in r]
    for a, b in zip(back, frames):
        assert psnr(a[:h_, :w_], b) > 38  # the picture is where it was
    if w_ % 2:  # the extra column is a copy of the last one (up to codec loss), not black or a wrap-around
        assert np.abs(back[0][:h_, w_].astype(int) - frames[0][:, w_ - 1]).mean() < 3
    if h_ % 2:
        assert np.abs(back[0][h_, :w_].astype(int) - frames[0][h_ - 1]).mean() < 3


def test_writer_444_keeps_the_exact_size(real_data, tmp_path):
    frames = real_crop(real_data, 321, 241, n=3)
    out = tmp_path / "exact.mp4"
    with VideoWriter(out, 321, 241, 25, pix_fmt="yuv444p") as w:
        for f in frames:
            w.write(f)
    assert (w.coded_width, w.coded_height) == (321, 241)
    got = decode_all(out)
    assert (got["width"], got["height"], got["frames"], got["pix_fmt"]) == (321, 241, 3, "yuv444p")
    with FrameReader(out) as r:
        assert psnr(next(iter(r)).image, frames[0]) > 38


def test_writer_crf_trades_size_for_quality(real_data, tmp_path):
    frames = real_crop(real_data, 320, 320, n=10)
    sizes, quality = {}, {}
    for crf in (12, 18, 30):
        out = tmp_path / f"crf{crf}.mp4"
        with VideoWriter(out, 320, 320, 25, crf=crf, preset="ultrafast") as w:
            for f in frames:
                w.write(f)
        sizes[crf] = out.stat().st_size
        with FrameReader(out) as r:
            quality[crf] = min(psnr(f.image, g) for f, g in zip(r, frames))
    assert sizes[12] > sizes[18] > sizes[30], sizes
    assert quality[12] > quality[18] > quality[30], quality


def test_writer_preset_changes_the_encoding(real_data, tmp_path):
    frames = real_crop(real_data, 320, 320, n=10)
    sizes = {}
    for preset in ("ultrafast", "medium"):
        out = tmp_path / f"{preset}.mp4"
        with VideoWriter(out, 320, 320, 25, preset=preset) as w:
            for f in frames:
                w.write(f)
        sizes[preset] = out.stat().st_size
    assert sizes["ultrafast"] > sizes["medium"], sizes  # same quality target, the slower preset packs it tighter


def test_encoder_threads_one_up_to_720p_on_two_cores(monkeypatch, tmp_path):
    """On 2 cores libx264's frame threads cost more than they save up to 720p (one thread then); larger frames and
    machines with more cores keep libx264's own choice; a writer given threads uses them."""
    import hyperlips.media.writer as writer_mod

    monkeypatch.setattr(writer_mod, "usable_cpus", lambda: 2)
    assert writer_mod.encoder_threads(1280, 720) == 1 and writer_mod.encoder_threads(844, 844) == 1
    assert writer_mod.encoder_threads(1920, 1080) == 0 and writer_mod.encoder_threads(1280, 722) == 0
    monkeypatch.setattr(writer_mod, "usable_cpus", lambda: 8)
    assert writer_mod.encoder_threads(1280, 720) == 0
    monkeypatch.setattr(writer_mod, "usable_cpus", lambda: 2)

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counting a process's threads needs Linux's /proc")

    def threads_now() -> int:
        return len(os.listdir("/proc/self/task"))

    img = np.broadcast_to(np.linspace(0, 255, 1280, dtype=np.uint8)[None, :, None], (720, 1280, 3)).copy()
    before = threads_now()
    with VideoWriter(tmp_path / "one.mp4", 1280, 720, 25) as w:
        assert w.threads == 1
        for _ in range(12):  # past libx264's look-ahead: frame threads would be running by now
            w.write(img)
        assert threads_now() <= before  # libx264 encodes in the calling thread
    for size, given, want in (((1920, 1080), None, 0), ((1280, 720), 3, 3)):
        w = VideoWriter(tmp_path / "other.mp4", *size, 25, threads=given)
        assert w.threads == want
        w.abort()


@pytest.mark.parametrize("kw", [{"crf": -1}, {"crf": 52}, {"crf": 18.5}, {"crf": "18"}, {"crf": True},
                                {"preset": "turbo"}, {"preset": "VeryFast"}, {"pix_fmt": "yuv422p"}])
def test_writer_refuses_bad_settings(tmp_path, kw):
    with pytest.raises(UserError, match=rf"--{next(iter(kw)).replace('_', '-')} \({next(iter(kw))}\) must be"):
        VideoWriter(tmp_path / "bad.mp4", 64, 48, 25, **kw)
    assert not list(tmp_path.iterdir())


def test_audio_and_video_start_together(real_data, tmp_path):
    """The muxed streams both start at 0 (AAC's encoder delay is hidden by the container, not a lead or lag)."""
    import av

    src = real_data / "hyperlips" / "video1.mp4"
    frames = real_crop(real_data, 321, 241, n=25)
    audio = load_audio(src, 48000)[:48000]
    out = tmp_path / "av.mp4"
    with VideoWriter(out, 321, 241, 25, audio=audio, sample_rate=48000) as w:
        for f in frames:
            w.write(f)
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        v_start, a_start = float(v.start_time * v.time_base), float(a.start_time * a.time_base)
        first_video = next(iter(c.decode(video=0)))
    assert v_start == 0 and a_start == 0, (v_start, a_start)
    assert first_video.time == 0
    data = out.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # the index first: browsers play while downloading
    back = load_audio(out, 48000)  # no silence slipped in front: the track lines up with the input sample for sample
    lag = int(np.argmax(np.correlate(back[:4800], audio[:2400], "valid")))
    assert lag == 0, lag


def test_writer_ntsc_rate_and_16k_audio(tmp_path):
    t = np.arange(16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    out = tmp_path / "ntsc.mp4"
    n = 30
    with VideoWriter(out, 64, 48, 30000 / 1001, audio=audio, sample_rate=16000) as w:
        for i in range(n):
            w.write(np.full((48, 64, 3), i * 8, np.uint8))
    got = decode_all(out)
    assert got["rate"] == Fraction(30000, 1001) and got["frames"] == n
    assert got["video_seconds"] == pytest.approx(n * 1001 / 30000, abs=1e-4)
    assert got["audio_seconds"] == pytest.approx(1.0, abs=1e-3)
    info = probe(out)
    assert info.rate == Fraction(30000, 1001) and info.n_frames == n


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "result.mp4"
    with pytest.raises(KeyError):
        with VideoWriter(out, 64, 48, 25) as w:
            for i in range(60):
                w.write(np.full((48, 64, 3), i, np.uint8))
            assert not out.exists() and not no_partials(tmp_path)  # data goes to a hidden file beside the target
            raise KeyError("boom")
    assert not out.exists() and no_partials(tmp_path)

    w = VideoWriter(out, 64, 48, 25)
    w.write(np.zeros((48, 64, 3), np.uint8))
    w.abort()
    assert not out.exists() and no_partials(tmp_path)

    w = VideoWriter(out, 64, 48, 25)
    with pytest.raises(ValueError):
        w.write(np.zeros((48, 63, 3), np.uint8))  # wrong size: refused, writer still usable
    w.write(np.zeros((48, 64, 3), np.uint8))
    assert w.close() == out and out.exists() and no_partials(tmp_path)
    assert decode_all(out)["frames"] == 1
    # the longest name the folder takes (255 bytes, letters of two bytes too): its partial's name, longer by 22,
    # was refused as "File name too long"
    for stem in ("n" * 251, "é" * 125 + "x", os.fsdecode(b"\xe9" * 251), os.fsdecode(b"o_\xe9")):  # and names
        long = tmp_path / f"{stem}.mp4"  # that are not UTF-8 (Latin-1 from an old system): a traceback at first
        assert len(os.fsencode(long.name)) in (255, 7)
        with VideoWriter(long, 64, 48, 25) as w:
            w.write(np.zeros((48, 64, 3), np.uint8))
        assert long.is_file() and no_partials(tmp_path)
        long.unlink()


def test_writer_missing_folder(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "such" / "out.mp4", 64, 48, 25)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a folder nobody can create files in)")
def test_writer_names_the_output_a_folder_refuses_at_once():
    """FFmpeg opens the file only at the first frame and then names no file: the writer tries the folder first."""
    with pytest.raises(MediaError, match=r"cannot write /proc/out\.mp4: No such file or directory"):
        VideoWriter(Path("/proc/out.mp4"), 64, 48, 25)


# ------------------------------------------------------------------------------------------------ memory
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memory_does_not_grow_with_length(tmp_path):
    """Write 1500 frames at 720p (60 s) with audio, read them back forward and in reverse: RSS stays flat."""
    h, w, n = 720, 1280, 1500
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    tile = np.kron(base, np.ones((16, 16, 1), np.uint8))
    audio = (0.1 * rng.standard_normal(16000 * 60)).astype(np.float32)
    out = tmp_path / "long.mp4"
    samples = []
    with VideoWriter(out, w, h, 25, audio=audio) as wr:
        for i in range(n):
            wr.write(np.roll(tile, i * 4, axis=1))
            if i in (200, n - 1):
                samples.append(_rss_mb())
    with FrameReader(out) as r:
        for f in r:
            if f.index in (200, n - 1):
                samples.append(_rss_mb())
        for f in r.iter_range(0, n, reverse=True):
            if f.index in (n - 200, 0):
                samples.append(_rss_mb())
    assert decode_all(out)["frames"] == n
    growth = [samples[1] - samples[0], samples[3] - samples[2], samples[5] - samples[4]]
    assert max(growth) < 60, (samples, growth)  # 1300 frames of 720p BGR would be 3.6 GB


@pytest.mark.parametrize("stage", ["open", "add_stream"])
def test_writer_interrupted_while_it_sets_up_leaves_no_file(tmp_path, monkeypatch, stage):
    """Ctrl-C or SIGTERM (raised as KeyboardInterrupt) while the writer opens its temporary file: it is removed."""
    import av

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if stage == "open":
        monkeypatch.setattr(av, "open", interrupt)
    else:
        real_open = av.open

        class Opened:  # the real container, whose add_stream is interrupted
            def __init__(self, c):
                self.close, self.add_stream = c.close, interrupt

        def open_then_interrupt(*args, **kwargs):
            return Opened(real_open(*args, **kwargs))

        monkeypatch.setattr(av, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        VideoWriter(tmp_path / "result.mp4", 64, 48, 25, audio=np.zeros(1600, np.float32))
    assert os.listdir(tmp_path) == []


def test_an_avi_capture_with_dropped_frames_keeps_its_timing(tmp_path):
    """An MJPEG AVI whose capture dropped frames (every fifth missing, as capture software writes it: gaps in its
    frame counters) shows each frame at its own time: the flash stored at counter 25 is at 1.0 s, with its sound,
    not 0.8 s (counted in stored order, the picture ran ahead of the sound)."""
    import av

    from hyperlips.media.timing import open_timeline

    path = tmp_path / "capture.avi"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p"
        for t in (t for t in range(50) if t % 5 != 1):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 255 if t == 25 else 40, np.uint8), format="rgb24")
            f = f.reformat(format="yuvj420p")
            f.pts = t
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with open_timeline(path) as tl:
        bright = [(fr.index, round(fr.time, 2)) for fr in tl if fr.image.mean() > 200]
    assert bright[0] == (25, 1.0), bright


def test_cover_art_is_not_a_video(tmp_path):
    """An mp3 with its album's cover (an attached picture): no video to lip-sync, said so (a face on the cover was
    once lip-synced as a 75-frame video)."""
    import av
    from av.stream import Disposition

    from hyperlips.errors import MediaError
    from hyperlips.media.video import probe

    path = tmp_path / "song.mp3"
    with av.open(str(path), "w") as c:
        a = c.add_stream("libmp3lame", rate=16000, layout="mono")
        v = c.add_stream("mjpeg")
        v.width, v.height, v.pix_fmt, v.disposition = 64, 64, "yuvj420p", Disposition.attached_pic
        f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24").reformat(format="yuvj420p")
        f.pts = 0
        for pkt in [*v.encode(f), *v.encode(None)]:
            c.mux(pkt)
        resampler = av.AudioResampler(format=a.codec_context.format.name, layout="mono", rate=16000)
        sig = (0.3 * np.sin(np.arange(16000) * 0.2)).astype(np.float32)
        for pos in range(0, 16000, a.codec_context.frame_size):
            fr = av.AudioFrame.from_ndarray(sig[None, pos:pos + a.codec_context.frame_size].copy(), format="fltp",
                                            layout="mono")
            fr.sample_rate, fr.pts = 16000, pos
            for r in resampler.resample(fr):
                for pkt in a.encode(r):
                    c.mux(pkt)
        for pkt in a.encode(None):
            c.mux(pkt)
    with pytest.raises(MediaError, match="has no video stream \\(only its cover art"):
        probe(path)


def test_a_one_frame_video_file_is_a_still_image(tmp_path):
    """A picture in a video's format (a one-frame GIF, as a phone's share sheet or an AVIF/HEIF photo gives it) is
    a still image, 25 fps as a PNG is, not a one-frame video at its container's rate (a GIF's 100 fps)."""
    from PIL import Image

    path = tmp_path / "photo.gif"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(path, duration=10)
    info = probe(path)
    assert (info.is_image, info.fps, info.n_frames, info.width, info.height) == (True, 25.0, 1, 64, 48)
    with FrameReader(path) as r:
        frames = list(r)
    assert len(frames) == 1 and frames[0].image.shape == (48, 64, 3)


def _set_track_matrix(path: Path, a: int, b: int, c: int, d: int, tx: int, ty: int) -> None:
    """Write a display matrix into an MP4's first track header (as an editor's flip or a phone's rotation does)."""
    import struct

    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 4
    version = data[at]
    at += 4 + (32 if version == 1 else 20) + 16  # version/flags, times and ids, reserved, layer, group, volume
    one = 1 << 16
    data[at:at + 36] = struct.pack(">9i", a * one, b * one, 0, c * one, d * one, 0, tx * one, ty * one, 1 << 30)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("matrix, want", [((-1, 0, 0, 1), "mirrored"), ((1, 0, 0, -1), "upside down"),
                                          ((0, 1, 1, 0), "transposed"), ((-1, 0, 0, -1), "turned")])
def test_a_mirrored_video_is_shown_as_players_show_it(tmp_path, matrix, want):
    """A display matrix with a flip (an editor's mirror, some front cameras): the frames as a player shows them (a
    mirror was once read as a half turn: upside down)."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[:24, :16] = 255  # a white block at the top left
    path = tmp_path / "v.mp4"
    with VideoWriter(path, 64, 48, 25, pix_fmt="yuv444p", crf=0) as w:
        for _ in range(3):
            w.write(img)
    a, b, c, d = matrix
    _set_track_matrix(path, a, b, c, d, 64 if a < 0 or c < 0 else 0, 48 if d < 0 or b < 0 else 0)
    shown = {"mirrored": img[:, ::-1], "upside down": img[::-1], "transposed": img.transpose(1, 0, 2),
             "turned": img[::-1, ::-1]}[want]
    with FrameReader(path) as r:
        got = next(iter(r)).image
    assert got.shape == shown.shape and np.abs(got.astype(int) - shown).mean() < 3


def test_a_picture_that_changes_size_midway_is_scaled_to_the_first_size(tmp_path):
    """Joined streams (an adaptive download, two recordings cat'ed): the frames after a size change are scaled to
    the first size, with a warning (the writer stopped with a traceback on the first frame of another size)."""
    import warnings
    from fractions import Fraction

    import av

    from media_builders import encode_frames

    def part(path, w, h, start):
        with av.open(str(path), "w", format="mpegts") as c:
            s = c.add_stream("mpeg2video", rate=25)
            s.width, s.height, s.pix_fmt, s.time_base = w, h, "yuv420p", Fraction(1, 25)
            encode_frames(c, s, [np.full((h, w, 3), 100, np.uint8)] * 10, start)

    part(tmp_path / "a.ts", 64, 48, 0)
    part(tmp_path / "b.ts", 48, 32, 10)
    joined = tmp_path / "joined.ts"
    joined.write_bytes((tmp_path / "a.ts").read_bytes() + (tmp_path / "b.ts").read_bytes())
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with FrameReader(joined) as r:
            frames = list(r)
    assert len(frames) >= 18 and {f.image.shape for f in frames} == {(48, 64, 3)}
    assert [str(w.message) for w in said if issubclass(w.category, InputWarning)] == [
        f"{joined}: its picture changes size midway (64x48, then 48x32): frames of another size are scaled to the "
        "first's"]


def test_a_photo_with_exif_read_through_ffmpeg(tmp_path):
    """A JPEG with EXIF (orientation 6: shown turned a quarter) under a name FFmpeg reads (.jfif, or an upload with
    no suffix): read, upright (FFmpeg 8 attaches the EXIF to the frame, which this PyAV cannot list: it crashed)."""
    from PIL import Image

    img = np.zeros((30, 40, 3), np.uint8)
    img[:, :10] = 255  # a white band on the left of the stored picture
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to show
    path = tmp_path / "photo.jfif"
    Image.fromarray(img).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    with FrameReader(path) as r:
        shown = next(iter(r)).image
    assert shown.shape[:2] == (40, 30)  # turned to stand upright: the stored left band at the top
    assert shown[:8].mean() > 200 and shown[-20:].mean() < 40


def test_a_video_cut_short_is_said(tmp_path):
    """A video whose copy was interrupted (its header still gives the whole length) was read as a shorter clip, said
    only as one damaged frame, or not at all; the whole file says nothing."""
    import warnings

    from media_builders import write_video

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(50)]
    whole = write_video(tmp_path / "whole.mkv", frames, 25)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        assert probe(whole).n_frames == 50
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.warns(InputWarning, match=r"cut.mkv: its picture ends at 0\.9\d s \(2\d frames\), though the file says "
                                          r"it lasts 2\.00 s \(cut short"):
        assert 20 <= probe(cut).n_frames < 26


def test_images_are_written_into_a_folder_whose_name_is_not_utf8(tmp_path):
    """OpenCV's image writer crashed the process (a segmentation fault, no message) on a folder name that is not
    valid UTF-8: `demo -o` into one, `serve --data` on one (its built-in example), training previews, eval's."""
    import os
    import subprocess
    import sys

    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")  # Latin-1, as an old archive's names are
    os.mkdir(folder)
    code = ("import os, sys, numpy as np; from hyperlips.media.video import write_image, _read_image\n"
            "p = os.path.join(os.fsdecode(sys.argv[1].encode('utf-8', 'surrogateescape')), 'x.png')\n"
            "img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)\n"
            "assert write_image(p, img) and np.array_equal(_read_image(p), img)\n"
            "assert not write_image(os.path.join(os.path.dirname(p), 'no', 'x.png'), img)\n")
    r = subprocess.run([sys.executable, "-c", code, os.fsdecode(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])


def test_a_video_saved_under_a_photo_name_is_read_as_the_video_it_is(real_data, tmp_path):
    """A valid video with a .png name was called "unreadable or corrupt" (the image decoder alone was asked)."""
    import shutil

    path = Path(shutil.copy(real_data / "retalking" / "face3.mp4", tmp_path / "face.png"))
    info = probe(path)
    assert not info.is_image and info.n_frames == probe(real_data / "retalking" / "face3.mp4").n_frames
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    with pytest.raises(MediaError, match="cannot decode image .*bad.png"):  # what the image decoder said, kept
        probe(tmp_path / "bad.png")


def _real_frames(real_data, n: int, side: int = 96) -> list[np.ndarray]:
    import cv2

    from helpers import read_frames

    return [cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA)
            for f in read_frames(real_data / "retalking" / "face2.mp4", n)]


def test_an_animated_png_is_read_as_the_video_it_is(real_data, tmp_path):
    """An APNG (an animated PNG, as GIF's successor) was read as a still of its first picture, silently: its frames
    are a video's, as a GIF's are."""
    import av

    frames = _real_frames(real_data, 8)
    path = tmp_path / "talk.png"
    with av.open(str(path), "w", format="apng") as c:
        s = c.add_stream("apng", rate=25)
        s.width = s.height = 96
        s.pix_fmt = "rgb24"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:, :, ::-1]), format="rgb24")))
        c.mux(s.encode())
    info = probe(path)
    assert (info.is_image, info.n_frames, info.fps) == (False, 8, 25.0)
    with FrameReader(path) as r:
        got = [fr.image for fr in r]
    assert len(got) == 8 and all(np.array_equal(a, b) for a, b in zip(got, frames))  # PNG is lossless


def test_an_animated_webp_is_its_first_picture_and_said(real_data, tmp_path):
    """FFmpeg cannot read an animated WebP's frames: its first picture is used as a photo, and that is said."""
    from PIL import Image

    frames = [Image.fromarray(np.ascontiguousarray(f[:, :, ::-1])) for f in _real_frames(real_data, 3)]
    path = tmp_path / "talk.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0, lossless=True)
    with pytest.warns(InputWarning, match=r"talk\.webp is an animated WebP: only its first picture is used"):
        info = probe(path)
    assert info.is_image and info.n_frames == 1
    frames[0].save(tmp_path / "still.webp", lossless=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # a still WebP: nothing to say
        assert probe(tmp_path / "still.webp").is_image


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_a_transparent_photo_is_shown_over_white(real_data, tmp_path, suffix):
    """A portrait with a transparent background: its transparent parts are laid over white, as viewers show them, and
    that is said (the alpha was dropped: the background became whatever colours the file keeps under it, here
    green); semi-transparent pixels are mixed with the white by their alpha."""
    import cv2

    from hyperlips.errors import collect_warnings

    (frame,) = _real_frames(real_data, 1)
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    rgba[:, :30, :3] = (0, 255, 0)  # hidden under alpha 0
    rgba[:, :30, 3] = 0
    rgba[:, 30:40, 3] = 128
    path = tmp_path / f"cutout{suffix}"
    ok, data = cv2.imencode(suffix, rgba, [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == ".webp" else [])
    assert ok
    path.write_bytes(data.tobytes())
    with collect_warnings() as said:
        with FrameReader(path) as r:
            img = next(iter(r)).image
    assert said == [f"{path}: its transparent parts are shown over white (a video has no transparency)"]
    assert (img[:, :30] == 255).all()
    want = np.rint(frame[:, 30:40] * (128 / 255) + 255 * (1 - 128 / 255))
    assert np.abs(img[:, 30:40].astype(float) - want).max() <= 1
    assert np.array_equal(img[:, 40:], frame[:, 40:])
    opaque = tmp_path / f"opaque{suffix}"
    rgba[:, :, 3] = 255
    ok, data = cv2.imencode(suffix, rgba, [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == ".webp" else [])
    opaque.write_bytes(data.tobytes())
    with collect_warnings() as said:
        with FrameReader(opaque) as r:
            assert np.array_equal(next(iter(r)).image, cv2.imdecode(data, cv2.IMREAD_COLOR))
    assert said == []


def test_transparency_is_laid_over_white_whatever_reads_the_picture(real_data, tmp_path):
    """A cut-out portrait saved without a suffix (a chat app's), or an animated PNG with a transparent background:
    FFmpeg reads them, and their alpha was dropped silently (the colours kept under it showed: 96 where white was
    due), where a .png read as a still was laid over white with a warning."""
    import cv2
    from PIL import Image

    from hyperlips.errors import collect_warnings

    (frame,) = _real_frames(real_data, 1)
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    rgba[:, :30, :3] = (0, 255, 0)  # hidden under alpha 0
    rgba[:, :30, 3] = 0
    ok, data = cv2.imencode(".png", rgba)
    (tmp_path / "cutout").write_bytes(data.tobytes())
    moving = [Image.fromarray(np.ascontiguousarray(np.roll(rgba, k, axis=0)[:, :, [2, 1, 0, 3]])) for k in range(3)]
    moving[0].save(tmp_path / "talk.png", save_all=True, append_images=moving[1:], duration=40, loop=0)
    for name, n in (("cutout", 1), ("talk.png", 3)):
        with collect_warnings() as said:
            with FrameReader(tmp_path / name) as r:
                images = [f.image for f in r]
        assert len(images) == n, name
        assert said == [f"{tmp_path / name}: its transparent parts are shown over white (a video has no "
                        "transparency)"], said
        for img in images:
            assert img.shape == frame.shape and (img[:, :30] == 255).all(), name
        assert np.abs(images[0][:, 40:].astype(int) - frame[:, 40:]).max() <= 2, name  # the picture as it was


def test_an_interlaced_video_is_said_so(real_data, tmp_path):
    """TV footage coded interlaced (two fields a frame) was read as progressive frames without a word: the new mouth
    mixes the fields and its edges comb. It is said once, with how to deinterlace; a progressive video says nothing
    (none of the clips here is interlaced)."""
    from media_builders import write_video

    from hyperlips.errors import collect_warnings

    frames = _real_frames(real_data, 6)
    for name, options, said_so in (("tv.mp4", {"flags": "+ildct+ilme", "x264-params": "tff=1"}, True),
                                   ("web.mp4", {}, False)):
        path = write_video(tmp_path / name, frames, options=options)
        with collect_warnings() as said:
            with FrameReader(path) as r:
                assert len([f for f in r]) == 6
        assert len(said) == int(said_so) and all("is interlaced" in w and "bwdif" in w for w in said), said


def test_a_piece_of_an_mpeg_whose_video_codec_cannot_be_told_is_unreadable(more_data, tmp_path):
    """A piece from the middle of an MPEG program stream (a broken copy, a recovered file): FFmpeg lists a video track
    without a decoder, and reading it ended in an AttributeError traceback (a folder's preprocessing died with it)."""
    data = (more_data / "grid_s1" / "bbaf3s.mpg").read_bytes()[15000:20000]
    path = tmp_path / "piece.mpg"
    path.write_bytes(data)
    with pytest.raises(MediaError, match=r"cannot open .*piece\.mpg \(unreadable or corrupt media file: its video "
                                         r"track's codec cannot be read\)"):
        probe(path)
