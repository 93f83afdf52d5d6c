"""Tokenize text exactly as transformers' tokenizer for the same folder does, fast, with offsets.

Byte-level BPE tokenizers (Llama-3, Qwen2, ...) are used as tokenizer.json says. SentencePiece
tokenizers need care: transformers 4.x's LlamaConverter writes tokenizer.json with a
``Prepend("▁")`` normaliser, which puts the "dummy prefix" ▁ before the text after every special
token; the slow tokenizer with ``legacy: false`` (what LLaVA-1.5, Vicuna v1.5 and Phi-3 ship, and what
the original LLaVA code trains with) puts it only at the start of the text. For those, the prefix is
taken out of the tokenizer and added here where the slow tokenizer adds it.
"""
from __future__ import annotations

import json
from typing import Any

SPIECE_PREFIX = "\u2581"


def _drops_dummy_prefix(data: dict[str, Any]) -> bool:
    """Take the automatic ▁ prefix out of a tokenizer.json; True if there was one."""
    normalizer = data.get("normalizer") or {}
    parts = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else [normalizer]
    kept = [n for n in parts if not (n.get("type") == "Prepend" and n.get("prepend") == SPIECE_PREFIX)]
    if len(kept) != len(parts):
        data["normalizer"] = {"type": "Sequence", "normalizers": kept}
        return True
    pre = data.get("pre_tokenizer") or {}
    for item in pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]:
        if item.get("type") == "Metaspace" and item.get("prepend_scheme", "always") == "always" and item.get("add_prefix_space", True):
            item["prepend_scheme"] = "never"
            item.pop("add_prefix_space", None)
            return True
    return False


RESAVED_BY_TRANSFORMERS5 = (
    "the tokenizer files were re-saved by transformers 5 (tokenizer_config.json has \"backend\"; tokenizer.json has the "
    "SentencePiece pieces behind a Metaspace pre-tokenizer that prefixes only the first piece of text): such a save "
    "tokenizes text that starts with a space, and the text after a special token, unlike the original tokenizer of the "
    "checkpoint (Llama-2's: 32 of llama.cpp's 47 test strings as the original); use the checkpoint's original "
    "tokenizer files unless the model was trained with these"
)


def resaved_by_transformers5(data: dict[str, Any], config: dict[str, Any]) -> bool:
    """A SentencePiece (Llama-2 / Vicuna / Mistral / Phi-3 style) tokenizer as transformers 5's
    save_pretrained writes it: byte-fallback BPE, no "▁" normaliser, a Metaspace pre-tokenizer with
    prepend_scheme "first", and the 5.x "backend" entry in tokenizer_config.json. Published checkpoints
    ship the slow tokenizer.model and/or transformers 4.x's layout (Prepend + Replace normaliser)."""
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    return (
        "backend" in config and model.get("type") == "BPE" and model.get("byte_fallback") is True
        and pre.get("type") == "Metaspace" and pre.get("prepend_scheme") == "first"
        and not (data.get("normalizer") or {}).get("normalizers")
    )


class TextTokenizer:
    """``encode(texts)`` -> per text (ids, offsets); no special tokens are added."""

    def __init__(self, json_text: str, legacy: bool, loaded: Any = None):
        """``loaded``: ``json_text`` already loaded as a ``tokenizers.Tokenizer``, used as is when
        nothing needs changing (saves loading a large vocabulary twice)."""
        from tokenizers import Tokenizer

        data = json.loads(json_text)
        self.added = tuple(t["content"] for t in data.get("added_tokens", []))
        # legacy=True keeps 4.x's behaviour (prefix after special tokens too): the tokenizer as it is.
        self.manual_prefix = not legacy and _drops_dummy_prefix(data)
        if self.manual_prefix:
            self.tokenizer = Tokenizer.from_str(json.dumps(data))
        else:
            self.tokenizer = loaded if loaded is not None else Tokenizer.from_str(json_text)

    def encode(self, texts: list[str]) -> list[tuple[Any, int]]:
        """Per text: (tokenizers Encoding, shift), where character c of the text is character c + shift
        of the encoded string (1 where a "▁" prefix was added here)."""
        if not texts:
            return []
        if not self.manual_prefix:
            return [(e, 0) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        # The slow tokenizer prefixes the text with "▁" unless it starts with a special token.
        shifts = [0 if (not t or t.startswith(self.added)) else 1 for t in texts]
        encodings = self.tokenizer.encode_batch([" " + t if s else t for t, s in zip(texts, shifts)], add_special_tokens=False)
        return list(zip(encodings, shifts))


def token_at(encoding: Any, char: int, stop: int, step: int) -> int | None:
    """The token holding character ``char``, or the next one that has a token in direction ``step``
    before reaching ``stop`` (characters absorbed by an added token's lstrip/rstrip belong to none)."""
    while char != stop:
        token = encoding.char_to_token(char)
        if token is not None:
            return token
        char += step
    return None
