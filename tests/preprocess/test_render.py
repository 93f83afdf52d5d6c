"""Sample-by-sample checks of token ids, loss masks and image spans against an independent rendering."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from mmzoo.preprocess import preprocess

from pp_rendering import GOOD, N_IMG, collapse, expected, image_runs, read_shards

TEMPLATES = ["auto", "plain", "vicuna_v1", "llama3", "phi3", "chatml", "qwen"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_matches_independent_rendering(template, tmp_path, good_jsonl, image_root, tok_dir, tokenizer):
    out = tmp_path / "out"
    manifest = preprocess([good_jsonl], image_root, tok_dir, out, template=template, num_image_tokens=N_IMG)
    image_id = tokenizer.token_to_id("<image>")
    samples = read_shards(out)
    assert [s["id"] for s in samples] == [str(r["id"]) for r in GOOD]
    for sample, row in zip(samples, GOOD):
        text, trained = expected(template, row["conversations"])
        ids, mask = sample["ids"], sample["mask"]
        decode = lambda t: tokenizer.decode(list(t), skip_special_tokens=False)  # noqa: E731
        assert decode(collapse(ids, image_id, N_IMG)) == text, sample["id"]
        assert decode(ids[mask == 1]) == "".join(trained), sample["id"]
        # Each trained region is exactly one assistant answer + its end-of-turn token.
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
        regions = [decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]
        # plain drops text-only human turns, so consecutive captions touch: compare them joined.
        assert regions == (["".join(trained)] if template == "plain" and len(trained) > 1 else trained), sample["id"]
        images = row.get("image", [])
        images = [images] if isinstance(images, str) else images
        assert sample["images"] == images
        runs = image_runs(ids, image_id)
        assert sum(n for _, n in runs) == N_IMG * len(images)
        assert not mask[ids == image_id].any(), "image tokens must never be trained"
    stats = manifest["statistics"]
    assert stats["samples_written"] == len(GOOD) and stats["rejected"] == {}
    assert stats["images"] == 6 and stats["tokens"] == sum(len(s["ids"]) for s in samples)
    assert stats["loss_tokens"] == sum(int(s["mask"].sum()) for s in samples)


def test_schema_attributes_and_compression(tmp_path, good_jsonl, image_root, tok_dir, tokenizer):
    out = tmp_path / "out"
    manifest = preprocess([good_jsonl], image_root, tok_dir, out, template="vicuna_v1", num_image_tokens=N_IMG,
                          max_seq_len=512, samples_per_shard=3)
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert [s["n_samples"] for s in manifest["shards"]] == [3, 3, 1]
    with h5py.File(out / "shard-00000.h5") as f:
        assert f["input_ids"].dtype == np.int32 and f["loss_mask"].dtype == np.uint8
        assert f["offsets"].dtype == np.int64 and f["image_offsets"].dtype == np.int64
        assert f["offsets"].shape == (4,) and f["offsets"][-1] == f["input_ids"].shape[0]
        assert f["image_paths"].dtype.kind == "O" and h5py.check_string_dtype(f["image_paths"].dtype).encoding == "utf-8"
        assert list(f["sample_ids"].asstr()[:]) == ["single", "unicode", "multiturn"]
        for name in ("input_ids", "loss_mask", "offsets", "image_paths"):
            assert f[name].compression == "gzip" and f[name].compression_opts == 1 and f[name].shuffle
        attrs = dict(f.attrs)
        assert attrs["format_version"] == 1 and attrs["n_samples"] == 3
        assert attrs["image_token_id"] == tokenizer.token_to_id("<image>") and attrs["num_image_tokens"] == N_IMG
        assert attrs["max_seq_len"] == 512 and attrs["template"] == "vicuna_v1" and attrs["tokenizer"] == str(tok_dir)
    import hashlib

    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    assert not list(out.glob("*.tmp")) and not (out / ".progress.json").exists()


def test_num_image_tokens_from_model_and_tokenizer_from_checkpoint(tmp_path, good_jsonl, image_root, llava_dir):
    from tokenizers import Tokenizer

    from mmzoo.checkpoint.locate import num_image_tokens

    out = tmp_path / "out"
    manifest = preprocess([good_jsonl], image_root, llava_dir, out, template="auto", model=llava_dir)
    n = num_image_tokens(llava_dir)
    assert n == 16 and manifest["parameters"]["num_image_tokens"] == n
    tok = Tokenizer.from_file(str(llava_dir / "tokenizer.json"))
    image_id = tok.token_to_id("<image>")
    for sample, row in zip(read_shards(out), GOOD):
        text, _ = expected("auto", row["conversations"])
        assert tok.decode(collapse(sample["ids"], image_id, n), skip_special_tokens=False) == text


@pytest.mark.parametrize("placement", ["llava", "keep"])
def test_image_placement(placement, tmp_path, good_jsonl, image_root, tok_dir, tokenizer):
    """--image-placement llava moves <image> to the front of its turn (LLaVA's preprocess_multimodal);
    keep leaves it where the data puts it."""
    out = tmp_path / "out"
    manifest = preprocess([good_jsonl], image_root, tok_dir, out, template="chatml", num_image_tokens=N_IMG, image_placement=placement)
    assert manifest["parameters"]["image_placement"] == placement
    image_id = tokenizer.token_to_id("<image>")
    sample = next(s for s in read_shards(out) if s["id"] == "unicode")
    text = tokenizer.decode(collapse(sample["ids"], image_id, N_IMG), skip_special_tokens=False)
    row = next(r for r in GOOD if r["id"] == "unicode")
    assert text == expected("chatml", row["conversations"], placement)[0]
    question = "Décris l'image <image> 数字 🙂" if placement == "keep" else "<image>\nDécris l'image  数字 🙂"
    assert f"user\n{question}<|im_end|>" in text


def test_unknown_image_placement_is_one_clear_error(tmp_path, good_jsonl, image_root, tok_dir):
    from cli_helpers import run_cli

    code, _, stderr = run_cli("preprocess", "--data", str(good_jsonl), "--images", str(image_root), "--tokenizer", str(tok_dir),
                              "-o", str(tmp_path / "out"), "--num-image-tokens", "4", "--image-placement", "front")
    assert code == 2 and "mmzoo: error: unknown image placement 'front'" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
