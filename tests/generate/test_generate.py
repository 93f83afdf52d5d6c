"""`mmzoo generate`: greedy tokens equal transformers' generate on the hf form, for every format mmzoo reads."""
from __future__ import annotations

import json

import pytest

from tests.cli_helpers import cli_error, run_cli

MAX_NEW = 12


@pytest.fixture(scope="module")
def forms(tiny, tmp_path_factory):
    """The tiny dense model in hf, internal, llava; an upcycled MoE in internal, moe-llava and hf (remote code)."""
    from mmzoo import convert
    from mmzoo.demo.tiny import make_images

    root = tmp_path_factory.mktemp("generate")
    hf = tiny.hf("llama", "clip")
    out = {"hf": hf}
    for fmt in ("internal", "llava"):
        out[fmt] = root / fmt
        convert(hf, out[fmt], tgt_fmt=fmt)
    out["moe-internal"] = root / "moe-internal"
    convert(hf, out["moe-internal"], tgt_fmt="internal", moe=dict(num_experts=4, top_k=2, style="modality", layers="all"))
    for name, fmt in (("moe-llava", "moe-llava"), ("moe-hf", "hf")):
        out[name] = root / name
        convert(out["moe-internal"], out[name], tgt_fmt=fmt)
    # a Mixtral-style upcycle written as hf: transformers' own MoE classes, no remote code
    out["mixtral-hf"] = root / "mixtral-hf"
    convert(hf, out["mixtral-hf"], tgt_fmt="hf", moe=dict(num_experts=4, top_k=2, style="mixtral", layers="even"))
    out["image"] = make_images(root / "images", 1)[0]
    return out


def transformers_greedy(hf_folder, image, prompt_text, trust_remote_code=False):
    """The reference: the hf folder through transformers' own Auto classes and generate()."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(hf_folder)
    model = AutoModelForImageTextToText.from_pretrained(hf_folder, trust_remote_code=trust_remote_code).eval()
    inputs = processor(images=Image.open(image).convert("RGB"), text=prompt_text, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("fmt", ["hf", "internal", "llava"])
def test_dense_greedy_equals_transformers_generate(forms, fmt):
    from mmzoo.generate import generate

    result = generate(forms[fmt], "What is shown in the image?", [forms["image"]], max_new_tokens=MAX_NEW)
    assert result["prompt"] == "USER: <image>\nWhat is shown in the image?\nASSISTANT:"  # the tokenizer's chat template
    assert result["new_tokens"] > 0
    assert result["tokens"] == transformers_greedy(forms["hf"], forms["image"], result["prompt"])


@pytest.mark.parametrize("fmt", ["moe-internal", "moe-llava"])
def test_moe_greedy_equals_transformers_generate(forms, fmt):
    from mmzoo.generate import generate

    result = generate(forms[fmt], "Describe the picture.", [forms["image"]], max_new_tokens=MAX_NEW, template="vicuna_v1")
    assert result["prompt"].startswith("<s>A chat between") and result["prompt"].endswith("USER: <image>\nDescribe the picture. ASSISTANT:")
    assert result["tokens"] == transformers_greedy(forms["moe-hf"], forms["image"], result["prompt"], trust_remote_code=True)


def test_builtin_moe_hf_greedy_equals_transformers_generate(forms):
    from mmzoo.generate import generate

    result = generate(forms["mixtral-hf"], "What is shown?", [forms["image"]], max_new_tokens=MAX_NEW)
    assert result["tokens"] == transformers_greedy(forms["mixtral-hf"], forms["image"], result["prompt"])


def test_streamed_text_is_the_answer(forms):
    from mmzoo.generate import generate

    pieces: list[str] = []
    result = generate(forms["internal"], "Describe the picture.", [forms["image"]], max_new_tokens=MAX_NEW, on_text=pieces.append)
    assert len(pieces) >= 1 and "".join(pieces) == result["answer"]


def test_sampling_is_seeded(forms):
    from mmzoo.generate import generate

    a, b = (generate(forms["hf"], "hi", [forms["image"]], max_new_tokens=MAX_NEW, temperature=1.5, seed=7)["tokens"] for _ in range(2))
    assert a == b


def test_cli_json_and_stream(forms):
    code, out, err = run_cli("generate", str(forms["llava"]), "--image", str(forms["image"]), "--prompt", "What is shown?",
                             "--max-new-tokens", str(MAX_NEW), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] == transformers_greedy(forms["hf"], forms["image"], result["prompt"])
    code, out, err = run_cli("generate", str(forms["llava"]), "-i", str(forms["image"]), "-p", "What is shown?",
                             "--max-new-tokens", str(MAX_NEW))
    assert code == 0, err
    assert out == result["answer"] + "\n" and "tokens/s" in err


def test_text_only_prompt(forms):
    from mmzoo.generate import generate

    result = generate(forms["internal"], "hello", [], max_new_tokens=4)
    assert result["prompt"] == "USER: hello\nASSISTANT:" and result["new_tokens"] > 0


def test_published_llava_hf_chat_template(forms):
    """llava-hf/llava-1.5-7b-hf's published template (content parts, one <image> per image part) renders the
    image and the text, as its model card's example does."""
    from pathlib import Path

    from mmzoo.generate.prompt import render_prompt, with_image_markers
    from mmzoo.models.load import load_processor

    genuine = Path(__file__).parents[1] / "fixtures" / "genuine" / "llava-1.5-7b-hf" / "chat_template.jinja"
    tokenizer = load_processor(forms["hf"]).tokenizer
    tokenizer.chat_template = genuine.read_text()
    assert render_prompt(tokenizer, with_image_markers("What is it?", 1)) == "USER: <image>\nWhat is it? ASSISTANT:"
    assert render_prompt(tokenizer, with_image_markers("What is it?", 0)) == "USER: What is it? ASSISTANT:"


def test_plain_template_is_the_pretraining_prompt(forms):
    from mmzoo.generate.prompt import render_prompt
    from mmzoo.models.load import load_processor

    tokenizer = load_processor(forms["hf"]).tokenizer
    assert render_prompt(tokenizer, "<image>\nignored", "plain") == tokenizer.bos_token + "<image>"


def test_errors_are_one_line(forms, capsys, tmp_path):
    ckpt, image = str(forms["hf"]), str(forms["image"])
    assert "image not found" in cli_error(capsys, "generate", ckpt, "-i", str(tmp_path / "nope.png"), "-p", "hi")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert "not a readable image" in cli_error(capsys, "generate", ckpt, "-i", str(bad), "-p", "hi")
    assert "unknown template 'nope'" in cli_error(capsys, "generate", ckpt, "-i", image, "-p", "hi", "--template", "nope")
    assert "2 <image> markers" in cli_error(capsys, "generate", ckpt, "-i", image, "-p", "<image><image> hi")
    assert "at least 1" in cli_error(capsys, "generate", ckpt, "-i", image, "-p", "hi", "--max-new-tokens", "0")


def test_checkpoint_sampling_settings_do_not_leak(forms, tmp_path):
    """A generation_config.json asking for sampling, top-k 1 and a repetition penalty changes neither greedy
    decoding nor the user's sampling settings."""
    import shutil

    from mmzoo.generate import generate

    folder = tmp_path / "with-generation-config"
    shutil.copytree(forms["hf"], folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=True, top_k=1, temperature=0.01, repetition_penalty=5.0)
    (folder / "generation_config.json").write_text(json.dumps(config))
    ask = dict(prompt="hi", images=[forms["image"]], max_new_tokens=MAX_NEW)
    assert generate(folder, **ask)["tokens"] == generate(forms["hf"], **ask)["tokens"]
    samples = {tuple(generate(folder, **ask, temperature=1.5, seed=seed)["tokens"]) for seed in range(3)}
    assert len(samples) > 1  # top-k 1 would make every sample the same
