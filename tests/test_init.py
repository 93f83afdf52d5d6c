"""`mmzoo init`: a new VLM from a vision encoder folder and an LLM folder."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import mmzoo
from cli_helpers import run_cli
from mmzoo.demo.tiny import build_llm, build_vision, sample_inputs


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    build_vision(root / "clip", "clip")
    build_vision(root / "siglip", "siglip")
    build_llm(root / "llama", "llama")
    build_llm(root / "phi3", "phi3")
    return root


@pytest.mark.parametrize("vision,text", [("clip", "llama"), ("siglip", "phi3")])
def test_init_builds_a_working_vlm_that_keeps_pretrained_weights(parts, tmp_path, vision, text):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    info = mmzoo.init_model(parts / vision, parts / text, tmp_path / "vlm", tgt_fmt="hf", seed=1)
    model, loading = LlavaForConditionalGeneration.from_pretrained(tmp_path / "vlm", output_loading_info=True)
    assert not any(loading[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "vlm")
    old_tokenizer = AutoTokenizer.from_pretrained(parts / text)
    assert tokenizer.convert_tokens_to_ids("<image>") == info["image_token_id"] == len(old_tokenizer)
    assert model.config.text_config.vocab_size == len(old_tokenizer) + 1

    llm = load_file(parts / text / "model.safetensors")
    new = load_file(tmp_path / "vlm" / "model.safetensors")
    embed_old, embed_new = llm["model.embed_tokens.weight"], new["language_model.model.embed_tokens.weight"]
    assert torch.equal(embed_new[:-1], embed_old)
    assert torch.allclose(embed_new[-1], embed_old.mean(0), atol=1e-7)
    vision_old = load_file(parts / vision / "model.safetensors")
    for key, tensor in vision_old.items():
        # written as vision_tower.vision_model.*, the spelling transformers 4.x and 5.x both load
        assert torch.equal(new["vision_tower.vision_model." + key.removeprefix("vision_model.")], tensor)
    with torch.no_grad():
        out = model.eval()(**sample_inputs(model))
    assert torch.isfinite(out.logits).all()


def test_seed_makes_the_projector_reproducible(parts, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        mmzoo.init_model(parts / "clip", parts / "llama", tmp_path / name, tgt_fmt="internal", seed=seed)
    assert mmzoo.diff(tmp_path / "a", tmp_path / "b")["equal"]
    differing = {d["tensor"] for d in mmzoo.diff(tmp_path / "a", tmp_path / "c")["differences"]}
    assert differing == {f"projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}


def test_linear_projector_lives_in_internal_and_llava_but_not_hf(parts, tmp_path):
    mmzoo.init_model(parts / "clip", parts / "llama", tmp_path / "lin", tgt_fmt="internal", projector="linear")
    mmzoo.convert(tmp_path / "lin", tmp_path / "lin-llava", tgt_fmt="llava")
    keys = load_file(tmp_path / "lin-llava" / "text_model_llava" / "model.safetensors").keys()
    assert "model.mm_projector.weight" in keys
    assert mmzoo.diff(tmp_path / "lin", tmp_path / "lin-llava")["equal"]
    code, _, stderr = run_cli("convert", str(tmp_path / "lin"), "-o", str(tmp_path / "lin-hf"), "--tgt-fmt", "hf")
    assert code == 2 and "no 'linear' projector" in stderr


def test_init_cli_and_errors(parts, tmp_path):
    code, stdout, stderr = run_cli("init", "--vision", str(parts / "clip"), "--text", str(parts / "llama"), "-o", str(tmp_path / "x"), "--tgt-fmt", "llava")
    assert code == 0, stderr
    assert mmzoo.detect_format(tmp_path / "x") == "llava"
    code, _, stderr = run_cli("init", "--vision", str(parts / "llama"), "--text", str(parts / "llama"), "-o", str(tmp_path / "y"))
    assert code == 2 and "vision architecture 'llama' is not supported" in stderr
    code, _, stderr = run_cli("init", "--vision", str(parts / "clip"), "--text", str(parts / "clip"), "-o", str(tmp_path / "y"))
    assert code == 2 and "LLM 'clip_vision_model' is not supported" in stderr
    assert not (tmp_path / "y").exists()


def test_full_clip_model_folder_as_vision(tmp_path, parts):
    from transformers import CLIPConfig, CLIPModel

    from mmzoo.demo.tiny import image_processor, vision_config

    config = CLIPConfig(vision_config=vision_config("clip").to_dict(), text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=100), projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path / "clip-full")
    image_processor("clip").save_pretrained(tmp_path / "clip-full")
    mmzoo.init_model(tmp_path / "clip-full", parts / "llama", tmp_path / "vlm", tgt_fmt="internal")
    info = mmzoo.inspect(tmp_path / "vlm")
    assert info["vision"] == "clip_vision_model"
    assert not any(n.startswith("image_model.text") for n in mmzoo.read_checkpoint(tmp_path / "vlm").tensors)
