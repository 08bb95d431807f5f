"""The scheduler: takes queued jobs, runs each in its own worker process, follows it, and cleans up.

One thread. Every ``poll_seconds`` it reads the progress of each running job into the store, stops the ones
that were cancelled (their whole process group is killed), records how finished ones ended, and starts queued
jobs while fewer than ``jobs_at_once`` run. A worker that crashes or is killed fails its own job, never the
server. Once a minute it deletes finished jobs and unused uploads older than ``keep_hours``.
"""

from __future__ import annotations

import json
import unicodedata
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .settings import ServeSettings
from .store import Store

log = logging.getLogger("hyperlips.serve")
SWEEP_SECONDS = 60.0


@dataclass
class _Running:
    job_id: str
    kind: str
    proc: subprocess.Popen
    folder: Path
    progress_mtime: float = 0.0


def job_folder(settings: ServeSettings, job_id: str) -> Path:
    return settings.data / "jobs" / job_id


def progress_file(settings: ServeSettings, job_id: str, kind: str) -> Path:
    folder = job_folder(settings, job_id)
    return folder / "work" / "progress.json" if kind == "finetune" else folder / "progress.json"


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


class Runner:
    def __init__(self, settings: ServeSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sweep = 0.0
        self._unrecorded: dict[str, tuple] = {}  # ends that could not be written (a full disk): tried again

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        for job_id, what in self.store.requeue_interrupted():  # (the log said "queued again" of every one)
            log.info("job %s was running when the server stopped: %s", job_id, what)
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now (a job was submitted or cancelled)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the scheduler and the running workers; their jobs stay 'running' and are queued again on restart."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        for r in list(self.running.values()):
            self._kill(r)
        self.running.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a bug here must not stop the queue; it is logged
                log.exception("scheduler error")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()
        self.store.close()

    def tick(self) -> None:
        for job_id, end in list(self._unrecorded.items()):
            try:
                self.store.finish(job_id, *end)
            except Exception:  # noqa: BLE001 - still full: tried again at the next tick
                continue
            del self._unrecorded[job_id]
            log.info("job %s: its end is recorded (%s)", job_id, end[0])
        for r in list(self.running.values()):
            self._follow(r)
        while len(self.running) < max(1, self.settings.jobs_at_once) and not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                break
            self._launch(job)
        if time.monotonic() - self._last_sweep > SWEEP_SECONDS:
            self._last_sweep = time.monotonic()
            self.sweep()

    # ------------------------------------------------------------------ one job
    def _launch(self, job: dict) -> None:
        folder = job_folder(self.settings, job["id"])
        for stale in ("progress.json", "error.txt", "result.json", "work/progress.json"):
            (folder / stale).unlink(missing_ok=True)  # from an attempt the server was stopped under
        env = dict(os.environ, HYPERLIPS_SERVE_PARENT=str(os.getpid()), PYTHONUNBUFFERED="1")
        if self.settings.threads:
            env["OMP_NUM_THREADS"] = str(self.settings.threads)
        try:
            logf = open(folder / "worker.log", "ab")
            proc = subprocess.Popen([sys.executable, "-m", "hyperlips.serve.worker", str(folder)], stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT, cwd=folder, env=env, start_new_session=True)
            logf.close()
        except OSError as e:
            log.error("job %s could not start: %s", job["id"], e)
            self.store.finish(job["id"], "failed", f"the job could not be started: {e.strerror or e}")
            return
        log.info("job %s (%s) started, worker pid %d", job["id"], job["kind"], proc.pid)
        self.running[job["id"]] = _Running(job["id"], job["kind"], proc, folder)

    def _follow(self, r: _Running) -> None:
        if self.store.cancel_requested(r.job_id):
            self._kill(r)
            del self.running[r.job_id]
            if self.store.get_job(r.job_id) is None:  # deleted while it ran
                shutil.rmtree(r.folder, ignore_errors=True)
            else:
                self.store.finish(r.job_id, "cancelled", "cancelled")
                (r.folder / "result.mp4").unlink(missing_ok=True)
                for p in r.folder.rglob(".*.partial.*"):  # what the killed worker was writing
                    p.unlink(missing_ok=True)
            log.info("job %s cancelled", r.job_id)
            return
        rc = r.proc.poll()
        self._read_progress(r)
        if rc is None:
            return
        del self.running[r.job_id]
        try:
            self._finish(r, rc)
        except Exception:  # noqa: BLE001 - the job must not stay 'running' forever
            log.exception("job %s: recording its end failed", r.job_id)
            try:
                last = dict((self.store.get_job(r.job_id) or {}).get("progress") or {})
            except Exception:  # noqa: BLE001 - (reading it may fail too)
                last = {}
            end = ("failed", _disk_full(r.folder) or "the server could not record how this job ended (see the "
                   "server's log)", None, {**last, "stage": "failed"})
            try:
                self.store.finish(r.job_id, *end)
            except Exception:  # noqa: BLE001 - (a full disk holds the job store too): recorded once it can be
                self._unrecorded[r.job_id] = end

    def _read_progress(self, r: _Running) -> None:
        path = progress_file(self.settings, r.job_id, r.kind)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == r.progress_mtime:
            return
        data = read_json(path)
        if data is not None:
            r.progress_mtime = mtime
            self.store.set_progress(r.job_id, data)

    def _finish(self, r: _Running, rc: int) -> None:
        error = (r.folder / "error.txt")
        result = read_json(r.folder / "result.json")
        job = self.store.get_job(r.job_id)
        if job is None:
            shutil.rmtree(r.folder, ignore_errors=True)
            return
        last = dict(job["progress"])
        if rc == 0 and result is not None:
            if r.kind == "finetune":
                result = self._publish(job, result)
            said = "; ".join(result.get("warnings") or [])  # done, but the input was odd (e.g. silent speech)
            self.store.finish(r.job_id, "done", f"done, with a warning: {said[:1000]}" if said else None, result,
                              {**last, "stage": "done", "fraction": 1.0})
            log.info("job %s done", r.job_id)
            return
        said = error.read_text(encoding="utf-8", errors="replace").strip() if error.is_file() else ""
        for partial in r.folder.glob(".*.partial.*"):  # what a worker killed midway was writing (a result of
            partial.unlink(missing_ok=True)  # hundreds of MB stayed until the job expired)
        if said:
            message = said.splitlines()[0][:1000]
        else:
            logged = (r.folder / "worker.log").is_file() and (r.folder / "worker.log").stat().st_size > 0
            then = "see this job's log, then try again" if logged else "try again"  # (an empty log was pointed at)
            message = _disk_full(r.folder) or (f"the job's worker process stopped unexpectedly ({describe_exit(rc)}); "
                                               f"the server is still running: {then}")
        self.store.finish(r.job_id, "failed", message, None, {**last, "stage": "failed"})
        log.info("job %s failed: %s", r.job_id, message)

    def _publish(self, job: dict, result: dict) -> dict:
        """Move a trained model into the models folder under the name the user chose (a free one)."""
        folder = self.settings.models
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        src = job_folder(self.settings, job["id"]) / result["model_file"]
        name = job["params"]["name"]
        # taken: the names of the models there, as the catalog reads them (composed; a decomposed twin of the name
        # would be listed, and the new model hidden behind it); and any file of the name (a case-blind disk)
        taken = {unicodedata.normalize("NFC", p.stem) for p in folder.iterdir()
                 if p.suffix.lower() in (".safetensors", ".pth")}
        stem, n = name, 1
        while (stem in taken or (folder / f"{stem}.safetensors").exists() or (folder / f"{stem}.pth").exists()):
            n += 1
            stem = f"{name}-{n}"
        for size, rel in result.get("hr_files", {}).items():
            hr_src = job_folder(self.settings, job["id"]) / rel
            _move(hr_src, folder / f"{stem}.hr{size}.safetensors")
        _move(src, folder / f"{stem}.safetensors")
        said = {"warnings": result["warnings"]} if result.get("warnings") else {}  # (two people in view, ...)
        params = job["params"]  # the person it learnt: a sync job of that footage follows it with the same choice
        who = {k: params[k] for k in ("face", "face_box") if params.get(k) is not None}
        return {"model": f"person:{stem}", "name": stem, **who, **said}

    def _kill(self, r: _Running) -> None:
        try:
            os.killpg(r.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            r.proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop", r.proc.pid)

    # ------------------------------------------------------------------ retention
    def sweep(self, now: float | None = None) -> None:
        """Delete finished jobs and uploads older than ``keep_hours`` (folders and results with them)."""
        before = (now or time.time()) - self.settings.keep_hours * 3600.0
        for job_id in self.store.old_jobs(before):
            self.store.delete_job(job_id)
            shutil.rmtree(job_folder(self.settings, job_id), ignore_errors=True)
            log.info("job %s expired and was deleted", job_id)
        for rec in self.store.old_uploads(before):
            self.store.delete_file(rec["id"])
            (self.settings.data / rec["path"]).unlink(missing_ok=True)


def _move(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    src.unlink(missing_ok=True)


DISK_FULL_BYTES = 16 << 20  # less free space than this where a job's worker died: the disk is taken for the cause


def _disk_full(folder: Path) -> str | None:
    """A job's message where the server's disk (the job's folder's) is all but full; else None."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= DISK_FULL_BYTES:
        return None
    return (f"the server's disk is full ({free // 1024} KB free where the jobs are kept): the job could not write "
            "its files; free some space on the server, then try again")
