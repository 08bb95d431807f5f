"""The HTTP routes of the page and the API (standard library ``http.server``, one thread per connection).

Every answer of the API is JSON; an error is ``{"error": "one line"}`` with a 4xx status (5xx only for a bug,
which is logged and never stops the server). The handler works on the server object it is given
(:class:`hyperlips.serve.server.App`): its settings, store and scheduler.

Safety: requests must name this server in their ``Host`` header when it listens on a loopback address (a web
page elsewhere cannot reach it through DNS rebinding), and a request that changes something is refused when
its ``Origin`` is another site. File names sent by clients are only ever displayed.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import re
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from .. import __version__
from ..errors import UserError, one_line
from . import jobs as jobs_mod
from .catalog import list_models
from .openapi import openapi_document
from .runner import job_folder
from .store import FINISHED, storage_full, valid_id
from .uploads import UploadError, check_length, display_name, longest_seconds, receive, storage_suffix

log = logging.getLogger("hyperlips.serve")
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'")
LOG_TAIL = 20000
DRAIN_BYTES = 32 << 20  # a refused upload up to this size is read before the answer (clients then see it)


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _not_json(token: str):
    raise ValueError(f"{token} is not a JSON number")


def _names_tag(header: str | None, tag: str) -> bool:
    """Whether an ``If-None-Match`` header names entity tag ``tag`` (or is ``*``); weak tags compare by their value
    (RFC 9110 13.1.2)."""
    if not header:
        return False
    listed = [t.strip() for t in header.split(",")]
    return "*" in listed or tag in (t[2:] if t.startswith("W/") else t for t in listed)


def handler_for(app) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app`` (the running server)."""

    class Handler(_Handler):
        pass

    Handler.app = app
    return Handler


_ROUTES: list[tuple[str, re.Pattern, str]] = [
    (m, re.compile(p), name) for m, p, name in [
        ("GET", r"^/$", "page"),
        ("GET", r"^/static/(?P<name>[a-z]+\.[a-z]+)$", "static"),
        ("GET", r"^/favicon\.ico$", "favicon"),
        ("GET", r"^/api/health$", "health"),
        ("GET", r"^/api/info$", "info"),
        ("GET", r"^/api/openapi\.json$", "openapi"),
        ("GET", r"^/api/models$", "models"),
        ("GET", r"^/api/examples$", "examples"),
        ("POST", r"^/api/files$", "upload"),
        ("GET", r"^/api/files/(?P<id>[^/]+)$", "file"),
        ("DELETE", r"^/api/files/(?P<id>[^/]+)$", "delete_file"),
        ("POST", r"^/api/phonemes$", "phonemes"),
        ("POST", r"^/api/jobs$", "submit"),
        ("GET", r"^/api/jobs$", "jobs"),
        ("GET", r"^/api/jobs/(?P<id>[^/]+)$", "job"),
        ("DELETE", r"^/api/jobs/(?P<id>[^/]+)$", "delete_job"),
        ("POST", r"^/api/jobs/(?P<id>[^/]+)/cancel$", "cancel"),
        ("GET", r"^/api/jobs/(?P<id>[^/]+)/result$", "result"),
        ("GET", r"^/api/jobs/(?P<id>[^/]+)/preview$", "preview"),
        ("GET", r"^/api/jobs/(?P<id>[^/]+)/log$", "job_log"),
    ]
]
ROUTE_TABLE = [(m, p.pattern) for m, p, _ in _ROUTES]  # for the OpenAPI consistency test
BODY_ROUTES = {("POST", "/api/files"), ("POST", "/api/jobs"), ("POST", "/api/phonemes")}  # (routes reading a body)
PLAIN_LENGTH = re.compile(r"[0-9]{1,15}")  # a Content-Length as HTTP writes it (Python's int() takes "-1", "+5", "1_0")


class _Handler(BaseHTTPRequestHandler):
    app = None  # the server (hyperlips.serve.server.App) this handler answers for
    protocol_version = "HTTP/1.1"
    server_version = f"hyperlips/{__version__}"
    sys_version = ""
    timeout = 120  # seconds a client may stay silent mid-request
    idle_timeout = 15  # seconds a connection may wait for its (next) request: an idle one holds a thread and files
    _head = False  # answering a HEAD request: headers only
    _must_close = False  # an unread body is left on the connection: close it after the answer

    # ------------------------------------------------------------------ plumbing
    def handle(self) -> None:
        """Answer the requests of one connection, then close this thread's database connection (no fd is left)."""
        try:
            super().handle()
        finally:
            self.app.store.close()

    def handle_one_request(self) -> None:
        self.connection.settimeout(self.idle_timeout)  # waiting for a request line: closed when none comes
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.connection.settimeout(self.timeout)  # the request has begun: its headers and body may take longer
        return super().parse_request()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET", head=True)

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # no route takes these: a JSON 405 (or 404) instead of the base class's HTML 501
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:  # no cross-site preflight is ever answered yes
        self._dispatch("OPTIONS")

    def do_TRACE(self) -> None:
        self._dispatch("TRACE")

    def do_CONNECT(self) -> None:
        self._dispatch("CONNECT")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own refusals (a request line or headers too long, a method it has no handler for, a
        malformed request) as JSON like every other answer, not its HTML page."""
        try:
            phrase = message or self.responses.get(code, ("error",))[0]
        except AttributeError:
            phrase = message or "error"
        self._head = getattr(self, "command", None) == "HEAD"
        self._json({"error": one_line(phrase)}, code, close=True)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: refuse an oversized upload before the client sends it."""
        if urlsplit(self.path).path == "/api/files":
            try:
                check_length(self._length(), self.app.settings, display_name(self._query().get("name")))
            except (UploadError, HTTPError) as e:
                self._json({"error": str(e)}, e.status, close=True)
                return False
        return super().handle_expect_100()

    def _query(self) -> dict[str, str]:
        """The query's fields. A request line is read as Latin-1, so raw UTF-8 bytes in it (what curl sends for
        `?name=интервью.wav`, unescaped) came out as mojibake: they are read back as the UTF-8 they are."""
        query = urlsplit(self.path).query
        try:
            query = query.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass  # (not UTF-8 bytes: as it came)
        return {k: v[-1] for k, v in parse_qs(query).items()}

    def _length(self) -> int | None:
        """The body's declared length; None without one (or sent in chunks). A length that is not a plain
        whole number of bytes ("-1", "+5", "1_0", "0x10") is refused: read as Python reads numbers, "-1" read the
        body until the client closed, past every size limit."""
        if self.headers.get("Transfer-Encoding"):
            return None
        value = self._content_length()
        if value is None:
            return None
        if not PLAIN_LENGTH.fullmatch(value.strip()):
            raise HTTPError(400, f"Content-Length must be a whole number of bytes (got {value[:40]!r})")
        return int(value)

    def _content_length(self) -> str | None:
        """The Content-Length header's value. More than one (or a list, "5, 6") is refused and the connection closed:
        which one ends the body is ambiguous, and a proxy in front that read the other would pass the rest on as a
        request of its own (RFC 9112 section 6.3)."""
        values = self.headers.get_all("Content-Length") or []
        if len(values) > 1 or any("," in v for v in values):
            self._must_close = True
            raise HTTPError(400, "more than one Content-Length: where the body ends is ambiguous")
        return values[0] if values else None

    def _skip_body(self) -> None:
        """A request whose route takes no body: one sent anyway is read and dropped (up to 1 MB; a longer one or one
        in chunks closes the connection after the answer), so that it is never read as the next request."""
        chunked = bool(self.headers.get("Transfer-Encoding"))
        value = self._content_length()
        if value is None and not chunked:
            return
        if chunked or not PLAIN_LENGTH.fullmatch(value.strip()) or int(value) > 1 << 20:
            self._must_close = True
            return
        self._discard(int(value))

    def _dispatch(self, method: str, head: bool = False) -> None:
        self._head = head
        self._must_close = False
        self._allow = ""
        path = urlsplit(self.path).path
        try:
            if (method, path) not in BODY_ROUTES:
                self._skip_body()
            self._check_origin(method)
            allowed = []
            for m, pattern, name in _ROUTES:
                match = pattern.match(path)
                if match:
                    if m == method:
                        return getattr(self, f"r_{name}")(**match.groupdict())
                    allowed.append(m)
            if allowed:
                if "GET" in allowed:
                    allowed.append("HEAD")
                self._allow = ", ".join(allowed)  # the Allow header a 405 must carry
                raise HTTPError(405, f"{method} is not allowed here (use {', '.join(allowed)})")
            raise HTTPError(404, f"nothing at {path[:100]}")
        except HTTPError as e:
            self._refuse({"error": str(e)}, e.status, close=e.status in (411, 413) or method != "GET",
                         headers={"Allow": self._allow} if e.status == 405 and self._allow else None)
        except UserError as e:
            self._refuse({"error": one_line(e)}, getattr(e, "status", 400), close=True)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug answers 500 and is logged; the server goes on
            if storage_full(e):  # the server's disk (its job store with it): not a bug to report
                log.warning("%s %s: %s", method, path, e)
                why = (e.strerror or "") if isinstance(e, OSError) else str(e)  # never the server's own paths
                self._json({"error": f"the server's disk is full ({why or 'no space left'}): free some space on the "
                                     "server, then try again"}, 507, close=True)
                return
            log.exception("error while answering %s %s", method, path)
            try:
                self._json({"error": "internal error in the server (logged); please report it"}, 500, close=True)
            except OSError:
                self.close_connection = True

    def _refuse(self, data: dict, status: int, close: bool, headers: dict | None = None) -> None:
        """The error answer, where the client is still there to read it: one that went away mid-upload (a tab
        closed, a phone off its network) is routine, logged in one line (its answer failing was a traceback)."""
        try:
            self._json(data, status, close=close, headers=headers)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
            log.info("%s %s: the client left before its answer (%s)", self.command, urlsplit(self.path).path,
                     data.get("error", status))

    def _check_origin(self, method: str) -> None:
        host = self.headers.get("Host", "")
        if self.app.loopback:
            if not host.strip():  # (HTTP/1.1 requires one: a malformed request, not one for another host)
                raise HTTPError(400, "the request has no Host header (HTTP/1.1 requires one)")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]").lower().rstrip(".") not in self.app.host_names:  # (host names have no case:
                raise HTTPError(403, "this server answers only requests addressed to localhost")  # LOCALHOST is it)
        # a page of another site, or one that hides where it comes from ("null": a sandboxed frame, a redirect
        # across sites, a file), may not change anything here; clients that are not browsers send no Origin
        origin = self.headers.get("Origin")
        if method != "GET" and origin is not None and urlsplit(origin).netloc != host:
            raise HTTPError(403, "requests from other sites are refused")

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self._closing(close)
        self.end_headers()
        if not self._head:
            self.wfile.write(body)

    def _closing(self, close: bool = False) -> None:
        """Say the connection closes after this answer (``close``, or a body left unread on it), and close it."""
        if close or self._must_close:
            self.send_header("Connection", "close")
            self.close_connection = True

    def _json(self, data, status: int = 200, close: bool = False, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data, indent=1).encode(), "application/json",
                   {"Cache-Control": "no-store", **(headers or {})}, close=close)

    def _body_json(self) -> dict:
        length = self._length()
        if length is None or length > 1 << 20:
            raise HTTPError(413 if length else 411, "send a JSON body of at most 1 MB with a Content-Length")
        try:  # NaN and Infinity are not JSON: Python reads them, browsers and other clients cannot read them back
            return json.loads(self.rfile.read(length) or b"{}", parse_constant=_not_json)
        except ValueError as e:
            raise HTTPError(400, f"the body is not valid JSON: {e}") from None
        except RecursionError:
            raise HTTPError(400, "the body is not valid JSON here: nested too deeply") from None

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(1 << 20, length))
            if not chunk:
                return
            length -= len(chunk)

    def _send_file(self, path: Path, ctype: str, download: str | None = None) -> None:
        """A file, whole or one byte range (``Range: bytes=a-b``), so that video players can seek, with its
        validators: ``ETag`` (its size and modification time) and ``Last-Modified``. ``If-None-Match`` naming that tag
        gets 304; a range under ``If-Range`` is sent only while the file is the one its tag names (a download resumed
        after the file changed gets the whole new file, not a piece of it spliced onto the old one; a date there gets
        the whole file too)."""
        st = path.stat()
        size = st.st_size
        tag = f'"{size:x}-{st.st_mtime_ns:x}"'
        modified = formatdate(st.st_mtime, usegmt=True)
        if _names_tag(self.headers.get("If-None-Match"), tag):
            self.send_response(304)
            self.send_header("ETag", tag)
            self.send_header("Cache-Control", "no-cache")
            self._closing()
            self.end_headers()
            return
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if_range = (self.headers.get("If-Range") or "").strip()
        if rng and if_range and if_range != tag:  # (a date is kept to the second: a file written twice in one second
            rng = None  # would pass; and a weak tag never matches, RFC 9110 13.1.5)
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip()) if rng else None
        if m and m[1] and m[2] and int(m[2]) < int(m[1]):
            m = None  # not a range (its last byte before its first): ignored, the whole file sent (RFC 9110 14.2)
        if m and (m[1] or m[2]):
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            else:
                start, end = max(0, size - int(m[2])), size - 1
            if start > end or start >= size:  # every answer is JSON, this one too
                self._json({"error": f"the range {rng.strip()[:60]} is past the end of the file ({size} bytes)"}, 416,
                           headers={"Content-Range": f"bytes */{size}"})
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start + 1))
        self._closing()
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("ETag", tag)
        self.send_header("Last-Modified", modified)
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if download:
            ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", download)
            self.send_header("Content-Disposition",
                             f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(download)}")
        self.end_headers()
        if self._head:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    # ------------------------------------------------------------------ the page
    def r_page(self) -> None:
        self._static("index.html", {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"})

    def r_static(self, name: str) -> None:
        if name not in STATIC:
            raise HTTPError(404, f"no static file {name}")
        self._static(name)

    def r_favicon(self) -> None:
        self._static("favicon.svg")

    def _static(self, name: str, headers: dict | None = None) -> None:
        body = resources.files("hyperlips.serve").joinpath("static", name).read_bytes()
        self._send(200, body, STATIC[name], {"Cache-Control": "no-cache", **(headers or {})})

    # ------------------------------------------------------------------ the API
    def r_health(self) -> None:
        self._json({"ok": True})

    def r_info(self) -> None:
        self._json(self.app.info())

    def r_openapi(self) -> None:
        self._json(openapi_document(__version__))

    def r_models(self) -> None:
        self._json({"models": [m.public() for m in list_models(self.app.settings)]})

    def r_examples(self) -> None:
        limit = self.app.settings.max_seconds  # as uploads are held to it
        self._json({"files": [public_file(f) for f in self.app.store.examples() if longest_seconds(f) <= limit]})

    def r_upload(self) -> None:
        raw_name, length = self._query().get("name"), self._length()
        try:
            if not (raw_name or "").strip():
                raise UploadError("the file's name is missing: POST /api/files?name=FILE (its extension, e.g. .mp4 or "
                                  ".wav, says what it is)")
            name = display_name(raw_name)
            if (self.headers.get("Content-Type") or "").lower().startswith("multipart/"):  # a browser form, curl -F:
                raise HTTPError(415, "send the file's own bytes as the body (Content-Type: application/octet-stream; "
                                     "curl --data-binary @FILE, fetch(url, {body: file})), not a multipart form")
            storage_suffix(name)
            check_length(length, self.app.settings, name)
        except (UploadError, HTTPError):
            if length is not None and 0 < length <= DRAIN_BYTES:  # read it, so that the client hears the reason
                self._discard(length)
            raise
        rec = receive(self.rfile, length, raw_name, self.app.settings, self.app.store)
        self._json(public_file(rec), 201)

    def r_file(self, id: str) -> None:
        self._json(public_file(self._file(id)))

    def r_delete_file(self, id: str) -> None:
        rec = self._file(id)
        if rec["example"]:
            raise HTTPError(403, "examples cannot be deleted through the API")
        self.app.store.delete_file(id)
        (self.app.settings.data / rec["path"]).unlink(missing_ok=True)
        self._json({"deleted": id})

    def _file(self, file_id: str) -> dict:
        rec = self.app.store.get_file(file_id) if valid_id(file_id) else None
        if rec is None:
            raise HTTPError(404, f"no uploaded file {file_id[:40]!r}")
        return rec

    def r_phonemes(self) -> None:
        self._json(jobs_mod.check_phonemes(self.app.store, self._body_json()))

    def r_submit(self) -> None:
        job = jobs_mod.submit(self.app.settings, self.app.store, self._body_json())
        self.app.runner.wake()
        self._json(jobs_mod.public_job(job), 201)

    def r_jobs(self) -> None:
        q = self._query()
        other = sorted(set(q) - {"limit", "kind"})
        if other:  # (ignored, a filter such as state=done seemed to give every job)
            raise HTTPError(400, f"GET /api/jobs takes kind and limit (got {', '.join(other)[:60]}); a job's state is "
                                 "in each job")
        limit, kind = q.get("limit") or "50", q.get("kind") or None
        if not limit.strip().isdecimal() or not 1 <= int(limit) <= 500:  # (isdigit takes "²", which int() cannot read)
            raise HTTPError(400, f"limit must be a whole number from 1 to 500 (got {limit[:20]!r})")
        if kind is not None and kind not in jobs_mod.KINDS:
            raise HTTPError(400, f"kind must be one of {', '.join(jobs_mod.KINDS)} (got {kind[:20]!r})")
        self._json({"jobs": [jobs_mod.public_job(j) for j in self.app.store.list_jobs(int(limit), kind)]})

    def r_job(self, id: str) -> None:
        self._json(jobs_mod.public_job(self.app.job_or_404(id)))

    def r_cancel(self, id: str) -> None:
        job = self.app.job_or_404(id)
        if job["state"] in FINISHED:  # (it answered 200 with nothing done)
            raise HTTPError(409, f"the job is {job['state']} already: nothing to cancel")
        job = self.app.store.request_cancel(id)
        self.app.runner.wake()
        self._json(jobs_mod.public_job(job))  # type: ignore[arg-type]

    def r_delete_job(self, id: str) -> None:
        self.app.delete_job(id)
        self._json({"deleted": id})

    def r_result(self, id: str) -> None:
        job = self.app.job_or_404(id)
        if job["kind"] != "sync":
            raise HTTPError(404, "a training job's result is a model: use it by its id from GET /api/models")
        if job["state"] != "done":
            why = f": {job['message']}" if job.get("message") and job["message"] != job["state"] else ""
            raise HTTPError(409 if job["state"] not in FINISHED else 404, f"the job is {job['state']}{why}")
        path = job_folder(self.app.settings, id) / "result.mp4"
        if not path.is_file():
            raise HTTPError(404, "the result file is gone")
        name = None
        if self._query().get("download") not in (None, "", "0"):
            name = download_name(job["params"].get("video_name"))
        self._send_file(path, "video/mp4", name)

    def r_preview(self, id: str) -> None:
        path = self.app.preview_path(self.app.job_or_404(id))
        self._send_file(path, mimetypes.guess_type(path.name)[0] or "image/png")

    def r_job_log(self, id: str) -> None:
        self.app.job_or_404(id)
        path = job_folder(self.app.settings, id) / "worker.log"
        text = b""
        if path.is_file():
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - LOG_TAIL))
                text = f.read()
        # the server's folders are its own business: named as the docs name them, not by where they are
        s = self.app.settings
        for where, shown in sorted({str(job_folder(s, id)): "JOB", str(s.models): "MODELS", str(s.data): "DATA"}.items(),
                                   key=lambda kv: -len(kv[0])):
            # (a folder whose name is not UTF-8: as the OS spells it, and as a stream escapes it; encode() failed: 500)
            for spelled in {os.fsencode(where), where.encode("utf-8", "backslashreplace")}:
                text = text.replace(spelled, shown.encode())
        self._send(200, text, "text/plain; charset=utf-8", {"Cache-Control": "no-store"})


def public_file(rec: dict) -> dict:
    facts = rec["facts"]
    return {"id": rec["id"], "name": rec["name"], "size": rec["size"], "example": rec["example"],
            "created": rec["created"], **{k: v for k, v in facts.items()},
            "usable_as": {"video": "video" not in facts["problems"], "audio": "audio" not in facts["problems"]}}


def download_name(video_name: str | None) -> str:
    """The name a result is downloaded under: "talk.mov" -> "talk_hyperlips.mp4"; a name that is all suffix (".mp4")
    or none -> "video_hyperlips.mp4" (not a hidden file)."""
    stem = Path("_" + (video_name or "")).stem[1:].lstrip(".")
    return f"{stem or 'video'}_hyperlips.mp4"
