"""Identical output for any --workers, and --resume after a kill reproduces an uninterrupted run."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from mmzoo.preprocess import preprocess
from mmzoo.preprocess import writer as writer_module
from pp_rendering import GOOD, N_IMG, conv, write_jsonl


def _many_rows(n: int) -> list:
    rows = []
    for i in range(n):
        good = dict(GOOD[i % len(GOOD)], id=f"s{i}")
        rows.append(good)
        if i % 97 == 5:
            rows.append("{broken")
        if i % 131 == 7:
            rows.append({"id": f"miss{i}", "image": "nope.png", "conversations": conv(("human", "<image>"), ("gpt", "x"))})
    return rows


def _datasets(out) -> dict:
    found = {}
    for path in sorted(out.glob("*.h5")):
        with h5py.File(path) as f:
            for name, ds in f.items():
                found[(path.name, name)] = ds[:]
            found[(path.name, "attrs")] = {k: str(v) for k, v in f.attrs.items()}
    return found


def _assert_same(a, b) -> None:
    da, db = _datasets(a), _datasets(b)
    assert da.keys() == db.keys()
    for key in da:
        if isinstance(da[key], dict):
            assert da[key] == db[key], key
        else:
            assert np.array_equal(da[key], db[key]), key
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma == mb  # includes each shard's sha256: the files are byte-identical
    assert (a / "rejected.jsonl").read_bytes() == (b / "rejected.jsonl").read_bytes()


def test_output_identical_for_one_and_two_workers(tmp_path, image_root, tok_dir):
    data = write_jsonl(tmp_path / "many.jsonl", _many_rows(1200))
    kw = dict(template="auto", num_image_tokens=N_IMG, samples_per_shard=500)
    one = preprocess([data], image_root, tok_dir, tmp_path / "w1", workers=1, **kw)
    two = preprocess([data], image_root, tok_dir, tmp_path / "w2", workers=2, **kw)
    assert one["statistics"]["samples_written"] == 1200 and len(one["shards"]) == 3
    assert sum(one["statistics"]["rejected"].values()) > 0
    # Output paths differ, everything else must not.
    _assert_same(tmp_path / "w1", tmp_path / "w2")
    assert one == two


class Killed(Exception):
    pass


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, image_root, tok_dir, monkeypatch, workers):
    data = write_jsonl(tmp_path / "many.jsonl", _many_rows(700))
    kw = dict(template="vicuna_v1", num_image_tokens=N_IMG, samples_per_shard=100)
    preprocess([data], image_root, tok_dir, tmp_path / "ref", **kw)

    real_write = writer_module.MmzooWriter._write
    calls = {"n": 0}

    def dying_write(self):
        calls["n"] += 1
        if calls["n"] == 4:  # killed while writing the 4th shard: leave a half-written temp file
            (self.out / f"shard-{len(self.shards):05d}.h5.tmp").write_bytes(b"partial")
            raise Killed()
        real_write(self)

    monkeypatch.setattr(writer_module.MmzooWriter, "_write", dying_write)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        preprocess([data], image_root, tok_dir, out, workers=workers, **kw)
    assert sorted(p.name for p in out.glob("shard-*.h5")) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert not (out / "manifest.json").exists() and (out / ".progress.json").exists()
    monkeypatch.setattr(writer_module.MmzooWriter, "_write", real_write)

    resumed_from = json.loads((out / ".progress.json").read_text())["rows_consumed"]
    assert resumed_from > 300
    preprocess([data], image_root, tok_dir, out, workers=workers, resume=True, **kw)
    assert not list(out.glob("*.tmp"))
    _assert_same(tmp_path / "ref", out)


@pytest.mark.parametrize("fmt", ["cerebras", "cerebras-multimodal"])
def test_cerebras_resume_and_workers(tmp_path, image_root, tok_dir, monkeypatch, fmt):
    from mmzoo.preprocess import cerebras

    data = write_jsonl(tmp_path / "many.jsonl", _many_rows(60))
    kw = dict(template="chatml", num_image_tokens=N_IMG, max_seq_len=4096, format=fmt)  # 10-12 examples per file
    ref = preprocess([data], image_root, tok_dir, tmp_path / "ref", **kw)
    assert len(ref["shards"]) >= 4  # the run below dies writing the third
    real_write = cerebras.CerebrasMultimodalWriter._write  # the LlavaModel layout's writer inherits it
    calls = {"n": 0}

    def dying_write(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed()
        real_write(self)

    monkeypatch.setattr(cerebras.CerebrasMultimodalWriter, "_write", dying_write)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        preprocess([data], image_root, tok_dir, out, workers=2, **kw)
    assert (out / "checkpoint.txt").is_file() and not (out / "data_params.json").exists()
    monkeypatch.setattr(cerebras.CerebrasMultimodalWriter, "_write", real_write)
    resumed = preprocess([data], image_root, tok_dir, out, workers=2, resume=True, **kw)
    assert resumed == ref  # same files (by sha256), statistics and parameters
    assert (out / "rejected.jsonl").read_bytes() == (tmp_path / "ref" / "rejected.jsonl").read_bytes()
