"""Runs in LibMoE's side environment (transformers 4.43): build LibMoE's own LlavaPhiForCausalLM from a checkpoint
folder's config, load the folder's weights strictly, and record what LibMoE computes.

Usage: run_libmoe.py LIBMOE_SRC CHECKPOINT INPUTS.pt OUT.pt
LIBMOE_SRC is LibMoE's ``vision_language_model`` folder (it holds the ``moe_model`` package). INPUTS.pt holds
``input_ids`` (with LibMoE's IMAGE_TOKEN_INDEX -200 where the image goes) and ``images``. OUT.pt gets the
state-dict names and shapes of LibMoE's model, the missing / unexpected keys of the strict load, the logits,
and the vision tower's and projector's outputs.
"""
from __future__ import annotations

import sys

import torch


def main(src: str, checkpoint: str, inputs_path: str, out_path: str) -> None:
    sys.path.insert(0, src)
    from safetensors.torch import load_file

    from moe_model.model.language_model.llava_phi import LlavaPhiConfig, LlavaPhiForCausalLM
    from moe_model.model.moe.register import MOE_REGISTRY

    plus_plus = MOE_REGISTRY["smoe_plus_plus"]  # register_moe's decorator returns None: the class is only in the registry

    config = LlavaPhiConfig.from_pretrained(checkpoint)
    config.training = False  # LibMoE's forward adds its aux losses to the loss only while training
    config._attn_implementation = "eager"
    model = LlavaPhiForCausalLM(config)
    for module in model.modules():
        # moe_plus_plus.py: "If you are training with MoE++, then comment this line" -- the `if` that calls
        # init_moe_plus only for frozen gates; LibMoE's MoE++ runs add the zero and constant experts always.
        if isinstance(module, plus_plus) and module.use_moe_plus_plus and len(module.experts) < module.num_of_experts:
            module.init_moe_plus()
    names = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = load_file(f"{checkpoint}/model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    model.eval()
    inputs = torch.load(inputs_path)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], images=inputs["images"], return_dict=True).logits
        tower = model.get_model().get_vision_tower()(inputs["images"])
        features = tower[0] if isinstance(tower, tuple) else tower
        projected = model.get_model().mm_projector(features)
        projected = projected[0] if isinstance(projected, tuple) else projected
    # LibMoE's training-mode losses (its SMoE layers compute them only for inputs that need gradients)
    config.training, config.local_rank = True, -1
    model.train()
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] < 0, -100)
    logs = model(input_ids=inputs["input_ids"], images=inputs["images"], labels=labels, return_dict=True)["trainer_logs"]
    aux = {k: float(v) for k, v in logs.items() if k.startswith("auxiliary_loss")}
    torch.save({"aux": aux, "names": names, "missing": list(missing), "unexpected": list(unexpected), "logits": logits,
                "features": features, "projected": projected}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:5])
