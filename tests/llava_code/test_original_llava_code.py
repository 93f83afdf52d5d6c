"""The `llava` output loads and runs in the original LLaVA code (transformers 4.37), with the same
logits as transformers 5.x on the hf original.

The LLaVA code pins transformers 4.37 / tokenizers < 0.19, so it runs in its own virtual environment
(tests/side_env.py: torch borrowed from the running interpreter), built once with pip from the package
index and cached in ~/.cache/mmzoo-tests/llava-env (or set MMZOO_LLAVA_PYTHON to an existing interpreter).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

import mmzoo
from mmzoo.demo.tiny import CHAT_TEMPLATE

from side_env import clean_env, llava_python as _llava_python

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def llava_python() -> str:
    return _llava_python()


@pytest.mark.parametrize("text", ["llama", "mistral"])
def test_llava_output_runs_in_the_original_llava_code(tiny, tmp_path, llava_python, text):
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    hf = tiny.hf(text, "clip")
    mmzoo.convert(hf, tmp_path / "internal", tgt_fmt="internal")
    mmzoo.convert(tmp_path / "internal", tmp_path / "llava", tgt_fmt="llava")
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (200, 10, 30)).save(image)
    prompt = "USER: <image>\nWhat is shown in the image? ASSISTANT:"
    proc = subprocess.run(
        [llava_python, str(HERE / "run_llava_code.py"), str(tmp_path / "llava" / "text_model_llava"), str(image), prompt, str(tmp_path / "out.pt")],
        capture_output=True, text=True, env=clean_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    assert theirs["chat_template"] == CHAT_TEMPLATE  # transformers 4.37 found it (in tokenizer_config.json)

    # LLaVA's builder loads weights in float16 on CPU (the script then computes in float32), so the
    # reference sees the same fp16 rounding of the weights; everything else must match exactly.
    model = LlavaForConditionalGeneration.from_pretrained(hf).half().float().eval()
    processor = mmzoo.load_processor(hf)
    ours = processor(images=Image.open(image), text=prompt, return_tensors="pt")
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])  # same image preprocessing
    ids = theirs["input_ids"][0].tolist()
    expanded = []
    for token in ids:  # LLaVA's -200 placeholder becomes image_seq_length image tokens in transformers
        expanded += [model.config.image_token_id] * model.config.image_seq_length if token == -200 else [token]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([expanded]), pixel_values=theirs["pixel_values"]).logits
    assert theirs["logits"].shape == expected.shape
    assert torch.allclose(theirs["logits"], expected, atol=1e-5), (theirs["logits"] - expected).abs().max()
