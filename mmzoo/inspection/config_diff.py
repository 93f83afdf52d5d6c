"""The non-tensor half of ``mmzoo diff``: model, generation, processor and tokenizer settings.

Two checkpoints with identical tensors still behave differently when, say, ``image_token_id``,
``rope_theta`` or the chat template differ, so these are compared too. Formats spell the same settings
differently (the ``llava`` layout keeps the text config beside ``mm_*`` keys, 4.x and 5.x tokenizer files
spell merges and special tokens differently), so comparison happens on meaning, not bytes: the model
config as mmzoo's format-independent ``ModelSpec``, JSON files field by field after the known equivalent
spellings are made one, and every other file by its content hash.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..converters.common import transformers4_text_fields
from ..io.structured import read_bytes, read_tokenizer_text, tokenizer_file_limit
from ..checkpoint.spec import Checkpoint
from ..checkpoint.tokenizer_files import legacy_tokenizer_config, legacy_tokenizer_json

# Bookkeeping that says who wrote a file or how it was stored, not how the model behaves. Tensor dtypes
# are compared tensor by tensor, so the declared dtype is left out here.
BOOKKEEPING = frozenset({
    "architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype", "_from_model_config",
    "_commit_hash", "provenance", "processor_class", "_processor_class",
})
# How deep nested settings are reported field by field (``text_config.rope_parameters.rope_theta`` in the
# model config, ``model.vocab`` in tokenizer.json); deeper values (a vocabulary) are compared whole.
MODEL_DEPTH, FILE_DEPTH = 3, 2
PROCESSOR_CONFIG = "processor_config.json"
MIRRORED_ROPE_FIELDS = ("rope_theta", "rope_scaling", "partial_rotary_factor")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Files whose JSON is normalised to one spelling before comparing (the 4.x ↔ 5.x differences mmzoo writes)
NORMALISE = {"tokenizer.json": legacy_tokenizer_json, "tokenizer_config.json": legacy_tokenizer_config}


def diff_configs(left: Checkpoint, right: Checkpoint) -> list[dict[str, Any]]:
    """One row per differing setting: ``{"file", "field", "a", "b"}`` (long values shown by size and hash)."""
    rows = _diff_values("model config", _model_settings(left), _model_settings(right), limit=MODEL_DEPTH)
    rows += _diff_values("image processor", left.image_processor or {}, right.image_processor or {})
    rows += _diff_processor_configs(Path(left.path), Path(right.path))
    # The chat template is one setting wherever it is kept (chat_template.jinja, chat_template.json or inside
    # tokenizer_config.json: transformers 4.x and 5.x each read different ones)
    a_template, b_template = chat_template(left.tokenizer_files), chat_template(right.tokenizer_files)
    if a_template != b_template:
        rows.append(_row("tokenizer", "chat_template", a_template, b_template))
    for a_files, b_files in ((_without_templates(left.tokenizer_files), _without_templates(right.tokenizer_files)),
                             (left.extra_files, right.extra_files)):
        for name in sorted(set(a_files) | set(b_files)):
            if name not in a_files or name not in b_files:
                rows.append(_row(name, "(file)", "present" if name in a_files else "absent",
                                 "present" if name in b_files else "absent"))
            else:
                rows += _diff_files(name, a_files[name], b_files[name])
    return rows


def _model_settings(ckpt: Checkpoint) -> dict[str, Any]:
    """The model config without the rope fields the hf writer mirrors at the top level for transformers 4.x:
    they say again what ``rope_parameters`` says, so only a mirror that disagrees with it is kept (and shown)."""
    settings = ckpt.spec.model_dump()
    text = settings.get("text_config")
    if isinstance(text, dict):
        mirrored = transformers4_text_fields({k: v for k, v in text.items() if k not in MIRRORED_ROPE_FIELDS})
        settings["text_config"] = {k: v for k, v in text.items() if not (k in mirrored and mirrored[k] == v)}
    return settings


def _without_templates(files: dict[str, Path]) -> dict[str, Path]:
    return {name: path for name, path in files.items() if name not in TEMPLATE_FILES}


def chat_template(files: dict[str, Path]) -> Any:
    """The tokenizer's chat template, from the file transformers 5 reads first, else where 4.x keeps it."""
    if "chat_template.jinja" in files:
        return read_tokenizer_text(files["chat_template.jinja"])
    for name in ("chat_template.json", "tokenizer_config.json"):
        if name in files:
            data = _json(name, read_bytes(files[name], limit=tokenizer_file_limit(name)), keep_template=True)
            if isinstance(data, dict) and data.get("chat_template") is not None:
                return data["chat_template"]
    return None


def _diff_processor_configs(a: Path, b: Path) -> list[dict[str, Any]]:
    """The processor's own fields (patch_size, image_token, ...) of hf folders. Only hf folders have the file and
    its writer derives it from the model config, so one side without it is not a difference."""
    a_file, b_file = a / PROCESSOR_CONFIG, b / PROCESSOR_CONFIG
    if not (a_file.is_file() and b_file.is_file()):
        return []
    a_data, b_data = _json(PROCESSOR_CONFIG, a_file.read_bytes()), _json(PROCESSOR_CONFIG, b_file.read_bytes())
    if not (isinstance(a_data, dict) and isinstance(b_data, dict)):
        return _diff_files(PROCESSOR_CONFIG, a_file, b_file)
    nested = "image_processor"  # compared above, wherever a format keeps it
    return _diff_values(PROCESSOR_CONFIG, {k: v for k, v in a_data.items() if k != nested},
                        {k: v for k, v in b_data.items() if k != nested})


def _diff_files(name: str, a: Path, b: Path) -> list[dict[str, Any]]:
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    if a_bytes == b_bytes:
        return []
    if name.endswith(".json"):
        a_data, b_data = _json(name, a_bytes), _json(name, b_bytes)
        if a_data is not None and b_data is not None:
            return _diff_values(name, a_data, b_data)
    return [_row(name, "(content)", _digest(a_bytes), _digest(b_bytes))]


def _json(name: str, data: bytes, keep_template: bool = False) -> Any:
    try:
        text = data.decode("utf-8")
        if name in NORMALISE:
            text = NORMALISE[name](text)
        parsed = json.loads(text)
    except (UnicodeDecodeError, ValueError, AttributeError, TypeError):
        return None  # not comparable field by field: the content hash decides
    if isinstance(parsed, dict) and not keep_template:
        parsed.pop("chat_template", None)  # compared on its own (see chat_template)
    return parsed


def _diff_values(file: str, a: Any, b: Any, prefix: str = "", depth: int = 0, limit: int = FILE_DEPTH) -> list[dict[str, Any]]:
    if isinstance(a, dict) and isinstance(b, dict) and depth < limit:
        rows = []
        for key in sorted(set(a) | set(b), key=str):
            if key in BOOKKEEPING:
                continue
            field = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                rows.append(_row(file, field, a.get(key, "(absent)"), b.get(key, "(absent)")))
            else:
                rows += _diff_values(file, a[key], b[key], field, depth + 1, limit)
        return rows
    return [] if a == b else [_row(file, prefix or "(whole file)", a, b)]


def _row(file: str, field: str, a: Any, b: Any) -> dict[str, Any]:
    return {"file": file, "field": field, "a": _shown(a), "b": _shown(b)}


def _shown(value: Any) -> Any:
    """Small values as they are; large ones (a vocabulary, a template) as their size and hash."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    if len(text) <= 120:
        return value
    size = f"{len(value)} entries" if isinstance(value, (dict, list)) else f"{len(text)} characters"
    return f"<{size}, sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}>"


def _digest(data: bytes) -> str:
    return f"sha256 {hashlib.sha256(data).hexdigest()[:12]} ({len(data)} bytes)"
