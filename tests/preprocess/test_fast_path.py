"""The fast paths of preprocessing give exactly what the previous code gave, with the real tokenizers.

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

