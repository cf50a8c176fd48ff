"""Pytest fixtures for the local Hugging Face hub: one server per session, a fresh client cache per test.

    def test_x(hf_hub):
        hf_hub.add("stabilityai/sdxl-turbo")          # build the repo (once per session) and serve it
        snapshot_download("stabilityai/sdxl-turbo")   # in this process: already pointed at the local hub
        subprocess.run([...], env=hf_hub.env)          # a child process: the same, through HF_ENDPOINT/HF_HOME
        assert hf_hub.fetched("stabilityai/sdxl-turbo") == [...]
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .repos import BUILDERS
from .server import HubRequest, LocalHub, Repo


class HubSession:
    """The local hub as one test sees it: its URL, the client environment, the repos, the request log."""

    def __init__(self, server: LocalHub, home: Path) -> None:
        self.server = server
        self.url = server.url
        self.home = home  # HF_HOME of this test; the download cache is home / "hub"
        self.cache_dir = home / "hub"
        # What a child process needs to use this hub and this cache (huggingface_hub reads these at import).
        self.env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
                    "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
            self.env.pop(name, None)

    @property
    def root(self) -> Path:
        """The folder the server serves: `<root>/<org>/<name>/<files>`; a test may add repos of its own there."""
        return self.server.root

    def add(self, repo_id: str) -> Path:
        """Build one of the known repos (repos.BUILDERS; once per session) and return its served folder."""
        if repo_id not in BUILDERS:
            raise KeyError(f"no builder for {repo_id!r}; known: {', '.join(sorted(BUILDERS))}")
        return BUILDERS[repo_id](self.root)

    def repo(self, repo_id: str) -> Repo:
        """The served state of a repo: commit sha and files (path, size, etag, local path)."""
        return self.server.repo(repo_id)

    @property
    def requests(self) -> list[HubRequest]:
        """Every request served during this test (method, path, query, status, repo_id, filename, body_bytes)."""
        return self.server.requests

    def fetched(self, repo_id: str | None = None) -> list[str]:
        """Sorted repo paths whose bytes were downloaded during this test."""
        return self.server.fetched(repo_id)

    def asked(self, repo_id: str | None = None) -> list[str]:
        """Sorted repo paths the client resolved (HEAD or GET on /resolve/ or the CDN) during this test, even those
        it then took from its cache (a blob it already had under the same etag)."""
        return sorted({r.filename for r in self.requests
                       if r.filename and (repo_id is None or r.repo_id == repo_id)})

    def clear_log(self) -> None:
        """Forget the requests served so far."""
        self.server.clear_log()


@pytest.fixture(scope="session")
def hf_hub_server(tmp_path_factory) -> Iterator[LocalHub]:
    """The local hub server of this test session (repos under a session temp folder, built on demand)."""
    server = LocalHub(tmp_path_factory.mktemp("hf-hub-repos"))
    yield server
    server.close()


@pytest.fixture
def hf_hub(hf_hub_server, tmp_path, monkeypatch) -> HubSession:
    """The local hub with this process's huggingface_hub pointed at it and a fresh, empty HF_HOME.

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE into `huggingface_hub.constants` at import (and
    binds the module-level `HfApi` behind `model_info` to the endpoint then), so besides the environment (for child
    processes) the constants and that `HfApi`'s endpoint are patched for this test; all is undone after it.
    """
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api

    session = HubSession(hf_hub_server, tmp_path / "hf-home")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_DISABLE_TELEMETRY", "NO_PROXY"):
        monkeypatch.setenv(name, session.env[name])
    monkeypatch.setattr(constants, "ENDPOINT", session.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", session.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(session.home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(session.cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", session.url)
    session.clear_log()
    return session
