"""Runs inside the Cerebras side environment (cerebras-pytorch 2.10.0 on CPU, its torch 2.4.0, transformers 4.57.1)
with the ``src/`` folder of a Cerebras/modelzoo checkout (Release 2.10.0) on sys.path. Nothing is stubbed: every
class below is Cerebras' own, run on its CPU backend.

Given mmzoo's ``cerebras`` checkpoint folder and an H5 folder written by ``mmzoo preprocess --format cerebras``:

1. its checkpoint converter (``tools/convert_checkpoint.py`` with ``checkpoint_converters/llava.py``) converts the
   folder HF -> CS (``cs-2.9``, the newest format its LLaVA converter names) and the result back CS -> HF;
2. its ``LlavaModel`` is built from the CS config the converter wrote (``image_start_idx`` set to the one mmzoo
   recorded in data_params.json), loads the CS checkpoint with ``cerebras.pytorch.load``, and runs a batch that its
   ``LlavaHDF5MapDataProcessor`` (transforms of its LLaVA phase-2 config) reads from each H5 folder given;
3. it saves, per folder, the batch, the logits, the embeddings its ``Llava.compute_input_embeddings`` hands to the
   text model, the projected image features and the plain text embeddings, for the test to compare.

Usage: run_cerebras.py JOB.json (fields: src, checkpoint, h5_dirs, img_dir, image_size, image_start_idx, batch_size,
work, out).
"""
import json
import logging
import sys
from pathlib import Path

import torch

job = json.loads(Path(sys.argv[1]).read_text())
sys.path.insert(0, job["src"])  # the modelzoo checkout (not installed: its setup.py pins pull in far more than this needs)
work = Path(job["work"])
logging.basicConfig(level=logging.WARNING)

import cerebras.pytorch as cstorch  # noqa: E402
import yaml  # noqa: E402
from cerebras.modelzoo.data.multimodal.llava.LlavaHDF5MapDataProcessor import (  # noqa: E402
    LlavaHDF5MapDataProcessor,
    LlavaHDF5MapDataProcessorConfig,
)
from cerebras.modelzoo.models.multimodal.llava.model import LlavaModel, LlavaModelConfig  # noqa: E402
from cerebras.modelzoo.tools.convert_checkpoint import convert_checkpoint_from_file  # noqa: E402

# 1. the converter, both ways
cs_checkpoint, cs_config = convert_checkpoint_from_file("llava", "hf", "cs-2.9", job["checkpoint"], job["checkpoint"],
                                                        outputdir=str(work / "cs"))
convert_checkpoint_from_file("llava", "cs-2.9", "hf", cs_checkpoint, cs_config, outputdir=str(work / "hf-again"))

# 2. its LlavaModel with the converted weights
model_params = yaml.safe_load(Path(cs_config).read_text())["model"]
model_params["image_start_idx"] = job["image_start_idx"]
# The converter's cs-2.9 config still carries fields that the 2.10 config classes refuse as extra (all at their
# no-op values: no label smoothing, no z-loss, pre-LN, no classifier head on the vision tower)
for section, fields in ((model_params, ("label_smoothing", "z_loss_eps")), (model_params["image_model"], ("num_classes", "use_bias_in_output")),
                        (model_params["text_model"], ("norm_first", "use_ff_layer1_dropout"))):
    for name in fields:
        section.pop(name, None)
model = LlavaModel(LlavaModelConfig(**model_params))
state = cstorch.load(cs_checkpoint)["model"]
model.model.load_state_dict(state, strict=True)  # the Llava module LlavaModel wraps: every tensor, none left out
model.eval()

image_size = job["image_size"]
transforms = [  # params_llava_v1p5_pretrain_7b_phase2_MSL2K.yaml's, at this tower's image size
    {"name": "expand_to_square", "background_color": [122, 116, 104]},
    {"name": "resize", "size": image_size, "interpolation": "bicubic"},
    {"name": "center_crop", "size": image_size},
    {"name": "to_tensor"},
    {"name": "normalize", "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
]

# 3. what its pasting logic hands the text model, and the logits
seen = {}
text_model, llava = model.model.text_model, model.model


def capture_inputs(module, args, kwargs):
    seen["input_embeddings"] = kwargs["input_embeddings"].detach().clone()


def capture_projected(module, args, output):
    seen["image_features"] = output.detach().clone()


text_model.register_forward_pre_hook(capture_inputs, with_kwargs=True)
llava.projector_image_model.register_forward_hook(capture_projected)
runs = []
for h5_dir in job["h5_dirs"]:
    data_config = LlavaHDF5MapDataProcessorConfig(
        data_processor="LlavaHDF5MapDataProcessor", data_dir=h5_dir, img_data_dir=job["img_dir"],
        image_data_size=[3, image_size, image_size], transforms=transforms, batch_size=job["batch_size"], shuffle=False,
        drop_last=False, num_workers=0)
    batch = next(iter(LlavaHDF5MapDataProcessor(data_config).create_dataloader()))
    with torch.no_grad():
        loss, logits = model(batch, output_logits=True)
        text_embeddings = text_model.compute_input_embeddings(batch["text_input_ids"], None)
    runs.append({"batch": dict(batch), "logits": logits, "loss": loss, "text_embeddings": text_embeddings, **seen})
torch.save({"runs": runs, "cs_checkpoint": cs_checkpoint, "cs_keys": sorted(state), "cstorch": cstorch.__version__}, job["out"])
