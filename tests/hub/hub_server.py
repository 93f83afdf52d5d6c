"""A small but real Hugging Face Hub look-alike for tests: stdlib ``ThreadingHTTPServer`` on 127.0.0.1.

It speaks the subset of the Hub HTTP API that ``huggingface_hub`` (2.x) uses for ``create_repo``,
``create_branch``, ``upload_folder`` (preupload + NDJSON commit, pull requests), ``repo_info``,
``list_repo_tree`` and ``hf_hub_download``/``snapshot_download`` (HEAD/GET ``/resolve`` with ``Range``).

State is real: every repo has commits (sha1 over parent + message + file oids), branches (``main``,
user branches, ``refs/pr/N``), blobs with their git oids; model files matching the default
``.gitattributes`` (``*.safetensors``, ``*.bin``...) are reported as LFS objects (sha256 etag), like the
Hub does. Auth: a token table; writes need a valid write token, private repos need a valid token,
a bad token gets 401 ``Invalid credentials in Authorization header``. Unknown repo/revision/file get
404 with the ``X-Error-Code`` header the client maps to its typed errors. ``drop`` makes the server
cut the connection in the middle of a file download ("once" then serve normally, or "always"); ``oversend`` makes it
send more bytes of a file than it lists (N more, with a Content-Length that says so, or "endless": a body with no
length that goes on until the client hangs up), counting what it sent in ``sent``.

Run standalone for a demo: ``python tests/hub/hub_server.py --port 8765 --token hf_demo``.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.npz")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)


def lfs_pointer(data: bytes) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
        f"size {len(data)}\n"
    ).encode()


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> sha
    discussions: dict[int, dict] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in self.commits:
            return self.commits[revision]
        return None


class HubState:
    def __init__(self, tokens: dict[str, str] | None = None, read_only_tokens: set[str] | None = None):
        self.lock = threading.RLock()
        self.tokens: dict[str, str] = dict(tokens or {})  # token -> user name
        self.read_only_tokens: set[str] = set(read_only_tokens or ())
        self.repos: dict[str, Repo] = {}
        self.drop: dict[str, str] = {}  # file path in repo -> "once" | "always"
        self.oversend: dict[str, int | str] = {}  # file path in repo -> extra bytes after the file, or "endless"
        self.sent: dict[str, int] = {}  # body bytes sent per file path by oversend
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, range)
        self._counter = 0

    # -- helpers used by tests ------------------------------------------------------------------
    def downloads(self, repo_id: str | None = None) -> list[str]:
        """Paths of file bodies served (GET /resolve) so far."""
        out = []
        for method, path, _ in self.requests:
            if method == "GET" and "/resolve/" in path and (repo_id is None or path.startswith(f"/{repo_id}/")):
                out.append(unquote(path.split("/resolve/", 1)[1].split("/", 1)[1]))
        return out

    def new_commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, bytes]) -> Commit:
        with self.lock:
            self._counter += 1
            body = json.dumps(
                {"parent": parent, "message": message, "n": self._counter,
                 "files": sorted((p, git_blob_oid(d)) for p, d in files.items())}
            ).encode()
            sha = hashlib.sha1(body).hexdigest()
            commit = Commit(sha, parent, message, dict(files), _now())
            repo.commits[sha] = commit
            return commit

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private)
            first = self.new_commit(repo, None, "initial commit", {".gitattributes": GITATTRIBUTES})
            repo.refs["main"] = first.sha
            self.repos[repo_id] = repo
            return repo


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HubServer"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    def _base(self) -> str:
        return f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address[:2]}"

    def _body(self) -> bytes:
        return self.body

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _user(self, required: bool = False, write: bool = False) -> str | None:
        auth = self.headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token:
            user = self.state.tokens.get(token)
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            if write and token in self.state.read_only_tokens:
                raise HubError(403, "You don't have the rights to write to this repository (read-only token)")
            return user
        if required:
            raise HubError(401, "You must be authenticated to access this resource")
        return None

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self._user(required=write, write=write)
        repo = self.state.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private and user is None:
            raise HubError(401, "Repository not found", "RepoNotFound")  # what the Hub answers anonymous users
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        seg = [unquote(s) for s in url.path.split("/")[1:]]
        self.body = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
        with self.state.lock:
            self.state.requests.append((self.command, url.path, self.headers.get("Range")))
        try:
            self._route(seg)
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json({"error": e.message, **e.extra}, e.status, headers)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = lambda self: self._dispatch()  # noqa: E731

    # -- routes ----------------------------------------------------------------------------------
    def _route(self, seg: list[str]):
        m = self.command
        if seg[:1] == ["api"]:
            if seg[1:] == ["repos", "create"] and m == "POST":
                return self.create_repo()
            if seg[1:] == ["validate-yaml"] and m == "POST":
                self._body()
                return self._json({"errors": [], "warnings": []})
            if seg[1:] == ["whoami-v2"] and m == "GET":
                user = self._user(required=True)
                return self._json({"type": "user", "name": user, "auth": {"accessToken": {"role": "write"}}})
            if len(seg) >= 4 and seg[1] == "models":
                repo_id, rest = f"{seg[2]}/{seg[3]}", seg[4:]
                if not rest and m == "GET":
                    return self.repo_info(repo_id, "main")
                if rest[:1] == ["revision"] and m == "GET":
                    return self.repo_info(repo_id, "/".join(rest[1:]))
                if rest[:1] == ["tree"] and m == "GET":
                    return self.tree(repo_id, rest[1], "/".join(rest[2:]))
                if rest[:1] == ["preupload"] and m == "POST":
                    return self.preupload(repo_id, "/".join(rest[1:]))
                if rest[:1] == ["commit"] and m == "POST":
                    return self.commit(repo_id, "/".join(rest[1:]))
                if rest[:1] == ["branch"] and m == "POST":
                    return self.create_branch(repo_id, "/".join(rest[1:]))
                if rest == ["refs"] and m == "GET":
                    return self.refs(repo_id)
                if rest == ["discussions"] and m == "POST":
                    return self.create_discussion(repo_id)
                if rest[:1] == ["discussions"] and len(rest) == 2 and m == "GET":
                    return self.discussion(repo_id, int(rest[1]))
            raise HubError(404, f"no such endpoint: {m} {self.path}")
        if len(seg) >= 5 and seg[2] == "resolve" and m in ("GET", "HEAD"):
            return self.resolve(f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        raise HubError(404, f"no such endpoint: {m} {self.path}")

    def create_repo(self):
        user = self._user(required=True, write=True)
        payload = json.loads(self._body() or b"{}")
        name, org = payload.get("name"), payload.get("organization") or user
        if payload.get("type", "model") not in ("model", None):
            raise HubError(400, "only model repos are supported by this test server")
        repo_id = f"{org}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self.state.lock:
            if repo_id in self.state.repos:
                raise HubError(409, "You already created this model repo", extra={"url": f"{self._base()}/{repo_id}"})
            self.state.create_repo(repo_id, private)
        self._json({"url": f"{self._base()}/{repo_id}", "name": repo_id})

    def repo_info(self, repo_id: str, revision: str):
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        self._json({
            "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit.sha,
            "private": repo.private, "lastModified": commit.date, "tags": [], "downloads": 0, "likes": 0,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def _entry(self, path: str, data: bytes) -> dict:
        if is_lfs(path):
            pointer = lfs_pointer(data)
            return {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(pointer),
                    "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}}
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}

    def tree(self, repo_id: str, revision: str, prefix: str):
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        if prefix and prefix not in commit.files and not any(p.startswith(base) for p in commit.files):
            raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
        entries, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            rel = path[len(base):]
            if "/" in rel and not recursive:
                folders.add(base + rel.split("/", 1)[0])
                continue
            if "/" in rel:
                parts = rel.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    folders.add(base + "/".join(parts[:i]))
            entries.append(self._entry(path, commit.files[path]))
        entries += [{"type": "directory", "path": f, "size": 0, "oid": hashlib.sha1(f.encode()).hexdigest()}
                    for f in sorted(folders)]
        self._json(entries)

    def preupload(self, repo_id: str, revision: str):
        repo = self._repo(repo_id, write=True)
        commit = self._commit(repo, revision)
        payload = json.loads(self._body() or b"{}")
        files = []
        for f in payload.get("files", []):
            entry = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            if f["path"] in commit.files:
                entry["oid"] = git_blob_oid(commit.files[f["path"]])
            files.append(entry)
        self._json({"files": files, "commitOid": commit.sha})

    def commit(self, repo_id: str, revision: str):
        repo = self._repo(repo_id, write=True)
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.state.lock:
            base = self._commit(repo, revision)
            if revision not in repo.refs:
                raise HubError(400, f"Invalid rev id: {revision} is not a branch")
            pr_url = None
            if self.query.get("create_pr") in ("1", "true"):
                num = self._open_pr(repo, lines[0]["value"].get("summary", "PR"), revision)
                revision = f"refs/pr/{num}"
                pr_url = f"{self._base()}/{repo_id}/discussions/{num}"
            files = dict(base.files)
            summary = "commit"
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "header":
                    summary = value.get("summary") or summary
                    parent = value.get("parentCommit")
                    if parent and parent != base.sha:
                        raise HubError(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                else:  # lfsFile: this server never asks for LFS uploads (preupload answers "regular")
                    raise HubError(422, f"unsupported commit operation {key!r}")
            new = self.state.new_commit(repo, base.sha, summary, files)
            repo.refs[revision] = new.sha
        out = {"success": True, "commitOid": new.sha, "commitMessage": summary, "hookOutput": "",
               "commitUrl": f"{self._base()}/{repo_id}/commit/{new.sha}"}
        if pr_url:
            out["pullRequestUrl"] = pr_url
        self._json(out)

    def create_branch(self, repo_id: str, branch: str):
        repo = self._repo(repo_id, write=True)
        payload = json.loads(self._body() or b"{}")
        with self.state.lock:
            if branch in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self._commit(repo, payload.get("startingPoint") or "main")
            repo.refs[branch] = start.sha
        self._json({})

    def refs(self, repo_id: str):
        repo = self._repo(repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                    for n, s in repo.refs.items() if not n.startswith("refs/")]
        prs = [{"name": n, "ref": n, "targetCommit": s} for n, s in repo.refs.items() if n.startswith("refs/pr/")]
        self._json({"branches": branches, "tags": [], "converts": [], "pullRequests": prs})

    def _open_pr(self, repo: Repo, title: str, base: str) -> int:
        num = len(repo.discussions) + 1
        repo.refs[f"refs/pr/{num}"] = self._commit(repo, base).sha
        repo.discussions[num] = {"num": num, "title": title, "base": base}
        return num

    def create_discussion(self, repo_id: str):
        repo = self._repo(repo_id, write=True)
        payload = json.loads(self._body() or b"{}")
        if not payload.get("pullRequest"):
            raise HubError(400, "only pull requests are supported by this test server")
        with self.state.lock:
            num = self._open_pr(repo, payload.get("title", "PR"), "main")
        self._json({"num": num, "url": {"web": f"{self._base()}/{repo_id}/discussions/{num}"}})

    def discussion(self, repo_id: str, num: int):
        repo = self._repo(repo_id)
        d = repo.discussions.get(num)
        if d is None:
            raise HubError(404, "Discussion not found")
        self._json({
            "num": num, "title": d["title"], "author": {"name": "mmzoo"}, "status": "draft",
            "createdAt": _now(), "repo": {"name": repo_id, "type": "model"},
            "isPullRequest": True, "events": [], "changes": {"base": f"refs/heads/{d['base']}"},
            "filesWithConflicts": [], "diff": "",
        })

    def resolve(self, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if is_lfs(path):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_oid(data)}"'
        start, end, status = 0, len(data), 200
        rng = self.headers.get("Range")
        if rng and self.command == "GET":
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) > len(data):
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        extra = self.state.oversend.get(path) if self.command == "GET" else None
        if extra is not None:
            self._oversend(status, body, headers, extra, path)
            return
        mode = self.state.drop.get(path) if self.command == "GET" else None
        if mode:
            if mode == "once":
                with self.state.lock:
                    self.state.drop.pop(path, None)
            # Promise the whole body, send at most half of the file, then cut the connection.
            cut = max(0, len(data) // 2 - start)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, body, headers, content_type="application/octet-stream")


    ENDLESS_CAP = 1 << 30  # an "endless" body still ends here, so a client that never stops cannot hang the tests

    def _oversend(self, status: int, body: bytes, headers: dict, extra: int | str, path: str) -> None:
        """The file's bytes, then zeros: ``extra`` more (announced in Content-Length) or, for "endless", a body without
        a length that only ends when the client closes the connection."""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if extra != "endless":
            self.send_header("Content-Length", str(len(body) + int(extra)))
        for k, v in headers.items():
            if k != "Content-Range":
                self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        remaining = self.ENDLESS_CAP if extra == "endless" else int(extra)
        block = b"\0" * (64 << 10)
        try:
            self.wfile.write(body)
            self._count(path, len(body))
            while remaining > 0:
                piece = block[:remaining]
                self.wfile.write(piece)
                self._count(path, len(piece))
                remaining -= len(piece)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading and hung up
            pass

    def _count(self, path: str, n: int) -> None:
        with self.state.lock:
            self.state.sent[path] = self.state.sent.get(path, 0) + n


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: HubState, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), Handler)
        self.state = state
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self.thread = threading.Thread(target=self.serve_forever, name="hub-server", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Local Hub look-alike for mmzoo demos and tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", action="append", default=[], help="accepted token (repeatable)")
    parser.add_argument("--user", default="mmzoo")
    args = parser.parse_args()
    server = HubServer(HubState({t: args.user for t in (args.token or ["hf_demo"])}), args.host, args.port)
    print(f"serving a Hub look-alike on {server.url} (HF_ENDPOINT={server.url})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        time.sleep(0)


if __name__ == "__main__":
    main()
