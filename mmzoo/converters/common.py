"""Helpers shared by the format modules: prefix tables, component mapping, validation, file copies."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..archs import text as text_arch
from ..archs import vision as vision_arch
from ..errors import ConfigError, CorruptFile, MissingTensor, ShapeMismatch, UnexpectedTensor
from ..io.tensors import Planned
from ..checkpoint.spec import Checkpoint, ModelSpec

PROJECTOR_NAMES = ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")


def detection_config(path: Path) -> dict[str, Any] | None:
    """``path/config.json`` for a format's ``detect()``: None when there is none or it is not JSON
    (detection stays quiet; the format's ``read()`` reports a broken file)."""
    from ..checkpoint.locate import read_json

    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        return read_json(config)
    except ConfigError:
        return None


def hub_cache_folder(repo_id: str) -> Path | None:
    """The cached snapshot of a Hub model given by name (LLaVA's configs name their vision tower, e.g.
    openai/clip-vit-large-patch14-336), without any network access."""
    if not repo_id or repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, not a valid repo id, or huggingface_hub missing: the caller explains
        return None
    return folder if (folder / "config.json").is_file() else None


# What mmzoo records under "mmzoo" in the configs it writes (llava, moe-llava): the shape of each entry
# (a source config without "architectures" is recorded as null, and restored as such).
_NOTE_TYPES = {"replaced": dict, "vision_replaced": dict, "extra": dict, "text_config": dict, "moe": dict,
               "added_keys": list, "vision_keys": list, "architectures": (list, type(None))}


def mmzoo_notes(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """The ``mmzoo`` block of a config mmzoo wrote, each entry of the type the readers expect (a
    hand-edited or hostile block is one line, not an AttributeError deep in a reader)."""
    notes = config.get("mmzoo") or {}
    if not isinstance(notes, dict):
        raise ConfigError("'mmzoo' must be a JSON object", path=where)
    for key, kind in _NOTE_TYPES.items():
        if key in notes and not isinstance(notes[key], kind):
            raise ConfigError(f"mmzoo.{key} must be a JSON {'object' if kind is dict else 'list'}", path=where)
    return notes


def split_by_prefix(
    tensors: dict[str, Planned], prefixes: list[tuple[str, str, str]], *, drop_unmatched: bool, where: str
) -> dict[str, dict[str, Planned]]:
    """Route each tensor to a component by the first matching (source prefix, component, new prefix)."""
    parts: dict[str, dict[str, Planned]] = {"vision": {}, "projector": {}, "text": {}}
    ordered = sorted(prefixes, key=lambda p: -len(p[0]))
    for name, planned in tensors.items():
        for prefix, component, replacement in ordered:
            if name.startswith(prefix):
                parts[component][replacement + name[len(prefix):]] = planned
                break
        else:
            if not drop_unmatched:
                raise UnexpectedTensor(f"tensor {name!r} belongs to no known component (`mmzoo convert --drop-unmatched-keys` writes a copy without such tensors)", path=where)
    return parts


def to_canonical(spec: ModelSpec, parts: dict[str, dict[str, Planned]], *, drop_unmatched: bool, where: str) -> dict[str, Planned]:
    from ..archs import component_tables
    from ..archs.moe import layout_from_config

    if spec.moe is None:  # a Mixtral / Qwen2-MoE / mmzoo_moe text_config: record its MoE layout
        spec.moe = layout_from_config(spec.text_config)
    tables = component_tables(spec, where)  # MoE sites of mmzoo_moe layouts (mmzoo.archs.moe.MoeSites)
    vision = tables["vision"].to_canonical(parts["vision"], spec.vision_config, drop_unmatched=drop_unmatched, where=where)
    text = tables["text"].to_canonical(parts["text"], spec.text_config, drop_unmatched=drop_unmatched, where=where)
    tensors = {f"image_model.{k}": v for k, v in vision.items()}
    if tables["projector"] is not None:  # an MoE projector
        projector = tables["projector"].to_canonical(parts["projector"], {}, drop_unmatched=drop_unmatched, where=where)
        tensors.update({f"projector.{k}": v for k, v in projector.items()})
    else:
        for name, planned in parts["projector"].items():
            if name not in PROJECTOR_NAMES:
                if drop_unmatched:
                    continue
                raise UnexpectedTensor(f"projector tensor {name!r} is not one of {', '.join(PROJECTOR_NAMES)}", path=where)
            tensors[f"projector.{name}"] = planned
    tensors.update({f"text_model.{k}": v for k, v in text.items()})
    return tensors


def native_components(ckpt: Checkpoint) -> dict[str, dict[str, Planned]]:
    """Canonical tensors -> each component's native names (fusing what the architecture fuses)."""
    from ..archs import component_tables

    spec, where = ckpt.spec, str(ckpt.path)
    tables = component_tables(spec, where)
    text = tables["text"].from_canonical(ckpt.component("text_model."), where=where)
    vision = tables["vision"].from_canonical(ckpt.component("image_model."), where=where)
    projector = ckpt.component("projector.")
    if tables["projector"] is not None:
        projector = tables["projector"].from_canonical(projector, where=where)
    return {"vision": vision, "projector": projector, "text": text}


def validate(ckpt: Checkpoint) -> None:
    """Every tensor the configs call for is present with the right shape (MoE layers are checked by
    the upcycling module; here only tensors that exist in both layouts are compared)."""
    spec, where = ckpt.spec, str(ckpt.path)
    checks = [("text_model.", text_arch.expected_shapes(spec.text_config)), ("image_model.", vision_arch.expected_shapes(spec.vision_config))]
    moe_layers = set((spec.moe or {}).get("layers", []))
    vision_moe_layers = set((spec.moe or {}).get("vision_layers", []))
    for prefix, shapes in checks:
        for name, shape in shapes.items():
            full = prefix + name
            if prefix == "text_model." and moe_layers and ".mlp." in name and int(name.split(".")[2]) in moe_layers:
                continue
            if prefix == "image_model." and vision_moe_layers and ".mlp." in name and int(name.split(".")[2]) in vision_moe_layers:
                continue
            planned = ckpt.tensors.get(full)
            if planned is None:
                raise MissingTensor(f"tensor {full!r} is missing (the config needs it)", path=where)
            if tuple(planned.shape) != tuple(shape):
                raise ShapeMismatch(f"tensor {full!r} has shape {list(planned.shape)}, the config implies {list(shape)}", path=where)
            _refuse_integer_weight(full, planned, where)
    _check_feature_layers(spec, where)
    vocab = spec.text_config["vocab_size"]
    if spec.image_token_id is not None and not 0 <= spec.image_token_id < vocab:
        raise ConfigError(f"image token id {spec.image_token_id} lies outside the vocabulary of {vocab} tokens", path=where)
    text_hidden = spec.text_config["hidden_size"]
    vision_hidden = spec.projector_in_features  # the tower's width, once per S² scale
    if spec.projector_type == "mlp2x_gelu":
        expected = {"projector.linear_1.weight": (text_hidden, vision_hidden), "projector.linear_2.weight": (text_hidden, text_hidden)}
    else:
        expected = {"projector.linear_1.weight": (text_hidden, vision_hidden)}
    if spec.moe:  # router and expert shapes of every MoE site (mmzoo.archs.moe); a MoE projector replaces the dense one
        from ..archs.moe import expected_moe_shapes

        if "projector" in (spec.moe.get("targets") or []):
            expected = {}
        expected.update(expected_moe_shapes(spec))
    for name, shape in expected.items():
        planned = ckpt.tensors.get(name)
        if planned is None:
            raise MissingTensor(f"tensor {name!r} is missing", path=where)
        if tuple(planned.shape) != shape:
            raise ShapeMismatch(f"tensor {name!r} has shape {list(planned.shape)}, expected {list(shape)}", path=where)
        _refuse_integer_weight(name, planned, where)


def _check_feature_layers(spec, where: str) -> None:
    """The tower's output the projector reads exists: a tower of L layers has L + 1 hidden states (the embeddings
    first), so layers -(L + 1) to L. A config naming layer 1000 converted silently, and the first image of every
    generate or training step was an IndexError deep in transformers."""
    layers = spec.vision_config["num_hidden_layers"]
    chosen = spec.vision_feature_layer if isinstance(spec.vision_feature_layer, list) else [spec.vision_feature_layer]
    for layer in chosen:
        if not -(layers + 1) <= layer <= layers:
            raise ConfigError(f"vision_feature_layer {layer} does not exist: the vision tower has {layers} layers "
                              f"(hidden states {-(layers + 1)} to {layers})", path=where)


def _refuse_integer_weight(name: str, planned, where: str) -> None:
    """Every tensor a config calls for is a weight, and weights are floating point: an I32 or BOOL one converts
    bit-exactly but fails in the first forward of every model built from it (or is garbage once cast)."""
    if planned.dtype.startswith(("I", "U")) or planned.dtype == "BOOL":
        raise CorruptFile(f"tensor {name!r} is stored as {planned.dtype}; model weights are floating point", path=where)


def rope_parameters_from_4x(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5's ``rope_parameters`` for a 4.x config that keeps ``rope_theta`` / ``rope_scaling``
    at the top level (genuine LLaVA and MoE-LLaVA configs); the inverse of :func:`transformers4_text_fields`."""
    scaling = config.get("rope_scaling") or {}
    return {"rope_type": scaling.get("rope_type", scaling.get("type", "default")), "rope_theta": config["rope_theta"],
            **{k: v for k, v in scaling.items() if k not in ("type", "rope_type")}}


def transformers4_text_fields(text_config: dict[str, Any]) -> dict[str, Any]:
    """The rope fields transformers 4.x reads (top-level ``rope_theta`` / ``rope_scaling``) for a 5.x
    text config that keeps them in ``rope_parameters``; without them 4.x silently uses theta 10000.
    Only fields the config lacks are returned."""
    rope = text_config.get("rope_parameters")
    if not isinstance(rope, dict):
        return {}
    rope_type = rope.get("rope_type", "default")
    fields: dict[str, Any] = {
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None if rope_type == "default" else {"type": rope_type, **{k: v for k, v in rope.items() if k != "rope_theta"}},
    }
    if "partial_rotary_factor" in rope:  # Phi-3 family: 4.x reads it at the top level
        fields["partial_rotary_factor"] = rope["partial_rotary_factor"]
    return {k: v for k, v in fields.items() if k not in text_config}


def copy_files(files: dict[str, Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, folder / name)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def processor_from_folder(folder: Path) -> dict[str, Any] | None:
    """The image processor dict from preprocessor_config.json, or nested in 5.x's processor_config.json."""
    from ..checkpoint.locate import read_json

    if (folder / "preprocessor_config.json").is_file():
        return read_json(folder / "preprocessor_config.json")
    if (folder / "processor_config.json").is_file():
        nested = read_json(folder / "processor_config.json").get("image_processor")
        if isinstance(nested, dict):
            return nested
    return None


def source_dtype(ckpt_tensors: dict[str, Planned]) -> str | None:
    floats = [t.dtype for t in ckpt_tensors.values() if t.dtype in ("F32", "F16", "BF16", "F64")]
    return max(set(floats), key=floats.count) if floats else None


def image_seq_length(spec: ModelSpec) -> int:
    """Image tokens per image: one per patch, plus CLIP's class token when the strategy keeps it. The
    LLaVA-repo layouts have no such field (their code counts the tower's features): their readers use this."""
    from ..archs.vision import num_patches

    keeps_cls = spec.vision_type == "clip_vision_model" and spec.vision_feature_select_strategy == "full"
    return num_patches(spec.vision_config) + (1 if keeps_cls else 0)
