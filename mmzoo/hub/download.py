"""Downloading a pinned commit file by file, each file bounded by the size the Hub's listing gives it.

huggingface_hub's ``snapshot_download`` writes whatever the server sends and compares the size only at the end of
each file, so a broken or hostile server streaming an endless body filled the disk before any check ran. Here every
file of the listing is fetched with huggingface_hub's own ``http_get`` (its session, auth headers, redirects and
retries that resume with ``Range``), into a file object that refuses the first chunk that would take the file past
its listed size (the LFS object's size, or the git blob's). No file on disk ever grows past its listed size, so the
whole pull stays within the listed total that was checked against the free space before the first request. Every
file comes from its ``/resolve`` URL over HTTP; huggingface_hub's Xet transfer, which writes files itself, is not used.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable

from ..errors import HubError

PARALLEL_FILES = 4
PARTIAL = ".mmzoo-part"  # suffix of a file being downloaded, next to its final name


class TooManyBytes(HubError):
    """The server sent more bytes for a file than the Hub lists for it."""


def listed_size(entry: Any) -> int:
    """What the listing says a file holds: its LFS object's size, else the blob's."""
    size = entry.lfs.size if getattr(entry, "lfs", None) is not None else entry.size
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HubError(f"the Hub lists no size for {entry.path}: refusing to download a file of unknown size")
    return size


class _Bounded:
    """The file ``http_get`` writes into, refusing any write that would take it past ``limit`` bytes. ``http_get``
    also seeks, tells and truncates (a retry whose server ignored ``Range`` starts over): those go to the file."""

    def __init__(self, handle: BinaryIO, limit: int, name: str, stop: threading.Event):
        self._handle, self._limit, self._name, self._stop = handle, limit, name, stop

    def write(self, chunk: bytes) -> int:
        if self._stop.is_set():  # another file failed, or Ctrl-C: the pull is over, this download too
            raise HubError(f"download of {self._name} stopped: the pull failed")
        if self._handle.tell() + len(chunk) > self._limit:
            raise TooManyBytes(f"download refused: the server sent more than the {self._limit:,} bytes the Hub lists "
                               f"for {self._name} (a broken or hostile server); stopped before writing them")
        return self._handle.write(chunk)

    def __getattr__(self, name: str) -> Any:
        # only what a stream needs: no ``name``, so no downloader can go around write() to the file by its path
        if name in ("seek", "tell", "truncate", "flush"):
            return getattr(self._handle, name)
        raise AttributeError(name)


def download_files(repo_id: str, revision: str, tree: list, folder: Path, *, endpoint: str, token: str | None,
                   reusable: Callable[[Path, Any], bool]) -> list[str]:
    """Download every file of ``tree`` (the listing of commit ``revision``) into ``folder``; a file already there for
    which ``reusable(path, entry)`` holds is kept. Returns the kept files' paths. On any failure the files being
    downloaded stop at their next chunk (none past its listed size) and the first error is raised; the caller removes
    ``folder``."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token or None, library_name="mmzoo")
    root = folder.resolve()
    stop = threading.Event()

    def fetch(entry: Any) -> str | None:
        target = folder / entry.path
        parts = PurePosixPath(entry.path).parts
        if PurePosixPath(entry.path).is_absolute() or ".." in parts or not parts:
            raise HubError(f"refusing to write {entry.path[:200]!r}: it would land outside OUT")
        target.parent.mkdir(parents=True, exist_ok=True)
        if root not in target.parent.resolve().parents and target.parent.resolve() != root:
            raise HubError(f"refusing to write {entry.path[:200]!r}: its folder leads outside OUT")
        if target.is_file() and not target.is_symlink() and reusable(target, entry):
            return entry.path
        limit = listed_size(entry)
        partial = target.with_name(target.name + PARTIAL)
        url = hf_hub_url(repo_id, entry.path, revision=revision, endpoint=endpoint)
        _get(url, partial, limit, entry.path, headers, stop)
        got = partial.stat().st_size
        if got != limit:
            raise HubError(f"download corrupt: {entry.path} has {got:,} bytes, the Hub lists {limit:,}")
        os.replace(partial, target)
        return None

    with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
        futures = [pool.submit(fetch, entry) for entry in tree]
        try:
            kept = [future.result() for future in as_completed(futures)]
        except BaseException:
            stop.set()  # the running downloads end at their next chunk, those not started never start
            for future in futures:
                future.cancel()
            raise
    return sorted(path for path in kept if path is not None)


def _get(url: str, path: Path, limit: int, name: str, headers: dict[str, str], stop: threading.Event) -> None:
    from huggingface_hub.file_download import http_get

    with open(path, "wb") as handle:
        # no expected_size: the bound is enforced on every write; the size is compared once the body has ended
        http_get(url, _Bounded(handle, limit, name, stop), headers=headers, displayed_filename=name)
