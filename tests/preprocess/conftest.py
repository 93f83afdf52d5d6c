"""Shared fixtures: a real tiny BPE tokenizer, real PNGs, hand-made LLaVA data with every edge case."""
from __future__ import annotations

from pathlib import Path

import pytest

from pp_rendering import GOOD, write_jsonl


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    from mmzoo.demo.tiny import make_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    tok = make_tokenizer()
    # Real chat models have their turn markers as special tokens; so does this one.
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|end|>"]})
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tok_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tok_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    from mmzoo.demo.tiny import make_images

    root = tmp_path_factory.mktemp("images")
    make_images(root, 4)
    (root / "sub").mkdir()
    make_images(root / "sub", 1, seed=3)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    make_images(root.parent / "outside_dir", 1)
    (root / "link.png").symlink_to(root.parent / "outside_dir" / "img_000.png")
    return root


@pytest.fixture()
def good_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "good.jsonl", GOOD)


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> Path:
    from mmzoo.demo.tiny import build_llava

    folder = tmp_path_factory.mktemp("llava")
    build_llava(folder)
    return folder
