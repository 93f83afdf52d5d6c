"""Runs in the transformers 4.46 side environment (tests/side_env.py): reads every hf folder of a job
list the way a transformers 4.x user does and saves what it saw for the test to compare.

argv: jobs.json. Each job: {"folder", "inputs" (torch file: input_ids, pixel_values, attention_mask),
"image", "prompt", "messages", "texts", "out", "remote", "model_only"}.
"""
import json
import sys
import traceback

import torch
import transformers
from PIL import Image
from transformers import AutoModelForVision2Seq, AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration


def read(job):
    folder = job["folder"]
    if job.get("remote"):  # mmzoo's remote MoE code is written for transformers 5.x: record how 4.x fails
        try:
            AutoModelForVision2Seq.from_pretrained(folder, trust_remote_code=True)
            return {"remote_loaded": True}
        except Exception as exc:  # noqa: BLE001 - the failure itself is the result
            return {"remote_loaded": False, "remote_error": f"{type(exc).__name__}: {exc}"[:500]}
    model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    model.eval()
    inputs = torch.load(job["inputs"])
    with torch.no_grad():
        logits = model(**inputs).logits
    if job.get("model_only"):  # a folder without a loadable tokenizer (genuine configs, synthesized weights)
        return {"loading_info": {k: sorted(map(str, v)) for k, v in info.items()}, "logits": logits,
                "image_seq_length": model.config.image_seq_length, "language_model": type(model.language_model).__name__}
    processor = AutoProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processed = processor(images=Image.open(job["image"]), text=job["prompt"], return_tensors="pt")
    return {
        "loading_info": {k: sorted(map(str, v)) for k, v in info.items()},
        "language_model": type(model.language_model).__name__,
        "vision_model": type(model.vision_tower).__name__,
        "logits": logits,
        "processor_class": type(processor).__name__,
        "tokenizer_class": type(tokenizer).__name__,
        "processor_chat_template": processor.chat_template,
        "tokenizer_chat_template": tokenizer.chat_template,
        "chat": tokenizer.apply_chat_template(job["messages"], tokenize=False, add_generation_prompt=True),
        "encoded": [tokenizer(text)["input_ids"] for text in job["texts"]],
        "processed_input_ids": processed["input_ids"],
        "processed_pixel_values": processed["pixel_values"],
        "rope_theta": getattr(model.config.text_config, "rope_theta", None),
        "image_seq_length": model.config.image_seq_length,
    }


def main():
    for job in json.load(open(sys.argv[1])):
        try:
            result = read(job)
        except Exception:  # noqa: BLE001 - reported per folder so one failure does not hide the others
            result = {"error": traceback.format_exc()[-4000:]}
        result["transformers_version"] = transformers.__version__
        torch.save(result, job["out"])


if __name__ == "__main__":
    main()
