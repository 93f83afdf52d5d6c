"""SentencePiece ``tokenizer.model`` files: their pieces, and the tokenizer.json for a folder that ships
only that file (liuhaotian's LLaVA repos, Vicuna), built in memory the way transformers 4.x's LlamaConverter builds it (same vocab,
same merges in the same order, ``Prepend("▁")`` + ``Replace(" ", "▁")`` normaliser, byte fallback),
so the tokens are those of the checkpoint's own tokenizer. No sentencepiece/protobuf import: the
model file is a small protobuf read here."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

from ..errors import MmzooError
from .structured import MAX_TOKENIZER_BYTES, read_bytes

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE = 2


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos: pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos: pos + 4], pos + 4
        elif wire == 1:
            value, pos = data[pos: pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, wire, value


def read_model(path: Path) -> tuple[list[tuple[str, float, int]], int, bool]:
    """(pieces as (text, score, type), model type, byte_fallback) of a SentencePiece model file;
    ValueError when it is not one."""
    try:
        return _read_model(read_bytes(path, limit=MAX_TOKENIZER_BYTES))
    except (ValueError, IndexError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path.name} is not a SentencePiece model ({exc})") from None


def _read_model(data: bytes) -> tuple[list[tuple[str, float, int]], int, bool]:
    pieces, model_type, byte_fallback = [], None, False
    for field, _, value in _fields(data):
        if field == 1:  # SentencePiece { piece = 1; score = 2; type = 3 }
            text, score, kind = "", 0.0, NORMAL
            for f, _, v in _fields(value):
                if f == 1:
                    text = v.decode("utf-8")
                elif f == 2:
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    kind = v
            pieces.append((text, score, kind))
        elif field == 2:  # TrainerSpec { model_type = 3; byte_fallback = 35 }
            for f, _, v in _fields(value):
                if f == 3:
                    model_type = v
                elif f == 35:
                    byte_fallback = bool(v)
    if not pieces:
        raise ValueError("no pieces")
    return pieces, BPE if model_type is None else model_type, byte_fallback


def _merges(pieces: list[tuple[str, float, int]], vocab: dict[str, int]) -> list[str]:
    """transformers 4.x's SentencePieceExtractor.extract(vocab_scores): every split of every piece into
    two pieces, ordered by the piece's score (stable), ties by the ids of the two halves."""
    merges = []
    for text, score, _ in pieces:
        local = [(text[:i], text[i:], score) for i in range(1, len(text)) if text[:i] in vocab and text[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)
    return [f"{left} {right}" for left, right, _ in merges]


def tokenizer_json(model_path: Path, added_tokens_decoder: dict[str, Any]) -> str:
    """The tokenizer.json transformers 4.x would write for this Llama-style SentencePiece model."""
    try:
        pieces, model_type, byte_fallback = read_model(model_path)
    except ValueError as exc:
        raise MmzooError(str(exc), path=model_path) from None
    if model_type != BPE or not byte_fallback:
        raise MmzooError("only Llama-style SentencePiece models (BPE with byte fallback) can be read without a tokenizer.json",
                         path=model_path, hint="save the tokenizer with transformers (save_pretrained) to get a tokenizer.json")
    vocab = {text: i for i, (text, _, _) in enumerate(pieces)}
    added = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
             for i, (text, _, kind) in enumerate(pieces) if kind in (UNKNOWN, CONTROL)]
    known = {t["id"] for t in added}
    for key, entry in sorted(added_tokens_decoder.items(), key=lambda kv: int(kv[0])):
        if int(key) not in known and isinstance(entry, dict) and "content" in entry:
            added.append({"id": int(key), "content": entry["content"], "single_word": bool(entry.get("single_word")),
                          "lstrip": bool(entry.get("lstrip")), "rstrip": bool(entry.get("rstrip")),
                          "normalized": bool(entry.get("normalized")), "special": bool(entry.get("special", True))})
    unk = next((text for text, _, kind in pieces if kind == UNKNOWN), None)
    data = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                          {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "vocab": vocab, "merges": _merges(pieces, vocab)},
    }
    return json.dumps(data, ensure_ascii=False)
