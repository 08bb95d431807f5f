"""Soak of ``hyperlips serve``: many short jobs from several client threads; does every job end, and does the
server's memory stay flat?

Starts a real server on localhost (a fresh data folder, its default model (the shipped starter), one job at a time unless --server-jobs),
then CLIENTS threads each upload their inputs, submit, poll and fetch the result until JOBS jobs were sent. Every
``--bad-every``-th job uses a photo without a face, so some jobs must fail, with a reason. Prints: jobs done /
failed (with their reasons) / lost, throughput, job latency, and the server process's resident memory, threads
and open files sampled over the run (the workers are separate processes and not counted).

    python benchmarks/serve_soak.py                               # 50 jobs, 5 clients, the astronaut photo
    python benchmarks/serve_soak.py --clip ../shared/data/real/retalking/face1.mp4 --seconds 1
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np


class Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": ctype} if body is not None else {})
            r = conn.getresponse()
            data = r.read()
            return r.status, data
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None):
        status, data = self.call(method, path, json.dumps(payload).encode() if payload is not None else None)
        return status, json.loads(data)

    def upload(self, path: Path) -> dict:
        status, data = self.call("POST", f"/api/files?name={quote(path.name)}", path.read_bytes(),
                                 "application/octet-stream")
        rec = json.loads(data)
        if status != 201:
            raise RuntimeError(f"upload of {path.name} refused: {rec}")
        return rec


def make_inputs(folder: Path, clip: Path | None, seconds: float) -> dict[str, Path]:
    import cv2
    import soundfile as sf

    from hyperlips.demo import demo_face
    from hyperlips.media.audio import load_audio

    out = {}
    if clip is None:
        out["video"] = folder / "face.png"
        cv2.imwrite(str(out["video"]), cv2.resize(demo_face(), (256, 256), interpolation=cv2.INTER_AREA))
        t = np.arange(int(seconds * 16000)) / 16000
        speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    else:
        from hyperlips.media.video import FrameReader
        from hyperlips.media.writer import VideoWriter

        out["video"] = folder / f"{clip.stem}_{seconds:g}s.mp4"
        wav = load_audio(clip, 16000)[: int(seconds * 16000)]
        with FrameReader(clip) as r:
            n = int(round(seconds * r.fps))
            with VideoWriter(out["video"], r.width, r.height, r.fps, audio=wav, sample_rate=16000) as w:
                for fr in r.iter_range(0, n):
                    w.write(fr.image)
        speech = wav
    out["audio"] = folder / "speech.wav"
    sf.write(str(out["audio"]), speech, 16000)
    y, x = np.mgrid[0:240, 0:320]
    wall = np.stack([(x * 0.7) % 256, (y * 0.9) % 256, ((x + y) * 0.3) % 256], axis=2).astype(np.uint8)
    out["bad"] = folder / "wall.png"
    cv2.imwrite(str(out["bad"]), wall)
    return out


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1]) / 1024
    threads = int(next(ln for ln in status.splitlines() if ln.startswith("Threads:")).split()[1])
    return {"rss_mb": rss, "threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--server-jobs", type=int, default=1, help="jobs the server runs at once (--jobs of serve)")
    ap.add_argument("--clip", type=Path, help="a talking-face video to cut the job's input from (default: a photo)")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each job's speech (1 s)")
    ap.add_argument("--bad-every", type=int, default=10, help="every N-th job gets a photo with no face (10)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hyperlips_soak_"))
    atexit.register(shutil.rmtree, tmp, True)  # the server's data, uploads and results go with the run, however it ends
    from hyperlips.eval.bench_stages import machine_words

    print(machine_words(), flush=True)
    inputs = make_inputs(tmp, args.clip, args.seconds)
    server = subprocess.Popen([sys.executable, "-m", "hyperlips.cli", "serve", "--port", "0", "--data", str(tmp / "data"),
                               "--no-examples", "--device", "cpu", "--jobs", str(args.server_jobs)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    first = server.stdout.readline()  # type: ignore[union-attr]
    if "http://" not in first:
        print(first + server.communicate()[0], file=sys.stderr)
        return 1
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()  # type: ignore[arg-type]
    api = Api(int(first.split()[2].rstrip("/").rsplit(":", 1)[1]))

    samples: list[tuple[float, dict]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), proc_stats(server.pid)))
            stop.wait(0.5)

    submitted: list[str] = []
    outcomes: dict[str, dict] = {}
    errors: list[str] = []
    counter = iter(range(args.jobs))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            try:
                bad = args.bad_every and (k + 1) % args.bad_every == 0
                video = api.upload(inputs["bad" if bad else "video"])
                audio = api.upload(inputs["audio"])
                t0 = time.monotonic()
                status, job = api.json("POST", "/api/jobs", {"video": video["id"], "audio": audio["id"]})
                if status != 201:
                    raise RuntimeError(f"submit refused: {job}")
                with lock:
                    submitted.append(job["id"])
                while job["state"] not in ("done", "failed", "cancelled"):
                    if time.monotonic() - t0 > args.timeout:
                        raise RuntimeError(f"job {job['id']} still {job['state']} after {args.timeout} s")
                    time.sleep(0.5)
                    job = api.json("GET", f"/api/jobs/{job['id']}")[1]
                result_bytes = 0
                if job["state"] == "done":
                    status, data = api.call("GET", job["result"]["url"])
                    result_bytes = len(data) if status == 200 and data[4:8] == b"ftyp" else -1
                with lock:
                    outcomes[job["id"]] = {"state": job["state"], "message": job["message"], "bad": bad,
                                           "latency": time.monotonic() - t0, "bytes": result_bytes,
                                           "queued_s": (job["started"] or job["created"]) - job["created"]}
            except Exception as e:  # noqa: BLE001 - counted and printed
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t_start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t_start
    time.sleep(1.0)
    stop.set()
    sampler.join()
    try:
        listed = {j["id"]: j for j in api.json("GET", "/api/jobs?limit=500")[1]["jobs"]}
    except OSError as e:
        errors.append(f"the server no longer answers: {e}")
        listed = {}
    server.terminate()
    server.wait(timeout=30)

    done = [o for o in outcomes.values() if o["state"] == "done"]
    failed = [o for o in outcomes.values() if o["state"] == "failed"]
    lost = [j for j in submitted if j not in listed or listed[j]["state"] not in ("done", "failed", "cancelled")]
    lat = sorted(o["latency"] for o in outcomes.values())
    rss = [s["rss_mb"] for _, s in samples]
    half = len(rss) // 2
    print(f"soak: {args.jobs} jobs from {args.clients} client threads, server runs {args.server_jobs} at a time, "
          f"input {inputs['video'].name} + {args.seconds:g} s speech, 1 job in {args.bad_every} without a face")
    print(f"  done {len(done)}, failed {len(failed)}, client errors {len(errors)}, lost {len(lost)} "
          f"(submitted {len(submitted)}, listed by the server {sum(j in listed for j in submitted)})")
    reasons = sorted({o["message"] for o in failed})
    print(f"  failure reasons: {reasons}")
    print(f"  failed jobs that were meant to fail: {sum(o['bad'] for o in failed)} of {len(failed)}; results that "
          f"were not MP4s: {sum(o['bytes'] < 0 for o in done)}")
    for e in errors[:5]:
        print(f"  client error: {e}")
    print(f"  wall {wall:.1f} s, {len(outcomes) / wall * 60:.1f} jobs/min; job latency (submit to end) "
          f"median {statistics.median(lat or [0]):.1f} s, max {max(lat or [0]):.1f} s; mean time queued "
          f"{statistics.mean([o['queued_s'] for o in outcomes.values()] or [0]):.1f} s")
    print(f"  server RSS MB: start {rss[0]:.1f}, peak {max(rss):.1f}, end {rss[-1]:.1f}; mean first half "
          f"{statistics.mean(rss[:half]):.1f}, second half {statistics.mean(rss[half:]):.1f}")
    print(f"  server threads peak {max(s['threads'] for _, s in samples)}, end {samples[-1][1]['threads']}; "
          f"open files peak {max(s['fds'] for _, s in samples)}, end {samples[-1][1]['fds']}")
    ok = not lost and not errors and len(done) + len(failed) == args.jobs
    print("  verdict:", "every job ended (done or failed with a reason), none lost" if ok else "JOBS LOST OR ERRORS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
