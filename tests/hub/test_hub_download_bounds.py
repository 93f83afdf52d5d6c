"""A server that sends more bytes of a file than the Hub lists for it: the pull stops at the listed size, in one line,
leaving OUT as it was (mmzoo/hub/download.py). The local Hub look-alike (tests/hub/hub_server.py) and the real
huggingface_hub client; the disk bound is enforced by the kernel (RLIMIT_FSIZE), not measured by mmzoo itself."""
from __future__ import annotations

import resource
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from hub_helpers import siblings, tree_digest

from mmzoo.errors import HubError
from mmzoo.hub import api as hub


@pytest.fixture
def ckpt(tiny_hf, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_hf, dst)
    return dst


@contextmanager
def files_at_most(limit: int):
    """No file this process writes may grow past ``limit`` bytes: the kernel refuses the write (EFBIG; SIGXFSZ, which
    would kill the process, is ignored meanwhile). A pull that wrote past a listed size fails with that OSError."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_the_kernel_bound_of_these_tests_bites(tmp_path):
    """The guard the tests below rely on: with it, a write past the limit is an OSError."""
    with files_at_most(1000), pytest.raises(OSError, match="File too large"):
        (tmp_path / "big").write_bytes(b"x" * 1001)


@pytest.mark.parametrize("mode", [1 << 20, "endless"])
@pytest.mark.parametrize("victim", ["model.safetensors", "config.json"])
def test_a_server_sending_more_than_listed_is_stopped_at_the_listed_size(server, ckpt, tmp_path, mode, victim):
    """model.safetensors (an LFS file, the largest) and config.json (a git blob); 1 MiB more than listed with a
    Content-Length that says so, or an endless body. With every file capped at the largest listed size by the
    kernel, a pull writing one byte past a listed size would fail with "File too large" instead."""
    hub.push(ckpt, "alice/tiny-llava")
    out = tmp_path / "out"
    hub.pull("alice/tiny-llava", out)  # a good OUT first: it must survive the failed --overwrite pull untouched
    before = tree_digest(out)
    (ckpt / "README.md").write_text("# v2\n")  # a new commit: the next pull has work to do
    hub.push(ckpt, "alice/tiny-llava")
    server.state.oversend[victim] = mode
    (out / victim).unlink()  # not reusable: it is downloaded again
    before = {k: v for k, v in before.items() if k != victim}
    listed = {p.name: p.stat().st_size for p in ckpt.iterdir() if p.is_file()}
    limit = listed[victim]
    with files_at_most(max(listed.values())), pytest.raises(HubError) as info:
        hub.pull("alice/tiny-llava", out, overwrite=True)
    assert str(info.value) == (f"download refused: the server sent more than the {limit:,} bytes the Hub lists for "
                               f"{victim} (a broken or hostile server); stopped before writing them")
    # the server did send more than it lists (how much more before the client hung up depends on socket buffers
    # and timing: an endless body was once cut at 10.1 MiB, under one of http_get's 10 MiB chunks past the limit)
    assert server.state.sent[victim] > limit
    assert tree_digest(out) == before and siblings(out) == ["out"]  # OUT as it was, no partial download left


def test_the_bound_is_exact_for_the_largest_file(server, ckpt, tmp_path):
    """Capped by the kernel at exactly model.safetensors' listed size: the refused chunk was never written, not even
    in part (a partial write up to the cap would succeed and the next write fail with EFBIG)."""
    hub.push(ckpt, "alice/tiny-llava")
    server.state.oversend["model.safetensors"] = "endless"
    limit = (ckpt / "model.safetensors").stat().st_size
    assert limit == max(p.stat().st_size for p in ckpt.iterdir() if p.is_file())
    out = tmp_path / "d" / "out"
    with files_at_most(limit), pytest.raises(HubError, match=f"more than the {limit:,} bytes the Hub lists for model"):
        hub.pull("alice/tiny-llava", out)
    assert not out.exists() and not (tmp_path / "d").exists()


def test_the_cli_says_it_in_one_line(server, hub_env, ckpt, tmp_path, capsys):
    from cli_helpers import cli_error

    hub.push(ckpt, "alice/tiny-llava")
    server.state.oversend["tokenizer.json"] = "endless"
    out = tmp_path / "out"
    line = cli_error(capsys, "hub", "pull", "alice/tiny-llava", "-o", str(out))
    assert line.startswith("mmzoo: error: download refused: the server sent more than the ") and "tokenizer.json" in line
    assert not out.exists() and siblings(out) == []


def test_a_local_file_with_other_bytes_is_not_reused(server, ckpt, tmp_path):
    """--overwrite reuses a file of OUT only when its size and digest are the listing's: a file of the right size
    whose bytes changed is downloaded again (it used to be judged by huggingface_hub's metadata, not the bytes)."""
    hub.push(ckpt, "alice/tiny-llava")
    out = tmp_path / "out"
    first = hub.pull("alice/tiny-llava", out)
    served = len(server.state.downloads())
    raw = bytearray((out / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(raw))
    again = hub.pull("alice/tiny-llava", out, overwrite=True)
    assert server.state.downloads()[served:] == ["model.safetensors"]
    assert sorted(again["reused"]) == sorted(set(first["files"]) - {"model.safetensors"})
    assert (out / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
