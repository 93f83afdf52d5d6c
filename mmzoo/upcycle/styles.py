"""Dense -> MoE as a lazy transform of a canonical ``Checkpoint``.

Experts are ``Planned`` references to the dense MLP's bytes (byte copies when written), the shared
style's routed output projections are ``.scale(0.5)`` of them (exact), routers and zero tensors are
computed ``Source(load=...)`` tensors seeded per tensor name, so any one of them is reproducible alone.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from ..archs.moe import MOE_CONFIG_KEY, dense_mlp_names, router_shapes, site_out_dim
from ..errors import UpcycleError
from ..io.tensors import Planned, Source
from ..checkpoint.spec import Checkpoint
from .options import DEFAULT_Z_LOSS, LIBMOE_ROUTERS, SHARED_E, UpcycleOptions, modality_experts, parse_layers

# the tensor (prefix) of each target's dense MLP whose output the shared style halves
OUTPUT_PROJ = {"text": ("down_proj.",), "vision": ("fc2.",), "projector": ("linear_2.",)}
FIT_TYPES = ("llama", "mistral", "qwen2", "phi3")


def name_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def router_source(name: str, shape: tuple[int, ...], dtype: str, std: float, seed: int) -> Source:
    def load():
        import torch

        from ..io.dtypes import to_torch

        if std == 0:
            return torch.zeros(shape, dtype=to_torch(dtype))
        gen = torch.Generator().manual_seed(name_seed(seed, name))
        return (torch.randn(shape, generator=gen, dtype=torch.float32) * std).to(to_torch(dtype))

    return Source(name, dtype, shape, load=load, origin="router (computed)")


def zeros_source(name: str, shape: tuple[int, ...], dtype: str) -> Source:
    def load():
        import torch

        from ..io.dtypes import to_torch

        return torch.zeros(shape, dtype=to_torch(dtype))

    return Source(name, dtype, shape, load=load, origin="zeros (computed)")


def hf_arch_for(cfg: dict[str, Any], base: str, style: str, targets, text_layers: list[int],
                router: str = "softmax_topk") -> tuple[str | None, str]:
    """The built-in transformers MoE architecture that expresses this layout exactly, or (None, why not):
    then the text_config is ``mmzoo_moe`` and ``hf`` folders carry mmzoo's remote code."""
    if router != "softmax_topk":  # same routing, but training must see LibMoE's losses, which only MoeBlock has
        return None, f"LibMoE {router} router losses"
    if style not in ("mixtral", "shared"):
        return None, f"{style} routing"
    if tuple(targets) != ("text",):
        return None, "vision/projector experts"
    if base not in FIT_TYPES:
        return None, f"a {base} LLM"
    if cfg.get("mlp_bias"):
        return None, "MLP biases"
    if base == "llama" and cfg.get("attention_bias"):
        return None, "attention biases (o_proj)"
    rope = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    partial = cfg.get("partial_rotary_factor") or rope.get("partial_rotary_factor")
    if base == "phi3" and partial not in (None, 1.0):
        return None, "Phi-3 partial rotary embeddings"
    all_layers = text_layers == list(range(cfg["num_hidden_layers"]))
    if style == "mixtral" and all_layers and base in ("llama", "mistral"):
        return "mixtral", ""
    return "qwen2_moe", ""


def _mixtral_config(cfg: dict[str, Any], num_experts: int, top_k: int, aux: float) -> dict[str, Any]:
    out = dict(cfg)
    out.update(
        model_type="mixtral", num_local_experts=num_experts, num_experts_per_tok=top_k,
        router_aux_loss_coef=aux, output_router_logits=False, router_jitter_noise=0.0,
        sliding_window=cfg.get("sliding_window"),
    )
    if "architectures" in out:
        out["architectures"] = ["MixtralForCausalLM"]
    return out


def _qwen2_moe_config(cfg: dict[str, Any], base: str, num_experts: int, top_k: int, aux: float, layers: list[int], shared_size: int) -> dict[str, Any]:
    n = cfg["num_hidden_layers"]
    out = dict(cfg)
    out.update(
        model_type="qwen2_moe", num_experts=num_experts, num_experts_per_tok=top_k, norm_topk_prob=True,
        moe_intermediate_size=cfg["intermediate_size"], shared_expert_intermediate_size=shared_size,
        decoder_sparse_step=1, mlp_only_layers=[i for i in range(n) if i not in layers],
        router_aux_loss_coef=aux, output_router_logits=False,
        qkv_bias=base == "qwen2" or bool(cfg.get("attention_bias", False)),
    )
    if base == "qwen2":
        out.setdefault("use_sliding_window", False)
    else:
        window = cfg.get("sliding_window")
        out["use_sliding_window"] = bool(window)
        out["sliding_window"] = window
        out["max_window_layers"] = n
        out["layer_types"] = cfg.get("layer_types") or ["sliding_attention" if window else "full_attention"] * n
    if "architectures" in out:
        out["architectures"] = ["Qwen2MoeForCausalLM"]
    return out


def zero_shared_expert(prefix: str, hidden: int, dtype: str) -> dict[str, Planned]:
    """Qwen2-MoE always has a shared expert: a 1-wide zero one with a zero gate adds exactly 0.5 * 0."""
    shapes = {"shared_expert.gate_proj.weight": (1, hidden), "shared_expert.up_proj.weight": (1, hidden),
              "shared_expert.down_proj.weight": (hidden, 1), "shared_expert_gate.weight": (1, hidden)}
    return {prefix + n: Planned.of(zeros_source(prefix + n, shape, dtype)) for n, shape in shapes.items()}


def moe_text_config(dense: dict[str, Any], base: str, layout: dict[str, Any]) -> dict[str, Any]:
    """The MoE text_config for a layout (``layout["hf_arch"]``: mixtral, qwen2_moe, or None -> mmzoo_moe),
    starting from the FULL dense config and overriding only the MoE fields."""
    arch = layout.get("hf_arch")
    aux = layout.get("router_aux_loss_coef", 0.01)
    if arch == "mixtral":
        out = _mixtral_config(dense, layout["num_experts"], layout["top_k"], aux)
    elif arch == "qwen2_moe":
        shared = dense["intermediate_size"] if layout["style"] == "shared" else 1
        out = _qwen2_moe_config(dense, base, layout["num_experts"], layout["top_k"], aux, layout["layers"], shared)
    else:
        out = {**dense, "model_type": "mmzoo_moe", "base_model_type": base}
    out[MOE_CONFIG_KEY] = layout
    return out


# LibMoE's inits of the tensors besides the router (std of a normal): XMoE's expert embeddings, MoE++'s unused
# gate_transform, its constant expert's mixing gate and vector (moe_plus_plus.py)
EXTRA_STD = {"expert_embeddings": 0.02, "gate_transform.weight": 0.02, ".wg.weight": 0.02, ".constant": 0.002}


def _init_std(name: str, opts: UpcycleOptions) -> float:
    return next((std for suffix, std in EXTRA_STD.items() if name.endswith(suffix)), None) or opts.router_std()


def expand_site(tensors: dict[str, Planned], prefix: str, target: str, hidden: int, wanted: dict[str, Any],
                opts: UpcycleOptions, hf_arch: str | None, *, where=None, experts_from: list[dict[str, Planned]] | None = None,
                out_dim: int | None = None) -> None:
    """Replace the dense MLP at ``prefix`` in ``tensors`` (canonical names) by its MoE block, in place:
    the router, N experts (copies of the dense MLP, or expert ``e`` = the same MLP of ``experts_from[e]``)
    and, per style, the shared expert."""
    dense = {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}
    missing = [n for n in wanted if n not in dense]
    if missing:
        raise UpcycleError(f"cannot upcycle {prefix}: tensor {prefix + missing[0]!r} is missing", path=where)
    for name in dense:
        del tensors[prefix + name]
    dtype = dense[next(iter(wanted))].dtype
    for name, shape in router_shapes(prefix, opts.router, opts.num_experts, hidden, opts.top_k, out_dim).items():
        tensors[name] = Planned.of(router_source(name, shape, dtype, _init_std(name, opts), opts.seed))
    gated_shared = opts.style == "shared" and opts.router not in SHARED_E  # LibMoE SharedE mixes 0.5 / 0.5, no gate, no scaling
    scale_out = gated_shared
    for e in range(opts.num_experts):
        source = dense if experts_from is None else {n: experts_from[e][prefix + n] for n in dense}
        for name, planned in source.items():
            if scale_out and name.startswith(OUTPUT_PROJ[target]):
                planned = planned.scale(0.5)
            tensors[f"{prefix}experts.{e}.{name}"] = planned
    if opts.style == "shared":
        for name, planned in dense.items():
            tensors[f"{prefix}shared_expert.{name}"] = planned
        if gated_shared:
            tensors[prefix + "shared_expert_gate.weight"] = Planned.of(zeros_source(prefix + "shared_expert_gate.weight", (1, hidden), dtype))
    elif target == "text" and hf_arch == "qwen2_moe":
        tensors.update(zero_shared_expert(prefix, hidden, dtype))


def layout_for(opts: UpcycleOptions, text_layers: list[int], vision_layers: list[int], hf_arch: str | None, why: str,
               base: str) -> dict[str, Any]:
    """``spec.moe`` (and ``text_config.mmzoo_moe``) for an upcycled layout."""
    assignment = modality_experts(opts.num_experts, opts.top_k) if opts.style == "modality" else None
    layout: dict[str, Any] = {
        "style": opts.style,
        "num_experts": opts.num_experts,
        "top_k": opts.top_k,
        "layers": text_layers,
        "vision_layers": vision_layers,
        "targets": list(opts.targets),
        "layer_selection": opts.layers if isinstance(opts.layers, str) else ",".join(map(str, opts.layers)),
        "router": opts.router,
        "norm_topk_prob": True,
        "router_init": opts.router_init,
        "router_aux_loss_coef": opts.text_aux,
        "vision_aux_loss_coef": opts.image_aux,
        "capacity_factor": opts.capacity_factor,
        "seed": opts.seed,
        "hf_arch": hf_arch,
    }
    if assignment is not None:
        layout["modality_experts"] = assignment
    if opts.router in LIBMOE_ROUTERS:
        layout["router_z_loss_coef"] = opts.router_z_loss_coef if opts.router_z_loss_coef is not None else DEFAULT_Z_LOSS
    if opts.style == "shared" and opts.router in SHARED_E:
        layout["shared_expert"] = "dense MLP copy; output = 0.5 * shared + 0.5 * routed (LibMoE SharedE, no gate)"
    elif opts.style == "shared":
        layout["shared_expert"] = "dense MLP copy, sigmoid gate initialised to 0 (x0.5); routed output projections x0.5"
    if hf_arch is None:
        layout["hf_unsupported"] = why
    layout["base_model_type"] = base
    return layout


def upcycle_checkpoint(ckpt: Checkpoint, opts: UpcycleOptions) -> Checkpoint:
    spec = ckpt.spec
    if spec.moe:
        raise UpcycleError(
            f"the checkpoint is already MoE ({spec.moe.get('style')}, {spec.moe.get('num_experts')} experts); "
            "upcycling needs a dense model", path=ckpt.path
        )
    if opts.hidden_router:
        raise UpcycleError("--router-init hidden runs the source as a causal LM: it takes a plain LLM folder "
                           "(upcycle the LLM, then assemble the VLM with `mmzoo init`)", path=ckpt.path)
    text_cfg, vision_cfg = spec.text_config, spec.vision_config
    text_layers = parse_layers(opts.layers, text_cfg["num_hidden_layers"], "LLM") if "text" in opts.targets else []
    vision_layers = parse_layers(opts.layers, vision_cfg["num_hidden_layers"], "vision encoder") if "vision" in opts.targets else []
    if "projector" in opts.targets and spec.projector_type != "mlp2x_gelu":
        raise UpcycleError("--moe-target projector needs the mlp2x_gelu projector (this one is linear)")
    hf_arch, why = hf_arch_for(text_cfg, spec.text_type, opts.style, opts.targets, text_layers, opts.router)

    tensors = dict(ckpt.tensors)
    sites = [("text", f"text_model.model.layers.{i}.mlp.", text_cfg["hidden_size"]) for i in text_layers]
    sites += [("vision", f"image_model.encoder.layers.{i}.mlp.", vision_cfg["hidden_size"]) for i in vision_layers]
    if "projector" in opts.targets:
        sites.append(("projector", "projector.", spec.projector_in_features))
    for target, prefix, hidden in sites:
        expand_site(tensors, prefix, target, hidden, dense_mlp_names(target, text_cfg, vision_cfg, spec.projector_in_features),
                    opts, hf_arch, where=ckpt.path,
                    out_dim=site_out_dim(target, text_cfg, vision_cfg))

    layout = layout_for(opts, text_layers, vision_layers, hf_arch, why, spec.text_type)
    new_text = moe_text_config(text_cfg, spec.text_type, layout) if ("text" in opts.targets or hf_arch is None) else text_cfg
    new_spec = spec.model_copy(update={"text_config": new_text, "moe": layout})
    return replace(ckpt, spec=new_spec, tensors=tensors)
