"""Model FLOPs of one LLaVA training step, in closed form: the numerator of MFU.

Counted: the matrix products a forward + backward pass performs — every ``nn.Linear`` (2·rows·in·out
forward), the vision patch convolution, and attention's two batched products (QKᵀ and AV:
4·T²·heads·head_dim per layer and sequence, causal masking included as computed, i.e. the full square).
Backward costs one more product of the forward's size for the gradient of its input (when something before
it trains) and one for the gradient of its weight (when that weight trains) — the familiar 6·N per token
when everything trains; attention's backward is twice its forward (dQ, dK, dA, dV). Elementwise work
(norms, activations, softmax) is left out, as in PaLM's MFU (appendix B); activation recomputation is not
counted (model FLOPs, not hardware FLOPs). Vision layers after ``vision_feature_layer``, and SigLIP's pooling head, run forward only
(LLaVA does not use their output).

The LM head counts the positions whose logits the loss reads (``loss_rows``: the labelled ones, as the training
loop passes them for stages without a teacher), not every position: logits at unlabelled positions (the image,
the prompt) are not part of the model's work, whether or not an implementation computes them —
``cross_entropy: chunked`` does not, transformers' plain loss does and pays for it. With ``loss_rows`` unset
every position counts (the teacher stages, whose losses may read all of them; FlopCounterMode on a plain forward).

Whether an input needs its gradient is decided per component — vision tower, projector, LLM — from which
parameters train, so the count is exact for the stage defaults (frozen or trained components) and for
freeze rules that follow component boundaries. tests/train/test_flops.py checks it against torch's
FlopCounterMode on real transformers models, with eager and with sdpa attention.
Dense models only: a routed MoE layer's cost depends on the routing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import MmzooError


@dataclass(frozen=True)
class StepFlops:
    vision: int
    projector: int
    text: int

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.text


def _attention_width(config) -> int:
    """heads × head_dim: the width of Q (K and V are repeated to it under grouped-query attention)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads * head_dim


def _component(name: str) -> str:
    if "vision_tower." in name:
        return "vision"
    if "multi_modal_projector." in name:
        return "projector"
    return "text"


def _vision_layer(name: str) -> int | None:
    marker = "encoder.layers."
    if marker not in name:
        return None
    return int(name.split(marker, 1)[1].split(".", 1)[0])


def is_dense(model) -> bool:
    """No routed experts: the closed form covers the model."""
    return not any(".experts." in name for name, _ in model.named_parameters())


def training_step_flops(model, *, sequences: int, seq_len: int, images: int,
                        attention_lengths: tuple[int, ...] | None = None, loss_rows: int | None = None) -> StepFlops:
    """FLOPs of forward + backward of ``model`` (a dense LLaVA as ``mmzoo.load_model`` returns it) on
    ``sequences`` sequences padded to ``seq_len`` positions (image tokens included) holding ``images`` images.
    ``attention_lengths``: a packed row (sequences 1) whose samples attend only within themselves — attention
    is counted per sample (Σ Lᵢ², the useful products), not over the whole row. ``loss_rows``: the positions
    whose logits the loss reads (the LM head's rows); None: every position."""
    import torch

    config = model.config
    text_cfg, vision_cfg = config.text_config, config.vision_config
    if not is_dense(model):
        raise MmzooError("model FLOPs in closed form are for dense models (a routed MoE layer's cost depends on the routing)")
    trains = {"vision": False, "projector": False, "text": False}
    for name, param in model.named_parameters():
        trains[_component(name)] |= param.requires_grad
    grad_flows = {  # does the input of a component's later products need its gradient?
        "vision": trains["vision"],
        "projector": trains["vision"] or trains["projector"],
        "text": any(trains.values()),
    }
    vision_positions = _find(model, "vision_tower").embeddings.position_embedding.num_embeddings
    # S² features (mmzoo/models/multiscale.py): the tower sees every image once per scale, in scale² crops
    crops = images * sum(s * s for s in getattr(config, "vision_scales", [1]))
    patches = (vision_cfg.image_size // vision_cfg.patch_size) ** 2
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    projector_rows = images * (vision_positions - (1 if strategy == "default" else 0))
    layers = vision_cfg.num_hidden_layers
    feature_layer = config.vision_feature_layer
    feature_layer = feature_layer if isinstance(feature_layer, int) else max(feature_layer)
    used_layers = feature_layer if feature_layer >= 0 else layers + 1 + feature_layer  # layers feeding the features

    head = model.get_output_embeddings()
    flops = {"vision": 0, "projector": 0, "text": 0}
    first_projector = True
    for name, module in model.named_modules():
        part = _component(name)
        if isinstance(module, torch.nn.Conv2d):  # the patch embedding: pixels never need a gradient
            kernel = module.kernel_size[0] * module.kernel_size[1]  # shapes from the module: ZeRO-3 empties .weight
            forward = 2 * crops * patches * module.in_channels * kernel * module.out_channels
            flops[part] += forward * (2 if module.weight.requires_grad else 1)
            continue
        if isinstance(module, torch.nn.MultiheadAttention):  # SigLIP's pooling head: one probe query per image
            width = module.embed_dim
            flops[part] += 2 * images * width * width + 2 * images * vision_positions * width * 2 * width  # q; k, v
            flops[part] += 4 * images * vision_positions * width  # one query row of QKᵀ and AV
            continue
        if not isinstance(module, torch.nn.Linear):
            continue
        if part == "vision" and ".head." in name:  # the pooled output LLaVA does not use: forward only, one row per image
            flops[part] += 2 * images * module.in_features * module.out_features
            continue
        if part == "vision":
            rows, layer = crops * vision_positions, _vision_layer(name)
            in_graph = layer is None or layer < used_layers
            input_grad = grad_flows["vision"] and in_graph
        elif part == "projector":
            rows, in_graph = projector_rows, True
            input_grad = grad_flows["vision"] if first_projector else grad_flows["projector"]
            first_projector = False
        else:
            rows, in_graph, input_grad = sequences * seq_len, True, grad_flows["text"]
            if module is head and loss_rows is not None:
                rows = loss_rows
        forward = 2 * rows * module.in_features * module.out_features
        flops[part] += forward * (1 + int(input_grad) + int(module.weight.requires_grad and in_graph))

    vision_attention = 4 * crops * vision_positions**2 * _attention_width(vision_cfg)
    flops["vision"] += vision_attention * (layers + (2 * used_layers if grad_flows["vision"] else 0))
    squares = sum(n * n for n in attention_lengths) if attention_lengths else sequences * seq_len**2
    text_attention = 4 * squares * _attention_width(text_cfg) * text_cfg.num_hidden_layers
    flops["text"] += text_attention * (3 if grad_flows["text"] else 1)
    return StepFlops(**flops)


def _find(model, suffix: str):
    for name, module in model.named_modules():
        if name.endswith(suffix):
            return module
    raise MmzooError(f"the model has no {suffix} module (model FLOPs are computed for LLaVA models)")


class StepFlopsCounter:
    """Model FLOPs of a training run's micro batches (None for models the closed form does not cover).

    The closed form is linear in four counts — text rows (sequences × positions), Σ L² over the attention
    spans, images, and the LM head's rows (the labelled positions, or all of them) — with coefficients fixed by
    the model and its trainable set (fixed for the run). They are read off :func:`training_step_flops` once, so a
    micro batch costs four multiplications, not a walk over the model's modules (variable-length batches have a
    new shape nearly every step)."""

    def __init__(self, model):
        self.model = model
        self.supported = is_dense(model)
        self._coefficients: tuple[int, int, int, int] | None = None

    def __call__(self, sequences: int, seq_len: int, images: int,
                 attention_lengths: tuple[int, ...] | None = None, loss_rows: int | None = None) -> int | None:
        if not self.supported:
            return None
        per_row, per_square, per_image, per_loss_row = self.coefficients()
        squares = sum(n * n for n in attention_lengths) if attention_lengths else sequences * seq_len**2
        loss_rows = sequences * seq_len if loss_rows is None else loss_rows
        return per_row * sequences * seq_len + per_square * squares + per_image * images + per_loss_row * loss_rows

    def micro_batch(self, batch: dict[str, Any], every_position: bool = False) -> int:
        """Model FLOPs of a CPU micro batch as the data pipeline hands it over, padded or packed (0 for a model the
        closed form does not cover); the LM head at :func:`loss_positions`, or at every position."""
        if not self.supported:
            return 0
        pixels = batch.get("pixel_values")
        images = 0 if pixels is None else pixels.shape[0]
        loss_rows = None if every_position else loss_positions(batch)
        lengths = batch.get("sample_lengths")
        if lengths is not None:  # packed: attention runs within each sample only
            return self(1, int(lengths.sum()), images, attention_lengths=tuple(lengths.tolist()), loss_rows=loss_rows)
        return self(*batch["input_ids"].shape, images, loss_rows=loss_rows)

    def coefficients(self) -> tuple[int, int, int, int]:
        """FLOPs per text row (the LM head left out), per attention square, per image, per LM-head row."""
        if self._coefficients is None:
            def total(seq_len: int, images: int, loss_rows: int) -> int:
                return training_step_flops(self.model, sequences=1, seq_len=seq_len, images=images,
                                           loss_rows=loss_rows).total

            one, two = total(1, 0, 0), total(2, 0, 0)  # one = row + square; two = 2 rows + 4 squares
            per_square = (two - 2 * one) // 2
            self._coefficients = (one - per_square, per_square, total(1, 1, 0) - one, total(1, 0, 1) - one)
        return self._coefficients


def loss_positions(batch: dict[str, Any]) -> int:
    """Positions of a CPU micro batch whose logits the LM loss reads: those followed by a labelled token (the loss
    shifts by one; a packed row's samples each start unlabelled, so the shift never crosses a sample)."""
    from .kernels import IGNORE_INDEX

    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
