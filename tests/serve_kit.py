"""Shared by the server tests: a small API client, settings for a quick server, inputs, and a fake finetune program."""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np

FINISHED = ("done", "failed", "cancelled")


class Client:
    """Just enough HTTP for the tests (and the soak): JSON in and out, raw uploads, byte ranges."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        u = urlsplit(url)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None, headers: dict | None = None):
        body = json.dumps(payload).encode() if payload is not None else None
        h = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
        status, _, data = self.request(method, path, body, h)
        return status, json.loads(data) if data else None

    def upload(self, name: str, data: bytes):
        return self.json_raw("POST", f"/api/files?name={quote(name)}", data)

    def json_raw(self, method: str, path: str, data: bytes):
        status, _, body = self.request(method, path, data, {"Content-Type": "application/octet-stream"})
        return status, json.loads(body)

    def upload_file(self, path: Path, name: str | None = None) -> dict:
        status, rec = self.upload(name or path.name, path.read_bytes())
        assert status == 201, rec
        return rec

    def submit(self, **params) -> dict:
        status, job = self.json("POST", "/api/jobs", params)
        assert status == 201, job
        return job

    def job(self, job_id: str) -> dict:
        status, job = self.json("GET", f"/api/jobs/{job_id}")
        assert status == 200, job
        return job

    def wait(self, job_id: str, stages=(), timeout: float = 300.0, every: float = 0.2) -> tuple[dict, list[dict]]:
        """Poll until the job has finished, or is running one of ``stages``; returns (job, every snapshot)."""
        seen = []
        t0 = time.monotonic()
        while True:
            job = self.job(job_id)
            seen.append(job)
            if (not stages and job["state"] in FINISHED) or (job["state"] == "running" and job["stage"] in stages):
                return job, seen
            if job["state"] in FINISHED:
                raise AssertionError(f"job ended {job['state']} ({job['message']}) while waiting for {stages}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"job {job_id} still {job['state']}/{job['stage']} after {timeout} s")
            time.sleep(every)


def quick_settings(data: Path, **kw):
    from hyperlips.serve.settings import ServeSettings

    defaults = dict(data=data, port=0, poll_seconds=0.1, device="cpu", threads=1, examples=False, batch_size=8)
    defaults.update(kw)
    return ServeSettings(**defaults)


def face_photo(path: Path, size: int = 256) -> Path:
    """The astronaut photo (a real face), downscaled to keep jobs short."""
    import cv2

    from hyperlips.demo import demo_face

    cv2.imwrite(str(path), cv2.resize(demo_face(), (size, size), interpolation=cv2.INTER_AREA))
    return path


def faceless_photo(path: Path) -> Path:
    import cv2

    y, x = np.mgrid[0:240, 0:320]
    img = np.stack([(x * 0.7) % 256, (y * 0.9) % 256, ((x + y) * 0.3) % 256], axis=2).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return path


def silent_video(path: Path, frames: int = 10) -> Path:
    from hyperlips.media.writer import VideoWriter

    with VideoWriter(path, 64, 64, 25.0) as w:
        for i in range(frames):
            w.write(np.full((64, 64, 3), 10 * i, np.uint8))
    return path


def worker_pids(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (a job's worker)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{d}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if str(folder).encode() in cmd and state != "Z":
            out.append(int(d))
    return out


FAKE_FINETUNE = r'''
"""Stands in for `hyperlips finetune` in the server tests: MODE CHECKPOINT, then the real command's arguments."""
import argparse, json, os, shutil, sys, time
mode, checkpoint = sys.argv[1], sys.argv[2]
p = argparse.ArgumentParser()
p.add_argument("video"); p.add_argument("-o", "--output"); p.add_argument("--work"); p.add_argument("--minutes", type=float)
p.add_argument("--checkpoint"); p.add_argument("--from-scratch", action="store_true")
p.add_argument("--face", type=int); p.add_argument("--face-box")
a = p.parse_args(sys.argv[3:])
os.makedirs(a.work, exist_ok=True)
with open(os.path.join(a.work, "args.json"), "w") as f:
    json.dump({"argv": sys.argv[3:], "video": a.video, "minutes": a.minutes, "checkpoint": a.checkpoint}, f)
if mode == "fail":
    print("hyperlips: error: " + a.video + " is too short to fine-tune on: 20 frames", file=sys.stderr)
    sys.exit(2)
if mode == "crash":
    raise RuntimeError("the fake trainer fell over")
if mode == "warn":  # as the real command warns of a clip showing two people, then trains long enough for its
    print("hyperlips: warning: " + a.video + ": 30 of its 30 frames show more than one face", file=sys.stderr)
    for i in range(1500):  # step lines to fill more than the 64 KB of the log's tail (the warning was lost there)
        print(f"step {i * 10}/15000 (about {150 - i // 10} min left) loss 0.0{i % 97:02d} (12.3 samples/s)",
              file=sys.stderr)

def progress(d):
    tmp = os.path.join(a.work, ".progress.tmp")
    with open(tmp, "w") as f:
        json.dump(d, f)
    os.replace(tmp, os.path.join(a.work, "progress.json"))

import zlib, struct
def png(path, w, h, shade):
    raw = b"".join(b"\0" + bytes(sum(([shade, 255 - shade, (x * 4) % 256] for x in range(w)), [])) for _ in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

progress({"stage": "preprocess", "step": 0, "elapsed_s": 0.0, "eta_s": 3.0, "fraction": 0.05, "val": {}})
time.sleep(float(os.environ.get("FAKE_FINETUNE_PAUSE", "0.6")))
steps = int(os.environ.get("FAKE_FINETUNE_STEPS", "3"))
for i in range(1, steps + 1):
    prev = os.path.join(a.work, "previews", f"step_{i * 10}.png")
    if mode == "escape":  # a real PNG, but outside the job's work folder
        prev = os.path.join(a.work, "..", "..", "outside.png")
    os.makedirs(os.path.dirname(prev), exist_ok=True)
    png(prev, 64, 32, 60 * i)
    progress({"stage": "train", "step": i * 10, "elapsed_s": i * 0.5, "eta_s": (steps - i) * 0.5,
              "fraction": i / (steps + 1), "val": {"val/mouth_l1": 0.1 / i, "val/opening_r": 0.5 + 0.1 * i,
                                                      "val/opening_err": 0.5 - 0.1 * i}, "preview": prev})
    print(f"step {i * 10}: mouth_l1 {0.1 / i:.4f}", file=sys.stderr, flush=True)  # as finetune logs to a file
    time.sleep(float(os.environ.get("FAKE_FINETUNE_PAUSE", "0.6")))
shutil.copyfile(checkpoint, a.output)
progress({"stage": "done", "step": steps * 10, "elapsed_s": 2.0, "eta_s": 0, "fraction": 1.0,
          "val": {"val/mouth_l1": 0.1 / steps}, "preview": prev})
print("fine-tuned (fake):", a.output)
'''


def fake_finetune(folder: Path, mode: str = "ok") -> list[str]:
    """A finetune command for ServeSettings.finetune_command that behaves as MODE (ok, fail, crash, escape, warn)."""
    from helpers import random_base_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "fake_finetune.py"
    script.write_text(FAKE_FINETUNE)
    ckpt = folder / "trained.safetensors"
    if not ckpt.exists():
        random_base_checkpoint(ckpt, seed=3, official=False)
    return [sys.executable, str(script), mode, str(ckpt)]
