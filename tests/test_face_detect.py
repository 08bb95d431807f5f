"""Face detection on real frames (720p, 1080p, two people, the astronaut) and on bad input."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from hyperlips.errors import UserError
from hyperlips.face.detect import Box, FaceDetector, MissingDependencyError, import_mediapipe
from helpers import frames_at as read_frames




@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as d:
        yield d


@pytest.fixture(scope="module")
def astronaut_bgr():
    skimage_data = pytest.importorskip("skimage.data")
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


def test_importing_mediapipe_keeps_nothing_of_the_caller_alive():
    """mediapipe keeps the exception of an optional import (no PortAudio here) with its traceback, which held the
    frames of whatever first imported it: a trainer with its networks and process group stayed alive to the end."""
    import subprocess
    import sys

    code = (
        "import gc, weakref\n"
        "from hyperlips.face.detect import import_mediapipe\n"
        "class Big: pass\n"
        "def first_use():\n"
        "    big = Big()\n"
        "    import_mediapipe()\n"
        "    return weakref.ref(big)\n"
        "ref = first_use(); gc.collect()\n"
        "print('alive' if ref() is not None else 'freed')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "freed"


def test_box_helpers():
    b = Box(10.0, 20.0, 50.0, 100.0, 0.9)
    assert (b.width, b.height, b.area, b.center) == (40.0, 80.0, 3200.0, (30.0, 60.0))
    np.testing.assert_array_equal(b.as_array(), [10, 20, 50, 100])
    assert Box.from_array(b.as_array(), 0.9) == b
    assert b.iou(b) == pytest.approx(1.0)
    assert b.iou(Box(50, 20, 90, 100)) == 0.0  # touching edges (x2 exclusive) do not overlap
    assert b.iou(Box(30, 20, 70, 100)) == pytest.approx(1600 / 4800)
    c = Box(-5, -3, 700, 60).clip(640, 480)
    assert (c.x1, c.y1, c.x2, c.y2) == (0, 0, 640, 60)


def test_astronaut_face_found_in_the_right_place(detector, astronaut_bgr):
    boxes = detector.detect(astronaut_bgr)
    assert len(boxes) == 1
    b = boxes[0]
    assert b.score > 0.8
    # the face (eyes ~ (205..245, 115), mouth ~ (225, 155), chin ~ y 177) lies inside the box
    assert b.x1 < 200 and b.x2 > 250 and b.y1 < 110 and b.y2 > 160
    assert 80 < b.width < 130 and 80 < b.height < 130


def test_converts_bgr_to_rgb(detector, astronaut_bgr):
    """Same box as mediapipe given the RGB image directly (the detector converts from BGR itself)."""
    mp = import_mediapipe()
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as fd:
        det = fd.process(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2RGB)).detections[0]
    rb = det.location_data.relative_bounding_box
    b = detector.detect(astronaut_bgr)[0]
    np.testing.assert_allclose(b.as_array(), np.array([rb.xmin, rb.ymin, rb.xmin + rb.width, rb.ymin + rb.height]) * 512)
    assert b.score == pytest.approx(det.score[0])


def test_short_range_model(astronaut_bgr):
    with FaceDetector(model="short") as d:
        boxes = d.detect(astronaut_bgr)
    assert len(boxes) == 1 and boxes[0].score > 0.8


@pytest.mark.parametrize("name", ["video1.mp4", "video2.mp4", "video3.mp4", "video4.mp4"])
def test_720p_faces(detector, real_data, name):
    for frame in read_frames(real_data / "hyperlips" / name, [0, 100]):
        assert frame.shape[:2] == (720, 1280) or frame.shape[:2] == (720, 1278)
        boxes = detector.detect(frame)
        assert boxes, f"no face in {name}"
        b = boxes[0]
        assert 120 < b.height < 320, b
        assert 0 <= b.x1 < b.x2 <= frame.shape[1] and 0 <= b.y1 < b.y2 <= frame.shape[0]


def test_small_face_in_1080p(detector, more_data):
    (frame,) = read_frames(more_data / "dfdc_icpr2020" / "lynaeydofd.mp4", [30])
    assert frame.shape[:2] == (1080, 1920)
    boxes = detector.detect(frame)
    assert len(boxes) >= 1
    assert 100 < boxes[0].height < 300


def test_two_people_sorted_by_area(detector, more_data):
    (frame,) = read_frames(more_data / "visualvoice" / "interview.mp4", [10])
    boxes = detector.detect(frame)
    assert len(boxes) == 2
    assert boxes[0].area >= boxes[1].area
    left, right = sorted(boxes, key=lambda b: b.center[0])
    assert left.x2 < 640 < right.x1  # one person on each half of the split screen


def test_close_ups(detector, real_data):
    for i in (1, 3, 5):
        (frame,) = read_frames(real_data / "retalking" / f"face{i}.mp4", [0])
        boxes = detector.detect(frame)
        assert len(boxes) >= 1 and boxes[0].width > 0.3 * frame.shape[1]


def test_a_face_the_frames_edge_cuts_keeps_its_whole_box(detector, astronaut_bgr):
    """Half a face is found, and its box is the whole face's as the detector sees it, reaching past the edge (its crop
    then keeps the face's proportions), about where the uncut picture's box lies."""
    (whole,) = detector.detect(astronaut_bgr)
    part = np.ascontiguousarray(astronaut_bgr[40:260, 200:460])  # the face's left half is cut off
    boxes = detector.detect(part)
    assert boxes, "half a face should still be found"
    b = boxes[0]
    assert b.x1 < 0 and b.x2 <= part.shape[1]
    shifted = np.array([b.x1 + 200, b.y1 + 40, b.x2 + 200, b.y2 + 40])
    assert np.abs(shifted - whole.as_array()).max() < 0.15 * whole.width, (shifted, whole)


def test_no_face(detector):
    assert detector.detect(np.zeros((720, 1280, 3), np.uint8)) == []
    rng = np.random.default_rng(0)
    assert detector.detect(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)) == []


@pytest.mark.parametrize(
    "bad", [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32), np.zeros((64, 64, 4), np.uint8), None]
)
def test_bad_frames(detector, bad):
    with pytest.raises(ValueError):
        detector.detect(bad)


def test_bad_arguments_and_close(astronaut_bgr):
    with pytest.raises(ValueError):
        FaceDetector(model="long")
    with pytest.raises(ValueError):
        FaceDetector(min_confidence=1.5)
    d = FaceDetector()
    d.close()
    d.close()  # twice is fine
    with pytest.raises(RuntimeError):
        d.detect(astronaut_bgr)


def test_missing_mediapipe_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` raise ImportError
    with pytest.raises(MissingDependencyError) as e:
        import_mediapipe()
    assert isinstance(e.value, UserError)
    assert "pip install" in str(e.value) and "mediapipe" in str(e.value)
    with pytest.raises(UserError):
        FaceDetector()


@pytest.mark.parametrize("make", ["hyperlips.face.detect:FaceDetector", "hyperlips.face.landmarks:FaceMesh"])
def test_mediapipe_graphs_start_without_a_word_on_stderr(make):
    """The C++ side logs as its graph starts, on its own threads, whenever that is: within the quiet window of the
    constructor (a library user's stderr stays clean, not only the command line's)."""
    import subprocess
    import sys

    module, name = make.split(":")
    code = (f"import time, numpy as np\nfrom {module} import {name}\nm = {name}()\ntime.sleep(0.5)\n"
            "m.close()\nimport sys\nprint('still here', file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr == "still here\n", res.stderr


def test_quiet_native_logs_nests_across_threads_and_restores_stderr():
    import os
    import stat
    import threading

    from hyperlips.face.detect import quiet_native_logs

    before = os.fstat(2)
    inside = threading.Event()
    leave = threading.Event()

    def other():
        with quiet_native_logs():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=other)
    with quiet_native_logs():
        t.start()
        inside.wait(5)
    # this thread left first: the other still needs the filter
    assert stat.S_ISFIFO(os.fstat(2).st_mode)
    leave.set()
    t.join(5)
    after = os.fstat(2)
    assert (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev)


def test_what_the_program_writes_on_stderr_meanwhile_arrives_and_mediapipes_lines_do_not():
    """Pointed at /dev/null while graphs started, descriptor 2 lost what the program using the library wrote there
    meanwhile (a host's log lines from its own threads, a child's output): now only mediapipe's lines are left out."""
    import subprocess
    import sys

    code = ("import os, subprocess, sys, threading\n"
            "from hyperlips.face.detect import quiet_native_logs\n"
            "def host():\n"
            "    for i in range(200): print('host', i, file=sys.stderr, flush=True)\n"
            "with quiet_native_logs():\n"
            "    t = threading.Thread(target=host); t.start(); t.join()\n"
            "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
            "    os.write(2, b'W0000 00:00:1796602197.593490   14248 inference_feedback_manager.cc:114] Feedback\\n')\n"
            "    os.write(2, b'native, not mediapipe\\n')\n"
            "    os.write(2, b'INFO: '); os.write(2, b'host between\\n')\n"  # TFLite's prefix and message apart
            "    os.write(2, b'Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
            "    os.write(2, b'INFO: the host\\'s own\\n')\n"
            "    os.write(2, b'E1207 00:33:31.123456 4242 host_server.py:88] HOST ERROR\\n')\n"  # its own records
            "    os.write(2, b'W1207 00:33:31.123456 4242 grpc_client.cc:12] host warning\\n')\n"
            "    os.write(2, b'x' * 300000)\n"  # a long write without a line's end: passed on, not searched again
            "    os.write(2, b'\\n')\n"
            "    subprocess.run([sys.executable, '-c', 'import sys; sys.stderr.write(\"child\\\\n\")'])\n"
            "    print('no newline at the end', end='', file=sys.stderr)\n"
            "print(' -- after', file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stderr.decode().splitlines() == [f"host {i}" for i in range(200)] + [
        "native, not mediapipe", "host between", "INFO: the host's own",
        "E1207 00:33:31.123456 4242 host_server.py:88] HOST ERROR", "W1207 00:33:31.123456 4242 grpc_client.cc:12] host "
        "warning", "x" * 300000, "child", "no newline at the end -- after"]


def test_detectors_shared_by_two_threads_find_what_one_detector_finds(detector, real_data):
    """FaceDetectors: a graph per call running at once (two frames at a time, from two threads); the same boxes."""
    import threading

    from hyperlips.face.detect import FaceDetectors

    frames = read_frames(real_data / "hyperlips" / "video2.mp4", list(range(0, 40, 3)))
    alone = [detector.detect(f) for f in frames]
    got: dict = {}
    with FaceDetectors(2) as pool:
        assert pool.workers == 2

        def work(k):
            for i in range(k, len(frames), 2):
                got[i] = pool.detect(frames[i])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert [[(b.x1, b.y1, b.x2, b.y2, b.score) for b in got[i]] for i in range(len(frames))] == \
           [[(b.x1, b.y1, b.x2, b.y2, b.score) for b in boxes] for boxes in alone]
    with pytest.raises(RuntimeError, match="closed"):
        pool.detect(frames[0])
    with pytest.raises(ValueError):
        FaceDetectors(0)


def test_detectors_are_set_up_at_the_same_time_and_a_failure_closes_the_others(monkeypatch):
    """FaceDetectors builds its graphs in threads of their own, all at once; when one cannot be built, those that were
    are closed and its error reaches the caller."""
    import threading

    import hyperlips.face.detect as detect

    started, closed = [], []
    all_in = threading.Barrier(3, timeout=10)  # three graphs being set up at the same moment, or a BrokenBarrierError

    class Fake:
        def __init__(self, model, min_confidence):
            started.append(threading.current_thread().name)
            all_in.wait()
            if fail and threading.current_thread().name.endswith("_2"):  # the third graph
                raise RuntimeError("graph set-up failed")

        def close(self):
            closed.append(self)

    monkeypatch.setattr(detect, "FaceDetector", Fake)
    monkeypatch.setattr(detect, "import_mediapipe", lambda: None)
    fail = False
    pool = detect.FaceDetectors(3)
    assert pool.workers == 3 and len(set(started)) == 3  # three threads
    pool.close()
    assert len(closed) == 3
    started.clear(), closed.clear()
    all_in.reset()
    fail = True
    with pytest.raises(RuntimeError, match="graph set-up failed"):
        detect.FaceDetectors(3)
    assert len(closed) == 2 and not any(t.name.startswith("hyperlips-detector") for t in threading.enumerate())


def test_mediapipe_can_be_imported_ahead_in_a_thread_once():
    """LipSync starts importing mediapipe while it loads its networks: once per process, in a thread of its own that
    a quick exit waits for."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hyperlips.face.detect import preload_mediapipe, FaceDetector\n"
        "t = preload_mediapipe()\n"
        "assert t is not None and not t.daemon and t.name == 'hyperlips-import-mediapipe'\n"
        "assert preload_mediapipe() is None\n"
        "t.join(120)\n"
        "assert 'mediapipe' in sys.modules\n"
        "FaceDetector().close()\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
    # a process that ends at once (no detector wanted) ends cleanly, the import finished or not begun
    res = subprocess.run([sys.executable, "-c", "from hyperlips.face.detect import preload_mediapipe\npreload_mediapipe()"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and res.stderr == "", res.stderr[-2000:]


def test_a_home_that_cannot_be_written_gives_no_matplotlib_warning(tmp_path):
    """Run as a service (a home it cannot write), every command and every server job's log began with matplotlib's
    two lines about its config folder: mediapipe imports it."""
    import os
    import subprocess

    (tmp_path / "file").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path / "file" / "home")  # under a file: nothing can be made there
    code = "from hyperlips.face.detect import import_mediapipe; import_mediapipe(); print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    assert "matplotlib" not in res.stderr.lower(), res.stderr


def test_a_child_forked_while_the_filter_is_on_neither_hangs_nor_writes_into_it():
    """A process forked while another thread was inside quiet_native_logs copied its lock held (a third of such
    children hung at their own first face graph) and the pipe whose reader is the parent's thread."""
    import subprocess
    import sys

    code = ("import os, sys, threading, time\n"
            "from hyperlips.face.detect import quiet_native_logs\n"
            "stop = threading.Event()\n"
            "def busy():\n"
            "    while not stop.is_set():\n"
            "        with quiet_native_logs():\n"
            "            time.sleep(0.001)\n"
            "t = threading.Thread(target=busy); t.start()\n"
            "hung = 0\n"
            "for k in range(30):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        with quiet_native_logs():\n"
            "            os.write(2, b'child %d\\n' % k)\n"
            "        os._exit(0)\n"
            "    for _ in range(300):\n"
            "        if os.waitpid(pid, os.WNOHANG)[0]:\n"
            "            break\n"
            "        time.sleep(0.01)\n"
            "    else:\n"
            "        hung += 1; os.kill(pid, 9); os.waitpid(pid, 0)\n"
            "stop.set(); t.join()\n"
            "print(hung)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == b"0", res.stdout + res.stderr[-2000:]
    assert sorted(res.stderr.decode().split("\n")[:-1]) == sorted(f"child {k}" for k in range(30))


def test_loading_mediapipe_leaves_the_programs_environment_as_it_was():
    """GLOG_minloglevel=2 was left in os.environ, inherited by every child the program starts."""
    import subprocess
    import sys

    code = ("import os\n"
            "from hyperlips.face.detect import import_mediapipe\n"
            "import_mediapipe()\n"
            "print(os.environ.get('GLOG_minloglevel'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "GLOG_minloglevel"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "None", res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**env, "GLOG_minloglevel": "0"})
    assert res.stdout.strip() == "0"  # the program's own setting stays


def test_faces_come_largest_seen_first(monkeypatch):
    """A head at the frame's edge, mostly outside, has a box larger than the speaker's (boxes reach past the edge);
    `detect` put it first, as "the largest", where the tracking follows the largest the frame shows."""
    from types import SimpleNamespace

    def det(x, y, w, h):
        box = SimpleNamespace(xmin=x, ymin=y, width=w, height=h)
        return SimpleNamespace(location_data=SimpleNamespace(relative_bounding_box=box), score=[0.9])

    with FaceDetector() as d:
        # in a 1280 x 720 frame: the speaker 240 x 240 inside, a head 400 x 500 of which 100 x 500 inside
        found = [det(1180 / 1280, 100 / 720, 400 / 1280, 500 / 720), det(520 / 1280, 240 / 720, 240 / 1280, 240 / 720)]
        monkeypatch.setattr(d, "_fd", SimpleNamespace(process=lambda rgb: SimpleNamespace(detections=found)))
        boxes = d.detect(np.zeros((720, 1280, 3), np.uint8))
        monkeypatch.undo()
    assert [round(b.x1) for b in boxes] == [520, 1180]
