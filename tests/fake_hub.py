"""A small Hugging Face Hub on 127.0.0.1 that speaks the part of the HTTP API huggingface_hub uses to push and pull.

Model repos only; files travel base64 inside the NDJSON commit ("regular" upload mode), so no LFS or Xet. Faults can
be injected per request path: an HTTP 500, a dropped connection, or a body cut short of its Content-Length.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"commits": {sha: {path: bytes}}, "refs": {"main": sha}}
        self.faults: list[tuple[str, str, str]] = []  # (method, path regex, kind), each used once
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def inject(self, method: str, path_regex: str, kind: str) -> None:
        """Make the next matching request fail: kind is "500", "drop" or "truncate"."""
        self.faults.append((method, path_regex, kind))

    def _take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for k, (m, regex, kind) in enumerate(self.faults):
                if m == method and re.search(regex, path):
                    del self.faults[k]
                    return kind
        return None

    def _commit(self, repo_id: str, revision: str, files: dict[str, bytes]) -> str:
        repo = self.repos[repo_id]
        parent = repo["refs"].get(revision)
        tree = dict(repo["commits"][parent]) if parent else {}
        tree.update(files)
        sha = hashlib.sha1(
            json.dumps(sorted((p, hashlib.sha256(b).hexdigest()) for p, b in tree.items())).encode()
            + (parent or "").encode()
        ).hexdigest()
        repo["commits"][sha] = tree
        repo["refs"][revision] = sha
        return sha

    def _resolve(self, repo_id: str, revision: str) -> tuple[str, dict] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        sha = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
        return (sha, repo["commits"][sha]) if sha else None

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, content_type="application/json"):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status, message, code=None):
                headers = {"X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, {"error": message}, headers)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _dispatch(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                body = self._body() if self.command == "POST" else b""
                fault = hub._take_fault(self.command, path)
                if fault == "500":
                    return self._error(500, "injected server error")
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if self.command == "POST" and path == "/api/repos/create":
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    if repo_id in hub.repos:
                        body = {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo_id}"}
                        return self._send(409, body, {"X-Error-Message": body["error"]})
                    hub.repos[repo_id] = {"commits": {}, "refs": {}}
                    hub._commit(repo_id, "main", {".gitattributes": b""})
                    return self._send(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                if self.command == "POST" and path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|revision|tree)/([^/]+)(/.*)?", path)
                if match:
                    repo_id, action, revision, rest = match.groups()
                    if repo_id not in hub.repos:
                        return self._error(404, "Repository not found", "RepoNotFound")
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(
                            200,
                            {
                                "files": [
                                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                                ]
                            },
                        )
                    if action == "commit":
                        files = {}
                        for line in body.decode().splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                            elif item["key"] != "header":
                                return self._error(400, f"unsupported commit operation {item['key']}")
                        sha = hub._commit(repo_id, revision, files)
                        return self._send(
                            200,
                            {
                                "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}",
                                "commitOid": sha,
                                "pullRequestUrl": None,
                            },
                        )
                    resolved = hub._resolve(repo_id, revision)
                    if resolved is None:
                        return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                    sha, tree = resolved
                    if action == "revision":
                        return self._send(
                            200, {"id": repo_id, "sha": sha, "siblings": [{"rfilename": p} for p in sorted(tree)]}
                        )
                    prefix = (rest or "").strip("/")
                    entries = [
                        {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                        for p, b in sorted(tree.items())
                        if not prefix or p.startswith(prefix + "/")
                    ]
                    return self._send(200, entries)
                match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if match and self.command in ("GET", "HEAD"):
                    repo_id, revision, file_path = match.groups()
                    if repo_id not in hub.repos:
                        return self._error(404, "Repository not found", "RepoNotFound")
                    resolved = hub._resolve(repo_id, revision)
                    if resolved is None:
                        return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                    sha, tree = resolved
                    if file_path not in tree:
                        return self._error(404, "Entry not found", "EntryNotFound")
                    content = tree[file_path]
                    headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'}
                    if fault == "truncate" and self.command == "GET":
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(content)))
                        for key, value in headers.items():
                            self.send_header(key, value)
                        self.end_headers()
                        self.wfile.write(content[: len(content) // 2])
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return None
                    return self._send(200, content, headers, content_type="application/octet-stream")
                return self._error(404, f"no route for {self.command} {path}")

            do_GET = do_HEAD = do_POST = _dispatch

        return Handler
