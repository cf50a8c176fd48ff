"""LLM back ends chosen in params (none | openai | transformers), with retries and a response cache."""
from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pas.concepts.llm_cache import ResponseCache, cache_key
from pas.core.config import ConfigError, PasError, require

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LLMError(PasError):
    """A request failed for good (after retries, or with a status that retrying cannot fix)."""


@dataclass(frozen=True)
class LLMConfig:
    """params.concepts.llm: which back end answers, and how requests are made."""

    backend: str = "none"  # none | openai | transformers
    model: str = ""  # openai: the served model name; transformers: a local causal-LM folder
    base_url: str = ""  # openai: e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp server, hosted APIs)
    api_key_env: str = ""  # NAME of the environment variable holding the API key ("" = no key)
    temperature: float = 0.7
    max_tokens: int = 1024
    timeout_s: float = 60.0  # total deadline per request (connect, send, the whole reply), not an idle timeout
    max_reply_mb: float = 8.0  # a longer reply is refused, not read whole
    retries: int = 3
    backoff_s: float = 2.0

    def validate(self, prefix: str) -> None:
        """Check the back end name, the fields it needs, and ranges."""
        require(self.backend in BACKENDS, f"{prefix}.backend", self.backend,
                f"use one of {', '.join(sorted(BACKENDS))}")
        if self.api_key_env and not _ENV_NAME.match(self.api_key_env):
            # Never echo the value: someone may have pasted the key itself here.
            raise ConfigError(f"{prefix}.api_key_env must name an environment variable (e.g. OPENAI_API_KEY), "
                              "not hold the key; its value is not shown")
        if self.backend != "none":
            require(bool(self.model), f"{prefix}.model", self.model,
                    "name the served model (openai) or a local model folder (transformers)")
        if self.backend == "openai":
            require(self.base_url.startswith(("http://", "https://")), f"{prefix}.base_url", self.base_url,
                    "use the server's OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1")
        require(0.0 <= self.temperature <= 2.0, f"{prefix}.temperature", self.temperature, "use 0..2")
        require(self.max_tokens >= 1, f"{prefix}.max_tokens", self.max_tokens, "use a positive integer")
        require(self.timeout_s > 0, f"{prefix}.timeout_s", self.timeout_s, "use a positive number of seconds")
        require(self.max_reply_mb > 0, f"{prefix}.max_reply_mb", self.max_reply_mb, "use a positive number of MB")
        require(self.retries >= 0, f"{prefix}.retries", self.retries, "use 0 or more")
        require(self.backoff_s >= 0, f"{prefix}.backoff_s", self.backoff_s, "use 0 or more seconds")


class Backend(Protocol):
    """Answers one prompt; may raise LLMError."""

    def complete(self, prompt: str, temperature: float, seed: int) -> str: ...


Factory = Callable[[LLMConfig], Backend | None]
BACKENDS: dict[str, Factory] = {}


def register_backend(name: str) -> Callable[[Factory], Factory]:
    """Register a factory LLMConfig -> Backend (None: no LLM) under a params name."""
    def wrap(factory: Factory) -> Factory:
        BACKENDS[name] = factory
        return factory
    return wrap


@register_backend("none")
def _no_backend(cfg: LLMConfig) -> None:
    """No LLM: the shipped concept bank alone."""
    return None


class OpenAIChat:
    """POST {base_url}/chat/completions with timeouts and exponential backoff on transient failures."""

    def __init__(self, cfg: LLMConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg, self.sleep = cfg, sleep
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key_env:
            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                raise ConfigError(f"concepts.llm.api_key_env names {self.cfg.api_key_env}, which is not set in the "
                                  "environment; export it (the key never goes in params)")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, prompt: str, temperature: float, seed: int) -> str:
        """The assistant message for `prompt`; retries timeouts, connection errors and 408/429/5xx."""
        body = json.dumps({"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": temperature, "max_tokens": self.cfg.max_tokens, "seed": seed}).encode()
        headers = self._headers()
        attempts = self.cfg.retries + 1
        for attempt in range(attempts):
            result, wait = self._attempt(body, headers)
            if wait is None:
                return result
            if attempt + 1 == attempts:
                break
            delay = wait if wait else min(60.0, self.cfg.backoff_s * 2**attempt)
            log.warning("LLM request to %s failed (%s); retry %d/%d in %.1fs", self.url, self._redact(result), attempt + 1,
                        self.cfg.retries, delay)
            self.sleep(delay)
        raise LLMError(f"LLM request to {self.url} failed after {attempts} attempts: {self._redact(result)}")

    def _attempt(self, body: bytes, headers: dict[str, str]) -> tuple[str, float | None]:
        """(content, None) on success, (description, seconds to wait or 0.0) on a retryable failure."""
        try:
            status, reply_headers, raw = self._post(body, headers)
        except TimeoutError:
            return f"no complete reply within the {self.cfg.timeout_s}s deadline", 0.0
        except (OSError, http.client.HTTPException) as err:  # refused, reset, truncated reply
            return self._redact(f"connection failed: {err}"), 0.0
        detail = self._redact(raw[:300].decode("utf-8", "replace"))
        if 300 <= status < 400:  # never follow: the key must not reach another origin, nor its replies the cache
            raise LLMError(f"LLM server {self.url} redirected (HTTP {status}) to "
                           f"{self._redact(reply_headers.get('Location', '?'))}; redirects are not followed "
                           "(the API key would go along); set concepts.llm.base_url to the final address")
        if status != 200:
            if status not in RETRY_STATUS:
                raise LLMError(f"LLM server {self.url} answered HTTP {status}: {detail}")
            retry_after = reply_headers.get("Retry-After", "")
            wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
            return f"HTTP {status}", min(wait, 60.0)
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or "", None
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError(f"LLM server {self.url} sent a reply that is not a chat completion: {detail}") from None

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """One POST with a total deadline (timeout_s, however slowly the server trickles) and a size cap."""
        parts = urllib.parse.urlsplit(self.url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(parts.hostname, parts.port, timeout=self.cfg.timeout_s)
        expired, sockets = threading.Event(), []

        def expire() -> None:  # unblocks a connect or recv stuck on a slow or trickling server
            expired.set()
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.cfg.timeout_s, expire)
        watchdog.start()
        try:
            conn.connect()
            sockets.append(conn.sock)  # kept: http.client hands the socket to the response and forgets it
            if expired.is_set():
                raise TimeoutError
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request("POST", path, body=body, headers={**headers, "Content-Length": str(len(body))})
            response = conn.getresponse()
            limit, chunks, size = int(self.cfg.max_reply_mb * 1_000_000), [], 0
            while chunk := response.read(65536):
                size += len(chunk)
                if size > limit:
                    raise LLMError(f"LLM server {self.url} sent more than concepts.llm.max_reply_mb="
                                   f"{self.cfg.max_reply_mb} MB; raise it if the server is right")
                chunks.append(chunk)
            if expired.is_set():
                raise TimeoutError
            return response.status, {k.title(): v for k, v in response.getheaders()}, b"".join(chunks)
        except (OSError, http.client.HTTPException):
            if expired.is_set():
                raise TimeoutError from None
            raise
        finally:
            watchdog.cancel()
            conn.close()

    def _redact(self, text: str) -> str:
        """`text` with the API key (if any) replaced: server messages may echo the Authorization header."""
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        return text.replace(key, "***") if key else text


@register_backend("openai")
def _openai(cfg: LLMConfig) -> Backend:
    """Any OpenAI-compatible chat endpoint."""
    return OpenAIChat(cfg)


class TransformersChat:
    """A local causal LM folder (from_pretrained, no network), loaded on the first uncached prompt."""

    def __init__(self, cfg: LLMConfig) -> None:
        self.cfg, self.folder = cfg, Path(cfg.model)
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pas.core.runtime import pick_device

        if not self.folder.is_dir():
            raise ConfigError(f"concepts.llm.model={self.cfg.model!r} is not a local folder; the transformers back "
                              "end loads a causal LM saved with save_pretrained")
        self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self._model = AutoModelForCausalLM.from_pretrained(self.folder, local_files_only=True).to(pick_device()).eval()
        log.info("loaded causal LM from %s", self.folder)

    def complete(self, prompt: str, temperature: float, seed: int) -> str:
        """Generate up to max_tokens new tokens; sampling is seeded, temperature 0 is greedy."""
        import torch

        if self._model is None:
            self._load()
        tok, model = self._tokenizer, self._model
        if getattr(tok, "chat_template", None):
            encoded = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)
        else:
            encoded = tok(prompt, return_tensors="pt")
        ids = encoded["input_ids"].to(model.device)
        mask = encoded.get("attention_mask")
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = model.generate(ids, attention_mask=None if mask is None else mask.to(model.device),
                                 max_new_tokens=self.cfg.max_tokens,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                                 **sampling)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@register_backend("transformers")
def _transformers(cfg: LLMConfig) -> Backend:
    """A local Hugging Face causal-LM folder."""
    return TransformersChat(cfg)


@dataclass(frozen=True)
class Reply:
    """An answer, the cache key that stores it, and whether it came from the cache."""

    text: str
    key: str
    cached: bool


class CachedChat:
    """Ask a back end through the response cache: a cached prompt is never sent again."""

    def __init__(self, cfg: LLMConfig, backend: Backend, cache: ResponseCache | None, seed: int) -> None:
        self.cfg, self.backend, self.cache, self.seed = cfg, backend, cache, seed
        self.requests = self.hits = 0

    def ask(self, prompt: str, temperature: float | None = None) -> Reply:
        """The answer to `prompt` at `temperature` (default: the configured one)."""
        temp = self.cfg.temperature if temperature is None else temperature
        key = cache_key(self.cfg.backend, self.cfg.model, prompt, temp, self.seed)
        record = self.cache.get(key) if self.cache is not None else None
        if record is not None:
            self.hits += 1
            return Reply(record["response"], key, True)
        self.requests += 1
        text = self.backend.complete(prompt, temp, self.seed)
        if self.cache is not None:
            self.cache.put(key, {"backend": self.cfg.backend, "model": self.cfg.model, "temperature": temp,
                                 "seed": self.seed, "prompt": prompt, "response": text})
        return Reply(text, key, False)


def create_chat(cfg: LLMConfig, cache_dir: str | Path | None, seed: int) -> CachedChat | None:
    """The cached chat for `cfg`, or None for the `none` back end."""
    backend = BACKENDS[cfg.backend](cfg)
    if backend is None:
        return None
    return CachedChat(cfg, backend, ResponseCache(cache_dir) if cache_dir else None, seed)
