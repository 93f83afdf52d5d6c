"""The zip container of a ``torch.save`` file (``.bin``, ``.pt``), checked with the standard library before torch
opens it.

``torch.save`` stores every entry uncompressed, which is what lets ``torch.load(mmap=True)`` map tensors
straight from the file. torch's reader nevertheless inflates deflated entries when it does not mmap, so a
crafted 1 MB ``.pt`` holding a deflated storage of zeros loaded 1 GiB (measured: 1.3 GB peak RSS for DeepSpeed's
``model_states.pt`` path), a thousand to one. No file torch wrote has a compressed entry: it is refused.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import CorruptFile


def check_torch_zip(path: str | Path) -> None:
    """Refuse a torch zip file with a compressed entry, or entries that claim more bytes than the file holds.
    A file that is not a zip (a legacy pickle) is left to the caller, which refuses it its own way."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    size = path.stat().st_size
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise CorruptFile(f"entry {entry.filename!r} is compressed ({entry.file_size:,} bytes from "
                              f"{entry.compress_size:,}); torch.save never compresses, so this is a crafted file "
                              "(a zip bomb?): refusing to load it", path=path)
    if sum(entry.file_size for entry in entries) > size:
        raise CorruptFile(f"its entries claim {sum(e.file_size for e in entries):,} bytes, more than the file's "
                          f"{size:,}: refusing to load it", path=path)
