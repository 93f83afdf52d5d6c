"""Vision encoders. Native names are the vision model's own, without the ``vision_model.`` infix
(transformers 5.x spelling; readers strip the infix older checkpoints carry)."""
from __future__ import annotations

from .base import Rule, Table

_ENCODER = (
    Rule("encoder.layers.{L}.self_attn.{q_proj|k_proj|v_proj|out_proj}.{weight|bias}"),
    Rule("encoder.layers.{L}.{layer_norm1|layer_norm2}.{weight|bias}"),
    Rule("encoder.layers.{L}.mlp.{fc1|fc2}.{weight|bias}"),
    Rule("post_layernorm.{weight|bias}"),
    Rule("embeddings.position_ids", None),  # a buffer older checkpoints saved
)

CLIP = Table(
    "clip_vision_model",
    (
        Rule("embeddings.class_embedding"),
        Rule("embeddings.patch_embedding.weight"),
        Rule("embeddings.position_embedding.weight"),
        Rule("pre_layrnorm.{weight|bias}"),
    )
    + _ENCODER,
)

SIGLIP = Table(
    "siglip_vision_model",
    (
        Rule("embeddings.patch_embedding.{weight|bias}"),
        Rule("embeddings.position_embedding.weight"),
        Rule("head.probe"),
        Rule("head.attention.{in_proj_weight|in_proj_bias}"),
        Rule("head.attention.out_proj.{weight|bias}"),
        Rule("head.layernorm.{weight|bias}"),
        Rule("head.mlp.{fc1|fc2}.{weight|bias}"),
    )
    + _ENCODER,
)


def num_patches(cfg: dict) -> int:
    return (cfg["image_size"] // cfg["patch_size"]) ** 2


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.patch_embedding.weight": (hidden, cfg.get("num_channels", 3), cfg["patch_size"], cfg["patch_size"]),
    }
    positions = num_patches(cfg) + (1 if cfg.get("model_type") == "clip_vision_model" else 0)
    shapes["embeddings.position_embedding.weight"] = (positions, hidden)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[p + "mlp.fc1.weight"] = (inter, hidden)
        shapes[p + "mlp.fc2.weight"] = (hidden, inter)
    return shapes
