"""Local stand-ins for the two hosts vitkit downloads weights from, so that download code is tested with no internet.

- `FileServer` stands for Google Cloud Storage (https://storage.googleapis.com/vit_models/...): a static file server
  that answers HEAD and GET with the headers GCS sends (`Content-Length`, `ETag` = quoted md5 hex, `x-goog-hash`),
  honours byte ranges (206 / 416) and answers an unknown object 404 with GCS's XML error.
- `HubServer` stands for the Hugging Face Hub: just enough of its HTTP API (`/{repo}/resolve/{revision}/{file}`,
  `/api/models/{repo}[/revision/{revision}]`, `/api/models/{repo}/tree/{revision}`) for huggingface_hub's own
  `hf_hub_download` and `snapshot_download` to run against it (pass `endpoint=server.url`), cache included, and with
  errors signalled as the real Hub signals them (status + `X-Error-Code`), so that the library raises its own
  exception classes (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError, GatedRepoError).
  It never sends Xet headers, so the library downloads over plain HTTP even where `hf_xet` is installed.

Both run a stdlib `ThreadingHTTPServer` on 127.0.0.1, on a free port, in a background thread; both are context managers
and have `.start()` / `.stop()`; `.stop()` closes the listening socket and every open connection, so a later attempt
to connect is refused (what a client sees when the host is unreachable); `.start()` after `.stop()` binds the same
port again (the host is back). Both record every request in `.requests` and can fail a transfer on purpose:

- `cut_once[key] = N`: the next GET of that file sends the normal headers (the full length, or the range's) but only
  the first N bytes of the body, then closes the connection cleanly (FIN): the client sees a short body.
- `reset_once[key] = N`: the same, but the connection is then reset (RST, SO_LINGER 0): the client sees a
  connection reset (some of the N bytes may be lost with it).

Each entry is removed when it fires, so a retry succeeds. Content dicts are read on every request: a test may replace
a file's bytes after the server started (e.g. to serve corrupted bytes).

What huggingface_hub 2.4.0 does against these (checked), worth knowing when writing tests:
- `HF_ENDPOINT` and `HF_HUB_OFFLINE` are read at import only: pass `endpoint=`; for offline mode monkeypatch
  `huggingface_hub.constants.HF_HUB_OFFLINE = True` (`is_offline_mode()` returns that attribute).
- Hub stopped + file cached: `hf_hub_download` returns the cached path at once (one refused HEAD). Hub stopped + file
  not cached: it retries the HEAD with backoff (1+2+4+8+8 s) and raises LocalEntryNotFoundError after ~23 s.
- `http_get` retries a short body (`cut_once`) after 1 s, with `Range: bytes=<bytes written>-`; it writes in 10 MiB
  chunks, so a cut within the first 10 MiB restarts the file without a Range. A reset (`reset_once`) is not retried:
  httpx2.ReadError propagates out of `http_get` and `hf_hub_download`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import socket
import socketserver
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FileServer", "HubServer", "Request"]

_HOST = "127.0.0.1"
_CRC32C_MAX_BYTES = 16 << 20  # pure-Python CRC32C runs at ~10 MB/s: above this, x-goog-hash carries md5 only
_LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
_ISO_DATE = "2024-01-01T00:00:00.000Z"
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


class Request(NamedTuple):
    """One request as received: `path` is percent-decoded and without its query string; header names are lower case
    (a repeated header's values are joined with ", ")."""

    method: str
    path: str
    headers: dict[str, str]


class _Unsatisfiable(Exception):
    """The Range header asks for bytes past the end (416)."""


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte, inclusive, of a single-range `Range` header; None to serve the whole body (no header, a
    syntactically invalid one or several ranges: a server may ignore those, RFC 9110 14.2)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header, re.IGNORECASE)
    if m is None or m.group(1) == m.group(2) == "":
        return None
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _Unsatisfiable
        return max(size - n, 0), size - 1
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, size - 1 if last == "" else min(int(last), size - 1)


@functools.cache
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


def _crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), the checksum GCS publishes in x-goog-hash (no dependency, hence slow)."""
    table, c = _crc32c_table(), 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


class _Digests(NamedTuple):
    md5_hex: str
    md5_b64: str
    crc32c_b64: str | None
    sha256_hex: str
    git_sha1: str  # the git blob id of the content, as the Hub's tree listing reports it in "oid"


@functools.lru_cache(maxsize=256)  # keyed on the bytes themselves: a bytes object caches its hash, equality short-circuits
def _digests(content: bytes) -> _Digests:
    md5 = hashlib.md5(content).digest()  # GCS's checksum, not a security use
    crc = base64.b64encode(struct.pack(">I", _crc32c(content))).decode() if len(content) <= _CRC32C_MAX_BYTES else None
    git = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # git's object id
    return _Digests(md5.hex(), base64.b64encode(md5).decode(), crc, hashlib.sha256(content).hexdigest(), git)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: _LocalServer):
        self.owner = owner
        self.open_connections: set[socket.socket] = set()
        self.reset_connections: set[socket.socket] = set()
        self.handler_threads: set[threading.Thread] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a reverse DNS look-up that can hang with no network): skip it
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        with self.connections_lock:
            self.handler_threads.add(threading.current_thread())
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.handler_threads.discard(threading.current_thread())

    def shutdown_request(self, request) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
            reset = request in self.reset_connections
            self.reset_connections.discard(request)
        if reset:  # close with no FIN first: linger 0 makes the kernel send RST
            try:
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            request.close()
        else:
            super().shutdown_request(request)

    def close_all_connections(self, timeout: float = 5.0) -> None:
        """Shuts every open connection down (waking the handler threads blocked reading the next keep-alive request)
        and waits for the handler threads to end, so that nothing is served or logged afterwards."""
        with self.connections_lock:
            connections, threads = list(self.open_connections), list(self.handler_threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the client went away (or we cut it off): nothing to report
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real clients (httpx's pool) expect
    server_version = "vitkit-test-server"
    server: _HTTPServer

    def log_message(self, format, *args) -> None:
        pass

    def _dispatch(self) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        with owner._lock:
            owner.requests.append(Request(self.command, unquote(split.path), headers))
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # any request body is left unread
            owner._send(self, 405, [("Allow", "GET, HEAD")], b"")
            return
        owner._handle(self, split.path, parse_qs(split.query), headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch


class _LocalServer:
    """What both servers share: the thread, the socket, the request log, the response writer."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.cut_once: dict[str, int] = {}
        self.reset_once: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (known once started; kept after stop)."""
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} not started")
        return f"http://{_HOST}:{self._port}"

    def start(self) -> _LocalServer:
        """Listens on a free port (the first time) or on the port of the previous start (after a stop)."""
        if self._httpd is not None:
            raise RuntimeError(f"{type(self).__name__} already running")
        self._httpd = _HTTPServer((_HOST, self._port), self)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}:{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the listening socket and every open connection: connecting is then refused."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_all_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handle(self, h: _Handler, raw_path: str, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        raise NotImplementedError

    def _take_cut(self, key: str) -> tuple[int, bool] | None:
        """(N bytes to send, reset?) if a cut is armed for `key`, disarming it."""
        with self._lock:
            if key in self.reset_once:
                return self.reset_once.pop(key), True
            if key in self.cut_once:
                return self.cut_once.pop(key), False
        return None

    def _send(self, h: _Handler, status: int, headers: list[tuple[str, str]], body: bytes, *,
              cut: tuple[int, bool] | None = None, length: int | None = None) -> None:
        """Writes the response; a HEAD gets the headers only. With `cut`, only the first N bytes of the body go out,
        then the connection is closed (FIN) or reset (RST)."""
        h.send_response(status)
        for name, value in headers:
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if h.command == "HEAD":
            return
        if cut is None:
            h.wfile.write(body)
            return
        n, reset = cut
        h.wfile.write(body[:n])
        h.wfile.flush()
        h.close_connection = True
        if reset:
            with h.server.connections_lock:
                h.server.reset_connections.add(h.connection)

    def _send_content(self, h: _Handler, content: bytes, headers: list[tuple[str, str]], cut_key: str,
                      error_416: tuple[list[tuple[str, str]], bytes]) -> None:
        """200 with the whole content, or 206 with the range asked for, or 416; `cut_key` names the armed cuts."""
        size = len(content)
        try:
            rng = _byte_range(h.headers.get("Range"), size)
        except _Unsatisfiable:
            err_headers, err_body = error_416
            self._send(h, 416, [*err_headers, ("Content-Range", f"bytes */{size}")], err_body)
            return
        cut = self._take_cut(cut_key) if h.command == "GET" else None
        if rng is None:
            self._send(h, 200, headers, content, cut=cut)
        else:
            first, last = rng
            self._send(h, 206, [*headers, ("Content-Range", f"bytes {first}-{last}/{size}")], content[first:last + 1], cut=cut)


class FileServer(_LocalServer):
    """Google Cloud Storage stand-in: serves `files` ({URL path: bytes}, paths like "/vit_models/imagenet21k/ViT-B_16.npz").

    Attributes (all mutable while running): `files`; `requests` (every request, a `Request`); `cut_once` /
    `reset_once` ({path: N}: the next GET of that path sends only N bytes of its body, then closes / resets).
    """

    def __init__(self, files: dict[str, bytes]):
        super().__init__()
        self.files = files

    def _lookup(self, path: str) -> tuple[str, bytes] | None:
        for key in (path, path.lstrip("/")):
            content = self.files.get(key)
            if content is not None:
                return key, content
        return None

    def _handle(self, h: _Handler, raw_path: str, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        path = unquote(raw_path)  # "%2B" -> "+" (a literal "+" stays "+": it is not a space in a path)
        found = self._lookup(path)
        xml = [("Content-Type", "application/xml; charset=UTF-8")]
        if found is None:
            body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
                    b"<Message>The specified key does not exist.</Message></Error>")
            self._send(h, 404, xml, body)
            return
        key, content = found
        d = _digests(content)
        gcs = [
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
            ("Last-Modified", _LAST_MODIFIED),
            ("ETag", f'"{d.md5_hex}"'),
            ("x-goog-generation", "1704067200000000"),
            ("x-goog-metageneration", "1"),
            ("x-goog-stored-content-encoding", "identity"),
            ("x-goog-stored-content-length", str(len(content))),
            ("x-goog-storage-class", "STANDARD"),
        ]
        # GCS sends one x-goog-hash header per checksum; HTTP clients join them: "crc32c=...==, md5=...=="
        if d.crc32c_b64 is not None:
            gcs.append(("x-goog-hash", f"crc32c={d.crc32c_b64}"))
        gcs.append(("x-goog-hash", f"md5={d.md5_b64}"))
        invalid_range = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidRange</Code>"
                         b"<Message>The requested range cannot be satisfied.</Message></Error>")
        self._send_content(h, content, gcs, key, (xml, invalid_range))


class HubServer(_LocalServer):
    """Hugging Face Hub stand-in, for `hf_hub_download(..., endpoint=server.url)` and `snapshot_download`.

    `repos`: {repo_id: {filename: bytes}}, the files of branch "main". `revisions`: {repo_id: {revision: files}},
    further branches or tags (a repo may appear only there). `gated`: {repo_id: token}: served only to requests with
    `Authorization: Bearer <token>` (no token -> 401, another token -> 403, both `X-Error-Code: GatedRepo`).

    Each revision's commit is the sha1 of its sorted file names and contents (`commit(repo_id, revision)`), so it
    changes when a test edits the files; a revision may also be given as that 40-hex commit. Every file is served as
    an LFS file would be: `ETag` and `X-Linked-Etag` = its sha256 (hence the cache's blob name), `X-Linked-Size`,
    `X-Repo-Commit`, served directly (no redirect to a CDN), byte ranges honoured.

    Errors: unknown repo -> 404 `RepoNotFound`, unknown revision -> 404 `RevisionNotFound`, unknown file -> 404
    `EntryNotFound` (with `X-Repo-Commit`, as the Hub sends it); any other path -> plain 404. Models only (no
    datasets/spaces). `cut_once` / `reset_once` keys are "repo_id/filename" (any revision), e.g. "org/name/model.npz".
    """

    def __init__(self, repos: dict[str, dict[str, bytes]], *, gated: dict[str, str] | None = None,
                 revisions: dict[str, dict[str, dict[str, bytes]]] | None = None):
        super().__init__()
        self.repos = repos
        self.revisions = revisions if revisions is not None else {}
        self.gated = gated if gated is not None else {}

    @staticmethod
    def commit_of(files: dict[str, bytes]) -> str:
        """The commit sha the server reports for a revision holding `files`."""
        h = hashlib.sha1()  # an identifier, as git's
        for name in sorted(files):
            h.update(name.encode() + b"\0" + _digests(files[name]).sha256_hex.encode() + b"\n")
        return h.hexdigest()

    def commit(self, repo_id: str, revision: str = "main") -> str:
        """The commit sha of `revision` (a branch, a tag or a commit) of `repo_id`, as served now."""
        files = self._branches(repo_id).get(revision)
        if files is None:
            raise KeyError(f"{repo_id}@{revision}")
        return self.commit_of(files)

    def _branches(self, repo_id: str) -> dict[str, dict[str, bytes]]:
        branches = {"main": self.repos[repo_id]} if repo_id in self.repos else {}
        branches.update(self.revisions.get(repo_id, {}))
        return branches

    def _resolve(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        branches = self._branches(repo_id)
        if revision in branches:
            return self.commit_of(branches[revision]), branches[revision]
        if _COMMIT_RE.fullmatch(revision):
            for files in branches.values():
                if self.commit_of(files) == revision:
                    return revision, files
        return None

    # --- errors, as the Hub signals them ---

    def _error(self, h: _Handler, status: int, code: str | None, message: str, extra: list[tuple[str, str]] | None = None) -> None:
        headers = [("Content-Type", "application/json; charset=utf-8"), *(extra or [])]
        if code is not None:
            headers += [("X-Error-Code", code), ("X-Error-Message", message)]
        self._send(h, status, headers, json.dumps({"error": message}).encode())

    def _check_repo(self, h: _Handler, repo_id: str, headers: dict[str, str]) -> bool:
        """True if the repo exists and the request may read it; otherwise the error is sent."""
        if repo_id not in self.repos and repo_id not in self.revisions:
            self._error(h, 404, "RepoNotFound", "Repository not found")
            return False
        token = self.gated.get(repo_id)
        if token is not None and headers.get("authorization") != f"Bearer {token}":
            if "authorization" not in headers:
                self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be "
                                                 "authenticated to access it. Please log in.")
            else:
                self._error(h, 403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized "
                                                 f"list. Visit https://huggingface.co/{repo_id} to ask for access.")
            return False
        return True

    def _revision(self, h: _Handler, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        resolved = self._resolve(repo_id, revision)
        if resolved is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return resolved

    # --- routes ---

    def _handle(self, h: _Handler, raw_path: str, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        segments = [unquote(s) for s in raw_path.split("/")[1:]]  # split before decoding: a revision may hold "%2F"
        if len(segments) >= 2 and segments[0] == "api" and segments[1] == "models" and h.command == "GET":
            self._api(h, segments[2:], query, headers)
            return
        for i in (2, 1):  # "org/name/resolve/..." or (a legacy id) "name/resolve/..."
            if len(segments) > i + 2 and segments[i] == "resolve":
                self._resolve_file(h, "/".join(segments[:i]), segments[i + 1], "/".join(segments[i + 2:]), headers)
                return
        self._error(h, 404, None, "Not Found")

    def _resolve_file(self, h: _Handler, repo_id: str, revision: str, filename: str, headers: dict[str, str]) -> None:
        if not self._check_repo(h, repo_id, headers):
            return
        resolved = self._revision(h, repo_id, revision)
        if resolved is None:
            return
        commit, files = resolved
        content = files.get(filename)
        if content is None:
            self._error(h, 404, "EntryNotFound", "Entry not found", [("X-Repo-Commit", commit)])
            return
        d = _digests(content)
        hub = [
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{d.sha256_hex}"'),
            ("X-Linked-Etag", f'"{d.sha256_hex}"'),
            ("X-Linked-Size", str(len(content))),
            ("X-Repo-Commit", commit),
        ]
        error_416 = ([("Content-Type", "application/json; charset=utf-8"), ("X-Repo-Commit", commit)],
                     json.dumps({"error": "Requested Range Not Satisfiable"}).encode())
        self._send_content(h, content, hub, f"{repo_id}/{filename}", error_416)

    def _api(self, h: _Handler, rest: list[str], query: dict[str, list[str]], headers: dict[str, str]) -> None:
        # /api/models/{repo}[/revision/{rev}]  and  /api/models/{repo}/tree/{rev}[/{path}]
        for i in (2, 1):
            if len(rest) > i + 1 and rest[i] in ("revision", "tree"):
                repo_id, kind, revision, sub = "/".join(rest[:i]), rest[i], rest[i + 1], "/".join(rest[i + 2:])
                break
        else:
            if not 1 <= len(rest) <= 2:
                self._error(h, 404, None, "Not Found")
                return
            repo_id, kind, revision, sub = "/".join(rest), "revision", "main", ""
        if kind == "revision" and sub:
            self._error(h, 404, None, "Not Found")
            return
        if not self._check_repo(h, repo_id, headers):
            return
        resolved = self._revision(h, repo_id, revision)
        if resolved is None:
            return
        commit, files = resolved
        if kind == "revision":
            body = self._model_info(repo_id, commit, files)
        else:
            recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
            body = self._tree(files, sub.strip("/"), recursive)
            if body is None:
                self._error(h, 404, "EntryNotFound", f"{sub} does not exist on \"{revision}\"", [("X-Repo-Commit", commit)])
                return
        self._send(h, 200, [("Content-Type", "application/json; charset=utf-8"), ("X-Repo-Commit", commit)],
                   json.dumps(body).encode())

    def _model_info(self, repo_id: str, commit: str, files: dict[str, bytes]) -> dict:
        gated = "manual" if repo_id in self.gated else False
        return {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit, "lastModified": _ISO_DATE, "createdAt": _ISO_DATE,
            "private": False, "gated": gated, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": [{"rfilename": name} for name in sorted(files)],
        }

    @staticmethod
    def _tree(files: dict[str, bytes], sub: str, recursive: bool) -> list[dict] | None:
        """The tree listing under folder `sub` ("" = root), as the Hub's /tree endpoint returns it; None if no such folder."""
        folders = {"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)}
        if sub and sub not in folders:
            return None
        prefix = f"{sub}/" if sub else ""

        def listed(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix):])

        entries: list[dict] = []
        for folder in sorted(folders):
            if listed(folder):
                oid = hashlib.sha1(folder.encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
        for name in sorted(files):
            if listed(name):
                d = _digests(files[name])
                size = len(files[name])
                entries.append({"type": "file", "oid": d.git_sha1, "size": size, "path": name,
                                "lfs": {"oid": d.sha256_hex, "size": size, "pointerSize": 134}})
        return entries
