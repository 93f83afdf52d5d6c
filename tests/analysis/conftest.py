"""Tiny real MoE checkpoints of every layout mmzoo writes, and real `mmzoo preprocess` output (once per session)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from routing_helpers import LAYOUTS

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@dataclass
class Workspace:
    root: Path
    dense: Path
    images: Path
    data: Path
    built: dict[str, Path] = field(default_factory=dict)

    def moe(self, name: str) -> Path:
        if name not in self.built:
            from mmzoo.converters.pipeline import convert

            fmt, options = LAYOUTS[name]
            path = self.root / name
            convert(self.dense, path, tgt_fmt=fmt, moe=dict(options, router_init="normal:0.5", seed=1))
            self.built[name] = path
        return self.built[name]


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    from mmzoo.demo.tiny import build_llava, make_caption_dataset

    root = tmp_path_factory.mktemp("analysis")
    dense = root / "dense"
    build_llava(dense)
    images, data = make_caption_dataset(root, dense)
    return Workspace(root, dense, images, data)
