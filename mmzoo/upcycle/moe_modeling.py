"""mmzoo's own MoE modules (plain torch), for layouts no transformers class expresses and for training.

``MoeBlock`` replaces a dense MLP (LLM MLP, CLIP/SigLIP MLP, or the LLaVA projector) in a
transformers ``LlavaForConditionalGeneration``. Its parameters use mmzoo's canonical names relative
to the replaced module (``gate.weight``, ``experts.E.*``, ``shared_expert.*``, ``shared_expert_gate.weight``,
``residual.*``, ``coefficient.*``), so a canonical checkpoint loads with a plain ``load_state_dict``.

Routing: router = Linear(hidden, E, bias=False); probabilities = softmax over the experts a token may
use (``modality``: image-only + shared for image tokens, text-only + shared for text tokens); the top-k
are renormalised to sum to 1 (Mixtral semantics). ``shared``: + sigmoid(shared_expert_gate(x)) *
shared_expert(x). ``residual`` (DeepSpeed ``use_residual``): moe * c0 + residual(x) * c1 with
c = softmax(coefficient(x)). A capacity factor drops overflow tokens (in order) only in training mode;
evaluation is dropless. The load-balancing loss is the Switch/Mixtral one, E * sum_e f_e * P_e, computed
separately for image and text tokens in ``modality`` style and weighted by the layout's coefficients.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModalityContext:
    """Shared by the MoE blocks of one model: which LLM positions are image tokens in this forward."""

    image_token_id: int | None = None
    image_mask: torch.Tensor | None = None  # [batch, seq] bool
    blocks: list = field(default_factory=list)


class MoeBlock(nn.Module):
    def __init__(self, dense: nn.Module, *, hidden: int, num_experts: int, top_k: int, style: str,
                 modality: str, layout: dict[str, Any], context: ModalityContext, residual: bool = False,
                 coefficient_bias: bool = True):
        super().__init__()
        self.num_experts, self.top_k, self.style, self.modality = num_experts, top_k, style, modality
        self.capacity_factor = layout.get("capacity_factor")
        self.text_coef = float(layout.get("router_aux_loss_coef") or 0.0)
        self.image_coef = float(layout.get("vision_aux_loss_coef", self.text_coef) or 0.0)
        self.context = [context]  # a list so the module tree does not adopt it
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(copy.deepcopy(dense) for _ in range(num_experts))
        if style == "shared":
            self.shared_expert = copy.deepcopy(dense)
            self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)
        if residual:
            self.residual = copy.deepcopy(dense)
            self.coefficient = nn.Linear(hidden, 2, bias=coefficient_bias)
        allowed = torch.ones(2, num_experts, dtype=torch.bool)  # row 0: text tokens, row 1: image tokens
        assignment = layout.get("modality_experts")
        if style == "modality" and assignment:
            allowed[0, assignment["image"]] = False
            allowed[1, assignment["text"]] = False
        self.register_buffer("allowed", allowed, persistent=False)
        self.last_aux_loss: torch.Tensor | None = None

    def _image_tokens(self, tokens: int, device) -> torch.Tensor:
        if self.modality == "image":
            return torch.ones(tokens, dtype=torch.bool, device=device)
        mask = self.context[0].image_mask
        if mask is None or mask.numel() != tokens:
            return torch.zeros(tokens, dtype=torch.bool, device=device)
        return mask.reshape(-1).to(device)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        tokens = x.shape[0]
        is_image = self._image_tokens(tokens, x.device)
        logits = self.gate(x).float()
        allowed = self.allowed.to(x.device)[is_image.long()]  # [T, E]
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        capacity = None
        if self.training and self.capacity_factor:
            capacity = max(1, math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts))
        out = None
        for e in range(self.num_experts):
            token_idx, slot = torch.where(top_i == e)
            if capacity is not None and token_idx.numel() > capacity:
                token_idx, slot = token_idx[:capacity], slot[:capacity]
            if token_idx.numel() == 0:
                continue
            y = self.experts[e](x[token_idx]) * top_w[token_idx, slot, None].to(x.dtype)
            if out is None:
                out = x.new_zeros(tokens, y.shape[-1])
            out.index_add_(0, token_idx, y)
        if out is None:  # no token at all
            out = self.experts[0](x) * 0
        if self.style == "shared":
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        if hasattr(self, "residual"):
            coef = torch.softmax(self.coefficient(x), dim=-1)
            out = out * coef[:, 0:1] + self.residual(x) * coef[:, 1:2]
        self.last_aux_loss = self._aux_loss(probs, top_i, is_image)
        return out.reshape(*shape[:-1], out.shape[-1])

    def _aux_loss(self, probs: torch.Tensor, top_i: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        total = probs.new_zeros(())
        groups = [(is_image, self.image_coef), (~is_image, self.text_coef)] if self.style == "modality" or self.modality == "image" else [(None, self.text_coef)]
        for mask, coef in groups:
            p = probs if mask is None else probs[mask]
            i = top_i if mask is None else top_i[mask]
            if p.shape[0] == 0 or coef == 0:
                continue
            chosen = torch.zeros_like(p).scatter_(1, i, 1.0)
            fraction = chosen.mean(dim=0) / self.top_k
            total = total + coef * self.num_experts * (fraction * p.mean(dim=0)).sum()
        return total


def install_hooks(model: nn.Module, context: ModalityContext) -> None:
    """Record image-token positions before each forward; attach ``aux_loss`` (and add it to ``loss``) after."""

    def before(_module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None and context.image_token_id is not None:
            context.image_mask = input_ids == context.image_token_id
        else:
            context.image_mask = None
        for block in context.blocks:
            block.last_aux_loss = None
        return None

    def after(_module, _args, _kwargs, output):
        losses = [b.last_aux_loss for b in context.blocks if b.last_aux_loss is not None]
        aux = torch.stack(losses).sum() if losses else None
        context.image_mask = None
        if aux is None:
            return output
        try:
            output["aux_loss"] = aux
            if output.get("loss") is not None:
                output["loss"] = output["loss"] + aux.to(output["loss"].dtype)
        except TypeError:
            pass
        return output

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)


def moe_blocks(model: nn.Module) -> list[MoeBlock]:
    return [m for m in model.modules() if isinstance(m, MoeBlock)]
