"""Optional faster kernels, chosen in the config's ``train:`` section.

- ``cross_entropy: chunked`` — the LM loss without the [tokens × vocabulary] logits tensor: the hidden states
  of the tokens that have a label go through ``lm_head`` and cross-entropy a chunk at a time, and each chunk's
  logits are recomputed in backward instead of kept (torch.utils.checkpoint). With a 151 646-token vocabulary
  the logits of a 16 × 700-token micro batch alone take 3.4 GB in bf16 (6.8 GB more for their fp32 copy in
  the loss); chunked they never exist at once. Pure PyTorch: runs on CPUs too, and equals the plain loss
  (the same mean over the labelled tokens).
- ``cross_entropy: liger`` — Liger Kernel's fused linear cross-entropy (Triton, CUDA only).
- ``liger_kernels: true`` — Liger's RMSNorm, SwiGLU and RoPE kernels in the LLM (Triton, CUDA only;
  Llama, Mistral and Qwen2 LLMs).
- ``compile: true`` — ``torch.compile`` with inductor (or a named backend: ``aot_eager``, ``cudagraphs``) of
  every repeated transformer block — the LLM's decoder layers and the vision tower's encoder layers — in place:
  parameter names do not change. Per block, not the whole model (torchtune's recipe): dynamo treats a block's
  parameters as graph inputs, so one compiled graph serves all the layers of a stack and compilation costs one
  layer's, not the model's; the glue between blocks (merging image features, data-dependent shapes) stays eager.
  A new sequence length recompiles once, after which the length is dynamic (padded and packed batches vary).

Options that cannot run here are refused by :func:`check_kernels` in one line before anything starts.
"""
from __future__ import annotations

import importlib.util
import types
from typing import Any

from ..errors import ConfigError

IGNORE_INDEX = -100
LIGER_LLMS = ("llama", "mistral", "qwen2")


def check_kernels(cfg, accelerator: str) -> None:
    """One line for a kernel option this machine cannot run (before any process or model exists)."""
    t = cfg.train
    if t.cross_entropy != "plain" and cfg.deepspeed.zero_stage == 3:
        # ZeRO-3 gathers lm_head's weight only inside lm_head's own forward, which the fused loss bypasses
        raise ConfigError(f"train.cross_entropy {t.cross_entropy} needs deepspeed.zero_stage 0, 1 or 2")
    needs_liger = [name for name, on in (("train.cross_entropy liger", t.cross_entropy == "liger"),
                                         ("train.liger_kernels", t.liger_kernels)) if on]
    for name in needs_liger:
        if accelerator != "cuda":
            raise ConfigError(f"{name} needs a CUDA GPU (Liger's kernels are Triton); on CPU use "
                              "train.cross_entropy chunked")
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError(f"{name} needs Liger Kernel: pip install liger-kernel")


def apply_kernels(model, cfg) -> None:
    """Install the chosen kernels into ``model`` (a transformers LLaVA model as ``mmzoo.load_model`` returns it)."""
    t = cfg.train
    if t.cross_entropy != "plain":
        from transformers import LlavaForConditionalGeneration

        if type(model) is not LlavaForConditionalGeneration:  # mmzoo's own MoE layouts add their aux loss in forward
            raise ConfigError(f"train.cross_entropy {t.cross_entropy} needs a transformers LLaVA model "
                              f"(this one is {type(model).__name__}); use train.cross_entropy plain")
        loss = _liger_loss() if t.cross_entropy == "liger" else chunked_linear_cross_entropy
        model.forward = types.MethodType(_forward_with_loss(loss), model)
    if t.liger_kernels:
        text_type = model.config.text_config.model_type
        if text_type not in LIGER_LLMS:
            raise ConfigError(f"train.liger_kernels covers {', '.join(LIGER_LLMS)} LLMs (this one: {text_type})")
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model.model.language_model, cross_entropy=False,
                                        fused_linear_cross_entropy=False)
    if t.compile:
        compile_blocks(model, backend="inductor" if t.compile is True else t.compile)


def compile_blocks(model, backend: str) -> int:
    """``torch.compile`` each layer of every ``layers`` stack (a ModuleList of blocks of one class) in place;
    returns how many were compiled. Stacks nested in a compiled block (MoE experts) are compiled with it."""
    import torch

    compiled, stacks = 0, []
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(module)):
            continue
        if len({type(layer) for layer in module}) != 1:  # not a stack of repeated blocks
            continue
        if any(name.startswith(stack + ".") for stack in stacks):  # inside a block compiled already
            continue
        stacks.append(name)
        for layer in module:
            layer.compile(backend=backend)
            compiled += 1
    if not compiled:
        raise ConfigError(f"train.compile found no stack of transformer layers to compile in {type(model).__name__}")
    return compiled


def chunked_linear_cross_entropy(hidden, weight, labels, chunk_rows: int | None = None):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` over the labelled positions (labels
    already shifted: row i predicts labels[i]); logits exist one chunk at a time, in forward and in backward."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    keep = labels != IGNORE_INDEX
    rows, targets = hidden[keep], labels[keep]
    if rows.shape[0] == 0:
        return hidden.sum() * 0.0  # no labelled token: a zero that still reaches every parameter's graph
    chunk_rows = chunk_rows or max(256, 2**28 // weight.shape[0])  # ~1 GiB of fp32 logits a chunk

    def chunk_loss(h, w, y):
        logits = h @ w.t()  # half-precision logits go through the loss in fp32, as transformers' loss does
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y, reduction="sum")

    total = None
    for start in range(0, rows.shape[0], chunk_rows):
        part = checkpoint(chunk_loss, rows[start:start + chunk_rows], weight, targets[start:start + chunk_rows],
                          use_reentrant=False)
        total = part if total is None else total + part
    return total / rows.shape[0]


def _liger_loss():
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean")

    def loss(hidden, weight, labels):
        return fused(weight, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1))

    return loss


def _forward_with_loss(loss_fn):
    """LlavaForConditionalGeneration.forward for training: the LLM's hidden states straight into ``loss_fn``
    (no logits returned; the labels shifted exactly as transformers' ForCausalLMLoss shifts them)."""

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, labels=None,
                **kwargs: Any):
        import torch.nn.functional as F
        from transformers.modeling_outputs import CausalLMOutputWithPast

        outputs = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             position_ids=position_ids, **kwargs)
        hidden = outputs[0]
        loss = None
        if labels is not None:
            shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].to(hidden.device)
            loss = loss_fn(hidden, self.lm_head.weight, shifted)
        return CausalLMOutputWithPast(loss=loss)

    return forward
