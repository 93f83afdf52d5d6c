"""The fast paths of preprocessing give exactly what the previous code gave, with the real tokenizers.

- Tokenizing without tokenizers' offsets (mmzoo/preprocess/tokenization.py, FromLengths: spaces turned into
  "▁" by str.replace, ``encode_batch_fast``, each token covering its vocabulary length in characters) gives
  the ids and, for every character of every text, the token that holds it, that ``encode_batch`` with
  offsets gives: on llama.cpp's tokenizer test strings and the reference corpus, with the LLaVA-1.5
  tokenizer in each layout mmzoo reads it from; the tokenizers it does not fit keep the offsets path.
- Chunk-level assembly (mmzoo/preprocess/assemble.py) against the per-conversation assembly it replaced
  (tests/preprocess/previous_encoder.py), on the 204-sample reference corpus, for every template with a real
  tokenizer of its family, with and without image expansion, truncation, too-long rejections and both image
  placements: the same samples (ids, loss mask, images, truncated flag, dtypes) and the same rejections.
- The packed transport from the worker processes (mmzoo/preprocess/workers.py: pack / unpack) gives back the
  very results it was given, conversations and preference pairs alike.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import real_tokenizers as rt
from previous_encoder import PreviousEncoder
from reference_corpus import corpus

from mmzoo.checkpoint.image_token import add_image_token
from mmzoo.preprocess.encode import Encoder, Rejection, Row, Sample, Settings, TokenizerInfo
from mmzoo.preprocess.preference import Pair, PreferenceEncoder
from mmzoo.preprocess.tokenization import FromLengths, TextTokenizer, WithOffsets
from mmzoo.preprocess.workers import pack, unpack

TEMPLATES = {  # template: the real tokenizer of its family
    "vicuna_v1": "llava-v1.5", "plain": "llava-v1.5", "llama3": "llama-3", "qwen": "qwen2", "chatml": "qwen2",
    "phi3": "phi-3", "auto": "qwen2",
}
# (max_seq_len, truncate, image placement, tokens per image): plain; cut at turn ends; too long rejected; no expansion
VARIANTS = {
    "fits": (8192, False, "llava", 5),
    "truncate": (160, True, "llava", 40),
    "too-long": (200, False, "keep", 7),
    "one-token-per-image": (8192, False, "keep", 1),
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, TokenizerInfo]:
    """Each real tokenizer as mmzoo writes it (<image> added), loaded once."""
    root = tmp_path_factory.mktemp("real-tok")
    infos = {}
    for name in sorted(set(TEMPLATES.values())):
        add_image_token(rt.REAL_TOKENIZERS[name](), root / name)
        infos[name] = TokenizerInfo.load(root / name)
    return infos


def rows(samples: list[dict]) -> list[Row]:
    return [Row(i, 0, i + 1, json.dumps(s, ensure_ascii=False)) for i, s in enumerate(samples)]


def assert_same(new: list, old: list) -> None:
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert type(a) is type(b), (a, b)
        if isinstance(a, Pair):
            assert (a.row, a.sample_id) == (b.row, b.sample_id)
            assert_same([a.chosen, a.rejected], [b.chosen, b.rejected])
        elif isinstance(a, Sample):
            assert (a.row, a.sample_id, a.images, a.truncated) == (b.row, b.sample_id, b.images, b.truncated)
            for x, y in ((a.input_ids, b.input_ids), (a.loss_mask, b.loss_mask)):
                assert x.dtype == y.dtype and np.array_equal(x, y), a.sample_id
        else:
            assert a == b


def encode_in_chunks(encoder, all_rows: list[Row], size: int) -> list:
    return [r for i in range(0, len(all_rows), size) for r in encoder.encode_rows(all_rows[i: i + size])]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_chunk_assembly_equals_the_previous_per_conversation_assembly(template, variant, tokenizers, image_root):
    max_seq_len, truncate, placement, n_img = VARIANTS[variant]
    info = tokenizers[TEMPLATES[template]]
    settings = Settings(str(info.folder), str(image_root), template, max_seq_len, n_img, truncate, True, placement)
    samples = corpus()
    if template == "plain":  # LLaVA pretraining data: the question is the image marker alone
        samples = [dict(s, conversations=[dict(s["conversations"][0], value="<image>"), *s["conversations"][1:]])
                   for s in samples if "image" in s]
    data = rows(samples)
    old = encode_in_chunks(PreviousEncoder(settings, info), data, 512)
    for size in (512, 37):  # the whole corpus in one chunk, and chunks that split it anywhere
        assert_same(encode_in_chunks(Encoder(settings, info), data, size), old)
    written = [r for r in old if isinstance(r, Sample)]
    reasons = {r.reason for r in old if isinstance(r, Rejection)}
    assert len(written) > 0.3 * len(samples)  # the comparison is about real samples, not rejections
    if variant == "truncate" and template != "plain":
        assert any(s.truncated for s in written)
    if variant == "too-long":
        assert "too_long" in reasons


def test_packed_results_travel_unchanged(tokenizers, image_root):
    info = tokenizers["llava-v1.5"]
    settings = Settings(str(info.folder), str(image_root), "vicuna_v1", 160, 40, True)
    results = Encoder(settings, info).encode_rows(rows(corpus()))
    assert {type(r) for r in results} == {Sample, Rejection}
    assert_same(unpack(pack(results)), results)
    rejections = [r for r in results if isinstance(r, Rejection)]
    assert_same(unpack(pack(rejections)), rejections)
    assert unpack(pack([])) == []


def test_packed_preference_pairs_travel_unchanged(tokenizers, image_root):
    info = tokenizers["llava-v1.5"]
    settings = Settings(str(info.folder), str(image_root), "vicuna_v1", 2048, 5, False, kind="preference")
    records = [{"id": f"p{i}", "image": "img_000.png", "question": f"What is {i}?", "chosen": "A cat." * (i % 3 + 1),
                "rejected": "A dog."} for i in range(20)] + [{"id": "bad", "chosen": "x"}]
    results = PreferenceEncoder(settings, info).encode_rows(rows(records))
    assert [type(r) for r in results] == [Pair] * 20 + [Rejection]
    assert_same(unpack(pack(results)), results)



def _texts(cases: list[tuple[str, list[int]]]) -> list[str]:
    """llama.cpp's test strings, and the same after each added token, as rendered conversations hold them."""
    texts = [text for text, _ in cases]
    return texts + [token + text for token in ("</s>", "<image>") for text in texts] + [text + "</s>" for text in texts]


@pytest.mark.parametrize("layout", ["fast", "slow-only"])
def test_the_lengths_path_finds_every_character_where_the_offsets_do(layout, tmp_path):
    """ids equal, and for every character (forward and backward walks alike) the same token."""
    folder = tmp_path / "tok"
    add_image_token(rt.llava_v15(fast=layout == "fast"), folder)
    info = TokenizerInfo.load(folder)
    tokenizer = TextTokenizer(info.json_text, info.legacy, info.tokenizer)
    assert tokenizer.char_lengths is not None and tokenizer.manual_prefix
    cases = rt.llama_cpp_cases("llama-spm")
    corpus_texts = [t["value"] for s in corpus() for t in s["conversations"]]
    texts = _texts(cases) + corpus_texts + ["", " ", "▁", "\n", "🐈‍⬛ 👍🏽", "Ünïcödé", "<image>", "</s></s> x"]
    fast = tokenizer.encode(texts)
    offsets = WithOffsets(tokenizer.encode_with_offsets(texts))
    assert isinstance(fast, FromLengths)
    assert np.array_equal(fast.ids, offsets.ids) and np.array_equal(fast.starts, offsets.starts)
    # llama.cpp's expected ids (no BOS; the slow tokenizer's dummy prefix as mmzoo adds it)
    for k, (_, expected) in enumerate(cases):
        assert fast.ids[fast.starts[k]: fast.starts[k + 1]].tolist() == expected, cases[k][0]
    text = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    char = np.concatenate([np.arange(len(t)) for t in texts])
    for step in (1, -1):
        stops = np.array([len(texts[t]) for t in text]) if step == 1 else np.full(len(char), -1)
        assert np.array_equal(fast.tokens_at(text, char, stops, step), offsets.tokens_at(text, char, stops, step))
    assert (fast.tokens_at(text, char, char, 1) == -1).all()  # an empty walk finds nothing, as token_at


@pytest.mark.parametrize("name", ["phi-3", "llama-3", "qwen2"])
def test_tokenizers_the_lengths_path_does_not_fit_keep_the_offsets(name, tmp_path):
    """Phi-3's chat tokens strip the whitespace after them; byte-level BPE has a pre-tokenizer."""
    add_image_token(rt.REAL_TOKENIZERS[name](), tmp_path / "tok")
    info = TokenizerInfo.load(tmp_path / "tok")
    tokenizer = TextTokenizer(info.json_text, info.legacy, info.tokenizer)
    assert tokenizer.char_lengths is None
    assert isinstance(tokenizer.encode(["Hello world"]), WithOffsets)


def test_a_table_that_does_not_fit_falls_back_to_the_offsets(tmp_path):
    """Were a token's length ever wrong, the texts' coverage check catches it and the offsets path answers."""
    folder = tmp_path / "tok"
    add_image_token(rt.llava_v15(fast=True), folder)
    info = TokenizerInfo.load(folder)
    tokenizer = TextTokenizer(info.json_text, info.legacy, info.tokenizer)
    texts = ["The cat sat.", "Hello world"]
    good = tokenizer.encode(texts)
    assert isinstance(good, FromLengths)
    tokenizer.char_lengths = tokenizer.char_lengths.copy()
    tokenizer.char_lengths[good.ids[1]] += 1
    bad = tokenizer.encode(texts)
    assert isinstance(bad, WithOffsets) and np.array_equal(bad.ids, good.ids)


def test_byte_tokens_credited_otherwise_than_by_tokenizers_turn_the_lengths_path_off(tmp_path):
    """Which byte token of a character tokenizers' offsets name is checked when the tokenizer is built: here the
    table is made to credit an emoji's second byte token instead of its first (the sums still agree)."""
    folder = tmp_path / "tok"
    add_image_token(rt.llava_v15(fast=True), folder)
    info = TokenizerInfo.load(folder)
    tokenizer = TextTokenizer(info.json_text, info.legacy, info.tokenizer)
    assert tokenizer._lengths_agree_with_offsets()
    vocab = json.loads(info.json_text)["model"]["vocab"]
    tokenizer.char_lengths[[vocab["<0xF0>"], vocab["<0x9F>"]]] = [0, 1]
    assert not tokenizer._lengths_agree_with_offsets()
