"""MoE text architectures and mmzoo's canonical MoE tensor names.

Canonical names (relative to the component; a dense MLP at ``P`` = ``model.layers.L.mlp.`` for text,
``encoder.layers.L.mlp.`` for vision, or the whole projector, becomes):

- ``P gate.weight``                      router, [num_experts, hidden]
  (LibMoE XMoE: ``P gate.inp_reduction.weight`` [E/2, hidden] and ``P gate.expert_embeddings`` [E, E/2];
  LibMoE MoE++: [E + 2, hidden], ``P gate_transform.weight`` [E + 2, E + 2] (saved, unused), the zero expert
  ``experts.E`` (no tensors) and the constant expert ``P experts.{E+1}.constant`` [hidden], ``.wg.weight`` [2, hidden])
- ``P experts.E.<dense names>``          expert E, the dense MLP's own tensor names
  (text ``{gate,up,down}_proj.weight``, vision ``fc{1,2}.{weight,bias}``, projector ``linear_{1,2}.*``)
- ``P shared_expert.<dense names>``      the shared expert (style ``shared``)
- ``P shared_expert_gate.weight``        its sigmoid gate, [1, hidden]
- ``P residual.<dense names>`` and ``P coefficient.{weight,bias}``  DeepSpeed-MoE ``use_residual``
  (PR-MoE, read from MoE-LLaVA checkpoints): output = moe * c0 + residual * c1, c = softmax(coefficient)

For text these are exactly the Qwen2-MoE native names; Mixtral spells them
``block_sparse_moe.gate.weight`` / ``block_sparse_moe.experts.E.w{1,3,2}.weight`` (gate, up, down).
``text_config.model_type == "mmzoo_moe"`` marks a layout no built-in transformers architecture
expresses (modality routing, residual MoE, vision/projector experts, LLMs with biases or partial
rotary): it loads through mmzoo's own modules (``mmzoo.upcycle.remote.modeling_mmzoo_moe``), in-process
and, for ``hf`` folders, as transformers remote code. Its native names are the dense architecture's,
with MoE sites as above (``MoeSites``); ``mmzoo.archs.component_tables`` picks the tables of a checkpoint.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownArchitecture
from ..io.tensors import Planned
from .base import Rule, Table
from .text import _COMMON, _SEPARATE

MIXTRAL = Table(
    "mixtral",
    _COMMON
    + _SEPARATE
    + (
        Rule("model.layers.{L}.block_sparse_moe.gate.weight", "model.layers.{L}.mlp.gate.weight"),
        Rule("model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight", "model.layers.{L}.mlp.experts.{E}.gate_proj.weight"),
        Rule("model.layers.{L}.block_sparse_moe.experts.{E}.w3.weight", "model.layers.{L}.mlp.experts.{E}.up_proj.weight"),
        Rule("model.layers.{L}.block_sparse_moe.experts.{E}.w2.weight", "model.layers.{L}.mlp.experts.{E}.down_proj.weight"),
    ),
)

QWEN2_MOE = Table(
    "qwen2_moe",
    _COMMON
    + _SEPARATE
    + (
        Rule("model.layers.{L}.mlp.gate.weight"),
        Rule("model.layers.{L}.mlp.experts.{E}.{gate_proj|up_proj|down_proj}.weight"),
        Rule("model.layers.{L}.mlp.shared_expert.{gate_proj|up_proj|down_proj}.weight"),
        Rule("model.layers.{L}.mlp.shared_expert_gate.weight"),
    ),
)


class MmzooMoeTable(Table):
    """Placeholder for ``mmzoo_moe`` in the text registry: its names depend on the dense architecture it
    was made from, so callers use ``mmzoo.archs.component_tables(spec)`` (``MoeSites`` over the base table)."""

    def _refuse(self) -> None:
        raise UnknownArchitecture(
            "an mmzoo_moe text model maps its tensors through its base architecture's table "
            "(mmzoo.archs.component_tables); this caller has no spec to find it"
        )

    def to_canonical(self, tensors: dict[str, Planned], config: dict, **_: Any) -> dict[str, Planned]:
        self._refuse()
        return {}

    def from_canonical(self, tensors: dict[str, Planned], **_: Any) -> dict[str, Planned]:
        self._refuse()
        return {}


PROJECTOR = Table("projector", (Rule("linear_{1|2}.{weight|bias}"),))

# an MoE site is an MLP (``....mlp.``) or, for the projector, the component itself (empty prefix)
_SITE = r"((?:.*?\.)?mlp\.|)"
_MOEPP_CONSTANT = re.compile(_SITE + r"experts\.\d+\.(constant|wg\.weight)\Z")  # MoE++'s constant expert
_GROUP = re.compile(_SITE + r"(experts\.\d+\.|shared_expert\.|residual\.)(.*)\Z")
_SITE_TENSOR = re.compile(_SITE + r"(gate\.weight|gate\.inp_reduction\.weight|gate\.expert_embeddings|gate_transform\.weight|unused_gate\.weight|shared_expert_gate\.weight"
                          r"|coefficient\.weight|coefficient\.bias)\Z")


@dataclass(frozen=True)
class MoeSites:
    """A component's table with mmzoo MoE sites in it (the in-memory / hf names of mmzoo's MoeBlock).

    Inside expert, shared-expert and residual groups the dense MLP's names go through ``dense`` (fusing
    what the dense architecture fuses, e.g. Phi-3 ``gate_up_proj``); routers, the shared expert's gate
    and residual coefficients keep their names; everything else is the dense table's."""

    dense: Table

    @property
    def name(self) -> str:
        return f"{self.dense.name} (MoE)"

    @staticmethod
    def _split(tensors: dict[str, Planned]):
        plain: dict[str, Planned] = {}
        kept: dict[str, Planned] = {}
        grouped: dict[tuple[str, str], dict[str, Planned]] = {}
        for name, planned in tensors.items():
            if _MOEPP_CONSTANT.match(name):
                kept[name] = planned
            elif match := _GROUP.match(name):
                grouped.setdefault((match.group(1), match.group(2)), {})[match.group(1) + match.group(3)] = planned
            elif _SITE_TENSOR.match(name):
                kept[name] = planned
            else:
                plain[name] = planned
        return plain, kept, grouped

    def to_canonical(self, tensors: dict[str, Planned], config: dict, *, drop_unmatched: bool = False, where: str = "") -> dict[str, Planned]:
        plain, out, grouped = self._split(tensors)
        out = {**self.dense.to_canonical(plain, config, drop_unmatched=drop_unmatched, where=where), **out}
        for (site, group), members in grouped.items():
            canon = self.dense.to_canonical(members, config, drop_unmatched=drop_unmatched, where=where)
            out.update({site + group + k[len(site):]: v for k, v in canon.items()})
        return out

    def from_canonical(self, tensors: dict[str, Planned], *, drop_unmatched: bool = False, where: str = "") -> dict[str, Planned]:
        plain, out, grouped = self._split(tensors)
        out = {**self.dense.from_canonical(plain, drop_unmatched=drop_unmatched, where=where), **out}
        for (site, group), members in grouped.items():
            native = self.dense.from_canonical(members, drop_unmatched=drop_unmatched, where=where)
            out.update({site + group + k[len(site):]: v for k, v in native.items()})
        return out



MMZOO_MOE = MmzooMoeTable("mmzoo_moe", ())

MOE_TEXT_TYPES = ("mixtral", "qwen2_moe", "mmzoo_moe")
MOE_CONFIG_KEY = "mmzoo_moe"  # the full layout, kept inside text_config so hf folders round-trip it


def base_text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The dense config an ``mmzoo_moe`` text config was made from."""
    out = {k: v for k, v in cfg.items() if k not in ("base_model_type", MOE_CONFIG_KEY)}
    out["model_type"] = cfg.get("base_model_type", "llama")
    return out


def layout_from_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """``spec.moe`` for a text config read from a folder (None for a dense LLM)."""
    model_type = cfg.get("model_type")
    if model_type not in MOE_TEXT_TYPES:
        return None
    if isinstance(cfg.get(MOE_CONFIG_KEY), dict):
        return dict(cfg[MOE_CONFIG_KEY])
    layers = cfg.get("num_hidden_layers", 0)
    if model_type == "mixtral":
        return {
            "style": "mixtral", "num_experts": cfg.get("num_local_experts", 8), "top_k": cfg.get("num_experts_per_tok", 2),
            "layers": list(range(layers)), "targets": ["text"], "router_aux_loss_coef": cfg.get("router_aux_loss_coef", 0.001),
            "hf_arch": "mixtral", "base_model_type": "mistral", "origin": "read from a Mixtral text_config",
        }
    if model_type == "qwen2_moe":
        only = set(cfg.get("mlp_only_layers") or [])
        step = cfg.get("decoder_sparse_step", 1) or 1
        return {
            "style": "shared", "num_experts": cfg.get("num_experts", 60), "top_k": cfg.get("num_experts_per_tok", 4),
            "layers": [i for i in range(layers) if i not in only and (i + 1) % step == 0], "targets": ["text"],
            "router_aux_loss_coef": cfg.get("router_aux_loss_coef", 0.001), "norm_topk_prob": cfg.get("norm_topk_prob", False),
            "hf_arch": "qwen2_moe", "base_model_type": "qwen2" if cfg.get("qkv_bias", True) else "llama",
            "origin": "read from a Qwen2-MoE text_config",
        }
    raise UnknownArchitecture("an mmzoo_moe text_config must carry its MoE layout under 'mmzoo_moe'")


def dense_mlp_names(target: str, text_cfg: dict[str, Any], vision_cfg: dict[str, Any],
                    projector_in: int | None = None) -> dict[str, tuple[int, ...]]:
    """The dense MLP of one MoE site: tensor names (relative to the site) and shapes. ``projector_in``: the
    projector's input width when it is not the tower's (S² features: the tower's x the number of scales)."""
    if target == "text":
        # Qwen2-MoE experts use moe_intermediate_size; Mixtral's and mmzoo_moe's intermediate_size is the expert's
        hidden, inter = text_cfg["hidden_size"], text_cfg.get("moe_intermediate_size") or text_cfg["intermediate_size"]
        return {"gate_proj.weight": (inter, hidden), "up_proj.weight": (inter, hidden), "down_proj.weight": (hidden, inter)}
    if target == "vision":
        hidden, inter = vision_cfg["hidden_size"], vision_cfg["intermediate_size"]
        return {"fc1.weight": (inter, hidden), "fc1.bias": (inter,), "fc2.weight": (hidden, inter), "fc2.bias": (hidden,)}
    hidden, text_hidden = projector_in or vision_cfg["hidden_size"], text_cfg["hidden_size"]
    return {"linear_1.weight": (text_hidden, hidden), "linear_2.weight": (text_hidden, text_hidden)}


def site_out_dim(target: str, text_cfg: dict[str, Any], vision_cfg: dict[str, Any]) -> int:
    """The output width of a site's dense MLP (the projector maps the vision width to the text width)."""
    return vision_cfg["hidden_size"] if target == "vision" else text_cfg["hidden_size"]


def site_prefixes(moe: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(target, full canonical prefix, layer index or -1 for the projector) for every MoE site of a layout."""
    out: list[tuple[str, str, int]] = []
    for layer in moe.get("layers", []) or []:
        out.append(("text", f"text_model.model.layers.{layer}.mlp.", layer))
    for layer in moe.get("vision_layers", []) or []:
        out.append(("vision", f"image_model.encoder.layers.{layer}.mlp.", layer))
    if "projector" in (moe.get("targets") or []):
        out.append(("projector", "projector.", -1))
    return out


def router_shapes(prefix: str, router: str | None, num_experts: int, hidden: int, top_k: int = 1,
                  out_dim: int | None = None) -> dict[str, tuple[int, ...]]:
    """The router tensors of one MoE site: ``gate.weight`` [E, hidden], LibMoE TC-MoE's [2E + top_k, hidden]
    (negated and null experts), LibMoE XMoE's low-rank cosine router, or LibMoE MoE++'s router over E + 2
    experts with its unused ``gate_transform`` and constant expert (where the MLP's output width ``out_dim``
    equals ``hidden``; elsewhere MoE++ is plain SMoE, as in LibMoE)."""
    if router == "moepp" and (out_dim is None or out_dim == hidden):
        return {prefix + "gate.weight": (num_experts + 2, hidden), prefix + "gate_transform.weight": (num_experts + 2, num_experts + 2),
                f"{prefix}experts.{num_experts + 1}.constant": (hidden,), f"{prefix}experts.{num_experts + 1}.wg.weight": (2, hidden)}
    if router == "tcmoe":
        return {prefix + "gate.weight": (2 * num_experts + top_k, hidden)}
    if router == "xmoe":
        dim = max(1, num_experts // 2)
        return {prefix + "gate.inp_reduction.weight": (dim, hidden), prefix + "gate.expert_embeddings": (num_experts, dim)}
    return {prefix + "gate.weight": (num_experts, hidden)}


def expected_moe_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Canonical tensors every MoE site of ``spec.moe`` must have (router and experts)."""
    moe = spec.moe or {}
    shapes: dict[str, tuple[int, ...]] = {}
    num = moe.get("num_experts", 0)
    for target, prefix, _ in site_prefixes(moe):
        dense = dense_mlp_names(target, spec.text_config, spec.vision_config, spec.projector_in_features)
        hidden = {"text": spec.text_config["hidden_size"], "vision": spec.vision_config["hidden_size"]}.get(target, spec.projector_in_features)
        out_dim = site_out_dim(target, spec.text_config, spec.vision_config)
        shapes.update(router_shapes(prefix, moe.get("router"), num, hidden, int(moe.get("top_k") or 1), out_dim))
        if moe.get("router") == "xmoe" and moe.get("unused_gate"):  # LibMoE's XMoE layer saves its base class's gate too
            shapes[prefix + "unused_gate.weight"] = (num, hidden)
        for e in range(num):
            for name, shape in dense.items():
                shapes[f"{prefix}experts.{e}.{name}"] = shape
    return shapes
