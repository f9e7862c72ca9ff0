"""A small Hugging Face Hub on loopback, for testing push and hub loading offline with the real client.

No package serves the Hub's upload API, so the tests run this one: a standard library
``ThreadingHTTPServer`` on 127.0.0.1 (port 0), started in-process by the ``hub`` fixture, storing
repos in a temporary folder. It speaks the subset of the Hub API that ``huggingface_hub`` uses to
create repos, upload (regular files inline, LFS batch + PUT, or Xet through a ``local://`` CAS
folder that ``hf_xet`` reads and writes itself), commit (branches and ``refs/pr/N``) and download
(revision, tree, resolve with HEAD and Range). Endpoint shapes follow huggingface_hub 2.4.0 (its
``HfApi`` calls, and the Hub's own API documentation); ``tests/hub/test_hub_contract.py`` fails when
a newer client calls them differently.

Auth: one valid token (``hub.token``). Writes, and reads of private repos, need it; any other
``Authorization`` gets 401, as on the Hub. Every request is logged (``hub.requests``) so that tests
can assert, for instance, that a dry run sent no write request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

VALID_TOKEN = "hf_loopback_valid_token_0123456789"
USER = "tester"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    """A file at a commit: regular (stored inline), LFS (stored in the blob store) or Xet (in the CAS)."""

    size: int
    sha256: str
    blob_id: str
    lfs: bool
    xet_hash: str | None = None


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    files: dict[str, Entry]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1" -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    prs: int = 0


@dataclass
class LoggedRequest:
    method: str
    path: str
    authorized: bool
    status: int = 0


class HttpError(Exception):
    """An HTTP error answer: status, Hub error code (X-Error-Code) and message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class LoopbackHub:
    """The hub's state plus the HTTP server; ``url`` is what goes into ``endpoint=`` / ``HF_ENDPOINT``."""

    def __init__(self, root: Path, *, token: str = VALID_TOKEN) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.cas = self.root / "cas"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.cas.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[LoggedRequest] = []
        self.lock = threading.RLock()
        self._counter = 0
        self._xet_index: dict[str, str] = {}  # sha256 -> xet file hash, read from the CAS shards
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> LoopbackHub:
        self._thread = threading.Thread(target=self.server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- helpers for tests ------------------------------------------------------------------------
    def write_requests(self) -> list[LoggedRequest]:
        """Requests that could change state (anything but GET and HEAD)."""
        return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        return self.repos[(repo_type, repo_id)].refs[revision]

    def files_at(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, Entry]:
        repo = self.repos[(repo_type, repo_id)]
        return dict(repo.commits[self.resolve(repo, revision)].files)

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        return len(self.repos[(repo_type, repo_id)].commits)

    def read_file(self, entry: Entry) -> bytes:
        return (self.blobs / entry.sha256).read_bytes()

    # -- storage -----------------------------------------------------------------------------------
    def new_oid(self, *parts: str) -> str:
        with self.lock:
            self._counter += 1
            seed = "\n".join((str(self._counter), str(time.time_ns()), *parts))
        return hashlib.sha1(seed.encode()).hexdigest()

    def store_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blobs / sha
        if not path.exists():
            tmp = path.with_name(f"{sha}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def xet_hash_for(self, sha256: str) -> str | None:
        with self.lock:
            if sha256 not in self._xet_index:
                self._xet_index.update(read_xet_shards(self.cas))
            return self._xet_index.get(sha256)

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
        sha = self.store_blob(GITATTRIBUTES)
        first = Commit(
            oid=self.new_oid(repo_id),
            parent=None,
            title="initial commit",
            message="",
            files={".gitattributes": Entry(len(GITATTRIBUTES), sha, git_blob_sha1(GITATTRIBUTES), False)},
        )
        repo.commits[first.oid] = first
        repo.refs["main"] = first.oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def resolve(self, repo: Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in repo.commits:
            return revision
        raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def read_xet_shards(cas: Path) -> dict[str, str]:
    """Map sha256 -> Xet file hash from the MDB shard files hf_xet wrote into a ``local://`` CAS.

    A shard holds a file-info section: for each file a 48-byte header (file hash, flags, entry
    count), its segment entries (48 bytes each), verification entries when flagged, and a metadata
    extension carrying the sha256 when flagged; a header of all 0xff bytes ends the section.
    """
    out: dict[str, str] = {}
    for shard in cas.rglob("*.mdb"):
        data = shard.read_bytes()
        try:
            out.update(_parse_shard(data))
        except (struct.error, ValueError, IndexError):
            continue
    return out


_SHARD_HEADER = 48
_FLAG_VERIFICATION = 1 << 31
_FLAG_METADATA_EXT = 1 << 30


def _xet_hex(raw: bytes) -> str:
    """Xet prints a 32-byte hash as four little-endian u64 words, each as 16 hex digits.

    The sha256 in the metadata extension is stored the same way.
    """
    return "".join(f"{w:016x}" for w in struct.unpack("<4Q", raw))


def _parse_shard(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = _SHARD_HEADER
    while pos + 48 <= len(data):
        file_hash = data[pos : pos + 32]
        if file_hash == b"\xff" * 32:
            break
        flags, count = struct.unpack_from("<II", data, pos + 32)
        pos += 48 + 48 * count
        if flags & _FLAG_VERIFICATION:
            pos += 48 * count
        if flags & _FLAG_METADATA_EXT:
            out[_xet_hex(data[pos : pos + 32])] = _xet_hex(file_hash)
            pos += 48
    return out


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # -- plumbing -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        # Always drain the body, even when it is ignored, or keep-alive corrupts the next request.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _auth(self) -> bool | None:
        """True: the valid token; False: some other token; None: no Authorization header."""
        header = self.headers.get("Authorization")
        if header is None:
            return None
        return header == f"Bearer {self.hub.token}"

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        auth = self._auth()
        logged = LoggedRequest(method, self.path, auth is True)
        with self.hub.lock:
            self.hub.requests.append(logged)
        try:
            if auth is False and not split.path.startswith("/_lfs/"):
                raise HttpError(401, "Invalid credentials in Authorization header")
            status, payload, headers = self._route(method, split.path, query, body, auth is True)
        except HttpError as exc:
            status, headers = exc.status, {"X-Error-Message": exc.message}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            payload = {"error": exc.message}
        except Exception as exc:  # a bug in this server: answer 500 so that the test shows it
            status, headers, payload = 500, {"X-Error-Message": repr(exc)}, {"error": repr(exc)}
        logged.status = status
        self._send(method, status, payload, headers)

    def _send(self, method: str, status: int, payload: Any, headers: dict[str, str]) -> None:
        if isinstance(payload, bytes):
            data, ctype = payload, "application/octet-stream"
        elif payload is None:
            data, ctype = b"", "application/json"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", ctype))
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    # -- routing --------------------------------------------------------------------------------------
    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        seg = [unquote(s) for s in path.strip("/").split("/")]
        if path == "/api/whoami-v2" and method == "GET":
            if not authed:
                raise HttpError(401, "Invalid credentials in Authorization header")
            return 200, {"type": "user", "name": USER, "auth": {"accessToken": {"role": "write"}}}, {}
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body or b"{}"), authed)
        if path == "/api/validate-yaml" and method == "POST":
            return 200, {"errors": [], "warnings": []}, {}
        if seg[0] == "_lfs" and len(seg) == 3:
            return self._lfs_object(method, seg[1], seg[2], body, authed)
        if len(seg) >= 3 and seg[0] == "api" and seg[1] in _TYPES:
            repo_type = _TYPES[seg[1]]
            if len(seg) < 4:
                raise HttpError(404, "Repository not found", "RepoNotFound")
            repo_id = f"{seg[2]}/{seg[3]}"
            return self._api(method, repo_type, repo_id, seg[4:], query, body, authed)
        # Git/LFS and file routes: /{prefix}{ns}/{name}.git/info/lfs/objects/batch, /{prefix}{ns}/{name}/resolve/...
        repo_type = "model"
        if seg[0] in ("datasets", "spaces"):
            repo_type, seg = _TYPES[seg[0]], seg[1:]
        if len(seg) >= 2 and seg[1].endswith(".git") and seg[2:] == ["info", "lfs", "objects", "batch"]:
            repo = self._repo(repo_type, f"{seg[0]}/{seg[1][:-4]}", authed, write=True)
            return self._lfs_batch(repo, json.loads(body or b"{}"))
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self._repo(repo_type, f"{seg[0]}/{seg[1]}", authed)
            # The revision arrives quoted as one segment; the file path may span several.
            return self._resolve(method, repo, seg[3], "/".join(seg[4:]))
        raise HttpError(404, f"no route for {method} {path}")

    def _repo(self, repo_type: str, repo_id: str, authed: bool, *, write: bool = False) -> Repo:
        if write and not authed:
            raise HttpError(401, "You must be authenticated to write to this repo")
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            raise HttpError(404 if authed else 401, "Repository not found", "RepoNotFound")
        return repo

    def _create_repo(self, payload: dict[str, Any], authed: bool) -> tuple[int, Any, dict[str, str]]:
        if not authed:
            raise HttpError(401, "Invalid username or password.")
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise HttpError(400, f"invalid repo name {name!r}")
        repo_id = f"{payload.get('organization') or USER}/{name}"
        repo_type = payload.get("type") or "model"
        url = f"{self.hub.url}/{_PREFIX[repo_type]}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                return 409, {"error": "You already created this model repo", "url": url}, {}
            self.hub.create_repo(repo_type, repo_id, payload.get("visibility") == "private")
        return 200, {"url": url, "name": repo_id}, {}

    def _api(
        self,
        method: str,
        repo_type: str,
        repo_id: str,
        rest: list[str],
        query: dict[str, str],
        body: bytes,
        authed: bool,
    ) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        action = rest[0] if rest else ""
        if method == "GET" and action in ("", "revision"):
            repo = self._repo(repo_type, repo_id, authed)
            sha = hub.resolve(repo, rest[1] if action == "revision" else "main")
            files = repo.commits[sha].files
            return (
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": repo.private,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                    "tags": [],
                },
                {},
            )
        if method == "GET" and action == "tree":
            repo = self._repo(repo_type, repo_id, authed)
            sha = hub.resolve(repo, rest[1])
            prefix = "/".join(rest[2:])
            return (
                200,
                self._tree(repo.commits[sha].files, prefix, query.get("recursive") in ("True", "true", "1")),
                {},
            )
        if method == "GET" and action == "refs":
            repo = self._repo(repo_type, repo_id, authed)

            def ref(name: str, oid: str) -> dict[str, str]:
                short = name[len("refs/pr/") :] if name.startswith("refs/pr/") else name
                full = name if name.startswith("refs/") else f"refs/heads/{name}"
                return {"name": short, "ref": full, "targetCommit": oid}

            branches = [ref(n, o) for n, o in repo.refs.items() if not n.startswith("refs/")]
            prs = [ref(n, o) for n, o in repo.refs.items() if n.startswith("refs/pr/")]
            return 200, {"branches": branches, "converts": [], "tags": [], "pullRequests": prs}, {}
        if method == "GET" and action == "commits":
            repo = self._repo(repo_type, repo_id, authed)
            oid: str | None = hub.resolve(repo, rest[1])
            items = []
            while oid is not None:
                c = repo.commits[oid]
                items.append(
                    {
                        "id": c.oid,
                        "authors": [{"user": USER}],
                        "date": c.date,
                        "title": c.title,
                        "message": c.message,
                    }
                )
                oid = c.parent
            return 200, items, {}
        if method == "POST" and action == "preupload":
            repo = self._repo(repo_type, repo_id, authed, write=True)
            return self._preupload(repo, rest[1], json.loads(body or b"{}"), query.get("create_pr") == "1")
        if method == "POST" and action == "commit":
            repo = self._repo(repo_type, repo_id, authed, write=True)
            return self._commit(repo, rest[1], body, query.get("create_pr") == "1")
        if method == "POST" and action == "branch":
            repo = self._repo(repo_type, repo_id, authed, write=True)
            return self._create_branch(repo, rest[1], json.loads(body or b"{}"))
        if method == "GET" and action in ("xet-write-token", "xet-read-token"):
            repo = self._repo(repo_type, repo_id, authed, write=action == "xet-write-token")
            exp = int(time.time()) + 3600
            headers = {
                "X-Xet-Cas-Url": f"local://{hub.cas}",
                "X-Xet-Access-Token": "xet-loopback-token",
                "X-Xet-Token-Expiration": str(exp),
            }
            return (
                200,
                {"casUrl": f"local://{hub.cas}", "accessToken": "xet-loopback-token", "exp": exp},
                headers,
            )
        raise HttpError(404, f"no route for {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    # -- reading ------------------------------------------------------------------------------------------
    @staticmethod
    def _tree(files: dict[str, Entry], prefix: str, recursive: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        folders: set[str] = set()
        base = f"{prefix}/" if prefix else ""
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                folder = base + "/".join(parts[:i])
                if folder not in folders and (recursive or i == 1):
                    folders.add(folder)
                    out.append(
                        {
                            "type": "directory",
                            "path": folder,
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                        }
                    )
            if not recursive and len(parts) > 1:
                continue
            e = files[path]
            item: dict[str, Any] = {"type": "file", "path": path, "size": e.size, "oid": e.blob_id}
            if e.lfs:
                item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": 134}
            if e.xet_hash:
                item["xetHash"] = e.xet_hash
            out.append(item)
        return out

    def _resolve(self, method: str, repo: Repo, revision: str, path: str) -> tuple[int, Any, dict[str, str]]:
        sha = self.hub.resolve(repo, revision)
        entry = repo.commits[sha].files.get(path)
        headers = {"X-Repo-Commit": sha}
        if entry is None:
            headers.update({"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
            return 404, {"error": "Entry not found"}, headers
        headers["ETag"] = f'"{entry.sha256 if entry.lfs else entry.blob_id}"'
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        if entry.xet_hash is not None:
            prefix = _PREFIX[repo.repo_type]
            headers["X-Xet-Hash"] = entry.xet_hash
            headers["X-Xet-Refresh-Route"] = (
                f"{self.hub.url}/api/{prefix or 'models/'}{repo.repo_id}/xet-read-token/{sha}"
            )
        blob = self.hub.blobs / entry.sha256
        if method == "HEAD":
            headers["Content-Length"] = str(entry.size)
            headers["Accept-Ranges"] = "bytes"
            return 200, None, headers
        if not blob.is_file():  # stored only in the Xet CAS: the client must read it through Xet
            raise HttpError(501, f"{path} is stored in Xet only; enable Xet to download it")
        data = blob.read_bytes()
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                part = data[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
                return 206, part, headers
        return 200, data, headers

    # -- writing ----------------------------------------------------------------------------------------
    def _preupload(
        self, repo: Repo, revision: str, payload: dict[str, Any], create_pr: bool
    ) -> tuple[int, Any, dict[str, str]]:
        try:
            files = repo.commits[self.hub.resolve(repo, revision)].files
        except HttpError:
            if not create_pr:
                raise
            files = {}
        out = []
        for item in payload.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample", ""))
            lfs = path.endswith(LFS_SUFFIXES) or b"\0" in sample or int(item.get("size", 0)) >= LFS_MIN_SIZE
            info: dict[str, Any] = {
                "path": path,
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
            }
            current = files.get(path)
            if current is not None:
                info["oid"] = current.sha256 if current.lfs else current.blob_id
            out.append(info)
        return 200, {"files": out, "commitOid": None}, {}

    def _lfs_batch(self, repo: Repo, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if payload.get("operation") != "upload":
            raise HttpError(400, "only uploads are supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size}
            if not (self.hub.blobs / oid).is_file():
                item["actions"] = {
                    "upload": {"href": f"{self.hub.url}/_lfs/upload/{oid}"},
                    "verify": {"href": f"{self.hub.url}/_lfs/verify/{oid}"},
                }
            objects.append(item)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_object(
        self, method: str, action: str, oid: str, body: bytes, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        if action == "upload" and method == "PUT":
            # The upload URL is pre-signed: no Authorization is sent, as with S3 on the Hub.
            if hashlib.sha256(body).hexdigest() != oid:
                raise HttpError(400, "uploaded content does not match the announced sha256")
            self.hub.store_blob(body)
            return 200, None, {}
        if action == "verify" and method == "POST":
            if not authed:
                raise HttpError(401, "verify needs a token")
            if not (self.hub.blobs / oid).is_file():
                raise HttpError(404, f"object {oid} not uploaded")
            return 200, {"oid": oid}, {}
        raise HttpError(404, "no such LFS action")

    def _create_branch(
        self, repo: Repo, branch: str, payload: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        if branch.startswith("refs/"):
            raise HttpError(400, f"invalid branch name {branch!r}")
        with self.hub.lock:
            if branch in repo.refs:
                raise HttpError(409, f"Reference already exists: {branch}")
            repo.refs[branch] = self.hub.resolve(repo, payload.get("startingPoint") or "main")
        return 200, None, {}

    def _commit(
        self, repo: Repo, revision: str, body: bytes, create_pr: bool
    ) -> tuple[int, Any, dict[str, str]]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "the first line of a commit must be its header")
        header = lines[0]["value"]
        hub = self.hub
        with hub.lock:
            base = hub.resolve(repo, revision)
            if header.get("parentCommit") and not create_pr and not base.startswith(header["parentCommit"]):
                raise HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[base].files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HttpError(400, "only base64 file content is supported")
                    data = base64.b64decode(value["content"])
                    files[path] = Entry(len(data), hub.store_blob(data), git_blob_sha1(data), False)
                elif key == "lfsFile":
                    oid = value["oid"]
                    size = int(value.get("size") or 0)
                    xet_hash = None
                    blob = hub.blobs / oid
                    if blob.is_file():
                        size = blob.stat().st_size
                    else:
                        xet_hash = hub.xet_hash_for(oid)
                        if xet_hash is None:
                            raise HttpError(422, f"LFS object {oid} for {path} was never uploaded")
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
                    files[path] = Entry(size, oid, git_blob_sha1(pointer.encode()), True, xet_hash)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    base_path = path.rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(base_path)]:
                        del files[p]
                else:
                    raise HttpError(400, f"unsupported commit operation {key!r}")
            commit = Commit(
                oid=hub.new_oid(repo.repo_id, json.dumps(header)),
                parent=base,
                title=header.get("summary", ""),
                message=header.get("description", ""),
                files=files,
            )
            repo.commits[commit.oid] = commit
            prefix = f"{hub.url}/{_PREFIX[repo.repo_type]}{repo.repo_id}"
            result: dict[str, Any] = {"commitOid": commit.oid, "commitUrl": f"{prefix}/commit/{commit.oid}"}
            if create_pr:
                repo.prs += 1
                repo.refs[f"refs/pr/{repo.prs}"] = commit.oid
                result["pullRequestUrl"] = f"{prefix}/discussions/{repo.prs}"
            else:
                if revision not in repo.refs:
                    raise HttpError(400, f"cannot commit to {revision!r}: not a branch")
                repo.refs[revision] = commit.oid
        return 200, result, {}


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated Hugging Face environment: its own HF_HOME, no token, online, no proxy for loopback.

    The module constants huggingface_hub read at import are patched to match. Returns HF_HOME.
    """
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_XET_CACHE", str(home / "xet"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return home


@pytest.fixture
def hub(hf_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    """A fresh loopback hub, with HF_ENDPOINT pointing at it (for code that reads it when called)."""
    server = LoopbackHub(tmp_path / "hub-storage").start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
