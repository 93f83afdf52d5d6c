"""Runs inside the lmms-eval side environment: lmms-eval's own ``llava_hf`` model class, as its evaluator
drives it (``generate_until`` on one request), on a folder written by mmzoo. Prints the answer as JSON.

argv: model_folder image question max_new_tokens"""
import json
import sys

from lmms_eval.api.instance import Instance
from lmms_eval.models.simple.llava_hf import LlavaHf
from PIL import Image

folder, image_path, question, max_new_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# device_map: its default "" is refused by transformers 5 (`--model_args ...,device_map=cuda:0` on a GPU)
model = LlavaHf(pretrained=folder, device="cpu", device_map="cpu", dtype="float32")
image = Image.open(image_path).convert("RGB")
model.task_dict = {"tiny": {"test": {0: {"image": image}}}}  # what lmms-eval's evaluator sets from the task's dataset
request = Instance(request_type="generate_until",
                   arguments=(question, {"max_new_tokens": max_new_tokens, "temperature": 0}, lambda doc: [doc["image"]], 0, "tiny", "test"),
                   idx=0, metadata={"task": "tiny", "doc_id": 0, "repeats": 1})
(answer,) = model.generate_until([request])
print(json.dumps({"answer": getattr(answer, "text", answer)}))
