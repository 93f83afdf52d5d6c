"""``libmoe``: the checkpoints LibMoE publishes (Fsoft-AIC/LibMoE, ``vision_language_model/moe_model``).

A LibMoE folder is what its trainer's ``save_pretrained`` writes for ``LlavaPhiForCausalLM`` (transformers
4.43): ``config.json`` (``model_type: llava_phi``: the Phi-3.5 config plus every ``ModelArguments`` field —
``mm_vision_tower``, ``mm_projector_type``, ``scales``, ``moe_name``, ``num_experts``, ``num_selected``,
``clip_smoe``, ``mlp_smoe``, ``balance_loss_coef``, ``router_z_loss_coef`` …), safetensors shards and the
Phi-3.5 tokenizer. Tensor names (from its model classes):

- LLM: Phi-3 names under ``model.`` / ``lm_head.`` (dense: LibMoE puts no MoE in the LLM);
- vision tower (its own SigLIP without post-layernorm or head): ``model.vision_tower.vision_model.*``; with
  ``clip_smoe`` every encoder layer's MLP is ``encoder.layers.L.moelayer.{gate.weight, experts.E.fc{1,2}.*}``;
- projector: ``model.mm_projector.{0,2}.*`` (mlp2x_gelu) or, ``mm_projector_type: moe``,
  ``model.mm_projector.moelayer.{gate.weight, experts.E.{0,2}.*}``.

Per ``moe_name``: ``smoe`` / ``smoe_sigmoidgating`` / ``smoe_tcmoe`` / ``smoe_plus_plus`` keep those names (TC-MoE's
gate has 2E + k rows; MoE++ adds ``gate_transform.weight``, the zero expert ``experts.E`` and the constant expert
``experts.{E+1}`` where in == out); ``xmoe``'s router is ``inp_reduction.weight`` + ``expert_embeddings`` beside an
unused ``gate.weight`` (``XMOE_NAMES``); SharedE (``smoe_share``, ``smoe_sharev3``) keeps its shared expert as the last of
``num_experts`` experts, routing over the others. The vision config is not in the folder: LibMoE loads it by
name (``google/siglip-so400m-patch14-224``), so it comes from a local folder of that name or the Hugging Face
cache; folders mmzoo writes also carry it under ``mmzoo`` so they read back anywhere. ``scales`` (S² multi-scale
image features, ``[1, 3]`` in every published run) becomes ``spec.vision_scales`` (mmzoo/models/multiscale.py);
pre-training folders (``mm_projector.bin`` only) are read with the base LLM's weights beside them (``_weights``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import MmzooError, UnknownArchitecture, UnknownFormat
from ..io.checkpoint import bin_sources, read_weights, write_weights
from ..io.dtypes import CONFIG_DTYPE_NAMES
from ..io.tensors import Planned, Source
from ..checkpoint.locate import read_json
from ..checkpoint.spec import Checkpoint, ModelSpec, find_tokenizer_files
from ..checkpoint.tokenizer_files import added_tokens
from .common import (
    copy_files, detection_config, hub_cache_folder, image_seq_length, mmzoo_notes, native_components, processor_from_folder, rope_parameters_from_4x,
    source_dtype, split_by_prefix, to_canonical, transformers4_text_fields, write_json,
)

NAME = "libmoe"
MULTISCALE = True  # ``scales``: S² multi-scale image features (mmzoo/models/multiscale.py)
DESCRIPTION = "LibMoE checkpoints (Fsoft-AIC): LlavaPhiForCausalLM, SigLIP tower + projector with LibMoE's MoE layers"
ARCHITECTURE, MODEL_TYPE = "LlavaPhiForCausalLM", "llava_phi"
# LibMoE moe_name -> (mmzoo router, style)
ROUTERS = {"smoe": ("smoe", "mixtral"), "xmoe": ("xmoe", "mixtral"), "smoe_sigmoidgating": ("sigmoid", "mixtral"),
           "smoe_tcmoe": ("tcmoe", "mixtral"), "smoe_plus_plus": ("moepp", "mixtral"),
           "smoe_share": ("sharede_v2", "shared"), "smoe_sharev3": ("sharede_v3", "shared")}
MOE_NAMES = {router: name for name, (router, _) in ROUTERS.items()}
# LibMoE's own config fields (its ModelArguments, set on the config by initialize_vision_modules, and the
# trainer's): not the LLM's. Kept verbatim under spec.extra["libmoe"] so a round trip restores them.
_FIELD = re.compile(r"^(_name_or_path$|mm_|moe_|num_experts$|num_selected$|num_layers$|clip_smoe$|mlp_smoe$|scales$|sparse_upcycling$|"
                    r"balance_loss_coef$|router_z_loss_coef$|router_loss_coef$|diversity_loss_coef$|bal_comp_loss_coef$|"
                    r"e_loss_coef$|dropout$|unit_test$|pretrain_mm_mlp_adapter$|vision_tower|tune_mm_|freeze_|use_mm_proj$|"
                    r"tokenizer_|image_aspect_ratio$|topk_max$|topk_min$|use_old$|number_of_previous_tokens$|init_weight$|"
                    r"std_gate$|training$|local_rank$|version$|model_name_or_path$|freeze_backbone$|is_norm$|image_grid_pinpoints$|"
                    r"unfreeze_mm_vision_tower$|pft$)")
SIGLIP_NAMES = ("google/",)  # LibMoE's build_vision_tower: a name starting with google/ is SigLIP
SYNTHESIZED = ("post_layernorm.weight", "post_layernorm.bias")
PROJECTOR_ONLY = "mm_projector.bin"
CLIP_FILE = "clip.bin"  # the pre-finetuning stage's tower, saved apart


def detect(path: Path) -> bool:
    data = detection_config(path)
    if data is None:
        return False
    return (data.get("model_type") == MODEL_TYPE or ARCHITECTURE in (data.get("architectures") or [])) and "moe_name" in data


def _scales(config: dict[str, Any]) -> list[int]:
    """LibMoE's ``scales`` (its train.py parses ``--scales 1,3`` into ints; the config keeps the list)."""
    scales = config.get("scales")
    if scales in (None, "", []):
        return [1]
    if isinstance(scales, str):
        scales = [s.strip() for s in scales.split(",") if s.strip()]
    if not isinstance(scales, list) or not all(isinstance(s, (int, str)) and str(s).isdigit() for s in scales):
        raise UnknownArchitecture(f"LibMoE scales {config.get('scales')!r} are not whole numbers (e.g. [1, 3])")
    return [int(s) for s in scales]


def _tower_folder(config: dict[str, Any], where: Path, wanted: str = "its config (hf download {tower} config.json preprocessor_config.json)") -> Path:
    """The folder of the tower the config names (LibMoE loads it by name): a local folder, else the Hugging Face cache."""
    tower = str(config.get("mm_vision_tower") or config.get("vision_tower") or "")
    folder = Path(tower) if tower and Path(tower).is_dir() else hub_cache_folder(tower)
    if folder is None:
        raise UnknownFormat(f"LibMoE folder whose vision tower {tower!r} is neither a local folder nor in the Hugging Face cache; "
                            f"download {wanted.format(tower=tower)}", path=where)
    return folder


def _vision(config: dict[str, Any], notes: dict[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The SigLIP vision config and image processor: from mmzoo's notes, else the tower named in the config."""
    if isinstance(notes.get("vision_config"), dict):
        return dict(notes["vision_config"]), notes.get("image_processor")
    tower = str(config.get("mm_vision_tower") or config.get("vision_tower") or "")
    folder = _tower_folder(config, where)
    vision = read_json(folder / "config.json")
    if vision.get("model_type") == "siglip":
        vision = dict(vision.get("vision_config") or {}, model_type="siglip_vision_model")
    if vision.get("model_type") != "siglip_vision_model":
        raise UnknownArchitecture(f"LibMoE vision tower {tower!r} is {vision.get('model_type')!r}; the libmoe layout reads SigLIP towers", path=where)
    vision = {k: v for k, v in vision.items() if k not in ("architectures", "torch_dtype", "dtype", "transformers_version", "_name_or_path")}
    vision["vision_use_head"] = False  # LibMoE's tower is embeddings + encoder only
    return vision, processor_from_folder(folder)


def _layout(config: dict[str, Any], vision_layers: int, where: Path) -> dict[str, Any] | None:
    """``spec.moe`` for a LibMoE config (None when neither the tower nor the projector is MoE)."""
    clip, mlp = bool(config.get("clip_smoe")), bool(config.get("mlp_smoe")) and config.get("mm_projector_type") == "moe"
    if not (clip or mlp):
        return None
    name = str(config.get("moe_name", "smoe"))
    if name not in ROUTERS:
        raise UnknownArchitecture(f"LibMoE moe_name {name!r} is not supported (supported: {', '.join(ROUTERS)})", path=where)
    router, style = ROUTERS[name]
    experts, top_k = int(config.get("num_experts", 1)), int(config.get("num_selected", 1))
    if style == "shared":  # the last of num_experts is the shared expert; the router chooses num_selected - 1 of the others
        experts, top_k = experts - 1, top_k - 1
    targets = (["vision"] if clip else []) + (["projector"] if mlp else [])
    balance = float(config.get("balance_loss_coef") or 0.0)
    return {
        "style": style, "num_experts": experts, "top_k": top_k, "layers": [], "vision_layers": list(range(vision_layers)) if clip else [],
        "targets": targets, "layer_selection": "all", "router": router, "norm_topk_prob": True, "router_init": "libmoe",
        "router_aux_loss_coef": balance, "vision_aux_loss_coef": balance,
        "router_z_loss_coef": float(config.get("router_z_loss_coef") or 0.0), "capacity_factor": None, "seed": 0,
        "hf_arch": None, "hf_unsupported": f"LibMoE {router} experts in the vision tower / projector", "base_model_type": "phi3",
        **({"unused_gate": True} if router == "xmoe" else {}),  # XMOE saves MoeLayer's gate.weight, which it never uses
        "origin": f"read from a LibMoE checkpoint (moe_name {name})",
    }


def _spec(config: dict[str, Any], where: Path) -> tuple[ModelSpec, dict[str, Any] | None]:
    """The spec of a LibMoE config, and the tower's image processor."""
    from ..upcycle.styles import moe_text_config

    notes = mmzoo_notes(config, where / "config.json")
    scales = _scales(config)
    if int(config.get("mm_vision_select_layer", -2)) != -2:
        raise UnknownArchitecture("LibMoE's SigLIP tower returns the input of its last layer (mm_vision_select_layer -2); "
                                  f"this config says {config.get('mm_vision_select_layer')}", path=where)
    if config.get("mm_vision_select_feature", "patch") != "patch":
        raise UnknownArchitecture(f"mm_vision_select_feature {config.get('mm_vision_select_feature')!r} is not supported (patch)", path=where)
    projector = config.get("mm_projector_type", "linear")
    if projector not in ("mlp2x_gelu", "moe"):
        raise UnknownArchitecture(f"LibMoE mm_projector_type {projector!r} is not supported (mlp2x_gelu, moe)", path=where)
    vision, processor = _vision(config, notes, where)
    libmoe = {k: v for k, v in config.items() if _FIELD.match(k)}
    text = {k: v for k, v in config.items() if k not in libmoe and k != "mmzoo" and k not in notes.get("added_keys", [])}
    text.update(notes.get("replaced", {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}))
    text = {k: v for k, v in text.items() if v is not None or k not in notes.get("replaced", {})}
    if not notes:
        text.pop("_name_or_path", None)
    if "rope_parameters" not in text and "rope_theta" in text:
        text["rope_parameters"] = rope_parameters_from_4x(text)
    layout = _layout(config, int(vision["num_hidden_layers"]), where)
    if layout is not None:
        text = moe_text_config(text, "phi3", layout)
    spec = ModelSpec(
        vision_config=vision, text_config=text, projector_type="mlp2x_gelu", image_token_id=notes.get("image_token_index"),
        vision_feature_layer=-2, vision_feature_select_strategy="full",  # SigLIP has no class token: LibMoE's "patch" keeps every token
        dtype=config.get("torch_dtype") or config.get("dtype"), moe=layout, vision_scales=scales,
        extra={"libmoe": libmoe, "libmoe_synthesized": list(notes.get("synthesized", SYNTHESIZED))},
    )
    return spec.model_copy(update={"image_seq_length": image_seq_length(spec)}), processor


# LibMoE's XMOE keeps its router on the layer (``inp_reduction``, ``expert_embeddings``) beside MoeLayer's unused
# ``gate``; mmzoo's XMoE block has them in its XmoeGate and the unused one as ``unused_gate``
XMOE_NAMES = {"inp_reduction.weight": "gate.inp_reduction.weight", "expert_embeddings": "gate.expert_embeddings", "gate.weight": "unused_gate.weight"}
XMOE_NATIVE = {ours: native for native, ours in XMOE_NAMES.items()}


def _rename_site(name: str, shared_index: int | None, projector: bool, xmoe: bool = False) -> str:
    """LibMoE's MoE-layer names (relative to the site) -> mmzoo's: ``experts.{N}`` of SharedE is the shared
    expert; the projector's experts are nn.Sequential (``0`` / ``2``); XMoE's router (``XMOE_NAMES``)."""
    if xmoe and name in XMOE_NAMES:
        return XMOE_NAMES[name]
    if shared_index is not None and name.startswith(f"experts.{shared_index}."):
        name = "shared_expert." + name[len(f"experts.{shared_index}."):]
    if projector:
        name = re.sub(r"^((?:experts\.\d+|shared_expert)\.)0\.", r"\1linear_1.", name)
        name = re.sub(r"^((?:experts\.\d+|shared_expert)\.)2\.", r"\1linear_2.", name)
    return name


def read(path: Path, *, drop_unmatched: bool = False) -> Checkpoint:
    where = str(path)
    config = read_json(path / "config.json")
    spec, processor = _spec(config, path)
    sources = _weights(path, config)
    moe = spec.moe or {}
    shared = moe["num_experts"] if moe.get("style") == "shared" else None
    xmoe = moe.get("router") == "xmoe"
    tensors: dict[str, Planned] = {}
    for name, src in sources.items():
        planned = Planned.of(src)
        if name.startswith("model.vision_tower.vision_model."):
            rest = name[len("model.vision_tower.vision_model."):]
            match = re.match(r"(encoder\.layers\.\d+\.)moelayer\.(.*)\Z", rest)
            if match:
                rest = match.group(1) + "mlp." + _rename_site(match.group(2), shared, projector=False, xmoe=xmoe)
            tensors["vision:" + rest] = planned
        elif name.startswith("model.mm_projector.moelayer."):
            tensors["projector:" + _rename_site(name[len("model.mm_projector.moelayer."):], shared, projector=True, xmoe=xmoe)] = planned
        elif name.startswith("model.mm_projector."):
            rest = name[len("model.mm_projector."):]
            rest = {"0.": "linear_1.", "2.": "linear_2."}.get(rest[:2], rest[:2]) + rest[2:]  # nn.Sequential(Linear, GELU, Linear)
            tensors["projector:" + rest] = planned
        else:
            tensors["text:" + name] = planned
    parts = split_by_prefix(tensors, [("vision:", "vision", ""), ("projector:", "projector", ""), ("text:", "text", "")],
                            drop_unmatched=drop_unmatched, where=where)
    canonical = to_canonical(spec, parts, drop_unmatched=drop_unmatched, where=where)
    hidden, dtype = spec.vision_config["hidden_size"], canonical["image_model.embeddings.patch_embedding.weight"].dtype
    for name in spec.extra["libmoe_synthesized"]:  # LibMoE's tower has none; transformers' SigLIP needs an (unused) one
        full = "image_model." + name
        if full not in canonical:
            canonical[full] = Planned.of(_constant(full, (hidden,), dtype, 1.0 if name.endswith("weight") else 0.0))
    tokenizer_files = find_tokenizer_files(path)
    if spec.image_token_id is None:
        spec = spec.model_copy(update={"image_token_id": added_tokens(tokenizer_files).get("<image>")})
    extra = {n: path / n for n in ("generation_config.json",) if (path / n).is_file()}
    return Checkpoint(spec, canonical, path, NAME, tokenizer_files, processor, extra)


def _weights(path: Path, config: dict[str, Any]) -> dict[str, Source]:
    """The folder's tensors. A pre-training folder (LibMoE's pretrain.sh with --tune_mm_mlp_adapter saves config.json
    and ``mm_projector.bin`` only) is read as the llava format reads LLaVA's: ``mm_projector.bin`` is the projector
    once the base LLM's weights (Phi-3.5, its --model_name_or_path) are copied beside it, and the tower, which LibMoE
    loads from the SigLIP checkpoint (--vision_tower_dir, ``vision_model.*``), comes from the tower named in the config."""
    has_llm = any((path / n).exists() for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"))
    projector_file = path / PROJECTOR_ONLY
    if not has_llm:
        only = f" (only {PROJECTOR_ONLY}: LibMoE's pre-training stage)" if projector_file.is_file() else ""
        raise UnknownFormat(f"holds no model weights{only}; copy the base LLM's weights (Phi-3.5, LibMoE's --model_name_or_path) "
                            "into the folder beside it (the tower's are read from the tower its config names)", path=path)
    sources = read_weights(path)
    if projector_file.is_file() and not any(n.startswith("model.mm_projector.") for n in sources):  # else a copy (DeepSpeed saves)
        sources.update({n: s for n, s in bin_sources(projector_file).items() if n.startswith("model.mm_projector.")})
    if not any(n.startswith("model.vision_tower.") for n in sources) and (path / CLIP_FILE).is_file():
        # pft.sh's save without DeepSpeed: the tower apart, ``model.vision_tower.`` stripped
        sources.update({"model.vision_tower." + n: s for n, s in bin_sources(path / CLIP_FILE).items() if n.startswith("vision_model.")})
    if not any(n.startswith("model.vision_tower.") for n in sources):
        if config.get("clip_smoe"):
            raise UnknownFormat("holds no vision tower weights, and its clip_smoe tower is not the SigLIP checkpoint LibMoE names", path=path)
        folder = _tower_folder(config, path, wanted="its weights (hf download {tower} model.safetensors)")
        try:
            found = read_weights(folder)
        except MmzooError:  # a cached tower with its config files only
            found = {}
        tower = {n: s for n, s in found.items() if n.startswith("vision_model.")
                 and not n.startswith(("vision_model.post_layernorm.", "vision_model.head."))}  # LibMoE's tower has neither
        if not tower:
            name = config.get("mm_vision_tower") or config.get("vision_tower")
            raise UnknownFormat(f"holds no vision tower weights, and the tower's folder {folder} has no vision_model.* tensors "
                                f"(LibMoE's --vision_tower_dir: hf download {name} model.safetensors)", path=path)
        sources.update({"model.vision_tower." + n: s for n, s in tower.items()})
    return sources


def _constant(name: str, shape: tuple[int, ...], dtype: str, value: float,
              origin: str = "LibMoE's tower has no post-layernorm (computed identity)") -> Source:
    def load():
        import torch

        from ..io.dtypes import to_torch

        return torch.full(shape, value, dtype=to_torch(dtype))

    return Source(name, dtype, shape, load=load, origin=origin)


# ---------------------------------------------------------------- writing

def check_supported(spec: ModelSpec) -> None:
    moe = spec.moe or {}
    base = spec.text_config.get("base_model_type") if spec.text_type == "mmzoo_moe" else spec.text_type
    if base != "phi3" or spec.vision_type != "siglip_vision_model":
        raise UnknownArchitecture(f"the libmoe layout holds a Phi-3 LLM with a SigLIP tower (LibMoE's LlavaPhiForCausalLM); "
                                  f"this checkpoint has {base} + {spec.vision_type}")
    if spec.projector_type != "mlp2x_gelu" or spec.vision_feature_layer != -2 or spec.vision_feature_select_strategy != "full":
        raise UnknownArchitecture("the libmoe layout uses an mlp2x_gelu projector on every SigLIP token of layer -2")
    if moe:
        if moe.get("layers") or moe.get("router") not in MOE_NAMES:
            raise UnknownArchitecture(f"the libmoe layout holds LibMoE's routers ({', '.join(MOE_NAMES)}) in the vision tower and the "
                                      f"projector only; this layout has router {moe.get('router')!r}" + (" and LLM experts" if moe.get("layers") else ""))
        if moe.get("vision_layers") and moe["vision_layers"] != list(range(spec.vision_config["num_hidden_layers"])):
            raise UnknownArchitecture("LibMoE's clip_smoe puts experts in every vision layer; this layout has them in some only")
        if moe.get("residual") or moe.get("capacity_factor"):
            raise UnknownArchitecture("the libmoe layout has no residual MoE or capacity factor")


def _native_site(name: str, shared_index: int | None, projector: bool) -> str:
    if name in XMOE_NATIVE:
        return XMOE_NATIVE[name]
    if projector:
        name = re.sub(r"^((?:experts\.\d+|shared_expert)\.)linear_1\.", r"\g<1>0.", name)
        name = re.sub(r"^((?:experts\.\d+|shared_expert)\.)linear_2\.", r"\g<1>2.", name)
    if shared_index is not None and name.startswith("shared_expert."):
        name = f"experts.{shared_index}." + name[len("shared_expert."):]
    return name


def config_for(spec: ModelSpec, vision_tower: str | None, torch_dtype: str, image_processor: dict | None) -> dict[str, Any]:
    from ..archs.moe import base_text_config

    moe = spec.moe or {}
    text = base_text_config(spec.text_config) if spec.text_type == "mmzoo_moe" else dict(spec.text_config)
    replaced = {"model_type": text.get("model_type"), "architectures": text.get("architectures")}
    config = {**text, "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE}
    added = {k: v for k, v in {"torch_dtype": torch_dtype, **transformers4_text_fields(text)}.items() if k not in config}
    config.update(added)
    if "rope_theta" not in added and config.get("rope_parameters") == rope_parameters_from_4x(config):
        del config["rope_parameters"]  # LibMoE's transformers 4.43 reads rope_theta / rope_scaling; the reader rebuilds it
    libmoe = dict(spec.extra.get("libmoe") or {})
    tower = vision_tower or libmoe.get("mm_vision_tower")
    if not tower or not str(tower).startswith(SIGLIP_NAMES):
        raise UnknownArchitecture("LibMoE loads its SigLIP tower by a google/... name (its build_vision_tower); "
                                  "name it with --llava-vision-tower, e.g. google/siglip-so400m-patch14-224")
    router = moe.get("router")
    shared = moe.get("style") == "shared"
    libmoe.update(
        mm_vision_tower=tower, vision_tower=tower, mm_hidden_size=spec.vision_config["hidden_size"],
        mm_projector_type="moe" if "projector" in (moe.get("targets") or []) else "mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", scales=list(spec.vision_scales),
        clip_smoe=bool(moe.get("vision_layers")), mlp_smoe="projector" in (moe.get("targets") or []),
    )
    if moe:
        libmoe.update(moe_name=MOE_NAMES[router], num_experts=moe["num_experts"] + int(shared), num_selected=moe["top_k"] + int(shared),
                      balance_loss_coef=moe.get("router_aux_loss_coef", 0.0), router_z_loss_coef=moe.get("router_z_loss_coef", 0.0),
                      sparse_upcycling=True)
    else:
        libmoe.setdefault("moe_name", "smoe")
        libmoe.setdefault("num_experts", 1)
        libmoe.setdefault("num_selected", 1)
    for key in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        libmoe.setdefault(key, False)
    libmoe.setdefault("mm_patch_merge_type", "flat")
    libmoe.setdefault("image_aspect_ratio", "pad")
    config.update(libmoe)
    config["mmzoo"] = {
        "note": "written by mmzoo; lets `mmzoo convert` read this folder without the tower's files and restore its configs",
        "added_keys": sorted(added), "replaced": replaced, "image_token_index": spec.image_token_id,
        "vision_config": spec.vision_config, "image_processor": image_processor,
        "synthesized": list(spec.extra.get("libmoe_synthesized", SYNTHESIZED)),
    }
    return config


def write(ckpt: Checkpoint, out: Path, *, final_path: Path, shard_bytes: int, progress=None, vision_tower: str | None = None, **_: Any) -> None:
    spec = ckpt.spec
    check_supported(spec)
    moe = spec.moe or {}
    shared = moe["num_experts"] if moe.get("style") == "shared" else None
    components = native_components(ckpt)
    torch_dtype = spec.dtype or CONFIG_DTYPE_NAMES.get(source_dtype(ckpt.tensors) or "F32", "float32")
    vision_moe = set(moe.get("vision_layers") or [])
    tensors: dict[str, Planned] = dict(components["text"])
    for name, planned in components["vision"].items():
        if name.startswith(("post_layernorm.", "head.")):  # LibMoE's tower has neither (see left_out)
            continue
        match = re.match(r"(encoder\.layers\.(\d+)\.)mlp\.(.*)\Z", name)
        if match and int(match.group(2)) in vision_moe:
            name = match.group(1) + "moelayer." + _native_site(match.group(3), shared, projector=False)
        tensors["model.vision_tower.vision_model." + name] = planned
    for name, planned in components["projector"].items():
        if "projector" in (moe.get("targets") or []):
            tensors["model.mm_projector.moelayer." + _native_site(name, shared, projector=True)] = planned
        else:
            tensors["model.mm_projector." + name.replace("linear_1.", "0.").replace("linear_2.", "2.")] = planned
    tensors.update(_unused_xmoe_gates(tensors, moe))
    write_json(out / "config.json", config_for(spec, vision_tower, torch_dtype, ckpt.image_processor))
    write_weights(out, dict(sorted(tensors.items())), max_shard_bytes=shard_bytes, progress=progress)
    copy_files(ckpt.tokenizer_files, out)
    copy_files(ckpt.extra_files, out)


def _unused_xmoe_gates(tensors: dict[str, Planned], moe: dict[str, Any]) -> dict[str, Planned]:
    """LibMoE's XMOE layer has (and its strict load wants) MoeLayer's ``gate.weight``, which it never uses; an XMoE
    layout mmzoo upcycled has none: zeros [E, hidden] per site (a folder read from LibMoE keeps its own)."""
    if moe.get("router") != "xmoe" or moe.get("unused_gate"):
        return {}
    out = {}
    for name, planned in tensors.items():
        if name.endswith("moelayer.inp_reduction.weight"):
            prefix = name[: -len("inp_reduction.weight")]
            shape = (int(moe["num_experts"]), int(planned.shape[1]))
            out[prefix + "gate.weight"] = Planned.of(_constant(prefix + "gate.weight", shape, planned.dtype, 0.0, "XMoE's unused base gate (zeros)"))
    return out


def left_out(ckpt: Checkpoint) -> list[str]:
    """Source tensors a libmoe folder cannot hold: a SigLIP post-layernorm and pooling head (LibMoE's tower has
    neither; LLaVA reads layer -2, so neither is used). Reading the folder back gives an identity post-layernorm."""
    synthesized = set(ckpt.spec.extra.get("libmoe_synthesized", ()))  # read from a LibMoE folder: identity, not the source's
    return [n for n in ckpt.tensors if n.startswith(("image_model.post_layernorm.", "image_model.head."))
            and n[len("image_model."):] not in synthesized]


def target_notes(ckpt: Checkpoint) -> list[str]:
    """What writing a libmoe folder leaves out (for ConversionResult.notes)."""
    dropped = left_out(ckpt)
    notes = []
    if dropped:
        notes.append(f"LibMoE's SigLIP tower has no post-layernorm or pooling head: {len(dropped)} tensors of the source "
                     "(unused by LLaVA, which reads layer -2) are not written")
    moe = ckpt.spec.moe or {}
    if moe.get("router") == "xmoe" and not moe.get("unused_gate"):
        notes.append("LibMoE's XMoE layers also hold the gate.weight of their base class, which they never use: written as zeros")
    return notes
