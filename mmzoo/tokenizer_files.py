"""Small, dependency-free edits of tokenizer files (no transformers import)."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import CorruptFile
from .io.structured import load_json


def added_tokens(files: dict[str, Path]) -> dict[str, int]:
    path = files.get("tokenizer.json")
    if path is None:
        return {}
    data = load_json(path)  # a downloaded file: bounded, and its errors name it
    tokens = data.get("added_tokens", []) if isinstance(data, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, dict) and "content" in t and "id" in t for t in tokens):
        raise CorruptFile("added_tokens is not a list of {content, id} entries", path=path)
    return {t["content"]: t["id"] for t in tokens}


def token_for_id(files: dict[str, Path], token_id: int | None) -> str | None:
    for content, tid in added_tokens(files).items():
        if tid == token_id:
            return content
    return None


def legacy_tokenizer_json(text: str) -> str:
    """tokenizers >= 0.20 stores BPE merges as pairs; tokenizers < 0.19 (transformers 4.37, used by
    the LLaVA code) only reads "a b" strings. Convert when no merge part contains a space."""
    data = json.loads(text)
    model = data.get("model") or {}
    merges = model.get("merges")
    if isinstance(merges, list) and merges and isinstance(merges[0], list):
        if all(" " not in part for pair in merges for part in pair):
            model["merges"] = [" ".join(pair) for pair in merges]
            model.pop("ignore_merges", None)
    return json.dumps(data, ensure_ascii=False, indent=2)


def legacy_tokenizer_config(text: str) -> str:
    """5.x writes tokenizer_class "TokenizersBackend", unknown to 4.x; name a class 4.x has."""
    data = json.loads(text)
    if data.get("tokenizer_class") in (None, "TokenizersBackend"):
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
    if "extra_special_tokens" in data and isinstance(data["extra_special_tokens"], list):
        data.setdefault("additional_special_tokens", data.pop("extra_special_tokens"))
    return json.dumps(data, ensure_ascii=False, indent=2)
