"""Text (LLM) architectures. Native names are those of the HF ``*ForCausalLM`` state dict; canonical
names use the Llama spelling with separate q/k/v and gate/up projections for every family."""
from __future__ import annotations

from .base import Rule, Table


def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def qkv_rows(cfg: dict) -> list[int]:
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return [cfg["num_attention_heads"] * head_dim(cfg), kv * head_dim(cfg), kv * head_dim(cfg)]


def gate_up_rows(cfg: dict) -> list[int]:
    return [cfg["intermediate_size"], cfg["intermediate_size"]]


_COMMON = (
    Rule("model.embed_tokens.weight"),
    Rule("model.norm.weight"),
    Rule("lm_head.weight"),
    Rule("model.layers.{L}.{input_layernorm|post_attention_layernorm}.weight"),
    Rule("model.layers.{L}.self_attn.{o_proj}.{weight|bias}"),
    Rule("model.layers.{L}.self_attn.rotary_emb.inv_freq", None),  # a buffer older checkpoints saved
)
_SEPARATE = (
    Rule("model.layers.{L}.self_attn.{q_proj|k_proj|v_proj}.{weight|bias}"),
    Rule("model.layers.{L}.mlp.{gate_proj|up_proj|down_proj}.{weight|bias}"),
)

LLAMA = Table("llama", _COMMON + _SEPARATE)
MISTRAL = Table("mistral", LLAMA.rules)
QWEN2 = Table("qwen2", LLAMA.rules)
PHI3 = Table(
    "phi3",
    _COMMON
    + (
        Rule(
            "model.layers.{L}.self_attn.qkv_proj.weight",
            (
                "model.layers.{L}.self_attn.q_proj.weight",
                "model.layers.{L}.self_attn.k_proj.weight",
                "model.layers.{L}.self_attn.v_proj.weight",
            ),
            split=qkv_rows,
        ),
        Rule(
            "model.layers.{L}.mlp.gate_up_proj.weight",
            ("model.layers.{L}.mlp.gate_proj.weight", "model.layers.{L}.mlp.up_proj.weight"),
            split=gate_up_rows,
        ),
        Rule("model.layers.{L}.mlp.down_proj.weight"),
    ),
)


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Canonical tensors (relative to ``text_model.``) a dense LLM of this config must have."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    q, k, v = qkv_rows(cfg)
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg["vocab_size"], hidden),
        "model.norm.weight": (hidden,),
    }
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (cfg["vocab_size"], hidden)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (q, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (k, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (v, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, q)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    return shapes
