"""``--router-init hidden --router-prompts FILE``: each expert's router row from the hidden states of
that expert's prompts (mergekit-moe's ``hidden`` gate mode), computed once with the dense source model.

For layer L and expert e the row is the dense model's input to layer L (the residual stream before the
layer, ``output_hidden_states[L]``) at the prompt's last token (``hidden``; ``hidden_avg``: the mean over
its tokens), averaged over e's positive prompts, minus the same for its negative prompts, L2-normalised.
Prompts are tokenised as mergekit does (the BOS token's text + prompt, no other special tokens), but
each prompt runs alone, so padding never enters a hidden state (mergekit pads a batch and, with right
padding, can take a pad position as the "last" token).

FILE (YAML or JSON) is a list with one entry per expert, in expert order, or a mapping whose ``experts``
is that list (a mergekit-moe config works as it is). An entry is a list of prompts, or a mapping with
``positive_prompts`` and optional ``negative_prompts``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UpcycleError

HIDDEN_MODES = ("hidden", "hidden_avg")
MAX_PROMPTS = 10_000


@dataclass(frozen=True)
class ExpertPrompts:
    positive: tuple[str, ...]
    negative: tuple[str, ...] = ()


def _strings(value: Any, what: str, where: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UpcycleError(f"{what} must be a list of strings", path=where)
    return tuple(value)


def load_prompts(path: str | Path, num_experts: int) -> list[ExpertPrompts]:
    from ..io.structured import load_json, load_yaml

    where = Path(path)
    if not where.is_file():
        raise UpcycleError("--router-prompts file does not exist", path=where)
    data = load_json(where) if where.suffix.lower() == ".json" else load_yaml(where)
    if isinstance(data, dict):
        data = data.get("experts")
    if not isinstance(data, list):
        raise UpcycleError("--router-prompts must be a list of experts (or a mapping with an 'experts' list)", path=where)
    if len(data) != num_experts:
        raise UpcycleError(f"--router-prompts lists {len(data)} experts but --moe-experts is {num_experts}", path=where)
    out = []
    for index, entry in enumerate(data):
        if isinstance(entry, dict):
            positive = _strings(entry.get("positive_prompts"), f"expert {index}: positive_prompts", where)
            negative = _strings(entry.get("negative_prompts"), f"expert {index}: negative_prompts", where)
        else:
            positive, negative = _strings(entry, f"expert {index}", where), ()
        if not positive:
            raise UpcycleError(f"expert {index} has no positive prompts", path=where)
        if len(positive) + len(negative) > MAX_PROMPTS:
            raise UpcycleError(f"expert {index} has more than {MAX_PROMPTS} prompts", path=where)
        out.append(ExpertPrompts(positive, negative))
    return out


def hidden_router_rows(model_path: str | Path, prompts: list[ExpertPrompts], layers: list[int], mode: str = "hidden"):
    """``{layer: float32 tensor [num_experts, hidden]}`` from the dense causal LM at ``model_path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if mode not in HIDDEN_MODES:
        raise UpcycleError(f"unknown hidden router mode {mode!r} ({', '.join(HIDDEN_MODES)})")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto").eval()
    bos = tokenizer.bos_token or ""

    def summary(texts: tuple[str, ...]) -> torch.Tensor:  # [layers, hidden]: mean over prompts
        total = None
        for text in texts:
            ids = tokenizer(bos + text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if ids.shape[1] == 0:
                raise UpcycleError(f"a router prompt tokenises to nothing: {text!r}")
            with torch.no_grad():
                states = model(input_ids=ids, output_hidden_states=True).hidden_states
            per_layer = torch.stack([(states[i][0, -1] if mode == "hidden" else states[i][0].mean(0)).float() for i in layers])
            total = per_layer if total is None else total + per_layer
        return total / len(texts)

    rows = []
    for expert in prompts:
        vec = summary(expert.positive)
        if expert.negative:
            vec = vec - summary(expert.negative)
        rows.append(vec / vec.norm(dim=-1, keepdim=True).clamp(min=1e-8))
    stacked = torch.stack(rows, dim=1)  # [layers, experts, hidden]
    return {layer: stacked[i] for i, layer in enumerate(layers)}
