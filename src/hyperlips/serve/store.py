"""The server's memory: uploaded files and the job queue, in one SQLite database (``<data>/jobs.sqlite3``).

Everything a restarted server needs is here: a job that was queued or running when the server stopped is
queued again when it starts. Each thread gets its own connection; the database runs in WAL mode so the page's
polling never waits for the scheduler's writes.

Job states: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
MAX_ATTEMPTS = 3  # a job the server was stopped under this many times is given up

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,          -- the uploader's file name, for display only (never a path)
    path TEXT NOT NULL,          -- where it is stored, relative to the data folder
    size INTEGER NOT NULL,
    facts TEXT NOT NULL,         -- JSON: seconds, width, height, has_video, has_audio, is_image, problems
    example INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,          -- sync | finetune
    state TEXT NOT NULL,
    params TEXT NOT NULL,        -- JSON, as submitted (after checking)
    progress TEXT NOT NULL DEFAULT '{}',
    message TEXT,                -- why it failed (one line), or a note
    result TEXT,                 -- JSON: what it produced
    cancel INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
"""


def storage_full(e: BaseException) -> bool:
    """Whether ``e`` is the server's disk being full: an OSError saying so (or its quota), or SQLite's "database or
    disk is full"."""
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e)


def new_id() -> str:
    """16 hex digits, unguessable: the only thing that names a file or job on disk."""
    return secrets.token_hex(8)


def valid_id(text: str) -> bool:
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ------------------------------------------------------------------ files
    def add_file(self, file_id: str, name: str, rel_path: str, size: int, facts: dict, example: bool = False) -> dict:
        self._db().execute(
            "INSERT INTO files (id, name, path, size, facts, example, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (file_id, name, rel_path, size, json.dumps(facts), int(example), time.time()),
        )
        return self.get_file(file_id)  # type: ignore[return-value]

    def get_file(self, file_id: str) -> dict | None:
        row = self._db().execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return _file(row) if row else None

    def example_by_path(self, rel_path: str) -> dict | None:
        row = self._db().execute("SELECT * FROM files WHERE example = 1 AND path = ?", (rel_path,)).fetchone()
        return _file(row) if row else None

    def examples(self) -> list[dict]:
        rows = self._db().execute("SELECT * FROM files WHERE example = 1 ORDER BY name").fetchall()
        return [_file(r) for r in rows]

    def delete_file(self, file_id: str) -> dict | None:
        rec = self.get_file(file_id)
        if rec is not None:
            self._db().execute("DELETE FROM files WHERE id = ?", (file_id,))
        return rec

    def file_paths(self) -> set[str]:
        """The stored path (relative to the data folder) of every recorded file, uploads and examples."""
        return {row[0] for row in self._db().execute("SELECT path FROM files").fetchall()}

    def old_uploads(self, before: float) -> list[dict]:
        rows = self._db().execute("SELECT * FROM files WHERE example = 0 AND created < ?", (before,)).fetchall()
        return [_file(r) for r in rows]

    # ------------------------------------------------------------------ jobs
    def add_job(self, job_id: str, kind: str, params: dict) -> dict:
        self._db().execute(
            "INSERT INTO jobs (id, kind, state, params, created) VALUES (?, ?, 'queued', ?, ?)",
            (job_id, kind, json.dumps(params), time.time()),
        )
        return self.get_job(job_id)  # type: ignore[return-value]

    def get_job(self, job_id: str) -> dict | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = _job(row)
        if job["state"] == "queued":
            job["queue_position"] = self._db().execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (created < ? OR (created = ? AND rowid < ?))",
                (row["created"], row["created"], self._rowid(job_id)),
            ).fetchone()[0]
            job["running_ahead"] = self.count("running")
        return job

    def _rowid(self, job_id: str) -> int:
        return self._db().execute("SELECT rowid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]

    def list_jobs(self, limit: int = 100, kind: str | None = None) -> list[dict]:
        if kind:
            rows = self._db().execute("SELECT * FROM jobs WHERE kind = ? ORDER BY created DESC, rowid DESC LIMIT ?",
                                      (kind, limit)).fetchall()
        else:
            rows = self._db().execute("SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        jobs = [_job(r) for r in rows]
        # as get_job gives it: the queued jobs ahead of each queued one, in the order they are claimed
        queue = [r[0] for r in self._db().execute(
            "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created, rowid").fetchall()]
        ahead = {job_id: i for i, job_id in enumerate(queue)}
        running = self.count("running")
        for job in jobs:
            if job["state"] == "queued" and job["id"] in ahead:
                job["queue_position"] = ahead[job["id"]]
                job["running_ahead"] = running
        return jobs

    def count(self, state: str) -> int:
        return self._db().execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]

    def claim_next(self) -> dict | None:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created, rowid LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, progress = ? "
                       "WHERE id = ?", (time.time(), json.dumps({"stage": "starting", "fraction": 0.0}), row["id"]))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.get_job(row["id"])

    def set_progress(self, job_id: str, progress: dict) -> None:
        self._db().execute("UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'",
                           (json.dumps(progress), job_id))

    def finish(self, job_id: str, state: str, message: str | None = None, result: dict | None = None,
               progress: dict | None = None) -> None:
        assert state in FINISHED
        sets = "state = ?, message = ?, result = ?, finished = ?"
        args: list[Any] = [state, message, json.dumps(result) if result is not None else None, time.time()]
        if progress is not None:
            sets += ", progress = ?"
            args.append(json.dumps(progress))
        self._db().execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*args, job_id))

    def request_cancel(self, job_id: str) -> dict | None:
        """A queued job is cancelled at once; a running one is flagged for the scheduler to stop."""
        db = self._db()
        db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, message = 'cancelled before it started' "
                   "WHERE id = ? AND state = 'queued'", (time.time(), job_id))
        db.execute("UPDATE jobs SET cancel = 1 WHERE id = ? AND state = 'running'", (job_id,))
        return self.get_job(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        row = self._db().execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is None or bool(row["cancel"])  # a job deleted while running is stopped too

    def requeue_interrupted(self) -> list[tuple[str, str]]:
        """Jobs left 'running' by a server that stopped: queue them again (or give up after MAX_ATTEMPTS, or cancel
        those a cancel was asked for). -> (id, what became of it) for each."""
        db = self._db()
        rows = db.execute("SELECT id, attempts, cancel FROM jobs WHERE state = 'running'").fetchall()
        out = []
        for r in rows:
            if r["cancel"]:
                self.finish(r["id"], "cancelled", "cancelled")
                out.append((r["id"], "cancelled, as asked before the stop"))
            elif r["attempts"] >= MAX_ATTEMPTS:
                self.finish(r["id"], "failed", f"the server stopped during this job {r['attempts']} times; giving up")
                out.append((r["id"], f"given up after {r['attempts']} stops during it"))
            else:
                db.execute("UPDATE jobs SET state = 'queued', progress = '{}' WHERE id = ?", (r["id"],))
                out.append((r["id"], "queued again"))
        return out

    def delete_job(self, job_id: str) -> None:
        self._db().execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def old_jobs(self, before: float) -> list[str]:
        rows = self._db().execute(f"SELECT id FROM jobs WHERE state IN {FINISHED} AND finished < ?", (before,)).fetchall()
        return [r["id"] for r in rows]


def _file(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["facts"] = json.loads(d["facts"])
    d["example"] = bool(d["example"])
    return d


def _job(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["params"] = json.loads(d["params"])
    d["progress"] = json.loads(d["progress"] or "{}")
    d["result"] = json.loads(d["result"]) if d["result"] else None
    d["cancel"] = bool(d["cancel"])
    return d
