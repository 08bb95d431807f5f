"""The HTTP API of ``hyperlips serve`` on a real server (threads + worker processes), with tiny inputs and
random weights: submit, progress, result, cancel, restart, bad uploads, path traversal, size limits, crashes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import probe_streams, random_base_checkpoint, read_frames, run_cli, write_wav
from serve_kit import Client, face_photo, faceless_photo, quick_settings, silent_video, worker_pids

from hyperlips.serve.server import App


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_inputs")
    return {
        "photo": face_photo(d / "face.png"),
        "speech": write_wav(d / "speech.wav", 0.6),
        "long_speech": write_wav(d / "long_speech.wav", 40.0),
        "noface": faceless_photo(d / "wall.png"),
        "silent": silent_video(d / "silent.mp4"),
    }


@pytest.fixture
def server(tmp_path):
    """Start servers on tmp_path/data (several, one after another, for restart tests); all stopped at the end."""
    apps = []

    def start(run_jobs: bool = True, **kw) -> tuple[App, Client]:
        app = App(quick_settings(kw.pop("data", tmp_path / "data"), **kw)).start(run_jobs=run_jobs)
        apps.append(app)
        return app, Client(app.url)

    yield start
    for app in apps:
        app.stop()


def _sync_job(client: Client, inputs, audio="speech", **params) -> dict:
    video = client.upload_file(inputs["photo"])
    speech = client.upload_file(inputs[audio])
    return client.submit(kind="sync", video=video["id"], audio=speech["id"], **params)


# ------------------------------------------------------------------------------------------------ the happy path
def test_submit_progress_and_result(server, inputs, tmp_path):
    app, client = server()
    job = _sync_job(client, inputs)
    assert job["state"] == "queued" and job["params"]["model"] == "starter"  # the shipped starter by default
    done, seen = client.wait(job["id"], timeout=900)
    assert done["state"] == "done", done["message"]
    stages = [s["stage"] for s in seen if s["state"] == "running"]
    assert set(stages) & {"loading", "faces", "lip-sync"}, stages
    fractions = [s["fraction"] for s in seen]
    assert fractions == sorted(fractions), "progress went backwards"
    assert done["fraction"] == 1.0 and done["result"]["frames"] == 15  # 0.6 s at the photo's 25 fps
    last = done["progress"]  # the worker's last report: every frame of the lip-sync pass
    assert (last["done"], last["total"], last["fraction"]) == (15, 15, 1.0)
    # each stage on record in order with its seconds, however short (no poll may have caught the face search)
    assert list(last["stages"]) == ["loading", "faces", "lip-sync"], last["stages"]
    assert all(s >= 0 for s in last["stages"].values()) and sum(last["stages"].values()) <= last["elapsed_s"] + 0.01

    status, headers, body = client.request("GET", done["result"]["url"])
    assert status == 200 and headers["content-type"] == "video/mp4"
    out = tmp_path / "result.mp4"
    out.write_bytes(body)
    facts = probe_streams(out)
    assert (facts["width"], facts["height"], facts["frames"]) == (256, 256, 15)
    assert facts["audio_codec"] == "aac"

    status, headers, part = client.request("GET", done["result"]["url"], headers={"Range": "bytes=100-199"})
    assert status == 206 and part == body[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(body)}"
    # past the end: a JSON error as every answer (it had no body); a range ending before it starts is no range
    status, headers, data = client.request("GET", done["result"]["url"], headers={"Range": "bytes=999999999-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(body)}", headers
    assert "past the end of the file" in json.loads(data)["error"]
    status, _, whole = client.request("GET", done["result"]["url"], headers={"Range": "bytes=100-50"})
    assert status == 200 and whole == body
    # validators: a cached copy is confirmed with 304; a download resumed with If-Range gets the piece only while the
    # file is the one it began (a changed file is sent whole, not spliced)
    status, headers, _ = client.request("HEAD", done["result"]["url"])
    tag, modified = headers["etag"], headers["last-modified"]
    status, h304, empty = client.request("GET", done["result"]["url"], headers={"If-None-Match": f'W/{tag}, "x"'})
    assert status == 304 and empty == b"" and h304["etag"] == tag
    assert client.request("GET", done["result"]["url"], headers={"If-None-Match": '"x"'})[0] == 200
    status, _, part = client.request("GET", done["result"]["url"], headers={"Range": "bytes=100-199", "If-Range": tag})
    assert status == 206 and part == body[100:200]
    for other in ('"another-version"', modified):  # (a date is kept to the second: not a sure sign of the same file)
        status, _, whole = client.request("GET", done["result"]["url"], headers={"Range": "bytes=100-199",
                                                                              "If-Range": other})
        assert status == 200 and whole == body, other
    status, headers, _ = client.request("GET", done["result"]["download_url"])
    assert status == 200 and 'filename="face_hyperlips.mp4"' in headers["content-disposition"]

    # deleting the job removes its files
    folder = app.settings.data / "jobs" / job["id"]
    assert folder.is_dir()
    assert client.json("DELETE", f"/api/jobs/{job['id']}")[0] == 200
    assert not folder.exists()
    assert client.json("GET", f"/api/jobs/{job['id']}")[0] == 404


def test_info_models_and_openapi_cover_every_route(server):
    from hyperlips.serve.routes import ROUTE_TABLE

    _, client = server()
    status, doc = client.json("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = set()
    for method, pattern in ROUTE_TABLE:
        if pattern.startswith("^/api/"):
            path = pattern.strip("^$").replace(r"\.", ".").replace("(?P<id>[^/]+)", "{id}")
            served.add((method, path))
    assert served == documented
    assert client.json("GET", "/api/models")[1]["models"][-1]["id"] == "untrained"
    info = client.json("GET", "/api/info")[1]
    assert info["limits"]["max_upload_bytes"] > 0


# ------------------------------------------------------------------------------------------------ cancel
def test_cancel_running_and_queued_jobs(server, inputs):
    app, client = server()
    long_job = _sync_job(client, inputs, audio="long_speech")  # 1000 frames: minutes of work
    queued = _sync_job(client, inputs)
    client.wait(long_job["id"], stages=("lip-sync",), timeout=900)
    folder = app.settings.data / "jobs" / long_job["id"]
    assert worker_pids(folder), "no worker process for the running job"
    assert client.job(queued["id"])["queue_position"] == 0
    assert client.job(queued["id"])["running_ahead"] == 1  # (the page said "Waiting to start…" for all of it)
    listed = {j["id"]: j for j in client.json("GET", "/api/jobs")[1]["jobs"]}  # the list says it too (it did not)
    assert listed[queued["id"]]["queue_position"] == 0 and "queue_position" not in listed[long_job["id"]]
    assert listed[queued["id"]]["running_ahead"] == 1 and "running_ahead" not in listed[long_job["id"]]

    status, after = client.json("POST", f"/api/jobs/{queued['id']}/cancel")
    assert status == 200 and after["state"] == "cancelled"  # a queued job is cancelled at once
    client.json("POST", f"/api/jobs/{long_job['id']}/cancel")
    ended, _ = client.wait(long_job["id"], timeout=120)
    assert ended["state"] == "cancelled"
    deadline = time.monotonic() + 300
    while worker_pids(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker_pids(folder), "the cancelled job's worker is still running"
    assert not (folder / "result.mp4").exists()
    assert not list(folder.rglob(".*.partial.*"))  # the killed worker's half-written result stayed until expiry
    status, err = client.json("GET", f"/api/jobs/{long_job['id']}/result")
    assert status == 404 and err["error"] == "the job is cancelled"  # not "cancelled: cancelled"


def test_jobs_at_once_runs_that_many_workers(server, inputs):
    _, client = server(jobs_at_once=2)
    jobs = [_sync_job(client, inputs, audio="long_speech") for _ in range(3)]
    deadline = time.monotonic() + 600
    while [client.job(j["id"])["state"] for j in jobs] != ["running", "running", "queued"]:
        assert time.monotonic() < deadline, [client.job(j["id"])["state"] for j in jobs]
        time.sleep(0.2)
    for j in jobs:
        client.json("POST", f"/api/jobs/{j['id']}/cancel")
    assert [client.wait(j["id"], timeout=120)[0]["state"] for j in jobs] == ["cancelled"] * 3


# ------------------------------------------------------------------------------------------------ restart
def test_a_queued_job_survives_a_restart(server, inputs):
    first, client = server(run_jobs=False)  # a server whose scheduler never gets to the job
    job = _sync_job(client, inputs)
    first.stop()
    _, client = server()
    done, _ = client.wait(job["id"], timeout=900)
    assert done["state"] == "done", done["message"]


def test_a_job_running_when_the_server_is_killed_runs_again(tmp_path, inputs):
    """A real `hyperlips serve` process killed with SIGKILL mid-job: its worker stops too; the next start re-runs it."""
    data = tmp_path / "data"

    lines: list[list[str]] = []  # each server's output
    procs: list[subprocess.Popen] = []

    def start() -> tuple[subprocess.Popen, Client]:
        proc = subprocess.Popen([sys.executable, "-m", "hyperlips.cli", "serve", "--port", "0", "--data", str(data),
                                 "--no-examples", "--device", "cpu", "--threads", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        mine: list[str] = []
        lines.append(mine)
        threading.Thread(target=lambda: mine.extend(proc.stdout), daemon=True).start()  # keeps the pipe drained
        deadline = time.monotonic() + 300
        while not any("http://" in ln for ln in mine):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(mine)
            time.sleep(0.1)
        url = next(ln for ln in mine if "http://" in ln).split()[2].rstrip("/")
        return proc, Client(url)

    proc, client = start()
    try:
        job = _sync_job(client, inputs, audio="long_speech")
        client.wait(job["id"], stages=("faces", "lip-sync"), timeout=900)
        folder = data / "jobs" / job["id"]
        assert worker_pids(folder)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 300
        while worker_pids(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not worker_pids(folder), "the worker outlived its server"
        proc, client = start()
        again = client.job(job["id"])
        assert again["state"] in ("queued", "running") and again["attempts"] >= 1
        client.wait(job["id"], stages=("faces", "lip-sync"), timeout=900)
        assert client.job(job["id"])["attempts"] == 2
        client.json("POST", f"/api/jobs/{job['id']}/cancel")
        assert client.wait(job["id"], timeout=120)[0]["state"] == "cancelled"
    finally:
        for p in procs:  # the servers this test started, whatever happened: a closed terminal's SIGHUP stops one as
            p.send_signal(signal.SIGHUP)  # SIGTERM and Ctrl-C do (it ended in 129, "interrupted", before)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    time.sleep(0.2)
    out = "".join(lines[1])
    assert proc.returncode == 0, out
    assert "was running when the server stopped: queued again" in out and "stopping" in out


# ------------------------------------------------------------------------------------------------ crashes
def test_a_crashing_worker_fails_its_job_not_the_server(server, inputs):
    app, client = server()
    job = _sync_job(client, inputs, audio="long_speech")
    client.wait(job["id"], stages=("faces", "lip-sync"), timeout=900)
    for pid in worker_pids(app.settings.data / "jobs" / job["id"]):
        os.kill(pid, signal.SIGKILL)  # as a segfault would end it
    failed, _ = client.wait(job["id"], timeout=120)
    assert failed["state"] == "failed"
    assert "stopped unexpectedly (killed by SIGKILL)" in failed["message"]
    logged = (app.settings.data / "jobs" / job["id"] / "worker.log").stat().st_size > 0
    assert ("see this job's log" in failed["message"]) == logged, failed["message"]  # (not pointed at an empty one)
    assert not list((app.settings.data / "jobs" / job["id"]).glob(".*.partial.*"))  # its half-written result: gone
    status, err = client.json("POST", f"/api/jobs/{job['id']}/cancel")  # nothing to cancel (it answered 200)
    assert status == 409 and "failed already: nothing to cancel" in err["error"], err
    assert "cancel" not in failed["links"]
    assert client.json("GET", "/api/health") == (200, {"ok": True})
    after = _sync_job(client, inputs)
    assert client.wait(after["id"], timeout=900)[0]["state"] == "done"


# ------------------------------------------------------------------------------------------------ bad uploads
def _cli_reason(tmp_path: Path, video: str, audio: str, files: dict[str, bytes]) -> str:
    """The one-line reason `hyperlips sync` gives for the same files (same names, in the working folder)."""
    work = tmp_path / "cli"
    work.mkdir(exist_ok=True)
    for name, data in files.items():
        (work / name).write_bytes(data)
    r = run_cli("sync", video, audio, "-o", "out.mp4", "--untrained", "--device", "cpu", cwd=work)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("hyperlips: error: ")
    return line[len("hyperlips: error: "):]


def test_not_a_video_gets_the_command_line_reason(server, inputs, tmp_path):
    _, client = server()
    junk = b"this is not a video at all\n" * 20
    status, err = client.upload("clip.mp4", junk)
    assert status == 400
    speech = inputs["speech"].read_bytes()
    assert err["error"] == _cli_reason(tmp_path, "clip.mp4", "speech.wav", {"clip.mp4": junk, "speech.wav": speech})
    assert "clip.mp4" in err["error"] and str(tmp_path) not in err["error"]


def test_an_animated_gif_is_taken_as_a_video(server, tmp_path):
    """`sync` reads an animated GIF as a video; the server takes one too."""
    from PIL import Image

    frames = [Image.fromarray(np.full((64, 64, 3), 40 * k, np.uint8)) for k in range(3)]
    frames[0].save(tmp_path / "talk.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    _, client = server(run_jobs=False)
    rec = client.upload_file(tmp_path / "talk.gif")
    assert rec["usable_as"]["video"] and rec["name"] == "talk.gif", rec


def test_an_animated_png_is_a_video_to_the_server_as_to_sync(server, tmp_path):
    """An animated PNG is read as a video by `sync`; the server called it a photo by its name (no sync job would
    take its sound, and a job with it as the video got its frames)."""
    import av

    path = tmp_path / "talk.png"
    with av.open(str(path), "w", format="apng") as c:
        s = c.add_stream("apng", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "rgb24"
        for k in range(3):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * k, np.uint8), format="rgb24")))
        c.mux(s.encode())
    _, client = server(run_jobs=False)
    rec = client.upload_file(path)
    assert rec["usable_as"]["video"] and not rec["is_image"] and rec["frames"] == 3, rec


def test_speech_without_sound_gets_the_command_line_reason(server, inputs, tmp_path):
    _, client = server()
    photo = client.upload_file(inputs["photo"])
    silent = client.upload_file(inputs["silent"])
    assert silent["usable_as"] == {"video": True, "audio": False}
    status, err = client.json("POST", "/api/jobs", {"video": photo["id"], "audio": silent["id"]})
    assert status == 400
    files = {"face.png": inputs["photo"].read_bytes(), "silent.mp4": inputs["silent"].read_bytes()}
    assert err["error"] == _cli_reason(tmp_path, "face.png", "silent.mp4", files)
    status, err = client.json("POST", "/api/jobs", {"video": photo["id"], "audio": photo["id"]})
    assert status == 400 and "face.png is a photo" in err["error"]


def test_silent_speech_is_done_with_the_command_lines_warning(server, inputs, tmp_path):
    """The command line warns of silent speech; the job said nothing (a raw warning in its log, with the server's
    paths): its message and result carry the warning, in the uploaded file's name."""
    import soundfile as sf

    _, client = server()
    photo = client.upload_file(inputs["photo"])
    sf.write(str(tmp_path / "quiet.wav"), np.zeros(9600, np.float32), 16000)
    quiet = client.upload_file(tmp_path / "quiet.wav")
    done, _ = client.wait(client.submit(video=photo["id"], audio=quiet["id"], model="untrained")["id"], timeout=900)
    assert done["state"] == "done", done
    assert done["message"].startswith("done, with a warning: quiet.wav: the speech is silent"), done["message"]
    assert done["result"]["warnings"] and str(tmp_path) not in done["message"]


def test_no_face_fails_the_job_with_the_command_line_reason(server, inputs, tmp_path):
    _, client = server()
    wall = client.upload_file(inputs["noface"])
    speech = client.upload_file(inputs["speech"])
    job = client.submit(video=wall["id"], audio=speech["id"])
    failed, _ = client.wait(job["id"], timeout=900)
    assert failed["state"] == "failed"
    files = {"wall.png": inputs["noface"].read_bytes(), "speech.wav": inputs["speech"].read_bytes()}
    assert failed["message"] == _cli_reason(tmp_path, "wall.png", "speech.wav", files)
    assert "wall.png" in failed["message"]


def test_too_long_and_unknown_types_are_refused(server, inputs, tmp_path):
    _, client = server(max_seconds=2.0)
    status, err = client.upload("talk.wav", write_wav(tmp_path / "three.wav", 3.0).read_bytes())
    assert status == 400 and err["error"] == "talk.wav is 3.0 s long; this server takes at most 2 s: send a shorter part of it"
    status, err = client.upload("run.exe", b"MZ" * 100)
    assert status == 400 and "run.exe: not a file type" in err["error"]
    status, err = client.upload("empty.wav", b"")
    assert status == 400 and "empty" in err["error"]
    status, _, body = client.request("POST", "/api/files", b"RIFF....", {"Content-Length": "8"})  # no ?name=
    assert status == 400 and b"the file's name is missing: POST /api/files?name=FILE" in body
    assert not any((tmp_path / "data" / "files").iterdir()), "a refused upload left a file"


def test_the_examples_are_held_to_the_servers_length_limit(server):
    """A server started with --max-seconds 3 listed and ran its 10 s built-in example (uploads were held to it)."""
    from hyperlips.serve.uploads import longest_seconds

    app, client = server(run_jobs=False, examples=True, max_seconds=3.0)
    every = app.store.examples()
    long_ones = [f for f in every if longest_seconds(f) > 3.0]
    assert long_ones, every  # the built-in example's speech is longer than 3 s
    listed = {f["id"] for f in client.json("GET", "/api/examples")[1]["files"]}
    assert listed == {f["id"] for f in every} - {f["id"] for f in long_ones}
    photo = next(f for f in every if f["facts"]["is_image"])
    status, err = client.json("POST", "/api/jobs", {"video": photo["id"], "audio": long_ones[0]["id"]})
    assert status == 400 and "this server takes at most 3 s" in err["error"], err
    app.stop()  # the same data folder served again with --no-examples: they were still listed and taken
    app, client = server(run_jobs=False, examples=False)
    assert client.json("GET", "/api/examples")[1]["files"] == []
    status, err = client.json("POST", "/api/jobs", {"video": photo["id"], "audio": long_ones[0]["id"]})
    assert status == 400 and "no uploaded file has the id" in err["error"], err


def test_bad_job_options_are_refused_with_a_reason(server, inputs):
    app, client = server(run_jobs=False)
    photo = client.upload_file(inputs["photo"])
    speech = client.upload_file(inputs["speech"])
    base = {"video": photo["id"], "audio": speech["id"], "model": "untrained"}
    for extra, words in [({"model": "person:nobody"}, "no model 'person:nobody'"),
                         ({"size": 1024}, "renders at 128, 256, 512 px"),
                         ({"size": 128.5}, "renders at 128, 256, 512 px (got 128.5)"),
                         ({"size": True}, "renders at 128, 256, 512 px (got True)"),
                         ({"loop": "bounce"}, "loop must be one of"),
                         ({"reference": 1}, "reference 1: face.png has 1 frame(s), numbered from 0"),  # (the job
                         # was taken, then failed in the command line's words)
                         ({"reference": "x5"}, "reference must be best, first or a frame number"),
                         # digits int() cannot read (was a 500 with a traceback in the log)
                         ({"reference": "\u00b2"}, "reference must be best, first or a frame number"),
                         ({"face": "\u00b2"}, "face must be a whole number"),
                         ({"crf": "\u00b2"}, "crf must be a whole number from 0"),
                         ({"size": "\u00b2"}, "renders at 128, 256, 512 px"),
                         ({"face": -1}, "face must be a whole number"),
                         ({"face": 0, "face_box": [0, 0, 10, 10]}, "not both"),
                         ({"video": "0123456789abcdef"}, "no uploaded file"),
                         ({"audio": None}, "no speech file given"),
                         ({"video": 5}, "video must be the id of an uploaded file, a string (got 5)"),
                         ({"audio": True}, "audio must be the id of an uploaded file, a string (got true)"),
                         ({"kind": "paint"}, "kind must be one of"),
                         ({"crf": 99}, "crf must be a whole number from 0"),
                         ({"crf": True}, "crf must be a whole number from 0"),
                         ({"preset": "warp"}, "preset must be one of"),
                         ({"pix_fmt": "rgb24"}, "pix_fmt must be yuv420p"),
                         ({"temporal_blend": 0.5}, "temporal_blend must be a number from 0"),
                         ({"temporal_blend": True}, "temporal_blend must be a number from 0"),
                         ({"temporal_blend": "steady"}, "temporal_blend must be a number from 0"),
                         ({"mouth": "paint"}, "mouth must be one of auto, render, warp, hybrid"),
                         ({"mouth": "hybrid"}, "the untrained model has none"),
                         ({"mouth": "warp"}, "the untrained model has none"),
                         ({"phonemes": 5}, "phonemes must be a list of"),
                         ({"phonemes": "0.1 B extra words\n"}, "phonemes: line 1: expected START PHONE"),
                         ({"phonemes": "\u00ff\u00d8\u00ff\u00e0\x00\x10JFIF\x14"}, "phonemes: not a text file"),
                         ({"phonemes": [{"start": 0.1}]}, "phonemes: phoneme 1: needs a start (or time) and a phone"),
                         ({"phonemes": [{"start": 0.2, "phone": "B"}, {"start": 0.1, "phone": "AA"}]},
                          "phonemes: phoneme 2 starts at 0.1 s, before phoneme 1"),
                         ({"phonemes": [{"start": 0, "phone": "QQ"}]}, "phonemes: phonemes not in the"),
                         ({"presett": "fast"}, "a sync job takes no 'presett' (it takes: audio, crf,"),
                         ({"kind": "finetune", "name": "me", "size": 256}, "a finetune job takes no 'audio', 'model', 'size'")]:
        status, err = client.json("POST", "/api/jobs", {**base, **extra})
        assert status == 400 and words in err["error"], (extra, err)
    # numbers as a form sends them, or as some languages write every JSON number, are the numbers
    status, job = client.json("POST", "/api/jobs", {**base, "size": " 256 ", "crf": "20", "face": 0.0,
                                                    "reference": "0", "temporal_blend": "0.2"})
    assert status == 201, job
    assert {k: job["params"][k] for k in ("size", "crf", "face", "reference", "temporal_blend")} == {
        "size": 256, "crf": 20, "face": 0, "reference": 0, "temporal_blend": 0.2}, job["params"]
    assert client.json("DELETE", f"/api/jobs/{job['id']}")[0] == 200
    status, _, body = client.request("POST", "/api/jobs", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and b"not valid JSON" in body
    # NaN and Infinity are no JSON (a job holding one would make GET /api/jobs unreadable to browsers); 1e400 is,
    # but as a number it is infinite
    for token in (b"NaN", b"Infinity", b"-Infinity"):
        raw = b'{"video": "%s", "audio": "%s", "face_box": [%s, 0, 100, 100]}' % (
            photo["id"].encode(), speech["id"].encode(), token)
        status, _, body = client.request("POST", "/api/jobs", raw, {"Content-Type": "application/json"})
        assert status == 400 and b"not valid JSON" in body and token.lstrip(b"-") in body, body
    raw = b'{"video": "%s", "audio": "%s", "model": "untrained", "face_box": [0, 0, 1e400, 100]}' % (
        photo["id"].encode(), speech["id"].encode())
    status, _, body = client.request("POST", "/api/jobs", raw, {"Content-Type": "application/json"})
    assert status == 400 and b"face_box must be [x1, y1, x2, y2] in pixels, finite" in body, body
    assert not any((app.settings.data / "jobs").iterdir()), "a refused job left a folder"
    assert client.json("GET", "/api/jobs")[1]["jobs"] == []
    for query, words in [("limit=abc", "limit must be a whole number from 1 to 500"), ("limit=%C2%B2", "limit must be"), ("limit=0", "limit must be"),
                         ("kind=bogus", "kind must be one of sync, finetune"),
                         ("state=done", "GET /api/jobs takes kind and limit (got state)")]:  # (it was ignored)
        status, err = client.json("GET", f"/api/jobs?{query}")
        assert status == 400 and words in err["error"], (query, err)
    for method in ("PUT", "PATCH"):  # the HTTP server's own answer was an HTML 501
        status, headers, data = client.request(method, "/api/jobs", b"{}", {"Content-Type": "application/json"})
        err = json.loads(data)
        assert status == 405 and err["error"] == f"{method} is not allowed here (use POST, GET, HEAD)", err
        assert headers["allow"] == "POST, GET, HEAD", headers  # (a 405 must carry it: clients read it, not the text)
    status, job = client.json("POST", "/api/jobs", {**base, "reference": "0"})  # a form's field, as size takes it
    assert status == 201 and job["params"]["reference"] == 0, job
    status, job = client.json("POST", "/api/jobs", {**base, "size": 128.0})  # some languages' JSON writes 128 so
    assert status == 201 and job["params"]["size"] == 128, job


def test_the_mouth_mode_reaches_the_worker(server, inputs, tmp_path):
    """mouth=warp on the shipped starter: the job runs and its frames are not those of the default render."""
    app, client = server()
    frames = {}
    for mouth in ("render", "warp"):
        job = _sync_job(client, inputs, mouth=mouth)
        assert job["params"]["mouth"] == mouth
        done, _ = client.wait(job["id"], timeout=900)
        assert done["state"] == "done", done["message"]
        out = tmp_path / f"{mouth}.mp4"
        out.write_bytes(client.request("GET", done["result"]["url"])[2])
        frames[mouth] = read_frames(out)
    assert len(frames["warp"]) == len(frames["render"]) == 15
    assert any(not np.array_equal(a, b) for a, b in zip(frames["warp"], frames["render"]))


def test_a_relative_data_folder_runs_jobs(server, inputs, tmp_path, monkeypatch):
    """``serve --data srv/data`` (relative): jobs run (the worker, started in the job's folder, looked for the job
    under a relative path there, and every job failed)."""
    monkeypatch.chdir(tmp_path)
    app, client = server(data=Path("srv") / "data", models=Path("srv") / "models")
    assert app.settings.data.is_absolute() and app.settings.models.is_absolute()
    job = _sync_job(client, inputs)
    done, _ = client.wait(job["id"], timeout=900)
    assert done["state"] == "done", done["message"]


def test_phoneme_timings_reach_the_worker(server, inputs):
    """A sync job's phoneme timings are checked, kept with the job and given to sync (which says they run past the
    end of this speech)."""
    app, client = server()
    job = _sync_job(client, inputs, mouth="warp", phonemes=[{"start": 0.1, "phone": "M"}, {"start": 5.0, "phone": "AA"}])
    assert job["params"]["phonemes"] == 2
    text_job = _sync_job(client, inputs, phonemes="0.1 M\n0.3 AA1\n")  # a file's text
    assert text_job["params"]["phonemes"] == 2
    from hyperlips.media.phone_marks import read_marks

    kept = read_marks(app.settings.data / "jobs" / text_job["id"] / "phonemes.txt")
    assert [(m.start, m.end) for m in kept] == [(0.1, 0.3), (0.3, 0.6)]  # the last lasts to the speech's end, as in sync
    done, _ = client.wait(job["id"], timeout=900)
    assert done["state"] == "done", done["message"]
    assert any("past the end of the speech" in w for w in done["result"]["warnings"]), done["result"]


def test_phoneme_timings_are_checked_without_a_job(server, inputs):
    """POST /api/phonemes reads timings as a sync job reads them and queues nothing: the page checks a phoneme file
    as it is chosen (it was read only when the job was submitted)."""
    app, client = server(run_jobs=False)
    speech = client.upload_file(inputs["speech"])
    status, got = client.json("POST", "/api/phonemes", {"phonemes": "0.1 M\n0.3 AA1\n", "audio": speech["id"]})
    assert status == 200 and got == {"phonemes": 2, "start": 0.1, "end": 0.6, "warnings": []}, got  # (speech's end)
    status, got = client.json("POST", "/api/phonemes", {"phonemes": [{"start": 0, "end": 0.3, "phone": "M"},
                                                                     {"start": 0.2, "end": 0.4, "phone": "AA"}]})
    assert status == 200 and got["phonemes"] == 2 and "start before the one before them ends" in got["warnings"][0]
    for body, words in [({"phonemes": "hello this is not a video\n"}, "phonemes: line 1: expected START PHONE"),
                        ({"phonemes": "\u00ff\u00d8\u00ff\u00e0\x00\x10JFIF\x14"}, "phonemes: not a text file"),
                        ({}, "phonemes: none given"),
                        ({"phonemes": "0.1 M\n", "audio": "0123456789abcdef"}, "audio: no uploaded file"),
                        ({"phonemes": "0.1 M\n", "speed": 2}, "a phoneme check takes no 'speed'")]:
        status, err = client.json("POST", "/api/phonemes", body)
        assert status == 400 and words in err["error"], (body, err)
    assert client.json("GET", "/api/jobs")[1]["jobs"] == []


def test_encoder_options_reach_the_output(server, inputs, tmp_path):
    """crf, preset and pix_fmt do what ``sync --crf/--preset/--pix-fmt`` do: 4:4:4 at the photo's exact size; the
    temporal blend is taken (default 0.25) and reaches the job."""
    from hyperlips.media.writer import PRESETS
    from hyperlips.serve.openapi import openapi_document

    from hyperlips.serve.jobs import FIELDS

    schemas = openapi_document("test")["components"]["schemas"]
    props = schemas["SyncRequest"]["properties"]
    assert tuple(props["preset"]["enum"]) == PRESETS
    # what the API documents is what a job takes, no more, no less
    assert set(props) | {"kind"} == FIELDS["sync"], set(props) ^ FIELDS["sync"]
    assert set(schemas["FinetuneRequest"]["properties"]) | {"kind"} == FIELDS["finetune"]
    app, client = server()
    job = _sync_job(client, inputs, model="untrained", crf="30", preset="ultrafast", pix_fmt="yuv444p",
                    temporal_blend="0")
    assert (job["params"]["crf"], job["params"]["preset"], job["params"]["pix_fmt"]) == (30, "ultrafast", "yuv444p")
    assert job["params"]["temporal_blend"] == 0.0
    assert job["params"]["mouth"] == "auto"  # the default
    assert props["temporal_blend"]["maximum"] == pytest.approx(1 / 3)
    assert props["mouth"]["enum"] == ["auto", "render", "warp", "hybrid"]
    done, _ = client.wait(job["id"], timeout=900)
    assert done["state"] == "done", done["message"]
    out = tmp_path / "result.mp4"
    out.write_bytes(client.request("GET", done["result"]["url"])[2])
    assert probe_streams(out)["pix_fmt"] == "yuv444p"


# ------------------------------------------------------------------------------------------------ safety
def test_uploaded_names_never_become_paths(server, inputs, tmp_path):
    app, client = server()
    speech = inputs["speech"].read_bytes()
    for name in ("../../../escaped.wav", "..\\..\\escaped.wav", "/etc/escaped.wav", "a/../../escaped.wav",
                 "escaped.wav\x00.png", "....//escaped.wav"):
        status, rec = client.upload(name, speech)
        assert status in (201, 400), rec
        if status == 201:
            assert "/" not in rec["name"] and "\\" not in rec["name"]
            assert rec["name"].endswith(("escaped.wav", "escaped.wav.png"))  # (speech, by its content)
    found = [p for p in tmp_path.rglob("*escaped*")] + [p for p in Path("/etc").glob("escaped*")]
    assert not found, found
    stored = list((app.settings.data / "files").iterdir())
    assert stored and all(len(p.stem) == 16 and p.suffix in (".wav", ".png") for p in stored)
    for path in ("/api/jobs/..%2F..%2Fjobs.sqlite3", "/api/jobs/../../jobs.sqlite3/result", "/static/..%2Fserver.py",
                 "/api/files/..%2F..%2Fjobs.sqlite3", "/static/../../../etc/passwd"):
        status, _, body = client.request("GET", path)
        assert status == 404, (path, status)
        assert b"SQLite" not in body and b"root:" not in body


def test_names_that_are_all_suffix_keep_their_type(server, inputs):
    """An upload named ".wav" (as some phones and scripts save files) was refused as "wav: not a file type"."""
    from hyperlips.serve.routes import download_name

    app, client = server(run_jobs=False)
    speech = inputs["speech"].read_bytes()
    for name, shown in ((".wav", ".wav"), (" .WAV ", ".WAV"), ("..wav", "..wav"), ("talk.wav.", "talk.wav")):
        status, rec = client.upload(name, speech)
        assert status == 201 and rec["name"] == shown and rec["usable_as"]["audio"], (name, rec)
    assert all(p.suffix == ".wav" for p in (app.settings.data / "files").iterdir())
    status, err = client.upload("talk.xyz", speech)
    assert status == 400 and "not a file type" in err["error"], err
    for name in ("wav", "VID_20240101"):  # no suffix at all (some phones' share sheets): read by its content
        status, rec = client.upload(name, speech)
        assert status == 201 and rec["usable_as"]["audio"] and not rec["usable_as"]["video"], (name, rec)
    status, rec = client.upload("talk.aiff", speech)  # (a WAV named .aiff: the content decides)
    assert status == 201 and rec["usable_as"]["audio"], rec
    assert [download_name(n) for n in (".mp4", "talk.mov", "a.b.mp4", ".x.mp4", "", None)] == [
        "video_hyperlips.mp4", "talk_hyperlips.mp4", "a.b_hyperlips.mp4", "x_hyperlips.mp4", "video_hyperlips.mp4",
        "video_hyperlips.mp4"]


def test_oversized_uploads_are_refused_before_they_are_read(server, inputs):
    app, client = server(max_upload_mb=0.05)  # 52 KB
    host, port = client.host, client.port

    def raw(request: bytes) -> bytes:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(request)
            reply = b""
            while chunk := s.recv(65536):  # the server closes the connection after a refusal
                reply += chunk
            return reply

    # a declared size over the limit: answered at once, nothing read
    reply = raw(b"POST /api/files?name=big.mp4 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413") and b"at most 51 KB" in reply
    # the same with Expect: 100-continue: refused instead of "continue"
    reply = raw(b"POST /api/files?name=big.mp4 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999\r\n"
                b"Expect: 100-continue\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413") and reply.endswith(b"at most 51 KB\"\n}")
    # no length at all (chunked)
    reply = raw(b"POST /api/files?name=x.wav HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411")
    # a real body just over the limit
    status, err = client.upload("speech.wav", b"\0" * (app.settings.max_upload_bytes + 1))
    assert status == 413 and "speech.wav is" in err["error"]
    assert not any((app.settings.data / "files").iterdir())
    assert client.json("GET", "/api/health")[0] == 200


def test_requests_for_other_hosts_or_from_other_sites_are_refused(server):
    app, client = server()
    status, err = client.json("GET", "/api/info", headers={"Host": "attacker.example:7860"})
    assert status == 403 and "localhost" in err["error"]
    for name in ("LOCALHOST", "localhost.", "LocalHost"):  # host names have no case (LOCALHOST was refused)
        assert client.json("GET", "/api/health", headers={"Host": f"{name}:{client.port}"})[0] == 200, name
    answer = _raw(app, b"GET /api/health HTTP/1.1\r\n\r\n")  # no Host at all: a malformed request (it was 403)
    assert answer and answer[0].startswith(b"HTTP/1.1 400") and b"no Host header" in answer[0], answer
    status, err = client.json("POST", "/api/jobs", {}, headers={"Origin": "http://attacker.example"})
    assert status == 403
    status, _ = client.json("POST", "/api/jobs", {}, headers={"Origin": f"http://{client.host}:{client.port}"})
    assert status == 400  # past the origin check: refused for its content
    status, _, body = client.request("GET", "/")
    assert status == 200 and b"<title>hyperlips</title>" in body


# ------------------------------------------------------------------------------------------------ retention
def test_finished_jobs_and_uploads_expire(server, inputs):
    app, client = server(run_jobs=False)
    rec = client.upload_file(inputs["speech"])
    job = _sync_job(client, inputs)
    client.json("POST", f"/api/jobs/{job['id']}/cancel")
    app.runner.sweep(now=time.time() + 3600)  # an hour on: kept (24 h)
    assert client.json("GET", f"/api/jobs/{job['id']}")[0] == 200
    app.runner.sweep(now=time.time() + 25 * 3600)
    assert client.json("GET", f"/api/jobs/{job['id']}")[0] == 404
    assert not (app.settings.data / "jobs" / job["id"]).exists()
    assert client.json("GET", f"/api/files/{rec['id']}")[0] == 404
    assert not any((app.settings.data / "files").iterdir())


# ------------------------------------------------------------------------------------------------ models
def test_person_models_are_listed_and_used(server, inputs, tmp_path, caplog):
    from hyperlips.models import create_model, save_checkpoint

    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    random_base_checkpoint(models / "anna.safetensors", official=False)
    save_checkpoint(create_model("hyperlips-hr-256"), models / "anna.hr256.safetensors", "hyperlips-hr-256")
    (models / "notes.txt").write_text("not a model")
    (models / "my model!.safetensors").write_bytes((models / "anna.safetensors").read_bytes())
    _, client = server()
    listed = {m["id"]: m for m in client.json("GET", "/api/models")[1]["models"]}
    assert listed["person:anna"]["sizes"] == [128, 256]
    assert list(listed) == ["starter", "person:anna", "untrained"]  # the shipped starter first
    assert client.json("GET", "/api/models")[0] == 200
    said = [r.getMessage() for r in caplog.records if "my model!.safetensors" in r.getMessage()]
    assert len(said) == 1 and "is left out" in said[0]  # once, though listed twice (a name with a '!')
    photo, speech = client.upload_file(inputs["photo"]), client.upload_file(inputs["speech"])
    status, err = client.json("POST", "/api/jobs", {"video": photo["id"], "audio": speech["id"],
                                                    "model": "person:anna", "mouth": "warp", "size": 256})
    assert status == 400 and "mouth warp moves the frame's own lips" in err["error"]  # no HR decoder to sharpen them
    status, err = client.json("POST", "/api/jobs", {"video": photo["id"], "audio": speech["id"],
                                                    "model": "person:anna", "mouth": "hybrid"})
    assert status == 400 and "anna (person model) is HyperLips-Base, which reads no shape" in err["error"]  # not later
    job = _sync_job(client, inputs, model="person:anna")
    assert job["params"]["size"] == 256  # a person model defaults to its largest size
    done, _ = client.wait(job["id"], timeout=900)
    assert done["state"] == "done", done["message"]


def test_a_128_px_hr_decoder_is_used(server, inputs, tmp_path):
    """A person model with an HR decoder for 128 px (finetune --hr-size 128): its jobs get that decoder (they got
    none: only 256 and 512 were looked up)."""
    from hyperlips.models import create_model, save_checkpoint

    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    random_base_checkpoint(models / "bob.safetensors", official=False)
    save_checkpoint(create_model("hyperlips-hr-128"), models / "bob.hr128.safetensors", "hyperlips-hr-128")
    app, client = server(run_jobs=False)
    job = _sync_job(client, inputs, model="person:bob")
    kept = json.loads((app.settings.data / "jobs" / job["id"] / "job.json").read_text())
    assert job["params"]["size"] == 128 and kept["model"]["hr_checkpoint"] == str(models / "bob.hr128.safetensors")


def test_requests_leave_no_open_files_behind(server):
    import gc

    _, client = server(run_jobs=False)
    client.json("GET", "/api/info")
    threads = threading.active_count()
    gc.disable()  # what a handler thread leaves open must not be closed by a lucky garbage collection
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(200):  # one connection (and one handler thread) each
            assert client.json("GET", "/api/jobs")[0] == 200
        deadline = time.monotonic() + 120
        while threading.active_count() > threads and time.monotonic() < deadline:
            time.sleep(0.1)  # the handler threads end (and clean up) after their answers are sent
        assert len(os.listdir("/proc/self/fd")) <= before + 3
    finally:
        gc.enable()


def test_one_server_per_data_folder(server, tmp_path):
    from hyperlips.errors import UserError

    server(run_jobs=False)
    with pytest.raises(UserError, match="another hyperlips serve is using"):
        App(quick_settings(tmp_path / "data"))


def test_a_data_folder_that_cannot_be_made_names_the_option(tmp_path):
    """A read-only home gave "Read-only file system: ...; free some space or choose another folder", naming neither
    the data folder nor --data."""
    from hyperlips.errors import UserError

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot use .*file/data as the data folder: .*with --data DIR"):
        App(quick_settings(tmp_path / "file" / "data"))


def test_the_default_data_folder_needs_no_home_and_ignores_a_relative_xdg(tmp_path, monkeypatch):
    """A container run as a user id with no account and no HOME: `serve` ended in a traceback; it asks for --data.
    A relative XDG_DATA_HOME put the queue and the models under whatever folder the server was started from (the
    XDG rule: ignored)."""
    import pathlib

    from hyperlips.errors import UserError
    from hyperlips.serve.settings import default_data_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "hyperlips" / "serve"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    with pytest.warns(UserWarning, match="XDG_DATA_HOME=relative/data is not an absolute path, so it is ignored"):
        assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "hyperlips" / "serve"

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(pathlib.Path, "home", staticmethod(no_home))
    with pytest.raises(UserError, match="no home folder to keep the server's data in .*: give a folder with --data"):
        default_data_dir()


def test_a_client_gone_while_its_request_is_read_prints_nothing(server, capfd, caplog):
    """A client that resets its connection half-way through its headers (a tab closed, a phone off its network): the
    standard library printed "Exception occurred during processing of request from ..." and a traceback on the
    server's stderr, between the log's lines. It is a debug line; an error of another kind is logged with its
    traceback."""
    import logging
    import struct

    app, client = server(run_jobs=False)
    host, port = app.httpd.server_address[:2]
    with socket.create_connection((host, port)) as s:
        s.sendall(b"GET /api/info HTTP/1.1\r\nHost: x\r\n")  # the headers not finished
        time.sleep(0.3)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # closed with a reset
    time.sleep(0.5)
    assert client.json("GET", "/api/info")[0] == 200  # the server goes on
    assert "Exception occurred" not in capfd.readouterr().err
    with caplog.at_level(logging.ERROR, logger="hyperlips"):
        try:
            raise RuntimeError("a bug")
        except RuntimeError:
            app.httpd.handle_error(None, ("127.0.0.1", 1))
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info] == [("a bug",)]


def test_serve_command_errors_are_one_line(tmp_path):
    r = run_cli("serve", "--port", "70000", "--data", tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "hyperlips: error: --port must be 0..65535 (got 70000)"
    for option in ("--max-train-minutes", "--max-seconds", "--keep-hours"):  # (nan: taken, every job refused)
        r = run_cli("serve", option, "nan", "--data", tmp_path)
        assert r.returncode == 2 and f"{option} must be a number more than 0 (got nan)" in r.stderr, r.stderr
    r = run_cli("serve", "--max-train-minutes", "1.5", "--data", tmp_path)  # (it served, refusing every training)
    assert r.returncode == 2 and r.stderr.strip() == ("hyperlips: error: --max-train-minutes must be at least 2, the "
                                                      "least budget a training job may ask for (got 1.5)"), r.stderr
    r = run_cli("serve", "--device", "xpu", "--data", tmp_path)  # (it served, and every job failed with it)
    assert r.returncode == 2 and "--device xpu is not supported" in r.stderr and "serve:" not in r.stdout, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run_cli("serve", "--port", s.getsockname()[1], "--data", tmp_path, "--no-examples", timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("hyperlips: error: cannot listen on 127.0.0.1:") and "--port" in r.stderr
    assert "another program uses that port" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a --host that is no address of this machine: "choose another --port" sent the user the wrong way
    r = run_cli("serve", "--host", "192.0.2.77", "--port", "0", "--data", tmp_path, "--no-examples", timeout=300)
    assert r.returncode == 2 and "--host must be a name or address of this machine" in r.stderr, r.stderr
    assert "--port" not in r.stderr.split("error:")[1]


def test_the_python_client_in_the_docs_works(server, inputs, tmp_path):
    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    code = text.split("### From Python")[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "docs/serving.md", "exec"), namespace)
    _, client = server()
    url = f"http://{client.host}:{client.port}"
    out = namespace["lipsync"](url, str(inputs["photo"]), str(inputs["speech"]), str(tmp_path / "synced.mp4"),
                               loop="hold")
    assert probe_streams(Path(out))["frames"] == 15
    with pytest.raises(RuntimeError, match="has no audio track"):
        namespace["lipsync"](url, str(inputs["photo"]), str(inputs["silent"]), str(tmp_path / "never.mp4"))


# ------------------------------------------------------------------------------------------------ hostile clients
def _raw(app, data: bytes, reads: int = 1) -> list[bytes]:
    """Send ``data`` on one connection and read ``reads`` answers (each: status line, headers, body)."""
    import socket

    host, port = app.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(data)
        f = sock.makefile("rb")
        answers = []
        for _ in range(reads):
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = f.readline()
                if not line:
                    return answers
                head += line
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
            answers.append(head + f.read(length))
        return answers


def test_idle_connections_are_closed_and_too_many_are_answered_503(server, monkeypatch):
    """Connections that send nothing (idle browsers, a client that keeps them open) held a thread and files each for
    120 s: under a low open-file limit, enough of them made the server stop answering everyone until they timed out.
    A connection waiting for its request is closed after ``idle_timeout``; one more than the open files leave room
    for is answered 503 at once; a request under way keeps the longer ``timeout``."""
    import socket
    import time

    from hyperlips.serve.routes import _Handler

    monkeypatch.setattr(_Handler, "idle_timeout", 1.0)
    app, client = server(run_jobs=False)
    host, port = app.httpd.server_address[:2]
    app.httpd.max_connections = 2
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
    time.sleep(0.3)  # (both accepted)
    status, _, body = client.request("GET", "/api/jobs")
    assert status == 503 and "try again in a moment" in json.loads(body)["error"]
    t = time.monotonic()
    assert [c.recv(1) for c in idle] == [b"", b""]  # closed by the server
    assert time.monotonic() - t < 5
    status, _, _ = client.request("GET", "/api/jobs")
    assert status == 200
    for c in idle:
        c.close()
    # a request whose headers pause longer than the idle time, within the request timeout, is answered
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET /api/jobs HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
        time.sleep(1.6)
        sock.sendall(b"\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200")


def test_the_open_file_limit_is_raised_and_a_low_one_said(tmp_path):
    """The soft open-file limit is raised towards 4096 as far as the hard limit lets it; where it stays low, the
    connections kept open at once follow it (files left for uploads, logs and jobs)."""
    import subprocess
    import sys

    code = ("import resource, sys\n"
            "soft, hard = (int(v) for v in sys.argv[1:3])\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
            "from hyperlips.serve.server import connection_budget\n"
            "print(*connection_budget(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")

    def budget(soft, hard):
        res = subprocess.run([sys.executable, "-c", code, str(soft), str(hard)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        return [int(v) for v in res.stdout.split()]

    assert budget(64, 64) == [64, 4, 64]
    assert budget(64, 2048) == [2048, 500, 2048]
    assert budget(256, 8192)[:2] == [4096, 1012]


def _png_of(path: Path, side: int) -> Path:
    """A 1-bit grey PNG of side x side pixels: a few tens of KB that decode to side * side * 3 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    pixels = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def _flac_without_length(path: Path, seconds: float) -> Path:
    """Silence as FLAC whose header leaves out how long it is (as a stream written on the fly does)."""
    import av

    with av.open(str(path), "w", format="flac") as c:
        s = c.add_stream("flac", rate=16000, layout="mono")
        s.format = "s16"
        block = np.zeros((1, 16000 * 10), np.int16)
        for k in range(int(seconds // 10)):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * block.shape[1]
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    data = bytearray(path.read_bytes())
    data[8 + 13] &= 0xF0  # STREAMINFO's total samples: unknown
    data[8 + 14: 8 + 18] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    return path


def test_small_files_that_decode_huge_are_refused_before_decoding(server, tmp_path):
    """A 48 KB PNG of 20000 x 20000 pixels was taken as a photo (the server peaked at 2.4 GB checking it), and a FLAC
    whose header leaves out its length was decoded whole before the length limit (4 h of silence: 3.1 GB)."""
    import resource

    app, client = server(run_jobs=False, max_seconds=2.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for side, said in ((12000, "is 12000x12000 pixels"), (20000, "holds a picture of far too many pixels")):
        png = _png_of(tmp_path / f"big{side}.png", side)
        assert png.stat().st_size < 100_000
        status, err = client.upload(png.name, png.read_bytes())
        assert status == 400 and err["error"] == (f"{png.name} {said}; this server takes pictures of at most 100 "
                                                  f"million pixels: send a smaller one"), err
    flac = _flac_without_length(tmp_path / "endless.flac", 600.0)
    status, err = client.upload("endless.flac", flac.read_bytes())
    assert status == 400 and err["error"].startswith("endless.flac is more than 2 s long"), err
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 300  # MB; decoded: 1.2 GB
    status, rec = client.upload("ok.png", _png_of(tmp_path / "ok.png", 300).read_bytes())
    assert status == 201 and rec["width"] == 300, rec
    assert not any((app.settings.data / "files").glob("*.flac"))


def test_a_length_that_is_not_a_plain_number_is_refused(server):
    """``Content-Length: -1`` on POST /api/jobs read the body until the client closed, past the 1 MB limit."""
    app, _ = server(run_jobs=False)
    for value in ("-1", "+5", "1_0", "0x10", "5 5"):
        for path in ("/api/jobs", "/api/files?name=a.wav"):
            answer = _raw(app, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {value}\r\n\r\n".encode())
            assert answer and answer[0].startswith(b"HTTP/1.1 400"), (value, path, answer)
            assert b"Content-Length must be a whole number of bytes" in answer[0]


def test_two_lengths_are_refused_and_nothing_after_them_is_read_as_a_request(server):
    """Two Content-Length headers were taken (the first won): the rest of the body was answered as a request of its
    own, which a proxy in front reading the other header passes on unseen."""
    app, _ = server(run_jobs=False)
    inner = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for path, method, lengths in [("/api/health", "GET", (0, len(inner))), ("/api/files?name=a.wav", "POST", (5, 6)),
                                  ("/api/jobs", "POST", (len(inner),) * 2)]:
        head = "".join(f"Content-Length: {n}\r\n" for n in lengths)
        answers = _raw(app, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + inner, reads=2)
        assert len(answers) == 1 and answers[0].startswith(b"HTTP/1.1 400"), (path, answers)
        assert b"more than one Content-Length" in answers[0] and b"Connection: close" in answers[0], answers
    answers = _raw(app, b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2, 2\r\n\r\n{}")
    assert answers[0].startswith(b"HTTP/1.1 400") and b"more than one Content-Length" in answers[0], answers


def test_a_body_no_route_reads_is_not_taken_for_the_next_request(server, inputs):
    """A cancel sent with a body left the body on the connection, read as the next request: junk gave the next real
    request a 501 page, and a body holding a whole DELETE ran it (past the Origin check of the first)."""
    app, client = server(run_jobs=False)
    job = _sync_job(client, inputs)  # queued: no job runs on this server
    rec = client.upload_file(inputs["speech"], "kept.wav")
    hidden = f"DELETE /api/files/{rec['id']} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode()
    cancel = (f"POST /api/jobs/{job['id']}/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(hidden)}"
              f"\r\n\r\n").encode() + hidden
    health = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answers = _raw(app, cancel + health, reads=2)
    assert answers[0].startswith(b"HTTP/1.1 200"), answers
    assert len(answers) == 2 and answers[1].startswith(b"HTTP/1.1 200") and b'"ok"' in answers[1], answers
    assert client.json("GET", f"/api/files/{rec['id']}")[0] == 200  # the DELETE in the body did not run
    junk = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    answers = _raw(app, junk + health, reads=2)
    assert [a.split(b"\r\n")[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2, answers


def test_every_answer_is_json_and_deep_or_null_origin_requests_are_refused(server):
    """OPTIONS/TRACE and over-long headers got the standard library's HTML page; 1000-deep JSON a 500 and a
    traceback; ``Origin: null`` (a sandboxed frame of any site) passed the cross-site check."""
    app, client = server(run_jobs=False)
    for method in ("OPTIONS", "TRACE"):
        status, headers, body = client.request(method, "/api/jobs")
        assert status in (404, 405) and headers["content-type"] == "application/json", (method, status)
        assert json.loads(body)["error"], body
    answer = _raw(app, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")
    assert answer[0].startswith(b"HTTP/1.1 431") and b"application/json" in answer[0], answer[0][:300]
    status, err = client.json_raw("POST", "/api/jobs", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "not valid JSON" in err["error"], err
    status, err = client.json("POST", "/api/jobs", {}, headers={"Origin": "null"})
    assert status == 403 and "other sites" in err["error"], err


def test_a_server_on_another_loopback_address_answers_requests_named_for_it(tmp_path):
    """Bound to 127.0.0.2 it refused every request (their Host named 127.0.0.2, not localhost)."""
    app = App(quick_settings(tmp_path / "data", host="127.0.0.2")).start(run_jobs=False)
    try:
        assert app.loopback and app.url.startswith("http://127.0.0.2:")
        status, info = Client(app.url).json("GET", "/api/info")
        assert status == 200 and info["name"] == "hyperlips", info
        status, err = Client(app.url).json("GET", "/api/info", headers={"Host": "attacker.example"})
        assert status == 403, err
    finally:
        app.stop()


def test_a_new_server_removes_what_a_stopped_one_left(tmp_path, inputs):
    """A half-sent upload (``.ID.part``), one still being checked (stored, not recorded) and a stopped job's
    half-written result stayed in the data folder for good (the hourly clean-up knows recorded files only)."""
    settings = quick_settings(tmp_path / "data")
    app = App(settings).start(run_jobs=False)
    client = Client(app.url)
    kept = client.upload_file(inputs["speech"])
    job = _sync_job(client, inputs)
    app.stop()
    files, folder = settings.data / "files", settings.data / "jobs" / job["id"]
    left = [files / ".00112233445566ff.part", files / "00112233445566ff.flac",
            folder / ".result.1a2b3c4d.partial.mp4", settings.data / "jobs" / "ffeeddccbbaa9988"]
    for p in left[:3]:
        p.write_bytes(b"x" * 1000)
    left[3].mkdir()
    app = App(settings).start(run_jobs=False)
    try:
        assert not [p for p in left if p.exists()], [p for p in left if p.exists()]
        assert sorted(f"files/{p.name}" for p in files.iterdir()) == sorted(app.store.file_paths())  # the recorded kept
        assert Client(app.url).json("GET", f"/api/files/{kept['id']}")[0] == 200
        assert folder.is_dir() and Client(app.url).job(job["id"])["state"] == "queued"
    finally:
        app.stop()


@pytest.mark.parametrize("folder", [b"data", b"donn\xe9es"])  # (the second not UTF-8: Latin-1, as an old disk has it)
def test_messages_and_logs_do_not_show_where_the_server_keeps_things(server, inputs, tmp_path, folder):
    """A job with a damaged person model failed with the models folder's path in its message
    ("/home/.../models/evil.safetensors: ..."), and its log showed the data folder's; a data folder whose name is not
    UTF-8 made the log's page fail (500)."""
    data = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + folder))
    models = data / "models"
    models.mkdir(parents=True)
    (models / "evil.safetensors").write_bytes(b"\0" * 64)
    _, client = server(data=data)
    job = _sync_job(client, inputs, model="person:evil")
    failed, _ = client.wait(job["id"], timeout=900)
    assert failed["state"] == "failed", failed
    assert str(tmp_path) not in failed["message"] and "the model person:evil" in failed["message"], failed["message"]
    status, _, log = client.request("GET", f"/api/jobs/{job['id']}/log")
    assert status == 200 and log and os.fsencode(tmp_path) not in log, log[-500:]


def test_an_upload_that_would_fill_the_disk_is_refused(server, inputs, monkeypatch):
    """Uploads are kept a day: nothing stopped them filling the data folder's disk."""
    import collections
    import shutil as shutil_mod

    from hyperlips.serve import uploads

    app, client = server(run_jobs=False)
    usage = collections.namedtuple("usage", "total used free")
    real = shutil_mod.disk_usage
    monkeypatch.setattr(uploads.shutil, "disk_usage", lambda p: usage(10 << 30, 9 << 30, uploads.MIN_FREE_BYTES + 1000))
    data = inputs["speech"].read_bytes()
    assert len(data) > 1000
    status, err = client.upload("talk.wav", data)
    said = (f"talk.wav ({uploads.size_text(len(data))}) would leave less than 2.0 GB free on the server's disk "
            f"(2.0 GB free")
    assert status == 507 and err["error"].startswith(said), err
    assert not any((app.settings.data / "files").iterdir())
    monkeypatch.setattr(uploads.shutil, "disk_usage", real)
    assert client.upload("talk.wav", data)[0] == 201


def test_a_job_whose_end_cannot_be_recorded_on_a_full_disk_is_not_left_running(tmp_path, monkeypatch):
    """On a full disk a worker died and recording its end failed too (the job store is on that disk): the job
    stayed 'running' for ever, cancel did nothing. Its end is now recorded once the disk has room again, and says
    the disk was full; a job submitted on a full disk is a 507, not "an internal error, please report it"."""
    import sqlite3
    import subprocess
    import sys

    from hyperlips.serve import runner as R
    from hyperlips.serve.store import Store

    settings = quick_settings(tmp_path / "data")
    store = Store(settings.data / "jobs.db")
    store.add_job("j1", "sync", {})
    assert store.claim_next()["id"] == "j1"
    folder = R.job_folder(settings, "j1")
    folder.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    proc.wait()
    run = R.Runner(settings, store)
    run.running["j1"] = R._Running("j1", "sync", proc, folder)
    monkeypatch.setattr(R.shutil, "disk_usage", lambda p: type("U", (), {"free": 40 << 10})())
    full = {"left": 3}
    real_finish = store.finish

    def finish(*a, **k):
        if full["left"]:
            full["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_finish(*a, **k)

    monkeypatch.setattr(store, "finish", finish)
    run.tick()  # the end and its fallback both fail: kept to be recorded
    assert store.get_job("j1")["state"] == "running" and "j1" not in run.running
    run.tick()  # still full
    run.tick()  # room again
    job = store.get_job("j1")
    assert job["state"] == "failed" and "the server's disk is full (40 KB free" in job["message"]
    assert job["progress"]["stage"] == "failed"  # (it stayed at the last stage seen: "loading")


def test_a_job_submitted_on_a_full_disk_is_a_507(tmp_path, monkeypatch):
    import errno

    from hyperlips.serve import jobs as J
    from hyperlips.serve.store import Store
    from hyperlips.serve.uploads import UploadError

    settings = quick_settings(tmp_path / "data")
    store = Store(settings.data / "jobs.db")

    def no_room(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(J.Path, "mkdir", no_room)
    with pytest.raises(UploadError, match="the server could not store the job: No space left on device") as e:
        J.submit(settings, store, {"kind": "sync"})
    assert e.value.status == 507


def test_what_making_the_model_warns_of_reaches_the_jobs_result(tmp_path, monkeypatch):
    """A sync job's model was made before its warnings were gathered: what it said went to the log only, as a
    Python warning line with its source line, and the job was done without a word."""
    import types

    import hyperlips.pipeline as P
    from hyperlips.errors import warn
    from hyperlips.serve.worker import run_sync

    class Model:
        def __init__(self, *a, **k):
            warn("the model says something")

        def sync(self, *a, **k):
            warn("the speech says something")
            return types.SimpleNamespace(frames=1, fps=25.0, width=8, height=8, audio_seconds=0.04,
                                         frames_with_face=1, timings={})

    monkeypatch.setattr(P, "LipSync", Model)
    result = run_sync({"model": {}, "video": "v.mp4", "audio": "a.wav"}, tmp_path)
    assert result["warnings"] == ["the model says something", "the speech says something"]


def test_a_models_folder_the_server_cannot_write_is_said_at_start(tmp_path):
    """`serve --models DIR` on a folder it cannot write started, took training jobs, trained each for its whole time
    and then failed it ("the server could not record how this job ended"): the model lost."""
    from hyperlips.errors import UserError

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot publish trained models in .*file/models: .*--models DIR"):
        App(quick_settings(tmp_path / "data", models=tmp_path / "file" / "models"))


def test_requests_that_meet_a_full_disk_answer_507(server, inputs, monkeypatch):
    """Cancel, delete a job and delete a file on a full disk answered 500 "internal error ... please report it": the
    very requests a user makes to free room."""
    import sqlite3

    app, client = server(run_jobs=False)
    video = client.upload_file(inputs["photo"])

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(app.store, "delete_file", full)
    status, err = client.json("DELETE", f"/api/files/{video['id']}")
    assert status == 507 and "the server's disk is full" in err["error"], err

    def full_os(*a, **k):  # as Python says it: with the file it was writing, one of the server's own paths
        raise OSError(28, "No space left on device", str(app.settings.data / "files" / "x.png"))

    monkeypatch.setattr(app.store, "delete_file", full_os)
    status, err = client.json("DELETE", f"/api/files/{video['id']}")
    assert status == 507 and err["error"] == ("the server's disk is full (No space left on device): free some space "
                                              "on the server, then try again"), err


def test_an_upload_name_sent_as_raw_utf8_is_read_as_utf8(server, inputs):
    """curl sends `?name=интервью_ü.wav` as raw UTF-8 bytes; the server read the request line as Latin-1 and stored
    the name as mojibake ("Ð¸Ð½..."), shown in job messages and download names."""
    import json as _json
    import socket

    app, client = server(run_jobs=False)
    body = inputs["speech"].read_bytes()
    name = "интервью_ü.wav"
    with socket.create_connection((client.host, client.port), timeout=60) as s:
        s.sendall(b"POST /api/files?name=" + name.encode("utf-8") + b" HTTP/1.1\r\nHost: 127.0.0.1:"
                  + str(client.port).encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\nConnection: close\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 201 " in head.split(b"\r\n")[0], head
    assert _json.loads(payload)["name"] == name


def test_a_one_picture_file_in_a_video_format_is_a_photo_to_the_server(tmp_path):
    """A one-frame GIF (as an AVIF or HEIF photo) is a still image to sync, but the server's upload facts called it
    no photo and its speech problem "has no audio track", so the page did not list it as a photo."""
    from PIL import Image

    from hyperlips.serve.uploads import inspect

    path = tmp_path / "face.gif"
    Image.fromarray(np.full((64, 48, 3), 120, np.uint8)).save(path)
    facts = inspect(path, "face.gif", 300)
    assert facts["is_image"] and facts["has_video"] and "is a photo: it has no sound" in facts["problems"]["audio"]


def test_a_video_under_a_picture_name_is_measured_as_a_video_before_it_is_decoded(real_data, tmp_path, monkeypatch):
    """A video saved as .png is read as a video (as sync reads it); its declared length was not looked at (a photo's
    name), so a long one was decoded whole before it was refused: the server's memory grew with its length. Its length
    is now refused from the container's header, nothing decoded; a real photo still is a photo."""
    import shutil

    from hyperlips.serve import uploads
    from hyperlips.serve.uploads import UploadError, inspect

    path = Path(shutil.copy(real_data / "retalking" / "face3.mp4", tmp_path / "face.png"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before its declared length was checked")

    monkeypatch.setattr("hyperlips.media.audio.load_audio", no_decoding)
    monkeypatch.setattr("hyperlips.media.video.probe", no_decoding)
    monkeypatch.setattr(uploads, "_sound_seconds", no_decoding)
    with pytest.raises(UploadError, match=r"face\.png is 5\.\d s long; this server takes at most 2 s"):
        inspect(path, "face.png", 2.0)
    monkeypatch.undo()
    facts = inspect(path, "face.png", 300)
    assert not facts["is_image"] and facts["has_audio"] and facts["frames"] == 125
    face_photo(tmp_path / "photo.png")
    assert inspect(tmp_path / "photo.png", "photo.png", 300)["is_image"]


def test_the_servers_messages_keep_the_spaces_of_the_names_they_quote(server):
    """An upload named with two spaces was said as "cannot open my clip.mp4": a name the user never sent (the
    command line's lines kept them; the server's folded them)."""
    from hyperlips.serve.worker import _public_message

    _, client = server(run_jobs=False)
    status, err = client.upload("my  clip.mp4", b"not a video at all" * 100)
    assert status == 400 and "cannot open my  clip.mp4" in err["error"], err
    assert _public_message("no face found in /x/in.mp4:\n  the face  must be visible", {"/x/in.mp4": "my  clip.mp4"}) \
        == "no face found in my  clip.mp4: the face  must be visible"


def test_a_client_that_leaves_mid_upload_is_no_traceback(server, capfd):
    """A tab closed (a phone off its network) half-way through an upload: the server's answer to it failed, and the
    log showed a traceback ("BrokenPipeError" during the handling of the upload's error), which reads as a bug."""
    import socket
    import struct
    import time

    app, client = server(run_jobs=False)
    host, port = app.httpd.server_address[:2]
    for _ in range(3):
        sock = socket.create_connection((host, port), timeout=30)
        sock.sendall(f"POST /api/files?name=half.mp4 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000000\r\n\r\n"
                     .encode() + b"x" * 200_000)
        time.sleep(0.3)
        if _ == 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # gone at once (a reset)
        sock.close()  # (the others: closed as a browser closes a tab)
    time.sleep(1.0)
    assert client.json("GET", "/api/health") == (200, {"ok": True})  # the server goes on
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


def test_what_became_of_the_jobs_a_stopped_server_left_is_logged_as_it_is(tmp_path):
    """The log said "queued again" of every job a stopped server left running, the one given up on after its third
    stop and the one whose cancel had been asked for too (the API said failed and cancelled)."""
    from hyperlips.serve.store import MAX_ATTEMPTS, Store

    store = Store(tmp_path / "jobs.db")
    store.add_job("b" * 16, "sync", {})  # stopped during it MAX_ATTEMPTS times
    for k in range(MAX_ATTEMPTS):
        assert store.claim_next()["id"] == "b" * 16
        if k < MAX_ATTEMPTS - 1:
            store.requeue_interrupted()
    for job_id in ("a" * 16, "c" * 16):
        store.add_job(job_id, "sync", {})
        assert store.claim_next()["id"] == job_id
    store.request_cancel("c" * 16)
    said = dict(store.requeue_interrupted())
    assert said == {"a" * 16: "queued again", "b" * 16: f"given up after {MAX_ATTEMPTS} stops during it",
                    "c" * 16: "cancelled, as asked before the stop"}, said
    assert [store.get_job(i)["state"] for i in ("a" * 16, "b" * 16, "c" * 16)] == ["queued", "failed", "cancelled"]
    store.close()


def test_a_multipart_form_upload_is_told_to_send_the_bytes(server, inputs):
    """`curl -F file=@speech.wav` (a browser form's FormData): a good file was called "unreadable or corrupt media"."""
    app, client = server(run_jobs=False)
    data = inputs["speech"].read_bytes()
    boundary = "----hyperlipsform"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, _, answer = client.request("POST", "/api/files?name=speech.wav", body,
                                       {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 415 and "not a multipart form" in json.loads(answer)["error"], answer
    assert client.upload_file(inputs["speech"])["id"]  # the bytes themselves: taken
    assert client.json("GET", "/api/health") == (200, {"ok": True})
