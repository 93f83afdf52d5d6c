"""Every hf folder mmzoo writes loads in transformers 4.46 (the last 4.x line, what the research code of
LLaVA, MoE-LLaVA, LLaVA-MoD, MoIIE and LibMoE pins) exactly as in transformers 5.x: no missing or
unexpected keys, the same logits, the same tokenizer, processor and chat template.

transformers 4.46.3 runs in its own cached virtual environment (tests/side_env.py; set
MMZOO_TRANSFORMERS4_PYTHON to use another interpreter). All folders are read by one subprocess.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import mmzoo
from mmzoo.demo.tiny import build_llm, build_vision, sample_inputs
from hf_spellings import newest as newest_spelling, rewrite_keys
from side_env import read_with_transformers4

PROMPT = "USER: <image>\nWhat is shown in the image? ASSISTANT:"
MESSAGES = [{"role": "user", "content": "What is shown?"}, {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Where?"}]
TEXTS = ["A photo of a cat sitting on a red sofa.", " two  spaces", "Ünïcödé 数字 🙂 </s> <image>"]
DENSE = [(text, vision) for text in ("llama", "mistral", "qwen2", "phi3") for vision in ("clip", "siglip")]
MOE = {"mixtral": dict(style="mixtral", layers="all"), "qwen2_moe": dict(style="shared", layers="even")}
TOL = 1e-5
QKV_BIAS = re.compile(r"^language_model\.model\.layers\.\d+\.self_attn\.[qkv]_proj\.bias$")


def _cases(tiny, root: Path) -> dict[str, dict]:
    """name -> {"out": hf folder mmzoo wrote, "ref": hf folder whose transformers 5.x logits are expected}."""
    cases: dict[str, dict] = {}
    for text, vision in DENSE:  # every dense architecture, from a folder transformers 5.x saved
        src = tiny.hf(text, vision)
        mmzoo.convert(src, root / f"dense-{text}-{vision}", tgt_fmt="hf")
        cases[f"dense-{text}-{vision}"] = {"out": root / f"dense-{text}-{vision}", "ref": src}
    src = tiny.hf("llama", "clip")
    newest = root / "src-newest"
    shutil.copytree(src, newest)
    rewrite_keys(newest, newest_spelling)
    mmzoo.convert(newest, root / "from-newest-spelling", tgt_fmt="hf")
    cases["from-newest-spelling"] = {"out": root / "from-newest-spelling", "ref": src}
    for fmt in ("internal", "llava"):
        mmzoo.convert(src, root / f"src-{fmt}", tgt_fmt=fmt)
        mmzoo.convert(root / f"src-{fmt}", root / f"from-{fmt}", tgt_fmt="hf")
        cases[f"from-{fmt}"] = {"out": root / f"from-{fmt}", "ref": src}
    mmzoo.convert(src, root / "src-moe-llava", tgt_fmt="moe-llava", moe=dict(num_experts=4, top_k=2, style="mixtral", layers="all", targets=["text"]))
    mmzoo.convert(root / "src-moe-llava", root / "from-moe-llava", tgt_fmt="hf")
    cases["from-moe-llava"] = {"out": root / "from-moe-llava", "ref": root / "from-moe-llava"}
    build_vision(root / "parts-siglip", "siglip")
    build_llm(root / "parts-phi3", "phi3")
    info = mmzoo.init_model(root / "parts-siglip", root / "parts-phi3", root / "init", tgt_fmt="hf", seed=1)
    cases["init"] = {"out": root / "init", "ref": root / "init", "notes": info["notes"]}
    for name, moe in MOE.items():  # the upcycles transformers expresses with built-in classes
        mmzoo.convert(src, root / f"upcycle-{name}", tgt_fmt="hf", moe=dict(num_experts=4, top_k=2, targets=["text"], **moe))
        cases[f"upcycle-{name}"] = {"out": root / f"upcycle-{name}", "ref": src}
    return cases


@pytest.fixture(scope="module")
def read_by_4x(tiny, tmp_path_factory):
    """Builds every case, reads them all in transformers 4.46 in one subprocess; name -> (case, result)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("t4")
    cases = _cases(tiny, root)
    remote = root / "upcycle-modality"
    mmzoo.convert(tiny.hf("llama", "clip"), remote, tgt_fmt="hf", moe=dict(num_experts=4, top_k=2, style="modality", layers="even", targets=["text"]))
    image = root / "image.png"
    Image.new("RGB", (40, 30), (200, 10, 30)).save(image)
    jobs = []
    for name, case in cases.items():
        case["inputs"] = sample_inputs(json_config(case["out"]))
        torch.save(case["inputs"], root / f"{name}.inputs.pt")
        jobs.append({"folder": str(case["out"]), "inputs": str(root / f"{name}.inputs.pt"), "image": str(image), "prompt": PROMPT,
                     "messages": MESSAGES, "texts": TEXTS})
    jobs.append({"folder": str(remote), "remote": True})
    seen = read_with_transformers4(jobs, root)
    results = dict(zip([*cases, "remote"], seen))
    return {"cases": cases, "results": results, "image": image, "remote": remote}


def json_config(folder: Path):
    from transformers import LlavaConfig

    return LlavaConfig.from_pretrained(folder)


CASES = [f"dense-{t}-{v}" for t, v in DENSE] + ["from-newest-spelling", "from-internal", "from-llava", "from-moe-llava", "init"] + [f"upcycle-{n}" for n in MOE]


@pytest.mark.parametrize("name", CASES)
def test_hf_output_loads_in_transformers_4x_with_the_same_logits(read_by_4x, name):
    from transformers import LlavaForConditionalGeneration

    case, seen = read_by_4x["cases"][name], read_by_4x["results"][name]
    assert "error" not in seen, seen.get("error")
    assert seen["transformers_version"] == "4.46.3"
    missing = [key for key in seen["loading_info"]["missing_keys"] if not (name == "upcycle-qwen2_moe" and QKV_BIAS.search(key))]
    assert {**seen["loading_info"], "missing_keys": missing} == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    if name == "upcycle-qwen2_moe":  # 4.x's Qwen2-MoE always has q/k/v biases (5.x: qkv_bias false); it zero-initialises them
        assert len(seen["loading_info"]["missing_keys"]) == 3 * json_config(case["out"]).text_config.num_hidden_layers
    reference = LlavaForConditionalGeneration.from_pretrained(case["ref"]).eval()
    with torch.no_grad():
        expected = reference(**case["inputs"]).logits
    assert seen["logits"].shape == expected.shape
    assert (seen["logits"] - expected).abs().max() <= TOL
    config = json.loads((case["out"] / "config.json").read_text())
    assert seen["rope_theta"] == config["text_config"]["rope_parameters"]["rope_theta"]
    assert seen["image_seq_length"] == config["image_seq_length"] == reference.config.image_seq_length
    if name.startswith("upcycle-") or name == "from-moe-llava":
        expected_class = {"upcycle-mixtral": "MixtralForCausalLM", "upcycle-qwen2_moe": "Qwen2MoeForCausalLM"}.get(name, "MixtralForCausalLM")
        assert seen["language_model"] == expected_class


@pytest.mark.parametrize("name", CASES)
def test_hf_output_tokenizer_processor_and_chat_template_in_transformers_4x(read_by_4x, name):
    from PIL import Image
    from transformers import AutoTokenizer

    case, seen = read_by_4x["cases"][name], read_by_4x["results"][name]
    assert "error" not in seen, seen.get("error")
    ours = AutoTokenizer.from_pretrained(case["out"])
    original = AutoTokenizer.from_pretrained(case["ref"])
    assert seen["tokenizer_class"] in ("PreTrainedTokenizerFast", "LlamaTokenizerFast")
    assert seen["encoded"] == [original(text)["input_ids"] for text in TEXTS] == [ours(text)["input_ids"] for text in TEXTS]
    assert seen["tokenizer_chat_template"] and seen["processor_chat_template"] == seen["tokenizer_chat_template"] == ours.chat_template
    assert seen["chat"] == original.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert seen["processor_class"] == "LlavaProcessor"
    processed = mmzoo.load_processor(case["out"])(images=Image.open(read_by_4x["image"]), text=PROMPT, return_tensors="pt")
    image_token = json_config(case["out"]).image_token_id
    if "siglip" in name or name == "init":  # 4.46's LlavaProcessor always adds a CLIP class token (see the note)
        assert (seen["processed_input_ids"] == image_token).sum() == (processed["input_ids"] == image_token).sum() + 1
        assert torch.equal(seen["processed_input_ids"][seen["processed_input_ids"] != image_token], processed["input_ids"][processed["input_ids"] != image_token])
    else:
        assert torch.equal(seen["processed_input_ids"], processed["input_ids"])
    assert torch.equal(seen["processed_pixel_values"], processed["pixel_values"])


def test_what_4x_reads_differently_is_said_at_convert_time(tiny, tmp_path):
    siglip = mmzoo.convert(tiny.hf("llama", "siglip"), tmp_path / "siglip", tgt_fmt="hf")
    assert [note for note in siglip.notes if "4.46's LlavaProcessor" in note and "(16)" in note]
    assert not mmzoo.convert(tiny.hf("llama", "clip"), tmp_path / "clip", tgt_fmt="hf").notes
    qwen2_moe = mmzoo.convert(tiny.hf("llama", "clip"), tmp_path / "moe", tgt_fmt="hf", moe=dict(num_experts=4, top_k=2, style="shared", layers="even", targets=["text"]))
    assert [note for note in qwen2_moe.notes if "Qwen2-MoE always has q/k/v biases" in note]


def test_init_says_what_4x_reads_differently(read_by_4x):
    assert [note for note in read_by_4x["cases"]["init"]["notes"] if "4.46's LlavaProcessor" in note and "siglip_vision_model" in note]


def test_remote_moe_code_is_5x_only_and_the_conversion_says_so(read_by_4x, tiny, tmp_path):
    seen = read_by_4x["results"]["remote"]
    assert seen["remote_loaded"] is False, "transformers 4.x loaded mmzoo's remote MoE code: update the note and the README"
    result = mmzoo.convert(tiny.hf("llama", "clip"), tmp_path / "remote", tgt_fmt="hf",
                           moe=dict(num_experts=4, top_k=2, style="modality", layers="even", targets=["text"]))
    assert any("4.x cannot load it" in note for note in result.notes)
