"""``init``: assemble a new VLM from a vision-encoder folder and an LLM folder.

The vision and LLM weights are carried over byte for byte; the tokenizer gains the image token (and
the embeddings a row for it, initialised to the mean of the existing rows as transformers' LLaVA
conversion does), and the projector is freshly initialised from ``seed``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..archs import TEXT_TABLES, VISION_ALIASES, text_table, vision_table
from ..archs.checks import check_text_config, check_vision_config
from ..errors import ConfigError, MissingTensor, MmzooError, ShapeMismatch, UnknownArchitecture, naming
from .common import processor_from_folder, split_by_prefix
from ..io.checkpoint import read_weights
from ..io.confine import confine_checkpoint
from ..checkpoint.image_token import add_image_token, computed, grow_vocab
from ..io.dtypes import CONFIG_DTYPE_NAMES
from ..io.tensors import Planned
from ..checkpoint.locate import read_json
from ..checkpoint.spec import Checkpoint, ModelSpec, find_tokenizer_files

CLIP_FAMILY_EXTRAS = ("text_model.", "logit_scale", "logit_bias", "visual_projection.", "text_projection.")


def read_vision_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Planned]]:
    """A CLIP/SigLIP vision model folder, or a full CLIP/SigLIP model (its text half is dropped)."""
    config = read_json(folder / "config.json")
    model_type = config.get("model_type", "")
    if model_type in VISION_ALIASES:
        config = dict(config.get("vision_config") or {}, model_type=VISION_ALIASES[model_type])
    vision_table(config.get("model_type", ""), str(folder))
    tensors = {n: Planned.of(s) for n, s in read_weights(folder).items() if not n.startswith(CLIP_FAMILY_EXTRAS)}
    parts = split_by_prefix(tensors, [("vision_model.", "vision", ""), ("", "vision", "")], drop_unmatched=False, where=str(folder))
    config = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}
    return config, parts["vision"]


def _projector(kind: str, vision_hidden: int, text_hidden: int, dtype: str, seed: int) -> dict[str, Planned]:
    """The fresh projector, planned: each layer is drawn only when it is written (after every shape has been
    checked against the weights, so a config claiming a 2^20-wide model cannot make init allocate terabytes)."""
    import torch

    def linear(in_features: int, out_features: int, index: int):
        drawn: list = []

        def draw():  # weight, then bias, from the layer's own generator: the same numbers whenever it runs
            if not drawn:
                gen = torch.Generator().manual_seed(seed * 1000 + index)
                bound = 1 / in_features**0.5  # nn.Linear's default init, made reproducible
                weight = (torch.rand(out_features, in_features, generator=gen) * 2 - 1) * bound
                bias = (torch.rand(out_features, generator=gen) * 2 - 1) * bound
                drawn.extend((weight, bias))
            return drawn

        return (lambda: draw()[0]), (lambda: draw()[1])

    torch_dtype = getattr(torch, CONFIG_DTYPE_NAMES.get(dtype, "float32"))
    shapes = [(vision_hidden, text_hidden)] + ([(text_hidden, text_hidden)] if kind == "mlp2x_gelu" else [])
    out: dict[str, Planned] = {}
    for i, (fan_in, fan_out) in enumerate(shapes, start=1):
        weight, bias = linear(fan_in, fan_out, i)
        out[f"linear_{i}.weight"] = computed(f"projector.linear_{i}.weight", (fan_out, fan_in), dtype, lambda w=weight: w().to(torch_dtype))
        out[f"linear_{i}.bias"] = computed(f"projector.linear_{i}.bias", (fan_out,), dtype, lambda b=bias: b().to(torch_dtype))
    return out


def init_model(
    vision: str | Path,
    text: str | Path,
    out: str | Path,
    *,
    tgt_fmt: str = "internal",
    projector: str = "mlp2x_gelu",
    seed: int = 0,
    overwrite: bool = False,
    shard_size: str = "5GB",
    progress=None,
) -> dict[str, Any]:
    from ..archs.moe import layout_from_config
    from .pipeline import write_checkpoint

    vision, text = Path(vision), Path(text)
    for folder in (vision, text):
        if not (folder / "config.json").is_file():
            raise MmzooError("is not a model folder (no config.json)", path=folder)
        confine_checkpoint(folder)  # no symlink out of either folder is followed (mmzoo.io.confine)
    if projector not in ("mlp2x_gelu", "linear"):
        raise ConfigError(f"unknown projector {projector!r} (choose mlp2x_gelu or linear)")
    vision_cfg, vision_native = read_vision_folder(vision)
    text_cfg = read_json(text / "config.json")
    text_type = text_cfg.get("model_type")
    if text_type not in TEXT_TABLES:
        raise UnknownArchitecture(f"LLM {text_type!r} is not supported (supported: {', '.join(TEXT_TABLES)})", path=text)
    with naming(vision / "config.json"):  # numbers bounded before any shape arithmetic
        check_vision_config(vision_cfg)
    with naming(text / "config.json"):
        check_text_config(text_cfg, "config")
    text_cfg = {k: v for k, v in text_cfg.items() if k not in ("architectures", "transformers_version")}
    text_native = {n: Planned.of(s) for n, s in read_weights(text).items()}
    text_canonical = text_table(text_type, str(text)).to_canonical(text_native, text_cfg, where=str(text))
    vision_canonical = vision_table(vision_cfg["model_type"], str(vision)).to_canonical(vision_native, vision_cfg, where=str(vision))
    if not find_tokenizer_files(text):
        raise MmzooError("the LLM folder has no tokenizer files", path=text)
    image_processor = processor_from_folder(vision)
    if image_processor is None:
        raise MmzooError("the vision folder has no preprocessor_config.json (the image processor)", path=vision)

    embed = text_canonical["model.embed_tokens.weight"]
    dtype = embed.dtype
    with tempfile.TemporaryDirectory(prefix="mmzoo-init-") as tmp:
        image_token_id = add_image_token(text, Path(tmp))
        text_cfg = grow_vocab(text_canonical, text_cfg, image_token_id + 1)
        strategy = "default" if vision_cfg["model_type"] == "clip_vision_model" else "full"
        patches = (vision_cfg["image_size"] // vision_cfg["patch_size"]) ** 2
        spec = ModelSpec(
            vision_config=vision_cfg,
            text_config=text_cfg,
            projector_type=projector,
            image_token_id=image_token_id,
            vision_feature_layer=-2,
            vision_feature_select_strategy=strategy,
            image_seq_length=patches,
            dtype=text_cfg.get("dtype") or text_cfg.get("torch_dtype") or CONFIG_DTYPE_NAMES.get(dtype),
            moe=layout_from_config(text_cfg),  # an LLM upcycled by mmzoo (Mixtral / Qwen2-MoE) keeps its MoE layout
            provenance={"made_by": "mmzoo init", "vision": str(vision.resolve()), "text": str(text.resolve()), "seed": seed},
        )
        tensors = {f"image_model.{k}": v for k, v in vision_canonical.items()}
        tensors.update({f"projector.{k}": v for k, v in _projector(projector, vision_cfg["hidden_size"], text_cfg["hidden_size"], dtype, seed).items()})
        tensors.update({f"text_model.{k}": v for k, v in text_canonical.items()})
        extra = {n: text / n for n in ("generation_config.json",) if (text / n).is_file()}
        ckpt = Checkpoint(spec, tensors, text, "init", find_tokenizer_files(Path(tmp)), image_processor, extra)
        from .common import validate

        try:
            validate(ckpt)
        except (MissingTensor, ShapeMismatch) as exc:  # the checkpoint's path is the LLM's: name the tower's folder
            if "'image_model." in str(exc):
                exc.path = str(vision)
            raise
        write_checkpoint(ckpt, out, tgt_fmt, overwrite=overwrite, shard_size=shard_size, progress=progress)
    from .hf import transformers4_notes

    notes = transformers4_notes(spec) if tgt_fmt == "hf" else []
    return {"output": str(out), "format": tgt_fmt, "image_token_id": image_token_id, "vocab_size": text_cfg["vocab_size"],
            "projector": projector, "seed": seed, "dtype": CONFIG_DTYPE_NAMES.get(dtype, dtype), "notes": notes}
