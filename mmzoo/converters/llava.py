"""``llava``: the original LLaVA repository layout (haotian-liu/LLaVA, llava-torch 1.2.x).

``OUT/image_model/`` is a plain CLIPVisionModel folder; ``OUT/text_model_llava/`` is the LLM with the
projector as ``model.mm_projector.{0,2}`` and LLaVA's ``mm_*`` config fields (the folder name must
contain "llava": LLaVA's loader checks the path). The LLaVA code pins transformers 4.37, so the
configs carry the keys 4.x reads (``rope_theta``, ``rope_scaling``, ``torch_dtype``) and the tokenizer
files are rewritten into the spelling tokenizers < 0.19 reads. What mmzoo adds for 4.x is recorded
under the ``mmzoo`` key so reading the folder back restores the original configs exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UnknownArchitecture, UnknownFormat
from ..io.checkpoint import read_weights, write_weights
from ..io.dtypes import CONFIG_DTYPE_NAMES
from ..io.tensors import Planned
from ..checkpoint.locate import read_json
from ..checkpoint.spec import Checkpoint, ModelSpec, find_tokenizer_files
from ..checkpoint.tokenizer_files import added_tokens, chat_template, legacy_tokenizer_config, legacy_tokenizer_json
from .common import (
    detection_config, hub_cache_folder, image_seq_length, mmzoo_notes, rope_parameters_from_4x, native_components, processor_from_folder, source_dtype, split_by_prefix,
    to_canonical, transformers4_text_fields, write_json,
)

NAME = "llava"
DESCRIPTION = "original LLaVA repo layout: image_model/ (CLIP) + text_model_llava/ (Llama/Mistral + mm_projector)"
TEXT_DIRS = ("text_model_llava", "text_model")
LLAVA_CLASSES = {"llama": ("LlavaLlamaForCausalLM", "llava_llama"), "mistral": ("LlavaMistralForCausalLM", "llava_mistral")}
BASE_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
PROJECTOR_FILE = "mm_projector.bin"
SUPPORTED = "Llama or Mistral LLM with a CLIP vision tower"

TEXT_PREFIXES = [
    ("model.mm_projector.0.", "projector", "linear_1."),
    ("model.mm_projector.2.", "projector", "linear_2."),
    ("model.mm_projector.", "projector", "linear_1."),  # mm_projector_type: linear
    ("model.", "text", "model."),
    ("lm_head.", "text", "lm_head."),
]
VISION_PREFIXES = [("vision_model.", "vision", ""), ("", "vision", "")]
CLIP_MODEL_ONLY = ("text_model.", "logit_scale", "visual_projection.", "text_projection.")
_LLAVA_KEYS = {
    "mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
    "mm_use_im_start_end", "mm_use_im_patch_token", "image_aspect_ratio", "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter", "mm_patch_merge_type", "use_mm_proj", "tokenizer_padding_side",
    "tokenizer_model_max_length", "unfreeze_mm_vision_tower", "mm_projector_lr", "mm_vision_tower_lr",
    "image_grid_pinpoints", "mm_resampler_type", "tune_mm_vision_resampler", "freeze_mm_vision_resampler", "mmzoo",
}


def _text_dir(path: Path) -> Path | None:
    for name in TEXT_DIRS:
        if (path / name / "config.json").is_file():
            return path / name
    return None


def detect(path: Path) -> bool:
    if (path / "image_model").is_dir() and _text_dir(path) is not None:
        return True
    data = detection_config(path)
    return data is not None and _base_type(data) is not None


def _base_type(config: dict[str, Any]) -> str | None:
    """The LLM family of a LLaVA-repo config, or None when it is not one. LLaVA-1.5's published
    configs say ``model_type: llava`` (the same as transformers' Llava) with ``LlavaLlamaForCausalLM``;
    mmzoo and later LLaVA code write ``llava_llama`` / ``llava_mistral``."""
    model_type = str(config.get("model_type", ""))
    if model_type.startswith("llava_"):
        return model_type.removeprefix("llava_")
    for base, (cls, _) in LLAVA_CLASSES.items():
        if cls in (config.get("architectures") or []):
            return base
    return None


def _locate(path: Path) -> tuple[Path, Path]:
    text_dir = _text_dir(path)
    if text_dir is not None and (path / "image_model").is_dir():
        return text_dir, path / "image_model"
    tower = str(read_json(path / "config.json").get("mm_vision_tower", ""))
    if tower and Path(tower).is_dir():
        return path, Path(tower)
    cached = hub_cache_folder(tower)
    if cached is not None:
        return path, cached
    raise UnknownFormat(
        f"LLaVA folder whose vision tower {tower!r} is neither a local folder nor in the Hugging Face cache; "
        f"download it (hf download {tower}) or place it as image_model/ beside text_model_llava/",
        path=path,
    )


def read(path: Path, *, drop_unmatched: bool = False) -> Checkpoint:
    where = str(path)
    text_dir, vision_dir = _locate(path)
    text_cfg = read_json(text_dir / "config.json")
    vision_cfg = read_json(vision_dir / "config.json")
    if vision_cfg.get("model_type") == "clip":
        vision_cfg = dict(vision_cfg.get("vision_config") or {}, model_type="clip_vision_model")
    if vision_cfg.get("model_type") != "clip_vision_model":
        raise UnknownArchitecture(f"vision tower {vision_cfg.get('model_type')!r} is not supported in the llava layout ({SUPPORTED})", path=vision_dir)
    spec = _spec(text_cfg, vision_cfg, text_dir)

    vision_tensors = {n: Planned.of(s) for n, s in read_weights(vision_dir).items() if not n.startswith(CLIP_MODEL_ONLY)}
    parts = split_by_prefix(vision_tensors, VISION_PREFIXES, drop_unmatched=drop_unmatched, where=str(vision_dir))
    text_parts = split_by_prefix(
        {n: Planned.of(s) for n, s in _text_weights(text_dir).items()}, TEXT_PREFIXES, drop_unmatched=drop_unmatched, where=str(text_dir)
    )
    parts["projector"], parts["text"] = text_parts["projector"], text_parts["text"]
    canonical = to_canonical(spec, parts, drop_unmatched=drop_unmatched, where=where)
    tokenizer_files = find_tokenizer_files(text_dir)
    if spec.image_token_id is None:
        spec = spec.model_copy(update={"image_token_id": added_tokens(tokenizer_files).get("<image>")})
    extra = {n: text_dir / n for n in ("generation_config.json",) if (text_dir / n).is_file()}
    return Checkpoint(spec, canonical, path, NAME, tokenizer_files, processor_from_folder(vision_dir), extra)


def _text_weights(text_dir: Path) -> dict[str, Any]:
    """The LLM weights, plus ``mm_projector.bin`` when the projector was saved apart (LLaVA's
    pretraining stage writes only the projector there; a finetuned folder may carry both)."""
    projector_file = text_dir / PROJECTOR_FILE
    has_llm = any((text_dir / n).exists() for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"))
    if not has_llm and projector_file.is_file():
        raise UnknownFormat(
            f"holds only the projector ({PROJECTOR_FILE}, LLaVA's pretraining stage) and no LLM weights; "
            "copy the base LLM's weights into the folder beside it (LLaVA loads them with --model-base)",
            path=text_dir,
        )
    sources = read_weights(text_dir)
    if projector_file.is_file():
        from ..io.checkpoint import bin_sources

        separate = bin_sources(projector_file)
        both = sorted(set(separate) & set(sources))
        if both:
            raise UnknownFormat(f"{PROJECTOR_FILE} and the model weights both hold {both[0]!r}; remove one of them", path=text_dir)
        sources.update(separate)
    return sources


def _spec(text_cfg: dict[str, Any], vision_cfg: dict[str, Any], where: Path) -> ModelSpec:
    notes = mmzoo_notes(text_cfg, where / "config.json")
    base_type = _base_type(text_cfg) or str(text_cfg.get("model_type", "llama"))
    if base_type not in LLAVA_CLASSES:
        raise UnknownArchitecture(f"LLM {text_cfg.get('model_type')!r} is not supported in the llava layout ({SUPPORTED})", path=where)
    text = {k: v for k, v in text_cfg.items() if k not in _LLAVA_KEYS and k not in notes.get("added_keys", [])}
    # a genuine LLaVA config names LLaVA's own class; the LLM is a plain *ForCausalLM
    text.update(notes.get("replaced", {"model_type": base_type, "architectures": [BASE_CLASSES[base_type]]}))
    if not notes:  # a genuine LLaVA config: its _name_or_path is the training machine's folder name
        text.pop("_name_or_path", None)
    text = {k: v for k, v in text.items() if v is not None or k not in notes.get("replaced", {})}
    if "rope_parameters" not in text and "rope_theta" in text:  # a genuine 4.x config: keep what 5.x reads
        text["rope_parameters"] = rope_parameters_from_4x(text)
    vision = {k: v for k, v in vision_cfg.items() if k not in ("architectures", "torch_dtype", "dtype", "transformers_version") or k in notes.get("vision_keys", [])}
    vision.update(notes.get("vision_replaced", {}))
    projector = text_cfg.get("mm_projector_type", "linear")
    if projector not in ("mlp2x_gelu", "linear"):
        raise UnknownArchitecture(f"mm_projector_type {projector!r} is not supported (mlp2x_gelu, linear)", path=where)
    spec = ModelSpec(
        vision_config=vision,
        text_config=text,
        projector_type=projector,
        projector_hidden_act=notes.get("projector_hidden_act", "gelu"),
        image_token_id=notes.get("image_token_index"),
        vision_feature_layer=text_cfg.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if text_cfg.get("mm_vision_select_feature", "patch") == "patch" else "full",
        image_seq_length=notes.get("image_seq_length"),
        dtype=notes.get("dtype", text_cfg.get("torch_dtype") or text_cfg.get("dtype")),
        extra=notes.get("extra", {}),
    )
    if spec.image_seq_length is None:  # a genuine LLaVA config: the code counts the tower's features
        spec = spec.model_copy(update={"image_seq_length": image_seq_length(spec)})
    return spec


def check_supported(spec: ModelSpec, layout: str = "llava") -> None:
    """``layout``: the format asked for, named in the refusal (cerebras holds what llava holds)."""
    if spec.text_type not in LLAVA_CLASSES or spec.vision_type != "clip_vision_model":
        raise UnknownArchitecture(
            f"the {layout} layout holds a {SUPPORTED}; this checkpoint has {spec.text_type} + {spec.vision_type} (use --tgt-fmt hf or internal)"
        )
    if spec.projector_type == "mlp2x_gelu" and spec.projector_hidden_act != "gelu":
        raise UnknownArchitecture(f"LLaVA's mlp2x_gelu projector uses gelu, not {spec.projector_hidden_act!r}")
    if not isinstance(spec.vision_feature_layer, int):
        raise UnknownArchitecture("LLaVA selects one vision layer; this checkpoint uses several")


def write(ckpt: Checkpoint, out: Path, *, final_path: Path, shard_bytes: int, progress=None, vision_tower: str | None = None, **_: Any) -> None:
    spec = ckpt.spec
    check_supported(spec)
    components = native_components(ckpt)
    torch_dtype = spec.dtype or CONFIG_DTYPE_NAMES.get(source_dtype(ckpt.tensors) or "F32", "float32")

    vision_dir = out / "image_model"
    vision_cfg = {**spec.vision_config, "architectures": ["CLIPVisionModel"], "torch_dtype": torch_dtype}
    write_json(vision_dir / "config.json", vision_cfg)
    vision = {f"vision_model.{k}": v for k, v in components["vision"].items()}  # 4.x CLIPVisionModel keys
    write_weights(vision_dir, dict(sorted(vision.items())), max_shard_bytes=shard_bytes, progress=progress)
    if ckpt.image_processor is not None:
        write_json(vision_dir / "preprocessor_config.json", ckpt.image_processor)

    text_dir = out / "text_model_llava"
    write_json(text_dir / "config.json", text_config(spec, vision_tower or str(final_path.resolve() / "image_model"), torch_dtype))
    projector = components["projector"]
    if spec.projector_type == "mlp2x_gelu":
        projector = {k.replace("linear_1.", "model.mm_projector.0.").replace("linear_2.", "model.mm_projector.2."): v for k, v in projector.items()}
    else:
        projector = {k.replace("linear_1.", "model.mm_projector."): v for k, v in projector.items()}
    write_weights(text_dir, dict(sorted({**components["text"], **projector}.items())), max_shard_bytes=shard_bytes, progress=progress)
    _write_tokenizer(ckpt, text_dir)
    for name, src in ckpt.extra_files.items():
        (text_dir / name).write_bytes(src.read_bytes())


def text_config(spec: ModelSpec, vision_tower: str, torch_dtype: str) -> dict[str, Any]:
    cls, model_type = LLAVA_CLASSES[spec.text_type]
    config = dict(spec.text_config)
    replaced = {"model_type": config.get("model_type"), "architectures": config.get("architectures")}
    config.update(architectures=[cls], model_type=model_type)
    added: dict[str, Any] = {"torch_dtype": torch_dtype, **transformers4_text_fields(config)}  # the LLaVA code runs 4.37
    added = {k: v for k, v in added.items() if k not in config}
    config.update(added)
    config.update(
        mm_vision_tower=vision_tower,
        mm_hidden_size=spec.vision_config["hidden_size"],
        mm_projector_type=spec.projector_type,
        mm_vision_select_layer=spec.vision_feature_layer,
        mm_vision_select_feature="patch" if spec.vision_feature_select_strategy == "default" else "cls_patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        mm_patch_merge_type="flat",
        image_aspect_ratio="pad",
        tune_mm_mlp_adapter=False,
        freeze_mm_mlp_adapter=False,
        use_mm_proj=True,
        tokenizer_padding_side="right",
    )
    config["mmzoo"] = {
        "note": "written by mmzoo; lets `mmzoo convert` restore the original configs exactly",
        "added_keys": sorted(added),
        "replaced": replaced,
        "image_token_index": spec.image_token_id,
        "image_seq_length": spec.image_seq_length,
        "projector_hidden_act": spec.projector_hidden_act,
        "dtype": spec.dtype,
        "extra": spec.extra,
    }
    return config


def _write_tokenizer(ckpt: Checkpoint, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    template = chat_template(ckpt.tokenizer_files)  # transformers 4.37 reads it from tokenizer_config.json only
    for name, src in ckpt.tokenizer_files.items():
        if name == "tokenizer.json":
            (folder / name).write_text(legacy_tokenizer_json(src.read_text(encoding="utf-8")), encoding="utf-8")
        elif name == "tokenizer_config.json":
            (folder / name).write_text(legacy_tokenizer_config(src.read_text(encoding="utf-8"), template), encoding="utf-8")
        else:
            (folder / name).write_bytes(src.read_bytes())
