"""A loopback fake of the Hugging Face Hub, enough of it for ``huggingface_hub`` (2.x) to download from.

Endpoints (what ``HfApi.resolve_revision`` and ``model_info(files_metadata=True)`` call, and ``hf_hub_download``,
``dry_run`` or not):

- ``GET /api/models/{repo_id}[/revision/{rev}]`` → ``{"id", "sha", "siblings": [{rfilename, size, blobId, lfs?}]}``
- ``HEAD /{repo_id}/resolve/{rev}/{path}`` → ``X-Repo-Commit``, ``ETag`` (the git blob id), and for LFS files
  ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``; ``Content-Length``
- ``GET /{repo_id}/resolve/{rev}/{path}`` → the bytes; ``Range: bytes=N-`` → 206 with ``Content-Range``

Errors carry the hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
``GatedRepo``) so that ``huggingface_hub`` raises its own typed exceptions. Knobs for the failure tests:
``token`` (requests without ``Authorization: Bearer <token>`` get 401 GatedRepo), ``cut_after`` (path → N: the first
GET of that file sends N bytes, then drops the connection), ``corrupt`` (paths served with one byte flipped, while the
metadata keeps the good hashes), ``gone`` (paths still listed by the API but 404 on download, as when a file is
deleted between the two). Every request is logged in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".pth", ".bin", ".model")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1()
            for path in sorted(self.files):
                digest.update(path.encode() + b"\0" + self.files[path])
            self.commit = digest.hexdigest()

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def sibling(self, path: str) -> dict[str, object]:
        data = self.files[path]
        entry: dict[str, object] = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        if self.is_lfs(path):
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return entry


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    """``with FakeHub([FakeRepo(...)]) as hub:`` serves on ``hub.url`` until the block ends."""

    repos: list[FakeRepo]
    token: str | None = None
    cut_after: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_id = {r.repo_id: r for r in self.repos}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def file_gets(self, path: str) -> list[Request]:
        """The GET requests for one file, in order."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + path)]


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response sets Content-Length

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body: no Nagle wait

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        # -- helpers ----------------------------------------------------------------------------------------------

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"", *, send_body: bool = True) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body and body:
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, *, send_body: bool, commit: str | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
            if commit:
                headers["X-Repo-Commit"] = commit
            self._send(status, headers, body, send_body=send_body)

        def _serve(self, *, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub._lock:
                hub.requests.append(
                    Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
                )
            api, resolve = _API.match(path), _RESOLVE.match(path)
            match = api or resolve
            if match is None:
                self._error(404, "", f"no route for {path}", send_body=body)
                return
            repo = hub._by_id.get(match["repo"])
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {match['repo']} not found", send_body=body)
                return
            if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                msg = f"Access to model {repo.repo_id} is restricted. You must be authenticated to access it."
                self._error(401, "GatedRepo", msg, send_body=body)
                return
            rev = match["rev"] or "main"
            if rev not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", send_body=body)
                return
            if api is not None:
                info = {"id": repo.repo_id, "sha": repo.commit, "siblings": [repo.sibling(p) for p in repo.files]}
                self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), send_body=body)
                return
            self._file(repo, match["path"], body=body)

        def _file(self, repo: FakeRepo, path: str, *, body: bool) -> None:
            if path not in repo.files or path in hub.gone:
                self._error(404, "EntryNotFound", f"{path} does not exist", send_body=body, commit=repo.commit)
                return
            data = repo.files[path]
            sibling = repo.sibling(path)
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{sibling["blobId"]}"', "Accept-Ranges": "bytes"}
            if repo.is_lfs(path):
                headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
                headers["X-Linked-Size"] = str(len(data))
            if path in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            status = 200
            if rng and body:
                start = int(rng.group(1))
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            payload = data[start:]
            headers["Content-Length"] = str(len(payload))
            if not body:
                self._send(status, headers, send_body=False)
                return
            with hub._lock:
                cut = hub.cut_after.pop(path, None)
            if cut is not None:  # send part of the body, then drop the connection
                self._send(status, headers, payload[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(status, headers, payload)

    return Handler
