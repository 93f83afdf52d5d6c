"""``moe-llava``: the DeepSpeed-MoE layout of MoE-LLaVA / LLaVA-MoD / MoIIE checkpoints.

One folder: ``config.json`` (the LLM config with ``model_type: moe_llava_<llm>``, a ``moe`` dict as
MoE-LLaVA's ``MoELLaVA*Config`` writes it — ``moe_enable``, ``moe_mode``, ``moe_layers_idx``,
``num_experts``, ``top_k_experts``, ``capacity_factor``, ``eval_capacity_factor``, ``min_capacity``,
``use_residual``, ``router_aux_loss_coef`` — and LLaVA's ``mm_*`` fields), the LLM + projector weights,
the tokenizer, and ``image_tower/`` (a CLIPVisionModel folder).

What MoE-LLaVA's own builder needs to load the folder as is (checked by tests/seedcode against its code):
``mm_image_tower`` is a name its ``build_image_tower`` accepts (one starting with ``openai``, ``laion`` or
``google``; mmzoo writes the published CLIP name when the tower's config is that model's, else
``openai/mmzoo-image-tower``, which the user links to ``image_tower/``; ``--llava-vision-tower`` overrides
it), ``mm_video_tower`` is present (null), and the projector is wrapped the way its ``build_projector``
holds it: ``model.mm_projector.image_spatial_proj.{0,2}.*`` with the type in ``image_projector_type``.
The reader also accepts mmzoo's earlier unwrapped ``model.mm_projector.{0,2}.*``.

MoE layers (``moe_layers_idx``) replace ``model.layers.L.mlp`` with
``mlp.deepspeed_moe.experts.deepspeed_experts.E.{gate_proj,up_proj,down_proj}.weight`` and the router
``mlp.deepspeed_moe.gate.wg.weight``; with ``use_residual`` a dense ``mlp.mlp.*`` and
``mlp.coefficient.{weight,bias}`` sit beside them (canonical ``mlp.residual.*`` / ``mlp.coefficient.*``).
MoIIE's modality experts are recorded in the ``moe`` dict as ``modality_experts`` and
``vision_aux_loss_coef`` (mmzoo's spelling). What only mmzoo needs to restore a spec exactly
(the MoE text_config, image token id, dtype) is kept under the ``mmzoo`` key.

DeepSpeed top-2 gating adds Gumbel noise to the second expert choice and drops tokens over capacity;
Mixtral / Qwen2-MoE (hf) and mmzoo's own modules do neither: conversions are exact in weights, and
``conversion_notes`` says so.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..archs import text_table
from ..archs.checks import check_text_config, is_whole
from ..archs.moe import MOE_CONFIG_KEY, base_text_config
from ..errors import ConfigError, UnknownArchitecture, UnknownFormat
from ..io.checkpoint import read_weights, write_weights
from ..io.dtypes import CONFIG_DTYPE_NAMES
from ..io.tensors import Planned, materialize
from ..checkpoint.locate import read_json
from ..checkpoint.spec import Checkpoint, ModelSpec, find_tokenizer_files
from ..checkpoint.tokenizer_files import added_tokens
from .common import detection_config, hub_cache_folder, image_seq_length, mmzoo_notes, rope_parameters_from_4x, processor_from_folder, source_dtype, split_by_prefix, to_canonical, transformers4_text_fields, write_json
from .llava import CLIP_MODEL_ONLY, VISION_PREFIXES  # the same LLaVA-repo key spellings
from .llava import TEXT_PREFIXES as LLAVA_TEXT_PREFIXES

NAME = "moe-llava"
DESCRIPTION = "MoE-LLaVA / LLaVA-MoD / MoIIE DeepSpeed-MoE layout: config.json with a moe dict + deepspeed_moe expert keys + image_tower/"
CLASSES = {
    "llama": "MoELLaVALlamaForCausalLM", "mistral": "MoELLaVAMistralForCausalLM",
    "qwen2": "MoELLaVAQwen2ForCausalLM", "phi3": "MoELLaVAPhi3ForCausalLM",
}
VISION_DIR = "image_tower"
_MM_KEYS = {
    "moe", "mmzoo", "mm_vision_tower", "mm_image_tower", "mm_video_tower", "mm_hidden_size", "mm_projector_type",
    "mm_vision_select_layer", "mm_vision_select_feature", "mm_use_im_start_end", "mm_use_im_patch_token",
    "image_aspect_ratio", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "mm_patch_merge_type", "use_mm_proj",
    "tokenizer_padding_side", "tokenizer_model_max_length", "unfreeze_mm_vision_tower", "mm_projector_lr",
    "mm_vision_tower_lr", "image_grid_pinpoints", "X", "rope_theta", "rope_scaling", "torch_dtype",
    "image_projector_type", "video_projector_type", "video_global_proj", "video_temproal_proj", "video_spatial_proj",
}
# MoE-LLaVA's build_projector wraps the image projector as mm_projector.image_spatial_proj; mmzoo wrote it
# unwrapped before, and the plain LLaVA spellings stay readable.
TEXT_PREFIXES = [
    ("model.mm_projector.image_spatial_proj.0.", "projector", "linear_1."),
    ("model.mm_projector.image_spatial_proj.2.", "projector", "linear_2."),
    ("model.mm_projector.image_spatial_proj.", "projector", "linear_1."),
    *LLAVA_TEXT_PREFIXES,
]
# MoE-LLaVA LLMs whose language-model code is its own (not a transformers architecture mmzoo has a table for).
UNSUPPORTED_LLMS = {"phi": "Phi-2", "qwen": "Qwen-1", "stablelm": "StableLM", "minicpm": "MiniCPM", "qwen1_5": "Qwen1.5"}
# Published CLIP towers, recognised by their vision config, so MoE-LLaVA finds the same model by name.
PUBLISHED_TOWERS = {
    "openai/clip-vit-large-patch14-336": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=336, patch_size=14),
    "openai/clip-vit-large-patch14": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=224, patch_size=14),
}
LOCAL_TOWER_NAME = "openai/mmzoo-image-tower"
_DS_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.)deepspeed_moe\.experts\.deepspeed_experts\.(\d+)\.(.*)\Z")
_DS_GATE = re.compile(r"(model\.layers\.\d+\.mlp\.)deepspeed_moe\.gate\.wg\.weight\Z")
_DS_RESIDUAL = re.compile(r"(model\.layers\.(\d+)\.mlp\.)mlp\.(.*)\Z")
_CANON_GROUP = re.compile(r"(model\.layers\.\d+\.mlp\.)(experts\.(\d+)\.|residual\.|shared_expert\.)(.*)\Z")


def detect(path: Path) -> bool:
    data = detection_config(path)
    if data is None:
        return False
    moe = data.get("moe")
    return str(data.get("model_type", "")).startswith("moe_llava") or (isinstance(moe, dict) and "moe_enable" in moe)


# ---------------------------------------------------------------- reading

def _vision_dir(path: Path, config: dict[str, Any]) -> Path:
    if (path / VISION_DIR / "config.json").is_file():
        return path / VISION_DIR
    for key in ("mm_image_tower", "mm_vision_tower"):
        tower = config.get(key)
        if tower and (Path(tower) / "config.json").is_file():
            return Path(tower)
        cached = hub_cache_folder(str(tower or ""))  # published configs name the tower (openai/clip-vit-large-patch14-336)
        if cached is not None:
            return cached
    raise UnknownFormat(
        f"MoE-LLaVA folder whose vision tower ({config.get('mm_image_tower') or config.get('mm_vision_tower')!r}) is neither a local "
        f"folder nor in the Hugging Face cache; download it or place it as {VISION_DIR}/ inside the folder", path=path
    )


def _base_type(config: dict[str, Any], where: Path) -> str:
    model_type = str(config.get("model_type", "llama"))
    base = model_type.removeprefix("moe_llava_")
    if base in UNSUPPORTED_LLMS:
        raise UnknownArchitecture(
            f"MoE-LLaVA with a {UNSUPPORTED_LLMS[base]} LLM ({model_type}) is not supported: mmzoo reads MoE-LLaVA's Llama "
            f"checkpoints (and the mistral/qwen2/phi3 ones mmzoo writes), not its Phi-2, Qwen-1, StableLM, MiniCPM or Qwen1.5 models", path=where)
    if base not in CLASSES:
        raise UnknownArchitecture(f"MoE-LLaVA LLM {model_type!r} is not supported (supported: {', '.join('moe_llava_' + b for b in CLASSES)})", path=where)
    return base


def _moe_dict(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """MoE-LLaVA's ``moe`` block with the types the layout is computed from (the counts are bounded
    later, with the whole layout, by ModelSpec)."""
    moe = config.get("moe") or {}
    if not isinstance(moe, dict):
        raise ConfigError("'moe' must be a JSON object", path=where)
    layers, experts, top_k = moe.get("moe_layers_idx"), moe.get("num_experts"), moe.get("top_k_experts")
    if layers is not None and not (isinstance(layers, list) and all(map(is_whole, layers))):
        raise ConfigError(f"moe.moe_layers_idx must be a list of layer numbers (got {layers!r})", path=where)
    if experts is not None and not (is_whole(experts) or (isinstance(experts, list) and experts and all(map(is_whole, experts)))):
        raise ConfigError(f"moe.num_experts must be a number or a list of numbers (got {experts!r})", path=where)
    if top_k is not None and not is_whole(top_k):
        raise ConfigError(f"moe.top_k_experts must be a whole number (got {top_k!r})", path=where)
    return moe


def _layout_from_moe_dict(moe: dict[str, Any], dense: dict[str, Any], base: str) -> dict[str, Any]:
    from ..upcycle.styles import hf_arch_for

    layers = sorted(int(i) for i in (moe.get("moe_layers_idx") or []))
    if not layers:
        layers = list(range(dense["num_hidden_layers"]))
    experts = moe.get("num_experts", 4)
    if isinstance(experts, list):
        if len(set(experts)) > 1:
            raise UnknownArchitecture(f"MoE layers with different numbers of experts ({experts}) are not supported")
        experts = experts[0] if experts else 4
    style = "modality" if moe.get("modality_experts") else ("residual" if moe.get("use_residual") else "mixtral")
    layout: dict[str, Any] = {
        "style": style, "num_experts": int(experts), "top_k": int(moe.get("top_k_experts", 2)), "layers": layers,
        "vision_layers": [], "targets": ["text"], "router": "deepspeed_top2" if int(moe.get("top_k_experts", 2)) == 2 else "deepspeed_topk",
        "norm_topk_prob": True, "router_aux_loss_coef": moe.get("router_aux_loss_coef", 0.01),
        "vision_aux_loss_coef": moe.get("vision_aux_loss_coef", moe.get("router_aux_loss_coef", 0.01)),
        "capacity_factor": moe.get("capacity_factor"), "eval_capacity_factor": moe.get("eval_capacity_factor"),
        "min_capacity": moe.get("min_capacity"), "base_model_type": base, "origin": "read from a MoE-LLaVA (DeepSpeed-MoE) checkpoint",
    }
    if style == "modality":
        layout["modality_experts"] = moe["modality_experts"]
    arch, why = hf_arch_for(dense, base, style, ("text",), layers)
    layout["hf_arch"] = arch
    if arch is None:
        layout["hf_unsupported"] = why
    return layout


def _text_to_canonical(text: dict[str, Planned], base: str, cfg: dict[str, Any], *, drop_unmatched: bool, where: str) -> dict[str, Planned]:
    """DeepSpeed names -> canonical; dense names inside experts go through the base table (Phi-3 fusing)."""
    table = text_table(base, where)
    plain: dict[str, Planned] = {}
    groups: dict[tuple[str, str], dict[str, Planned]] = {}
    extra: dict[str, Planned] = {}
    for name, planned in text.items():
        if m := _DS_EXPERT.match(name):
            groups.setdefault((m.group(1), f"experts.{m.group(2)}."), {})[m.group(1) + m.group(3)] = planned
        elif m := _DS_GATE.match(name):
            extra[m.group(1) + "gate.weight"] = planned
        elif ".mlp.coefficient." in name:
            extra[name] = planned
        elif (m := _DS_RESIDUAL.match(name)) and m.group(3).count(".") == 1:
            groups.setdefault((m.group(1), "residual."), {})[m.group(1) + m.group(3)] = planned
        else:
            plain[name] = planned
    out = table.to_canonical(plain, cfg, drop_unmatched=drop_unmatched, where=where)
    out.update(extra)
    for (site, group), members in groups.items():
        canon = table.to_canonical(members, cfg, drop_unmatched=drop_unmatched, where=where)
        out.update({site + group + k[len(site):]: v for k, v in canon.items()})
    return out


def read(path: Path, *, drop_unmatched: bool = False) -> Checkpoint:
    from ..upcycle.styles import moe_text_config, zero_shared_expert

    where = str(path)
    config = read_json(path / "config.json")
    notes = mmzoo_notes(config, path / "config.json")
    base = _base_type(config, path)
    vision_dir = _vision_dir(path, config)
    vision_cfg = read_json(vision_dir / "config.json")
    if vision_cfg.get("model_type") == "clip":
        vision_cfg = dict(vision_cfg.get("vision_config") or {}, model_type="clip_vision_model")
    if vision_cfg.get("model_type") not in ("clip_vision_model", "siglip_vision_model"):
        raise UnknownArchitecture(f"vision tower {vision_cfg.get('model_type')!r} is not supported (CLIP or SigLIP)", path=vision_dir)
    vision_cfg = {k: v for k, v in vision_cfg.items() if k not in ("architectures", "torch_dtype", "dtype", "transformers_version")}
    vision_cfg.update(notes.get("vision_replaced", {}))

    dense = {k: v for k, v in config.items() if k not in _MM_KEYS and k not in notes.get("added_keys", [])}
    dense.update(model_type=base, architectures=notes.get("architectures", [f"{''.join(p.title() for p in base.split('_'))}ForCausalLM"]))
    if "rope_parameters" not in dense and "rope_theta" in config:  # a genuine 4.x config
        dense["rope_parameters"] = rope_parameters_from_4x(config)
    if isinstance(notes.get("text_config"), dict):
        text_cfg = notes["text_config"]
        layout = dict(text_cfg.get(MOE_CONFIG_KEY) or notes.get("moe") or {})
    else:
        check_text_config(dense, "config")  # numbers bounded before range(num_hidden_layers) below
        layout = _layout_from_moe_dict(_moe_dict(config, path / "config.json"), dense, base)
        text_cfg = moe_text_config(dense, base, layout)
    projector = config.get("image_projector_type") or config.get("mm_projector_type", "linear")  # MoE-LLaVA's own key first
    if projector not in ("mlp2x_gelu", "linear"):
        raise UnknownArchitecture(f"mm_projector_type {projector!r} is not supported (mlp2x_gelu, linear)", path=path)
    spec = ModelSpec(
        vision_config=vision_cfg, text_config=text_cfg, projector_type=projector,
        projector_hidden_act=notes.get("projector_hidden_act", "gelu"), image_token_id=notes.get("image_token_index"),
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if config.get("mm_vision_select_feature", "patch") == "patch" else "full",
        image_seq_length=notes.get("image_seq_length"), dtype=notes.get("dtype", config.get("torch_dtype")),
        moe=layout, extra=notes.get("extra", {}),
    )
    if spec.image_seq_length is None:  # a MoE-LLaVA config: its code counts the tower's features
        spec = spec.model_copy(update={"image_seq_length": image_seq_length(spec)})

    vision_tensors = {n: Planned.of(s) for n, s in read_weights(vision_dir).items() if not n.startswith(CLIP_MODEL_ONLY)}
    parts = split_by_prefix(vision_tensors, VISION_PREFIXES, drop_unmatched=drop_unmatched, where=str(vision_dir))
    text_parts = split_by_prefix({n: Planned.of(s) for n, s in read_weights(path).items() if not n.startswith("model.image_tower.")},
                                 TEXT_PREFIXES, drop_unmatched=drop_unmatched, where=where)
    parts["projector"], parts["text"] = text_parts["projector"], {}
    canonical = to_canonical(spec.model_copy(update={"text_config": dense, "moe": layout}), parts, drop_unmatched=drop_unmatched, where=where)
    canonical.update({f"text_model.{k}": v for k, v in _text_to_canonical(text_parts["text"], base, dense, drop_unmatched=drop_unmatched, where=where).items()})
    if text_cfg.get("model_type") == "qwen2_moe" and layout.get("style") != "shared":
        dtype = canonical[f"text_model.model.layers.{layout['layers'][0]}.mlp.gate.weight"].dtype if layout.get("layers") else "F32"
        for layer in layout.get("layers", []):
            canonical.update(zero_shared_expert(f"text_model.model.layers.{layer}.mlp.", dense["hidden_size"], dtype))
    tokenizer_files = find_tokenizer_files(path)
    if spec.image_token_id is None:
        spec = spec.model_copy(update={"image_token_id": added_tokens(tokenizer_files).get("<image>")})
    extra_files = {n: path / n for n in ("generation_config.json",) if (path / n).is_file()}
    return Checkpoint(spec, canonical, path, NAME, tokenizer_files, processor_from_folder(vision_dir), extra_files)


# ---------------------------------------------------------------- writing

def check_supported(ckpt: Checkpoint) -> None:
    spec, moe = ckpt.spec, ckpt.spec.moe or {}
    if not moe:
        raise UnknownArchitecture("the moe-llava layout holds MoE checkpoints; this one is dense (upcycle a dense checkpoint while "
                                  "converting it: `mmzoo convert SRC -o OUT --tgt-fmt moe-llava --moe-experts N`)")
    if moe.get("vision_layers") or "projector" in (moe.get("targets") or []):
        raise UnknownArchitecture("the moe-llava layout has MoE only in the LLM; vision/projector experts need --tgt-fmt internal")
    if moe.get("router") in ("smoe", "xmoe", "sigmoid", "sharede_v2", "sharede_v3", "tcmoe"):  # LibMoE's losses; DeepSpeed-MoE trains with its own gate
        raise UnknownArchitecture(f"the moe-llava layout has no LibMoE {moe.get('router')} router; write it with --tgt-fmt hf or internal")
    if moe.get("style") == "shared":
        raise UnknownArchitecture(
            "the moe-llava (DeepSpeed-MoE) layout has no sigmoid-gated shared expert (its use_residual mixes with a softmax "
            "coefficient, a different function); write the shared style with --tgt-fmt hf or internal"
        )
    base = moe.get("base_model_type") or spec.text_config.get("base_model_type")
    if base not in CLASSES:
        raise UnknownArchitecture(f"the moe-llava layout holds a {', '.join(CLASSES)} LLM; this checkpoint's LLM is {base!r}")
    if spec.vision_type != "clip_vision_model":
        raise UnknownArchitecture(f"MoE-LLaVA uses a CLIP image tower; this checkpoint has {spec.vision_type} (use --tgt-fmt hf or internal)")


def _dense_config(spec: ModelSpec) -> dict[str, Any]:
    cfg = spec.text_config
    base = (spec.moe or {}).get("base_model_type") or cfg.get("base_model_type", "llama")
    if cfg.get("model_type") == "mmzoo_moe":
        return base_text_config(cfg)
    drop = {MOE_CONFIG_KEY, "num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "output_router_logits",
            "router_jitter_noise", "num_experts", "norm_topk_prob", "moe_intermediate_size", "shared_expert_intermediate_size",
            "decoder_sparse_step", "mlp_only_layers", "qkv_bias"}
    out = {k: v for k, v in cfg.items() if k not in drop}
    out["model_type"] = base
    return out


def _text_native(ckpt: Checkpoint, base: str) -> dict[str, Planned]:
    table = text_table(base)
    plain: dict[str, Planned] = {}
    groups: dict[tuple[str, str], dict[str, Planned]] = {}
    out: dict[str, Planned] = {}
    for name, planned in ckpt.component("text_model.").items():
        if m := _CANON_GROUP.match(name):
            site, group, expert, rest = m.groups()
            if group == "shared_expert.":
                continue  # a mixtral-style Qwen2-MoE's zero shared expert; checked below
            ds_group = f"deepspeed_moe.experts.deepspeed_experts.{expert}." if expert is not None else "mlp."
            groups.setdefault((site, ds_group), {})[site + rest] = planned
        elif name.endswith(".mlp.gate.weight"):
            out[name[: -len("gate.weight")] + "deepspeed_moe.gate.wg.weight"] = planned
        elif name.endswith(".mlp.shared_expert_gate.weight"):
            continue
        elif ".mlp.coefficient." in name:
            out[name] = planned
        else:
            plain[name] = planned
    for name, planned in ckpt.component("text_model.").items():
        if ".shared_expert" in name and bool(materialize(planned).abs().max() > 0):
            raise UnknownArchitecture(f"tensor {name!r} is a non-zero shared expert, which the moe-llava layout cannot hold")
    out.update(table.from_canonical(plain))
    for (site, group), members in groups.items():
        native = table.from_canonical(members)
        out.update({site + group + k[len(site):]: v for k, v in native.items()})
    return out


def write(ckpt: Checkpoint, out: Path, *, final_path: Path, shard_bytes: int, progress=None, vision_tower: str | None = None, **_: Any) -> None:
    from ..archs import vision_table
    from .llava import _write_tokenizer

    check_supported(ckpt)
    spec, moe = ckpt.spec, ckpt.spec.moe or {}
    base = moe.get("base_model_type") or spec.text_config.get("base_model_type")
    torch_dtype = spec.dtype or CONFIG_DTYPE_NAMES.get(source_dtype(ckpt.tensors) or "F32", "float32")

    vision_dir = out / VISION_DIR
    write_json(vision_dir / "config.json", {**spec.vision_config, "architectures": ["CLIPVisionModel"], "torch_dtype": torch_dtype})
    vision = vision_table(spec.vision_type).from_canonical(ckpt.component("image_model."))
    write_weights(vision_dir, dict(sorted({f"vision_model.{k}": v for k, v in vision.items()}.items())), max_shard_bytes=shard_bytes, progress=progress)
    if ckpt.image_processor is not None:
        write_json(vision_dir / "preprocessor_config.json", ckpt.image_processor)

    text = _text_native(ckpt, base)
    projector = ckpt.component("projector.")
    wrapped = "model.mm_projector.image_spatial_proj."  # MoE-LLaVA's build_projector holds the image projector there
    if spec.projector_type == "mlp2x_gelu":
        projector = {k.replace("linear_1.", wrapped + "0.").replace("linear_2.", wrapped + "2."): v for k, v in projector.items()}
    else:
        projector = {k.replace("linear_1.", wrapped): v for k, v in projector.items()}
    write_json(out / "config.json", config_dict(spec, base, vision_tower or tower_name(spec.vision_config), torch_dtype))
    write_weights(out, dict(sorted({**text, **projector}.items())), max_shard_bytes=shard_bytes, progress=progress)
    _write_tokenizer(ckpt, out)
    for name, src in ckpt.extra_files.items():
        (out / name).write_bytes(src.read_bytes())


def tower_name(vision_config: dict[str, Any]) -> str:
    """The mm_image_tower MoE-LLaVA loads: the published CLIP whose config this is, else a name for image_tower/."""
    for name, fields in PUBLISHED_TOWERS.items():
        if all(vision_config.get(k) == v for k, v in fields.items()):
            return name
    return LOCAL_TOWER_NAME


def config_dict(spec: ModelSpec, base: str, vision_tower: str, torch_dtype: str) -> dict[str, Any]:
    moe = spec.moe or {}
    dense = _dense_config(spec)
    config = dict(dense)
    architectures = config.get("architectures")
    config.update(architectures=[CLASSES[base]], model_type=f"moe_llava_{base}")
    added: dict[str, Any] = {"torch_dtype": torch_dtype, **transformers4_text_fields(config)}  # MoE-LLaVA runs 4.x
    added = {k: v for k, v in added.items() if k not in config}
    config.update(added)
    ds_moe: dict[str, Any] = {
        "moe_enable": True, "moe_mode": "sparse" if moe.get("layer_selection") not in ("all",) else "dense",
        "moe_layers_idx": list(moe.get("layers", [])), "ep_size": 1, "num_experts": [moe["num_experts"]] * len(moe.get("layers", [])),
        "top_k_experts": moe["top_k"], "capacity_factor": moe.get("capacity_factor") or 1.0,
        "eval_capacity_factor": moe.get("eval_capacity_factor") or moe.get("capacity_factor") or 1.0,
        "min_capacity": moe.get("min_capacity") or 0, "use_residual": moe.get("style") == "residual",
        "router_aux_loss_coef": moe.get("router_aux_loss_coef", 0.01), "train_modules": [],
    }
    if moe.get("style") == "modality":
        ds_moe["modality_experts"] = moe.get("modality_experts")
        ds_moe["vision_aux_loss_coef"] = moe.get("vision_aux_loss_coef")
    config.update(
        moe=ds_moe, mm_image_tower=vision_tower, mm_video_tower=None, mm_vision_tower=vision_tower,
        mm_hidden_size=spec.vision_config["hidden_size"], image_projector_type=spec.projector_type, video_projector_type=None,
        video_global_proj=None, video_temproal_proj=None, video_spatial_proj=None, mm_projector_type=spec.projector_type, mm_vision_select_layer=spec.vision_feature_layer,
        mm_vision_select_feature="patch" if spec.vision_feature_select_strategy == "default" else "cls_patch",
        mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad",
        tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, use_mm_proj=True, tokenizer_padding_side="right",
    )
    config["mmzoo"] = {
        "note": "written by mmzoo; lets `mmzoo convert` restore the original configs exactly",
        "added_keys": sorted(added), "architectures": architectures, "text_config": spec.text_config,
        "image_token_index": spec.image_token_id, "image_seq_length": spec.image_seq_length,
        "projector_hidden_act": spec.projector_hidden_act, "dtype": spec.dtype, "extra": spec.extra,
    }
    return config


def conversion_notes(ckpt: Checkpoint, tgt_fmt: str) -> list[str]:
    """Routing caveats between DeepSpeed-MoE gating (MoE-LLaVA) and softmax top-k (Mixtral/Qwen2-MoE/mmzoo)."""
    moe = ckpt.spec.moe or {}
    if not moe:
        return []
    notes = []
    if ckpt.format == NAME and tgt_fmt != NAME:
        notes.append(
            "MoE-LLaVA was trained with DeepSpeed-MoE top-2 gating (Gumbel noise on the second expert, tokens over "
            f"capacity dropped, capacity_factor {moe.get('capacity_factor')}); the {tgt_fmt} model routes with plain "
            "softmax top-k, dropless: weights are bit-exact, routing can differ from DeepSpeed's"
        )
    if tgt_fmt == NAME and tower_name(ckpt.spec.vision_config) == LOCAL_TOWER_NAME:
        notes.append(
            f"MoE-LLaVA loads its image tower by the name in mm_image_tower ({LOCAL_TOWER_NAME!r} unless --llava-vision-tower "
            f"names one): the tower is in image_tower/, so link that folder as ./{LOCAL_TOWER_NAME} where MoE-LLaVA runs "
            "(its builder accepts only names starting with openai, laion or google)"
        )
    if tgt_fmt == NAME and ckpt.format != NAME:
        notes.append(
            "DeepSpeed-MoE (MoE-LLaVA's code) adds Gumbel noise to the second expert choice and drops tokens over "
            "capacity (capacity_factor, eval_capacity_factor in config.json); disable both there to reproduce this "
            "checkpoint's softmax top-k routing exactly"
        )
    return notes
