"""Read JSON and YAML input files within bounds, so a hostile or broken file costs one clear error line.

Every config-like file mmzoo reads (config.json, mmzoo.yaml, params yaml, indexes, manifests, progress
files, a pulled repo's files) goes through here, and so do the "third-party" files a checkpoint carries for
other libraries (tokenizer, chat template: :func:`check_tokenizer_file`, applied where a checkpoint's
tokenizer files are found, so transformers never opens one that is out of bounds either):

- only regular files are opened (a named pipe would block forever, a device could stream forever);
- a size cap (configs are kilobytes; tokenizer.json tens of megabytes), checked before reading;
- UTF-8 only, with the offset of the first bad byte in the error;
- nesting deeper than :data:`MAX_DEPTH` is refused (the parsers' RecursionError and every later
  recursive walk of the data are avoided);
- YAML aliases may not expand to more than :data:`MAX_YAML_NODES` nodes (a "billion laughs" file of a
  few hundred bytes otherwise turns into gigabytes in the first ``safe_dump`` or deep copy), and a
  self-referencing alias is refused.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptFile, MmzooError

MAX_CONFIG_BYTES = 64 << 20  # a config or index: far above any real one (Llama-3 tokenizer.json is 9 MB)
MAX_DEPTH = 100  # real configs nest < 10 levels
MAX_YAML_NODES = 1_000_000  # after alias expansion
# Vocabulary files of real tokenizers run to tens of MB (Qwen2's tokenizer.json 7 MB, Gemma's 33 MB, Llama-2's
# tokenizer.model 0.5 MB); their JSON configs and chat templates are kilobytes and get MAX_CONFIG_BYTES.
MAX_TOKENIZER_BYTES = 256 << 20
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model")


def require_regular_file(path: str | Path) -> os.stat_result:
    """``os.stat`` of ``path`` (following links), refusing anything that is not a regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MmzooError("file not found", path=path) from None
    except OSError as exc:  # a symlink loop, a name too long, no permission
        raise MmzooError(f"cannot open: {exc.strerror or exc}", path=path) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a named pipe" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        raise CorruptFile(f"is {kind}; only regular files are read", path=path)
    return info


def read_text(path: str | Path, *, limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes."""
    raw = read_bytes(path, limit=limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", path=path) from None


def read_bytes(path: str | Path, *, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes."""
    size = require_regular_file(path).st_size
    if size > limit:
        raise ConfigError(f"is {size:,} bytes, more than the {limit:,} a file of this kind may have", path=path)
    with open(path, "rb") as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:  # grew since stat
        raise ConfigError(f"is more than the {limit:,} bytes a file of this kind may have", path=path)
    return raw


def tokenizer_file_limit(name: str) -> int:
    """The size cap of a tokenizer file, by its name."""
    return MAX_TOKENIZER_BYTES if name in VOCABULARY_FILES else MAX_CONFIG_BYTES


def check_tokenizer_file(path: str | Path) -> Path:
    """``path`` when it is a regular file within its kind's cap; one ConfigError line otherwise."""
    limit = tokenizer_file_limit(Path(path).name)
    size = require_regular_file(path).st_size
    if size > limit:
        raise ConfigError(f"is {size:,} bytes, more than the {limit:,} a {Path(path).name} may have", path=path)
    return Path(path)


def read_tokenizer_text(path: str | Path) -> str:
    """The UTF-8 text of a tokenizer file (tokenizer.json, tokenizer_config.json, chat_template.jinja, ...), with
    newlines translated as Python's text mode does (transformers opens them so: a published chat_template.jinja
    with CRLF line ends renders with LF)."""
    text = read_text(path, limit=tokenizer_file_limit(Path(path).name))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_json(text: str | bytes, *, where: str | Path | None = None) -> Any:
    """``json.loads`` with one-line errors and the nesting bound."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ConfigError(f"JSON nested more than {MAX_DEPTH} levels deep", path=where) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (offset {exc.start})", path=where) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON ({exc})", path=where) from None
    except ValueError as exc:  # an integer of more than 4,300 digits: Python refuses to convert it (CVE-2020-10735)
        raise ConfigError(f"not valid JSON ({str(exc).split(';')[0]})", path=where) from None
    check_depth(data, where)
    return data


def load_json(path: str | Path, *, limit: int = MAX_CONFIG_BYTES) -> Any:
    return parse_json(read_text(path, limit=limit), where=path)


def safe_yaml(text: str, *, where: str | Path | None = None) -> Any:
    """``yaml.safe_load`` bounded in depth and alias expansion. Syntax errors stay ``yaml.YAMLError``
    (callers that accept plain strings, like ``--set``, fall back on them); bombs are ConfigError."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"YAML nested more than {MAX_DEPTH} levels deep", path=where) from None
        if node is None:
            return None
        _check_yaml_nodes(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | Path, *, limit: int = MAX_CONFIG_BYTES) -> Any:
    import yaml

    try:
        return safe_yaml(read_text(path, limit=limit), where=path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # where the parser gave up: the line to look at
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML ({problem})", path=where) from None


def check_depth(data: Any, where: str | Path | None = None, *, limit: int = MAX_DEPTH) -> None:
    """Refuse containers nested more than ``limit`` levels (iterative: no recursion of its own)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            raise ConfigError(f"nested more than {limit} levels deep", path=where)
        stack.extend((child, depth + 1) for child in children)


def _check_yaml_nodes(root: Any, where: str | Path | None) -> None:
    """Count the nodes the document expands to (an alias counts its whole target every time it is
    used) without expanding anything: memoised per node, so a bomb is measured in microseconds."""
    import yaml

    sizes: dict[int, int] = {}
    # iterative post-order walk: (node, depth, children visited?)
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    active: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise ConfigError(f"YAML expands to more than {MAX_YAML_NODES:,} values (aliases used as a bomb?)", path=where)
            continue
        if key in sizes:
            continue
        if key in active:
            raise ConfigError("YAML alias refers to itself", path=where)
        if depth > MAX_DEPTH:
            raise ConfigError(f"YAML nested more than {MAX_DEPTH} levels deep", path=where)
        active.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)
