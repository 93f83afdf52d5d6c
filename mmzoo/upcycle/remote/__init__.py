"""transformers remote code for MoE layouts no built-in class expresses (the ``hf`` format's path for them).

``configuration_mmzoo_moe.py`` and ``modeling_mmzoo_moe.py`` in this folder import only torch and
transformers: mmzoo runs them in-process (``mmzoo.load_model``) and copies them verbatim into ``hf``
folders, whose ``config.json`` names them in ``auto_map``; such a folder loads anywhere with
``AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)``. This module is the
mmzoo side: when a checkpoint needs them, the ``config.json`` dict, and copying the files.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FILES = ("configuration_mmzoo_moe.py", "modeling_mmzoo_moe.py")
MODEL_TYPE = "mmzoo_moe_llava"  # configuration_mmzoo_moe.MmzooMoeLlavaConfig.model_type
ARCHITECTURE = "MmzooMoeLlavaForConditionalGeneration"
AUTO_MAP = {
    "AutoConfig": "configuration_mmzoo_moe.MmzooMoeLlavaConfig",
    "AutoModelForImageTextToText": "modeling_mmzoo_moe.MmzooMoeLlavaForConditionalGeneration",
}
CONFIG_KEYS = ("auto_map", "mmzoo_moe_blocks")  # top-level config.json keys of this path (not spec.extra)


def needs_remote_code(spec) -> bool:
    """An MoE layout with no built-in transformers class (``text_config.model_type == "mmzoo_moe"``)."""
    return bool(spec.moe) and spec.text_type == "mmzoo_moe"


def is_remote_config(config: dict[str, Any]) -> bool:
    return config.get("model_type") == MODEL_TYPE or ARCHITECTURE in (config.get("architectures") or [])


def block_options(tensors) -> dict[str, bool]:
    """What the layout does not state but the modules need: DeepSpeed residual MLPs, and whether their
    coefficient has a bias (read from the canonical tensor names)."""
    residual = any(".residual." in name for name in tensors)
    return {"residual": residual, "coefficient_bias": residual and any(n.endswith("coefficient.bias") for n in tensors)}


def hf_config(ckpt, llava_config: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of a remote-code folder: the Llava config (its ``text_config`` is the mmzoo_moe one,
    layout inside), renamed to this model type, with ``auto_map`` and the block options."""
    config = dict(llava_config)
    config.update(architectures=[ARCHITECTURE], model_type=MODEL_TYPE, auto_map=dict(AUTO_MAP),
                  mmzoo_moe_blocks=block_options(ckpt.tensors))
    return config


def copy_code(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(HERE / name, folder / name)
