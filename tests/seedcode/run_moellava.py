"""Runs inside the MoE-LLaVA side environment (transformers 4.37.0, DeepSpeed 0.9.5, CPU) with a MoE-LLaVA
checkout on sys.path: loads a folder written by `mmzoo convert --tgt-fmt moe-llava` with MoE-LLaVA's own
`load_pretrained_model` and runs one image + prompt through its model classes, saving the logits; optionally
saves the model again with its own `save_pretrained` (what MoE-LLaVA writes, for mmzoo to read).

Stubs (everything else is MoE-LLaVA's and DeepSpeed's own code):
- `timm`: imported at module level by MoE-LLaVA's pool/qformer projector blocks, which this model does
  not use; timm needs torchvision, which does not install beside the CPU torch here.
- `deepspeed.init_distributed(dist_backend='nccl')`: NCCL is GPU-only; DeepSpeed's own init with gloo, one process.
- `deepspeed.init_inference(model, ...)`: its engine is CUDA-bound; the stand-in does what it does for
  MoE layers (create the expert-parallel groups, ep_size 1) and returns the model itself as `.module`.
"""
import importlib.machinery
import os
import sys
import types

for name in ("timm", "timm.models", "timm.models.vision_transformer"):
    module = sys.modules[name] = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
sys.modules["timm.models.vision_transformer"].Block = object

import deepspeed  # noqa: E402
import torch  # noqa: E402
from deepspeed.moe.layer import MoE  # noqa: E402


real_init_distributed = deepspeed.init_distributed


def init_distributed(dist_backend=None, **kwargs):
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    real_init_distributed(dist_backend="gloo", **kwargs)


def init_inference(model, **_):
    for module in model.modules():
        if isinstance(module, MoE):
            module.set_deepspeed_parallelism()
    return types.SimpleNamespace(module=model)


deepspeed.init_distributed = init_distributed
deepspeed.init_inference = init_inference

from moellava.mm_utils import tokenizer_image_token  # noqa: E402
from moellava.model.builder import load_pretrained_model  # noqa: E402
from PIL import Image  # noqa: E402

model_path, image_path, prompt, out_path = sys.argv[1:5]
save_dir = sys.argv[5] if len(sys.argv) > 5 else None
tokenizer, model, processor, _ = load_pretrained_model(model_path, None, "moe-llava-mmzoo", device_map="cpu", device="cpu")
model = model.float().eval()
pixel_values = processor["image"].preprocess(Image.open(image_path).convert("RGB"), return_tensors="pt")["pixel_values"]
input_ids = tokenizer_image_token(prompt, tokenizer, -200, return_tensors="pt")[None]
with torch.no_grad():
    logits = model(input_ids=input_ids, images=[pixel_values[0].float()], return_dict=True).logits
moe_layers = [i for i, layer in enumerate(model.model.layers) if isinstance(layer.mlp, MoE)]
torch.save({"logits": logits, "input_ids": input_ids, "pixel_values": pixel_values, "moe_layers": moe_layers,
            "tower": type(model.get_image_tower()).__name__}, out_path)
if save_dir:  # what MoE-LLaVA itself writes for this model (its save_pretrained), for mmzoo to read back
    model.save_pretrained(save_dir)
