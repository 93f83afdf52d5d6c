"""Checkpoints whose configuration files are the published ones (tests/fixtures/genuine), with only depth
and width shrunk for the synthesized weights: every config field of mmzoo's outputs is checked, the
outputs load in transformers 5 and 4.46 without missing keys, and the genuine LLaVA-repo folder gives
the original LLaVA code's logits after conversion to hf.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import mmzoo
from mmzoo.errors import UnknownFormat
from mmzoo.demo.tiny import sample_inputs
import real_tokenizers
from side_env import llava_python, read_with_transformers4, run_side_script

GENUINE = Path(__file__).parents[1] / "fixtures" / "genuine"
HERE = Path(__file__).parent
TEXT_SHRINK = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
VISION_SHRINK = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, projection_dim=16)
LLAVA_HF_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                  "chat_template.jinja", "generation_config.json", "preprocessor_config.json", "processor_config.json")
LAYER = re.compile(r"\.layers\.(\d+)\.")


def _genuine(name: str) -> dict:
    return json.loads((GENUINE / name).read_text())


def _published_llava_hf_name(key: str) -> str:
    """transformers 5's in-memory names -> the spelling of the published llava-1.5-7b-hf shards."""
    for memory, published in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                              ("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.", "multi_modal_projector.")):
        if key.startswith(memory):
            return published + key[len(memory):]
    raise AssertionError(key)


def _published_keys(index: dict, text_layers: int, vision_layers: int) -> set[str]:
    """The genuine index's tensor names, cut to the shrunk depth."""
    keep = set()
    for key in index["weight_map"]:
        layer = LAYER.search(key)
        depth = vision_layers if key.startswith("vision_tower.") else text_layers
        if layer is None or int(layer.group(1)) < depth:
            keep.add(key)
    return keep


def _expected_hf_config(published: dict) -> dict:
    """Every published field as it was, plus what mmzoo states explicitly: image_seq_length (without it
    readers assume 576 whatever the tower), the projector bias and the dtype under its 5.x name; the
    transformers_version of the original writer is not carried over (mmzoo wrote this file)."""
    expected = {k: v for k, v in published.items() if k != "transformers_version"}
    return {**expected, "image_seq_length": 576, "multimodal_projector_bias": True, "dtype": published["torch_dtype"]}


def _same_tensors(a: Path, b: Path) -> bool:
    """The same tensor names, dtypes and bytes (the configs are checked field by field separately)."""
    from safetensors.torch import load_file

    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return left.keys() == right.keys() and all(left[k].dtype == right[k].dtype and torch.equal(left[k], right[k]) for k in left)


def _randomize(model, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05 + (1.0 if param.ndim == 1 else 0.0))


@pytest.fixture(scope="module")
def llava_hf(tmp_path_factory) -> Path:
    """llava-hf/llava-1.5-7b-hf: its published config, tokenizer/processor/template files; weights synthesized at shrunk size, float16, in the published key spelling."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    folder = tmp_path_factory.mktemp("genuine") / "llava-1.5-7b-hf"
    folder.mkdir()
    config = _genuine("llava-1.5-7b-hf/config.json")
    config["text_config"].update(TEXT_SHRINK)
    config["vision_config"].update(VISION_SHRINK)
    model = LlavaForConditionalGeneration(LlavaConfig.from_dict(config))
    _randomize(model)
    state = {_published_llava_hf_name(k): v.half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in LLAVA_HF_FILES:
        shutil.copyfile(GENUINE / "llava-1.5-7b-hf" / name, folder / name)
    return folder


def test_synthesized_llava_hf_has_the_published_tensor_names(llava_hf):
    with safe_open(llava_hf / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert names == _published_keys(_genuine("llava-1.5-7b-hf/model.safetensors.index.json"), 2, 3)


def test_llava_hf_to_hf_keeps_every_published_field(llava_hf, tmp_path):
    out = tmp_path / "hf"
    mmzoo.convert(llava_hf, out, tgt_fmt="hf", verify=True)
    source = json.loads((llava_hf / "config.json").read_text())
    written = json.loads((out / "config.json").read_text())
    assert written == _expected_hf_config(source)
    with safe_open(out / "model.safetensors", "pt") as f:  # the published spelling, which 4.x and 5.x both load
        assert set(f.keys()) == _published_keys(_genuine("llava-1.5-7b-hf/model.safetensors.index.json"), 2, 3)
    assert _same_tensors(llava_hf, out)
    for name in ("special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (llava_hf / name).read_bytes(), name
    assert json.loads((out / "preprocessor_config.json").read_text()) == json.loads((llava_hf / "preprocessor_config.json").read_text())
    assert json.loads((out / "processor_config.json").read_text()) == json.loads((llava_hf / "processor_config.json").read_text())
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    published = json.loads((llava_hf / "tokenizer_config.json").read_text())
    # the published class stays; the chat template is added where a 4.x tokenizer reads it
    assert tokenizer_config == {**published, "chat_template": json.loads((llava_hf / "chat_template.json").read_text())["chat_template"]}


def test_llava_hf_through_the_llava_layout_and_back_keeps_every_field(llava_hf, tmp_path):
    mmzoo.convert(llava_hf, tmp_path / "repo", tgt_fmt="llava")
    text = json.loads((tmp_path / "repo" / "text_model_llava" / "config.json").read_text())
    assert text["architectures"] == ["LlavaLlamaForCausalLM"] and text["model_type"] == "llava_llama"
    assert (text["mm_hidden_size"], text["mm_projector_type"], text["mm_vision_select_layer"], text["mm_vision_select_feature"]) == (32, "mlp2x_gelu", -2, "patch")
    assert text["vocab_size"] == 32064 and text["max_position_embeddings"] == 4096 and text["rms_norm_eps"] == 1e-05
    vision = json.loads((tmp_path / "repo" / "image_model" / "config.json").read_text())
    assert {k: vision[k] for k in ("image_size", "patch_size", "hidden_size", "num_hidden_layers")} == {"image_size": 336, "patch_size": 14, "hidden_size": 32, "num_hidden_layers": 3}
    mmzoo.convert(tmp_path / "repo", tmp_path / "back", tgt_fmt="hf")
    source = json.loads((llava_hf / "config.json").read_text())
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back == _expected_hf_config(source)
    assert _same_tensors(llava_hf, tmp_path / "back")


def test_llava_hf_output_loads_in_transformers_5_and_4(llava_hf, tmp_path):
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "hf"
    mmzoo.convert(llava_hf, out, tgt_fmt="hf")
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.image_seq_length == 576
    model = model.float().eval()
    inputs = sample_inputs(model.config, seq_text=4)
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).logits
    (seen,) = read_with_transformers4([{"folder": str(out), "inputs": str(tmp_path / "inputs.pt"), "model_only": True}], tmp_path)
    assert "error" not in seen, seen.get("error")
    assert seen["loading_info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    assert seen["image_seq_length"] == 576
    # 4.x loads float16 weights as float32 by default; 5.x keeps float16 until .float(): the same values
    assert (seen["logits"] - expected).abs().max() <= 1e-4


# --- liuhaotian/llava-v1.5-7b: the original LLaVA repository's layout ---------------------------------------------

VISION_TOWER = "openai/clip-vit-large-patch14-336"


def _hub_cache_with_clip(cache: Path) -> Path:
    """A Hugging Face cache holding a (shrunk) openai/clip-vit-large-patch14-336: a full CLIPModel with its
    text half, as published, in the cache layout huggingface_hub reads offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    revision = "0" * 40
    snapshot = cache / "models--openai--clip-vit-large-patch14-336" / "snapshots" / revision
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100, max_position_embeddings=77),
        vision_config=dict(image_size=336, patch_size=14, **VISION_SHRINK), projection_dim=16,
    )
    model = CLIPModel(config)
    _randomize(model, seed=1)
    model.save_pretrained(snapshot)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(snapshot)
    (cache / "models--openai--clip-vit-large-patch14-336" / "refs").mkdir()
    (cache / "models--openai--clip-vit-large-patch14-336" / "refs" / "main").write_text(revision)
    return snapshot


def _liuhaotian_folder(folder: Path, *, separate_projector: bool) -> None:
    """liuhaotian/llava-v1.5-7b's published config.json (shrunk), LLaVA's key layout, float16, and the
    LLaVA-1.5 tokenizer as its checkpoints ship it (the real Llama-2 tokenizer.model and the published
    tokenizer files, tests/real_tokenizers.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    config = _genuine("llava-v1.5-7b/config.json")
    config.update(TEXT_SHRINK, mm_hidden_size=VISION_SHRINK["hidden_size"])
    llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if not k.startswith("mm_") and k != "model_type"}))
    _randomize(llm, seed=2)
    state = {k: v.half().contiguous() for k, v in llm.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    projector = {
        "model.mm_projector.0.weight": torch.randn(64, 32, generator=gen).half(), "model.mm_projector.0.bias": torch.randn(64, generator=gen).half(),
        "model.mm_projector.2.weight": torch.randn(64, 64, generator=gen).half(), "model.mm_projector.2.bias": torch.randn(64, generator=gen).half(),
    }
    if separate_projector:  # as LLaVA's pretraining stage saves it
        torch.save(projector, folder / "mm_projector.bin")
        # LLaVA 1.2's own save_pretrained writes llava_llama; with the published "llava" (written by an
        # earlier LLaVA), LLaVA's --model-base path resolves transformers' own LlavaConfig and fails
        config["model_type"] = "llava_llama"
    else:
        state.update(projector)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for item in real_tokenizers.llava_v15().iterdir():  # tokenizer.model + the published tokenizer_config / special tokens
        shutil.copyfile(item, folder / item.name)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    snapshot = _hub_cache_with_clip(cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return snapshot


@pytest.mark.parametrize("separate_projector", [False, True], ids=["projector-in-weights", "mm_projector.bin"])
def test_liuhaotian_layout_to_hf_keeps_every_field_and_gives_the_llava_code_logits(tmp_path, hub_cache, separate_projector):
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    repo = tmp_path / "llava-v1.5-7b"
    _liuhaotian_folder(repo, separate_projector=separate_projector)
    assert mmzoo.detect_format(repo) == "llava"  # model_type "llava" + LlavaLlamaForCausalLM: the LLaVA repo, not transformers
    result = mmzoo.convert(repo, tmp_path / "hf", tgt_fmt="hf", verify=True)
    assert any("added the <image> token" in note for note in result.notes)
    published = json.loads((repo / "config.json").read_text())
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    clip = json.loads((hub_cache / "config.json").read_text())["vision_config"]

    llava_only = {k for k in published if k.startswith(("mm_", "tune_mm", "freeze_mm", "unfreeze_mm")) or k in ("image_aspect_ratio", "use_mm_proj", "_name_or_path")}
    expected_text = {k: v for k, v in published.items() if k not in llava_only}
    expected_text.update(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=written["text_config"]["vocab_size"])
    assert written["text_config"] == expected_text
    # the published tokenizer files (tokenizer.model, no tokenizer.json) stay; <image> is added to tokenizer_config.json
    added = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert [(k, v["content"]) for k, v in added.items()] == [("32000", "<image>")]
    assert written["image_seq_length"] == 576 and written["image_token_index"] == 32000
    assert (written["vision_feature_layer"], written["vision_feature_select_strategy"], written["projector_hidden_act"]) == (-2, "default", "gelu")
    assert written["vision_config"]["model_type"] == "clip_vision_model"
    assert {k: written["vision_config"][k] for k in ("image_size", "patch_size", "hidden_size", "num_hidden_layers")} == {k: clip[k] for k in ("image_size", "patch_size", "hidden_size", "num_hidden_layers")}
    assert written["architectures"] == ["LlavaForConditionalGeneration"] and written["model_type"] == "llava"

    # the reference: the original LLaVA code loads the published layout (vision tower by name, from the cache)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (200, 10, 30)).save(image)
    prompt = "USER: <image>\nWhat is shown in the image? ASSISTANT:"
    reference = [str(repo), str(image), prompt, str(tmp_path / "theirs.pt")]
    if separate_projector:  # LLaVA reads mm_projector.bin only with --model-base: the LLM from one folder, the projector from the other
        pretrain, base = tmp_path / "llava-pretrain", tmp_path / "vicuna"
        pretrain.mkdir()
        for name in ("config.json", "mm_projector.bin"):
            shutil.copyfile(repo / name, pretrain / name)
        shutil.copytree(repo, base, ignore=shutil.ignore_patterns("mm_projector.bin"))
        reference = [str(pretrain), str(image), prompt, str(tmp_path / "theirs.pt"), str(base)]
    run_side_script(llava_python(), HERE.parent / "llava_code" / "run_llava_code.py", *reference)
    theirs = torch.load(tmp_path / "theirs.pt")
    model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    model = model.float().eval()
    processor = mmzoo.load_processor(tmp_path / "hf")
    ours = processor(images=Image.open(image), text=prompt, return_tensors="pt")
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    ids = []
    for token in theirs["input_ids"][0].tolist():
        ids += [model.config.image_token_id] * model.config.image_seq_length if token == -200 else [token]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids]), pixel_values=theirs["pixel_values"]).logits
    assert theirs["logits"].shape[1] == expected.shape[1]
    vocab = theirs["logits"].shape[-1]  # the hf output grew one row for <image>; LLaVA's model has none
    # float32 throughout; transformers 4.37 and 5.x order the attention sums differently over 580 positions
    # (measured max |Δ| 4.8e-5 on logits of magnitude ~1; a lost field or a wrong tensor gives > 1e-1)
    assert (theirs["logits"] - expected[..., :vocab]).abs().max() <= 1e-4


def test_liuhaotian_vision_tower_not_cached_is_one_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "llava-v1.5-7b"
    _liuhaotian_folder(repo, separate_projector=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UnknownFormat, match="neither a local folder nor in the Hugging Face cache; download it"):
        mmzoo.convert(repo, tmp_path / "hf", tgt_fmt="hf")


def test_projector_only_folder_is_one_clear_error(tmp_path, hub_cache):
    repo = tmp_path / "llava-v1.5-7b"
    _liuhaotian_folder(repo, separate_projector=True)
    (repo / "model.safetensors").unlink()
    with pytest.raises(UnknownFormat, match="holds only the projector"):
        mmzoo.convert(repo, tmp_path / "hf", tgt_fmt="hf")


# --- MoE-LLaVA's published checkpoints: LLMs mmzoo does not read -------------------------------------------------

@pytest.mark.parametrize("model_type, architecture, name", [
    ("moe_llava_stablelm", "MoELLaVAStablelmForCausalLM", "StableLM"),
    ("moe_llava_phi", "MoELLaVAPhiForCausalLM", "Phi-2"),
    ("moe_llava_qwen", "MoELLaVAQWenForCausalLM", "Qwen-1"),
])
def test_published_moe_llava_llms_are_refused_in_one_line(tmp_path, model_type, architecture, name):
    """The published MoE-LLaVA checkpoints (LanguageBind/MoE-LLaVA-*) are built on StableLM, Phi-2 and
    Qwen-1, whose code is MoE-LLaVA's own (their config files are not reachable here, see
    tests/fixtures/genuine/README.md): the fields that identify them give one clear line, exit 2."""
    from cli_helpers import run_cli

    folder = tmp_path / "moe-llava"
    folder.mkdir()
    config = {"architectures": [architecture], "model_type": model_type, "mm_image_tower": "openai/clip-vit-large-patch14-336",
              "moe": {"moe_enable": True, "moe_mode": "sparse", "moe_layers_idx": [0], "num_experts": [4], "top_k_experts": 2}}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, folder / "model.safetensors")
    code, _, stderr = run_cli("convert", str(folder), "-o", str(tmp_path / "out"), "--tgt-fmt", "hf")
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("mmzoo: error:"), stderr
    assert f"MoE-LLaVA with a {name} LLM ({model_type}) is not supported" in stderr
    assert not (tmp_path / "out").exists()
