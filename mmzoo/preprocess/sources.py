"""Read LLaVA data files into rows, in a fixed order (files as given, then file order)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import MmzooError
from ..io.structured import require_regular_file
from .encode import Row


def check_sources(paths: list[Path]) -> None:
    if not paths:
        raise MmzooError("no --data file given")
    for path in paths:
        if not path.exists():
            raise MmzooError("data file not found", path=path)
        require_regular_file(path)  # a named pipe would block the reader forever
        if path.suffix.lower() not in (".json", ".jsonl"):
            raise MmzooError("data files must end in .json (a JSON list) or .jsonl (one object per line)", path=path)


def iter_rows(paths: list[Path], skip: int = 0) -> Iterator[Row]:
    """Yield every row of every file; the first ``skip`` rows (already done, on resume) are not parsed."""
    index = 0
    for source, path in enumerate(paths):
        if path.suffix.lower() == ".jsonl":
            with path.open("r", encoding="utf-8", errors="replace") as handle:
                for line_no, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue  # blank lines are not rows
                    if index >= skip:
                        yield Row(index, source, line_no, line)
                    index += 1
        else:
            for position, item in enumerate(_json_list(path)):
                if index >= skip:
                    yield Row(index, source, position, item)
                index += 1


def _json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MmzooError(f"not valid JSON ({exc}); use .jsonl for one object per line", path=path) from None
    except RecursionError:  # one row nested absurdly deep: in a .json list it spoils the whole file
        raise MmzooError("JSON nested too deeply to parse; use .jsonl so such a row is only one rejection", path=path) from None
    if not isinstance(data, list):
        raise MmzooError("a .json data file must hold a JSON list of samples", path=path)
    return data


def chunked(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
