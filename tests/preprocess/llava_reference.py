"""Run the original LLaVA code's preprocessing on a corpus (executed by the LLaVA venv's python).

usage: llava_reference.py TOKENIZER_DIR TEMPLATE CORPUS.json OUT.json

The tokenizer is set up as LLaVA's train.py does (use_fast=False, model_max_length 2048, right
padding, pad = unk); each sample goes through LazySupervisedDataset's steps: preprocess_multimodal
when it has an image, then preprocess (preprocess_v1 / preprocess_plain). Output per sample:
input_ids (image = -200), labels (-100 = no loss), or the exception LLaVA raised.
"""
import copy
import json
import sys

import transformers
from llava import conversation as conversation_lib
from llava.train import train as llava_train

folder, template, corpus_path, out_path = sys.argv[1:5]
tokenizer = transformers.AutoTokenizer.from_pretrained(folder, model_max_length=2048, padding_side="right", use_fast=False)
tokenizer.pad_token = tokenizer.unk_token
conversation_lib.default_conversation = conversation_lib.conv_templates[template]


class DataArguments:
    is_multimodal = True
    mm_use_im_start_end = False


results = []
for sample in json.loads(open(corpus_path, encoding="utf-8").read()):
    has_image = "image" in sample
    sources = [copy.deepcopy(sample["conversations"])]
    try:
        if has_image:
            sources = llava_train.preprocess_multimodal(sources, DataArguments())
        out = llava_train.preprocess(sources, tokenizer, has_image=has_image)
        ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
        results.append({"id": sample["id"], "input_ids": ids, "labels": labels})
    except Exception as exc:  # noqa: BLE001 - LLaVA asserts/raises on shapes it does not support
        results.append({"id": sample["id"], "error": f"{type(exc).__name__}: {exc}"})
with open(out_path, "w", encoding="utf-8") as f:
    json.dump({"legacy": tokenizer.legacy, "results": results}, f)
