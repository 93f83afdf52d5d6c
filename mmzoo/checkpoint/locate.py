"""Find the parts of a checkpoint folder of any format without reading tensors (stdlib + yaml only)."""
from __future__ import annotations

import json

from pathlib import Path
from typing import Any

from ..errors import ConfigError, MmzooError
from ..io.structured import load_json, load_yaml

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a config-like file, within the bounds of :mod:`mmzoo.io.structured`."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object", path=path)
    architectures = data.get("architectures")
    # every format's detect() asks `NAME in config["architectures"]`: an int there was a TypeError traceback
    if architectures is not None and not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
        raise ConfigError(f"architectures must be a list of class names (got {json.dumps(architectures)[:80]})", path=path)
    return data


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / m).is_file() for m in TOKENIZER_MARKERS)


def tokenizer_folder(path: str | Path) -> Path:
    """The folder holding tokenizer files for a tokenizer folder or any checkpoint mmzoo reads:
    hf (root), internal (``tokenizer/``), llava (``text_model_llava/`` or ``text_model/``)."""
    root = Path(path)
    if not root.exists():
        raise MmzooError("does not exist", path=root)
    for candidate in (root / "tokenizer", root / "text_model_llava", root / "text_model", root):
        if candidate.is_dir() and _has_tokenizer(candidate):
            return candidate
    raise MmzooError("no tokenizer files found (tokenizer.json / tokenizer_config.json / tokenizer.model)", path=root)


def read_manifest(root: Path) -> dict[str, Any]:
    """An internal checkpoint's mmzoo.yaml (bounded like every config file), with its 'model' section."""
    data = load_yaml(root / "mmzoo.yaml")
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError("missing the 'model' section", path=root / "mmzoo.yaml")
    return data


def _manifest_model(root: Path) -> dict[str, Any]:
    model = read_manifest(root)["model"]
    if not isinstance(model.get("vision_config"), dict):
        raise ConfigError("the 'model' section has no vision_config", path=root / "mmzoo.yaml")
    return model


def vision_config(path: str | Path) -> dict[str, Any]:
    """The vision encoder config (HF dict) of a checkpoint in any format, or of a vision folder."""
    root = Path(path)
    if (root / "mmzoo.yaml").is_file():
        return dict(_manifest_model(root)["vision_config"])
    if (root / "image_model" / "config.json").is_file():
        root = root / "image_model"
    config = read_json(root / "config.json")
    if "vision_config" in config:
        return dict(config["vision_config"])
    return config


def select_strategy(path: str | Path) -> str:
    """``default`` (CLS dropped) or ``full``; LLaVA folders say it as mm_vision_select_feature."""
    root = Path(path)
    if (root / "mmzoo.yaml").is_file():
        return _manifest_model(root).get("vision_feature_select_strategy", "default")
    for text in (root / "text_model_llava", root / "text_model"):
        if (text / "config.json").is_file():
            feature = read_json(text / "config.json").get("mm_vision_select_feature", "patch")
            return "default" if feature == "patch" else "full"
    if (root / "config.json").is_file():
        return read_json(root / "config.json").get("vision_feature_select_strategy", "default")
    return "default"


def num_image_tokens(path: str | Path) -> int:
    """How many placeholder tokens one image takes in the LLM input for the model at ``path``."""
    from ..archs.checks import check_vision_config

    cfg = vision_config(path)
    check_vision_config(cfg)
    patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
    has_cls = cfg.get("model_type", "clip_vision_model") in ("clip_vision_model", "clip")
    return patches + (1 if has_cls and select_strategy(path) == "full" else 0)


VISION_MODEL_TYPES = ("clip", "clip_vision_model", "siglip", "siglip_vision_model")


def not_a_vlm_hint(path: str | Path) -> str | None:
    """What a folder no format recognises is instead, when it is one of the two halves ``mmzoo init``
    assembles: a plain LLM or a vision encoder. None for anything else."""
    root = Path(path)
    try:
        config = read_json(root / "config.json")
    except MmzooError:
        return None
    model_type = str(config.get("model_type", ""))
    architectures = [str(a) for a in config.get("architectures") or []]
    if model_type in VISION_MODEL_TYPES or any(a.startswith(("CLIP", "Siglip")) for a in architectures):
        return (f"{root}: is a vision encoder ({model_type or architectures[0]}), not a vision-language model; assemble one "
                f"with `mmzoo init --vision {root} --text LLM -o OUT`")
    if "vision_config" not in config and (
        any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) or "num_hidden_layers" in config
    ):
        what = model_type or (architectures[0] if architectures else "no model_type")
        return (f"{root}: is a plain language model ({what}), not a vision-language model; assemble one with "
                f"`mmzoo init --vision VISION --text {root} -o OUT`")
    return None
