"""Every format pair, every architecture: bit-exact tensors and identical logits."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

import mmzoo
from mmzoo.demo.tiny import TEXT_ARCHS, VISION_ARCHS, sample_inputs

ARCHS = list(itertools.product(TEXT_ARCHS, VISION_ARCHS))
LLAVA_OK = {("llama", "clip"), ("mistral", "clip")}


def _reference(path):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(path).eval()


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("text,vision", ARCHS)
def test_roundtrip_every_pair_is_bit_exact_and_logits_match(tiny, tmp_path, text, vision):
    hf = tiny.hf(text, vision)
    fmts = ["hf", "internal"] + (["llava"] if (text, vision) in LLAVA_OK else [])
    made = {"hf": hf}
    # hf -> internal -> llava -> hf (or hf -> internal -> hf without llava), then every other pair
    chain = ["internal"] + (["llava"] if "llava" in fmts else []) + ["hf"]
    previous = hf
    for fmt in chain:
        out = tmp_path / f"chain-{fmt}"
        mmzoo.convert(previous, out, tgt_fmt=fmt, verify=True)
        made.setdefault(fmt, out)
        previous = out
    assert mmzoo.diff(hf, previous)["equal"]
    for src, tgt in itertools.permutations(fmts, 2):
        out = tmp_path / f"{src}-to-{tgt}"
        mmzoo.convert(made[src], out, tgt_fmt=tgt)
        result = mmzoo.diff(hf, out)
        assert result["equal"], result["differences"][:3]

    reference = _reference(hf)
    inputs = sample_inputs(reference)
    expected = _logits(reference, inputs)
    for fmt, path in made.items():
        got = _logits(mmzoo.load_model(path), inputs)
        assert torch.equal(got, expected), f"{fmt}: max diff {(got - expected).abs().max()}"


@pytest.mark.parametrize("text,vision", [("llama", "clip"), ("phi3", "siglip"), ("qwen2", "clip")])
def test_hf_output_loads_in_transformers_without_key_warnings(tiny, tmp_path, text, vision):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    hf = tiny.hf(text, vision)
    mmzoo.convert(hf, tmp_path / "internal", tgt_fmt="internal")
    mmzoo.convert(tmp_path / "internal", tmp_path / "hf", tgt_fmt="hf")
    model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    inputs = sample_inputs(model)
    assert torch.equal(_logits(model.eval(), inputs), _logits(_reference(hf), inputs))

    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    original = AutoProcessor.from_pretrained(hf)
    from PIL import Image

    image = Image.new("RGB", (40, 30), (200, 10, 30))
    prompt = "USER: <image>\nWhat is this? ASSISTANT:"
    ours, theirs = processor(images=image, text=prompt, return_tensors="pt"), original(images=image, text=prompt, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    n_image_tokens = int((ours["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == model.config.image_seq_length or n_image_tokens > 0


def test_bf16_and_dtype_option(tiny, tmp_path):
    hf = tiny.hf("llama", "clip", dtype="bfloat16")
    mmzoo.convert(hf, tmp_path / "same", tgt_fmt="internal")
    assert mmzoo.inspect(tmp_path / "same")["dtypes"] == {"BF16": 64}
    mmzoo.convert(hf, tmp_path / "fp32", tgt_fmt="hf", dtype="fp32")
    model = mmzoo.load_model(tmp_path / "fp32")
    reference = _reference(hf)
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert ours.dtype == torch.float32
        assert torch.equal(ours, theirs.float()), name
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"
    result = mmzoo.diff(hf, tmp_path / "fp32")
    assert not result["equal"] and all("dtype" in d["problem"] for d in result["differences"])


def test_sharded_output_and_input(tiny, tmp_path):
    hf = tiny.hf("mistral", "clip")
    mmzoo.convert(hf, tmp_path / "sharded", tgt_fmt="hf", shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 3
    for shard in shards:
        assert (tmp_path / "sharded" / shard).stat().st_size <= 100_000 + 10_000  # one tensor may overflow by its header
    mmzoo.convert(tmp_path / "sharded", tmp_path / "llava", tgt_fmt="llava", shard_size="120KB")
    assert mmzoo.diff(hf, tmp_path / "llava")["equal"]
