"""Fixtures for the hub tests: a real local Hub look-alike server and the real huggingface_hub client."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hub_helpers import READ_TOKEN, USER, WRITE_TOKEN  # noqa: E402,F401
from hub_server import HubServer, HubState  # noqa: E402


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A fresh server per test; the client is pointed at it through HF_ENDPOINT and HF_TOKEN."""
    from huggingface_hub import constants

    state = HubState({WRITE_TOKEN: USER, READ_TOKEN: USER}, read_only_tokens={READ_TOKEN})
    server = HubServer(state).start()
    # The repo-wide conftest sets HF_HUB_OFFLINE=1 to keep other tests off the network; these tests
    # talk to 127.0.0.1 only. huggingface_hub caches the flag and the token path at import.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login-cache" / "token"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_hf(tiny) -> Path:
    """The session's tiny real transformers LLaVA folder (hf format, tokenizer + processor; mmzoo.demo.tiny)."""
    return tiny.hf("llama", "clip")


@pytest.fixture
def fast_retries(monkeypatch):
    """huggingface_hub sleeps 1 s before each of its 5 download retries; keep the retries, skip the waits."""
    import time as real_time

    from huggingface_hub import file_download

    class _Time:
        def __getattr__(self, name):
            return getattr(real_time, name)

        @staticmethod
        def sleep(seconds):
            return None

    monkeypatch.setattr(file_download, "time", _Time())


@pytest.fixture
def hub_env(server):
    """Environment for CLI subprocesses (the parent's monkeypatched env is inherited by os.environ)."""
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "0"
    return env
