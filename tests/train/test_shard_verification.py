"""Training compares the preprocessed shards with the sha256 that `mmzoo preprocess` put in the manifest, before the
first step, and hashes a shard again only when the file changed (mmzoo/preprocess/integrity.py). Real `mmzoo
preprocess` output (tiny tokenizer, tiny images, two shards), real files, the real CLI."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import cli_error
from data_helpers import make_preprocessed
from mmzoo.errors import CorruptFile
from mmzoo.preprocess import integrity
from mmzoo.preprocess.integrity import RECORD_NAME, verify_for_training as check_data


def verify_for_training(data, run):
    """The check as the preflight makes it: verify, then save the record once the run passed."""
    result = check_data(data, run)
    result.save()
    return result


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """A real preprocessed folder: 4 samples in two shards, and its 2 images."""
    return make_preprocessed(tmp_path_factory.mktemp("verify-data"), tiny.hf(), samples_per_shard=2)


@pytest.fixture
def data(made, tmp_path):
    shutil.copytree(made / "data", tmp_path / "data")
    shutil.copytree(made / "images", tmp_path / "images")
    return tmp_path / "data"


@pytest.fixture
def hashes(monkeypatch):
    """The shards actually read and hashed (the real hash function, counted)."""
    read: list[str] = []
    real = integrity.file_sha256

    def counted(path, advance=None):
        read.append(Path(path).name)
        return real(path, advance)

    monkeypatch.setattr(integrity, "file_sha256", counted)
    return read


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _refused(call, pattern: str) -> str:
    """The one line (path included) that ``call`` fails with, matched against ``pattern``."""
    with pytest.raises(CorruptFile) as info:
        call()
    line = info.value.one_line()
    assert re.search(pattern, line) and "\n" not in line, line
    return line


def _params(tmp_path: Path, tiny, data: Path, **data_keys) -> Path:
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in data_keys.items())
    params = tmp_path / "params.yaml"
    params.write_text(f"stage: sft\nmodel: {tiny.hf()}\ndata:\n  path: {data}\n  images: {tmp_path / 'images'}\n{extra}"
                      f"train:\n  max_steps: 1\n  micro_batch_size: 1\n  global_batch_size: 2\n  precision: fp32\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    return params


def test_the_preprocessed_shards_carry_their_digests(data):
    manifest = json.loads((data / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.h5", "shard-00001.h5"]
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])


def test_a_flipped_byte_is_refused_in_one_line_before_any_process_starts(data, tiny, tmp_path, capsys):
    """--nproc 2: `mmzoo train` refuses in its own preflight, so no launcher, worker or DeepSpeed ever starts."""
    _flip_byte(data / "shard-00001.h5")
    line = cli_error(capsys, "train", "--params", str(_params(tmp_path, tiny, data)), "--nproc", "2")
    assert line.startswith(f"mmzoo: error: {data / 'shard-00001.h5'}: sha256 "), line
    assert "differs from the" in line and "that manifest.json lists" in line and "data.verify_shards: false" in line, line
    assert "launching" not in capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # a refused run makes no run folder


def test_a_truncated_shard_is_refused_naming_it(data, tmp_path):
    shard = data / "shard-00000.h5"
    os.truncate(shard, shard.stat().st_size - 100)
    _refused(lambda: verify_for_training(data, tmp_path / "run"), "shard-00000.h5: sha256 .* differs")


def test_an_unchanged_shard_is_hashed_once_across_resumes(data, tmp_path, hashes):
    run = tmp_path / "run"
    assert verify_for_training(data, run).notes() == []
    assert sorted(hashes) == ["shard-00000.h5", "shard-00001.h5"]
    record = json.loads((run / RECORD_NAME).read_text())
    assert len(record["files"]) == 2 and all(len(e["sha256"]) == 64 for e in record["files"].values())
    assert [p.name for p in run.iterdir()] == [RECORD_NAME]  # written by rename: no temporary file left
    hashes.clear()
    for _ in range(3):  # each start or resume of the run: stat only
        verify_for_training(data, run)
    assert hashes == []


def test_a_touched_but_identical_shard_is_hashed_again_and_passes(data, tmp_path, hashes):
    run = tmp_path / "run"
    verify_for_training(data, run)
    hashes.clear()
    shard = data / "shard-00001.h5"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 5_000_000_000))
    verify_for_training(data, run)
    assert hashes == ["shard-00001.h5"]
    hashes.clear()
    verify_for_training(data, run)
    assert hashes == []  # and remembered again


def test_new_bytes_behind_an_old_mtime_are_still_found(data, tmp_path):
    """Bytes changed and the mtime set back (`touch -d`): the ctime, which no user can set back, has moved."""
    run = tmp_path / "run"
    verify_for_training(data, run)
    shard = data / "shard-00000.h5"
    before = shard.stat()
    _flip_byte(shard)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert shard.stat().st_mtime_ns == before.st_mtime_ns and shard.stat().st_size == before.st_size
    _refused(lambda: verify_for_training(data, run), "shard-00000.h5: sha256 .* differs")


def test_a_shard_replaced_after_verification_is_found(data, tmp_path):
    """A shard swapped for another file (the other shard's bytes) after a verified start: a new inode."""
    run = tmp_path / "run"
    verify_for_training(data, run)
    shutil.copyfile(data / "shard-00001.h5", data / "replacement.h5")
    os.replace(data / "replacement.h5", data / "shard-00000.h5")
    _refused(lambda: verify_for_training(data, run), "shard-00000.h5: sha256 .* differs")


def test_a_corrupt_record_only_costs_a_rehash(data, tmp_path, hashes):
    run = tmp_path / "run"
    run.mkdir()
    (run / RECORD_NAME).write_text("[" * 5000)
    verify_for_training(data, run)
    assert len(hashes) == 2 and json.loads((run / RECORD_NAME).read_text())["files"]


def _preflight(tmp_path, tiny, data, **data_keys):
    from mmzoo.train.config import load_config
    from mmzoo.train.preflight import preflight

    return preflight(load_config(_params(tmp_path, tiny, data, **data_keys)), resume="auto", world=1)


def test_a_new_run_folder_is_made_only_once_the_preflight_passed(data, tiny, tmp_path):
    """The record of a new run is kept until the whole preflight has passed: a run refused later (here: a wrong
    image folder) leaves no run folder behind; a run that passes has its record."""
    shutil.move(tmp_path / "images", tmp_path / "elsewhere")
    with pytest.raises(Exception, match="data.images"):
        _preflight(tmp_path, tiny, data)
    assert not (tmp_path / "run").exists()
    shutil.move(tmp_path / "elsewhere", tmp_path / "images")
    _preflight(tmp_path, tiny, data)
    assert len(json.loads((tmp_path / "run" / RECORD_NAME).read_text())["files"]) == 2


def test_verify_shards_false_skips_the_check(data, tiny, tmp_path, hashes):
    """A manifest whose digest no longer matches (here: edited by hand; the shard itself intact)."""
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (data / "manifest.json").write_text(json.dumps(manifest))
    _refused(lambda: _preflight(tmp_path, tiny, data), "shard-00000.h5: sha256 .* differs from the 000000000000… that manifest.json")
    hashes.clear()
    checked = _preflight(tmp_path, tiny, data, verify_shards=False)
    assert len(checked.data) == 4 and hashes == []


def test_a_manifest_without_digests_is_accepted_with_a_note(data, tiny, tmp_path, hashes):
    manifest = json.loads((data / "manifest.json").read_text())
    for shard in manifest["shards"]:
        del shard["sha256"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    checked = _preflight(tmp_path, tiny, data)
    notes = [w for w in checked.warnings if "lists no sha256" in w]
    assert notes == [f"{data / 'manifest.json'} lists no sha256 for none of its 2 shards (an older or hand-made "
                     "manifest): those shards were checked for structure only"]
    assert hashes == []


def test_a_malformed_digest_in_the_manifest_is_one_line(data, tmp_path):
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][1]["sha256"] = ["not", "a", "digest"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    _refused(lambda: verify_for_training(data, tmp_path / "run"),
             "manifest.json: the sha256 of shard 'shard-00001.h5' is not 64 lowercase hex digits")


def test_processes_verifying_at_once_hash_each_shard_once(data, tmp_path):
    """What the workers of a multi-process run do: each verifies, one hashes under the record's lock, the others
    wait and find the record up to date; all agree."""
    run = tmp_path / "run"
    run.mkdir()  # made by `mmzoo train` before it launches the workers
    script = ("import sys; from mmzoo.preprocess.integrity import verify_shards, RECORD_NAME; from pathlib import Path; "
              "r = verify_shards(sys.argv[1], record=Path(sys.argv[2]) / RECORD_NAME); print(len(r.hashed), len(r.unchanged))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(data), str(run)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(3)]
    results = sorted(tuple(map(int, p.communicate(timeout=120)[0].split())) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert results == [(0, 2), (0, 2), (2, 0)]


def test_mmzoo_preprocess_verify(data, capsys):
    from mmzoo.cli import main

    main(["preprocess", "--verify", str(data)])
    out = capsys.readouterr().out
    assert f"{data}: 2 shards" in out and "match the sha256 in manifest.json; structure checked" in out, out
    _flip_byte(data / "shard-00000.h5")
    line = cli_error(capsys, "preprocess", "--verify", str(data))
    assert line.startswith(f"mmzoo: error: {data / 'shard-00000.h5'}: sha256 ") and "preprocess the data again" in line
    assert "Missing option '--data'" in cli_error(capsys, "preprocess", "--images", str(data))
    assert "takes no --data" in cli_error(capsys, "preprocess", "--verify", str(data), "--data", "x.json")


def test_mmzoo_preprocess_verify_notes_a_manifest_without_digests(data, capsys):
    from mmzoo.cli import main

    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["shards"][0]["sha256"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    main(["preprocess", "--verify", str(data)])
    out = capsys.readouterr().out
    assert "lists no sha256 for 1 of its 2 shards" in out and f"{data}: 1 shard " in out, out


def test_resuming_a_run_from_before_verify_shards_warns_of_no_changed_setting(tmp_path):
    """A checkpoint written before the key existed, or with the check switched off: the check decides nothing about
    training, so resuming names no changed setting."""
    from mmzoo.train import checkpoint as ck

    tag = tmp_path / "step_0000001"
    tag.mkdir()
    data = {"path": "d", "images": "i", "num_workers": 2}
    (tag / "COMPLETE").write_text(json.dumps({"params": {"stage": "sft", "data": data}}))
    assert ck.changed_settings(tag, {"stage": "sft", "data": {**data, "verify_shards": True}}) == []
    assert ck.changed_settings(tag, {"stage": "sft", "data": {**data, "verify_shards": False}}) == []
    assert ck.changed_settings(tag, {"stage": "pretrain", "data": data}) == ["stage 'sft' → 'pretrain'"]
