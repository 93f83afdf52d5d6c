"""Worker side: raw rows -> validated, rendered, tokenized samples (or rejections with a reason).

Everything here is a pure function of (row, settings), so results are identical whichever process
computes them; the parent only has to keep them in input order.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError, MmzooError
from ..io.structured import MAX_TOKENIZER_BYTES, load_json, read_text
from ..io.sentencepiece import tokenizer_json as sentencepiece_tokenizer_json
from ..checkpoint.locate import tokenizer_folder
from .templates import IMAGE_MARKER, RenderError, Segment, Turn, make_renderer, parse_turns, place_images_like_llava
from .assemble import Assembled, assemble, longest_fitting_prefix
from .tokenization import RESAVED_BY_TRANSFORMERS5, Encoded, TextTokenizer, resaved_by_transformers5, tokenizer_outline

# Rejection reasons (stable strings: they are keys of the statistics and of rejected.jsonl).
BAD_JSON = "bad_json"
BAD_SCHEMA = "bad_schema"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"
UNSAFE_IMAGE_PATH = "unsafe_image_path"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
TOO_LONG = "too_long"
EMPTY_ANSWER = "empty_answer"
SPECIAL_TOKEN_IN_TEXT = "special_token_in_text"
REASONS = (BAD_JSON, BAD_SCHEMA, IMAGE_COUNT_MISMATCH, UNSAFE_IMAGE_PATH, MISSING_IMAGE, UNREADABLE_IMAGE, TOO_LONG,
           EMPTY_ANSWER, SPECIAL_TOKEN_IN_TEXT)
IMAGE_PLACEMENTS = ("llava", "keep")


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


class _Prepared(NamedTuple):
    """A row rendered and split into the pieces to tokenize, waiting for the chunk's batch encode."""
    row: Row
    sample_id: str | None
    images: list[str]
    add_bos: bool
    pieces: list[tuple[str, list[tuple[int, int]], list[int]]]
    cut: bool  # turns were dropped to fit the character budget (--truncate)


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
    json_text: str  # tokenizer.json, or the one built from tokenizer.model
    bos: str
    eos: str
    bos_id: int | None
    pad_id: int
    image_token_id: int
    chat_template: str | None
    legacy: bool  # the slow Llama tokenizer's flag (how text after a special token is tokenized)
    special_tokens: tuple[str, ...]  # special added tokens other than <image>
    tokenizer: Any = field(default=None, repr=False, compare=False)  # json_text loaded (tokenizers.Tokenizer)
    notes: tuple[str, ...] = ()  # what the user should know about these files (printed, kept in the manifest)
    data: Any = field(default=None, repr=False, compare=False)  # tokenizer_outline of it (read only), for TextTokenizer

    @classmethod
    def load(cls, path: str | Path) -> "TokenizerInfo":
        folder = tokenizer_folder(path)
        config = _read_optional_json(folder / "tokenizer_config.json")
        json_path = folder / "tokenizer.json"
        if json_path.is_file():
            json_text = read_text(json_path, limit=MAX_TOKENIZER_BYTES)
        elif (folder / "tokenizer.model").is_file():  # a slow-only SentencePiece checkpoint (liuhaotian's LLaVA)
            json_path = folder / "tokenizer.model"
            json_text = sentencepiece_tokenizer_json(json_path, config.get("added_tokens_decoder") or {})
        else:
            raise MmzooError("no tokenizer.json or tokenizer.model to tokenize with", path=folder)
        tok = load_tokenizer(json_text, json_path)
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
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        if template is not None and not isinstance(template, str):  # jinja would fail on it with a TypeError traceback
            raise ConfigError("chat_template must be a template string or a list of {name, template} objects "
                              f"(got {type(template).__name__})", path=folder / "tokenizer_config.json")
        data = tokenizer_outline(tok)  # not json.loads(json_text): 0.25-0.6 s for a 128k-token vocabulary
        specials = tuple(t["content"] for t in data.get("added_tokens", [])
                         if t.get("special") and t["content"] != IMAGE_MARKER)
        bos_id = tok.token_to_id(bos) if bos else None
        legacy = config.get("legacy", True) is not False  # transformers 4.x's default when the flag is absent
        notes = (RESAVED_BY_TRANSFORMERS5,) if resaved_by_transformers5(data, config) else ()
        return cls(folder, json_text, bos or "", eos or "", bos_id, int(pad_id or 0), image_id, template, legacy, specials, tok, notes,
                   data)


def load_tokenizer(json_text: str, json_path: Path) -> Any:
    """``tokenizers.Tokenizer.from_str``, whose errors (a bare ``Exception`` from Rust: bad JSON,
    recursion limit) become one line naming the file."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(json_text)
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
        raise MmzooError(f"cannot load the tokenizer ({' '.join(str(exc).split())[:200]})", path=json_path) from None


def _read_optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = load_json(path)
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # an AddedToken as transformers saves it; a content of another type counts as unset
        value = value.get("content")
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
    image_placement: str = "llava"  # "llava": <image> first in its turn, as LLaVA's training does; "keep"
    kind: str = "conversation"  # "preference": chosen/rejected pairs (mmzoo/preprocess/preference.py)


@dataclass
class Encoder:
    settings: Settings
    info: TokenizerInfo | None = None  # the tokenizer folder, when the caller has loaded it already
    _image_cache: dict[str, tuple[str | None, str]] = field(default_factory=dict, init=False)  # path -> (problem, normalised)

    def __post_init__(self) -> None:
        # Loading a real tokenizer costs 0.2-1 s (parsing MBs of JSON, building the vocabulary): once per run.
        if self.info is None:
            self.info = TokenizerInfo.load(self.settings.tokenizer)
        self.tokenizer = TextTokenizer(self.info.json_text, self.info.legacy, self.info.tokenizer, self.info.data)
        self.render = make_renderer(self.settings.template, self.info.bos, self.info.eos, self.info.chat_template)
        self.root = Path(self.settings.image_root).resolve()
        specials = sorted(self.info.special_tokens, key=len, reverse=True)
        self._special = re.compile("|".join(map(re.escape, specials))) if specials else None

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
        """Return the normalised relative path, or reject the sample (both cached: images recur)."""
        cached = self._image_cache.get(rel)
        if cached is None:
            reason = self._image_problem(rel)
            cached = self._image_cache[rel] = (reason, PurePosixPath(rel.replace("\\", "/")).as_posix())
        reason, normalised = cached
        if reason is not None:
            raise _Reject(reason.split(":", 1)[0], f"{rel}: {reason.split(':', 1)[1]}", sample_id)
        return normalised

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
    def _check_turns(self, turns: list[Turn], sample_id: str | None) -> None:
        for turn in turns:
            if turn.role == "assistant" and not turn.text.strip():
                raise _Reject(EMPTY_ANSWER, "an assistant turn is empty", sample_id)
            found = self._special.search(turn.text) if self._special else None
            if found:  # it would become the control token (e.g. </s> ending the answer early)
                raise _Reject(SPECIAL_TOKEN_IN_TEXT, f"a {turn.role} turn contains the special token {found.group()!r}", sample_id)

    def encode_rows(self, rows: list[Row]) -> list[Sample | Rejection]:
        """Render all rows, tokenize every text of the chunk in one batch call, then assemble them together."""
        prepared = [self.prepare(row) for row in rows]
        texts = [piece[0] for item in prepared if isinstance(item, _Prepared) for piece in item.pieces]
        return self._samples(prepared, self.tokenizer.encode(texts))

    def prepare(self, row: Row) -> _Prepared | Rejection:
        """One row parsed, validated, its images placed and rendered, split into the pieces to tokenize (or its
        rejection): everything before tokenization."""
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
            self._check_turns(turns, sample_id)
            images = [self._check_image(p, sample_id) for p in images]
            turns, cut = _within_char_budget(turns, self.settings, sample_id)
            images = images[: sum(t.text.count(IMAGE_MARKER) for t in turns)] if cut else images
            if images and self.settings.image_placement == "llava":
                turns = place_images_like_llava(turns)
            try:
                result = self.render(turns)
            except RenderError as exc:
                raise _Reject(BAD_SCHEMA, str(exc), sample_id) from None
            if not any(s.loss and s.text.strip() for s in result.segments):
                raise _Reject(EMPTY_ANSWER, "no assistant text to train on", sample_id)
        except _Reject as rej:
            return Rejection(row.index, row.source, row.position, rej.sample_id, rej.reason, rej.detail)
        return _Prepared(row, sample_id, images, result.add_bos, text_pieces(result.segments, result.llava_chunks), cut)

    def encode_turns(self, turns: list[Turn], images: list[str]) -> Sample | Rejection:
        """One parsed conversation encoded exactly as encode_rows encodes a row (rendering, tokenization,
        assembly), without a source row: for a layout that must know where the template puts things."""
        result = self.render(turns)
        pieces = text_pieces(result.segments, result.llava_chunks)
        item = _Prepared(Row(0, 0, 0, None), None, images, result.add_bos, pieces, False)
        return self._samples([item], self.tokenizer.encode([piece[0] for piece in pieces]))[0]

    def _samples(self, prepared: list[_Prepared | Rejection], encoded: Encoded) -> list[Sample | Rejection]:
        """Assemble the chunk's conversations together (``encoded``: their pieces, in order)."""
        conversations = [(item.add_bos, item.pieces) for item in prepared if isinstance(item, _Prepared)]
        assembled = assemble(conversations, encoded, self.info.bos_id, self.info.image_token_id, self.settings.num_image_tokens)
        out: list[Sample | Rejection] = []
        k = 0
        for item in prepared:
            if isinstance(item, Rejection):
                out.append(item)
            else:
                out.append(self._sample(item, assembled, k))
                k += 1
        return out

    def _sample(self, item: _Prepared, assembled: Assembled, k: int) -> Sample | Rejection:
        """Conversation ``k`` of the chunk as a sample (views of the chunk's arrays), cut or rejected when too long."""
        row, sample_id, images = item.row, item.sample_id, item.images
        if assembled.image_tokens[k] != len(images):  # a marker glued to other text that the tokenizer did not split
            return Rejection(row.index, row.source, row.position, sample_id, IMAGE_COUNT_MISMATCH,
                             f"{len(images)} image(s) but {assembled.image_tokens[k]} image token(s) after tokenization")
        start, stop = assembled.bounds[k], assembled.bounds[k + 1]
        ids, loss_mask, truncated = assembled.input_ids[start:stop], assembled.loss_mask[start:stop], item.cut
        limit = self.settings.max_seq_len
        if len(ids) > limit:
            # the longest prefix ending after an assistant turn, with something trained, that fits
            total = longest_fitting_prefix(loss_mask, assembled.turn_ends(k), limit) if self.settings.truncate else None
            if total is None:
                detail = f"{len(ids)} tokens > max_seq_len {limit}" + (" and no turn boundary fits" if self.settings.truncate else "")
                return Rejection(row.index, row.source, row.position, sample_id, TOO_LONG, detail)
            images = images[: int((ids[:total] == self.info.image_token_id).sum()) // max(self.settings.num_image_tokens, 1)]
            ids, loss_mask, truncated = ids[:total], loss_mask[:total], True
        sid = sample_id if sample_id is not None else f"{row.source}:{row.position}"
        return Sample(row.index, sid, ids, loss_mask, images, truncated)


def text_pieces(segments: list[Segment], llava_chunks: bool) -> list[tuple[str, list[tuple[int, int]], list[int]]]:
    """The texts to tokenize (one, or one per <image>-separated chunk for LLaVA's templates), each with
    its assistant spans (start, stop) and turn ends (character positions), relative to the text."""
    text, spans, ends, pos = "", [], [], 0
    for seg in segments:
        if seg.loss and seg.text:
            spans.append((pos, pos + len(seg.text)))
        pos += len(seg.text)
        if seg.cut:
            ends.append(pos)
        text += seg.text
    if not llava_chunks or IMAGE_MARKER not in text:
        return [(text, spans, ends)]
    pieces, start = [], 0
    for chunk in text.split(IMAGE_MARKER):
        stop = start + len(chunk)
        clip = [(max(a, start) - start, min(b, stop) - start) for a, b in spans if a < stop and b > start]
        pieces.append((chunk, clip, [e - start for e in ends if start < e <= stop]))
        start = stop + len(IMAGE_MARKER)
    return pieces


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
