"""Preprocessed data is shared like checkpoints: a crafted or broken manifest, shard or image is refused in one line
before training reads a sample, and never makes mmzoo read outside the data and image folders. Each case is a real
`mmzoo preprocess` output (tiny tokenizer, tiny images) edited with h5py; each used to be accepted or a traceback."""
from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest

from mmzoo.errors import MmzooError
from mmzoo.preprocess import H5Dataset
from cli_helpers import cli_error
from data_helpers import make_preprocessed


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """A real preprocessed folder (4 samples, one shard, 2 images) and its image folder."""
    return make_preprocessed(tmp_path_factory.mktemp("train-data"), tiny.hf())


@pytest.fixture
def data(made, tmp_path):
    shutil.copytree(made / "data", tmp_path / "data")
    shutil.copytree(made / "images", tmp_path / "images")
    return tmp_path / "data"


def _shard(data):
    return data / "shard-00000.h5"


def _replace(data, name, values, **kwargs):
    with h5py.File(_shard(data), "a") as f:
        del f[name]
        f.create_dataset(name, data=values, **kwargs)


def _edit_manifest(data, change):
    manifest = json.loads((data / "manifest.json").read_text())
    change(manifest)
    (data / "manifest.json").write_text(json.dumps(manifest))


def _refused(data, *needles):
    with pytest.raises(MmzooError) as info:
        H5Dataset(data, data.parent / "images")
    line = info.value.one_line()
    for needle in needles:
        assert needle in line, line
    return line


def test_the_untouched_folder_reads(data):
    dataset = H5Dataset(data, data.parent / "images")
    assert len(dataset) == 4 and dataset.raw(1)["image_paths"] == ["img_001.png"]


@pytest.mark.parametrize("name", ["../outside.h5", "/tmp/outside.h5"])
def test_a_manifest_naming_a_shard_outside_the_folder(data, name):
    outside = data.parent / "outside.h5"
    shutil.move(_shard(data), outside)  # a valid shard, only in the wrong place
    _edit_manifest(data, lambda m: m["shards"][0].update(file=name if name.startswith("..") else str(outside)))
    _refused(data, "outside the preprocessed folder")


def test_a_shard_symlinked_out_of_the_folder(data):
    outside = data.parent / "outside.h5"
    shutil.move(_shard(data), outside)
    _shard(data).symlink_to(outside)
    _refused(data, "is a symlink to", "outside")


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.pop("parameters"), "no parameters object"),
    (lambda m: m["parameters"].update(image_token_id="320"), "parameters.image_token_id must be a whole number"),
    (lambda m: m["parameters"].update(num_image_tokens=-1), "parameters.num_image_tokens"),
    (lambda m: m.update(shards={"file": "shard-00000.h5"}), "manifest shards must be a list"),
    (lambda m: m["shards"][0].update(n_samples=10**12), "manifest shards must be a list"),
    (lambda m: m["shards"][0].update(n_samples=5), "the manifest's 5 samples need"),
])
def test_manifest_fields_of_the_wrong_type_or_count(data, change, needle):
    _edit_manifest(data, change)
    _refused(data, needle)


@pytest.mark.parametrize("name", ["loss_mask", "offsets", "image_paths"])
def test_a_missing_dataset(data, name):
    with h5py.File(_shard(data), "a") as f:
        del f[name]
    _refused(data, f"has no {name} dataset")


def test_datasets_of_the_wrong_dtype_or_shape(data):
    with h5py.File(_shard(data), "r") as f:
        ids = f["input_ids"][:]
    _replace(data, "input_ids", ids.astype(np.float32))
    _refused(data, "dataset input_ids is float32", "integers")
    _replace(data, "input_ids", ids.reshape(2, -1))
    _refused(data, "dataset input_ids", "one-dimensional")
    _replace(data, "input_ids", ids)
    _replace(data, "sample_ids", np.arange(4))
    _refused(data, "dataset sample_ids", "text")


def test_offsets_out_of_order_or_past_the_tokens(data):
    with h5py.File(_shard(data), "r") as f:
        offsets = f["offsets"][:]
    _replace(data, "offsets", offsets[[0, 2, 1, 3, 4]])
    _refused(data, "dataset offsets does not describe tokens")
    _replace(data, "offsets", np.append(offsets[:-1], offsets[-1] + 1000))
    _refused(data, "dataset offsets does not describe tokens")


def test_a_sample_of_a_trillion_tokens_is_refused_before_it_is_read(data):
    """HDF5 fills chunks that were never written, so a 1e12-token input_ids costs a few KB on disk and 4 TB in
    memory once a sample of it is read."""
    huge = 10**12
    with h5py.File(_shard(data), "a") as f:
        for name in ("input_ids", "loss_mask"):
            del f[name]
            f.create_dataset(name, shape=(huge,), dtype=np.int32, chunks=(1 << 16,), compression="gzip")
        del f["offsets"]
        f.create_dataset("offsets", data=np.array([0, huge - 3, huge - 2, huge - 1, huge], dtype=np.int64))
    assert _shard(data).stat().st_size < 1 << 20
    _refused(data, "sample 0 has 999,999,999,997 tokens, more than the 2,048 it was preprocessed for")


@pytest.mark.parametrize("rel", ["../secret.png", "/etc/passwd", "sub/../../secret.png", "C:/x.png", "a\\..\\..\\b.png"])
def test_image_paths_leaving_the_image_folder_are_refused_up_front(data, rel):
    with h5py.File(_shard(data), "r") as f:
        paths = list(f["image_paths"].asstr()[:])
    paths[2] = rel
    _replace(data, "image_paths", np.array(paths, dtype=object), dtype=h5py.string_dtype("utf-8"))
    _refused(data, "which leaves the image folder")


class _Processor:
    """Stands for the image processor: only whether an image reached it matters here."""

    def __call__(self, images, return_tensors):
        import torch

        return {"pixel_values": torch.zeros(len(images), 3, 2, 2)}


def test_an_image_symlinked_out_of_the_folder_is_never_read(data, tmp_path):
    images = tmp_path / "images"
    secret = tmp_path / "secret.png"
    shutil.move(images / "img_001.png", secret)
    (images / "img_001.png").symlink_to(secret)
    dataset = H5Dataset(data, images, _Processor())
    assert dataset[0]["pixel_values"].shape[0] == 1  # img_000: fine
    with pytest.raises(MmzooError, match="img_001.png is a symlink to .*secret.png, outside"):
        dataset[1]


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"not an image at all"], ids=["truncated", "garbage"])
def test_a_broken_image_is_one_line_naming_it(data, tmp_path, content):
    (tmp_path / "images" / "img_001.png").write_bytes(content)
    dataset = H5Dataset(data, tmp_path / "images", _Processor())
    with pytest.raises(MmzooError) as info:
        dataset[1]
    assert re.search(r"img_001.png: not a readable image \((UnidentifiedImageError|OSError|SyntaxError)", info.value.one_line())


def test_a_token_id_past_the_vocabulary_is_refused(data):
    with h5py.File(_shard(data), "r") as f:
        ids = f["input_ids"][:]
    ids[0] = 10_000
    _replace(data, "input_ids", ids)
    dataset = H5Dataset(data, data.parent / "images")
    dataset.vocab_size = 321
    with pytest.raises(MmzooError, match="sample 0 holds token id 10000, outside the model's vocabulary of 321"):
        dataset.raw(0)
    dataset.close()
    ids[0] = -5
    _replace(data, "input_ids", ids)
    with pytest.raises(MmzooError, match="sample 0 holds token id -5"):
        H5Dataset(data, data.parent / "images").raw(0)


def test_mmzoo_train_refuses_hostile_data_in_one_line_before_starting(data, tiny, tmp_path, capsys):
    """Through the CLI: `mmzoo train` checks the data in its preflight, before DeepSpeed or any worker starts."""
    with h5py.File(_shard(data), "r") as f:
        paths = list(f["image_paths"].asstr()[:])
    paths[0] = "../../../../../../etc/passwd"
    _replace(data, "image_paths", np.array(paths, dtype=object), dtype=h5py.string_dtype("utf-8"))
    from mmzoo.io.digest import file_sha256

    # a crafted folder is consistent: its manifest lists the crafted shard's sha256 (else the digest check refuses it)
    _edit_manifest(data, lambda m: m["shards"][0].update(sha256=file_sha256(_shard(data))))
    params = tmp_path / "params.yaml"
    params.write_text(f"stage: sft\nmodel: {tiny.hf()}\ndata:\n  path: {data}\n  images: {tmp_path / 'images'}\n"
                      f"train:\n  max_steps: 1\n  micro_batch_size: 1\n  global_batch_size: 1\n  precision: fp32\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    line = cli_error(capsys, "train", "--params", str(params), "--nproc", "1")
    assert line.startswith("mmzoo: error: ") and "shard-00000.h5" in line, line
    assert "'../../../../../../etc/passwd', which leaves the image folder" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_folder_linking_outside_is_never_written_through(data, tiny, tmp_path, capsys):
    """A shared run folder whose metrics.jsonl links to a file of yours: resuming rewrote that file (the lines after
    the resumed step are dropped), and a symlinked checkpoints/ folder received DeepSpeed's checkpoints."""
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "bashrc"
    victim.write_text("export PATH=...\n")
    (run / "metrics.jsonl").symlink_to(victim)
    params = tmp_path / "params.yaml"
    params.write_text(f"stage: sft\nmodel: {tiny.hf()}\ndata:\n  path: {data}\n  images: {tmp_path / 'images'}\n"
                      f"train:\n  max_steps: 1\n  micro_batch_size: 1\n  global_batch_size: 1\n  precision: fp32\n"
                      f"output_dir: {run}\n")
    line = cli_error(capsys, "train", "--params", str(params), "--nproc", "1")
    assert f"output_dir {run}" in line and "metrics.jsonl is a symlink to" in line and "refusing to write through it" in line, line
    assert victim.read_text() == "export PATH=...\n"
    (run / "metrics.jsonl").unlink()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "step_0000001").mkdir(parents=True)
    (run / "checkpoints").symlink_to(elsewhere)
    line = cli_error(capsys, "train", "--params", str(params), "--nproc", "1")
    assert "checkpoints is a symlink to" in line and "refusing to write through it" in line, line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["step_0000001"]


def test_a_hostile_completion_marker_or_metrics_line_is_harmless(tmp_path):
    from mmzoo.train import checkpoint as ck
    from mmzoo.train.loop import MetricsLog

    tag = tmp_path / "checkpoints" / "step_0000001"
    tag.mkdir(parents=True)
    (tag / "COMPLETE").write_text("[" * 100_000 + "]" * 100_000)
    assert ck.read_marker(tag) == {}
    (tag / "COMPLETE").write_text('{"zero_stage": ' + "9" * 5000 + "}")
    assert ck.read_marker(tag) == {}
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.0}\n[1]\n5\n"x"\n{"step": 3}\n')
    MetricsLog(metrics, resume_step=2, enabled=True)  # a line of another shape was a TypeError on resume
    assert metrics.read_text() == '{"step": 1, "loss": 2.0}\n'


@pytest.mark.parametrize("where", ["model", "model/run", "data", "images/run"])
def test_an_output_dir_that_is_an_input_or_inside_one_is_refused(data, tiny, tmp_path, capsys, where):
    """output_dir = the model folder wrote params.yaml, meta/ and checkpoints/ into it (its own params.yaml replaced)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny.hf(), model)
    before = sorted(p.name for p in model.iterdir())
    out = {"model": model, "model/run": model / "run", "data": data, "images/run": tmp_path / "images" / "run"}[where]
    params = tmp_path / "params.yaml"
    params.write_text(f"stage: sft\nmodel: {model}\ndata:\n  path: {data}\n  images: {tmp_path / 'images'}\n"
                      f"train:\n  max_steps: 1\n  micro_batch_size: 1\n  global_batch_size: 1\n  precision: fp32\n"
                      f"output_dir: {out}\n")
    line = cli_error(capsys, "train", "--params", str(params), "--nproc", "1")
    assert f"output_dir {out} is" in line and "training would write its checkpoints into an input" in line, line
    assert sorted(p.name for p in model.iterdir()) == before


def test_tracker_folders_are_not_entered_but_a_linked_tracker_folder_is_refused(tmp_path):
    """wandb links its debug logs under OUTPUT_DIR/wandb/ into ~/.cache/wandb by design, and mmzoo writes nothing
    there: a resumed wandb run is not refused for it; a tracker folder that is itself a link leaving is."""
    from mmzoo.errors import ConfigError
    from mmzoo.train.config import load_config
    from mmzoo.train.preflight import check_run_folder

    run = tmp_path / "run"
    logs = run / "wandb" / "offline-run-20261128_000535-1ad7a640" / "logs"
    logs.mkdir(parents=True)
    cache = tmp_path / "home" / ".cache" / "wandb" / "logs"
    cache.mkdir(parents=True)
    (cache / "core-debug.log").write_text("")
    (logs / "debug-core.log").symlink_to(cache / "core-debug.log")
    (run / "metrics.jsonl").write_text("")
    cfg = load_config(data={"stage": "sft", "model": str(tmp_path / "model"),
                            "data": {"path": str(tmp_path / "data"), "images": str(tmp_path / "images")},
                            "train": {"max_steps": 1}, "output_dir": str(run)})
    check_run_folder(run, cfg)  # accepted
    (run / "tensorboard").symlink_to(cache, target_is_directory=True)
    with pytest.raises(ConfigError, match="tensorboard is a symlink to .* refusing to write through it"):
        check_run_folder(run, cfg)
