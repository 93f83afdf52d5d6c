"""Small, dependency-free edits of tokenizer files (no transformers import)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CorruptFile
from ..io.structured import load_json, read_bytes, read_tokenizer_text, tokenizer_file_limit


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
            # ignore_merges stays: tokenizers < 0.19 skips the field, newer ones need it (Llama-3 tokenizes
            # differently without it, e.g. "Cửa Việt")
            model["merges"] = [" ".join(pair) for pair in merges]
    return json.dumps(data, ensure_ascii=False, indent=2)


def chat_template(files: dict[str, Path]) -> str | None:
    """The default chat template, wherever the files keep it: chat_template.jinja (5.x),
    chat_template.json (4.x processors) or tokenizer_config.json (4.x tokenizers)."""
    if "chat_template.jinja" in files:
        return read_tokenizer_text(files["chat_template.jinja"])
    for name in ("chat_template.json", "tokenizer_config.json"):
        if name in files:
            template = json.loads(read_tokenizer_text(files[name])).get("chat_template")
            if isinstance(template, str):
                return template
    return None


def legacy_tokenizer_config(text: str, template: str | None = None) -> str:
    """What transformers 4.x needs in tokenizer_config.json: 5.x writes tokenizer_class
    "TokenizersBackend" (unknown to 4.x: name a class both know), a list of extra_special_tokens (4.x:
    additional_special_tokens) and keeps the chat template in chat_template.jinja (4.x tokenizers read
    it from here). ``text`` comes back unchanged when it needs none of this."""
    data = json.loads(text)
    changed = False
    if data.get("tokenizer_class") in (None, "TokenizersBackend"):
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    if "extra_special_tokens" in data and isinstance(data["extra_special_tokens"], list):
        data.setdefault("additional_special_tokens", data.pop("extra_special_tokens"))
        changed = True
    if template is not None and "chat_template" not in data:
        data["chat_template"] = template
        changed = True
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n" if changed else text


def write_transformers4_tokenizer_files(files: dict[str, Path], folder: Path) -> None:
    """After the tokenizer files were copied to ``folder``: the 4.x-readable tokenizer_config.json and
    chat_template.json (the processor's template in 4.x; 5.x reads it too, with the same content)."""
    template = chat_template(files)
    if "tokenizer_config.json" in files:
        text = read_tokenizer_text(files["tokenizer_config.json"])
        legacy = legacy_tokenizer_config(text, template)
        if legacy != text:
            (folder / "tokenizer_config.json").write_text(legacy, encoding="utf-8")
    if template is not None and "chat_template.json" not in files:
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _next_free_id(tokenizer_json: dict) -> int:
    vocab = (tokenizer_json.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # Unigram: a list
    ids += [t["id"] for t in tokenizer_json.get("added_tokens", [])]
    return max(ids, default=-1) + 1


def _dump(data: dict) -> str:
    # the layout tokenizers and transformers write (2-space indent, UTF-8 kept)
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def add_special_token(files: dict[str, Path], save_dir: Path, token: str) -> tuple[int, dict[str, Path]]:
    """Copy the tokenizer files to ``save_dir`` byte for byte and give them the special ``token`` (if
    missing) by editing tokenizer.json's ``added_tokens`` and tokenizer_config.json's
    ``added_tokens_decoder`` directly. No tokenizer library loads and re-saves them: a load+save
    round trip through transformers 5 changes how a SentencePiece tokenizer tokenizes.
    Returns (the token's id, the new files)."""
    save_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, src in files.items():
        (save_dir / name).write_bytes(read_bytes(src, limit=tokenizer_file_limit(name)))
        out[name] = save_dir / name
    tokenizer_json = json.loads(out["tokenizer.json"].read_text(encoding="utf-8")) if "tokenizer.json" in out else None
    config = json.loads(out["tokenizer_config.json"].read_text(encoding="utf-8")) if "tokenizer_config.json" in out else {}
    decoder = config.get("added_tokens_decoder") or {}
    existing = {t["content"]: t["id"] for t in (tokenizer_json or {}).get("added_tokens", [])}
    existing.update({v["content"]: int(k) for k, v in decoder.items() if isinstance(v, dict)})
    if tokenizer_json is not None:
        vocab = (tokenizer_json.get("model") or {}).get("vocab")
        if isinstance(vocab, dict) and token in vocab:
            existing.setdefault(token, vocab[token])
    if token in existing:
        return existing[token], out
    if tokenizer_json is not None:
        token_id = _next_free_id(tokenizer_json)
    elif "tokenizer.model" in out:
        from ..io.sentencepiece import read_model

        token_id = max([len(read_model(out["tokenizer.model"])[0]) - 1, *existing.values()]) + 1
    else:
        raise ValueError("no tokenizer.json or tokenizer.model to add a token to")
    entry = {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    if tokenizer_json is not None:
        tokenizer_json.setdefault("added_tokens", []).append({"id": token_id, **entry})
        out["tokenizer.json"].write_text(_dump(tokenizer_json), encoding="utf-8")
    # transformers 4.34+ and 5.x read added_tokens_decoder; the token list makes it an "additional special token"
    config["added_tokens_decoder"] = {**decoder, str(token_id): entry}
    key = "extra_special_tokens" if isinstance(config.get("extra_special_tokens"), list) else "additional_special_tokens"
    config[key] = [*(config.get(key) or []), token]
    (save_dir / "tokenizer_config.json").write_text(_dump(config), encoding="utf-8")
    out["tokenizer_config.json"] = save_dir / "tokenizer_config.json"
    if "special_tokens_map.json" in out:  # 4.x lets this file's list override the config's
        special_map = json.loads(out["special_tokens_map.json"].read_text(encoding="utf-8"))
        if key in special_map:
            special_map[key] = [*special_map[key], token]
            out["special_tokens_map.json"].write_text(_dump(special_map), encoding="utf-8")
    return token_id, out
