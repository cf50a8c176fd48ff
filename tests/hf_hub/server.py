"""A local Hugging Face Hub on 127.0.0.1: the part of the Hub's HTTP API that huggingface_hub's download code uses.

It serves model repositories from a folder laid out `<root>/<org>/<name>/<files...>`, so the real clients
(huggingface_hub, diffusers, open_clip, timm) run unchanged with `HF_ENDPOINT=<hub.url>`. What it answers, as
huggingface_hub 2.x calls it:

- `GET /api/models/{repo_id}` and `GET /api/models/{repo_id}/revision/{rev}` (`HfApi.model_info`, `repo_info`,
  `resolve_revision`; hf_api.py `model_info`): `id`, `sha`, `siblings` (`rfilename`; `size`, `blobId`, `lfs` only
  with `?blobs=true`, i.e. `files_metadata=True`, as the Hub does).
- `GET /api/models/{repo_id}/tree/{rev}[/{path}]?recursive=` (`list_repo_tree`, which `snapshot_download` and
  `list_repo_files` use; hf_api.py `_iter_repo_tree_pages`): one page of `{type, path, size, oid, lfs}` entries.
- `HEAD`/`GET /{repo_id}/resolve/{rev}/{path}` (`hf_hub_download`; file_download.py `get_hf_file_metadata`,
  `http_get`): a small (git) file answers 200 with `ETag` (its git blob id), `Content-Length` and `X-Repo-Commit`;
  a large (LFS) file answers 302 with `X-Linked-Etag` (its sha256), `X-Linked-Size` and `X-Repo-Commit`, and a
  `Location` on another origin (`http://localhost:PORT/cdn/...`, standing in for the Hub's CDN), so the client takes
  the metadata from the redirect and downloads from the "CDN" without following the Hub's redirect itself. No
  `X-Xet-*` headers are sent, so huggingface_hub uses plain HTTP whether or not hf_xet is installed.
- `Range: bytes=a-b` / `a-` on file bodies (206 + `Content-Range`; `http_get` resumes with it).
- Errors carry the Hub's headers, which `utils/_http.py` `hf_raise_for_status` maps to exceptions:
  `X-Error-Code: RepoNotFound` (-> `RepositoryNotFoundError`), `RevisionNotFound` (-> `RevisionNotFoundError`),
  `EntryNotFound` with `X-Repo-Commit` (-> `RemoteEntryNotFoundError`, an `EntryNotFoundError`).

A revision is a branch name (`main`) or the repo's commit sha: a fake one, 40 hex digits derived from the repo's
file paths and contents, so it changes when a repo's content does. Every request is recorded (`requests`,
`fetched`) so tests can assert what the client asked for and which files' bytes it downloaded.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

BRANCH = "main"
CHUNK = 1 << 20
# The patterns of the .gitattributes the Hub writes into a new repo (the LFS-tracked file types); used when a
# repo has no .gitattributes of its own.
DEFAULT_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*",
)
_LFS_ATTR = re.compile(r"^(\S+)\s+.*filter=lfs")


@dataclass(frozen=True)
class RepoFile:
    """One file of a served repo: its path in the repo, where it lies, and the ids the Hub gives it."""

    path: str
    local: Path
    size: int
    git_oid: str  # sha1 of the git blob (of the LFS pointer for an LFS file)
    sha256: str | None  # LFS oid; None for a file stored in git

    @property
    def etag(self) -> str:
        """The id huggingface_hub caches the file's blob under (LFS sha256, else the git blob id)."""
        return self.sha256 or self.git_oid


@dataclass(frozen=True)
class Repo:
    """A served repository at its single commit."""

    repo_id: str
    sha: str
    files: dict[str, RepoFile]


@dataclass(frozen=True)
class HubRequest:
    """One served request: method, URL path (unquoted) and query, status, and the repo file it named, if any."""

    method: str
    path: str
    query: str
    status: int
    repo_id: str | None = None
    filename: str | None = None
    body_bytes: int = 0  # bytes of file content sent (0 for HEAD, redirects, errors and API calls)


def _git_blob_oid(data_size: int, chunks) -> str:
    digest = hashlib.sha1(b"blob %d\0" % data_size)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _read_chunks(path: Path):
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(CHUNK), b"")


def _lfs_patterns(folder: Path) -> tuple[str, ...]:
    attributes = folder / ".gitattributes"
    if not attributes.is_file():
        return DEFAULT_LFS_PATTERNS
    return tuple(m.group(1) for line in attributes.read_text().splitlines() if (m := _LFS_ATTR.match(line.strip())))


def _is_lfs(path: str, patterns: tuple[str, ...]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else name, p) for p in patterns)


def scan_repo(repo_id: str, folder: Path) -> Repo:
    """Index a repo folder: every file's git/LFS ids, and a commit sha derived from paths and contents."""
    patterns = _lfs_patterns(folder)
    files = {}
    for local in sorted(p for p in folder.rglob("*") if p.is_file()):
        path = local.relative_to(folder).as_posix()
        size = local.stat().st_size
        if _is_lfs(path, patterns):
            sha256 = hashlib.sha256()
            for chunk in _read_chunks(local):
                sha256.update(chunk)
            pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256.hexdigest()}\n"
                       f"size {size}\n").encode()
            files[path] = RepoFile(path, local, size, _git_blob_oid(len(pointer), [pointer]), sha256.hexdigest())
        else:
            files[path] = RepoFile(path, local, size, _git_blob_oid(size, _read_chunks(local)), None)
    tree = hashlib.sha1(repo_id.encode())
    for path, entry in files.items():
        tree.update(f"\0{path}\0{entry.git_oid}".encode())
    return Repo(repo_id, tree.hexdigest(), files)


class LocalHub:
    """A threaded HTTP server speaking the Hub's download API for the repos under `root` (`<org>/<name>/...`).

    Started on a free port of 127.0.0.1 at construction; `close()` stops it (it is also a context manager).
    Repos may be added to `root` while it runs: each is indexed on first use and re-indexed when its files change.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._log: list[HubRequest] = []
        self._index: dict[str, tuple[tuple, Repo]] = {}
        self._scan_lock = threading.Lock()  # one scan at a time: parallel first requests hash a repo once
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server API)
                hub._serve(self)

            def do_HEAD(self):  # noqa: N802
                hub._serve(self)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # Another origin than `url` (same socket): huggingface_hub treats it as a CDN and does not follow the Hub's
        # redirect to it during the metadata HEAD, as with the real Hub's LFS storage.
        self.cdn_url = f"http://localhost:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-hf-hub", daemon=True)
        self._thread.start()

    # ----- public API -----
    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def requests(self) -> list[HubRequest]:
        """Every request served so far, in order."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Forget the requests served so far."""
        with self._lock:
            self._log.clear()

    def fetched(self, repo_id: str | None = None) -> list[str]:
        """Sorted repo paths whose content was sent (a GET that returned file bytes), optionally of one repo."""
        return sorted({r.filename for r in self.requests
                       if r.body_bytes and r.filename and (repo_id is None or r.repo_id == repo_id)})

    def repo(self, repo_id: str) -> Repo:
        """The served state of a repo (its commit sha and files); KeyError if the hub does not hold it."""
        repo = self._repo(repo_id)
        if repo is None:
            raise KeyError(f"no repo {repo_id!r} under {self.root}")
        return repo

    # ----- serving -----
    def _repo(self, repo_id: str) -> Repo | None:
        parts = repo_id.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        folder = self.root / parts[0] / parts[1]
        if not folder.is_dir():
            return None
        with self._scan_lock:
            signature = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
                              if p.is_file())
            with self._lock:
                cached = self._index.get(repo_id)
            if cached is not None and cached[0] == signature:
                return cached[1]
            repo = scan_repo(repo_id, folder)
            with self._lock:
                self._index[repo_id] = (signature, repo)
            return repo

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        record = {"method": handler.command, "path": path, "query": parts.query}
        try:
            status, headers, body, extra = self._route(handler, parts.path, parse_qs(parts.query))
        except (BrokenPipeError, ConnectionResetError):
            return
        record.update(extra)
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            sent = 0
            if handler.command == "GET" and isinstance(body, bytes):
                handler.wfile.write(body)
            elif handler.command == "GET" and body is not None:
                sent = body(handler.wfile)
        except (BrokenPipeError, ConnectionResetError):
            sent = 0
        with self._lock:
            self._log.append(HubRequest(status=status, body_bytes=sent if status < 300 else 0, **record))

    def _route(self, handler, raw_path: str, query: dict):
        """(status, headers, body: bytes | writer | None, log fields) for a request (path still URL-quoted, so a
        revision like `refs%2Fpr%2F1` stays one segment)."""
        host = (handler.headers.get("Host") or "").split(":")[0]

        def match(pattern: str) -> list[str | None] | None:
            m = re.fullmatch(pattern, raw_path)
            return [unquote(g) if g is not None else None for g in m.groups()] if m else None

        if g := match(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?"):
            return (*self._model_info(g[0], g[1], query)[:3], {"repo_id": g[0]})
        if g := match(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?"):
            return (*self._tree(g[0], g[1], g[2] or "", query)[:3], {"repo_id": g[0]})
        if g := match(r"/cdn/([^/]+/[^/]+)/([0-9a-f]{64})"):
            return self._cdn(handler, g[0], g[1], host)
        if g := match(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)"):
            return self._resolve(handler, g[0], g[1], g[2])
        path = unquote(raw_path)
        if path.startswith("/api/"):
            return self._json(404, {"error": "Sorry, we can't find the page you are looking for."})
        return self._error(404, "RepoNotFound", "Repository not found")

    @staticmethod
    def _json(status: int, payload, **headers):
        data = json.dumps(payload).encode()
        head = {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(data)), **headers}
        return status, head, data, {}

    def _error(self, status: int, code: str, message: str, **headers):
        return self._json(status, {"error": message}, **{"X-Error-Code": code, "X-Error-Message": message,
                                                          **headers})

    def _lookup(self, repo_id: str, revision: str | None):
        """(repo, None) or (None, error response) for a repo at a revision."""
        repo = self._repo(repo_id)
        if repo is None:
            return None, self._error(404, "RepoNotFound", "Repository not found")
        if revision not in (None, BRANCH, repo.sha):
            return None, self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, None

    def _model_info(self, repo_id: str, revision: str | None, query: dict):
        repo, error = self._lookup(repo_id, revision)
        if error:
            return error
        blobs = query.get("blobs", [""])[0].lower() in ("1", "true")
        siblings = []
        for entry in repo.files.values():
            sibling = {"rfilename": entry.path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.sha256:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": 134}
            siblings.append(sibling)
        stamp = "2024-01-01T00:00:00.000Z"
        org = repo_id.split("/")[0]
        return self._json(200, {
            "_id": repo.sha[:24], "id": repo_id, "modelId": repo_id, "author": org, "sha": repo.sha,
            "lastModified": stamp, "createdAt": stamp, "private": False, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(f.size for f in repo.files.values()),
        })

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict):
        repo, error = self._lookup(repo_id, revision)
        if error:
            return error
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in repo.files):
            return self._error(404, "EntryNotFound", f"{folder} does not exist on \"{revision}\"",
                               **{"X-Repo-Commit": repo.sha})
        entries, dirs = [], set()
        for entry in repo.files.values():
            if not entry.path.startswith(prefix):
                continue
            rest = entry.path[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                item = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": entry.path}
                if entry.sha256:
                    item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
                entries.append(item)
        folders = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                   for d in sorted(dirs)]
        return self._json(200, folders + entries)

    def _resolve(self, handler, repo_id: str, revision: str, filename: str):
        log = {"repo_id": repo_id, "filename": filename}
        repo, error = self._lookup(repo_id, revision)
        if error:
            return (*error[:3], log)
        entry = repo.files.get(filename)
        common = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if entry is None:
            status, headers, body, _ = self._error(404, "EntryNotFound", "Entry not found", **common)
            return status, headers, body, log
        if entry.sha256:  # LFS: redirect to the "CDN", metadata on the redirect itself
            location = f"{self.cdn_url}/cdn/{repo_id}/{entry.sha256}?filename={quote(filename.rsplit('/', 1)[-1])}"
            headers = {**common, "Location": location, "ETag": f'"{entry.git_oid}"',
                       "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size),
                       "Content-Length": "0"}
            return 302, headers, None, log
        status, headers, body = self._file_response(handler, entry)
        return status, {**common, "ETag": f'"{entry.git_oid}"', **headers}, body, log

    def _cdn(self, handler, repo_id: str, sha256: str, host: str):
        repo = self._repo(repo_id)
        entry = next((f for f in repo.files.values() if f.sha256 == sha256), None) if repo else None
        if entry is None or host != "localhost":  # only the CDN origin serves blobs, and only known ones
            return 403, {"Content-Length": "0"}, None, {}
        status, headers, body = self._file_response(handler, entry)
        return status, {"ETag": f'"{sha256}"', **headers}, body, {"repo_id": repo_id, "filename": entry.path}

    @staticmethod
    def _file_response(handler, entry: RepoFile):
        """200 with the whole file, or 206 with the requested byte range, or 416."""
        start, end = 0, entry.size - 1
        status, headers = 200, {}
        if (rng := handler.headers.get("Range")) is not None:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return 416, {"Content-Range": f"bytes */{entry.size}", "Content-Length": "0"}, None
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), entry.size - 1) if m.group(2) else entry.size - 1
            else:  # suffix range: the last N bytes
                start = max(entry.size - int(m.group(2)), 0)
            if start >= entry.size or start > end:
                return 416, {"Content-Range": f"bytes */{entry.size}", "Content-Length": "0"}, None
            status, headers = 206, {"Content-Range": f"bytes {start}-{end}/{entry.size}"}
        length = end - start + 1
        headers.update({"Content-Length": str(length), "Content-Type": "application/octet-stream"})

        def write(wfile) -> int:
            sent = 0
            with open(entry.local, "rb") as handle:
                handle.seek(start)
                while sent < length:
                    chunk = handle.read(min(CHUNK, length - sent))
                    if not chunk:
                        break
                    wfile.write(chunk)
                    sent += len(chunk)
            return sent

        return status, headers, write
