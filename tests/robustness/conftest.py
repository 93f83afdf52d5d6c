"""Hostile and broken inputs: each must end in one `mmzoo: error:` line and exit code 2, quickly."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def internal_ckpt(tiny, tmp_path_factory) -> Path:
    from mmzoo.converters.pipeline import convert

    out = tmp_path_factory.mktemp("robust") / "internal"
    convert(tiny.hf(), out, tgt_fmt="internal")
    return out


@pytest.fixture
def hf_copy(tiny, tmp_path) -> Path:
    dst = tmp_path / "hf"
    shutil.copytree(tiny.hf(), dst)
    return dst


@pytest.fixture
def internal_copy(internal_ckpt, tmp_path) -> Path:
    dst = tmp_path / "internal"
    shutil.copytree(internal_ckpt, dst)
    return dst


@pytest.fixture(scope="session")
def pp_tokenizer(tmp_path_factory) -> Path:
    """A real (tiny, trained) byte-level BPE tokenizer folder with <image> and a chat_template."""
    from mmzoo.demo.tiny import make_tokenizer

    folder = tmp_path_factory.mktemp("pp-tok")
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def pp_images(tmp_path_factory) -> Path:
    from mmzoo.demo.tiny import make_images

    root = tmp_path_factory.mktemp("pp-images")
    make_images(root, 2)
    (root / "loop.png").symlink_to(root / "loop.png")  # a symlink loop
    return root


@pytest.fixture(scope="session")
def layouts(tiny, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint in the llava and moe-llava layouts (converted once)."""
    from mmzoo.converters.pipeline import convert

    root = tmp_path_factory.mktemp("layouts")
    convert(tiny.hf(), root / "llava", tgt_fmt="llava")
    convert(tiny.hf(), root / "moe-llava", tgt_fmt="moe-llava", moe={"num_experts": 2})
    return {"llava": root / "llava", "moe-llava": root / "moe-llava"}
