"""Sanity bounds on the config numbers mmzoo computes with, checked before any shape arithmetic.

A config from the internet may say ``num_hidden_layers: 1e10`` (a loop that never ends), ``0`` heads
or patch size (ZeroDivisionError), a string or nothing where a size belongs (TypeError, KeyError).
Each becomes one ConfigError naming the key. The bounds are far above any real model (GPT-4-class
models have ~120 layers and ~200k vocabularies) and only exist so that a wrong value cannot make
mmzoo loop or allocate without end.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError

_DEFAULT_MAX = 1 << 20  # widths, heads, sizes in pixels
_MAX = {"num_hidden_layers": 10_000, "vocab_size": 1 << 24, "num_experts": 4096, "num_local_experts": 4096}

TEXT_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
TEXT_OPTIONAL = ("num_key_value_heads", "head_dim", "num_local_experts", "num_experts", "num_experts_per_tok",
                 "moe_intermediate_size", "shared_expert_intermediate_size")
VISION_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size")
VISION_OPTIONAL = ("num_channels",)


def is_whole(value: Any) -> bool:
    """An int that is not a bool (JSON's true/false arrive as bools, which are ints in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def with_transformers_defaults(cfg: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``cfg`` with the missing ``keys`` filled from transformers' defaults for its ``model_type``.

    transformers 4.x saved the sub-configs of a composite config as a diff against their defaults:
    the genuine ``llava-hf/llava-1.5-7b-hf`` config.json has a ``text_config`` without ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads`` or ``intermediate_size`` (they are LlamaConfig's
    defaults). transformers fills them when it loads the folder; so must a reader of the folder."""
    missing = [k for k in keys if k not in cfg]
    if not missing or not isinstance(cfg.get("model_type"), str):
        return cfg
    from transformers import CONFIG_MAPPING

    if cfg["model_type"] not in CONFIG_MAPPING:
        return cfg
    defaults = CONFIG_MAPPING[cfg["model_type"]]()
    return {**cfg, **{k: getattr(defaults, k) for k in missing if getattr(defaults, k, None) is not None}}


def _number(section: str, cfg: dict[str, Any], key: str) -> int:
    value = cfg[key]
    limit = _MAX.get(key, _DEFAULT_MAX)
    if not is_whole(value) or not 1 <= value <= limit:
        raise ConfigError(f"{section}.{key} must be a whole number from 1 to {limit:,} (got {value!r})")
    return value


def check_component(section: str, cfg: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    if not isinstance(cfg, dict):
        raise ConfigError(f"{section} must be a mapping (got {type(cfg).__name__})")
    missing = [k for k in required if cfg.get(k) is None]
    if missing:
        raise ConfigError(f"{section} has no {', '.join(missing)}")
    for key in required + tuple(k for k in optional if cfg.get(k) is not None):
        _number(section, cfg, key)


def check_text_config(cfg: Any, section: str = "text_config") -> None:
    check_component(section, cfg, TEXT_REQUIRED, TEXT_OPTIONAL)


def check_vision_config(cfg: Any, section: str = "vision_config") -> None:
    check_component(section, cfg, VISION_REQUIRED, VISION_OPTIONAL)
    if cfg["patch_size"] > cfg["image_size"]:
        raise ConfigError(f"{section}.patch_size {cfg['patch_size']} is larger than image_size {cfg['image_size']}")


def check_moe_layout(moe: Any, text_cfg: dict[str, Any], vision_cfg: dict[str, Any]) -> None:
    """The numbers of an MoE layout (``spec.moe``): expert count, top-k and layer indices."""
    if moe is None:
        return
    if not isinstance(moe, dict):
        raise ConfigError(f"the MoE layout must be a mapping (got {type(moe).__name__})")
    for key in ("num_experts", "top_k"):
        if moe.get(key) is not None:
            _number("moe", moe, key)
    for key, cfg in (("layers", text_cfg), ("vision_layers", vision_cfg)):
        layers = moe.get(key)
        if layers is None:
            continue
        count = cfg["num_hidden_layers"]
        if not isinstance(layers, list) or not all(is_whole(i) and 0 <= i < count for i in layers):
            raise ConfigError(f"moe.{key} must be a list of layer indices from 0 to {count - 1}")


MAX_VISION_SCALE = 8  # 64 crops per image: far beyond any published S² setting (LibMoE: 1, 3)


def check_vision_scales(scales: Any) -> None:
    """S² scales: whole numbers, the first 1 (LibMoE's tower runs its first level on the image as given, whatever
    the first scale says, so a list not starting with 1 would not mean what it says)."""
    if not isinstance(scales, list) or not scales or not all(is_whole(s) and 1 <= s <= MAX_VISION_SCALE for s in scales):
        raise ConfigError(f"vision_scales must be a list of whole numbers from 1 to {MAX_VISION_SCALE} (got {scales!r})")
    if len(scales) > MAX_VISION_SCALE:
        raise ConfigError(f"vision_scales has {len(scales)} scales; at most {MAX_VISION_SCALE}")
    if scales[0] != 1:
        raise ConfigError(f"vision_scales must start with 1, the image as given (got {scales!r})")
