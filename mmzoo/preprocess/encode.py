"""Worker side: raw rows -> validated, rendered, tokenized samples (or rejections with a reason).

Everything here is a pure function of (row, settings), so results are identical whichever process
computes them; the parent only has to keep them in input order.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from ..errors import MmzooError
from ..io.structured import load_json, read_text, require_regular_file
from ..locate import tokenizer_folder
from .templates import IMAGE_MARKER, RenderError, Segment, make_renderer, parse_turns

# Rejection reasons (stable strings: they are keys of the statistics and of rejected.jsonl).
BAD_JSON = "bad_json"
BAD_SCHEMA = "bad_schema"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"
UNSAFE_IMAGE_PATH = "unsafe_image_path"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
TOO_LONG = "too_long"
REASONS = (BAD_JSON, BAD_SCHEMA, IMAGE_COUNT_MISMATCH, UNSAFE_IMAGE_PATH, MISSING_IMAGE, UNREADABLE_IMAGE, TOO_LONG)


class Row(NamedTuple):
    index: int  # global position over all input files, in order
    source: int  # index into the list of data files
    position: int  # JSONL: 1-based line; JSON list: 0-based index
    raw: Any  # JSONL: the line (parsed in the worker); JSON list: the parsed object


class Sample(NamedTuple):
    row: int
    sample_id: str
    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8
    images: list[str]
    truncated: bool


class Rejection(NamedTuple):
    row: int
    source: int
    position: int
    sample_id: str | None
    reason: str
    detail: str


@dataclass
class TokenizerInfo:
    """What preprocessing needs from a tokenizer folder, read without transformers."""

    folder: Path
    json_path: Path
    bos: str
    eos: str
    pad_id: int
    image_token_id: int
    chat_template: str | None

    @classmethod
    def load(cls, path: str | Path) -> "TokenizerInfo":
        folder = tokenizer_folder(path)
        json_path = folder / "tokenizer.json"
        if not json_path.is_file():
            raise MmzooError("only fast tokenizers (tokenizer.json) are supported", path=folder)
        tok = load_tokenizer(json_path)
        config = _read_optional_json(folder / "tokenizer_config.json")
        image_id = tok.token_to_id(IMAGE_MARKER)
        if image_id is None or tok.encode(IMAGE_MARKER, add_special_tokens=False).ids != [image_id]:
            raise MmzooError(f"the tokenizer has no {IMAGE_MARKER} token", path=folder, hint="add it with `mmzoo init`")
        bos, eos, pad = (_token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token"))
        pad_id = tok.token_to_id(pad) if pad else None
        if pad_id is None:
            pad_id = tok.token_to_id(eos) if eos else 0
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = read_text(folder / "chat_template.jinja")
        if isinstance(template, list):  # named templates: use the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return cls(folder, json_path, bos or "", eos or "", int(pad_id or 0), image_id, template)


def load_tokenizer(json_path: Path) -> Any:
    """``tokenizers.Tokenizer.from_file``, whose errors (a bare ``Exception`` from Rust: bad JSON,
    recursion limit, not UTF-8) become one line naming the file."""
    from tokenizers import Tokenizer

    require_regular_file(json_path)
    try:
        return Tokenizer.from_file(str(json_path))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
        raise MmzooError(f"cannot load the tokenizer ({' '.join(str(exc).split())[:200]})", path=json_path) from None


def _read_optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = load_json(path)
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class Settings:
    """Everything that decides the output; identical in every worker."""

    tokenizer: str
    image_root: str
    template: str
    max_seq_len: int
    num_image_tokens: int
    truncate: bool
    check_images: bool = True


@dataclass
class Encoder:
    settings: Settings
    info: TokenizerInfo = field(init=False)
    _image_cache: dict[str, str | None] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.info = TokenizerInfo.load(self.settings.tokenizer)
        self.tokenizer = load_tokenizer(self.info.json_path)
        self.render = make_renderer(self.settings.template, self.info.bos, self.info.eos, self.info.chat_template)
        self.root = Path(self.settings.image_root).resolve()

    # -- validation -------------------------------------------------------------------------------
    def _parse(self, row: Row) -> tuple[str | None, dict[str, Any]]:
        data = row.raw
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise _Reject(BAD_JSON, f"invalid JSON: {exc}") from None
        sample_id = data.get("id") if isinstance(data, dict) else None
        sample_id = None if sample_id is None else str(sample_id)
        if not isinstance(data, dict):
            raise _Reject(BAD_SCHEMA, "a row must be a JSON object", sample_id)
        return sample_id, data

    def _image_list(self, data: dict[str, Any], sample_id: str | None) -> list[str]:
        image = data.get("image")
        if image is None:
            return []
        images = [image] if isinstance(image, str) else image
        if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
            raise _Reject(BAD_SCHEMA, "'image' must be a path or a list of paths", sample_id)
        return images

    def _check_image(self, rel: str, sample_id: str | None) -> str:
        """Return the normalised relative path, or reject the sample."""
        reason = self._image_cache.get(rel, "")
        if reason == "":
            reason = self._image_problem(rel)
            self._image_cache[rel] = reason
        if reason is not None:
            raise _Reject(reason.split(":", 1)[0], f"{rel}: {reason.split(':', 1)[1]}", sample_id)
        return PurePosixPath(rel.replace("\\", "/")).as_posix()

    def _image_problem(self, rel: str) -> str | None:
        pure = PurePosixPath(rel.replace("\\", "/"))
        # Absolute paths, drive letters and '..' could read outside the image root: refuse them outright.
        if pure.is_absolute() or ".." in pure.parts or ":" in (pure.parts[0] if pure.parts else ""):
            return f"{UNSAFE_IMAGE_PATH}:path escapes the image root"
        path = self.root / pure
        try:
            path.resolve().relative_to(self.root)
            if not path.is_file():
                return f"{MISSING_IMAGE}:no such file"
        except ValueError:  # a symlink pointing outside the root
            return f"{UNSAFE_IMAGE_PATH}:resolves outside the image root"
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long: this sample's problem only
            return f"{MISSING_IMAGE}:cannot open ({getattr(exc, 'strerror', None) or exc})"
        if not self.settings.check_images:
            return None
        try:
            from PIL import Image

            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
            return f"{UNREADABLE_IMAGE}:{type(exc).__name__}: {exc}"
        return None

    # -- encoding ---------------------------------------------------------------------------------
    def encode_rows(self, rows: list[Row]) -> list[Sample | Rejection]:
        """Render all rows, tokenize every segment of the chunk in one batch call, then assemble."""
        rendered: list[tuple[Row, str | None, list[str], list[Segment]] | Rejection] = []
        texts: list[str] = []
        for row in rows:
            try:
                sample_id, data = self._parse(row)
                try:
                    turns = parse_turns(data.get("conversations"))
                except RenderError as exc:
                    raise _Reject(BAD_SCHEMA, str(exc), sample_id) from None
                images = self._image_list(data, sample_id)
                markers = sum(t.text.count(IMAGE_MARKER) for t in turns)
                if markers != len(images):
                    raise _Reject(IMAGE_COUNT_MISMATCH, f"{len(images)} image(s) but {markers} {IMAGE_MARKER} marker(s)", sample_id)
                images = [self._check_image(p, sample_id) for p in images]
                turns, cut = _within_char_budget(turns, self.settings, sample_id)
                images = images[: sum(t.text.count(IMAGE_MARKER) for t in turns)] if cut else images
                try:
                    segments = self.render(turns)
                except RenderError as exc:
                    raise _Reject(BAD_SCHEMA, str(exc), sample_id) from None
                if not any(s.loss and s.text for s in segments):
                    raise _Reject(BAD_SCHEMA, "no assistant text to train on", sample_id)
            except _Reject as rej:
                rendered.append(Rejection(row.index, row.source, row.position, rej.sample_id, rej.reason, rej.detail))
                continue
            rendered.append((row, sample_id, images, segments, cut))
            texts.extend(s.text for s in segments)
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False) if texts else []
        out: list[Sample | Rejection] = []
        cursor = 0
        for item in rendered:
            if isinstance(item, Rejection):
                out.append(item)
                continue
            row, sample_id, images, segments, cut = item
            ids = [e.ids for e in encodings[cursor: cursor + len(segments)]]
            cursor += len(segments)
            result = self._assemble(row, sample_id, images, segments, ids)
            out.append(result._replace(truncated=True) if cut and isinstance(result, Sample) else result)
        return out

    @staticmethod
    def _cut(segments: list[Segment], seg_ids: list[list[int]], lengths: list[int], image_id: int, limit: int) -> tuple[int, int, int] | None:
        """The longest prefix ending after an assistant turn that fits: (tokens, segments, images)."""
        best = None
        total = images = loss = 0
        for k, (seg, ids, n) in enumerate(zip(segments, seg_ids, lengths)):
            total += n
            images += ids.count(image_id)
            loss += n if seg.loss else 0
            if total > limit:
                break
            if seg.cut and loss:
                best = (total, k + 1, images)
        return best

    def _assemble(self, row: Row, sample_id: str | None, images: list[str], segments: list[Segment], seg_ids: list[list[int]]) -> Sample | Rejection:
        image_id, n_img = self.info.image_token_id, self.settings.num_image_tokens
        flat = [t for ids in seg_ids for t in ids] if len(seg_ids) > 1 else list(seg_ids[0])
        n_images = flat.count(image_id)
        if n_images != len(images):  # a marker glued to other text that the tokenizer did not split
            return Rejection(row.index, row.source, row.position, sample_id, IMAGE_COUNT_MISMATCH,
                             f"{len(images)} image(s) but {n_images} image token(s) after tokenization")
        lengths = [len(ids) + (ids.count(image_id) * (n_img - 1) if n_images else 0) for ids in seg_ids]
        arr = np.array(flat, dtype=np.int32)
        if n_images:  # each image token becomes n_img copies (numpy: no per-token Python work)
            arr = np.repeat(arr, np.where(arr == image_id, n_img, 1))
        total = len(arr)
        truncated = False
        limit = self.settings.max_seq_len
        if total > limit:
            cut = self._cut(segments, seg_ids, lengths, image_id, limit)
            if not self.settings.truncate or cut is None:
                detail = f"{total} tokens > max_seq_len {limit}" + (" and no turn boundary fits" if self.settings.truncate else "")
                return Rejection(row.index, row.source, row.position, sample_id, TOO_LONG, detail)
            total, n_seg, kept_images = cut
            segments, lengths, images, arr, truncated = segments[:n_seg], lengths[:n_seg], images[:kept_images], arr[:total], True
        input_ids = arr
        loss_mask = np.repeat(np.array([s.loss for s in segments], dtype=np.uint8), lengths)
        sid = sample_id if sample_id is not None else f"{row.source}:{row.position}"
        return Sample(row.index, sid, input_ids, loss_mask, images, truncated)


# No token of a real vocabulary spans more characters than this (the longest are runs of spaces or
# '=' of a few dozen), so a conversation longer than max_seq_len × this many characters cannot fit in
# max_seq_len tokens. Checking it before tokenizing keeps a 50 MB string from costing gigabytes.
MAX_CHARS_PER_TOKEN = 256


def _within_char_budget(turns: list, settings: Settings, sample_id: str | None) -> tuple[list, bool]:
    """The turns, or with --truncate the leading turns (ending with an answer) within the character
    budget; True when turns were dropped. Rejects as too_long what no cut can save."""
    budget = settings.max_seq_len * MAX_CHARS_PER_TOKEN
    total = sum(len(t.text) for t in turns)
    if total <= budget:
        return turns, False
    detail = f"{total:,} characters, more than max_seq_len {settings.max_seq_len} tokens can hold; not tokenized"
    keep = used = 0
    for k, turn in enumerate(turns if settings.truncate else ()):
        used += len(turn.text)
        if used > budget:
            break
        keep = k + 1 if turn.role == "assistant" else keep
    if not keep:
        raise _Reject(TOO_LONG, detail, sample_id)
    return turns[:keep], True


class _Reject(Exception):
    def __init__(self, reason: str, detail: str, sample_id: str | None = None):
        self.reason, self.detail, self.sample_id = reason, detail, sample_id
        super().__init__(detail)


# -- multiprocessing plumbing: one Encoder per worker process -------------------------------------
_WORKER: Encoder | None = None


def init_worker(settings: Settings) -> None:
    global _WORKER
    # Each worker is one process; Rust-side threads would only fight the other workers for cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = Encoder(settings)


def encode_chunk(rows: list[Row]) -> list[Sample | Rejection]:
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER.encode_rows(rows)
