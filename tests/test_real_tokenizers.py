"""The real tokenizer folders of tests/real_tokenizers.py tokenize llama.cpp's test strings exactly as
llama.cpp expects — with the tokenizers library (tokenizer.json) and, for the SentencePiece ones, with
the slow tokenizer of transformers 4.37.2 (the one the original LLaVA code trains with)."""
from __future__ import annotations

import json

import pytest

import real_tokenizers as rt


@pytest.mark.parametrize("name", sorted(rt.REAL_TOKENIZERS))
def test_tokenizer_json_matches_llama_cpp(name):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(rt.REAL_TOKENIZERS[name]() / "tokenizer.json"))
    cases = rt.llama_cpp_cases(rt.LLAMA_CPP_VOCAB[name])
    wrong = [text for text, ids in cases if tok.encode(text, add_special_tokens=False).ids != ids]
    assert not wrong, f"{len(wrong)}/{len(cases)} differ, e.g. {wrong[:3]!r}"


SLOW_4X = """
import json, sys
from transformers import AutoTokenizer
request = json.loads(open(sys.argv[1], encoding="utf-8").read())
out = {}
for name, folder in request["folders"].items():
    tok = AutoTokenizer.from_pretrained(folder, use_fast=False)
    out[name] = {"class": type(tok).__name__, "legacy": tok.legacy, "hello": tok("Hello world").input_ids,
                 "ids": [tok.encode(text, add_special_tokens=False) for text, _ in request["cases"][name]]}
print(json.dumps(out))
"""


def test_sentencepiece_models_match_llama_cpp_in_transformers_4x(tmp_path):
    """The slow tokenizer of transformers 4.37.2 (the original LLaVA code's) on each tokenizer.model."""
    folders = {"llama-spm": rt.llava_v15(), "phi-3": rt.phi3()}
    request = {"folders": {k: str(v) for k, v in folders.items()}, "cases": {k: rt.llama_cpp_cases(k) for k in folders}}
    (tmp_path / "request.json").write_text(json.dumps(request), encoding="utf-8")
    results = rt.last_json_line(rt.run_in_llava_env("-c", SLOW_4X, str(tmp_path / "request.json")))
    for name, result in results.items():
        assert result["class"] == "LlamaTokenizer" and result["legacy"] is False, name
        assert result["hello"] == [1, 15043, 3186], name
        cases = request["cases"][name]
        wrong = [text for (text, ids), got in zip(cases, result["ids"]) if got != ids]
        assert not wrong, f"{name}: {len(wrong)}/{len(cases)} differ, e.g. {wrong[:3]!r}"


def test_llava_v15_is_laid_out_like_the_published_repo():
    folder = rt.llava_v15()
    assert sorted(p.name for p in folder.iterdir()) == ["special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["legacy"] is False and config["tokenizer_class"] == "LlamaTokenizer" and config["model_max_length"] == 2048
    fast = json.loads((rt.llava_v15(fast=True) / "tokenizer.json").read_text())
    # transformers 4.x's LlamaConverter: Prepend("▁") + Replace(" ", "▁") normaliser, no pre-tokenizer
    assert [n["type"] for n in fast["normalizer"]["normalizers"]] == ["Prepend", "Replace"] and fast["pre_tokenizer"] is None
    assert isinstance(fast["model"]["merges"][0], str)  # tokenizers < 0.19 wrote merges as "a b"
