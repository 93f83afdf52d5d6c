"""``hf``: a transformers ``LlavaForConditionalGeneration`` folder.

Reading accepts the three key spellings seen in the wild (4.x ``language_model.model.*`` +
``vision_tower.vision_model.*``, 5.x saved ``vision_tower.*``, 5.x in-memory ``model.language_model.*``
+ ``lm_head.weight``). Writing uses the 4.x spelling (``language_model.model.*``,
``vision_tower.vision_model.*``, as the published llava-hf checkpoints), which 4.x loads as it is and
5.x maps on load; 5.x's own ``save_pretrained`` drops the ``vision_model.`` infix, and 4.x then runs a
random vision tower. The configs and tokenizer files carry what 4.x reads too (top-level
``rope_theta``, ``torch_dtype``, ``image_seq_length``, a tokenizer class 4.x knows, the chat template in
tokenizer_config.json and chat_template.json). MoE layouts no built-in class expresses are written
with mmzoo's remote code (``mmzoo.upcycle.remote``: ``model_type: mmzoo_moe_llava``, ``auto_map``, the
two Python files, weights under the model's in-memory names); loading them needs
``trust_remote_code=True`` and transformers 5.x.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..archs.checks import TEXT_REQUIRED, VISION_REQUIRED, with_transformers_defaults
from ..errors import ConfigError, UnknownArchitecture
from ..io.checkpoint import read_weights, write_weights
from ..io.tensors import Planned
from ..checkpoint.locate import read_json
from ..checkpoint.spec import Checkpoint, ModelSpec, find_tokenizer_files
from ..checkpoint.tokenizer_files import write_transformers4_tokenizer_files
from .common import (
    copy_files, detection_config, image_seq_length, native_components, processor_from_folder, split_by_prefix,
    to_canonical, transformers4_text_fields, write_json,
)

NAME = "hf"
DESCRIPTION = "transformers LlavaForConditionalGeneration folder (config.json + safetensors + tokenizer + processor)"

READ_PREFIXES = [
    ("language_model.model.", "text", "model."),
    ("language_model.lm_head.", "text", "lm_head."),
    ("model.language_model.", "text", "model."),
    ("lm_head.", "text", "lm_head."),
    ("vision_tower.vision_model.", "vision", ""),
    ("vision_tower.", "vision", ""),
    ("model.vision_tower.vision_model.", "vision", ""),
    ("model.vision_tower.", "vision", ""),
    ("multi_modal_projector.", "projector", ""),
    ("model.multi_modal_projector.", "projector", ""),
]
# (component, native prefix, written prefix): the 4.x spelling, which both 4.x and 5.x load
WRITE_PREFIXES = {"vision": [("", "vision_tower.vision_model.")], "projector": [("", "multi_modal_projector.")],
                  "text": [("model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")]}
# the in-memory module names of a 5.x LlavaForConditionalGeneration (for load_state_dict)
MEMORY_PREFIXES = {"vision": [("", "model.vision_tower.")], "projector": [("", "model.multi_modal_projector.")],
                   "text": [("model.", "model.language_model."), ("lm_head.", "lm_head.")]}

_OWN_KEYS = {
    "architectures", "model_type", "vision_config", "text_config", "image_token_index", "image_token_id",
    "projector_hidden_act", "vision_feature_layer", "vision_feature_select_strategy", "image_seq_length",
    "multimodal_projector_bias", "dtype", "torch_dtype", "transformers_version",
}


def detect(path: Path) -> bool:
    data = detection_config(path)
    if data is None:
        return (path / "config.json").is_file()  # a config.json that is not JSON: let read() report it
    if data.get("model_type") == "llava" or "LlavaForConditionalGeneration" in (data.get("architectures") or []):
        return True
    from ..upcycle.remote import is_remote_config

    return is_remote_config(data)


def spec_from_config(config: dict[str, Any], where: Path) -> ModelSpec:
    from ..upcycle import remote

    own = _OWN_KEYS | set(remote.CONFIG_KEYS) if remote.is_remote_config(config) else _OWN_KEYS
    if config.get("model_type") not in (None, "llava", remote.MODEL_TYPE):
        raise UnknownArchitecture(f"model_type {config.get('model_type')!r} is not llava", path=where)
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise ConfigError("vision_config and text_config must be JSON objects", path=where / "config.json")
    vision, text = dict(vision), dict(text)
    vision.setdefault("model_type", "clip_vision_model")
    text.setdefault("model_type", "llama")
    vision = with_transformers_defaults(vision, VISION_REQUIRED)  # 4.x saved sub-configs as diffs
    text = with_transformers_defaults(text, TEXT_REQUIRED)
    return ModelSpec(
        vision_config=vision,
        text_config=text,
        projector_hidden_act=config.get("projector_hidden_act", "gelu"),
        projector_bias=config.get("multimodal_projector_bias", True),
        image_token_id=config.get("image_token_index", config.get("image_token_id")),
        vision_feature_layer=config.get("vision_feature_layer", -2),
        vision_feature_select_strategy=config.get("vision_feature_select_strategy", "default"),
        image_seq_length=config.get("image_seq_length"),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        extra={k: v for k, v in config.items() if k not in own},
    )


def read(path: Path, *, drop_unmatched: bool = False) -> Checkpoint:
    where = str(path)
    spec = spec_from_config(read_json(path / "config.json"), path)
    sources = read_weights(path)
    tensors = {name: Planned.of(src) for name, src in sources.items()}
    parts = split_by_prefix(tensors, READ_PREFIXES, drop_unmatched=drop_unmatched, where=where)
    canonical = to_canonical(spec, parts, drop_unmatched=drop_unmatched, where=where)
    extra = {n: path / n for n in ("generation_config.json",) if (path / n).is_file()}
    return Checkpoint(spec, canonical, path, NAME, find_tokenizer_files(path), processor_from_folder(path), extra)


def config_dict(spec: ModelSpec) -> dict[str, Any]:
    if spec.projector_type != "mlp2x_gelu":
        raise UnknownArchitecture(
            f"the hf Llava layout has no {spec.projector_type!r} projector (only mlp2x_gelu); use --tgt-fmt internal or llava"
        )
    config: dict[str, Any] = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "vision_config": spec.vision_config,
        "text_config": {**spec.text_config, **transformers4_text_fields(spec.text_config)},
        "image_token_index": spec.image_token_id,
        "projector_hidden_act": spec.projector_hidden_act,
        "multimodal_projector_bias": spec.projector_bias,
        "vision_feature_layer": spec.vision_feature_layer,
        "vision_feature_select_strategy": spec.vision_feature_select_strategy,
    }
    # without it transformers assumes LLaVA-1.5's 576 image tokens per image
    config["image_seq_length"] = spec.image_seq_length if spec.image_seq_length is not None else image_seq_length(spec)
    if spec.dtype:
        config["dtype"] = spec.dtype
        config["torch_dtype"] = spec.dtype  # the 4.x name (from_pretrained(torch_dtype="auto") reads it)
    config.update(spec.extra)
    return config


def rename(components: dict[str, dict[str, Planned]], prefixes: dict[str, list[tuple[str, str]]]) -> dict[str, Planned]:
    out: dict[str, Planned] = {}
    for component, tensors in components.items():
        for name, planned in tensors.items():
            for native, written in prefixes[component]:
                if name.startswith(native):
                    out[written + name[len(native):]] = planned
                    break
            else:
                raise ConfigError(f"internal error: no {component} prefix for {name!r}")
    return out


def write(ckpt: Checkpoint, out: Path, *, final_path: Path, shard_bytes: int, progress=None, **_: Any) -> None:
    spec = ckpt.spec
    if spec.image_token_id is None:
        raise ConfigError("the checkpoint has no image token id; the hf layout needs one", path=ckpt.path)
    from ..upcycle import remote

    if remote.needs_remote_code(spec):  # mmzoo's MoE modules as transformers remote code, in-memory names
        write_json(out / "config.json", remote.hf_config(ckpt, config_dict(spec)))
        remote.copy_code(out)
        tensors = rename(native_components(ckpt), MEMORY_PREFIXES)
    else:
        write_json(out / "config.json", config_dict(spec))
        tensors = rename(native_components(ckpt), WRITE_PREFIXES)
    write_weights(out, dict(sorted(tensors.items())), max_shard_bytes=shard_bytes, progress=progress)
    copy_files(ckpt.tokenizer_files, out)
    write_transformers4_tokenizer_files(ckpt.tokenizer_files, out)
    copy_files(ckpt.extra_files, out)
    if ckpt.image_processor is not None:
        write_json(out / "preprocessor_config.json", ckpt.image_processor)
        write_json(out / "processor_config.json", processor_config(ckpt))


def transformers4_notes(spec: ModelSpec) -> list[str]:
    """What transformers 4.x (4.46, measured) reads differently from 5.x in this hf folder, one line each."""
    from ..upcycle import remote

    if remote.needs_remote_code(spec):
        return []  # the MoE note already says 4.x cannot load it
    notes = []
    if spec.vision_type != "clip_vision_model":
        notes.append(
            f"transformers 4.46's LlavaProcessor always counts a CLIP class token: for this {spec.vision_type} tower it expands "
            f"<image> to one token more than image_seq_length ({image_seq_length(spec)}); the model itself loads and runs exactly"
        )
    text = spec.text_config
    if text.get("model_type") == "qwen2_moe" and text.get("qkv_bias") is False:
        notes.append(
            "transformers 4.x's Qwen2-MoE always has q/k/v biases: it reports them missing and initialises them to zero, "
            "which gives the same logits"
        )
    return notes


def processor_config(ckpt: Checkpoint) -> dict[str, Any]:
    """LlavaProcessor settings; without patch_size the processor would not expand image tokens."""
    from ..checkpoint.tokenizer_files import token_for_id

    spec = ckpt.spec
    is_clip = spec.vision_type == "clip_vision_model"
    return {
        "processor_class": "LlavaProcessor",
        "image_token": token_for_id(ckpt.tokenizer_files, spec.image_token_id) or "<image>",
        "patch_size": spec.vision_config.get("patch_size"),
        "vision_feature_select_strategy": spec.vision_feature_select_strategy,
        "num_additional_image_tokens": 1 if is_clip else 0,
    }
