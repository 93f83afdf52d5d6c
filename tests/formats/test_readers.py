"""Readers accept the spellings real checkpoints use: transformers 4.x/5.x keys, .bin, LLaVA variants."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmzoo
from mmzoo.demo.tiny import CHAT_TEMPLATE, sample_inputs
from hf_spellings import newest, old_4x, rewrite_keys


@pytest.mark.parametrize("spelling", [old_4x, newest])
def test_hf_reader_accepts_older_and_newer_key_spellings(tiny, tmp_path, spelling):
    src = tmp_path / "src"
    shutil.copytree(tiny.hf("llama", "clip"), src)
    rewrite_keys(src, spelling)
    mmzoo.convert(src, tmp_path / "out", tgt_fmt="hf")
    assert mmzoo.diff(tiny.hf("llama", "clip"), tmp_path / "out")["equal"]


def test_bin_checkpoint_and_rotary_buffers(tiny, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny.hf("llama", "clip"), src)
    state = load_file(src / "model.safetensors")
    state["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old buffers are dropped
    state["vision_tower.embeddings.position_ids"] = torch.arange(17)[None]
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")
    mmzoo.convert(src, tmp_path / "out", tgt_fmt="internal")
    assert mmzoo.diff(tiny.hf("llama", "clip"), tmp_path / "out")["equal"]


def test_llava_reader_accepts_text_model_folder_and_genuine_4x_config(tiny, tmp_path):
    """A folder as the LLaVA code writes it: no mmzoo notes, rope_theta only at the top level."""
    mmzoo.convert(tiny.hf("llama", "clip"), tmp_path / "llava", tgt_fmt="llava")
    genuine = tmp_path / "genuine"
    shutil.copytree(tmp_path / "llava", genuine)
    (genuine / "text_model_llava").rename(genuine / "text_model")
    config_path = genuine / "text_model" / "config.json"
    config = json.loads(config_path.read_text())
    image_token = config["mmzoo"]["image_token_index"]
    for key in ("mmzoo", "rope_parameters"):
        config.pop(key)
    config_path.write_text(json.dumps(config))
    ckpt = mmzoo.read_checkpoint(genuine)
    assert ckpt.format == "llava"
    assert ckpt.spec.text_config["rope_parameters"]["rope_theta"] == 500000.0
    assert ckpt.spec.image_token_id == image_token  # found as <image> in the tokenizer
    mmzoo.convert(genuine, tmp_path / "hf", tgt_fmt="hf")
    reference = mmzoo.load_model(tiny.hf("llama", "clip"))
    inputs = sample_inputs(reference)
    with torch.no_grad():
        assert torch.equal(mmzoo.load_model(tmp_path / "hf")(**inputs).logits, reference(**inputs).logits)


def test_llava_output_speaks_transformers_4x(tiny, tmp_path):
    mmzoo.convert(tiny.hf("mistral", "clip"), tmp_path / "llava", tgt_fmt="llava", llava_vision_tower="openai/clip-vit-large-patch14-336")
    text = json.loads((tmp_path / "llava" / "text_model_llava" / "config.json").read_text())
    assert text["architectures"] == ["LlavaMistralForCausalLM"] and text["model_type"] == "llava_mistral"
    assert text["rope_theta"] == 500000.0 and text["rope_scaling"] is None and text["torch_dtype"] == "float32"
    assert text["mm_vision_tower"] == "openai/clip-vit-large-patch14-336"
    assert text["mm_projector_type"] == "mlp2x_gelu" and text["mm_vision_select_layer"] == -2
    assert text["mm_vision_select_feature"] == "patch" and text["mm_hidden_size"] == 32
    tok_cfg = json.loads((tmp_path / "llava" / "text_model_llava" / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE  # 4.x reads it here, not from chat_template.jinja
    merges = json.loads((tmp_path / "llava" / "text_model_llava" / "tokenizer.json").read_text())["model"]["merges"]
    assert isinstance(merges[0], str) and len(merges[0].split(" ")) == 2
    vision_keys = load_file(tmp_path / "llava" / "image_model" / "model.safetensors").keys()
    assert all(k.startswith("vision_model.") for k in vision_keys)  # what 4.x CLIPVisionModel expects
    text_keys = load_file(tmp_path / "llava" / "text_model_llava" / "model.safetensors").keys()
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias"} <= set(text_keys)
    assert (tmp_path / "llava" / "image_model" / "preprocessor_config.json").is_file()
    # the tokenizer still loads (and tokenizes identically) in transformers 5.x
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(tmp_path / "llava" / "text_model_llava")
    theirs = AutoTokenizer.from_pretrained(tiny.hf("mistral", "clip"))
    text_in = "USER: <image>\nDescribe the picture in detail. Ünïcödé 🙂"
    assert ours(text_in)["input_ids"] == theirs(text_in)["input_ids"]


def test_default_vision_tower_is_absolute_output_path(tiny, tmp_path):
    mmzoo.convert(tiny.hf("llama", "clip"), tmp_path / "llava", tgt_fmt="llava")
    text = json.loads((tmp_path / "llava" / "text_model_llava" / "config.json").read_text())
    assert text["mm_vision_tower"] == str((tmp_path / "llava" / "image_model").resolve())


def test_tied_embeddings_round_trip(tmp_path):
    from mmzoo.demo.tiny import build_llava, make_tokenizer

    import mmzoo.demo.tiny as tiny_mod

    original = tiny_mod.text_config

    def tied(arch, vocab_size, **kw):
        return original(arch, vocab_size, tie_word_embeddings=True, **kw)

    tiny_mod.text_config = tied
    try:
        model = build_llava(tmp_path / "hf", "llama", "clip", tokenizer=make_tokenizer())
    finally:
        tiny_mod.text_config = original
    assert model.config.text_config.tie_word_embeddings
    mmzoo.convert(tmp_path / "hf", tmp_path / "int", tgt_fmt="internal")
    assert "text_model.lm_head.weight" not in mmzoo.read_checkpoint(tmp_path / "int").tensors
    mmzoo.convert(tmp_path / "int", tmp_path / "llava", tgt_fmt="llava")
    mmzoo.convert(tmp_path / "llava", tmp_path / "hf2", tgt_fmt="hf")
    inputs = sample_inputs(model)
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        for path in ("int", "llava", "hf2"):
            assert torch.equal(mmzoo.load_model(tmp_path / path)(**inputs).logits, expected), path


def test_genuine_llava_without_image_token_gets_one_when_converted_to_hf(tmp_path):
    """Checkpoints from the LLaVA code mark images with -200 and have no <image> token."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from mmzoo.demo.tiny import build_llm, build_vision

    build_llm(tmp_path / "llm", "llama")
    build_vision(tmp_path / "clip", "clip")
    mmzoo.init_model(tmp_path / "clip", tmp_path / "llm", tmp_path / "llava", tgt_fmt="llava")
    text_dir = tmp_path / "llava" / "text_model_llava"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(tmp_path / "llm" / name, text_dir / name)
    state = load_file(text_dir / "model.safetensors")
    vocab = len(AutoTokenizer.from_pretrained(tmp_path / "llm"))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = state[key][:vocab].clone()
    save_file(state, text_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((text_dir / "config.json").read_text())
    config.pop("mmzoo")
    config["vocab_size"] = vocab
    (text_dir / "config.json").write_text(json.dumps(config))
    assert mmzoo.read_checkpoint(tmp_path / "llava").spec.image_token_id is None

    result = mmzoo.convert(tmp_path / "llava", tmp_path / "hf", tgt_fmt="hf", verify=True)
    assert any("<image>" in note for note in result.notes)
    model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.image_token_id == vocab and model.config.text_config.vocab_size == vocab + 1
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").convert_tokens_to_ids("<image>") == vocab
    embed = model.get_input_embeddings().weight.detach()
    assert torch.equal(embed[:vocab], state["model.embed_tokens.weight"])
    assert torch.allclose(embed[vocab], state["model.embed_tokens.weight"].mean(0), atol=1e-7)
    with torch.no_grad():
        assert torch.isfinite(model(**sample_inputs(model)).logits).all()
