"""``inspect`` and ``diff``: describe one checkpoint, or compare two of any formats in canonical names."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from .config_diff import diff_configs
from ..converters.pipeline import read_checkpoint
from ..io.tensors import digest, materialize

COMPONENTS = ("image_model", "projector", "text_model")


def inspect(path: str | Path, fmt: str | None = None) -> dict[str, Any]:
    """Format, architectures, parameter counts, dtypes, files, MoE layout, tokenizer/processor presence."""
    root = Path(path)
    ckpt = read_checkpoint(root, fmt)
    by_component: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    for name, planned in ckpt.tensors.items():
        by_component[name.split(".", 1)[0]] += math.prod(planned.shape)
        dtypes[planned.dtype] += 1
    files = sorted(
        ({"name": str(p.relative_to(root)), "bytes": p.stat().st_size} for p in root.rglob("*") if p.is_file()),
        key=lambda f: f["name"],
    )
    spec = ckpt.spec
    return {
        "path": str(root),
        "format": ckpt.format,
        "vision": spec.vision_type,
        "text": llm_name(spec),
        "text_model_type": spec.text_type,  # the config class it loads with
        "projector": spec.projector_type,
        "vision_scales": spec.vision_scales,  # S² multi-scale image features when not [1]
        "parameters": sum(by_component.values()),
        "parameters_by_component": {c: by_component.get(c, 0) for c in COMPONENTS},
        "tensors": len(ckpt.tensors),
        "dtypes": dict(dtypes),
        "files": files,
        "shards": [f for f in files if f["name"].endswith((".safetensors", ".bin"))],
        "size_bytes": sum(f["bytes"] for f in files),
        "moe": spec.moe,
        "image_token_id": spec.image_token_id,
        "tokenizer": bool(ckpt.tokenizer_files),
        "image_processor": ckpt.image_processor is not None,
        "layers": {"vision": spec.vision_config.get("num_hidden_layers"), "text": spec.text_config.get("num_hidden_layers")},
        "hidden_size": {"vision": spec.vision_config.get("hidden_size"), "text": spec.text_config.get("hidden_size")},
    }


# What mmzoo's MoE readers note for MoE LLMs published as such (archs/moe.py), as opposed to dense LLMs upcycled
# by mmzoo or MoE-LLaVA, whose MoE config class is only a container for the experts
PUBLISHED_MOE_ORIGINS = ("read from a Mixtral", "read from a Qwen2-MoE")


def llm_name(spec) -> str:
    """A Mixtral is a Mixtral; a Llama upcycled into a Qwen2-MoE-shaped (or MoE-LLaVA) config is a Llama."""
    moe = spec.moe or {}
    base = moe.get("base_model_type") or spec.text_config.get("base_model_type")
    if not base or str(moe.get("origin", "")).startswith(PUBLISHED_MOE_ORIGINS):
        return spec.text_type
    return base


def check_checkpoint(path: str | Path, fmt: str | None = None) -> dict[str, Any]:
    """Validate a checkpoint completely (configs, index, every header and byte range, shapes) and
    return its ``inspect`` summary; raises an ``MmzooError`` naming the first problem."""
    return inspect(path, fmt)


def diff(a: str | Path, b: str | Path, *, atol: float | None = None, weights_only: bool = False) -> dict[str, Any]:
    """Compare two checkpoints of any formats: tensors by canonical name (equal means identical bytes, or
    within ``atol`` when given; dtype and shape must still match), then model, generation, processor and
    tokenizer settings (:mod:`mmzoo.inspection.config_diff`) unless ``weights_only``."""
    left, right = read_checkpoint(a), read_checkpoint(b)
    rows: list[dict[str, Any]] = []
    for name in sorted(set(left.tensors) | set(right.tensors)):
        lt, rt = left.tensors.get(name), right.tensors.get(name)
        if lt is None or rt is None:
            rows.append({"tensor": name, "problem": "only in A" if rt is None else "only in B"})
        elif lt.shape != rt.shape:
            rows.append({"tensor": name, "problem": f"shape {list(lt.shape)} vs {list(rt.shape)}"})
        elif lt.dtype != rt.dtype:
            rows.append({"tensor": name, "problem": f"dtype {lt.dtype} vs {rt.dtype}", "max_abs_diff": _max_abs(lt, rt)})
        elif digest(lt) != digest(rt):
            delta = _max_abs(lt, rt)
            if atol is None or not delta <= atol:
                rows.append({"tensor": name, "problem": "values differ", "max_abs_diff": delta})
    config_rows = None if weights_only else diff_configs(left, right)
    return {"a": str(a), "b": str(b), "a_format": left.format, "b_format": right.format,
            "tensors": len(set(left.tensors) | set(right.tensors)), "equal": not rows and not config_rows,
            "differences": rows, "config_differences": config_rows}


def _max_abs(lt, rt) -> float:
    import torch

    x, y = materialize(lt), materialize(rt)
    if not (x.is_floating_point() or y.is_floating_point()):
        return float((x.to(torch.int64) - y.to(torch.int64)).abs().max()) if x.numel() else 0.0
    return float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
