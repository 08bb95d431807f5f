"""The one-pass flow of ``sync`` (``streaming``, ``stages``): the stages running at the same time give the frames the
same stages give one after another, a bounded number of frames is ever in flight whatever the length, an error in
any stage stops the run cleanly, and the reference search looks only as far as it must."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import cut_audio, cut_video, spied_frames


@pytest.fixture(scope="module")
def clip(real_data, tmp_path_factory):
    """20 frames of a real close-up (scaled to 360 px) and 1.6 s of speech: 40 output frames, played ping-pong."""
    folder = tmp_path_factory.mktemp("streaming")
    video = cut_video(real_data / "retalking" / "face2.mp4", folder / "idle.mp4", 20, size=360)
    return SimpleNamespace(folder=folder, video=video,
                           speech=cut_audio(real_data / "retalking" / "audio1.wav", folder / "speech.wav", 1.6),
                           long_speech=cut_audio(real_data / "retalking" / "audio1.wav", folder / "long.wav", 4.8))


def lipsync(model="lite", **kw):
    import torch

    from hyperlips.pipeline import LipSync

    torch.manual_seed(0)
    return LipSync(untrained=True, model=model, device="cpu", progress=False, **kw)


def test_overlapped_and_serial_runs_give_the_same_frames(clip):
    frames = {}
    for overlap in (True, False):
        ls = lipsync(batch_size=4, overlap=overlap)
        frames[overlap] = spied_frames(lambda: ls.sync(clip.video, clip.speech, clip.folder / f"o{overlap}.mp4"))
    assert len(frames[True]) == len(frames[False]) == 40
    for j, (a, b) in enumerate(zip(frames[True], frames[False])):
        assert np.array_equal(a, b), f"frame {j} differs between the overlapped and the serial run"


def test_two_batches_rendered_at_a_time_give_the_same_frames_and_leave_torchs_threads_as_they_were(clip, monkeypatch):
    """On a CPU with two torch threads, HyperLips-Base's mouth is drawn two batches at a time, each on one thread, in
    the network stage's own threads; the frames equal those of one batch at a time on both threads, and torch's
    thread count is what it was afterwards. Lite, and a stateful mouth (the warp), are drawn one batch at a time."""
    import torch

    from hyperlips import runtime
    from hyperlips.pipeline import LipSync

    seen = []
    real = LipSync.generate

    def spy(self, windows, x, *a, **k):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(self, windows, x, *a, **k)

    monkeypatch.setattr(LipSync, "generate", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        frames = {}
        for pooled in (True, False):
            if not pooled:
                monkeypatch.setattr(runtime, "render_workers", lambda device: (1, 0))
            seen.clear()
            ls = lipsync(batch_size=4, model="base")
            frames[pooled] = spied_frames(lambda: ls.sync(clip.video, clip.speech, clip.folder / f"p{pooled}.mp4"))
            fresh = []  # a thread started now gets the process's count (each worker set its own)
            t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
            t.start()
            t.join()
            assert torch.get_num_threads() == 2 and fresh == [2]
            if pooled:
                assert {s for s in seen} == {("hyperlips-render_0", 1), ("hyperlips-render_1", 1)}
            else:
                assert {s for s in seen} == {("hyperlips-network", 2)}
        for j, (a, b) in enumerate(zip(frames[True], frames[False])):
            assert np.array_equal(a, b), f"frame {j} differs between two batches at a time and one"
        monkeypatch.undo()
        monkeypatch.setattr(LipSync, "generate", spy)
        for kw in ({"mouth": "warp"}, {}):  # the warp keeps state; Lite
            seen.clear()
            lipsync(batch_size=4, **kw).sync(clip.video, clip.speech, clip.folder / "warp.mp4")
            assert {name for name, _ in seen} == {"hyperlips-network"}, kw
        for batch, loop in ((1, "pingpong"), (2, "hold"), (3, "pingpong")):  # the smallest gates let the run go on
            frames = spied_frames(lambda: lipsync(batch_size=batch, model="base").sync(
                clip.video, clip.speech, clip.folder / "small.mp4", loop=loop))
            assert len(frames) == 40
        seen.clear()  # the stages one after another: all in the caller's thread
        lipsync(batch_size=4, model="base", overlap=False).sync(clip.video, clip.speech, clip.folder / "serial.mp4")
        assert {name for name, _ in seen} == {threading.current_thread().name}
    finally:
        torch.set_num_threads(before)


def test_render_workers_halve_the_cpu_threads_and_leave_a_gpu_alone():
    import torch

    from hyperlips.runtime import render_workers

    before = torch.get_num_threads()
    try:
        got = {}
        for n in (1, 2, 3, 4):
            torch.set_num_threads(n)
            got[n] = render_workers(torch.device("cpu"))
        assert got == {1: (1, 0), 2: (2, 1), 3: (2, 1), 4: (2, 2)}
        assert render_workers(torch.device("cuda")) == (1, 0)
    finally:
        torch.set_num_threads(before)


def test_pasting_into_the_decoded_frame_changes_nothing(clip, monkeypatch):
    """Paste-back writes into a frame's decoded array only when no later output frame shows that same array (with
    ``--loop hold`` the last frame is one array shown 21 times): the frames equal those of a run that always pastes
    into a copy."""
    from hyperlips.face import blend

    ls = lipsync(batch_size=4)
    out = clip.folder / "hold.mp4"
    in_place = spied_frames(lambda: ls.sync(clip.video, clip.speech, out, loop="hold"))
    real = blend.paste_face
    monkeypatch.setattr(blend, "paste_face", lambda *a, inplace=False, **k: real(*a, inplace=False, **k))
    copied = spied_frames(lambda: ls.sync(clip.video, clip.speech, out, loop="hold"))
    assert len(in_place) == len(copied) == 40
    for j, (a, b) in enumerate(zip(in_place, copied)):
        assert np.array_equal(a, b), f"frame {j} differs when pasted in place"


def test_the_writer_gets_each_frames_decoded_picture_and_the_region_pasted(clip):
    """The clip is coded as the writer codes (BT.709 4:2:0), so every output frame goes to the writer with its decoded
    picture; outside the region paste-back wrote, the frame is exactly that picture as the reader converts it (what
    the writer copies instead), and a frame whose face was not pasted changed nowhere."""
    from spies import spy_on_sync

    from hyperlips.media.video import FrameReader

    ls = lipsync(batch_size=4)
    with spy_on_sync() as spy:
        ls.sync(clip.video, clip.speech, clip.folder / "sources.mp4")
    assert len(spy.frames) == 40 and all(src is not None for src, _ in spy.sources)
    pasted = 0
    with FrameReader(clip.video) as reader:
        for frame, (source, changed) in zip(spy.frames, spy.sources):
            decoded = reader._to_bgr(source)
            outside = np.ones(frame.shape[:2], bool)
            if changed is not None:
                x1, y1, x2, y2 = changed
                outside[y1:y2, x1:x2] = False
                pasted += 1
                assert not np.array_equal(frame[y1:y2, x1:x2], decoded[y1:y2, x1:x2])  # the mouth was drawn there
            assert np.array_equal(frame[outside], decoded[outside])
    assert pasted == 40  # the face is in every frame of this clip


@pytest.mark.parametrize("model", ["lite", "base"])
def test_frames_in_flight_are_bounded_whatever_the_length(clip, monkeypatch, model):
    """Frames decoded but not yet encoded never exceed what the queues, the face track's look-ahead and one batch in
    each stage hold (two in Base's network stage, which renders two at a time), for a 1.6 s and a 4.8 s output alike
    (memory does not grow with the length)."""
    from hyperlips import streaming
    from hyperlips.face.track_online import OnlineTrack
    from hyperlips.media import writer as writer_mod

    count = {"decoded": 0, "encoded": 0, "most": 0}
    real_frames, real_write = streaming.scheduled_frames, writer_mod.VideoWriter.write

    def frames(*a, **k):
        for job in real_frames(*a, **k):
            count["decoded"] += 1
            count["most"] = max(count["most"], count["decoded"] - count["encoded"])
            yield job

    def write(self, frame, *rest, **kw):
        count["encoded"] += 1
        return real_write(self, frame, *rest, **kw)

    monkeypatch.setattr(streaming, "scheduled_frames", frames)
    monkeypatch.setattr(writer_mod.VideoWriter, "write", write)
    batch = 4
    lag = OnlineTrack(25.0).max_gap + 3  # the face track's look-ahead (face.track_online)
    bound = 4 + 1 + lag + batch + batch + batch + batch + 4 + 2  # queues and one item in each stage
    bound += batch if model == "base" else 0  # two batches in the network stage
    most = []
    for speech in (clip.speech, clip.long_speech):
        count.update(decoded=0, encoded=0, most=0)
        lipsync(model, batch_size=batch).sync(clip.video, speech, clip.folder / "bounded.mp4")
        assert count["decoded"] == count["encoded"]
        most.append(count["most"])
    assert max(most) <= bound, (most, bound)


@pytest.mark.parametrize("model", ["lite", "base"])  # Base: two render threads, one waiting at the gate
def test_an_error_in_a_stage_stops_the_run_and_leaves_nothing(clip, monkeypatch, model):
    from hyperlips.pipeline import LipSync

    calls = []
    real = LipSync.generate

    def failing(self, windows, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("network broke")
        return real(self, windows, x)

    monkeypatch.setattr(LipSync, "generate", failing)
    out = clip.folder / "failed" / "out.mp4"
    with pytest.raises(RuntimeError, match="network broke"):
        lipsync(model, batch_size=4).sync(clip.video, clip.speech, out)
    assert 2 <= len(calls) <= (2 if model == "lite" else 3)  # (the other render thread may have started one more)
    assert not out.exists() and not out.parent.exists()  # nor the folder made for it
    for t in threading.enumerate():  # the stage threads have ended
        if t.name.startswith("hyperlips-"):
            t.join(timeout=10)
            assert not t.is_alive(), t.name


class FakeTimeline:
    """Frames 0..n-1 (tiny images) at 25 fps; counts what was decoded."""

    def __init__(self, n, n_video=None):
        self.n, self.fps, self.decoded = n, 25.0, 0
        self.info = SimpleNamespace(path="fake.mp4", n_frames=n_video or n)

    def iter_range(self, start, stop, reverse=False):
        for i in range(start, stop):
            self.decoded += 1
            yield SimpleNamespace(index=i, image=np.full((64, 64, 3), i % 256, np.uint8))


def search(n, request, scores, overlap=True, every_frame=True, n_video=None):
    """find_reference on a fake video whose frame i shows one face scored ``scores[i]`` (None: no face); also how
    many frames were searched (detected) and decoded (with ``overlap``, decoding runs a few frames ahead). With
    ``every_frame`` (as here by default) every frame is detected. ``n_video``: the video's own length, where the run
    shows only its first ``n`` frames."""
    from hyperlips.face.detect import Box
    from hyperlips.face.track_online import OnlineTrack
    from hyperlips.streaming import find_reference

    tl = FakeTimeline(n, n_video)
    searched = []

    def detect(image):
        searched.append(int(image[0, 0, 0]))
        s = scores[int(image[0, 0, 0])]
        return [] if s is None else [Box(10, 10, 50, 50, s)]

    found = find_reference(tl, n, request, lambda: OnlineTrack(25.0, frame_size=(64, 64)), detect,
                           SimpleNamespace(update=lambda n=1: None), overlap=overlap, every_frame=every_frame)
    if every_frame:
        assert searched == list(range(len(searched)))  # in order, each once
    else:
        assert len(set(searched)) == len(searched)  # each at most once
    return found, len(searched), tl.decoded


@pytest.mark.parametrize("overlap", [True, False])
def test_best_reference_is_searched_in_the_first_seconds_of_the_face_only(overlap):
    from hyperlips.streaming import REFERENCE_DECODE_AHEAD, REFERENCE_SECONDS

    window = int(REFERENCE_SECONDS * 25)
    scores = [None] * 10 + [0.5 + 0.4 * i / 200 for i in range(200)]  # confidence keeps rising after the window
    found, searched, decoded = search(210, "best", scores, overlap)
    assert found.frame == 10 + window - 1  # the best in the face's first seconds, not the best of the video
    assert searched <= 10 + window + 3  # and the search stopped there (plus the smoothing's look-ahead)
    assert len(found.detections) == searched
    # decoding stopped too: at most the queue and the frame in the decoder's hands ahead of the detection
    assert searched <= decoded <= searched + (REFERENCE_DECODE_AHEAD + 1 if overlap else 0)
    assert found.crop.shape == (128, 128, 3) and (found.crop == found.frame % 256).all()


@pytest.mark.parametrize("request_, frame", [("first", 20), (25, 25)])
def test_first_and_numbered_references(request_, frame):
    found, searched, _ = search(210, request_, [None] * 20 + [0.9] * 190)  # 20 faceless frames: too many to bridge
    assert found.frame == frame and searched <= frame + 3


def test_a_numbered_reference_without_a_face_is_a_user_error():
    from hyperlips.errors import UserError

    with pytest.raises(UserError, match="--reference 5: that frame has no tracked face; use best, first or another"):
        search(60, 5, [None] * 30 + [0.9] * 30)
    with pytest.raises(UserError, match="--reference 99: the video has 60 frames, numbered from 0; give a frame "
                                        "number below 60, best or first"):
        search(60, 99, [0.9] * 60)
    # a frame of the video after the part this run shows (the video cut to the speech): said, not "no face there"
    with pytest.raises(UserError, match=r"--reference 70: this run shows only the first 25 of the video's 125 frames "
                                        r"\(the output is as long as the speech\); give a frame number below 25"):
        search(25, 70, [0.9] * 125, n_video=125)


def test_a_face_box_is_checked_and_clipped_to_the_frame():
    """``LipSync.sync(face_box=...)`` from Python is checked as ``--face-box`` is (NaN compares false with
    everything, so ``x2 > x1`` alone lets it through); a box reaching past the edges means up to them."""
    from hyperlips.errors import UserError
    from hyperlips.streaming import check_face_box

    assert check_face_box(None, 640, 360) is None
    assert check_face_box((10, 20, 110, 220), 640, 360) == (10, 20, 110, 220)
    assert check_face_box((-50, -1e308, 1e308, 300), 640, 360) == (0, 0, 640, 300)
    for box in ((float("nan"), 0, 100, 100), (0, 0, float("inf"), 100), (0, 0, 100, float("-inf")), (5, 0, 5, 9)):
        with pytest.raises(UserError, match="finite, with x2 > x1"):
            check_face_box(box, 640, 360)
    with pytest.raises(UserError, match="lies outside the 640x360 frame"):
        check_face_box((700, 0, 800, 100), 640, 360)
    with pytest.raises(UserError, match="four numbers"):
        check_face_box(("a", 0, 1, 2), 640, 360)


# --------------------------------------------------------------------------------------------- stopping
def test_closing_a_chain_frees_its_waiting_threads_at_once(monkeypatch):
    """A chain closed early (as the reference search closes its decoding) wakes the threads waiting to put into a
    full queue or to get from an empty one, instead of leaving them to their next look at the stop (made 30 s
    here): it returns at once, and the source makes no item after the one it was waiting to hand on."""
    import time

    from hyperlips import stages

    monkeypatch.setattr(stages, "_POLL", 30.0)
    made = []

    def fast(_):  # fills its queue, then waits to put
        for i in range(1000):
            made.append(i)
            yield i

    def slow(_):  # the next stage waits to get while this sleeps
        for i in range(1000):
            time.sleep(0.3 if i else 0.0)
            yield i

    for source, ahead in ((fast, 1 + 2 + 1 + 1), (slow, None)):
        made.clear()
        chain = stages.run_chain(stages.Step("source", source, maxsize=2), [stages.Step("same", lambda it: it,
                                                                                        maxsize=1)],
                                 stages.Timings())
        assert next(chain) == 0
        time.sleep(0.2)  # the threads are waiting now
        t0 = time.perf_counter()
        chain.close()
        assert time.perf_counter() - t0 < 3.0
        if ahead:  # taken 1, queued 2 + 1, one in the hands of each thread
            assert len(made) <= ahead + 1
    assert not [t for t in threading.enumerate() if t.name in ("hyperlips-source", "hyperlips-same")]


# --------------------------------------------------------------------------------------------- work ahead
class Shown:
    """A frame stand-in: repeats are the same object, as a repeated frame is the same array."""

    def __init__(self, n):
        self.n = n


@pytest.mark.parametrize("workers", [1, 2])
def test_work_ahead_keeps_the_order_does_a_repeat_once_and_skips_what_needs_nothing(workers):
    from hyperlips.stages import mapped_ahead

    a, b, c, d = Shown(1), Shown(2), Shown(3), Shown(4)
    items = [(a, True), (a, True), (b, False), (c, True), (b, True), (d, True), (d, True), (c, True)]
    calls, lock = [], threading.Lock()

    def fn(item):
        with lock:
            calls.append(item[0].n)
        return item[0].n * 10

    out = list(mapped_ahead(fn, iter(items), lambda it: it[0] if it[1] else None, workers))
    assert [it for it, _ in out] == items  # every item, in order
    assert [r for _, r in out] == [10, 10, None, 30, 20, 40, 40, 30]
    assert sorted(calls) == [1, 2, 3, 3, 4]  # a repeat right after itself is done once; c again later is done again


def test_work_ahead_runs_calls_at_the_same_time_and_stops_cleanly():
    from hyperlips.stages import mapped_ahead

    meet = threading.Barrier(2, timeout=20)  # passes only when two calls wait at once
    started = []

    def fn(i):
        started.append(i)
        if i < 6:  # items 0-5 meet in pairs: each pair was worked on at the same time
            meet.wait()
        return i

    results = mapped_ahead(fn, iter(range(100)), lambda i: i, workers=2)
    got = [next(results) for _ in range(6)]
    assert got == [(i, i) for i in range(6)]
    results.close()  # the calls running finish, the rest are dropped, the threads end
    assert len(started) <= 6 + 4 + 2  # no more than the look-ahead beyond what was taken
    assert not [t for t in threading.enumerate() if t.name.startswith("hyperlips-ahead")]


@pytest.mark.parametrize("workers", [1, 2])
def test_work_ahead_gives_a_calls_error_at_its_item(workers):
    from hyperlips.stages import mapped_ahead

    def fn(i):
        if i == 5:
            raise ValueError("frame 5 is bad")
        return i

    got = []
    with pytest.raises(ValueError, match="frame 5"):
        for i, r in mapped_ahead(fn, iter(range(20)), lambda i: i, workers):
            got.append(r)
    assert got == [0, 1, 2, 3, 4]
    assert not [t for t in threading.enumerate() if t.name.startswith("hyperlips-ahead")]


def test_the_search_with_two_detections_at_once_finds_what_one_at_a_time_finds():
    from hyperlips.face.detect import Box
    from hyperlips.face.track_online import OnlineTrack
    from hyperlips.streaming import find_reference

    scores = [None] * 5 + [0.5 + 0.3 * abs(np.sin(i)) for i in range(200)]
    found = {}
    for workers in (1, 2):
        meet = threading.Barrier(2, timeout=20)  # frames 8 and 10 are detected at the same time, or this fails
        # (9, between two agreeing frames, is not detected)

        def detect(image):
            i = int(image[0, 0, 0])
            if workers == 2 and i in (8, 10):
                meet.wait()
            return [] if scores[i] is None else [Box(10, 10, 50, 50, scores[i])]

        found[workers] = find_reference(FakeTimeline(205), 205, "best", lambda: OnlineTrack(25.0, frame_size=(64, 64)),
                                        detect, SimpleNamespace(update=lambda n=1: None), workers=workers)
    assert found[1].frame == found[2].frame and (found[1].crop == found[2].crop).all()
    assert [[(b.x1, b.score) for b in d] for d in found[1].detections] == \
           [[(b.x1, b.score) for b in d] for d in found[2].detections]


# --------------------------------------------------------------------------------------------- sparse detection
def faces_of(x, score=0.9):
    from hyperlips.face.detect import Box

    return [] if x is None else [Box(x, 10, x + 100, 110, score)]


def run_sparse(xs, workers=1, every_frame=False, before=None, first=0, passed=()):
    """sparse_detections over frames ``first ..`` whose one face's left edge is ``xs[i]`` (None: no face), each
    score 0.5 + x / 1000, items in ``passed`` passed through; (frames detected, [(item, faces)])."""
    from hyperlips.streaming import sparse_detections

    calls, lock = [], threading.Lock()

    def detect(image):
        with lock:
            calls.append(image)
        x = xs[image - first]
        return faces_of(x, 0.5 + (x or 0) / 1000)

    items = list(range(first, first + len(xs)))
    for at in passed:
        items.insert(at, "passed")
    frame_of = lambda it: None if it == "passed" else (it, it)  # noqa: E731 (the frame's image is its index)
    return calls, list(sparse_detections(iter(items), frame_of, detect, workers, before, every_frame))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_frame_between_two_agreeing_ones_takes_their_mean_box_instead_of_a_detection(workers):
    xs = [10, 11, 12, 13, 14, 15, 16, 208, 209, 210, 211, 212, None, 214, 215]  # a cut at 7, no face at 12
    calls, out = run_sparse(xs, workers)
    assert [it for it, _ in out] == list(range(len(xs)))  # every frame, in order
    # 1, 3, 5 and 9 lie between agreeing frames; 7 (after the cut), 11 and 13 (next to the faceless frame) do not
    assert sorted(calls) == [0, 2, 4, 6, 7, 8, 10, 11, 12, 13, 14]
    boxes = {i: faces for i, faces in out}
    for i in (1, 3, 5, 9):
        (b,) = boxes[i]
        assert b.x1 == pytest.approx((xs[i - 1] + xs[i + 1]) / 2) and b.y2 == 110
        assert b.score == pytest.approx(0.5 + xs[i - 1] / 1000)  # the lower of the two scores
    for i in (7, 11, 13):
        assert boxes[i][0].x1 == xs[i]  # detected
    assert boxes[12] == []


def test_the_last_frame_and_a_frame_before_an_item_passed_through_are_detected():
    calls, out = run_sparse([10, 11, 12, 13, 14, 15], passed=[4])  # "passed" right after frame 3
    assert [it for it, _ in out] == [0, 1, 2, 3, "passed", 4, 5]
    assert sorted(calls) == [0, 2, 3, 4, 5]  # 3: its successor is not next; 5: none comes
    assert dict(out)["passed"] is None


def test_a_frame_whose_next_frame_is_not_given_next_is_detected():
    from hyperlips.streaming import sparse_detections

    calls = []

    def detect(i):
        calls.append(i)
        return faces_of(10 + i)

    out = list(sparse_detections(iter([0, 1, 2, 3, 6, 8]), lambda i: (i, i), detect))  # 4 and 5 never come
    assert [i for i, _ in out] == [0, 1, 2, 3, 6, 8] and sorted(calls) == [0, 2, 3, 6, 8]
    assert out[3][1][0].x1 == 13  # 3 detected, not placed between 2 and 6


def test_the_frame_before_the_first_can_be_given_and_every_frame_detects_them_all():
    calls, out = run_sparse([12, 13, 14], before=(4, faces_of(10)), first=5)  # frames 5, 6, 7: 5 lies between 4 and 6
    assert sorted(calls) == [6, 7] and out[0][1][0].x1 == pytest.approx(11.5)
    calls, out = run_sparse([12, 13, 14], first=5)  # without it, 5 is detected
    assert sorted(calls) == [5, 6, 7]
    xs = [10, 11, 12, 13, 14, 15, 16]
    calls, out = run_sparse(xs, every_frame=True)
    assert calls == list(range(len(xs))) and [faces[0].x1 for _, faces in out] == xs


def test_midway_needs_one_face_on_each_side_overlapping_enough():
    from hyperlips.face.detect import MIDWAY_IOU, Box, midway

    a = Box(0, 0, 100, 100, 0.8)
    assert midway([a], [Box(4, 0, 104, 100, 0.9)])[0].x1 == 2.0  # IoU 0.92
    assert midway([a], [Box(6, 0, 106, 100, 0.9)]) is None  # IoU 0.89
    assert MIDWAY_IOU == 0.9
    assert midway([a], []) is None and midway([], [a]) is None
    assert midway([a, Box(200, 0, 300, 100)], [a, Box(200, 0, 300, 100)]) is None  # several faces: detect


def test_the_search_detecting_every_other_frame_finds_the_same_reference_with_fewer_detections():
    scores = [None] * 10 + [0.5 + 0.4 * i / 200 for i in range(200)]
    every, n_every, _ = search(210, "best", scores)
    sparse, n_sparse, _ = search(210, "best", scores, every_frame=False)
    assert sparse.frame == every.frame and n_sparse < 0.6 * n_every
    assert len(sparse.detections) >= len(every.detections) - 1


def test_on_a_real_clip_the_sparse_boxes_follow_the_face_as_closely_as_detecting_every_frame(real_data):
    """On 150 frames of a real talking head: far fewer detections, and the tracked crop boxes within 2% of the box's
    width of those from detecting every frame."""
    from hyperlips.face.detect import FaceDetector
    from hyperlips.face.track_online import OnlineTrack
    from hyperlips.media.video import FrameReader
    from hyperlips.streaming import sparse_detections

    with FrameReader(real_data / "hyperlips" / "video3.mp4") as r:
        frames = [(f.index, f.image) for _, f in zip(range(150), r)]
        size = (r.width, r.height)
    boxes, calls = {}, {}
    with FaceDetector() as det:
        for every in (True, False):
            calls[every] = 0

            def detect(image):
                calls[every] += 1
                return det.detect(image)

            track, out = OnlineTrack(25.0, frame_size=size), []
            for _, faces in sparse_detections(iter(frames), lambda f: f, detect, every_frame=every):
                out += track.push(faces)
            out += track.finish()
            boxes[every] = np.array([b.as_array() for _, b in out])
    assert calls[True] == 150 and calls[False] < 0.75 * 150
    width = boxes[True][:, 2] - boxes[True][:, 0]
    assert (np.abs(boxes[False] - boxes[True]).max(axis=1) / width).max() < 0.02


# --------------------------------------------------------------------------------------------- the network stage
def jobs_of(n, boxless=()):
    from hyperlips.streaming import FrameJob

    return [FrameJob(j, j, np.zeros((4, 4, 3), np.uint8), box=None if j in boxless else (0, 0, 4, 4)) for j in range(n)]


def test_the_network_stage_renders_two_batches_at_a_time_and_gives_them_in_order():
    """Two workers: batches come out in order, two rendering at the same time, never more than two held, each worker
    set up once in its own thread, ``end`` once after them, and only jobs with a box rendered."""
    import time

    from hyperlips.streaming import network_stage

    lock, state = threading.Lock(), {"now": 0, "most": 0}
    started, rendered, ended = [], [], []
    meet = threading.Barrier(2, timeout=20)  # the first two batches render at the same time, or this fails

    def render(jobs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            rendered.append(([job.j for job in jobs], threading.get_ident()))
        if jobs[0].j in (0, 4) and started:
            meet.wait()
        time.sleep(0.02)
        for job in jobs:
            job.face = job.j
        with lock:
            state["now"] -= 1

    stage = network_stage(4, render, workers=2, start_worker=lambda: started.append(threading.get_ident()),
                          end=lambda: ended.append(len(rendered)))
    pulled, held = [0], []

    def given():
        for job in jobs_of(15, boxless={9}):
            pulled[0] += 1
            yield job

    out = []
    for batch in stage(given()):
        held.append(pulled[0] - sum(len(b) for b in out))  # taken in but not given out, this one included
        out.append(batch)
    assert max(held) == 2 * 4  # two batches held at most
    assert [[job.j for job in b] for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14]]
    assert [job.face for b in out for job in b] == [j if j != 9 else None for j in range(15)]
    assert sorted(js for js, _ in rendered) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 10, 11], [12, 13, 14]]
    assert state["most"] == 2
    assert len(started) == 2 and {t for _, t in rendered} == set(started)
    assert ended == [4]
    started.clear()
    one = list(network_stage(4, render)(iter(jobs_of(6))))  # one worker: whole batches, in the caller's thread
    assert [[job.j for job in b] for b in one] == [[0, 1, 2, 3], [4, 5]]
    assert {t for _, t in rendered[-2:]} == {threading.get_ident()}


def test_an_error_in_a_pooled_render_stops_the_stage_at_that_batch():
    from hyperlips.streaming import network_stage

    ended = []

    def render(jobs):
        if jobs[0].j == 8:
            raise RuntimeError("network broke")

    out = []
    with pytest.raises(RuntimeError, match="network broke"):
        for batch in network_stage(4, render, workers=2, end=lambda: ended.append(1))(iter(jobs_of(40))):
            out.append(batch)
    assert [job.j for b in out for job in b] == list(range(8)) and ended == [1]


# --------------------------------------------------------------------------------------------- the faces stage
TEXTURE = np.random.default_rng(3).integers(0, 256, (200, 400, 3), dtype=np.uint8)


def test_the_faces_stage_goes_on_from_the_searchs_track_with_the_same_boxes_and_no_wait():
    """Handed the reference search's track, the faces stage gives the same boxes as a fresh track fed the same
    detections, gives the searched frames their boxes before reading further, and reports the first pass's end once,
    also when the search already reached the last frame."""
    from hyperlips.face.detect import Box
    from hyperlips.face.track_online import OnlineTrack
    from hyperlips.streaming import FaceStage, FrameJob

    n = 60
    xs = [100 + 3 * np.sin(i / 4) + (i > 30) * 2 for i in range(n)]
    faces = [[Box(x, 10, x + 100, 110, 0.9)] for x in xs]
    new = lambda: OnlineTrack(25.0, frame_size=(400, 200))  # noqa: E731

    def run(searched, handed):
        cached = faces[:searched]
        track, boxes = new(), []
        if handed:
            for dets in cached:
                boxes += [b for _, b in track.push(dets)]
            if searched == n:
                boxes += [b for _, b in track.finish()]
        else:
            track = new()
        ends, pulled = [], []

        def jobs():
            for j in range(n):
                pulled.append(j)
                yield FrameJob(j, j, TEXTURE)  # not blank: a box over a blank region is dropped

        stage = FaceStage(n, track, lambda image: faces[pulled[-1]], cached, on_first_pass_end=lambda: ends.append(1),
                          every_frame=True, boxes=boxes if handed else None)
        out, first_after = [], None
        for job in stage(jobs()):
            if first_after is None:
                first_after = len(pulled)
            out.append(job.box.as_array())
        assert ends == [1]
        return np.array(out), first_after

    for searched in (40, n):
        fresh, waited = run(searched, False)
        handed, at_once = run(searched, True)
        assert np.array_equal(fresh, handed)
        assert at_once <= 2 < waited  # the first box without the track's look-ahead


def test_a_searchs_track_goes_on_in_one_main_pass_only():
    """The search's track is handed to one main pass (which pushes more frames into it); asked again, there is
    none, and a fresh track is fed the search's detections instead."""
    found, searched, _ = search(120, "best", [0.9] * 120)
    track, boxes = found.take_track()
    assert track is not None and track.n == searched == len(found.detections)
    assert 0 < len(boxes) <= searched and all(b is not None for b in boxes)
    assert found.take_track() == (None, [])


# --------------------------------------------------------------------------------------------- the gate
def test_a_gate_holds_at_most_its_limit_and_opens_for_good():
    import time

    from hyperlips.stages import Gate

    gate, passed = Gate(5), []

    def enter(n):
        gate.enter(n)
        passed.append(n)

    gate.enter(3)
    t = threading.Thread(target=enter, args=(3,))
    t.start()
    time.sleep(0.2)
    assert passed == []  # 3 + 3 > 5: waits
    gate.done(1)
    t.join(timeout=5)
    assert passed == [3]  # 2 + 3 fit
    t = threading.Thread(target=enter, args=(4,))
    t.start()
    time.sleep(0.2)
    assert passed == [3]
    gate.open()  # the consumer stopped: everything passes from now on
    t.join(timeout=5)
    assert passed == [3, 4] and not t.is_alive()
    gate.enter(100)
    with pytest.raises(ValueError, match="never fit"):
        Gate(4).enter(5)
    Gate().enter(10**6)  # no limit


def test_the_network_stage_renders_no_further_ahead_than_its_gate():
    """With a gate the consumer frees a place in per frame it finishes, the frames rendered but not yet finished never
    exceed the gate's limit, however slow the consumer."""
    import time

    from hyperlips.stages import Gate
    from hyperlips.streaming import network_stage, render_gate

    gate, rendered, most = render_gate(4, 2), [0], [0]
    finished = 0

    def render(jobs):
        rendered[0] += len(jobs)
        most[0] = max(most[0], rendered[0] - finished)

    assert gate.limit == 4 * 2 + 2 and render_gate(16, 2).limit == 40 and render_gate(1, 2).limit == 4
    import queue

    given: queue.Queue = queue.Queue()  # unbounded: only the gate holds the stage back

    def finish():
        nonlocal finished
        while (batch := given.get()) is not None:
            for _ in batch:
                time.sleep(0.002)
                finished += 1
                gate.done()

    t = threading.Thread(target=finish)
    t.start()
    for batch in network_stage(4, render, workers=2, gate=gate)(iter(jobs_of(40))):
        given.put(batch)
    given.put(None)
    t.join(timeout=20)
    assert finished == 40 and 8 <= most[0] <= gate.limit
    with pytest.raises(ValueError, match="at least 1"):
        Gate(0)


def test_an_encoder_error_while_base_waits_at_the_gate_stops_the_run_at_once(clip, monkeypatch):
    """The writer fails while Base's render threads wait for room at the gate: the run ends with the error at once and
    leaves no thread behind (the gate opens, so the waiting stage can stop)."""
    import time

    from hyperlips.media import writer as writer_mod

    real, written = writer_mod.VideoWriter.write, []

    def write(self, *a, **k):
        written.append(1)
        if len(written) == 3:
            time.sleep(0.5)  # the render threads are at the gate by now
            raise RuntimeError("disk broke")
        return real(self, *a, **k)

    monkeypatch.setattr(writer_mod.VideoWriter, "write", write)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="disk broke"):
        lipsync(model="base", batch_size=4).sync(clip.video, clip.long_speech, clip.folder / "gate_err.mp4")
    assert time.perf_counter() - t0 < 20
    for t in threading.enumerate():
        if t.name.startswith("hyperlips-"):
            t.join(timeout=10)
            assert not t.is_alive(), t.name


def test_warnings_said_in_stage_threads_belong_to_the_call_that_started_them():
    """A warning issued in a stage's thread (decoding, a detector worker) is collected for the call whose chain it
    is (errors.collect_warnings), not lost, and not given to a call running meanwhile in another thread."""
    import threading

    from hyperlips import stages
    from hyperlips.errors import collect_warnings, warn

    def chain(tag):
        def source(_):
            warn(f"{tag}: said in the source thread")
            yield from range(4)

        def step(items):
            for i in items:
                if i == 2:
                    warn(f"{tag}: said in a step thread")
                yield i

        def detect(i):
            warn(f"{tag}: said by a worker")
            return i

        timings = stages.Timings()
        got = list(stages.run_chain(stages.Step("source", source), [stages.Step("step", step)], timings))
        return got, list(stages.mapped_ahead(detect, iter(got[:1]), lambda i: i, 2))

    said = {}

    def call(tag):
        with collect_warnings() as mine:
            chain(tag)
        said[tag] = list(mine)

    threads = [threading.Thread(target=call, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tag in ("a", "b"):
        assert said[tag] == [f"{tag}: said in the source thread", f"{tag}: said in a step thread",
                             f"{tag}: said by a worker"], said


def test_warnings_collected_within_a_collecting_call_reach_it_too():
    """A call that collects its own warnings (eval's measurement of a pair) inside one that collects (a server job):
    the outer one was left without them."""
    import warnings

    from hyperlips.errors import collect_warnings, warn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with collect_warnings() as outer:
            warn("before")
            with collect_warnings() as inner:
                warn("inside")
                warn("before")
            warn("after")
    assert inner == ["inside", "before"] and outer == ["before", "inside", "after"]


def test_an_output_that_is_an_input_by_any_path_is_refused_before_the_work(real_data, tmp_path):
    """The output is written over by the final rename: named as an input, that input is lost. The same path was
    refused; the same file by another path (a hard link here; a folder mounted twice, a name in another case on a
    case-insensitive disk, another Unicode form of it on a Mac) went through, and the input was replaced."""
    import os
    import shutil
    from pathlib import Path

    from hyperlips.errors import UserError
    from hyperlips.streaming import check_paths

    video = Path(shutil.copy(real_data / "retalking" / "face2.mp4", tmp_path / "take.mp4"))
    audio = Path(shutil.copy(real_data / "retalking" / "audio1.wav", tmp_path / "speech.wav"))
    os.link(video, tmp_path / "same.mp4")
    os.link(audio, tmp_path / "same_speech.mkv")
    for out, what in ((video, "video"), (tmp_path / "same.mp4", "video"), (tmp_path / "same_speech.mkv", "audio")):
        with pytest.raises(UserError, match=f"the output path is the same file as the input {what}"):
            check_paths(video, audio, out)
    check_paths(video, audio, tmp_path / "out.mp4")  # another file: fine


def test_an_output_that_is_the_voice_sample_or_the_reference_is_refused_and_the_file_kept(real_data, tmp_path,
                                                                                           capsys):
    """Only the video and the speech were compared with the output: `-o` naming the --voice-sample recording (a
    video of the voice is a natural one) or the --reference picture replaced it with the result without a word."""
    import shutil

    from hyperlips.cli import main

    video, speech = real_data / "retalking" / "face2.mp4", real_data / "retalking" / "audio1.wav"
    kept = tmp_path / "recording.mp4"
    shutil.copy(video, kept)
    kept.chmod(0o644)  # (the shared clips are read-only: a copy of one refused as write-protected, not as an input)
    before = kept.read_bytes()
    for argv, what in ((["live", video, speech, "--voice-sample", kept], "voice sample (--voice-sample)"),
                       (["live", video, speech, "--reference", kept], "reference (--reference)"),
                       (["sync", video, speech, "--reference", kept], "reference (--reference)")):
        code = main([str(a) for a in argv] + ["-o", str(kept), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"the output path is the same file as the {what} ({kept})" in err, err
    assert kept.read_bytes() == before


def test_an_output_another_user_owns_in_a_shared_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    """In a sticky folder (shared, as /tmp is) only a file's owner may replace it: the whole run was done, then the
    final rename failed with "Operation not permitted: .out.2b8efc87.partial.mp4", a hidden file never named."""
    import os
    import stat
    from pathlib import Path

    from hyperlips.errors import UserError
    from hyperlips.streaming import check_output

    shared = tmp_path / "drop"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    out = shared / "out.mp4"
    out.write_bytes(b"a colleague's render")
    stranger = os.stat(out).st_uid + 1000
    real_root = os.geteuid() == 0
    monkeypatch.setattr(os, "geteuid", lambda: stranger)  # (the test runs as the files' owner: seen as another)
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    with pytest.raises(UserError, match=r"cannot replace .*out\.mp4: it belongs to another user in a shared folder"):
        check_output(out)
    check_output(shared / "new.mp4")  # a new name there: fine
    from hyperlips import streaming

    if real_root:  # root without its right to act as any file's owner (a container's): refused the same way
        os.chown(out, stranger, stranger)
        os.chown(shared, stranger, stranger)
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        monkeypatch.setattr(streaming, "_may_own_any_file", lambda: False)
        with pytest.raises(UserError, match="it belongs to another user in a shared folder"):
            check_output(out)
        monkeypatch.setattr(streaming, "_may_own_any_file", lambda: True)
        check_output(out)
        monkeypatch.setattr(os, "geteuid", lambda: stranger + 1)
        with pytest.raises(UserError, match="it belongs to another user in a shared folder"):
            check_output(out)
    os.chmod(shared, 0o777)  # not sticky: a writable folder's files may be replaced
    check_output(out)
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o777 and Path(out).read_bytes() == b"a colleague's render"
    # a render protected on purpose (chmod a-w) was replaced silently, root's run too (os.access lets root write)
    monkeypatch.undo()
    os.chmod(out, 0o444)
    with pytest.raises(UserError, match=r"cannot replace .*out\.mp4: it is write-protected \(read-only\)"):
        check_output(out)
    os.chmod(out, 0o644)
    check_output(out)


def test_a_tilde_that_was_not_expanded_is_said(tmp_path, monkeypatch):
    """'~/Videos/out.mp4' quoted (a script, a settings file): a folder named "~" was made where the command ran, and
    the success line read as the home folder; '~/clip.mp4' as an input was "not found" with no hint."""
    from pathlib import Path

    from hyperlips.errors import MediaError, UserError, require_file
    from hyperlips.streaming import check_output

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(UserError, match=r"the output ~/Videos/out\.mp4 begins with a '~' that was not made your home "
                                        r"folder .*: give .*home/Videos/out\.mp4"):
        check_output(Path("~/Videos/out.mp4"))
    assert not (tmp_path / "~").exists()
    with pytest.raises(MediaError, match=r"video not found: ~/clip\.mp4 \(its '~' was not made your home folder"):
        require_file("~/clip.mp4", "video")
    from hyperlips.data.preprocess import PreprocessOptions, preprocess
    from hyperlips.eval.commands import _check_report_folder

    with pytest.raises(UserError, match=r"-o ~/rep begins with a '~' that was not made your home folder"):
        _check_report_folder(Path("~/rep"))  # eval's report, preprocess's dataset: the same
    (tmp_path / "clip.mp4").write_bytes(b"x")
    with pytest.raises(UserError, match=r"~/data begins with a '~' that was not made your home folder"):
        preprocess(tmp_path / "clip.mp4", Path("~/data"), PreprocessOptions(), progress=False)
    from hyperlips.cli import build_parser
    from hyperlips.train.finetune import _check_args

    for given in (["-o", "~/anna.safetensors"], ["-o", "anna.safetensors", "--work", "~/anna.work"]):
        args = build_parser().parse_args(["finetune", str(tmp_path / "clip.mp4"), *given])
        with pytest.raises(UserError, match=r"~/anna\.\w+ begins with a '~' that was not made your home folder"):
            _check_args(args)  # finetune's model and its work folder: "~/anna.work/data/clips/..." was made here
    assert not (tmp_path / "~").exists()
    (tmp_path / "~").mkdir()  # a folder really named "~" here: taken as it is
    check_output(Path("~/out.mp4"))


def test_a_reference_picture_without_a_suffix_is_a_picture(tmp_path, monkeypatch):
    """A picture saved without a suffix (from a chat app), or named like a number and given as "./10": "--reference
    must be best, first, a frame number or an image" although the file was there. A bare number is a frame."""
    from pathlib import Path

    from hyperlips.errors import UserError
    from hyperlips.streaming import reference_request

    monkeypatch.chdir(tmp_path)
    for name in ("still_noext", "10"):
        (tmp_path / name).write_bytes(b"x")
    assert reference_request("still_noext") == Path("still_noext")
    assert reference_request("./10") == Path("10") and reference_request("10") == 10
    assert reference_request("face.png") == Path("face.png")  # (a path with a suffix need not exist yet: said later)
    with pytest.raises(UserError, match=r"--reference \(reference\) must be best, first, a frame number or an image"):
        reference_request("bset")


def test_an_output_named_only_by_its_suffix_is_said_so(tmp_path):
    """`-o .mp4` was "output must be a video file ending in .mp4 ...: .mp4", which reads as false."""
    from pathlib import Path

    from hyperlips.errors import UserError
    from hyperlips.streaming import check_output

    with pytest.raises(UserError, match=r"the output .*\.mp4 has a suffix but no name: give one, such as .*out\.mp4"):
        check_output(tmp_path / ".mp4")
    with pytest.raises(UserError, match="has a suffix but no name"):
        check_output(Path(".MOV"))


def test_an_output_folder_that_is_a_broken_link_is_said_before_the_work(tmp_path, monkeypatch):
    """A folder that is a link to a drive not mounted (or a link to itself): "the output folder cannot be made: File
    exists", after the inputs were read. The messages quote the folder as it was given, not made absolute."""
    import os
    from pathlib import Path

    from hyperlips.errors import UserError
    from hyperlips.streaming import check_output

    monkeypatch.chdir(tmp_path)
    os.symlink("/nonexistent/Volumes/Projects/renders", "renders")
    os.symlink("loop", "loop")
    with pytest.raises(UserError, match=r"the output folder renders is a link to /nonexistent/Volumes/Projects/renders, "
                                        r"which does not exist or cannot be reached \(is its drive mounted\?\)"):
        check_output(Path("renders/out.mp4"))
    with pytest.raises(UserError, match="the output folder loop is a link to loop"):
        check_output(Path("loop/a/out.mp4"))
    os.mkdir("locked")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(UserError, match=r"^cannot write the output in locked: no permission"):
        check_output(Path("locked/out.mp4"))
    real_statvfs = os.statvfs  # a read-only disk (a camera card, a disk image) is said as such, not as a permission

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real_statvfs(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", ReadOnly)
    with pytest.raises(UserError, match=r"^cannot write the output in locked: it is on a read-only disk"):
        check_output(Path("locked/out.mp4"))
