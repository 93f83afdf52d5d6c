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
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the published files, byte for byte
        assert (folder / name).read_bytes() == (rt.GENUINE_LLAVA_V15 / name).read_bytes(), name
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["legacy"] is False and config["tokenizer_class"] == "LlamaTokenizer" and config["model_max_length"] == 2048
    fast = json.loads((rt.llava_v15(fast=True) / "tokenizer.json").read_text())
    # transformers 4.x's LlamaConverter: Prepend("▁") + Replace(" ", "▁") normaliser, no pre-tokenizer
    assert [n["type"] for n in fast["normalizer"]["normalizers"]] == ["Prepend", "Replace"] and fast["pre_tokenizer"] is None
    assert isinstance(fast["model"]["merges"][0], str)  # tokenizers < 0.19 wrote merges as "a b"


# -- the third layout: the same tokenizer after a transformers 5 load + save_pretrained ----------------------------

def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def test_transformers5_resave_tokenizes_leading_whitespace_and_text_after_special_tokens_differently():
    """What a transformers 5 save does to Llama-2's SentencePiece tokenizer, measured on llama.cpp's test
    strings: 32 of 47 as llama.cpp expects (the original: 47 of 47, test above); every difference is a text
    that starts with whitespace, and the "▁" after a special token is dropped."""
    from tokenizers import Tokenizer

    from mmzoo.preprocess.tokenization import resaved_by_transformers5

    resaved_dir = rt.llava_v15_resaved_by_transformers5()
    resaved = Tokenizer.from_file(str(resaved_dir / "tokenizer.json"))
    original = Tokenizer.from_file(str(rt.llava_v15(fast=True) / "tokenizer.json"))
    cases = rt.llama_cpp_cases("llama-spm")
    wrong = [text for text, ids in cases if _ids(resaved, text) != ids]
    assert (len(cases), len(cases) - len(wrong)) == (47, 32)
    assert all(text[:1].isspace() for text in wrong), wrong
    assert (_ids(original, " "), _ids(resaved, " ")) == ([259], [29871])
    assert (_ids(original, "<s>A"), _ids(resaved, "<s>A")) == ([1, 319], [1, 29909])  # "▁A" vs "A"
    # transformers 5's own tokenizer does the same on the original files (it rebuilds the pipeline): why
    # mmzoo tokenizes with the tokenizers library on the file as published
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(rt.llava_v15(fast=True))
    assert [text for text, ids in cases if loaded.encode(text, add_special_tokens=False) != ids] == wrong
    data = json.loads((resaved_dir / "tokenizer.json").read_text(encoding="utf-8"))
    config = json.loads((resaved_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert resaved_by_transformers5(data, config)
    for folder in (rt.llava_v15(fast=True), rt.phi3()):  # the layouts checkpoints ship are not mistaken for it
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        assert not resaved_by_transformers5(data, json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")))


def test_mmzoo_never_writes_the_transformers5_layout(tmp_path):
    """Adding <image> (init, conversions) edits the files: the tokenizer mmzoo writes still tokenizes every
    llama.cpp test string like the original, and is not the transformers 5 layout."""
    from tokenizers import Tokenizer

    from mmzoo.checkpoint.image_token import add_image_token
    from mmzoo.preprocess.tokenization import resaved_by_transformers5

    add_image_token(rt.llava_v15(fast=True), tmp_path)
    written = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    cases = rt.llama_cpp_cases("llama-spm")
    assert [text for text, ids in cases if _ids(written, text) != ids] == []
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert not resaved_by_transformers5(data, json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8")))


def _preprocess_with(tokenizer, tmp_path, name):
    from mmzoo.checkpoint.image_token import add_image_token
    from mmzoo.demo.tiny import make_images

    folder = tmp_path / f"{name}-tok"
    add_image_token(tokenizer, folder)
    make_images(tmp_path / "images", 1, size=16)
    data = tmp_path / "data.jsonl"
    image = sorted(p.name for p in (tmp_path / "images").iterdir())[0]
    data.write_text(json.dumps({"id": "a", "image": image, "conversations": [
        {"from": "human", "value": "<image>\n What is it?"}, {"from": "gpt", "value": " A cat."}]}) + "\n")
    return folder, data


def test_preprocess_notes_a_transformers5_resaved_tokenizer(tmp_path):
    """preprocess keeps going (the model may have been trained with those files) but says so: in the
    manifest and on stderr, also with --quiet; the original files give no note."""
    from typer.testing import CliRunner

    from mmzoo.cli import app
    from mmzoo.preprocess import preprocess
    from mmzoo.preprocess.tokenization import RESAVED_BY_TRANSFORMERS5

    original, data = _preprocess_with(rt.llava_v15(fast=True), tmp_path, "original")
    manifest = preprocess([data], tmp_path / "images", original, tmp_path / "out-original", template="vicuna_v1", num_image_tokens=4)
    assert "notes" not in manifest and manifest["statistics"]["samples_written"] == 1
    resaved, _ = _preprocess_with(rt.llava_v15_resaved_by_transformers5(), tmp_path, "resaved")
    result = CliRunner().invoke(app, ["preprocess", "--data", str(data), "--images", str(tmp_path / "images"), "--tokenizer", str(resaved),
                                      "--template", "vicuna_v1", "--num-image-tokens", "4", "-o", str(tmp_path / "out-resaved"), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out-resaved" / "manifest.json").read_text())
    assert manifest["notes"] == [RESAVED_BY_TRANSFORMERS5]
    assert "note: the tokenizer files were re-saved by transformers 5" in " ".join(result.output.split())
