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
    """Hooks every MoE block's router; collects routing statistics and (for transformers blocks) the aux loss.

    Per MoE layer and per modality of the routed tokens (text, image) it accumulates, on the device and
    without host synchronisation: the top-k assignments per expert, the summed entropy of the routing
    distribution and the token count (:meth:`take_stats` reads them, once per log point). With
    ``keep_choices`` it also keeps each layer's top-k expert indices of the last forward (``choices``), which
    ``mmzoo analyze-routing`` compares between consecutive layers."""

    def __init__(self, model: nn.Module, *, image_token_id: int | None, text_coef: float, image_coef: float,
                 z_coef: float | None = None, keep_choices: bool = False):
        from ..upcycle.moe_modeling import MoeBlock

        self.blocks = find_blocks(model)
        self.image_token_id = image_token_id
        self.text_coef, self.image_coef = text_coef, image_coef
        self.image_mask: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}  # layer -> [2 (text, image), experts + 2 (entropy sum, tokens)]
        self.keep_choices = keep_choices
        self.choices: dict[str, torch.Tensor] = {}  # layer -> [tokens, top_k] expert indices (-1: none)
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
        self.choices = {}

    def _hook(self, name: str, block: nn.Module, mmzoo_block: bool):
        def hook(_module, _args, output):
            logits = (output[0] if isinstance(output, tuple) else output).float()
            logits = logits.reshape(-1, logits.shape[-1])
            num_experts = logits.shape[-1]
            top_k = int(getattr(block, "top_k", None) or getattr(block.gate, "top_k", 1))
            if mmzoo_block:  # the block's own modality mask: vision/projector blocks route image tokens only
                is_image = block._image_tokens(logits.shape[0], logits.device)
            else:
                mask = self.image_mask
                is_image = mask.to(logits.device) if mask is not None and mask.numel() == logits.shape[0] else None
            if mmzoo_block and getattr(block, "router", None) == "tcmoe":  # E experts, E negated copies, null experts
                probs, _, expert, _ = block._tcmoe_route(logits)
                self._record(name, probs, expert, is_image, block.num_experts)
                return
            if mmzoo_block:  # the block's own modality mask decides which experts a token may use
                allowed = block.allowed.to(logits.device)[is_image.long()]
                logits = logits.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            top_i = torch.topk(probs, top_k, dim=-1).indices
            self._record(name, probs, top_i, is_image, num_experts)
            if not mmzoo_block:
                mask = is_image
                groups = [(None, self.text_coef)] if mask is None else [(mask, self.image_coef), (~mask, self.text_coef)]
                for m, coef in groups:
                    p, i = (probs, top_i) if m is None else (probs[m], top_i[m])
                    if p.shape[0] and coef:
                        self.losses.append(coef * _switch_loss(p, i, num_experts, top_k))
        return hook

    def _record(self, name: str, probs: torch.Tensor, experts: torch.Tensor, is_image: torch.Tensor | None,
                num_experts: int) -> None:
        """Add one forward's routing to the layer's statistics (device tensors only: no host synchronisation)."""
        with torch.no_grad():
            probs, experts = probs.detach(), experts.detach()
            # index_add_ into fixed-size rows, not bincount or boolean indexing: both read a size back to the host
            modality = is_image.long() if is_image is not None else experts.new_zeros(experts.shape[0])
            chosen = (experts >= 0).float()  # -1: a TC-MoE null expert, counted for no expert
            slots = modality[:, None] * num_experts + experts.clamp_min(0)
            counts = probs.new_zeros(2 * num_experts).index_add_(0, slots.reshape(-1), chosen.reshape(-1))
            entropy = torch.special.entr(probs).sum(dim=-1)  # -Σ p ln p, 0 for the masked (p = 0) experts
            entropy_sum = probs.new_zeros(2).index_add_(0, modality, entropy)
            tokens = probs.new_zeros(2).index_add_(0, modality, torch.ones_like(entropy))
            table = torch.cat([counts.reshape(2, num_experts), entropy_sum[:, None], tokens[:, None]], dim=1)
            self.stats[name] = self.stats[name] + table if name in self.stats else table
            if self.keep_choices:
                self.choices[name] = experts

    def aux_loss(self, output: Any, reference: torch.Tensor) -> torch.Tensor:
        """The load-balancing loss of the last forward (already inside ``output.loss`` for MoeBlock models)."""
        if self.own_aux:
            aux = output.get("aux_loss") if hasattr(output, "get") else None
            return aux if aux is not None else reference.new_zeros(())
        if not self.losses:
            return reference.new_zeros(())
        return torch.stack(self.losses).sum().to(reference.dtype)

    def take_stats(self, collective: bool = True):
        """The routing statistics since the last call (summed over ranks), as a
        :class:`mmzoo.analysis.stats.RoutingCounts`; the counters start again from zero."""
        from ..analysis.stats import RoutingCounts

        names = [name for name, _ in self.blocks]
        experts = [num_experts(block) for _, block in self.blocks]
        table = torch.zeros(len(names), 2, max(experts, default=0) + 2, dtype=torch.float64)
        for row, name in enumerate(names):
            if name in self.stats:  # [2, E + 2]: entropy and tokens go to the last two columns
                stats = self.stats[name].double().cpu()
                table[row, :, : experts[row]] = stats[:, :-2]
                table[row, :, -2:] = stats[:, -2:]
        if collective:
            from .collectives import sum_over_processes

            table = sum_over_processes(table)
        self.stats = {}
        return RoutingCounts([short_name(n) for n in names], experts, table)


def num_experts(block: nn.Module) -> int:
    """Routed experts of an MoE block (mmzoo's MoeBlock, transformers' Mixtral / Qwen2-MoE block); MoE++ counts
    its zero and constant experts too (its router's width, ``num_routed``)."""
    return int(getattr(block, "num_routed", None) or getattr(block, "num_experts", None) or getattr(block.gate, "num_experts", None) or block.gate.weight.shape[0])


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
