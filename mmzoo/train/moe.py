"""MoE training support: router taps (expert load, Switch/Mixtral load-balancing loss), ZeRO-3 leaf modules.

Two kinds of MoE model come out of ``mmzoo.load_model``:
- mmzoo's ``MoeBlock`` (modality routing, vision/projector experts, …): the model's forward already adds
  the Switch/Mixtral load-balancing loss (per modality) to ``loss`` and returns ``aux_loss``; training
  sets the blocks' coefficients from the ``moe:`` section;
- transformers' Mixtral / Qwen2-MoE blocks inside Llava: Llava drops the router logits, so the tap
  computes the same loss from the routers' outputs: per layer ``E · Σ_e f_e · P_e`` (f_e: share of the
  top-k assignments, P_e: mean router probability), per modality (image tokens: ``vision_aux_loss_coef``,
  text tokens: ``router_aux_loss_coef``), summed over layers.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

DEFAULT_AUX = 0.01


def moe_block_classes() -> tuple[type, ...]:
    classes: list[type] = []
    try:
        from ..upcycle.moe_modeling import MoeBlock

        classes.append(MoeBlock)
    except ImportError:  # pragma: no cover - mmzoo without the upcycle module
        pass
    for module, name in (("transformers.models.mixtral.modeling_mixtral", "MixtralSparseMoeBlock"),
                         ("transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeSparseMoeBlock")):
        try:
            classes.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    classes = moe_block_classes()
    return [(name, m) for name, m in model.named_modules() if classes and isinstance(m, classes)]


def _switch_loss(probs: torch.Tensor, top_i: torch.Tensor, num_experts: int, top_k: int) -> torch.Tensor:
    chosen = torch.zeros_like(probs).scatter_(1, top_i, 1.0)
    fraction = chosen.mean(dim=0) / top_k
    return num_experts * (fraction * probs.mean(dim=0)).sum()


class RouterTap:
    """Hooks every MoE block's router; collects expert load and (for transformers blocks) the aux loss."""

    def __init__(self, model: nn.Module, *, image_token_id: int | None, text_coef: float, image_coef: float,
                 z_coef: float | None = None):
        from ..upcycle.moe_modeling import MoeBlock

        self.blocks = find_blocks(model)
        self.image_token_id = image_token_id
        self.text_coef, self.image_coef = text_coef, image_coef
        self.image_mask: torch.Tensor | None = None
        self.counts: dict[str, torch.Tensor] = {}
        self.losses: list[torch.Tensor] = []
        self.own_aux = False  # MoeBlock models add their aux loss in forward
        for name, block in self.blocks:
            if isinstance(block, MoeBlock):
                self.own_aux = True
                block.text_coef, block.image_coef = float(text_coef), float(image_coef)
                if z_coef is not None:  # the LibMoE routers' z-loss (moe.router_z_loss_coef)
                    block.z_coef = float(z_coef)
            block.gate.register_forward_hook(self._hook(name, block, isinstance(block, MoeBlock)))

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def start(self, input_ids: torch.Tensor) -> None:
        self.image_mask = (input_ids == self.image_token_id).reshape(-1) if self.image_token_id is not None else None
        self.losses = []

    def _hook(self, name: str, block: nn.Module, mmzoo_block: bool):
        def hook(_module, _args, output):
            logits = (output[0] if isinstance(output, tuple) else output).float()
            logits = logits.reshape(-1, logits.shape[-1])
            num_experts = logits.shape[-1]
            top_k = int(getattr(block, "top_k", None) or getattr(block.gate, "top_k", 1))
            if mmzoo_block and getattr(block, "router", None) == "tcmoe":  # E experts, E negated copies, null experts
                expert = block._tcmoe_route(logits)[2].reshape(-1)
                counts = torch.bincount(expert[expert >= 0].detach(), minlength=block.num_experts).float()
                self.counts[name] = self.counts.get(name, torch.zeros_like(counts)) + counts
                return
            if mmzoo_block:  # the block's own modality mask decides which experts a token may use
                is_image = block._image_tokens(logits.shape[0], logits.device)
                allowed = block.allowed.to(logits.device)[is_image.long()]
                logits = logits.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            top_i = torch.topk(probs, top_k, dim=-1).indices
            counts = torch.bincount(top_i.reshape(-1).detach(), minlength=num_experts).float()
            self.counts[name] = self.counts.get(name, torch.zeros_like(counts)) + counts
            if not mmzoo_block:
                mask = self.image_mask
                if mask is not None and mask.numel() != probs.shape[0]:
                    mask = None
                groups = [(None, self.text_coef)] if mask is None else [(mask, self.image_coef), (~mask, self.text_coef)]
                for m, coef in groups:
                    p, i = (probs, top_i) if m is None else (probs[m], top_i[m])
                    if p.shape[0] and coef:
                        self.losses.append(coef * _switch_loss(p, i, num_experts, top_k))
        return hook

    def aux_loss(self, output: Any, reference: torch.Tensor) -> torch.Tensor:
        """The load-balancing loss of the last forward (already inside ``output.loss`` for MoeBlock models)."""
        if self.own_aux:
            aux = output.get("aux_loss") if hasattr(output, "get") else None
            return aux if aux is not None else reference.new_zeros(())
        if not self.losses:
            return reference.new_zeros(())
        return torch.stack(self.losses).sum().to(reference.dtype)

    def take_load(self) -> dict[str, list[float]]:
        """Share of routed assignments per expert for each MoE layer since the last call (summed over ranks)."""
        from .collectives import sum_over_processes

        out: dict[str, list[float]] = {}
        names = [name for name, _ in self.blocks]
        if not names:
            return out
        width = max(int(self.counts[n].numel()) if n in self.counts else 0 for n in names) or 1
        table = torch.zeros(len(names), width)
        for row, name in enumerate(names):
            if name in self.counts:
                table[row, : self.counts[name].numel()] = self.counts[name].cpu()
        table = sum_over_processes(table)
        for row, name in enumerate(names):
            total = float(table[row].sum())
            out[short_name(name)] = [round(float(v) / total, 4) if total else 0.0 for v in table[row]]
        self.counts = {}
        return out


def short_name(module_name: str) -> str:
    """``model.language_model.layers.3.mlp`` -> ``text.3``; vision -> ``vision.L``; projector -> ``projector``."""
    parts = module_name.split(".")
    if "language_model" in parts and "layers" in parts:
        return f"text.{parts[parts.index('layers') + 1]}"
    if "vision_tower" in parts and "layers" in parts:
        return f"vision.{parts[parts.index('layers') + 1]}"
    if "multi_modal_projector" in parts:
        return "projector"
    return module_name


def layout_coefficients(spec, cfg_moe) -> tuple[float, float]:
    """(text, image) load-balancing coefficients: the ``moe:`` section, else the checkpoint's layout."""
    layout = spec.moe or {}
    text = cfg_moe.router_aux_loss_coef
    if text is None:
        text = layout.get("router_aux_loss_coef")
    if text is None:
        text = DEFAULT_AUX
    image = cfg_moe.vision_aux_loss_coef
    if image is None:
        image = layout.get("vision_aux_loss_coef") if cfg_moe.router_aux_loss_coef is None else None
    if image is None:
        image = text
    return float(text), float(image)


def mark_leaf_modules(model: nn.Module) -> list[str]:
    """ZeRO-3: gather a whole MoE block at once (ranks route to different experts; per-expert fetches
    would otherwise wait on each other forever)."""
    from deepspeed.utils import set_z3_leaf_modules

    classes = [c for c in moe_block_classes() if any(isinstance(m, c) for m in model.modules())]
    if classes:
        set_z3_leaf_modules(model, classes)
    return [c.__name__ for c in classes]


def leaf_inputs_require_grad(model: nn.Module) -> int:
    """ZeRO-3 with trainable MoE blocks whose input needs no gradient (everything before them frozen, e.g.
    ``train_only`` on the MLPs only): make the block's input require one. DeepSpeed reduces a leaf module's
    gradients in a full backward hook, and PyTorch fires that hook, when no input of the module requires a
    gradient, as soon as the gradients of its *outputs* are known — before the block's own backward. DeepSpeed
    then reduces and re-partitions the experts, and their gradients, computed next, meet an empty (partitioned)
    weight: "The size of tensor a (0) must match the size of tensor b …" at the first backward. With the input
    requiring a gradient (a detached copy: the model's other uses of the tensor are unchanged) the hook fires
    after the block's backward, as it does when the layers before it train. Returns the number of blocks hooked."""
    hooked = 0
    for _, block in find_blocks(model):
        if not any(p.requires_grad for p in block.parameters()):
            continue

        def hook(module, args, kwargs):
            if not torch.is_grad_enabled():
                return None
            if args and torch.is_tensor(args[0]) and not args[0].requires_grad:
                return (args[0].detach().requires_grad_(), *args[1:]), kwargs
            if not args and torch.is_tensor(kwargs.get("hidden_states")) and not kwargs["hidden_states"].requires_grad:
                return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}
            return None

        block.register_forward_pre_hook(hook, with_kwargs=True)
        hooked += 1
    return hooked
