"""The fast paths of preprocessing give exactly what the previous code gave, with the real tokenizers.

- Tokenizing without tokenizers' offsets (mmzoo/preprocess/tokenization.py, FromLengths: spaces turned into
  "▁" by str.replace, ``encode_batch_fast``, each token covering its vocabulary length in characters) gives
  the ids and, for every character of every text, the token that holds it, that ``encode_batch`` with
  offsets gives: on llama.cpp's tokenizer test strings and the reference corpus, with the LLaVA-1.5
  tokenizer in each layout mmzoo reads it from; the tokenizers it does not fit keep the offsets path.
- For byte-level BPE (Llama-3, Qwen2: FromByteLengths), the token of each character found from the tokens' UTF-8
  byte lengths is the one tokenizers' offsets give, on llama.cpp's strings for those vocabularies, the corpus and
  awkward strings; texts and layouts that could move characters keep the offsets, as does a tokenizer the load-time
  probe rejects and a batch the lengths do not cover; and the shards are the same either way.
- Chunk-level assembly (mmzoo/preprocess/assemble.py) against the per-conversation assembly it replaced
  (tests/preprocess/previous_encoder.py), on the 204-sample reference corpus, for every template with a real
  tokenizer of its family, with and without image expansion, truncation, too-long rejections and both image
  placements: the same samples (ids, loss mask, images, truncated flag, dtypes) and the same rejections.
- The packed transport from the worker processes (mmzoo/preprocess/workers.py: pack / unpack) gives back the
  very results it was given, conversations and preference pairs alike.
"""
from __future__ import annotations

import json
import unicodedata

import h5py
import numpy as np
import pytest

import real_tokenizers as rt
from previous_encoder import PreviousEncoder
from reference_corpus import corpus

from mmzoo.checkpoint.image_token import add_image_token
from mmzoo.preprocess.encode import Encoder, Rejection, Row, Sample, Settings, TokenizerInfo
from mmzoo.preprocess.preference import Pair, PreferenceEncoder
from mmzoo.preprocess import tokenization
from mmzoo.preprocess.tokenization import (BYTE_ALPHABET, FromByteLengths, FromLengths, TextTokenizer, WithOffsets,
                                           byte_level_lengths)
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
    """Phi-3's chat tokens strip the whitespace after them: the offsets answer; byte-level BPE has a pre-tokenizer,
    so the SentencePiece lengths path does not fit it either, and the byte-level path takes it."""
    add_image_token(rt.REAL_TOKENIZERS[name](), tmp_path / "tok")
    info = TokenizerInfo.load(tmp_path / "tok")
    tokenizer = TextTokenizer(info.json_text, info.legacy, info.tokenizer)
    assert tokenizer.char_lengths is None
    encoded = tokenizer.encode(["Hello world"])
    if name == "phi-3":
        assert tokenizer.byte_lengths is None and type(encoded) is WithOffsets
    else:
        assert tokenizer.byte_lengths is not None and type(encoded) is FromByteLengths


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


# -- byte-level BPE (Llama-3, Qwen2): span-edge tokens from the tokens' UTF-8 byte lengths --------------------------
BYTE_LEVEL = {"llama-3": "llama-bpe", "qwen2": "qwen2"}  # real tokenizer: llama.cpp's test strings for its vocabulary
AWKWARD = ["", " ", "\n", "\t\t\n\n  x", "🐈‍⬛ 👍🏽", "Ünïcödé", "北京的天气? 東京は晴れ。", "q\u0307 g\u0303 क्षि", "<image>", "<image>\nA",
           "x<image>y", "'s 've 123456 ...   \r\n", "Ġ Ċ ĉ", "\u00a0\u2028 \u3000x", "\U0001F9D1\u200D\U0001F33E" * 3]


def _byte_level_tokenizer(name: str, folder) -> tuple[TokenizerInfo, TextTokenizer]:
    add_image_token(rt.REAL_TOKENIZERS[name](), folder)
    info = TokenizerInfo.load(folder)
    return info, TextTokenizer(info.json_text, info.legacy, info.tokenizer, info.data)


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> dict[str, tuple[TokenizerInfo, TextTokenizer]]:
    """Llama-3's and Qwen2's tokenizers as mmzoo writes them (<image> added), loaded once (a test that changes the
    TextTokenizer builds its own from the info)."""
    root = tmp_path_factory.mktemp("byte-level")
    return {name: _byte_level_tokenizer(name, root / name) for name in sorted(BYTE_LEVEL)}


def _byte_level_texts(name: str, info: TokenizerInfo) -> list[str]:
    """llama.cpp's strings, the corpus, awkward strings, each also right after and before the family's added tokens."""
    texts = [text for text, _ in rt.llama_cpp_cases(BYTE_LEVEL[name])] + [t["value"] for s in corpus() for t in s["conversations"]]
    texts += AWKWARD
    glued = [token + text for token in (*info.special_tokens[:3], "<image>") for text in texts[:60]]
    return texts + glued + [text + info.special_tokens[0] for text in texts[:60]]


def _every_character_agrees(fast, offsets, texts: list[str]) -> None:
    assert np.array_equal(fast.ids, offsets.ids) and np.array_equal(fast.starts, offsets.starts)
    text = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    char = np.concatenate([np.arange(len(t)) for t in texts])
    for step in (1, -1):
        stops = np.array([len(texts[t]) for t in text]) if step == 1 else np.full(len(char), -1)
        assert np.array_equal(fast.tokens_at(text, char, stops, step), offsets.tokens_at(text, char, stops, step)), step
    assert (fast.tokens_at(text, char, char, 1) == -1).all()


@pytest.mark.parametrize("name", sorted(BYTE_LEVEL))
def test_the_byte_level_path_finds_every_character_where_the_offsets_do(name, byte_level):
    """Llama-3 and Qwen2: the same ids as encode_batch (and as llama.cpp expects), and for every character of
    llama.cpp's strings, the corpus and awkward strings, the token tokenizers' offsets give, both walking directions."""
    info, tokenizer = byte_level[name]
    assert tokenizer.byte_lengths is not None and tokenizer.char_lengths is None
    texts = _byte_level_texts(name, info)
    if tokenizer.byte_lengths.nfc:  # Qwen2 NFC-normalises: a text that is not its own NFC goes the offsets way (below)
        texts = [t for t in texts if unicodedata.is_normalized("NFC", t)]
    assert sum(not t.isascii() for t in texts) > 20  # the byte -> character conversion is exercised
    fast = tokenizer.encode(texts)
    assert isinstance(fast, FromByteLengths)
    offsets = WithOffsets(tokenizer.encode_with_offsets(texts))
    _every_character_agrees(fast, offsets, texts)
    cases = rt.llama_cpp_cases(BYTE_LEVEL[name])
    position = {text: k for k, text in enumerate(texts)}
    checked = 0
    for text, expected in cases:
        if text in position:
            k = position[text]
            assert fast.ids[fast.starts[k]: fast.starts[k + 1]].tolist() == expected, text
            checked += 1
    assert checked >= 0.9 * len(cases)


def test_qwen2_texts_that_are_not_their_own_nfc_take_the_offsets(byte_level):
    """Qwen2's NFC normaliser moves the bytes of such a text (é written e + U+0301 becomes one character): the
    batch is answered from tokenizers' offsets, with the same ids."""
    _, tokenizer = byte_level["qwen2"]
    texts = ["Hello world", "Cafe\u0301 au lait", "A\u030a \u212b"]
    assert not all(unicodedata.is_normalized("NFC", t) for t in texts)
    encoded = tokenizer.encode(texts)
    assert type(encoded) is WithOffsets
    assert np.array_equal(encoded.ids, WithOffsets(tokenizer.encode_with_offsets(texts)).ids)
    # Llama-3 has no normaliser: the same texts keep the byte-level path, and agree with the offsets everywhere.
    _, llama = byte_level["llama-3"]
    fast = llama.encode(texts)
    assert isinstance(fast, FromByteLengths)
    _every_character_agrees(fast, WithOffsets(llama.encode_with_offsets(texts)), texts)


def test_byte_lengths_are_the_utf8_lengths_of_the_decoded_tokens(byte_level):
    """The table is each token's UTF-8 byte count: a vocabulary token decoded from GPT-2's byte alphabet (as
    transformers' converter writes it), an added token's content."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    info, tokenizer = byte_level["llama-3"]
    table = tokenizer.byte_lengths.table
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    assert set(byte_of) == BYTE_ALPHABET
    data = json.loads(info.json_text)
    for token, token_id in list(data["model"]["vocab"].items())[::97]:
        assert table[token_id] == len(bytes(byte_of[c] for c in token)), token
    for added in data["added_tokens"]:
        assert table[added["id"]] == len(added["content"].encode()), added["content"]
    assert table[info.image_token_id] == len("<image>")
    for text in ("北京的天气", "🐈‍⬛", "Hello <image> world"):
        assert table[info.tokenizer.encode(text, add_special_tokens=False).ids].sum() == len(text.encode()), text


@pytest.mark.parametrize("change", ["prefix space", "removing split", "lowercase", "lstrip token", "trimmed offsets",
                                    "byte fallback"])
def test_byte_level_layouts_that_could_move_characters_keep_the_offsets(change, byte_level):
    """A tokenizer.json that adds, drops or changes characters, or trims offsets, is not given the byte path."""
    info, _ = byte_level["llama-3"]
    data = json.loads(info.json_text)
    assert byte_level_lengths(json.loads(info.json_text)) is not None
    pre = data["pre_tokenizer"]["pretokenizers"]
    if change == "prefix space":
        pre[1]["add_prefix_space"] = True
    elif change == "removing split":
        pre[0]["behavior"] = "Removed"
    elif change == "lowercase":
        data["normalizer"] = {"type": "Lowercase"}
    elif change == "lstrip token":
        data["added_tokens"][-1]["lstrip"] = True
    elif change == "trimmed offsets":
        data["post_processor"]["processors"][0]["trim_offsets"] = True
    else:
        data["model"]["byte_fallback"] = True
    assert byte_level_lengths(data) is None


def test_a_byte_level_tokenizer_the_probe_rejects_keeps_the_offsets(byte_level, monkeypatch):
    """Were the byte lengths ever to disagree with tokenizers' offsets on the probe (here: a wrong length for the
    token of "Hello", which the probe's first string holds), the tokenizer never takes the byte path."""
    info, good = byte_level["llama-3"]
    assert good.byte_lengths is not None
    hello = info.tokenizer.token_to_id("Hello")
    real = tokenization.byte_level_lengths

    def wrong(data):
        lengths = real(data)
        lengths.table[hello] += 1
        return lengths

    monkeypatch.setattr(tokenization, "byte_level_lengths", wrong)
    rejected = TextTokenizer(info.json_text, info.legacy, info.tokenizer, info.data)
    assert rejected.byte_lengths is None and rejected.char_lengths is None
    texts = ["Hello world", "北京 <image> x"]
    encoded = rejected.encode(texts)
    assert type(encoded) is WithOffsets and np.array_equal(encoded.ids, good.encode(texts).ids)


def test_a_byte_level_batch_its_lengths_do_not_cover_falls_back_to_the_offsets(byte_level):
    """The per-batch check: every text's tokens must add up to its UTF-8 length exactly, else the same encodings
    answer with their offsets."""
    info = byte_level["qwen2"][0]
    tokenizer = TextTokenizer(info.json_text, info.legacy, info.tokenizer, info.data)  # changed below: its own
    texts = ["The cat sat.", "Hello 世界"]
    good = tokenizer.encode(texts)
    assert isinstance(good, FromByteLengths)
    tokenizer.byte_lengths = tokenizer.byte_lengths._replace(table=tokenizer.byte_lengths.table.copy())
    tokenizer.byte_lengths.table[good.ids[-1]] += 1
    bad = tokenizer.encode(texts)
    assert type(bad) is WithOffsets and np.array_equal(bad.ids, good.ids)


@pytest.mark.parametrize("name,template", [("llama-3", "llama3"), ("qwen2", "chatml")])
def test_byte_level_shards_equal_the_offsets_paths(name, template, tmp_path, image_root, monkeypatch):
    """End to end, on the 204-sample corpus: the shards (ids, loss masks, everything in them), the rejections and
    the statistics are the same with the byte-level path as with tokenizers' offsets."""
    from mmzoo.preprocess import preprocess

    add_image_token(rt.REAL_TOKENIZERS[name](), tmp_path / "tok")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in corpus()), encoding="utf-8")

    def run(out: str) -> dict:
        return preprocess([data], image_root, tmp_path / "tok", tmp_path / out, template=template, num_image_tokens=3,
                          max_seq_len=300, truncate=True, samples_per_shard=80, workers=1)

    calls, build = [], FromByteLengths.build

    def counted(cls, *args):
        found = build(*args)
        calls.append(found is not None)
        return found

    monkeypatch.setattr(FromByteLengths, "build", classmethod(counted))
    fast = run("fast")
    assert calls and all(found for found in calls)  # every chunk took the byte path
    monkeypatch.setattr(tokenization, "byte_level_lengths", lambda data: None)
    calls.clear()
    offsets = run("offsets")
    assert not calls
    assert fast["statistics"] == offsets["statistics"] and fast["statistics"]["samples_written"] > 150
    assert fast["shards"] == offsets["shards"]
    for shard in fast["shards"]:
        with h5py.File(tmp_path / "fast" / shard["file"]) as a, h5py.File(tmp_path / "offsets" / shard["file"]) as b:
            assert sorted(a) == sorted(b)
            for key in a:
                assert np.array_equal(a[key][()], b[key][()]), key
    assert (tmp_path / "fast" / "rejected.jsonl").read_bytes() == (tmp_path / "offsets" / "rejected.jsonl").read_bytes()



@pytest.mark.parametrize("name", ["llava-v1.5", "llama-3", "phi-3"])
def test_each_distinct_text_is_tokenized_once_with_the_same_results(name, tmp_path):
    """LLaVA's templates start every image-first sample with the same piece (system prompt + "USER: "): a batch's
    repeated texts are tokenized once (once_each), with exactly the ids and span-edge tokens of tokenizing each."""
    add_image_token(rt.REAL_TOKENIZERS[name](), tmp_path / "tok")
    info = TokenizerInfo.load(tmp_path / "tok")
    tokenizer = TextTokenizer(info.json_text, info.legacy, info.tokenizer, info.data)
    prefix = "A chat between a curious user and an artificial intelligence assistant. USER: "
    texts = [prefix, "\nWhat is this? ASSISTANT: A cat.</s>", prefix, "Hi 👋 ASSISTANT: Hello.</s>", prefix, "", ""]
    seen = []
    tokenizer._offsets_tokenizer = tokenizer._offsets_tokenizer or tokenizer._load_offsets_tokenizer()
    for attribute in ("_offsets_tokenizer", "_lengths_tokenizer"):
        inner = getattr(tokenizer, attribute, None)
        if inner is not None:
            setattr(tokenizer, attribute, _Recording(inner, seen))
    encoded = tokenizer.encode(texts)
    assert [len(batch) for batch in seen] == [4]  # one call, with the 4 distinct texts of 7
    seen.clear()
    oracle = WithOffsets(tokenizer.encode_with_offsets(texts))  # plain encode_batch, every text
    assert seen == [[" " + t if t and tokenizer.manual_prefix else t for t in texts]]
    _every_character_agrees(encoded, oracle, texts)


class _Recording:
    """A tokenizers.Tokenizer that records the texts of each batch call."""

    def __init__(self, inner, seen: list):
        self.inner, self.seen = inner, seen

    def encode_batch(self, texts, **kwargs):
        self.seen.append(list(texts))
        return self.inner.encode_batch(texts, **kwargs)

    def encode_batch_fast(self, texts, **kwargs):
        self.seen.append(list(texts))
        return self.inner.encode_batch_fast(texts, **kwargs)
