"""mmzoo's MoE modules and the LLaVA model that uses them (plain torch + transformers; no mmzoo import).

This one file is both what ``mmzoo.load_model`` runs in-process (``mmzoo.upcycle.moe_modeling``
re-exports it) and what mmzoo copies verbatim into ``hf`` folders of MoE layouts that no built-in
transformers class expresses, next to ``configuration_mmzoo_moe.py``; such a folder loads with
``AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)`` on a machine without mmzoo.

``MmzooMoeLlavaForConditionalGeneration`` is transformers' ``LlavaForConditionalGeneration`` (dense
LLM, vision tower and projector) whose selected MLPs are replaced by ``MoeBlock`` as
``config.mmzoo_moe`` (the layout) says: LLM layers ``layers``, vision encoder layers ``vision_layers``,
and the whole projector when ``targets`` has ``projector``.

``MoeBlock``'s parameters use mmzoo's canonical names relative to the replaced module (``gate.weight``,
``experts.E.*``, ``shared_expert.*``, ``shared_expert_gate.weight``, ``residual.*``, ``coefficient.*``;
inside a group the dense MLP's own names, e.g. Phi-3 ``gate_up_proj``).

Routing: router = Linear(hidden, E, bias=False); probabilities = softmax over the experts a token may
use (``modality``: image-only + shared experts for image tokens, text-only + shared for text tokens); the
top-k are renormalised to sum to 1 (Mixtral semantics). ``shared``: + sigmoid(shared_expert_gate(x)) *
shared_expert(x). ``residual`` (DeepSpeed ``use_residual``): moe * c0 + residual(x) * c1 with
c = softmax(coefficient(x)). A capacity factor drops overflow tokens (in order) only in training mode;
evaluation is dropless. The load-balancing loss is the Switch/Mixtral one, E * sum_e f_e * P_e, computed
separately for image and text tokens in ``modality`` style and weighted by the layout's coefficients;
the model's output carries it as ``aux_loss`` and adds it to ``loss`` when labels are given. The blocks' losses
are summed, except that LibMoE routers' vision-encoder blocks count 1 / (number of vision MoE layers) each: LibMoE's
tower returns the mean of its layers' losses (``torch.stack(auxiliary_losses).mean()``), added to the projector's.
``router: xmoe`` (LibMoE's XMoE) scores experts with ``XmoeGate`` and weighs the top-k by a softmax over
their probabilities; it trains with the same two losses (z-loss on the cosine scores).
``router: sharede_v2`` / ``sharede_v3`` (LibMoE's SharedE, ``shard_smoe.py`` / ``shard_smoe_v3.py``; style
``shared``): output = 0.5 * shared_expert(x) + 0.5 * routed, no gate; V3 chooses and weighs the top-k by
sigmoid(router logits), renormalised. Both train with the same two losses over the routed experts.
``router: sigmoid`` (LibMoE's ``smoe_sigmoidgating.py``): V3's sigmoid top-k and renormalised weights without a
shared expert; SMoE's losses.
``router: tcmoe`` (LibMoE's TC-MoE, ``moe_tcmoe.py``): the router scores E experts, E negated copies and
top_k null experts (see ``_tcmoe_route``); not exactly dense-equivalent at init (the null experts'
probability stays in the weights' denominator, and a negated copy can win). A token that picks an expert
and its own negated copy gets both terms here; LibMoE's ``results[b, t] +=`` keeps only one of the two.
``router: moepp`` (LibMoE's MoE++, ``moe_plus_plus.py``): where the MLP maps hidden -> hidden (LLM and vision
MLPs, not the projector, which is plain SMoE there as in LibMoE) the router scores E FFN experts, a zero expert
(index E: adds nothing) and a constant expert (E + 1: softmax(wg(x)) mixes x and a learned vector), top-k
renormalised; its balance loss spans the E + 2 columns with column 4 weighted by 1.3, plus the z-loss. LibMoE
creates the paper's gating-residual projection (``gate_transform``) but never uses it, and has no copy expert:
the same here (``gate_transform.weight`` is a buffer carried for the checkpoint). Not dense-equivalent at init.
``router: smoe`` (LibMoE's SMoE, Fsoft-AIC/LibMoE ``moe_model/model/moe/smoe.py``) routes the same way
but trains with LibMoE's losses: ``router_aux_loss_coef`` * balance + ``router_z_loss_coef`` * z, where
balance = E^2 * mean over sequences and experts of (mean router probability * share of the sequence's
tokens whose FIRST choice is the expert) and z = mean over tokens of logsumexp(router logits)^2.

Modality: image tokens are the positions of ``config.image_token_id`` in ``input_ids`` (or, without
``input_ids``, the ``inputs_embeds`` rows equal to that token's embedding — Llava's own placeholder
rule), recorded before every ``LlavaModel`` forward; every token of the vision tower and the projector
is an image token.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from .configuration_mmzoo_moe import MmzooMoeLlavaConfig


@dataclass
class ModalityContext:
    """Shared by the MoE blocks of one model: which LLM positions are image tokens in the current forward."""

    image_token_id: int | None = None
    image_mask: torch.Tensor | None = None  # [batch, seq] bool
    blocks: list = field(default_factory=list)


LIBMOE_ROUTERS = ("smoe", "xmoe", "sigmoid", "sharede_v2", "sharede_v3", "tcmoe", "moepp")
SHARED_E = ("sharede_v2", "sharede_v3")
# MoE++'s balance loss weighs this column by 1.3 (LibMoE's ``t[:, 4] = 1.3``: the zero expert when E = 4)
MOEPP_WEIGHTED_COLUMN, MOEPP_COLUMN_WEIGHT = 4, 1.3


class ZeroExpert(nn.Module):
    """MoE++'s zero expert (LibMoE ``moe_plus_plus.py``): outputs zeros, so a token routed to it skips part of the MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class ConstantExpert(nn.Module):
    """MoE++'s constant expert: softmax(wg(x)) mixes the input itself and a learned vector,
    ``w0 * x + w1 * constant`` (LibMoE's ``ConstantExpert``; the softmax in float32)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.constant = nn.Parameter(torch.zeros(hidden))
        self.wg = nn.Linear(hidden, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.softmax(self.wg(x), dim=-1, dtype=torch.float32)
        return weight[:, 0:1].type_as(x) * x + weight[:, 1:2].type_as(x) * self.constant.type_as(x)


class UnusedWeight(nn.Module):
    """A tensor LibMoE's MoE++ layer creates and saves but never uses in its forward (``gate_transform``, the
    gating-residual projection of the MoE++ paper; its XMoE layer's inherited ``gate``): kept as a buffer so checkpoints round-trip it bit for
    bit and training never sees it as a parameter without a gradient."""

    def __init__(self, rows: int, cols: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(rows, cols))


def last_linear_out(module: nn.Module) -> int | None:
    """The output width of a dense MLP (its last Linear: down_proj, fc2, linear_2)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


class XmoeGate(nn.Module):
    """LibMoE's XMoE router (``moe_model/model/moe/xmoe.py``): the token is projected to E/2 dimensions
    (``inp_reduction``), L2-normalised, and scored by cosine against ``expert_embeddings`` [E, E/2], which
    every forward rescales in place to norm 1.5 (as LibMoE does); the output is cosine / 0.3 (the
    temperature), so softmax of it is XMoE's routing distribution. ``last_cosine`` keeps the raw scores
    for the router z-loss."""

    temperature = 0.3

    def __init__(self, hidden: int, num_experts: int):
        super().__init__()
        dim = max(1, num_experts // 2)
        self.inp_reduction = nn.Linear(hidden, dim, bias=False)
        self.expert_embeddings = nn.Parameter(torch.empty(num_experts, dim))
        self.last_cosine: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.inp_reduction(x)
        with torch.no_grad():
            self.expert_embeddings.mul_(1.5 / self.expert_embeddings.norm(p=2.0, dim=-1, keepdim=True))
        cosine = torch.matmul(nn.functional.normalize(reduced.float(), p=2.0, dim=-1, eps=1e-4), self.expert_embeddings.float().t())
        ok = cosine.isfinite()
        if not ok.all():  # LibMoE's _make_finite
            cosine = cosine.masked_fill(~ok, cosine[ok].min())
        self.last_cosine = cosine
        return cosine / self.temperature


class MoeBlock(nn.Module):
    def __init__(self, dense: nn.Module, *, hidden: int, num_experts: int, top_k: int, style: str,
                 modality: str, layout: dict[str, Any], context: ModalityContext, residual: bool = False,
                 coefficient_bias: bool = True):
        super().__init__()
        self.num_experts, self.top_k, self.style, self.modality = num_experts, top_k, style, modality
        self.capacity_factor = layout.get("capacity_factor")
        self.text_coef = float(layout.get("router_aux_loss_coef") or 0.0)
        self.image_coef = float(layout.get("vision_aux_loss_coef", self.text_coef) or 0.0)
        self.router = str(layout.get("router") or "softmax_topk")
        self.z_coef = float(layout.get("router_z_loss_coef") or 0.0)
        self.context = [context]  # a list so the module tree does not adopt it
        # LibMoE's MoE++ adds its zero and constant experts only where the MLP maps hidden -> hidden (not the projector)
        self.plus_plus = self.router == "moepp" and last_linear_out(dense) == hidden
        if self.router == "xmoe":
            self.gate = XmoeGate(hidden, num_experts)
            if layout.get("unused_gate"):  # read from LibMoE: its XMOE inherits MoeLayer's gate Linear, saved, never used
                self.unused_gate = UnusedWeight(num_experts, hidden)
        elif self.router == "tcmoe":  # TC-MoE: E positive, E negated copies, top_k null experts
            self.gate = nn.Linear(hidden, 2 * num_experts + top_k, bias=False)
        elif self.plus_plus:  # MoE++: E FFN experts, a zero expert (index E) and a constant expert (E + 1)
            self.gate = nn.Linear(hidden, num_experts + 2, bias=False)
            self.gate_transform = UnusedWeight(num_experts + 2, num_experts + 2)
        else:
            self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(copy.deepcopy(dense) for _ in range(num_experts))
        if self.plus_plus:
            self.experts.append(ZeroExpert())
            self.experts.append(ConstantExpert(hidden))
        if style == "shared":
            self.shared_expert = copy.deepcopy(dense)
            if self.router not in SHARED_E:  # LibMoE's SharedE mixes 0.5 / 0.5 without a gate
                self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)
        if residual:
            self.residual = copy.deepcopy(dense)
            self.coefficient = nn.Linear(hidden, 2, bias=coefficient_bias)
        # experts text tokens may not use (image-only ones) and image tokens may not use (text-only ones);
        # plain lists, not a buffer: a buffer would be left uninitialised by transformers' meta-device loading
        assignment = layout.get("modality_experts") if style == "modality" else None
        self._forbidden = ([int(e) for e in assignment["image"]], [int(e) for e in assignment["text"]]) if assignment else ([], [])
        self.last_aux_loss: torch.Tensor | None = None
        self.loss_scale = 1.0  # install_moe: LibMoE averages its vision-tower blocks' losses (see there)

    @property
    def num_routed(self) -> int:
        """The router's width: the FFN experts, plus MoE++'s zero and constant experts."""
        return self.num_experts + 2 if self.plus_plus else self.num_experts

    @property
    def allowed(self) -> torch.Tensor:
        """[2, num_experts] bool: row 0 the experts text tokens may use, row 1 those image tokens may use."""
        allowed = torch.ones(2, self.num_routed, dtype=torch.bool, device=next(self.gate.parameters()).device)
        for row, experts in enumerate(self._forbidden):
            if experts:
                allowed[row, experts] = False
        return allowed

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
        if self.router == "tcmoe":
            probs, top_w, top_i, chosen = self._tcmoe_route(logits)
        else:
            allowed = self.allowed.to(x.device)[is_image.long()]  # [T, E]
            logits = logits.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
        if self.router == "tcmoe":
            pass
        elif self.router in ("sharede_v3", "sigmoid"):  # chosen and weighted by sigmoid scores (the balance loss still uses the softmax)
            top_w, top_i = torch.topk(torch.sigmoid(logits), self.top_k, dim=-1)
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        elif self.router == "xmoe":  # LibMoE's _keepTopk: a softmax over the chosen probabilities
            top_w = torch.softmax(top_w.to(x.dtype), dim=-1)
        else:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        capacity = None
        if self.training and self.capacity_factor:
            capacity = max(1, math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts))
        out = None
        for e in range(self.num_routed):
            if self.plus_plus and e == self.num_experts:  # MoE++'s zero expert adds nothing
                continue
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
        if self.style == "shared" and self.router in SHARED_E:
            out = self.shared_expert(x) * 0.5 + out * 0.5
        elif self.style == "shared":
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        if hasattr(self, "residual"):
            coef = torch.softmax(self.coefficient(x), dim=-1)
            out = out * coef[:, 0:1] + self.residual(x) * coef[:, 1:2]
        if self.router == "tcmoe":
            batch = shape[0] if len(shape) == 3 else 1
            self.last_aux_loss = self._tcmoe_loss(logits, probs, chosen, batch) * self.loss_scale
        elif self.router in LIBMOE_ROUTERS:
            batch = shape[0] if len(shape) == 3 else 1
            raw = self.gate.last_cosine if self.router == "xmoe" else logits  # XMoE's z-loss: cosine logits, no temperature
            self.last_aux_loss = self._libmoe_loss(raw, probs, top_i, batch) * self.loss_scale
        else:
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


    def _tcmoe_route(self, logits: torch.Tensor):
        """LibMoE's TC-MoE (moe_tcmoe.py): softmax over [E experts, E negated experts - 1, top_k null experts - 10],
        top-k, weights = probabilities / (chosen non-null + all null probability); a negated expert adds
        -w * expert(x), a null one nothing. Returns (probs, signed weights, expert index or -1, chosen index)."""
        num = self.num_experts
        shifted = logits.clone()
        shifted[:, num:2 * num] -= 1.0
        shifted[:, 2 * num:] -= 10.0
        probs = torch.softmax(shifted, dim=-1)
        top_p, chosen = torch.topk(probs, self.top_k, dim=-1)
        real = chosen < 2 * num
        weightsum = (top_p * real.float()).sum(-1, keepdim=True) + probs[:, 2 * num:].sum(-1, keepdim=True)
        weights = top_p / torch.clamp_min(weightsum + 1e-20, 1e-6)
        sign = torch.where(chosen < num, 1.0, -1.0) * real.float()
        expert = torch.where(real, chosen % num, torch.full_like(chosen, -1))
        return probs, weights * sign, expert, chosen

    def _tcmoe_loss(self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor, batch: int) -> torch.Tensor:
        """TC-MoE's add_perplexity_reg_tcmoe + z-loss, as LibMoE computes them (including that every sequence's
        row counts the whole batch's assignments, divided by that sequence's own non-null count)."""
        num = self.num_experts
        seq = probs.shape[0] // batch
        probs_b = probs.reshape(batch, seq, -1)
        chosen_b = chosen.reshape(batch, seq, -1)
        total = probs.new_zeros(())
        if self.training:  # reward for routing to the null experts (1e-5, LibMoE's default)
            total = total - 1e-5 * probs_b[..., 2 * num:].sum() / (batch * seq)
        if self.text_coef > 0:
            non_null = probs_b[..., :2 * num]
            p_norm = non_null / (non_null.sum(-1, keepdim=True) + 1e-20)
            real = chosen_b < 2 * num
            counts = torch.bincount((chosen_b % num)[real], minlength=num).float()  # the whole batch's
            load = counts[None, :] / (real.sum(dim=(1, 2)).float()[:, None] + 1e-20)
            p_avg = p_norm.mean(dim=1)
            p_base = p_avg[:, :num] + p_avg[:, num:2 * num]
            total = total + self.text_coef * (load * p_base).sum(dim=1).mean()
        if self.z_coef > 0:
            total = total + self.z_coef * torch.logsumexp(logits, dim=-1).square().mean()
        return total

    def _libmoe_loss(self, logits: torch.Tensor, probs: torch.Tensor, top_i: torch.Tensor, batch: int) -> torch.Tensor:
        """LibMoE's combine_loss: balance per sequence (first choices only), averaged; plus the router z-loss.
        MoE++ (``moe_plus_plus.py``'s balanceloss): over all E + 2 router columns, column 4 weighted by 1.3."""
        num = probs.shape[-1]
        density_proxy = probs.reshape(batch, -1, num).mean(dim=1)  # [B, E]
        first = torch.nn.functional.one_hot(top_i[:, 0], num).float().reshape(batch, -1, num)
        dens = density_proxy * first.mean(dim=1)
        if self.plus_plus:
            weight = torch.ones_like(dens)
            weight[:, MOEPP_WEIGHTED_COLUMN] = MOEPP_COLUMN_WEIGHT
            dens = weight * dens
        balance = dens.mean() * float(num ** 2)
        z = torch.logsumexp(logits, dim=-1).square().mean()
        return self.text_coef * balance + self.z_coef * z


def moe_blocks(model: nn.Module) -> list[MoeBlock]:
    return [m for m in model.modules() if isinstance(m, MoeBlock)]


def install_moe(model: LlavaForConditionalGeneration, layout: dict[str, Any], *, residual: bool = False,
                coefficient_bias: bool = True) -> ModalityContext:
    """Replace the MLPs ``layout`` selects (LLM ``layers``, vision ``vision_layers``, the projector) by
    ``MoeBlock`` copies of them; returns the context the blocks share (the hooks fill it)."""
    config = model.config
    context = ModalityContext(image_token_id=config.image_token_id)
    common = dict(num_experts=int(layout["num_experts"]), top_k=int(layout["top_k"]), style=layout["style"], layout=layout,
                  context=context, residual=residual, coefficient_bias=coefficient_bias)
    inner = model.model
    lm, tower = inner.language_model, inner.vision_tower
    text_hidden, vision_hidden = config.text_config.hidden_size, config.vision_config.hidden_size
    for layer in layout.get("layers") or []:
        block = lm.layers[layer]
        block.mlp = MoeBlock(block.mlp, hidden=text_hidden, modality="text", **common)
    vision_layers = layout.get("vision_layers") or []
    for layer in vision_layers:
        block = tower.encoder.layers[layer]
        block.mlp = MoeBlock(block.mlp, hidden=vision_hidden, modality="image", **common)
        if block.mlp.router in LIBMOE_ROUTERS:  # LibMoE's SigLIP/CLIP SMoE tower returns the MEAN of its layers' losses
            block.mlp.loss_scale = 1.0 / len(vision_layers)
    if "projector" in (layout.get("targets") or []):
        # the router reads what the projector reads (wider than the tower with S² multi-scale features)
        projector_in = inner.multi_modal_projector.linear_1.in_features
        inner.multi_modal_projector = MoeBlock(inner.multi_modal_projector, hidden=projector_in, modality="image", **common)
    context.blocks = moe_blocks(model)
    return context


def image_token_mask(llava_model: nn.Module, image_token_id: int | None, input_ids, inputs_embeds) -> torch.Tensor | None:
    """[batch, seq] bool: the image-token positions, as ``LlavaModel.get_placeholder_mask`` finds them."""
    if image_token_id is None:
        return None
    if input_ids is not None:
        return input_ids == image_token_id
    if inputs_embeds is None:
        return None
    embedding = llava_model.get_input_embeddings()
    token = embedding(torch.full((), image_token_id, dtype=torch.long, device=inputs_embeds.device))
    return (inputs_embeds == token).all(-1)


def install_hooks(model: nn.Module, context: ModalityContext) -> None:
    """Before each ``LlavaModel`` forward: record the image-token positions and clear the blocks' losses.
    After the top model's forward: attach ``aux_loss`` and add it to ``loss``.

    The hooks find the context on the module they run on (``_mmzoo_context``), so a deep copy of the
    model routes with its own copy. The mask is kept after the forward (a gradient-checkpointing
    recompute in backward needs it); the next forward replaces it."""
    inner = getattr(model, "model", model)
    model._mmzoo_context = context
    inner._mmzoo_context = context
    inner.register_forward_pre_hook(_before_forward, with_kwargs=True)
    model.register_forward_hook(_after_forward, with_kwargs=True)


def _before_forward(module, args, kwargs):
    context = module._mmzoo_context
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    context.image_mask = image_token_mask(module, context.image_token_id, input_ids, kwargs.get("inputs_embeds"))
    for block in context.blocks:
        block.last_aux_loss = None
    return None


def _after_forward(module, _args, _kwargs, output):
    losses = [b.last_aux_loss for b in module._mmzoo_context.blocks if b.last_aux_loss is not None]
    if not losses:
        return output
    aux = torch.stack(losses).sum()
    try:
        output["aux_loss"] = aux
        if output.get("loss") is not None:
            output["loss"] = output["loss"] + aux.to(output["loss"].dtype)
    except (TypeError, AttributeError):  # return_dict=False: a tuple
        pass
    return output


class MmzooMoeLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` with mmzoo's MoE blocks where ``config.mmzoo_moe`` puts them."""

    config_class = MmzooMoeLlavaConfig

    def __init__(self, config: MmzooMoeLlavaConfig):
        super().__init__(config)
        blocks = config.mmzoo_moe_blocks or {}
        context = install_moe(self, config.mmzoo_moe, residual=bool(blocks.get("residual")),
                                          coefficient_bias=bool(blocks.get("coefficient_bias", True)))
        install_hooks(self, context)
        self.mmzoo_moe = dict(config.mmzoo_moe)
        self.post_init()  # again: tied weights, no-split modules and init flags of the new modules


__all__ = ["MmzooMoeLlavaForConditionalGeneration", "MoeBlock", "ModalityContext", "install_moe", "install_hooks", "moe_blocks"]
