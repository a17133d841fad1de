"""A loopback stand-in for the Hugging Face Hub's file endpoints, for tests (the real Hub is unreachable).

Serves ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}`` with the headers huggingface_hub reads
(X-Repo-Commit, ETag, Content-Length) and the X-Error-Code values it turns into exceptions.
Point ``HF_ENDPOINT`` at :attr:`HubServer.url`.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> revision -> path -> bytes
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_folder(self, repo_id: str, folder: Path, revision: str = "main") -> None:
        files = {
            str(p.relative_to(folder)).replace("\\", "/"): p.read_bytes()
            for p in Path(folder).rglob("*")
            if p.is_file()
        }
        self.repos.setdefault(repo_id, {})[revision] = files

    @staticmethod
    def commit(repo_id: str, revision: str) -> str:
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _error(self, code: int, error_code: str) -> None:
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", error_code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                path = unquote(self.path.split("?")[0]).lstrip("/")
                if "/resolve/" not in path:
                    return self._error(404, "EntryNotFound")
                repo_id, rest = path.split("/resolve/", 1)
                revision, _, filename = rest.partition("/")
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound")
                commit = next((r for r in hub.repos[repo_id] if revision in (r, hub.commit(repo_id, r))), None)
                if commit is None:
                    return self._error(404, "RevisionNotFound")
                files = hub.repos[repo_id][commit]
                if filename not in files:
                    return self._error(404, "EntryNotFound")
                data = files[filename]
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.commit(repo_id, commit))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

        return Handler
