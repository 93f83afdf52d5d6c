"""The training reader, the cerebras-multimodal layout and the demo step, on real shards and a real image processor."""
from __future__ import annotations

import json

import h5py
import numpy as np
import torch

from mmzoo.preprocess import Collator, H5Dataset, preprocess
from mmzoo.demo.tiny import image_processor
from pp_rendering import GOOD, N_IMG, read_shards


def _build(tmp_path, good_jsonl, image_root, tok_dir, **kw):
    out = tmp_path / "out"
    preprocess([good_jsonl], image_root, tok_dir, out, template="llama3", num_image_tokens=N_IMG, samples_per_shard=3, **kw)
    return out


def test_items_and_batches(tmp_path, good_jsonl, image_root, tok_dir, tokenizer):
    out = _build(tmp_path, good_jsonl, image_root, tok_dir)
    processor = image_processor("clip", 32)
    ds = H5Dataset(out, image_root, processor)
    stored = read_shards(out)
    image_id = tokenizer.token_to_id("<image>")
    assert len(ds) == len(GOOD) == len(stored)
    for i in (6, 0, 3, 4):  # random access across shards
        item, ref = ds[i], stored[i]
        assert item["id"] == ref["id"]
        assert torch.equal(item["input_ids"], torch.from_numpy(ref["ids"].astype(np.int64)))
        assert torch.equal(item["labels"] == -100, torch.from_numpy(ref["mask"] == 0))
        assert torch.equal(item["labels"][item["labels"] != -100], item["input_ids"][torch.from_numpy(ref["mask"] == 1)])
        n_img = len(ref["images"])
        assert len(item["image_positions"]) == n_img
        for start in item["image_positions"].tolist():
            assert (item["input_ids"][start: start + N_IMG] == image_id).all()
        if n_img:
            assert item["pixel_values"].shape == (n_img, 3, 32, 32)
        else:
            assert item["pixel_values"] is None
    # pixel_values come from the processor on the stored image paths, in order.
    from PIL import Image

    expect = processor(images=[Image.open(image_root / p).convert("RGB") for p in stored[3]["images"]], return_tensors="pt")["pixel_values"]
    assert torch.allclose(ds[3]["pixel_values"], expect)

    batch = Collator(ds.pad_token_id)([ds[i] for i in range(4)])
    lengths = [len(stored[i]["ids"]) for i in range(4)]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert (batch["input_ids"][row, n:] == ds.pad_token_id).all() and (batch["labels"][row, n:] == -100).all()
    assert batch["pixel_values"].shape == (5, 3, 32, 32)  # 1 + 1 + 1 + 2 images
    assert batch["image_positions"][:, 0].tolist() == [0, 1, 2, 3, 3]
    for row, start in batch["image_positions"].tolist():
        assert (batch["input_ids"][row, start: start + N_IMG] == image_id).all()
    assert batch["ids"] == ["single", "unicode", "multiturn", "multiimage"]


def test_dataloader_with_workers(tmp_path, good_jsonl, image_root, tok_dir):
    out = _build(tmp_path, good_jsonl, image_root, tok_dir)
    ds = H5Dataset(out, image_root, image_processor("clip", 32))
    ds[0]  # handles opened in the parent must not leak into workers
    loader = lambda w: torch.utils.data.DataLoader(ds, batch_size=3, num_workers=w, collate_fn=Collator(ds.pad_token_id))  # noqa: E731
    serial = list(loader(0))
    parallel = list(loader(2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert a["ids"] == b["ids"]
        assert (a["pixel_values"] is None) == (b["pixel_values"] is None)
        if a["pixel_values"] is not None:
            assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_cerebras_multimodal_layout(tmp_path, good_jsonl, image_root, tok_dir, tokenizer):
    ref = _build(tmp_path, good_jsonl, image_root, tok_dir)
    stored = read_shards(ref)
    out = tmp_path / "cb"
    msl = 512
    manifest = preprocess([good_jsonl], image_root, tok_dir, out, template="llama3", num_image_tokens=N_IMG, max_seq_len=msl, format="cerebras-multimodal")
    params = json.loads((out / "data_params.json").read_text())
    assert params["statistics"]["samples_written"] == len(GOOD) and params == manifest
    max_img = msl // N_IMG
    image_id = tokenizer.token_to_id("<image>")
    ds_pad_id = manifest["parameters"]["pad_token_id"]
    files = sorted(out.glob("output_chunk_0_*.h5"))
    assert [f.name for f in files] == [s["file"] for s in manifest["shards"]]
    i = 0
    for path in files:
        with h5py.File(path) as f:
            n = int(f.attrs["n_examples"])
            data, paths, has_img, loc = f["data"][:], f["img_path"].asstr()[:], f["has_img"][:], f["img_data_loc"][:]
            assert data.dtype == np.int32 and data.shape == (n, 5, msl) and f["data"].compression == "gzip"
            assert f["data"].chunks == (1, 5, msl) and loc.shape == (n, max_img, N_IMG)
            for k in range(n):
                ids, mask = stored[i]["ids"], stored[i]["mask"]
                L = len(ids) - 1
                pad = ds_pad_id  # modelzoo stores image placeholders as pad_id (token_modality_idx marks them)
                as_stored = lambda a: np.where(a == image_id, pad, a)  # noqa: E731
                assert np.array_equal(data[k, 0, :L], as_stored(ids[:-1])) and np.array_equal(data[k, 2, :L], as_stored(ids[1:]))
                assert np.array_equal(data[k, 1, :L], mask[1:]) and not data[k, 1, L:].any()
                assert not data[k, 3, :L].any() and data[k, 3, L:].all()
                assert np.array_equal(data[k, 4, :L], (ids[:-1] == image_id).astype(np.int32))
                images = stored[i]["images"]
                assert bool(has_img[k]) == bool(images)
                assert list(paths[k]) == images + ["None"] * (max_img - len(images))
                for j in range(len(images)):
                    assert (data[k, 4, loc[k, j]] == 1).all() and (data[k, 0, loc[k, j]] == pad).all()
                    assert np.array_equal(np.diff(loc[k, j]), np.ones(N_IMG - 1))
                assert (loc[k, len(images):] == msl).all()
                i += 1
    assert i == len(GOOD)


def test_demo_step(tmp_path, llava_dir):
    from mmzoo.preprocess.demo_step import run_demo_step

    summary = run_demo_step(tmp_path / "demo", llava_dir, console=None)
    assert summary["samples"] == 4 and summary["rejected"] == 1 and summary["images"] == 4
    assert summary["num_image_tokens"] == 16
    assert summary["batch_input_ids"][0] == 4 and summary["batch_pixel_values"] == [4, 3, 32, 32]
    assert 0 < summary["batch_trained_tokens"] < summary["tokens"]
