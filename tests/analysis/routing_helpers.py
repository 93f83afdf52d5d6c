"""The MoE layouts the routing-analysis tests build (a uniquely named module: several test folders have a conftest)."""

# name -> (target format, upcycling options). Routers drawn with std 0.5 (not the default 0.02) so that routing
# is far from uniform and the statistics below tell experts apart.
LAYOUTS = {
    "mixtral-hf": ("hf", dict(num_experts=4, top_k=2, style="mixtral", layers="all")),  # transformers' Mixtral
    "qwen2moe-hf": ("hf", dict(num_experts=4, top_k=2, style="shared", layers="odd")),  # transformers' Qwen2-MoE
    "moe-llava": ("moe-llava", dict(num_experts=4, top_k=2, style="mixtral", layers="even")),  # DeepSpeed-MoE keys
    "moiie": ("internal", dict(num_experts=6, top_k=2, style="modality", layers="all")),  # MoIIE modality experts
    "moiie-hf": ("hf", dict(num_experts=6, top_k=2, style="modality", layers="all")),  # the same, remote code
    "towers": ("internal", dict(num_experts=4, top_k=1, style="mixtral", layers="all",
                                targets=["text", "vision", "projector"])),  # LibMoE-style vision/projector experts
    "xmoe": ("internal", dict(num_experts=4, top_k=2, style="mixtral", layers="all", router="xmoe")),
    "tcmoe": ("internal", dict(num_experts=4, top_k=2, style="mixtral", layers="all", router="tcmoe")),
}
