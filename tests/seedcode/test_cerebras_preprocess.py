"""``--format cerebras``: H5 files in the conventions Cerebras' LlavaModel depends on — the image pasted at
one fixed position (image_start_idx), one image per sample, a dummy-image slot for text-only samples.

The files are read with Cerebras' own ``H5Reader`` (``data/common/h5_map_dataset/readers.py``, plain h5py + numpy,
no stub) the way its ``MultiModalHDF5Dataset`` sets it up, when MMZOO_CEREBRAS_MODELZOO_SRC names the ``src/``
folder of a Cerebras/modelzoo checkout (it is not on PyPI); the layout checks run without it.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmzoo.preprocess import preprocess

P = 6  # image tokens (num_patches)
MSL = 512
ROWS = [
    {"id": "end", "image": "img_000.png", "conversations": [
        {"from": "human", "value": "What is shown here?\n<image>"}, {"from": "gpt", "value": "A red square."}]},
    {"id": "text", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi there."}]},
    {"id": "start", "image": "img_001.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "Blue."},
        {"from": "human", "value": "More?"}, {"from": "gpt", "value": "No."}]},
    {"id": "two", "image": ["img_000.png", "img_001.png"], "conversations": [
        {"from": "human", "value": "<image> and <image>?"}, {"from": "gpt", "value": "Both."}]},
    {"id": "late", "image": "img_002.png", "conversations": [
        {"from": "human", "value": "Hello."}, {"from": "gpt", "value": "Hi."},
        {"from": "human", "value": "<image>\nAnd this?"}, {"from": "gpt", "value": "A cat."}]},
]


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    from mmzoo.demo.tiny import make_images, make_tokenizer

    root = tmp_path_factory.mktemp("cb-llava")
    tok = make_tokenizer()
    tok.save_pretrained(root / "tok")
    make_images(root / "images", 3)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    manifest = preprocess([data], root / "images", root / "tok", root / "out", template="vicuna_v1", num_image_tokens=P,
                          max_seq_len=MSL, format="cerebras")
    return root, manifest


def test_one_image_at_the_fixed_start_and_a_dummy_slot(output):
    root, manifest = output
    start = manifest["image_start_idx"]
    assert manifest["max_num_img"] == 1 and start > 0
    assert manifest["statistics"]["samples_written"] == 3
    assert manifest["statistics"]["rejected"] == {"bad_schema": 1, "image_count_mismatch": 1}  # "late" and "two"
    rejected = [json.loads(line) for line in (root / "out" / "rejected.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rejected} == {"two": "image_count_mismatch", "late": "bad_schema"}
    assert all(r["line"] in (4, 5) for r in rejected)
    (path,) = sorted((root / "out").glob("output_chunk_0_*.h5"))
    with h5py.File(path) as f:
        data, has_img, paths, loc = f["data"][:], f["has_img"][:], f["img_path"].asstr()[:], f["img_data_loc"][:]
    assert has_img.shape == (3, 1) and paths.shape == (3, 1) and loc.shape == (3, 1, P)
    assert has_img[:, 0].tolist() == [True, False, True] and paths[:, 0].tolist() == ["img_000.png", "None", "img_001.png"]
    window = slice(start, start + P)
    for k in range(3):
        ids, loss, labels, padding, modality = data[k]
        n = int((padding == 0).sum()) + (0 if has_img[k, 0] else P)  # real length: the dummy slot is masked too
        assert modality[window].all() and modality.sum() == P  # the placeholders are exactly where LlavaModel pastes
        assert not loss[window].any()
        if has_img[k, 0]:
            assert not padding[window].any() and loc[k, 0].tolist() == list(range(start, start + P))
        else:
            assert padding[window].all() and (loc[k] == MSL).all()  # the blank image's features are not attended
        assert padding[n:].all() and not padding[:start].any()  # text before and after the slot is attended
    # the image that ended its turn ("end") now opens it, as LLaVA's preprocess_multimodal puts it
    assert data[0, 4, start - 1] == 0 and data[0, 4, start + P] == 0


def test_same_text_around_the_image_as_an_image_first_row(output, tmp_path):
    """Moving the marker is what the row would give had it been written image-first."""
    from mmzoo.demo.tiny import make_images

    root, manifest = output
    make_images(tmp_path / "images", 1)
    row = dict(ROWS[0], conversations=[{"from": "human", "value": "<image>\nWhat is shown here?"}, ROWS[0]["conversations"][1]])
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    preprocess([tmp_path / "d.jsonl"], tmp_path / "images", root / "tok", tmp_path / "out", template="vicuna_v1",
               num_image_tokens=P, max_seq_len=MSL, format="cerebras")
    with h5py.File(next((tmp_path / "out").glob("*.h5"))) as f, h5py.File(next((root / "out").glob("*.h5"))) as g:
        assert np.array_equal(f["data"][0], g["data"][0])


def _cerebras_h5_reader():
    src = os.environ.get("MMZOO_CEREBRAS_MODELZOO_SRC")
    if not src:
        pytest.skip("Cerebras modelzoo is not on PyPI: set MMZOO_CEREBRAS_MODELZOO_SRC to the src/ folder of a Cerebras/modelzoo checkout")
    path = Path(src) / "cerebras" / "modelzoo" / "data" / "common" / "h5_map_dataset" / "readers.py"
    spec = importlib.util.spec_from_file_location("cerebras_h5_readers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.H5Reader


def test_cerebras_h5_reader_reads_it(output):
    reader_class = _cerebras_h5_reader()
    root, manifest = output
    # as MultiModalHDF5Dataset._set_up_reader builds it; sequence_length None: data stored by sample ([N, 5, MSL])
    reader = reader_class(data_dirs=[str(root / "out")], extra_data_keys=["img_path"], sequence_length=None,
                          read_extra_token=True, data_subset=None, sort=True, use_vsl=False)
    assert len(reader) == 3
    start = manifest["image_start_idx"]
    for i, expected_path in enumerate(["img_000.png", "None", "img_001.png"]):
        sample = reader[i]
        text = sample["data"]
        # LlavaHDF5MapDataProcessor's map: the first four channels; MultiModalHDF5Dataset.preprocess_img: path[0]
        ids, loss, labels, padding = (np.asarray(text[c]) for c in range(4))
        assert sample["img_path"][0].decode("utf-8") == expected_path
        assert not loss[start:start + manifest["parameters"]["num_image_tokens"]].any()
        assert ids.shape[-1] == MSL


def test_workers_give_the_same_files(output):
    root, manifest = output
    again = preprocess([root / "data.jsonl"], root / "images", root / "tok", root / "out2", template="vicuna_v1",
                       num_image_tokens=P, max_seq_len=MSL, format="cerebras", workers=2)
    assert again["statistics"] == manifest["statistics"] and again["image_start_idx"] == manifest["image_start_idx"]
    with h5py.File(next((root / "out").glob("*.h5"))) as f, h5py.File(next((root / "out2").glob("*.h5"))) as g:
        assert np.array_equal(f["data"][:], g["data"][:]) and np.array_equal(f["has_img"][:], g["has_img"][:])


def test_cerebras_h5_reader_reads_the_generic_layout(output, tmp_path):
    reader_class = _cerebras_h5_reader()
    root, _ = output
    manifest = preprocess([root / "data.jsonl"], root / "images", root / "tok", tmp_path / "generic", template="vicuna_v1",
                          num_image_tokens=P, max_seq_len=MSL, format="cerebras-multimodal")
    reader = reader_class(data_dirs=[str(tmp_path / "generic")], extra_data_keys=["img_path"], sequence_length=None,
                          read_extra_token=True, data_subset=None, sort=True, use_vsl=False)
    assert len(reader) == manifest["statistics"]["samples_written"] == len(ROWS)  # every layout the generic one holds
    two = reader[3]
    assert [p.decode("utf-8") for p in two["img_path"][:2]] == ["img_000.png", "img_001.png"]
    assert np.asarray(two["data"]).shape == (5, MSL)


@pytest.mark.parametrize("args, expected", [
    (["--format", "cerebras", "--image-placement", "keep"], "--image-placement llava"),
    (["--format", "cerebras-llava"], "now --format cerebras"),
])
def test_layouts_it_cannot_write_are_one_line(output, tmp_path, args, expected):
    from cli_helpers import run_cli

    root, _ = output
    code, _, stderr = run_cli("preprocess", "--data", str(root / "data.jsonl"), "--images", str(root / "images"), "--tokenizer",
                              str(root / "tok"), "-o", str(tmp_path / "out"), "--num-image-tokens", str(P), *args)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mmzoo: error:") and expected in lines[0], stderr
    assert not (tmp_path / "out").exists()


def test_max_seq_len_without_room_for_an_image_is_one_line(output, tmp_path):
    from cli_helpers import run_cli

    root, _ = output
    code, _, stderr = run_cli("preprocess", "--data", str(root / "data.jsonl"), "--images", str(root / "images"), "--tokenizer",
                              str(root / "tok"), "-o", str(tmp_path / "out"), "--num-image-tokens", "64", "--max-seq-len", "48",
                              "--template", "vicuna_v1", "--format", "cerebras")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cannot fit in max_seq_len 48" in lines[0], stderr
    assert not (tmp_path / "out").exists()


def test_image_start_idx_is_cerebras_phase_2_value_with_the_real_vicuna_tokenizer(tmp_path):
    """Cerebras' LLaVA phase-2 config says image_start_idx 35: BOS + the vicuna_v1 system prompt + 'USER:' in the
    Llama-2/Vicuna tokenizer that liuhaotian/llava-v1.5-7b ships (with <image> added, as `mmzoo init` does)."""
    import shutil

    from real_tokenizers import llava_v15
    from transformers import AutoTokenizer

    from mmzoo.preprocess.cerebras import image_start
    from mmzoo.preprocess.encode import Encoder, Settings

    shutil.copytree(llava_v15(fast=True), tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.save_pretrained(tmp_path / "tok")
    encoder = Encoder(Settings(tokenizer=str(tmp_path / "tok"), image_root=str(tmp_path), template="vicuna_v1", max_seq_len=2048,
                               num_image_tokens=576, truncate=False))
    assert image_start(encoder) == 35
