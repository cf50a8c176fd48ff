"""Hostile inputs and a careless environment, kept from coming back: LLM servers on 127.0.0.1 that redirect,
trickle, flood or echo the key; hostile names; hostile pool files; a locked MLflow store."""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pas.concepts.llm import LLMConfig, LLMError, OpenAIChat
from pas.core.config import build

SECRET = "sk-hostile-0123456789abcdef"


class Hostile:
    """A server on 127.0.0.1 whose POST handler is `handle(request_handler)`; records every Authorization header."""

    def __init__(self, handle) -> None:
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.auth.append(self.headers.get("Authorization"))
                try:
                    handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler, status: int, body: bytes, **headers) -> None:
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def client(url: str, **settings) -> OpenAIChat:
    return OpenAIChat(build(LLMConfig, {"backend": "openai", "model": "m", "base_url": url,
                                        "api_key_env": "PAS_HOSTILE_KEY", "retries": 0, "backoff_s": 0.0,
                                        **settings}, "concepts.llm"))


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("PAS_HOSTILE_KEY", SECRET)
    return SECRET


def test_a_redirect_to_another_origin_is_refused_and_the_key_stays_home(key):
    other = Hostile(lambda h: send(h, 200, b'{"choices": [{"message": {"content": "stolen"}}]}'))
    first = Hostile(lambda h: send(h, 302, b"", Location=other.url + "/chat/completions"))
    try:
        with pytest.raises(LLMError, match=r"redirected \(HTTP 302\).*redirects are not followed"):
            client(first.url).complete("hi", 0.0, 0)
        assert first.auth == [f"Bearer {key}"] and other.auth == []
    finally:
        first.close(), other.close()


def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(key):
    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(60):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)

    server = Hostile(trickle)
    try:
        started = time.monotonic()
        with pytest.raises(LLMError, match="no complete reply within the 1.5s deadline"):
            client(server.url, timeout_s=1.5).complete("hi", 0.0, 0)
        assert time.monotonic() - started < 6  # the trickle alone would take 12 s
    finally:
        server.close()


def test_a_flood_reply_is_refused_without_being_read_whole(key):
    flood = b"x" * 3_000_000
    server = Hostile(lambda h: send(h, 200, flood))
    try:
        with pytest.raises(LLMError, match=r"more than concepts\.llm\.max_reply_mb=1\.0 MB"):
            client(server.url, max_reply_mb=1.0).complete("hi", 0.0, 0)
    finally:
        server.close()


def test_a_401_that_echoes_the_header_never_prints_the_key(key, caplog):
    server = Hostile(lambda h: send(h, 401, f'{{"error": "bad key {h.headers["Authorization"]}"}}'.encode()))
    try:
        with pytest.raises(LLMError, match=r"HTTP 401: .*bad key Bearer \*\*\*") as err:
            client(server.url).complete("hi", 0.0, 0)
        assert key not in str(err.value) and key not in caplog.text
    finally:
        server.close()


def test_a_reset_connection_is_reported_without_the_key(key):
    def reset(handler):
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        handler.connection.close()

    server = Hostile(reset)
    try:
        with pytest.raises(LLMError, match="1 attempts: connection failed") as err:
            client(server.url).complete("hi", 0.0, 0)
        assert key not in str(err.value)
    finally:
        server.close()
