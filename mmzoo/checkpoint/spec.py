"""The format-independent description of a VLM checkpoint (what ``mmzoo.yaml`` stores)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from ..io.tensors import Planned


class ModelSpec(BaseModel):
    """Vision encoder + projector + LLM, with HF config dicts for the two pretrained parts."""

    model_config = ConfigDict(extra="forbid")

    vision_config: dict[str, Any]
    text_config: dict[str, Any]
    projector_type: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    image_token_id: int | None = None
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    image_seq_length: int | None = None
    # S² multi-scale image features (LibMoE's ``scales``): the tower also runs on the image resized to each further
    # scale, in scale x scale crops, pooled back to the base grid; the projector reads len(scales) x the tower's width
    vision_scales: list[int] = [1]
    dtype: str | None = None  # the checkpoint's declared torch dtype name, e.g. "bfloat16"
    moe: dict[str, Any] | None = None  # MoE layout of an upcycled model (see mmzoo.upcycle)
    extra: dict[str, Any] = {}  # other top-level keys of the source config, kept through conversions
    provenance: dict[str, Any] = {}

    @model_validator(mode="after")
    def _sane_numbers(self) -> "ModelSpec":
        """Config numbers bounded before any shape arithmetic (a ConfigError, not a pydantic error:
        the reader adds the file it came from)."""
        from ..archs.checks import check_moe_layout, check_text_config, check_vision_config, check_vision_scales

        check_vision_config(self.vision_config)
        check_text_config(self.text_config)
        check_moe_layout(self.moe, self.text_config, self.vision_config)
        check_vision_scales(self.vision_scales)
        return self

    @property
    def text_type(self) -> str:
        return self.text_config.get("model_type", "llama")

    @property
    def vision_type(self) -> str:
        return self.vision_config.get("model_type", "clip_vision_model")

    @property
    def multiscale(self) -> bool:
        return self.vision_scales != [1]

    @property
    def projector_in_features(self) -> int:
        """The projector's input width: the tower's, once per S² scale."""
        return int(self.vision_config["hidden_size"]) * len(self.vision_scales)


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass
class Checkpoint:
    """A checkpoint read into canonical names. Tensors are lazy (``Planned``); files are paths."""

    spec: ModelSpec
    tensors: dict[str, Planned]
    path: Path
    format: str
    tokenizer_files: dict[str, Path] = field(default_factory=dict)  # file name -> where it is now
    image_processor: dict[str, Any] | None = None  # preprocessor_config.json content
    extra_files: dict[str, Path] = field(default_factory=dict)  # e.g. generation_config.json

    def component(self, prefix: str) -> dict[str, Planned]:
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def find_tokenizer_files(folder: Path) -> dict[str, Path]:
    """The tokenizer files in ``folder``, each checked to be a regular file within its size cap: whatever reads
    them later (mmzoo, transformers, a copy into an output) reads a bounded file."""
    from ..io.structured import check_tokenizer_file

    return {name: check_tokenizer_file(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}
