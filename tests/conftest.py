"""Shared fixtures: tiny models built once per session, small images made by the tests."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO = Path(__file__).resolve().parents[1]

# The local Hugging Face hub (tests/hf_hub): fixtures hf_hub_server (session) and hf_hub (per test).
from hf_hub.fixtures import hf_hub, hf_hub_server  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """models/generator and models/clip built through the models registry (tiny://)."""
    from pas.models.registry import resolve

    root = tmp_path_factory.mktemp("models")
    for role, name in (("generator", "tiny://sd"), ("clip", "tiny://clip")):
        resolve(role, name, root / role)
    return {"generator": root / "generator", "clip": root / "clip"}


def make_image(seed: int, size: int = 64, mode: str = "RGB") -> Image.Image:
    """A distinct random-shapes image for a seed."""
    rng = np.random.default_rng(seed)
    array = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, size - 8, 2)
        w, h = rng.integers(4, size // 2, 2)
        array[y : y + h, x : x + w] = rng.integers(0, 255, 3, dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def write_image_shards(root: Path, shards: list[list[tuple[str, Image.Image]]], stem: str = "curated") -> list[dict]:
    """Write `<root>/curated/<stem>-NNNNNN.tar` shards of (key, image) JPEGs; one {key, shard} row per image."""
    from pas.core.shards import encode_jpeg, write_shard

    rows = []
    for index, images in enumerate(shards):
        shard = f"curated/{stem}-{index:06d}.tar"
        write_shard(root / shard, [(key, encode_jpeg(image), {}) for key, image in images])
        rows += [{"key": key, "shard": shard} for key, _ in images]
    return rows


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 calling `handle(request_handler)` for every GET and POST (a POST body is
    read first); records each request's path and Authorization header in `requests`."""

    def __init__(self, handle, suffix: str = "") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                if self.command == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, self.headers.get("Authorization")))
                try:
                    handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeouts, size caps)

            do_GET = do_POST = _serve  # noqa: N815 (http.server API)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{suffix}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler, status: int, body: bytes, **headers) -> None:
    """Answer a request: status, Content-Length and `headers`, then the body."""
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def image_factory():
    """Make distinct test images by seed."""
    return make_image


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end tests first: under xdist one worker starts them at once while the other takes the rest."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
