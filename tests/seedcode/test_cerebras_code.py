"""Cerebras modelzoo's own code (Release 2.10.0) on mmzoo's outputs, on CPU, nothing stubbed:

- its checkpoint converter (``tools/convert_checkpoint.py`` + ``checkpoint_converters/llava.py``) converts mmzoo's
  ``cerebras`` folder HF -> CS and back, and mmzoo reads what it writes back, every tensor bit-exact;
- its ``LlavaModel``, built from the converter's CS config and loading the converted CS checkpoint, runs a batch that
  its ``LlavaHDF5MapDataProcessor`` reads from ``mmzoo preprocess --format cerebras`` files: its pasting logic
  (``Llava.compute_input_embeddings``) puts the projected image features exactly on the image positions and leaves
  every other position's text embedding as it is, and its logits equal transformers' LlavaForConditionalGeneration
  on the same tokens, image and attention mask; fed the generic ``--format cerebras-multimodal`` files instead, it
  overwrites attended text of the text-only sample (why ``cerebras`` reserves a masked dummy-image slot).

The code runs in a side environment, ~/.cache/mmzoo-tests/cerebras-env (built once with pip, about 6 GB: cerebras-pytorch
2.10.0 pins torch 2.4.0, whose PyPI wheel pulls the CUDA libraries, though only the CPU is used), isolated from the
global site-packages. Cerebras modelzoo itself is not on PyPI: set MMZOO_CEREBRAS_MODELZOO_SRC to the ``src/`` folder
of a Cerebras/modelzoo checkout (Release_2.10.0); without it the tests are skipped and say so. The runner is
run_cerebras.py (what it runs and the six config fields it drops are listed there).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mmzoo
from mmzoo.io.tensors import materialize
from test_cerebras_preprocess import ROWS as PREPROCESS_ROWS

HERE = Path(__file__).parent
PACKAGES = ["cerebras-pytorch==2.10.0", "torchvision==0.19.0", "pydantic==2.8.2", "h5py==3.13.0", "Pillow==10.4.0",
            "transformers==4.57.1", "tokenizers==0.22.1", "safetensors==0.4.5", "sentencepiece==0.2.1", "pyyaml",
            "tabulate==0.9.0", "jsonschema==4.23.0", "slack-sdk==3.33.1", "termcolor==3.2.0", "deepdiff>=8.6.1,<9",
            "click==8.3.0", "argcomplete==3.6.3", "more-itertools==10.5.0", "filelock==3.20.0", "scipy==1.15.3"]
PROBE = ("import sys, torch, h5py, yaml, torchvision, slack_sdk, deepdiff, cerebras.pytorch as cstorch; "
         "assert cstorch.__version__ == '2.10.0' and torch.__version__.startswith('2.4.0'); "
         "assert all(sys.prefix in p or 'site-packages' not in p for p in sys.path), sys.path")
MSL = 256
# the samples of the preprocess tests that its LlavaModel takes: an image that ends its turn, text only, an image first
ROWS = [row for row in PREPROCESS_ROWS if row["id"] in ("end", "text", "start")]


@pytest.fixture(scope="module")
def modelzoo_src() -> Path:
    src = os.environ.get("MMZOO_CEREBRAS_MODELZOO_SRC")
    if not src:
        pytest.skip("Cerebras modelzoo is not on PyPI: set MMZOO_CEREBRAS_MODELZOO_SRC to the src/ folder of a Cerebras/modelzoo checkout")
    if not (Path(src) / "cerebras" / "modelzoo" / "models" / "multimodal" / "llava" / "model.py").is_file():
        pytest.fail(f"MMZOO_CEREBRAS_MODELZOO_SRC={src} holds no cerebras/modelzoo/models/multimodal/llava/model.py")
    return Path(src)


@pytest.fixture(scope="module")
def cerebras_run(modelzoo_src, tiny, tmp_path_factory):
    from side_env import run_side_script, side_python

    from mmzoo.preprocess import preprocess
    from mmzoo.demo.tiny import make_images

    python = side_python("cerebras-env", PACKAGES, PROBE, override_env="MMZOO_CEREBRAS_PYTHON", isolated=True)
    root = tmp_path_factory.mktemp("cerebras-code")
    hf = tiny.hf("llama", "clip")
    mmzoo.convert(hf, root / "cb", tgt_fmt="cerebras")
    make_images(root / "images", 2)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    manifest = preprocess([root / "data.jsonl"], root / "images", hf, root / "h5", template="vicuna_v1", model=hf,
                          max_seq_len=MSL, format="cerebras")
    assert manifest["statistics"]["samples_written"] == len(ROWS)
    preprocess([root / "data.jsonl"], root / "images", hf, root / "h5-generic", template="vicuna_v1", model=hf,
               max_seq_len=MSL, format="cerebras-multimodal")
    image_size = json.loads((root / "cb" / "image_model" / "config.json").read_text())["image_size"]
    job = {"src": str(modelzoo_src), "checkpoint": str(root / "cb"), "h5_dirs": [str(root / "h5"), str(root / "h5-generic")], "img_dir": str(root / "images"),
           "image_size": image_size, "image_start_idx": manifest["image_start_idx"], "batch_size": len(ROWS),
           "work": str(root / "work"), "out": str(root / "out.pt")}
    (root / "job.json").write_text(json.dumps(job))
    run_side_script(python, HERE / "run_cerebras.py", str(root / "job.json"))
    return root, manifest, torch.load(root / "out.pt", weights_only=False)


def test_its_converter_round_trips_mmzoos_folder_bit_exact(cerebras_run, tmp_path):
    import shutil

    root, _, theirs = cerebras_run
    assert theirs["cstorch"] == "2.10.0" and Path(theirs["cs_checkpoint"]).is_file()
    back = root / "work" / "hf-again"  # CS -> HF: image_model/ + text_model/ with pytorch_model-*.bin and an index
    assert mmzoo.inspect(back)["format"] == "cerebras"
    ours, again = mmzoo.read_checkpoint(root / "cb"), mmzoo.read_checkpoint(back)
    assert set(again.tensors) == set(ours.tensors)
    for name in ours.tensors:
        assert torch.equal(materialize(again.tensors[name]), materialize(ours.tensors[name])), name
    assert again.spec.projector_type == "mlp2x_gelu" and again.spec.vision_feature_layer == ours.spec.vision_feature_layer
    # it writes no tokenizer back: with the original's tokenizer files in text_model/ (its README's setup) the image
    # token is known again and the folder converts to hf like the original
    shutil.copytree(back, tmp_path / "back")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(root / "cb" / "text_model" / name, tmp_path / "back" / "text_model" / name)
    mmzoo.convert(tmp_path / "back", tmp_path / "hf", tgt_fmt="hf", verify=True)
    assert mmzoo.read_checkpoint(tmp_path / "hf").spec.image_token_id == ours.spec.image_token_id


def test_its_llava_model_pastes_the_image_on_the_image_positions(cerebras_run):
    root, manifest, theirs = cerebras_run
    start, patches = manifest["image_start_idx"], manifest["parameters"]["num_image_tokens"]
    theirs = theirs["runs"][0]
    batch = theirs["batch"]
    (path,) = sorted((root / "h5").glob("*.h5"))
    with h5py.File(path) as f:
        data = f["data"][:]
    # what its data processor fed the model is mmzoo's file, channel for channel
    for channel, name in enumerate(["text_input_ids", "loss_mask", "labels", "key_padding_mask"]):
        assert np.array_equal(batch[name].numpy(), data[:, channel]), name
    pasted, features, text = theirs["input_embeddings"], theirs["image_features"], theirs["text_embeddings"]
    assert features.shape[1] == patches  # one projected feature per placeholder mmzoo reserved
    assert torch.equal(pasted[:, start:start + patches], features)
    others = torch.ones(MSL, dtype=torch.bool)
    others[start:start + patches] = False
    assert torch.equal(pasted[:, others], text[:, others])  # no text position overwritten
    assert (data[:, 4, start:start + patches] == 1).all() and (data[:, 4, others.numpy()] == 0).all()
    assert data[1, 3, start:start + patches].all()  # the text-only sample's blank image is not attended


def test_its_logits_equal_the_transformers_model(cerebras_run, tiny):
    from transformers import LlavaForConditionalGeneration

    root, _, theirs = cerebras_run
    theirs = theirs["runs"][0]
    batch = theirs["batch"]
    model = LlavaForConditionalGeneration.from_pretrained(tiny.hf("llama", "clip")).eval()
    (path,) = sorted((root / "h5").glob("*.h5"))
    with h5py.File(path) as f:
        data = f["data"][:]
    for k, row in enumerate(ROWS):
        if "image" not in row:
            continue
        ids = torch.from_numpy(data[k, 0]).long()
        ids[torch.from_numpy(data[k, 4]).bool()] = model.config.image_token_id  # mmzoo stores placeholders as pad
        attended = torch.from_numpy(1 - data[k, 3]).long()
        with torch.no_grad():
            expected = model(input_ids=ids[None], pixel_values=batch["image_data"][k:k + 1], attention_mask=attended[None]).logits[0]
        keep = attended.bool()
        difference = (theirs["logits"][k][keep] - expected[keep]).abs().max()
        assert difference < 1e-5, (row["id"], difference)


def test_the_generic_layout_would_have_text_overwritten(cerebras_run):
    """The control: without the dummy slot, the blank image's features land on the text-only sample's real text."""
    root, manifest, theirs = cerebras_run
    start, patches = manifest["image_start_idx"], manifest["parameters"]["num_image_tokens"]
    generic = theirs["runs"][1]
    with h5py.File(next((root / "h5-generic").glob("*.h5"))) as f:
        data = f["data"][:]
    window = slice(start, start + patches)
    k = [r["id"] for r in ROWS].index("text")
    assert not data[k, 3, window].any() and not data[k, 4, window].any()  # attended text tokens sit there
    assert torch.equal(generic["input_embeddings"][k, window], generic["image_features"][k])  # pasted over them
    assert not torch.equal(generic["input_embeddings"][k, window], generic["text_embeddings"][k, window])
