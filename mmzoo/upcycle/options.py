"""Validated upcycling options (what ``mmzoo convert --moe-*`` passes)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import UpcycleError

STYLES = ("mixtral", "shared", "modality")
TARGETS = ("text", "vision", "projector")
DEFAULT_AUX = 0.01  # MoE-LLaVA / Mixtral-style load balancing
DEFAULT_MODALITY_AUX = 0.001  # MoIIE: per modality
DEFAULT_Z_LOSS = 0.001  # LibMoE's scripts: --balance_loss_coef 0.01 --router_z_loss_coef 0.001
ROUTERS = ("softmax_topk", "smoe", "xmoe", "sigmoid", "sharede_v2", "sharede_v3", "tcmoe", "moepp")
LIBMOE_ROUTERS = ("smoe", "xmoe", "sigmoid", "sharede_v2", "sharede_v3", "tcmoe", "moepp")
SHARED_E = ("sharede_v2", "sharede_v3")  # a shared expert mixed 0.5 / 0.5 with the routed ones, no gate

MAX_EXPERTS = 4096
# The `mmzoo convert` option of each field, so that a refused value names what the user typed
FLAGS = {"num_experts": "--moe-experts", "top_k": "--moe-top-k", "style": "--moe-style", "router": "--moe-router",
         "router_z_loss_coef": "--router-z-loss-coef", "layers": "--moe-layers", "targets": "--moe-target",
         "router_init": "--router-init", "router_prompts": "--router-prompts", "router_aux_loss_coef": "--router-aux-loss-coef",
         "vision_aux_loss_coef": "--vision-aux-loss-coef", "capacity_factor": "--capacity-factor", "seed": "--seed"}


class UpcycleOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    num_experts: int = 4
    top_k: int = 2
    style: Literal["mixtral", "shared", "modality"] = "mixtral"
    # LibMoE's SMoE / XMoE / sigmoid gating / SharedE-V2 / SharedE-V3 / TC-MoE / MoE++, with LibMoE's balance + z-loss
    router: Literal["softmax_topk", "smoe", "xmoe", "sigmoid", "sharede_v2", "sharede_v3", "tcmoe", "moepp"] = "softmax_topk"
    router_z_loss_coef: float | None = None  # smoe / xmoe; default 0.001 (LibMoE's training scripts)
    layers: str | list[int] = "all"  # all | even | odd | "0,3,5" | [0, 3, 5]
    targets: tuple[Literal["text", "vision", "projector"], ...] = ("text",)
    router_init: str = "normal:0.02"  # zeros | normal:STD | hidden | hidden_avg (plain LLMs, with router_prompts)
    router_prompts: str | None = None  # the prompts file of the hidden modes (mmzoo.upcycle.router_prompts)
    router_aux_loss_coef: float | None = None  # default 0.01 (modality: 0.001)
    vision_aux_loss_coef: float | None = None  # image tokens' weight (modality; default = the text weight)
    capacity_factor: float | None = None  # None: dropless (LLaVA-MoD trains with 1.5)
    seed: int = 0

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, value):
        if value is None:
            return ("text",)
        if isinstance(value, str):
            value = [value]
        out = []
        for item in value:
            for part in str(item).split(","):
                part = part.strip()
                if part and part not in out:
                    out.append(part)
        return tuple(out) or ("text",)

    @property
    def text_aux(self) -> float:
        if self.router_aux_loss_coef is not None:
            return self.router_aux_loss_coef
        return DEFAULT_MODALITY_AUX if self.style == "modality" else DEFAULT_AUX

    @property
    def image_aux(self) -> float:
        return self.vision_aux_loss_coef if self.vision_aux_loss_coef is not None else self.text_aux

    @property
    def hidden_router(self) -> str | None:
        """``hidden`` / ``hidden_avg`` when the routers come from prompts' hidden states, else None."""
        text = self.router_init.strip().lower()
        return text if text in ("hidden", "hidden_avg") else None

    def router_std(self) -> float:
        """The normal init's std (0: zeros). The hidden modes start from zeros, replaced by the computed rows."""
        text = self.router_init.strip().lower()
        if self.hidden_router:
            return 0.0
        if text in ("zeros", "zero", "0"):
            return 0.0
        if text == "normal":
            return 0.02
        if text.startswith("normal:"):
            try:
                std = float(text.split(":", 1)[1])
            except ValueError:
                std = -1.0
            if std >= 0:
                return std
        raise UpcycleError(f"invalid --router-init {self.router_init!r} (zeros, normal:STD such as normal:0.02, or hidden / hidden_avg with --router-prompts)")


def parse_options(**options) -> UpcycleOptions:
    try:
        opts = UpcycleOptions(**options)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc", ())
        where = str(loc[0]) if loc else "options"
        flag = f" ({FLAGS[where]} {first.get('input')!r})" if where in FLAGS else f" (got {first.get('input')!r})"
        expected = (first.get("ctx") or {}).get("expected")  # a choice: name the choices, not pydantic's wording
        why = f"choose from {expected}" if first.get("type") == "literal_error" and expected else first.get("msg")
        raise UpcycleError(f"invalid upcycling option {where}{flag}: {why}") from None
    if not 1 <= opts.num_experts <= MAX_EXPERTS:  # the bound a config read from disk gets (mmzoo.archs.checks)
        raise UpcycleError(f"--moe-experts must be at least 1 and at most {MAX_EXPERTS} (got {opts.num_experts})")
    if not 1 <= opts.top_k <= opts.num_experts:
        raise UpcycleError(f"--moe-top-k must be between 1 and --moe-experts ({opts.num_experts}); got {opts.top_k}")
    if opts.capacity_factor is not None and opts.capacity_factor <= 0:
        raise UpcycleError(f"--capacity-factor must be positive (got {opts.capacity_factor})")
    for coef in (opts.router_aux_loss_coef, opts.vision_aux_loss_coef):
        if coef is not None and coef < 0:
            raise UpcycleError(f"aux loss coefficients must be >= 0 (got {coef})")
    opts.router_std()
    if opts.router in LIBMOE_ROUTERS and opts.style == "modality":
        raise UpcycleError(f"--moe-router {opts.router} (LibMoE) has one balance loss over all tokens; use --moe-style mixtral or shared")
    if opts.router in SHARED_E and opts.style != "shared":
        raise UpcycleError(f"--moe-router {opts.router} (LibMoE SharedE) needs --moe-style shared: N routed experts + 1 shared expert")
    if opts.router == "moepp" and opts.style != "mixtral":
        raise UpcycleError("--moe-router moepp (LibMoE's MoE++) has no shared expert: use --moe-style mixtral")
    if opts.router == "moepp" and opts.num_experts < 3:  # LibMoE indexes router column 4 of E + 2 in its balance loss
        raise UpcycleError("--moe-router moepp needs at least 3 experts (LibMoE's MoE++ balance loss weighs router column 4 of E + 2)")
    if opts.router == "xmoe" and opts.num_experts < 2:
        raise UpcycleError("--moe-router xmoe needs at least 2 experts (its router works in E/2 dimensions)")
    if opts.router_z_loss_coef is not None and (opts.router not in LIBMOE_ROUTERS or opts.router_z_loss_coef < 0):
        raise UpcycleError("--router-z-loss-coef is a non-negative weight of the LibMoE routers (--moe-router smoe, xmoe, sigmoid, sharede_v2, sharede_v3, tcmoe, moepp)")
    if opts.hidden_router and not opts.router_prompts:
        raise UpcycleError(f"--router-init {opts.router_init} needs --router-prompts FILE (each expert's prompts)")
    if opts.router_prompts and not opts.hidden_router:
        raise UpcycleError("--router-prompts is used by --router-init hidden (or hidden_avg) only")
    return opts


def parse_layers(spec: str | list[int], num_layers: int, what: str) -> list[int]:
    """``all`` | ``even`` | ``odd`` | ``0,3,5`` (negative indices count from the end) -> sorted layer list."""
    if isinstance(spec, (list, tuple)):
        items: list[str] = [str(i) for i in spec]
    else:
        text = str(spec).strip().lower()
        if text == "all":
            return list(range(num_layers))
        if text == "even":
            return list(range(0, num_layers, 2))
        if text == "odd":
            return list(range(1, num_layers, 2))
        items = [p.strip() for p in text.split(",") if p.strip()]
        if not items:
            raise UpcycleError(f"invalid --moe-layers {spec!r} (all, even, odd or a comma list such as 0,3,5)")
    layers: set[int] = set()
    for item in items:
        try:
            index = int(item)
        except ValueError:
            raise UpcycleError(f"invalid --moe-layers {spec!r} (all, even, odd or a comma list such as 0,3,5)") from None
        if not -num_layers <= index < num_layers:
            raise UpcycleError(f"--moe-layers: layer {index} is out of range (the {what} has {num_layers} layers: 0..{num_layers - 1})")
        layers.add(index % num_layers)
    return sorted(layers)


def modality_experts(num_experts: int, top_k: int) -> dict[str, list[int]]:
    """MoIIE-style assignment: intra-modality experts for image and for text tokens, the rest shared
    (inter-modality). With N experts, N//3 are image-only, N//3 text-only, the rest take both."""
    per = num_experts // 3
    out = {"image": list(range(per)), "text": list(range(per, 2 * per)), "shared": list(range(2 * per, num_experts))}
    allowed = num_experts - per
    if top_k > allowed:
        raise UpcycleError(
            f"--moe-style modality with {num_experts} experts lets each token choose among {allowed} "
            f"({per} image-only, {per} text-only, {num_experts - 2 * per} shared); --moe-top-k {top_k} is too large"
        )
    return out
