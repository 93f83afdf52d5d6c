"""The seeds' training stages: what is trainable by default, and the freeze / train_only rules.

Rules are regexes (``re.search``) on mmzoo's canonical tensor names (``image_model.*``, ``projector.*``,
``text_model.*``, MoE parts ``….mlp.gate.weight`` / ``….mlp.experts.E.*``). An in-memory parameter that
fuses several canonical tensors (e.g. Phi-3 ``qkv_proj``) is trainable when all of them are; a rule set
that splits a fused parameter is an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from .names import Layout, canonical_names

MOE_PARTS = r"\.mlp\.(gate|experts|shared_expert|shared_expert_gate|residual|coefficient)\."


@dataclass(frozen=True)
class StageDefaults:
    freeze: tuple[str, ...]
    lr: float
    description: str


STAGE_DEFAULTS = {
    # LLaVA-1.5 / MoIIE / LibMoE pretraining: only the projector learns (plain image + caption data)
    "pretrain": StageDefaults((r"^image_model\.", r"^text_model\."), 1e-3, "projector only"),
    # visual instruction tuning: projector + LLM, vision tower frozen
    "sft": StageDefaults((r"^image_model\.",), 2e-5, "projector + LLM"),
    # MoE stage (MoE-LLaVA stage 3, MoIIE, LLaVA-MoD): projector + LLM with experts and routers; the
    # vision tower stays frozen except its own MoE parts when it has any
    "moe": StageDefaults((rf"^image_model\.(?!.*{MOE_PARTS})",), 2e-5, "projector + LLM + experts/routers"),
    # LLaVA-MoD's mimic distillation (dense→dense and dense→sparse): what the sft / moe stages train
    "distill": StageDefaults((rf"^image_model\.(?!.*{MOE_PARTS})",), 2e-5, "projector + LLM (+ experts/routers)"),
    # LLaVA-MoD's preference distillation (DPO / KTO against a frozen reference): the same parts, its lr 2e-6
    "preference": StageDefaults((rf"^image_model\.(?!.*{MOE_PARTS})",), 2e-6, "projector + LLM (+ experts/routers)"),
}


def freeze_rules(stage: str, freeze: list[str] | None, train_only: list[str]) -> tuple[list[str], list[str]]:
    """(train_only, freeze) after the stage default: a user ``freeze`` replaces the stage's; with
    ``train_only`` set, only it (minus a user ``freeze``) is trainable."""
    if train_only:
        return list(train_only), list(freeze or [])
    return [], list(STAGE_DEFAULTS[stage].freeze if freeze is None else freeze)


def select_trainable(param_names: list[str], layout: Layout, stage: str, freeze: list[str] | None,
                     train_only: list[str]) -> dict[str, bool]:
    """In-memory parameter name -> trainable, with a clear error for rules that match nothing."""
    only, frozen = freeze_rules(stage, freeze, train_only)
    only_re = [re.compile(p) for p in only]
    frozen_re = [re.compile(p) for p in frozen]
    used_only, used_frozen = set(), set()

    def trainable(name: str) -> bool:
        ok = True
        if only_re:
            hits = [i for i, r in enumerate(only_re) if r.search(name)]
            used_only.update(hits)
            ok = bool(hits)
        hits = [i for i, r in enumerate(frozen_re) if r.search(name)]
        used_frozen.update(hits)
        return ok and not hits

    out: dict[str, bool] = {}
    for param in param_names:
        names = canonical_names(layout, param)
        verdicts = {trainable(n) for n in names}
        if len(verdicts) > 1:
            raise ConfigError(f"the freeze rules split parameter {param!r}, which holds {', '.join(names)} in one tensor; "
                              "freeze all of them or none")
        out[param] = verdicts.pop()
    for key, rules, used in (("train.train_only", only, used_only), ("train.freeze", frozen if freeze is not None else [], used_frozen)):
        for i, pattern in enumerate(rules):
            if i not in used:
                raise ConfigError(f"{key}[{i}] {pattern!r} matches no parameter (names look like image_model.…, "
                                  "projector.linear_1.weight, text_model.model.layers.0.…)")
    if not any(out.values()):
        raise ConfigError("the freeze rules leave no trainable parameter (check train.freeze / train.train_only)")
    return out
