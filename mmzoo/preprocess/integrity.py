"""Shard digests: the shards of a preprocessed folder compared with the sha256 its manifest lists, each file hashed once.

`mmzoo preprocess` records every shard's sha256 in ``manifest.json`` (``data_params.json`` for the cerebras
layouts). A truncated, damaged or replaced shard would otherwise be trained on silently, or fail deep inside h5py;
compared here, before the first step, it is one line naming the shard.

Hashing terabytes at every start and resume would cost minutes, so what was verified is remembered in a small record
(:data:`RECORD_NAME`): per file its device and inode, size, mtime and ctime in nanoseconds, and the digest found. A
shard whose identity and times are unchanged is not read again; any change (a rewrite, a copy, ``touch``) hashes it
again, and an identical file then passes. The ctime is kept because no user can set it back: new bytes with the old
mtime restored (``touch -d``) still count as a change. The record lives in the training run's folder, never in the
data folder (an input, which mmzoo does not write to); it is written atomically under a lock on its folder, so when
several processes verify at once one of them hashes and the others wait, then find the work done. A run folder that
does not exist yet is not made by the check: the record is then kept until :meth:`Verification.save`, which
``mmzoo train`` calls once the whole preflight has passed (a refused run leaves no folder behind).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import CorruptFile, MmzooError
from ..io.digest import file_sha256
from ..io.structured import load_json
from .shard_checks import shard_file

RECORD_NAME = "shards-verified.json"
RECORD_FORMAT = "mmzoo-shards-verified/1"
MANIFESTS = ("manifest.json", "data_params.json")  # --format mmzoo, --format cerebras*
HASH_THREADS = 4
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ListedShard:
    name: str  # as the manifest names it
    path: Path
    sha256: str | None  # None: the manifest lists no digest (an older or hand-made manifest)


@dataclass
class Verification:
    manifest: Path
    shards: list[ListedShard]
    hashed: list[str] = field(default_factory=list)  # read and compared now
    unchanged: list[str] = field(default_factory=list)  # verified before (the record), file unchanged since
    bytes_hashed: int = 0
    pending: tuple[Path, dict] | None = None  # a record still to write (its folder did not exist yet)

    def save(self) -> None:
        """Write the record that the check could not write yet (no-op otherwise)."""
        if self.pending is not None:
            _write_record(*self.pending)
            self.pending = None

    @property
    def unlisted(self) -> list[str]:
        return [s.name for s in self.shards if s.sha256 is None]

    def notes(self) -> list[str]:
        missing = self.unlisted
        if not missing:
            return []
        which = "none of its" if len(missing) == len(self.shards) else f"{len(missing)} of its"
        return [f"{self.manifest} lists no sha256 for {which} {len(self.shards)} shards (an older or hand-made "
                "manifest): those shards were checked for structure only"]


def listed_shards(folder: str | Path) -> tuple[Path, list[ListedShard]]:
    """The manifest of a preprocessed folder and the shards it lists with their digests (each confined to the folder,
    as training reads them)."""
    folder = Path(folder)
    manifest = next((folder / name for name in MANIFESTS if (folder / name).is_file()), None)
    if manifest is None:
        raise MmzooError("has no manifest.json (nor a cerebras data_params.json): not a finished `mmzoo preprocess` "
                         "output", path=folder)
    data = load_json(manifest)
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("file"), str) for s in shards):
        raise CorruptFile("shards must be a list of {file: name, sha256: digest} objects", path=manifest)
    listed = []
    for entry in shards:
        digest = entry.get("sha256")
        if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
            raise CorruptFile(f"the sha256 of shard {entry['file'][:200]!r} is not 64 lowercase hex digits", path=manifest)
        listed.append(ListedShard(entry["file"], shard_file(folder, entry["file"], manifest), digest))
    return manifest, listed


def _identity(path: Path) -> tuple[str, dict[str, int]]:
    """(device:inode, the stat fields whose change means the bytes may have changed)."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}", {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def verify_shards(folder: str | Path, *, record: str | Path | None = None, recheck: bool = False,
                  hint: str = "preprocess the data again") -> Verification:
    """Compare every shard that the manifest lists a sha256 for with that digest; one :class:`CorruptFile` line
    naming the first shard that differs. ``record``: the file remembering verified shards (read unless
    ``recheck``, then updated; when its folder does not exist yet, left to :meth:`Verification.save`); None hashes
    everything and writes nothing. ``hint`` ends the error line."""
    manifest, shards = listed_shards(folder)
    result = Verification(manifest, shards)
    listed = [s for s in shards if s.sha256 is not None]
    record = Path(record) if record is not None else None
    later = record is not None and not record.parent.is_dir()
    with _record_lock(None if later else record):
        known = {} if record is None or recheck else _read_record(Path(record))
        todo, kept = [], {}
        for shard in listed:
            key, stat = _identity(shard.path)
            entry = known.get(key)
            if entry == {**stat, "sha256": shard.sha256}:
                result.unchanged.append(shard.name)
                kept[key] = entry
            else:
                todo.append((shard, key, stat))
        if todo:
            digests = _hash_all([shard.path for shard, _, _ in todo], sum(stat["size"] for _, _, stat in todo))
            for (shard, key, stat), digest in zip(todo, digests):
                if digest != shard.sha256:
                    raise CorruptFile(f"sha256 {digest[:12]}… differs from the {shard.sha256[:12]}… that {manifest.name} "
                                      f"lists: the shard was changed or damaged after `mmzoo preprocess` wrote it; {hint}",
                                      path=shard.path)
                result.hashed.append(shard.name)
                result.bytes_hashed += stat["size"]
                if _identity(shard.path) == (key, stat):  # written to while it was read: verify it again next time
                    kept[key] = {**stat, "sha256": digest}
        if record is not None and (todo or kept != known):
            if later:
                result.pending = (record, kept)
            else:
                _write_record(record, kept)
    return result


def _hash_all(paths: list[Path], total: int) -> list[str]:
    """Digests of ``paths`` in order, a few at a time, with one byte-progress bar over all of them (on stderr, when
    it is a terminal: training's and preprocess' own output stays as it was in logs)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]verifying shards"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)
    task = progress.add_task("verifying shards", total=total)
    with progress, ThreadPoolExecutor(max_workers=min(HASH_THREADS, len(paths))) as pool:
        return list(pool.map(lambda p: file_sha256(p, lambda n: progress.advance(task, n)), paths))


def _read_record(path: Path) -> dict[str, dict]:
    """The record's entries; a missing or unreadable record is an empty one (it only saves work)."""
    try:
        data = load_json(path)
    except (MmzooError, OSError):
        return {}
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_record(path: Path, files: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": RECORD_FORMAT, "files": files}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def _record_lock(record: Path | None) -> Iterator[None]:
    """An exclusive lock on the record's folder while it is read, the shards hashed and the record written: of
    several processes verifying at once, the first hashes and the others then find the record up to date."""
    if record is None:
        yield
        return
    fd = os.open(record.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock: the record is still written atomically, only work may repeat
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def verify_data(folder: str | Path) -> Verification:
    """`mmzoo preprocess --verify`: hash every shard (no record is read or written) and, for the mmzoo layout, check
    the manifest and every shard's structure as training does."""
    result = verify_shards(folder)
    if result.manifest.name == "manifest.json":
        from .reader import H5Dataset

        H5Dataset(folder, folder).close()  # the structural checks of shard_checks.py (image paths read as text only)
    return result


def verify_for_training(data_path: str | Path, output_dir: str | Path) -> Verification:
    """`mmzoo train`'s check (``data.verify_shards``), before any shard is opened; its ``notes()`` are printed as
    warnings, and ``save()`` is called once the run passed its preflight."""
    return verify_shards(data_path, record=Path(output_dir) / RECORD_NAME,
                         hint="preprocess the data again, or set data.verify_shards: false to train on it as it is")
