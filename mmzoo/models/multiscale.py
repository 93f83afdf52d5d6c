"""S² multi-scale image features (Shi et al., "When Do We Not Need Larger Vision Models?"), computed the way
LibMoE computes them (Fsoft-AIC/LibMoE ``moe_model/model/multimodal_encoder/siglip_encoder.py``, its own take on
bfshi/scaling_on_scales; every published LibMoE checkpoint is trained with ``--scales 1,3``):

- level 0 is the image as the processor gives it (its base size, e.g. 224), through the tower;
- each further scale ``s``: the image bicubically resized (in float32, no antialiasing) to ``s`` x its size, cut into
  ``s`` x ``s`` crops of the base size (row by row, stacked on the batch axis), every crop through the tower, the
  crops' feature maps stitched back into one ``s``-times-larger map, area-pooled to the base grid;
- the levels' features concatenated along channels in scale order, so the projector reads
  ``len(scales)`` x the tower's width and the image still takes the base number of tokens.

The tower's features are those LLaVA selects (``vision_feature_layer``; the CLS token dropped for the ``default``
strategy). With MoE layers in the tower, each level's pass computes its own router losses; LibMoE takes their mean
(``torch.stack(auxilarity_losses).mean()``), and so does :func:`multiscale_image_features` for every block's loss.

``MultiscaleLlavaForConditionalGeneration`` is transformers' Llava with this feature path and the wider projector;
:func:`model_class` combines it with mmzoo's MoE model class (cooperative ``__init__``: the projector is widened
before the MoE blocks copy it).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling


def split_chessboard(x: torch.Tensor, splits: int) -> torch.Tensor:
    """[B, C, H, W] -> [splits² B, C, H / splits, W / splits]: crop (i, j) of every image, row-major, as batch blocks."""
    _, _, height, width = x.shape
    h, w = height // splits, width // splits
    return torch.cat([x[:, :, i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(splits) for j in range(splits)], dim=0)


def merge_chessboard(x: torch.Tensor, splits: int) -> torch.Tensor:
    """The inverse of :func:`split_chessboard`: [splits² B, C, h, w] -> [B, C, splits h, splits w]."""
    b = x.shape[0] // (splits ** 2)
    rows = [torch.cat([x[(i * splits + j) * b:(i * splits + j + 1) * b] for j in range(splits)], dim=-1) for i in range(splits)]
    return torch.cat(rows, dim=-2)


def _to_map(tokens: torch.Tensor) -> torch.Tensor:
    """[B, side², C] -> [B, C, side, side] (the tokens of a square patch grid, row-major)."""
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"S² features need a square patch grid; the tower gave {tokens.shape[1]} tokens")
    return tokens.reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)


def multiscale_features(encode: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor, scales: list[int],
                        after_level: Callable[[], None] | None = None) -> torch.Tensor:
    """[B, 3, S, S] pixels -> [B, tokens, len(scales) x C]: ``encode`` (pixels -> [N, tokens, C] tower features)
    run on every level of the pyramid. ``after_level`` is called after each level's tower pass."""
    size = pixel_values.shape[-1]
    base = encode(pixel_values)
    if after_level is not None:
        after_level()
    grid = math.isqrt(base.shape[1])
    levels = [base]
    for scale in scales[1:]:
        resized = F.interpolate(pixel_values.to(torch.float32), size=size * scale, mode="bicubic").to(pixel_values.dtype)
        crops = encode(split_chessboard(resized, scale))
        if after_level is not None:
            after_level()
        stitched = merge_chessboard(_to_map(crops), scale)
        pooled = F.interpolate(stitched.to(torch.float32), size=grid, mode="area").to(base.dtype)
        levels.append(pooled.flatten(2).transpose(1, 2))
    return torch.cat(levels, dim=-1)


def _tower_loss_blocks(tower: nn.Module) -> list[nn.Module]:
    """The tower's MoE blocks (mmzoo's MoeBlock: they keep their router loss in ``last_aux_loss``)."""
    return [m for m in tower.modules() if hasattr(m, "last_aux_loss")]


def multiscale_image_features(self, pixel_values: torch.Tensor, vision_feature_layer=None, vision_feature_select_strategy=None,
                              image_sizes=None, **kwargs) -> BaseModelOutputWithPooling:
    """``LlavaModel.get_image_features`` with S² features (bound to the model's inner ``LlavaModel``)."""
    config = self.config
    layer = config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
    strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
    if not isinstance(layer, int):
        raise ValueError("S² features read one vision_feature_layer")
    if image_sizes is not None:
        raise ValueError("S² features take whole square images (no image_sizes)")

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_tower(pixels, output_hidden_states=True, return_dict=True).hidden_states[layer]
        return hidden[:, 1:] if strategy == "default" else hidden

    blocks = _tower_loss_blocks(self.vision_tower)
    losses: dict[int, list[torch.Tensor]] = {id(b): [] for b in blocks}

    def collect() -> None:
        for block in blocks:
            if block.last_aux_loss is not None:
                losses[id(block)].append(block.last_aux_loss)

    features = multiscale_features(encode, pixel_values, list(config.vision_scales), after_level=collect)
    for block in blocks:  # LibMoE: the mean of the levels' losses
        block.last_aux_loss = torch.stack(losses[id(block)]).mean() if losses[id(block)] else None
    projected = self.multi_modal_projector(features)
    return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(projected))


class MultiscaleLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """transformers' Llava reading S² features: ``config.vision_scales`` (mmzoo sets it from ``spec.vision_scales``)."""

    def __init__(self, config):
        super().__init__(config)
        inner = self.model
        dense = inner.multi_modal_projector.linear_1
        scales = list(config.vision_scales)
        inner.multi_modal_projector.linear_1 = nn.Linear(dense.in_features * len(scales), dense.out_features, bias=dense.bias is not None,
                                                         device=dense.weight.device, dtype=dense.weight.dtype)
        inner.get_image_features = MethodType(multiscale_image_features, inner)


def model_class(base: type | None, scales: list[int]) -> type | None:
    """The class to build: ``base`` (None: transformers' Llava) itself for single-scale models, else its S² version."""
    if scales == [1]:
        return base
    if base is None or base is LlavaForConditionalGeneration:
        return MultiscaleLlavaForConditionalGeneration
    # MRO: base.__init__'s super().__init__ reaches the S² __init__ before base installs its MoE blocks
    return type(f"Multiscale{base.__name__}", (base, MultiscaleLlavaForConditionalGeneration), {})
