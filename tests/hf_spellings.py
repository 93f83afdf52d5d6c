"""The key spellings of hf Llava folders found in the wild, to rewrite a folder transformers 5 saved
(``language_model.model.*``, ``vision_tower.*``) into another one; shared by the reader tests."""
from __future__ import annotations

from pathlib import Path


def old_4x(key: str) -> str:
    """transformers 4.x and the published llava-hf checkpoints: ``vision_tower.vision_model.*``."""
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1)


def newest(key: str) -> str:
    """A 5.x model's in-memory state dict: ``model.language_model.*``, ``lm_head.*``, ``model.vision_tower.*``."""
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    if key.startswith("language_model.lm_head."):
        return key[len("language_model."):]
    return "model." + key


def rewrite_keys(folder: Path, rename) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    save_file({rename(k): v for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
