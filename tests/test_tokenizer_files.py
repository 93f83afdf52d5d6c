"""Tokenizer files mmzoo writes (init, convert adding <image>) tokenize exactly like the original:
the files are copied byte for byte and <image> is added to the added tokens directly. Checked with
the real tokenizers of tests/real_tokenizers.py on llama.cpp's test strings and the preprocess
corpus, read by tokenizers, transformers 5, and transformers 4.37 (slow and fast)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import mmzoo
import real_tokenizers as rt
from mmzoo.checkpoint.locate import tokenizer_folder
from mmzoo.demo.tiny import build_vision, text_config

sys.path.insert(0, str(Path(__file__).parent / "preprocess"))
from reference_corpus import corpus  # noqa: E402

REAL = {**rt.REAL_TOKENIZERS, "llava-v1.5-slow-only": rt.llava_v15}
VOCAB = {**rt.LLAMA_CPP_VOCAB, "llava-v1.5-slow-only": "llama-spm"}


def corpus_texts() -> list[str]:
    """Texts of the preprocess corpus (without <image>, the one token the written tokenizer adds)."""
    texts = []
    for sample in corpus()[::3]:
        texts += [t["value"] for t in sample["conversations"]]
        texts.append("USER: " + " ASSISTANT: ".join(t["value"] for t in sample["conversations"]) + "</s>")
    return [t.replace("<image>", "") for t in texts]


@pytest.fixture(scope="module")
def vision(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    build_vision(folder, "clip")
    return folder


def tiny_llm_with(tokenizer_dir: Path, folder: Path, vocab_size: int) -> Path:
    """A tiny Llama whose tokenizer is the real one (vocab rows = the real vocabulary size)."""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(text_config("llama", vocab_size=vocab_size, hidden_size=16)).save_pretrained(folder)
    for f in tokenizer_dir.iterdir():
        shutil.copyfile(f, folder / f.name)
    return folder


def _vocab_size(name: str) -> int:
    return {"llama-3": 128256, "qwen2": 151646, "phi-3": 32064}.get(name, 32000)


@pytest.mark.parametrize("name", sorted(REAL))
def test_init_writes_the_original_tokenizer_plus_image(name, tmp_path, vision):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    original = REAL[name]()
    llm = tiny_llm_with(original, tmp_path / "llm", _vocab_size(name))
    texts = [t for t, _ in rt.llama_cpp_cases(VOCAB[name])] + corpus_texts()
    has_json = (original / "tokenizer.json").is_file()
    # The truth: the shipped tokenizer.json (4.x LlamaConverter layout for the SentencePiece ones, which
    # tokenizes llama.cpp's strings exactly, test_real_tokenizers.py). transformers 5 rebuilds a
    # LlamaTokenizer's pre-tokenizer from tokenizer_config.json and then differs on some of them; a
    # written folder may only differ from the truth where transformers 5 reading the original does.
    truth = [e.ids for e in Tokenizer.from_file(str(original / "tokenizer.json")).encode_batch(texts, add_special_tokens=False)] if has_json else None
    t5 = AutoTokenizer.from_pretrained(str(original))
    t5_original = [t5(t, add_special_tokens=False).input_ids for t in texts]
    # internal copies tokenizer files exactly as hf does: one byte-level run of it is enough
    for fmt in ("hf", "internal", "llava") if name.startswith("llava") else ("hf", "llava"):
        info = mmzoo.init_model(vision, llm, tmp_path / fmt, tgt_fmt=fmt)
        folder = tokenizer_folder(tmp_path / fmt)
        # every file but the ones holding the added tokens is the original, byte for byte
        for f in original.iterdir():
            if f.name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                assert (folder / f.name).read_bytes() == f.read_bytes(), (fmt, f.name)
        if has_json:
            ours, theirs = (json.loads((d / "tokenizer.json").read_text()) for d in (folder, original))
            added = ours.pop("added_tokens")
            assert added[:-1] == theirs.pop("added_tokens") and added[-1]["content"] == "<image>"
            if fmt != "llava":  # the llava layout writes merges as "a b" for tokenizers < 0.19 (same merges)
                assert ours == theirs
            fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
            assert [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)] == truth, fmt
            for text, ids in rt.llama_cpp_cases(VOCAB[name]):
                assert fast.encode(text, add_special_tokens=False).ids == ids, (fmt, text)
        written = AutoTokenizer.from_pretrained(str(folder))
        assert written.convert_tokens_to_ids("<image>") == info["image_token_id"]
        assert written("a <image> b", add_special_tokens=False).input_ids.count(info["image_token_id"]) == 1
        if not has_json:
            continue  # transformers 5 has no exact reader for a tokenizer.model-only folder; 4.x: the test below
        got = [written(t, add_special_tokens=False).input_ids for t in texts]
        assert all(g == o or (truth and g == t) for g, o, t in zip(got, t5_original, truth or t5_original)), fmt


SLOW_AND_FAST_4X = """
import json, sys
from transformers import AutoTokenizer
cases = json.loads(open(sys.argv[1], encoding="utf-8").read())
out = {}
for folder, name in cases["folders"]:
    for use_fast in (False, True):
        tok = AutoTokenizer.from_pretrained(folder, use_fast=use_fast)
        out[f"{name}/{use_fast}"] = {"ids": [tok.encode(t, add_special_tokens=False) for t in cases[name]],
                                     "image": tok.convert_tokens_to_ids("<image>"), "split": tok.encode("a <image> b", add_special_tokens=False)}
print(json.dumps(out))
"""


def test_written_sentencepiece_tokenizers_read_the_same_in_transformers_4x(tmp_path):
    """transformers 4.37.2 (one subprocess for all): the slow tokenizer of each written folder gives
    llama.cpp's ids; the fast one (4.x LlamaConverter) gives the shipped tokenizer.json's ids."""
    from tokenizers import Tokenizer

    from mmzoo.checkpoint.image_token import add_image_token

    names = ["llava-v1.5", "llava-v1.5-slow-only", "phi-3"]
    request, image_ids = {"folders": []}, {}
    for name in names:
        image_ids[name] = add_image_token(REAL[name](), tmp_path / name)
        request["folders"].append([str(tmp_path / name), name])
        request[name] = [t for t, _ in rt.llama_cpp_cases(VOCAB[name])]
    (tmp_path / "request.json").write_text(json.dumps(request), encoding="utf-8")
    result = rt.last_json_line(rt.run_in_llava_env("-c", SLOW_AND_FAST_4X, str(tmp_path / "request.json")))
    for name in names:
        cases = rt.llama_cpp_cases(VOCAB[name])
        shipped = REAL["llava-v1.5" if name == "llava-v1.5-slow-only" else name]()  # 4.37 converts a slow-only one the same way
        original = Tokenizer.from_file(str(shipped / "tokenizer.json"))
        for use_fast in (False, True):
            got = result[f"{name}/{use_fast}"]
            assert got["image"] == image_ids[name] and got["split"].count(image_ids[name]) == 1, (name, use_fast)
            expected = [original.encode(t, add_special_tokens=False).ids for t, _ in cases] if use_fast else [ids for _, ids in cases]
            assert got["ids"] == expected, (name, use_fast)


def test_the_old_transformers_5_round_trip_would_have_changed_the_tokenizer(tmp_path):
    """Why the files are edited instead of re-saved: a transformers 5 load+save changes Llama-2's."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(rt.llava_v15(fast=True))).save_pretrained(tmp_path)
    resaved = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    cases = rt.llama_cpp_cases("llama-spm")
    wrong = [t for t, ids in cases if resaved.encode(t, add_special_tokens=False).ids != ids]
    assert wrong  # if transformers ever stops doing this, the direct edit is still correct


def test_convert_adding_image_keeps_a_slow_only_llava_tokenizer_byte_for_byte(tiny, tmp_path):
    """A LLaVA-repo checkpoint with liuhaotian's tokenizer (tokenizer.model only, no <image>) converted
    to hf: the files are the original ones, tokenizer_config.json gains <image> in its added tokens."""
    from mmzoo.checkpoint.spec import TOKENIZER_FILES

    mmzoo.convert(tiny.hf("llama", "clip"), tmp_path / "llava", tgt_fmt="llava")
    text_dir = tokenizer_folder(tmp_path / "llava")
    for name in TOKENIZER_FILES:
        (text_dir / name).unlink(missing_ok=True)
    original = rt.llava_v15()
    for f in original.iterdir():
        shutil.copyfile(f, text_dir / f.name)
    config_path = text_dir / "config.json"  # like liuhaotian's: no image token anywhere (LLaVA uses -200)
    llava_config = json.loads(config_path.read_text())
    del llava_config["mmzoo"]["image_token_index"]
    config_path.write_text(json.dumps(llava_config))
    mmzoo.convert(tmp_path / "llava", tmp_path / "hf", tgt_fmt="hf")
    out = tmp_path / "hf"
    for name in ("tokenizer.model", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (original / name).read_bytes(), name
    assert not (out / "tokenizer.json").exists()
    config = json.loads((out / "tokenizer_config.json").read_text())
    added = config.pop("added_tokens_decoder")
    assert added == {"32000": {"content": "<image>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}}
    assert config.pop("additional_special_tokens") == ["<image>"]
    assert config == json.loads((original / "tokenizer_config.json").read_text())
    model_config = json.loads((out / "config.json").read_text())
    assert model_config["image_token_index"] == 32000 and model_config["text_config"]["vocab_size"] == 32001


def test_a_broken_tokenizer_model_is_one_clear_error(tmp_path, vision):
    llm = tiny_llm_with(rt.llava_v15(), tmp_path / "llm", 32000)
    (llm / "tokenizer.model").write_bytes(b"\xff\xff\xff not a protobuf")
    from cli_helpers import run_cli

    code, _, stderr = run_cli("init", "--vision", str(vision), "--text", str(llm), "-o", str(tmp_path / "out"))
    assert code == 2 and stderr.startswith("mmzoo: error:") and "tokenizer.model is not a SentencePiece model" in stderr, stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()
