"""Runs inside a separate environment with the original LLaVA code (llava-torch 1.2.2.post1) and
transformers 4.37.2: loads a folder written by `mmzoo convert --tgt-fmt llava` exactly as LLaVA's
own scripts do, and saves the logits for one image + prompt.

argv: model_path image prompt out [model_base]: with model_base, LLaVA loads the LLM from model_base and
the projector from model_path/mm_projector.bin (its pretraining-stage layout)."""
import sys

import torch
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from PIL import Image

model_path, image_path, prompt, out_path = sys.argv[1:5]
model_base = sys.argv[5] if len(sys.argv) > 5 else None
tokenizer, model, image_processor, _ = load_pretrained_model(model_path, model_base, "llava_mmzoo", device_map="cpu", device="cpu")
model = model.float().eval()
pixel_values = image_processor.preprocess(Image.open(image_path).convert("RGB"), return_tensors="pt")["pixel_values"]
input_ids = tokenizer_image_token(prompt, tokenizer, -200, return_tensors="pt")[None]
with torch.no_grad():
    logits = model(input_ids=input_ids, images=pixel_values.float()).logits
chat_template = getattr(tokenizer, "chat_template", None)
torch.save({"logits": logits, "input_ids": input_ids, "pixel_values": pixel_values, "chat_template": chat_template}, out_path)
