"""A running server: the job store, the scheduler and the HTTP listener, and ``hyperlips serve``'s main loop.

One server owns a data folder (``DATA/server.lock``); the routes it answers are in :mod:`.routes`.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from .. import __version__
from ..errors import UserError
from .catalog import BUILT_IN_EXAMPLES, prepare_examples
from .jobs import MIN_TRAIN_MINUTES
from .routes import HTTPError, handler_for
from .runner import Runner, job_folder, progress_file, read_json
from .settings import LOOPBACK_HOSTS, ServeSettings
from .store import Store, valid_id
from .uploads import ACCEPTED_KINDS, ACCEPTED_SUFFIXES, register_example

log = logging.getLogger("hyperlips.serve")

# open files: a connection holds its socket and its thread's database (the file, its journal and shared memory); the
# rest is kept for uploads, job logs, the runner's commands and their pipes
FILES_PER_CONNECTION = 4
FILES_KEPT = 48
WANTED_FILES = 4096  # the open-file limit raised to this at start where the hard limit allows (many systems: 1024)
FEW_CONNECTIONS = 16  # fewer connections at once than this: said at start


def connection_budget() -> tuple[int, int]:
    """(open-file limit, connections kept open at once): the soft limit raised towards :data:`WANTED_FILES` as far as
    the hard limit allows, and the connections its files leave room for (at least 2)."""
    try:
        import resource
    except ImportError:  # (a system without it: no such limit to read)
        return 0, 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return 0, 1024
    return int(soft), max(2, (int(soft) - FILES_KEPT) // FILES_PER_CONNECTION)


BUSY_BODY = json.dumps({"error": "the server has as many connections open as it can keep: try again in a moment"})
BUSY = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 2\r\n"
        f"Connection: close\r\nContent-Length: {len(BUSY_BODY)}\r\n\r\n{BUSY_BODY}").encode()


class Listener(ThreadingHTTPServer):
    """The HTTP listener: a thread per connection, at most ``max_connections`` open at once (one more is answered
    503 and closed at once, before it holds a thread and files: idle connections could otherwise take every file
    the process may open, and the server then stopped answering anyone, uploads included, until they timed out).
    A longer queue of connections waiting to be accepted than the standard library's 5 (under a burst of connections
    new ones waited about a second)."""

    request_queue_size = 64
    daemon_threads = True
    max_connections = 1024

    def __init__(self, *args, **kwargs):
        self._open: set[int] = set()
        self._open_lock = threading.Lock()
        self._said_busy = False
        super().__init__(*args, **kwargs)

    def verify_request(self, request, client_address) -> bool:
        with self._open_lock:
            room = len(self._open) < self.max_connections
            if room:
                self._open.add(id(request))
        if not room:
            try:
                request.sendall(BUSY)
            except OSError:
                pass
            if not self._said_busy:
                self._said_busy = True
                log.warning("%d connections are open, as many as the open-file limit leaves room for: others are "
                            "answered 503 until some close (raise the limit, e.g. `ulimit -n 4096`, before `hyperlips "
                            "serve`)", self.max_connections)
        return room

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.discard(id(request))
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """An error the request's own handling let through (one met while reading the request line or its headers):
        a client gone meanwhile (a reset, a broken pipe, a timeout: a tab closed, a phone off its network) is routine,
        a debug line; anything else is logged with its traceback like the server's other errors. The standard
        library printed both on stderr, between the log's lines and in another format ("Exception occurred during
        processing of request from ...")."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("%s: the client left while its request was read (%s)", client_address[0], error)
            return
        log.error("error while reading a request from %s", client_address[0], exc_info=True)

    def get_request(self):
        try:
            return super().get_request()
        except OSError as e:  # no file left to accept with: wait a moment (the loop would spin on the waiting one)
            if e.errno in (errno.EMFILE, errno.ENFILE):
                time.sleep(0.05)
            raise


def _check_models_folder(folder: Path | None) -> None:
    """The folder trained person models are published to, writable (an unwritable one was found out only when a
    training job ended: its whole time budget lost, "the server could not record how this job ended")."""
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot publish trained models in {folder}: {e.strerror or e}; choose a folder the server "
                        "can write to with --models DIR") from None


class App:
    """A running server: store, scheduler and HTTP listener. ``start()`` returns at once; ``stop()`` ends all."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        try:
            settings.data.mkdir(parents=True, exist_ok=True)
            for sub in ("files", "jobs"):
                (settings.data / sub).mkdir(exist_ok=True)
        except OSError as e:  # a read-only home under a service manager, say
            raise UserError(f"cannot use {settings.data} as the data folder: {e.strerror or e}; choose one the server "
                            "can write to with --data DIR") from None
        _check_models_folder(settings.models)
        self._lock = _lock_data_folder(settings.data)
        self.store = Store(settings.data / "jobs.sqlite3")
        self.remove_leftovers()
        self.runner = Runner(settings, self.store)
        self.httpd: Listener | None = None
        self.open_files = 0  # the open-file limit the server runs under (0: none known)
        self._thread: threading.Thread | None = None

    @property
    def bound(self) -> str:
        """The address the listener is bound to, as the system reads ``--host`` ("0x7f000001" is 127.0.0.1, "" every
        address)."""
        assert self.httpd is not None
        return str(self.httpd.server_address[0])

    @property
    def loopback(self) -> bool:
        """Listening on this machine only (127.0.0.0/8 or ::1): requests must then name it in their Host header."""
        try:
            return ipaddress.ip_address(self.bound.split("%")[0]).is_loopback
        except ValueError:
            return False

    @property
    def host_names(self) -> tuple[str, ...]:
        """The names a request's Host header may give on a loopback listener: localhost's and the bound address."""
        return (*LOOPBACK_HOSTS, self.bound)

    @property
    def url(self) -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def start(self, *, run_jobs: bool = True) -> "App":
        self.load_examples()
        self.open_files, connections = connection_budget()
        family = type("Server", (Listener,), {"max_connections": connections})
        if ":" in self.settings.host:
            import socket

            family = type("V6Server", (family,), {"address_family": socket.AF_INET6})
        self.httpd = family((self.settings.host, self.settings.port), handler_for(self))
        if run_jobs:
            self.runner.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        self.runner.stop()
        self.store.close()
        self._lock.close()  # another server may use the folder now

    def remove_leftovers(self) -> None:
        """Delete what a server stopped midway left in its folder (this one owns it now, so nothing is in use):
        uploads without a record (half sent, or still being checked), the folders of jobs no longer recorded, and
        the half-written results of the jobs it stopped (they run again from the start)."""
        data = self.settings.data
        known = self.store.file_paths()
        for p in (data / "files").iterdir():
            if p.is_file() and f"files/{p.name}" not in known:
                p.unlink(missing_ok=True)
                log.info("removed %s: an upload the last server did not finish", p.name)
        for folder in (data / "jobs").iterdir():
            if not folder.is_dir():
                continue
            if not valid_id(folder.name) or self.store.get_job(folder.name) is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for p in folder.rglob(".*.partial.*"):
                p.unlink(missing_ok=True)

    def load_examples(self) -> None:
        folder = prepare_examples(self.settings)
        for p in sorted(folder.iterdir()):
            if not self.settings.examples and p.name in BUILT_IN_EXAMPLES:  # --no-examples: the built-in example
                known = self.store.example_by_path(p.relative_to(self.settings.data).as_posix())  # a server before
                if known is not None:  # this one offered is no longer listed (the files stay for a later server)
                    self.store.delete_file(known["id"])
                continue
            if p.is_file() and p.suffix.lower() in ACCEPTED_SUFFIXES:
                register_example(p, self.settings, self.store)

    # ------------------------------------------------------------------ what the routes do
    def info(self) -> dict:
        s = self.settings
        return {"name": "hyperlips", "version": __version__,
                "limits": {"max_upload_bytes": s.max_upload_bytes, "max_seconds": s.max_seconds,
                           "min_train_minutes": MIN_TRAIN_MINUTES, "max_train_minutes": s.max_train_minutes,
                           "keep_hours": s.keep_hours},
                "jobs_at_once": s.jobs_at_once, "accepted_suffixes": sorted(ACCEPTED_SUFFIXES), "accepted_kinds": ACCEPTED_KINDS,
                "queue": {"queued": self.store.count("queued"), "running": self.store.count("running")}}

    def job_or_404(self, job_id: str) -> dict:
        job = self.store.get_job(job_id) if valid_id(job_id) else None
        if job is None:
            raise HTTPError(404, f"no job {job_id[:40]!r} (finished jobs are deleted after "
                                 f"{self.settings.keep_hours:g} h, or when asked to)")
        return job

    def delete_job(self, job_id: str) -> None:
        job = self.job_or_404(job_id)
        if job["state"] == "running":
            self.store.request_cancel(job_id)
            self.store.delete_job(job_id)  # the scheduler sees it gone, stops the worker and removes the folder
            self.runner.wake()
        else:
            self.store.delete_job(job_id)
            shutil.rmtree(job_folder(self.settings, job_id), ignore_errors=True)

    def preview_path(self, job: dict) -> Path:
        if job["kind"] != "finetune":
            raise HTTPError(404, "only training jobs have previews")
        progress = read_json(progress_file(self.settings, job["id"], "finetune")) or job["progress"]
        rel = progress.get("preview") if isinstance(progress, dict) else None
        if not rel:
            raise HTTPError(404, "no preview yet: the first one comes with the first validation")
        work = (job_folder(self.settings, job["id"]) / "work").resolve()
        path = Path(rel)
        path = (path if path.is_absolute() else work / path).resolve()
        if work not in path.parents or path.suffix.lower() not in (".png", ".jpg", ".jpeg") or not path.is_file():
            raise HTTPError(404, "the preview is not available")
        return path


def _lock_data_folder(data: Path):
    """Hold ``DATA/server.lock`` while serving: two servers on one folder would run each other's jobs twice."""
    import fcntl

    f = open(data / "server.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(f"another hyperlips serve is using {data}; stop it, or give this one another --data folder") from None
    return f


def _bind_hint(e: OSError, settings: ServeSettings) -> str:
    """What to do about a failed bind, by its cause (another --port only helps where the port is the cause)."""
    import errno
    import socket

    if e.errno == errno.EADDRINUSE:
        return " (another program uses that port: choose another --port, or stop that program)"
    if e.errno == errno.EACCES and 0 < int(settings.port) < 1024:
        return " (ports below 1024 need administrator rights: choose --port 1024 or more)"
    if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        return " (--host must be a name or address of this machine, such as 127.0.0.1 or 0.0.0.0)"
    return ""


def serve(settings: ServeSettings) -> int:
    """Run until Ctrl-C (the CLI's entry)."""
    app = App(settings)
    try:
        app.start()
    except OSError as e:
        raise UserError(f"cannot listen on {settings.host}:{settings.port}: {e.strerror or e}{_bind_hint(e, settings)}") \
            from None
    print(f"hyperlips serve: {app.url}/  (data in {settings.data}; Ctrl-C to stop)", flush=True)
    if app.httpd.max_connections < FEW_CONNECTIONS:
        print(f"hyperlips serve: note: the open-file limit is {app.open_files}: at most {app.httpd.max_connections} "
              "connections are kept open at once (others are answered 503 until some close); raise it (e.g. "
              "`ulimit -n 4096`) before `hyperlips serve` for more", flush=True)
    if not app.loopback:
        where = "every address of this machine" if app.bound in ("0.0.0.0", "::") else app.bound
        print(f"hyperlips serve: note: listening on {where}: anyone who can reach this machine can use it (there "
              f"are no accounts: every client sees, uses and deletes every job and upload)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # Ctrl-C, a service manager, a closed terminal
        if signal.getsignal(sig) is not signal.SIG_IGN:  # one ignored from the start (nohup's SIGHUP) stays so
            signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
        print("hyperlips serve: stopping (running jobs are queued again at the next start)", flush=True)
    finally:
        app.stop()
    return 0
