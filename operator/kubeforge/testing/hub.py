"""A loopback stand-in for the Hugging Face Hub: the few endpoints `huggingface_hub.snapshot_download`
uses, serving repositories from local folders, and recording the Authorization header it receives.

Endpoints (https://huggingface.co/docs/hub/api): `GET /api/models/<org>/<model>/revision/<rev>`
(the repository's files, `siblings`, and its commit `sha`), `GET
/api/models/<org>/<model>/tree/<sha>?recursive=true` (the files with their sizes) and `HEAD`/`GET
/<org>/<model>/resolve/<rev>/<path>` (a file, with the `X-Repo-Commit` and `ETag` headers the
client checks). A repository that needs a token answers 401 without the right one, as the Hub does
for a gated or private repository.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class HubRepository:
    """A repository's files (a local folder) at one revision; `token`: the token it requires."""

    root: Path
    revision: str = "main"
    token: str | None = None

    @property
    def sha(self) -> str:
        return hashlib.sha1(f"{self.root}@{self.revision}".encode()).hexdigest()

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())


@dataclass
class FakeHub:
    """Repositories by id (`org/model`); `authorizations` lists every Authorization header received."""

    repositories: dict[str, HubRepository] = field(default_factory=dict)
    authorizations: list[str | None] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    url: str = ""


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _repository(self, repo_id: str, revision: str) -> HubRepository | None:
            repo = hub.repositories.get(repo_id)
            auth = self.headers.get("Authorization")
            hub.authorizations.append(auth)
            if repo is None or revision not in (repo.revision, repo.sha):
                self._error(404, "RepositoryNotFound" if repo is None else "RevisionNotFound")
                return None
            if repo.token is not None and auth != f"Bearer {repo.token}":
                self._error(401, "GatedRepo")
                return None
            return repo

        def _error(self, code: int, kind: str) -> None:
            body = json.dumps({"error": kind}).encode()
            self.send_response(code)
            self.send_header("X-Error-Code", kind)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _route(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                repo_id, revision = f"{parts[2]}/{parts[3]}", "/".join(parts[5:])
                repo = self._repository(repo_id, revision)
                if repo is None:
                    return
                info = {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.sha,
                    "private": repo.token is not None,
                    "siblings": [{"rfilename": f} for f in repo.files()],
                }
                self._send(json.dumps(info).encode(), "application/json", repo)
                return
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                repo = self._repository(f"{parts[2]}/{parts[3]}", parts[5])
                if repo is None:
                    return
                entries = [
                    {"type": "file", "path": f, "size": (repo.root / f).stat().st_size, "oid": repo.sha}
                    for f in repo.files()
                ]
                self._send(json.dumps(entries).encode(), "application/json", repo)
                return
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id, revision = f"{parts[0]}/{parts[1]}", parts[3]
                repo = self._repository(repo_id, revision)
                if repo is None:
                    return
                file = repo.root / "/".join(parts[4:])
                if not file.is_file():
                    self._error(404, "EntryNotFound")
                    return
                self._send(file.read_bytes(), "application/octet-stream", repo)
                return
            self._error(404, "NotFound")

        def _send(self, body: bytes, content_type: str, repo: HubRepository) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = _route
        do_HEAD = _route

    return Handler


@contextmanager
def serve_hub(hub: FakeHub | None = None) -> Iterator[FakeHub]:
    """Run a FakeHub on 127.0.0.1; its `url` is what HF_ENDPOINT should say."""
    hub = hub or FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
